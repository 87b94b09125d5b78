"""The plain PyTorch process of `python -m bnstudy.bench study`: a study's runs, one after
another in one process, the way a researcher's script would train them.

    python -m bnstudy.bench plain RUNS.json RESULTS.json [--threads N] [--share I/N]

RUNS.json (`bnstudy.bench.study.plain_runs` writes it from a finished sweep) lists each run's
data (how to read its files, the channel mean and std, the split), network and optimizer
(`_target_` and arguments), seed, batch sizes and epochs. Each run seeds torch, builds the
network and optimizer, then each epoch takes the same minibatches in the same order as the
study (`bnstudy.data.EpochBatchSampler`: a permutation drawn from `(seed, epoch)`, a last batch
of one sample dropped) — forward, cross-entropy, zero_grad, backward, step — and makes one
pass over the validation split; one pass over the test split at the end. Each dataset is read
once per process. Nothing is logged or saved but each run's figures, in RESULTS.json. It
imports torch, the file readers (`bnstudy.datafiles`) and the network's module only: no
Lightning, Hydra or TensorBoard.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import time

import torch
import torch.nn.functional as F


def target(path: str):
    """The class a `_target_` names."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def read(source: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels of a split, decoded once per process: `source` is {"idx": root,
    "torchvision_class": ..., "train": ...} (MNIST's files) or {"cifar": [batch files]}."""
    return _read(json.dumps(source, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _read(key: str) -> tuple[torch.Tensor, torch.Tensor]:
    from pathlib import Path

    from bnstudy import datafiles

    source = json.loads(key)
    if "cifar" in source:
        return datafiles.read_cifar_batches([Path(p) for p in source["cifar"]])
    import torchvision.datasets

    dataset = getattr(torchvision.datasets, source["torchvision_class"])
    return datafiles.read_mnist(Path(source["idx"]), dataset, source["train"],
                                source["torchvision_class"])


def normalised(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    mean_, std_ = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (images.float().div_(255) - mean_).div_(std_)


def evaluate(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
             ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split, in batches."""
    net.eval()
    loss, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = net(x[start:start + batch_size])
            target_ = y[start:start + batch_size]
            loss += F.cross_entropy(logits, target_, reduction="sum")
            correct += (logits.argmax(-1) == target_).sum()
    return float(loss) / len(y), float(correct) / len(y)


def train(run: dict) -> dict:
    """One run (see the module docstring); its per-epoch and test figures."""
    data = run["data"]
    images, labels = read(data["train"])
    x_all = normalised(images, data["mean"], data["std"])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(data["split_seed"]))
    val_idx, train_idx = order[:data["n_val"]], order[data["n_val"]:data["n_val"] + data["n_train"]]
    x, y, x_val, y_val = x_all[train_idx], labels[train_idx], x_all[val_idx], labels[val_idx]
    images, labels = read(data["test"])
    x_test, y_test = normalised(images, data["mean"], data["std"]), labels

    torch.manual_seed(run["seed"])
    net = target(run["net"]["_target_"])(**{k: v for k, v in run["net"].items()
                                            if k != "_target_"})
    optimizer = target(run["optimizer"]["_target_"])(
        net.parameters(), **{k: v for k, v in run["optimizer"].items()
                             if k not in ("_target_", "_partial_")})
    batch_size, history = run["batch_size"], []
    for epoch in range(run["max_epochs"]):
        net.train()
        gen = torch.Generator().manual_seed(run["seed"] * 1_000_003 + epoch)
        batches = torch.randperm(len(y), generator=gen).split(batch_size)
        if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm cannot take one sample
            batches = batches[:-1]
        loss_sum, correct, count = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        for idx in batches:
            xb, yb = x[idx], y[idx]
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += loss * len(yb)
                correct += (logits.argmax(-1) == yb).sum()
            count += len(yb)
        val_loss, val_acc = evaluate(net, x_val, y_val, run["eval_batch_size"])
        history.append({"train/loss": float(loss_sum) / count, "train/acc": float(correct) / count,
                        "val/loss": val_loss, "val/acc": val_acc})
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
    with open(args.runs) as f:
        runs = json.load(f)[share::of]
    started = time.perf_counter()
    results = [train(run) for run in runs]
    with open(args.results, "w") as f:
        json.dump({"runs": results, "train_s": time.perf_counter() - started,
                   "threads": torch.get_num_threads()}, f)
