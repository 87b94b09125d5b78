"""The command line's overrides: the config they compose (`compose`), and the mistakes found
before Hydra composes them, each one paragraph (`first_mistake`). Free of Lightning, as
`config`, but for a `trainer.` override's type (`errors.trainer_type`)."""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Iterator
from dataclasses import fields

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import BooleanNode, DictConfig, FloatNode, IntegerNode, OmegaConf
from omegaconf.errors import ValidationError

from bnstudy.config import (
    CONFIG_DIR,
    DatasetSchema,
    MLPSchema,
    ModelSchema,
    StudySchema,
    compose_cached,
    dotted,
    flat,
    group_defaults,
)
from bnstudy.errors import ConfigError, first_line, hydra_said, trainer_type


def compose(overrides=()) -> DictConfig:
    """The config `python -m bnstudy.train <overrides>` runs, Hydra's runtime set, for
    `bnstudy.run.train(cfg)`; a mistake is a `ConfigError` as the command line words it."""
    try:
        cfg = compose_cached(overrides, return_hydra_config=True)
    except HydraException as err:
        said = hydra_said(err).replace(
            "add --multirun to your command line", "compose each value (or run train -m)")
        why = f" ({first_line(err.__cause__)})" if err.__cause__ else ""
        typed = list(overrides)
        raise ConfigError(unknown_override(typed) or unknown_option(typed) or wrong_type(typed)
                          or f"{said}{why}") from None
    cfg.hydra.runtime.cwd = os.getcwd()  # not where the compose it copies was made
    HydraConfig.instance().set_config(cfg)
    return cfg


def unknown_override(args: list[str]) -> str | None:
    """A command-line setting no config has (`lr=0.1`), naming those close to it."""
    groups = {d.name for d in CONFIG_DIR.iterdir() if d.is_dir()}
    known = {f.name for f in fields(StudySchema)} | groups
    chosen = [a for a in args if a.split("=", 1)[0] in groups]  # group choices, e.g. optim=adam
    names = hydra_names = None
    for arg in args:
        if arg.startswith("+trainer."):  # the config lists every flag the Trainer takes
            arg = arg[1:]  # (test_config): an added one is none of them
        key = arg.split("=", 1)[0]
        ours = not key.startswith("hydra")
        if arg.startswith(("-", "+", "~")) or "=" not in arg or key in known or not (
                ours or key.startswith(("hydra.sweeper.", "hydra.launcher."))):
            continue
        if ours:
            pool = names = names or _setting_names(chosen)
        else:  # the chosen sweeper's and launcher's
            pool = hydra_names = hydra_names or _hydra_names(
                [a for a in args if a.startswith(("experiment=", "hydra/"))])
            if not pool:
                return None  # an option that does not exist: Hydra says so
        if _has(pool, key):
            continue
        if ours and "." not in key:  # a misspelt group (`nrom=bn`) too
            pool = [*pool, *sorted(groups - {"hydra"})]
        scored = {name: _likeness(key, name) for name in pool
                  if not name.rsplit(".", 1)[-1].startswith("_")}  # not _target_ and the like
        value, (group, _, option) = arg.split("=", 1)[1], key.partition(".")
        # the likest first; of those, the key's own group's (optim.optimizr.lr: optim.optimizer.lr)
        near = sorted((k for k, score in scored.items() if score >= 0.75),
                      key=lambda k: (-scored[k], k.partition(".")[0] != group, k.count(".")))
        # not a misspelling of a listed setting but an argument the config omits (an optimizer's)
        leaf = key.rsplit(".", 1)[-1]
        misspelt = any(difflib.SequenceMatcher(None, leaf, n.rsplit(".", 1)[-1]).ratio() >= 0.8
                       for n in pool)
        if ours and not misspelt and (target := _target_takes(key, chosen)):
            return (f"{key}: the config does not list it, so nothing was run. {target} takes it: "
                    f"type +{arg} to add it (the run's hparams record it).")
        hint = (f"Did you mean {' or '.join(near[:3])}? Type e.g. {near[0]}={value}. "
                if near else "")
        if (CONFIG_DIR / group / f"{(option := option.partition('.')[0])}.yaml").is_file():
            hint = f"It comes with {group}={option} (several: '{group}=[...,{option}]'). " + hint
        elif group == "hydra" and (found := next((o for o in {  # a launcher's or sweeper's key
                "launcher": ("slurm", "parallel"), "sweeper": ("tuned",)}.get(
                option, ()) if key in _hydra_names([f"hydra/{option}={o}"])), None)):
            also = f" (to add it to another: +{arg})" if option == "launcher" else \
                ", which experiment=tuned sets"
            hint = f"It comes with hydra/{option}={found}{also}. "
        listed = "groups and `python -m bnstudy.train --cfg job` every setting" if ours else \
            "groups and `python -m bnstudy.train --cfg hydra` Hydra's settings"
        return f"{key}: no such setting. {hint}`python -m bnstudy.train --help` lists the {listed}."
    return None


