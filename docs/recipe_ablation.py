"""How the hallucination recipe was chosen: each candidate recipe run on every ok network of a
finished sweep (its `checkpoints/last.ckpt`), measured as the report measures the pictures.

    python docs/recipe_ablation.py outputs/multirun/<name> [--out docs/figures/recipes]

Prints a markdown table per dataset (the mean over the sweep's networks of each measure, the
worst network's referee accuracy, the stuck tiles summed over all networks, the seconds per
recipe on one CPU thread) and, with `--out`, saves each recipe's images of every
configuration's first seed as `<out>/<dataset>_<recipe>.png`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from bnstudy.pictures import measures as P
from bnstudy.pictures.recipe import hallucinate
from bnstudy.pictures.table import load_net, load_picture_runs, open_datamodule
from bnstudy.report.runs import load_runs

RECIPES = {  # name: keyword arguments of `hallucinate` (the rest: its defaults)
    "old (50 steps, log-softmax, L2 + TV)": dict(
        steps=50, lr=0.2, objective="log_softmax", size=None, l2=1e-3, tv=1e-3, jitter=0,
        blur_every=0, parametrisation="pixel"),
    "lead (logit, size 1, jitter, blur, pixels)": dict(objective="logit", parametrisation="pixel"),
    "margin, pixels": dict(parametrisation="pixel"),
    "margin, fourier": dict(parametrisation="fourier", lr=0.05),
    "margin, data_colour": dict(parametrisation="data_colour"),
    "margin, data, 4 seeds": dict(parametrisation="data", seeds=4),
    "default: margin, data": dict(parametrisation="data"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = load_picture_runs(load_runs(args.sweep_dir))
    for dataset in sorted({p.hp["dataset"] for p in runs}):
        mine = [p for p in runs if p.hp["dataset"] == dataset and p.hallucinations]
        source = mine[0].hallucinations
        data = open_datamodule(source)
        judge = P.Referee(data.input_shape, len(data.classes)).fit(
            data.train_set.x, data.train_set.y)
        stats = P.ImageStats.of(data.train_set.x)
        mean, std = torch.tensor(data.mean), torch.tensor(data.std)
        low, high = (-mean / std).tolist(), ((1 - mean) / std).tolist()
        real = source["real_means"].float()
        nets = [(p, load_net(p.run, data.input_shape, len(data.classes))) for p in mine]
        nets = [(p, net) for p, net in nets if net is not None]
        print(f"\n### {dataset}: {len(nets)} networks\n")
        head = ["recipe", "referee acc (worst)", "referee conf", "nearest mean", "stuck",
                "distinctness", "colour fidelity", "airplane blueness", "frog greenness", "s"]
        print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
        scores: dict[str, str] = {}
        for name, recipe in RECIPES.items():
            rows, firsts = [], {}
            for p, net in nets:
                run = dict(model=net, input_shape=data.input_shape,
                           num_classes=len(data.classes), low=low, high=high, stats=stats,
                           **recipe)
                started = time.perf_counter()
                images = hallucinate(**run)
                seconds = time.perf_counter() - started
                noise = hallucinate(**{**run, "lr": 0.0})
                base = hallucinate(**{**run, "steps": 0, "noise_std": 0.0})
                pixels = data.denormalise(images)
                read, conf = P.recognised(judge.probabilities(images))
                rows.append({
                    "acc": float(read.float().mean()), "conf": float(conf.mean()),
                    "nm": float(P.nearest_mean(pixels, real).float().mean()),
                    "stuck": int(P.stuck(images, noise, base).sum()),
                    "dist": P.distinctness(pixels),
                    "col": P.colour_fidelity(pixels, real) if pixels.shape[1] == 3 else None,
                    "blue": float(P.blueness(pixels)[0]), "green": float(P.greenness(pixels)[6]),
                    "s": seconds})
                key = (p.hp["norm"], p.hp["optim"])
                if key not in firsts or p.hp["seed"] < firsts[key][0]:
                    firsts[key] = (p.hp["seed"], pixels)

            def mean(key, rows=rows):
                values = [r[key] for r in rows if r[key] is not None]
                return statistics.mean(values) if values else float("nan")

            def fmt(value: float, spec: str) -> str:
                return "—" if value != value else format(value, spec)  # NaN: not RGB

            print(f"| {name} | {mean('acc'):.0%} ({min(r['acc'] for r in rows):.0%}) | "
                  f"{mean('conf'):.2f} | {mean('nm'):.0%} | {sum(r['stuck'] for r in rows)} | "
                  f"{mean('dist'):.2f} | {fmt(mean('col'), '.2f')} | "
                  f"{fmt(mean('blue'), '+.3f')} | {fmt(mean('green'), '+.3f')} | "
                  f"{mean('s'):.2f} |", flush=True)
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                grid = torch.cat([firsts[k][1] for k in sorted(firsts, reverse=True)])
                save_image(make_grid(grid, nrow=len(data.classes), padding=1),
                           args.out / f"{dataset}_{slug(name)}.png")
            scores[name] = (f"independent CNN reads {mean('acc'):.0%} (worst network "
                            f"{min(r['acc'] for r in rows):.0%})")
        if args.out:
            compose(args.out, dataset, scores)


def compose(out: Path, dataset: str, scores: dict[str, str]) -> Path:
    """The saved recipe grids of `dataset` stacked in one labelled figure,
    `<out>/<dataset>_recipes.png` (rows of each panel: no BN + SGD, no BN + Adam, BN + SGD,
    BN + Adam, first seed; columns: classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(scores), 1, figsize=(10, 4.4 * len(scores)), squeeze=False)
    for ax, (name, score) in zip(axes[:, 0], scores.items(), strict=True):
        ax.imshow(plt.imread(out / f"{dataset}_{slug(name)}.png"), interpolation="nearest")
        ax.set_title(f"{name}: {score}", fontsize=10)
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylabel("BN + Adam | BN + SGD | no BN + Adam | no BN + SGD", fontsize=8)
    fig.suptitle(f"{dataset}: candidate hallucination recipes on the same networks (first seed)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    path = out / f"{dataset}_recipes.png"
    fig.savefig(path, dpi=80)
    return path


def slug(name: str) -> str:
    return name.split(" (")[0].replace(", ", "_").replace(" ", "_").replace(":", "")


if __name__ == "__main__":
    main()
