"""The config's schema (`register`), the ranges types cannot express (`validate`), and what a
run records of its config (`hparams`). Free of Lightning: config errors answer in seconds."""

from __future__ import annotations

import copy
import functools
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf

from bnstudy.errors import ConfigError, arguments_refused
from bnstudy.norms import NORMS
from bnstudy.records import HOW_IT_RUNS, SHOWN, plan_overrides

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class DatasetSchema:
    name: str = MISSING
    lr: float = MISSING          # the same for SGD and Adam (the study's rule)
    batch_size: int = MISSING
    max_epochs: int = MISSING
    val_size: float = MISSING    # a fraction (< 1) or a count of held-out training images
    train_size: int | None = None
    equivalence_margin: float = MISSING  # the report's "equivalent": |difference| within this
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
    """Puts the schemas in Hydra's ConfigStore and the config's resolvers in OmegaConf."""
    for name, node in {"study": StudySchema, "mlp": MLPSchema, "cnn": CNNSchema}.items():
        ConfigStore.instance().store(name=f"{name}_schema", node=node)
    from bnstudy.jobdir import config_subdir

    resolvers = {"bnstudy.swept": swept_suffix, "bnstudy.tty": lambda: sys.stderr.isatty(),
                 "bnstudy.job_dir": job_dir, "bnstudy.config_subdir": config_subdir}
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


BOOKKEEPING = (*HOW_IT_RUNS, "hydra.", "experiment")  # in no run's name


def swept_suffix(override_dirname: str) -> str:
    """`-key=value` for each override of the job (Hydra's `override_dirname`) but the run's
    name and bookkeeping; in a multirun only those it varies. Sampled values at 4 digits."""
    swept = swept_keys()
    items = re.split(r",(?=[+~]|[\w./@-]+=)", override_dirname)  # not a list value's commas
    parts = [item.split("=", 1) for item in items if "=" in item]
    return "".join(f"-{key.rsplit('.', 1)[-1]}={_short(value)}" for key, value in parts
                   if key not in SHOWN and not key.startswith(BOOKKEEPING)
                   and (swept is None or key.lstrip("+") in swept))


def _short(value: str) -> str:
    """A decimal of over 6 significant digits (a sampled `0.009101544767565362`) at 4."""
    decimal = re.fullmatch(r"-?(\d*\.\d+)(e[-+]?\d+)?", value)
    digits = decimal and decimal[1].replace(".", "").strip("0")
    return f"{float(value):.4g}" if digits and len(digits) > 6 else value


