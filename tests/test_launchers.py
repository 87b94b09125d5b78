"""Scale-out and first-use paths run for real: sweeps through Hydra's launchers (joblib,
submitit's local executor, the SLURM config) and torchvision's download from a mirror on
127.0.0.1 serving files in the official formats (no other address is contacted), and data
files that are not what they claim."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
import socket
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import helpers
import numpy as np
import pytest
from helpers import fake_commands, read_record, write_cifar10, write_mnist

# -- sweeps through launchers -------------------------------------------------------------
run_sweep = functools.partial(helpers.run_sweep, fresh=True)  # launchers start processes


@pytest.mark.slow
def test_parallel_launcher_runs_jobs_without_oversubscribing(tiny_data, tmp_path):
    proc = run_sweep(tmp_path, tiny_data, "hydra/launcher=parallel", "norm=bn,none",
                     "trainer.max_epochs=1", "threads=auto")  # the setting tested, not FAST's 1
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stderr + proc.stdout  # the launcher's routine notices are not the study's
    assert "Joblib.Parallel" not in console and "#0 : " not in console and "Sweep " in console
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*/metrics.json")]
    assert sorted(r["hparams"]["norm"] for r in records) == ["bn", "none"]
    assert all(r["status"] == "ok" for r in records)
    cores = os.cpu_count()
    assert all(r["torch_threads"] == max(1, cores // 2) for r in records)


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep_as_on_slurm(tiny_data, tmp_path):
    """`hydra/launcher=submitit_local`: submitit's code path for SLURM, each job pickled,
    run in a process of its own and its result collected; both jobs leave a full record and
    the sweep its summary; `threads=auto` gives each job one thread, not all cores."""
    proc = run_sweep(tmp_path, tiny_data, "hydra/launcher=submitit_local",
                     "hydra.launcher.timeout_min=5", "norm=bn,none", "trainer.max_epochs=1",
                     "~callbacks.hallucinations", "threads=auto")  # not FAST's 1
    console = proc.stderr + proc.stdout
    assert proc.returncode == 0, console[-3000:]
    assert "Submitit 'local' sweep output dir" not in console and "Sweep " in console  # its own
    # lines, not the launcher's notices
    jobs = sorted(p.parent for p in tmp_path.glob("*/metrics.json"))
    assert [j.name.split("_", 1)[0] for j in jobs] == ["0", "1"]
    records = [read_record(job) for job in jobs]
    assert [r["hparams"]["norm"] for r in records] == ["bn", "none"]
    for job, record in zip(jobs, records, strict=True):
        assert record["status"] == "ok" and record["epochs_trained"] == 1, record
        assert record["torch_threads"] == 1  # every job starts at once: one core each
        assert len(record["history"]) == 1 and 0 <= record["test"]["acc"] <= 1
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert list(job.glob("events.out.tfevents.*"))
        assert f"{record['run_name']}: ok, val acc" in console
    # submitit ran them: one result per job, each from another process than the launcher
    results = sorted(tmp_path.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 2 and sorted(tmp_path.glob(".submitit/*")) == sorted(  # no `%j/`
        {r.parent for r in results})
    pids = {p.name.split(".")[-2] for job in jobs for p in job.glob("events.out.tfevents.*")}
    # events files are named after the writing process: one a job, and the launcher's (the
    # sweep's HParams experiment, written into the first job when the sweep ends)
    assert len(pids) == 3, pids
    assert f"Sweep {tmp_path}: 2 job(s)" in console


def test_the_grid_sweeper_composes_each_swept_value_once_before_the_jobs(monkeypatch):
    """Hydra's sweeper composes all 160 of the decisive study's configs before the first job;
    ours a job per new value (every value still checked: a misspelt one stops the sweep)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    import hydra_plugins.bnstudy_sweeper as grid

    composed, checked = [], []
    loader = SimpleNamespace(load_sweep_config=lambda master_config, sweep_overrides:
                             composed.append(sweep_overrides) or sweep_overrides)
    monkeypatch.setattr(grid, "validate", checked.append)  # each composed config range-checked
    batch = [[f"dataset={d}", f"norm={n}", f"seed={s}"]
             for d in ("mnist", "cifar10") for n in ("bn", "nne") for s in range(20)]
    sweeper = grid.GridSweeper(max_batch_size=None)
    sweeper.hydra_context = SimpleNamespace(config_loader=loader)
    sweeper.config = OmegaConf.create({"logger": {}})  # no TensorBoard: nothing to announce
    sweeper.validate_batch_is_legal(batch)
    assert {o for job in composed for o in job} == {o for job in batch for o in job}
    assert len(composed) == 22 and composed[20] == ["dataset=mnist", "norm=nne", "seed=0"]
    assert checked == composed


