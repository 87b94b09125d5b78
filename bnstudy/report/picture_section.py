"""The report's `## Pictures`: figures of the final hallucinations and first-layer weights (a
row per norm × optim under a row of the real data), the measures (`bnstudy.pictures.table`,
`pictures.csv`) and the picture claims P1–P3."""

from __future__ import annotations

import json
import math
from collections import Counter
from functools import partial
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from bnstudy.pictures.table import (
    COLUMNS,
    TINTS,
    PictureRun,
    Reference,
    load_net,
    load_picture_runs,
    measure,
    reference,
    to_pixels,
)
from bnstudy.records import RECIPE_FILE
from bnstudy.report.render import (
    claims_block,
    markdown,
    number,
    plain_words,
    plural,
    spread,
    write_csv,
)
from bnstudy.report.runs import (
    FIRST_KEYS,
    OPTIM_LABELS,
    describe,
    group_keys,
    norm_label,
    norm_order,
    suffix,
)
from bnstudy.report.verdicts import Result, decided


def config_label(norm: str, optim: str, among) -> str:
    """`No BatchNorm + SGD` (among `among`'s norms: see `norm_label`)."""
    return f"{norm_label(norm, among)} + {OPTIM_LABELS.get(optim, optim)}"


def ordered(pairs) -> list[tuple[str, str]]:
    """(norm, optim) pairs: no BN first, then BN, then other norms; SGD before Adam."""
    order = norm_order({n for n, _ in pairs})
    rank = {o: i for i, o in enumerate(OPTIM_LABELS)}
    return sorted(pairs, key=lambda pair: (order.index(pair[0]), rank.get(pair[1], 9),
                                           str(pair[1])))


def first_seeds(picture_runs: list[PictureRun], kind: str) -> list[tuple[tuple, PictureRun]]:
    """Per (norm, optim), in figure order, its run of lowest seed that saved `kind`."""
    found: dict[tuple, PictureRun] = {}
    for p in sorted(picture_runs, key=lambda p: (p.run.get("seed", 0), p.run["job"])):
        if getattr(p, kind) is not None:
            found.setdefault((p.run.get("norm"), p.run.get("optim")), p)
    return [(c, found[c]) for c in ordered(found)]


