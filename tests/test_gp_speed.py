"""The exact GP's fast routes give what GPyTorch and BoTorch give: function draws from a
cached Cholesky factor and blocked path evaluation, and the marginal likelihood with a
closed-form gradient."""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import gpytorch
import pytest
import torch
from botorch.sampling.pathwise import (
    draw_kernel_feature_paths,
    draw_matheron_paths,
    gaussian_update,
)
from linear_operator.utils.cholesky import psd_safe_cholesky
from linear_operator.utils.errors import NanError
from torch import Tensor

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ModelError
from bayes_mbrl.models.gp import ExactGPDynamics, GPFunctionSample, with_jitter_escalation
from bayes_mbrl.models.gp.numerics import MAX_CHOLESKY, psd_cholesky

sys.path.insert(0, str(Path(__file__).parent))
from test_gp_user_kernel import toy_buffer  # the same smooth 2-D system, (OBS, ACT) = (2, 1)

OBS, ACT = 2, 1

LS = torch.tensor([[0.9, 1.3, 1.1], [1.5, 0.8, 2.0]], dtype=torch.float64)
OS = torch.tensor([1.2, 0.7], dtype=torch.float64)
NOISE = torch.tensor([0.05, 0.1], dtype=torch.float64)
CONST = torch.tensor([0.1, -0.2], dtype=torch.float64)


def fixed(buf: ReplayBuffer, **kw: object) -> ExactGPDynamics:
    model = ExactGPDynamics(OBS, ACT, training_steps=0, **kw)  # type: ignore[arg-type]
    model.set_hyperparameters(LS, OS, NOISE, CONST)
    model.fit(buf)
    return model


def botorch_values(model: ExactGPDynamics, n: int, generator_seed: int, x: Tensor) -> Tensor:
    """``(n, D, B)`` values of BoTorch's own Matheron paths (its Cholesky of the noisy
    kernel matrix, its update) drawn with the seed ``sample_functions`` takes."""
    seed = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(generator_seed)))

    def draw() -> Tensor:
        with (
            torch.random.fork_rng(devices=[]),
            torch.no_grad(),
            gpytorch.settings.max_cholesky_size(MAX_CHOLESKY),
        ):
            torch.manual_seed(seed)
            paths = draw_matheron_paths(
                model._gp(),
                torch.Size([n]),
                prior_sampler=functools.partial(
                    draw_kernel_feature_paths, num_features=model.num_features
                ),
                update_strategy=gaussian_update,
            )
            return paths(x.double().unsqueeze(1))

    return with_jitter_escalation(draw, "reference draw")


@pytest.mark.parametrize("kernel", ["se", "matern52", "matern32"])
def test_draws_equal_botorchs_own_paths(kernel: str) -> None:
    """float64 paths to 1e-9, float32 paths to float32 rounding, on random inputs in and
    beyond the data (normalized units)."""
    buf = toy_buffer(40)
    x = 1.5 * torch.randn(5, 9, OBS + ACT, generator=torch.Generator().manual_seed(1))
    for dtype, tol in (("float64", 1e-9), ("float32", 2e-5)):
        model = fixed(buf, kernel=kernel, num_features=64, path_dtype=dtype)
        ref = botorch_values(model, 5, 3, x)
        for _ in range(2):  # the first draw forms the cached factor, the second reuses it
            fs = model.sample_functions(5, torch.Generator().manual_seed(3))
            assert isinstance(fs, GPFunctionSample)
            got = fs.path_values(x.to(fs.dtype)).double()
            scale = ref.abs().max()
            torch.testing.assert_close(got, ref, rtol=tol, atol=tol * scale)


def test_blocked_evaluation_equals_one_block() -> None:
    """Blocks of (path, output) pairs of any size give the same values."""
    import bayes_mbrl.models.gp.paths as paths

    model = fixed(toy_buffer(30), num_features=32, path_dtype="float64")
    fs = model.sample_functions(4, torch.Generator().manual_seed(0))
    x = torch.randn(4, 6, OBS + ACT, dtype=torch.float64)
    saved = paths._BLOCK_BYTES
    try:
        values = []
        for block in (1, 10**4, 10**9):
            paths._BLOCK_BYTES = block
            values.append(fs.path_values(x))
    finally:
        paths._BLOCK_BYTES = saved
    for v in values[1:]:
        torch.testing.assert_close(v, values[0], rtol=1e-12, atol=1e-12)


def test_seeded_draws_repeat_and_differ() -> None:
    model = ExactGPDynamics(OBS, ACT, training_steps=5, num_features=128)
    model.fit(toy_buffer(50), torch.Generator().manual_seed(0))
    o = torch.randn(3, 4, OBS)
    a = torch.rand(3, 4, ACT)
    f1 = model.sample_functions(3, torch.Generator().manual_seed(7))
    f2 = model.sample_functions(3, torch.Generator().manual_seed(7))
    f3 = model.sample_functions(3, torch.Generator().manual_seed(8))
    assert torch.equal(f1.mean(o, a), f2.mean(o, a))
    s1 = f1.sample(o, a, torch.Generator().manual_seed(1))
    s2 = f2.sample(o, a, torch.Generator().manual_seed(1))
    assert torch.equal(s1, s2)
    assert not torch.allclose(f1.mean(o, a), f3.mean(o, a))


def test_sample_and_mean_match_the_distribution() -> None:
    """The direct ``sample``/``mean`` give the numbers the distribution route gives."""
    model = ExactGPDynamics(OBS, ACT, training_steps=5, num_features=64)
    model.fit(toy_buffer(30))
    fs = model.sample_functions(3, torch.Generator().manual_seed(0))
    o, a = torch.randn(3, 5, OBS), torch.rand(3, 5, ACT)
    dist = fs(o, a)
    assert dist.batch_shape == (3, 5) and dist.event_shape == (OBS,)
    torch.testing.assert_close(fs.mean(o, a), dist.mean)
    eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(4))
    expect = dist.base_dist.loc + dist.base_dist.scale * eps
    torch.testing.assert_close(fs.sample(o, a, torch.Generator().manual_seed(4)), expect)


