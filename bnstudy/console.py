"""What the terminal shows: the study's own lines (what runs, its result, where its files
are) and every real warning; the frameworks' routine notices ("GPU available", "`Trainer.fit`
stopped", …) go to the job's `train.log` only (`conf/hydra/default.yaml` puts this filter on
Hydra's console handler)."""

from __future__ import annotations

import logging


class StudyLines(logging.Filter):
    """Passes the `bnstudy` loggers' records and any other logger's warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] == "bnstudy" or record.levelno >= logging.WARNING
