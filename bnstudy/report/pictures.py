"""The report's pictures: labelled comparison figures of the final hallucinations and
first-layer weights, the per-run picture measures (`pictures.csv`) and the verdicts on the
study's picture claims P1–P3.

- **P1** MNIST first-layer weights: without BN the weights are more interpretable (digit
  strokes); with BN + Adam most units learn structured patterns, while some non-BN units stay
  pure noise.
- **P2** CIFAR-10 hallucinations: non-BN networks capture only the class's general colour
  (airplanes mostly blue, dogs and frogs greenish); BN networks give more defined shapes with
  either optimizer; Adam + BN gives the most distinct images.
- **P3** MNIST hallucinations show recognisable class shapes.

Each run's `images/hallucinations_final.pt` and `images/weights_final.pt` (written by the
picture callbacks) are measured with `bnstudy.pictures`; the dataset is loaded again from the
directory the run recorded, to train the independent judge (`Referee`, cached in the report
directory) and to take the training images' principal components. Other runs' networks (from
their `checkpoints/last.ckpt`) give the cross-model confidence.

A comparison part **holds** when its estimate lies on the claimed side of zero with Welch's
two-sided p < 0.05, **does not hold** when it lies on the other side with p < 0.05, and
otherwise we **cannot tell**. A part about every seed (some units noise-like, images
recognisable) holds when every seed meets it, does not hold when no seed does, and otherwise
we cannot tell.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from bnstudy.report.runs import FIRST_KEYS, Run, describe, group_keys, norm_label, norm_order

log = logging.getLogger(__name__)

ALPHA = 0.05
RECOGNISED = 0.8  # P3: at least this share of a run's class images read as their class
OPTIMS = {"sgd": "SGD", "adam": "Adam"}
PICTURE_FILES = {"hallucinations": "hallucinations_final.pt", "weights": "weights_final.pt"}
# pictures.csv: column → (what it is, format in report.md)
COLUMNS = {
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
    "change_share": ("median over units of ||final − initial||² / ||final||²", ".1%"),
    "hf_share": ("median share of a unit's power above half Nyquist (final weights)", ".2f"),
    "pc_alignment": ("median share of a unit's energy in the data's top-32 principal "
                     "components (final weights)", ".3f"),
    "change_pc_alignment": ("the same for the learned change (final − initial)", ".3f"),
    "noise_units": ("share of units that are noise-like (alignment < 2 × chance)", ".0%"),
    "noise_units_initial": ("the same at initialisation", ".0%"),
}
WEIGHT_COLUMNS = ("change_share", "hf_share", "pc_alignment", "change_pc_alignment",
                  "noise_units", "noise_units_initial")
HALLUCINATION_COLUMNS = tuple(c for c in COLUMNS if c not in WEIGHT_COLUMNS)


# --- loading --------------------------------------------------------------------------------


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
    """An ok run with what its picture callbacks saved."""

    run: Run
    hallucinations: dict | None
    weights: dict | None
    net: object | None = None  # its network, for the cross-model confidence

    @property
    def hp(self) -> dict:
        return self.run.hparams


def load_picture_runs(runs: list[Run]) -> list[PictureRun]:
    """The ok runs that saved at least one picture file."""
    found = []
    for run in runs:
        if run.outcome != "ok":
            continue
        files = {kind: load_tensors(run.path / "images" / name)
                 for kind, name in PICTURE_FILES.items()}
        if any(files.values()):
            found.append(PictureRun(run, files["hallucinations"], files["weights"]))
    return found


def load_net(run: Run, input_shape, num_classes: int):
    """The run's final network from `.hydra/config.yaml` and `checkpoints/last.ckpt`; None
    where either is missing or does not fit."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config, ckpt = run.path / ".hydra" / "config.yaml", run.path / "checkpoints" / "last.ckpt"
    if not (config.is_file() and ckpt.is_file()):
        return None
    try:
        cfg = OmegaConf.load(config)
        net = instantiate(cfg.model.net, input_shape=tuple(input_shape), num_classes=num_classes)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        net.load_state_dict({k[len("net."):]: v for k, v in state.items()
                             if k.startswith("net.")})
        return net.eval()
    except Exception as err:  # an older layout or a foreign checkpoint: no cross-model number
        log.warning("%s: network not loaded for the cross-model confidence: %s", run.job, err)
        return None


