"""Partially observed and pixel observations of classic-control envs, for latent models.

Two observation wrappers hide the state of an env from the agent, for latent
state-space models that must infer it:

- :class:`PartialObservation` keeps some coordinates of a flat ``Box`` observation
  and adds Gaussian noise drawn from the env's own seeded ``np_random`` (a seeded
  reset reproduces it);
- :class:`PixelObservation` renders the env (``render_mode="rgb_array"``, headless),
  converts the frame to grayscale intensity in ``[0, 1]``, area-averages it down to
  ``size x size`` and returns the last ``frame_stack`` frames **flattened** (the
  replay buffer and transition log hold flat float32 vectors), most recent last;
  ``frame_shape = (frame_stack, size, size)`` undoes the flattening.

Both put the true state of the env (``env.unwrapped.state`` as a float64 array, for
``Pendulum-v1`` ``(theta, theta_dot)`` with ``theta`` not wrapped, ``0`` upright) in
``info["state"]`` on reset and on every step, for evaluation only: an agent must
not read it.

Two tasks are registered with gymnasium on import of :mod:`bayes_mbrl.envs`, both
with ``Pendulum-v1``'s dynamics, reward and start (``theta`` uniform in
``[-pi, pi]``, ``theta_dot`` uniform in ``[-1, 1]``) and a 200-step time limit:

- ``bayes_mbrl/PendulumPartial-v0``: observation ``[cos theta, sin theta]`` plus
  ``N(0, 0.05^2)`` noise; the angular velocity is not observed
  (``gymnasium.make`` kwargs ``indices``, ``noise_std``, ``g``);
- ``bayes_mbrl/PendulumPixels-v0``: a 32 x 32 frame (1024 values), the rod bright
  (1.0) on a black background (0.0) and the axle at the centre, ``theta = 0``
  pointing up and ``theta > 0`` counter-clockwise (``gymnasium.make`` kwargs
  ``size``, ``frame_stack``, ``show_torque``, ``g``). ``Pendulum-v1``'s renderer
  also draws a torque arrow sized by the last action over the axle; it is left out
  unless ``show_torque=True``, so that a frame shows the state only.

Cost of a pixel step, measured on this machine's CPU (2 cores, shared with other
jobs; pygame-ce 2.5, SDL dummy video driver; best of 5 x 200 steps): the renderer
draws a 500 x 500 RGB frame in 3.4 to 4 ms (it also reloads its arrow image from disk
on every frame), and the conversion to a 32 x 32 intensity frame takes 1.1 ms
(1.3 ms for 64 x 64; plain numpy sums, no BLAS call, whose threads stall when the
CPUs are busy), so a ``PendulumPixels-v0`` step costs 5 to 6 ms against 0.02 ms for
``Pendulum-v1``: about 1.2 s for a 200-step episode.

Examples:
    >>> import gymnasium
    >>> import bayes_mbrl.envs
    >>> env = gymnasium.make("bayes_mbrl/PendulumPixels-v0", frame_stack=2)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype, env.get_wrapper_attr("frame_shape"), info["state"].shape
    ((2048,), dtype('float32'), (2, 32, 32), (2,))
    >>> env.close()
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.pendulum import PendulumEnv
from numpy.typing import NDArray

from bayes_mbrl.errors import EnvError

__all__ = [
    "MAX_EPISODE_STEPS",
    "PENDULUM_PARTIAL_ID",
    "PENDULUM_PIXELS_ID",
    "PENDULUM_ROD_GAIN",
    "PIXEL_SIZE_RANGE",
    "PartialObservation",
    "PixelObservation",
    "make_pendulum_partial",
    "make_pendulum_pixels",
    "register_observation_envs",
]

PENDULUM_PARTIAL_ID = "bayes_mbrl/PendulumPartial-v0"
"""Gymnasium id of ``Pendulum-v1`` observed through noisy ``[cos theta, sin theta]``."""

PENDULUM_PIXELS_ID = "bayes_mbrl/PendulumPixels-v0"
"""Gymnasium id of ``Pendulum-v1`` observed through rendered frames."""

MAX_EPISODE_STEPS = 200
"""Time limit of both registered envs (``Pendulum-v1``'s)."""

PIXEL_SIZE_RANGE = (8, 128)
"""Smallest and largest frame side :class:`PixelObservation` accepts."""

_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""Luma weights (ITU-R BT.601) of R, G and B."""

_PENDULUM_ROD_RGB = (204, 77, 77)
"""Colour in which ``Pendulum-v1``'s renderer draws the rod (on white)."""

PENDULUM_ROD_GAIN = 255.0 / (255.0 - float(_GRAY_WEIGHTS @ np.array(_PENDULUM_ROD_RGB)))
"""Gain of the inverted intensity that maps ``Pendulum-v1``'s rod colour to 1.0 (about
1.82; the black axle, darker still, is clipped to 1.0 as well)."""


def _true_state(env: gymnasium.Env[Any, Any]) -> NDArray[np.float64] | None:
    """The true state of an env, ``env.unwrapped.state`` as a float64 array (a copy).

    Args:
        env: The env (wrapped or not).

    Returns:
        The state, or ``None`` when the unwrapped env has no ``state`` attribute.
    """
    state = getattr(env.unwrapped, "state", None)
    if state is None:
        return None
    return np.array(state, dtype=np.float64)


def _with_state(env: gymnasium.Env[Any, Any], info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with the true state of ``env`` under ``"state"`` (when it has one).

    Args:
        env: The wrapped env.
        info: The info dict the env returned.

    Returns:
        A shallow copy of ``info`` with ``"state"`` added.
    """
    info = dict(info)
    state = _true_state(env)
    if state is not None:
        info["state"] = state
    return info


def _is_int(value: object) -> bool:
    """Whether ``value`` is a Python or numpy integer (not a bool)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_real(value: object) -> bool:
    """Whether ``value`` is a real Python or numpy number (not a bool)."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _env_name(env: gymnasium.Env[Any, Any]) -> str:
    """The env's registered id, or its class name for an env built without ``make``."""
    spec = env.spec
    return spec.id if spec is not None else type(env.unwrapped).__name__


class PartialObservation(gymnasium.ObservationWrapper[NDArray[np.float32], Any, Any]):
    """Some coordinates of a flat ``Box`` observation, with Gaussian noise.

    The observation is ``obs[indices] + N(0, noise_std^2 I)`` as float32, the noise
    drawn from the env's own ``np_random``, so a reset with a seed reproduces the
    observations (and two seeds give different noise). ``info["state"]`` holds the
    true state (``env.unwrapped.state``, float64) on reset and on every step, for
    evaluation only.

    Args:
        env: An env with a 1-D ``Box`` observation space, e.g. ``Pendulum-v1``.
        indices: Coordinates of the observation to keep, in this order; the default
            ``(0, 1)`` keeps ``Pendulum-v1``'s ``[cos theta, sin theta]`` and drops
            its angular velocity.
        noise_std: Standard deviation of the noise added to each kept coordinate,
            ``>= 0`` (``0`` for none).

    Attributes:
        indices: The kept coordinates, a tuple of ints.
        noise_std: The noise standard deviation.
        observation_space: A float32 ``Box`` of shape ``(len(indices),)``, unbounded
            when ``noise_std > 0`` (Gaussian noise has no bound), else the kept
            coordinates' bounds.

    Raises:
        EnvError: If the env's observation space is not a 1-D ``Box``, ``indices`` is
            empty, holds a non-integer, an index outside ``[0, obs_dim)`` or one index
            twice, or ``noise_std`` is not a finite number ``>= 0``.

    Examples:
        >>> import gymnasium
        >>> env = PartialObservation(gymnasium.make("Pendulum-v1"), noise_std=0.0)
        >>> obs, info = env.reset(seed=0)
        >>> bool(abs(obs[0] - np.cos(info["state"][0])) < 1e-6), obs.shape
        (True, (2,))
    """

    def __init__(
        self,
        env: gymnasium.Env[Any, Any],
        indices: Sequence[int] = (0, 1),
        noise_std: float = 0.05,
    ) -> None:
        name = f"PartialObservation of {_env_name(env)}"
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise EnvError(
                f"{name}: needs a flat (1-D) Box observation space; got {space!r}. "
                "Flatten it first (gymnasium.wrappers.FlattenObservation)."
            )
        dim = int(space.shape[0])
        if isinstance(indices, str | bytes) or not isinstance(indices, Sequence | np.ndarray):
            raise EnvError(
                f"{name}: indices must be a sequence of ints in [0, {dim}), e.g. (0, 1); "
                f"got {indices!r}"
            )
        kept = list(indices)
        if not kept:
            raise EnvError(
                f"{name}: indices is empty; keep at least one of the {dim} coordinates, "
                "e.g. indices=(0, 1)"
            )
        for i in kept:
            if not _is_int(i):
                raise EnvError(f"{name}: indices must be ints; got {i!r} in {indices!r}")
            if not 0 <= int(i) < dim:
                raise EnvError(
                    f"{name}: index {int(i)} is out of range: the observation has {dim} "
                    f"coordinates, so indices must be in [0, {dim}); got {indices!r}"
                )
        if len(set(int(i) for i in kept)) != len(kept):
            raise EnvError(f"{name}: indices must not repeat a coordinate; got {indices!r}")
        if not _is_real(noise_std) or not math.isfinite(noise_std) or noise_std < 0:
            raise EnvError(
                f"{name}: noise_std must be a finite number >= 0 (0 for no noise); "
                f"got {noise_std!r}"
            )
        super().__init__(env)
        self.indices: tuple[int, ...] = tuple(int(i) for i in kept)
        self.noise_std = float(noise_std)
        self._index = np.array(self.indices, dtype=np.intp)
        if self.noise_std > 0:
            low = np.full(len(kept), -np.inf, dtype=np.float32)
            high = np.full(len(kept), np.inf, dtype=np.float32)
        else:
            low = space.low[self._index].astype(np.float32)
            high = space.high[self._index].astype(np.float32)
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)

    def observation(self, observation: Any) -> NDArray[np.float32]:
        """The kept coordinates of ``observation`` plus noise.

        Args:
            observation: An observation of the wrapped env, shape ``(obs_dim,)``.

        Returns:
            float32 array of shape ``(len(indices),)``.
        """
        kept = np.asarray(observation, dtype=np.float64)[self._index]
        if self.noise_std > 0:
            kept = kept + self.np_random.normal(0.0, self.noise_std, size=kept.shape)
        return kept.astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Reset the env; the info holds the true state under ``"state"``.

        Args:
            seed: Seed of the env's ``np_random`` (start state and noise), or ``None``.
            options: Passed to the env's reset.

        Returns:
            ``(observation, info)``.
        """
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs), _with_state(self.env, info)

    def step(
        self, action: Any
    ) -> tuple[NDArray[np.float32], SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env; the info holds the true state under ``"state"``.

        Args:
            action: An action of the wrapped env.

        Returns:
            ``(observation, reward, terminated, truncated, info)``.
        """
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(obs), reward, terminated, truncated, _with_state(self.env, info)


class _AreaPlan(NamedTuple):
    """How :func:`_area_mean` averages ``n_in`` pixels down to ``n_out`` along one axis.

    Output pixel ``j`` covers ``[j, j + 1) * n_in / n_out`` of the input (at least one
    input pixel wide, as ``n_out <= n_in``), so input pixel ``i`` lies in bin
    ``bin[i]`` with the fraction ``inside[i]`` of its width and, where it straddles an
    edge, in the next bin with the rest.
    """

    inside: NDArray[np.float32]
    """``(n_in,)`` fraction of each input pixel inside its first bin."""
    starts: NDArray[np.intp]
    """``(n_out,)`` first input pixel of each bin (for ``np.add.reduceat``)."""
    straddling: NDArray[np.intp]
    """Input pixels that reach into the next bin."""
    next_bin: NDArray[np.intp]
    """That next bin, per straddling pixel."""
    next_weight: NDArray[np.float32]
    """The fraction of the straddling pixel in the next bin."""
    scale: float
    """``n_out / n_in``: one over the bin width in input pixels."""


def _area_plan(n_in: int, n_out: int) -> _AreaPlan:
    """The plan of an exact area average of ``n_in`` pixels down to ``n_out <= n_in``.

    Args:
        n_in: Input length.
        n_out: Output length, ``1 <= n_out <= n_in``.

    Returns:
        The :class:`_AreaPlan`.
    """
    scale = n_out / n_in
    left = np.arange(n_in, dtype=np.float64) * scale  # pixel edges in output units
    first = np.minimum(np.floor(left).astype(np.intp), n_out - 1)
    inside = (np.minimum(left + scale, first + 1.0) - left) / scale
    straddling = np.flatnonzero((inside < 1.0 - 1e-9) & (first + 1 < n_out))
    return _AreaPlan(
        inside=inside.astype(np.float32),
        starts=np.searchsorted(first, np.arange(n_out)).astype(np.intp),
        straddling=straddling,
        next_bin=first[straddling] + 1,
        next_weight=(1.0 - inside[straddling]).astype(np.float32),
        scale=scale,
    )


def _area_mean(x: NDArray[np.float32], plan: _AreaPlan, axis: int) -> NDArray[np.float32]:
    """Exact area average of a 2-D array along ``axis`` (each output pixel the mean of
    the input over its interval, input pixels weighted by their overlap).

    Plain numpy sums (no BLAS call, whose threads stall when the CPUs are busy).

    Args:
        x: 2-D float32 array.
        plan: :func:`_area_plan` of ``x.shape[axis]`` to the output length.
        axis: 0 (rows) or 1 (columns).

    Returns:
        float32 array with ``x.shape[axis]`` reduced to the output length.
    """
    weights = plan.inside[:, None] if axis == 0 else plan.inside[None, :]
    out: NDArray[np.float32] = np.add.reduceat(x * weights, plan.starts, axis=axis)
    if axis == 0:
        out[plan.next_bin] += x[plan.straddling] * plan.next_weight[:, None]
    else:
        out[:, plan.next_bin] += x[:, plan.straddling] * plan.next_weight[None, :]
    out *= np.float32(plan.scale)
    return out


class PixelObservation(gymnasium.Wrapper[NDArray[np.float32], Any, Any, Any]):
    """Rendered grayscale frames of an env, downsampled, stacked and flattened.

    Each step renders the env (which must be built with ``render_mode="rgb_array"``;
    rendering is headless: ``SDL_VIDEODRIVER`` defaults to ``"dummy"``), converts the
    RGB frame to luma (ITU-R BT.601) scaled to ``[0, 1]``, inverts it when ``invert``
    (dark drawings on white become bright on black), multiplies by ``gain`` and clips
    to ``[0, 1]``, then area-averages it to ``size x size``. The observation is the
    last ``frame_stack`` frames, oldest first, flattened to
    ``(frame_stack * size * size,)`` float32 (``obs.reshape(frame_shape)`` gives
    ``(frame_stack, size, size)``). On reset the stack holds ``frame_stack`` copies of
    the first frame: after ``t`` steps it is ``[f(t-k+1), ..., f(t)]`` with
    ``f(i) = f(0)`` for ``i < 0`` (``k = frame_stack``). ``info["state"]`` holds the
    true state (``env.unwrapped.state``, float64) on reset and every step, for
    evaluation only. The wrapped env's own observation is dropped.

    Args:
        env: An env built with ``render_mode="rgb_array"`` whose ``render()`` returns
            an ``(H, W, 3)`` (or ``(H, W, 4)``) uint8 array, e.g. a classic-control env.
        size: Side of the frames in pixels, an int in :data:`PIXEL_SIZE_RANGE`
            (32 by default; 64 for more detail, at 4x the observation size).
        frame_stack: Number of frames in an observation, ``>= 1``.
        invert: Invert the intensity (``True``, the default, for the classic-control
            renderers, which draw on white).
        gain: Factor applied to the (inverted) intensity before clipping to
            ``[0, 1]``, ``> 0``; :data:`PENDULUM_ROD_GAIN` makes ``Pendulum-v1``'s rod
            1.0.

    Attributes:
        size: The frame side.
        frame_stack: The number of stacked frames.
        frame_shape: ``(frame_stack, size, size)``.
        observation_space: ``Box(0, 1, (frame_stack * size * size,), float32)``.

    Raises:
        EnvError: If ``size`` is not an int in :data:`PIXEL_SIZE_RANGE`,
            ``frame_stack`` is not an int ``>= 1``, ``gain`` is not a finite number
            ``> 0``, the env was not built with ``render_mode="rgb_array"``, or (on
            reset) its ``render()`` does not return an RGB image.

    Examples:
        >>> import gymnasium
        >>> env = PixelObservation(gymnasium.make("Pendulum-v1", render_mode="rgb_array"),
        ...                        size=16, frame_stack=3)
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape, env.frame_shape, float(obs.min()) >= 0.0, float(obs.max()) <= 1.0
        ((768,), (3, 16, 16), True, True)
        >>> env.close()
    """

    def __init__(
        self,
        env: gymnasium.Env[Any, Any],
        size: int = 32,
        frame_stack: int = 1,
        *,
        invert: bool = True,
        gain: float = 1.0,
    ) -> None:
        name = f"PixelObservation of {_env_name(env)}"
        lo, hi = PIXEL_SIZE_RANGE
        if not _is_int(size) or not lo <= size <= hi:
            raise EnvError(
                f"PixelObservation: size must be an int in [{lo}, {hi}] (the frame side in "
                f"pixels, e.g. 32 or 64); got {size!r}"
            )
        if not _is_int(frame_stack) or frame_stack < 1:
            raise EnvError(
                "PixelObservation: frame_stack must be an int >= 1 (frames per observation, "
                f"1 for the current frame only); got {frame_stack!r}"
            )
        if not _is_real(gain) or not math.isfinite(gain) or gain <= 0:
            raise EnvError(f"PixelObservation: gain must be a finite number > 0; got {gain!r}")
        render_mode = env.render_mode
        if render_mode != "rgb_array":
            modes = env.metadata.get("render_modes", [])
            fix = (
                "build it with render_mode='rgb_array', e.g. "
                "gymnasium.make(id, render_mode='rgb_array')"
                if "rgb_array" in modes
                else f"it cannot render to an array (render modes {modes}); "
                "use an env that supports render_mode='rgb_array'"
            )
            raise EnvError(
                f"{name}: pixel observations need an env that renders with "
                f"render_mode='rgb_array'; got render_mode={render_mode!r}: {fix}"
            )
        # pygame renders headless with SDL's dummy video driver (set before pygame's
        # display is first initialised, at the first render)
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        super().__init__(env)
        self.size = int(size)
        self.frame_stack = int(frame_stack)
        self.frame_shape: tuple[int, int, int] = (self.frame_stack, self.size, self.size)
        self.invert = bool(invert)
        self.gain = float(gain)
        self.observation_space = spaces.Box(
            low=0.0, high=1.0, shape=(self.frame_stack * self.size * self.size,), dtype=np.float32
        )
        self._frames = np.zeros(self.frame_shape, dtype=np.float32)
        self._plans: dict[tuple[int, int], tuple[_AreaPlan, _AreaPlan]] = {}

    def _frame(self) -> NDArray[np.float32]:
        """Render the env and convert the image to a ``(size, size)`` intensity frame.

        Returns:
            float32 array of shape ``(size, size)`` in ``[0, 1]``.

        Raises:
            EnvError: If ``render()`` does not return an ``(H, W, 3 or 4)`` image at
                least ``size`` pixels high and wide.
        """
        image = self.env.render()
        if (
            not isinstance(image, np.ndarray)
            or image.ndim != 3
            or image.shape[2] not in (3, 4)
            or min(image.shape[:2]) < 1
        ):
            got = (
                f"an array of shape {image.shape}"
                if isinstance(image, np.ndarray)
                else type(image).__name__
            )
            raise EnvError(
                f"PixelObservation of {_env_name(self.env)}: render() must return an "
                f"(H, W, 3) RGB image in render_mode='rgb_array'; got {got}"
            )
        height, width = int(image.shape[0]), int(image.shape[1])
        if min(height, width) < self.size:
            raise EnvError(
                f"PixelObservation of {_env_name(self.env)}: render() returned a "
                f"{height} x {width} image, smaller than size={self.size}; choose a size "
                f"<= {min(height, width)}"
            )
        # luma in [0, 1], inverted and scaled per pixel, then area-averaged
        intensity = image[..., :3] @ (_GRAY_WEIGHTS / 255.0)
        if self.invert:
            intensity = 1.0 - intensity
        if self.gain != 1.0:
            intensity *= self.gain
        np.clip(intensity, 0.0, 1.0, out=intensity)
        plans = self._plans.get((height, width))
        if plans is None:
            plans = (_area_plan(height, self.size), _area_plan(width, self.size))
            self._plans[(height, width)] = plans
        rows = _area_mean(intensity.astype(np.float32, copy=False), plans[0], axis=0)
        frame = _area_mean(rows, plans[1], axis=1)
        np.clip(frame, 0.0, 1.0, out=frame)  # round-off of the averaging
        return frame

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Reset the env and fill the stack with copies of the first frame.

        Args:
            seed: Seed of the env's ``np_random``, or ``None``.
            options: Passed to the env's reset.

        Returns:
            ``(observation, info)``; ``info["state"]`` is the true state.
        """
        _, info = self.env.reset(seed=seed, options=options)
        self._frames[:] = self._frame()
        return self._frames.reshape(-1).copy(), _with_state(self.env, info)

    def step(
        self, action: Any
    ) -> tuple[NDArray[np.float32], SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env, render, and push the new frame onto the stack (last).

        Args:
            action: An action of the wrapped env.

        Returns:
            ``(observation, reward, terminated, truncated, info)``; ``info["state"]``
            is the true state.
        """
        _, reward, terminated, truncated, info = self.env.step(action)
        frame = self._frame()
        self._frames[:-1] = self._frames[1:].copy()
        self._frames[-1] = frame
        return (
            self._frames.reshape(-1).copy(),
            reward,
            terminated,
            truncated,
            _with_state(self.env, info),
        )


class _PendulumWithoutTorqueArrow(PendulumEnv):
    """``Pendulum-v1`` whose renderer leaves out the torque arrow of the last action."""

    def render(self) -> Any:
        """Render as ``Pendulum-v1`` does, without the torque arrow over the axle."""
        last_u, self.last_u = self.last_u, None
        try:
            return super().render()
        finally:
            self.last_u = last_u


def make_pendulum_partial(
    render_mode: str | None = None,
    g: float = 10.0,
    indices: Sequence[int] = (0, 1),
    noise_std: float = 0.05,
) -> PartialObservation:
    """Entry point of ``bayes_mbrl/PendulumPartial-v0``: ``Pendulum-v1`` partially observed.

    Args:
        render_mode: As ``Pendulum-v1`` (for videos; not needed for the observations).
        g: Gravity, as ``Pendulum-v1``.
        indices: Coordinates of ``[cos theta, sin theta, theta_dot]`` to observe.
        noise_std: Standard deviation of the observation noise.

    Returns:
        The :class:`PartialObservation`-wrapped ``PendulumEnv`` (``gymnasium.make``
        adds the time limit).

    Raises:
        EnvError: As :class:`PartialObservation`.
    """
    return PartialObservation(PendulumEnv(render_mode=render_mode, g=g), indices, noise_std)


def make_pendulum_pixels(
    render_mode: str | None = None,
    g: float = 10.0,
    size: int = 32,
    frame_stack: int = 1,
    show_torque: bool = False,
) -> PixelObservation:
    """Entry point of ``bayes_mbrl/PendulumPixels-v0``: ``Pendulum-v1`` seen in frames.

    Args:
        render_mode: ``None`` or ``"rgb_array"`` (the env always renders to arrays;
            ``env.render()`` returns the full 500 x 500 RGB frame, e.g. for videos).
        g: Gravity, as ``Pendulum-v1``.
        size: Frame side in pixels (see :class:`PixelObservation`).
        frame_stack: Frames per observation.
        show_torque: Draw ``Pendulum-v1``'s torque arrow of the last action over the
            axle (left out by default: a frame then shows the state only).

    Returns:
        The :class:`PixelObservation`-wrapped ``PendulumEnv``, rod 1.0 on 0.0
        (``gain`` :data:`PENDULUM_ROD_GAIN`).

    Raises:
        EnvError: If ``render_mode`` is another mode, or as :class:`PixelObservation`.
    """
    if render_mode not in (None, "rgb_array"):
        raise EnvError(
            f"{PENDULUM_PIXELS_ID} renders its observations with render_mode='rgb_array'; "
            f"got render_mode={render_mode!r}. Leave it out (or pass 'rgb_array'); "
            "env.render() then returns the full-size RGB frame."
        )
    pendulum = PendulumEnv if show_torque else _PendulumWithoutTorqueArrow
    return PixelObservation(
        pendulum(render_mode="rgb_array", g=g),
        size=size,
        frame_stack=frame_stack,
        invert=True,
        gain=PENDULUM_ROD_GAIN,
    )


def register_observation_envs() -> None:
    """Register :data:`PENDULUM_PARTIAL_ID` and :data:`PENDULUM_PIXELS_ID` with gymnasium
    (each unless it is already registered)."""
    for env_id, entry_point in (
        (PENDULUM_PARTIAL_ID, "bayes_mbrl.envs.observations:make_pendulum_partial"),
        (PENDULUM_PIXELS_ID, "bayes_mbrl.envs.observations:make_pendulum_pixels"),
    ):
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id, entry_point=entry_point, max_episode_steps=MAX_EPISODE_STEPS
            )
