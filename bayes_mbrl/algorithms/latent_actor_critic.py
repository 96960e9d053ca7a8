"""Latent actor-critic (Dreamer-style): learn a policy and a value function on
imagined rollouts in the latent space of a state-space model, act with the policy
from the filtered belief.

The learner wraps a :class:`~bayes_mbrl.models.latent.LatentStateSpaceModel`
(``model.kind = "latent"``). Each fit first fits the latent model on the replay
buffer, then trains an actor and a critic on trajectories *imagined* in its latent
space:

* starts: the encoder's belief means (``posterior_marginals``, detached) of random
  replay steps;
* each imagined trajectory follows one transition member (TS-inf: the starts are
  split into ``E`` equal blocks, block ``e`` stepped by member ``e``, all members in
  one batched call per step), so the members' disagreement enters the returns as in
  latent MPC; a step is ``z' = z + mu_e(z, a) + sigma_e(z, a) * eps``
  (reparameterized), its reward the learned reward head ``r(z, a)``;
* actions come from a tanh-squashed Gaussian policy ``pi(a | z)`` scaled to the
  action bounds;
* the critic ``v(z)`` regresses the λ-returns (:func:`lambda_returns`) bootstrapped
  from a slowly updated target critic;
* the actor maximizes the λ-returns plus an entropy bonus, either *pathwise*
  (``gradient = "pathwise"``, Dreamer: the gradient of the returns flows back through
  the reparameterized actions, the latent transitions and the reward head, whose
  parameters stay fixed) or by the likelihood ratio (``gradient = "reinforce"``:
  ``log pi(a_t | z_t) * (G_t - v(z_t))``, the critic as baseline).

The returns are in the model's normalized reward units (``(r - reward_mean) /
reward_std``): an affine change of the reward does not change the best policy of a
task without terminations, and unit-scale rewards keep the critic's targets and the
entropy bonus comparable across tasks (:meth:`LatentActorCritic.value` reports
values in the task's units).

The agent filters the belief over the latent state along the episode (the
:class:`~bayes_mbrl.algorithms.latent_mpc.BeliefTracker` of latent MPC) and takes the
policy's mean action at the belief's mean: no planning at run time.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayes_mbrl.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    AlgorithmParts,
    frozen,
    polyak_update,
)
from bayes_mbrl.algorithms.latent_mpc import (
    BeliefTracker,
    LatentDiagnostics,
    build_latent_model,
    check_latent_kind,
)
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ModelError
from bayes_mbrl.models.base import FitReport, ProgressFn
from bayes_mbrl.models.latent.networks import mlp
from bayes_mbrl.options import (
    Options,
    at_least,
    greater_than,
    interval,
    one_of,
    option,
    positive_list,
)
from bayes_mbrl.planning.imagine import lambda_returns

if TYPE_CHECKING:
    from bayes_mbrl.envs import TaskSpec
    from bayes_mbrl.models.latent import LatentStateSpaceModel

__all__ = [
    "GRADIENTS",
    "UPDATES_PER_REPORT",
    "ACReport",
    "Imagined",
    "LatentACAgent",
    "LatentACAlgorithm",
    "LatentACOptions",
    "LatentActorCritic",
    "TanhGaussianPolicy",
    "lambda_returns",
]

#: how the actor's gradient is estimated
GRADIENTS = ("pathwise", "reinforce")

#: actor-critic updates per progress call (one entry of the fit report)
UPDATES_PER_REPORT = 25


@dataclass
class LatentACOptions(Options):
    """Options of latent actor-critic (the ``[latent_ac]`` section)."""

    horizon: int = option(15, at_least(1, "an integer"), "imagination horizon in steps")
    discount: float = option(0.99, interval(0.0, 1.0, lo_open=True), "discount factor γ")
    return_lambda: float = option(
        0.95, interval(0.0, 1.0), "λ of the λ-returns (0: one-step TD targets, 1: n-step returns)"
    )
    actor_hidden_sizes: list[int] = option([128, 128], positive_list, "hidden widths of the actor")
    critic_hidden_sizes: list[int] = option(
        [128, 128], positive_list, "hidden widths of the critic"
    )
    actor_learning_rate: float = option(2e-4, greater_than(0), "Adam step size of the actor")
    critic_learning_rate: float = option(3e-4, greater_than(0), "Adam step size of the critic")
    first_fit_updates: int = option(
        1000, at_least(1, "an integer"), "actor-critic updates after the first model fit"
    )
    train_updates: int = option(
        200, at_least(1, "an integer"), "actor-critic updates after every later model fit"
    )
    starts: int = option(
        256,
        at_least(1, "an integer"),
        "imagined trajectories per update, from replay steps' beliefs (rounded up to a "
        "multiple of the latent transition's ensemble size)",
    )
    entropy_bonus: float = option(
        1e-3, at_least(0.0), "weight of the policy's entropy in the actor's objective"
    )
    gradient: str = option(
        "pathwise",
        one_of(GRADIENTS),
        "the actor's gradient: through the reparameterized latent transitions and reward "
        "(pathwise, Dreamer) or the likelihood ratio with the critic as baseline (reinforce)",
    )
    target_rate: float = option(
        0.02,
        interval(0.0, 1.0, lo_open=True),
        "Polyak rate of the target critic the λ-returns bootstrap from (1: the critic itself)",
    )
    init_std: float = option(
        1.0, greater_than(0), "initial standard deviation of the policy before the tanh"
    )
    grad_clip: float = option(100.0, greater_than(0), "gradient norm clip of actor and critic")
    diagnostics_every: int = option(
        1,
        at_least(0, "an integer"),
        "write latent diagnostics into the run directory every k episodes (0: never)",
    )


class TanhGaussianPolicy(nn.Module):
    """``a = low + (tanh(u) + 1) / 2 * (high - low)``, ``u ~ N(mu(z), diag(std(z)^2))``.

    Args:
        latent_dim: ``dz``.
        action_low: ``(da,)`` lower bounds.
        action_high: ``(da,)`` upper bounds.
        hidden_sizes: hidden widths of the MLP ``z -> (mu, std)``.
        init_std: ``std`` of a fresh policy (softplus-parameterized around it).
        min_std: floor of ``std``.
    """

    #: the pre-tanh mean is softly kept in ``[-MEAN_SCALE, MEAN_SCALE]`` (tanh' > 0 there)
    MEAN_SCALE = 5.0

    low: Tensor
    high: Tensor

    def __init__(
        self,
        latent_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        hidden_sizes: list[int],
        init_std: float = 1.0,
        min_std: float = 1e-4,
    ) -> None:
        super().__init__()
        low = torch.as_tensor(action_low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(action_high, dtype=torch.float32).reshape(-1)
        self.action_dim = int(low.numel())
        self.net = mlp(latent_dim, hidden_sizes, 2 * self.action_dim)
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.zero_()
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.min_std = min_std
        self.std_offset = math.log(math.expm1(max(init_std - min_std, 1e-6)))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(..., dz) -> (mu, std)``, each ``(..., da)`` (before the tanh)."""
        m, s = self.net(z).chunk(2, dim=-1)
        mu = self.MEAN_SCALE * torch.tanh(m / self.MEAN_SCALE)
        return mu, F.softplus(s + self.std_offset) + self.min_std

    def squash(self, u: Tensor) -> Tensor:
        """Pre-tanh ``u`` -> action within the bounds."""
        return self.low + (torch.tanh(u) + 1.0) * 0.5 * (self.high - self.low)

    def log_prob(self, z: Tensor, u: Tensor) -> Tensor:
        """``log pi(a | z)`` of the action ``squash(u)``, ``(...)`` (the tanh's and the
        scaling's Jacobians included)."""
        mu, std = self(z)
        return self._log_prob(u, mu, std)

    def _log_prob(self, u: Tensor, mu: Tensor, std: Tensor) -> Tensor:
        base = -0.5 * ((u - mu) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)
        # log(1 - tanh(u)^2), stably
        log_dtanh = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        log_scale = torch.log(0.5 * (self.high - self.low))
        return (base - log_dtanh - log_scale).sum(-1)

    def rsample(self, z: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reparameterized draw with noise ``eps (..., da)``: ``(action, u, log_prob)``."""
        mu, std = self(z)
        u = mu + std * eps
        return self.squash(u), u, self._log_prob(u, mu, std)

    def mean_action(self, z: Tensor) -> Tensor:
        """The deterministic action ``squash(mu(z))``, ``(..., da)``."""
        return self.squash(self(z)[0])


class Critic(nn.Module):
    """``v(z)``: the value of a latent state (normalized reward units)."""

    def __init__(self, latent_dim: int, hidden_sizes: list[int]) -> None:
        super().__init__()
        self.net = mlp(latent_dim, hidden_sizes, 1)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(-1)


@dataclass
class Imagined:
    """A batch of imagined trajectories (``B`` of them, ``H`` steps).

    Attributes:
        states: ``(H + 1, B, dz)``.
        u: ``(H, B, da)`` pre-tanh actions; actions: ``(H, B, da)``.
        eps: ``(H, B, da)`` the policy's standard normal noise.
        rewards: ``(H, B)`` normalized rewards of ``(states[t], actions[t])``.
        log_probs: ``(H, B)`` ``log pi(actions[t] | states[t])``.
        members: ``(B,)`` the transition member that stepped each trajectory.
    """

    states: Tensor
    u: Tensor
    actions: Tensor
    eps: Tensor
    rewards: Tensor
    log_probs: Tensor
    members: Tensor


@dataclass
class ACReport:
    """What the actor-critic updates of one fit did (per :data:`UPDATES_PER_REPORT`).

    Attributes:
        actor_losses, critic_losses: mean losses.
        returns: mean λ-return of the starts (normalized reward units).
        entropies: mean entropy estimate ``-log pi`` of the imagined actions.
        updates: updates run.
    """

    actor_losses: list[float] = field(default_factory=list)
    critic_losses: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    updates: int = 0


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(2**62, (1,), generator=generator))


class LatentActorCritic:
    """The learner: the latent model plus an actor and a critic trained in its latent space.

    Args:
        model: the latent state-space model (fitted by :meth:`fit` first).
        action_low: ``(da,)`` lower action bounds.
        action_high: ``(da,)`` upper action bounds.
        options: :class:`LatentACOptions`.
        seed: seeds the actor's and critic's initialization.

    Attributes:
        policy: the :class:`TanhGaussianPolicy`.
        critic, target_critic: ``v(z)`` and its slowly updated copy.
        fits: actor-critic trainings done (the first runs ``first_fit_updates``).
        last_report: the :class:`ACReport` of the last fit (None before).
    """

    def __init__(
        self,
        model: LatentStateSpaceModel,
        action_low: Tensor,
        action_high: Tensor,
        options: LatentACOptions,
        seed: int = 0,
    ) -> None:
        self.model, self.options, self.seed = model, options, seed
        dz = model.latent_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = TanhGaussianPolicy(
                dz, action_low, action_high, options.actor_hidden_sizes, options.init_std
            )
            self.critic = Critic(dz, options.critic_hidden_sizes)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(
            self.policy.parameters(), lr=options.actor_learning_rate
        )
        self.critic_optimizer = torch.optim.Adam(
            self.critic.parameters(), lr=options.critic_learning_rate
        )
        self.fits = 0
        self.last_report: ACReport | None = None

    # ------------------------------------------------------------------ the protocol
    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Fit the latent model on ``data``, then train the actor and critic on
        trajectories imagined from the beliefs of its steps.

        Returns:
            The model's report extended by the actor's mean loss per
            :data:`UPDATES_PER_REPORT` updates (``train_losses`` and ``epochs``; one
            entry per ``progress`` call); the details are in :attr:`last_report`.

        Raises:
            DataError: the buffer does not fit the model.
            ModelError: the model's ELBO or the actor-critic losses turned non-finite
                (the last good parameters are kept).
        """
        begin = time.perf_counter()
        gen = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        report = self.model.fit(data, gen, progress)
        offset = report.epochs
        pool = self.start_states(data)
        updates = self.options.train_updates if self.fits else self.options.first_fit_updates
        ac = self.train(pool, updates, gen, progress, step_offset=offset)
        report.train_losses = [*report.train_losses, *ac.actor_losses]
        report.epochs = offset + len(ac.actor_losses)
        report.wall_seconds = time.perf_counter() - begin
        return report

    def progress_total(self) -> int:
        updates = self.options.train_updates if self.fits else self.options.first_fit_updates
        return self.model.progress_total() + math.ceil(updates / UPDATES_PER_REPORT)

    # ------------------------------------------------------------------- the training
    @torch.no_grad()
    def start_states(self, data: ReplayBuffer, max_floats: int = 2**24) -> Tensor:
        """The encoder's belief means ``(N, dz)`` of every step in ``data``: each episode
        filtered (or smoothed) as a whole, episodes of one length batched (at most
        ``max_floats`` observation values at a time)."""
        from bayes_mbrl.models.latent import Sequences

        batch = data.all()
        bounds = Sequences.episodes(data)
        by_length: dict[int, list[int]] = {}
        for i, (a, b) in enumerate(bounds):
            by_length.setdefault(b - a, []).append(i)
        means = []
        for length, episodes in sorted(by_length.items()):
            chunk = max(1, max_floats // (length * batch.obs.shape[-1]))
            for k in range(0, len(episodes), chunk):
                first = torch.tensor([bounds[i][0] for i in episodes[k : k + chunk]])
                rows = first.unsqueeze(1) + torch.arange(length)
                m, _ = self.model.posterior_marginals(batch.obs[rows], batch.action[rows])
                means.append(m.reshape(-1, self.model.latent_dim))
        return torch.cat(means).detach()

    def _num_starts(self) -> int:
        e = self.model.num_members
        return int(math.ceil(self.options.starts / e) * e)

    def imagine(
        self, starts: Tensor, generator: torch.Generator, pathwise: bool = True
    ) -> Imagined:
        """Roll the policy out for ``horizon`` steps from ``starts (B, dz)`` through the
        latent model (``B`` a multiple of the members ``E``: block ``e`` of ``B / E``
        trajectories follows member ``e``). With ``pathwise`` the result is
        differentiable in the policy's parameters through the actions, the transitions
        and the reward; otherwise the states and actions are detached (only
        ``log_probs`` carries the policy's gradient)."""
        model, policy, h = self.model, self.policy, self.options.horizon
        e, dz, da = model.num_members, model.latent_dim, policy.action_dim
        b = starts.shape[0]
        if b % e:
            raise ValueError(f"imagination needs a number of starts divisible by {e}, got {b}")
        state_noise = torch.randn(h, e, b // e, dz, generator=generator)
        action_noise = torch.randn(h, b, da, generator=generator)
        z = starts
        states, us, actions, rewards, log_probs = [z], [], [], [], []
        for t in range(h):
            if pathwise:
                a, u, lp = policy.rsample(z, action_noise[t])
            else:
                with torch.no_grad():
                    a, u, _ = policy.rsample(z, action_noise[t])
                lp = policy.log_prob(z, u)
            with torch.set_grad_enabled(pathwise and torch.is_grad_enabled()):
                rewards.append(model.nets.reward(z, a))
                x = torch.cat([z, a], dim=-1).reshape(e, b // e, dz + da)
                mean, var = model.member_heads(x)
                step = mean + var.sqrt() * state_noise[t]
                z = z + step.reshape(b, dz)
            states.append(z)
            us.append(u)
            actions.append(a)
            log_probs.append(lp)
        return Imagined(
            states=torch.stack(states),
            u=torch.stack(us),
            actions=torch.stack(actions),
            eps=action_noise,
            rewards=torch.stack(rewards),
            log_probs=torch.stack(log_probs),
            members=torch.arange(e).repeat_interleave(b // e),
        )

    def _losses(self, starts: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        opts = self.options
        pathwise = opts.gradient == "pathwise"
        with frozen(self.model.nets):
            traj = self.imagine(starts, generator, pathwise=pathwise)
            values = self.target_critic(traj.states)  # (H + 1, B); frozen parameters
            returns = lambda_returns(traj.rewards, values, opts.discount, opts.return_lambda)
        h = opts.horizon
        weights = opts.discount ** torch.arange(h, dtype=torch.float32).unsqueeze(1)
        entropy = -traj.log_probs
        # per trajectory: an estimate of the gradient of G_0 + η Σ_t γ^t H[pi(. | z_t)]
        if pathwise:
            # through the whole rollout: the λ-return of the start (not the mean of the
            # returns of every imagined state, whose gradient through the states would
            # also reward reaching valuable states sooner than the return does)
            bonus = (weights * entropy).sum(0)
            objective = returns[0] + opts.entropy_bonus * bonus
        else:
            z, eps = traj.states[:-1].detach(), traj.eps
            advantage = (returns - values[:-1]).detach()
            # the entropy bonus's gradient by reparameterization at the fixed states
            _, _, lp_rep = self.policy.rsample(z, eps)
            surrogate = traj.log_probs * advantage - opts.entropy_bonus * lp_rep
            objective = (weights * surrogate).sum(0)
        actor_loss = -objective.mean()
        prediction = self.critic(traj.states[:-1].detach())
        critic_loss = 0.5 * (weights * (prediction - returns.detach()) ** 2).mean()
        return {
            "actor": actor_loss,
            "critic": critic_loss,
            "return": returns[0].detach().mean(),
            "entropy": entropy.detach().mean(),
        }

    def _snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self._ac_state())

    def train(
        self,
        pool: Tensor,
        updates: int,
        generator: torch.Generator,
        progress: ProgressFn | None = None,
        step_offset: int = 0,
    ) -> ACReport:
        """``updates`` actor-critic updates on imagined trajectories from starts drawn
        (with replacement) from ``pool (N, dz)``; ``progress(step_offset + k, actor
        loss, nan)`` after every :data:`UPDATES_PER_REPORT` updates.

        Raises:
            ModelError: a loss turned non-finite (actor, critic and their optimizers
                are restored to their state before this call).
        """
        opts = self.options
        gen = torch.Generator().manual_seed(_seed(generator))
        report = ACReport()
        backup = self._snapshot()
        n = self._num_starts()
        sums = dict.fromkeys(("actor", "critic", "return", "entropy"), 0.0)
        count = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(gen))
            for k in range(updates):
                starts = pool[torch.randint(len(pool), (n,), generator=gen)]
                losses = self._losses(starts, gen)
                total = losses["actor"] + losses["critic"]
                if not bool(torch.isfinite(total)):
                    self._load_ac_state(backup)
                    raise ModelError(
                        f"latent actor-critic diverged (non-finite loss) at update {k}; the "
                        "actor and critic of the last good fit are restored. Lower "
                        "latent_ac.actor_learning_rate / critic_learning_rate"
                    )
                self.actor_optimizer.zero_grad(set_to_none=True)
                self.critic_optimizer.zero_grad(set_to_none=True)
                total.backward()
                nn.utils.clip_grad_norm_(self.policy.parameters(), opts.grad_clip)
                nn.utils.clip_grad_norm_(self.critic.parameters(), opts.grad_clip)
                self.actor_optimizer.step()
                self.critic_optimizer.step()
                polyak_update(self.target_critic, self.critic, opts.target_rate)
                for key in sums:
                    sums[key] += float(losses[key].detach())
                count += 1
                if count == UPDATES_PER_REPORT or k == updates - 1:
                    report.actor_losses.append(sums["actor"] / count)
                    report.critic_losses.append(sums["critic"] / count)
                    report.returns.append(sums["return"] / count)
                    report.entropies.append(sums["entropy"] / count)
                    if progress is not None:
                        progress(
                            step_offset + len(report.actor_losses) - 1,
                            sums["actor"] / count,
                            math.nan,
                        )
                    sums = dict.fromkeys(sums, 0.0)
                    count = 0
        report.updates = updates
        self.fits += 1
        self.last_report = report
        return report

    @torch.no_grad()
    def value(self, z: Tensor) -> Tensor:
        """The critic's value of latent states ``(..., dz)`` in the task's reward units
        (``v * reward_std + reward_mean / (1 - γ)``)."""
        m = self.model
        return self.critic(z) * m.reward_std + m.reward_mean / (1.0 - self.options.discount)

    # ------------------------------------------------------------------- persistence
    def _ac_state(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "fits": self.fits,
        }

    def _load_ac_state(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.fits = int(state["fits"])

    def state_dict(self) -> dict[str, Any]:
        """The latent model's state, the actor's, the critics' and their optimizers'
        (tensors and plain containers: ``torch.load(weights_only=True)`` reads it)."""
        return {"model": self.model.state_dict(), **self._ac_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ModelError: it does not fit this configuration (nothing is changed).
        """
        backup = self._snapshot()
        try:
            self._load_ac_state(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            self._load_ac_state(backup)
            raise ModelError(
                f"saved latent actor-critic does not match this configuration ({exc}); load "
                "it with the config it was saved with (it was left unchanged)"
            ) from exc
        try:
            self.model.load_state_dict(state["model"])
        except (KeyError, ModelError):
            self._load_ac_state(backup)
            raise


class LatentACAgent:
    """Filters the belief over the latent state and acts with the policy's mean action
    at the belief's mean.

    Args:
        model: the latent state-space model.
        policy: the trained :class:`TanhGaussianPolicy`.

    Attributes:
        tracker: the :class:`~bayes_mbrl.algorithms.latent_mpc.BeliefTracker`.
        plan_seconds: wall time spent filtering and acting since :meth:`reset`.
    """

    def __init__(self, model: LatentStateSpaceModel, policy: TanhGaussianPolicy) -> None:
        self.model, self.policy = model, policy
        self.tracker = BeliefTracker(model)
        self.plan_seconds = 0.0

    def reset(self) -> None:
        """Start of an episode: forget the belief and the last action."""
        self.tracker.reset()
        self.plan_seconds = 0.0

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor) -> Tensor:
        """Action ``(action_dim,)`` for the newest observation."""
        begin = time.perf_counter()
        belief = self.tracker.observe(obs)
        action = self.policy.mean_action(belief.mean).detach().clone()
        self.tracker.acted(action)
        self.plan_seconds += time.perf_counter() - begin
        return action


class LatentACAlgorithm(Algorithm):
    """Latent actor-critic over the ``[model]`` latent state-space model."""

    observations = ("state", "partial", "pixels")

    def check(self, config: Any) -> tuple[str, Any, str] | None:
        return check_latent_kind(config)

    def build(self, config: Any, task: TaskSpec, generator: torch.Generator) -> AlgorithmParts:
        model = build_latent_model(config, task)
        opts: LatentACOptions = config.mode_options
        learner = LatentActorCritic(
            model, task.action_low, task.action_high, opts, seed=_seed(generator)
        )
        return AlgorithmParts(
            agent=LatentACAgent(model, learner.policy),
            learner=learner,
            model=None,
            title=f"latent ({model.encoder}) + actor-critic",
            fit_description="latent model SVI, then actor-critic in imagination",
            no_model_reason=(
                "a latent state-space model predicts observations from a belief over its "
                "latent state, not from the previous observation; its diagnostics are "
                "written into the run's latent/ directory with latent_ac.diagnostics_every"
            ),
            callbacks=[LatentDiagnostics(model, opts.diagnostics_every)],
        )


ALGORITHMS.add(
    "latent_ac",
    LatentACAlgorithm,
    options=LatentACOptions,
    summary="actor-critic trained on rollouts imagined in a latent state-space model "
    "(Dreamer-style; partial observations and pixels); acts with the policy from the "
    "filtered belief",
)
