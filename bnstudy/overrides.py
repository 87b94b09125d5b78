"""The command line's overrides: the config they compose (`compose`, what
`python -m bnstudy.train <overrides>` runs), and the mistakes found before Hydra composes them
(a key no config has, a group option no file is, a sweeper against the experiment's), each
one paragraph. Free of Lightning, as `config`."""

from __future__ import annotations

import difflib
import itertools
import os
from dataclasses import fields

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from bnstudy.config import CONFIG_DIR, StudySchema, compose_cached, dotted, flat, group_defaults
from bnstudy.errors import ConfigError, first_line


def compose(overrides=()) -> DictConfig:
    """The config `python -m bnstudy.train <overrides>` runs, with Hydra's runtime set (so
    `${hydra:...}`, the run's name, resolves): what `bnstudy.run.train(cfg)` takes from Python.
    A mistake is a `ConfigError` worded as the command line words it."""
    try:
        cfg = compose_cached(overrides, return_hydra_config=True)
    except HydraException as err:
        said = str(err).split("\nConfig search path:")[0].rstrip().replace(  # options, no path
            "add --multirun to your command line", "compose each value (or run train -m)")
        why = f" ({first_line(err.__cause__)})" if err.__cause__ else ""
        raise ConfigError(unknown_override(list(overrides)) or f"{said}{why}") from None
    cfg.hydra.runtime.cwd = os.getcwd()  # not where the compose it copies was made
    HydraConfig.instance().set_config(cfg)
    return cfg


def unknown_override(args: list[str]) -> str | None:
    """One paragraph for a command-line setting no config has (`lr=0.1`), naming those close
    to it (Hydra's would suggest `+lr=0.1`); None if every key is known."""
    groups = {d.name for d in CONFIG_DIR.iterdir() if d.is_dir()}
    known = {f.name for f in fields(StudySchema)} | groups
    chosen = [a for a in args if a.split("=", 1)[0] in groups]  # group choices, e.g. optim=adam
    names = hydra_names = None
    for arg in args:
        key = arg.split("=", 1)[0]
        ours = not key.startswith("hydra")
        if arg.startswith(("-", "+", "~")) or "=" not in arg or key in known or not (
                ours or key.startswith(("hydra.sweeper.", "hydra.launcher."))):
            continue
        if ours and "." in key and key.split(".")[0] in known:  # `trainer.max_epoch`?
            names = names or _setting_names(chosen)
        elif not ours and not (hydra_names := hydra_names or _hydra_names(  # the chosen sweeper
                [a for a in args if a.startswith(("experiment=", "hydra/"))])):  # and launcher's
            return None  # an option that does not exist: Hydra says so
        candidates = names if ours else hydra_names
        if candidates and any(n == key or n.startswith(f"{key}.") for n in candidates):
            continue
        pool = candidates or _setting_names(chosen)
        if ours and "." not in key:  # a misspelt group (`nrom=bn`) too
            pool = [*pool, *sorted(groups - {"hydra"})]
        scored = {name: _likeness(key, name) for name in pool
                  if not name.rsplit(".", 1)[-1].startswith("_")}  # not _target_ and the like
        near = sorted((k for k, score in scored.items() if score >= 0.75),
                      key=lambda k: (-scored[k], k.count(".")))
        value, (group, _, option) = arg.split("=", 1)[1], key.partition(".")
        hint = (f"Did you mean {' or '.join(near[:3])}? Type e.g. {near[0]}={value}. "
                if near else "")
        if (CONFIG_DIR / group / f"{(option := option.partition('.')[0])}.yaml").is_file():
            hint = f"It comes with {group}={option} (several: '{group}=[...,{option}]'). " + hint
        elif group == "hydra" and (found := next((o for o in {  # a launcher's or sweeper's key
                "launcher": ("slurm", "submitit_local", "parallel"), "sweeper": ("tuned",)}.get(
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


def _setting_names(choices: list[str] = ()) -> list[str]:
    """Every setting of the config with these group choices (a swept one: each of its options)."""
    options = [[(c.split("=")[0], o) for o in c.split("=", 1)[1].split(",")] for c in choices]
    names = {"paths.data_dir", "paths.output_dir", "run_name"}
    for combination in itertools.product(*options):
        try:
            cfg = group_defaults(dict(combination))
        except (HydraException, ValueError):  # no such option, `x=null`: Hydra says so later
            cfg = group_defaults({})
        names.update(flat(cfg))
    return sorted(names)


def unknown_option(args: list[str]) -> str | None:
    """One paragraph for a group option no file is (`norm=batch`, `-m norm=bn,nnoe`,
    `logger=[csv,mlfow]`), with the closest and the group's options (Hydra's adds its search
    path, and lists none for a list), None if there is none."""
    for arg in args:
        group, equals, value = arg.partition("=")
        if equals and group.isidentifier() and group != "hydra" and "(" not in value and (
                CONFIG_DIR / group).is_dir():
            options = sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))
            if missing := [o for o in value.strip("[]").replace(" ", "").split(",")
                           if o not in options]:  # (not a sweep's `choice(...)`; `[]`: "")
                near = difflib.get_close_matches(missing[0], options, 1)
                return (f"{arg}: {group} has no option {missing[0] or '(none given)'}, so "
                        "nothing was run. "
                        + (f"Did you mean {near[0]}? " if near else "")
                        + f"Its options: {', '.join(options)}"
                        + (f" (several: '{group}=[a,b]')." if value.startswith("[") else "."))
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
