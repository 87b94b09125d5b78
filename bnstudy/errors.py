"""Mistakes a user can fix, each message naming what was wrong and how to fix it (free of
heavy imports: the entry point reports them without loading Lightning)."""

import typing


class ConfigError(ValueError):
    """A config value is outside its allowed range."""


class DataError(RuntimeError):
    """Data files are missing, unreadable or inconsistent with the requested sizes."""


class RunFileError(OSError):
    """A run's file (checkpoint, metrics.json, image) could not be written."""


def first_line(err: BaseException) -> str:
    """`Type: the first line of its message`, as a one-paragraph refusal quotes an error."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def types_refused(value, hint) -> tuple[type, ...]:
    """The types `hint` (one, or a union) allows, if `value` is of none of them (a whole number
    passes for a float, a bool for nothing but a bool); () if it is."""
    allowed = typing.get_args(hint) or (hint,)
    return () if type(value) in allowed or (type(value) is int and float in allowed) else allowed
