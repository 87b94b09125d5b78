"""Datamodules on tiny and on shared real files; torchvision's download from 127.0.0.1 only."""

import functools
import gzip
import hashlib
import os
import pickle
import shutil
import socket
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import compose_config, write_cifar10, write_idx, write_mnist
from torchvision.datasets import CIFAR10, MNIST

from bnstudy.data import (
    CIFAR10DataModule,
    DataError,
    EpochBatchSampler,
    FashionMNISTDataModule,
    MNISTDataModule,
    TensorPairs,
    batches,
    counts,
)
from bnstudy.datafiles import load_cifar_batch

# the fixes the refusals end with: where MNIST's files should be; what to do with a bad CIFAR batch
POINT_AT_MNIST = "Point paths.data_dir (or the BNSTUDY_DATA_DIR environment variable) at a " \
    "folder that holds MNIST/raw/"
CIFAR_BATCH_FIX = "the file is corrupt. Delete it and download again " \
    "(dataset.datamodule.download=true), or point paths.data_dir at a folder with intact files."
ONLY_ARRAYS = ": a CIFAR batch holds only arrays, lists and strings"  # (its unpickler's refusal)
LOCAL = "127.0.0.1"  # the download tests' mirror: no other address is contacted


def at_epoch(epoch: int, *args, **settings) -> EpochBatchSampler:
    sampler = EpochBatchSampler(*args, **settings)
    sampler.set_epoch(epoch)
    return sampler


def set_up(make, folder: Path, stage: str | None = None, **settings):
    """`make(folder, **settings)`, a datamodule on files there (no download), set up for `stage`."""
    dm = make(folder, download=False, **settings)
    dm.setup(stage)
    return dm


def test_mnist_loads_normalises_and_splits(tiny_data):
    dm = MNISTDataModule(tiny_data, batch_size=32, val_size=151, download=False)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 449 and len(dm.val_set) == 151 and len(dm.test_set) == 200
    assert dm.train_set.x.shape[1:] == (1, 28, 28) and dm.train_set.x.dtype == torch.float32
    assert dm.train_set.x.min().item() == pytest.approx((0 - 0.1307) / 0.3081, abs=1e-5)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and y.dtype == torch.int64
    # BatchNorm cannot train on one sample: 449 images in 32s leave 1, which is left out
    sizes = [len(y) for _, y in dm.train_dataloader()]
    assert sizes == [32] * 14 and len(dm.train_dataloader()) == 14
    evaluation = [len(y) for _, y in batches(dm.train_set, 32, shuffle=False)]
    assert evaluation[-1] == 1 and sum(evaluation) == 449  # not shuffled: every image
    # evaluation: plain (x, y) batches, validation the held-out training images, test t10k's
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (151, 1, 28, 28) and torch.equal(y, dm.val_set.y)
    served = torch.cat([y for _, y in dm.test_dataloader()])
    assert torch.equal(served, dm.read_split(train=False)[1])


def test_the_split_is_disjoint_fixed_by_default_and_drawn_from_the_run_seed_if_null(tiny_data):
    """`split_seed=None` (experiment=decisive, tuned): each seed its own validation split."""
    def split(seed, **kw):
        return set_up(MNISTDataModule, tiny_data, "fit", val_size=100, train_size=300, seed=seed,
                      **kw)

    a, b = split(1), split(2)
    assert torch.equal(a.val_set.x, b.val_set.x)  # same val images whatever the run's seed
    train_rows = {tuple(r.tolist()) for r in a.train_set.x.flatten(1)[:, ::7]}
    assert not any(tuple(r.tolist()) in train_rows for r in a.val_set.x.flatten(1)[:, ::7])
    assert len(a.train_set) == 300 and a.test_set is not None  # a fit ends in a test
    assert torch.equal(split(1, split_seed=None).val_set.y, split(1, split_seed=1).val_set.y)
    assert not torch.equal(split(1, split_seed=None).val_set.y, split(2, split_seed=None).val_set.y)


