"""Shared fixtures (helpers they use live in `helpers.py`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import write_cifar10, write_mnist


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data_dir holding tiny MNIST and CIFAR-10 in torchvision's layouts."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root)
    write_cifar10(root)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real MNIST and CIFAR-10 files (subsets will do) from the folder the project reads data
    from, `$BNSTUDY_DATA_DIR`: skipped where it is not set, a failure in CI (`CI=true`)."""
    root = os.environ.get("BNSTUDY_DATA_DIR", "")
    if root and (Path(root) / "MNIST" / "raw").is_dir():
        return Path(root).resolve()
    message = (f"no real data: BNSTUDY_DATA_DIR={root!r} must name a folder holding MNIST/raw "
               "and cifar-10-batches-py in torchvision's layout")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
