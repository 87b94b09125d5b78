"""The report's picture section (`bnstudy.report.picture_section`, with
`bnstudy.pictures.table` and the claims P1–P3) on hand-made job directories."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from helpers import compose_config, csv_rows, write_job
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bnstudy.pictures import measures as P
from bnstudy.pictures import table as T
from bnstudy.pictures.grids import weight_grid
from bnstudy.pictures.table import Reference, load_picture_runs
from bnstudy.report import picture_section as S
from bnstudy.report.runs import load_runs
from bnstudy.report.verdicts import claim_verdicts, decided

CONFIGS = [("none", "sgd"), ("none", "adam"), ("bn", "sgd"), ("bn", "adam")]
MNIST_SHAPE = (1, 28, 28)
CIFAR_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def band_images(num: int = 10) -> torch.Tensor:
    """Normalised MNIST images: class k a bright band at rows 2k, 2k + 1 on black (tiny data's)."""
    pixels = torch.zeros(num, *MNIST_SHAPE)
    for k in range(num):
        pixels[k, 0, 2 * k : 2 * k + 2] = 1.0
    return (pixels - 0.1307) / 0.3081


def write_pictures(job, data_dir, hallucinations: torch.Tensor | None = None,
                   final: torch.Tensor | None = None, initial: torch.Tensor | None = None) -> None:
    """What a run's callbacks leave in `job/images/` (default: class bands, random weights)."""
    hallucinations = band_images() if hallucinations is None else hallucinations
    final = torch.randn(32, 784) if final is None else final
    initial = torch.randn(32, 784) if initial is None else initial
    (job / "images").mkdir()
    source = {"datamodule": "bnstudy.data.MNISTDataModule", "data_dir": str(data_dir),
              "classes": [str(d) for d in range(10)]}
    noise = 0.1 * torch.randn(10, *MNIST_SHAPE, generator=torch.Generator().manual_seed(1))
    means = (band_images() * 0.3081 + 0.1307).clamp(0, 1)
    torch.save({"images": hallucinations, "noise": noise, "base": torch.zeros(10, *MNIST_SHAPE),
                "own_probabilities": torch.eye(10)[[1, *range(1, 10)]] * 0.9 + 0.01,  # 0 as 1
                "real_means": means, "settings": {"steps": 200}, "seconds": 0.5, "mean": [0.1307],
                "std": [0.3081], **source}, job / "images" / "hallucinations_final.pt")
    torch.save({"initial": initial.half(), "final": final.half(), "input_shape": [1, 28, 28],
                **source}, job / "images" / "weights_final.pt")


@pytest.fixture(scope="module")
def picture_sweep(tiny_data, tmp_path_factory):
    """3 seeds of the four configurations: no BN's weights are band patterns (the data's
    directions), BN's noise; the hallucinations are the class bands, BN + Adam's pure noise."""
    sweep = tmp_path_factory.mktemp("sweep")
    bands = band_images().flatten(1)
    for seed in range(3):
        torch.manual_seed(seed)
        for norm, optim in CONFIGS:
            job = write_job(sweep, [0.8, 0.9], norm=norm, optim=optim, seed=seed)
            initial = 0.05 * torch.randn(32, 784)
            final = (initial + bands.repeat(4, 1)[:32] + 0.3 * torch.randn(32, 784)
                     if norm == "none" else 1.5 * initial + 0.01 * torch.randn(32, 784))
            images = (torch.randn(10, *MNIST_SHAPE) if (norm, optim) == ("bn", "adam")
                      else band_images() + 0.1 * torch.randn(10, *MNIST_SHAPE))
            write_pictures(job, tiny_data, images.clamp(-0.42, 2.8), final, initial)
    return sweep


@pytest.mark.slow
def test_pictures_section_rows_figures_measures_and_verdicts(picture_sweep):
    out = picture_sweep / "report"
    out.mkdir()
    section, figures, _ = S.pictures_section(load_runs(picture_sweep), out)  # trains the judge
    rows = csv_rows(out / "pictures.csv")
    assert len(rows) == 12 and list(rows[0])[:5] == ["dataset", "optim", "norm", "seed", "job"]
    assert set(figures) == {"hallucinations_mnist", "weights_mnist"}
    cache = torch.load(out / "referee_mnist.pt", weights_only=True)  # the judge, cached
    cache["state"]["accuracy"] = 0.123
    for key, cached in ((cache["key"], True), ({**cache["key"], "epochs": 99}, False)):
        torch.save({**cache, "key": key}, out / "referee_mnist.pt")  # read only if it fits
        judge = T.reference("mnist", load_picture_runs(load_runs(picture_sweep)), out).referee
        assert (judge.accuracy == 0.123) == cached
    assert "## Pictures" in section
    assert "![hallucinations mnist](hallucinations_mnist.png)" in section
    by = {(r["norm"], r["optim"]): r for r in rows if r["seed"] == "0"}
    none, noisy = by["none", "sgd"], by["bn", "adam"]
    assert float(none["pc_alignment"]) > 0.6 > 0.1 > float(noisy["pc_alignment"])
    assert float(none["noise_units"]) == 0 and float(noisy["noise_units"]) == 1
    assert float(none["noise_units_initial"]) == 1  # random initial weights
    assert float(none["nearest_mean_acc"]) == 1 and float(none["stuck"]) == 0
    assert float(noisy["referee_acc"]) < 0.3 < 0.5 <= float(none["referee_acc"])
    assert float(none["own_conf"]) == pytest.approx(0.82)  # the own class's, not the likeliest
    assert float(none["change_share"]) > 0.9 and float(noisy["change_share"]) < 0.2
    assert none["colour_fidelity"] == "" and none["blueness_airplane"] == ""  # grey digits
    assert none["cross_conf"] == ""  # no checkpoints in hand-made jobs
    assert "- `pc_alignment`: " in section and "- `colour_fidelity`: " not in section  # (MNIST)
    # P1a (more aligned), P1b (no BN structured) hold; P1c (BN + Adam structured), P1d (some
    # no-BN units noise) do not; P3 fails on BN + Adam's noise (the bands: the judge's ±2 px blur).
    lines = {line.split("|")[1].strip(): line for line in section.splitlines()
             if line.startswith("| P")}
    for optim in ("SGD", "Adam"):
        assert "**holds**" in lines[f"P1a ({optim})"] and "**holds**" in lines[f"P1b ({optim})"]
        assert "**does not hold**" in lines[f"P1d ({optim})"]
    assert "**does not hold**" in lines["P1c"]
    assert "- mnist, SGD: the learned change (final − initial) is No BatchNorm: " in section
    assert "**does not hold**" in lines["P3 (BN + Adam)"]
    assert "0 of 3 seeds meet it" in lines["P3 (BN + Adam)"]
    assert "Verdicts: **P1 does not hold**; **P3 does not hold**." in section
    assert "- **P1c does not hold**" in section  # said plainly


def test_a_setting_without_a_datasets_runs_has_no_heading_for_it(tmp_path):
    """Without the data (moved away): still the figures, and why no judge's or PCs' measures."""
    torch.manual_seed(0)
    cells = (("mnist", 0.01, CONFIGS), ("mnist", 0.1, CONFIGS[:1]),
             ("fashion_mnist", 0.01, CONFIGS[:1]))
    for dataset, lr, configs in cells:
        for norm, optim in configs:
            job = write_job(tmp_path, [0.8, 0.9], dataset=dataset, lr=lr, norm=norm, optim=optim)
            write_pictures(job, tmp_path / "moved-away")
    (tmp_path / "report").mkdir()
    section, figures, _ = S.pictures_section(load_runs(tmp_path), tmp_path / "report")
    assert set(figures) == {f"{kind}_{dataset}_lr{lr}" for dataset, lr, _ in cells
                            for kind in ("hallucinations", "weights")}
    assert "_the mnist data could not be loaded from " in section
    assert "no independent judge and no principal components" in section
    heads = [line for line in section.splitlines() if line.startswith("###")
             and not line.endswith("Picture claims")]
    assert heads == ["### lr=0.01", "#### fashion_mnist", "#### mnist", "### lr=0.1",
                     "#### mnist"]
    rows = csv_rows(tmp_path / "report" / "pictures.csv")
    assert len(rows) == 6
    assert all(r["referee_acc"] == "" and r["pc_alignment"] == "" for r in rows)
    assert all(r["nearest_mean_acc"] == "1.0" and r["change_share"] != "" for r in rows)


def test_picture_figures_have_reference_rows_and_a_row_per_configuration(picture_sweep):
    runs = load_picture_runs(load_runs(picture_sweep))
    ref = Reference("mnist", [str(d) for d in range(10)], list(MNIST_SHAPE),
                    real_means=runs[0].hallucinations["real_means"],
                    components=P.principal_components(band_images(), 8))
    axes = S.hallucinations_figure("mnist", runs, ref).axes
    assert len(axes) == 5 * 10  # the real class means, then no BN/BN × SGD/Adam; 10 classes
    assert [ax.get_title() for ax in axes[:10]] == [str(d) for d in range(10)]
    assert [axes[10 * r].get_ylabel() for r in range(5)] == [
        "real class means", "No BatchNorm + SGD\n(seed 0)", "No BatchNorm + Adam\n(seed 0)",
        "BatchNorm + SGD\n(seed 0)", "BatchNorm + Adam\n(seed 0)"]
    fig = S.weights_figure("mnist", runs, ref, {})
    assert fig.get_suptitle().startswith("mnist: first-layer weights, first 32 units (")  # of 64
    axes = fig.axes
    assert len(axes) == 5 * 2 and axes[0].get_ylabel() == "reference"
    assert [" ".join(axes[2 * r].get_ylabel().split("\n")[:2]) for r in range(1, 5)] == [
        "No BatchNorm + SGD", "No BatchNorm + Adam", "BatchNorm + SGD", "BatchNorm + Adam"]
    assert axes[2].get_title().startswith("final weights")
    assert axes[3].get_title().startswith("learned change")


def test_claim_parts_on_hand_made_rows():
    rows = []
    for seed, (norm, optim) in itertools.product(range(3), CONFIGS):
        bn, bn_adam = norm == "bn", (norm, optim) == ("bn", "adam")
        rows.append({"dataset": "cifar10", "norm": norm, "optim": optim, "seed": seed,
                     "colour_fidelity": 0.6 + 0.01 * seed, "blueness_airplane": 0.1 + 0.01 * seed,
                     "greenness_dog": -0.05 - 0.01 * seed,   # dogs not greenish
                     "greenness_frog": 0.02 * (seed - 1),    # frogs: within the spread
                     # each side's own seed jitter: paired, the differences have spread
                     "sharpness": (0.08 if bn else 0.05) + 0.001 * seed * (1 + bn),
                     "distinctness": (1.0 if bn_adam else 0.8) + 0.01 * seed * (1 + bn_adam)})
    parts = {p.claim + p.part: p for p in decided("pictures", pd.DataFrame(rows))}
    for optim in ("SGD", "Adam"):
        assert parts[f"P2a1 ({optim})"].verdict == parts[f"P2a2 ({optim})"].verdict == "holds"
        assert parts[f"P2a3 ({optim})"].verdict == "does not hold"
        assert parts[f"P2a4 ({optim})"].verdict == "cannot tell"
    assert parts["P2b (SGD)"].verdict == parts["P2b (Adam)"].verdict == "holds"
    assert all(parts[f"P2c (vs {c})"].verdict == "holds"
               for c in ("BN + SGD", "no BN + SGD", "no BN + Adam"))
    assert claim_verdicts(list(parts.values())) == {"P2": "does not hold"}
    assert parts["P2b (SGD)"].test.estimate == pytest.approx(0.03 + 0.001)  # BN: + seed/1000


def test_the_section_names_the_recipe_that_drew_the_pictures(tmp_path):
    """The training's, or those `python -m bnstudy.draw` left in `images/recipe.json`."""
    runs = [SimpleNamespace(run={"path": tmp_path / f"{n}_job"}) for n in range(3)]
    assert S.recipe_words(runs).startswith("each run's training settings (")
    for run in runs[:2]:
        (run.run["path"] / "images").mkdir(parents=True)
        (run.run["path"] / "images" / "recipe.json").write_text(json.dumps({"name": "steps=400"}))
    assert S.recipe_words(runs) == (
        "redrawn by `python -m bnstudy.draw` as `steps=400` (2 runs); the training's (1 run; "
        "`conf/callbacks/default.yaml` unless set)")


def test_only_a_runs_own_network_and_readable_files_are_measured(tmp_path, caplog):
    """An unreadable picture file is missing (said in the log), a failed run's not measured,
    a recorded datamodule outside the project not opened."""
    job = write_job(tmp_path, [0.9])
    cfg = compose_config()
    (job / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    net = instantiate(cfg.model.net, input_shape=MNIST_SHAPE, num_classes=10)
    (job / "checkpoints").mkdir()
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}},
               job / "checkpoints" / "last.ckpt")
    loaded = T.load_net(load_runs(tmp_path).iloc[0], MNIST_SHAPE, 10)
    for mine, saved in zip(loaded.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(mine, saved)

    (job / "images").mkdir()
    (job / "images" / "weights_final.pt").write_bytes(b"half-written")
    assert load_picture_runs(load_runs(tmp_path)) == []
    assert "cannot read" in caplog.text and "weights_final.pt" in caplog.text
    failed = write_job(tmp_path, [0.9], "failed", seed=1)
    write_pictures(failed, tmp_path)
    assert load_picture_runs(load_runs(tmp_path)) == []
    judge = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))  # reads "1"
    with torch.no_grad():
        judge[1].weight.zero_()
        judge[1].bias.copy_(torch.eye(10)[1] * 5)
    saved = torch.load(failed / "images" / "hallucinations_final.pt", weights_only=True)
    row = T.hallucination_measures(saved, Reference("mnist", [], list(MNIST_SHAPE)), [judge])
    assert row["cross_conf"] == pytest.approx(0.1)  # the mean of each class's own probability
    noise = (saved["noise"] * 0.3081 + 0.1307).clamp(0, 1)  # the recipe's noise, in pixels
    assert row["noise_sharpness"] == pytest.approx(float(P.sharpness(noise).mean()))
    with pytest.raises(ValueError, match="not one of the project's datamodules"):
        T.open_datamodule({"datamodule": "os.system", "data_dir": "."})


