"""The command line's overrides (bnstudy.overrides): the config they compose, and each mistake
found before Hydra, in one paragraph with what to type."""

import re
import shlex

import pytest
from helpers import REPO, compose_config

from bnstudy.errors import ConfigError
from bnstudy.overrides import (
    compose,
    first_mistake,
    given_twice,
    interval_sweep,
    lacking_option,
    no_parallel_jobs,
    search_entry,
    typed_settings,
    unknown_option,
    unknown_override,
    wrong_type,
)
from bnstudy.run import build_model


def test_a_misspelt_nested_key_is_named_and_a_choices_own_key_is_not():
    assert unknown_override(["trainer.max_epoch=3"]).startswith(
        "trainer.max_epoch: no such setting. Did you mean trainer.max_epochs")  # not `+key`
    assert unknown_override(["model=cnn", "model.net.channels=[8]"]) is None  # cnn's own key
    assert unknown_override(["-m", "optim=sgd,adam", "optim.optimizer.momentum=0.9"]) is None
    assert unknown_override(["optim=adm", "trainer.max_epochs=3"]) is None  # Hydra names adm
    assert unknown_override(["-m", "experiment=tuned", "hydra.sweeper.n_trial=4"]).startswith(
        "hydra.sweeper.n_trial: no such setting. Did you mean hydra.sweeper.n_trials")
    assert unknown_override(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=1",
                             "hydra.sweep.dir=x", "hydra.sweeper.params.seed=0,1"]) is None
    assert unknown_override(["-m", "experiment=tuned",  # a sampler's own keys: the README's TPE
                             "hydra.sweeper.sampler._target_=optuna.samplers.TPESampler"]) is None
    assert unknown_override(["-m", "hydra/launcher=slrum", "hydra.launcher.partition=x"]) is None
    assert unknown_override(["-m", "hydra.launcher.zzz=1"]) == (  # no launcher has it
        "hydra.launcher.zzz: no such setting. `python -m bnstudy.train --help` lists the groups "
        "and `python -m bnstudy.train --cfg hydra` Hydra's settings.")
    assert "It comes with logger=mlflow (several: " in unknown_override(
        ["logger.mlflow.tags.team=x"])  # a key of a key of the option
    for typed, launcher in ((["hydra.launcher.partition=gpu"], "slurm"),  # the launcher forgotten
                            (["hydra.launcher.n_jobs=2"], "parallel"),
                            (["hydra/launcher=submitit_local", "hydra.launcher.max_num_timeout=3"],
                             "slurm")):  # a key of another launcher
        assert f"no such setting. It comes with hydra/launcher={launcher} (to add it to " \
            f"another: +{typed[-1]}). " in unknown_override(["-m", *typed])
    assert "no such setting. It comes with hydra/sweeper=tuned, which experiment=tuned sets. " \
        in unknown_override(["-m", "hydra.sweeper.n_trials=4"])  # the grid sweeper's study