def _show(ax, image) -> None:
    """A (C, H, W) image in [0, 1] on `ax`, grey for one channel; None: a blank `ax`."""
    if image is None:
        ax.axis("off")
        return
    array = image.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        ax.imshow(array[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(array, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def hallucinations_figure(title: str, picture_runs: list[PictureRun],
                          ref: Reference) -> Figure:
    """A row per configuration (first seed) under the real class means, a column per class;
    under each tile the independent judge's reading and probability (green: the tile's class)."""
    classes = ref.classes
    rows = [("real class means", ref.real_means, None)]  # (label, pixels, the judge's readings)
    seeds = first_seeds(picture_runs, "hallucinations")
    norms = [n for (n, _), _ in seeds]
    for (norm, optim), p in seeds:
        readings = (None if ref.referee is None
                    else ref.referee.probabilities(p.hallucinations["images"].float()))
        rows.append((f"{config_label(norm, optim, norms)}\n(seed {p.run.get('seed')})",
                     to_pixels(p.hallucinations), readings))
    fig = Figure(figsize=(1.25 * len(classes) + 1.6, 1.55 * len(rows) + 0.9))
    axes = fig.subplots(len(rows), len(classes), squeeze=False)
    for r, (label, pixels, readings) in enumerate(rows):
        for c, name in enumerate(classes):
            ax = axes[r, c]
            _show(ax, None if pixels is None else pixels[c])
            if r == 0:
                ax.set_title(name, fontsize=10)
            if readings is not None:
                guess = int(readings[c].argmax())
                ax.set_xlabel(f"{classes[guess]} {float(readings[c, guess]):.2f}", fontsize=7,
                              color="tab:green" if guess == c else "tab:red", labelpad=2)
        axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center", labelpad=8)
    judge = ("" if ref.referee is None else
             f"; under each tile the independent CNN's reading and probability (green: right; "
             f"{ref.referee.accuracy:.0%} on real validation images)")
    fig.suptitle(f"{title}: final hallucinations, a row per configuration{judge}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    return fig


def weights_figure(title: str, picture_runs: list[PictureRun], ref: Reference,
                   rows_by_job: dict[str, dict], num_units: int = 64) -> Figure:
    """A row per configuration (first seed): final first-layer weights and learned change,
    under a reference row (top principal components, class means)."""
    from torchvision.utils import make_grid

    from bnstudy.pictures.grids import weight_grid

    shape = ref.input_shape
    panels = []
    if ref.components is not None or ref.real_means is not None:
        left = (weight_grid(ref.components, shape, num_units) if ref.components is not None
                else None)
        right = (make_grid(ref.real_means.float(), nrow=5, padding=2)
                 if ref.real_means is not None else None)
        panels.append(("reference", left, "top principal components of the training images",
                       right, "real class means"))
    seeds = first_seeds(picture_runs, "weights")
    norms = [n for (n, _), _ in seeds]
    for (norm, optim), p in seeds:
        final, initial = p.weights["final"].float(), p.weights["initial"].float()
        row = rows_by_job.get(p.run["job"], {})
        note = (f"noise-like {number(row.get('noise_units', math.nan), '.0%')}, "
                f"alignment {number(row.get('pc_alignment', math.nan), '.3f')}")
        change = (f"change {number(row.get('change_share', math.nan), '.1%')} of the energy, "
                  f"alignment {number(row.get('change_pc_alignment', math.nan), '.3f')}")
        panels.append((f"{norm_label(norm, norms)}\n+ {OPTIM_LABELS.get(optim, optim)}\n"
                       f"(seed {p.run.get('seed')})",
                       weight_grid(final, shape, num_units), f"final weights: {note}",
                       weight_grid(final - initial, shape, num_units),
                       f"learned change: {change}"))
    fig = Figure(figsize=(10, 4.6 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for r, (label, left, left_title, right, right_title) in enumerate(panels):
        for ax, image, sub in ((axes[r, 0], left, left_title), (axes[r, 1], right, right_title)):
            _show(ax, image)
            if image is not None:
                ax.set_title(sub, fontsize=9)
        axes[r, 0].set_ylabel(label, fontsize=10, rotation=0, ha="right", va="center", labelpad=8)
    units = max((len(p.weights["final"]) for _, p in seeds), default=num_units)  # a CNN: 32
    fig.suptitle(f"{title}: first-layer weights, first {min(num_units, units)} units (each tile "
                 "scaled on its own, mid-grey = 0), a row per configuration", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return fig


def measures_table(rows: pd.DataFrame, dataset: str) -> str:
    """Mean ± std over seeds of each measure, a row per configuration."""
    mine = rows[rows["dataset"] == dataset]
    columns = [c for c in COLUMNS if mine[c].notna().any()]
    return markdown([{"configuration": config_label(norm, optim, set(mine["norm"])),
                      **{c: spread(list(g[c].dropna()), COLUMNS[c][1], "— (0)") for c in columns}}
                     for norm, optim in ordered(set(zip(mine["norm"], mine["optim"], strict=True)))
                     for g in [mine[(mine["norm"] == norm) & (mine["optim"] == optim)]]])


def reference_line(ref: Reference) -> str:
    """The real class means' own numbers, the yardstick for the colour and sharpness columns."""
    from bnstudy.pictures import measures as P

    if ref.real_means is None:
        return ""
    means = ref.real_means.float()
    parts = [f"sharpness {float(P.sharpness(means).mean()):.3f}",
             f"distinctness {P.distinctness(means):.2f}"]
    parts += [f"{name} {column.split('_')[0]} "
              f"{float(P.tint(means, channel)[ref.classes.index(name)]):+.3f}"
              for column, (name, channel) in TINTS.items()
              if means.shape[1] == 3 and name in ref.classes]
    judge = ("" if ref.referee is None else
             f" The independent CNN reads {ref.referee.accuracy:.1%} of the real validation "
             "images right.")
    return f"Real class means of the {ref.dataset} training images: {', '.join(parts)}.{judge}"


def weight_notes(rows: pd.DataFrame) -> list[str]:
    """What the final weights hide: per dataset and optimizer, how much of them training
    changed, and how data-like that change is, with and without BN."""
    means = rows.groupby(["dataset", "optim", "norm"])[
        ["change_share", "change_pc_alignment"]].mean().dropna()  # over the runs that have them
    lines, norms = [], norm_order(set(rows["norm"]))
    for dataset in sorted(set(rows["dataset"])):
        for optim in OPTIM_LABELS:
            sides = [f"{norm_label(norm, norms)}: {m['change_share']:.1%} of the energy, alignment "
                     f"{m['change_pc_alignment']:.3f}" for norm in norms
                     if (dataset, optim, norm) in means.index
                     for m in [means.loc[(dataset, optim, norm)]]]
            if sides:
                lines.append(f"- {dataset}, {OPTIM_LABELS[optim]}: the learned change (final − "
                             f"initial) is {'; '.join(sides)} (medians over units, mean over "
                             "seeds).")
    return lines


def recipe_words(picture_runs: list[PictureRun]) -> str:
    """The recipes the runs' final hallucinations were drawn with: the training's, or those
    `python -m bnstudy.draw` named in `images/recipe.json`."""
    names = Counter(json.loads(path.read_text()).get("name", "?") if (
        path := Path(p.run["path"]) / "images" / RECIPE_FILE).is_file() else None
        for p in picture_runs)
    trained = names.pop(None, 0)
    said = [f"`{name}` ({plural(n, 'run')})" for name, n in names.items()]
    if trained:
        said.append(f"the training's ({plural(trained, 'run')}; `conf/callbacks/default.yaml`"
                    " unless set)" if said else "each run's training settings "
                    "(`callbacks.hallucinations` in `conf/callbacks/default.yaml` unless set)")
    return ("redrawn by `python -m bnstudy.draw` as " if names else "") + "; ".join(said)


def pictures_section(runs: pd.DataFrame, out: Path
                     ) -> tuple[str, dict[str, Figure], list[tuple[dict, list[Result]]]]:
    """`## Pictures`, its figures, `out/pictures.csv` and P1–P3's results per setting; ("",
    {}, []) when no ok run saved picture files."""
    picture_runs = load_picture_runs(runs)
    if not picture_runs:
        return "", {}, []
    keys = group_keys(runs)
    extra = [k for k in keys if k not in FIRST_KEYS]
    refs: dict[str, Reference] = {}
    for dataset in sorted({p.run.get("dataset") for p in picture_runs}, key=str):
        same = [p for p in picture_runs if p.run.get("dataset") == dataset]
        refs[dataset] = reference(dataset, same, out)
        for p in same:
            if p.hallucinations is not None:
                p.net = load_net(p.run, refs[dataset].input_shape, len(refs[dataset].classes))
    rows = measure(picture_runs, refs, keys)
    write_csv(rows, out / "pictures.csv")
    by_job = {r["job"]: r for r in rows}
    table = pd.DataFrame(rows)
    settings: dict[tuple, list[PictureRun]] = {}
    for p in picture_runs:
        settings.setdefault(tuple((k, p.run.get(k)) for k in extra), []).append(p)
    lines = ["## Pictures", "",
             "Final pictures of each run, measured (`bnstudy.pictures`): the hallucinations "
             "(one input per class optimised through the frozen network; recipe: "
             f"{recipe_words(picture_runs)}) and the first-layer weights with their learned "
             "change (final − initial). The figures show each configuration's first seed; the "
             "table and the verdicts use every ok seed (mean ± sample std, n). Every number is "
             "in `pictures.csv`, one row per run.", ""]
    lines += [*(f"- `{c}`: {what}" for c, (what, _) in COLUMNS.items()
                if c in table and table[c].notna().any()), ""]  # measured here
    lines += [f"_{note}._" for ref in refs.values() for note in ref.notes]
    figures: dict[str, Figure] = {}
    found: list[tuple[dict, list[Result]]] = []
    for setting, members in settings.items():
        sub = "####" if setting else "###"  # under the setting's own heading
        if setting:
            lines += [f"### {describe(setting)}", ""]
        setting_rows = table[table["job"].isin([p.run["job"] for p in members])]
        for dataset, ref in refs.items():
            mine = [p for p in members if p.run.get("dataset") == dataset]
            if not mine:
                continue
            head = f"{dataset}{', ' + describe(setting) if setting else ''}"
            lines += [f"{sub} {dataset}", ""]
            for kind, draw in (("hallucinations", hallucinations_figure),
                               ("weights", partial(weights_figure, rows_by_job=by_job))):
                if any(getattr(p, kind) is not None for p in mine):
                    name = f"{kind}_{dataset}{suffix(setting)}"
                    figures[name] = draw(head, mine, ref)
                    lines += [f"![{kind} {head}]({name}.png)", ""]
            lines += [measures_table(setting_rows, dataset), "", reference_line(ref), ""]
        if notes := weight_notes(setting_rows):
            lines += ["What the final weights hide: with SGD at a small learning rate the first "
                      "layer barely moves, so its grid shows the random initialisation; the "
                      "learned change shows what training added (its alignment: the share of "
                      "its energy in the data's top principal components).", "", *notes, ""]
        results = decided("pictures", setting_rows)
        if results:
            lines += [f"{sub} Picture claims", "", *claims_block(results),
                      *([] if plain_words(results) else [""])]
        found.append((dict(setting), results))
    return "\n".join(lines), figures, found
