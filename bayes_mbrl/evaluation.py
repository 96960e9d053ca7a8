"""Evaluation episodes: an agent's return from fixed start states.

Learning curves of RL runs are judged on evaluation episodes rather than on the
training episodes (whose actions explore): the agent acts deterministically (SAC's
``tanh(mu)``; a planner plans as usual) from the same start states in every run and
at every evaluation, so the curves of two methods differ by the methods alone.

The runner evaluates when ``experiment.eval_episodes > 0``: after every episode whose
environment steps pass a multiple of ``experiment.eval_every`` (0: every episode after
the random ones), from env seeds :data:`EVAL_START_SEED`, ``+1``, ...; the mean return
is ``metrics.csv``'s ``eval_return`` (its standard deviation over the starts,
``eval_std``).
"""

from __future__ import annotations

from typing import Any

from bayes_mbrl.envs import TaskSpec, make_env

__all__ = ["EVAL_START_SEED", "evaluation_due", "run_episodes"]

EVAL_START_SEED = 20_000
"""Env seed of the first evaluation episode (the others follow it)."""


def run_episodes(agent: Any, task: TaskSpec, episode_length: int, seeds: list[int]) -> list[float]:
    """Returns of ``agent`` on ``task``, one episode from each env seed (each at most
    ``episode_length`` steps, ending at termination)."""
    from bayes_mbrl.algorithms.mpc import _obs_tensor

    returns = []
    for seed in seeds:
        env = make_env(
            task.env_id, max_episode_steps=episode_length, discrete_ok=task.discrete_actions
        )
        try:
            obs, _ = env.reset(seed=seed)
            agent.reset()
            total, done, steps = 0.0, False, 0
            while not done and steps < episode_length:
                action = agent.act(_obs_tensor(obs, task.obs_dim))
                obs, reward, term, trunc, _ = env.step(task.env_action(action))
                total += float(reward)
                done, steps = term or trunc, steps + 1
        finally:
            env.close()
        returns.append(total)
    return returns


def evaluation_due(steps_before: int, steps_after: int, every: int) -> bool:
    """Whether an episode that took the run from ``steps_before`` to ``steps_after``
    environment steps passed a multiple of ``every`` (``every <= 0``: always)."""
    if every <= 0:
        return True
    return steps_after // every > steps_before // every
