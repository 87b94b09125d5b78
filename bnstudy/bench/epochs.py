"""Per epoch: the project's training path against a plain PyTorch loop, same data and model.

    python -m bnstudy.bench [--repeats 3] [--floor] [overrides ...]   # data from paths.data_dir

A default `trainer.fit` (5 epochs, so the every-5th-epoch pictures are paid) alternates epoch
by epoch with `bnstudy.bench.plain`'s loop, so each pair sees the same machine state and gives
a ratio; a project epoch counts validation, callbacks and Lightning's work between epochs.
`--floor` times a bare Lightning loop (`BareClassifier`) the same way.
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
from hydra.errors import HydraException  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from bnstudy.bench import check_overrides  # noqa: E402
from bnstudy.bench.plain import evaluate, minibatches, train_epoch  # noqa: E402
from bnstudy.console import quiet_console  # noqa: E402
from bnstudy.errors import ConfigError, DataError  # noqa: E402
from bnstudy.overrides import compose  # noqa: E402
from bnstudy.run import build, build_model  # noqa: E402

IMPORT_S = time.perf_counter() - T0


class PlainLoop:
    """The plain loop (`bnstudy.bench.plain`) over the datamodule's tensors, its own network."""

    def __init__(self, cfg, datamodule) -> None:
        study = build_model(cfg, datamodule.input_shape, datamodule.num_classes)
        self.net = study.net.to(datamodule.train_set.x.device)
        self.optimizer = study.optimizer_factory(self.net.parameters())
        self.cfg, self.data = cfg, datamodule

    @torch.enable_grad()
    def epoch(self, epoch: int) -> float:
        """Trains one epoch (the study's minibatches) and evaluates; returns its seconds."""
        start, train, val = time.perf_counter(), self.data.train_set, self.data.val_set
        batches = minibatches(len(train), self.cfg.dataset.batch_size, self.cfg.seed, epoch)
        train_epoch(self.net, self.optimizer, train.x, train.y, batches)
        evaluate(self.net, val.x, val.y, self.cfg.dataset.datamodule.eval_batch_size)
        return time.perf_counter() - start


class BareClassifier(L.LightningModule):
    """The least a LightningModule does: the network, its loss, the optimizer; nothing logged."""

    def __init__(self, net: torch.nn.Module, optimizer) -> None:
        super().__init__()
        self.net, self.optimizer_factory = net, optimizer

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        (self.net(x).argmax(-1) == y).sum()  # what the plain loop's validation computes

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())


class Alternate(Callback):
    """Runs a plain epoch before each of the fit's epochs and times both, pairwise."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain_loop, self.plain, self.project, self.setup_s = plain, [], [], 0.0
        self.timed, self.mark = "", time.perf_counter()  # what the fit ran; when its epoch began

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = type(trainer.logger).__name__ if trainer.logger else "no logger"
        callbacks = ", ".join(type(c).__name__ for c in trainer.callbacks if c is not self)
        self.timed = f"{type(pl_module).__name__}, {logger}, callbacks: {callbacks or 'none'}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end_project_epoch()
        self.plain.append(self.plain_loop.epoch(trainer.current_epoch))
        self.mark = time.perf_counter()

    def end_project_epoch(self) -> None:
        """Closes the running project epoch (the first call: the fit's set-up)."""
        elapsed = time.perf_counter() - self.mark
        if len(self.project) < len(self.plain):
            self.project.append(elapsed)
        else:
            self.setup_s += elapsed


def alternate(cfg, datamodule, bare: bool = False) -> Alternate:
    """One fit of the config (`bare`: a `BareClassifier`, no logger, no callbacks) with a plain
    epoch before each of its epochs."""
    with tempfile.TemporaryDirectory() as out:
        cfg.paths.output_dir = out
        if bare:
            study = build_model(cfg, datamodule.input_shape, datamodule.num_classes)
            model = BareClassifier(study.net, study.optimizer_factory)
            trainer = L.Trainer(max_epochs=cfg.trainer.max_epochs, devices=1, logger=False,
                                accelerator=cfg.trainer.accelerator, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                num_sanity_val_steps=0, use_distributed_sampler=False)
        else:
            _, model, trainer = build(cfg)
        timer = Alternate(PlainLoop(cfg, datamodule))
        trainer.callbacks.insert(0, timer)  # first: its epoch start precedes the others'
        L.seed_everything(cfg.seed, verbose=False)
        timer.mark = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        timer.end_project_epoch()
    return timer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bnstudy.bench",
                                     description=__doc__.splitlines()[0],
                                     epilog="The others: python -m bnstudy.bench study --help "
                                     "(a whole study), python -m bnstudy.bench profile --help.")
    parser.add_argument("--repeats", type=int, default=3, help="fits to time (default 3)")
    parser.add_argument("--floor", action="store_true",
                        help="also time a bare Lightning loop (no logger, no callbacks)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.max_epochs=2")
    args = parser.parse_intermixed_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: it times 1 round or more, e.g. --repeats 2")
    if problem := check_overrides(args.overrides):
        parser.error(problem)
    quiet_console()  # the benchmark's lines only, not Lightning's notices at each fit

    t = time.perf_counter()
    try:
        cfg = compose(["trainer.max_epochs=5", "trainer.enable_progress_bar=false",
                       f"paths.output_dir={tempfile.gettempdir()}/bnstudy-bench",
                       *args.overrides])
        compose_s, t = time.perf_counter() - t, time.perf_counter()
        datamodule, _, _ = build(cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
    except (HydraException, ConfigError, DataError) as err:  # Hydra's, or the study's paragraph
        parser.error(str(err))
    load_s = time.perf_counter() - t

    n = len(datamodule.train_set)
    print(f"{cfg.dataset.name}: {n} training images, batch {cfg.dataset.batch_size}, "
          f"hidden {cfg.model.net.hidden_dim}, norm {cfg.model.net.norm}, optim {cfg.optim.name}, "
          f"{cfg.trainer.max_epochs} epoch(s) x "
          f"{args.repeats} fit(s), {torch.get_num_threads()} threads")
    timers = [alternate(cfg, datamodule) for _ in range(args.repeats)]
    setup_s = statistics.median(timer.setup_s for timer in timers)
    print(f"start-up: imports {IMPORT_S:.2f} s, config {compose_s:.2f} s, data {load_s:.2f} s, "
          f"fit set-up {setup_s:.2f} s")
    print_pairs(timers, "bnstudy (Lightning)", "bnstudy", n)
    if args.floor:
        print_pairs([alternate(cfg, datamodule, bare=True) for _ in range(args.repeats)],
                    "bare Lightning loop", "bare", n)


def print_pairs(timers: list[Alternate], name: str, short: str, n: int) -> None:
    """What the fits ran, seconds per epoch of each side, and the median of their ratios."""
    print(f"{name}: {timers[0].timed}")
    plain = [s for timer in timers for s in timer.plain]
    project = [s for timer in timers for s in timer.project]
    for label, times in (("plain PyTorch loop", plain), (name, project)):
        med = statistics.median(times)
        print(f"{label:20s} {med:7.3f} s/epoch  {n / med:9.0f} samples/s  "
              f"(epochs: {', '.join(f'{s:.3f}' for s in times)})")
    ratios = [a / b for a, b in zip(project, plain, strict=True)]
    print(f"ratio {short} / plain (median of {len(ratios)} paired epochs): "
          f"{statistics.median(ratios):.2f}  (range {min(ratios):.2f}-{max(ratios):.2f})")
