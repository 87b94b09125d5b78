"""`hydra/sweeper=grid`, the study's default: Hydra's basic sweeper (every combination of the
swept values), except that before the first job it composes only as many jobs' configs as it
takes to meet every swept value once. Hydra's own composes every job's, one after another while
no job runs (0.1 s each: 16 s of the decisive study's 160 jobs); each job still composes its own,
so a combination that cannot be composed fails that job. A value that cannot be composed ends
the sweep before any job and leaves no sweep folder (Hydra's keeps one with its multirun.yaml).
Hydra instantiates sweepers only from the `hydra_plugins` namespace."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from bnstudy.config import validate
from bnstudy.errors import ConfigError
from bnstudy.sweep import announce, check_plan, discard_empty_sweep


class GridSweeper(BasicSweeper):
    announced = False

    def sweep(self, arguments: list[str]):
        check_plan(self.config)  # before Hydra saves this sweep's plan over the folder's
        saved = Path(str(self.config.hydra.sweep.dir)) / "multirun.yaml"
        kept = saved.read_bytes() if saved.is_file() else None
        returns = super().sweep(arguments)
        if kept is not None and all(getattr(job._return_value, "status", None) == "refused"
                                    for batch in returns for job in batch):
            saved.write_bytes(kept)  # a launch that trained nothing changes nothing
        return returns

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        seen: set[str] = set()
        covering = []
        for overrides in batch:
            if not seen.issuperset(overrides):
                seen.update(overrides)
                covering.append(overrides)
        job: Sequence[str] = ()
        try:
            for job in covering:  # each composed, as Hydra's does, and range-checked
                validate(self.hydra_context.config_loader.load_sweep_config(
                    master_config=self.config, sweep_overrides=list(job)))
        except ConfigError as err:  # a value out of range: one paragraph
            discard_empty_sweep(Path(str(self.config.hydra.sweep.dir)))
            sys.exit(f"{err} (The sweep's job {' '.join(job)}; nothing was run.)")
        except Exception:  # nothing was launched: nothing is kept (a job's folder would be)
            discard_empty_sweep(Path(str(self.config.hydra.sweep.dir)))
            raise
        if not self.announced:
            announce(self.config)
            self.announced = True