def test_factor_cache_follows_hyperparameters_and_data() -> None:
    """New hyperparameters (without a refit) or new data: draws use the new posterior."""
    buf = toy_buffer(30)
    model = fixed(buf, num_features=64, path_dtype="float64")
    x = torch.randn(2, 5, OBS + ACT, dtype=torch.float64)
    model.sample_functions(2, torch.Generator().manual_seed(5))  # fills the cache
    model.set_hyperparameters(lengthscale=LS * 1.3, noise=NOISE * 2)
    fs = model.sample_functions(2, torch.Generator().manual_seed(5))
    torch.testing.assert_close(fs.path_values(x), botorch_values(model, 2, 5, x))
    model.fit(toy_buffer(35, seed=1))
    fs = model.sample_functions(2, torch.Generator().manual_seed(5))
    torch.testing.assert_close(fs.path_values(x), botorch_values(model, 2, 5, x))


def _loss_and_grads(model: ExactGPDynamics, x: Tensor, y: Tensor, fast: bool) -> list[Tensor]:
    params = model._hyper_params()
    for p in params:
        p.grad = None
    loss = model._marginal_nll(x, y, fast=fast)()
    loss.backward()
    return [loss.detach()] + [p.grad.detach().clone() for p in params]  # type: ignore[union-attr]


@pytest.mark.parametrize("kernel", ["se", "matern52"])
def test_fast_marginal_likelihood_equals_gpytorchs(kernel: str) -> None:
    """Loss and gradient of every hyperparameter against ExactMarginalLogLikelihood."""
    model = ExactGPDynamics(OBS, ACT, kernel=kernel, training_steps=0)
    model.set_hyperparameters(LS, OS, NOISE, CONST)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, OBS + ACT, generator=g, dtype=torch.float64)
    y = torch.randn(60, OBS, generator=g, dtype=torch.float64)
    fast = _loss_and_grads(model, x, y, fast=True)
    reference = _loss_and_grads(model, x, y, fast=False)
    for got, expect in zip(fast, reference, strict=True):
        torch.testing.assert_close(got, expect, rtol=1e-9, atol=1e-11)


def test_fit_keeps_gpytorchs_hyperparameters(monkeypatch: pytest.MonkeyPatch) -> None:
    """30 Adam steps by the fast route end where GPyTorch's route ends."""
    buf = toy_buffer(80)
    fast = ExactGPDynamics(OBS, ACT, training_steps=30)
    report = fast.fit(buf, torch.Generator().manual_seed(0))
    monkeypatch.setattr(ExactGPDynamics, "_plain_marginal_likelihood", lambda self: False)
    slow = ExactGPDynamics(OBS, ACT, training_steps=30)
    slow_report = slow.fit(buf, torch.Generator().manual_seed(0))
    for k, v in fast.hyperparameters().items():
        torch.testing.assert_close(v, slow.hyperparameters()[k], rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(
        torch.tensor(report.train_losses), torch.tensor(slow_report.train_losses)
    )


def test_priors_take_gpytorchs_route() -> None:
    """A kernel with a prior: the objective includes its log density (GPyTorch's MLL)."""

    def kernel(d: int, batch: torch.Size) -> gpytorch.kernels.Kernel:
        prior = gpytorch.priors.GammaPrior(3.0, 6.0)
        base = gpytorch.kernels.RBFKernel(ard_num_dims=d, batch_shape=batch)
        return gpytorch.kernels.ScaleKernel(base, batch_shape=batch, outputscale_prior=prior)

    model = ExactGPDynamics(OBS, ACT, kernel=kernel, training_steps=0)
    assert not model._plain_marginal_likelihood()
    assert fixed(toy_buffer(10))._plain_marginal_likelihood()
    x = torch.randn(20, OBS + ACT, dtype=torch.float64)
    y = torch.randn(20, OBS, dtype=torch.float64)
    with_prior = model._marginal_nll(x, y)()
    without = model._marginal_nll(x, y, fast=True)()
    assert not torch.isclose(with_prior, without)


def test_blocked_cholesky_equals_lapacks() -> None:
    """Factors of odd sizes and batches, and psd_safe_cholesky's jitter retries."""
    g = torch.Generator().manual_seed(0)
    for shape in ((3, 300), (1, 129), (2, 64)):
        b, n = shape
        x = torch.randn(b, n, 4, generator=g, dtype=torch.float64)
        a = torch.exp(-0.5 * torch.cdist(x, x).square()) + 1e-3 * torch.eye(n, dtype=torch.float64)
        torch.testing.assert_close(psd_cholesky(a), torch.linalg.cholesky(a), rtol=0, atol=1e-10)
    singular = torch.ones(2, 200, 200, dtype=torch.float64)  # rank 1: needs jitter
    singular[0] += torch.eye(200, dtype=torch.float64)  # only the second needs it
    got = with_jitter_escalation(lambda: psd_cholesky(singular), "test")
    expect = with_jitter_escalation(lambda: psd_safe_cholesky(singular), "test")
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    with pytest.raises(ModelError, match="jitter"):
        indefinite = torch.eye(200, dtype=torch.float64)
        indefinite[150, 150] = -1.0
        with_jitter_escalation(lambda: psd_cholesky(indefinite), "test", max_jitter=1e-6)
    with pytest.raises(NanError):
        psd_cholesky(torch.full((2, 2), math.nan, dtype=torch.float64))
