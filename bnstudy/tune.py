"""`experiment=tuned`: each norm at its own best settings, found with the same search budget.

Each dataset × optimizer × norm cell gets its own Optuna search (`OptunaSweeperImpl`) of
`search.<optim>`: the same number of trials, its own sampler (i.i.d. random search by default)
seeded by `cell_seed`, maximising the final validation accuracy (`bnstudy.trials.objective`).
The cells search at once (`bnstudy.trials.Cells`: `n_jobs` trials of each in flight on a
cluster), in `SWEEP/search/<cell>/`. Each cell's `rerun_top` best settings are re-run in `SWEEP/`
with every seed; the best mean validation accuracy over the seeds (`choose`) is kept, and only
its re-runs (`final_jobs`) are reported. `SWEEP/tuning.json` records each trial's settings,
score and seconds; `resume=true` repeats it all (finished trials read again, the seeded sampler
proposing the same settings)."""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import re
import shutil
import sys
import time
import zlib
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from bnstudy.config import changed_settings, validate
from bnstudy.errors import ConfigError, first_line, hydra_said
from bnstudy.jobdir import (
    JobDirBusyError,
    JobDirLock,
    describe_holder,
    dir_override,
    holder,
    is_locked,
)
from bnstudy.records import SEARCH_DIR, TUNING_FILE, RunRecord, job_dirs, write_json_atomic
from bnstudy.sweep import announce, discard_empty_sweep
from bnstudy.trials import Cells, ScoringLauncher, score

log = logging.getLogger("bnstudy")

METRIC = "val/acc (final epoch)"
STUDY_LOCK = ".tuning.lock"  # in the study's folder: held while its process runs


def cell_seed(base: int, cell: str) -> int:
    """The sampler seed of one cell's search: from the base seed and the cell's name (a stable
    hash), so every cell draws settings of its own and a rerun draws the same ones."""
    return zlib.crc32(f"{base}:{cell}".encode()) % 2**31


def choose(candidates: list[dict]) -> dict | None:
    """The candidate (`val_acc`: its re-runs' scores; a diverged one counts 0, a failed one is
    None, left out) with the best mean over its seeds; the earlier (better in the search) on a
    tie, the first if none has a score (its failed re-runs are reported), None if none."""
    def mean(candidate: dict) -> float:
        scores = [v for v in candidate["val_acc"] if v is not None]
        return sum(scores) / len(scores) if scores else -math.inf

    return max(candidates, key=mean, default=None)


def _values(override: str) -> list:
    """The values of one override: `a=1,2` → ['1', '2'], `a=x` → ['x'], `seed=range(3)`…"""
    (parsed,) = OverridesParser.create().parse_overrides([override])
    if parsed.is_sweep_override():
        return [str(v) for v in parsed.sweep_string_iterator()]
    return [parsed.get_value_element_as_str()]


def check_folder(config: DictConfig, sweep_dir: Path) -> None:
    """Refuses a grid sweep's folder, and a tuned study's unless resumed as run or overwritten."""
    tuned, search = (sweep_dir / TUNING_FILE).is_file(), sweep_dir / SEARCH_DIR
    if not (tuned or search.is_dir()):
        if job_dirs(sweep_dir):
            raise ConfigError(f"{sweep_dir} holds the jobs of another kind of sweep (a grid of "
                              "values), so nothing was run. Give the tuned study a folder of its "
                              "own (hydra.sweep.dir=<another folder>).")
    elif not (config.get("resume") or config.get("overwrite")):
        raise ConfigError(  # its trials would be refused and the record of its search lost
            f"{sweep_dir} already holds a tuned study ({TUNING_FILE if tuned else 'search/'}); "
            "nothing was changed. Add resume=true to go on (finished trials and runs are kept, "
            "the rest run), overwrite=true to search and re-run again from scratch, or choose "
            "another hydra.sweep.dir.")
    elif config.get("overwrite"):  # from scratch: none of its jobs stay
        reruns = job_dirs(sweep_dir)
        trials = [job for cell in search.glob("*/") for job in job_dirs(cell)]
        if busy := [job.name for job in reruns + trials if is_locked(job)]:
            raise ConfigError(f"overwrite=true, but the tuned study in {sweep_dir} is running "
                              f"({', '.join(busy[:3])} in use), so nothing was changed. Wait "
                              "until it ends (or stop it), then run this command again.")
        for folder in [*reruns, search]:  # (the trials go with search/)
            shutil.rmtree(folder, ignore_errors=True)
        (sweep_dir / TUNING_FILE).unlink(missing_ok=True)
    stored = sweep_dir / "multirun.yaml"
    if config.get("resume") and stored.is_file() and \
            (changed := changed_settings(OmegaConf.load(stored), config)):
        raise ConfigError(  # each trial and re-run would be refused, the search's record lost
            f"{sweep_dir} holds a tuned study run with other settings ({'; '.join(changed)}), "
            "so nothing was run. To go on with it, run its command with resume=true; to run "
            "this one, give it a folder of its own (hydra.sweep.dir=<another folder>).")


