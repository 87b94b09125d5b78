"""The benchmarks of `python -m bnstudy.bench`: what they run and that their baselines train
the very same runs (their timings are measured by running them, not here)."""

import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from helpers import REPO, compose_config, run_module, write_job

from bnstudy.bench import epochs, profile, study
from bnstudy.bench.plain import minibatches, train_epoch
from bnstudy.bench.profile import PHASES
from bnstudy.bench.study import NO_HALLUCINATIONS, BenchError, study_overrides, timed, unlike_plain
from bnstudy.data import EpochBatchSampler


def test_study_overrides_add_to_the_default_study_replacing_its_keys():
    assert study_overrides([]) == ["hydra/launcher=parallel", "dataset=mnist,cifar10",
                                   "norm=bn,none", "optim=sgd,adam", NO_HALLUCINATIONS]
    assert study_overrides(["dataset=mnist", "hydra/launcher=basic", "seed=0,1"]) == [
        "norm=bn,none", "optim=sgd,adam", "dataset=mnist", "hydra/launcher=basic", "seed=0,1",
        NO_HALLUCINATIONS]
    assert NO_HALLUCINATIONS not in study_overrides([], hallucinations=True)
    assert study_overrides(["callbacks.hallucinations.steps=5"]).count(NO_HALLUCINATIONS) == 0


def test_the_plain_process_takes_only_studies_it_reproduces():
    assert unlike_plain(compose_config().trainer) == []
    cfg = compose_config("trainer.gradient_clip_val=1", "trainer.accumulate_grad_batches=2",
                         "trainer.limit_train_batches=1.0", "trainer.devices='1'")
    assert unlike_plain(cfg.trainer) == ["trainer.gradient_clip_val=1",
                                         "trainer.accumulate_grad_batches=2"]


def test_the_plain_minibatches_are_the_studys_sampler_ones():
    # a last minibatch of one sample is dropped, as the study drops it (not at batch size 1)
    sizes = ((101, 50), (100, 50), (1, 50), (7, 1))
    for (n, batch_size), epoch in itertools.product(sizes, (0, 1)):
        sampler = EpochBatchSampler(n, batch_size, shuffle=True, seed=3)
        sampler.set_epoch(epoch)
        assert [b.tolist() for b in minibatches(n, batch_size, 3, epoch)] == \
            [b.tolist() for b in sampler]
    assert [len(b) for b in minibatches(101, 50, 3, 0)] == [50, 50]


def test_the_runs_a_tuned_study_trained_are_its_trials_then_its_reruns(tmp_path):
    reruns = [write_job(tmp_path, [0.5], norm=norm) for norm in ("bn", "none")]
    trials = [write_job(tmp_path / "search" / cell, [0.5], seed=n) for cell in
              ("mnist-bn-sgd", "mnist-none-sgd") for n in (0, 1)]
    assert [job for job, _ in study.trained(tmp_path)] == trials + reruns
    assert [job for job, _ in study.trained(tmp_path / "search" / "mnist-bn-sgd")] == trials[:2]


def test_a_plain_epoch_stops_at_a_non_finite_loss_as_the_studys_guard_does():
    import torch

    x, y, batches = torch.randn(8, 4), torch.zeros(8, dtype=torch.long), torch.arange(8).split(4)
    for weight, diverged in ((0.1, False), (float("nan"), True)):
        net = torch.nn.Linear(4, 2)
        torch.nn.init.constant_(net.weight, weight)
        row = train_epoch(net, torch.optim.SGD(net.parameters(), lr=0.1), x, y, batches)
        assert row.get("diverged", False) is diverged and ("train/loss" in row) is not diverged


def test_timed_counts_its_commands_cpu_alone_and_a_failure_is_a_bench_error(tmp_path):
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    wall, cpu = timed([[sys.executable, "-c", burn]] * 2, tmp_path / "log")
    assert cpu >= 0.6 and wall >= 0.3
    wall, cpu = timed([[sys.executable, "-c", "pass"]], tmp_path / "log")
    assert cpu < 0.5  # not the earlier commands' too
    with pytest.raises(BenchError, match=r"failed \(exit 3\):\nsaid\n"):
        timed([[sys.executable, "-c", "pass"],
               [sys.executable, "-c", "print('said'); raise SystemExit(3)"]], tmp_path / "log")


