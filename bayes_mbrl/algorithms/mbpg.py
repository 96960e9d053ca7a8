"""Model-based policy gradients: a stochastic policy improved on rollouts of the learned
model, by the likelihood-ratio estimator or by the pathwise one.

The objective is the expected ``H``-step discounted return of the policy from start
states drawn from the replay buffer, each rolled through ``F`` posterior functions of
the model (TS-inf: a sampled function per rollout):

    J(theta) = E_{s_0 ~ D, f ~ p(f | D), noise} [ sum_{t<H} gamma^t r(s_t, a_t, s_(t+1)) ],
    a_t = squash(u_t), u_t ~ N(mu_theta(s_t), sigma_theta(s_t)^2).

Two unbiased estimators of its gradient (the seeds, "policy gradients through models"):

* **likelihood ratio** (REINFORCE on model rollouts): the rollout is simulated without
  gradients and ``grad J = E[sum_t grad log pi(u_t | s_t) (G_t - b_t)]`` with the
  reward-to-go ``G_t = sum_{t'>=t} gamma^(t'-t) r_t'`` and the baseline ``b_t``, the
  mean of ``G_t`` over the batch's rollouts. It needs no model gradient (any model of
  the protocol, also a non-differentiable one), but its variance grows with ``H``;
* **pathwise** (reparameterization): actions ``u_t = mu + sigma * xi`` and the model's
  noise are reparameterized, and ``grad J`` is backpropagated through the model and
  the policy over the horizon. Its variance is low, but the gradient is a product of
  ``H`` Jacobians of the closed loop, whose norm and conditioning degrade with ``H``
  (the notes' warning; ``experiments/policy_gradients.py`` measures both).

A horizon short enough for a well-conditioned pathwise gradient sees little of a task
whose reward comes later (a pendulum needs more than 30 steps to swing up). With
``mbpg.critic = true`` a value function ``V(s)`` is learned on the same rollouts, by
regression onto their λ-returns bootstrapped from a slowly moving copy of itself, and
the objective looks past the horizon through it (SVG(H), MAAC, Dreamer):

    pathwise:          J = E[ sum_{t<H} gamma^t r_t + gamma^H V(s_H) ];
    likelihood ratio:  the reward-to-go is the λ-return ``G^λ_t``, the baseline ``V(s_t)``.

``experiment.mode = "mbpg"`` (the ``[mbpg]`` section) runs either in the runner: before
each episode the model is refitted and the policy takes ``updates`` Adam steps, each
on ``rollouts`` fresh model rollouts; the agent samples from the policy, evaluation
uses its mean.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from bayes_mbrl.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    AlgorithmParts,
    build_model,
    frozen,
    polyak_update,
    state_model_check,
)
from bayes_mbrl.algorithms.mpc import _obs_tensor
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import RewardFn, TerminationFn
from bayes_mbrl.errors import CheckpointError, DataError
from bayes_mbrl.models.base import DynamicsModel, FitReport, ProgressFn
from bayes_mbrl.options import (
    Options,
    at_least,
    greater_than,
    interval,
    one_of,
    option,
    positive_list,
)
from bayes_mbrl.planning.imagine import (
    ImaginedTransitions,
    TerminalValueFn,
    functions_per_start,
    imagine,
)

if TYPE_CHECKING:
    from bayes_mbrl.envs import TaskSpec

__all__ = [
    "ESTIMATORS",
    "MBPGAlgorithm",
    "MBPGLearner",
    "MBPGOptions",
    "PolicyAgent",
    "SquashedGaussianPolicy",
    "ValueFunction",
    "likelihood_ratio_surrogate",
    "pathwise_returns",
    "reward_to_go",
    "score_surrogate",
]

ESTIMATORS = ("pathwise", "likelihood_ratio")


class SquashedGaussianPolicy(nn.Module):
    """``a = mid + half * tanh(u)``, ``u ~ N(mu(s), sigma(s)^2)``: an MLP of the
    normalized observation (``linear``: no hidden layer; ``squash = False``: ``a = u``).

    Args:
        obs_dim: observation size.
        action_low: the lower action bounds (the squashing maps onto the bounds).
        action_high: the upper action bounds.
        hidden_sizes: hidden widths (tanh); ``[]`` for a linear policy.
        init_log_std: initial ``log sigma`` (state-independent, learned).
        squash: squash into the bounds (False: the Gaussian's action as it is).
    """

    obs_mean: Tensor
    obs_std: Tensor
    action_mid: Tensor
    action_half: Tensor

    def __init__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        hidden_sizes: list[int],
        init_log_std: float = -0.5,
        squash: bool = True,
    ) -> None:
        super().__init__()
        low, high = torch.as_tensor(action_low).float(), torch.as_tensor(action_high).float()
        self.action_dim = int(low.shape[0])
        sizes = [obs_dim, *hidden_sizes, self.action_dim]
        linears = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
        with torch.no_grad():  # small first actions
            linears[-1].weight.mul_(0.1)
            linears[-1].bias.zero_()
        self.layers = nn.ModuleList(linears)
        self.log_std = nn.Parameter(torch.full((self.action_dim,), float(init_log_std)))
        self.squash_actions = squash
        self.register_buffer("action_mid", (high + low) / 2)
        self.register_buffer("action_half", (high - low) / 2)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log_sigma)`` of ``u``, each ``(N, action_dim)``."""
        x = (obs - self.obs_mean) / self.obs_std
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        mu = self.layers[-1](x)
        return mu, self.log_std.clamp(-5.0, 2.0).expand_as(mu)

    def squash(self, u: Tensor) -> Tensor:
        """The action of ``u`` in env units."""
        if not self.squash_actions:
            return u
        return self.action_mid + self.action_half * torch.tanh(u)

    def rsample(self, obs: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """A reparameterized draw: ``(action, u)``, differentiable in the parameters."""
        mu, log_std = self(obs)
        u = mu + log_std.exp() * torch.randn(mu.shape, generator=generator, device=mu.device)
        return self.squash(u), u

    def log_prob(self, obs: Tensor, u: Tensor) -> Tensor:
        """``log N(u; mu(obs), sigma^2)`` summed over action dimensions, ``(N,)``."""
        mu, log_std = self(obs)
        z = (u - mu) / log_std.exp()
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def mean_action(self, obs: Tensor) -> Tensor:
        """The deterministic action ``squash(mu)``."""
        return self.squash(self(obs)[0])

    def set_normalization(self, obs: Tensor) -> None:
        """Normalize inputs by the mean and spread of ``obs``."""
        _set_normalization(self.obs_mean, self.obs_std, obs)


def _set_normalization(mean: Tensor, std: Tensor, obs: Tensor) -> None:
    mean.copy_(obs.mean(0))
    std.copy_(obs.std(0).clamp_min(1e-3) if len(obs) > 1 else torch.ones_like(obs[0]))


class ValueFunction(nn.Module):
    """``V(s) = value_mean + value_scale * net(s)``: an MLP (tanh) of the normalized
    observation whose output is in units of ``value_scale`` (set from the rewards by
    :meth:`set_normalization`, so that values of hundreds need no long climb of the
    output layer)."""

    obs_mean: Tensor
    obs_std: Tensor
    value_mean: Tensor
    value_scale: Tensor

    def __init__(self, obs_dim: int, hidden_sizes: list[int]) -> None:
        super().__init__()
        sizes = [obs_dim, *hidden_sizes, 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("value_mean", torch.zeros(()))
        self.register_buffer("value_scale", torch.ones(()))

    def forward(self, obs: Tensor) -> Tensor:
        x = (obs - self.obs_mean) / self.obs_std
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.value_mean + self.value_scale * self.layers[-1](x).squeeze(-1)

    def set_normalization(self, obs: Tensor, rewards: Tensor, discount: float) -> None:
        """Inputs scaled by the mean and spread of ``obs``; outputs centred on the value
        of receiving the mean reward forever, ``mean(r) / (1 - discount)``, in units of
        ``std(r) / (1 - discount)`` (at most 1000 steps' worth when ``discount`` is 1)."""
        _set_normalization(self.obs_mean, self.obs_std, obs)
        steps = 1.0 / max(1.0 - discount, 1e-3)
        r = rewards.float()
        self.value_mean.fill_(float(r.mean()) * steps)
        spread = float(r.std()) if len(r) > 1 else 0.0
        self.value_scale.fill_(max(spread, 1e-3) * steps)


def reward_to_go(rewards: Tensor, alive: Tensor, discount: float) -> Tensor:
    """``G_t = sum_{t' >= t} discount^(t'-t) r_t'`` over the alive steps, ``(H, N)``."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = torch.where(alive[t], rewards[t], 0.0) + discount * running
        out[t] = running
    return out


def _rollout(
    model: DynamicsModel,
    policy: SquashedGaussianPolicy,
    starts: Tensor,
    horizon: int,
    reward_fn: RewardFn,
    termination_fn: TerminationFn | None,
    functions: int,
    generator: torch.Generator | None,
) -> tuple[ImaginedTransitions, list[Tensor]]:
    """Imagined rollouts of the policy (TS-inf over ``functions``) and its ``u`` draws."""
    drawn: list[Tensor] = []

    def act(obs: Tensor) -> Tensor:
        action, u = policy.rsample(obs, generator)
        drawn.append(u)
        return action

    out = imagine(
        model,
        starts,
        act,
        horizon,
        reward_fn,
        termination_fn,
        particles=functions,
        propagation="ts_inf",
        generator=generator,
    )
    return out, drawn


def pathwise_returns(
    model: DynamicsModel,
    policy: SquashedGaussianPolicy,
    starts: Tensor,
    horizon: int,
    reward_fn: RewardFn,
    termination_fn: TerminationFn | None = None,
    discount: float = 1.0,
    functions: int = 1,
    generator: torch.Generator | None = None,
    terminal_value: TerminalValueFn | None = None,
) -> Tensor:
    """Discounted ``horizon``-step returns ``(N,)`` of reparameterized model rollouts
    (``N = starts x functions``; plus ``discount^H terminal_value(s_H)`` if given),
    differentiable in the policy's parameters through the model: ``-returns.mean()``
    is the pathwise estimator's loss."""
    out, _ = _rollout(
        model, policy, starts, horizon, reward_fn, termination_fn, functions, generator
    )
    return out.returns(discount, terminal_value)


def likelihood_ratio_surrogate(
    model: DynamicsModel,
    policy: SquashedGaussianPolicy,
    starts: Tensor,
    horizon: int,
    reward_fn: RewardFn,
    termination_fn: TerminationFn | None = None,
    discount: float = 1.0,
    functions: int = 1,
    generator: torch.Generator | None = None,
    baseline: bool = True,
) -> tuple[Tensor, Tensor]:
    """The likelihood-ratio estimator on model rollouts simulated without gradients.

    Returns:
        ``(surrogate (N,), returns (N,))``: the gradient of ``surrogate.mean()`` is the
        estimate ``mean_n sum_t discount^t grad log pi(u_t | s_t) (G_t - b_t)`` (with
        ``b_t`` the batch mean of ``G_t`` when ``baseline``, else 0), and ``returns`` the
        rollouts' discounted returns.
    """
    with torch.no_grad():
        out, drawn = _rollout(
            model, policy, starts, horizon, reward_fn, termination_fn, functions, generator
        )
    assert out.reward is not None
    to_go = reward_to_go(out.reward.float(), out.alive(), discount)
    advantage = to_go - to_go.mean(1, keepdim=True) if baseline else to_go
    return score_surrogate(policy, out, drawn, advantage, discount), to_go[0]


def score_surrogate(
    policy: SquashedGaussianPolicy,
    out: ImaginedTransitions,
    drawn: list[Tensor],
    advantage: Tensor,
    discount: float,
) -> Tensor:
    """``(N,)`` ``sum_t discount^t log pi(u_t | s_t) advantage_t`` over the alive steps
    of rollouts simulated without gradients (``drawn``: the policy's ``u`` per step;
    ``advantage`` ``(H, N)``, no gradient): its gradient is the likelihood-ratio
    estimate."""
    weights = discount ** torch.arange(out.horizon, dtype=torch.float32)[:, None]
    log_pi = policy.log_prob(
        out.obs.reshape(-1, out.obs.shape[-1]), torch.stack(drawn).reshape(-1, policy.action_dim)
    ).reshape(out.horizon, -1)
    return (torch.where(out.alive(), log_pi * advantage.detach() * weights, 0.0)).sum(0)


@dataclass
class MBPGOptions(Options):
    """Options of ``experiment.mode = "mbpg"`` (the ``[mbpg]`` section)."""

    estimator: str = option("pathwise", one_of(ESTIMATORS), "the policy-gradient estimator")
    horizon: int = option(30, at_least(1, "an integer"), "steps H of each model rollout")
    rollouts: int = option(
        500, at_least(1, "an integer"), "model rollouts per gradient step (starts x functions)"
    )
    functions: int = option(
        0,
        at_least(0, "an integer"),
        "posterior functions each start is rolled through, TS-inf (0: the model's finite "
        "support, e.g. an ensemble's members, else 5)",
    )
    updates: int = option(50, at_least(1, "an integer"), "gradient steps before each episode")
    learning_rate: float = option(3e-3, greater_than(0), "Adam step size")
    gamma: float = option(0.99, interval(0.0, 1.0), "discount of the model rollouts")
    hidden_sizes: list[int] = option([64, 64], positive_list, "policy hidden widths (tanh)")
    init_log_std: float = option(-0.5, None, "initial log std of the policy's Gaussian")
    max_grad_norm: float = option(
        0.0, at_least(0.0), "clip each gradient to this norm (0: no clipping)"
    )
    critic: bool = option(
        False,
        None,
        "learn a state value V(s) on the model rollouts (λ-returns from a target copy) "
        "and use it: pathwise, the returns get gamma^H V(s_H); likelihood ratio, the "
        "λ-returns are the reward-to-go and V(s_t) the baseline",
    )
    critic_hidden_sizes: list[int] = option(
        [64, 64], positive_list, "hidden widths of the critic (tanh)"
    )
    critic_learning_rate: float = option(1e-3, greater_than(0), "Adam step size of the critic")
    return_lambda: float = option(
        0.95, interval(0.0, 1.0), "λ of the critic's λ-return targets (0: one-step TD)"
    )
    target_rate: float = option(
        0.02,
        interval(0.0, 1.0, lo_open=True),
        "Polyak rate of the target critic the targets bootstrap from (1: the critic itself)",
    )


class MBPGLearner:
    """Refits the model, then ``updates`` policy-gradient steps on model rollouts.

    With ``options.critic`` it also learns a :class:`ValueFunction` on the same
    rollouts: each step regresses ``V(s_t)`` onto the rollouts' λ-returns bootstrapped
    from a Polyak-averaged target copy (:meth:`ImaginedTransitions.lambda_returns`),
    and the policy's objective looks past the horizon through it.

    Attributes:
        critic, critic_target: the value function and its target copy (None without
            ``options.critic``).
        last_returns: mean model return of the last gradient step's rollouts.
        last_grad_norm: norm of the last gradient (before clipping).
        last_critic_loss: the last step's critic loss (NaN without a critic).
    """

    def __init__(
        self,
        model: DynamicsModel,
        policy: SquashedGaussianPolicy,
        task: TaskSpec,
        options: MBPGOptions,
        seed: int = 0,
    ) -> None:
        self.model, self.policy, self.task, self.options = model, policy, task, options
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=options.learning_rate)
        self.generator = torch.Generator().manual_seed(seed + 83)
        self.functions = functions_per_start(model, options.functions)
        self.critic: ValueFunction | None = None
        self.critic_target: ValueFunction | None = None
        self.critic_optimizer: torch.optim.Optimizer | None = None
        if options.critic:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 97)  # the critic's initial weights
                self.critic = ValueFunction(task.obs_dim, options.critic_hidden_sizes)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
            self.critic_optimizer = torch.optim.Adam(
                self.critic.parameters(), lr=options.critic_learning_rate
            )
        self.last_returns = math.nan
        self.last_grad_norm = math.nan
        self.last_critic_loss = math.nan
        self.fits = 0

    def loss(self, starts: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The policy's loss (its gradient is minus the gradient estimate), the rollouts'
        returns and the critic's loss (None without a critic), from ``starts``."""
        o, t = self.options, self.task
        if self.critic is None:
            args = (self.model, self.policy, starts, o.horizon, t.reward_fn, t.termination_fn)
            kw = {"discount": o.gamma, "functions": self.functions, "generator": self.generator}
            if o.estimator == "pathwise":
                returns = pathwise_returns(*args, **kw)  # type: ignore[arg-type]
                return -returns.mean(), returns.detach(), None
            surrogate, returns = likelihood_ratio_surrogate(*args, **kw)  # type: ignore[arg-type]
            return -surrogate.mean(), returns, None
        assert self.critic_target is not None
        critic, pathwise = self.critic, o.estimator == "pathwise"
        with torch.set_grad_enabled(pathwise):
            out, drawn = _rollout(
                self.model, self.policy, starts, o.horizon, t.reward_fn, t.termination_fn,
                self.functions, self.generator,
            )  # fmt: skip
        with torch.no_grad():
            targets = out.lambda_returns(self.critic_target, o.gamma, o.return_lambda)
        alive = out.alive()
        values = critic(out.obs.detach())
        critic_loss = torch.where(alive, (values - targets) ** 2, 0.0).sum() / alive.sum()
        if pathwise:
            with frozen(critic):  # gradients flow through V, its weights stay
                returns = out.returns(o.gamma, critic)
            return -returns.mean(), returns.detach(), critic_loss
        surrogate = score_surrogate(self.policy, out, drawn, targets - values, o.gamma)
        return -surrogate.mean(), targets[0], critic_loss

    def _critic_step(self, critic_loss: Tensor) -> None:
        assert self.critic is not None and self.critic_target is not None
        assert self.critic_optimizer is not None
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()
        polyak_update(self.critic_target, self.critic, self.options.target_rate)
        self.last_critic_loss = float(critic_loss.detach())

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        start = time.perf_counter()
        report = self.model.fit(data, generator, progress=progress)
        obs = data.all().obs
        if self.fits == 0:  # the networks' input scaling, fixed from the first data on
            self.policy.set_normalization(obs)
            if self.critic is not None and self.critic_target is not None:
                rewards = data.all().reward
                self.critic.set_normalization(obs, rewards, self.options.gamma)
                self.critic_target.set_normalization(obs, rewards, self.options.gamma)
        self.fits += 1
        starts_per_step = max(1, self.options.rollouts // self.functions)
        for _ in range(self.options.updates):
            rows = torch.randint(len(obs), (starts_per_step,), generator=self.generator)
            loss, returns, critic_loss = self.loss(obs[rows])
            self.optimizer.zero_grad()
            loss.backward()
            params = list(self.policy.parameters())
            if self.options.max_grad_norm > 0:
                norm = nn.utils.clip_grad_norm_(params, self.options.max_grad_norm)
            else:
                grads = [p.grad.flatten() for p in params if p.grad is not None]
                norm = torch.linalg.vector_norm(torch.cat(grads))
            if not bool(torch.isfinite(norm)):
                raise DataError(
                    "the policy gradient is not finite (the model rollouts diverged); "
                    "shorten mbpg.horizon or set mbpg.max_grad_norm"
                )
            self.optimizer.step()
            if critic_loss is not None:  # after: the policy's loss backpropagated through V
                self._critic_step(critic_loss)
            self.last_returns, self.last_grad_norm = float(returns.mean()), float(norm)
        report.wall_seconds = time.perf_counter() - start
        return report

    def progress_total(self) -> int | None:
        return self.model.progress_total()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "fits": self.fits,
            "critic": None if self.critic is None else self.critic.state_dict(),
            "critic_target": None
            if self.critic_target is None
            else self.critic_target.state_dict(),
            "critic_optimizer": (
                None if self.critic_optimizer is None else self.critic_optimizer.state_dict()
            ),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fits = int(state["fits"])
        self.model.load_state_dict(state["model"])
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.critic is not None:
            if state.get("critic") is None:
                raise CheckpointError(
                    "this checkpoint has no critic but mbpg.critic = true; resume with the "
                    "run's own config.toml"
                )
            assert self.critic_target is not None and self.critic_optimizer is not None
            self.critic.load_state_dict(state["critic"])
            self.critic_target.load_state_dict(state["critic_target"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])


class PolicyAgent:
    """Acts with a :class:`SquashedGaussianPolicy`: samples (``generator``), or its mean
    action when ``deterministic``."""

    def __init__(
        self,
        policy: SquashedGaussianPolicy,
        obs_dim: int,
        generator: torch.Generator,
        deterministic: bool = False,
    ) -> None:
        self.policy, self.obs_dim, self.generator = policy, obs_dim, generator
        self.deterministic = deterministic
        self.plan_seconds = 0.0

    def reset(self) -> None:
        self.plan_seconds = 0.0

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        start = time.perf_counter()
        o = _obs_tensor(obs, self.obs_dim)[None]
        if self.deterministic:
            action = self.policy.mean_action(o)[0]
        else:
            action = self.policy.rsample(o, self.generator)[0][0]
        self.plan_seconds += time.perf_counter() - start
        return action


class MBPGAlgorithm(Algorithm):
    """Model-based policy gradient (see the module)."""

    needs_reward_fn = True

    def check(self, config: Any) -> tuple[str, Any, str] | None:
        return state_model_check(config, "rollouts start from real states")

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        opts: MBPGOptions = config.mbpg
        seed = config.experiment.seed
        model = build_model(config, task.obs_dim, task.action_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 89)  # the policy's initial weights
            policy = SquashedGaussianPolicy(
                task.obs_dim,
                task.action_low,
                task.action_high,
                opts.hidden_sizes,
                opts.init_log_std,
            )
        learner = MBPGLearner(model, policy, task, opts, seed)
        return AlgorithmParts(
            agent=PolicyAgent(policy, task.obs_dim, generator),
            learner=learner,
            model=model,
            eval_agent=PolicyAgent(policy, task.obs_dim, generator, deterministic=True),
            title=f"{opts.estimator} policy gradient through {config.model.kind}",
            fit_description=f"fit {config.model.kind}, policy gradient",
        )


ALGORITHMS.add(
    "mbpg",
    MBPGAlgorithm,
    options=MBPGOptions,
    summary="model-based policy gradient on model rollouts (likelihood ratio or pathwise)",
)
