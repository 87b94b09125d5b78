"""LightningDataModules for MNIST and CIFAR-10, held in memory as normalised tensors.

Files in torchvision's layout are read by `bnstudy.datafiles` (downloaded when missing and
`download` is true), decoded and normalised once per process (`prepared`: a worker's jobs share
them; a changed file is read again). Batches are slices, in an order set by `seed` and the
epoch alone; under DDP each process serves its share (Lightning's
`use_distributed_sampler` is off: see `EpochBatchSampler`)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from bnstudy.datafiles import mnist_files, mnist_folder, normalised, read_cifar_batches, read_mnist
from bnstudy.errors import DataError, one_line

log = logging.getLogger(__name__)
KEEP = 4  # files kept per process (the study: 2 datasets x their training and test files)
_prepared: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()
counts = {"read": 0, "reused": 0}  # files this process read and reused


def _stamp(path: Path) -> tuple:
    """What tells a file from a changed one (cheap where a checksum reads every byte)."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino


def _folders(root: Path) -> set[Path]:
    return {p for p in [root, *root.rglob("*")] if p.is_dir()}


class TensorPairs(Dataset):
    """Inputs and targets held as two tensors; indexed with a tensor of indices it gives one
    minibatch `(x, y)`, with a list of them a list of minibatches (`Classifier.steps_per_call`)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index):
        if isinstance(index, list):
            return [(self.x[i], self.y[i]) for i in index]
        return self.x[index], self.y[index]

    def to(self, device: torch.device) -> TensorPairs:
        return TensorPairs(self.x.to(device), self.y.to(device))


class EpochBatchSampler(Sampler):
    """Yields index tensors, one per minibatch, shuffled by `(seed, epoch)` alone.

    Lightning calls `set_epoch` before each epoch, so epoch e's order is the same fresh and
    resumed. Under DDP the process of rank r takes every `num_replicas`-th sample from r on;
    when shuffling, all take the same number (the remainder is left out this epoch) so they
    step in lockstep, and a last minibatch of one sample is dropped (BatchNorm cannot normalise
    it). With `bundle` K > 1 it yields lists of K (the last may be fewer): one Lightning batch
    for `Classifier.steps_per_call`."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, bundle: int = 1) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.num_replicas, self.rank, self.bundle = num_replicas, rank, bundle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Samples this process serves an epoch."""
        n, replicas = self.n, self.num_replicas
        return n // replicas if self.shuffle else len(range(self.rank, n, replicas))

    @property
    def num_minibatches(self) -> int:
        n = self.num_samples
        single_last = self.shuffle and n > 1 and n % self.batch_size == 1
        return -(-n // self.batch_size) - single_last

    def __len__(self) -> int:
        return -(-self.num_minibatches // self.bundle)

    def __iter__(self):
        # A generator: the order is drawn at the first batch, not when the iterator is made,
        # because Lightning may make it before calling `set_epoch` (in a resumed fit).
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
        mine = order[self.rank :: self.num_replicas][: self.num_samples]
        minibatches = mine.split(self.batch_size)[: self.num_minibatches]
        if self.bundle == 1:
            yield from minibatches
        else:
            for start in range(0, len(minibatches), self.bundle):
                yield list(minibatches[start : start + self.bundle])


class OrderedBatchSampler(EpochBatchSampler, SequentialSampler):
    """An `EpochBatchSampler` that does not shuffle; a `SequentialSampler` too, which Lightning's
    `overfit_batches` keeps instead of swapping in a sampler of single samples."""

    def __init__(self, n: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(n, batch_size, False, 0, num_replicas, rank)


def batches(data: TensorPairs, batch_size: int, shuffle: bool, seed: int = 0,
            num_replicas: int = 1, rank: int = 0, bundle: int = 1) -> DataLoader:
    """A DataLoader that slices whole minibatches out of in-memory tensors (no per-sample
    collation), this process's share of them (see `EpochBatchSampler`)."""
    sampler = (EpochBatchSampler(len(data), batch_size, True, seed, num_replicas, rank, bundle)
               if shuffle else OrderedBatchSampler(len(data), batch_size, num_replicas, rank))
    return DataLoader(data, sampler=sampler, batch_size=None)


class TensorDataModule(L.LightningDataModule):
    """Base for the image datamodules: decode once, normalise, split, serve in-memory batches.

    Subclasses set the class attributes and implement `files(train)` (a split's files),
    `fetch()` (download into `data_dir`) and `read_split(train)` (a split's uint8 images
    (N, C, H, W) and int64 labels (N,)). `val_size` is a count, or a fraction of the training
    files when below 1; `train_size` caps the training split (None: the rest); `split_seed` draws
    the validation split (None: the run's `seed`, so that seeds vary the split too); loaders
    serve `TensorPairs` on the trainer's device."""

    name: str
    folder: str
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def __init__(self, data_dir: str | Path, batch_size: int = 64, val_size: float | int = 0.1,
                 train_size: int | None = None, eval_batch_size: int = 1000,
                 split_seed: int | None = 0, seed: int = 0, download: bool | None = True) -> None:
        super().__init__()
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.train_size = val_size, train_size
        self.seed, self.download = seed, download
        self.split_seed = seed if split_seed is None else split_seed
        self.train_set = self.val_set = self.test_set = None  # TensorPairs after `setup`

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare_data(self) -> None:
        missing = [p for p in self.files(True) + self.files(False) if not p.is_file()]
        if not missing:
            return
        where = ", ".join(str(p) for p in missing)
        fix = ("Point paths.data_dir (or the BNSTUDY_DATA_DIR environment variable) at a folder "
               f"that holds {self.folder}/")
        if not self.download:  # None: a finished run rebuilt (draw, eval), never downloaded
            raise DataError(f"{self.name}: files not found: {where}" + (
                f". {fix} (paths.data_dir=DIR)." if self.download is None else "; download is "
                f"disabled (dataset.datamodule.download=false). {fix}, or allow the download with "
                "dataset.datamodule.download=true."))
        existed = _folders(self.data_dir)
        try:
            self.fetch()
        except Exception as err:  # remove the empty folders it left, deepest first
            made = _folders(self.data_dir) - existed
            for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
                if not any(folder.iterdir()):
                    folder.rmdir()
            raise DataError(f"{self.name}: files not found: {where}, and the download failed "
                            f"({type(err).__name__}: {one_line(err)}). {fix}, or "
                            "retry when online.") from err

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            x, y, x_val, y_val = self.prepared(train=True)
            self.train_set, self.val_set = TensorPairs(x, y), TensorPairs(x_val, y_val)
        # a fit ends in a test: a damaged test file is found before training, not after it
        if self.test_set is None and stage in (None, "fit", "test"):
            self.test_set = TensorPairs(*self.prepared(train=False))
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        for attr in ("train_set", "val_set", "test_set"):
            data = getattr(self, attr)
            if data is not None and data.x.device != device:
                setattr(self, attr, data.to(device))

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Lightning's hook: a minibatch `[x, y]` (or a list of K) already on the device, as
        `setup` put it, is handed on without Lightning's walk through it (~35 µs a CPU step,
        2-3 % of a small MLP's); anything else is moved as usual."""
        pairs = batch if batch and isinstance(batch[0], list | tuple) else [batch]
        if all(isinstance(t, torch.Tensor) and t.device == device for p in pairs for t in p):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels → float32, standardised with the dataset's channel mean and std."""
        return normalised(images, self.mean, self.std)

    def denormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalise`, to [0, 1] pixels (for display)."""
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return (images * std + mean).clamp(0, 1)

    def split_sizes(self, n: int) -> tuple[int, int]:
        """(train, val) counts taken from `n` training files."""
        val = int(round(self.val_size * n)) if 0 < self.val_size < 1 else int(self.val_size)
        train = n - val if self.train_size is None else int(self.train_size)
        if val < 1 or train < 1 or train + val > n:
            raise DataError(
                f"{self.name}: train_size={self.train_size} and val_size={self.val_size} ask for "
                f"{train} training and {val} validation images, but the training files hold {n}. "
                f"Choose dataset.train_size + dataset.val_size <= {n} (val_size may be a fraction)."
            )
        return train, val

    def prepared(self, train: bool) -> tuple[torch.Tensor, ...]:
        """Normalised `(x, y)` of the test files, or `(x, y, x_val, y_val)` split from the
        training files. The last `KEEP` files are kept per process, keyed by each file's
        `_stamp`; each call draws the split anew and gets its own tensors (a job may change
        them). A missing file or an error is never kept: reading reports it."""
        try:
            key = (type(self).__name__, train, getattr(self, "verify_checksums", None),
                   *map(_stamp, self.files(train)))
        except OSError:
            key = None
        if key in _prepared:
            _prepared.move_to_end(key)
            counts["reused"] += 1
            x, y = _prepared[key]
        else:
            images, y = self.read_split(train)
            x = self.normalise(images)
            counts["read"] += 1
            if key is not None:
                _prepared[key] = (x, y)
                while len(_prepared) > KEEP:
                    _prepared.popitem(last=False)
        if not train:
            return x.clone(), y.clone()
        n_train, n_val = self.split_sizes(len(y))
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        val, rest = order[:n_val], order[n_val : n_val + n_train]
        return x[rest], y[rest], x[val], y[val]

    def _loader(self, data: TensorPairs, train: bool) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        shard = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if train:  # in order with `trainer.overfit_batches`: the same few batches each epoch
            overfit = trainer is not None and trainer.overfit_batches > 0
            bundle = getattr(trainer and trainer.lightning_module, "minibatches_per_step", 1)
            return batches(data, self.batch_size, not overfit, self.seed, *shard, bundle)
        return batches(data, self.eval_batch_size, False, 0, *shard)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)


class MNISTDataModule(TensorDataModule):
    """MNIST: 28×28 grey digits, torchvision's `MNIST/raw/` IDX files."""

    name = "mnist"
    torchvision_class = MNIST
    input_shape = (1, 28, 28)
    mean, std = (0.1307,), (0.3081,)
    classes = tuple(str(d) for d in range(10))

    @property
    def folder(self) -> str:
        return mnist_folder(self.torchvision_class)

    def files(self, train: bool) -> list[Path]:
        return mnist_files(self.data_dir, self.torchvision_class, train)

    def fetch(self) -> None:
        for train in (True, False):
            self.torchvision_class(self.data_dir, train=train, download=True)

    def read_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return read_mnist(self.data_dir, self.torchvision_class, train, self.name)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: MNIST's format and shapes, 10 clothing classes (`FashionMNIST/raw/`)."""

    name = "fashion_mnist"
    torchvision_class = FashionMNIST
    mean, std = (0.2860,), (0.3530,)
    classes = tuple(FashionMNIST.classes)


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10: 32×32 RGB, torchvision's pickled `cifar-10-batches-py/` batches.

    `verify_checksums` compares each batch with the official md5: "strict" refuses a
    mismatch, "warn" (default) loads it with a warning (subsets such as the shared
    fixtures differ), "off" skips the check. Batches are read with a restricted unpickler."""

    name = "cifar10"
    folder = CIFAR10.base_folder
    input_shape = (3, 32, 32)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    classes = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")  # fmt: skip

    VERIFY_MODES = ("strict", "warn", "off")

    def __init__(self, *args, verify_checksums: str = "warn", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if verify_checksums not in self.VERIFY_MODES:
            raise DataError(f"dataset.datamodule.verify_checksums={verify_checksums!r} is not one "
                            f"of {self.VERIFY_MODES}.")
        self.verify_checksums = verify_checksums

    def _batch_list(self, train: bool) -> list[list[str]]:  # [name, md5] pairs
        return CIFAR10.train_list if train else CIFAR10.test_list

    def files(self, train: bool) -> list[Path]:
        return [self.data_dir / self.folder / name for name, _ in self._batch_list(train)]

    def fetch(self) -> None:
        download_and_extract_archive(CIFAR10.url, str(self.data_dir), filename=CIFAR10.filename,
                                     md5=CIFAR10.tgz_md5)

    _warned: set[str] = set()  # folders already warned about, once per process

    def read_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The batches; those unlike the official md5s (or missing) are refused ("strict") or
        loaded with one warning per folder and process ("warn")."""
        folder = self.data_dir / self.folder
        unofficial = [] if self.verify_checksums == "off" else [
            name for name, md5 in self._batch_list(train)
            if not check_integrity(str(folder / name), md5)]
        images, labels = read_cifar_batches(self.files(train))
        if unofficial:
            message = (f"{folder}: {', '.join(unofficial)} do(es) not match the official "
                       "CIFAR-10 checksums: a subset or a modified copy. Results on it are not "
                       "full-CIFAR-10 results.")
            if self.verify_checksums == "strict":
                raise DataError(f"{message} Delete the files and download again, or load them "
                                "anyway with dataset.datamodule.verify_checksums=warn (or off).")
            if str(folder) not in self._warned:
                self._warned.add(str(folder))
                log.warning(message)
        return images, labels