def _hydra_names(choices: list[str]) -> list[str]:
    """Every key of Hydra's own settings (`hydra.sweeper.n_trials`, ...) with these choices."""
    try:
        cfg = compose_cached(choices, return_hydra_config=True)
    except HydraException:  # an option that does not exist: none
        return []
    return sorted(f"hydra.{k}" for k in dotted(OmegaConf.to_container(cfg.hydra)))


def _likeness(key: str, name: str) -> float:
    """How a setting's name (whole, or last part) looks like a mistyped key; top-level first."""
    whole = difflib.SequenceMatcher(None, key, name).ratio()
    last = difflib.SequenceMatcher(None, key.rsplit(".", 1)[-1], name.rsplit(".", 1)[-1]).ratio()
    top = 0.2 if "." not in key and "." not in name and whole >= 0.75 else 0.0
    return round(max(whole, last), 1) + top


def _target_takes(key: str, chosen: list[str]) -> str | None:
    """The `_target_` of `key`'s parent where its signature takes `key`'s last part
    (`optim.optimizer.weight_decay`: torch.optim.SGD; a swept group: its first option); not
    bnstudy's or Lightning's classes, which the config lists whole (and which take seconds)."""
    import inspect

    from hydra.utils import get_object

    parent, _, leaf = key.rpartition(".")
    choices = {group: value.split(",")[0] for group, _, value in (c.partition("=") for c in chosen)
               if not value.startswith("[")}
    try:
        target = OmegaConf.select(group_defaults(choices), f"{parent}._target_") or "bnstudy"
        takes = not target.startswith(("bnstudy", "lightning")) and (  # (the config lists all
            leaf in inspect.signature(get_object(target)).parameters)  # of ours and Lightning's)
    except (HydraException, ValueError, ImportError, TypeError):
        return None
    return target if takes else None


def _setting_names(choices: list[str] = ()) -> list[str]:
    """Every setting of the config with these group choices (a swept one: each of its options)."""
    options = [[(group, o) for o in ([value] if value.startswith("[") else value.split(","))]
               for group, _, value in (c.partition("=") for c in choices)]  # a list: one choice
    names = {"paths.data_dir", "paths.output_dir", "run_name"}
    for combination in itertools.product(*options):
        try:
            cfg = group_defaults(dict(combination))
        except (HydraException, ValueError):  # no such option, `x=null`: Hydra says so later
            cfg = group_defaults({})
        names.update(flat(cfg))
    return sorted(names)