def test_the_study_benchmark_pairs_each_round_and_says_medians_ratios_and_the_difference(
        tmp_path, monkeypatch, capsys):
    """Its timing and arithmetic, each side's processes faked: the study's seconds, the plain
    processes' commands (threads, shares) and their final accuracies."""
    cores = os.cpu_count()
    walls = {"study": [10.0, 14.0], "plain 2x1": [5.0, 6.0], f"plain 1x{cores}": [8.0, 9.0]}
    names, commands = ["a", "b", "c", "d"], []  # d diverged

    def timed(cmds, log):
        commands.append(cmds)
        if "bnstudy.train" in cmds[0]:
            side = "study"
        else:
            side = f"plain {len(cmds)}x{cmds[0][cmds[0].index('--threads') + 1]}"
            for cmd in cmds:  # each process writes its share's runs
                share, of = map(int, cmd[cmd.index("--share") + 1].split("/"))
                runs = [{"history": [{"val/acc": {"a": 0.9, "b": 0.82, "c": 0.7}[name]}]}
                        if name != "d" else {"history": [], "diverged": True}
                        for name in names[share::of]]
                Path(cmd[5]).write_text(json.dumps({"runs": runs}))
        wall = walls[side].pop(0)
        return wall, wall / 2

    records = [(tmp_path / name, SimpleNamespace(final_val_acc=acc, status=status))
               for name, acc, status in zip(names, (0.9, 0.8, 0.7, 0.1), ["ok"] * 3 + ["diverged"],
                                            strict=True)]
    monkeypatch.setattr(study, "timed", timed)
    monkeypatch.setattr(study, "plain_runs", lambda jobs: [{"name": n} for n in names])
    monkeypatch.setattr(study, "workers", lambda jobs: 2)
    monkeypatch.setattr(study, "trained", lambda sweep: records)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    study.main(["seed=0"])
    out = capsys.readouterr().out
    assert "round 1: study 10.0 s (CPU 5.0 s), plain 2x1 5.0 s (CPU 2.5 s), plain " \
        f"1x{cores} 8.0 s (CPU 4.0 s) (load" in out
    assert f"order: plain 2x1 > plain 1x{cores} > study)\n4 runs, medians of 2 rounds" in out
    lines = [re.sub(r"(\S) +", r"\1 ", line) for line in out.splitlines()]  # columns: 1 space
    assert "  the study (2 jobs at a time) 12.0 s; CPU 6.0 s" in lines
    assert "  2 plain process(es), 1 thread each 5.5 s; CPU 2.8 s study / it 2.17 (range " \
        "2.00-2.33); CPU 2.17 (range 2.00-2.33)" in lines
    assert f"  1 plain process, {cores} threads (former baseline) 8.5 s; CPU 4.2 s study / it " \
        "1.40 (range 1.25-1.56); CPU 1.40 (range 1.25-1.56)" in lines
    assert out.endswith("differ by at most 2.00 points (1 not compared: 1 diverged on both "
                        "sides, 0 on one)\n")  # b: 80 % against 82 %; d stopped on both
    plain = [c for c in commands if "bnstudy.train" not in c[0]]
    assert [[c[6:] for c in cmds] for cmds in plain[:2]] == [
        [["--threads", "1", "--share", "0/2"], ["--threads", "1", "--share", "1/2"]],
        [["--threads", str(cores), "--share", "0/1"]]]
    assert not list(tmp_path.glob("bnstudy-bench-study-*"))  # its folder removed


def test_the_epoch_benchmark_pairs_each_plain_epoch_with_the_fits_next(monkeypatch, capsys):
    clock = iter([0.0, 2.0, 3.0, 7.0, 8.0, 13.0])  # set-up 2 s, then epochs of 4 s and 5 s
    monkeypatch.setattr(epochs.time, "perf_counter", lambda: next(clock))
    timer = epochs.Alternate(SimpleNamespace(epoch=lambda epoch: 1.0 + epoch))
    for epoch in (0, 1):
        timer.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), None)
    timer.end_project_epoch()
    assert (timer.setup_s, timer.plain, timer.project) == (2.0, [1.0, 2.0], [4.0, 5.0])
    other = SimpleNamespace(timed="Classifier, no logger", plain=[1.0], project=[3.0])
    epochs.print_pairs([timer, other], "bnstudy (Lightning)", "bnstudy", 1000)
    assert capsys.readouterr().out.splitlines()[1:] == [
        "plain PyTorch loop     1.000 s/epoch       1000 samples/s  (epochs: 1.000, 2.000, 1.000)",
        "bnstudy (Lightning)    4.000 s/epoch        250 samples/s  (epochs: 4.000, 5.000, 3.000)",
        "ratio bnstudy / plain (median of 3 paired epochs): 3.00  (range 2.50-4.00)"]


