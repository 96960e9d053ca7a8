r"""Continuous cart-pole swing-up with PILCO's constants (``bayes_mbrl/CartPoleSwingUp-v0``).

The task follows Deisenroth & Rasmussen (2011), "PILCO: A Model-Based and
Data-Efficient Approach to Policy Search": a cart of mass ``M = 0.5`` kg on an
unbounded track carries a uniform rod of mass ``m = 0.5`` kg and length
``l = 0.6`` m hinged at one end. The cart feels viscous friction ``-b * x_dot``
with ``b = 0.1`` N s/m; gravity is ``g = 9.82`` m/s^2.

State and observation
    The state is ``(x, x_dot, theta, theta_dot)``: cart position (m), cart
    velocity (m/s), pole angle (rad; ``theta = 0`` hanging down, ``theta = pi``
    upright; not wrapped) and angular velocity (rad/s). The observation is
    ``[x, x_dot, cos(theta), sin(theta), theta_dot]`` (float32, shape ``(5,)``).

Action
    ``a`` in ``[-1, 1]`` (shape ``(1,)``; clipped), applied as the horizontal
    force ``F = 10 * a`` N on the cart, held constant over the control interval
    ``dt = 0.1`` s (zero-order hold).

Equations of motion
    With the pole's centre of mass at ``(x + l/2 sin theta, -l/2 cos theta)``
    and its moment of inertia about the centre ``m l^2 / 12``, the Lagrangian
    ``T - V`` with

    .. math::

        T = \tfrac12 (M+m)\dot x^2 + \tfrac12 m l \cos\theta\,\dot x\dot\theta
            + \tfrac16 m l^2 \dot\theta^2, \qquad
        V = -\tfrac12 m g l \cos\theta

    and generalised force ``F - b x_dot`` on ``x`` gives, with
    ``D = 4 (M + m) - 3 m cos^2(theta)``,

    .. math::

        \ddot x = \frac{2 m l \dot\theta^2 \sin\theta
                        + 3 m g \sin\theta\cos\theta + 4 (F - b\dot x)}{D}

        \ddot\theta = -\frac{3 m l \dot\theta^2 \sin\theta\cos\theta
                             + 6 (M+m) g \sin\theta + 6 (F - b\dot x)\cos\theta}{l D}
                    = -\frac{3 (g \sin\theta + \ddot x \cos\theta)}{2 l}

    (PILCO's ``cartPole/dynamics.m``, with ``l = 0.6`` m as in the paper). Each
    control interval is integrated in float64 with ``substeps`` (default 20, i.e.
    5 ms) classical Runge-Kutta (RK4) steps. Without friction and force the
    energy ``T + V`` and the horizontal momentum
    ``(M + m) x_dot + m l/2 cos(theta) theta_dot`` are conserved (to ~1e-7 J
    over a few seconds at the default step).

Reward
    PILCO's saturating reward ``exp(-d^2 / (2 * 0.25^2))`` in ``[0, 1]``, where
    ``d`` is the distance between the pole tip ``(x + l sin theta, -l cos theta)``
    and the upright tip ``(0, l)`` after the step. The torch version used by
    planners is :func:`bayes_mbrl.envs.rewards.cartpole_swingup_reward`.

Episodes
    Start hanging down, ``(x, x_dot, theta, theta_dot) ~ N(0, 0.1^2 I)`` drawn
    from the env's ``np_random``. The track is unbounded, so the task never
    terminates; ``gymnasium.make`` truncates it after 40 steps (4 s).
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import NDArray

from bayes_mbrl.errors import EnvError

__all__ = [
    "ENV_ID",
    "MAX_EPISODE_STEPS",
    "CartPoleSwingUpEnv",
    "cartpole_swingup_step",
    "register_cartpole_swingup",
]

ENV_ID = "bayes_mbrl/CartPoleSwingUp-v0"
"""Gymnasium id under which the env is registered."""

MAX_EPISODE_STEPS = 40
"""Time limit of the registered env (4 s at ``dt = 0.1``)."""

FloatArray = NDArray[np.float64]


class CartPoleSwingUpEnv(gymnasium.Env[NDArray[np.float32], NDArray[np.float32]]):
    """Continuous cart-pole swing-up (see the module docstring for the model).

    Args:
        render_mode: ``None``, ``"rgb_array"`` (returns ``(400, 600, 3)`` uint8
            frames) or ``"human"`` (pygame window).
        cart_mass: Cart mass ``M`` (kg).
        pole_mass: Pole mass ``m`` (kg).
        pole_length: Pole length ``l`` (m); the pole is a uniform rod hinged at one end.
        friction: Viscous friction coefficient ``b`` (N s/m) of the cart.
        gravity: Gravitational acceleration ``g`` (m/s^2).
        max_force: Force (N) applied at action ``1``.
        dt: Control interval (s).
        substeps: RK4 steps per control interval.
        init_std: Standard deviation of the Gaussian noise on the initial state.
        reward_width: Width (m) of the saturating reward.

    Raises:
        EnvError: If a constant is out of range or ``render_mode`` is unknown.

    Attributes:
        state: Current state ``(x, x_dot, theta, theta_dot)``, float64, shape ``(4,)``.

    ``reset(options={"state": [x, x_dot, theta, theta_dot]})`` starts from the
    given state exactly instead of a random one.
    """

    # gymnasium.Env declares ``metadata`` as a plain attribute, so no ClassVar here.
    metadata: dict[str, Any] = {"render_modes": ["human", "rgb_array"], "render_fps": 10}  # noqa: RUF012

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        cart_mass: float = 0.5,
        pole_mass: float = 0.5,
        pole_length: float = 0.6,
        friction: float = 0.1,
        gravity: float = 9.82,
        max_force: float = 10.0,
        dt: float = 0.1,
        substeps: int = 20,
        init_std: float = 0.1,
        reward_width: float = 0.25,
    ) -> None:
        positive = {
            "cart_mass": cart_mass,
            "pole_mass": pole_mass,
            "pole_length": pole_length,
            "max_force": max_force,
            "dt": dt,
            "reward_width": reward_width,
        }
        non_negative = {"friction": friction, "gravity": gravity, "init_std": init_std}
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise EnvError(f"CartPoleSwingUpEnv: {name} must be > 0; got {value!r}")
        for name, value in non_negative.items():
            if not (math.isfinite(value) and value >= 0):
                raise EnvError(f"CartPoleSwingUpEnv: {name} must be >= 0; got {value!r}")
        if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
            raise EnvError(f"CartPoleSwingUpEnv: substeps must be an int >= 1; got {substeps!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvError(
                f"CartPoleSwingUpEnv: unknown render_mode {render_mode!r}; "
                f"use one of {self.metadata['render_modes']} or None"
            )

        self.cart_mass = float(cart_mass)
        self.pole_mass = float(pole_mass)
        self.pole_length = float(pole_length)
        self.friction = float(friction)
        self.gravity = float(gravity)
        self.max_force = float(max_force)
        self.dt = float(dt)
        self.substeps = substeps
        self.init_std = float(init_std)
        self.reward_width = float(reward_width)
        self.render_mode = render_mode

        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        high = np.array([np.inf, np.inf, 1.0, 1.0, np.inf], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)

        self.state: FloatArray = np.array([0.0, 0.0, 0.0, 0.0])
        self._last_force = 0.0
        self._screen: Any = None
        self._clock: Any = None

    # ------------------------------------------------------------------ physics
    def derivatives(self, state: FloatArray, force: float) -> FloatArray:
        """Time derivative of the state under a constant force.

        Args:
            state: ``(x, x_dot, theta, theta_dot)``, shape ``(4,)``.
            force: Horizontal force on the cart (N).

        Returns:
            ``(x_dot, x_ddot, theta_dot, theta_ddot)``, shape ``(4,)``.
        """
        _, x_dot, theta, theta_dot = state
        big_m, m, length, g = self.cart_mass, self.pole_mass, self.pole_length, self.gravity
        s, c = math.sin(theta), math.cos(theta)
        net = force - self.friction * x_dot
        denom = 4.0 * (big_m + m) - 3.0 * m * c * c
        x_ddot = (2.0 * m * length * theta_dot**2 * s + 3.0 * m * g * s * c + 4.0 * net) / denom
        theta_ddot = -3.0 * (g * s + x_ddot * c) / (2.0 * length)
        return np.array([x_dot, x_ddot, theta_dot, theta_ddot])

    def energy(self, state: FloatArray | None = None) -> float:
        """Mechanical energy ``T + V`` (J) of a state (zero potential at the pivot).

        Args:
            state: ``(x, x_dot, theta, theta_dot)``, shape ``(4,)``; the current
                state when ``None``.

        Returns:
            The kinetic plus potential energy.
        """
        _, x_dot, theta, theta_dot = self.state if state is None else state
        big_m, m, length = self.cart_mass, self.pole_mass, self.pole_length
        c = math.cos(theta)
        kinetic = (
            0.5 * (big_m + m) * x_dot**2
            + 0.5 * m * length * c * x_dot * theta_dot
            + m * length * length * theta_dot**2 / 6.0
        )
        return float(kinetic - 0.5 * m * self.gravity * length * c)

    def _integrate(self, state: FloatArray, force: float) -> FloatArray:
        """Integrate one control interval with RK4 substeps (zero-order hold).

        Args:
            state: Start state, shape ``(4,)``.
            force: Force held over the interval (N).

        Returns:
            State after ``dt`` seconds, shape ``(4,)``.
        """
        h = self.dt / self.substeps
        y = state.astype(np.float64, copy=True)
        for _ in range(self.substeps):
            k1 = self.derivatives(y, force)
            k2 = self.derivatives(y + 0.5 * h * k1, force)
            k3 = self.derivatives(y + 0.5 * h * k2, force)
            k4 = self.derivatives(y + h * k3, force)
            y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return y

    def _reward(self, state: FloatArray) -> float:
        """PILCO's saturating reward of a state.

        Args:
            state: ``(x, x_dot, theta, theta_dot)``, shape ``(4,)``.

        Returns:
            ``exp(-d^2 / (2 w^2))`` in ``[0, 1]``.
        """
        x, _, theta, _ = state
        length = self.pole_length
        dx = x + length * math.sin(theta)
        dy = length * (1.0 + math.cos(theta))
        return math.exp(-(dx * dx + dy * dy) / (2.0 * self.reward_width**2))

    def _obs(self) -> NDArray[np.float32]:
        """Observation of the current state.

        Returns:
            ``[x, x_dot, cos theta, sin theta, theta_dot]``, float32, shape ``(5,)``.
        """
        x, x_dot, theta, theta_dot = self.state
        return np.array([x, x_dot, math.cos(theta), math.sin(theta), theta_dot], dtype=np.float32)

    # ---------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Start an episode hanging down with Gaussian noise (or at ``options["state"]``).

        Args:
            seed: Seed for ``np_random``.
            options: Optional ``{"state": (x, x_dot, theta, theta_dot)}``.

        Returns:
            The observation, shape ``(5,)``, and an empty info dict.

        Raises:
            EnvError: If ``options["state"]`` is not four finite numbers.
        """
        super().reset(seed=seed)
        if options is not None and "state" in options:
            state = np.asarray(options["state"], dtype=np.float64)
            if state.shape != (4,) or not np.all(np.isfinite(state)):
                raise EnvError(
                    "reset(options={'state': ...}) needs four finite numbers "
                    f"(x, x_dot, theta, theta_dot); got {options['state']!r}"
                )
            self.state = state.copy()
        else:
            self.state = self.np_random.normal(0.0, self.init_std, size=4).astype(np.float64)
        self._last_force = 0.0
        if self.render_mode == "human":
            self.render()
        return self._obs(), {}

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], SupportsFloat, bool, bool, dict[str, Any]]:
        """Apply ``max_force * clip(action, -1, 1)`` for ``dt`` seconds.

        Args:
            action: Shape ``(1,)``.

        Returns:
            ``(obs, reward, terminated, truncated, info)`` with ``obs`` of shape
            ``(5,)``, ``reward`` in ``[0, 1]`` and ``terminated = truncated = False``
            (the registered env is truncated by gymnasium's ``TimeLimit``).

        Raises:
            EnvError: If the action is not a single finite number.
        """
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (1,) or not np.isfinite(a[0]):
            raise EnvError(f"CartPoleSwingUpEnv.step needs one finite action; got {action!r}")
        force = self.max_force * float(np.clip(a[0], -1.0, 1.0))
        self._last_force = force
        self.state = self._integrate(self.state, force)
        reward = self._reward(self.state)
        if self.render_mode == "human":
            self.render()
        return self._obs(), reward, False, False, {}

    # ---------------------------------------------------------------- render
    def render(self) -> NDArray[np.uint8] | None:
        """Draw the cart-pole with pygame.

        Returns:
            A ``(400, 600, 3)`` uint8 frame in ``"rgb_array"`` mode, else ``None``.

        Raises:
            EnvError: If pygame is missing.
        """
        if self.render_mode is None:
            gymnasium.logger.warn(
                "render() called without a render_mode; e.g. "
                f'gymnasium.make("{ENV_ID}", render_mode="rgb_array")'
            )
            return None
        try:
            import pygame
        except ImportError as exc:  # pragma: no cover - pygame ships with classic-control
            raise EnvError(
                'rendering needs pygame: pip install "gymnasium[classic-control]"'
            ) from exc

        width, height = 600, 400
        if self._screen is None:
            if self.render_mode == "human":
                pygame.display.init()
                self._screen = pygame.display.set_mode((width, height))
            else:
                self._screen = pygame.Surface((width, height))
        if self._clock is None:
            self._clock = pygame.time.Clock()

        x, _, theta, _ = self.state
        scale = width / 6.0  # 6 m of track across the window
        track_y = height * 0.55
        # Keep the cart in view on the unbounded track (wrap the drawing only).
        cart_x = ((x + 3.0) % 6.0 - 3.0) * scale + width / 2.0
        tip_x = cart_x + self.pole_length * math.sin(theta) * scale
        tip_y = track_y + self.pole_length * math.cos(theta) * scale  # screen y points down

        surf = pygame.Surface((width, height))
        surf.fill((255, 255, 255))
        pygame.draw.line(surf, (0, 0, 0), (0, track_y), (width, track_y), 1)
        goal = (width / 2.0, track_y - self.pole_length * scale)
        pygame.draw.circle(surf, (200, 200, 200), goal, 6)
        cart = pygame.Rect(0, 0, 60, 30)
        cart.center = (int(cart_x), int(track_y))
        pygame.draw.rect(surf, (50, 50, 50), cart)
        pygame.draw.line(surf, (202, 152, 101), (cart_x, track_y), (tip_x, tip_y), 8)
        pygame.draw.circle(surf, (129, 132, 203), (int(cart_x), int(track_y)), 5)

        if self.render_mode == "human":
            self._screen.blit(surf, (0, 0))
            pygame.event.pump()
            self._clock.tick(self.metadata["render_fps"])
            pygame.display.flip()
            return None
        frame = pygame.surfarray.pixels3d(surf)
        return np.transpose(np.array(frame, dtype=np.uint8), (1, 0, 2))

    def close(self) -> None:
        """Close the pygame window if one was opened."""
        if self._screen is not None:
            import pygame

            if self.render_mode == "human":
                pygame.display.quit()
            self._screen = None
            self._clock = None