def test_a_mistyped_setting_is_named_with_the_closest_ones():
    tail = ("`python -m bnstudy.train --help` lists the groups and `python -m bnstudy.train "
            "--cfg job` every setting.")
    assert unknown_override(["seed=1", "seeds=3"]) == (
        "seeds: no such setting. Did you mean seed or callbacks.hallucinations.seeds or "
        f"callbacks.hallucinations.seed? Type e.g. seed=3. {tail}")  # a top-level one first
    assert unknown_override(["model.net.hidden=3"]) == (
        "model.net.hidden: no such setting. Did you mean model.net.hidden_dim or "
        f"model.net.depth? Type e.g. model.net.hidden_dim=3. {tail}")
    assert unknown_override(["optim.optimizr.lr=0.1"]).startswith(  # its own group's first
        "optim.optimizr.lr: no such setting. Did you mean optim.optimizer.lr or dataset.lr or ")
    assert unknown_override(["zzz=1"]) == f"zzz: no such setting. {tail}"
    assert unknown_override(["hydar=1"]) == f"hydar: no such setting. {tail}"  # not Hydra's own
    # a class's path is not a setting to suggest
    assert unknown_override(["model._target=x"]) == f"model._target: no such setting. {tail}"
    assert unknown_override(["nrom=bn"]) == (  # a misspelt group: the group, then settings
        "nrom: no such setting. Did you mean norm or callbacks.hallucinations.nrow or "
        f"model.net.norm? Type e.g. norm=bn. {tail}")
    assert unknown_override(["logger.mlflow.experiment_name=mine"]) == (  # its option not chosen
        "logger.mlflow.experiment_name: no such setting. It comes with logger=mlflow (several: "
        f"'logger=[...,mlflow]'). {tail}")
    assert unknown_override(["logger=mlflow", "logger.mlflow.experiment_name=mine"]) is None
    assert unknown_override(["-m", "logger=[tensorboard,mlflow]", "norm=bn,none",  # a list's
                             "logger.mlflow.experiment_name=mine"]) is None  # option
    assert unknown_override(["trainer.max_epochs=1", "paths.data_dirr=/a=b"]) == (  # after a
        "paths.data_dirr: no such setting. Did you mean paths.data_dir or "  # known one; an = in
        f"dataset.datamodule.data_dir? Type e.g. paths.data_dir=/a=b. {tail}")  # the value
    assert unknown_override(["+lr=0.1", "~x", "-m", "hydra.run.dir=x", "trainer"]) is None
    # a flag added to the Trainer it does not take: refused before any job, not by each job's
    assert unknown_override(["+trainer.max_epoch=3"]).startswith(  # Trainer (Hydra words a
        "trainer.max_epoch: no such setting. Did you mean trainer.max_epochs or ")  # flag it has)
    assert unknown_override(["+trainer.foo=1"]) == f"trainer.foo: no such setting. {tail}"
    assert unknown_override(["+trainer.max_epochs=3", "+trainer.enable_model_summary"]) is None
    assert unknown_override(["--config-dir=x", "~trainer.max_epoch=3"]) is None  # Hydra's own


def test_an_optimizers_argument_the_config_does_not_list_is_added_with_a_plus():
    assert unknown_override(["optim=adam", "optim.optimizer.betas=[0.8,0.9]"]) == (
        "optim.optimizer.betas: the config does not list it, so nothing was run. torch.optim.Adam"
        " takes it: type +optim.optimizer.betas=[0.8,0.9] to add it (the run's hparams record "
        "it).")
    assert "torch.optim.SGD takes it: type +optim.optimizer.weight_decay=0,0.01 to" in \
        unknown_override(["-m", "optim=sgd,adam", "optim.optimizer.weight_decay=0,0.01"])
    for mistake in ("optim.optimizer.momentm", "optim.optimizer.foo"):  # misspelt; no argument
        assert unknown_override([f"{mistake}=1"]).startswith(f"{mistake}: no such setting.")
    cfg = compose_config("optim=adam", "+optim.optimizer.betas=[0.8,0.9]")
    model = build_model(cfg, (1, 4, 4), 10)
    assert model.configure_optimizers().defaults["betas"] == (0.8, 0.9)  # as typed