def test_colour_change_and_cross_model_columns_read_the_right_image_unit_and_network():
    """Colours: the named class's image; change: final − initial; cross-model: others' nets."""
    images = torch.full((10, 3, 4, 4), 0.5)
    images[5] = torch.tensor([0.1, 0.9, 0.1]).view(3, 1, 1)  # a green dog, the rest grey
    h = {"images": images, "noise": images, "base": torch.zeros_like(images),
         "own_probabilities": torch.eye(10), "real_means": images, "mean": [0.0] * 3,
         "std": [1.0] * 3, "classes": CIFAR_CLASSES}
    row = T.hallucination_measures(h, Reference("cifar10", CIFAR_CLASSES, [3, 4, 4]), [])
    assert row["greenness_dog"] == pytest.approx(0.8) and row["greenness_frog"] == 0

    components = torch.eye(16)[:4]  # the data's directions: the first four pixels
    initial = torch.zeros(8, 16)
    initial[:, 8:] = torch.randn(8, 8)  # outside them
    w = {"initial": initial, "final": initial + torch.randn(8, 16) * torch.eye(16)[:4].sum(0),
         "input_shape": [1, 4, 4]}
    row = T.weight_measures(w, Reference("mnist", [], [1, 4, 4], components=components))
    assert row["change_pc_alignment"] == pytest.approx(1) and row["pc_alignment"] < 0.9

    def net(reads_images: bool) -> torch.nn.Module:
        """Reads each band image as its class (nearly sure), or every image as 0 and 1 alike."""
        linear = torch.nn.Linear(784, 10)
        with torch.no_grad():
            linear.weight.copy_(band_images().flatten(1) * reads_images)
            linear.bias.zero_()
        return torch.nn.Sequential(torch.nn.Flatten(), linear)

    base = {"noise": band_images(), "base": torch.zeros(10, *MNIST_SHAPE),
            "own_probabilities": torch.eye(10), "real_means": band_images(), "mean": [0.0],
            "std": [1.0], "images": band_images()}
    runs = [T.PictureRun(pd.Series({"dataset": "mnist", "job": job, "seed": 0}), base, None,
                         net(job == "sure")) for job in ("sure", "flat")]
    refs = {"mnist": Reference("mnist", [], list(MNIST_SHAPE))}
    rows = {r["job"]: r for r in T.measure(runs, refs, ["dataset"])}
    assert rows["sure"]["cross_conf"] == pytest.approx(0.1)  # the flat network's, not its own
    assert rows["flat"]["cross_conf"] > 0.9


