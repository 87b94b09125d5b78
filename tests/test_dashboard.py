"""bnstudy.dashboard's pieces; slow: what a real `tensorboard` server and the console show."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, read_run, scalars, tiny_fit

# -- fast: the dashboard's pieces ----------------------------------------------------------


def hparams_in(log_dir: Path, kind: str = "experiment"):
    """The HParams plugin's `kind` (experiment, session_start_info) in the events of `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    content = EventAccumulator(str(log_dir)).Reload().PluginTagToContent(metadata.PLUGIN_NAME)
    tag = getattr(metadata, f"{kind.upper()}_TAG")
    return getattr(metadata, f"parse_{kind}_plugin_data")(content[tag])


def domain(info) -> list:
    return [v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
            for v in info.domain_discrete.values]


def test_comparison_layout_has_a_category_per_pair_whose_charts_match_only_its_tags(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2
    from torch.utils.tensorboard import SummaryWriter

    from bnstudy.dashboard import COMPARED, compare_tag, comparison_layout, comparison_summary

    pairs = ["mnist-sgd", "mnist-adam", "cifar10-sgd", "fashion_mnist-sgd"]
    layout = comparison_layout(pairs)
    assert list(layout) == ["mnist · sgd", "mnist · adam", "cifar10 · sgd", "fashion_mnist · sgd"]
    tags = [compare_tag(p, m) for p in pairs for m in COMPARED]
    tags += [t + "_x" for t in tags] + ["val/acc", "train/loss", "compare/mnist-sgd"]
    for pair, (title, charts) in zip(pairs, layout.items(), strict=True):
        for metric, (chart_title, (kind, regexes)) in zip(COMPARED, charts.items(), strict=True):
            assert kind == "Multiline" and chart_title == f"{title} · {metric}"
            # the plugin keeps a run's tag when `re.match(regex, tag)`
            assert [t for t in tags if any(re.match(r, t) for r in regexes)] == \
                [compare_tag(pair, metric)]
    with SummaryWriter(str(tmp_path)) as writer:  # what the Custom Scalars plugin reads
        writer.file_writer.add_summary(comparison_summary(["cifar10-adam"], closed=True))
    (category,) = read_run(tmp_path)[1]
    assert category.title == "cifar10 · adam" and [list(c.multiline.tag) for c in category.chart] \
        == [[f"^compare/cifar10-adam/{m}$"] for m in ("train_loss", "val_loss", "val_acc")]
    assert [c.title for c in category.chart] == list(comparison_layout(["cifar10-adam"])[
        "cifar10 · adam"]) and category.closed  # a sweep's: no run under BROWSE_URL's filter
    assert not any(c.closed for c in layout_pb2.Layout.FromString(comparison_summary(
        ["mnist-sgd"]).value[0].tensor.string_val[0]).category)  # a single run's: open


def test_a_session_is_named_after_its_run_and_the_experiment_lists_what_varies_first(tmp_path):
    """Numbers as numbers; the experiment: what varies first, marked, then the study choices."""
    from tensorboard.plugins.hparams import api_pb2
    from torch.utils.tensorboard import SummaryWriter

    from bnstudy.dashboard import METRICS, tb_value, write_session, write_sweep_experiment

    assert [tb_value(v) for v in (0, 64, -1, 0.001, True, None, [16, 32], "bn")] == \
        [0.0, 64.0, -1.0, 0.001, True, "None", "[16, 32]", "bn"]
    assert all(type(tb_value(v)) is float for v in (0, 64, 1.0))  # one type a domain
    run = tmp_path / "3_mnist-none-adam-seed1"
    with SummaryWriter(str(run)) as writer:
        write_session(writer, {"dataset": "mnist", "seed": 1, "lr": 0.001, "batch_size": 64,
                               "trainer.gradient_clip_val": None})
    info = hparams_in(run, "session_start_info")
    assert info.group_name == "3_mnist-none-adam-seed1"  # the table's trial ID, not a hash
    assert {k: v.WhichOneof("kind") for k, v in info.hparams.items()} == {
        "dataset": "string_value", "seed": "number_value", "lr": "number_value",
        "batch_size": "number_value", "trainer.gradient_clip_val": "string_value"}
    assert info.hparams["seed"].number_value == 1 and info.hparams["batch_size"].number_value == 64
    base = {"dataset": "mnist", "model": "mlp", "depth": 1, "norm": "bn", "optim": "sgd",
            "seed": 0, "lr": 0.01, "batch_size": 64, "hidden_dim": 256, "max_epochs": 3,
            "trainer.gradient_clip_val": None}
    runs = [base | {"norm": norm, "batch_size": bs, "lr": lr, "trainer.gradient_clip_val": clip}
            for norm in ("bn", "none") for bs in (8, 128, 32) for lr, clip in
            ((0.01, None), (0.1, 1.0))]
    runs.append(base | {"norm": "none", "optim.optimizer.momentum": 0.9})  # only in one run
    write_sweep_experiment(tmp_path, runs)  # (tensorboard's own writer: no torch)
    exp = hparams_in(tmp_path)
    infos = {i.name: i for i in exp.hparam_infos}
    varying = ["norm", "lr", "batch_size", "trainer.gradient_clip_val",
               "optim.optimizer.momentum"]
    assert list(infos) == varying + ["dataset", "optim", "seed"]
    assert [i.name for i in exp.hparam_infos if i.differs] == varying
    domains = {"norm": ["bn", "none"], "batch_size": [8, 32, 64, 128], "lr": [0.01, 0.1],
               "trainer.gradient_clip_val": ["1.0", "None"], "seed": [0], "dataset": ["mnist"]}
    assert {name: domain(infos[name]) for name in domains} == domains  # numbers in order
    assert infos["batch_size"].type == infos["lr"].type == api_pb2.DATA_TYPE_FLOAT64
    assert [m.name.tag for m in exp.metric_infos] == list(METRICS) == \
        ["val/acc", "val/loss", "test/acc", "test/loss"]
    write_sweep_experiment(tmp_path / "single", [dict(  # a single run: the study choices
        dataset="cifar10", norm="none", optim="adam", seed=3, lr=0.001, depth=2)])
    assert [(i.name, i.differs, domain(i)) for i in hparams_in(tmp_path / "single")
            .hparam_infos] == [("dataset", False, ["cifar10"]), ("norm", False, ["none"]),
                               ("optim", False, ["adam"]), ("seed", False, [3])]


@pytest.mark.slow
def test_comparison_curves_are_lightnings_curves_point_for_point(tiny_data, tmp_path):
    """Validating every other epoch, twice an epoch: no stale copies, none from the sanity check."""
    from bnstudy.callbacks import ComparisonCurves
    from bnstudy.dashboard import COMPARED, compare_tag

    tiny_fit(tiny_data, tmp_path, callbacks=[ComparisonCurves("mnist", "sgd")], max_epochs=3,
             check_val_every_n_epoch=2, val_check_interval=0.5, num_sanity_val_steps=2)
    (category,) = read_run(tmp_path)[1]  # a single run's: open
    assert category.title == "mnist · sgd" and not category.closed
    for metric in COMPARED:
        ours, lightnings = scalars(tmp_path, compare_tag("mnist-sgd", metric)), \
            scalars(tmp_path, metric)
        assert len(lightnings) == (3 if metric == "train/loss" else 2)  # epoch 1's, twice
        assert ours == lightnings, metric


# -- the sweep's mean over seeds: the `+mean` runs ------------------------------------------

def mean_record(dataset: str, norm: str, optim: str, seed: int, accs: list[float],
                status: str = "ok", swept: str = "") -> dict:
    """A job's record: a history row (10 steps) per val accuracy in `accs`, train loss 1 - acc."""
    history = [{"epoch": e, "step": 10 * (e + 1), "train/loss": 1 - acc, "train/acc": acc,
                "val/loss": 2 * (1 - acc), "val/acc": acc} for e, acc in enumerate(accs)]
    return {"status": status, "run_name": f"{dataset}-{norm}-{optim}-seed{seed}{swept}",
            "hparams": {"dataset": dataset, "norm": norm, "optim": optim, "seed": seed},
            "history": history}


def mean_job(sweep: Path, *args, events: bool = False, **kwargs) -> Path:
    """`mean_record`'s next job in `sweep`; with `events`, its compared curves and layout."""
    from torch.utils.tensorboard import SummaryWriter

    from bnstudy.dashboard import COMPARED, compare_tag, comparison_summary, pair_name

    record = mean_record(*args, **kwargs)
    number = sum(p.name[0].isdigit() for p in sweep.iterdir()) if sweep.is_dir() else 0
    job = sweep / f"{number}_{record['run_name']}"
    job.mkdir(parents=True)
    if events:
        pair = pair_name(record["hparams"]["dataset"], record["hparams"]["optim"])
        with SummaryWriter(str(job)) as writer:
            writer.file_writer.add_summary(comparison_summary([pair], closed=True))
            for row, metric in itertools.product(record["history"], COMPARED):
                writer.add_scalar(compare_tag(pair, metric), row[metric], row["step"] - 1)
    (job / "metrics.json").write_text(json.dumps(record))
    return job


def test_mean_curves_hold_each_lines_mean_and_std_over_its_finished_seeds():
    from bnstudy.dashboard import mean_curves
    from bnstudy.records import RunRecord

    bn = [[0.5, 0.7], [0.6, 0.9], [0.4, 0.8]]
    records = [mean_record("mnist", "bn", "sgd", seed, accs) for seed, accs in enumerate(bn)]
    records += [mean_record("mnist", "none", "sgd", 0, [0.3, 0.4]),
                mean_record("mnist", "none", "sgd", 1, [0.35]),  # stopped after one epoch
                mean_record("mnist", "bn", "sgd", 3, [0.1, float("nan")], status="diverged"),
                mean_record("mnist", "bn", "sgd", 4, [0.99], status="running"),
                mean_record("mnist", "bn", "sgd", 0, [0.2, 0.3], swept="-lr=0.1"),
                mean_record("cifar10", "bn", "adam", 0, [0.25, 0.3])]
    curves = mean_curves([RunRecord(**r) for r in records])
    assert sorted(curves) == ["bn", "bn-lr=0.1", "none"]  # never pooled across settings
    assert sorted(curves["bn"]) == ["cifar10-adam", "mnist-sgd"]
    acc = np.array(bn)
    for metric, values in (("val/acc", acc), ("train/loss", 1 - acc), ("val/loss", 2 - 2 * acc)):
        got = curves["bn"]["mnist-sgd"][metric]
        assert [(step, n) for step, _, _, n in got] == [(9, 3), (19, 3)]  # the curves' steps
        assert np.allclose([m for _, m, _, _ in got], values.mean(0))
        assert np.allclose([s for _, _, s, _ in got], values.std(0, ddof=1))
    # an epoch's missing or non-finite value in an ok run (no validation, an overflow) is left out
    gaps = [mean_record("mnist", "bn", "sgd", seed, [0.5, value]) for seed, value in
            enumerate([0.7, float("inf"), 0.7])]
    gaps[2]["history"][1]["val/acc"] = None
    got = mean_curves([RunRecord(**r) for r in gaps])["bn"]["mnist-sgd"]["val/acc"]
    assert [(step, mean, n) for step, mean, _, n in got] == [(9, 0.5, 3), (19, 0.7, 1)]
    # a sweep with no finished run yet (every trial of a tuned cell failed) has no curves
    assert mean_curves([RunRecord(**mean_record("mnist", "bn", "sgd", 0, [0.5], "failed"))]) == {}
    assert curves["none"]["mnist-sgd"]["val/acc"] == [
        (9, pytest.approx(0.325), pytest.approx(np.std([0.3, 0.35], ddof=1)), 2),
        (19, 0.4, 0.0, 1)]  # at each epoch the runs that reached it; one run: no spread
    assert curves["bn-lr=0.1"]["mnist-sgd"]["val/acc"] == [(9, 0.2, 0.0, 1), (19, 0.3, 0.0, 1)]


def test_each_refresh_replaces_what_tensorboard_shows_of_the_mean_runs(tmp_path, caplog):
    """A refresh waits for the one in progress; a failed one is a warning, not a job's failure."""
    from filelock import FileLock, Timeout
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from bnstudy.dashboard import mean_tag, refresh_mean_runs, refresh_sweep_view

    mean_job(tmp_path, "mnist", "bn", "sgd", 0, [0.5, 0.7])
    (tmp_path / "+mean").mkdir()
    with FileLock(tmp_path / "+mean" / ".lock"), pytest.raises(Timeout):
        refresh_mean_runs(tmp_path, timeout=0.2)
    assert not list((tmp_path / "+mean").glob("*/*"))
    mean_job(tmp_path, "mnist", "none", "sgd", 0, [0.4, 0.5])
    mean_job(tmp_path, "mnist", "bn", "sgd", 1, [0.6], status="running")
    assert refresh_mean_runs(tmp_path, timeout=0.2) == ["+mean/bn", "+mean/none"]
    (tmp_path / "2_mnist-bn-sgd-seed1" / "metrics.json").write_text(
        json.dumps(mean_record("mnist", "bn", "sgd", 1, [0.6, 0.9])))  # the job ends
    mean_job(tmp_path, "cifar10", "bn", "adam", 0, [0.3, 0.4], status="running")  # starts
    refresh_mean_runs(tmp_path)

    run = tmp_path / "+mean" / "bn"
    assert not (tmp_path / "multirun.yaml").exists()  # no sweep start known: dated now
    assert sorted(p.name for p in run.iterdir()) == [  # a new file each time, none half-written
        "events.out.tfevents.0000000001.mean", "events.out.tfevents.0000000002.mean"]
    scalars, categories = read_run(run)
    mean, std = np.mean([[0.5, 0.7], [0.6, 0.9]], 0), np.std([[0.5, 0.7], [0.6, 0.9]], 0, ddof=1)
    for part, values in (("mean", mean), ("lower", mean - std), ("upper", mean + std)):
        got = scalars[mean_tag("mnist-sgd", "val/acc", part)]  # the second refresh's points only
        assert [step for step, _ in got] == [9, 19] and np.allclose([v for _, v in got], values)
    # a category per pair of the sweep, in its order (a running job's pair too), with the seeds
    assert [c.title for c in categories] == ["mnist · sgd · mean ± std over seeds (bn 2, none 1)",
                                             "cifar10 · adam · mean ± std over seeds"]
    charts = categories[0].chart
    assert [c.title for c in charts] == ["mnist · sgd · train/loss", "mnist · sgd · val/loss",
                                         "mnist · sgd · val/acc"]
    assert [(s.value, s.lower, s.upper) for s in charts[2].margin.series] == [
        tuple(mean_tag("mnist-sgd", "val/acc", part) for part in ("mean", "lower", "upper"))]
    assert read_run(tmp_path / "+mean" / "none")[1] == categories  # the same layout
    assert not any(c.closed for c in categories)  # the first page's charts, open
    plan = tmp_path / "multirun.yaml"  # Hydra's, when the sweep started: the runs' date
    plan.write_text("{}")
    os.utime(plan, (1_700_000_000, 1_700_000_000))
    refresh_mean_runs(tmp_path)
    newest = sorted(run.glob("events.out.tfevents.*"))[-1]
    assert {e.wall_time for e in EventFileLoader(str(newest)).Load()} == {1_700_000_000}
    shutil.rmtree(tmp_path / "+mean")
    (tmp_path / "+mean").write_text("not a folder")  # not the job's failure:
    caplog.clear()
    refresh_sweep_view(tmp_path)
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert f"mean-over-seeds view in {tmp_path}/+mean was not updated" in warning.getMessage()


def test_a_tuned_sweeps_mean_runs_are_each_norms_kept_reruns(tmp_path):
    """Not a `+mean` run per candidate setting; nothing while the sweep still searches."""
    from bnstudy.dashboard import mean_tag, refresh_mean_runs

    jobs = {(norm, lr, seed): mean_job(tmp_path, "mnist", norm, "sgd", seed, [acc, acc + d],
                                       swept=f"-lr={lr}")
            for norm, lr, acc in (("bn", 0.1, 0.8), ("bn", 0.3, 0.2), ("none", 0.05, 0.6))
            for seed, d in ((0, 0.1), (1, 0.0))}
    tuning = tmp_path / "tuning.json"
    tuning.write_text(json.dumps({"cells": [{"candidates": []}]}))  # searching
    assert refresh_mean_runs(tmp_path) == []
    kept = [[jobs[norm, lr, s].name for s in (0, 1)] for norm, lr in (("bn", 0.1), ("none", 0.05))]
    tuning.write_text(json.dumps({"cells": [{"final_jobs": k} for k in kept]}))
    assert refresh_mean_runs(tmp_path) == ["+mean/bn", "+mean/none"]
    scalars, _ = read_run(tmp_path / "+mean" / "bn")
    assert np.allclose([v for _, v in scalars[mean_tag("mnist-sgd", "val/acc", "mean")]],
                       [0.8, 0.85])  # lr=0.1's seeds alone


def test_browse_url_opens_custom_scalars_on_the_mean_runs_alone():
    from bnstudy.dashboard import BROWSE_URL, TIMESERIES_URL

    page, *settings = urllib.parse.urlsplit(BROWSE_URL).fragment.split("&")
    settings = dict(s.split("=", 1) for s in settings)  # as TensorBoard's hash is read
    assert page == "custom_scalars" and settings["_smoothingWeight"] == "0"
    regex = re.compile(urllib.parse.unquote(settings["regexInput"]))  # the run list's filter
    runs = ["+mean/bn", "+mean/none", "+mean/bn-lr=0.1", "0_mnist-bn-sgd-seed0",
            "13_cifar10-none-adam-seed1-mean=1", "report"]
    assert [run for run in runs if regex.search(run)] == runs[:3]
    # Time Series colours runs by norm, the jobs' and the mean runs' alike
    group = re.compile(urllib.parse.parse_qs(urllib.parse.urlsplit(TIMESERIES_URL).query)[
        "runColorGroup"][0].removeprefix("regex:"))
    assert [group.search(run).groups() for run in runs[:5]] == \
        [("bn",), ("none",), ("bn",), ("bn",), ("none",)]
    assert f"<{TIMESERIES_URL}>" in (REPO / "README.md").read_text()  # the URL the README gives


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["true", "false"], ids=["rustboard", "python"])
def test_tensorboard_opens_on_bn_against_none_over_seeds_at_any_number_of_runs(load_fast, tmp_path):
    """56 runs and their `+mean` runs, either loader; a job that ends meanwhile moves the mean."""
    from bnstudy.dashboard import BROWSE_URL, mean_tag, refresh_mean_runs

    (tmp_path / "multirun.yaml").write_text("{}")  # as Hydra writes it when a sweep starts
    rng = np.random.default_rng(0)
    accs = {key: rng.uniform(0.1, 0.9, 3).round(4) for key in itertools.product(
        ("mnist", "cifar10"), ("bn", "none"), ("sgd", "adam"), range(8))}

    def add(*seeds: int) -> None:  # seed by seed
        for seed, ((dataset, norm, optim, s), values) in itertools.product(seeds, accs.items()):
            if s == seed:
                mean_job(tmp_path, dataset, norm, optim, s, list(values), events=True)
    add(*range(7))
    assert refresh_mean_runs(tmp_path) == ["+mean/bn", "+mean/none"]

    def series(url: str, run: str, pair: str) -> dict:
        tags = [mean_tag(pair, "val/acc", part) for part in ("mean", "lower", "upper")]
        data = get_json(f"{url}/data/plugin/custom_scalars/scalars?" + urllib.parse.urlencode(
            {"run": run, "tag": "|".join(f"({re.escape(t)})" for t in tags)}))  # the page's
        return {t.rsplit("/", 1)[1]: [(e[1], e[2]) for e in data["tag_to_events"].get(t, [])]
                for t in tags}

    def shows(url: str, seeds: int, pairs=("cifar10-adam",)) -> bool:
        """Both mean runs hold each pair's mean ± std over `seeds` seeds at its 3 epochs."""
        for pair, norm in itertools.product(pairs, ("bn", "none")):
            dataset, optim = pair.split("-")
            values = np.array([accs[dataset, norm, optim, s] for s in range(seeds)])
            mean, std = values.mean(0), values.std(0, ddof=1)
            got = series(url, f"+mean/{norm}", pair)
            want = {"mean": mean, "lower": mean - std, "upper": mean + std}
            if any([s for s, _ in got[part]] != [9, 19, 29] or
                   not np.allclose([v for _, v in got[part]], want[part]) for part in want):
                return False
        return True

    with tensorboard_server(tmp_path, lambda url: shows(url, 7), f"--load_fast={load_fast}",
                            log=tmp_path.parent / f"tensorboard-{load_fast}.log") as url:
        runs = get_json(f"{url}/data/runs")  # by start: the mean runs first (first colours)
        assert len(runs) == 58 and runs[:2] == ["+mean/bn", "+mean/none"]
        regex = re.compile(urllib.parse.unquote(BROWSE_URL.split("regexInput=")[1]))  # its filter
        assert sorted(run for run in runs if regex.search(run)) == ["+mean/bn", "+mean/none"]
        layout = get_json(f"{url}/data/plugin/custom_scalars/layout")["category"]
        pairs = ["mnist · sgd", "mnist · adam", "cifar10 · sgd", "cifar10 · adam"]
        assert [c["title"] for c in layout] == \
            [f"{p} · mean ± std over 7 seed(s) each" for p in pairs] + pairs
        for category in layout[:4]:
            assert [len(chart["margin"]["series"]) for chart in category["chart"]] == [1, 1, 1]
        assert shows(url, 7, [p.replace(" · ", "-") for p in pairs])

        add(7)  # eight more jobs end while the server runs
        refresh_mean_runs(tmp_path)
        wait_for(lambda: shows(url, 8), 60, lambda: series(url, "+mean/bn", "cifar10-adam"))
        wait_for(lambda: get_json(f"{url}/data/plugin/custom_scalars/layout")["category"][0][
            "title"] == "mnist · sgd · mean ± std over 8 seed(s) each", 30, lambda: "layout")
        # every job's own curves are still there, one run each
        tags = get_json(f"{url}/data/plugin/scalars/tags")
        jobs = {run: run.split("_", 1)[1].split("-") for run in tags if run[0].isdigit()}
        assert len(jobs) == 64 and all(f"compare/{dataset}-{optim}/val_acc" in tags[run]
                                       for run, (dataset, _, optim, _) in jobs.items())