def test_the_slurm_config_asks_for_the_signal_and_requeues(tmp_path, monkeypatch):
    """What the README's `hydra/launcher=slurm hydra.launcher.partition=gpu
    hydra.launcher.timeout_min=120 trainer=gpu` puts in the sbatch file, through submitit's own
    executor given the launcher's settings as Hydra's SlurmLauncher hands them over: bnstudy's
    launcher, a GPU, USR2 two minutes before the time limit, requeue allowed, 10 requeues after
    a time limit."""
    import submitit
    from helpers import compose_config
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from bnstudy.sweep import register_launchers

    fake_commands(monkeypatch, tmp_path / "bin", srun="exit 1")  # submitit looks for it only
    register_launchers()  # as the entry point does
    launcher = OmegaConf.to_container(compose_config(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=120",
        "trainer=gpu").hydra.launcher, resolve=False)
    assert launcher.pop("_target_") == "hydra_plugins.bnstudy_launchers.SlurmLauncher"
    launcher.pop("submitit_folder")
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm",
                                     slurm_max_num_timeout=launcher.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    launcher["name"] = "job"
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v
                                  for k, v in launcher.items()})
    sbatch = executor._executor._make_submission_file_text("python -m x", "uid")
    assert "#SBATCH --signal=USR2@120" in sbatch and "#SBATCH --requeue" in sbatch
    assert "#SBATCH --time=120" in sbatch and "#SBATCH --partition=gpu" in sbatch
    assert "#SBATCH --gpus-per-node=1" in sbatch
    assert executor._executor.max_num_timeout == 10


def small_sweep(tiny_data, sweep: Path, *overrides: str, submitit: bool = True):
    """A one-job sweep of 3 epochs of 2 batches, through submitit's local executor (a process
    of its own, requeued by its controller), or Hydra's basic launcher."""
    launcher = ("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5") if submitit \
        else ()
    return run_sweep(sweep, tiny_data, *launcher, "trainer.max_epochs=3",
                     "trainer.limit_train_batches=2", "~callbacks.hallucinations", *overrides)


@pytest.mark.parametrize("slurm,overrides,said", [
    ("none", (), "hydra/launcher=slurm submits the jobs to SLURM, but this machine has none "
                 "(no srun on its PATH), so nothing was run ("),
    ("refuses", (), "SLURM refused the sweep's jobs (sbatch: error: invalid partition specified: "
                    "debg), so nothing was run ("),
    ("refuses", ("hydra.launcher.timeout_min=1",), "hydra.launcher.signal_delay_s=120 is not "
     "shorter than hydra.launcher.timeout_min=1 (60 s): SLURM would signal each job to stop as "
     "it starts")])
def test_a_sweep_slurm_cannot_take_is_one_paragraph_and_leaves_no_folder(
        slurm, overrides, said, tiny_data, tmp_path, monkeypatch):
    """No SLURM on the machine, sbatch refusing the jobs (a misspelt partition, GPUs or memory
    a node lacks), a time limit shorter than the stop signal's head start."""
    refusal = "echo 'sbatch: error: invalid partition specified: debg' >&2; exit 1"
    fake_commands(monkeypatch, tmp_path / "bin", only=True,
                  **({"srun": "exit 1", "sbatch": refusal} if slurm == "refuses" else {}))
    sweep = tmp_path / "sweep"
    proc = helpers.run_sweep(sweep, tiny_data, "hydra/launcher=slurm",
                             "hydra.launcher.partition=debg", *overrides)
    assert proc.returncode == 1 and said in proc.stderr and "Traceback" not in proc.stderr
    assert not sweep.exists()


@pytest.mark.parametrize("status,fails", [("ok", False), ("diverged", False), ("failed", True),
                                          ("interrupted", True), ("refused", True), (None, True)])