def test_batch_order_depends_on_seed_and_epoch_only(tiny_data):
    dm = set_up(MNISTDataModule, tiny_data, "fit", batch_size=50, seed=3)

    def first_labels(epoch):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))[1]

    assert torch.equal(first_labels(0), first_labels(0))
    assert not torch.equal(first_labels(0), first_labels(1))
    loader = dm.train_dataloader()
    made_early = iter(loader)  # as Lightning may make it, before `set_epoch` (on resume)
    loader.sampler.set_epoch(1)
    assert torch.equal(next(made_early)[1], first_labels(1))
    epoch = torch.cat([y for _, y in dm.train_dataloader()])
    assert torch.equal(epoch.sort().values, dm.train_set.y.sort().values)  # a permutation
    # the published runs' orders: a change to how (seed, epoch) draws them changes every result
    for seed, epoch, first in [(3, 2, [554, 600, 97, 678, 260, 295, 60, 840]),
                               (0, 1, [845, 303, 66, 436, 239, 593, 573, 999])]:
        assert next(iter(at_epoch(epoch, 1000, 8, True, seed=seed))).tolist() == first
    fresh, told = EpochBatchSampler(1000, 8, True, seed=3), at_epoch(0, 1000, 8, True, seed=3)
    assert torch.equal(next(iter(fresh)), next(iter(told)))  # never told: epoch 0's order


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_process_serves_its_own_share(shuffle):
    """Two DDP ranks' disjoint shares cover the data; shuffled, the same size (the odd one out)."""
    ranks = [at_epoch(3, 101, 10, shuffle, seed=2, num_replicas=2, rank=r) for r in (0, 1)]
    shares = [torch.cat(list(sampler)) for sampler in ranks]
    assert not set(shares[0].tolist()) & set(shares[1].tolist())
    if shuffle:
        assert len(shares[0]) == len(shares[1]) == 50 and len(ranks[0]) == len(ranks[1]) == 5
        order = torch.cat(list(at_epoch(3, 101, 10, True, seed=2)))
        assert torch.equal(shares[0], order[0:100:2]) and torch.equal(shares[1], order[1:100:2])
    else:
        assert sorted(torch.cat(shares).tolist()) == list(range(101))


def test_k_minibatches_a_step_come_as_lists_of_k_of_this_processs_minibatches():
    """`Classifier.steps_per_call` K: the same minibatches, K to a list (the last shorter)."""
    data = TensorPairs(torch.arange(101.0), torch.arange(101))
    alone = [y for _, y in batches(data, 10, True, seed=1, num_replicas=2, rank=1)]
    bundled = list(batches(data, 10, True, seed=1, num_replicas=2, rank=1, bundle=2))
    assert [len(k) for k in bundled] == [2, 2, 1] and len(alone) == 5
    assert all(torch.equal(a, y) for a, (_, y) in zip(alone, sum(bundled, []), strict=True))
    share = EpochBatchSampler(101, 10, True, seed=1, num_replicas=2, rank=1)
    assert all(torch.equal(a, b) for a, b in zip(alone, share, strict=True))


def test_a_datamodule_made_in_python_has_the_studys_settings(tmp_path):
    """`MNISTDataModule(folder)` splits and serves as `python -m bnstudy.train` (seed 0) does."""
    node, made = compose_config().dataset.datamodule, MNISTDataModule(tmp_path)
    for key in ("download", "batch_size", "val_size", "train_size", "eval_batch_size",
                "split_seed", "seed"):
        assert getattr(made, key) == node[key], key


@pytest.mark.parametrize("overfit_batches", [0, 0.5])
def test_loaders_serve_the_trainers_rank_its_share_and_overfit_batches_in_order(
        tiny_data, overfit_batches):
    """Under DDP (world size 2, rank 1 here); `overfit_batches`, a count or a fraction."""
    dm = set_up(MNISTDataModule, tiny_data, "fit", batch_size=32, val_size=100, seed=2)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1, overfit_batches=overfit_batches,
                                 lightning_module=SimpleNamespace(minibatches_per_step=3))
    train = dm.train_dataloader().sampler
    assert (train.num_replicas, train.rank, train.batch_size) == (2, 1, 32)
    assert (train.shuffle, train.seed, train.bundle) == \
        ((True, 2, 3) if not overfit_batches else (False, 0, 1))  # (K is 1 then: model.py)
    for sampler in (dm.val_dataloader().sampler, dm.test_dataloader().sampler):
        assert (sampler.num_replicas, sampler.rank, sampler.shuffle, sampler.batch_size) == \
            (2, 1, False, 1000)