# --- the dataset's references ---------------------------------------------------------------


@dataclass
class Reference:
    """What a dataset's runs are measured against: the real class means (pixels), the
    training images' principal components, and the independent judge."""

    dataset: str
    classes: list[str]
    input_shape: list[int]
    real_means: object | None = None     # (K, C, H, W) pixels
    components: object | None = None     # (k, D), of normalised training images
    referee: object | None = None        # bnstudy.pictures.Referee
    notes: list[str] = field(default_factory=list)


def open_datamodule(source: dict):
    """The datamodule a run recorded (`bnstudy.data.*` only), set up for fitting."""
    module, _, name = source["datamodule"].rpartition(".")
    if module != "bnstudy.data":
        raise ValueError(f"{source['datamodule']} is not one of the project's datamodules")
    cls = getattr(importlib.import_module(module), name)
    extra = {"verify_checksums": "off"} if "verify_checksums" in inspect.signature(cls).parameters \
        else {}
    data = cls(source["data_dir"], download=False, **extra)
    data.setup("fit")
    return data


def reference(dataset: str, picture_runs: list[PictureRun], cache_dir: Path) -> Reference:
    """The dataset's references, from the first run that recorded where its data lives. The
    judge is trained once and cached as `cache_dir/referee_<dataset>.pt` (reused while the
    data directory, training-set size and judge settings are the same)."""
    import torch

    from bnstudy.pictures import Referee, principal_components

    sources = [f for p in picture_runs for f in (p.hallucinations, p.weights) if f]
    first = sources[0]
    ref = Reference(dataset, list(first.get("classes", [])), list(first.get("input_shape") or
                                                                   first["images"].shape[1:]))
    hall = next((p.hallucinations for p in picture_runs if p.hallucinations), None)
    if hall is not None:
        ref.real_means = hall["real_means"]
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


# --- measures -------------------------------------------------------------------------------


def hallucination_measures(h: dict, ref: Reference, others: list) -> dict[str, float]:
    """The hallucination columns of one run (NaN where a reference is missing)."""
    import torch

    from bnstudy import pictures as P

    images = h["images"].float()
    mean = torch.tensor(h["mean"]).view(-1, 1, 1)
    std = torch.tensor(h["std"]).view(-1, 1, 1)
    pixels = (images * std + mean).clamp(0, 1)
    noise_pixels = (h["noise"].float() * std + mean).clamp(0, 1)
    classes = list(h.get("classes") or ref.classes)
    own = torch.arange(len(images))
    row = dict.fromkeys(HALLUCINATION_COLUMNS, math.nan)
    row["own_conf"] = float(h["own_probabilities"][own, own].mean())
    if ref.referee is not None:
        ok, conf = P.recognised(ref.referee.probabilities(images))
        row["referee_acc"], row["referee_conf"] = float(ok.float().mean()), float(conf.mean())
    probs = [P.predict(net, images)[own, own].mean() for net in others]
    if probs:
        row["cross_conf"] = float(torch.stack(probs).mean())
    real = h["real_means"].float()
    row["nearest_mean_acc"] = float(P.nearest_mean(pixels, real).float().mean())
    noise, base = h["noise"].float(), h["base"].float()
    row["stuck"] = int(P.stuck(images, noise, base).sum())
    row["noise_corr"] = float(P.noise_correlation(images, noise, base).mean())
    row["sharpness"] = float(P.sharpness(pixels).mean())
    row["noise_sharpness"] = float(P.sharpness(noise_pixels).mean())
    row["distinctness"] = P.distinctness(pixels)
    row["colour_fidelity"] = P.colour_fidelity(pixels, real) if pixels.shape[1] == 3 \
        else math.nan
    for column, measure, name in (("blueness_airplane", P.blueness, "airplane"),
                                  ("greenness_dog", P.greenness, "dog"),
                                  ("greenness_frog", P.greenness, "frog")):
        if name in classes and pixels.shape[1] == 3:
            row[column] = float(measure(pixels)[classes.index(name)])
    row["seconds"] = float(h.get("seconds", math.nan))
    return row


