"""Config composition: every group option composes, and the study's fixed settings hold."""

import itertools

import pytest
import torch
from helpers import FAST, compose_config, make_classifier, run_train
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from bnstudy.model import Classifier
from bnstudy.nets import CNN, MLP
from bnstudy.train import ConfigError, build_model, check_devices, hparams, train, validate

GROUPS = {
    "dataset": ["mnist", "cifar10", "fashion_mnist"],
    "norm": ["bn", "group", "layer", "none"],
    "optim": ["sgd", "adam"],
    "model": ["mlp", "cnn"],
}


compose_with = compose_config


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu"])
def test_trainer_options_compose(trainer):
    cfg = compose_with(f"trainer={trainer}")
    assert cfg.trainer.max_epochs == cfg.dataset.max_epochs
    assert cfg.trainer.accelerator == {"default": "auto", "cpu": "cpu", "gpu": "gpu"}[trainer]


# MNIST's in the fast loop: that every dataset shares the study's settings is checked quickly by
# test_datasets_differ_only_in_name_and_datamodule (6 compositions a dataset here: ~2 s each).
@pytest.mark.parametrize("dataset", [
    "mnist", *(pytest.param(d, marks=pytest.mark.slow) for d in ("cifar10", "fashion_mnist"))])
def test_per_dataset_settings_are_shared_by_all_four_runs(dataset):
    fixed = set()
    for norm, optim in itertools.product(GROUPS["norm"], GROUPS["optim"]):
        cfg = compose_with(f"dataset={dataset}", f"norm={norm}", f"optim={optim}")
        assert cfg.model.net.norm == norm and cfg.optim.name == optim
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
    opt = make_classifier("none", hidden_dim=8, optimizer=factory).configure_optimizers()
    assert type(opt).__name__ == cls and opt.param_groups[0]["lr"] == 0.003


def test_command_line_overrides_reach_the_config():
    cfg = compose_with(
        "trainer.max_epochs=3", "model.net.hidden_dim=512", "seed=1", "dataset.batch_size=128"
    )
    assert cfg.trainer.max_epochs == 3 and cfg.model.net.hidden_dim == 512
    assert cfg.dataset.datamodule.batch_size == 128 and cfg.dataset.datamodule.seed == 1


@pytest.mark.parametrize(
    "overrides,cls,depth",
    [
        (["norm=layer"], MLP, 1),
        (["model.net.depth=3"], MLP, 3),
        (["model=cnn"], CNN, 1),
        (["model=cnn", "norm=layer", "model.net.depth=3", "dataset=cifar10"], CNN, 3),
    ],
)
def test_model_options_compose_build_and_name_their_hparams(overrides, cls, depth):
    cfg = compose_with(*overrides)
    validate(cfg)
    shape = (3, 32, 32) if "dataset=cifar10" in overrides else (1, 28, 28)
    model = build_model(cfg, shape, 10)
    assert type(model) is Classifier and type(model.net) is cls
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == depth + 2 * (cls is CNN)
    assert {k: hparams(cfg)[k] for k in ("model", "depth", "norm")} == {
        "model": cls.__name__.lower(), "depth": depth, "norm": cfg.model.net.norm
    }


@pytest.mark.parametrize("model", GROUPS["model"])
def test_depth_below_one_is_refused(model):
    with pytest.raises(ConfigError, match="model.net.depth=0 is out of range"):
        validate(compose_with(f"model={model}", "model.net.depth=0"))


def test_a_norm_outside_the_registry_is_refused():
    with pytest.raises(ConfigError, match="model.net.norm='instance' is not a known normal"):
        validate(compose_with("model.net.norm=instance"))


def test_datasets_differ_only_in_name_and_datamodule():
    """The study's settings come from one shared file; a dataset names what is its own."""
    configs = {d: OmegaConf.to_container(compose_with(f"dataset={d}").dataset)
               for d in GROUPS["dataset"]}
    own = {"name", "datamodule"}
    shared = [{k: v for k, v in c.items() if k not in own} for c in configs.values()]
    assert all(s == shared[0] for s in shared)
    assert {c["datamodule"]["_target_"].rsplit(".", 1)[-1] for c in configs.values()} == {
        "MNISTDataModule", "CIFAR10DataModule", "FashionMNISTDataModule"}


# Slow: in the fast loop, test_every_trainer_flag_is_in_the_config_with_lightnings_default
# checks every flag is in the config (so settable without +) and that three such overrides arrive.
@pytest.mark.slow
@pytest.mark.parametrize("flag,value", [
    ("gradient_clip_val", 0.5), ("accumulate_grad_batches", 2), ("limit_train_batches", 10),
    ("val_check_interval", 20), ("precision", "bf16-mixed"), ("strategy", "ddp_spawn"),
])
def test_trainer_flags_are_overridable_without_plus(flag, value):
    cfg = compose_with(f"trainer.{flag}={value}")
    assert cfg.trainer[flag] == value


