"""experiment.threads: each run sets torch's intra-op threads (its share of the cores)
and records them in timings.csv."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_extension_points import TINY  # the tiny ensemble MPC run

from bayes_mbrl.config import load_config
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.experiment import apply_threads, available_cores, run_experiment


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_zero_means_the_cores_available_to_the_process() -> None:
    assert apply_threads(0) == available_cores() == torch.get_num_threads()
    assert apply_threads(1) == 1 == torch.get_num_threads()


def test_a_run_uses_and_records_its_threads(tmp_path: Path) -> None:
    torch.set_num_threads(available_cores())
    run_experiment(load_config(None, [*TINY, "experiment.threads=1"]), tmp_path / "run")
    assert torch.get_num_threads() == 1
    with open(tmp_path / "run" / "timings.csv") as f:
        assert [row["threads"] for row in csv.DictReader(f)] == ["1", "1"]


def test_negative_threads_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"'experiment\.threads': got -1 .*an integer >= 0"):
        load_config(None, ["experiment.threads=-1"])
