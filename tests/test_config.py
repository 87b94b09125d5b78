"""Config composition: every group option composes, and the study's fixed settings hold."""

import inspect
import itertools

import lightning as L
import pytest
import torch
from helpers import compose_config, make_classifier, train_run
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from bnstudy.config import changed_settings, group_defaults, hparams, overridden_keys, validate
from bnstudy.errors import ConfigError
from bnstudy.model import Classifier
from bnstudy.nets import CNN, MLP
from bnstudy.run import build_model, check_devices

GROUPS = {"dataset": ["mnist", "cifar10", "fashion_mnist"], "model": ["mlp", "cnn"],
          "norm": ["bn", "group", "layer", "none"], "optim": ["sgd", "adam"]}


def test_group_options_compose_and_share_the_studys_settings():
    for trainer, accelerator in {"default": "auto", "cpu": "cpu", "gpu": "gpu"}.items():
        cfg = compose_config(f"trainer={trainer}")
        assert cfg.trainer.max_epochs == cfg.dataset.max_epochs
        assert cfg.trainer.accelerator == accelerator
    fixed = set()  # the four runs of a dataset share lr, batch size, epochs and splits
    for norm, optim in itertools.product(GROUPS["norm"], GROUPS["optim"]):
        cfg = compose_config(f"norm={norm}", f"optim={optim}")
        assert cfg.model.net.norm == norm and cfg.optim.name == optim
        assert cfg.run_name == f"mnist-{norm}-{optim}-seed0"
        data = cfg.dataset.datamodule
        fixed.add((cfg.optim.optimizer.lr, data.batch_size, cfg.trainer.max_epochs,
                   data.val_size, data.train_size))
    assert len(fixed) == 1
    cfg = compose_config("trainer.max_epochs=3", "model.net.hidden_dim=512", "seed=1",
                         "dataset.batch_size=128")
    assert cfg.trainer.max_epochs == 3 and cfg.model.net.hidden_dim == 512
    assert cfg.dataset.datamodule.batch_size == 128 and cfg.dataset.datamodule.seed == 1
    # The study's settings come from one shared file; a dataset names what is its own.
    configs = {d: OmegaConf.to_container(compose_config(f"dataset={d}").dataset)
               for d in GROUPS["dataset"]}
    shared = [{k: v for k, v in c.items() if k not in ("name", "datamodule", "equivalence_margin")}
              for c in configs.values()]
    assert all(s == shared[0] for s in shared)
    assert {c["datamodule"]["_target_"].rsplit(".", 1)[-1] for c in configs.values()} == {
        "MNISTDataModule", "CIFAR10DataModule", "FashionMNISTDataModule"}


