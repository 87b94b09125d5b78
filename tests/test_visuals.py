"""`bnstudy.pictures.recipe` (the hallucination recipe and its knobs) and `drawing` through
the picture callbacks in real training runs."""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from helpers import PAD, decoded, grid_size, make_classifier, tiny_fit
from lightning.pytorch.callbacks import LambdaCallback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from bnstudy.callbacks import Hallucinations, MetricsHistory, WeightGrid
from bnstudy.data import CIFAR10DataModule, MNISTDataModule
from bnstudy.nets import first_layer
from bnstudy.pictures import measures as P
from bnstudy.pictures.grids import LABEL_HEIGHT, weight_grid
from bnstudy.pictures.recipe import class_score, hallucinate

MNIST_MEAN, MNIST_STD = MNISTDataModule.mean[0], MNISTDataModule.std[0]
LOW, HIGH = [-MNIST_MEAN / MNIST_STD], [(1 - MNIST_MEAN) / MNIST_STD]  # valid normalised range


# --- the recipe -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_trained(tiny_data):
    """An MLP with BatchNorm trained 4 epochs on tiny MNIST; the recipe on it, in data space."""
    L.seed_everything(0, verbose=False)
    data, model, _ = tiny_fit(tiny_data, model=make_classifier("bn", hidden_dim=64, lr=0.1),
                              max_epochs=4, limit_val_batches=0)
    return model, partial(hallucinate, model, (1, 28, 28), 10, LOW, HIGH, parametrisation="data",
                          stats=P.ImageStats.of(data.train_set.x))


def test_hallucinations_raise_class_logits_and_leave_model_alone(tiny_trained, two_torch_threads):
    model, run = tiny_trained
    model.train().net.out.eval()  # mixed modes and flags, to check they come back as they were
    model.net.out.bias.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats included
    rng, threads = torch.get_rng_state(), torch.get_num_threads()

    start, images = run(steps=0), run()

    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert torch.equal(run(), images)  # seeded
    assert images.shape == (10, 1, 28, 28) and LOW[0] <= images.min() and images.max() <= HIGH[0]
    model.net.out.bias.requires_grad_(True)
    with torch.no_grad():
        gain = model.eval()(images).diagonal() - model(start).diagonal()
        predicted = model(images).argmax(1)
    assert (gain > 2).all(), gain
    assert predicted.tolist() == list(range(10))
    # Each class's band (rows 2k, 2k + 1) is drawn bright: well above the image's mean row.
    pairs = images[:, 0].mean(2).view(10, 14, 2).mean(2)
    assert (pairs[torch.arange(10), torch.arange(10)] > pairs.mean(1) + 0.5).all(), pairs


RECIPE_CHANGES = [("steps", 10), ("lr", 0.02), ("objective", "logit"), ("size", 0.5),
                  ("l2", 0.01), ("tv", 0.01), ("jitter", 0), ("blur_every", 0),
                  ("blur_sigma", 1.0), ("seeds", 3), ("parametrisation", "pixel"),
                  ("parametrisation", "data_colour"), ("parametrisation", "fourier"),
                  ("noise_std", 0.5), ("seed", 1)]


@pytest.mark.parametrize(("knob", "value"), RECIPE_CHANGES,
                         ids=[f"{k}={v}" for k, v in RECIPE_CHANGES])
def test_every_knob_changes_the_result(tiny_trained, knob, value):
    run = partial(tiny_trained[1], steps=20)
    default, changed = run(), run(**{knob: value})
    assert changed.shape == default.shape
    assert (changed - default).abs().max() > 1e-3


def test_log_softmax_stalls_where_the_class_already_wins_and_margin_does_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([200.0, 0.0, 0.0]))  # class 0 wins whatever the input
    run = partial(hallucinate, model, (1, 8, 8), 3, [-5.0], [5.0], parametrisation="pixel",
                  blur_every=0)  # 8 × 8 pixels: repeated blurs leave only the lowest frequency
    noise, base = run(lr=0.0), run(steps=0, noise_std=0.0)  # the recipe without the gradient
    stalled, moved = run(objective="log_softmax"), run(objective="margin")
    assert torch.equal(stalled[0], noise[0])  # no gradient at all: only blur and rescaling
    assert P.stuck(stalled, noise, base).tolist() == [True, False, False]
    assert P.stuck(moved, noise, base).tolist() == [False, False, False]