def unknown_option(args: list[str]) -> str | None:
    """One paragraph for a group option no file is (`norm=batch`, `-m norm=bn,nnoe`), with the
    closest and the group's options (Hydra's adds its search path), or a list of options that
    replace each other (`norm=[bn,none]`, which Hydra runs as none); None if there is none."""
    for at, arg in enumerate(args):
        group, equals, value = arg.partition("=")
        if equals and group.isidentifier() and group != "hydra" and "(" not in value and (
                CONFIG_DIR / group).is_dir():
            options = sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))
            after = args[at + 1:at + 2]  # `norm=bn, none`: the shell's two words
            if value.endswith(",") and after and "=" not in after[0]:
                return (f"{arg} {after[0]}: a space after a comma makes two words of one "
                        f"setting, so nothing was run. Type the values without spaces: "
                        f"{arg}{after[0]}.")
            chosen = value.strip("[]").replace(" ", "").split(",")  # `[]`: [""]
            if missing := [o for o in chosen if o not in options]:  # (not a `choice(...)`)
                near = [o for o in options if o.lower() == missing[0].lower()] or \
                    difflib.get_close_matches(missing[0], options, 1)  # `norm=BN`, `norm=bnn`
                return (f"{arg}: {group} has no option {missing[0] or '(none given)'}, so "
                        "nothing was run. "
                        + (f"Did you mean {near[0]}? " if near else "")
                        + f"Its options: {', '.join(options)}"
                        + (f" (several: '{group}=[a,b]')." if value.startswith("[") else "."))
            if value.startswith("[") and (clash := _replaced(group, chosen)):
                (first, was), (then, now), key = clash
                return (f"{arg}: these options replace each other ({group}={first} sets {key} "
                        f"to {was}, {group}={then} to {now}; a list keeps the last one's), so "
                        "nothing was run. " + ("Run one at a time." if group == "experiment"
                                               else f"To run each, sweep them: -m {group}="
                                               f"{','.join(chosen)}."))
    return None


def _replaced(group: str, options: list[str]) -> tuple | None:
    """Two options setting one key apart: ((option, value), (option, value), key), or None."""
    seen = {}  # key: (option, value)
    for option in options:
        path = CONFIG_DIR / group / f"{option}.yaml"
        package = path.read_text().partition("\n")[0].partition("# @package ")[2] or group
        node = OmegaConf.to_container(OmegaConf.load(path) or OmegaConf.create())
        node.pop("defaults", None)
        keys = dotted(node, "" if package == "_global_" else f"{package}.")
        if clash := sorted((k for k in set(seen) & set(keys) if seen[k][1] != keys[k]),
                           key=lambda k: ("._" in k, k.count("."), k)):
            return seen[clash[0]], (option, keys[clash[0]]), clash[0]
        seen |= {key: (option, value) for key, value in keys.items()}
    return None


def lacking_option(args: list[str]) -> str | None:
    """A setting some options of a swept group lack (`-m optim=sgd,adam
    optim.optimizer.momentum=0.9`: Hydra's hint, `+key`, would hand Adam what it refuses)."""
    swept = {group: value.split(",") for group, _, value in (a.partition("=") for a in args)
             if "," in value and "(" not in value and not value.startswith("[")
             and (CONFIG_DIR / group).is_dir()}  # (not a list's `logger=[csv,mlflow]`)
    for arg in args:
        key = arg.partition("=")[0]
        group = key.split(".")[0]
        if arg.startswith(("-", "+", "~")) or "=" not in arg or "." not in key or \
                group not in swept:
            continue
        has = {}  # option: whether it has the key
        for option in swept[group]:
            try:
                cfg = group_defaults({group: option})
            except (HydraException, ValueError):  # no such option: `unknown_option` says so
                continue
            has[option] = _has(flat(cfg), key)
        if (lack := [o for o, yes in has.items() if not yes]) and len(lack) < len(has):
            take = ",".join(o for o, yes in has.items() if yes)
            return (f"{arg}: {group}={lack[0]} has no such setting ({group}={take} has), so "
                    f"nothing was run. Sweep the options that take it on their own: -m "
                    f"{group}={take} {arg}, and the others without it: -m "
                    f"{group}={','.join(lack)}.")
    return None