def test_a_submitit_job_without_a_result_exits_1(status, fails, monkeypatch):
    """So that SLURM says FAILED (sacct, seff, mail on failure), once submitit has kept the job's
    return value for the sweep (None: the job's code raised, Hydra's status FAILED)."""
    from hydra.core.utils import JobReturn, JobStatus

    import hydra_plugins.bnstudy_launchers as plugin
    from bnstudy.records import RunRecord

    job = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("bug")) if status is None \
        else JobReturn(status=JobStatus.COMPLETED, _return_value=RunRecord(status=status))
    # the launcher's own base class (Hydra's plugin scan may import submitit's module again)
    base = next(c for c in plugin.SlurmLauncher.__mro__ if c.__name__ == "BaseSubmititLauncher")
    monkeypatch.setattr(base, "__call__", lambda *args: job)
    at_exit = []
    monkeypatch.setattr(plugin.atexit, "register", at_exit.append)
    assert object.__new__(plugin.SlurmLauncher)(["seed=0"], "hydra.sweep.dir", 0, "id", {}) is job
    assert at_exit == ([plugin._exit_failed] if fails else [])


def test_more_requeues_than_submitits_local_launcher_makes_is_a_warning():
    from hydra_plugins.bnstudy_launchers import local_requeue_limit

    note = local_requeue_limit({"max_num_timeout": 10})
    assert note.startswith("hydra.launcher.max_num_timeout=10: submitit's local launcher "
                           "restarts a job at most 5 times")
    for fine in ({"max_num_timeout": 5}, {}):
        assert local_requeue_limit(fine) is None, fine


def time_limit_at_epoch(epoch: int, marker: Path) -> list[str]:
    """Overrides that send the job submitit's time-limit signal when `epoch` starts, once."""
    return ["+callbacks.limit._target_=tests.faults.SignalAtEpoch",
            f"+callbacks.limit.epoch={epoch}", f"+callbacks.limit.marker={marker}"]