@pytest.mark.parametrize("optim,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_optimizer_is_instantiated_from_the_group(optim, cls):
    factory = instantiate(compose_config(f"optim={optim}", "dataset.lr=0.003").optim.optimizer)
    model = make_classifier("bn", hidden_dim=8, optimizer=factory)
    opt = model.configure_optimizers()
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.003
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("overrides,cls,depth", [
    (["norm=layer"], MLP, 1), (["model.net.depth=3"], MLP, 3), (["model=cnn"], CNN, 1),
    (["model=cnn", "norm=layer", "model.net.depth=3", "dataset=cifar10"], CNN, 3)])
def test_model_options_compose_build_and_name_their_hparams(overrides, cls, depth):
    cfg = compose_config(*overrides)
    validate(cfg)
    shape = (3, 32, 32) if "dataset=cifar10" in overrides else (1, 28, 28)
    model = build_model(cfg, shape, 10)
    assert type(model) is Classifier and type(model.net) is cls and model.hparams.num_classes == 10
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == depth + 2 * (cls is CNN)
    assert {k: hparams(cfg)[k] for k in ("model", "depth", "norm")} == {
        "model": cls.__name__.lower(), "depth": depth, "norm": cfg.model.net.norm}


RANGES = [  # (dotted key, value out of range, the message's start, or the whole one with a .)
    ("dataset.batch_size", 0, "dataset.batch_size=0 is out of range; it must be an integer >= 1"),
    ("dataset.datamodule.batch_size", 0, "dataset.datamodule.batch_size=0 is out of range; it "
     "must be an integer >= 1"),  # typed where the datamodule reads it (a ZeroDivisionError)
    ("dataset.datamodule.eval_batch_size", -3, "dataset.datamodule.eval_batch_size=-3 is out of"),
    ("dataset.lr", -0.1, "dataset.lr=-0.1 is out of range; it must be a number > 0"),
    ("optim.optimizer.lr", 0, "optim.optimizer.lr=0 is out of range; it must be a number > 0"),
    ("trainer.max_epochs", 2.5, "trainer.max_epochs=2.5 is out of range; it must be an integer"),
    ("model.net.hidden_dim", 0, "model.net.hidden_dim=0 is out of range"),
    ("model.net.depth", 0, "model.net.depth=0 is out of range"),
    ("model.steps_per_call", 0, "model.steps_per_call=0 is out of range"),
    ("dataset.val_size", 1.5, "dataset.val_size=1.5 is out of range; it must be a fraction in "
     "(0, 1) or a whole count >= 1"),
    ("dataset.equivalence_margin", 0.5 * 100, "dataset.equivalence_margin=50.0 is out of range; "
     "it must be an accuracy fraction in (0, 1)"),  # points typed for a fraction
    ("threads", 0, "threads=0 is out of range; it must be auto or an integer >= 1"),
    ("seed", -1, "seed=-1 is out of range; it must be an integer from 0 to 4294967295 "
     "(numpy's)."),  # (was numpy's ValueError at seed_everything, a run left to "resume")
    ("dataset.train_size", 0, "dataset.train_size=0 is out of range; it must be null (all "
     "remaining images) or an integer >= 1."),
    ("model.net.norm", "batch", "model.net.norm='batch' is not a known normalisation; use one of "
     "bn, layer, none, group (e.g. norm=bn)."),
    ("dataset.batch_size", 1, "dataset.batch_size=1 with norm=bn: BatchNorm normalises over the "
     "batch, which one image cannot give. Use dataset.batch_size=2 or more, or norm=none / "
     "norm=layer."),
    ("dataset.datamodule.batch_size", 1, "dataset.datamodule.batch_size=1 with norm=bn: "
     "BatchNorm normalises over the batch"),  # (it was a ValueError in the first step)
    ("callbacks.weight_grid.num_units", 0, "callbacks.weight_grid.num_units=0 is out of range; "
     "it must be >= 1."),  # the picture settings: draw's own ranges (test_draw)
    ("callbacks.hallucinations.steps", -1, "callbacks.hallucinations.steps=-1 is out of range"),
    ("callbacks.hallucinations.lr", -5, "callbacks.hallucinations.lr=-5 is out of range; it "
     "must be > 0."),
]


@pytest.mark.parametrize("model", GROUPS["model"])
def test_each_value_out_of_range_is_refused_naming_it(model):
    cfg = compose_config(f"model={model}")
    validate(cfg)
    for key, value, message in RANGES:
        bad = cfg.copy()
        OmegaConf.update(bad, key, value, force_add=True)
        with pytest.raises(ConfigError) as refused:
            validate(bad)
        said = str(refused.value)
        assert said == message if message.endswith(".") else said.startswith(message), said


SET_BY_THE_ENTRY_POINT = {"logger", "callbacks", "plugins", "barebones",
                          "enable_autolog_hparams", "model_registry"}


def test_every_trainer_flag_is_in_the_config_with_lightnings_default(tmp_path):
    cfg = compose_config()
    params = inspect.signature(L.Trainer.__init__).parameters
    missing = set(params) - {"self"} - SET_BY_THE_ENTRY_POINT - set(cfg.trainer)
    assert not missing, f"add to conf/trainer/default.yaml: {sorted(missing)}"
    study = {"max_epochs", "enable_progress_bar", "enable_model_summary", "num_sanity_val_steps",
             "deterministic", "use_distributed_sampler", "default_root_dir", "accelerator",
             "devices", "max_steps", "precision", "log_every_n_steps"}  # the study's own choices
    for name in set(cfg.trainer) - study - {"_target_"}:
        assert cfg.trainer[name] == params[name].default, name
    trainer = instantiate(compose_config("trainer.profiler=simple", "trainer.overfit_batches=2",
                                       "trainer.max_time=00:00:01:00",
                                       f"paths.output_dir={tmp_path}").trainer, logger=False)
    assert type(trainer.profiler).__name__ == "SimpleProfiler" and trainer.overfit_batches == 2


def test_sharding_twice_and_restarting_ddp_in_a_sweep_are_refused():
    with pytest.raises(ConfigError, match="shard batches a second time"):
        check_devices(compose_config("trainer.use_distributed_sampler=true"))
    check_devices(compose_config("trainer.devices=2", "trainer.strategy=ddp"))  # a single run


@pytest.mark.slow
def test_cnn_with_layer_norm_trains_on_tiny_data(tiny_data, tmp_path):
    record = train_run(tiny_data, tmp_path, "model=cnn", "norm=layer", "dataset=cifar10",
                       "trainer.accelerator=cpu")
    assert record.status == "ok" and len(record.history) == 1
    assert record.hparams["model"] == "cnn" and record.hparams["norm"] == "layer"
    assert 0 <= record.test_acc <= 1
    # 32 first-layer filters of 3 × 3 pixels: 6 tiles per row, 5 px apart, 2 px border
    with Image.open(tmp_path / "images" / "weights_final.png") as image:
        assert image.size == (6 * 5 + 2, 6 * 5 + 2)


def test_hparams_of_configs_written_before_the_networks_moved():
    """The report reads old jobs' configs: the net's keys on `model`, perhaps no depth."""
    old = OmegaConf.to_container(compose_config())
    old["model"] = {"_target_": "bnstudy.model.MLPClassifier", "hidden_dim": 256, "norm": "bn"}
    got = hparams(OmegaConf.create(old))
    assert (got["model"], got["depth"], got["norm"], got["hidden_dim"]) == ("mlp", 1, "bn", 256)


def test_the_edges_of_each_range():
    """Each range's edge values: in or out (a bool is no number); whole messages: RANGES."""
    cfg = compose_config("norm=none")
    accepted = [("dataset.val_size", 1), ("dataset.val_size", 5000.0), ("dataset.train_size", 1),
                ("dataset.equivalence_margin", 0.99), ("threads", "auto"), ("threads", 1),
                ("dataset.batch_size", 1), ("optim.optimizer.lr", 1e-9), ("seed", 2**32 - 1)]
    refused = [("dataset.lr", 0.0), ("optim.optimizer.lr", True), ("dataset.val_size", 0.0),
               ("dataset.val_size", 1.0000001), ("dataset.equivalence_margin", 0.0),
               ("dataset.equivalence_margin", 1.0), ("callbacks.hallucinations.lr", 0),
               ("threads", True), ("threads", "many"), ("trainer.max_epochs", True),
               ("seed", 2**32)]  # numpy's seeds end below 2**32
    for key, value in accepted:
        ok = cfg.copy()
        OmegaConf.update(ok, key, value)
        validate(ok)
    for key, value in refused:
        bad = cfg.copy()
        OmegaConf.update(bad, key, value)
        with pytest.raises(ConfigError, match=f"^{key}=.* is out of range"):
            validate(bad)


def test_overridden_keys_drop_the_add_and_delete_marks():
    assert overridden_keys(["+a.b=1", "~c", "d=x=y", "++e=2", "+Xf=3"]) == \
        ("a.b", "c", "d", "e", "Xf")


def test_the_settings_two_configs_differ_in_both_ways_but_observers_and_bookkeeping():
    mlp = compose_config()
    cnn = compose_config("model=cnn", "seed=2", "threads=1", "logger=csv",
                         "callbacks.weight_grid.every_n_epochs=3")
    assert changed_settings(mlp, cnn) == [
        "dataset.datamodule.seed: 0 -> 2", "model.net._target_: bnstudy.nets.MLP -> "
        "bnstudy.nets.CNN", "model.net.channels: (absent) -> (32, 64)", "seed: 0 -> 2"]
    assert changed_settings(cnn, mlp)[2] == "model.net.channels: (32, 64) -> (absent)"
    assert changed_settings(mlp, compose_config("model.steps_per_call=4")) == []


@pytest.mark.parametrize("overrides, name", [
    # Hydra joins a job's overrides with commas: a list value's own commas do not split it
    (["model=cnn", "model.net.channels=[16,32]", "norm=layer"],
     "mnist-layer-sgd-seed0-channels=[16,32]-model=cnn"),
    # a sampled value at 4 significant digits (not Optuna's 17), a typed one as typed (1e9 too)
    (["optim.optimizer.lr=0.009101544767565362", "dataset.val_size=0.123456",  # 6 digits: whole
      "dataset.lr=0.0000001", "dataset.equivalence_margin=1.2345678e-03",
      "callbacks.hallucinations.lr=1000000000.0", "callbacks.hallucinations.l2=0.1234567"],
     "mnist-bn-sgd-seed0-l2=0.1235-lr=1000000000.0-equivalence_margin=0.001235-lr=0.0000001-"
     "val_size=0.123456-lr=0.009102"),
    # an optimizer's argument added is a setting; a callback dropped is not
    (["+optim.optimizer.weight_decay=0.01", "~callbacks.hallucinations"],
     "mnist-bn-sgd-seed0-weight_decay=0.01")])
def test_a_runs_name_holds_each_typed_value_whole_and_a_sampled_one_at_4_digits(overrides, name):
    assert compose_config(*overrides).run_name == name


def test_a_sweeps_job_is_named_by_the_values_its_sweep_varies_an_added_key_too(tmp_path):
    """In a multirun, `swept_suffix` keeps the keys its `multirun.yaml` sweeps (one of them
    added with `+`), not every override of the job."""
    from hydra.types import RunMode

    from bnstudy.config import swept_keys, swept_suffix

    job = "+optim.optimizer.weight_decay=0.1,dataset.lr=0.1,norm=bn,trainer.max_epochs=2"
    cfg = compose_config(*job.split(","))
    try:
        OmegaConf.set_readonly(cfg.hydra, False)
        cfg.hydra.mode, cfg.hydra.runtime.cwd = RunMode.MULTIRUN, str(tmp_path)
        cfg.hydra.sweep.dir, cfg.hydra.sweeper.params = "sweep", {"seed": "0,1"}
        cfg.hydra.overrides.task = ["+optim.optimizer.weight_decay=0,0.1", "dataset.lr=0.1",
                                    "norm=bn,none", "trainer.max_epochs=2"]
        (tmp_path / "sweep").mkdir()
        OmegaConf.save(cfg, tmp_path / "sweep" / "multirun.yaml")
        HydraConfig.instance().set_config(cfg)
        assert swept_keys() == {"optim.optimizer.weight_decay", "norm", "seed"}
        assert swept_suffix(job) == "-weight_decay=0.1"  # norm and seed: in every name
    finally:
        compose_config()  # Hydra's config as the other tests find it
    assert swept_keys() is None and swept_suffix(job) == "-weight_decay=0.1-lr=0.1-max_epochs=2"


def test_a_run_records_the_settings_beyond_the_studys_that_differ_or_were_typed():
    """Typed ones even at their default; never bookkeeping (threads) or `model.steps_per_call`."""
    typed = ["trainer.gradient_clip_val=1.0", "trainer.precision=32-true", "threads=2",
             "model.steps_per_call=2", "model=cnn", "model.net.channels=[8,16]", "dataset.lr=0.1"]
    cfg = compose_config(*typed)
    assert hparams(cfg, group_defaults(HydraConfig.get().runtime.choices),
                   overridden_keys(typed)) == {
        "dataset": "mnist", "model": "cnn", "depth": 1, "norm": "bn", "optim": "sgd", "seed": 0,
        "lr": 0.1, "batch_size": 64, "hidden_dim": 256, "max_epochs": 10,
        "model.net.channels": [8, 16], "trainer.precision": "32-true",
        "trainer.gradient_clip_val": 1.0}


def test_the_defaults_of_a_runs_choices_leave_out_what_configs_pull_in_themselves():
    """`runtime.choices` also names the `x@pkg` defaults configs pull in: the user's alone count."""
    older = {"dataset": "cifar10", "dataset/shared@dataset": "study", "model": "cnn",
             "schema/net@model.net": "cnn", "hydra/launcher": "parallel", "experiment": None}
    cfg = group_defaults(older)
    assert (cfg.dataset.name, cfg.model.net.channels, cfg.dataset.lr) == ("cifar10", [32, 64],
                                                                           0.001)


@pytest.mark.parametrize("key, valid", [
    ("zzz", "callbacks, dataset, logger"), ("dataset.zzz", "batch_size, datamodule, "),
    ("model.zzz", "_target_, net, steps_per_call ("), ("optim.zzz", "name, optimizer ("),
    ("paths.zzz", "data_dir, output_dir ("), ("model.net.zzz", "_target_, depth, hidden_dim, ")])
def test_a_key_added_past_the_schema_is_named_with_its_nodes_valid_keys(key, valid):
    """`+key=value` passes Hydra's check; each node's schema refuses it by its full name."""
    with pytest.raises(ConfigError) as refused:
        validate(compose_config(f"+{key}=1"))
    node = key.rpartition(".")[0]
    where = f"under {node}" if node else "at the top level"
    assert str(refused.value).startswith(f"{key}: no such setting. Valid keys {where}: {valid}")
    assert str(refused.value).endswith(" (e.g. dataset.lr=0.1; `python -m bnstudy.train --cfg "
                                       "job` shows them all).")


def test_two_keys_past_the_schema_are_named_together_and_a_datamodule_may_omit_one():
    with pytest.raises(ConfigError, match=r"^paths\.a, paths\.b: no such setting\. "):
        validate(compose_config("+paths.b=1", "+paths.a=1"))
    cfg = compose_config()  # a user's own datamodule without eval_batch_size: its default
    del cfg.dataset.datamodule.eval_batch_size
    validate(cfg)
    del cfg.dataset.datamodule.batch_size  # without batch_size: dataset.batch_size's is read
    cfg.dataset.batch_size = 1
    with pytest.raises(ConfigError, match=r"^dataset\.batch_size=1 with norm=bn: "):
        validate(cfg)


def test_a_composed_config_is_the_callers_own_copy_and_shows_bars_on_a_terminal_only(
        monkeypatch):
    """The compose caches hand out deep copies (a caller's change to a nested value does not
    reach the next caller), in and outside a Hydra app."""
    import sys

    from hydra import initialize_config_dir

    from bnstudy.config import CONFIG_DIR, compose_cached

    mine = compose_cached(["dataset=mnist"])
    mine.dataset.lr = 5.0
    assert compose_cached(["dataset=mnist"]).dataset.lr == 0.001
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):  # as inside the app
        mine = group_defaults({"dataset": "mnist"})
        mine.dataset.lr = 5.0
        assert group_defaults({"dataset": "mnist"}).dataset.lr == 0.001
    assert mine.trainer.enable_progress_bar is False  # (pytest's stderr is no terminal)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert mine.trainer.enable_progress_bar is True