def weight_measures(w: dict, ref: Reference) -> dict[str, float]:
    """The weight columns of one run (alignment NaN without the data's components; the
    frequency and alignment measures need a Linear first layer, whose rows are images)."""
    from bnstudy import pictures as P

    final, initial = w["final"].float(), w["initial"].float()
    row = dict.fromkeys(WEIGHT_COLUMNS, math.nan)
    row["change_share"] = float(P.change_share(final, initial).median())
    shape = list(w["input_shape"])
    if final.dim() != 2 or final.shape[1] != math.prod(shape):
        return row  # a conv layer's small filters: only the change share applies
    row["hf_share"] = float(P.high_frequency_share(final, shape).median())
    if ref.components is not None:
        row["pc_alignment"] = float(P.pc_alignment(final, ref.components).median())
        row["change_pc_alignment"] = float(
            P.pc_alignment(final - initial, ref.components).median())
        row["noise_units"] = float(P.noise_like(final, ref.components).float().mean())
        row["noise_units_initial"] = float(P.noise_like(initial, ref.components).float().mean())
    return row


def measure(picture_runs: list[PictureRun], refs: dict[str, Reference],
            keys: list[str]) -> list[dict]:
    """One pictures.csv row per run: its group keys, seed, job and measures."""
    rows = []
    for p in picture_runs:
        dataset = p.hp.get("dataset")
        ref = refs[dataset]
        row = {k: p.hp.get(k) for k in keys}
        row.update(seed=p.hp.get("seed"), job=p.run.job)
        if p.hallucinations is not None:
            others = [q.net for q in picture_runs
                      if q is not p and q.net is not None and q.hp.get("dataset") == dataset]
            row.update(hallucination_measures(p.hallucinations, ref, others))
        else:
            row.update(dict.fromkeys(HALLUCINATION_COLUMNS, math.nan))
        row.update(weight_measures(p.weights, ref) if p.weights is not None
                   else dict.fromkeys(WEIGHT_COLUMNS, math.nan))
        rows.append(row)
    return rows


# --- verdicts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One tested statement of a picture claim."""

    claim: str
    part: str
    statement: str
    statistic: str
    sides: str
    estimate: float
    p_value: float
    verdict: str


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; NaN for fewer than two values)."""
    if not xs:
        return math.nan, math.nan
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan


def welch(a: list[float], b: list[float] | None = None) -> tuple[float, float]:
    """mean(a) − mean(b) (or mean(a)) and Welch's two-sided p (one-sample t-test without b);
    p NaN where undefined (fewer than two values a side, or no spread)."""
    if not a or (b is not None and not b):
        return math.nan, math.nan
    estimate = float(np.mean(a) - (np.mean(b) if b is not None else 0.0))
    if len(a) < 2 or (b is not None and len(b) < 2):
        return estimate, math.nan
    if np.ptp(a) == 0 and (b is None or np.ptp(b) == 0):
        return estimate, math.nan
    result = (stats.ttest_ind(a, b, equal_var=False) if b is not None
              else stats.ttest_1samp(a, 0.0))
    return estimate, float(result.pvalue)


def decide(estimate: float, p: float, sign: int) -> str:
    if math.isnan(p) or p >= ALPHA:
        return "cannot tell"
    return "holds" if np.sign(estimate) == sign else "does not hold"


def every_seed(flags: list[bool]) -> str:
    if not flags:
        return "cannot tell"
    if all(flags):
        return "holds"
    return "does not hold" if not any(flags) else "cannot tell"


def combine(verdicts: list[str]) -> str:
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    return "does not hold" if "does not hold" in verdicts else "cannot tell"


def config_label(norm: str, optim: str) -> str:
    return f"{norm_label(norm)} + {OPTIMS.get(optim, optim)}"


def _fmt(value: float, fmt: str) -> str:
    """`value` in `fmt` (`d`: a count, `.0%`: a percentage); — for NaN."""
    if _isnan(value):
        return "—"
    return f"{value:g}" if fmt == "d" else format(value, fmt)


def spread(xs: list[float], fmt: str) -> str:
    """`mean ± std (n)` in `fmt` (percentages: the std in points, `50% ± 10 (3)`)."""
    if not xs:
        return "— (0)"
    mean, std = mean_std(xs)
    if fmt.endswith("%"):
        digits = fmt[1:-1] or "0"
        text = f"{100 * mean:.{digits}f}%" + ("" if math.isnan(std)
                                                else f" ± {100 * std:.{digits}f}")
    else:
        fmt = ".1f" if fmt == "d" else fmt
        text = format(mean, fmt) + ("" if math.isnan(std) else f" ± {format(std, fmt.lstrip('+'))}")
    return f"{text} ({len(xs)})"


class Groups:
    """Per-run values by (dataset, norm, optim), from the pictures.csv rows of one setting."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def values(self, dataset: str, column: str, norm: str | None = None,
               optim: str | None = None) -> list[float]:
        return [float(r[column]) for r in self.rows
                if r["dataset"] == dataset and (norm is None or r["norm"] == norm)
                and (optim is None or r["optim"] == optim)
                and not math.isnan(float(r[column]))]