@pytest.mark.slow
def test_a_time_limit_requeues_the_job_which_resumes_by_itself(tiny_data, tmp_path):
    """submitit's controller sends USR2 at the time limit: Hydra's launcher checkpoints (its
    own call, pickled again) and the job is requeued; the run, interrupted at epoch 2, resumes
    by itself from its checkpoint (exactly: `test_run.py`) and finishes."""
    from bnstudy.report.runs import load_runs

    proc = small_sweep(tiny_data, tmp_path / "limited",
                       *time_limit_at_epoch(2, tmp_path / "signalled"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "signalled").exists()  # the signal was sent
    (job,) = (tmp_path / "limited").glob("0_*")
    limited = read_record(job)
    assert limited["status"] == "ok" and limited["requeues"] == 1, limited
    assert len(limited["history"]) == 3 and limited["history"][0]["epoch"] == 0
    assert limited["job"]["id"].startswith("submitit-local:")
    log = "".join(p.read_text() for p in (tmp_path / "limited").glob(".submitit/*/*_log.*"))
    assert "Requeued job" in log and "requeued by its launcher" in log and "resuming" in log
    # the lock file is not a job to the report: one run, finished
    assert load_runs(tmp_path / "limited")[["job", "status"]].values.tolist() == [[job.name, "ok"]]


@pytest.mark.slow
def test_a_time_limit_past_max_num_timeout_ends_interrupted_and_the_sweep_exits_1(tiny_data,
                                                                                 tmp_path):
    sweep = tmp_path / "sweep"
    proc = small_sweep(tiny_data, sweep, "+hydra.launcher.max_num_timeout=0",
                       *time_limit_at_epoch(1, tmp_path / "signalled"))
    assert proc.returncode == 1
    (job,) = sweep.glob("0_*")
    assert read_record(job)["status"] == "interrupted" and len(read_record(job)["history"]) == 1
    assert f"1 job(s) of {sweep} did not finish" in proc.stderr
    assert f"{job.name}: interrupted after 1 epoch(s)" in proc.stderr
    assert f"resume=true hydra.sweep.dir={sweep}" in proc.stderr
    log = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "interrupted after 1 epoch(s) (its launcher will not requeue it (Job not requeued "\
           "because: timed-out too many times))" in proc.stderr
    assert "Its launcher will not requeue it" in log
    resumed = small_sweep(tiny_data, sweep, "resume=true", submitit=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_record(job)["status"] == "ok" and len(read_record(job)["history"]) == 3
    assert read_record(job)["error"] is None  # the time-out's note went with it


# -- torchvision's download, from a mirror on 127.0.0.1 -----------------------------------

LOCAL = "127.0.0.1"


class _Handler(SimpleHTTPRequestHandler):
    def log_request(self, code="-", size="-") -> None:
        self.server.requests.append(f"{self.command} {self.path} {int(code)}")

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass


class _Server(ThreadingHTTPServer):
    requests: list[str]

    def handle_error(self, request, client_address) -> None:
        pass  # torchvision's redirect probe drops the connection mid-answer (a broken pipe)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 (a free port) serving `tmp_path/served`: (folder, base URL,
    the requests it answered). While it runs, connecting anywhere but 127.0.0.1 fails."""
    served = tmp_path / "served"
    served.mkdir()
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != LOCAL:
            raise AssertionError(f"the test tried to reach {address}")
        return connect(sock, address)

    def resolve_local_only(host, *args, **kwargs):  # not even a DNS query for another host
        if host != LOCAL:
            raise AssertionError(f"the test tried to look up {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "getaddrinfo", resolve_local_only)
    server = _Server((LOCAL, 0), functools.partial(_Handler, directory=str(served)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield served, f"http://{LOCAL}:{server.server_port}/", server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def idx_array(path: Path) -> np.ndarray:
    """An uncompressed IDX file's array (MNIST's format: uint8, big-endian dims)."""
    data = path.read_bytes()
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def serve_mnist(served: Path, tmp_path: Path) -> tuple[list[tuple[str, str]], Path]:
    """Official MNIST names, gzipped IDX files, under `served/mnist/`: (resources with their
    md5s, as `torchvision.datasets.MNIST.resources` lists them; the uncompressed originals)."""
    raw = write_mnist(tmp_path / "original", n_train=120, n_test=40, seed=5) / "MNIST" / "raw"
    (served / "mnist").mkdir()
    resources = []
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        gz = served / "mnist" / f"{stem}.gz"
        gz.write_bytes(gzip.compress((raw / stem).read_bytes(), mtime=0))
        resources.append((gz.name, md5(gz)))
    return resources, raw


def test_mnist_downloads_from_a_mirror_and_loads_the_served_images(mirror, tmp_path,
                                                                   monkeypatch):
    from torchvision.datasets import MNIST

    from bnstudy.data import MNISTDataModule

    served, url, requests = mirror
    resources, raw = serve_mnist(served, tmp_path)
    # the first mirror lacks the files (404), as when a mirror is down: the next one serves
    monkeypatch.setattr(MNIST, "mirrors", [f"{url}gone/", f"{url}mnist/"])
    monkeypatch.setattr(MNIST, "resources", resources)
    data_dir = tmp_path / "data"
    dm = MNISTDataModule(data_dir, val_size=20, download=True)
    dm.prepare_data()
    assert {r for r in requests if r.startswith("GET /mnist/")} == \
        {f"GET /mnist/{name} 200" for name, _ in resources}
    assert {r for r in requests if r.startswith("GET /gone/")} == \
        {f"GET /gone/{name} 404" for name, _ in resources}
    for stem in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert (data_dir / "MNIST" / "raw" / stem).read_bytes() == (raw / stem).read_bytes()
    dm.setup()
    images, labels = dm.read_split(train=True)
    assert np.array_equal(images[:, 0].numpy(), idx_array(raw / "train-images-idx3-ubyte"))
    assert np.array_equal(labels.numpy(), idx_array(raw / "train-labels-idx1-ubyte"))
    assert len(dm.train_set) + len(dm.val_set) == 120
    test_images = idx_array(raw / "t10k-images-idx3-ubyte")
    assert np.allclose(dm.denormalise(dm.test_set.x).squeeze(1).numpy() * 255, test_images,
                       atol=1e-3)
    count = len(requests)
    MNISTDataModule(data_dir, download=True).prepare_data()  # present: nothing fetched again
    assert len(requests) == count


def test_a_failed_download_names_the_file_and_leaves_no_empty_folders(mirror, tmp_path,
                                                                      monkeypatch):
    """A corrupt file (its md5) is named; an offline machine leaves no folder it made."""
    from torchvision.datasets import MNIST

    from bnstudy.data import MNISTDataModule
    from bnstudy.errors import DataError

    served, url, _ = mirror
    resources, _ = serve_mnist(served, tmp_path)
    resources[2] = (resources[2][0], "0" * 32)  # the test images are not what the md5 says
    monkeypatch.setattr(MNIST, "mirrors", [f"{url}mnist/"])
    monkeypatch.setattr(MNIST, "resources", resources)
    with pytest.raises(DataError, match="the download failed") as err:
        MNISTDataModule(tmp_path / "data", download=True).prepare_data()
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)

    def offline(self):
        (self.data_dir / "MNIST" / "raw").mkdir(parents=True)
        raise RuntimeError("Error downloading x.gz:\nTried a, got:\n<urlopen error [Errno -2] "
                           "Name or service not known>\n")  # torchvision's, a line a mirror

    monkeypatch.setattr(MNISTDataModule, "fetch", offline)
    target = tmp_path / "nowhere" / "data"
    with pytest.raises(DataError, match="the download failed") as err:
        MNISTDataModule(target, download=True).prepare_data()
    assert "(RuntimeError: Error downloading x.gz: Tried a, got: <urlopen error [Errno -2] Name " \
        "or service not known>). Point paths.data_dir" in str(err.value)  # one paragraph
    assert not target.exists() and tmp_path.is_dir()


def serve_cifar10(served: Path, tmp_path: Path) -> tuple[Path, str]:
    """`served/cifar-10-python.tar.gz` holding `cifar-10-batches-py/` (as the official
    archive); returns the original folder and the archive's md5."""
    folder = write_cifar10(tmp_path / "original", per_batch=30, n_test=40, seed=7) \
        / "cifar-10-batches-py"
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return folder, md5(archive)