def test_the_figures_take_each_configurations_lowest_seed_with_the_file_and_the_judges_reading(
        tmp_path):
    """Seed 0's weights missing: seed 1's drawn; LayerNorm beside no norm; grey digits in grey;
    the judge's reading green where right; change: final − initial; a kind no run saved, none."""
    torch.manual_seed(0)
    for seed, norm in itertools.product((1, 0), ("layer", "none")):
        job = write_job(tmp_path, [0.8, 0.9], norm=norm, seed=seed)
        write_pictures(job, tmp_path)
        if (norm, seed) == ("none", 0):
            (job / "images" / "weights_final.pt").unlink()
    runs = load_picture_runs(load_runs(tmp_path))
    assert [(c, p.run["seed"]) for c, p in S.first_seeds(runs, "weights")] == [
        (("none", "sgd"), 1), (("layer", "sgd"), 0)]
    assert [p.run["seed"] for _, p in S.first_seeds(runs, "hallucinations")] == [0, 0]
    right = torch.eye(10)[[1, *range(1, 10)]]  # class 0 read as 1, the rest right
    judge = SimpleNamespace(probabilities=lambda images: right, accuracy=0.97)
    ref = Reference("mnist", [str(d) for d in range(10)], list(MNIST_SHAPE), referee=judge)
    axes = S.hallucinations_figure("mnist", runs, ref).axes
    assert [axes[10 * r].get_ylabel() for r in (1, 2)] == ["No norm + SGD\n(seed 0)",
                                                          "LayerNorm + SGD\n(seed 0)"]
    assert axes[10].images[0].get_cmap().name == "gray"
    assert [(ax.get_xlabel(), ax.xaxis.label.get_color()) for ax in axes[10:12]] == [
        ("1 1.00", "tab:red"), ("1 1.00", "tab:green")]
    axes = S.weights_figure("mnist", runs, ref, {}).axes  # no reference row: no data here
    (p,) = [p for c, p in S.first_seeds(runs, "weights") if c == ("layer", "sgd")]
    change = weight_grid(p.weights["final"].float() - p.weights["initial"].float(),
                         MNIST_SHAPE, 64)
    assert torch.allclose(torch.as_tensor(axes[3].images[0].get_array()),
                          change.permute(1, 2, 0), atol=1e-6)
    for job in tmp_path.glob("*/images/weights_final.pt"):
        job.unlink()
    (tmp_path / "report").mkdir()
    assert set(S.pictures_section(load_runs(tmp_path), tmp_path / "report")[1]) == {
        "hallucinations_mnist"}  # no weights saved: no weights figure