def test_the_profile_counts_a_jobs_compose_in_it_and_the_sweepers_apart(monkeypatch):
    """A compose during the sweeper's check is the check's; one after it, the next job's."""
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(profile.time, "perf_counter", lambda: next(clock))

    class Hydra:
        def check(self):
            self.compose()

        def compose(self):
            pass

        def run_job(self):
            self.fit()

        def fit(self):
            pass

    timers, hydra = profile.Timers(), Hydra()
    copy = ModuleType("copied")  # `from x import run_job`, made before
    copy.run_job = Hydra.run_job
    monkeypatch.setitem(sys.modules, "copied", copy)
    for attribute, label in (("check", profile.CHECK), ("compose", profile.COMPOSE),
                             ("run_job", "job"), ("fit", "fit")):
        timers.wrap(Hydra, attribute, label)
    assert copy.run_job is Hydra.run_job  # the copy timed too
    hydra.check()  # 0-3: the check, 1-2 its compose
    for _ in range(2):
        hydra.compose()  # 4-5, then 10-11
        hydra.run_job()  # 6-9, its fit 7-8
    assert timers.sweep == 3.0
    assert {job: dict(seconds) for job, seconds in timers.seconds.items()} == {
        1: {profile.COMPOSE: 1.0, "job": 3.0, "fit": 1.0},
        2: {profile.COMPOSE: 1.0, "job": 3.0, "fit": 1.0}}


