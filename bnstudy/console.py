"""What the terminal shows: the study's own lines and every real warning, each once; the
frameworks' routine notices go to the job's `train.log` only (`StudyLines` on Hydra's console
handler; `quiet_console` routes Python's warnings through logging)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import warnings
from pathlib import Path

from bnstudy.jobdir import is_primary

ROUTINE = (  # warnings that say nothing a run of the study needs to act on
    "exists and is not empty",  # Lightning: a resumed run's checkpoints/ already holds files
    "is smaller than the logging interval",  # Lightning: a short epoch logs no per-step loss
    "The `srun` command is available on your system but is not used",  # Lightning, off SLURM
)
IGNORED = (".*does not have many workers.*", ".*LeafSpec.*is deprecated.*",
           ".*all_gather is deprecated.*")  # the libraries' known harmless warnings


class StudyLines(logging.Filter):
    """Passes the `bnstudy` loggers' records and other loggers' warnings and errors, but
    `ROUTINE` warnings (other DDP ranks: errors only); a warning is shown once per process, and
    not at all if an earlier attempt of a requeued job showed it (`shown_before`)."""

    shown: set[str] = set()  # of the process: Hydra builds a new filter for each job
    earlier: set[str] = set()  # first lines of the warnings of this job's earlier attempts

    def filter(self, record: logging.LogRecord) -> bool:
        if not is_primary():  # rank 0 says what the run does; each rank keeps its own log
            return record.levelno > logging.WARNING
        if record.levelno < logging.WARNING:
            return record.name.split(".")[0] == "bnstudy"
        message = record.getMessage()
        if record.levelno > logging.WARNING:
            return True
        if any(text in message for text in ROUTINE) or message in StudyLines.shown or \
                message.partition("\n")[0] in StudyLines.earlier:
            return False
        StudyLines.shown.add(message)
        return True


def shown_before(train_log: Path) -> None:
    """Counts the warnings in a requeued job's `train.log` as shown: once per job, not attempt."""
    with contextlib.suppress(OSError):
        text = train_log.read_text(errors="replace")
        StudyLines.earlier.update(re.findall(r"\]\[WARNING\] - (.*)", text))


def _no_adverts(record: logging.LogRecord) -> bool:
    """Drops Lightning's advertisement for its cloud logger."""
    return "💡 Tip" not in record.getMessage()


def quiet_console() -> None:
    """Lightning's lines through Hydra's handlers only, without its advertisement; `IGNORED`
    warnings dropped, the others through logging; a writer thread's OSError to the log only."""
    import lightning  # noqa: F401  (its loggers exist once it is imported)

    adverts = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _no_adverts in adverts.filters:
        return  # once per process: each filterwarnings call resets the "once" registry
    adverts.addFilter(_no_adverts)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True
    ignore_known_warnings()
    logging.captureWarnings(True)
    threading.excepthook = thread_exception


def ignore_known_warnings() -> None:
    """Python's warnings filters drop the `IGNORED` warnings."""
    for message in IGNORED:
        warnings.filterwarnings("ignore", message)


def thread_exception(args: threading.ExceptHookArgs) -> None:
    """An OSError in a writer's thread (a full disk) goes to train.log only (the run reports it
    in one paragraph); any other thread's exception is printed as Python prints it."""
    if isinstance(args.exc_value, OSError):
        logging.getLogger("py.threads").info("%s in thread %s (the run reports it)",
                                             args.exc_value, getattr(args.thread, "name", "?"))
    else:
        threading.__excepthook__(args)


WORKER_LOG = "BNSTUDY_WORKER_LOG"  # while a run fits or tests: the train.log of its workers


@contextlib.contextmanager
def workers_log_to(train_log: Path):
    """Processes the run starts meanwhile (ddp_spawn's workers) log to `train_log`."""
    os.environ[WORKER_LOG] = str(train_log)
    try:
        yield
    finally:
        os.environ.pop(WORKER_LOG, None)


def _log_as_worker() -> None:
    """In a worker a run spawned (`workers_log_to`), every notice goes to the run's train.log."""
    if path := os.environ.get(WORKER_LOG):  # set by the run: this process is one it started
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - "
                                               "%(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
        quiet_console()


_log_as_worker()  # on import: a spawned worker imports the run's modules before it trains
