"""Readers of torchvision's on-disk files: uint8 images (N, C, H, W) and int64 labels (N,).

MNIST and Fashion-MNIST are IDX files in `<Class>/raw/`; CIFAR-10 is pickled batches in
`cifar-10-batches-py/`, read with a restricted unpickler."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import MNIST

from bnstudy.errors import DataError


def normalised(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) → float32, standardised with the channels' mean and std."""
    mean, std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (images.float().div_(255) - mean).div_(std)


def mnist_folder(dataset: type[MNIST]) -> str:
    """Where torchvision keeps the IDX files of `dataset` (MNIST or a subclass) under its root."""
    return f"{dataset.__name__}/raw"


def mnist_files(root: Path, dataset: type[MNIST], train: bool) -> list[Path]:
    """The images and labels IDX files of a split of `dataset` (MNIST or a subclass)."""
    prefix = "train" if train else "t10k"
    raw = root / mnist_folder(dataset)
    return [raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"]


def read_mnist(root: Path, dataset: type[MNIST], train: bool, name: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) and labels of a split, decoded by torchvision's `dataset` class;
    errors begin with `name` and name the files."""
    files = mnist_files(root, dataset, train)
    try:
        ds = dataset(root, train=train, download=False)
        images, labels = ds.data, ds.targets
    except Exception as err:
        raise DataError(f"{name}: could not read {' and '.join(map(str, files))} "
                        f"({type(err).__name__}: {err}). The files are corrupt or truncated: "
                        "delete them and download again, or point paths.data_dir at intact "
                        "files.") from err
    if len(images) != len(labels):
        raise DataError(f"{name}: {files[0]} holds {len(images)} images but {files[1]} holds "
                        f"{len(labels)} labels.")
    return images.unsqueeze(1).contiguous(), labels.long()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: dicts, lists, strings, numbers and numpy arrays, nothing else."""

    ALLOWED = {  # (numpy 1's module, numpy 2's)
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytearray"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds "
                                     "only arrays, lists and strings")


def load_cifar_batch(path: Path) -> dict:
    """Reads one pickled CIFAR batch safely, naming the file in any error. A batch must be one
    pickle and nothing after it, with 3 × 32 × 32 bytes per image and a label per image."""
    try:
        with open(path, "rb") as f:
            entry = RestrictedUnpickler(f, encoding="latin1").load()
            trailing = len(f.read())
        raw = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"], dtype=np.int64)
        if trailing:
            raise ValueError(f"{trailing} bytes follow the batch")
        if raw.ndim != 2 or raw.shape[1] != 3 * 32 * 32:
            raise ValueError(f"its images are {raw.shape}, not (N, 3072) bytes")
        if len(raw) != len(labels):
            raise ValueError(f"it holds {len(raw)} images but {len(labels)} labels")
    except Exception as err:  # any failure here means the file is not a valid batch
        raise DataError(f"{path} is not a valid CIFAR-10 batch ({type(err).__name__}: {err}): "
                        "the file is corrupt. Delete it and download again "
                        "(dataset.datamodule.download=true), or point paths.data_dir at a "
                        "folder with intact files.") from err
    return {"data": raw.reshape(-1, 3, 32, 32), "labels": labels}


def read_cifar_batches(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) and labels of CIFAR batches, concatenated in the order given."""
    batches = [load_cifar_batch(path) for path in paths]
    return (torch.from_numpy(np.concatenate([b["data"] for b in batches])),
            torch.from_numpy(np.concatenate([b["labels"] for b in batches])))