def test_a_value_its_settings_type_refuses_is_named_with_what_to_type_each_of_a_sweeps():
    assert {k: v for k, v in typed_settings().items() if k in (
        "seed", "resume", "dataset.lr", "dataset.train_size", "model.net.depth")} == {
        "seed": ("int", False), "resume": ("bool", False), "dataset.lr": ("float", False),
        "dataset.train_size": ("int", True), "model.net.depth": ("int", False)}
    assert wrong_type(["-m", "seed=0..3"]) == (
        "seed=0..3: seed takes an integer, not '0..3', so nothing was run. Type e.g. seed=0; "
        "several are a sweep: -m seed=0,1 or -m 'seed=range(0,3)'.")
    assert wrong_type(["-m", "dataset.lr=0.1,fast"]) == (  # a sweep's each value, Hydra's rules
        "dataset.lr=0.1,fast: dataset.lr takes a number, not 'fast', so nothing was run. Type "
        "e.g. dataset.lr=0.001; several are a sweep: -m dataset.lr=0.001,0.01.")
    assert wrong_type(["model.net.hidden_dim=3.5"]).startswith(
        "model.net.hidden_dim=3.5: model.net.hidden_dim takes an integer, not 3.5,")
    assert "takes an integer or null, not 'x'" in wrong_type(["seed=1", "dataset.train_size=x"])
    assert "seed takes an integer, not None," in wrong_type(["seed=null"])  # (not Optional)
    assert "seed takes an integer," in wrong_type(["+optim.optimizer.weight_decay=0", "~x",
                                                  "trainer.foo=1", "seed=abc"])  # each checked
    assert wrong_type(["resume=maybe"]).endswith("Type resume=true or resume=false.")
    for fine in (["-m", "seed=range(0,4)", "dataset.train_size=100,null", "resume=yes"],
                 ["~seed", "+x=abc", "dataset.lr=interval(0.001,0.1)", "--cfg", "job"],
                 ["optim.optimizer.lr=abc", "trainer.deterministic=warn"],
                 ["-m", "trainer.precision=16,bf16-mixed", "trainer.fast_dev_run=2",
                  "trainer.accelerator=cpu"],
                 ["trainer.limit_train_batches=5", "trainer.gradient_clip_val=0.5"]):
        assert wrong_type(fine) is None
    assert wrong_type(["trainer.max_epochs=3", "trainer.enable_checkpointing=maybe"]) == (
        "trainer.enable_checkpointing=maybe: trainer.enable_checkpointing takes true or false or "
        "null, not 'maybe', so nothing was run. Type trainer.enable_checkpointing=true or "
        "trainer.enable_checkpointing=false.")  # the Trainer's own types, from its signature
    assert wrong_type(["trainer.limit_val_batches=half"]).endswith(
        "trainer.limit_val_batches takes a number or null, not 'half', so nothing was run. Type "
        "e.g. trainer.limit_val_batches=1.")
    assert wrong_type(["trainer.precision=17"]).endswith(
        "or null, not 17, so nothing was run. Type e.g. trainer.precision=64.")
    assert wrong_type(["trainer.deterministic=maybe"]) == (  # a bool or a named value
        "trainer.deterministic=maybe: trainer.deterministic takes true or false or 'warn' or "
        "null, not 'maybe', so nothing was run. Type trainer.deterministic=true or "
        "trainer.deterministic=false.")
    assert "trainer.fast_dev_run takes an integer or true or false, not 'maybe'" in wrong_type(
        ["trainer.fast_dev_run=maybe"])
    assert wrong_type(["-m", "trainer.precision=32,bf16-mix"]).endswith(
        "'bf16' or null, not 'bf16-mix', so nothing was run. Did you mean "
        "trainer.precision=bf16-mixed?")
    assert unknown_option(["-m", "norm=bn,", "none", "optim=sgd"]) == (
        "norm=bn, none: a space after a comma makes two words of one setting, so nothing was run. "
        "Type the values without spaces: norm=bn,none.")
    assert unknown_option(["norm=bn,", "optim=sgd"]).startswith(
        "norm=bn,: norm has no option (none given)")