def test_each_setting_has_its_own_figures_rows_and_picture_claims(tmp_path, tiny_data):
    """Two lrs, each decided on its own runs (no BN's weights: bands at 0.01, noise at 0.1)."""
    bands = band_images().flatten(1)
    for lr, seed, norm in itertools.product((0.01, 0.1), (0, 1), ("bn", "none")):
        torch.manual_seed(seed)
        initial = 0.05 * torch.randn(32, 784)
        structured = norm == "none" and lr == 0.01
        final = initial + (bands.repeat(4, 1)[:32] if structured else torch.randn(32, 784))
        job = write_job(tmp_path, [0.8, 0.9], norm=norm, seed=seed, lr=lr)
        write_pictures(job, tiny_data, band_images(), final, initial)
    (tmp_path / "report").mkdir()
    section, figures, found = S.pictures_section(load_runs(tmp_path), tmp_path / "report")
    assert set(figures) == {f"{kind}_mnist_lr{lr}" for kind in ("hallucinations", "weights")
                            for lr in (0.01, 0.1)}
    heads = [line for line in section.splitlines() if line.startswith("#")]
    assert heads == ["## Pictures", "### lr=0.01", "#### mnist", "#### Picture claims",
                     "### lr=0.1", "#### mnist", "#### Picture claims"]
    p1b = [{r.part: r.verdict for r in results if r.claim == "P1"}["b (SGD)"]
           for _, results in found]
    assert [setting for setting, _ in found] == [{"lr": 0.01}, {"lr": 0.1}]
    assert p1b == ["holds", "does not hold"]