def cartpole_swingup_step(
    state: torch.Tensor,
    action: torch.Tensor,
    *,
    cart_mass: float = 0.5,
    pole_mass: float = 0.5,
    pole_length: float = 0.6,
    friction: float = 0.1,
    gravity: float = 9.82,
    max_force: float = 10.0,
    dt: float = 0.1,
    substeps: int = 20,
) -> torch.Tensor:
    """One control interval of :class:`CartPoleSwingUpEnv` in torch, batched and
    differentiable (for trajectory optimization with the true dynamics).

    The same equations and RK4 substeps as the env's ``step`` (the action is clipped to
    ``[-1, 1]`` and scaled by ``max_force``); computes in the dtype of ``state``.

    Args:
        state: ``(..., 4)`` states ``(x, x_dot, theta, theta_dot)``.
        action: ``(..., 1)`` actions (broadcast against ``state``'s batch).

    Returns:
        ``(..., 4)`` the states ``dt`` seconds later.

    The keyword arguments from ``cart_mass`` to ``substeps`` are the env's constants
    (defaults: the env's).
    """
    big_m, m, length, g = cart_mass, pole_mass, pole_length, gravity
    force = max_force * action[..., 0].to(state.dtype).clamp(-1.0, 1.0)

    def derivatives(y: torch.Tensor) -> torch.Tensor:
        x_dot, theta, theta_dot = y[..., 1], y[..., 2], y[..., 3]
        s, c = torch.sin(theta), torch.cos(theta)
        net = force - friction * x_dot
        denom = 4.0 * (big_m + m) - 3.0 * m * c * c
        x_ddot = (2.0 * m * length * theta_dot**2 * s + 3.0 * m * g * s * c + 4.0 * net) / denom
        theta_ddot = -3.0 * (g * s + x_ddot * c) / (2.0 * length)
        return torch.stack([x_dot, x_ddot, theta_dot, theta_ddot], -1)

    h = dt / substeps
    y = state
    for _ in range(substeps):
        k1 = derivatives(y)
        k2 = derivatives(y + 0.5 * h * k1)
        k3 = derivatives(y + 0.5 * h * k2)
        k4 = derivatives(y + h * k3)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return y


def register_cartpole_swingup() -> None:
    """Register :data:`ENV_ID` with gymnasium unless it is already registered."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID,
            entry_point="bayes_mbrl.envs.cartpole_swingup:CartPoleSwingUpEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
        )
