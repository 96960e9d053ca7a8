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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how many documentation code blocks ran (``tests/test_docs.py`` records each
    file's count as the ``doc_code_blocks`` property of its test)."""
    blocks = files = 0
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for name, value in getattr(report, "user_properties", ()):
                if name == "doc_code_blocks":
                    blocks += int(value)
                    files += 1
    if files:
        terminalreporter.write_line(f"doc code blocks executed: {blocks} in {files} files")
