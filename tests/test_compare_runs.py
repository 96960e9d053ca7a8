"""Comparing configurations across seeds: the statistics against closed forms and hand
computations, and ``bayes-mbrl compare`` on run and sweep directories."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from bayes_mbrl.cli import main
from bayes_mbrl.config import Config, dump_config
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.runs import METRIC_FIELDS
from bayes_mbrl.sweeps import compare_runs
from bayes_mbrl.sweeps.stats import (
    curve_band,
    interval_estimate,
    iqm,
    mean_of_replicates,
    probability_of_improvement,
    probability_of_improvement_estimate,
)


# ---------------------------------------------------------------------- statistics
def test_iqm_is_the_mean_of_the_middle_half() -> None:
    assert iqm([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(3.0)  # 1 cut at each end
    assert iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # 3, 4, 5, 6
    # runs x tasks are pooled: the same eight numbers in a (4, 2) matrix
    assert iqm(np.arange(1.0, 9.0).reshape(4, 2)) == pytest.approx(4.5)
    assert iqm([-1e6, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1e6]) == pytest.approx(1.0)


def test_probability_of_improvement_by_hand() -> None:
    assert probability_of_improvement([5.0, 6.0, 7.0], [1.0, 2.0]) == 1.0  # disjoint
    assert probability_of_improvement([1.0, 2.0], [5.0, 6.0, 7.0]) == 0.0
    assert probability_of_improvement([2.0, 2.0], [2.0, 2.0, 2.0]) == 0.5  # all ties
    # pairs (x, y): 3>1, 3<4, 4>1, 4=4 (half), 5>1, 5>4: 4.5 of 6
    assert probability_of_improvement([3.0, 4.0, 5.0], [1.0, 4.0]) == pytest.approx(0.75)
    # averaged over tasks: X wins task 0, loses task 1
    x, y = np.array([[10.0, 0.0], [11.0, 1.0]]), np.array([[0.0, 10.0], [1.0, 11.0]])
    assert probability_of_improvement(x, y) == pytest.approx(0.5)
    est = probability_of_improvement_estimate([5.0, 6.0, 7.0], [1.0, 2.0], reps=500)
    assert (est.value, est.low, est.high) == (1.0, 1.0, 1.0)  # every resample is disjoint


def test_bootstrap_interval_of_a_constant_is_degenerate() -> None:
    est = interval_estimate(np.full(5, -3.25), reps=500)
    assert (est.value, est.low, est.high) == (-3.25, -3.25, -3.25)


def test_bootstrap_resamples_runs_within_each_task() -> None:
    """Task 0 scores 0 and task 1 scores 10 on every run: a stratified resample always
    holds four of each, so its IQM is 5 exactly (a pooled resample would vary)."""
    scores = np.array([[0.0, 10.0]] * 4)
    est = interval_estimate(scores, reps=500)
    assert (est.value, est.low, est.high) == (5.0, 5.0, 5.0)


def test_percentile_interval_of_the_mean_matches_the_normal_closed_form() -> None:
    x = np.random.default_rng(3).normal(2.0, 1.5, size=400)
    half = 1.959964 * x.std() / np.sqrt(len(x))
    est = interval_estimate(x, mean_of_replicates, reps=4000, rng=np.random.default_rng(0))
    assert est.value == pytest.approx(x.mean())
    assert est.low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert est.high == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_curve_band_uses_the_runs_that_reach_each_point() -> None:
    values = np.array([[1.0, 2.0, 3.0], [1.0, 4.0, np.nan]])
    mean, low, high, count = curve_band(values, reps=300)
    np.testing.assert_allclose(mean, [1.0, 3.0, 3.0])
    np.testing.assert_array_equal(count, [2, 2, 1])
    assert low[0] == high[0] == 1.0  # equal runs: no spread
    assert 2.0 <= low[1] <= 3.0 <= high[1] <= 4.0
    assert low[2] == high[2] == 3.0  # one run


def test_bad_scores_are_a_data_error() -> None:
    with pytest.raises(DataError, match="NaN"):
        iqm([1.0, float("nan")])
    with pytest.raises(DataError, match="tasks"):
        probability_of_improvement(np.ones((2, 2)), np.ones((2, 3)))


# ------------------------------------------------------------------------- compare
def _fake_run(run_dir: Path, config: Config, seed: int, returns: list[float]) -> Path:
    """A run directory as the run store writes it: config.toml and metrics.csv."""
    run_dir.mkdir(parents=True)
    exp = dataclasses.replace(config.experiment, seed=seed)
    dump_config(dataclasses.replace(config, experiment=exp), run_dir / "config.toml")
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        for i, r in enumerate(returns):
            writer.writerow({"episode": i + 1, "env_steps": 200 * (i + 1), "return": r})
    return run_dir


GOOD = {0: [-900.0, -300.0, -150.0, -120.0], 1: [-800.0, -500.0, -210.0, -100.0],
        2: [-950.0, -250.0, -190.0, -110.0]}  # fmt: skip
POOR = {0: [-900.0, -850.0, -700.0, -600.0], 1: [-1000.0, -900.0, -800.0, -650.0],
        2: [-950.0, -920.0, -880.0, -820.0]}  # fmt: skip


def _two_configs(tmp_path: Path) -> list[Path]:
    base = Config()
    short = dataclasses.replace(base, planner=dataclasses.replace(base.planner, horizon=5))
    dirs = [_fake_run(tmp_path / f"long-s{s}", base, s, r) for s, r in GOOD.items()]
    dirs += [_fake_run(tmp_path / f"short-seed{s}-20261201-101010", short, s, r)
             for s, r in POOR.items()]  # fmt: skip
    return dirs


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_compare_groups_runs_by_config_and_writes_the_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = _two_configs(tmp_path / "runs")
    out = tmp_path / "cmp"
    argv = ["compare", *map(str, dirs), "--out", str(out), "--threshold", "-200", "--last", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "long > short: 1.00 [1.00, 1.00]" in printed

    iqm_rows = {r["config"]: r for r in _csv(out / "iqm.csv")}
    assert set(iqm_rows) == {"long", "short"}  # named after the directories, seeds dropped
    long_scores = [np.mean(r[-2:]) for r in GOOD.values()]  # -135, -155, -150
    assert float(iqm_rows["long"]["iqm"]) == pytest.approx(iqm(long_scores), rel=1e-5)
    assert float(iqm_rows["long"]["mean"]) == pytest.approx(np.mean(long_scores), rel=1e-5)
    assert float(iqm_rows["long"]["ci_low"]) <= float(iqm_rows["long"]["iqm"])

    poi = {(r["config_x"], r["config_y"]): float(r["probability"])
           for r in _csv(out / "probability_of_improvement.csv")}  # fmt: skip
    assert poi == {("long", "short"): 1.0, ("short", "long"): 0.0}

    episodes = [r for r in _csv(out / "curves_episode.csv") if r["config"] == "long"]
    assert [int(r["episode"]) for r in episodes] == [1, 2, 3, 4]
    assert float(episodes[1]["mean"]) == pytest.approx(np.mean([-300, -500, -250]))
    steps = [r for r in _csv(out / "curves_steps.csv") if r["config"] == "short"]
    assert [int(r["env_steps"]) for r in steps] == [200, 400, 600, 800]

    # -200 is first reached at episode 3 (seeds 0 and 2) and 4 (seed 1); never by short
    table = {r["config"]: r for r in _csv(out / "steps_to_threshold.csv")}
    assert (table["long"]["reached"], table["long"]["median_steps"]) == ("3", "600")
    assert (table["long"]["min_steps"], table["long"]["max_steps"]) == ("600", "800")
    assert (table["short"]["reached"], table["short"]["median_steps"]) == ("0", "")
    per_run = {
        (r["config"], r["seed"]): r["steps"] for r in _csv(out / "steps_to_threshold_runs.csv")
    }
    assert per_run[("long", "1")] == "800" and per_run[("short", "0")] == ""
    for name in ("curves.png", "aggregate.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_compare_reads_a_sweep_directory_by_its_labels(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    dirs = _two_configs(sweep_dir)
    trials = [{"trial": d.name, "config": "A" if "long" in d.name else "B", "seed": 0,
               "status": "finished", "run_dir": d.name} for d in dirs]  # fmt: skip
    trials[-1]["status"] = "failed"
    (sweep_dir / "sweep.json").write_text(json.dumps({"trials": trials}))
    result = compare_runs([sweep_dir], sweep_dir / "compare", reps=200)
    assert result.labels == ["A", "B"]
    assert len(result.runs["B"]) == 2  # the failed trial is left out, with a note
    assert any("failed" in note for note in result.notes)
    assert result.improvement[("A", "B")].value == 1.0
    # the CLI's default --out for one sweep directory
    assert main(["compare", str(sweep_dir), "--reps", "200"]) == 0
    assert (sweep_dir / "compare" / "iqm.csv").is_file()


def test_compare_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a run directory"):
        compare_runs([tmp_path / "empty"], tmp_path / "out")
    run = _fake_run(tmp_path / "a-s0", Config(), 0, [-1.0])
    with pytest.raises(ConfigError, match="no column 'eval_retrun'"):
        compare_runs([run], tmp_path / "out", metric="eval_retrun")
    assert main(["compare", str(run)]) == 2  # --out required for run directories