def test_batches_on_the_device_are_handed_on_and_each_split_is_put_there_once(tiny_data,
                                                                              monkeypatch):
    dm = set_up(MNISTDataModule, tiny_data, "fit", val_size=100)  # no trainer: on the CPU
    batch = next(iter(dm.train_dataloader()))
    bundle = [[x, y] for x, y in [batch] * 3]  # (K minibatches per training_step)
    monkeypatch.setattr(torch.Tensor, "__iter__", lambda t: pytest.fail("walked a tensor's rows"))
    for handed in (batch, bundle):  # no walk, no copy
        assert dm.transfer_batch_to_device(handed, torch.device("cpu"), 0) is handed
    monkeypatch.undo()
    moved = dm.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert [(t.device.type, t.shape) for t in moved] == [("meta", t.shape) for t in batch]
    on_cpu = {split: getattr(dm, split) for split in ("train_set", "val_set", "test_set")}
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))
    dm.setup("fit")
    for split, data in on_cpu.items():
        moved = getattr(dm, split)
        assert (moved.x.device.type, moved.y.device.type) == ("meta", "meta")
        assert moved.x.shape == data.x.shape and moved.y.shape == data.y.shape
    monkeypatch.setattr(TensorPairs, "to", lambda *_: pytest.fail("moved again"))
    dm.setup("test")  # already there


def test_cifar10_checksums_off_say_nothing_warn_once_a_folder_and_strict_refuses(
        tiny_data, tmp_path, caplog):
    def said(folder, names="data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5"):
        return (f"{folder / 'cifar-10-batches-py'}: {names} do(es) not match the official "
                "CIFAR-10 checksums: a subset or a modified copy. Results on it are not "
                "full-CIFAR-10 results.")

    CIFAR10DataModule._warned.clear()
    dm = set_up(CIFAR10DataModule, tiny_data, val_size=50, verify_checksums="off")
    assert len(dm.train_set) == 450 and len(dm.test_set) == 200
    assert dm.train_set.x.shape[1:] == (3, 32, 32) and not caplog.records
    for _ in range(2):  # once per folder and process: its training batches named, not the test's
        warned = set_up(CIFAR10DataModule, tiny_data, "fit", val_size=50)
    assert torch.equal(warned.train_set.x, dm.train_set.x)
    write_cifar10(tmp_path, per_batch=4, n_test=4)
    CIFAR10DataModule(tmp_path, download=False).read_split(train=False)  # another folder
    assert [r.getMessage() for r in caplog.records] == [said(tiny_data),
                                                        said(tmp_path, "test_batch")]
    with pytest.raises(DataError) as refused:
        set_up(CIFAR10DataModule, tiny_data, "fit", verify_checksums="strict")
    assert str(refused.value) == said(tiny_data) + " Delete the files and download again, or " \
        "load them anyway with dataset.datamodule.verify_checksums=warn (or off)."


def test_cifar10_standardises_with_its_channel_statistics_and_denormalise_inverts_it(tmp_path):
    """Per channel, on the images' device, into [0, 1]."""
    dm = CIFAR10DataModule(tmp_path)
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(dm.normalise(pixels), (pixels / 255 - mean) / std, atol=1e-6)
    assert torch.allclose(dm.denormalise(dm.normalise(pixels)), pixels / 255, atol=1e-6)
    beyond = dm.denormalise(torch.tensor([-100.0, 100.0]).view(1, 1, 2, 1).expand(1, 3, 2, 1))
    assert beyond[0, :, 0].eq(0).all() and beyond[0, :, 1].eq(1).all()
    assert dm.denormalise(torch.zeros(1, 3, 2, 2, device="meta")).device.type == "meta"


@pytest.mark.parametrize("val_size, train_size, sizes, refused", [  # sizes: (train, val)
    (0.2494, None, (450, 150), False), (1, None, (599, 1), False), (0.999, None, (1, 599), False),
    (100, 10, (10, 100), False), (100, 500, (500, 100), False), (0.0001, None, (600, 0), True),
    (100, 501, (501, 100), True), (100, 0, (0, 100), True)])
def test_split_sizes_take_a_fraction_or_a_count_and_refuse_what_the_files_lack(
        tmp_path, val_size, train_size, sizes, refused):
    dm = MNISTDataModule(tmp_path, val_size=val_size, train_size=train_size)
    if not refused:
        assert dm.split_sizes(600) == sizes
        return
    with pytest.raises(DataError) as raised:
        dm.split_sizes(600)
    assert str(raised.value) == f"mnist: train_size={train_size} and val_size={val_size} ask " \
        f"for {sizes[0]} training and {sizes[1]} validation images, but the training files hold " \
        "600. Choose dataset.train_size + dataset.val_size <= 600 (val_size may be a fraction)."