@pytest.mark.slow
def test_the_plain_processes_train_exactly_the_runs_of_the_sweep(tiny_sweep, tmp_path):
    """Split over two processes on one thread each, as the sweep's jobs, the plain loop gives
    each job's recorded curves and test figures; and it loads nothing of the framework."""
    runs = study.plain_runs(study.trained(tiny_sweep.dir))
    assert [run["name"] for run in runs] == [r["run_name"] for r in tiny_sweep.records.values()]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    check = ("; print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', "
             "'pytorch_lightning', 'hydra', 'omegaconf', 'tensorboard', 'torchmetrics'}))")
    for command in study.plain_commands(tmp_path / "runs.json", tmp_path / "out", 2, 1):
        code = f"import sys; from bnstudy.bench import plain; plain.main(sys.argv[1:]){check}"
        proc = subprocess.run([sys.executable, "-c", code, *command[4:]], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]
    plain = study.plain_results(tmp_path / "out", 2)
    for ours, record in zip(plain, tiny_sweep.records.values(), strict=True):
        for mine, theirs in zip(ours["history"], record["history"], strict=True):
            for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
                assert mine[key] == pytest.approx(theirs[key], abs=1e-6), (ours["name"], key)
        assert ours["test"] == pytest.approx(record["test"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("study", "runs"), [
    ((), 2), (("experiment=tuned", "hydra.sweeper.n_trials=2"), 8)])  # 2 x 2 trials, 2 x 2 re-runs
def test_study_benchmark_times_a_tiny_study_against_its_plain_processes(study, runs, tiny_data):
    proc = subprocess.run(
        [sys.executable, "-m", "bnstudy.bench", "study", "--repeats", "2", "--no-former",
         "dataset=mnist", "optim=sgd", "seed=0", "trainer.max_epochs=2", *study,
         f"paths.data_dir={tiny_data}"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    out, seconds = proc.stdout, r"[\d.]+ s \(CPU [\d.]+ s\)"
    assert proc.returncode == 0, proc.stderr[-3000:] + out[-3000:]
    assert re.findall(rf"^round (\d): study {seconds}, plain 2x1 {seconds} "
                      r"\(load [\d.]+; order: (.*)\)$", out, re.M) == [
        ("1", "study > plain 2x1"), ("2", "plain 2x1 > study")], out  # the former baseline
    # (one process, a thread per core) left out: the fast test above runs it
    assert "(former baseline)" not in out and out.rstrip().endswith(
        "differ by at most 0.00 points"), out  # the very same runs (a tuned one's trials too)
    assert f"\n{runs} runs, medians of 2 rounds" in out, out


@pytest.mark.slow
def test_a_killed_study_benchmark_stops_its_study_and_removes_its_folder(tiny_data, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnstudy.bench", "study", "--no-former", "dataset=mnist",
         "optim=sgd", "trainer.max_epochs=200", f"paths.data_dir={tiny_data}"], cwd=REPO, text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("bnstudy-bench-study-*/study0/*/.hydra")):  # a job started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.terminate()
    assert proc.wait(timeout=30) == 143  # not once its study ends
    time.sleep(2)  # a job left running would go on writing
    assert not list(tmp_path.glob("bnstudy-*"))
    assert subprocess.run(["pgrep", "-f", str(tmp_path)]).returncode == 1  # no process of it


@pytest.mark.slow
def test_profile_and_epoch_benchmarks_time_every_phase(tiny_data):
    args = ["trainer.max_epochs=2", f"paths.data_dir={tiny_data}"]
    prof, per_epoch = (subprocess.run([sys.executable, "-m", "bnstudy.bench", *command, *args],
                                      cwd=REPO, capture_output=True, text=True, timeout=600)
                       for command in (["profile", "--jobs", "2", "threads=1"],
                                       ["--repeats", "1", "--floor"]))
    assert prof.returncode == 0 and per_epoch.returncode == 0, prof.stderr + per_epoch.stderr
    assert "not timed" not in prof.stdout  # every phase found in this version of Lightning
    console = prof.stdout + prof.stderr
    assert "ok, val acc" in console and "Browse" not in console and "Report (" not in console
    for *_, label, _ in PHASES[:-1]:
        assert re.search(rf"^{re.escape(label)}\s+[\d.]+", prof.stdout, re.M), label
    epoch = re.search(r"^epoch: training steps and validation +([\d.]+) +([\d.]+) ",
                      prof.stdout, re.M)
    assert float(epoch[2]) == pytest.approx(1000 * float(epoch[1]) / 2, abs=0.5 + 1000 * 5e-4)
    assert "GPU available" not in per_epoch.stdout + per_epoch.stderr  # the benchmark's lines only
    for short in ("bnstudy", "bare"):
        assert re.search(rf"^ratio {short} / plain \(median of 2 paired epochs\): [\d.]+",
                         per_epoch.stdout, re.M), per_epoch.stdout


NO_ROUND = "error: --repeats 0: it times 1 round or more, e.g. --repeats 2"


@pytest.mark.parametrize("args,said", [
    (["--repeats", "0"], NO_ROUND),
    (["study", "--repeats", "0"], NO_ROUND),
    (["stduy"], "'stduy' is no benchmark (study, profile) and no override KEY=VALUE"),
    (["foo=1"], "foo: no such setting."),
    (["dataset=imagenet"], "dataset has no option imagenet, so nothing was run."),
    (["paths.data_dir=nowhere", "dataset.datamodule.download=false"], "files not found"),
    (["profile", "--jobs", "0"], "--jobs 0: it profiles 1 job or more"),
    (["study", "outputs"], "'outputs' is no benchmark (study, profile) and no override"),
    (["profile", "dataset=imagenet"], "dataset=imagenet: dataset has no option imagenet, so "
                                      "nothing was run. Its options: cifar10, fashion_mnist,"),
    (["study", "dataset=mnist,imagenet"], "dataset has no option imagenet, so nothing was run."),
    (["study", "logger=[csv,tensorbord]"], "logger has no option tensorbord, so nothing was run. "
                                           "Did you mean tensorboard?"),
])
def test_a_benchmark_given_a_mistake_says_it_in_one_paragraph(args, said, tmp_path, monkeypatch):
    """Each before anything is timed: argparse's usage and one line or paragraph (exit 2), no
    traceback, and no benchmark's folder left in the temporary directory."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a benchmark's folder goes
    proc = run_module("bnstudy.bench", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert said in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("bnstudy-*"))
