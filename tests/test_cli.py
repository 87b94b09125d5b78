"""What the entry point answers a newcomer's mistakes with: one paragraph, a non-zero exit,
nothing left behind."""

from __future__ import annotations

import pytest
from helpers import run_train


@pytest.mark.parametrize(("typed", "suggested"), [
    ("lr=0.1", "Type e.g. dataset.lr=0.1."),
    ("seeds=3", "Type e.g. seed=3."),
    ("momentum=0.9", "Type e.g. optim.optimizer.momentum=0.9."),
])
def test_a_misspelt_setting_gets_the_setting_meant(tmp_path, typed, suggested):
    proc = run_train(typed, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    key = typed.split("=")[0]
    assert f"{key}: no such setting. Did you mean " in proc.stderr and suggested in proc.stderr
    assert "+" + key not in proc.stderr and "Traceback" not in proc.stderr  # not Hydra's `+lr`
    assert not (tmp_path / "run").exists()


def test_the_config_prints_resolved_without_a_job(tmp_path):
    proc = run_train("--cfg", "job", "--resolve", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "output_dir: '<the job''s directory" in proc.stdout and "lr: 0.001" in proc.stdout
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "warned"), [("lr_sweep", True), ("decisive", True),
                                                    ("lr0.01", False)])
def test_a_sweep_experiment_without_m_is_named_as_one(tiny_data, tmp_path, experiment, warned):
    from helpers import FAST

    proc = run_train(*FAST, f"paths.data_dir={tiny_data}", f"experiment={experiment}",
                     "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    note = f"experiment={experiment} is a sweep, but without -m Hydra runs one job"
    assert (note in proc.stderr) == warned
    if warned:
        assert f"python -m bnstudy.train -m experiment={experiment}" in proc.stderr


def test_help_lists_the_studys_own_choices_first():
    proc = run_train("--help")
    assert proc.returncode == 0
    text = proc.stdout
    assert text.startswith("python -m bnstudy.train [-m]")
    assert text.index("dataset=mnist|cifar10") < text.index("Every group and its options:")
    assert "dataset.lr=0.001" in text and "--cfg job --resolve" in text
