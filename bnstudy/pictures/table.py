"""The report's picture measures: a `pictures.csv` row per ok run from its saved
`images/*_final.pt`, against its dataset's references (the independent judge, cached, and the
principal components) and the other runs' networks (the cross-model confidence)."""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


log = logging.getLogger(__name__)

PICTURE_FILES = {"hallucinations": "hallucinations_final.pt", "weights": "weights_final.pt"}
# pictures.csv: column → (what it is, format in report.md); the hallucinations' columns first
HALLUCINATION_COLUMNS = {
    "referee_acc": ("share of class images the independent CNN reads as their class", ".0%"),
    "referee_conf": ("the independent CNN's mean probability of the image's class", ".2f"),
    "own_conf": ("the run's own network's mean probability of the image's class", ".2f"),
    "cross_conf": ("other runs' networks (same dataset): mean probability of the class", ".2f"),
    "nearest_mean_acc": ("share of class images closest (correlation) to their real class "
                         "mean", ".0%"),
    "stuck": ("class images still at their starting noise (correlation > 0.9 with the "
              "recipe's noise alone, or faded)", "d"),
    "noise_corr": ("mean correlation of the images with the recipe's noise alone (lr = 0)",
                   ".2f"),
    "sharpness": ("edge strength after a σ=1 px blur (pixel units / px)", ".3f"),
    "noise_sharpness": ("the same of the recipe's noise alone (no gradient: lr = 0)", ".3f"),
    "distinctness": ("1 − mean correlation between different classes' images", ".2f"),
    "colour_fidelity": ("correlation of class colour deviations with the real class means'",
                        ".2f"),
    "blueness_airplane": ("B − (R+G)/2 of the airplane image", "+.3f"),
    "greenness_dog": ("G − (R+B)/2 of the dog image", "+.3f"),
    "greenness_frog": ("G − (R+B)/2 of the frog image", "+.3f"),
    "seconds": ("seconds the final hallucination took", ".2f"),
}
WEIGHT_COLUMNS = {
    "change_share": ("median over units of ||final − initial||² / ||final||²", ".1%"),
    "hf_share": ("median share of a unit's power above half Nyquist (final weights)", ".2f"),
    "pc_alignment": ("median share of a unit's energy in the data's top-32 principal "
                     "components (final weights)", ".3f"),
    "change_pc_alignment": ("the same for the learned change (final − initial)", ".3f"),
    "noise_units": ("share of units that are noise-like (alignment < 2 × chance)", ".0%"),
    "noise_units_initial": ("the same at initialisation", ".0%"),
}
COLUMNS = {**HALLUCINATION_COLUMNS, **WEIGHT_COLUMNS}
# The colour columns (RGB only): column → (class, its channel against the two others' mean)
TINTS = {"blueness_airplane": ("airplane", 2), "greenness_dog": ("dog", 1),
         "greenness_frog": ("frog", 1)}


def load_tensors(path: Path) -> dict | None:
    """A picture file (plain tensors, `weights_only`); None if absent or unreadable."""
    import torch

    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a half-written or foreign file: measured as missing
        log.warning("cannot read %s: %s", path, err)
        return None


@dataclass
class PictureRun:
    """An ok run (its `load_runs` row) with what its picture callbacks saved."""

    run: pd.Series
    hallucinations: dict | None
    weights: dict | None
    net: object | None = None  # its network, for the cross-model confidence


def load_picture_runs(runs: pd.DataFrame) -> list[PictureRun]:
    """The ok runs (rows of `load_runs`) that saved at least one picture file."""
    found = (PictureRun(run, **{kind: load_tensors(Path(run["path"]) / "images" / name)
                                for kind, name in PICTURE_FILES.items()})
             for _, run in runs[runs["outcome"] == "ok"].iterrows())
    return [p for p in found if p.hallucinations or p.weights]


def load_net(run: pd.Series, input_shape, num_classes: int):
    """The run's final network; None if its config or checkpoint is missing or does not fit."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from bnstudy.checkpoints import read_checkpoint

    path = Path(run["path"])
    config, ckpt = path / ".hydra" / "config.yaml", path / "checkpoints" / "last.ckpt"
    if not (config.is_file() and ckpt.is_file()):
        return None
    try:
        cfg = OmegaConf.load(config)
        net = instantiate(cfg.model.net, input_shape=tuple(input_shape), num_classes=num_classes)
        state = read_checkpoint(ckpt)["state_dict"]
        net.load_state_dict({k[len("net."):]: v for k, v in state.items()
                             if k.startswith("net.")})
        return net.eval()
    except Exception as err:  # an older layout or a foreign checkpoint: no cross-model number
        log.warning("%s: network not loaded for the cross-model confidence: %s", run["job"], err)
        return None


@dataclass
class Reference:
    """A dataset's references: real class means (pixels), principal components, the judge."""

    dataset: str
    classes: list[str]
    input_shape: list[int]
    real_means: object | None = None     # (K, C, H, W) pixels
    components: object | None = None     # (k, D), of normalised training images
    referee: object | None = None        # bnstudy.pictures.measures.Referee
    notes: list[str] = field(default_factory=list)


def open_datamodule(source: dict):
    """The datamodule a run recorded (`bnstudy.data.*` only), its train and validation splits."""
    module, _, name = source["datamodule"].rpartition(".")
    if module != "bnstudy.data":
        raise ValueError(f"{source['datamodule']} is not one of the project's datamodules")
    cls = getattr(importlib.import_module(module), name)
    extra = {"verify_checksums": "off"} if "verify_checksums" in inspect.signature(cls).parameters \
        else {}
    data = cls(source["data_dir"], download=False, **extra)
    data.setup("validate")
    return data