def group_label(group: tuple) -> str:
    """`No BatchNorm + SGD`, or `No BatchNorm (both optimizers)` for (norm, None)."""
    norm, optim = group
    if norm and optim:
        return config_label(norm, optim)
    return f"{norm_label(norm)} (both optimizers)" if norm else OPTIMS.get(optim, optim)


def compare(claim: str, part: str, statement: str, column: str, fmt: str, g: Groups,
            dataset: str, first: tuple, second: tuple | None, sign: int) -> Part:
    """A part on mean(first) − mean(second) of `column` (or first against zero), Welch."""
    a = g.values(dataset, column, *first)
    b = g.values(dataset, column, *second) if second is not None else None
    sides = f"{group_label(first)} {spread(a, fmt)}"
    statistic = f"{column}, {group_label(first)}"
    if second is not None:
        sides += f"; {group_label(second)} {spread(b, fmt)}"
        statistic += f" − {group_label(second)}"
    estimate, p = welch(a, b)
    return Part(claim, part, statement, statistic, sides, estimate, p, decide(estimate, p, sign))


def threshold(claim: str, part: str, statement: str, column: str, fmt: str, g: Groups,
              dataset: str, norm: str, optim: str, test: Callable[[float], bool],
              rule: str) -> Part:
    """A part every seed must meet (`test` on the seed's value)."""
    xs = g.values(dataset, column, norm, optim)
    hits = [test(x) for x in xs]
    return Part(claim, part, statement, f"{column}, {config_label(norm, optim)}: {rule}",
                f"{config_label(norm, optim)} {spread(xs, fmt)}; {sum(hits)} of {len(xs)} "
                "seeds meet it", math.nan, math.nan, every_seed(hits))


