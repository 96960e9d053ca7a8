"""Hooks into the experiment loop (SB3 style), and the two every run has: progress
bars and the learning-curve plot.

Public ``on_*`` methods call the private ``_on_*`` ones, which subclasses override.
The loop calls, per episode: ``on_episode_start``; ``on_fit_start``,
``on_fit_progress`` (after each epoch or step of the learner's fit) and
``on_fit_finish`` when the learner is fitted; ``on_step`` after each environment
step; ``on_episode_finish`` (always, also when the episode raised: release what
``on_episode_start`` took); ``on_episode_end`` once the episode's outputs and
checkpoint are written, whose False return stops the run (it resumes from there).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bayes_mbrl.experiment import Experiment

__all__ = ["Callback", "LearningCurvePlot", "ProgressBars"]


class Callback:
    """Hooks into the loop; every hook does nothing by default."""

    def on_run_start(self, experiment: Experiment) -> None:
        """Called once before the first episode of this process."""
        self._on_run_start(experiment)

    def on_episode_start(self, experiment: Experiment, episode: int, policy: str) -> None:
        """Called before an episode (0-based ``episode``; ``policy`` as in metrics.csv)."""
        self._on_episode_start(experiment, episode, policy)

    def on_fit_start(self, experiment: Experiment, total: int | None, description: str) -> None:
        """Called before the learner is fitted (``total``: progress calls expected)."""
        self._on_fit_start(experiment, total, description)

    def on_fit_progress(self, experiment: Experiment, step: int, train: float, val: float) -> None:
        """Called after each epoch or step of the fit."""
        self._on_fit_progress(experiment, step, train, val)

    def on_fit_finish(self, experiment: Experiment) -> None:
        """Called after the fit, whether it succeeded or raised."""
        self._on_fit_finish(experiment)

    def on_step(self, experiment: Experiment, step: int, reward: float, total: float) -> None:
        """Called after each environment step (0-based ``step``; ``total`` return so far)."""
        self._on_step(experiment, step, reward, total)

    def on_episode_finish(self, experiment: Experiment) -> None:
        """Called when the episode's steps are over, whether it succeeded or raised."""
        self._on_episode_finish(experiment)

    def on_episode_end(self, experiment: Experiment, row: dict[str, Any]) -> bool:
        """Called after each episode with its metrics row; False stops the run."""
        return self._on_episode_end(experiment, row)

    def _on_run_start(self, experiment: Experiment) -> None:
        return None

    def _on_episode_start(self, experiment: Experiment, episode: int, policy: str) -> None:
        return None

    def _on_fit_start(self, experiment: Experiment, total: int | None, description: str) -> None:
        return None

    def _on_fit_progress(self, experiment: Experiment, step: int, train: float, val: float) -> None:
        return None

    def _on_fit_finish(self, experiment: Experiment) -> None:
        return None

    def _on_step(self, experiment: Experiment, step: int, reward: float, total: float) -> None:
        return None

    def _on_episode_finish(self, experiment: Experiment) -> None:
        return None

    def _on_episode_end(self, experiment: Experiment, row: dict[str, Any]) -> bool:
        return True


class _Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix_str(self, s: str, refresh: bool = True) -> Any: ...
    def close(self) -> Any: ...


class ProgressBars(Callback):
    """tqdm bars: one per episode (steps, return so far) and one per fit (the
    learner's own count of steps, its losses)."""

    def __init__(self) -> None:
        self._episode: _Bar | None = None
        self._fit: _Bar | None = None

    @staticmethod
    def _bar(total: int, desc: str, leave: bool) -> _Bar:
        from tqdm.auto import tqdm

        bar: _Bar = tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True)
        return bar

    def _on_episode_start(self, experiment: Experiment, episode: int, policy: str) -> None:
        self._episode = self._bar(
            experiment.config.env.episode_length,
            f"episode {episode + 1}/{experiment.config.experiment.episodes} ({policy})",
            leave=True,
        )

    @staticmethod
    def _advance(bar: _Bar | None, text: str) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(text, refresh=False)

    def _on_step(self, experiment: Experiment, step: int, reward: float, total: float) -> None:
        self._advance(self._episode, f"return {total:.1f}")

    def _on_episode_finish(self, experiment: Experiment) -> None:
        if self._episode is not None:
            self._episode.close()
        self._episode = None

    def _on_fit_start(self, experiment: Experiment, total: int | None, description: str) -> None:
        self._fit = self._bar(total or 0, description, leave=False)

    def _on_fit_progress(self, experiment: Experiment, step: int, train: float, val: float) -> None:
        self._advance(self._fit, f"train {train:.3f} val {val:.3f}")

    def _on_fit_finish(self, experiment: Experiment) -> None:
        if self._fit is not None:
            self._fit.close()
        self._fit = None


class LearningCurvePlot(Callback):
    """Writes ``learning_curve.png`` (return per episode, random and planned episodes
    apart) into the run directory after every episode."""

    def __init__(self, filename: str = "learning_curve.png") -> None:
        self.filename = filename

    def _on_episode_end(self, experiment: Experiment, row: dict[str, Any]) -> bool:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metrics = experiment.metrics
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["episode"] for r in metrics], [r["return"] for r in metrics], "-", alpha=0.5)
        for random_policy, color, label in (
            (True, "tab:gray", "random"),
            (False, "tab:blue", "planned"),
        ):
            points = [
                (r["episode"], r["return"])
                for r in metrics
                if (r["policy"] == "random") == random_policy
            ]
            if points:
                ax.scatter(*zip(*points, strict=True), color=color, zorder=3, label=label)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("episode")
        ax.set_ylabel("return")
        config = experiment.config
        ax.set_title(
            f"{config.env.id}, {experiment.parts.title or config.experiment.mode} "
            f"({config.experiment.mode}), seed {config.experiment.seed}"
        )
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        experiment.store.write_bytes(self.filename, buf.getvalue())
        return True
