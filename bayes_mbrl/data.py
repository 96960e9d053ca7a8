"""Transitions, the replay buffer, normalizers and input validation.

Everything a learner stores passes through :func:`validate_transitions` first, so a
wrong shape, a NaN or an action outside the action space raises a
:class:`~bayes_mbrl.errors.DataError` that names the field and the fix *before*
anything already stored is touched.

Shapes: ``N`` transitions, ``obs_dim`` state size, ``action_dim`` action size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bayes_mbrl.errors import DataError

ArrayLike = Tensor | np.ndarray | float | list[Any]

__all__ = [
    "Normalizer",
    "ReplayBuffer",
    "TransitionBatch",
    "one_hot_rows",
    "validate_transitions",
]


@dataclass(frozen=True)
class TransitionBatch:
    """A batch of transitions, batch-first.

    Attributes:
        obs: ``(N, obs_dim)`` observations before the step.
        action: ``(N, action_dim)`` actions taken.
        reward: ``(N,)`` rewards received.
        next_obs: ``(N, obs_dim)`` observations after the step.
        terminated: ``(N,)`` bool, the episode ended in a terminal state.
        truncated: ``(N,)`` bool, the episode was cut by a time limit.
    """

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminated: Tensor
    truncated: Tensor

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def index(self, idx: Tensor) -> TransitionBatch:
        """Select transitions by an index tensor of any shape ``S``; fields become ``(*S, ...)``."""
        return TransitionBatch(
            self.obs[idx],
            self.action[idx],
            self.reward[idx],
            self.next_obs[idx],
            self.terminated[idx],
            self.truncated[idx],
        )


def _as_tensor(name: str, value: ArrayLike, dtype: torch.dtype) -> Tensor:
    try:
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} could not be converted to a tensor ({exc}); pass numbers") from exc
    if t.dtype == torch.bool and dtype != torch.bool:
        raise DataError(f"{name} has dtype bool; pass numeric values")
    if dtype == torch.bool:
        if t.is_floating_point() or t.is_complex():
            bad = t[(t != 0) & (t != 1)]
            if bad.numel():
                raise DataError(f"{name} must be boolean (0/1), got {bad.flatten()[0].item()}")
        return t.to(torch.bool)
    if t.is_complex():
        raise DataError(f"{name} is complex; pass real numbers")
    return t.to(dtype)


def validate_transitions(
    obs: ArrayLike,
    action: ArrayLike,
    reward: ArrayLike,
    next_obs: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    *,
    obs_dim: int,
    action_dim: int,
    action_low: Tensor | None = None,
    action_high: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    discrete_actions: bool = False,
) -> TransitionBatch:
    """Check and convert one transition or a batch of them.

    A single transition may be given unbatched (``obs`` of shape ``(obs_dim,)``,
    scalar reward); it is returned as a batch of one.

    With ``discrete_actions`` the actions come from ``Discrete(action_dim)``: each may
    be given as an integer index (a scalar for one transition; ``(N,)`` or ``(N, 1)``
    for a batch) or as a one-hot vector of size ``action_dim``; they are stored as
    one-hot vectors (what the models take).

    Args:
        obs: ``(N, obs_dim)`` or ``(obs_dim,)``.
        action: ``(N, action_dim)`` or ``(action_dim,)``.
        reward: ``(N,)`` or scalar.
        next_obs: like ``obs``.
        terminated: ``(N,)`` or scalar, bool-like.
        truncated: ``(N,)`` or scalar, bool-like.
        obs_dim: expected observation size.
        action_dim: expected action size.
        action_low: ``(action_dim,)`` lower action bounds, or None for unbounded.
        action_high: ``(action_dim,)`` upper action bounds, or None.
        dtype: floating dtype of the returned tensors.
        discrete_actions: the actions are indices of ``Discrete(action_dim)`` or
            one-hot vectors (see above).

    Returns:
        A validated :class:`TransitionBatch` on the CPU.

    Raises:
        DataError: wrong shape, non-finite value, or action outside its bounds (for
            discrete actions: an index out of range or not an integer, a vector that is
            not one-hot).
    """
    o = _as_tensor("obs", obs, dtype)
    a = _as_tensor("action", action, dtype)
    if discrete_actions:
        a = _one_hot_actions(a, action_dim, single=o.dim() == 1)
    r = _as_tensor("reward", reward, dtype)
    no = _as_tensor("next_obs", next_obs, dtype)
    te = _as_tensor("terminated", terminated, torch.bool)
    tr = _as_tensor("truncated", truncated, torch.bool)
    for name, t in (("obs", o), ("next_obs", no)):
        if t.dim() == 0:
            raise DataError(
                f"{name} is a scalar; pass one observation of shape ({obs_dim},) or a batch "
                f"(N, {obs_dim})"
            )
        if t.dim() > 2:
            raise DataError(
                f"{name} has shape {tuple(t.shape)}, but state models take flat "
                f"(obs_dim,) observations (obs_dim={obs_dim}), batched as (N, {obs_dim}); for "
                "image observations use a pixel wrapper with a latent model, or flatten them "
                "(gymnasium.wrappers.FlattenObservation)"
            )
    single = o.dim() == 1
    given = {"obs": o, "action": a, "reward": r, "next_obs": no, "terminated": te, "truncated": tr}
    given_shapes = {name: tuple(t.shape) for name, t in given.items()}
    if single:
        o, a, no = o.unsqueeze(0), a.reshape(1, -1), no.unsqueeze(0)
        # a scalar each; anything else keeps a shape that fails the check below
        r, te, tr = (t.reshape(1) if t.numel() == 1 else t.unsqueeze(0) for t in (r, te, tr))
    n = o.shape[0]
    expected = {
        "obs": (o, (n, obs_dim)),
        "action": (a, (n, action_dim)),
        "reward": (r, (n,)),
        "next_obs": (no, (n, obs_dim)),
        "terminated": (te, (n,)),
        "truncated": (tr, (n,)),
    }
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            want = shape[1:] if single else shape
            raise DataError(
                f"{name} has shape {given_shapes[name]}, expected {want} "
                f"(obs_dim={obs_dim}, action_dim={action_dim}, "
                f"{'one transition' if single else f'{n} transitions'}); "
                "check that the environment matches the buffer"
            )
    for name, t in (("obs", o), ("action", a), ("reward", r), ("next_obs", no)):
        bad = ~torch.isfinite(t)
        if bad.any():
            row = int(bad.nonzero()[0, 0])
            raise DataError(
                f"{name} contains NaN or inf (transition {row} of {n}: {t[row].tolist()}); "
                "nothing was stored. Check the environment or the model that produced it"
            )
    if action_low is not None and action_high is not None:
        tol = 1e-5 * (1.0 + torch.maximum(action_low.abs(), action_high.abs()))
        outside = (a < action_low - tol) | (a > action_high + tol)
        if outside.any():
            row = int(outside.nonzero()[0, 0])
            raise DataError(
                f"action {a[row].tolist()} (transition {row}) is outside the action space "
                f"[{action_low.tolist()}, {action_high.tolist()}]; clip actions to the bounds"
            )
    return TransitionBatch(o, a, r, no, te, tr)


def one_hot_rows(x: Tensor) -> Tensor:
    """``(...)`` bool: which rows of ``x (..., n)`` are one-hot (all 0 or 1, one 1)."""
    return ((x == 0) | (x == 1)).all(-1) & (x.sum(-1) == 1)


def _one_hot_actions(a: Tensor, n: int, single: bool) -> Tensor:
    """Discrete actions (indices or one-hot rows) as one-hot rows; the checks of
    :func:`validate_transitions`."""
    is_index = (a.dim() == 0) if single else (a.dim() == 1 or (a.dim() == 2 and a.shape[1] == 1))
    if single and a.dim() == 1 and a.shape[0] == 1 and n > 1:
        is_index = True
    if is_index:
        idx = a.reshape(-1)
        bad = (idx != idx.round()) | ~torch.isfinite(idx)
        if bad.any():
            raise DataError(
                f"discrete action {idx[bad][0].item()} is not an integer; pass an index in "
                f"0..{n - 1} of Discrete({n}) or a one-hot vector of size {n}"
            )
        out = (idx < 0) | (idx >= n)
        if out.any():
            row = int(out.nonzero()[0, 0])
            raise DataError(
                f"discrete action {int(idx[row])} (transition {row}) is out of range for "
                f"Discrete({n}); use an index in 0..{n - 1}"
            )
        return torch.nn.functional.one_hot(idx.long(), n).to(a.dtype)
    rows = a.reshape(1, -1) if single else a
    if rows.dim() != 2 or rows.shape[1] != n:
        raise DataError(
            f"discrete action has shape {tuple(a.shape)}; pass an index of Discrete({n}) "
            f"(a scalar per transition) or a one-hot vector of size {n}"
        )
    ok = one_hot_rows(rows)
    if not bool(ok.all()):
        row = int((~ok).nonzero()[0, 0])
        raise DataError(
            f"discrete action {rows[row].tolist()} (transition {row}) is not one-hot; pass "
            f"an index of Discrete({n}) or a vector with a single 1"
        )
    return a


def _action_bounds(
    low: Tensor | np.ndarray | None, high: Tensor | np.ndarray | None, action_dim: int
) -> tuple[Tensor | None, Tensor | None]:
    """Check and convert action bounds: both or neither, ``(action_dim,)``, ``low <= high``."""
    if low is None and high is None:
        return None, None
    if low is None or high is None:
        raise DataError(
            "give both action_low and action_high (or neither, for no bound check); "
            f"got only {'action_high' if low is None else 'action_low'}"
        )
    lo = _as_tensor("action_low", low, torch.float32).reshape(-1)
    hi = _as_tensor("action_high", high, torch.float32).reshape(-1)
    if lo.shape != (action_dim,) or hi.shape != (action_dim,):
        raise DataError(
            f"action_low and action_high must have shape ({action_dim},) (action_dim), got "
            f"{tuple(torch.as_tensor(low).shape)} and {tuple(torch.as_tensor(high).shape)}; "
            "pass the action space's low and high"
        )
    if bool(torch.isnan(lo).any() | torch.isnan(hi).any()) or bool((lo > hi).any()):
        raise DataError(
            f"action bounds must satisfy action_low <= action_high without NaN, got "
            f"{lo.tolist()} and {hi.tolist()}"
        )
    return lo, hi


class ReplayBuffer:
    """Transitions in preallocated torch storage, with seeded sampling and splits.

    Args:
        obs_dim: observation size.
        action_dim: action size.
        capacity: maximum number of transitions; adding past it raises (the runner
            sizes it for the whole experiment, so nothing is silently dropped).
        action_low: ``(action_dim,)`` lower action bounds used for validation, or None.
        action_high: ``(action_dim,)`` upper action bounds, or None.
        discrete_actions: actions come from ``Discrete(action_dim)``: :meth:`add` takes
            an index or a one-hot vector and stores the one-hot vector.

    Examples:
        >>> buf = ReplayBuffer(obs_dim=3, action_dim=1, capacity=100)
        >>> buf.add([0.0, 1.0, 0.0], [0.5], -1.0, [0.1, 1.0, 0.0], False, False)
        >>> len(buf)
        1
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        capacity: int,
        action_low: Tensor | np.ndarray | None = None,
        action_high: Tensor | np.ndarray | None = None,
        discrete_actions: bool = False,
    ) -> None:
        if obs_dim < 1 or action_dim < 1 or capacity < 1:
            raise DataError(
                f"ReplayBuffer needs positive obs_dim, action_dim and capacity, "
                f"got {obs_dim}, {action_dim}, {capacity}"
            )
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.capacity = capacity
        self.action_low, self.action_high = _action_bounds(action_low, action_high, action_dim)
        self.discrete_actions = discrete_actions
        size = capacity * (2 * obs_dim + action_dim + 1) * 4 + 2 * capacity
        try:
            self._obs = torch.zeros(capacity, obs_dim)
            self._action = torch.zeros(capacity, action_dim)
            self._reward = torch.zeros(capacity)
            self._next_obs = torch.zeros(capacity, obs_dim)
            self._terminated = torch.zeros(capacity, dtype=torch.bool)
            self._truncated = torch.zeros(capacity, dtype=torch.bool)
        except (RuntimeError, MemoryError) as exc:  # torch's allocator failure
            raise DataError(
                f"ReplayBuffer capacity {capacity} is too large: its storage needs "
                f"{size / 2**30:.3g} GiB, which could not be allocated; lower "
                "experiment.episodes or env.episode_length (capacity = episodes x episode_length)"
            ) from exc
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(
        self,
        obs: ArrayLike,
        action: ArrayLike,
        reward: ArrayLike,
        next_obs: ArrayLike,
        terminated: ArrayLike,
        truncated: ArrayLike,
    ) -> None:
        """Validate and append one transition (unbatched) or a batch ``(N, ...)``.

        Raises:
            DataError: the input is invalid or the buffer would overflow; in both
                cases nothing is stored.
        """
        batch = validate_transitions(
            obs,
            action,
            reward,
            next_obs,
            terminated,
            truncated,
            obs_dim=self.obs_dim,
            action_dim=self.action_dim,
            action_low=self.action_low,
            action_high=self.action_high,
            discrete_actions=self.discrete_actions,
        )
        self.add_batch(batch)

    def add_batch(self, batch: TransitionBatch) -> None:
        """Append an already validated :class:`TransitionBatch`."""
        n = len(batch)
        if self._size + n > self.capacity:
            raise DataError(
                f"ReplayBuffer is full ({self._size}/{self.capacity}) and cannot take {n} more; "
                "create it with a larger capacity"
            )
        s = slice(self._size, self._size + n)
        self._obs[s] = batch.obs
        self._action[s] = batch.action
        self._reward[s] = batch.reward
        self._next_obs[s] = batch.next_obs
        self._terminated[s] = batch.terminated
        self._truncated[s] = batch.truncated
        self._size += n

    def all(self) -> TransitionBatch:
        """All stored transitions as views, ``(len(self), ...)``."""
        n = self._size
        return TransitionBatch(
            self._obs[:n],
            self._action[:n],
            self._reward[:n],
            self._next_obs[:n],
            self._terminated[:n],
            self._truncated[:n],
        )

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TransitionBatch:
        """Uniformly sample ``batch_size`` transitions with replacement."""
        if batch_size < 0:
            raise DataError(f"batch_size must be >= 0, got {batch_size}")
        if self._size == 0:
            raise DataError("cannot sample from an empty ReplayBuffer; collect transitions first")
        idx = torch.randint(self._size, (batch_size,), generator=generator)
        return self.all().index(idx)

    def split(
        self, val_fraction: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Random train/validation split of the stored transitions.

        Args:
            val_fraction: fraction in ``[0, 1)`` held out for validation.
            generator: source of randomness.

        Returns:
            ``(train_idx, val_idx)``: disjoint index tensors covering ``range(len(self))``.
            With fewer than 10 transitions or ``val_fraction == 0`` the validation set is empty.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        perm = torch.randperm(self._size, generator=generator)
        n_val = int(self._size * val_fraction) if self._size >= 10 else 0
        return perm[n_val:], perm[:n_val]

    @staticmethod
    def bootstrap_indices(
        num_members: int, idx: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Per-member bootstrap resamples of ``idx``.

        Args:
            num_members: number of resamples ``E``.
            idx: ``(N,)`` indices to resample from.
            generator: source of randomness.

        Returns:
            ``(E, N)`` indices drawn from ``idx`` uniformly with replacement.
        """
        pick = torch.randint(len(idx), (num_members, len(idx)), generator=generator)
        return idx[pick]

    def state_dict(self) -> dict[str, Any]:
        """Tensors and counters, loadable with ``torch.load(weights_only=True)``."""
        data = self.all()
        return {
            "obs": data.obs.clone(),
            "action": data.action.clone(),
            "reward": data.reward.clone(),
            "next_obs": data.next_obs.clone(),
            "terminated": data.terminated.clone(),
            "truncated": data.truncated.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the contents with a :meth:`state_dict` (validated first).

        Raises:
            DataError: the state is not a buffer state of these sizes (missing fields,
                wrong shapes, non-finite values, more transitions than the capacity);
                the buffer's contents are kept.
        """
        fields = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
        if not isinstance(state, dict):
            raise DataError(
                f"ReplayBuffer state must be a dict from ReplayBuffer.state_dict(), "
                f"got {type(state).__name__}"
            )
        missing = [k for k in fields if k not in state]
        if missing:
            raise DataError(
                f"ReplayBuffer state is missing {missing}; pass a dict from "
                "ReplayBuffer.state_dict()"
            )
        batch = validate_transitions(
            state["obs"],
            state["action"],
            state["reward"],
            state["next_obs"],
            state["terminated"],
            state["truncated"],
            obs_dim=self.obs_dim,
            action_dim=self.action_dim,
            discrete_actions=self.discrete_actions,
        )
        if len(batch) > self.capacity:
            raise DataError(
                f"the state holds {len(batch)} transitions but the ReplayBuffer's capacity is "
                f"{self.capacity}; load it into a buffer created with a larger capacity"
            )
        self._size = 0
        self.add_batch(batch)


class Normalizer(torch.nn.Module):
    """Per-dimension standardization ``(x - mean) / std`` fitted on data.

    Dimensions with (near-)zero spread keep ``std = 1`` so they pass unchanged.

    Args:
        dim: feature size.
        eps: standard deviations below this are treated as zero spread.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: Tensor) -> None:
        """Fit to ``(N, dim)`` data."""
        if x.dim() != 2 or x.shape[1] != self.mean.shape[0] or x.shape[0] == 0:
            raise DataError(
                f"Normalizer.fit expects a non-empty (N, {self.mean.shape[0]}) tensor, "
                f"got {tuple(x.shape)}"
            )
        x = x.to(self.mean)
        self.mean.copy_(x.mean(0))
        std = x.std(0, unbiased=False)
        self.std.copy_(torch.where(std < self.eps, torch.ones_like(std), std))

    def normalize(self, x: Tensor) -> Tensor:
        """``(..., dim) -> (..., dim)`` standardized."""
        return (x - self.mean) / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`."""
        return x * self.std + self.mean