def claim_parts(rows: list[dict]) -> list[Part]:
    """The parts of P1–P3 that the rows' datasets and configurations allow."""
    g, parts = Groups(rows), []
    have = {(r["dataset"], r["norm"], r["optim"]) for r in rows}
    for optim in OPTIMS:
        if all(("mnist", n, optim) in have for n in ("bn", "none")):
            parts.append(compare(
                "P1", f"a ({OPTIMS[optim]})", "MNIST: without BN the first-layer weights are "
                "more interpretable (more of each unit in the data's principal components)",
                "pc_alignment", ".3f", g, "mnist", ("none", optim), ("bn", optim), 1))
        if ("mnist", "none", optim) in have:
            parts.append(threshold(
                "P1", f"b ({OPTIMS[optim]})", "MNIST: without BN the weights are digit "
                "strokes (most units structured, not noise-like)", "noise_units", ".0%", g,
                "mnist", "none", optim, lambda x: x < 0.5, "under 50% noise-like units"))
    if ("mnist", "bn", "adam") in have:
        parts.append(threshold(
            "P1", "c", "MNIST, BN + Adam: most units learn structured patterns",
            "noise_units", ".0%", g, "mnist", "bn", "adam", lambda x: x < 0.5,
            "under 50% noise-like units"))
    for optim in OPTIMS:
        if ("mnist", "none", optim) in have:
            parts.append(threshold(
                "P1", f"d ({OPTIMS[optim]})", "MNIST: some non-BN units stay pure noise",
                "noise_units", ".0%", g, "mnist", "none", optim, lambda x: x > 0,
                "at least one noise-like unit"))
    for optim in OPTIMS:
        if ("cifar10", "none", optim) not in have:
            continue
        for part, column, what in (
                ("a1", "colour_fidelity", "the class's general colour"),
                ("a2", "blueness_airplane", "airplanes mostly blue"),
                ("a3", "greenness_dog", "dogs greenish"),
                ("a4", "greenness_frog", "frogs greenish")):
            parts.append(compare(
                "P2", f"{part} ({OPTIMS[optim]})", f"CIFAR-10: non-BN networks capture {what}",
                column, "+.3f", g, "cifar10", ("none", optim), None, 1))
    for optim in OPTIMS:
        if all(("cifar10", n, optim) in have for n in ("bn", "none")):
            parts.append(compare(
                "P2", f"b ({OPTIMS[optim]})", "CIFAR-10: BN networks give more defined shapes "
                "(stronger edges at the scale of shapes)", "sharpness", ".3f", g, "cifar10",
                ("bn", optim), ("none", optim), 1))
    if ("cifar10", "bn", "adam") in have:
        for norm, optim in (("bn", "sgd"), ("none", "sgd"), ("none", "adam")):
            if ("cifar10", norm, optim) in have:
                parts.append(compare(
                    "P2", f"c (vs {config_label(norm, optim)})", "CIFAR-10: Adam + BN gives "
                    "the most distinct images", "distinctness", ".2f", g, "cifar10",
                    ("bn", "adam"), (norm, optim), 1))
    for norm in ("none", "bn"):
        for optim in OPTIMS:
            if ("mnist", norm, optim) in have:
                parts.append(threshold(
                    "P3", f" ({config_label(norm, optim)})", "MNIST hallucinations show "
                    "recognisable class shapes", "referee_acc", ".0%", g, "mnist", norm, optim,
                    lambda x: x >= RECOGNISED - 1e-9,
                    f"the independent CNN reads ≥ {RECOGNISED:.0%} of the digits"))
    return parts


def weight_notes(rows: list[dict]) -> list[str]:
    """What the final weights hide: per dataset and optimizer, how much of them training
    changed, and how data-like that change is, with and without BN."""
    g, lines = Groups(rows), []
    for dataset in sorted({r["dataset"] for r in rows}):
        for optim in OPTIMS:
            sides = []
            for norm in ("none", "bn"):
                share = g.values(dataset, "change_share", norm, optim)
                align = g.values(dataset, "change_pc_alignment", norm, optim)
                if share and align:
                    sides.append(f"{norm_label(norm)}: {mean_std(share)[0]:.1%} of the energy, "
                                 f"alignment {mean_std(align)[0]:.3f}")
            if sides:
                lines.append(f"- {dataset}, {OPTIMS[optim]}: the learned change (final − "
                             f"initial) is {'; '.join(sides)} (medians over units, mean over "
                             "seeds).")
    return lines


def claim_verdicts(parts: list[Part]) -> dict[str, str]:
    return {c: combine([p.verdict for p in parts if p.claim == c])
            for c in sorted({p.claim for p in parts})}


def parts_table(parts: list[Part]) -> str:
    lines = ["| claim | statement | statistic | mean ± std over seeds (n) | estimate | p | "
             "verdict |", "|" + " --- |" * 7]
    for p in parts:
        estimate = "—" if math.isnan(p.estimate) else f"{p.estimate:+.3f}"
        pval = "—" if math.isnan(p.p_value) else f"{p.p_value:.2g}"
        lines.append(f"| {p.claim}{p.part} | {p.statement} | {p.statistic} | {p.sides} | "
                     f"{estimate} | {pval} | **{p.verdict}** |")
    return "\n".join(lines)


