"""The config's schema, its checks, and what a run records of it.

Hydra checks types, required keys and unknown keys against the dataclasses below (registered
in its ConfigStore by `register`) before anything runs; `validate` adds the ranges types cannot
express. `hparams` is what a run records of its config: the study's fixed list plus every other
setting that differs from the defaults of its group choices. Kept free of Lightning, so config
errors and `--help` answer in about two seconds.
"""

from __future__ import annotations

import difflib
import functools
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from bnstudy.errors import ConfigError
from bnstudy.norms import NORMS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class DatasetSchema:
    name: str = MISSING
    lr: float = MISSING          # the same for SGD and Adam (the study's rule)
    batch_size: int = MISSING
    max_epochs: int = MISSING
    val_size: float = MISSING    # a fraction (< 1) or a count of held-out training images
    train_size: int | None = None
    datamodule: Any = MISSING


@dataclass
class OptimSchema:
    name: str = MISSING
    optimizer: Any = MISSING


@dataclass
class MLPSchema:
    _target_: str = MISSING
    hidden_dim: int = 256
    depth: int = 1
    norm: str = MISSING  # set by the `norm` group


@dataclass
class CNNSchema(MLPSchema):
    channels: list[int] = field(default_factory=lambda: [32, 64])


@dataclass
class ModelSchema:
    _target_: str = MISSING
    net: Any = MISSING  # MLPSchema or CNNSchema, placed by the model option's defaults
    steps_per_call: int = 1  # minibatches per training_step (bnstudy.model.Classifier)


@dataclass
class PathsSchema:
    data_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class StudySchema:
    dataset: DatasetSchema = MISSING
    model: ModelSchema = MISSING
    optim: OptimSchema = MISSING
    paths: PathsSchema = MISSING
    trainer: Any = MISSING       # lightning.pytorch.Trainer's own arguments
    logger: Any = MISSING
    callbacks: Any = MISSING
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    run_name: str = MISSING
    threads: Any = "auto"


def register() -> None:
    """Puts the schemas in Hydra's ConfigStore (`conf/config.yaml` and the model options
    name them in their defaults lists) and the resolvers the configs use."""
    cs = ConfigStore.instance()
    cs.store(name="study_schema", node=StudySchema)
    cs.store(group="schema/net", name="mlp", node=MLPSchema)
    cs.store(group="schema/net", name="cnn", node=CNNSchema)
    resolvers = {"bnstudy.swept": swept_suffix, "bnstudy.config_subdir": config_subdir,
                 "bnstudy.tty": lambda: sys.stderr.isatty(), "bnstudy.job_dir": job_dir}
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


SHOWN = ("dataset", "norm", "optim", "seed")  # in every run name already
BOOKKEEPING = ("paths.", "hydra.", "resume", "overwrite", "threads", "trainer.enable_progress_bar",
               "experiment", "logger", "+", "~")  # logger: logger=csv and logger.x.y=...


def swept_suffix(override_dirname: str) -> str:
    """`-key=value` for each override of the job (Hydra's `override_dirname`) beyond those
    the run name shows and bookkeeping, so that runs differing in a setting differ in name.
    In a multirun only the settings the sweep varies count (`swept_keys`): a value set once
    for every job (`trainer.max_epochs=2`) is in each job's record, not in its name."""
    swept = swept_keys()
    parts = [item.split("=", 1) for item in override_dirname.split(",") if "=" in item]
    kept = [(key, value) for key, value in parts
            if key not in SHOWN and not key.startswith(BOOKKEEPING)
            and (swept is None or key in swept)]
    return "".join(f"-{key.rsplit('.', 1)[-1]}={value}" for key, value in kept)