def test_a_list_of_options_that_replace_each_other_is_refused_and_one_that_adds_up_is_not():
    assert first_mistake(["norm=[bn,none]"]) == (  # Hydra would run norm=none alone
        "norm=[bn,none]: these options replace each other (norm=bn sets model.net.norm to bn, "
        "norm=none to none; a list keeps the last one's), so nothing was run. To run each, sweep "
        "them: -m norm=bn,none.")
    assert first_mistake(["-m", "dataset=[mnist, cifar10]"]).startswith(
        "dataset=[mnist, cifar10]: these options replace each other (dataset=mnist sets "
        "dataset.name to mnist, ")  # the plainest key they set differently
    assert "(norm=layer sets model.net.norm to layer, norm=group to group;" in first_mistake(
        ["norm=[layer,group,bn]"])
    assert "(experiment=regime sets hydra.sweeper.params.seed to 0,1,2, experiment=decisive " \
        "to range(0,20); a list keeps the last one's), so nothing was run. Run one at a " \
        "time." in first_mistake(["-m", "experiment=[regime,lr0.01,decisive]"])  # lr0.01: none
    for fine in (["logger=[tensorboard,csv,mlflow,wandb]"], ["callbacks=[default,probes]"],
                 ["norm=[bn]"], ["-m", "norm=choice(bn,none)", "seed=choice(0,1)"],
                 ["callbacks.hallucinations=null"],  # (a node, not a setting)
                 ["-m", "norm=bn,none", "dataset=mnist,cifar10"],  # a sweep, not a list
                 ["logger=[csv,tensorboard,csv]"],  # the same option again: nothing replaced
                 ["experiment=[lr_sweep,batch_sweep]"]):  # one key, one value: they add up
        assert first_mistake(fine) is None, fine


def test_a_setting_given_twice_with_other_values_is_refused_and_again_alike_is_not():
    # Hydra would sweep norm=none,layer alone, dropping bn's runs unsaid
    assert first_mistake(["-m", "norm=bn,none", "optim=sgd", "norm=none,layer"]) == (
        "norm=bn,none and norm=none,layer: norm is given twice, and Hydra would keep only the "
        "last, so nothing was run. Give it once (both as one sweep: -m norm=bn,none,layer).")
    assert given_twice(["seed=range(3)", "+seed=4"]) == (
        "seed=range(3) and +seed=4: seed is given twice, and Hydra would keep only the last, so "
        "nothing was run. Give it once.")
    for fine in (["hydra.sweep.dir=out", "resume=true", "hydra.sweep.dir=out"],  # appended
                 ["hydra.run.dir=out", 'hydra.run.dir="out"'],  # Lightning's DDP restart
                 ["~callbacks.probes", "~callbacks.probes"], ["-m", "-m", "seed=1"],
                 ["norm=bn", "model.net.norm=bn"]):
        assert given_twice(fine) is None, fine


def test_a_setting_some_options_of_a_swept_group_lack_is_named_before_any_job():
    assert lacking_option(["-m", "optim=sgd,adam", "optim.optimizer.momentum=0.9"]) == (
        "optim.optimizer.momentum=0.9: optim=adam has no such setting (optim=sgd has), so "
        "nothing was run. Sweep the options that take it on their own: -m optim=sgd "
        "optim.optimizer.momentum=0.9, and the others without it: -m optim=adam.")
    assert lacking_option(["-m", "logger=csv,mlflow", "logger.mlflow.experiment_name=x"]) \
        .startswith("logger.mlflow.experiment_name=x: logger=csv has no such setting (")
    for fine in (["-m", "optim=sgd,adam", "optim.optimizer.lr=0.1", "dataset.lr=0.1"],
                 ["optim=sgd", "optim.optimizer.momentum=0.9"],  # (one option: no sweep)
                 ["logger=[csv,mlflow]", "logger.mlflow.experiment_name=x"],  # a list
                 ["-m", "optim=sgd,adam", "optim.optimizer.zzz=1"],  # unknown_override's
                 ["-m", "optim=sgd,adamx", "optim.optimizer.momentum=0.9"]):  # unknown_option's
        assert lacking_option(fine) is None


def test_a_parallel_launcher_of_no_jobs_is_refused_before_its_folder():
    for typed in (f"hydra.launcher.n_jobs={n}" for n in ("0", "two", "-0", "")):
        assert no_parallel_jobs(["-m", "seed=0", typed]) == (
            f"{typed}: the number of jobs the parallel launcher runs at once must be a whole "
            "number other than 0 (-1: as many as cores), so nothing was run. Type e.g. "
            "hydra.launcher.n_jobs=2.")
    assert no_parallel_jobs(["-m", "seed=0", "hydra.launcher.n_jobs=-1", "threads=0"]) is None
    assert first_mistake(["-m", "+hydra.launcher.n_jobs=0"]).startswith(
        "+hydra.launcher.n_jobs=0: the number of jobs")  # added to another launcher


