"""Exact inference in linear-Gaussian state-space models: Kalman filter and RTS smoother.

The reference that a latent state-space VAE's encoders are tested against: for a
linear-Gaussian system the filtering and smoothing posteriors and the marginal
likelihood are known in closed form, so an amortized ``q(z_t | ...)`` can be
compared with the exact answer.

The model (:class:`LinearGaussianSSM`)::

    z_1     ~ N(mu0, P0)
    z_{t+1} = A z_t + B a_t + w_t,    w_t ~ N(0, Q)
    o_t     = C z_t + d + v_t,        v_t ~ N(0, R)

Shapes: ``N`` sequences, ``T`` steps, ``dz`` latent, ``da`` action and ``do``
observation dimensions. The action ``a_t`` acts on the step ``t -> t+1``, so the
last action of a sequence is unused. One model serves the whole batch of sequences.

Numerics: everything is float64 (inputs of any floating dtype are converted), the
measurement update is in Joseph form, the smoother's covariance is written as a sum
of positive semi-definite terms, every covariance is symmetrized after each update,
and all linear systems are solved with Cholesky factors (no explicit inverses).
All operations are out-of-place, so log-likelihoods can be differentiated with
autograd with respect to the model's matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bayes_mbrl.errors import DataError

__all__ = [
    "KalmanResult",
    "LinearGaussianSSM",
    "SmootherResult",
    "kalman_filter",
    "rts_smoother",
]

DTYPE = torch.float64
#: relative tolerance of the symmetry check on Q, R and P0
_SYMMETRY_RTOL = 1e-8


def _sym(m: Tensor) -> Tensor:
    """Symmetrize a (batch of) square matrices."""
    return 0.5 * (m + m.transpose(-1, -2))


def _as_float64(name: str, value: object, device: torch.device | None = None) -> Tensor:
    """Convert ``value`` to a float64 tensor, raising :class:`DataError` if impossible."""
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{name} must be a tensor of numbers; got {type(value).__name__}") from exc
    if t.is_complex() or t.dtype == torch.bool:
        raise DataError(f"{name} must be a real tensor; got dtype {t.dtype}")
    return t.to(dtype=DTYPE, device=device)


@dataclass(frozen=True, eq=False)
class LinearGaussianSSM:
    """A linear-Gaussian state-space model.

    ``z_1 ~ N(mu0, P0)``; ``z_{t+1} = A z_t + B a_t + w``, ``w ~ N(0, Q)``;
    ``o_t = C z_t + d + v``, ``v ~ N(0, R)``.

    All fields are converted to float64 (on the device of ``A``) and validated on
    construction; ``Q``, ``R`` and ``P0`` are stored symmetrized. ``B`` may have zero
    columns (an uncontrolled system).

    Attributes:
        A: Transition matrix, ``(dz, dz)``.
        B: Control matrix, ``(dz, da)``.
        C: Observation matrix, ``(do, dz)``.
        d: Observation offset, ``(do,)``.
        Q: Process-noise covariance, ``(dz, dz)``, symmetric positive definite.
        R: Observation-noise covariance, ``(do, do)``, symmetric positive definite.
        mu0: Mean of the initial state, ``(dz,)``.
        P0: Covariance of the initial state, ``(dz, dz)``, symmetric positive definite.

    Raises:
        DataError: A field is not a real tensor, has the wrong shape, is not finite,
            or (``Q``, ``R``, ``P0``) is not symmetric positive definite. The message
            names the matrix and the expected shape.
    """

    A: Tensor
    B: Tensor
    C: Tensor
    d: Tensor
    Q: Tensor
    R: Tensor
    mu0: Tensor
    P0: Tensor

    def __post_init__(self) -> None:
        A = _as_float64("A", self.A)
        device = A.device
        if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
            raise DataError(
                f"A must be a square (dz, dz) matrix with dz >= 1; got shape {tuple(A.shape)}"
            )
        dz = A.shape[0]
        B = _as_float64("B", self.B, device)
        if B.ndim != 2 or B.shape[0] != dz:
            raise DataError(
                f"B must have shape (dz, da) = ({dz}, da) to match A; got {tuple(B.shape)}"
            )
        C = _as_float64("C", self.C, device)
        if C.ndim != 2 or C.shape[1] != dz or C.shape[0] == 0:
            raise DataError(
                f"C must have shape (do, dz) = (do, {dz}) with do >= 1 to match A; "
                f"got {tuple(C.shape)}"
            )
        do = C.shape[0]
        expected: dict[str, tuple[int, ...]] = {
            "d": (do,),
            "Q": (dz, dz),
            "R": (do, do),
            "mu0": (dz,),
            "P0": (dz, dz),
        }
        fields: dict[str, Tensor] = {"A": A, "B": B, "C": C}
        for name, shape in expected.items():
            t = _as_float64(name, getattr(self, name), device)
            if tuple(t.shape) != shape:
                raise DataError(f"{name} must have shape {shape}; got {tuple(t.shape)}")
            fields[name] = t
        for name, t in fields.items():
            if not bool(torch.isfinite(t).all()):
                raise DataError(f"{name} contains NaN or inf values")
        for name in ("Q", "R", "P0"):
            fields[name] = _check_spd(name, fields[name])
        for name, t in fields.items():
            object.__setattr__(self, name, t)

    @property
    def state_dim(self) -> int:
        """Latent dimension ``dz``."""
        return int(self.A.shape[0])

    @property
    def action_dim(self) -> int:
        """Action dimension ``da`` (0 for an uncontrolled system)."""
        return int(self.B.shape[1])

    @property
    def obs_dim(self) -> int:
        """Observation dimension ``do``."""
        return int(self.C.shape[0])

    @classmethod
    def position_velocity(
        cls,
        dt: float = 0.1,
        process_std: float = 0.1,
        obs_std: float = 0.1,
        *,
        position_process_std: float = 0.01,
        damping: float = 0.5,
        init_std: tuple[float, float] = (1.0, 1.0),
    ) -> LinearGaussianSSM:
        """A 2-D (position, velocity) latent with control on the velocity, observing the position.

        ``z = (x, v)``; ``x_{t+1} = x_t + dt v_t + w_x``,
        ``v_{t+1} = (1 - damping dt) v_t + dt a_t + w_v``; ``o_t = x_t + noise``. One
        observation carries no information about the velocity (``C = [1, 0]`` and the
        initial covariance is diagonal), so an encoder ``q(z_t | o_t)`` cannot recover
        it, while a filter, which sees ``o_{1:t}``, can.

        Defaults (``dt = 0.1``, ``process_std = 0.1``, ``obs_std = 0.1``,
        ``position_process_std = 0.01``, ``damping = 0.5``, ``init_std = (1, 1)``):
        ``A = [[1, 0.1], [0, 0.95]]`` (eigenvalues 1 and 0.95: the velocity decays, the
        position integrates it), ``B = [[0], [0.1]]``, ``C = [[1, 0]]``, ``d = 0``,
        ``Q = diag(1e-4, 1e-2)``, ``R = [[1e-2]]``, ``mu0 = 0``, ``P0 = I``. All
        covariances are diagonal, so they are well conditioned (``cond(Q) = 100``).

        Args:
            dt: Time step, > 0.
            process_std: Standard deviation of the per-step process noise on the velocity.
            obs_std: Standard deviation of the position observation noise.
            position_process_std: Standard deviation of the per-step process noise on the
                position (> 0 keeps ``Q`` positive definite).
            damping: Velocity damping rate, with ``0 <= damping * dt < 1`` so that the
                velocity's eigenvalue ``1 - damping * dt`` lies in ``(0, 1]``.
            init_std: Standard deviations of the initial position and velocity.

        Returns:
            The model, with ``dz = 2``, ``da = 1`` and ``do = 1``.

        Raises:
            DataError: A parameter is out of range.
        """
        if not (math.isfinite(dt) and dt > 0):
            raise DataError(f"dt must be a finite number > 0; got {dt}")
        stds = {
            "process_std": process_std,
            "obs_std": obs_std,
            "position_process_std": position_process_std,
        }
        if len(init_std) != 2:
            raise DataError(f"init_std must be (position_std, velocity_std); got {init_std}")
        stds["init_std[0]"], stds["init_std[1]"] = init_std
        for name, value in stds.items():
            if not (math.isfinite(value) and value > 0):
                raise DataError(f"{name} must be a finite number > 0; got {value}")
        if not (math.isfinite(damping) and 0 <= damping * dt < 1):
            raise DataError(f"damping must satisfy 0 <= damping * dt < 1; got damping={damping}")
        f = DTYPE
        return cls(
            A=torch.tensor([[1.0, dt], [0.0, 1.0 - damping * dt]], dtype=f),
            B=torch.tensor([[0.0], [dt]], dtype=f),
            C=torch.tensor([[1.0, 0.0]], dtype=f),
            d=torch.zeros(1, dtype=f),
            Q=torch.diag(torch.tensor([position_process_std**2, process_std**2], dtype=f)),
            R=torch.tensor([[obs_std**2]], dtype=f),
            mu0=torch.zeros(2, dtype=f),
            P0=torch.diag(torch.tensor([init_std[0] ** 2, init_std[1] ** 2], dtype=f)),
        )

    def simulate(
        self,
        num_sequences: int,
        length: int,
        actions: Tensor | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """Draw latent trajectories and their observations.

        Args:
            num_sequences: Number of sequences ``N`` (>= 1).
            length: Number of steps ``T`` (>= 1).
            actions: ``(N, T, da)`` actions, or None for zeros. ``a_t`` acts on the step
                ``t -> t+1``; the last action is unused.
            generator: Source of randomness; draws are made on its device and moved to
                the model's device.

        Returns:
            ``(states, observations)``: float64 tensors of shapes ``(N, T, dz)`` and
            ``(N, T, do)``.

        Raises:
            DataError: ``num_sequences`` or ``length`` is not a positive integer, or the
                actions have the wrong shape or are not finite.
        """
        for name, value in (("num_sequences", num_sequences), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"{name} must be an integer >= 1; got {value!r}")
        n, t_len = num_sequences, length
        acts = _check_actions(self, actions, n, t_len)
        dev = self.A.device
        g_dev = generator.device

        def noise(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=DTYPE, device=g_dev).to(dev)

        l_p0 = torch.linalg.cholesky(self.P0)
        l_q = torch.linalg.cholesky(self.Q)
        l_r = torch.linalg.cholesky(self.R)
        z = self.mu0 + noise(n, self.state_dim) @ l_p0.T
        states = [z]
        for t in range(t_len - 1):
            z = z @ self.A.T + acts[:, t] @ self.B.T + noise(n, self.state_dim) @ l_q.T
            states.append(z)
        zs = torch.stack(states, dim=1)
        obs = zs @ self.C.T + self.d + noise(n, t_len, self.obs_dim) @ l_r.T
        return zs, obs


@dataclass(frozen=True, eq=False)
class KalmanResult:
    """The Kalman filter's output.

    Attributes:
        filtered_means: ``E[z_t | o_{1:t}]``, ``(N, T, dz)``.
        filtered_covs: ``Cov[z_t | o_{1:t}]``, ``(N, T, dz, dz)``.
        predicted_means: ``E[z_t | o_{1:t-1}]`` (the prior ``mu0`` at ``t = 1``),
            ``(N, T, dz)``.
        predicted_covs: ``Cov[z_t | o_{1:t-1}]`` (``P0`` at ``t = 1``), ``(N, T, dz, dz)``.
        step_log_likelihoods: ``log p(o_t | o_{1:t-1})``, ``(N, T)``.
        log_likelihood: ``log p(o_{1:T}) = sum_t log p(o_t | o_{1:t-1})``, ``(N,)``.
    """

    filtered_means: Tensor
    filtered_covs: Tensor
    predicted_means: Tensor
    predicted_covs: Tensor
    step_log_likelihoods: Tensor
    log_likelihood: Tensor


@dataclass(frozen=True, eq=False)
class SmootherResult:
    """The Rauch-Tung-Striebel smoother's output.

    Attributes:
        smoothed_means: ``E[z_t | o_{1:T}]``, ``(N, T, dz)``.
        smoothed_covs: ``Cov[z_t | o_{1:T}]``, ``(N, T, dz, dz)``.
        cross_covs: ``Cov[z_t, z_{t+1} | o_{1:T}]`` for ``t = 1..T-1``,
            ``(N, T-1, dz, dz)`` (entry ``[i, j]`` is the covariance of ``z_t[i]`` and
            ``z_{t+1}[j]``).
        gains: The smoother gains ``G_t = P_{t|t} A^T P_{t+1|t}^{-1}``, ``(N, T-1, dz, dz)``.
        filtered: The forward pass (:class:`KalmanResult`), including the log-likelihood.
    """

    smoothed_means: Tensor
    smoothed_covs: Tensor
    cross_covs: Tensor
    gains: Tensor
    filtered: KalmanResult

    @property
    def log_likelihood(self) -> Tensor:
        """``log p(o_{1:T})``, ``(N,)`` (from the forward pass)."""
        return self.filtered.log_likelihood


def _check_spd(name: str, m: Tensor) -> Tensor:
    """Check that ``m`` is symmetric positive definite; return it symmetrized."""
    scale = max(1.0, float(m.abs().max())) if m.numel() else 1.0
    asym = float((m - m.T).abs().max()) if m.numel() else 0.0
    if asym > _SYMMETRY_RTOL * scale:
        raise DataError(
            f"{name} must be a symmetric covariance matrix; max |{name} - {name}^T| = {asym:.3g}"
        )
    m = _sym(m)
    _, info = torch.linalg.cholesky_ex(m)
    if int(info) != 0:
        eig_min = float(torch.linalg.eigvalsh(m).min())
        raise DataError(
            f"{name} must be positive definite (its Cholesky factorization failed; "
            f"smallest eigenvalue {eig_min:.3g}); add a small positive diagonal"
        )
    return m


def _check_observations(ssm: LinearGaussianSSM, observations: Tensor) -> Tensor:
    obs = _as_float64("observations", observations, ssm.A.device)
    if obs.ndim != 3 or obs.shape[2] != ssm.obs_dim or obs.shape[1] < 1:
        raise DataError(
            f"observations must have shape (N, T, do) = (N, T, {ssm.obs_dim}) with T >= 1; "
            f"got {tuple(obs.shape)}"
        )
    if not bool(torch.isfinite(obs).all()):
        raise DataError("observations contain NaN or inf values")
    return obs


def _check_actions(ssm: LinearGaussianSSM, actions: Tensor | None, n: int, t_len: int) -> Tensor:
    shape = (n, t_len, ssm.action_dim)
    if actions is None:
        return torch.zeros(shape, dtype=DTYPE, device=ssm.A.device)
    acts = _as_float64("actions", actions, ssm.A.device)
    if tuple(acts.shape) != shape:
        raise DataError(
            f"actions must have shape (N, T, da) = {shape} to match the observations and B "
            f"(the last action is unused but must be present); got {tuple(acts.shape)}"
        )
    if not bool(torch.isfinite(acts).all()):
        raise DataError("actions contain NaN or inf values")
    return acts


def kalman_filter(
    ssm: LinearGaussianSSM, observations: Tensor, actions: Tensor | None = None
) -> KalmanResult:
    """Filter a batch of observation sequences exactly.

    Args:
        ssm: The model.
        observations: ``(N, T, do)`` observations (any real dtype; converted to float64
            on the model's device).
        actions: ``(N, T, da)`` actions, or None for zeros; ``a_t`` acts on the step
            ``t -> t+1`` (the last action is unused).

    Returns:
        The filtered and one-step predicted moments and the log-likelihood
        (:class:`KalmanResult`), all float64.

    Raises:
        DataError: The observations or actions have the wrong shape or are not finite.
    """
    obs = _check_observations(ssm, observations)
    n, t_len, do = obs.shape
    acts = _check_actions(ssm, actions, n, t_len)
    A, B, C, d, Q, R = ssm.A, ssm.B, ssm.C, ssm.d, ssm.Q, ssm.R
    eye = torch.eye(ssm.state_dim, dtype=DTYPE, device=A.device)
    log_2pi = math.log(2.0 * math.pi)

    m = ssm.mu0.expand(n, -1)
    P = ssm.P0.expand(n, -1, -1)
    pred_m, pred_P, filt_m, filt_P, step_ll = [], [], [], [], []
    for t in range(t_len):
        pred_m.append(m)
        pred_P.append(P)
        # measurement update
        CP = C @ P  # (N, do, dz)
        S = _sym(CP @ C.T + R)
        L = torch.linalg.cholesky(S)
        innov = obs[:, t] - (m @ C.T + d)  # (N, do)
        K = torch.cholesky_solve(CP, L).transpose(-1, -2)  # P C^T S^{-1}, (N, dz, do)
        m = m + (K @ innov.unsqueeze(-1)).squeeze(-1)
        IKC = eye - K @ C
        P = _sym(IKC @ P @ IKC.transpose(-1, -2) + K @ R @ K.transpose(-1, -2))
        filt_m.append(m)
        filt_P.append(P)
        white = torch.linalg.solve_triangular(L, innov.unsqueeze(-1), upper=False).squeeze(-1)
        log_det = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        step_ll.append(-0.5 * (do * log_2pi + log_det + (white**2).sum(-1)))
        # time update
        if t + 1 < t_len:
            m = m @ A.T + acts[:, t] @ B.T
            P = _sym(A @ P @ A.T + Q)
    steps = torch.stack(step_ll, dim=1)
    return KalmanResult(
        filtered_means=torch.stack(filt_m, dim=1),
        filtered_covs=torch.stack(filt_P, dim=1),
        predicted_means=torch.stack(pred_m, dim=1),
        predicted_covs=torch.stack(pred_P, dim=1),
        step_log_likelihoods=steps,
        log_likelihood=steps.sum(dim=1),
    )


def rts_smoother(
    ssm: LinearGaussianSSM, observations: Tensor, actions: Tensor | None = None
) -> SmootherResult:
    """Smooth a batch of observation sequences exactly (Rauch-Tung-Striebel).

    The backward pass uses ``G_t = P_{t|t} A^T P_{t+1|t}^{-1}`` and the covariance
    ``P_{t|T} = (I - G A) P_{t|t} (I - G A)^T + G (Q + P_{t+1|T}) G^T``, which is
    algebraically ``P_{t|t} + G (P_{t+1|T} - P_{t+1|t}) G^T`` but a sum of positive
    semi-definite terms. The lag-one cross-covariance is
    ``Cov(z_t, z_{t+1} | o_{1:T}) = G_t P_{t+1|T}``.

    Args:
        ssm: The model.
        observations: ``(N, T, do)`` observations.
        actions: ``(N, T, da)`` actions, or None for zeros; ``a_t`` acts on the step
            ``t -> t+1`` (the last action is unused).

    Returns:
        The smoothed moments, lag-one cross-covariances, smoother gains and the forward
        pass (:class:`SmootherResult`), all float64.

    Raises:
        DataError: The observations or actions have the wrong shape or are not finite.
    """
    filt = kalman_filter(ssm, observations, actions)
    A, Q = ssm.A, ssm.Q
    eye = torch.eye(ssm.state_dim, dtype=DTYPE, device=A.device)
    t_len = filt.filtered_means.shape[1]

    m_s = filt.filtered_means[:, -1]
    P_s = filt.filtered_covs[:, -1]
    means, covs, cross, gains = [m_s], [P_s], [], []
    for t in range(t_len - 2, -1, -1):
        P_f = filt.filtered_covs[:, t]
        L = torch.linalg.cholesky(filt.predicted_covs[:, t + 1])
        G = torch.cholesky_solve(A @ P_f, L).transpose(-1, -2)  # P_f A^T P_pred^{-1}
        cross.append(G @ P_s)
        m_s = filt.filtered_means[:, t] + (
            G @ (m_s - filt.predicted_means[:, t + 1]).unsqueeze(-1)
        ).squeeze(-1)
        IGA = eye - G @ A
        P_s = _sym(IGA @ P_f @ IGA.transpose(-1, -2) + G @ (Q + P_s) @ G.transpose(-1, -2))
        means.append(m_s)
        covs.append(P_s)
        gains.append(G)
    n, dz = filt.filtered_means.shape[0], ssm.state_dim
    empty = filt.filtered_covs.new_zeros(n, 0, dz, dz)
    return SmootherResult(
        smoothed_means=torch.stack(means[::-1], dim=1),
        smoothed_covs=torch.stack(covs[::-1], dim=1),
        cross_covs=torch.stack(cross[::-1], dim=1) if cross else empty,
        gains=torch.stack(gains[::-1], dim=1) if gains else empty,
        filtered=filt,
    )