SET_BY_THE_ENTRY_POINT = {"logger", "callbacks", "plugins", "enable_checkpointing", "barebones",
                          "enable_autolog_hparams", "model_registry"}


def test_every_trainer_flag_is_in_the_config_with_lightnings_default(tmp_path):
    import inspect

    import lightning as L

    cfg = compose_with()
    params = inspect.signature(L.Trainer.__init__).parameters
    missing = set(params) - {"self"} - SET_BY_THE_ENTRY_POINT - set(cfg.trainer)
    assert not missing, f"add to conf/trainer/default.yaml: {sorted(missing)}"
    study = {"max_epochs", "enable_progress_bar", "enable_model_summary", "num_sanity_val_steps",
             "deterministic", "use_distributed_sampler", "default_root_dir", "accelerator",
             "devices", "max_steps", "precision", "log_every_n_steps"}  # the study's own choices
    for name in set(cfg.trainer) - study - {"_target_"}:
        assert cfg.trainer[name] == params[name].default, name
    trainer = instantiate(compose_with("trainer.profiler=simple", "trainer.overfit_batches=2",
                                       "trainer.max_time=00:00:01:00",
                                       f"paths.output_dir={tmp_path}").trainer, logger=False)
    assert type(trainer.profiler).__name__ == "SimpleProfiler" and trainer.overfit_batches == 2


def test_sharding_twice_and_restarting_ddp_in_a_sweep_are_refused():
    with pytest.raises(ConfigError, match="shard batches a second time"):
        check_devices(compose_with("trainer.use_distributed_sampler=true"))
    check_devices(compose_with("trainer.devices=2", "trainer.strategy=ddp"))  # a single run


@pytest.mark.slow
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
    assert "dataset/shared" not in out.split("== Config ==")[0].split("dataset:")[1].split("\n")[0]


def test_hparams_of_configs_written_before_the_networks_moved():
    """The report reads old jobs' configs: the net's keys on `model`, perhaps no depth."""
    cfg = compose_with()
    old = OmegaConf.to_container(cfg)
    old["model"] = {"_target_": "bnstudy.model.MLPClassifier", "hidden_dim": 256, "norm": "bn"}
    got = hparams(OmegaConf.create(old))
    assert (got["model"], got["depth"], got["norm"], got["hidden_dim"]) == ("mlp", 1, "bn", 256)


# One setting of each group that trains, changed on resume: refused, naming it with both values.
# A setting per group in the fast loop (each composes a config: ~0.5 s), more in the slow suite.
@pytest.mark.parametrize("override,named", [
    ("dataset.batch_size=32", "dataset.batch_size: 64 -> 32"),
    ("model.net.hidden_dim=128", "model.net.hidden_dim: 256 -> 128"),
    ("norm=none", "model.net.norm: bn -> none"),
    ("optim.optimizer.momentum=0.9", "optim.optimizer.momentum: 0.0 -> 0.9"),
    ("trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val: None -> 1.0"),
    ("seed=1", "seed: 0 -> 1"),
    *(pytest.param(*case, marks=pytest.mark.slow) for case in [
        ("dataset=cifar10", "dataset.name: mnist -> cifar10"),
        ("model=cnn", "model.net._target_: bnstudy.nets.MLP -> bnstudy.nets.CNN"),
        ("optim=adam", "optim.name: sgd -> adam"),
        ("dataset.lr=0.1", "optim.optimizer.lr: 0.001 -> 0.1"),
        ("trainer.max_epochs=20", "trainer.max_epochs: 10 -> 20")]),
])
def test_resume_with_another_training_setting_is_refused(override, named, stored_job):
    from bnstudy.train import RunExistsError, check_job_dir

    changed = compose_with(f"paths.output_dir={stored_job}", "resume=true", override)
    with pytest.raises(RunExistsError, match="was run with other settings: ") as refused:
        check_job_dir(changed, stored_job)
    listed = str(refused.value).split("other settings: ")[1].split(". Resume with")[0]
    assert named in listed.split("; ")


def test_resume_with_other_bookkeeping_and_observers_goes_on(stored_job):
    from bnstudy.train import check_job_dir

    same = compose_with(f"paths.output_dir={stored_job}", "resume=true", "threads=1",
                        "~callbacks.hallucinations", "trainer.enable_progress_bar=false")
    assert check_job_dir(same, stored_job) is True


@pytest.fixture(scope="module")
def stored_job(tmp_path_factory):
    """A job directory holding an interrupted run of the default config (its `.hydra/`)."""
    job = tmp_path_factory.mktemp("job")
    (job / ".hydra").mkdir()
    OmegaConf.save(compose_with(f"paths.output_dir={job}"), job / ".hydra" / "config.yaml")
    (job / "metrics.json").write_text('{"status": "interrupted"}')
    return job