def swept_keys() -> set[str] | None:
    """The keys the running multirun gives several values: sweeps on its command line and in
    `hydra.sweeper.params`, read from the `multirun.yaml` Hydra's sweeper saves in the sweep
    directory before it launches jobs. None outside a multirun or without that file."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    saved = Path(hydra.runtime.cwd) / hydra.sweep.dir / "multirun.yaml"
    if not saved.is_file():
        return None
    return set(_sweep_keys_of(str(saved), saved.stat().st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _sweep_keys_of(path: str, mtime_ns: int) -> frozenset[str]:
    """`swept_keys` of one saved `multirun.yaml` (~40 ms to read and parse; the run name is
    resolved several times a job, and a sweep's jobs may share a process)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweep = OmegaConf.load(path).hydra
    params = [f"{key}={value}" for key, value in (sweep.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *sweep.overrides.task])
    return frozenset(o.key_or_group for o in overrides if o.is_sweep_override())


def job_dir() -> str:
    """`paths.output_dir`: the job's directory (Hydra's `runtime.output_dir`), or, where no job
    runs (`--cfg job --resolve` prints the config), where it would be."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        runtime = HydraConfig.get().runtime
        if not OmegaConf.is_missing(runtime, "output_dir") and runtime.output_dir:
            return runtime.output_dir
    return "<the job's directory: hydra.run.dir, or hydra.sweep.dir/hydra.sweep.subdir>"


def config_subdir(output_dir: str, overwrite: bool) -> str | None:
    """Hydra's `output_subdir`: `.hydra`, unless the job directory already holds one (a resume
    or a refused rerun must leave the original config as it was; `overwrite=true` replaces
    it, unless another process holds the directory's lock: it will be refused)."""
    from bnstudy.jobdir import is_locked

    exists = (Path(output_dir) / ".hydra" / "config.yaml").is_file()
    return None if exists and (not overwrite or is_locked(output_dir)) else ".hydra"


def unknown_override(args: list[str]) -> str | None:
    """One paragraph for a command-line setting that no config has (`lr=0.1`), naming the
    settings of that name or close to it; None when each key starts as a config's does.
    Hydra's own message would suggest `+lr=0.1`, which adds a key nothing reads."""
    groups = {d.name for d in CONFIG_DIR.iterdir() if d.is_dir()}
    known = {f.name for f in fields(StudySchema)} | groups
    for arg in args:
        key = arg.split("=", 1)[0]
        if arg.startswith(("-", "+", "~")) or "=" not in arg or key.startswith("hydra") or \
                key.split(".")[0] in known:
            continue
        scored = {name: _likeness(key, name) for name in _setting_names()}
        near = sorted((k for k, score in scored.items() if score >= 0.75),
                      key=lambda k: (-scored[k], k.count(".")))
        value = arg.split("=", 1)[1]
        hint = (f"Did you mean {' or '.join(near[:3])}? Type e.g. {near[0]}={value}. "
                if near else "")
        return (f"{key}: no such setting. {hint}`python -m bnstudy.train --help` lists the "
                "groups and `python -m bnstudy.train --cfg job` every setting.")
    return None


def _likeness(key: str, name: str) -> float:
    """How much a setting's name (whole, or its last part) looks like a mistyped key, to one
    decimal; a top-level setting for a key without dots ranks first (`seeds` → `seed`)."""
    whole = difflib.SequenceMatcher(None, key, name).ratio()
    last = difflib.SequenceMatcher(None, key.rsplit(".", 1)[-1], name.rsplit(".", 1)[-1]).ratio()
    top = 0.2 if "." not in key and "." not in name and whole >= 0.75 else 0.0
    return round(max(whole, last), 1) + top


def _setting_names() -> list[str]:
    """Every dotted setting of the default config (`dataset.lr`, `optim.optimizer.lr`, …)."""
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config")

    def walk(node, prefix: str):
        for k in node:
            value = node._get_node(k)
            if isinstance(value, DictConfig):
                yield from walk(value, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"
    return list(walk(cfg, ""))


LOCAL_RESTARTS = 5  # submitit's local controller starts a job at most 6 times (`max_retry`)


def local_requeue_limit(launcher_cfg) -> str | None:
    """A warning when `max_num_timeout` asks submitit's local launcher for more requeues than
    it makes: past its limit a job ends the sweep in submitit's UncompletedJobError."""
    wanted = launcher_cfg.get("max_num_timeout")
    if not str(launcher_cfg.get("_target_", "")).endswith("LocalLauncher") or \
            not isinstance(wanted, int) or wanted <= LOCAL_RESTARTS:
        return None
    return (f"hydra.launcher.max_num_timeout={wanted}: submitit's local launcher restarts a job "
            f"at most {LOCAL_RESTARTS} times, so a job that needs more ends the sweep in "
            "submitit's UncompletedJobError (its record says interrupted; resume=true goes on). "
            "Give each attempt more time (hydra.launcher.timeout_min) instead; SLURM honours "
            "max_num_timeout.")


def single_run_of_a_sweep(hydra_cfg) -> str | None:
    """A warning when an experiment that is a sweep (`experiment=lr_sweep`, `decisive`,
    `tuned`) runs without `-m`: Hydra then runs one job with the config's own values."""
    experiment = hydra_cfg.runtime.choices.get("experiment")
    sweeper = hydra_cfg.sweeper
    params = dict(sweeper.get("params") or {})
    varies = bool(set(params) - {"seed"}) or params.get("seed") != "0,1,2"  # beyond the default
    own_sweeper = not sweeper._target_.startswith("hydra._internal.")  # experiment=tuned
    if experiment is None or not (varies or own_sweeper):
        return None
    return (f"experiment={experiment} is a sweep, but without -m Hydra runs one job with the "
            "config's own values. To run the sweep: python -m bnstudy.train -m "
            f"experiment={experiment} (plus your other settings).")


def check_known_keys(cfg: DictConfig) -> None:
    """Refuses keys the schema does not have (Hydra's `+key=value` adds them past the types),
    naming the valid ones."""
    nodes = {"": (cfg, StudySchema), "dataset.": (cfg.dataset, DatasetSchema),
             "model.": (cfg.model, ModelSchema), "optim.": (cfg.optim, OptimSchema),
             "paths.": (cfg.paths, PathsSchema),
             "model.net.": (cfg.model.net, CNNSchema if "channels" in cfg.model.net else MLPSchema)}
    for prefix, (node, schema) in nodes.items():
        valid = {f.name for f in fields(schema)} | ({"hydra"} if not prefix else set())
        unknown = sorted(set(node) - valid)
        if unknown:
            where = f" under {prefix[:-1]}" if prefix else " at the top level"
            raise ConfigError(
                f"{', '.join(prefix + k for k in unknown)}: no such setting. Valid keys{where}: "
                f"{', '.join(sorted(valid - {'hydra'}))} (e.g. dataset.lr=0.1; "
                "`python -m bnstudy.train --cfg job` shows them all)."
            )


def validate(cfg: DictConfig) -> None:
    """Checks the keys and the ranges types cannot express, before anything is built."""
    check_known_keys(cfg)
    if cfg.model.net.norm not in NORMS:
        raise ConfigError(f"model.net.norm={cfg.model.net.norm!r} is not a known normalisation; "
                          f"use one of {', '.join(NORMS)} (e.g. norm=bn).")
    integer, positive = "an integer >= 1", "a number > 0"
    checks = [
        ("dataset.batch_size", cfg.dataset.batch_size, _count, integer),
        ("dataset.lr", cfg.dataset.lr, lambda v: _number(v) and v > 0, positive),
        ("optim.optimizer.lr", cfg.optim.optimizer.lr, lambda v: _number(v) and v > 0, positive),
        ("trainer.max_epochs", cfg.trainer.max_epochs, _count, integer),
        ("model.net.hidden_dim", cfg.model.net.hidden_dim, _count, integer),
        ("model.net.depth", cfg.model.net.depth, _count, integer),
        ("model.steps_per_call", cfg.model.steps_per_call, _count, integer),
        ("dataset.val_size", cfg.dataset.val_size,
         lambda v: _number(v) and (0 < v < 1 or (v >= 1 and float(v).is_integer())),
         "a fraction in (0, 1) or a whole count >= 1"),
        ("dataset.train_size", cfg.dataset.train_size, lambda v: v is None or _count(v),
         "null (all remaining images) or an integer >= 1"),
        ("threads", cfg.threads, lambda v: v == "auto" or _count(v), "auto or an integer >= 1"),
    ]
    for key, value, ok, allowed in checks:
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is out of range; it must be {allowed}.")
    if cfg.dataset.batch_size == 1 and NORMS[cfg.model.net.norm].flat.startswith("BatchNorm"):
        raise ConfigError(
            f"dataset.batch_size=1 with norm={cfg.model.net.norm}: BatchNorm normalises over "
            "the batch, which one image cannot give. Use dataset.batch_size=2 or more, or "
            "norm=none / norm=layer.")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def flat(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as `{dotted.key: value}`, without Hydra's node and paths."""
    out: dict[str, Any] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = tuple(node) if isinstance(node, list) else node

    # Where a run writes is not what it ran: paths and the run's name are left out, so the
    # rest resolves outside a running job too.
    plain = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg).items()
                              if k not in ("hydra", "run_name")})
    plain.paths = {"data_dir": "", "output_dir": ""}
    container = OmegaConf.to_container(plain, resolve=True)
    walk({k: v for k, v in container.items() if k != "paths"}, "")
    return out