def reference(dataset: str, picture_runs: list[PictureRun], cache_dir: Path) -> Reference:
    """The dataset's references from the first run's recorded data; the judge cached in
    `cache_dir/referee_<dataset>.pt` while data directory, size and settings are the same."""
    import torch

    from bnstudy.pictures.measures import Referee, principal_components

    first = next(f for p in picture_runs for f in (p.hallucinations, p.weights) if f)
    ref = Reference(dataset, list(first.get("classes", [])),
                    list(first.get("input_shape") or first["images"].shape[1:]),
                    next((p.hallucinations["real_means"] for p in picture_runs
                          if p.hallucinations), None))
    try:
        data = open_datamodule(first)
    except Exception as err:
        ref.notes.append(f"the {dataset} data could not be loaded from {first.get('data_dir')} "
                         f"({type(err).__name__}: {err}): no independent judge and no "
                         "principal components")
        return ref
    ref.components = principal_components(data.train_set.x)
    judge = Referee(data.input_shape, len(data.classes))
    key = {**judge.settings, "data_dir": str(first["data_dir"]), "n_train": len(data.train_set.y)}
    cache = cache_dir / f"referee_{dataset}.pt"
    cached = load_tensors(cache)
    if cached is not None and cached.get("key") == key:
        judge.load_state_dict(cached["state"])
    else:
        judge.fit(data.train_set.x, data.train_set.y, (data.val_set.x, data.val_set.y))
        torch.save({"key": key, "state": judge.state_dict()}, cache)
    ref.referee = judge
    return ref


def to_pixels(h: dict, key: str = "images"):
    """The hallucination file's normalised `h[key]` back in pixels, clamped to [0, 1]."""
    import torch

    mean, std = (torch.tensor(h[k]).view(-1, 1, 1) for k in ("mean", "std"))
    return (h[key].float() * std + mean).clamp(0, 1)


def hallucination_measures(h: dict, ref: Reference, others: list) -> dict[str, float]:
    """The hallucination columns of one run (NaN where a reference is missing)."""
    import torch

    from bnstudy.pictures import measures as P

    images = h["images"].float()
    pixels = to_pixels(h)
    classes = list(h.get("classes") or ref.classes)
    row = dict.fromkeys(HALLUCINATION_COLUMNS, math.nan)
    row["own_conf"] = float(h["own_probabilities"].diagonal().mean())
    if ref.referee is not None:
        ok, conf = P.recognised(ref.referee.probabilities(images))
        row["referee_acc"], row["referee_conf"] = float(ok.float().mean()), float(conf.mean())
    if probs := [P.predict(net, images).diagonal().mean() for net in others]:
        row["cross_conf"] = float(torch.stack(probs).mean())
    real, noise, base = (h[key].float() for key in ("real_means", "noise", "base"))
    row["nearest_mean_acc"] = float(P.nearest_mean(pixels, real).float().mean())
    row["stuck"] = int(P.stuck(images, noise, base).sum())
    row["noise_corr"] = float(P.noise_correlation(images, noise, base).mean())
    row["sharpness"] = float(P.sharpness(pixels).mean())
    row["noise_sharpness"] = float(P.sharpness(to_pixels(h, "noise")).mean())
    row["distinctness"] = P.distinctness(pixels)
    if pixels.shape[1] == 3:
        row["colour_fidelity"] = P.colour_fidelity(pixels, real)
        for column, (name, channel) in TINTS.items():
            if name in classes:
                row[column] = float(P.tint(pixels, channel)[classes.index(name)])
    row["seconds"] = float(h.get("seconds", math.nan))
    return row


def weight_measures(w: dict, ref: Reference) -> dict[str, float]:
    """The weight columns of one run (NaN where a Linear first layer or the data's components
    are needed and missing)."""
    from bnstudy.pictures import measures as P

    final, initial = w["final"].float(), w["initial"].float()
    row = dict.fromkeys(WEIGHT_COLUMNS, math.nan)
    row["change_share"] = float(P.change_share(final, initial).median())
    shape = list(w["input_shape"])
    if final.dim() != 2 or final.shape[1] != math.prod(shape):
        return row  # a conv layer's small filters: only the change share applies
    row["hf_share"] = float(P.high_frequency_share(final, shape).median())
    if (pcs := ref.components) is not None:
        row["pc_alignment"] = float(P.pc_alignment(final, pcs).median())
        row["change_pc_alignment"] = float(P.pc_alignment(final - initial, pcs).median())
        row["noise_units"] = float(P.noise_like(final, pcs).float().mean())
        row["noise_units_initial"] = float(P.noise_like(initial, pcs).float().mean())
    return row


def measure(picture_runs: list[PictureRun], refs: dict[str, Reference],
            keys: list[str]) -> list[dict]:
    """One pictures.csv row per run: its group keys, seed, job and measures."""
    rows = []
    for p in picture_runs:
        dataset = p.run.get("dataset")
        row = {**{k: p.run.get(k) for k in keys}, "seed": p.run.get("seed"), "job": p.run["job"],
               **dict.fromkeys(COLUMNS, math.nan)}
        if p.hallucinations is not None:
            others = [q.net for q in picture_runs
                      if q is not p and q.net is not None and q.run.get("dataset") == dataset]
            row.update(hallucination_measures(p.hallucinations, refs[dataset], others))
        if p.weights is not None:
            row.update(weight_measures(p.weights, refs[dataset]))
        rows.append(row)
    return rows
