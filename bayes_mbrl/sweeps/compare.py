"""Compare configurations across seeds: ``bayes-mbrl compare RUN_DIR... | SWEEP_DIR``.

Runs are grouped by configuration: a sweep directory's finished trials by their
label (``sweep.json``), other run directories by their ``config.toml`` with the seed
(and threads, progress) left out, named after their directory (``-s<seed>`` or
``-seed<seed>-<time>`` dropped). Each run's **score** is its mean ``metric`` (the
episode return by default) over its last ``last`` episodes. :func:`compare_runs`
writes into ``out``:

- ``curves.png``, ``curves_episode.csv``, ``curves_steps.csv``: the mean over seeds of
  the metric per episode and per environment step (the last finished episode's value
  at each step), with percentile bootstrap bands over seeds;
- ``aggregate.png``, ``iqm.csv``: the interquartile mean (IQM) of the scores with its
  stratified bootstrap interval; ``probability_of_improvement.csv``: ``P(X > Y)`` for
  every ordered pair of configurations, with its interval (:mod:`~bayes_mbrl.sweeps.stats`);
- ``scores.csv``: every run's score;
- with thresholds: ``steps_to_threshold.csv`` (per configuration and threshold: runs
  that reached it, the median environment steps to reach it counting the runs that
  never did as infinite, so it is empty when fewer than half reached it, and the
  fewest and most steps among the runs that did) and ``steps_to_threshold_runs.csv``
  (per run: the environment steps at the end of the first episode whose metric is at
  least the threshold; empty if none).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bayes_mbrl.config import config_to_dict
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.runs import CONFIG_FILE, atomic_write_bytes, read_run_config
from bayes_mbrl.sweeps.runner import csv_cell, read_summary
from bayes_mbrl.sweeps.stats import (
    Estimate,
    curve_band,
    interval_estimate,
    iqm_of_replicates,
    probability_of_improvement_estimate,
)

__all__ = ["Comparison", "RunCurve", "collect_runs", "compare_runs"]

_SEED_SUFFIX = re.compile(r"[-_]s(?:eed)?\d+(?:-\d{8}-\d{6})?$")
_NOT_CONFIG = {"experiment": ("seed", "threads", "progress", "checkpoint_keep")}


@dataclass
class RunCurve:
    """One run's learning curve.

    Attributes:
        run_dir: the run directory.
        label: its configuration's label.
        seed: ``experiment.seed``.
        env_id: ``env.id``.
        episodes: episode numbers (1-based), ``(episodes,)``.
        env_steps: environment steps at the end of each episode.
        values: the metric per episode (NaN where metrics.csv has none).
    """

    run_dir: Path
    label: str
    seed: int
    env_id: str
    episodes: np.ndarray
    env_steps: np.ndarray
    values: np.ndarray


@dataclass
class Comparison:
    """What :func:`compare_runs` found and wrote.

    Attributes:
        labels: the configurations, in order.
        runs: the runs of each configuration.
        scores: each configuration's run scores ``(runs,)``.
        iqm: each configuration's IQM of the scores with its interval.
        improvement: ``(x, y) -> P(X > Y)`` with its interval, for every ordered pair.
        steps_to_threshold: one row per configuration and threshold.
        files: name -> path of everything written.
        notes: runs left out and why.
    """

    labels: list[str]
    runs: dict[str, list[RunCurve]]
    scores: dict[str, np.ndarray]
    iqm: dict[str, Estimate]
    improvement: dict[tuple[str, str], Estimate]
    steps_to_threshold: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The IQM, probability-of-improvement and steps-to-threshold tables as text."""
        width = max(len("configuration"), *(len(label) for label in self.labels))
        lines = [f"{'configuration':<{width}}  runs  IQM of scores [95% CI]"]
        for label in self.labels:
            e = self.iqm[label]
            lines.append(
                f"{label:<{width}}  {len(self.scores[label]):>4}  "
                f"{e.value:.1f} [{e.low:.1f}, {e.high:.1f}]"
            )
        if self.improvement:
            lines += ["", "P(X > Y) [95% CI]"]
            for (x, y), e in self.improvement.items():
                lines.append(f"  {x} > {y}: {e.value:.2f} [{e.low:.2f}, {e.high:.2f}]")
        if self.steps_to_threshold:
            lines += ["", "steps to threshold: reached / runs, median steps (never = inf)"]
            for row in self.steps_to_threshold:
                median = row["median_steps"]
                shown = "never (fewer than half)" if median == "" else f"{median:g}"
                lines.append(
                    f"  {row['config']} >= {row['threshold']:g}: "
                    f"{row['reached']}/{row['runs']}, median {shown}"
                )
        return "\n".join(lines) + "\n"