STUDY_KEYS = ("dataset", "model", "depth", "norm", "optim", "seed", "lr", "batch_size",
              "hidden_dim", "max_epochs")
NOT_SETTINGS = ("resume", "overwrite", "run_name", "threads", "trainer.enable_progress_bar",
                "trainer.default_root_dir", "dataset.datamodule.data_dir", "logger.",
                "model.steps_per_call")  # the same results for any K


def hparams(cfg: DictConfig, defaults: DictConfig | None = None,
            overridden: tuple[str, ...] = ()) -> dict:
    """The study's settings (dataset, model, depth, norm, optim, seed, lr, batch size, hidden
    width, epochs) and, given the config its group choices give by default, every other
    setting that differs from it or was set on the command line (`overridden` keys, so a swept
    default value shows too), e.g. `optim.optimizer.momentum`, by dotted key."""
    net = cfg.model.get("net", cfg.model)  # (before nets.py, the model held the net's keys)
    study = {
        "dataset": cfg.dataset.name,
        "model": net._target_.rsplit(".", 1)[-1].lower().removesuffix("classifier"),
        "depth": OmegaConf.select(net, "depth", default=1),
        "norm": net.norm,
        "optim": cfg.optim.name,
        "seed": cfg.seed,
        "lr": cfg.optim.optimizer.lr,
        "batch_size": cfg.dataset.batch_size,
        "hidden_dim": net.hidden_dim,
        "max_epochs": cfg.trainer.max_epochs,
    }
    if defaults is None:
        return study
    mine, base = flat(cfg), flat(defaults)
    covered = {"dataset.lr", "optim.optimizer.lr", "dataset.batch_size", "seed",
               "dataset.max_epochs", "trainer.max_epochs", "model.net.depth",
               "model.net.hidden_dim", "model.net.norm", "dataset.datamodule.batch_size",
               "dataset.datamodule.seed"}
    extra = {key: list(value) if isinstance(value, tuple) else value
             for key, value in mine.items()
             if key not in covered and not key.startswith(NOT_SETTINGS)
             and (base.get(key, object()) != value or key in overridden)}
    return study | extra


def group_defaults(choices: dict) -> DictConfig:
    """The config that the group `choices` (Hydra's `runtime.choices`: `{"dataset": "mnist",
    ...}`) give without any other override, composed from `conf/`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    overrides = [f"{group}={choice}" for group, choice in choices.items()
                 if choice is not None and not group.startswith(("hydra", "schema"))]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its own search path
        return compose("config", overrides=overrides)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def overridden_keys(overrides) -> tuple[str, ...]:
    """The dotted keys a list of command-line overrides sets (`+x=1`, `~x` give `x`)."""
    return tuple(o.split("=", 1)[0].lstrip("+~") for o in overrides)


def changed_settings(stored: DictConfig, current: DictConfig) -> list[str]:
    """The settings (dotted keys, with both values) in which two configs of a job differ,
    ignoring bookkeeping (resume, overwrite, threads, paths, progress bar) and what only
    observes training (callbacks, logger): a resume may draw other pictures, not train
    differently."""
    old, new = flat(stored), flat(current)
    ignored = (*NOT_SETTINGS, "callbacks.", "logger.")
    keys = sorted(k for k in old.keys() | new.keys()
                  if not k.startswith(ignored) and old.get(k) != new.get(k))
    return [f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}" for k in keys]
