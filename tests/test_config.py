"""Config composition: every group option composes, and the study's fixed settings hold."""

import itertools

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bnstudy.model import MLPClassifier
from tests.conftest import REPO, run_train

GROUPS = {"dataset": ["mnist", "cifar10"], "norm": ["bn", "none"], "optim": ["sgd", "adam"]}


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


def test_help_lists_groups_and_options():
    out = run_train("--help").stdout
    for group, options in GROUPS.items():
        assert f"{group}: {', '.join(sorted(options))}" in out