def check_space(optim: str, space: dict) -> None:
    """Refuses a search space the Optuna sweeper cannot read (`interval(0, 1)` on a log scale)."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    try:
        create_params_from_overrides([f"{key}={value}" for key, value in space.items()])
    except (ValueError, TypeError, HydraException) as err:
        why = first_line(err).rstrip(".")
        raise ConfigError(
            f"hydra.sweeper.search.{optim}: {why}, so nothing was run. Each entry is a setting "
            "and its range in the Optuna sweeper's syntax, e.g. optim.optimizer.lr: tag(log, "
            "interval(0.001, 1.0)) (a log scale starts above 0); `python -m bnstudy.train "
            "experiment=tuned --cfg hydra -p hydra.sweeper.search` shows them.") from None


def check_sampler(sampler: DictConfig) -> None:
    """Refuses a sampler that cannot be made (a misspelt class, an argument it lacks) and a base
    seed that is no whole number, before anything runs."""
    if (seed := sampler.get("seed")) is not None and type(seed) is not int:
        raise ConfigError(f"hydra.sweeper.sampler.seed={seed}: the base seed is a whole number "
                          "or null, so nothing was run. Type e.g. hydra.sweeper.sampler.seed=0.")
    try:
        instantiate(sampler)
    except Exception as err:
        import optuna

        names = [n for n in dir(optuna.samplers) if n.endswith("Sampler") and n != "BaseSampler"]
        raise ConfigError(
            f"hydra.sweeper.sampler: {first_line(err.__cause__ or err).rstrip(':.')}, so nothing "
            f"was run. Optuna's samplers: {', '.join(names)}; e.g. "
            "hydra.sweeper.sampler._target_=optuna.samplers.TPESampler.") from None


class TunedSweeper(Sweeper):
    """A search per cell with the Optuna sweeper, then its top settings over seeds."""

    def __init__(self, cells: DictConfig, search: DictConfig, n_trials: int, sampler: DictConfig,
                 n_jobs: int = 1, rerun_top: int = 3, params: DictConfig | None = None) -> None:
        self.cells = {k: list(v) for k, v in cells.items()}
        self.search, self.sampler, self.n_trials, self.n_jobs = search, sampler, n_trials, n_jobs
        self.rerun_top = rerun_top
        # the re-runs' seeds: those every sweep runs (`hydra.sweeper.params.seed`), or `seed=…`
        seeds = (params or {}).get("seed", "0")
        self.seeds = [int(v) for v in _values(f"seed={seeds}")]
        self.in_flight = False  # the cells' trials on a cluster, submitted from threads

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def _cells(self, arguments: list[str]) -> tuple[list[dict], list[str]]:
        """The cells (the config's, narrowed by `dataset=…`, `optim=…`, `norm=…` on the command
        line) and the other command-line overrides, which every job gets."""
        cells, rest = dict(self.cells), []
        for override in OverridesParser.create().parse_overrides(arguments):
            key = override.get_key_element()
            if key in cells:
                cells[key] = _values(override.input_line)
            elif key == "dataset.lr" and any("optim.optimizer.lr" in (space or {})
                                             for space in self.search.values()):
                raise ConfigError(
                    f"{override.input_line}: experiment=tuned searches the learning rate "
                    "(optim.optimizer.lr), which then no longer reads dataset.lr. Drop it to "
                    "search it, or fix it with optim.optimizer.lr=... (the rest is searched).")
            elif key == "seed":
                self.seeds = [int(v) for v in _values(override.input_line)]
            elif override.is_sweep_override():
                raise ConfigError(
                    f"experiment=tuned searches its own space, so {key} cannot be swept "
                    f"({override.input_line}). Set one value ({key}=...), or change the search "
                    f"space in hydra.sweeper.search.")
            else:
                rest.append(override.input_line)
        fixed = {o.split("=", 1)[0].lstrip("+~") for o in rest}
        for optim in cells.get("optim", []):
            if (space := set(self.search.get(optim) or {})) and space <= fixed:
                raise ConfigError(
                    f"{', '.join(sorted(space))} given a value fixes all that experiment=tuned "
                    f"searches for optim={optim}, so its trials would all be one run. Drop it to "
                    "search it; to train one setting, run without experiment=tuned.")
        if len(norms := cells.get("norm", [])) == 1:  # tuned, but compared with nothing
            pair = f"{norms[0]},none" if norms[0] != "none" else "bn,none"
            log.warning("Only norm=%s: each cell is tuned and re-run, but the report's answer "
                        "compares two norms at their best, e.g. norm=%s.", norms[0], pair)
        return [dict(zip(cells, values, strict=True))
                for values in itertools.product(*cells.values())], rest

    def sweep(self, arguments: list[str]) -> None:
        """The searches, then the re-runs; a user's mistake ends in its paragraph, exit 1."""
        with read_write(self.config):  # its `${now:...}` resolved once: once trials ran here,
            self.config.hydra.sweep.dir = str(self.config.hydra.sweep.dir)  # it may re-resolve
        study = Path(self.config.hydra.sweep.dir)
        lock = JobDirLock(study, STUDY_LOCK)
        made = not lock.path.exists()
        try:  # one process per tuned study (its searches live in it)
            lock.acquire("the tuned study")
        except JobDirBusyError:  # another process's study: nothing of it touched
            sys.exit(f"{study} is being tuned: {describe_holder(holder(study, STUDY_LOCK))} runs "
                     "it. A tuned study's searches live in one process, so nothing was run. Wait "
                     "until it ends (or stop it), then run the same command with resume=true "
                     f"{dir_override('hydra.sweep.dir', study)} to go on; to tune beside it, "
                     "choose another hydra.sweep.dir.")
        try:
            unsearched = self._sweep(arguments)
        except BaseException as err:
            lock.release()
            # a mistake's paragraph, Hydra's own (Could not find 'dataset/mnst') or a
            # launcher's exit (SLURM refused the jobs): refused before anything ran, nothing left
            if isinstance(err, Exception) or isinstance(getattr(err, "code", None), str):
                if made:
                    lock.path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # emptied by its cells' refusals, at once
                    (study / SEARCH_DIR).rmdir()
                removed = discard_empty_sweep(study)
                if isinstance(err, ConfigError):
                    sys.exit(str(err))
                if removed and isinstance(err, SystemExit):  # the study's folder, not its search's
                    sys.exit(re.sub(r"\([^()]* removed\)", f"({study} removed)", err.code))
                raise
            sweep_dir = self.config.hydra.sweep.dir  # Ctrl-C (Lightning's is an exit 1)
            if self.in_flight:  # not said by the launcher (its jobs wait in threads)
                log.error("The study's SLURM jobs go on without it: squeue --me lists them, "
                          "scancel <job id> stops them.")
            log.error("Interrupted: %s keeps its finished trials and runs. To go on (the same "
                      "trials, then the re-runs), run the same command with resume=true %s",
                      sweep_dir, dir_override("hydra.sweep.dir", sweep_dir))
            raise SystemExit(1) from err  # said: not again by the entry point (a grid's words)
        lock.release()
        if unsearched:
            sys.exit(unsearched)

    def _sweep(self, arguments: list[str]) -> str | None:
        """Searches, then re-runs; returns what went wrong when a cell found no setting."""
        logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's import says hello
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

        # the study's own line per cell below; their study/storage/sampler lines and Optuna's
        # per-trial ones stay out of the console (a failed trial's warning stays in)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger(OptunaSweeperImpl.__module__).setLevel(logging.WARNING)

        for key, what, default in (("n_trials", "trials each cell's search runs", 32),
                                   ("n_jobs", "trials a search launches at once", 1),
                                   ("rerun_top", "each cell's best settings re-run", 3)):
            if type(value := getattr(self, key)) is not int or value < 1:
                raise ConfigError(f"hydra.sweeper.{key}={value}: the number of {what} must be a "
                                  f"whole number, 1 or more, e.g. hydra.sweeper.{key}={default} "
                                  "(the default).")
        sweep_dir = Path(self.config.hydra.sweep.dir).absolute()  # jobs' dirs are absolute
        cells, rest = self._cells(arguments)
        check_folder(self.config, sweep_dir)
        for cell in cells:  # each composes: a misspelt value ends the study before any trial
            try:
                job = [f"{k}={v}" for k, v in cell.items()] + rest
                validate(self.hydra_context.config_loader.load_sweep_config(self.config, job), job)
            except HydraException as err:  # a cell's option no file is (hydra.sweeper.cells)
                first, _, more = hydra_said(err).partition("\n")
                more = " ".join(more.split())
                raise ConfigError(f"{first.rstrip('.')}{'. ' + more if more else ''}, so nothing "
                                  "was run.") from None
        check_sampler(self.sampler)
        for optim in dict.fromkeys(cell["optim"] for cell in cells):  # as each search reads it
            check_space(optim, self.search.get(optim) or {})
        announce(self.config)
        record: dict = {"sampler": self.sampler["_target_"].rsplit(".", 1)[-1],
                        "sampler_seed": self.sampler.get("seed"), "n_trials": self.n_trials,
                        "rerun_top": self.rerun_top, "seeds": self.seeds, "metric": METRIC,
                        "time_s": {}, "cells": []}
        searched = {k: v for c in cells for k, v in (self.search.get(c["optim"]) or {}).items()}
        self._save_plan(sweep_dir, {"seed": ",".join(map(str, self.seeds)), **searched})
        started = time.perf_counter()
        together = Cells(concurrent=type(self.launcher).__name__ == "SlurmLauncher")
        self.in_flight = together.concurrent  # a Ctrl-C now leaves the cells' SLURM jobs queued
        outcomes = together.search(
            [lambda cell=cell: self._search(cell, rest, sweep_dir, together) for cell in cells])
        self.in_flight = False
        record["cells"] = [cell for cell, _ in outcomes]
        unsearched = [problem for _, problem in outcomes if problem]
        record["time_s"]["search"] = time.perf_counter() - started
        write_json_atomic(sweep_dir / TUNING_FILE, record)
        self._rerun_top(record, rest, sweep_dir)
        others = "; the other cells were tuned and re-run" * (len(unsearched) < len(cells))
        return (f"{len(unsearched)} cell(s) of {sweep_dir} found no setting, so they have no "
                f"re-runs{others}:\n" + "\n".join(f"  {problem}" for problem in unsearched)
                + "\nFix the cause (each trial's error is above, and in its train.log if it "
                f"started), then run the same command with resume=true "
                f"{dir_override('hydra.sweep.dir', sweep_dir)}: finished trials and runs are "
                "kept, the failed ones run again.") if unsearched else None

    def _search(self, cell: dict, rest: list[str], sweep_dir: Path, together: Cells
                ) -> tuple[dict, str | None]:
        """One cell's Optuna search (in a thread of its own, `together`): its `tuning.json`
        entry, and what went wrong if it found no setting."""
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

        name = f"{cell['dataset']}-{cell['norm']}-{cell['optim']}"
        search_dir = sweep_dir / SEARCH_DIR / name
        space = dict(self.search.get(cell["optim"]) or {})
        # the search's own sweep: its plan, its jobs, its optimization_results.yaml
        cell_config = self._save_plan(search_dir, space)
        fixed = [*(f"{k}={v}" for k, v in cell.items()), *rest, f"hydra.sweep.dir={search_dir}"]
        storage = optuna.storages.InMemoryStorage()
        sampler, seed = self.cell_sampler(name)
        impl = OptunaSweeperImpl(sampler=sampler, direction="maximize", storage=storage,
                                 study_name=name, n_trials=self.n_trials, n_jobs=self.n_jobs,
                                 max_failure_rate=1.0, search_space=None,
                                 custom_search_space=None, params=OmegaConf.create(space))
        impl.setup(hydra_context=self.hydra_context, task_function=self.task_function,
                   config=cell_config)
        impl.launcher = trials = ScoringLauncher(together.launcher(impl.launcher), sweep_dir)
        log.info("Tuning %s: %d trials", name, self.n_trials)
        summary_failed = None
        try:
            impl.sweep(fixed)
        except ValueError as err:  # its summary of a search in which no trial finished
            summary_failed = err
        study = optuna.load_study(study_name=name, storage=storage)
        done = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                      key=lambda t: -t.value)  # stable: the earlier trial first on a tie
        if summary_failed is not None and done:
            raise summary_failed
        best = study.best_trial if done else None
        problem = None if done else f"{name}: every trial failed, e.g. {trials.errors[0]}"
        if problem:
            log.error("Tuned %s", problem)
        else:
            log.info("Tuned %s: best val acc %.2f %% (trial %d of %d) at %s", name,
                     100 * best.value, best.number + 1, len(study.trials),
                     ", ".join(f"{k}={v:.3g}" for k, v in best.params.items()))
        return {**cell, "sampler_seed": seed,
                "trials": [{"params": t.params, "value": t.value, "state": t.state.name,
                            "job": trials.jobs[t.number], "seconds": trials.seconds[t.number]}
                           for t in study.trials],
                "best_params": best.params if best else {},
                "best_value": best.value if best else None,
                "candidates": [{"trial": t.number, "params": t.params, "value": t.value,
                                "jobs": [], "val_acc": []} for t in done[:self.rerun_top]],
                "final_jobs": []}, problem

    def cell_sampler(self, name: str) -> tuple:
        """A new sampler for the cell `name` and its seed (`cell_seed` of the base seed; None
        if the config gives none)."""
        if self.sampler.get("seed") is None:
            return instantiate(self.sampler), None
        seed = cell_seed(self.sampler.seed, name)
        return instantiate(self.sampler, seed=seed), seed

    def _save_plan(self, sweep_dir: Path, params: dict) -> DictConfig:
        """`sweep_dir/multirun.yaml` as Hydra's sweepers save it, `params` the settings its jobs
        vary (what run names show, `config.swept_keys`, and the report's plan); returns it."""
        config = copy.deepcopy(self.config)
        with read_write(config), open_dict(config):
            config.hydra.sweep.dir = str(sweep_dir)
            config.hydra.sweeper.params = params
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        return config

    def _rerun_top(self, record: dict, rest: list[str], sweep_dir: Path) -> None:
        """Each cell's `rerun_top` best settings with every seed, as jobs of the sweep itself;
        the one `choose` picks becomes the cell's best, its re-runs its `final_jobs`."""
        started = time.perf_counter()
        jobs = [(candidate, [f"{k}={cell[k]}" for k in self.cells] + rest
                 + [f"{k}={v}" for k, v in candidate["params"].items()] + [f"seed={seed}"])
                for cell in record["cells"] for candidate in cell["candidates"]
                for seed in self.seeds]
        returns = self.launcher.launch([overrides for _, overrides in jobs], initial_job_idx=0) \
            if jobs else []
        for (candidate, _), job in zip(jobs, returns, strict=True):
            out = Path(job.hydra_cfg.hydra.runtime.output_dir)
            if (run := RunRecord.read(out)) is not None:
                candidate["jobs"].append(out.name)
                candidate["val_acc"].append(v if isinstance(v := score(run), float) else None)
        for cell in record["cells"]:
            if (chosen := choose(cell["candidates"])) is not None:
                cell.update(best_params=chosen["params"], best_value=chosen["value"],
                            final_jobs=chosen["jobs"])
        record["time_s"]["final"] = time.perf_counter() - started
        write_json_atomic(sweep_dir / TUNING_FILE, record)