def test_the_measures_table_reference_line_and_weight_notes_on_hand_made_rows():
    """The dataset's rows and measures; CIFAR-10's colour numbers; the change's mean, not median."""
    cases = (("mnist", 0.1, None, 0.1), ("mnist", 0.3, None, 0.2), ("mnist", 0.2, None, 0.6),
             ("cifar10", 0.9, 0.7, 0.1))  # dataset, sharpness, colour_fidelity, change_share
    rows = pd.DataFrame([{**dict.fromkeys(T.COLUMNS), "dataset": d, "optim": "sgd", "norm": "none",
                          "sharpness": s, "colour_fidelity": c, "change_share": share,
                          "change_pc_alignment": 0.5} for d, s, c, share in cases])
    table = S.measures_table(rows, "mnist")
    assert "colour_fidelity" not in table and "0.200 ± 0.100 (3)" in table
    assert S.weight_notes(rows)[1] == ("- mnist, SGD: the learned change (final − initial) is "
                                       "No BatchNorm: 30.0% of the energy, alignment 0.500 "
                                       "(medians over units, mean over seeds).")
    means = torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    line = S.reference_line(Reference("cifar10", CIFAR_CLASSES, [3, 4, 4], real_means=means))
    for name, channel in (("airplane blueness", 2), ("dog greenness", 1), ("frog greenness", 1)):
        value = float(P.tint(means, channel)[CIFAR_CLASSES.index(name.split()[0])])
        assert f"{name} {value:+.3f}" in line