def test_an_interval_is_refused_outside_a_tuned_study():
    assert first_mistake(["-m", "seed=interval(0,2)"]).startswith(
        "seed=interval(0,2): an interval is a range for a search to sample")
    assert "e.g. -m seed=0,2;" in interval_sweep(["-m", "seed=interval(0,2)"])
    for args in (["-m", "seed=range(0,3)", "dataset.lr=0.1,1"], ["-m", "experiment=tuned",
                 "seed=interval(0,2)"], ["-m", "dataset.lr=interval("]):  # (Hydra's error)
        assert interval_sweep(args) is None, args


def test_a_search_entry_is_changed_through_its_optimizers_mapping():
    for plus in ("", "+"):  # as typed, and with the `+` Hydra's refusal suggests
        assert first_mistake(["-m", "experiment=tuned", f"{plus}hydra.sweeper.search.sgd."
                              "optim.optimizer.lr=tag(log, interval(0.01, 1.0))"]) == (
            f"{plus}hydra.sweeper.search.sgd.optim.optimizer.lr=tag(log, interval(0.01, 1.0)): a "
            "search entry's name holds dots (optim.optimizer.lr), which an override reads as "
            "nesting, so nothing was run. Change it through its optimizer's mapping, which "
            "merges: 'hydra.sweeper.search.sgd={optim.optimizer.lr: \"tag(log, interval(0.01, "
            "1.0))\"}'.")
    for fine in ('hydra.sweeper.search.sgd={optim.optimizer.lr: "interval(0.1, 1.0)"}',
                 "hydra.sweeper.search.sgd.seed=1", "hydra.sweeper.n_trials=4"):
        assert search_entry(["-m", "experiment=tuned", fine]) is None, fine


def test_a_compose_made_again_is_a_fresh_copy_for_its_working_directory(tmp_path, monkeypatch):
    first = compose(["seed=3"])
    first.seed = 4  # a caller changing its config changes no later one
    assert compose(["seed=3"]).seed == 3
    monkeypatch.chdir(tmp_path)
    assert compose(["seed=3"]).hydra.runtime.cwd == str(tmp_path)


@pytest.mark.parametrize("overrides, message", [
    (["lr=0.1"], "lr: no such setting. Did you mean dataset.lr or "),  # not Hydra's `+lr=0.1`
    (["seed=abc"], "seed=abc: seed takes an integer, not 'abc', so nothing was run."),
    (["norm=bnn"], "norm=bnn: norm has no option bnn, so nothing was run. Did you mean bn? Its "
                   "options: bn, group, layer, none."),
    (["norm=BN"], "norm=BN: norm has no option BN, so nothing was run. Did you mean bn? "),
    (["model.net={a:1}"], "Could not override 'model.net'."),  # Hydra's, and why:
    (["seed=0,1"], "Ambiguous value for argument 'seed=0,1'\n1. To use it as a list, use "
                   "key=[value1,value2]\n2. To use it as string, quote the value: "
                   "key='value1,value2'\n3. To sweep over it, compose each value (or run "
                   "train -m)"),
])
def test_a_mistake_in_python_is_a_config_error_worded_as_the_command_line_words_it(overrides,
                                                                                  message):
    with pytest.raises(ConfigError) as raised:
        compose(overrides)
    assert str(raised.value).startswith(message) and "search path" not in str(raised.value)
    if "{" in overrides[0]:
        assert str(raised.value).endswith(" (ConfigKeyError: Key 'a' not in 'MLPSchema')")


@pytest.mark.slow
def test_every_training_command_in_the_readme_passes_the_command_line_checks():
    """What users copy: each `python -m bnstudy.train` line of the README's bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    lines = [line.split("  #")[0] for block in blocks
             for line in block.replace("\\\n", " ").splitlines()
             if line.startswith("python -m bnstudy.train")]
    assert len(lines) >= 20
    for line in lines:
        args = [a for a in shlex.split(line)[3:] if a != "-m" and "<" not in a]
        assert first_mistake(args) is None, line
