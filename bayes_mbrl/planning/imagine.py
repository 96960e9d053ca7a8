"""Imagination: batched transitions imagined through posterior function draws.

:func:`imagine` rolls particles forward from ``(B, obs_dim)`` start states under a
policy or fixed action sequences, through the same vectorized step that planning
uses (:class:`~bayes_mbrl.planning.rollout.RolloutEvaluator` scores sequences by
:meth:`ImaginedTransitions.returns` of :func:`rollout`, the one horizon loop). Planners'
returns, MBPO's branched rollouts, MVE targets and distillation build on it.

Particle layout. A rollout has ``G`` function groups, ``B`` start states and ``k``
particles per group and start; its ``N = G * B * k`` particles are ordered
group-major, particle ``n = (g * B + b) * k + j``:

- ``ts_inf``: ``G`` posterior functions, group ``g`` is function ``g`` for the whole
  trajectory (``function_index[n] = g``);
- ``ts_1``: ``G`` groups, but every step assigns the groups of each start state to
  the ``G`` functions anew by a random permutation (stratified), the ``k`` particles
  of a group together: a group follows one random sequence of functions, so no
  particle has a single function (``-1``), and the spread across groups is still
  the model's and the spread within a group the noise's;
- ``expectation``: one group (``G = k = 1``) following the predictive mean, the
  mixture mean over the functions (``-1``).

Shapes: ``H`` horizon, ``N`` particles, ``D`` obs_dim, ``A`` action_dim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bayes_mbrl.envs import RewardFn, TerminationFn
from bayes_mbrl.errors import BayesMBRLError, ConfigError, DataError
from bayes_mbrl.models.base import DynamicsModel, FunctionSample
from bayes_mbrl.planning.precision import PRECISIONS

if TYPE_CHECKING:
    from bayes_mbrl.planning.propagation import ParticlePropagation

__all__ = [
    "PRECISIONS",
    "ImaginedTransitions",
    "Policy",
    "TerminalValueFn",
    "draw_functions",
    "functions_per_start",
    "host_checks",
    "imagine",
    "lambda_returns",
    "rollout",
    "skip_host_checks",
]


Policy = Callable[[Tensor], Tensor]
"""A batched policy ``obs (N, obs_dim) -> action (N, action_dim)`` of torch tensors."""
TerminalValueFn = Callable[[Tensor], Tensor]
"""``states (N, obs_dim) -> values (N,)``: the value of the state after a plan's horizon."""

REWARD_SIGNATURE = "(obs (..., D), action (..., A), next_obs (..., D)) -> reward (...)"
TERMINATION_SIGNATURE = "(obs (..., D), action (..., A), next_obs (..., D)) -> bool (...)"
POLICY_SIGNATURE = "obs (N, obs_dim) -> action (N, action_dim)"


_HOST_CHECKS: ContextVar[bool] = ContextVar("host_checks", default=True)


def host_checks() -> bool:
    """Whether the checks that read values on the host (finite inputs, the first step's
    rewards, a terminal value's outputs) run here: True unless inside
    :func:`skip_host_checks`."""
    return _HOST_CHECKS.get()


@contextmanager
def skip_host_checks() -> Iterator[None]:
    """Inside the block, imagined rollouts and evaluators skip the checks that read
    values on the host (shapes and dtypes are still checked): for the later scores of
    a planning call whose first score was checked, and for a plan recorded as a CUDA
    graph, where copying a value to the host is not allowed (the eager plans that come
    before the recording check the same inputs and functions)."""
    token = _HOST_CHECKS.set(False)
    try:
        yield
    finally:
        _HOST_CHECKS.reset(token)


