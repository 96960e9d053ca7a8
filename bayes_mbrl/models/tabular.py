"""A tabular dynamics model: a Dirichlet posterior over next states and a Normal
posterior over the mean reward of every state-action pair.

For finite state and action spaces (the Dyna maze, any ``Discrete`` x ``Discrete``
task), the model keeps counts ``n(s, a, s')`` of observed transitions. With a
symmetric Dirichlet prior of total mass ``prior_count`` spread over the ``S`` states,
the posterior over the next-state distribution of ``(s, a)`` is::

    p(. | s, a) ~ Dirichlet(n(s, a, .) + prior_count / S)
    E[p(s' | s, a)] = (n(s, a, s') + prior_count / S) / (n(s, a) + prior_count)

so with ``prior_count = 0`` the posterior mean is the empirical transition frequency.
A pair never tried, with ``prior_count = 0``, stays where it is with reward 0 (the
convention of Sutton & Barto's Dyna-Q+, which lets planning consider untried actions).
The mean reward of ``(s, a)`` has a Normal prior ``N(reward_prior_mean,
reward_prior_std^2)`` and Normal observations of standard deviation ``reward_noise``;
its posterior is Normal (conjugate), with mean the empirical mean reward when
``reward_prior_std`` is infinite.

``forget`` in ``[0, 1]`` discounts a pair's old counts each time it is observed again
(``n <- (1 - forget) n`` before the new observation is added): 0 keeps every count
(the Bayesian posterior of a stationary maze), 1 keeps only the last outcome (Sutton
& Barto's Dyna-Q model, which follows a changing maze at once).

So the model is a distribution over functions like every other model: a function is
a drawn table (a next-state distribution per pair, and a mean reward per pair), and
Thompson sampling plans in one drawn table. :class:`TabularPosterior` holds the counts
for any batch of independent models (many runs in lockstep);
:class:`TabularDynamics` is the :class:`DynamicsModel` of one, registered as
``model.kind = "tabular"``, whose observations and actions are one-hot vectors
(``obs_dim = S``, ``action_dim = A``) and whose next-observation distribution is a
:class:`~torch.distributions.OneHotCategorical`: its mean is the next-state
distribution, and the law of total variance splits its variance into the spread of
the drawn tables (epistemic) and the randomness of the move (aleatoric).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, OneHotCategorical

from bayes_mbrl.data import ReplayBuffer, one_hot_rows
from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.base import (
    MODELS,
    DynamicsModel,
    FitReport,
    FunctionSample,
    Predictive,
    ProgressFn,
)
from bayes_mbrl.options import Options, at_least, greater_than, interval, option

__all__ = [
    "TabularDynamics",
    "TabularFunctions",
    "TabularOptions",
    "TabularPosterior",
    "one_hot_index",
]


def one_hot_index(x: Tensor, size: int, what: str) -> Tensor:
    """The index of each one-hot row of ``x (..., size)``, as a long tensor ``(...)``.

    Raises:
        DataError: ``x`` is not one-hot of width ``size`` (naming the first bad row).
    """
    if x.shape[-1] != size:
        raise DataError(
            f"the tabular model takes {what} as one-hot vectors of size {size}; got width "
            f"{x.shape[-1]}"
        )
    ok = one_hot_rows(x)
    if not bool(ok.all()):
        bad = int((~ok).flatten().nonzero()[0])
        raise DataError(
            f"the tabular model takes {what} as one-hot vectors of size {size}; row {bad} is "
            f"{x.reshape(-1, size)[bad].tolist()}; encode an index i as "
            "torch.nn.functional.one_hot(i, size)"
        )
    return x.argmax(-1)


class TabularPosterior:
    """Counts and reward statistics of a batch of independent tabular models.

    Args:
        num_states: ``S``.
        num_actions: ``A``.
        batch_shape: leading shape of independent models (e.g. ``(runs,)``).
        prior_count: see the module docstring.
        forget: see the module docstring.
        reward_prior_mean: see the module docstring.
        reward_prior_std: see the module docstring.
        reward_noise: see the module docstring.
        prior_support: ``(S, A, S)`` bool, the next states each pair can lead to a
            priori (e.g. a grid cell's neighbours): the prior mass ``prior_count`` is
            spread over those instead of over all ``S`` states. ``None``: all states.

    Tensors: ``counts (*batch, S, A, S)``, reward count ``reward_n``, sum ``reward_sum``
    ``(*batch, S, A)``, all float64.
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        batch_shape: tuple[int, ...] = (),
        prior_count: float = 0.0,
        forget: float = 0.0,
        reward_prior_mean: float = 0.0,
        reward_prior_std: float = math.inf,
        reward_noise: float = 1.0,
        prior_support: Tensor | None = None,
    ) -> None:
        self.num_states, self.num_actions = num_states, num_actions
        self.batch_shape = tuple(batch_shape)
        self.prior_count, self.forget = float(prior_count), float(forget)
        self.reward_prior_mean = float(reward_prior_mean)
        self.reward_prior_std = float(reward_prior_std)
        self.reward_noise = float(reward_noise)
        shape = (*self.batch_shape, num_states, num_actions)
        self.counts = torch.zeros(*shape, num_states, dtype=torch.float64)
        self.reward_n = torch.zeros(shape, dtype=torch.float64)
        self.reward_sum = torch.zeros(shape, dtype=torch.float64)
        if prior_support is None:
            support = torch.ones(num_states, num_actions, num_states, dtype=torch.float64)
        else:
            if tuple(prior_support.shape) != (num_states, num_actions, num_states):
                want = (num_states, num_actions, num_states)
                raise ModelError(
                    f"prior_support must have shape (S, A, S) = {want}, "
                    f"got {tuple(prior_support.shape)}"
                )
            support = prior_support.to(torch.float64)
            if bool((support.sum(-1) == 0).any()):
                raise ModelError("prior_support leaves some pair with no possible next state")
        #: ``(S, A, S)`` prior concentration added to the counts
        self.prior = self.prior_count * support / support.sum(-1, keepdim=True)
        self._batch_index: tuple[Tensor, ...] = (
            torch.meshgrid(*[torch.arange(n) for n in self.batch_shape], indexing="ij")
            if self.batch_shape
            else ()
        )

    def update(self, state: Tensor, action: Tensor, reward: Tensor, next_state: Tensor) -> None:
        """Add one transition to each model of the batch.

        Args:
            state: ``batch_shape`` long indices.
            action: ``batch_shape`` long indices.
            next_state: ``batch_shape`` long indices.
            reward: ``batch_shape`` rewards.
        """
        b = self._batch_index
        if self.forget > 0:
            self.counts[(*b, state, action)] *= 1.0 - self.forget
            self.reward_n[(*b, state, action)] *= 1.0 - self.forget
            self.reward_sum[(*b, state, action)] *= 1.0 - self.forget
        self.counts[(*b, state, action, next_state)] += 1.0
        self.reward_n[(*b, state, action)] += 1.0
        self.reward_sum[(*b, state, action)] += reward.to(torch.float64)

    def add_all(self, state: Tensor, action: Tensor, reward: Tensor, next_state: Tensor) -> None:
        """Add ``(N,)`` transitions to an unbatched model, in order (the same result as
        :meth:`update` one at a time)."""
        if self.batch_shape:
            raise ModelError("add_all is for an unbatched TabularPosterior; use update")
        if self.forget > 0:  # the order matters: one at a time
            for i in range(state.shape[0]):
                self.update(state[i], action[i], reward[i], next_state[i])
            return
        flat = (state * self.num_actions + action) * self.num_states + next_state
        size = self.num_states * self.num_actions
        self.counts += torch.bincount(flat, minlength=size * self.num_states).view_as(self.counts)
        pair = state * self.num_actions + action
        self.reward_n += torch.bincount(pair, minlength=size).view_as(self.reward_n)
        self.reward_sum += torch.bincount(
            pair, weights=reward.to(torch.float64), minlength=size
        ).view_as(self.reward_sum)

    def sample_next(
        self, state: Tensor, action: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """One next state per model of the batch from the posterior-mean row of
        ``(state, action)`` (``batch_shape`` long indices; an empty row stays put), by
        inverse-CDF sampling with one ``rand(batch_shape)`` draw."""
        conc = self.counts[(*self._batch_index, state, action)] + self.prior[state, action]
        cdf = conc.cumsum(-1)
        total = cdf[..., -1:]
        u = torch.rand(state.shape, generator=generator, dtype=cdf.dtype).unsqueeze(-1) * total
        drawn = (cdf <= u).sum(-1).clamp_max(self.num_states - 1)
        return torch.where(total.squeeze(-1) > 0, drawn, state)

    @property
    def tried(self) -> Tensor:
        """``(*batch, S, A)`` bool: pairs observed at least once."""
        return self.reward_n > 0

    def _concentration(self) -> Tensor:
        return self.counts + self.prior

    def _self_loops(self, table: Tensor, empty: Tensor) -> Tensor:
        """Rows with no mass (never tried, no prior) stay where they are."""
        stay = torch.eye(self.num_states, dtype=table.dtype).unsqueeze(1)  # (S, 1, S)
        return torch.where(empty.unsqueeze(-1), stay.expand_as(table), table)

    def mean_transition(self) -> Tensor:
        """``(*batch, S, A, S)`` posterior mean of ``p(s' | s, a)``."""
        conc = self._concentration()
        total = conc.sum(-1, keepdim=True)
        empty = total.squeeze(-1) <= 0
        return self._self_loops(conc / total.clamp_min(1e-300), empty)

    def sample_transition(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, *batch, S, A, S)`` tables drawn from the Dirichlet posterior."""
        conc = self._concentration().expand(n, *self.counts.shape)
        g = _standard_gamma(conc, generator)
        total = g.sum(-1, keepdim=True)
        empty = total.squeeze(-1) <= 0
        return self._self_loops(g / total.clamp_min(1e-300), empty)

    def _reward_posterior(self) -> tuple[Tensor, Tensor]:
        prec0 = 0.0 if math.isinf(self.reward_prior_std) else self.reward_prior_std**-2
        noise_prec = self.reward_noise**-2
        prec = prec0 + self.reward_n * noise_prec
        num = prec0 * self.reward_prior_mean + self.reward_sum * noise_prec
        none = prec <= 0
        mean = torch.where(none, self.reward_prior_mean, num / prec.clamp_min(1e-300))
        var = torch.where(none, self.reward_prior_std**2, 1.0 / prec.clamp_min(1e-300))
        return mean, var

    def mean_reward(self) -> Tensor:
        """``(*batch, S, A)`` posterior mean of the mean reward."""
        return self._reward_posterior()[0]

    def sample_reward(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, *batch, S, A)`` mean rewards drawn from their posterior (a pair with no
        data and an infinite prior std gets the prior mean)."""
        mean, var = self._reward_posterior()
        std = torch.where(torch.isinf(var), 0.0, var.sqrt())
        eps = torch.randn((n, *mean.shape), generator=generator, dtype=mean.dtype)
        return mean + std * eps

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "reward_n": self.reward_n, "reward_sum": self.reward_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("counts", "reward_n", "reward_sum"):
            if tuple(state[k].shape) != tuple(getattr(self, k).shape):
                raise ModelError(
                    f"tabular state {k!r} has shape {tuple(state[k].shape)}, the model "
                    f"{tuple(getattr(self, k).shape)}: a model of other sizes"
                )
            setattr(self, k, state[k].to(torch.float64).clone())


def _standard_gamma(conc: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gamma(conc, 1) draws from ``generator`` (0 where ``conc = 0``).

    torch's ``_standard_gamma`` has no generator argument, so the draws come from the
    global RNG seeded from ``generator`` (forked: the global state is left as it was).
    """
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch._standard_gamma(conc.clamp_min(1e-30))
    return torch.where(conc > 0, g, 0.0)


class TabularFunctions(FunctionSample):
    """``n`` drawn tables: next-state distributions ``(n, S, A, S)`` and mean rewards
    ``(n, S, A)``; evaluated on one-hot ``(n, B, S)`` / ``(n, B, A)`` inputs."""

    def __init__(self, transitions: Tensor, rewards: Tensor) -> None:
        self.transitions, self.rewards = transitions, rewards
        self.n = transitions.shape[0]

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        s, a = obs.argmax(-1), action.argmax(-1)  # (n, B)
        rows = torch.arange(self.n).unsqueeze(1).expand_as(s)
        probs = self.transitions[rows, s, a].float()
        return OneHotCategorical(probs=probs.clamp_min(1e-12))

    def reward(self, obs: Tensor, action: Tensor) -> Tensor:
        """``(n, B)`` mean reward of each function at one-hot inputs."""
        s, a = obs.argmax(-1), action.argmax(-1)
        rows = torch.arange(self.n).unsqueeze(1).expand_as(s)
        return self.rewards[rows, s, a].float()


@dataclass
class TabularOptions(Options):
    """Options of ``model.kind = "tabular"`` (see :mod:`bayes_mbrl.models.tabular`)."""

    prior_count: float = option(
        1.0, at_least(0), "Dirichlet prior mass per state-action pair, spread over the states"
    )
    forget: float = option(
        0.0, interval(0.0, 1.0), "discount of a pair's old counts when it is seen again"
    )
    reward_prior_mean: float = option(0.0, None, "prior mean of each pair's mean reward")
    reward_prior_std: float = option(
        1.0, greater_than(0), "prior std of each pair's mean reward (inf: flat)"
    )
    reward_noise: float = option(1.0, greater_than(0), "std of an observed reward")


@MODELS.register(
    "tabular",
    options=TabularOptions,
    summary="counts per state-action pair: a Dirichlet posterior over next states and a "
    "Normal one over mean rewards (one-hot observations and actions)",
)
class TabularDynamics(DynamicsModel):
    """The tabular model as a :class:`DynamicsModel` (see the module docstring).

    Args:
        obs_dim: the number of states ``S`` (observations are one-hot of this size).
        action_dim: the number of actions ``A`` (one-hot).
        seed: unused (the model has no random initialization); kept for the protocol.

    The arguments from ``prior_count`` to ``reward_noise`` are the fields of
    :class:`TabularOptions`.
    """

    num_functions_hint: int | None = None
    supports_moment_matching = False
    predict_seed: int | None = 0

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        prior_count: float = 1.0,
        forget: float = 0.0,
        reward_prior_mean: float = 0.0,
        reward_prior_std: float = 1.0,
        reward_noise: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.options = TabularOptions.of(
            type(self).__name__,
            prior_count=prior_count,
            forget=forget,
            reward_prior_mean=reward_prior_mean,
            reward_prior_std=reward_prior_std,
            reward_noise=reward_noise,
        )
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.posterior = self._empty()

    def _empty(self) -> TabularPosterior:
        o = self.options
        return TabularPosterior(
            self.obs_dim,
            self.action_dim,
            prior_count=o.prior_count,
            forget=o.forget,
            reward_prior_mean=o.reward_prior_mean,
            reward_prior_std=o.reward_prior_std,
            reward_noise=o.reward_noise,
        )

    def fit(
        self,
        data: ReplayBuffer,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> FitReport:
        """Recount every transition of ``data`` (one-hot observations and actions)."""
        start = time.perf_counter()
        batch = data.all()
        self.check_inputs(batch.obs, batch.action, batch.next_obs)
        s = one_hot_index(batch.obs, self.obs_dim, "observations")
        a = one_hot_index(batch.action, self.action_dim, "actions")
        s2 = one_hot_index(batch.next_obs, self.obs_dim, "next observations")
        self.posterior = self._empty()
        self.posterior.add_all(s, a, batch.reward, s2)
        if progress is not None:
            progress(1, float("nan"), float("nan"))
        return FitReport(epochs=1, wall_seconds=time.perf_counter() - start)

    def progress_total(self) -> int | None:
        return 1

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        if n < 1:
            raise DataError(f"sample_functions needs n >= 1, got {n}")
        return TabularFunctions(
            self.posterior.sample_transition(n, generator),
            self.posterior.sample_reward(n, generator),
        )

    def mean_functions(self) -> TabularFunctions:
        """The posterior-mean table as one function (the empirical model of Dyna-Q)."""
        return TabularFunctions(
            self.posterior.mean_transition().unsqueeze(0),
            self.posterior.mean_reward().unsqueeze(0),
        )

    @torch.no_grad()
    def predict(self, obs: Tensor, action: Tensor, num_functions: int | None = None) -> Predictive:
        """Predictive moments of the one-hot next observation; with ``num_functions =
        None`` in closed form from the Dirichlet posterior (``p ~ Dir(c)``, ``c0 = sum c``):
        mean ``c / c0``, epistemic ``Var[p_j] = m_j (1 - m_j) / (c0 + 1)``, aleatoric
        ``E[p_j (1 - p_j)] = m_j (1 - m_j) c0 / (c0 + 1)``; otherwise averaged over
        ``num_functions`` drawn tables like any model."""
        if num_functions is not None:
            return super().predict(obs, action, num_functions)
        self.check_inputs(obs, action)
        s = one_hot_index(obs, self.obs_dim, "observations")
        a = one_hot_index(action, self.action_dim, "actions")
        m = self.posterior.mean_transition()[s, a]
        c0 = self.posterior._concentration()[s, a].sum(-1, keepdim=True)
        spread = m * (1 - m)
        # no mass (never tried, no prior): a certain self-loop
        frac = torch.where(c0 > 0, 1.0 / (c0 + 1.0), 0.0)
        return Predictive(
            mean=m.float(),
            epistemic_var=(spread * frac).float(),
            aleatoric_var=(spread * (1.0 - frac)).float(),
        )

    def state_dict(self) -> dict[str, Any]:
        return self.posterior.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.posterior.load_state_dict(state)