def test_class_score_objectives_and_bad_recipes_are_refused():
    logits, target = torch.tensor([[3.0, 1.0, -1.0]]), torch.tensor([0])
    score = partial(class_score, logits, target)
    assert score("logit").item() == score("contrast").item() == 3.0
    assert class_score(torch.tensor([[3.0, 1.0, 2.0]]), target, "contrast").item() == 1.5
    assert score("margin").item() == pytest.approx(3.0 - math.log(math.exp(1) + math.exp(-1)))
    assert score("log_softmax").item() == pytest.approx(float(logits.log_softmax(1)[0, 0]))
    with pytest.raises(ValueError, match="objective"):
        score("logits")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="needs the training images' statistics"):
        hallucinate(model, (1, 8, 8), 3, [-1.0], [1.0], parametrisation="data")
    with pytest.raises(ValueError, match="seeds=0"):
        hallucinate(model, (1, 8, 8), 3, [-1.0], [1.0], seeds=0)
    with pytest.raises(ValueError, match="parametrisation='lucid'"):  # objective: test_draw
        Hallucinations("unused", parametrisation="lucid")


def test_the_start_is_the_seeded_noise_and_each_knob_does_what_it_says():
    """steps=0: the seeds' mean noise in any parametrisation; lr=0: blurred every `blur_every`."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    wide = [-100.0], [100.0]  # nothing clamped
    for size in (0.5, 2.0):  # each image held at its root mean square
        for seeds in (1, 3):  # the seeds' mean too
            images = hallucinate(model, (1, 8, 8), 3, *wide, steps=15, size=size, seeds=seeds)
            assert torch.allclose(images.pow(2).mean(dim=(1, 2, 3)).sqrt(), torch.tensor(size))
    free = hallucinate(model, (1, 8, 8), 3, *wide, steps=15, size=None, blur_every=0)
    assert not torch.allclose(free.pow(2).mean(dim=(1, 2, 3)).sqrt(), torch.tensor(1.0))
    zero = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    nn.init.zeros_(zero[1].weight)  # no class gradient: only the penalties move the images
    run = partial(hallucinate, zero, (1, 8, 8), 3, *wide, parametrisation="pixel", size=None,
                  jitter=0)
    noise = torch.randn((2 * 3, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 0.1
    start = noise.view(2, 3, 1, 8, 8).mean(0)
    assert torch.allclose(run(steps=0, seeds=2), start)
    assert torch.allclose(run(steps=0, seeds=2, parametrisation="fourier"), start, atol=1e-6)
    assert torch.allclose(run(lr=0.0, steps=3, blur_every=2), P.gaussian_blur(noise[:3], 0.5))
    pulled = run(l2=1.0, lr=0.01, steps=20, blur_every=0)  # l2 pulls every pixel towards 0
    assert pulled.pow(2).mean() < 0.5 * noise[:3].pow(2).mean()
    assert pulled.mean().abs() < 0.01  # towards 0, not towards the lower bound
    rows = run(tv=1.0, lr=0.01, steps=20, blur_every=0)
    for dim in (-1, -2):  # TV flattens rows and columns alike
        assert rows.diff(dim=dim).abs().mean() < 0.5 * noise[:3].diff(dim=dim).abs().mean()


@pytest.mark.slow
def test_default_recipe_draws_digits_an_independent_classifier_reads(shared_data):
    L.seed_everything(0, verbose=False)
    data, model, _ = tiny_fit(shared_data, model=make_classifier("bn", hidden_dim=256, lr=0.05),
                              batch_size=64, limit_val_batches=0)  # one epoch, real MNIST
    judge = P.Referee(data.input_shape, 10).fit(data.train_set.x, data.train_set.y,
                                                (data.val_set.x, data.val_set.y))
    images = hallucinate(model, data.input_shape, 10, LOW, HIGH,
                         stats=P.ImageStats.of(data.train_set.x),
                         **Hallucinations("unused").settings)  # the recipe's defaults
    assert judge.accuracy > 0.95
    assert P.recognised(judge.probabilities(images))[0].sum() >= 8
    assert P.predict(model, images).argmax(1).tolist() == list(range(10))


# --- drawing, through the callbacks in training ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("datamodule", [MNISTDataModule, CIFAR10DataModule])
def test_training_run_logs_and_saves_images(tiny_sweep, datamodule):
    # A `tiny_sweep` job: 2 epochs, weight grids every epoch, hallucinations (5 steps) at the end
    (run_dir,) = tiny_sweep.dir.glob(f"*_{datamodule.name}-bn-sgd-seed0*")
    shape, classes, images = datamodule.input_shape, datamodule.classes, run_dir / "images"
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    # One hallucination card a run; weights after epochs 0 and 1, the final not re-logged
    drawn = {tag: events.Images(tag) for tag in events.Tags()["images"]}
    steps = {tag: [e.step for e in found] for tag, found in drawn.items()}
    assert steps["weights/first_layer"] == steps["weights/first_layer_change"]
    assert len(steps) == 3 and steps["hallucination/all"] == steps["weights/first_layer"][1:]
    # Encoded once: the files hold the very PNGs TensorBoard shows (the final: epoch 1's).
    logged = {tag: [e.encoded_image_string for e in found] for tag, found in drawn.items()}
    for tag, prefix in (("weights/first_layer", "weights"),
                        ("weights/first_layer_change", "weights_change")):
        assert [(images / f"{prefix}_{when}.png").read_bytes() for when in (
            "epoch0", "epoch1", "final")] == [*logged[tag], logged[tag][-1]]
    assert [(images / "hallucinations_final.png").read_bytes()] == logged["hallucination/all"]
    scale = math.ceil(96 / shape[2])  # a labelled tile: enlarged to >= 96 px, its name on top
    grid = grid_size(64, 8, shape)
    labelled = grid_size(10, 5, (3, LABEL_HEIGHT + scale * shape[1], scale * shape[2]))
    sizes = {"weights_final": grid, "weights_change_final": grid, "weights_epoch0": grid,
             "hallucinations_final": labelled}
    assert all(decoded(images / f"{stem}.png").shape[:2] == size for stem, size in sizes.items())
    assert sorted(p.name for p in images.iterdir()) == sorted(
        [f"{prefix}_{when}.png" for prefix in ("weights", "weights_change")
         for when in ("epoch0", "epoch1", "final")]
        + ["hallucinations_final.png", "hallucinations_final.npz", "hallucinations_final.pt",
           "weights_final.pt"])
    saved = torch.load(images / "hallucinations_final.pt", weights_only=True)
    assert saved["images"].shape == saved["noise"].shape == saved["base"].shape == (10, *shape)
    assert saved["real_means"].shape == (10, *shape) and saved["classes"] == list(classes)
    assert saved["settings"]["steps"] == 5 and saved["seconds"] > 0
    assert torch.allclose(saved["own_probabilities"].sum(1), torch.ones(10))
    # The final images for anyone's analysis: one pixel array per class name, imshow's layout.
    mean, std = (torch.tensor(saved[key]).view(-1, 1, 1) for key in ("mean", "std"))
    pixels = (saved["images"] * std + mean).clamp(0, 1).permute(0, 2, 3, 1).squeeze(-1)
    with np.load(images / "hallucinations_final.npz") as arrays:
        assert list(arrays.keys()) == list(classes)
        assert all(arrays[name].dtype == np.float32 for name in classes)
        assert np.allclose(np.stack([arrays[name] for name in classes]), pixels.numpy())


def test_initial_weights_survive_a_resume(tiny_data, tmp_path):
    """(The change grid is final − initial: the next test.)"""
    model = make_classifier(lr=0.05)
    initial = first_layer(model).weight.detach().clone()
    first = WeightGrid(tmp_path / "first", every_n_epochs=0)
    trainer = tiny_fit(tiny_data, model=model, callbacks=[first], limit_val_batches=0)[2]
    assert torch.equal(first.initial, initial)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")

    torch.manual_seed(123)  # resumed into a network initialised otherwise, with a new callback
    other = make_classifier(lr=0.05)
    assert not torch.equal(first_layer(other).weight, initial)
    resumed = WeightGrid(tmp_path / "resumed", every_n_epochs=0)
    tiny_fit(tiny_data, model=other, callbacks=[resumed], max_epochs=2, limit_val_batches=0,
             ckpt_path=tmp_path / "epoch1.ckpt")

    assert torch.equal(resumed.initial, initial)  # the run's own start, from the checkpoint
    saved = torch.load(tmp_path / "resumed" / "weights_final.pt", weights_only=True)
    assert torch.equal(saved["initial"], initial.half())
    assert torch.equal(saved["final"], first_layer(other).weight.detach().half())
    assert saved["input_shape"] == [1, 28, 28] and saved["classes"] == list("0123456789")


@pytest.mark.parametrize("cnn", [False, True], ids=["mlp", "cnn"])
def test_early_stop_without_tensorboard_still_saves_final_images(tiny_data, tmp_path, cnn):
    model = make_classifier(lr=0.05, cnn=cnn)
    initial = first_layer(model).weight.detach().clone()
    stop = LambdaCallback(on_train_epoch_end=lambda t, _: setattr(t, "should_stop", True))
    callbacks = [WeightGrid(tmp_path, every_n_epochs=2), Hallucinations(tmp_path, steps=2), stop]
    data, _, trainer = tiny_fit(tiny_data, model=model, callbacks=callbacks, max_epochs=5,
                                limit_val_batches=0)

    assert trainer.current_epoch == 1  # stopped after the first epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hallucinations_final.npz", "hallucinations_final.png", "hallucinations_final.pt",
        "weights_change_final.png", "weights_final.png", "weights_final.pt"]
    # The first layer's grid (an MLP's rows in the input shape, a CNN's filters) × 255, truncated
    weight = first_layer(model).weight
    for name, drawn in (("weights_final", weight), ("weights_change_final", weight - initial)):
        grid = weight_grid(drawn, MNISTDataModule.input_shape)
        assert grid.shape == ((3, *grid_size(4, 2, (1, 3, 3))) if cnn
                              else (3, *grid_size(32, 6, (1, 28, 28))))
        as_png = (grid * 255).clamp(0, 255).byte().permute(1, 2, 0).numpy()
        assert np.array_equal(decoded(tmp_path / f"{name}.png"), as_png)
    # The saved hallucinations are the drawn ones, with their start and the model's reading.
    saved = torch.load(tmp_path / "hallucinations_final.pt", weights_only=True)
    top = PAD + LABEL_HEIGHT  # first tile, under its name, enlarged 4×
    tile0 = decoded(tmp_path / "hallucinations_final.png")[top:top + 112:4, PAD:PAD + 112:4, 0]
    expected = (data.denormalise(saved["images"][:1])[0, 0] * 255).byte().numpy()
    assert np.array_equal(tile0, expected)
    assert torch.allclose(saved["own_probabilities"], P.predict(model, saved["images"]))
    pixels, labels = data.denormalise(data.train_set.x), data.train_set.y  # each class's mean
    assert torch.allclose(saved["real_means"], torch.stack(
        [pixels[labels == k].mean(0) for k in range(10)]), atol=1e-6)


def test_epoch_drawings_take_epoch_steps_and_the_final_one_all_steps(tiny_data, tmp_path):
    callback = Hallucinations(tmp_path, every_n_epochs=1, steps=12, epoch_steps=3)
    epochs = []
    spy = LambdaCallback(on_train_epoch_end=lambda t, m: epochs.append(
        sorted(p.name for p in tmp_path.glob("*.png"))))
    data, model, _ = tiny_fit(tiny_data, model=make_classifier(lr=0.05),
                              callbacks=[callback, spy], max_epochs=3, limit_val_batches=0)

    # Epochs 0 and 1 drawn cheaply; the last epoch's drawing is left to the final one.
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "hallucinations_epoch0.png", "hallucinations_epoch1.png", "hallucinations_final.png"]
    assert epochs[-1] == ["hallucinations_epoch0.png", "hallucinations_epoch1.png"]
    saved = torch.load(tmp_path / "hallucinations_final.pt", weights_only=True)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    run = partial(hallucinate, model, data.input_shape, 10, (-mean / std).tolist(),
                  ((1 - mean) / std).tolist(), stats=P.ImageStats.of(data.train_set.x))
    assert callback.settings["steps"] == 12 and saved["settings"]["steps"] == 12
    assert torch.allclose(saved["images"], run(**callback.settings))
    assert torch.allclose(saved["noise"], run(**{**callback.settings, "lr": 0.0}))  # no pull
    assert torch.equal(saved["base"], run(**{**callback.settings, "steps": 0, "noise_std": 0}))
    assert not torch.allclose(saved["images"], run(**{**callback.settings, "steps": 3}))


def test_a_stop_within_an_epoch_leaves_that_epoch_to_the_final_drawing(tiny_data, tmp_path):
    """A stop set during an epoch (`max_time`'s Timer, a divergence) makes it the last; ended by
    `max_steps` at an epoch's end (not known as the last), the epoch's drawing is not final."""
    stop = LambdaCallback(on_train_batch_end=lambda t, *_: setattr(t, "should_stop", True))
    callbacks = [stop, Hallucinations(tmp_path, every_n_epochs=1, steps=3, epoch_steps=1)]
    tiny_fit(tiny_data, model=make_classifier(lr=0.05), callbacks=callbacks, max_epochs=5,
             limit_val_batches=0)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["hallucinations_final.png"]
    out = tmp_path / "steps"
    tiny_fit(tiny_data, model=make_classifier(lr=0.05), max_epochs=-1, max_steps=11,
             callbacks=[Hallucinations(out, every_n_epochs=1, steps=3, epoch_steps=1)],
             limit_val_batches=0)  # 11 steps: one epoch
    assert (out / "hallucinations_epoch0.png").read_bytes() != \
        (out / "hallucinations_final.png").read_bytes()
    assert torch.load(out / "hallucinations_final.pt", weights_only=True)["settings"]["steps"] == 3


def test_only_rank_0_writes_and_the_initial_weights_are_the_first_fits(tmp_path):
    """Other ranks draw and record nothing; a second fit's (a resume's) setup keeps the first's."""
    rank_1 = SimpleNamespace(is_global_zero=False, current_epoch=0, global_step=11,
                             callback_metrics={"train/loss": torch.tensor(1.0)}, callbacks=[])
    history = MetricsHistory(tmp_path / "metrics.json")
    history.on_fit_start(rank_1, None)
    history.on_train_epoch_end(rank_1, None)
    assert history.history[0]["train/loss"] == 1.0 and not (tmp_path / "metrics.json").exists()
    grid, first, second = WeightGrid(tmp_path / "images"), make_classifier(), make_classifier()
    grid._draw(rank_1, first, "final")
    assert not (tmp_path / "images").exists()
    grid.setup(rank_1, first, "fit")
    grid.setup(rank_1, second, "fit")
    assert torch.equal(grid.initial, first_layer(first).weight)


def test_diverged_model_gets_no_pictures_and_no_data(tiny_data, tmp_path):
    broken = LambdaCallback(on_train_end=lambda t, m: first_layer(m).weight.data.fill_(math.nan))
    callbacks = [broken, WeightGrid(tmp_path, every_n_epochs=0),
                 Hallucinations(tmp_path, every_n_epochs=0, steps=2)]
    tiny_fit(tiny_data, model=make_classifier(lr=0.05), callbacks=callbacks, limit_val_batches=0)
    assert list(tmp_path.iterdir()) == []