def _has(names, key: str) -> bool:
    """Whether `key` is one of the dotted `names` or a node above some."""
    return any(n == key or n.startswith(f"{key}.") for n in names)


def no_parallel_jobs(args: list[str]) -> str | None:
    """`hydra.launcher.n_jobs=0` (or no number): joblib's traceback once the folder is made."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "hydra.launcher.n_jobs" and not (  # not a whole number, or 0
                value.lstrip("-").isdigit() and int(value)):
            return (f"{arg}: the number of jobs the parallel launcher runs at once must be a "
                    "whole number other than 0 (-1: as many as cores), so nothing was run. "
                    "Type e.g. hydra.launcher.n_jobs=2.")
    return None


def given_twice(args: list[str]) -> str | None:
    """A setting typed twice with other values (`-m norm=bn,none norm=layer`): Hydra keeps the
    last alone, dropping the first's runs unsaid. The same value again (a resume's folder) is
    fine, and so are Hydra's own settings (Lightning's DDP restarts a script with its run dir)."""
    seen = {}  # key: its first value
    for arg in args:
        key, equals, value = arg.lstrip("+").partition("=")
        if not equals or key.startswith("hydra.") or seen.setdefault(key, value) == value:
            continue
        plain = not any(c in seen[key] + value for c in "[](){}'\" ")  # several as one sweep
        both = ",".join(dict.fromkeys(f"{seen[key]},{value}".split(",")))
        return (f"{key}={seen[key]} and {arg}: {key} is given twice, and Hydra would keep only "
                f"the last, so nothing was run. Give it once" + (
                    f" (both as one sweep: -m {key}={both})." if plain else "."))
    return None


def _parsed(args: list[str]) -> Iterator[tuple[str, Override]]:
    """Each override as typed and as Hydra's grammar reads it (not a flag or a syntax error)."""
    parser = OverridesParser.create()
    for arg in args:
        try:
            (override,) = parser.parse_overrides([arg])
        except HydraException:
            continue
        yield arg, override


def interval_sweep(args: list[str]) -> str | None:
    """An `interval(a,b)` outside a tuned study (whose sweeper words its own): the grid and
    basic sweepers list values, and Hydra's refusal is a traceback after making the folder."""
    if "experiment=tuned" in args:
        return None
    for arg, override in _parsed(args):
        if override.is_sweep_override() and not override.is_discrete_sweep():
            bounds = override.value()
            return (f"{arg}: an interval is a range for a search to sample, but a sweep trains "
                    "the values it lists, so nothing was run. List them, e.g. -m "
                    f"{override.key_or_group}={bounds.start:g},{bounds.end:g}; to search a range, "
                    "run a tuned study (experiment=tuned; its space is hydra.sweeper.search).")
    return None


def search_entry(args: list[str]) -> str | None:
    """`hydra.sweeper.search.sgd.optim.optimizer.lr=…`: Hydra reads the entry's dots as nesting
    (and its hint, `+`, would nest it)."""
    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        optim, _, entry = key.removeprefix("hydra.sweeper.search.").partition(".")
        if key.startswith("hydra.sweeper.search.") and "." in entry and value:
            return (f"{arg}: a search entry's name holds dots ({entry}), which an override reads "
                    "as nesting, so nothing was run. Change it through its optimizer's mapping, "
                    f"which merges: 'hydra.sweeper.search.{optim}={{{entry}: \"{value}\"}}'.")
    return None


def sweeper_clash(args: list[str]) -> str | None:
    """A sweeper chosen against the experiment's: another with experiment=tuned, or the tuned
    one without it (whose cells, search space and re-runs come with the experiment)."""
    sweeper = next((a.split("=", 1)[1] for a in args if a.startswith("hydra/sweeper=")), None)
    if sweeper is None or (sweeper == "tuned") == ("experiment=tuned" in args):
        return None
    if sweeper == "tuned":
        return ("hydra/sweeper=tuned is experiment=tuned's sweeper, so nothing was run. Type "
                "experiment=tuned instead (a tuned study), or drop hydra/sweeper=tuned.")
    return (f"experiment=tuned searches with its own sweeper, so hydra/sweeper={sweeper} would "
            "run one untuned job; nothing was run. Drop hydra/sweeper.")