def plain_words(parts: list[Part]) -> list[str]:
    """One sentence per part that does not hold or cannot be told."""
    lines = []
    for p in parts:
        if p.verdict == "does not hold":
            lines.append(f"- **{p.claim}{p.part} does not hold**: {p.statement} — measured "
                         f"{p.sides}.")
        elif p.verdict == "cannot tell":
            lines.append(f"- {p.claim}{p.part}: cannot tell ({p.statement}) — {p.sides}.")
    return lines


# --- figures --------------------------------------------------------------------------------


def ordered(pairs) -> list[tuple[str, str]]:
    """(norm, optim) pairs: no BN first, then BN, then other norms; SGD before Adam."""
    order = norm_order({n for n, _ in pairs})
    rank = {o: i for i, o in enumerate(OPTIMS)}
    return sorted(pairs, key=lambda pair: (order.index(pair[0]), rank.get(pair[1], 9),
                                           str(pair[1])))


def configurations(picture_runs: list[PictureRun]) -> list[tuple[str, str]]:
    """The (norm, optim) pairs of the runs, in figure order (see `ordered`)."""
    return ordered({(p.hp.get("norm"), p.hp.get("optim")) for p in picture_runs})


def first_seed(picture_runs: list[PictureRun], norm: str, optim: str,
               kind: str) -> PictureRun | None:
    found = [p for p in picture_runs if (p.hp.get("norm"), p.hp.get("optim")) == (norm, optim)
             and getattr(p, kind) is not None]
    return min(found, key=lambda p: (p.hp.get("seed", 0), p.run.job), default=None)


def _pixels(h: dict):
    import torch

    mean = torch.tensor(h["mean"]).view(-1, 1, 1)
    std = torch.tensor(h["std"]).view(-1, 1, 1)
    return (h["images"].float() * std + mean).clamp(0, 1)