@pytest.mark.parametrize("download", [False, None])
def test_missing_files_are_named_with_where_to_point_and_whether_to_download(tmp_path, download):
    write_mnist(tmp_path, n_train=20, n_test=10)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError) as refused:
        MNISTDataModule(tmp_path, download=download).prepare_data()
    assert str(refused.value) == (  # None: a finished run rebuilt, never downloaded
        f"mnist: files not found: {raw}/train-images-idx3-ubyte, {raw}/t10k-labels-idx1-ubyte"
        + (f"; download is disabled (dataset.datamodule.download=false). {POINT_AT_MNIST}, or "
           "allow the download with dataset.datamodule.download=true." if download is False else
           f". {POINT_AT_MNIST} (paths.data_dir=DIR)."))


def test_a_failed_download_is_one_paragraph_and_removes_only_the_empty_folders_it_made(
        tmp_path, monkeypatch):
    (tmp_path / "kept" / "empty").mkdir(parents=True)  # the user's, empty or not

    def fails(self):
        (self.data_dir / "MNIST" / "raw" / "deeper").mkdir(parents=True)
        if self.data_dir == tmp_path:
            (self.data_dir / "partial").mkdir()
            (self.data_dir / "partial" / "file.gz.part").write_bytes(b"x")
        raise RuntimeError("Error downloading x.gz:\nTried a, got:\n<urlopen error [Errno -2] "
                           "Name or service not known>\n")  # torchvision's, a line a mirror

    monkeypatch.setattr(MNISTDataModule, "fetch", fails)
    with pytest.raises(DataError) as refused:
        MNISTDataModule(tmp_path, download=True).prepare_data()
    raw = tmp_path / "MNIST" / "raw"
    assert str(refused.value) == "mnist: files not found: " + ", ".join(
        f"{raw}/{split}-{kind}" for split in ("train", "t10k")
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")) + ", and the download failed " \
        "(RuntimeError: Error downloading x.gz: Tried a, got: <urlopen error [Errno -2] Name or " \
        f"service not known>). {POINT_AT_MNIST}, or retry when online."
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "kept", "kept/empty", "partial", "partial/file.gz.part"]
    with pytest.raises(DataError):  # a data_dir the download made goes too
        MNISTDataModule(tmp_path / "kept" / "data", download=True).prepare_data()
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["empty"]


@pytest.mark.parametrize("damaged", ["MNIST/raw/train-images-idx3-ubyte",
                                     "MNIST/raw/t10k-labels-idx1-ubyte",
                                     "cifar-10-batches-py/data_batch_3",
                                     "cifar-10-batches-py/test_batch"])
def test_a_damaged_file_is_named_before_training(tmp_path, damaged):
    """A truncated IDX file, a CIFAR-10 batch that is not a pickle; a test file too (a fit's)."""
    write_mnist(tmp_path, n_train=20, n_test=10)
    write_cifar10(tmp_path, per_batch=4, n_test=4)
    path = tmp_path / damaged
    path.write_bytes(path.read_bytes()[:-100] if "MNIST" in damaged else b"not a pickle")
    make = MNISTDataModule if "MNIST" in damaged else CIFAR10DataModule
    with pytest.raises(DataError) as refused:
        set_up(make, tmp_path, "fit", val_size=1)
    if "MNIST" in damaged:  # the split's two files, then the fix
        raw, split = tmp_path / "MNIST" / "raw", damaged.split("/")[-1].split("-")[0]
        said = f"mnist: could not read {raw}/{split}-images-idx3-ubyte and {raw}/{split}-labels-"
        fix = "The files are corrupt or truncated: delete them and download again, or point " \
            "paths.data_dir at intact files."
    else:
        said, fix = f"{path} is not a valid CIFAR-10 batch (UnpicklingError: ", CIFAR_BATCH_FIX
    assert str(refused.value).startswith(said) and str(refused.value).endswith(fix)