def test_cifar10_downloads_from_a_mirror_and_loads_the_served_images(mirror, tmp_path,
                                                                     monkeypatch):
    import pickle

    from torchvision.datasets import CIFAR10

    from bnstudy.data import CIFAR10DataModule

    served, url, requests = mirror
    folder, archive_md5 = serve_cifar10(served, tmp_path)
    monkeypatch.setattr(CIFAR10, "url", f"{url}cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "tgz_md5", archive_md5)
    # the served batches' own md5s, so that the strict check (as for the official files) passes
    for attr in ("train_list", "test_list"):
        monkeypatch.setattr(CIFAR10, attr, [[name, md5(folder / name)]
                                            for name, _ in getattr(CIFAR10, attr)])
    data_dir = tmp_path / "data"
    dm = CIFAR10DataModule(data_dir, val_size=10, download=True, verify_checksums="strict")
    dm.prepare_data()
    assert "GET /cifar-10-python.tar.gz 200" in requests
    dm.setup()
    images, labels = dm.read_split(train=True)
    batches = [pickle.loads((folder / f"data_batch_{i}").read_bytes()) for i in range(1, 6)]
    expected = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    assert np.array_equal(images.numpy(), expected)
    assert labels.tolist() == [label for b in batches for label in b["labels"]]
    test = pickle.loads((folder / "test_batch").read_bytes())
    assert np.allclose(dm.denormalise(dm.test_set.x).numpy() * 255,
                       test["data"].reshape(-1, 3, 32, 32), atol=1e-3)
    assert len(dm.train_set) + len(dm.val_set) == 150
    shutil.rmtree(served)  # present now: a second prepare_data fetches nothing
    CIFAR10DataModule(data_dir, download=True).prepare_data()


@pytest.mark.slow
def test_a_job_killed_without_a_result_is_named_in_the_summary(tiny_data, tmp_path):
    """Issue #34: a submitit job that dies without a result (here SIGKILL, as an out-of-memory
    kill) does not end the sweep in submitit's traceback: the other job's result is kept, and
    the summary names the killed job, its state and the resume command."""
    sweep = tmp_path / "sweep"
    proc = small_sweep(tiny_data, sweep, "seed=0,1", *time_limit_at_epoch(1, tmp_path / "kill"),
                       "+callbacks.limit.signal=SIGKILL")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    records = {job.name: read_record(job) for job in sweep.glob("*_mnist-*")}
    (killed,) = [name for name, record in records.items() if record["status"] == "running"]
    (kept,) = [name for name, record in records.items() if record["status"] == "ok"]
    assert f"1 job(s) of {sweep} did not finish" in proc.stderr
    assert f"\n  {killed}: killed, or exited without a result (submitit local state FINISHED): " \
        "no result after 1 epoch(s), its record says running\n" in proc.stderr
    assert kept not in proc.stderr.split("did not finish")[1]
    assert f"resume=true hydra.sweep.dir={sweep}" in proc.stderr.splitlines()[-1]
