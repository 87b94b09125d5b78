"""What TensorBoard shows of a sweep (bnstudy.dashboard) and what its console says.

Fast tests check the dashboard's pieces directly; the slow ones run one small finished sweep
through the entry point, start the real `tensorboard` server on it (127.0.0.1, a free port)
and ask its JSON endpoints what a user's browser would get.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import scalars, tiny_fit

# -- fast: the dashboard's pieces ----------------------------------------------------------


def experiment_in(log_dir: Path):
    """The HParams experiment (api_pb2.Experiment) written into the events of `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    content = EventAccumulator(str(log_dir)).Reload().PluginTagToContent(metadata.PLUGIN_NAME)
    return metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])


def domain(info) -> list:
    return [v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
            for v in info.domain_discrete.values]


def test_comparison_layout_has_a_category_per_pair_whose_charts_match_only_its_tags():
    from bnstudy.dashboard import COMPARED, compare_tag, comparison_layout

    pairs = ["mnist-sgd", "mnist-adam", "cifar10-sgd", "fashion_mnist-sgd"]
    layout = comparison_layout(pairs)
    assert list(layout) == ["mnist · sgd", "mnist · adam", "cifar10 · sgd", "fashion_mnist · sgd"]
    tags = [compare_tag(p, m) for p in pairs for m in COMPARED]
    tags += [t + "_x" for t in tags] + ["val/acc", "train/loss", "compare/mnist-sgd"]
    for pair, (title, charts) in zip(pairs, layout.items(), strict=True):
        assert len(charts) == len(COMPARED)
        for metric, (chart_title, (kind, regexes)) in zip(COMPARED, charts.items(), strict=True):
            assert kind == "Multiline" and chart_title == f"{title} · {metric}"
            # the plugin keeps a run's tag when `re.match(regex, tag)`
            assert [t for t in tags if any(re.match(r, t) for r in regexes)] == \
                [compare_tag(pair, metric)]
    assert compare_tag("cifar10-adam", "val/acc") == "compare/cifar10-adam/val_acc"


def test_comparison_layout_is_what_the_custom_scalars_plugin_reads(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata
    from torch.utils.tensorboard import SummaryWriter

    from bnstudy.dashboard import comparison_layout

    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_custom_scalars(comparison_layout(["mnist-sgd"]))
    events = EventAccumulator(str(tmp_path)).Reload()
    tensor = events.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
    layout = layout_pb2.Layout.FromString(tensor.string_val[0])
    assert [c.title for c in layout.category] == ["mnist · sgd"]
    assert [(c.title, list(c.multiline.tag)) for c in layout.category[0].chart] == [
        ("mnist · sgd · train/loss", ["^compare/mnist-sgd/train_loss$"]),
        ("mnist · sgd · val/loss", ["^compare/mnist-sgd/val_loss$"]),
        ("mnist · sgd · val/acc", ["^compare/mnist-sgd/val_acc$"]),
    ]


def test_tb_value_shows_integers_and_other_values_as_text():
    from bnstudy.dashboard import tb_value

    assert tb_value(0) == "0" and tb_value(64) == "64" and tb_value(-1) == "-1"
    assert tb_value(True) == "True" and tb_value(None) == "None"
    assert tb_value([16, 32]) == "[16, 32]"
    assert tb_value(0.001) == 0.001 and isinstance(tb_value(1.0), float)
    assert tb_value("bn") == "bn"


def test_session_is_named_after_its_run_with_integers_as_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata
    from torch.utils.tensorboard import SummaryWriter

    from bnstudy.dashboard import write_session

    run = tmp_path / "3_mnist-none-adam-seed1"
    with SummaryWriter(str(run)) as writer:
        write_session(writer, {"dataset": "mnist", "seed": 1, "lr": 0.001, "batch_size": 64,
                               "trainer.gradient_clip_val": None})
    content = EventAccumulator(str(run)).Reload().PluginTagToContent(metadata.PLUGIN_NAME)
    info = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG])
    assert info.group_name == "3_mnist-none-adam-seed1"  # the table's trial ID, not a hash
    assert {k: v.WhichOneof("kind") for k, v in info.hparams.items()} == {
        "dataset": "string_value", "seed": "string_value", "lr": "number_value",
        "batch_size": "string_value", "trainer.gradient_clip_val": "string_value"}
    assert info.hparams["seed"].string_value == "1"


def test_write_experiment_lists_what_varies_first_marked_then_the_fixed_study_choices(tmp_path):
    from tensorboard.plugins.hparams import api_pb2
    from torch.utils.tensorboard import SummaryWriter

    from bnstudy.dashboard import METRICS, write_experiment

    base = {"dataset": "mnist", "model": "mlp", "depth": 1, "norm": "bn", "optim": "sgd",
            "seed": 0, "lr": 0.01, "batch_size": 64, "hidden_dim": 256, "max_epochs": 3,
            "trainer.gradient_clip_val": None}
    runs = [base | {"norm": norm, "batch_size": bs, "lr": lr, "trainer.gradient_clip_val": clip}
            for norm in ("bn", "none") for bs in (8, 128, 32) for lr, clip in
            ((0.01, None), (0.1, 1.0))]
    runs.append(base | {"norm": "none", "optim.optimizer.momentum": 0.9})  # only in one run
    with SummaryWriter(str(tmp_path)) as writer:
        write_experiment(writer, runs)
    exp = experiment_in(tmp_path)
    infos = {i.name: i for i in exp.hparam_infos}
    varying = ["norm", "lr", "batch_size", "trainer.gradient_clip_val",
               "optim.optimizer.momentum"]
    assert list(infos) == varying + ["dataset", "optim", "seed"]
    assert [i.name for i in exp.hparam_infos if i.differs] == varying
    assert domain(infos["norm"]) == ["bn", "none"]
    assert domain(infos["batch_size"]) == ["8", "32", "64", "128"]  # integers, in order
    assert infos["batch_size"].type == api_pb2.DATA_TYPE_STRING
    assert domain(infos["lr"]) == [0.01, 0.1] and infos["lr"].type == api_pb2.DATA_TYPE_FLOAT64
    assert domain(infos["trainer.gradient_clip_val"]) == ["1.0", "None"]  # one type a domain
    assert domain(infos["seed"]) == ["0"] and domain(infos["dataset"]) == ["mnist"]
    assert [m.name.tag for m in exp.metric_infos] == list(METRICS) == \
        ["val/acc", "val/loss", "test/acc", "test/loss"]


def test_single_run_experiment_shows_the_study_choices(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from bnstudy.dashboard import write_experiment

    with SummaryWriter(str(tmp_path)) as writer:
        write_experiment(writer, [{"dataset": "cifar10", "norm": "none", "optim": "adam",
                                   "seed": 3, "lr": 0.001, "depth": 2}])
    exp = experiment_in(tmp_path)
    assert [(i.name, i.differs, domain(i)) for i in exp.hparam_infos] == [
        ("dataset", False, ["cifar10"]), ("norm", False, ["none"]), ("optim", False, ["adam"]),
        ("seed", False, ["3"])]


@pytest.mark.slow
def test_comparison_curves_are_lightnings_curves_point_for_point(tiny_data, tmp_path):
    """Validating every other epoch, twice an epoch: the compared curves hold exactly the
    points of Lightning's own `train/loss`, `val/loss`, `val/acc` (no stale copies)."""
    from bnstudy.dashboard import COMPARED, ComparisonCurves, compare_tag

    tiny_fit(tiny_data, tmp_path, callbacks=[ComparisonCurves("mnist", "sgd")], max_epochs=4,
             check_val_every_n_epoch=2, val_check_interval=0.5)
    for metric in COMPARED:
        ours, lightnings = scalars(tmp_path, compare_tag("mnist-sgd", metric)), \
            scalars(tmp_path, metric)
        assert len(lightnings) == 4  # 4 epochs; 2 validated, twice each
        assert ours == lightnings, metric


# -- slow: a real sweep, its console and the real TensorBoard server ---------------------

PAIRS = {(d, o) for d in ("mnist", "cifar10") for o in ("sgd", "adam")}  # conftest.TINY_SWEEP
JOBS = 8
STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]")


@pytest.fixture(scope="module")
def sweep(tiny_sweep):
    """The session's finished 8-job sweep (conftest's `tiny_sweep`: mnist, cifar10 × bn, none
    × sgd, adam; 2 epochs): its dir, its records by job directory name and its console
    (stderr and stdout as one stream, as a terminal shows them; no PYTHONWARNINGS, as a user
    runs it). Read only."""
    assert len(tiny_sweep.records) == JOBS
    return tiny_sweep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None, timeout: float = 10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only
    with opener.open(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def tensorboard(sweep, tmp_path_factory):
    """The URL of a `tensorboard --logdir <sweep>` server on 127.0.0.1, once it has read all
    the runs and the sweep root; stopped afterwards."""
    sweep_dir, records, _ = sweep
    port = free_port()
    log = (tmp_path_factory.mktemp("tensorboard") / "tensorboard.log").open("w")
    proc = subprocess.Popen(
        [Path(sys.executable).with_name("tensorboard"), "--logdir", str(sweep_dir),
         "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, last = time.monotonic() + 90, None
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                tags = get_json(f"{url}/data/plugin/scalars/tags", timeout=5)
                runs = get_json(f"{url}/data/runs", timeout=5)
                # every job's last scalar, and the sweep's experiment (written after them into
                # a job's events; without it TensorBoard lists every setting, batch_size too)
                experiment = get_json(f"{url}/data/plugin/hparams/experiment",
                                      {"experimentName": ""}, timeout=5)
                names = {h["name"] for h in experiment.get("hparamInfos", [])}
                if all("test/acc" in tags.get(run, {}) for run in records) and \
                        "norm" in names and "batch_size" not in names:
                    break
                last = runs
            except OSError as err:  # not listening yet
                last = err
            assert time.monotonic() < deadline, f"TensorBoard not ready in 90 s: {last}"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_custom_scalars_has_a_chart_per_pair_of_exactly_its_runs(sweep, tensorboard):
    _, records, _ = sweep
    layout = get_json(f"{tensorboard}/data/plugin/custom_scalars/layout")
    tags = get_json(f"{tensorboard}/data/plugin/scalars/tags")
    categories = {c["title"]: c["chart"] for c in layout["category"]}
    assert sorted(categories) == sorted(f"{d} · {o}" for d, o in PAIRS)
    for title, charts in categories.items():
        dataset, optim = title.split(" · ")
        pair_runs = {run for run, r in records.items()
                     if (r["hparams"]["dataset"], r["hparams"]["optim"]) == (dataset, optim)}
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


@pytest.mark.slow
def test_hparams_experiment_has_discrete_study_columns_and_the_real_metric_tags(
        sweep, tensorboard):
    experiment = get_json(f"{tensorboard}/data/plugin/hparams/experiment",
                          {"experimentName": ""})
    infos = {i["name"]: i for i in experiment["hparamInfos"]}
    assert list(infos) == ["dataset", "norm", "optim", "seed"]  # what varies first
    assert {n for n, i in infos.items() if i.get("differs")} == {"dataset", "norm", "optim"}
    assert infos["dataset"]["domainDiscrete"] == ["cifar10", "mnist"]
    assert infos["norm"]["domainDiscrete"] == ["bn", "none"]
    assert infos["optim"]["domainDiscrete"] == ["adam", "sgd"]
    assert infos["seed"]["domainDiscrete"] == ["0"]  # an integer as an integer, not 0.0
    assert all(i["type"] == "DATA_TYPE_STRING" for i in infos.values())
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == \
        ["val/acc", "val/loss", "test/acc", "test/loss"]


@pytest.mark.slow
def test_hparams_table_holds_each_run_with_its_settings_and_metrics(sweep, tensorboard):
    _, records, _ = sweep
    columns = [{"hparam": name, "includeInResult": True}
               for name in ("dataset", "norm", "optim", "seed")]
    columns += [{"metric": {"group": "", "tag": tag}, "includeInResult": True}
                for tag in ("val/acc", "test/acc")]
    groups = get_json(f"{tensorboard}/data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS",
                                                  "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": columns, "startIndex": 0, "sliceSize": 100})
    sessions = {s["name"]: (g["hparams"], {m["name"]["tag"]: m["value"]
                                           for m in s["metricValues"]})
                for g in groups["sessionGroups"] for s in g["sessions"]}
    assert sorted(sessions) == sorted(records)
    # a row per run, its trial ID the run's name
    assert sorted(g["name"] for g in groups["sessionGroups"]) == sorted(records)
    for run, (settings, metrics) in sessions.items():
        hp = records[run]["hparams"]
        assert settings["seed"] == "0" and settings["dataset"] == hp["dataset"]
        assert settings["norm"] == hp["norm"] and settings["optim"] == hp["optim"]
        assert metrics["test/acc"] == pytest.approx(records[run]["test"]["acc"])
        assert metrics["val/acc"] == pytest.approx(records[run]["history"][-1]["val/acc"])


@pytest.mark.slow
def test_no_hparams_scalars_duplicate_the_metrics(sweep, tensorboard):
    _, records, _ = sweep
    tags = get_json(f"{tensorboard}/data/plugin/scalars/tags")
    assert set(records) <= set(tags)
    assert not [(run, t) for run, run_tags in tags.items() for t in run_tags
                if t.startswith("hparams/") or t == "hp_metric"]
    for run in records:
        assert {"val/acc", "val/loss", "test/acc", "test/loss", "train/loss"} <= set(tags[run])


def result_line_pattern(name: str, record: dict) -> str:
    """A job's result line: name, status, val and test accuracy (2 decimals), time."""
    val, test = record["history"][-1]["val/acc"], record["test"]["acc"]
    return (rf"{re.escape(name)}: ok, val acc {100 * val:.2f} %, test acc {100 * test:.2f} %, "
            r"\d+ s")


@pytest.mark.slow
def test_console_has_a_result_line_per_job_and_a_summary(sweep):
    from bnstudy.dashboard import BROWSE_URL

    sweep_dir, records, console = sweep
    for record in records.values():
        line = result_line_pattern(record["run_name"], record)
        assert len(re.findall(rf"^{STAMP.pattern[1:]}\[bnstudy\]\[INFO\] - {line}$", console,
                              re.M)) == 1, (line, console)
    summary = console[console.index(f"Sweep {sweep_dir}: {JOBS} job(s)\n"):].splitlines()
    for row, record in zip(summary[1:JOBS + 1], records.values(), strict=True):  # job order
        assert re.fullmatch("  " + result_line_pattern(record["run_name"], record), row), row
    assert summary[JOBS + 1].startswith("Is BatchNorm worth it?")  # the answer, then
    browse = summary.index(f"Browse: tensorboard --logdir {sweep_dir}, then open {BROWSE_URL}")
    assert summary[browse + 1].startswith("Report (") and \
        summary[browse + 1].endswith(f"python -m bnstudy.report {sweep_dir}")
    # The URL's colour groups are the norms: the regex's group is each run's norm.
    regex = urllib.parse.parse_qs(urllib.parse.urlsplit(BROWSE_URL).query)["runColorGroup"][0]
    for job, record in records.items():
        match = re.search(regex.removeprefix("regex:"), Path(job).name)
        assert match and match.group(1) == record["hparams"]["norm"], job


def console_lines(console: str) -> tuple[list[str], list[int]]:
    """The console's lines without their timestamps, and where each job's lines start."""
    lines = [STAMP.sub("", line) for line in console.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if re.match(r"\[HYDRA\] \t#\d+ : ", line)]
    assert len(starts) == JOBS, console
    return lines, starts


@pytest.mark.slow
def test_console_says_each_job_line_once_without_advertisement(sweep):
    """Each job's lines once (Lightning's too, not again in its own format); a handful a job."""
    _, _, console = sweep
    assert "Tip" not in console and "LeafSpec" not in console and "litlogger" not in console
    lines, starts = console_lines(console)
    for start, end in zip(starts, [*starts[1:], len(lines)], strict=True):
        job = lines[start:end]
        assert not [line for line in set(job) if job.count(line) > 1], "\n".join(job)
    assert len(lines) <= JOBS * 8 + 10, console  # a screen per job, with room to spare


@pytest.mark.slow
def test_console_says_a_warning_once_a_sweep(sweep):
    _, _, console = sweep
    lines, _ = console_lines(console)
    # what is not a job's own INFO line (warnings, a library's messages) is said once a sweep
    others = [line for line in lines if not re.match(r"\[[\w.]+\]\[INFO\] - ", line)
              and not line.startswith("[HYDRA]")]
    assert not [line for line in set(others) if others.count(line) > 1], "\n".join(others)