def _show(ax, image) -> None:
    """A (C, H, W) image in [0, 1] on `ax`, grey for one channel."""
    array = image.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        ax.imshow(array[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(array, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def hallucinations_figure(title: str, picture_runs: list[PictureRun],
                          ref: Reference) -> Figure:
    """A row per configuration (first seed) and a top reference row of the real training
    images' class means; a column per class, its name on top. Under each tile, the
    independent judge's reading and its probability (green: the tile's class)."""
    import matplotlib.pyplot as plt

    configs = [c for c in configurations(picture_runs)
               if first_seed(picture_runs, *c, "hallucinations") is not None]
    classes = ref.classes
    rows = [("real class means", ref.real_means, None)]
    for norm, optim in configs:
        p = first_seed(picture_runs, norm, optim, "hallucinations")
        rows.append((f"{config_label(norm, optim)}\n(seed {p.hp.get('seed')})",
                     _pixels(p.hallucinations), p.hallucinations["images"].float()))
    fig, axes = plt.subplots(len(rows), len(classes), squeeze=False,
                             figsize=(1.25 * len(classes) + 1.6, 1.55 * len(rows) + 0.9))
    for r, (label, pixels, normalised) in enumerate(rows):
        readings = None
        if normalised is not None and ref.referee is not None:
            readings = ref.referee.probabilities(normalised)
        for c, name in enumerate(classes):
            ax = axes[r, c]
            if pixels is not None:
                _show(ax, pixels[c])
            else:
                ax.axis("off")
            if r == 0:
                ax.set_title(name, fontsize=10)
            if readings is not None:
                guess = int(readings[c].argmax())
                ax.set_xlabel(f"{classes[guess]} {float(readings[c, guess]):.2f}", fontsize=7,
                              color="tab:green" if guess == c else "tab:red", labelpad=2)
        axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center",
                              labelpad=8)
    judge = ("" if ref.referee is None else
             f"; under each tile the independent CNN's reading and probability (green: right; "
             f"{ref.referee.accuracy:.0%} on real validation images)")
    fig.suptitle(f"{title}: final hallucinations, a row per configuration{judge}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    return fig


def weights_figure(title: str, picture_runs: list[PictureRun], ref: Reference,
                   rows_by_job: dict[str, dict], num_units: int = 64) -> Figure:
    """A row per configuration (first seed): its final first-layer weights and the learned
    change (final − initial), the first `num_units` units, each tile scaled on its own
    (mid-grey 0); a top reference row of the training images' top principal components and
    class means."""
    import matplotlib.pyplot as plt
    import torch
    from torchvision.utils import make_grid

    from bnstudy.callbacks import weight_grid

    configs = [c for c in configurations(picture_runs)
               if first_seed(picture_runs, *c, "weights") is not None]
    shape = ref.input_shape
    panels = []
    if ref.components is not None or ref.real_means is not None:
        left = (weight_grid(ref.components, shape, num_units) if ref.components is not None
                else None)
        right = (make_grid(ref.real_means.float(), nrow=5, padding=2)
                 if ref.real_means is not None else None)
        panels.append(("reference", left, "top principal components of the training images",
                       right, "real class means"))
    for norm, optim in configs:
        p = first_seed(picture_runs, norm, optim, "weights")
        final, initial = p.weights["final"].float(), p.weights["initial"].float()
        row = rows_by_job.get(p.run.job, {})
        note = (f"noise-like {_fmt(row.get('noise_units', math.nan), '.0%')}, "
                f"alignment {_fmt(row.get('pc_alignment', math.nan), '.3f')}")
        change = (f"change {_fmt(row.get('change_share', math.nan), '.1%')} of the energy, "
                  f"alignment {_fmt(row.get('change_pc_alignment', math.nan), '.3f')}")
        panels.append((f"{norm_label(norm)}\n+ {OPTIMS.get(optim, optim)}\n"
                       f"(seed {p.hp.get('seed')})",
                       weight_grid(final, shape, num_units), f"final weights: {note}",
                       weight_grid(final - initial, shape, num_units),
                       f"learned change: {change}"))
    fig, axes = plt.subplots(len(panels), 2, squeeze=False,
                             figsize=(10, 4.6 * len(panels) + 0.6))
    for r, (label, left, left_title, right, right_title) in enumerate(panels):
        for ax, image, sub in ((axes[r, 0], left, left_title), (axes[r, 1], right, right_title)):
            if image is None:
                ax.axis("off")
                continue
            _show(ax, torch.as_tensor(image))
            ax.set_title(sub, fontsize=9)
        axes[r, 0].set_ylabel(label, fontsize=10, rotation=0, ha="right", va="center",
                              labelpad=8)
    fig.suptitle(f"{title}: first-layer weights, first {num_units} units (each tile scaled on "
                 "its own, mid-grey = 0), a row per configuration", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return fig


# --- the section ----------------------------------------------------------------------------


def measures_table(rows: list[dict], dataset: str) -> str:
    """Mean ± std over seeds of each measure, a row per configuration."""
    columns = [c for c in COLUMNS
               if any(r["dataset"] == dataset and not _isnan(r.get(c)) for r in rows)]
    pairs = ordered({(r["norm"], r["optim"]) for r in rows if r["dataset"] == dataset})
    g = Groups(rows)
    lines = ["| configuration | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for norm, optim in pairs:
        cells = [spread(g.values(dataset, c, norm, optim), COLUMNS[c][1]) for c in columns]
        lines.append(f"| {config_label(norm, optim)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _isnan(value) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def reference_line(ref: Reference) -> str:
    """The real class means' own numbers, the yardstick for the colour and sharpness columns."""
    from bnstudy import pictures as P

    if ref.real_means is None:
        return ""
    means = ref.real_means.float()
    parts = [f"sharpness {float(P.sharpness(means).mean()):.3f}",
             f"distinctness {P.distinctness(means):.2f}"]
    if means.shape[1] == 3:
        for name, measure, what in (("airplane", P.blueness, "blueness"),
                                    ("dog", P.greenness, "greenness"),
                                    ("frog", P.greenness, "greenness")):
            if name in ref.classes:
                parts.append(f"{name} {what} {float(measure(means)[ref.classes.index(name)]):+.3f}")
    judge = ("" if ref.referee is None else
             f" The independent CNN reads {ref.referee.accuracy:.1%} of the real validation "
             "images right.")
    return f"Real class means of the {ref.dataset} training images: {', '.join(parts)}.{judge}"


def pictures_section(runs: list[Run], out: Path) -> tuple[str, dict[str, Figure]]:
    """The report.md section `## Pictures`, its figures (`hallucinations_<dataset>`,
    `weights_<dataset>`, a `_<setting>` suffix when other hparams vary) and
    `out/pictures.csv`; ("", {}) when no ok run saved picture files."""
    picture_runs = load_picture_runs(runs)
    if not picture_runs:
        return "", {}
    keys = group_keys(runs)
    extra = [k for k in keys if k not in FIRST_KEYS]
    refs: dict[str, Reference] = {}
    for dataset in sorted({p.hp.get("dataset") for p in picture_runs}, key=str):
        same = [p for p in picture_runs if p.hp.get("dataset") == dataset]
        refs[dataset] = reference(dataset, same, out)
        for p in same:
            if p.hallucinations is not None:
                p.net = load_net(p.run, refs[dataset].input_shape, len(refs[dataset].classes))
    rows = measure(picture_runs, refs, keys)
    write_rows(rows, out / "pictures.csv")
    by_job = {r["job"]: r for r in rows}
    settings: dict[tuple, list[PictureRun]] = {}
    for p in picture_runs:
        settings.setdefault(tuple((k, p.hp.get(k)) for k in extra), []).append(p)
    lines = ["## Pictures", "",
             "Final pictures of each run, measured (`bnstudy.pictures`): the hallucinations "
             "(one input per class optimised through the frozen network; recipe in "
             "`conf/callbacks/default.yaml`) and the first-layer weights with their learned "
             "change (final − initial). The figures show each configuration's first seed; the "
             "table and the verdicts use every ok seed (mean ± sample std, n). Every number is "
             "in `pictures.csv`, one row per run.", ""]
    lines += [f"- `{c}`: {what}" for c, (what, _) in COLUMNS.items()]
    lines += [""]
    for ref in refs.values():
        lines += [f"_{note}._" for note in ref.notes]
    figures: dict[str, Figure] = {}
    for setting, members in settings.items():
        suffix = "".join(f"_{k}{v}" for k, v in setting)
        if setting:
            lines += [f"### {describe(setting)}", ""]
        setting_rows = [by_job[p.run.job] for p in members]
        for dataset, ref in refs.items():
            mine = [p for p in members if p.hp.get("dataset") == dataset]
            if not mine:
                continue
            head = f"{dataset}{', ' + describe(setting) if setting else ''}"
            lines += [f"### {dataset}", ""] if not setting else [f"#### {dataset}", ""]
            if any(p.hallucinations is not None for p in mine):
                name = f"hallucinations_{dataset}{suffix}"
                figures[name] = hallucinations_figure(head, mine, ref)
                lines += [f"![hallucinations {head}]({name}.png)", ""]
            if any(p.weights is not None for p in mine):
                name = f"weights_{dataset}{suffix}"
                figures[name] = weights_figure(head, mine, ref, by_job)
                lines += [f"![weights {head}]({name}.png)", ""]
            lines += [measures_table(setting_rows, dataset), "", reference_line(ref), ""]
        notes = weight_notes(setting_rows)
        if notes:
            lines += ["What the final weights hide: with SGD at a small learning rate the first "
                      "layer barely moves, so its grid shows the random initialisation; the "
                      "learned change shows what training added (its alignment: the share of "
                      "its energy in the data's top principal components).", "", *notes, ""]
        parts = claim_parts(setting_rows)
        if parts:
            verdicts = claim_verdicts(parts)
            lines += ["### Picture claims" if not setting else "#### Picture claims", "",
                      "Verdicts: " + "; ".join(f"**{c} {v}**" for c, v in verdicts.items())
                      + ".", "", parts_table(parts), ""]
            lines += plain_words(parts) + [""]
    return "\n".join(lines), figures


def write_rows(rows: list[dict], path: Path) -> None:
    """pictures.csv: NaN as an empty cell, floats to 6 decimals."""
    import csv

    names = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v)
                                 else round(v, 6) if isinstance(v, float) else v)
                             for k, v in row.items()})
