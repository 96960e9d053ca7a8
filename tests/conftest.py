"""Shared test fixtures and helpers."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

# small models run faster on one thread, and the suite's timing does not depend on
# what else the machine is doing
torch.set_num_threads(1)


@pytest.fixture
def generator() -> torch.Generator:
    """A fresh seeded generator per test."""
    return torch.Generator().manual_seed(1234)