# -- slow: a real sweep, its console and the real TensorBoard server ---------------------

JOBS = 8
STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]")


def get_json(url: str, body: dict | None = None, timeout: float = 10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only
    with opener.open(request, timeout=timeout) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def tensorboard_server(logdir: Path, ready, *flags: str, log: Path):
    """The URL of a real `tensorboard --logdir <logdir>` on 127.0.0.1, once `ready(url)`."""
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [Path(sys.executable).with_name("tensorboard"), "--logdir", str(logdir),
             "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1", *flags],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and ready(url), 90,
                 lambda: f"TensorBoard not ready:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(condition, seconds: float, why) -> None:
    """Until `condition()` (an OSError counts as false); fails after `seconds` with `why()`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except OSError:  # not listening yet
            pass
        assert time.monotonic() < deadline, why()
        time.sleep(0.5)


@pytest.fixture(scope="module")
def tensorboard(tiny_sweep, tmp_path_factory):
    """A `tensorboard --logdir <sweep>`, once it has read every run and the HParams experiment."""
    sweep_dir, records, _ = tiny_sweep

    def ready(url: str) -> bool:
        tags = get_json(f"{url}/data/plugin/scalars/tags", timeout=5)
        # every job's last scalar, then the sweep's experiment (else it lists batch_size too)
        experiment = get_json(f"{url}/data/plugin/hparams/experiment",
                              {"experimentName": ""}, timeout=5)
        names = {h["name"] for h in experiment.get("hparamInfos", [])}
        return all("test/acc" in tags.get(run, {}) for run in records) and \
            {"+mean/bn", "+mean/none"} <= set(tags) and "norm" in names and \
            "batch_size" not in names

    with tensorboard_server(sweep_dir, ready,
                            log=tmp_path_factory.mktemp("tensorboard") / "tensorboard.log") as url:
        yield url


@pytest.mark.slow
def test_custom_scalars_and_hparams_show_exactly_the_sweeps_runs(tiny_sweep, tensorboard):
    """Custom Scalars: a chart per pair of its runs; HParams: a row per run, no duplicate tags."""
    _, records, _ = tiny_sweep
    layout = get_json(f"{tensorboard}/data/plugin/custom_scalars/layout")
    tags = get_json(f"{tensorboard}/data/plugin/scalars/tags")
    categories = {c["title"]: c["chart"] for c in layout["category"]}
    means = [title for title in categories if "mean ± std" in title]
    assert list(categories)[:len(means)] == means  # the mean over seeds first, open; the runs'
    assert [bool(c.get("closed")) for c in layout["category"]] == [  # closed (the Browse
        title not in means for title in categories]  # link's filter leaves them no run)
    categories = {title: charts for title, charts in categories.items() if title not in means}
    assert sorted(categories) == sorted(f"{d} · {o}" for d in ("mnist", "cifar10")
                                        for o in ("sgd", "adam"))  # conftest.TINY_SWEEP
    for title, charts in categories.items():
        pair_runs = {run for run, r in records.items()
                     if title == f"{r['hparams']['dataset']} · {r['hparams']['optim']}"}
        assert sorted(records[r]["hparams"]["norm"] for r in pair_runs) == ["bn", "none"]
        assert [c["title"] for c in charts] == \
            [f"{title} · {m}" for m in ("train/loss", "val/loss", "val/acc")]
        for chart in charts:
            (regex,) = chart["multiline"]["tag"]
            matched = {run: [t for t in run_tags if re.match(regex, t)]
                       for run, run_tags in tags.items()}
            assert {run for run, found in matched.items() if found} == pair_runs, regex
            assert all(len(matched[run]) == 1 for run in pair_runs)
            # the chart's data as the page asks for it: the run's two epochs
            for run in pair_runs:
                data = get_json(f"{tensorboard}/data/plugin/custom_scalars/scalars?"
                                + urllib.parse.urlencode({"run": run, "tag": regex}))
                assert data["regex_valid"] and [len(v) for v in data["tag_to_events"].values()] \
                    == [2], data
    experiment = get_json(f"{tensorboard}/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {i["name"]: i for i in experiment["hparamInfos"]}
    assert list(infos) == ["dataset", "norm", "optim", "seed"]  # what varies first
    assert {n for n, i in infos.items() if i.get("differs")} == {"dataset", "norm", "optim"}
    assert [infos[n]["domainDiscrete"] for n in infos] == [
        ["cifar10", "mnist"], ["bn", "none"], ["adam", "sgd"], [0]]
    assert {n: i["type"] for n, i in infos.items()} == {"dataset": "DATA_TYPE_STRING",
        "norm": "DATA_TYPE_STRING", "optim": "DATA_TYPE_STRING", "seed": "DATA_TYPE_FLOAT64"}
    columns = [{"hparam": name, "includeInResult": True} for name in infos]
    columns += [{"metric": {"group": "", "tag": tag}, "includeInResult": True}
                for tag in ("val/acc", "test/acc")]
    groups = get_json(f"{tensorboard}/data/plugin/hparams/session_groups", {
        "experimentName": "", "colParams": columns, "startIndex": 0, "sliceSize": 100,
        "allowedStatuses": [f"STATUS_{s}" for s in ("UNKNOWN", "SUCCESS", "FAILURE", "RUNNING")]})
    sessions = {s["name"]: (g["hparams"], {m["name"]["tag"]: m["value"] for m in s["metricValues"]})
                for g in groups["sessionGroups"] for s in g["sessions"]}
    # a row per run, its trial ID the run's name
    assert sorted(sessions) == sorted(g["name"] for g in groups["sessionGroups"]) == \
        sorted(records)
    for run, (settings, metrics) in sessions.items():
        hp = records[run]["hparams"]
        assert settings["seed"] == 0 and settings["dataset"] == hp["dataset"]
        assert settings["norm"] == hp["norm"] and settings["optim"] == hp["optim"]
        assert metrics["test/acc"] == pytest.approx(records[run]["test"]["acc"])
        assert metrics["val/acc"] == pytest.approx(records[run]["history"][-1]["val/acc"])
        assert {"val/acc", "val/loss", "test/acc", "test/loss", "train/loss"} <= set(tags[run])
    assert not [(run, t) for run, run_tags in tags.items() for t in run_tags  # no duplicates
                if t.startswith("hparams/") or t == "hp_metric"]


@pytest.mark.slow
def test_console_has_a_result_line_per_job_a_summary_and_each_line_once(tiny_sweep):
    """Each job's lines once, a handful a job; other lines once a sweep; no advertisement."""
    from bnstudy.dashboard import BROWSE_URL

    sweep_dir, records, console = tiny_sweep

    def result_line_pattern(record: dict) -> str:  # name, status, val and test acc, time
        val, test = record["history"][-1]["val/acc"], record["test"]["acc"]
        return (rf"{re.escape(record['run_name'])}: ok, val acc {100 * val:.2f} %, test acc "
                rf"{100 * test:.2f} %, \d+ s")

    for record in records.values():
        line = result_line_pattern(record)
        assert len(re.findall(rf"^{STAMP.pattern[1:]}\[bnstudy\]\[INFO\] - {line}$", console,
                              re.M)) == 1, (line, console)
    summary = console[console.index(f"Sweep {sweep_dir}: {JOBS} job(s)\n"):].splitlines()
    for row, record in zip(summary[1:JOBS + 1], records.values(), strict=True):  # job order
        assert re.fullmatch("  " + result_line_pattern(record), row), row
    assert summary[JOBS + 1].startswith("Is BatchNorm worth it?")  # the answer, then
    browse = summary.index(f"Browse: tensorboard --logdir {sweep_dir}, then open {BROWSE_URL}")
    assert summary[browse + 1].startswith("Report (") and \
        summary[browse + 1].endswith(f"python -m bnstudy.report {sweep_dir}")
    assert re.search(r"^\[[^]]+\]\[HYDRA\] Browse as jobs finish: tensorboard "
                     rf"--logdir {re.escape(str(sweep_dir))}, then open {re.escape(BROWSE_URL)}$",
                     console[:console.index(": training ")], re.M), console[:3000]  # before any
    assert "#0 : " not in console and "Launching" not in console  # job; not Hydra's notices
    assert "Tip" not in console and "LeafSpec" not in console and "litlogger" not in console
    lines = [STAMP.sub("", line) for line in console.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if re.match(r"\[bnstudy\]\[INFO\] - \S+: training ",
                                                             line)]  # each job's first line
    assert len(starts) == JOBS, console
    for start, end in zip(starts, [*starts[1:], len(lines)], strict=True):
        job = lines[start:end]
        assert not [line for line in set(job) if job.count(line) > 1], "\n".join(job)
    assert len(lines) <= JOBS * 8 + 10, console  # a screen per job, with room to spare
    others = [line for line in lines if not re.match(r"\[[\w.]+\]\[INFO\] - ", line)
              and not line.startswith("[HYDRA]")]
    assert not [line for line in set(others) if others.count(line) > 1], "\n".join(others)
