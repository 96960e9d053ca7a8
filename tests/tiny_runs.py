"""Small run configurations shared by the tests of the algorithms (as ``--set``
overrides), and a callback that stops a run early to test resuming."""

from __future__ import annotations

import math
from pathlib import Path

from bayes_mbrl.config import Config
from bayes_mbrl.experiment import Callback, Experiment, resume_experiment, run_experiment

POLICY_DISTILL = [
    "experiment.mode=policy_distill",
    "experiment.episodes=5",
    "experiment.seed_episodes=1",
    "experiment.progress=false",
    "experiment.threads=1",
    "env.episode_length=20",
    "model.hidden_sizes=[16, 16]",
    "model.num_members=2",
    "model.max_epochs=3",
    "planner.horizon=5",
    "planner.population=30",
    "planner.iterations=2",
    "planner.particles=2",
    "policy_distill.teacher_episodes=2",
    "policy_distill.epochs=5",
    "policy_distill.hidden_sizes=[16]",
]

SAC = [
    "experiment.mode=sac",
    "experiment.episodes=4",
    "experiment.seed_episodes=1",
    "experiment.progress=false",
    "experiment.threads=1",
    "env.episode_length=25",
    "sac.hidden_sizes=[32, 32]",
    "sac.batch_size=32",
    "sac.init_epochs=20",
    "sac.critic_warmup_steps=20",
]


class StopAfter(Callback):
    """Stops the run after ``episodes`` episodes (a resume continues it)."""

    def __init__(self, episodes: int) -> None:
        self.episodes = episodes

    def _on_episode_end(self, experiment: Experiment, row: dict[str, object]) -> bool:
        return experiment.episodes_done < self.episodes


MBPO = [
    "experiment.mode=mbpo",
    "experiment.episodes=4",
    "experiment.seed_episodes=1",
    "experiment.progress=false",
    "experiment.threads=1",
    "experiment.eval_episodes=2",
    "env.episode_length=25",
    "model.hidden_sizes=[16, 16]",
    "model.num_members=2",
    "model.max_epochs=3",
    "mbpo.hidden_sizes=[32, 32]",
    "mbpo.batch_size=32",
    "mbpo.rollouts_per_step=8",
    "mbpo.updates_per_step=2",
    "mbpo.refit_every=50",
    "mbpo.retain_steps=40",
    "mbpo.rollout_schedule=[25, 75, 1, 3]",
]


def assert_resumes_like_uninterrupted(config: Config, tmp_path: Path, stop: int = 2) -> Path:
    """Run ``config`` whole, and again stopped after ``stop`` episodes and resumed; assert
    both wrote the same ``metrics.csv`` and transitions, all returns finite. Returns the
    uninterrupted run's directory."""
    reference = run_experiment(config, tmp_path / "ref")
    assert all(math.isfinite(r) for r in reference.returns)
    assert len(reference.returns) == config.experiment.episodes
    run_dir = tmp_path / "run"
    run_experiment(config, run_dir, callbacks=[StopAfter(stop)])
    resume_experiment(run_dir, progress=False)
    for name in ("metrics.csv", "transitions.f32"):
        assert (run_dir / name).read_bytes() == (reference.run_dir / name).read_bytes(), name
    return reference.run_dir


DYNA_DQN = [
    "experiment.mode=dyna_dqn",
    "env.id=CartPole-v1",
    "experiment.episodes=5",
    "experiment.seed_episodes=1",
    "experiment.progress=false",
    "experiment.threads=1",
    "experiment.eval_episodes=2",
    "env.episode_length=30",
    "model.hidden_sizes=[16, 16]",
    "model.num_members=2",
    "model.max_epochs=3",
    "dyna_dqn.hidden_sizes=[32, 32]",
    "dyna_dqn.batch_size=16",
    "dyna_dqn.updates_per_step=1",
    "dyna_dqn.target_update_every=8",
    "dyna_dqn.refit_every=20",
    "dyna_dqn.rollouts_per_step=3",
    "dyna_dqn.rollout_length=2",
    "dyna_dqn.retain_steps=30",
    "dyna_dqn.eps_decay_steps=50",
]
