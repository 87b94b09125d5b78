"""Mistakes a user can fix, each message naming what was wrong and how to fix it (free of
heavy imports: the entry point reports them without loading Lightning, which a Trainer flag's
type alone imports, `trainer_hints`)."""

import difflib
import functools
import typing


class ConfigError(ValueError):
    """A config value is outside its allowed range."""


class DataError(RuntimeError):
    """Data files are missing, unreadable or inconsistent with the requested sizes."""


class RunFileError(OSError):
    """A run's file (checkpoint, metrics.json, image) could not be written."""


def first_line(err: BaseException) -> str:
    """`Type: the first line of its message` (less a colon that led to the next), as a
    one-paragraph refusal quotes an error."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0].rstrip(':')}"


def hydra_said(err: BaseException) -> str:
    """Hydra's message without the config search path it appends (a user's mistake, not where
    Hydra looked)."""
    return str(err).split("\nConfig search path:")[0].rstrip()


def one_line(err: BaseException) -> str:
    """An error's whole message on one line, as a one-line refusal quotes a multi-line one."""
    return " ".join(str(err).split())


def types_refused(value, hint) -> tuple:
    """What `hint` (a class, a `Literal` or a union of them) allows, if `value` is none of it (a
    whole number passes for a float, a bool for nothing but a bool); () if it is, or if `hint`
    has other parts (`list[int]`, a class's instance: not judged here)."""
    union = typing.get_origin(hint) in (typing.Union, type(int | None))
    allowed = []
    for part in typing.get_args(hint) if union else (hint,):
        if typing.get_origin(part) is typing.Literal:
            allowed += typing.get_args(part)
        elif isinstance(part, type) and not typing.get_args(part):
            allowed.append(part)
        else:
            return ()
    fits = any(type(value) is kind or (type(value) is int and kind is float) if isinstance(
        kind, type) else value == kind for kind in allowed)
    return () if fits else tuple(allowed)


WORDS = {bool: "true or false", int: "an integer", float: "a number", type(None): "null"}


def type_names(allowed: tuple) -> str:
    """`a number or null` (or `true or false or 'warn'`), as a refusal names what a setting
    takes (an int where a float is taken: the number says it)."""
    return " or ".join(WORDS.get(t, t.__name__) if isinstance(t, type) else repr(t)
                       for t in allowed if not (t is int and float in allowed))


def arguments_refused(node, key: str) -> str | None:
    """The paragraph for a value of `node` (a config to instantiate) its class does not take,
    by name or by type (bnstudy's classes' hints: Hydra passes values untyped, so
    `download=maybe` would be taken as true); None if it takes them all."""
    import importlib
    import inspect

    module, _, name = (target := node["_target_"]).rpartition(".")
    try:
        found = importlib.import_module(module)
    except (ImportError, ValueError):  # (ValueError: no module named)
        found = None
    if not isinstance(cls := getattr(found, name, None), type):  # a misspelt class
        near = difflib.get_close_matches(name, set(dir(found)) - {name}, n=1) if found else []
        hint = ", nor its module." if found is None else \
            f". Did you mean {module}.{near[0]}?" if near else "."
        return f"{key}._target_={target}: no such class{hint} Give a class's full dotted path."
    params = inspect.signature(cls).parameters
    hints = {}  # each __init__'s of the class and the project's classes above it
    for base in reversed(cls.__mro__):
        if base.__module__.startswith("bnstudy.") and "__init__" in vars(base):
            hints.update(typing.get_type_hints(base.__init__))
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    listed = [p for p in params if p != "data_dir" and p[0] != "_"]
    for arg, value in node.items():
        if arg not in params and arg[0] != "_" and not takes_any:
            near = "".join(f" Did you mean {key}.{n}?" for n in
                           difflib.get_close_matches(arg, listed, n=1))
            return (f"{key}.{arg}: {cls.__name__} takes no such argument.{near} "
                    f"It takes {', '.join(listed)}.")
        if arg in hints and (allowed := types_refused(value, hints[arg])):
            return f"{key}.{arg}={value!r}: it takes {type_names(allowed)}."
    return None


@functools.cache
def trainer_hints() -> dict[str, typing.Any]:
    """The Trainer's flags' types by `trainer.` key, from its signature (Lightning imported only
    when a `trainer.` override asks: it takes seconds)."""
    import lightning as L

    hints = typing.get_type_hints(L.Trainer.__init__)
    return {f"trainer.{name}": hint for name, hint in hints.items() if name != "return"}


def trainer_type(arg: str, key: str, values) -> str | None:
    """`wrong_type`'s (and eval's) paragraph for a Trainer flag (`trainer.precision=bf16-mix`:
    "Did you mean trainer.precision=bf16-mixed?"); a text flag is Lightning's to refuse."""
    for value in values:
        allowed = types_refused(value, trainer_hints().get(key))
        named = [str(a) for a in allowed if not isinstance(a, type)]
        if allowed and str not in allowed:
            near = difflib.get_close_matches(str(value), named)
            return (f"{arg}: {key} takes {type_names(allowed)}, not {value!r}, so nothing was "
                    "run. " + (f"Did you mean {key}={near[0]}?" if near else
                               f"Type {key}=true or {key}=false." if bool in allowed else
                               f"Type e.g. {key}={named[0] if named else 1}."))
    return None