def is_multirun() -> bool:
    """Whether this process runs a job of a sweep (`-m`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def swept_keys() -> set[str] | None:
    """The keys the running multirun varies (from Hydra's `multirun.yaml`); None elsewhere."""
    if not is_multirun():
        return None
    hydra = HydraConfig.get()
    saved = Path(hydra.runtime.cwd) / hydra.sweep.dir / "multirun.yaml"
    return set(_sweep_keys_of(str(saved), saved.stat().st_mtime_ns)) if saved.is_file() else None


@functools.lru_cache(maxsize=8)
def _sweep_keys_of(path: str, mtime_ns: int) -> frozenset[str]:  # ~40 ms, several times a job
    return frozenset(o.key_or_group for o in plan_overrides(OmegaConf.load(path).hydra)
                     if o.is_sweep_override())


NO_JOB_DIR = "<the job's directory: hydra.run.dir, or hydra.sweep.dir/hydra.sweep.subdir>"


def job_dir() -> str:
    """`paths.output_dir`: Hydra's `runtime.output_dir`, or where it would be (`--cfg job`)."""
    if HydraConfig.initialized():
        runtime = HydraConfig.get().runtime
        if not OmegaConf.is_missing(runtime, "output_dir") and runtime.output_dir:
            return runtime.output_dir
    return NO_JOB_DIR


def check_known_keys(cfg: DictConfig) -> None:
    """Refuses keys the schema lacks (`+key=value` adds them past the types), naming the valid."""
    nodes = {"": (cfg, StudySchema), "dataset.": (cfg.dataset, DatasetSchema),
             "model.": (cfg.model, ModelSchema), "optim.": (cfg.optim, OptimSchema),
             "paths.": (cfg.paths, PathsSchema),
             "model.net.": (cfg.model.net, CNNSchema if "channels" in cfg.model.net else MLPSchema)}
    for prefix, (node, schema) in nodes.items():
        valid = {f.name for f in fields(schema)} | ({"hydra"} if not prefix else set())
        if unknown := sorted(set(node) - valid):
            where = f" under {prefix[:-1]}" if prefix else " at the top level"
            raise ConfigError(
                f"{', '.join(prefix + k for k in unknown)}: no such setting. Valid keys{where}: "
                f"{', '.join(sorted(valid - {'hydra'}))} (e.g. dataset.lr=0.1; "
                "`python -m bnstudy.train --cfg job` shows them all).")


def validate(cfg: DictConfig, given=()) -> None:
    """Checks the keys and the ranges types cannot express, before anything is built; where the
    overrides `given` set `dataset.datamodule.*`, its class's arguments (imported only then)."""
    check_known_keys(cfg)
    if cfg.model.net.norm not in NORMS:
        raise ConfigError(f"model.net.norm={cfg.model.net.norm!r} is not a known normalisation; "
                          f"use one of {', '.join(NORMS)} (e.g. norm=bn).")
    count, positive = (_count, "an integer >= 1"), (lambda v: _number(v) and v > 0, "a number > 0")
    checks = [
        ("dataset.batch_size", cfg.dataset.batch_size, *count),
        *((f"dataset.datamodule.{key}", cfg.dataset.datamodule.get(key, 1), *count)
          for key in ("batch_size", "eval_batch_size")),  # (set there, not by dataset.*)
        ("dataset.lr", cfg.dataset.lr, *positive),
        ("optim.optimizer.lr", cfg.optim.optimizer.lr, *positive),
        ("trainer.max_epochs", cfg.trainer.max_epochs, *count),
        ("model.net.hidden_dim", cfg.model.net.hidden_dim, *count),
        ("model.net.depth", cfg.model.net.depth, *count),
        ("model.steps_per_call", cfg.model.steps_per_call, *count),
        ("dataset.val_size", cfg.dataset.val_size,
         lambda v: _number(v) and (0 < v < 1 or (v >= 1 and float(v).is_integer())),
         "a fraction in (0, 1) or a whole count >= 1"),
        ("dataset.train_size", cfg.dataset.train_size, lambda v: v is None or _count(v),
         "null (all remaining images) or an integer >= 1"),
        ("dataset.equivalence_margin", cfg.dataset.equivalence_margin,
         lambda v: _number(v) and 0 < v < 1, "an accuracy fraction in (0, 1), e.g. 0.005"),
        ("threads", cfg.threads, lambda v: v == "auto" or _count(v), "auto or an integer >= 1"),
        ("seed", cfg.seed, lambda v: 0 <= v < 2**32, "an integer from 0 to 4294967295 (numpy's)"),
    ]
    for key, value, ok, allowed in checks:
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is out of range; it must be {allowed}.")
    for name in ("weight_grid", "hallucinations"):
        for key in (cfg.callbacks.get(name) or {}):  # (only these resolve outside a job)
            if (key in LEAST or key in ABOVE) and (
                    need := picture_range(key, value := cfg.callbacks[name][key])):
                raise ConfigError(f"callbacks.{name}.{key}={value!r} is out of range; it must "
                                  f"be {need}.")
    read = cfg.dataset.datamodule.get("batch_size", cfg.dataset.batch_size)  # as checked above
    key = "dataset.batch_size" if cfg.dataset.batch_size == 1 else "dataset.datamodule.batch_size"
    if read == 1 and NORMS[cfg.model.net.norm].flat.startswith("BatchNorm"):
        raise ConfigError(f"{key}=1 with norm={cfg.model.net.norm}: BatchNorm normalises over "
                          f"the batch, which one image cannot give. Use {key}=2 or more, or "
                          "norm=none / norm=layer.")
    if any(k.startswith("dataset.datamodule.") for k in overridden_keys(given)) and (
            said := arguments_refused(cfg.dataset.datamodule, "dataset.datamodule")):
        raise ConfigError(said)


# The picture settings' least values (LEAST) and bounds they must exceed (ABOVE)
LEAST = {"steps": 0, "epoch_steps": 0, "seeds": 1, "jitter": 0, "blur_every": 0, "nrow": 1,
         "num_units": 1, "every_n_epochs": 0, "l2": 0, "tv": 0, "blur_sigma": 0, "noise_std": 0}
ABOVE = {"lr": 0, "size": 0}


def picture_range(key: str, value) -> str | None:
    """What a picture setting (`callbacks.weight_grid` or `.hallucinations`) must be, where
    `value` is not; None when in range (or null)."""
    if not _number(value):
        return None  # null, or another type: refused by its type where it is used
    if key in LEAST and value < LEAST[key]:
        return f">= {LEAST[key]}"
    return f"> {ABOVE[key]}" if key in ABOVE and value <= ABOVE[key] else None


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value) -> bool:
    return _number(value) and isinstance(value, int) and value >= 1