class Calls:  # a pickled call, as a crafted batch could hold
    def __init__(self, *call) -> None:
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("batch, why", [
    ({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4},
     "ValueError: its images are (4, 100), not (N, 3072) bytes"),
    ({"data": np.zeros(3072, np.uint8), "labels": [0]},
     "ValueError: its images are (3072,), not (N, 3072) bytes"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3},
     "ValueError: it holds 4 images but 3 labels"),
    ({"data": np.zeros((4, 3072), np.uint8)}, "KeyError: 'labels'"),
    ({"data": Calls(print, ("pwned",)), "labels": []},  # code
     f"UnpicklingError: refusing to load builtins.print{ONLY_ARRAYS}"),
    ({"data": Calls(np.save, ("written.npy", np.zeros(1))), "labels": []},  # beyond arrays
     f"UnpicklingError: refusing to load {np.save.__module__}.save{ONLY_ARRAYS}")])
def test_a_cifar_batch_of_the_wrong_shape_without_labels_or_with_code_is_refused(
        tmp_path, monkeypatch, batch, why):
    monkeypatch.chdir(tmp_path)  # where the numpy callable would write
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError) as refused:
        load_cifar_batch(path)
    assert str(refused.value) == f"{path} is not a valid CIFAR-10 batch ({why}): {CIFAR_BATCH_FIX}"
    assert not (tmp_path / "written.npy").exists()


def test_mnist_files_that_disagree_on_the_count_are_refused(tmp_path):
    raw = write_mnist(tmp_path, n_train=20, n_test=10) / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(DataError) as refused:
        MNISTDataModule(tmp_path, download=False).read_split(train=True)
    assert str(refused.value) == f"mnist: {raw}/train-images-idx3-ubyte holds 20 images but " \
        f"{raw}/train-labels-idx1-ubyte holds 19 labels."


def test_shared_real_subsets_load(shared_data):
    mnist = set_up(MNISTDataModule, shared_data)
    assert len(mnist.train_set) + len(mnist.val_set) == 8000 and len(mnist.test_set) == 2000
    assert abs(mnist.train_set.x.mean().item()) < 0.1  # roughly standardised
    cifar = set_up(CIFAR10DataModule, shared_data, verify_checksums="off")
    assert len(cifar.train_set) + len(cifar.val_set) == 5085 and len(cifar.test_set) == 1017
    assert set(cifar.train_set.y.unique().tolist()) == set(range(10))


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    write_mnist(tmp_path, n_train=50, n_test=20, folder="FashionMNIST")
    dm = FashionMNISTDataModule(tmp_path, val_size=10, download=False)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 20)
    assert dm.classes[0] == "T-shirt/top" and dm.input_shape == (1, 28, 28)
    assert dm.train_set.x.min().item() == pytest.approx((0 - 0.2860) / 0.3530, abs=1e-5)
    with pytest.raises(DataError, match="MNIST/raw/train-images-idx3-ubyte"):
        MNISTDataModule(tmp_path, download=False).prepare_data()  # not MNIST's folder


def test_a_later_job_reuses_the_split_and_gets_its_own_copy_and_a_changed_file_is_read_again(
        tmp_path):
    """Each file read once per process, the split drawn per job (TensorDataModule.prepared)."""
    def reads(dm) -> tuple[int, int]:  # the files `dm.setup()` read and took from the cache
        before = dict(counts)
        dm.setup()
        return counts["read"] - before["read"], counts["reused"] - before["reused"]

    write_mnist(tmp_path)
    write_cifar10(tmp_path)
    for make in (lambda: MNISTDataModule(tmp_path, download=False),
                 lambda: CIFAR10DataModule(tmp_path, download=False)):
        first, second = make(), make()
        assert reads(first) == (2, 0) and reads(second) == (0, 2)  # training and test files
        for split in ("train_set", "val_set", "test_set"):
            assert torch.equal(getattr(first, split).x, getattr(second, split).x)
            assert torch.equal(getattr(first, split).y, getattr(second, split).y)
        second.test_set.y[:] = 0  # what a job does with its tensors stays in that job
        third = make()
        reads(third)
        assert torch.equal(third.test_set.y, first.test_set.y) and third.test_set.y.any()
    splits = [MNISTDataModule(tmp_path, val_size=0.2, split_seed=s, download=False)
              for s in (0, 1, 1)]  # other splits of the same files: drawn, not read
    assert [reads(dm) for dm in splits] == [(0, 2)] * 3 and len(splits[0].val_set) == 120
    assert not torch.equal(splits[0].val_set.x, splits[1].val_set.x)
    assert torch.equal(splits[1].val_set.x, splits[2].val_set.x)
    write_mnist(tmp_path, seed=1)  # the same sizes, other images
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    stat = images.stat()
    os.utime(images, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # (within a clock tick)
    new = MNISTDataModule(tmp_path, val_size=0.2, split_seed=0, download=False)
    assert reads(new)[0] >= 1 and not torch.equal(splits[0].train_set.x, new.train_set.x)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes() + b"x")  # corrupt now: refused, not served from memory
    with pytest.raises(DataError, match="data_batch_1 is not a valid CIFAR-10 batch .*1 bytes "
                                        "follow the batch.*corrupt"):
        CIFAR10DataModule(tmp_path, download=False).setup()


