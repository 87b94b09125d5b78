"""The weight-grid and hallucination callbacks: their pure functions and a real training run."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from helpers import FAST, make_classifier, run_train, tiny_fit
from lightning.pytorch.callbacks import LambdaCallback
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnstudy.callbacks import Hallucinations, WeightGrid, hallucinate, weight_grid
from bnstudy.data import CIFAR10DataModule, MNISTDataModule
from bnstudy.model import Classifier
from bnstudy.nets import first_layer

PAD = 2  # make_grid's default padding


def grid_size(n: int, nrow: int, shape: tuple[int, ...]) -> tuple[int, int]:
    """(height, width) of make_grid's layout of n tiles of `shape`, `nrow` per row."""
    cols, rows = min(nrow, n), math.ceil(n / min(nrow, n))
    return rows * (shape[1] + PAD) + PAD, cols * (shape[2] + PAD) + PAD


def tile(grid: torch.Tensor, k: int, nrow: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The k-th tile of a make_grid image (row-major)."""
    row, col = divmod(k, nrow)
    top, left = PAD + row * (shape[1] + PAD), PAD + col * (shape[2] + PAD)
    return grid[:, top : top + shape[1], left : left + shape[2]]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_weight_grid_tiles_are_rows_scaled_each_symmetrically(shape):
    pattern = torch.linspace(-1.0, 0.5, math.prod(shape))
    scales = torch.arange(1.0, 21.0)[:, None]  # 20 units, each the pattern times its own scale
    grid = weight_grid(scales * pattern, shape, num_units=10)

    assert grid.shape == (3, *grid_size(10, 4, shape))  # 10 tiles, ceil(sqrt(10)) = 4 per row
    expected = (pattern / 2 + 0.5).view(shape).expand(3, -1, -1)  # -max|w| → 0, 0 → 0.5
    for k in range(10):
        assert torch.allclose(tile(grid, k, 4, shape), expected, atol=1e-6)
    assert tile(grid, 10, 4, shape).eq(0).all()  # no eleventh tile: padding only


def test_weight_grid_default_is_8_by_8():
    weight = torch.randn(256, 784)
    grid = weight_grid(weight, (1, 28, 28))
    assert grid.shape == (3, *grid_size(64, 8, (1, 28, 28)))
    row = weight[63]
    assert torch.allclose(tile(grid, 63, 8, (1, 28, 28))[0],
                          (row / (2 * row.abs().max()) + 0.5).view(28, 28))


@pytest.mark.parametrize("in_channels", [1, 3])
def test_weight_grid_of_a_conv_layer_has_a_tile_per_filter(in_channels):
    shape = (in_channels, 3, 3)
    weight = torch.randn(32, *shape)
    grid = weight_grid(weight, (in_channels, 28, 28))  # conv filters: the input shape is unused

    assert grid.shape == (3, *grid_size(32, 6, shape))  # 32 filters, ceil(sqrt(32)) = 6 per row
    for k in range(32):
        bound = weight[k].abs().max()  # each filter scaled on its own, over all its channels
        expected = (weight[k] / (2 * bound) + 0.5).expand(3, -1, -1)
        assert torch.allclose(tile(grid, k, 6, shape), expected, atol=1e-6)
        assert tile(grid, k, 6, shape).amin() == 0 or tile(grid, k, 6, shape).amax() == 1
    assert tile(grid, 32, 6, shape).eq(0).all()  # no 33rd tile: padding only


@pytest.fixture(scope="module")
def trained(shared_data) -> Classifier:
    """An MLP (hidden 256) with BatchNorm trained for one epoch on the shared real-MNIST subset."""
    L.seed_everything(0, verbose=False)
    model = make_classifier("bn", hidden_dim=256, lr=0.05)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small MLP steps faster on one thread than on a shared pool
    try:
        return tiny_fit(shared_data, model=model, batch_size=64, limit_val_batches=0)[1]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("training", [True, False])
def test_hallucinations_raise_class_logits_and_leave_model_alone(trained, training):
    model = trained.train(training)
    model.net.out.bias.requires_grad_(False)  # mixed flags, to check they come back as they were
    model.zero_grad(set_to_none=True)
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats included
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    mean, std = torch.tensor(MNISTDataModule.mean), torch.tensor(MNISTDataModule.std)
    low, high = float(-mean / std), float((1 - mean) / std)
    run = partial(hallucinate, model, (1, 28, 28), 10, [low], [high], steps=50, lr=0.2)

    start, images = run(steps=0), run()

    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(m.training is training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert torch.equal(run(), images)  # seeded
    assert images.shape == (10, 1, 28, 28) and low <= images.min() and images.max() <= high
    model.eval()
    with torch.no_grad():
        gain = model(images).diagonal() - model(start).diagonal()
        predicted = model(images).argmax(1)
    assert (gain > 2).all(), gain
    assert predicted.tolist() == list(range(10))


@pytest.mark.slow
@pytest.mark.parametrize("datamodule", [MNISTDataModule, CIFAR10DataModule])
def test_training_run_logs_and_saves_images(tiny_data, tmp_path, datamodule):
    run_dir = tmp_path / "run"
    done = run_train(f"dataset={datamodule.name}", f"paths.data_dir={tiny_data}",
                     "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", *FAST,
                     "callbacks.weight_grid.every_n_epochs=1",
                     "callbacks.hallucinations.every_n_epochs=0",  # drawn when training ends
                     "callbacks.hallucinations.steps=5")
    assert done.returncode == 0, done.stderr[-3000:]
    shape, classes = datamodule.input_shape, datamodule.classes

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    tags = [f"hallucination/{name}" for name in classes]
    assert set(events.Tags()["images"]) == {"weights/first_layer", "hallucination/all", *tags}
    # Weights after epochs 0 and 1; the final picture is epoch 1's (same step), not re-logged.
    weights = events.Images("weights/first_layer")
    assert len(weights) == 2 and weights[0].step < weights[1].step
    assert (weights[-1].height, weights[-1].width) == grid_size(64, 8, shape)
    for tag in ["hallucination/all", *tags]:
        assert [event.step for event in events.Images(tag)] == [weights[1].step], tag
    assert (events.Images("hallucination/all")[0].height,
            events.Images("hallucination/all")[0].width) == grid_size(10, 5, shape)

    images = run_dir / "images"
    files = {"weights_epoch0": grid_size(64, 8, shape), "weights_epoch1": grid_size(64, 8, shape),
             "weights_final": grid_size(64, 8, shape),
             "hallucinations_final": grid_size(10, 5, shape)}
    assert sorted(p.stem for p in images.iterdir()) == sorted(files)
    for stem, (height, width) in files.items():
        with Image.open(images / f"{stem}.png") as image:
            image.load()
            assert image.size == (width, height), stem
    final = (images / "weights_final.png").read_bytes()
    assert final == (images / "weights_epoch1.png").read_bytes()
    # Encoded once: the files hold the very PNGs TensorBoard shows.
    assert [(images / f"weights_epoch{i}.png").read_bytes() for i in (0, 1)] == [
        event.encoded_image_string for event in weights]
    assert ((images / "hallucinations_final.png").read_bytes()
            == events.Images("hallucination/all")[0].encoded_image_string)


@pytest.mark.parametrize("cnn", [False, True], ids=["mlp", "cnn"])
def test_early_stop_without_tensorboard_still_saves_final_images(tiny_data, tmp_path, cnn):
    model = make_classifier(lr=0.05, cnn=cnn)
    stop = LambdaCallback(on_train_epoch_end=lambda t, _: setattr(t, "should_stop", True))
    callbacks = [WeightGrid(tmp_path, every_n_epochs=2), Hallucinations(tmp_path, steps=2), stop]
    trainer = tiny_fit(tiny_data, model=model, callbacks=callbacks, max_epochs=5,
                       limit_val_batches=0)[2]

    assert trainer.current_epoch == 1  # stopped after the first epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hallucinations_final.png",
                                                         "weights_final.png"]
    # The grid of the network's first layer (the datamodule's input shape for an MLP's rows,
    # a tile per filter for a CNN), as TensorBoard encodes it: × 255, truncated.
    grid = weight_grid(first_layer(model).weight, MNISTDataModule.input_shape)
    assert grid.shape == ((3, *grid_size(4, 2, (1, 3, 3))) if cnn
                          else (3, *grid_size(32, 6, (1, 28, 28))))
    with Image.open(tmp_path / "weights_final.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert np.array_equal(pixels, (grid * 255).clamp(0, 255).byte().permute(1, 2, 0).numpy())
