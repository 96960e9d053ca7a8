"""Model-based value expansion (MVE; Feinberg et al. 2018): SAC's critic regressed on
targets that look ``H`` steps ahead through the learned model.

``experiment.mode = "mve"`` (the ``[mve]`` section) trains stable-baselines3's SAC on
the real transitions, but the target of each sampled ``(s, a, r, s')`` expands ``H``
imagined steps from ``s'`` under the current policy before bootstrapping:

    y = r + sum_{i=1..H} gamma^i (r_i - alpha log pi(a_i | s_i))
          + gamma^(H+1) (min_j Q'_j(s_(H+1), a') - alpha log pi(a' | s_(H+1)))

with ``s_1 = s'``, ``a_i ~ pi(s_i)``, ``s_(i+1)`` from a posterior function of the
``[model]`` and ``r_i`` the task's reward function (soft: the entropy bonus of every
imagined step is in the sum, as in SAC's own target). A transition that terminated
is not expanded; an imagined termination ends the sum and drops the bootstrap. ``H = 0``
is SAC's own target.

Each minibatch takes ``batch_size / F`` real transitions and expands each through
``F`` posterior functions (TS-inf; ``mve.functions``, 0: an ensemble's members), so the
critic regresses on the average over the model's functions. The targets reach SAC
through its n-step interface (a reward, a next observation and a discount per sample),
so SB3's update is used as it is. Feinberg et al. also fit the critic on the imagined
states (TD-k along the rollout); here only the real states are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bayes_mbrl.algorithms.base import ALGORITHMS
from bayes_mbrl.algorithms.mbpo import (
    ModelSACAlgorithm,
    ModelSACLearner,
    ModelSACOptions,
    real_transitions,
)
from bayes_mbrl.algorithms.sac import squashed_sample
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.options import at_least, option
from bayes_mbrl.planning.imagine import imagine

__all__ = ["MVEAlgorithm", "MVELearner", "MVEOptions", "ValueExpansionSampler"]


@dataclass
class MVEOptions(ModelSACOptions):
    """Options of ``experiment.mode = "mve"`` (the ``[mve]`` section): SAC's settings and
    the expansion's."""

    horizon: int = option(
        3, at_least(0, "an integer"), "imagined steps H in each critic target (0: SAC's own)"
    )


class ValueExpansionSampler:
    """SAC's minibatches of real transitions with ``H``-step model-expanded targets (see
    the module), as SB3's n-step samples (``rewards``, ``next_observations``,
    ``dones``, ``discounts``)."""

    def __init__(self, learner: ModelSACLearner, real: dict[str, Tensor], horizon: int) -> None:
        self.learner, self.real, self.horizon = learner, real, horizon

    def sample(self, batch_size: int, env: Any = None) -> Any:
        from stable_baselines3.common.type_aliases import ReplayBufferSamples

        learner, h = self.learner, self.horizon
        sac = learner.sac
        f = learner.functions if h > 0 else 1
        n = max(1, batch_size // f)
        idx = torch.randint(len(self.real["obs"]), (n,), generator=learner.generator)
        rows = {k: v[idx] for k, v in self.real.items()}
        if h == 0:
            return ReplayBufferSamples(
                observations=rows["obs"],
                actions=sac.scale(rows["action"]),
                next_observations=rows["next_obs"],
                dones=rows["done"].float()[:, None],
                rewards=rows["reward"][:, None],
            )
        gamma = float(sac.sac.gamma)
        with torch.no_grad():
            assert sac.sac.log_ent_coef is not None  # alpha is tuned
            alpha = float(sac.sac.log_ent_coef.exp())
            log_probs: list[Tensor] = []

            def policy(obs: Tensor) -> Tensor:
                action, log_prob = squashed_sample(sac.sac.actor, obs, learner.generator)
                log_probs.append(log_prob)
                return sac.unscale(action)

            out = imagine(
                learner.model,
                rows["next_obs"],
                policy,
                h,
                learner.task.reward_fn,
                learner.task.termination_fn,
                particles=f,
                propagation="ts_inf",
                generator=learner.generator,
            )
            assert out.reward is not None
            alive = out.alive()
            discount = gamma ** torch.arange(1, h + 1, dtype=torch.float32)[:, None]
            soft = out.reward.float() - alpha * torch.stack(log_probs)
            expansion = (torch.where(alive, soft, 0.0) * discount).sum(0)
            ended = (out.done & alive).any(0)
            b = out.start_index
            real_done = rows["done"][b]
            reward = rows["reward"][b] + torch.where(real_done, 0.0, expansion)
            done = real_done | ended
        return ReplayBufferSamples(
            observations=rows["obs"][b],
            actions=sac.scale(rows["action"][b]),
            next_observations=out.next_obs[-1],
            dones=done.float()[:, None],
            rewards=reward[:, None],
            discounts=torch.full((len(b), 1), gamma ** (h + 1)),
        )


class MVELearner(ModelSACLearner):
    """SAC on real transitions with model-expanded critic targets (see the module)."""

    options: MVEOptions

    def sampler(self, data: ReplayBuffer, new: int) -> ValueExpansionSampler:
        if self.options.horizon and self.options.batch_size < self.functions:
            raise ConfigError(
                f"mve.batch_size = {self.options.batch_size} is smaller than the "
                f"{self.functions} functions each transition is expanded through; set "
                f"batch_size >= {self.functions} or mve.functions lower"
            )
        return ValueExpansionSampler(self, real_transitions(data), self.options.horizon)


class MVEAlgorithm(ModelSACAlgorithm):
    """MVE: SAC whose critic targets expand ``H`` model steps (see the module)."""

    learner_class = MVELearner
    name = "MVE"


ALGORITHMS.add(
    "mve",
    MVEAlgorithm,
    options=MVEOptions,
    summary="model-based value expansion: SAC's critic targets look H model steps ahead",
)