# ------------------------------------------------------------- the user's functions
def call_user(name: str, signature: str, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """Call a user's reward-like function; an exception it raises becomes a DataError
    (bayes_mbrl errors, e.g. a task reward's own shape check, pass unchanged)."""
    try:
        return fn(*args)
    except BayesMBRLError:
        raise
    except Exception as exc:
        shapes = ", ".join(str(tuple(a.shape)) for a in args)
        raise DataError(
            f"{name} raised {type(exc).__name__}: {exc}; it must be a batched function "
            f"{signature} of torch tensors (called with shapes {shapes})"
        ) from exc


def check_output(
    name: str,
    out: object,
    expected: tuple[int, ...],
    signature: str,
    per: str = "one value per transition",
) -> None:
    """Raise DataError unless a reward-like output (or a policy's actions) is a real tensor
    of shape ``expected`` (shape and dtype only: no host sync, cheap enough for every step)."""
    if not isinstance(out, Tensor):
        raise DataError(
            f"{name} returned a {type(out).__name__}, expected a torch.Tensor of shape "
            f"{expected}; it must be a batched function {signature}"
        )
    if tuple(out.shape) != expected:
        raise DataError(
            f"{name} returned shape {tuple(out.shape)}, expected {expected}: {per}. It must "
            f"be a batched function {signature}"
        )
    want_bool = name == "termination_fn"
    if want_bool and out.dtype != torch.bool:
        raise DataError(
            f"{name} returned dtype {out.dtype}, expected torch.bool (True where the "
            f"episode ends); it must be a batched function {signature}"
        )
    if not want_bool and (out.dtype == torch.bool or out.is_complex()):
        raise DataError(
            f"{name} returned dtype {out.dtype}, expected real numbers; it must be a batched "
            f"function {signature}"
        )


def checked_reward(reward_fn: RewardFn, obs: Tensor, action: Tensor, nxt: Tensor) -> Tensor:
    """``reward_fn(obs, action, nxt)``, validated: called safely, output shape and dtype,
    finite rewards for finite inputs (one host sync, for the first step of a rollout;
    skipped inside :func:`skip_host_checks`)."""
    r = call_user("reward_fn", REWARD_SIGNATURE, reward_fn, obs, action, nxt)
    check_output("reward_fn", r, tuple(obs.shape[:-1]), REWARD_SIGNATURE)
    if not host_checks():
        return r
    # a model may diverge to NaN states (those sequences are never chosen), but a
    # non-finite reward of finite inputs is the reward function's fault
    inputs_ok = (
        torch.isfinite(obs).all(-1) & torch.isfinite(action).all(-1) & torch.isfinite(nxt).all(-1)
    )
    bad = ~torch.isfinite(r) & inputs_ok
    if bool(bad.any()):
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise DataError(
            f"reward_fn returned NaN or inf for finite inputs (obs {obs[i].tolist()}, "
            f"action {action[i].tolist()}, next_obs {nxt[i].tolist()} -> {float(r[i])}); "
            "check the reward function (a log or division by zero, an overflow)"
        )
    return r


def checked_termination(
    termination_fn: TerminationFn, obs: Tensor, action: Tensor, nxt: Tensor
) -> Tensor:
    """``termination_fn(obs, action, nxt)``, validated: called safely, a bool per transition."""
    done = call_user("termination_fn", TERMINATION_SIGNATURE, termination_fn, obs, action, nxt)
    check_output("termination_fn", done, tuple(obs.shape[:-1]), TERMINATION_SIGNATURE)
    return done


def _checked_policy(policy: Policy, flat: Tensor, action_dim: int) -> Tensor:
    """The policy's first actions for ``flat (N, D)`` observations, validated (called
    safely, shape, real dtype, finite)."""
    out = call_user("policy", POLICY_SIGNATURE, policy, flat)
    want = (flat.shape[0], action_dim)
    check_output("policy", out, want, POLICY_SIGNATURE, per="one action per particle")
    if host_checks() and not bool(torch.isfinite(out).all()):
        raise DataError("policy returned NaN or inf actions; check the policy's parameters")
    return out


def _fixed_actions(actions: Tensor) -> Callable[[int, Tensor], Tensor]:
    """``(t, obs) -> actions[t]``: per-step actions ``(H, *lead, A)`` already laid out."""
    return lambda t, obs: actions[t]


def _policy_actions(policy: Policy, action_dim: int) -> Callable[[int, Tensor], Tensor]:
    """``(t, obs (*lead, D)) -> action (*lead, A)``: the policy on the flattened particles
    (its output checked at the first step)."""

    def at(t: int, obs: Tensor) -> Tensor:
        flat = obs.reshape(-1, obs.shape[-1])
        out = _checked_policy(policy, flat, action_dim) if t == 0 else policy(flat)
        return out.to(obs.dtype).reshape(*obs.shape[:-1], action_dim)

    return at


# ---------------------------------------------------------------------- the result
def lambda_returns(
    rewards: Tensor,
    values: Tensor,
    discount: float,
    lam: float,
    continues: Tensor | None = None,
) -> Tensor:
    """The λ-returns of imagined trajectories.

    ``G_H = v_H``, ``G_t = r_t + γ c_t ((1 - λ) v_{t+1} + λ G_{t+1})``: λ = 0 gives the
    one-step TD targets ``r_t + γ c_t v_{t+1}``, λ = 1 the discounted sum of the rewards
    up to the horizon plus ``γ^(H-t) v_H``; ``c_t = 0`` where step ``t`` ends the
    episode (nothing after it counts).

    Args:
        rewards: ``(H, ...)``; ``rewards[t]`` is the reward of ``(z_t, a_t)``.
        values: ``(H + 1, ...)`` value estimates of ``z_0 .. z_H``.
        discount: γ.
        lam: λ.
        continues: ``(H, ...)`` ``c_t``: 0 where the transition terminates (None: all 1).

    Returns:
        ``(H, ...)`` the returns of ``z_0 .. z_{H-1}`` (differentiable in both inputs).
    """
    horizon = rewards.shape[0]
    if values.shape[0] != horizon + 1 or values.shape[1:] != rewards.shape[1:]:
        raise ValueError(
            f"values must have shape (H + 1, ...) = ({horizon + 1}, "
            f"{', '.join(map(str, rewards.shape[1:]))}), got {tuple(values.shape)}"
        )
    if continues is not None and continues.shape != rewards.shape:
        raise ValueError(
            f"continues must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(continues.shape)}"
        )
    out = []
    ret = values[horizon]
    for t in range(horizon - 1, -1, -1):
        step = discount if continues is None else discount * continues[t]
        ret = rewards[t] + step * ((1.0 - lam) * values[t + 1] + lam * ret)
        out.append(ret)
    return torch.stack(out[::-1], 0)


def _checked_values(value: TerminalValueFn, states: Tensor, name: str) -> Tensor:
    """``value(states)``, checked to be one finite value per state (``name``: the
    argument's name, for the message).

    Raises:
        DataError: another shape, or NaN or inf.
    """
    out = value(states)
    if not isinstance(out, Tensor) or out.shape != states.shape[:1]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise DataError(
            f"{name} must map states (N, obs_dim) to values (N,) = ({len(states)},), got {shape}"
        )
    if host_checks() and not bool(torch.isfinite(out).all()):
        raise DataError(f"{name} returned NaN or inf; check the value function")
    return out


@dataclass
class ImaginedTransitions:
    """Imagined transitions, time-major, particles in the layout of the module docstring.

    Attributes:
        obs: ``(H, N, obs_dim)``.
        action: ``(H, N, action_dim)``.
        reward: ``(H, N)``, or None when no reward function was given.
        next_obs: ``(H, N, obs_dim)``; ``next_obs[t] = obs[t + 1]``.
        done: ``(H, N)`` bool: the transition terminates its episode (all False without a
            termination function). Particles keep moving after it (vectorized); see
            :meth:`alive` for the transitions that count.
        function_index: ``(N,)`` long: the function draw (index into the
            :class:`~bayes_mbrl.models.base.FunctionSample` used, e.g. the ensemble member
            when every member is drawn) each particle follows for the whole trajectory
            (``ts_inf``), or -1 (``ts_1``, ``expectation``).
        start_index: ``(N,)`` long: the start state (row of ``start_obs``) of each particle.
        layout: ``(G, B, k)``: function groups, start states, particles per group and start.
    """

    obs: Tensor
    action: Tensor
    reward: Tensor | None
    next_obs: Tensor
    done: Tensor
    function_index: Tensor
    start_index: Tensor
    layout: tuple[int, int, int]

    @property
    def horizon(self) -> int:
        return int(self.obs.shape[0])

    @property
    def num_particles(self) -> int:
        return int(self.obs.shape[1])

    def alive(self) -> Tensor:
        """``(H, N)`` bool: no transition before this one terminated the particle's episode."""
        before = torch.zeros_like(self.done[:1])
        ended = torch.cat([before, self.done[:-1]]).cumsum(0) > 0
        return ~ended

    def lambda_returns(self, value: TerminalValueFn, discount: float, lam: float) -> Tensor:
        """``(H, N)`` λ-returns of ``obs[0] .. obs[H-1]`` (:func:`lambda_returns`) with the
        state values ``value`` of ``obs`` and of the last ``next_obs``: the critic's
        regression targets (a terminated particle's later rewards and values do not
        count). Differentiable in the rewards, the states and ``value``'s parameters.

        Raises:
            ConfigError: no reward function was given to the rollout.
            DataError: ``value`` did not return one finite value per state.
        """
        if self.reward is None:
            raise ConfigError("these imagined transitions have no rewards; pass a reward_fn")
        states = torch.cat([self.obs, self.next_obs[-1:]])
        flat = states.reshape(-1, states.shape[-1])
        values = _checked_values(value, flat, "value").reshape(states.shape[:2])
        alive = self.alive()
        rewards = torch.where(alive, self.reward, 0.0)
        continues = (alive & ~self.done).to(rewards.dtype)
        return lambda_returns(rewards, values.to(rewards.dtype), discount, lam, continues)

    def returns(
        self, discount: float = 1.0, terminal_value: TerminalValueFn | None = None
    ) -> Tensor:
        """``(N,)`` discounted sums of the rewards of the :meth:`alive` transitions, plus
        ``discount^H * terminal_value(next_obs[-1])`` for the particles that did not
        terminate (a value of the state after the horizon, e.g. a learned critic:
        ``sum_t gamma^t r_t + gamma^H V(s_H)``).

        Raises:
            ConfigError: no reward function was given to the rollout.
            DataError: ``terminal_value`` did not return one finite value per particle.
        """
        if self.reward is None:
            raise ConfigError("these imagined transitions have no rewards; pass a reward_fn")
        returns = torch.zeros(self.num_particles, device=self.reward.device)
        alive = torch.ones_like(self.done[0])
        weight = 1.0
        for t in range(self.horizon):
            returns.add_(torch.where(alive, self.reward[t], 0.0), alpha=weight)
            alive = alive & ~self.done[t]  # not in place: gradients flow through where()
            weight *= discount
        if terminal_value is not None:
            value = _checked_values(terminal_value, self.next_obs[-1], "terminal_value")
            returns.add_(torch.where(alive, value.to(returns.dtype), 0.0), alpha=weight)
        return returns

    def per_function(self, values: Tensor) -> Tensor:
        """Group per-particle values ``(..., N)`` by start state and function group:
        ``(..., B, G, k)``, the layout the objectives read (``G`` functions, ``k`` noise
        draws on each)."""
        g, b, k = self.layout
        return values.reshape(*values.shape[:-1], g, b, k).movedim(-2, -3)

    def per_start(self, values: Tensor) -> Tensor:
        """Group per-particle values ``(..., N)`` by start state: ``(..., B, G * k)``, the
        particles of start ``b`` ordered ``q = g * k + j``."""
        g, b, k = self.layout
        lead = values.shape[:-1]
        grouped = values.reshape(*lead, g, b, k).movedim(-2, -3)
        return grouped.reshape(*lead, b, g * k)


# ------------------------------------------------------------------- the one loop
def rollout(
    step: ParticlePropagation,
    functions: FunctionSample,
    start: Tensor,
    policy_or_actions: Tensor | Policy,
    horizon: int,
    particles: int,
    generator: torch.Generator | None = None,
    reward_fn: RewardFn | None = None,
    termination_fn: TerminationFn | None = None,
    action_dim: int | None = None,
) -> ImaginedTransitions:
    """Roll particles through drawn functions: the horizon loop of imagination and planning.

    Inputs are not validated here (see :func:`imagine`), except the user's functions at
    the first step (reward, termination, policy: called safely, shapes, finite values).

    Args:
        step: the particle propagation (its layout and step).
        functions: the posterior draws.
        start: ``(B, D)`` float start states.
        policy_or_actions: ``(B, H, A)`` float action sequences or a :data:`Policy`.
        horizon: steps ``H``.
        particles: particles per start state (the propagation's count).
        generator: source of randomness (noise, TS-1 assignments).
        reward_fn: batched ``(obs, action, next_obs)`` reward function.
        termination_fn: batched ``(obs, action, next_obs)`` termination function.
        action_dim: ``A``, to check a policy's output (required with a policy).

    Returns:
        The :class:`ImaginedTransitions`.
    """
    groups, k = step.layout(particles, functions.n)
    obs = step.start_states(start, groups, k)
    lead = obs.shape[:-1]
    actions_at: Callable[[int, Tensor], Tensor]
    if isinstance(policy_or_actions, Tensor):
        actions_at = _fixed_actions(step.spread_actions(policy_or_actions, groups, k))
    elif action_dim is None:
        raise ConfigError("rollout with a policy needs action_dim (the model's action size)")
    else:
        actions_at = _policy_actions(policy_or_actions, action_dim)
    states, actions, rewards, dones = [obs], [], [], []
    for t in range(horizon):
        a_t = actions_at(t, obs)
        nxt = step.step(functions, obs, a_t, generator)
        if reward_fn is not None:
            r = checked_reward(reward_fn, obs, a_t, nxt) if t == 0 else reward_fn(obs, a_t, nxt)
            rewards.append(r)
        if termination_fn is not None:
            done = (
                checked_termination(termination_fn, obs, a_t, nxt)
                if t == 0
                else termination_fn(obs, a_t, nxt)
            )
            dones.append(done)
        actions.append(a_t)
        states.append(nxt)
        obs = nxt
    n = lead.numel()
    all_obs = torch.stack(states).reshape(horizon + 1, n, -1)
    b = start.shape[0]
    return ImaginedTransitions(
        obs=all_obs[:-1],
        action=torch.stack(actions).reshape(horizon, n, -1),
        reward=torch.stack(rewards).reshape(horizon, n) if rewards else None,
        next_obs=all_obs[1:],
        done=(
            torch.stack(dones).reshape(horizon, n)
            if dones
            else torch.zeros(horizon, n, dtype=torch.bool, device=start.device)
        ),
        function_index=step.function_index(groups, b, k).to(start.device),
        start_index=torch.arange(b, device=start.device).repeat_interleave(k).repeat(groups),
        layout=(groups, b, k),
    )


def functions_per_start(model: DynamicsModel, requested: int = 0, fallback: int = 5) -> int:
    """How many posterior functions a learner rolls each start state through (TS-inf):
    ``requested``, else the model's finite support (``num_functions_hint``, e.g. an
    ensemble's members), else ``fallback``."""
    return requested or int(getattr(model, "num_functions_hint", 0) or 0) or fallback


def draw_functions(
    model: DynamicsModel,
    n: int,
    generator: torch.Generator | None = None,
    precision: str = "float32",
) -> FunctionSample:
    """``n`` posterior draws of ``model``, computing in ``precision`` (a :data:`PRECISIONS` key)."""
    fs = model.sample_functions(n, generator)
    if precision != "float32":
        fs = fs.with_compute_dtype(PRECISIONS[precision])
    return fs


def imagine(
    model: DynamicsModel,
    start_obs: Tensor,
    policy_or_actions: Tensor | Policy,
    horizon: int,
    reward_fn: RewardFn | None = None,
    termination_fn: TerminationFn | None = None,
    *,
    particles: int = 1,
    propagation: str = "ts_inf",
    generator: torch.Generator | None = None,
    functions: FunctionSample | None = None,
    precision: str = "float32",
) -> ImaginedTransitions:
    """Imagine ``particles`` trajectories from each start state through the model posterior.

    The functions are drawn as the planner draws them: ``G`` functions, the model's
    finite support (an ensemble's members) when it divides ``particles``, else one per
    particle; ``k = particles / G`` particles per function and start state (layout in
    the module docstring). ``expectation`` follows one deterministic particle per start
    state. Gradients flow (no ``inference_mode`` here): wrap the call for speed.

    Args:
        model: any :class:`~bayes_mbrl.models.base.DynamicsModel`.
        start_obs: ``(B, obs_dim)`` start states.
        policy_or_actions: ``(B, horizon, action_dim)`` action sequences, or a batched
            policy called on every step's observations ``(N, obs_dim) -> (N, action_dim)``
            (its actions are taken as they are: clip them in the policy if needed).
        horizon: steps ``H``.
        reward_fn: batched ``(obs, action, next_obs) -> reward`` (None: no rewards).
        termination_fn: batched ``(obs, action, next_obs) -> bool`` (None: never).
        particles: particles per start state ``P`` (ignored by ``expectation``).
        propagation: a particle propagation of
            :data:`~bayes_mbrl.planning.propagation.PROPAGATIONS` (``ts_inf``, ``ts_1``,
            ``expectation``).
        generator: source of randomness (function draws, noise, TS-1 assignments).
        functions: posterior draws to use instead of drawing (``functions.n`` must
            divide ``particles``).
        precision: compute precision of the model's matmuls (a :data:`PRECISIONS` key).

    Returns:
        :class:`ImaginedTransitions` with ``N = B * P`` particles (``B`` for ``expectation``).

    Raises:
        ConfigError: unknown or analytic propagation, bad horizon, particles or precision.
        DataError: wrong shapes or non-finite inputs; a reward, termination or policy
            function that fails, returns the wrong shape or non-finite values.

    Examples:
        >>> # out = imagine(model, obs, policy, horizon=5, reward_fn=task.reward_fn, particles=4)
        >>> # out.returns(0.99).reshape(...)   # (N,); out.function_index (N,)
    """
    # the strategies build on this module
    from bayes_mbrl.planning.propagation import PROPAGATIONS, make_propagation

    particle_step = make_propagation(propagation, horizon, particles, precision).particle_step()
    if particle_step is None:
        usable = [n for n in PROPAGATIONS if PROPAGATIONS[n]().particle_step() is not None]
        raise ConfigError(
            f"imagine needs a particle propagation ({', '.join(map(repr, usable))}); "
            f"{propagation!r} propagates an analytic belief: use "
            "RolloutEvaluator(...).beliefs for it"
        )
    start = _check_start(start_obs, model.obs_dim)
    if isinstance(policy_or_actions, Tensor):
        policy_or_actions = _check_actions(
            policy_or_actions, start.shape[0], horizon, model.action_dim
        )
    elif not callable(policy_or_actions):
        raise DataError(
            f"policy_or_actions must be a tensor (B, {horizon}, {model.action_dim}) or a "
            f"policy {POLICY_SIGNATURE}, got {type(policy_or_actions).__name__}"
        )
    count = particle_step.num_particles(particles)
    if functions is None:
        functions = draw_functions(
            model, particle_step.num_functions(model, count), generator, precision
        )
    groups, k = particle_step.layout(count, functions.n)
    if groups * k != count:
        raise DataError(
            f"{functions.n} function draws do not divide {count} particles; pass a "
            "number of particles that is a multiple of functions.n"
        )
    return rollout(
        particle_step,
        functions,
        start,
        policy_or_actions,
        horizon,
        count,
        generator,
        reward_fn,
        termination_fn,
        model.action_dim,
    )


def _check_start(start_obs: object, obs_dim: int) -> Tensor:
    """``(B, obs_dim)`` finite float32 start states."""
    if not isinstance(start_obs, Tensor):
        raise DataError(
            f"start_obs must be a torch.Tensor, got {type(start_obs).__name__}; pass "
            "torch.as_tensor(obs) (imagination runs on torch tensors)"
        )
    if start_obs.dim() != 2 or start_obs.shape[1] != obs_dim or start_obs.shape[0] < 1:
        raise DataError(
            f"start_obs must have shape (B, {obs_dim}) with B >= 1, got {tuple(start_obs.shape)}; "
            "a single state is start_obs[None]"
        )
    if not bool(torch.isfinite(start_obs).all()):
        raise DataError("start_obs contains NaN or inf; imagine from finite observations")
    return start_obs.float()


def _check_actions(actions: Tensor, batch: int, horizon: int, action_dim: int) -> Tensor:
    """``(B, horizon, action_dim)`` finite float32 action sequences."""
    if tuple(actions.shape) != (batch, horizon, action_dim):
        raise DataError(
            f"actions must have shape (B, horizon, action_dim) = ({batch}, {horizon}, "
            f"{action_dim}) for {batch} start states, got {tuple(actions.shape)}"
        )
    if not bool(torch.isfinite(actions).all()):
        raise DataError("actions contain NaN or inf; pass finite action sequences")
    return actions.float()