def launcher_without_sweep(args: list[str]) -> str | None:
    """A launcher chosen for a single run (`hydra/launcher=slurm`, no -m): Hydra would train
    it here, in this process (on a cluster's login node, say), not where the launcher runs."""
    launcher = next((a for a in args if a.lstrip("+").startswith("hydra/launcher=")), None)
    flags = {a.split("=", 1)[0] for a in args if a.startswith("-")}  # a sweep, or no job
    if launcher is None or launcher.endswith("=basic") or "hydra.mode=MULTIRUN" in args or \
            flags & {"-m", "--multirun", "-c", "--cfg", "-i", "--info", "-h", "--help"}:
        return None
    return (f"{launcher} launches the jobs of a sweep, so it takes -m: without it Hydra would "
            "train this one run here, in this process. Nothing was run. To launch it: python -m "
            f"bnstudy.train -m {' '.join(args)}")


TYPED_SCHEMAS = {"": StudySchema, "dataset.": DatasetSchema, "model.": ModelSchema,
                 "model.net.": MLPSchema}  # by the dotted prefix of their settings
NODES = {"int": (IntegerNode, "an integer"), "float": (FloatNode, "a number"),
         "bool": (BooleanNode, "true or false")}


def typed_settings() -> dict[str, tuple[str, bool]]:
    """The schema's int, float and bool settings by dotted key: (type, whether null is one)."""
    types = {prefix + f.name: str(f.type).partition(" | ")
             for prefix, schema in TYPED_SCHEMAS.items() for f in fields(schema)}
    return {key: (kind, none == "None") for key, (kind, _, none) in types.items() if kind in NODES}


def wrong_type(args: list[str]) -> str | None:
    """One paragraph for a value its setting's type refuses (`seed=0..3`, `dataset.lr=fast`,
    each of a sweep's; a Trainer flag's by its signature), with what to type; None if every
    value converts as Hydra converts it."""
    typed = typed_settings()
    for arg, override in _parsed(args):
        key = override.key_or_group
        if override.is_add() or override.is_delete() or (
                override.is_sweep_override() and not override.is_discrete_sweep()):
            continue  # (an interval: `interval_sweep`)
        values = override.sweep_iterator() if override.is_sweep_override() else \
            [override.value()]
        if key.startswith("trainer."):  # (a flag the Trainer lacks: `unknown_override`)
            if said := trainer_type(arg, key, values):
                return said
        elif key in typed:
            kind, nullable = typed[key]
            for value in values:
                try:
                    NODES[kind][0](value=value, is_optional=nullable)
                except ValidationError:
                    return (f"{arg}: {key} takes {NODES[kind][1]}{' or null' * nullable}, not "
                            f"{value!r}, so nothing was run. {_typed_example(key, kind)}")
    return None


def _typed_example(key: str, kind: str) -> str:
    """What to type for a setting of this type, from its default."""
    if kind == "bool":
        return f"Type {key}=true or {key}=false."
    default = OmegaConf.select(group_defaults({}), key)
    default = 1 if default is None else default
    several = f"{key}={default},{2 * default or 1}" if kind == "int" else \
        f"{key}={default},{default * 10:g}"
    if key == "seed":
        several += f" or -m 'seed=range({default},{default + 3})'"
    return f"Type e.g. {key}={default}; several are a sweep: -m {several}."


def first_mistake(args: list[str]) -> str | None:
    """The first mistake above in a command line's overrides (the entry point adds
    `sweeper_clash`)."""
    return given_twice(args) or unknown_override(args) or unknown_option(args) \
        or wrong_type(args) or lacking_option(args) or no_parallel_jobs(args) \
        or interval_sweep(args) or search_entry(args)
