"""Benchmark: the project's training path against a plain PyTorch loop, same data and model.

    python -m bnstudy.bench paths.data_dir=../shared/data [--repeats 3] [overrides ...]
    python -m bnstudy.bench dataset=fashion_mnist paths.data_dir=data   # full 60k images

In one process and alternating, it times `trainer.fit` of a default run (curves,
checkpointing and the visual callbacks at their default frequency) and a plain loop
over the same in-memory tensors (train step, then one pass over the validation split,
as a researcher's loop would), and prints seconds per epoch, samples per second and
the median ratio. Each timing is five epochs by default (`trainer.max_epochs`), so the
hallucinations (every fifth epoch) are paid at their default frequency. Start-up (imports,
config composition, reading the data) is timed separately.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

T0 = time.perf_counter()

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from bnstudy.data import batches  # noqa: E402
from bnstudy.train import CONFIG_DIR, build  # noqa: E402

IMPORT_S = time.perf_counter() - T0


def project_epoch_seconds(cfg, datamodule) -> float:
    """Seconds per epoch of the project's `trainer.fit`, with every default callback."""
    with tempfile.TemporaryDirectory() as out:
        cfg.paths.output_dir = out
        _, model, trainer = build(cfg)
        L.seed_everything(cfg.seed, verbose=False)
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        return (time.perf_counter() - start) / cfg.trainer.max_epochs


def plain_epoch_seconds(cfg, datamodule) -> float:
    """Seconds per epoch of a hand-written loop over the same tensors, model and optimizer."""
    _, model, _ = build(cfg)
    net, optimizer = model.net, instantiate(cfg.optim.optimizer)(model.parameters())
    device = datamodule.train_set.x.device
    net.to(device)
    train = batches(datamodule.train_set, cfg.dataset.batch_size, shuffle=True, seed=cfg.seed)
    val = batches(datamodule.val_set, cfg.dataset.datamodule.eval_batch_size, shuffle=False)
    epochs = cfg.trainer.max_epochs
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        train.sampler.set_epoch(epoch)
        total, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        for x, y in train:
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(y)
            correct += (logits.argmax(-1) == y).sum()
        net.eval()
        with torch.no_grad():
            val_correct = sum((net(x).argmax(-1) == y).sum() for x, y in val)
        float(total), float(correct), float(val_correct)  # the epoch's figures, synced
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timings of each way (default 3)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.max_epochs=2")
    args = parser.parse_intermixed_args(argv)

    t = time.perf_counter()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        defaults = ["trainer.max_epochs=5", "trainer.enable_progress_bar=false",
                    f"paths.output_dir={tempfile.gettempdir()}/bnstudy-bench"]  # fmt: skip
        cfg = compose("config", overrides=[*defaults, *args.overrides])
    compose_s = time.perf_counter() - t
    t = time.perf_counter()
    datamodule, _, _ = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    load_s = time.perf_counter() - t

    n = len(datamodule.train_set)
    print(f"start-up: imports {IMPORT_S:.2f} s, config {compose_s:.2f} s, data {load_s:.2f} s")
    print(
        f"{cfg.dataset.name}: {n} training images, batch {cfg.dataset.batch_size}, "
        f"hidden {cfg.model.hidden_dim}, norm {cfg.model.norm}, optim {cfg.optim.name}, "
        f"{cfg.trainer.max_epochs} epoch(s) per timing, {torch.get_num_threads()} threads"
    )
    project, plain = [], []
    for _ in range(args.repeats):
        plain.append(plain_epoch_seconds(cfg, datamodule))
        project.append(project_epoch_seconds(cfg, datamodule))
    ratios = [a / b for a, b in zip(project, plain, strict=True)]
    for name, times in (("plain PyTorch loop", plain), ("bnstudy (Lightning)", project)):
        med = statistics.median(times)
        print(
            f"{name:20s} {med:7.3f} s/epoch  {n / med:9.0f} samples/s  "
            f"(runs: {', '.join(f'{s:.3f}' for s in times)})"
        )
    print(f"ratio bnstudy / plain (median): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