def _read_curve(run_dir: Path, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = run_dir / "metrics.csv"
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if rows and metric not in rows[0]:
        raise ConfigError(f"{path} has no column {metric!r}; metrics are {', '.join(rows[0])}")

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    episodes = np.array([int(r["episode"]) for r in rows], dtype=np.int64)
    steps = np.array([int(r["env_steps"]) for r in rows], dtype=np.int64)
    values = np.array([number(r[metric]) for r in rows], dtype=np.float64)
    return episodes, steps, values


def _config_key(run_dir: Path) -> str:
    d = config_to_dict(read_run_config(run_dir))
    for section, keys in _NOT_CONFIG.items():
        for key in keys:
            d.get(section, {}).pop(key, None)
    return json.dumps(d, sort_keys=True, default=str)


def _label_of(dirs: list[Path]) -> str:
    names = {_SEED_SUFFIX.sub("", d.name) for d in dirs}
    if len(names) == 1:
        return names.pop()
    first = sorted(names)
    prefix = first[0]
    for name in first[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix.rstrip("-_.") or first[0]


def collect_runs(
    paths: Sequence[Path | str], metric: str = "return"
) -> tuple[list[RunCurve], list[str]]:
    """The runs to compare, with their labels, and notes on the runs left out.

    Args:
        paths: run directories, or sweep directories (holding ``sweep.json``), whose
            finished trials are taken.
        metric: the metrics.csv column to read.

    Raises:
        ConfigError: a path is neither a run nor a sweep directory, or nothing is left.
    """
    notes: list[str] = []
    plain: list[Path] = []
    labelled: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if (p / "sweep.json").is_file():
            trials = read_summary(p)
            for t in trials:
                if t.get("status") == "finished":
                    labelled.append((p / str(t["run_dir"]), str(t["config"])))
                else:
                    notes.append(f"{p / str(t.get('run_dir'))}: left out, trial {t.get('status')}")
        elif (p / CONFIG_FILE).is_file():
            plain.append(p)
        else:
            raise ConfigError(
                f"{p} is neither a run directory (no {CONFIG_FILE}) nor a sweep directory "
                "(no sweep.json); give run directories or the --out of a 'bayes-mbrl sweep'"
            )
    groups: dict[str, list[Path]] = {}
    for d in plain:
        groups.setdefault(_config_key(d), []).append(d)
    taken = {label for _, label in labelled}
    for dirs in groups.values():
        label, n = _label_of(dirs), 2
        while label in taken:
            label, n = f"{_label_of(dirs)}#{n}", n + 1
        taken.add(label)
        labelled += [(d, label) for d in dirs]
    runs: list[RunCurve] = []
    seen: set[Path] = set()
    for run_dir, label in labelled:
        if run_dir.resolve() in seen:
            continue
        seen.add(run_dir.resolve())
        config = read_run_config(run_dir)
        episodes, steps, values = _read_curve(run_dir, metric)
        if not np.isfinite(values).any():
            notes.append(f"{run_dir}: left out, no {metric} in metrics.csv yet")
            continue
        runs.append(
            RunCurve(run_dir, label, config.experiment.seed, config.env.id, episodes, steps, values)
        )
    if not runs:
        raise ConfigError(f"no finished runs with a {metric!r} to compare in {list(paths)}")
    return runs, notes


def _score(run: RunCurve, last: int) -> float:
    finite = run.values[np.isfinite(run.values)]
    return float(finite[-last:].mean())


def _by_episode(runs: list[RunCurve]) -> tuple[np.ndarray, np.ndarray]:
    n = max(int(r.episodes.max()) for r in runs)
    grid = np.arange(1, n + 1)
    values = np.full((len(runs), n), np.nan)
    for i, r in enumerate(runs):
        values[i, r.episodes - 1] = r.values
    return grid, values


def _by_step(runs: list[RunCurve]) -> tuple[np.ndarray, np.ndarray]:
    """At each step of the union of the runs' episode ends: each run's latest value
    (carried over its NaNs; NaN before its first episode end and after its last)."""
    grid = np.unique(np.concatenate([r.env_steps for r in runs]))
    values = np.full((len(runs), len(grid)), np.nan)
    for i, r in enumerate(runs):
        filled = r.values.copy()
        for j in range(1, len(filled)):
            if not np.isfinite(filled[j]):
                filled[j] = filled[j - 1]
        idx = np.searchsorted(r.env_steps, grid, side="right") - 1
        inside = (idx >= 0) & (grid <= r.env_steps[-1])
        values[i, inside] = filled[idx[inside]]
    return grid, values


def _first_reach(run: RunCurve, threshold: float) -> int | None:
    hit = np.flatnonzero(np.nan_to_num(run.values, nan=-np.inf) >= threshold)
    return int(run.env_steps[hit[0]]) if len(hit) else None


def _write_csv(path: Path, header: Sequence[str], rows: list[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([csv_cell(v) for v in row])
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def _plot_curves(
    path: Path, curves: dict[str, dict[str, tuple[np.ndarray, ...]]], metric: str, conf: float
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind, xlabel in ((axes[0], "episode", "episode"), (axes[1], "steps", "env steps")):
        for label, by_kind in curves.items():
            x, mean, low, high = by_kind[kind]
            (line,) = ax.plot(x, mean, label=label, marker="o" if kind == "episode" else None)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric}: mean over seeds ({conf:.0%} bootstrap CI)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_aggregate(path: Path, result: Comparison, last: int, conf: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = result.labels
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(labels) + 2.5))
    y = np.arange(len(labels))
    est = [result.iqm[label] for label in labels]
    axes[0].errorbar(
        [e.value for e in est],
        y,
        xerr=[[e.value - e.low for e in est], [e.high - e.value for e in est]],
        fmt="o",
        capsize=4,
    )
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)
    axes[0].set_xlabel(f"IQM of the mean of the last {last} episodes ({conf:.0%} CI)")
    axes[0].grid(alpha=0.3)
    matrix = np.full((len(labels), len(labels)), np.nan)
    for (a, b), e in result.improvement.items():
        matrix[labels.index(a), labels.index(b)] = e.value
    image = axes[1].imshow(matrix, vmin=0, vmax=1, cmap="RdBu")
    for (i, j), v in np.ndenumerate(matrix):
        if np.isfinite(v):
            color = "white" if abs(v - 0.5) > 0.3 else "black"
            axes[1].text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color=color)
    axes[1].set_xticks(y, labels, fontsize=8, rotation=30, ha="right")
    axes[1].set_yticks(y, labels, fontsize=8)
    axes[1].set_title("P(row > column)", fontsize=10)
    fig.colorbar(image, ax=axes[1])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_runs(
    paths: Sequence[Path | str],
    out: Path | str,
    thresholds: Sequence[float] = (),
    metric: str = "return",
    last: int = 3,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Compare the configurations of runs across their seeds; write PNG and CSV files.

    Args:
        paths: run directories and/or sweep directories (see :func:`collect_runs`).
        out: directory for the figures and tables (created).
        thresholds: metric values for the steps-to-threshold tables.
        metric: the metrics.csv column: ``return`` or ``eval_return``.
        last: a run's score is the mean metric of its last ``last`` episodes with one.
        reps: bootstrap replicates.
        confidence: coverage of the intervals.
        seed: seed of the bootstrap's generator.

    Returns:
        The estimates and the paths written (see the module docstring).

    Raises:
        ConfigError: bad arguments, or paths that hold no runs.
    """
    if last < 1:
        raise ConfigError(f"last must be at least 1 episode, got {last}")
    if reps < 100:
        raise ConfigError(f"reps must be at least 100 bootstrap replicates, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    runs, notes = collect_runs(paths, metric)
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_label: dict[str, list[RunCurve]] = {}
    for r in runs:
        by_label.setdefault(r.label, []).append(r)
    labels = list(by_label)
    envs = {r.env_id for r in runs}
    if len(envs) > 1:
        notes.append(f"the runs are on different environments ({', '.join(sorted(envs))})")
    scores = {k: np.array([_score(r, last) for r in v]) for k, v in by_label.items()}
    iqm = {
        k: interval_estimate(s, iqm_of_replicates, reps, confidence, rng) for k, s in scores.items()
    }
    improvement = {
        (a, b): probability_of_improvement_estimate(scores[a], scores[b], reps, confidence, rng)
        for a in labels
        for b in labels
        if a != b
    }
    result = Comparison(labels, by_label, scores, iqm, improvement, notes=notes)
    curves: dict[str, dict[str, tuple[np.ndarray, ...]]] = {}
    episode_rows: list[Sequence[Any]] = []
    step_rows: list[Sequence[Any]] = []
    for label, group in by_label.items():
        curves[label] = {}
        for kind, (grid, values), rows in (
            ("episode", _by_episode(group), episode_rows),
            ("steps", _by_step(group), step_rows),
        ):
            mean, low, high, count = curve_band(values, reps, confidence, rng)
            curves[label][kind] = (grid, mean, low, high)
            rows += [
                (label, int(x), int(n), float(m), float(lo), float(hi))
                for x, n, m, lo, hi in zip(grid, count, mean, low, high, strict=True)
                if n > 0
            ]
    files = result.files
    head = ("config", "episode", "runs", "mean", "ci_low", "ci_high")
    files["curves_episode.csv"] = _write_csv(out / "curves_episode.csv", head, episode_rows)
    head = ("config", "env_steps", "runs", "mean", "ci_low", "ci_high")
    files["curves_steps.csv"] = _write_csv(out / "curves_steps.csv", head, step_rows)
    files["scores.csv"] = _write_csv(
        out / "scores.csv",
        ("config", "seed", "run_dir", "score"),
        [(r.label, r.seed, str(r.run_dir), _score(r, last)) for r in runs],
    )
    files["iqm.csv"] = _write_csv(
        out / "iqm.csv",
        ("config", "runs", "iqm", "ci_low", "ci_high", "mean"),
        [
            (k, len(scores[k]), e.value, e.low, e.high, float(scores[k].mean()))
            for k, e in iqm.items()
        ],
    )
    files["probability_of_improvement.csv"] = _write_csv(
        out / "probability_of_improvement.csv",
        ("config_x", "config_y", "probability", "ci_low", "ci_high"),
        [(a, b, e.value, e.low, e.high) for (a, b), e in improvement.items()],
    )
    if thresholds:
        per_run: list[Sequence[Any]] = []
        for threshold in thresholds:
            for label, group in by_label.items():
                steps = [_first_reach(r, threshold) for r in group]
                per_run += [
                    (label, r.seed, threshold, s) for r, s in zip(group, steps, strict=True)
                ]
                reached = [s for s in steps if s is not None]
                median = float(np.median([math.inf if s is None else s for s in steps]))
                result.steps_to_threshold.append(
                    {
                        "config": label,
                        "threshold": float(threshold),
                        "runs": len(group),
                        "reached": len(reached),
                        "median_steps": median if math.isfinite(median) else "",
                        "min_steps": min(reached) if reached else "",
                        "max_steps": max(reached) if reached else "",
                    }
                )
        table = result.steps_to_threshold
        files["steps_to_threshold.csv"] = _write_csv(
            out / "steps_to_threshold.csv", list(table[0]), [list(r.values()) for r in table]
        )
        files["steps_to_threshold_runs.csv"] = _write_csv(
            out / "steps_to_threshold_runs.csv", ("config", "seed", "threshold", "steps"), per_run
        )
    files["curves.png"] = _plot_curves(out / "curves.png", curves, metric, confidence)
    files["aggregate.png"] = _plot_aggregate(out / "aggregate.png", result, last, confidence)
    return result
