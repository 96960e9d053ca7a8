"""``check_model``: does a dynamics model honour the protocol? (like gymnasium's ``check_env``)

Run it on any model you write before planning with it: it checks shapes, dtypes,
finiteness, the law-of-total-variance split and seeded determinism, and raises a
:class:`~bayes_mbrl.errors.ModelError` that names the method and what was wrong.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from bayes_mbrl.errors import ModelError
from bayes_mbrl.models.base import DynamicsModel, FunctionSample, Predictive

__all__ = ["check_model"]


def _fail(where: str, problem: str) -> ModelError:
    return ModelError(f"check_model: {where} {problem}")


def _expect_shape(where: str, t: object, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(t, Tensor):
        raise _fail(where, f"returned {type(t).__name__}, expected a torch.Tensor of shape {shape}")
    if tuple(t.shape) != shape:
        raise _fail(where, f"returned shape {tuple(t.shape)}, expected {shape}")
    if not t.is_floating_point():
        raise _fail(where, f"returned dtype {t.dtype}, expected a floating dtype")
    if not bool(torch.isfinite(t).all()):
        raise _fail(where, "returned NaN or inf")
    return t


def check_model(
    model: DynamicsModel,
    obs: Tensor,
    action: Tensor,
    next_obs: Tensor | None = None,
    num_functions: int = 4,
    seed: int = 0,
) -> None:
    """Check a (fitted) model against the :class:`DynamicsModel` protocol.

    Args:
        model: the model, already fitted if it needs data.
        obs: ``(B, obs_dim)`` states to evaluate at (e.g. a few collected ones).
        action: ``(B, action_dim)``.
        next_obs: ``(B, obs_dim)`` observed next states for ``log_likelihood``
            (default: the predictive mean).
        num_functions: functions to draw.
        seed: seed of the generators used for the determinism check.

    Raises:
        ModelError: naming the first method that breaks the protocol.
    """
    model.check_inputs(obs, action, next_obs)
    b, d = obs.shape[0], model.obs_dim
    n = num_functions

    # sample_functions: n functions, one vectorized call, seeded
    fs = model.sample_functions(n, torch.Generator().manual_seed(seed))
    if not isinstance(fs, FunctionSample):
        raise _fail("sample_functions", f"returned {type(fs).__name__}, expected a FunctionSample")
    if fs.n != n:
        raise _fail("sample_functions", f"returned {fs.n} functions, asked for {n}")
    o, a = obs.float().expand(n, -1, -1), action.float().expand(n, -1, -1)
    dist = fs(o, a)
    if not isinstance(dist, Distribution):
        raise _fail(
            "FunctionSample.__call__", f"returned {type(dist).__name__}, expected a Distribution"
        )
    if tuple(dist.batch_shape) != (n, b) or tuple(dist.event_shape) != (d,):
        raise _fail(
            "FunctionSample.__call__",
            f"returned batch {tuple(dist.batch_shape)} / event {tuple(dist.event_shape)}, "
            f"expected batch ({n}, {b}) and event ({d},): one next-state distribution per "
            "function and input",
        )
    _expect_shape("FunctionSample.mean", fs.mean(o, a), (n, b, d))
    draw = _expect_shape(
        "FunctionSample.sample", fs.sample(o, a, torch.Generator().manual_seed(seed)), (n, b, d)
    )
    again = fs.sample(o, a, torch.Generator().manual_seed(seed))
    if not torch.equal(draw, again):
        raise _fail(
            "FunctionSample.sample",
            "is not reproducible with the same generator; draw all randomness from it",
        )
    fs_again = model.sample_functions(n, torch.Generator().manual_seed(seed))
    if not torch.equal(fs_again.mean(o, a), fs.mean(o, a)):
        raise _fail(
            "sample_functions",
            "returned different functions for the same generator seed; draw from the generator",
        )

    # predict: law of total variance, (B, d) each, non-negative variances
    pred = model.predict(obs, action)
    if not isinstance(pred, Predictive):
        raise _fail("predict", f"returned {type(pred).__name__}, expected a Predictive")
    for name in ("mean", "epistemic_var", "aleatoric_var"):
        t = _expect_shape(f"predict().{name}", getattr(pred, name), (b, d))
        if name != "mean" and bool((t < 0).any()):
            raise _fail(f"predict().{name}", "has negative entries")

    # log_likelihood: (num_functions, B), finite
    target = pred.mean.detach() if next_obs is None else next_obs
    ll = model.log_likelihood(obs, action, target, n)
    _expect_shape("log_likelihood", ll, (n, b))
