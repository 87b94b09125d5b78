"""Plain PyTorch training, the benchmarks' baseline: a study's runs the way a researcher's
script trains them (`python -m bnstudy.bench study` starts this module as processes).

    python -m bnstudy.bench plain RUNS.json RESULTS.json [--threads N] [--share I/N]

RUNS.json (`bnstudy.bench.study.plain_runs` writes it from a finished sweep) lists each run's
data (its files, channel mean and std, split), network and optimizer (`_target_` and
arguments), seed, batch sizes and epochs; `--share I/N` trains runs I, I+N, ... only. Each
epoch takes the study's minibatches in the study's order, then one pass over the validation
split; the test split at the end. Each dataset is read once per process; only each run's
figures are written, to RESULTS.json. No Lightning, Hydra or TensorBoard is imported.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from pydoc import locate

import torch
import torch.nn.functional as F

from bnstudy import datafiles
from bnstudy.datafiles import normalised


@functools.lru_cache(maxsize=4)
def read(source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels of a split (once per process): `source` is JSON, {"idx": root,
    "torchvision_class": ..., "train": ...} (MNIST's files) or {"cifar": [batch files]}."""
    source = json.loads(source)
    if "cifar" in source:
        return datafiles.read_cifar_batches([Path(p) for p in source["cifar"]])
    import torchvision.datasets

    name = source["torchvision_class"]
    return datafiles.read_mnist(Path(source["idx"]), getattr(torchvision.datasets, name),
                                source["train"], name)


def minibatches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The study's index minibatches of an epoch (`bnstudy.data.EpochBatchSampler`): a
    permutation drawn from `(seed, epoch)`, a last minibatch of one sample dropped (not at
    `batch_size=1`, where every minibatch is one)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    batches = torch.randperm(n, generator=gen).split(batch_size)
    return list(batches[:-1] if n > 1 and n % batch_size == 1 else batches)


def train_epoch(net, optimizer, x: torch.Tensor, y: torch.Tensor, batches) -> dict:
    """One epoch of SGD steps over `batches` (index tensors); its mean loss and accuracy. It
    stops at a non-finite loss (`diverged`), as the study's `DivergenceGuard` stops its run."""
    net.train()
    loss_sum, correct, count = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    for idx in batches:
        xb, yb = x[idx], y[idx]
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        if not torch.isfinite(loss):
            return {"diverged": True}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum += loss * len(yb)
            correct += (logits.argmax(-1) == yb).sum()
        count += len(yb)
    return {"train/loss": float(loss_sum) / count, "train/acc": float(correct) / count}


def evaluate(net, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split, in batches."""
    net.eval()
    loss, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    with torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            logits = net(xb)
            loss += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(-1) == yb).sum()
    return float(loss) / len(y), float(correct) / len(y)


def train(run: dict) -> dict:
    """One run (see the module docstring); its per-epoch and test figures."""
    data = run["data"]
    images, labels = read(json.dumps(data["train"], sort_keys=True))
    x_all = normalised(images, data["mean"], data["std"])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(data["split_seed"]))
    val_idx, train_idx = order[:data["n_val"]], order[data["n_val"]:data["n_val"] + data["n_train"]]
    x, y, x_val, y_val = x_all[train_idx], labels[train_idx], x_all[val_idx], labels[val_idx]
    images, y_test = read(json.dumps(data["test"], sort_keys=True))
    x_test = normalised(images, data["mean"], data["std"])

    torch.manual_seed(run["seed"])
    net = locate(run["net"]["_target_"])(**{k: v for k, v in run["net"].items()
                                            if k != "_target_"})
    optimizer = locate(run["optimizer"]["_target_"])(
        net.parameters(), **{k: v for k, v in run["optimizer"].items()
                             if k not in ("_target_", "_partial_")})
    history = []
    for epoch in range(run["max_epochs"]):
        row = train_epoch(net, optimizer, x, y,
                          minibatches(len(y), run["batch_size"], run["seed"], epoch))
        if row.get("diverged"):
            return {"name": run["name"], "history": history, "test": None, "diverged": True}
        row["val/loss"], row["val/acc"] = evaluate(net, x_val, y_val, run["eval_batch_size"])
        history.append(row)
    test_loss, test_acc = evaluate(net, x_test, y_test, run["eval_batch_size"])
    return {"name": run["name"], "history": history, "test": {"loss": test_loss, "acc": test_acc}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bnstudy.bench plain",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="the runs (JSON, from bnstudy.bench.study.plain_runs)")
    parser.add_argument("results", help="where to write each run's figures (JSON)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, all cores)")
    parser.add_argument("--share", default="0/1", help="I/N: the runs I, I+N, I+2N, ... only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    share, of = map(int, args.share.split("/"))
    runs = json.loads(Path(args.runs).read_text())[share::of]
    started = time.perf_counter()
    results = [train(run) for run in runs]
    train_s = time.perf_counter() - started
    Path(args.results).write_text(json.dumps({"runs": results, "train_s": train_s,
                                              "threads": torch.get_num_threads()}))
