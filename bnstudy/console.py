"""What the terminal shows: the study's own lines (what runs, its result, where its files
are) and every real warning, each once; the frameworks' routine notices ("GPU available",
"`Trainer.fit` stopped", "Checkpoint directory … exists", …) go to the job's `train.log`
only (`conf/hydra/default.yaml` puts this filter on Hydra's console handler; the entry point
routes Python's warnings through logging, so train.log has them too)."""

from __future__ import annotations

import logging

ROUTINE = (  # warnings that say nothing a run of the study needs to act on
    "exists and is not empty",  # Lightning: a resumed run's checkpoints/ already holds files
    "is smaller than the logging interval",  # Lightning: a short epoch logs no per-step loss
)


class StudyLines(logging.Filter):
    """Passes the `bnstudy` loggers' records and any other logger's warnings and errors,
    except the `ROUTINE` warnings; a warning already shown in this process is not shown
    again (a sweep's jobs repeat them, e.g. that a data folder is a subset; each job's
    train.log keeps its own)."""

    shown: set[str] = set()  # of the process: Hydra builds a new filter for each job

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return record.name.split(".")[0] == "bnstudy"
        message = record.getMessage()
        if record.levelno > logging.WARNING:
            return True
        if any(text in message for text in ROUTINE) or message in StudyLines.shown:
            return False
        StudyLines.shown.add(message)
        return True
