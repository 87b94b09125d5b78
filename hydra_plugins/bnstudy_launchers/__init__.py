"""`hydra/launcher=slurm` and `submitit_local`: Hydra's submitit launchers, except that jobs
are collected one by one (`bnstudy.cluster.collect_jobs`): one without a result is a line in the
summary, not a traceback ending the sweep. (Hydra finds launchers in `hydra_plugins` only.)"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

from bnstudy.cluster import array_ids, collect_jobs, stderr_muted
from bnstudy.sweep import discard_empty_sweep

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
except ImportError:  # without the `launchers` extra there is nothing to extend
    submitit_launcher = None

log = logging.getLogger(__name__)
LOCAL_RESTARTS = 5  # submitit's local controller starts a job at most 6 times (`max_retry`)


class _Collecting:
    def __call__(self, *args, **kwargs):
        """One job, in its own process; one without a result exits 1 once submitit kept its
        return value, so that SLURM says FAILED, not COMPLETED."""
        job = super().__call__(*args, **kwargs)
        if job.status != JobStatus.COMPLETED or not getattr(job._return_value, "finished", False):
            atexit.register(_exit_failed)
        return job

    def setup(self, *, hydra_context, task_function, config) -> None:
        """Hydra's; a time limit that leaves no time to train ends the sweep before any line."""
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if problem := signal_after_limit(self.params):
            _refuse(Path(str(config.hydra.sweep.dir)), problem)

    def launch(self, job_overrides, initial_job_idx):
        """Hydra's submitit launch (`BaseSubmititLauncher.launch`), collecting per job."""
        import submitit

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if self._EXECUTOR == "local" and (note := local_requeue_limit(self.params)):
            log.warning(note)
        try:
            executor = submitit_executor(self._EXECUTOR, self.params)
        except RuntimeError:  # submitit found no srun
            _refuse(sweep_dir, "hydra/launcher=slurm submits the jobs to SLURM, but this "
                    "machine has none (no srun on its PATH), so nothing was run. Launch from a "
                    "login node of your cluster, or run the sweep here: hydra/launcher=parallel "
                    "(jobs side by side) or hydra/launcher=submitit_local.")
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        for idx, overrides in zip(numbers, job_overrides, strict=True):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        try:  # sbatch's own lines (submitit copies them to stderr) said once, in the paragraph
            with stderr_muted():
                jobs = executor.map_array(self, [list(o) for o in job_overrides],
                                          ["hydra.sweep.dir"] * len(numbers), list(numbers),
                                          [f"job_id_for_{idx}" for idx in numbers],
                                          [state] * len(numbers))
        except submitit.core.utils.FailedJobError as err:  # sbatch refused them
            said = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            _refuse(sweep_dir, f"SLURM refused the sweep's jobs ({said}), so nothing was run. "
                    "Check the launcher's settings against your cluster (sinfo lists its "
                    "partitions, their nodes and time limits): hydra.launcher.partition=<one "
                    "of them>, hydra.launcher.gpus_per_node=0 where nodes have no GPU, mem_gb "
                    "and cpus_per_task within a node's, timeout_min within the partition's limit.")
        try:
            return collect_jobs(jobs, job_overrides, lambda i: self._job_dir_name(
                job_overrides[i], numbers[i]), sweep_dir)
        except KeyboardInterrupt:
            if self._EXECUTOR == "slurm":
                log.error("The sweep's SLURM jobs go on without it: squeue --me lists them, "
                          "scancel %s stops them.", " ".join(array_ids(jobs)))
            raise
        finally:  # the `.submitit/%j` that submitit made as it is written, left empty
            with contextlib.suppress(OSError):
                Path(self.params["submitit_folder"]).rmdir()

    def _job_dir_name(self, overrides, idx: int) -> str:
        """The folder a job has (or would have had) in the sweep: `hydra.sweep.subdir`."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        HydraConfig.instance().set_config(cfg)
        return str(cfg.hydra.sweep.subdir)


def submitit_executor(kind: str, params):
    """submitit's executor (`kind`: slurm or local) with the launcher's settings, as Hydra's
    launcher maps them: the queue-wide keys as they are, the others prefixed with `kind`.
    Raises RuntimeError where submitit finds no srun."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=kind, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in shared else f"{kind}_{key}": value
                                  for key, value in params.items()})
    return executor


def local_requeue_limit(launcher_cfg) -> str | None:
    """A warning when `max_num_timeout` asks more requeues than submitit's local launcher makes."""
    wanted = launcher_cfg.get("max_num_timeout")
    if not isinstance(wanted, int) or wanted <= LOCAL_RESTARTS:
        return None
    return (f"hydra.launcher.max_num_timeout={wanted}: submitit's local launcher restarts a job "
            f"at most {LOCAL_RESTARTS} times, so a job that needs more ends without a result "
            "(the sweep's summary names it; resume=true goes on). Give each attempt more time "
            "(hydra.launcher.timeout_min) instead; SLURM honours max_num_timeout.")


def signal_after_limit(launcher_cfg) -> str | None:
    """Why a SLURM time limit leaves no time to train (the stop signal comes as jobs start)."""
    delay, minutes = launcher_cfg.get("signal_delay_s"), launcher_cfg.get("timeout_min")
    if not isinstance(delay, int) or not isinstance(minutes, int) or delay < 60 * minutes:
        return None
    return (f"hydra.launcher.signal_delay_s={delay} is not shorter than "
            f"hydra.launcher.timeout_min={minutes} ({60 * minutes} s): SLURM would signal each "
            "job to stop as it starts, and requeue it without training, so nothing was run. "
            f"Give each job more time (hydra.launcher.timeout_min={delay // 60 + 10}) or the "
            f"signal less head start (hydra.launcher.signal_delay_s={60 * minutes // 4}).")


def _exit_failed() -> None:
    """The job process's exit status 1, at its very end (its logs flushed first)."""
    logging.shutdown()
    os._exit(1)


def _refuse(sweep_dir: Path, message: str) -> None:
    """Ends the sweep before any job with `message`, its folder removed if no job is in it."""
    if discard_empty_sweep(sweep_dir):
        message = message.replace("nothing was run.", f"nothing was run ({sweep_dir} removed).")
    sys.exit(message)


if submitit_launcher is not None:
    class LocalLauncher(_Collecting, submitit_launcher.LocalLauncher):
        """`hydra/launcher=submitit_local`."""

    class SlurmLauncher(_Collecting, submitit_launcher.SlurmLauncher):
        """`hydra/launcher=slurm`."""
