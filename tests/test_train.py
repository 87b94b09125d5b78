"""`python -m bnstudy.train`: one paragraph per way a command ends, the console, a sweep."""

from __future__ import annotations

import pytest
from helpers import (
    FAST,
    checkpoint_hits,
    fresh_train,
    launcher_env,
    read_record,
    run_sweep,
    run_train,
    start_train,
    sweep_jobs,
    tiny_fit,
    unless_typed,
    wait_for_file,
)


def quick(epochs: int = 1) -> tuple[str, ...]:
    """Quiet runs of `epochs` epochs of 2 batches, without hallucinations."""
    return (*FAST, f"trainer.max_epochs={epochs}", "trainer.limit_train_batches=2",
            "~callbacks.hallucinations")


@pytest.mark.parametrize("overrides, message", [  # (a config error: test_run, test_config)
    (["dataset.datamodule.download=false", "paths.data_dir=nowhere"],
     "nowhere/MNIST/raw/train-images-idx3-ubyte"),
    pytest.param(["+dataset.momentum=0.9"], "dataset.momentum: no such setting. Valid keys "
                 "under dataset:", marks=pytest.mark.slow),
    pytest.param(["dataset.batch_size=1"], "dataset.batch_size=1 with norm=bn: BatchNorm "
                 "normalises over the batch, which one image cannot give", marks=pytest.mark.slow),
    (["dataset=cifar10", "dataset.datamodule.download=maybe"], "dataset.datamodule.download="
     "'maybe': it takes true or false or null."),  # untyped by Hydra: the class's arguments
    pytest.param(["dataset=cifar10", "dataset.datamodule.verify_checksums=maybe"],
                 "dataset.datamodule.verify_checksums='maybe' is not one of ('strict', 'warn', "
                 "'off').", marks=pytest.mark.slow),  # the class's own refusal, unwrapped
])
def test_a_mistake_found_before_training_is_one_paragraph_and_leaves_nothing(
        overrides, message, tiny_data, tmp_path):
    proc = run_train(*FAST, *unless_typed([f"paths.data_dir={tiny_data}"], overrides), *overrides,
                     "hydra.run.dir=outputs/runs/now", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert message in proc.stderr and "failed before training; nothing was kept" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # the run folder Hydra made is gone, and its parents


@pytest.mark.parametrize("override, message", [
    ("dataset=imagenet", "dataset has no option imagenet, so nothing was run. Its options: "
     "cifar10, fashion_mnist, mnist."),  # Hydra's adds its search path
    ("logger=[]", "logger has no option (none given), so nothing was run."),  # (a failed run)
    ("norm=null", "norm has no option null, so nothing was run."),  # (Hydra's traceback)
    ("seed=abc", "seed=abc: seed takes an integer, not 'abc', so nothing was run. Type e.g. "
     "seed=0; several are a sweep: -m seed=0,1 or -m 'seed=range(0,3)'."),  # (Hydra's: its
    ("resume=maybe", "resume takes true or false, not 'maybe'"),  # schema's class, no advice)
    ("lr=0.1", "lr: no such setting. Did you mean dataset.lr"),  # not Hydra's `+lr=0.1`
    ("seeds=3", "Type e.g. seed=3."),
    ("momentum=0.9", "Type e.g. optim.optimizer.momentum=0.9."),
    ("logger=[tensorboard, mlfow]", "logger=[tensorboard, mlfow]: logger has no option mlfow, so "
     "nothing was run. Did you mean mlflow? Its options: csv, mlflow, tensorboard, wandb "
     "(several: 'logger=[a,b]')."),  # Hydra's would name no option
    ("dataset.lr=interval(1e-3,0.1)", "dataset.lr=interval(1e-3,0.1): an interval is a range "
     "for a search to sample, but a sweep trains the values it lists, so nothing was run. List "
     "them, e.g. -m dataset.lr=0.001,0.1; to search"),  # with -m: Hydra's traceback, a folder
])
def test_a_mistyped_command_is_refused_before_anything_runs(override, message, tmp_path):
    proc = run_train(override, "paths.data_dir=/nonexistent", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("values, starts, ends", [  # a sweep's misspelt or out-of-range value
    ("dataset=mnist,imagenet", "dataset=mnist,imagenet: dataset has no option imagenet, so "
     "nothing was run. ", "Its options: cifar10, fashion_mnist, mnist.\n"),
    ("dataset.batch_size=64,0", "dataset.batch_size=0 is out of range; it must be an integer "
     ">= 1. (The sweep's job seed=0 ", "dataset.batch_size=0; nothing was run.)\n"),
])
def test_a_bad_value_in_a_sweep_stops_it_before_any_job(values, starts, ends, tiny_data, tmp_path):
    proc = run_train("-m", *FAST, f"paths.data_dir={tiny_data}", values,
                     "hydra.sweep.dir=outputs/multirun/now", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(starts) and proc.stderr.endswith(ends)
    assert list(tmp_path.iterdir()) == [] and "Browse" not in proc.stdout + proc.stderr


def test_a_sweeper_or_launcher_against_the_command_and_cfg_with_a_sweep_are_refused():
    """A launcher without -m: Hydra would train the run in this process (a login node); which
    experiments are sweeps a single run warns about."""
    from bnstudy.overrides import compose, launcher_without_sweep, sweeper_clash
    from bnstudy.train import single_run_of_a_sweep

    assert sweeper_clash(["-m", "experiment=tuned", "hydra/sweeper=grid"]).startswith(
        "experiment=tuned searches with its own sweeper, so hydra/sweeper=grid would run one "
        "untuned job; nothing was run.")
    assert sweeper_clash(["-m", "experiment=lr_sweep", "hydra/sweeper=basic"]) is None
    assert sweeper_clash(["-m", "experiment=tuned", "hydra/sweeper=tuned"]) is None
    proc = run_train("-m", "experiment=lr_sweep", "hydra/sweeper=tuned")  # was a tuned study
    assert proc.returncode == 1 and proc.stderr.startswith(
        "hydra/sweeper=tuned is experiment=tuned's sweeper, so nothing was run. Type "
        "experiment=tuned instead")
    for args in (["-m", "hydra/launcher=slurm"], ["hydra.mode=MULTIRUN", "hydra/launcher=slurm"],
                 ["hydra/launcher=basic"], ["dataset=mnist"], ["--help", "hydra/launcher=slurm"],
                 ["--cfg=hydra", "hydra/launcher=slurm"], ["-c", "job", "hydra/launcher=parallel"]):
        assert launcher_without_sweep(args) is None, args
    assert launcher_without_sweep(["+hydra/launcher=slurm", "-p", "hydra"]).startswith(
        "+hydra/launcher=slurm launches the jobs of a sweep, so it takes -m")
    proc = run_train("hydra/launcher=parallel", "dataset=mnist")
    assert proc.returncode == 1 and proc.stderr == (
        "hydra/launcher=parallel launches the jobs of a sweep, so it takes -m: without it Hydra "
        "would train this one run here, in this process. Nothing was run. To launch it: python "
        "-m bnstudy.train -m hydra/launcher=parallel dataset=mnist\n")
    for flags in (["-m", "--cfg", "job"], ["-m", "--cfg=job"], ["--multirun", "-c", "job"]):
        proc = run_train(*flags, "norm=bn,none")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("--cfg prints one job's config, so it does not go with -m")
    for args, said in ((["-c", "hydra", "-p", "hydra.run.dir"], "_mnist-bn-adam-seed0\n"),
                       (["--cfg=hydra", "--package=hydra.run.dir"], "_mnist-bn-adam-seed0\n"),
                       (["--cfg", "hydra", "--package", "hydra.sweep"], "subdir: ${hydra.job.num}"),
                       (["--cfg", "hydra", "-p", "dataset"], "package 'dataset' not found")):
        proc = run_train(*args, "optim=adam")  # Hydra's run.dir reads the job's ${run_name}
        assert proc.returncode == ("dataset" in args) and said in proc.stdout + proc.stderr
    for experiment, warned in (("lr_sweep", True), ("tuned", True), ("lr0.01", False),
                               (None, False)):
        cfg = compose([f"experiment={experiment}"] if experiment else [])
        assert (single_run_of_a_sweep(cfg.hydra) is not None) == warned, experiment


@pytest.mark.slow
def test_help_lists_the_studys_choices_and_the_config_prints_without_a_job(tmp_path):
    text = run_train("--help").stdout
    assert text.startswith("python -m bnstudy.train [-m]") and "dataset.lr=0.001" in text
    assert text.index("dataset=mnist|cifar10") < text.index("Every group and its options:")
    for options in ("dataset: cifar10, fashion_mnist, mnist", "norm: bn, group, layer, none",
                    "optim: adam, sgd", "model: cnn, mlp"):
        assert options in text
    listed = text.split("Every group and its options:\n")[1].split("\n\n")[0]
    assert [line.split(":")[0] for line in listed.splitlines()] == [  # none of conf/'s insides
        "callbacks", "dataset", "experiment", "logger", "model", "norm", "optim", "paths",
        "trainer"]
    proc = run_train("--cfg", "job", "--resolve", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0 and "lr: 0.001" in proc.stdout
    assert "output_dir: '<the job''s directory" in proc.stdout and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ctrl_c_on_a_sweeps_process_is_one_paragraph_with_the_resume_command(tiny_data, tmp_path):
    """The sweep's own process (waiting for a parallel job) stopped by Ctrl-C."""
    import signal

    sweep, go = tmp_path / "sweep", tmp_path / "go"
    proc = start_train("-m", *quick(2), "seed=0", f"paths.data_dir={tiny_data}",
                       "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
                       f"hydra.sweep.dir={sweep}",
                       "+callbacks.go._target_=tests.faults.PauseAtEpoch",
                       "+callbacks.go.epoch=1", f"+callbacks.go.until={go}")
    try:
        wait_for_file(tmp_path / "go.paused", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err
    assert (  # (a job's own "Interrupted" line may come before or after it)
        f"Interrupted: the sweep {sweep} stopped. Its finished jobs keep their results (python "
        f"-m bnstudy.report {sweep}); to go on, run the same command with resume=true "
        f"hydra.sweep.dir={sweep}: only what is unfinished runs.") in err.splitlines()
    assert not (sweep / ".refused").exists()


@pytest.mark.slow
def test_a_sweep_keeps_its_finished_jobs_and_names_one_that_never_trained(tiny_data, tmp_path):
    from bnstudy.report.runs import load_runs, never_started

    proc = run_sweep(tmp_path, tiny_data, "dataset.train_size=9999,400", *quick())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (good,) = sweep_jobs(tmp_path)  # the failing job never trained: it left no directory
    assert good.name == "1_mnist-bn-sgd-seed0-train_size=400"  # named by what the sweep varies
    console = proc.stdout + proc.stderr  # the summary: on Hydra's own console, stdout
    assert read_record(good)["status"] == "ok" and f"Sweep {tmp_path}: 1 job(s)" in console
    assert f"  {good.name[2:]}: ok, val acc " in console
    assert "  0_mnist-bn-sgd-seed0-train_size=9999: failed before training, nothing kept: " \
           "mnist: train_size=9999 and val_size=" in proc.stderr
    assert f"resume=true hydra.sweep.dir={tmp_path}" in proc.stderr and "?" not in proc.stderr
    assert list(load_runs(tmp_path)["outcome"]) == ["ok"]
    assert never_started(tmp_path, load_runs(tmp_path)) == ["dataset.train_size=9999"]  # missing


@pytest.mark.slow
def test_a_sweep_whose_every_job_fails_keeps_nothing_and_names_no_resume(tiny_data, tmp_path):
    proc = run_train("-m", *FAST, f"paths.data_dir={tiny_data}", "dataset.train_size=9999",
                     "norm=bn,none", "hydra.sweep.dir=outputs/multirun/now", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "2 job(s) failed before training, so nothing was kept" in proc.stderr
    assert "  2 jobs (0_mnist-bn-sgd-seed0, 1_mnist-none-sgd-seed0): failed before training, " \
        "nothing kept: mnist: train_size=9999 and val_size=" in proc.stderr  # alike: one line
    assert "Fix the cause, then run the command again." in proc.stderr
    assert "resume=true" not in proc.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_pythons_warnings_go_to_the_log_and_routine_ones_stay_off_the_console(tiny_data, tmp_path):
    """In a fresh interpreter (pytest records warnings itself)."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "notes.txt").write_text("not empty")
    proc = fresh_train(*quick(), f"paths.data_dir={tiny_data}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exists and is not empty" not in proc.stdout + proc.stderr
    assert "exists and is not empty" in (tmp_path / "train.log").read_text()


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_skipping_finished_jobs_and_diverged_is_a_result(
        tiny_data, tmp_path):
    common = ("-m", *FAST, f"paths.data_dir={tiny_data}", "norm=bn,none", "dataset.lr=0.01,1e12",
              "trainer.max_epochs=2", "~callbacks.hallucinations", f"hydra.sweep.dir={tmp_path}")
    interrupted = run_train(*common, "+callbacks.stop._target_=tests.faults.InterruptAtEpoch",
                            "+callbacks.stop.epoch=1")  # Ctrl-C stops the whole sweep
    assert interrupted.returncode != 0
    assert [read_record(job)["status"] for job in sweep_jobs(tmp_path)] == ["interrupted"]
    resumed = run_train(*common, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # diverged jobs are results
    assert sorted(read_record(job)["status"] for job in sweep_jobs(tmp_path)) == \
        ["diverged", "diverged", "ok", "ok"]
    again = run_train(*common, "resume=true")
    assert again.returncode == 0 and again.stderr.count("already finished") == 4


@pytest.mark.slow
def test_the_readmes_main_command_ends_in_the_answer(tiny_data, tmp_path):
    """The README's first command (3 seeds by default) on tiny data: a verdict per pair."""
    from bnstudy.report.cli import main as report

    proc = run_train("-m", "dataset=mnist,cifar10", "norm=bn,none", "optim=sgd,adam", *FAST,
                     f"paths.data_dir={tiny_data}", "trainer.max_epochs=1",
                     "~callbacks.hallucinations", f"hydra.sweep.dir={tmp_path}", seeds=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(tmp_path.glob("*/metrics.json"))) == 24  # 8 pairs × 3 seeds
    console = proc.stdout + proc.stderr
    assert "Is BatchNorm worth it?" in console
    for pair in ("MNIST, SGD", "MNIST, Adam", "CIFAR-10, SGD", "CIFAR-10, Adam"):
        assert any(x.strip().startswith(f"{pair} (3 vs 3") for x in console.splitlines())
    assert report([str(tmp_path)]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert text.index("## The answer") < text.index("## Claims")


def test_an_interrupted_job_names_the_folder_to_resume_and_its_launchers_part(tmp_path,
                                                                              monkeypatch, caplog):
    """A sweep's job and process: the study's folder, not SWEEP/search/<cell> (a run: test_run)."""
    from types import SimpleNamespace

    from bnstudy import train
    from bnstudy.records import SEARCH_DIR

    (tmp_path / "multirun.yaml").touch()  # a tuned study's folder
    cell = tmp_path / SEARCH_DIR / "mnist-bn-sgd"
    hydra = SimpleNamespace(sweep=SimpleNamespace(dir=str(cell)))
    monkeypatch.setattr(train.HydraConfig, "get", lambda: hydra)
    monkeypatch.setattr(train, "is_multirun", lambda: True)
    said = []
    for slurm, gave_up in ((None, None), ("7", None), ("7", "timed out")):
        launcher_env(monkeypatch, SLURM_JOB_ID=slurm)
        caplog.clear()
        train._say_interrupted(SimpleNamespace(run_name="x"), gave_up)
        said.append(caplog.messages[-1].removeprefix("Interrupted: x keeps what it trained so "
                                                     "far. "))
    again = f"run the same command with resume=true hydra.sweep.dir={tmp_path}"
    assert said == [
        f"To go on, {again}.",
        "If its launcher requeues the job (after a time limit or a preemption), it resumes by "
        f"itself; else, to go on, {again}.",
        f"Its launcher will not requeue it (timed out). To go on, {again} (and a larger "
        "hydra.launcher.timeout_min or max_num_timeout if the time limit was too short)."]
    for stopped, words in ((None, "Interrupted before anything was trained."),  # a sweep's
                           (cell, f"Interrupted: the sweep {tmp_path} stopped. ")):  # process
        monkeypatch.setattr(train, "stop_sweep", lambda stopped=stopped: stopped)
        assert train.sweep_interrupted().startswith(words)


def test_a_bug_fails_the_run_with_its_traceback_on_the_console_and_in_its_log(tiny_data, tmp_path):
    proc = run_train(*quick(), f"paths.data_dir={tiny_data}", f"hydra.run.dir={tmp_path}",
                     "+callbacks.bug._target_=tests.faults.BugAtEpoch", "+callbacks.bug.epoch=0")
    assert proc.returncode == 1 and read_record(tmp_path)["status"] == "failed"  # kept to debug
    for said in (proc.stderr, (tmp_path / "train.log").read_text()):
        assert 'raise RuntimeError("a bug")' in said and " failed: RuntimeError: a bug" in said


@pytest.mark.slow
def test_a_sweep_experiment_without_m_is_named_as_one(tiny_data, tmp_path):
    proc = run_train(*FAST, f"paths.data_dir={tiny_data}", "experiment=lr_sweep",
                     "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "experiment=lr_sweep is a sweep, but without -m" in proc.stderr
    assert f"Files: {tmp_path} (metrics.json, images/)\n" in proc.stderr  # no ckpt, no events


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_two_process_ddp_through_the_entry_point_writes_once(tiny_data, tmp_path, strategy):
    """Rank 0 alone writes and speaks; the test hits of both ranks in the test set's order."""
    import numpy as np

    proc = fresh_train(*FAST, f"paths.data_dir={tiny_data}", "trainer.max_epochs=2",
                       "trainer.accelerator=cpu", "trainer.devices=2", "dataset.lr=1e-4",
                       f"trainer.strategy={strategy}", "~callbacks.hallucinations",
                       f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(": ok, val acc") == 1 and "Initializing distributed" not in \
        proc.stderr, proc.stderr[-3000:]
    record = read_record(tmp_path)
    hits, correct = checkpoint_hits(tmp_path, tiny_data), np.load(tmp_path / "test_correct.npy")
    assert np.array_equal(correct, hits) and 0 < hits.mean() < 1
    assert correct.mean() == pytest.approx(record["test"]["acc"], abs=1e-6)
    assert record["status"] == "ok" and [row["epoch"] for row in record["history"]] == [0, 1]
    assert record["history"][-1]["step"] == 2 * 5  # 540 images, 270 a process, batch 64
    assert (tmp_path / "images" / "weights_final.png").is_file()


@pytest.mark.slow
def test_a_second_process_is_refused_and_a_killed_runs_lock_is_not_in_the_way(tiny_data, tmp_path):
    """A second process (resume, rewrite, rerun) changes nothing; a SIGKILLed run resumes."""
    import signal
    import socket

    from bnstudy.jobdir import holder

    def snapshot() -> dict[str, bytes]:  # every file of the job by relative path, but the events
        return {str(p.relative_to(job)): p.read_bytes() for p in sorted(job.rglob("*"))
                if p.is_file() and "tfevents" not in p.name}

    job = tmp_path / "job"
    common = (*quick(3), f"paths.data_dir={tiny_data}", f"hydra.run.dir={job}")
    pauses = []  # as epoch 1 starts until `go` exists, as epoch 2 starts until killed
    for name, epoch in (("go", 1), ("kill", 2)):
        pauses += [f"+callbacks.{name}._target_=tests.faults.PauseAtEpoch",
                   f"+callbacks.{name}.epoch={epoch}", f"+callbacks.{name}.until={tmp_path / name}"]
    first = start_train(*common, *pauses)
    try:
        wait_for_file(tmp_path / "go.paused", first)
        before = snapshot()
        for how in ("resume=true", "overwrite=true", "seed=0"):  # resume, rewrite, rerun
            second = run_train(*common, how)
            assert second.returncode == 1 and f"{job} is in use: " in second.stderr
            assert f" in process {first.pid} on {socket.gethostname()} since " in second.stderr
        assert snapshot() == before
        (tmp_path / "go").touch()
        wait_for_file(tmp_path / "kill.paused", first)
        pids = {p.name.split(".")[-2] for p in job.glob("events.out.tfevents.*")}
        assert pids == {str(first.pid)} and len(read_record(job)["history"]) == 2
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=60)
    assert read_record(job)["status"] == "running" and holder(job)["pid"] == first.pid
    resumed = run_train(*common, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_record(job)["status"] == "ok" and len(read_record(job)["history"]) == 3


def test_the_console_filter_passes_the_studys_lines_and_each_real_warning_once(tmp_path,
                                                                              monkeypatch):
    """Issue #34, on a cluster too: a requeued job's earlier lines; ranks but 0 errors only."""
    import logging

    from bnstudy.console import StudyLines, shown_before

    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(StudyLines, "shown", set())
    monkeypatch.setattr(StudyLines, "earlier", set())

    def shown(name: str, level: int, message: str) -> bool:
        return StudyLines().filter(logging.LogRecord(name, level, __file__, 1, message, (), None))

    assert shown("bnstudy", logging.INFO, "mnist-bn-sgd-seed0: training 1 epochs into x")
    assert not shown("lightning.pytorch.utilities.rank_zero", logging.INFO, "GPU available: …")
    subset = "cifar-10-batches-py: data_batch_1 do(es) not match the official CIFAR-10 checksums"
    assert shown("bnstudy.data", logging.WARNING, subset)
    assert not shown("bnstudy.data", logging.WARNING, subset)  # a sweep's next job: not again
    assert shown("py.warnings", logging.WARNING, "UserWarning: something real")
    for routine in ("…: Checkpoint directory /x exists and is not empty.",
                    "slurm.py:204: PossibleUserWarning: The `srun` command is available on your "
                    "system but is not used. HINT: If your intention is to run Lightning",
                    "fit_loop.py:321: The number of training batches (11) is smaller than the "
                    "logging interval Trainer(log_every_n_steps=50). Set a lower value"):
        assert not shown("py.warnings", logging.WARNING, routine)
    assert shown("bnstudy", logging.ERROR, "x failed: …") and \
        shown("bnstudy", logging.ERROR, "x failed: …")  # errors every time
    checksums = "data/cifar-10-batches-py does not match the official checksums: a subset"
    (tmp_path / "train.log").write_text(
        f"[2026-12-04 23:00:00,000][bnstudy][INFO] - cifar10-bn: training\n"
        f"[2026-12-04 23:00:01,000][bnstudy][WARNING] - {checksums}\n")
    shown_before(tmp_path / "train.log")
    assert not shown("bnstudy.data", logging.WARNING, checksums)
    assert not shown("bnstudy.data", logging.WARNING, f"{checksums}\nits second line")
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.setenv(name, "1")
        assert shown("bnstudy", logging.ERROR, "x failed: …"), name
        assert not shown("bnstudy", logging.INFO, "x") and not shown("x", logging.WARNING, "new")
        monkeypatch.setenv(name, "0")
    assert shown("bnstudy", logging.INFO, "x")


def test_lightnings_noise_and_a_writer_threads_oserror_stay_off_the_console(tiny_data, monkeypatch,
                                                                           caplog, capsys):
    """Lightning's advertisement; its workers warning, said with many cores (the study's tensors
    in memory need none); TensorBoard's writer on a full disk (the run reports it again)."""
    import errno
    import logging
    import threading
    import warnings

    from lightning.pytorch.trainer.connectors import data_connector

    from bnstudy.console import ignore_known_warnings, quiet_console, thread_exception

    def hook_args(error):
        return threading.ExceptHookArgs((type(error), error, None, threading.current_thread()))

    with caplog.at_level(logging.INFO, logger="py.threads"):
        thread_exception(hook_args(OSError(errno.ENOSPC, "No space left on device")))
    assert capsys.readouterr().err == "" and "No space left on device" in caplog.text
    thread_exception(hook_args(ValueError("a bug")))  # any other error: Python's traceback
    assert "ValueError: a bug" in capsys.readouterr().err
    caplog.clear()
    quiet_console()
    adverts = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        adverts.info("💡 Tip: For seamless cloud logging and experiment tracking, try …")
        adverts.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    monkeypatch.setattr(data_connector, "suggested_max_num_workers", lambda devices: 15)
    said = {}
    for ignored in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if ignored:
                ignore_known_warnings()
            tiny_fit(tiny_data, limit_train_batches=1, limit_val_batches=1)
        said[ignored] = [w for w in caught if "does not have many workers" in str(w.message)]
    assert said[False] and not said[True]
