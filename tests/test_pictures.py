"""`bnstudy.pictures.measures` and `grids` on hand-made images with known answers, and the
independent judge."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import grid_size, grid_tile

from bnstudy.pictures import measures as P
from bnstudy.pictures.drawing import Hallucinator, all_finite, data_source, draw_weights
from bnstudy.pictures.grids import LABEL_HEIGHT, labelled_grid, name_strip, weight_grid


def solid(rgb, n: int = 1, size: int = 8) -> torch.Tensor:
    """n images of one colour (n, 3, size, size), pixels in [0, 1]."""
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, size, size)


def step_edge(size: int = 16, contrast: float = 1.0) -> torch.Tensor:
    """One grey image (1, 1, size, size): left half 0, right half `contrast`."""
    image = torch.zeros(1, 1, size, size)
    image[..., size // 2 :] = contrast
    return image


# --- grids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 3, 3)],
                         ids=["mnist", "cifar", "conv"])
def test_weight_grid_tiles_are_units_scaled_each_symmetrically(shape):
    conv = shape[1] == 3  # a Conv2d weight: a tile per filter, the input shape unused
    pattern = torch.linspace(-1.0, 0.5, math.prod(shape))
    scales = torch.arange(1.0, 81.0)[:, None]  # 80 units, each the pattern times its own scale
    weight = (scales * pattern).view(80, *shape) if conv else scales * pattern
    grid = weight_grid(weight, (3, 32, 32) if conv else shape)  # default: the first 64, 8 × 8

    assert grid.shape == (3, *grid_size(64, 8, shape))
    expected = (pattern / 2 + 0.5).view(shape).expand(3, -1, -1)  # -max|w| → 0, 0 → 0.5
    for k in range(64):
        assert torch.allclose(grid_tile(grid, k, 8, shape), expected, atol=1e-6)
    few = weight_grid(weight, shape, num_units=10)  # ceil(sqrt(10)) = 4 a row
    assert few.shape == (3, *grid_size(10, 4, shape)) and grid_tile(few, 10, 4, shape).eq(0).all()


def test_labelled_grid_writes_each_name_above_its_enlarged_image():
    images, names = torch.rand(3, 1, 28, 28), ["zero", "one", "automobile"]
    grid = labelled_grid(images, names, nrow=2)
    shape = (3, LABEL_HEIGHT + 112, 112)  # enlarged 4× to >= 96 px, the name on top
    assert grid.shape == (3, *grid_size(3, 2, shape))
    for k, name in enumerate(names):
        drawn = grid_tile(grid, k, 2, shape)
        assert torch.equal(drawn[:, :LABEL_HEIGHT], name_strip(name, 112)), name
        enlarged = images[k].repeat_interleave(4, -2).repeat_interleave(4, -1).expand(3, -1, -1)
        assert torch.equal(drawn[:, LABEL_HEIGHT:], enlarged)
    strips = [name_strip(name, 112) for name in names]
    assert all(strip.lt(0.5).any() for strip in strips)  # black text on white is drawn
    assert not torch.equal(strips[0], strips[1])  # ... and it is the name


# --- hallucination measures -------------------------------------------------------------------


def test_colour_measures_of_solid_colours_and_class_tints():
    blue, green, grey = solid((0.1, 0.2, 0.9)), solid((0.1, 0.8, 0.2)), solid((0.5, 0.5, 0.5))
    blueness, greenness = partial(P.tint, channel=2), partial(P.tint, channel=1)  # B − (R+G)/2
    assert blueness(blue).item() == pytest.approx(0.9 - 0.15)
    assert greenness(blue).item() == pytest.approx(0.2 - 0.5)
    assert greenness(green).item() == pytest.approx(0.8 - 0.15)
    assert blueness(grey).item() == 0 and greenness(grey).item() == 0
    assert math.isnan(blueness(step_edge()).item())  # not an RGB image
    # Colour fidelity scores the class tints, not the overall tint.
    real = torch.rand(10, 3, 1, 1, generator=torch.Generator().manual_seed(0)).expand(10, 3, 4, 4)
    assert P.colour_fidelity(real, real) == pytest.approx(1)
    tinted = real * 0.5 + torch.tensor([0.3, 0.0, 0.1]).view(1, 3, 1, 1)  # scaled, shifted
    assert P.colour_fidelity(tinted, real) == pytest.approx(1)
    assert P.colour_fidelity(real.flip(0), real) < 0.5  # each class another class's colour
    assert P.colour_fidelity(1 - real, real) == pytest.approx(-1)
    assert math.isnan(P.colour_fidelity(solid((0.2, 0.3, 0.4), n=10), real))  # no class varies


def test_sharpness_is_zero_for_a_constant_image_and_grows_with_edges():
    assert P.sharpness(torch.full((2, 3, 16, 16), 0.7)).abs().max() == 0
    edge = P.sharpness(step_edge()).item()
    assert edge > 0.05
    assert P.sharpness(step_edge(contrast=0.5)).item() == pytest.approx(edge / 2)
    assert P.sharpness(step_edge().transpose(-1, -2)).item() == pytest.approx(edge)
    delta = torch.zeros(1, 1, 9, 9)
    delta[..., 4, 4] = 1
    assert P.gaussian_blur(delta, 1.0)[..., 4, 6] > 0.01  # the kernel reaches 2 σ
    # The blur keeps constants and takes most of pixel noise's gradient away, little of an edge's.
    noise = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(P.gaussian_blur(noise, 0), noise)
    assert torch.allclose(P.gaussian_blur(torch.full((2, 3, 9, 9), 0.4), 1.0), torch.tensor(0.4))
    kept = {name: (P.sharpness(x) / P.sharpness(x, sigma=0)).item()
            for name, x in (("noise", noise), ("edge", step_edge()))}
    assert kept["noise"] < 0.3 and kept["edge"] > 0.5, kept


def test_correlation_measures_distinctness_and_nearest_mean():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 8, 8)
    same = torch.cat([image, 2 * image + 0.1, image])  # brightness and contrast do not count
    assert P.distinctness(same) == pytest.approx(0, abs=1e-6)
    assert P.distinctness(torch.rand(10, 3, 32, 32)) == pytest.approx(1, abs=0.05)
    assert P.distinctness(torch.cat([image, -image])) == pytest.approx(2)
    means = torch.rand(10, 1, 8, 8)
    noisy = means + 0.05 * torch.randn(10, 1, 8, 8)
    assert P.nearest_mean(noisy, means).all()  # each image closest to its own class mean
    assert not P.nearest_mean(noisy.roll(1, dims=0), means).any()
    flat = torch.full((1, 1, 8, 8), 0.3)  # no contrast: correlates 0 with everything
    assert P.pairwise_correlation(flat, means).eq(0).all()


def test_stuck_flags_images_that_still_show_their_noise_or_did_not_grow():
    torch.manual_seed(0)
    base, noise = torch.rand(5, 1, 8, 8), 0.1 * torch.randn(5, 1, 8, 8)
    pattern = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)  # root-mean-square ≈ 0.58
    images = torch.stack([
        (base + 5 * noise)[0],             # the noise, only rescaled: stuck
        (base + pattern)[1],               # a pattern of its own: not stuck
        (base + 0.01 * pattern)[2],        # faded below the starting noise: stuck
        (base + 0.2 * pattern)[3],         # above the noise (0.1), but it did not grow as
        (base - pattern)[4],               # the others did (under half their median): stuck
    ])
    assert P.stuck(images, base + noise, base).tolist() == [True, False, True, True, False]
    assert P.noise_correlation(images, base + noise, base)[2:].abs().max() < 0.5  # not noise
    alone = torch.stack([images[1], (base + 0.4 * pattern)[3]])  # both grew: neither stuck
    assert P.stuck(alone, (base + noise)[[1, 3]], base[[1, 3]]).tolist() == [False, False]


def test_recognised_and_predict():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    read, conf = P.recognised(probs)
    assert read.tolist() == [True, False, True]
    assert conf.tolist() == pytest.approx([0.7, 0.3, 0.8])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    out = P.predict(net.train(), torch.randn(5, 1, 2, 2))
    assert net[2].training and out.shape == (5, 3)  # eval inside, the modes restored
    assert all(p.requires_grad for p in net.parameters())  # and the parameters' flags
    assert torch.allclose(out.sum(1), torch.ones(5))
    assert int(net[2].num_batches_tracked) == 0  # running statistics untouched


def test_image_stats_round_trip_colour_and_constant_pixels():
    torch.manual_seed(0)
    shared = torch.randn(500, 1, 6, 6)
    x = torch.cat([shared + 0.3 * torch.randn(500, 1, 6, 6) for _ in range(3)], 1)
    x[:, :, 0, 0] = 1.5  # a pixel that never varies
    stats = P.ImageStats.of(x)
    assert torch.allclose(stats.mean, x.mean(0), atol=1e-6)
    assert torch.allclose(stats.std, x.std(0), atol=1e-6)
    assert stats.colour[~torch.eye(3, dtype=torch.bool)].min() > 0.3  # channels vary together
    x[:, 2] *= 5  # the colour is the square root of the channels' correlation, not covariance
    colour, rho = P.ImageStats.of(x).colour, 1 / 1.09  # shared pattern + own noise of std 0.3
    expected = (torch.full((3, 3), rho) + (1 - rho) * torch.eye(3)) * 35 / 36  # (0, 0) is fixed
    assert torch.allclose(colour @ colour, expected, atol=0.03)
    d = torch.randn(4, 3, 6, 6)
    d[:, :, 0, 0] = 0
    assert torch.allclose(stats.deviation(stats.images(d)), d, atol=1e-4)
    assert torch.equal(stats.images(d)[:, :, 0, 0], torch.full((4, 3), 1.5))


# --- weight measures --------------------------------------------------------------------------


def test_change_share_and_high_frequency_share():
    initial = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
    assert P.change_share(initial, initial).abs().max() == 0
    assert torch.allclose(P.change_share(2 * initial, initial), torch.full((5,), 0.25))

    shape = (1, 16, 16)
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2 - 1.0)
    assert P.high_frequency_share(torch.ones(1, 256), shape).item() == 0
    assert P.high_frequency_share(checker.view(1, -1), shape).item() == pytest.approx(1)
    white = P.high_frequency_share(torch.randn(400, 256), shape)
    assert white.mean().item() == pytest.approx(0.80, abs=0.03)
    # A slow wave (1 cycle / 16 px) of amplitude 3 plus the checkerboard: by Parseval their
    # energies are 3² × 256 / 2 and 1² × 256, so 2/11 of the power is high-frequency.
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    mixed = 3 * torch.cos(2 * math.pi * x / 16) + checker
    assert P.high_frequency_share(mixed.view(1, -1), shape).item() == pytest.approx(2 / 11)
    at_cutoff = torch.cos(2 * math.pi * x * 4 / 16)  # 0.25 cycles per px: not above it
    assert P.high_frequency_share(at_cutoff.view(1, -1), shape).item() == pytest.approx(0)
    blob = torch.exp(-((y - 7.5) ** 2 + (x - 7.5) ** 2) / 18).view(1, -1)
    assert P.high_frequency_share(blob, shape).item() < 0.01


@pytest.mark.parametrize("dim", [64, 1200])  # eigh below 1024 inputs, a randomised SVD above
def test_principal_components_alignment_and_noise_like_units(dim):
    torch.manual_seed(0)
    k = 8
    basis = torch.linalg.qr(torch.randn(dim, k))[0].T  # k orthonormal directions
    data = (torch.randn(2000, k) * torch.linspace(5, 2, k)) @ basis + 0.01 * torch.randn(2000, dim)
    data += 3 * torch.randn(dim)  # an offset: the directions are those of the centred data
    state = torch.random.get_rng_state()
    components = P.principal_components(data, k)
    assert torch.equal(torch.random.get_rng_state(), state)  # the randomised SVD's own seed
    torch.manual_seed(1)  # another global RNG state: the same components
    assert torch.equal(P.principal_components(data, k), components)
    assert components.shape == (k, dim)
    assert P.pc_alignment(basis, components).min() > 0.99
    random_rows = torch.randn(300, dim)
    assert P.pc_alignment(random_rows, components).mean().item() == pytest.approx(
        k / dim, rel=0.25)
    assert P.noise_like(random_rows, components).float().mean() > 0.6
    assert not P.noise_like(basis + 0.1 * torch.randn(k, dim) / math.sqrt(dim), components).any()


@pytest.mark.slow
def test_referee_is_deterministic_learns_and_leaves_the_global_rng(tiny_data):
    from bnstudy.data import MNISTDataModule

    data = MNISTDataModule(tiny_data, download=False)
    data.setup("fit")
    torch.set_num_threads(torch.get_num_threads() + 1)  # not the one thread the referee trains on
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    first = P.Referee(data.input_shape, 10, epochs=2).fit(
        data.train_set.x, data.train_set.y, (data.val_set.x, data.val_set.y))
    again = P.Referee(data.input_shape, 10, epochs=2).fit(data.train_set.x, data.train_set.y)
    assert torch.equal(torch.random.get_rng_state(), state) and torch.get_num_threads() == threads
    assert first.accuracy > 0.9  # each class is a bright band at its own rows
    assert not first.net.training
    for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    loaded = P.Referee(data.input_shape, 10, epochs=2)
    loaded.load_state_dict(first.state_dict())
    assert torch.equal(loaded.probabilities(data.val_set.x), first.probabilities(data.val_set.x))
    assert loaded.accuracy == first.accuracy
    torch.set_num_threads(threads - 1)


# --- drawing ----------------------------------------------------------------------------------


def fake_data(shift: float = 0.0, data_dir: str = "data") -> SimpleNamespace:
    """A datamodule's face for the pictures: 3 classes of 1 × 6 × 6 images, seeded."""
    x = torch.randn(30, 1, 6, 6, generator=torch.Generator().manual_seed(0)) + shift
    return SimpleNamespace(train_set=SimpleNamespace(x=x, y=torch.arange(30) % 3),
                           input_shape=(1, 6, 6), classes=["a", "b", "c"], mean=(0.5,),
                           std=(0.25,), data_dir=data_dir)


def test_drawing_keeps_each_datamodules_statistics_and_only_finite_fitting_weights(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    recipe = Hallucinator(steps=2)  # parametrisation "data": the training images' statistics
    first, second = fake_data(), fake_data(shift=3.0)
    recipe.run(net, first)
    assert torch.equal(recipe.run(net, second), Hallucinator(steps=2).run(net, second))
    assert data_source(fake_data(data_dir="rel"))["data_dir"] == str(Path.cwd() / "rel")
    assert all_finite(net)
    with torch.no_grad():
        net[1].weight[0, 0] = math.nan  # one weight is enough
    assert not all_finite(net)
    net[1].weight.data.normal_()
    draw_weights(net, (1, 6, 6), tmp_path, "final", initial=torch.zeros(3, 5))  # not this net's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights_final.png"]
