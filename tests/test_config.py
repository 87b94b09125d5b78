"""Config composition: every group option composes, and the study's fixed settings hold."""

import itertools

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from bnstudy.model import CNNClassifier, MLPClassifier
from bnstudy.train import ConfigError, hparams, train, validate
from tests.conftest import FAST, REPO, run_train

GROUPS = {
    "dataset": ["mnist", "cifar10", "fashion_mnist"],
    "norm": ["bn", "layer", "none"],
    "optim": ["sgd", "adam"],
    "model": ["mlp", "cnn"],
}


def compose_with(*overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu"])
def test_trainer_options_compose(trainer):
    cfg = compose_with(f"trainer={trainer}")
    assert cfg.trainer.max_epochs == cfg.dataset.max_epochs
    assert cfg.trainer.accelerator == {"default": "auto", "cpu": "cpu", "gpu": "gpu"}[trainer]


@pytest.mark.parametrize("dataset", GROUPS["dataset"])
def test_per_dataset_settings_are_shared_by_all_four_runs(dataset):
    fixed = set()
    for norm, optim in itertools.product(GROUPS["norm"], GROUPS["optim"]):
        cfg = compose_with(f"dataset={dataset}", f"norm={norm}", f"optim={optim}")
        assert cfg.model.norm == norm and cfg.optim.name == optim
        assert cfg.run_name == f"{dataset}-{norm}-{optim}-seed0"
        fixed.add(
            (
                cfg.optim.optimizer.lr,
                cfg.dataset.datamodule.batch_size,
                cfg.trainer.max_epochs,
                cfg.dataset.datamodule.val_size,
                cfg.dataset.datamodule.train_size,
            )
        )
    assert len(fixed) == 1


@pytest.mark.parametrize("optim,cls", [("sgd", "SGD"), ("adam", "Adam")])
def test_optimizer_is_instantiated_from_the_group(optim, cls):
    cfg = compose_with(f"optim={optim}", "dataset.lr=0.003")
    factory = instantiate(cfg.optim.optimizer)
    model = MLPClassifier((1, 28, 28), 10, hidden_dim=8, norm="none", optimizer=factory)
    opt = model.configure_optimizers()
    assert type(opt).__name__ == cls and opt.param_groups[0]["lr"] == 0.003


def test_command_line_overrides_reach_the_config():
    cfg = compose_with(
        "trainer.max_epochs=3", "model.hidden_dim=512", "seed=1", "dataset.batch_size=128"
    )
    assert cfg.trainer.max_epochs == 3 and cfg.model.hidden_dim == 512
    assert cfg.dataset.datamodule.batch_size == 128 and cfg.dataset.datamodule.seed == 1


@pytest.mark.parametrize(
    "overrides,cls,depth",
    [
        (["norm=layer"], MLPClassifier, 1),
        (["model.depth=3"], MLPClassifier, 3),
        (["model=cnn"], CNNClassifier, 1),
        (["model=cnn", "norm=layer", "model.depth=3", "dataset=cifar10"], CNNClassifier, 3),
    ],
)
def test_model_options_compose_build_and_name_their_hparams(overrides, cls, depth):
    cfg = compose_with(*overrides)
    validate(cfg)
    shape = (3, 32, 32) if "dataset=cifar10" in overrides else (1, 28, 28)
    model = instantiate(cfg.model, input_shape=shape, num_classes=10, optimizer=None)
    assert type(model) is cls and model.hparams.depth == depth
    assert model.hparams.norm == cfg.model.norm
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == depth + 2 * (
        cls is CNNClassifier
    )
    assert {k: hparams(cfg)[k] for k in ("model", "depth", "norm")} == {
        "model": cls.arch, "depth": depth, "norm": cfg.model.norm
    }


@pytest.mark.parametrize("model", GROUPS["model"])
def test_depth_below_one_is_refused(model):
    with pytest.raises(ConfigError, match="model.depth=0 is out of range"):
        validate(compose_with(f"model={model}", "model.depth=0"))


def test_hparams_of_a_config_from_before_model_variants():
    """The report reads old jobs' configs: no `model.depth`, the MLP's target."""
    cfg = compose_with()
    del cfg.model.depth
    assert hparams(cfg)["model"] == "mlp" and hparams(cfg)["depth"] == 1


def test_cnn_with_layer_norm_trains_on_tiny_data(tiny_data, tmp_path):
    cfg = compose_with(
        "model=cnn", "norm=layer", "dataset=cifar10", f"paths.data_dir={tiny_data}",
        f"paths.output_dir={tmp_path}", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "callbacks.hallucinations.steps=2", *FAST,
    )
    record = train(cfg)
    assert record["status"] == "ok" and len(record["history"]) == 1
    assert record["hparams"]["model"] == "cnn" and record["hparams"]["norm"] == "layer"
    assert 0 <= record["test"]["acc"] <= 1
    # 32 first-layer filters of 3 × 3 pixels: 6 tiles per row, 5 px apart, 2 px border
    with Image.open(tmp_path / "images" / "weights_final.png") as image:
        assert image.size == (6 * 5 + 2, 6 * 5 + 2)


def test_help_lists_groups_and_options():
    out = run_train("--help").stdout
    for group, options in GROUPS.items():
        assert f"{group}: {', '.join(sorted(options))}" in out