# -- torchvision's download, from a mirror on 127.0.0.1 -----------------------------------

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
    """A server on 127.0.0.1 serving `tmp_path/served`: (folder, URL, requests); no other host."""
    served = tmp_path / "served"
    served.mkdir()
    for name in "http_proxy https_proxy all_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY".split():
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
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # (poll s)
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
    """Gzipped IDX files under `served/mnist/`: (`MNIST.resources`, the uncompressed originals)."""
    raw = write_mnist(tmp_path / "original", n_train=120, n_test=40, seed=5) / "MNIST" / "raw"
    (served / "mnist").mkdir()
    resources = []
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        gz = served / "mnist" / f"{stem}.gz"
        gz.write_bytes(gzip.compress((raw / stem).read_bytes(), mtime=0))
        resources.append((gz.name, md5(gz)))
    return resources, raw


def test_mnist_downloads_from_a_mirror_and_loads_the_served_images_or_names_a_corrupt_one(
        mirror, tmp_path, monkeypatch):
    served, url, requests = mirror
    resources, raw = serve_mnist(served, tmp_path)
    # the first mirror lacks the files (404), as when a mirror is down: the next one serves
    monkeypatch.setattr(MNIST, "mirrors", [f"{url}gone/", f"{url}mnist/"])
    monkeypatch.setattr(MNIST, "resources", resources)
    data_dir = tmp_path / "data"
    dm = MNISTDataModule(data_dir, val_size=20, download=True)
    dm.prepare_data()
    for mirror_dir, code in (("mnist", 200), ("gone", 404)):
        assert {r for r in requests if r.startswith(f"GET /{mirror_dir}/")} == \
            {f"GET /{mirror_dir}/{name} {code}" for name, _ in resources}
    for stem in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert (data_dir / "MNIST" / "raw" / stem).read_bytes() == (raw / stem).read_bytes()
    dm.setup()
    images, labels = dm.read_split(train=True)
    assert np.array_equal(images[:, 0].numpy(), idx_array(raw / "train-images-idx3-ubyte"))
    assert np.array_equal(labels.numpy(), idx_array(raw / "train-labels-idx1-ubyte"))
    assert len(dm.train_set) + len(dm.val_set) == 120
    assert np.allclose(dm.denormalise(dm.test_set.x).squeeze(1).numpy() * 255,
                       idx_array(raw / "t10k-images-idx3-ubyte"), atol=1e-3)
    count = len(requests)
    MNISTDataModule(data_dir, download=True).prepare_data()  # present: nothing fetched again
    assert len(requests) == count
    resources[2] = (resources[2][0], "0" * 32)  # test images that are not what the md5 says
    with pytest.raises(DataError, match="the download failed") as err:  # named
        MNISTDataModule(tmp_path / "elsewhere", download=True).prepare_data()
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)


def serve_cifar10(served: Path, tmp_path: Path) -> tuple[Path, str]:
    """`served/cifar-10-python.tar.gz` as the official one: (the original folder, its md5)."""
    folder = write_cifar10(tmp_path / "original", per_batch=30, n_test=40, seed=7) \
        / "cifar-10-batches-py"
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return folder, md5(archive)


def test_cifar10_downloads_from_a_mirror_and_loads_the_served_images(mirror, tmp_path, monkeypatch):
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
    monkeypatch.setattr(CIFAR10, "tgz_md5", "0" * 32)  # an archive that is not what it claims
    served.mkdir()
    serve_cifar10(served, tmp_path / "again")
    with pytest.raises(DataError, match=r"test_batch, and the download failed \(RuntimeError: "
                       r"File not found or corrupted\.\)"):
        CIFAR10DataModule(tmp_path / "elsewhere", download=True).prepare_data()
