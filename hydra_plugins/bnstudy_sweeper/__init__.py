"""`hydra/sweeper=grid`, the default: Hydra's basic sweeper, except that before the first job it
composes only the jobs that meet every swept value once (Hydra's composes all: 16 s for 160
jobs). A value that cannot be composed, or that `config.validate` or the datamodule's class
(where the command sets it) refuses, ends the sweep before any job, leaving no folder."""

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
        job: Sequence[str] = ()
        try:
            for job in batch:  # each meeting a new value composed, as Hydra's does, and checked
                if not seen.issuperset(job):
                    seen.update(job)
                    validate(self.hydra_context.config_loader.load_sweep_config(
                        master_config=self.config, sweep_overrides=list(job)), job)
        except Exception as err:  # nothing was launched: nothing is kept (a job's folder would be)
            discard_empty_sweep(Path(str(self.config.hydra.sweep.dir)))
            if isinstance(err, ConfigError):  # a value out of range: one paragraph
                sys.exit(f"{err} (The sweep's job {' '.join(job)}; nothing was run.)")
            raise
        if not self.announced:
            announce(self.config)
            self.announced = True
