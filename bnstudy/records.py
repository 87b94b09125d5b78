"""`metrics.json`, the per-run record: read, and updated atomically (temp file + rename)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

RECORD_NAME = "metrics.json"
STATUSES = ("running", "ok", "diverged", "failed", "interrupted")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Writes JSON so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_finite_or_none(data), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: str | Path) -> dict:
    """The record at `path` (a metrics.json or the job directory holding one); {} if absent."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_NAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def update_record(path: str | Path, **fields: Any) -> dict:
    """Merges `fields` into the record at `path` and writes it back atomically."""
    record = read_record(path)
    record.update(fields)
    write_json_atomic(path, record)
    return record


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value
