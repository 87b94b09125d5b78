"""Shared fixtures (helpers they use live in `helpers.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SHARED_DATA, write_cifar10, write_mnist


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data_dir holding tiny MNIST and CIFAR-10 in torchvision's layouts."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root)
    write_cifar10(root)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-image subsets in ../shared/data (skips where they are absent)."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_DATA}")
    return SHARED_DATA