def flat(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as `{dotted.key: value}` (lists as tuples), without Hydra's node,
    paths and run name (what a run writes where, so the rest resolves outside a job too)."""
    plain = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg).items()
                              if k not in ("hydra", "run_name")})
    plain.paths = {"data_dir": "", "output_dir": ""}
    container = OmegaConf.to_container(plain, resolve=True)
    del container["paths"]
    return dotted(container)


def dotted(node, prefix: str = "") -> dict[str, Any]:
    """A nested container as `{dotted.key: value}` (lists as tuples)."""
    if not isinstance(node, dict):
        return {prefix[:-1]: tuple(node) if isinstance(node, list) else node}
    return {k: v for key, value in node.items()
            for k, v in dotted(value, f"{prefix}{key}.").items()}


NOT_SETTINGS = ("resume", "overwrite", "run_name", "threads", "trainer.enable_progress_bar",
                "trainer.enable_checkpointing",
                "trainer.default_root_dir", "dataset.datamodule.data_dir", "logger.",
                "model.steps_per_call",  # the same results for any K
                "dataset.equivalence_margin")  # how the report reads the runs, not a setting


def hparams(cfg: DictConfig, defaults: DictConfig | None = None,
            overridden: tuple[str, ...] = ()) -> dict:
    """The study's settings (dataset, model, norm, optim, seed, lr, ...) and, by dotted key, any
    other that differs from `defaults` (its group choices') or was `overridden`."""
    net = cfg.model.get("net", cfg.model)  # (before nets.py, the model held the net's keys)
    study = {"dataset": cfg.dataset.name,
             "model": net._target_.rsplit(".", 1)[-1].lower().removesuffix("classifier"),
             "depth": OmegaConf.select(net, "depth", default=1), "norm": net.norm,
             "optim": cfg.optim.name, "seed": cfg.seed, "lr": cfg.optim.optimizer.lr,
             "batch_size": cfg.dataset.batch_size, "hidden_dim": net.hidden_dim,
             "max_epochs": cfg.trainer.max_epochs}
    if defaults is None:
        return study
    mine, base = flat(cfg), flat(defaults)
    covered = {"dataset.lr", "optim.optimizer.lr", "dataset.batch_size", "seed",
               "dataset.max_epochs", "trainer.max_epochs", "model.net.depth",
               "model.net.hidden_dim", "model.net.norm", "dataset.datamodule.batch_size",
               "dataset.datamodule.seed"}
    extra = {key: list(value) if isinstance(value, tuple) else value for key, value in mine.items()
             if key not in covered and not key.startswith(NOT_SETTINGS)
             and (base.get(key, object()) != value or key in overridden)}
    return study | extra


def group_defaults(choices: dict) -> DictConfig:
    """The config the group `choices` (Hydra's `runtime.choices`, less a config's own `x@pkg`)
    give without other overrides."""
    overrides = [f"{group}={choice}" for group, choice in choices.items()
                 if choice is not None and "@" not in group and not group.startswith("hydra")]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its own search path
        return copy.deepcopy(_app_composed(tuple(overrides)))  # (a sweep's jobs share choices)
    return compose_cached(overrides)


@functools.cache
def _app_composed(overrides: tuple[str, ...]) -> DictConfig:
    return hydra_compose("config", overrides=list(overrides))


def compose_cached(overrides, return_hydra_config: bool = False) -> DictConfig:
    """Hydra's compose of the project's config: a copy of one made before for the same overrides."""
    return copy.deepcopy(_composed(tuple(overrides), return_hydra_config))


@functools.lru_cache(maxsize=64)
def _composed(overrides: tuple[str, ...], return_hydra_config: bool) -> DictConfig:
    register()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides),
                             return_hydra_config=return_hydra_config)


def overridden_keys(overrides) -> tuple[str, ...]:
    """The dotted keys a list of command-line overrides sets (`+x=1`, `~x` give `x`)."""
    return tuple(o.split("=", 1)[0].lstrip("+~") for o in overrides)


def changed_settings(stored: DictConfig, current: DictConfig) -> list[str]:
    """The settings (dotted keys, both values) in which two configs of a job differ, but
    bookkeeping and observers (callbacks, logger): a resume may draw other pictures."""
    old, new = flat(stored), flat(current)
    keys = sorted(k for k in old.keys() | new.keys()
                  if not k.startswith((*NOT_SETTINGS, "callbacks.")) and old.get(k) != new.get(k))
    return [f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}" for k in keys]
