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


def one_line(err: BaseException) -> str:
    """An error's whole message on one line, as a one-line refusal quotes a multi-line one."""
    return " ".join(str(err).split())


def types_refused(value, hint) -> tuple[type, ...]:
    """The types `hint` (one, or a union of classes) allows, if `value` is of none of them (a
    whole number passes for a float, a bool for nothing but a bool); () if it is, or if `hint`
    is not made of plain classes (a `Literal`, `list[int]`: not judged here)."""
    allowed = typing.get_args(hint) or (hint,)
    if not all(isinstance(t, type) and not typing.get_args(t) for t in allowed):
        return ()
    return () if type(value) in allowed or (type(value) is int and float in allowed) else allowed


def type_names(types: tuple[type, ...]) -> str:
    """`int or float or null`, as a refusal names the types a setting takes."""
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)
