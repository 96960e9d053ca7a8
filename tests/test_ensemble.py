"""The probabilistic ensemble: uncertainty recovery, folded evaluation, protocol."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models import ProbabilisticEnsemble, check_model
from bayes_mbrl.options import OptionError


def noisy_sine_buffer(seed: int = 0) -> tuple[ReplayBuffer, float]:
    """s' = s + sin(3a) + N(0, 0.1^2), with a gap in the actions around 0."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(1500, 1, generator=g) * 2 - 1
    a = a[a.abs().squeeze(-1) > 0.4]
    s = torch.zeros(len(a), 1)
    sigma = 0.1
    ns = s + torch.sin(3 * a) + sigma * torch.randn(len(a), 1, generator=g)
    buf = ReplayBuffer(1, 1, len(a))
    buf.add(s, a, torch.zeros(len(a)), ns, torch.zeros(len(a)), torch.zeros(len(a)))
    return buf, sigma


@pytest.fixture(scope="module")
def fitted_sine() -> tuple[ProbabilisticEnsemble, float]:
    buf, sigma = noisy_sine_buffer()
    model = ProbabilisticEnsemble(
        1, 1, num_members=5, hidden_sizes=[64, 64], max_epochs=150, patience=15, seed=0
    )
    report = model.fit(buf, torch.Generator().manual_seed(0))
    assert report.epochs >= 10 and report.val_losses
    return model, sigma


def test_recovers_noise_as_aleatoric_and_epistemic_grows_off_data(
    fitted_sine: tuple[ProbabilisticEnsemble, float],
) -> None:
    model, sigma = fitted_sine
    inside = torch.cat([torch.linspace(-0.95, -0.5, 10), torch.linspace(0.5, 0.95, 10)])[:, None]
    gap = torch.linspace(-0.15, 0.15, 7)[:, None]
    p_in = model.predict(torch.zeros(len(inside), 1), inside)
    p_gap = model.predict(torch.zeros(len(gap), 1), gap)
    # the mean fits the function inside the data
    torch.testing.assert_close(p_in.mean, torch.sin(3 * inside), atol=0.06, rtol=0)
    # aleatoric variance within 25% of the true noise variance inside the data
    ratio = p_in.aleatoric_var.mean() / sigma**2
    assert 0.75 < ratio < 1.25, ratio
    # epistemic variance much larger in the gap than inside the data
    assert p_gap.epistemic_var.mean() > 5 * p_in.epistemic_var.mean()
    torch.testing.assert_close(p_in.total_var, p_in.epistemic_var + p_in.aleatoric_var)


def test_predict_is_law_of_total_variance_over_members(
    fitted_sine: tuple[ProbabilisticEnsemble, float],
) -> None:
    model, _ = fitted_sine
    a = torch.linspace(-1, 1, 9)[:, None]
    s = torch.zeros(9, 1)
    f = model.sample_functions(5)
    dist = f(s.expand(5, -1, -1), a.expand(5, -1, -1))
    p = model.predict(s, a)
    torch.testing.assert_close(p.mean, dist.mean.mean(0))
    torch.testing.assert_close(p.epistemic_var, dist.mean.var(0, unbiased=False))
    torch.testing.assert_close(p.aleatoric_var, dist.variance.mean(0))
    # Monte Carlo over (member, noise) reproduces the total variance
    g = torch.Generator().manual_seed(0)
    n = 4000
    draws = f.sample(s.expand(5, -1, -1).repeat(1, n, 1), a.expand(5, -1, -1).repeat(1, n, 1), g)
    draws = draws.view(5, n, 9, 1).reshape(5 * n, 9, 1)
    torch.testing.assert_close(draws.var(0), p.total_var, rtol=0.08, atol=1e-4)


def test_folded_function_sample_equals_network_on_normalized_inputs(
    fitted_sine: tuple[ProbabilisticEnsemble, float],
) -> None:
    model, _ = fitted_sine
    g = torch.Generator().manual_seed(1)
    s, a = torch.randn(5, 11, 1, generator=g), torch.rand(5, 11, 1, generator=g) * 2 - 1
    x = model.input_normalizer.normalize(torch.cat([s, a], -1))
    with torch.no_grad():
        mean_n, logvar_n = model.net(x)
    expected_mean = s + model.delta_normalizer.denormalize(mean_n)
    expected_std = (0.5 * logvar_n).exp() * model.delta_normalizer.std
    dist = model.sample_functions(5)(s, a)
    torch.testing.assert_close(dist.mean, expected_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist.stddev, expected_std, rtol=1e-5, atol=1e-6)


def test_log_likelihood_matches_gaussian_density(
    fitted_sine: tuple[ProbabilisticEnsemble, float],
) -> None:
    model, _ = fitted_sine
    s, a, ns = torch.zeros(4, 1), torch.tensor([[-0.8], [-0.5], [0.6], [0.9]]), torch.randn(4, 1)
    ll = model.log_likelihood(s, a, ns)
    assert ll.shape == (5, 4)
    dist = model.sample_functions(5)(s.expand(5, -1, -1), a.expand(5, -1, -1))
    m, sd = dist.mean[..., 0], dist.stddev[..., 0]
    manual = -0.5 * ((ns[:, 0] - m) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(ll, manual, rtol=1e-5, atol=1e-5)


def test_sample_functions_stratifies_members(
    fitted_sine: tuple[ProbabilisticEnsemble, float],
) -> None:
    model, _ = fitted_sine
    f = model.sample_functions(20, torch.Generator().manual_seed(0))
    assert torch.bincount(f.member_index, minlength=5).tolist() == [4] * 5  # type: ignore[attr-defined]
    f3 = model.sample_functions(3, torch.Generator().manual_seed(0))
    assert len(set(f3.member_index.tolist())) == 3  # type: ignore[attr-defined]
    with pytest.raises(DataError, match="shape"):
        f(torch.zeros(5, 2, 1), torch.zeros(5, 2, 1))


def test_bfloat16_function_sample_close_to_float32(
    fitted_sine: tuple[ProbabilisticEnsemble, float],
) -> None:
    model, _ = fitted_sine
    f32 = model.sample_functions(5)
    f16 = f32.with_compute_dtype(torch.bfloat16)
    s, a = torch.zeros(5, 8, 1), torch.linspace(-1, 1, 8)[None, :, None].expand(5, -1, -1)
    torch.testing.assert_close(f16.mean(s, a), f32.mean(s, a), atol=0.05, rtol=0.05)
    assert f16.mean(s, a).dtype == torch.float32
    with pytest.raises(ModelError, match="float16"):
        f32.with_compute_dtype(torch.float16)


def test_unfitted_model_and_bad_inputs_raise() -> None:
    model = ProbabilisticEnsemble(3, 1, num_members=2, hidden_sizes=[8])
    with pytest.raises(ModelError, match="fit"):
        model.sample_functions(2)
    buf, _ = noisy_sine_buffer()
    small = ProbabilisticEnsemble(1, 1, num_members=2, hidden_sizes=[8], max_epochs=1)
    small.fit(buf)
    with pytest.raises(DataError, match="obs must have shape"):
        small.predict(torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(DataError, match="rows"):
        small.predict(torch.zeros(4, 1), torch.zeros(3, 1))


def test_fit_is_seeded_and_state_dict_round_trips() -> None:
    buf, _ = noisy_sine_buffer()

    def fit() -> ProbabilisticEnsemble:
        m = ProbabilisticEnsemble(1, 1, num_members=3, hidden_sizes=[16], max_epochs=3, seed=7)
        m.fit(buf, torch.Generator().manual_seed(5))
        return m

    m1, m2 = fit(), fit()
    for p1, p2 in zip(m1.net.parameters(), m2.net.parameters(), strict=True):
        assert torch.equal(p1, p2)
    state = torch.load(_roundtrip(m1.state_dict()), weights_only=True)
    m3 = ProbabilisticEnsemble(1, 1, num_members=3, hidden_sizes=[16], seed=99)
    m3.load_state_dict(state)
    x = torch.linspace(-1, 1, 5)[:, None]
    torch.testing.assert_close(
        m3.predict(torch.zeros(5, 1), x).mean, m1.predict(torch.zeros(5, 1), x).mean
    )
    wrong = ProbabilisticEnsemble(1, 1, num_members=3, hidden_sizes=[32])
    with pytest.raises(ModelError, match="does not match"):
        wrong.load_state_dict(state)


def _roundtrip(obj: object):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_check_model_accepts_the_ensemble(fitted_sine: tuple[ProbabilisticEnsemble, float]) -> None:
    model, _ = fitted_sine
    a = torch.linspace(-1, 1, 6)[:, None]
    # passes (returns None, raises nothing) for the natural and a stratified function count
    assert check_model(model, torch.zeros(6, 1), a, num_functions=5) is None
    assert check_model(model, torch.zeros(6, 1), a, num_functions=12) is None


def test_check_model_names_the_broken_method(
    fitted_sine: tuple[ProbabilisticEnsemble, float],
) -> None:
    model, _ = fitted_sine

    class FlatBatch(ProbabilisticEnsemble):
        """Returns one distribution per input instead of per (function, input)."""

        def sample_functions(self, n, generator=None):  # type: ignore[no-untyped-def]
            inner = super().sample_functions(n, generator)

            class Wrapped(type(inner)):  # type: ignore[misc]
                def __call__(self, obs, action):  # type: ignore[no-untyped-def]
                    d = inner(obs, action)
                    return Independent(Normal(d.mean[0], d.stddev[0]), 1)

            w = Wrapped.__new__(Wrapped)
            w.__dict__.update(inner.__dict__)
            return w

    broken = FlatBatch.__new__(FlatBatch)
    broken.__dict__.update(model.__dict__)
    with pytest.raises(ModelError, match=r"FunctionSample.__call__ returned batch \(6,\)"):
        check_model(broken, torch.zeros(6, 1), torch.zeros(6, 1), num_functions=5)


def test_deterministic_members_fit_the_mean_and_have_no_noise() -> None:
    """PETS' DE: squared-error members on the noisy sine. The mean is fitted as well as
    by the probabilistic members, sampling returns it, and the noise the data have is
    not modelled (aleatoric ~0), while the members still disagree in the gap."""
    buf, sigma = noisy_sine_buffer()
    model = ProbabilisticEnsemble(
        1, 1, num_members=5, hidden_sizes=[64, 64], max_epochs=150, patience=15, seed=0,
        probabilistic=False,
    )  # fmt: skip
    report = model.fit(buf, torch.Generator().manual_seed(0))
    # the held-out loss is the squared error of normalized deltas: about the noise's share
    assert report.val_losses[-1] < 0.1
    inside = torch.linspace(0.5, 0.95, 10)[:, None]
    gap = torch.linspace(-0.15, 0.15, 7)[:, None]
    p_in = model.predict(torch.zeros(10, 1), inside)
    torch.testing.assert_close(p_in.mean, torch.sin(3 * inside), atol=0.06, rtol=0)
    assert float(p_in.aleatoric_var.max()) < 1e-10 < sigma**2
    p_gap = model.predict(torch.zeros(7, 1), gap)
    assert p_gap.epistemic_var.mean() > 5 * p_in.epistemic_var.mean()
    fs = model.sample_functions(5)
    obs, act = torch.zeros(5, 10, 1), inside.expand(5, 10, 1)
    torch.testing.assert_close(fs.sample(obs, act, torch.Generator()), fs.mean(obs, act))


# ------------------------------------------------------- randomized prior functions
def _prior_model(prior_scale: float, **kwargs: object) -> ProbabilisticEnsemble:
    options: dict[str, object] = {
        "num_members": 5, "hidden_sizes": [32, 32], "max_epochs": 60, "patience": 10,
        "learning_rate": 3e-3, "seed": 0,
    }  # fmt: skip
    options.update(kwargs)
    return ProbabilisticEnsemble(1, 1, prior_scale=prior_scale, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def with_and_without_prior() -> tuple[ProbabilisticEnsemble, ProbabilisticEnsemble, float]:
    buf, sigma = noisy_sine_buffer()
    plain, prior = _prior_model(0.0), _prior_model(3.0)
    for model in (plain, prior):
        model.fit(buf, torch.Generator().manual_seed(0))
    return plain, prior, sigma


def test_randomized_priors_keep_members_apart_off_the_data_and_fit_it(
    with_and_without_prior: tuple[ProbabilisticEnsemble, ProbabilisticEnsemble, float],
) -> None:
    """Osband et al. (2018): members fitted through their fixed random priors agree on the
    data and disagree away from it, far more than the plain members (measured: far
    0.9 -> 30, gap 0.003 -> 0.03, inside unchanged at ~1e-4)."""
    plain, prior, sigma = with_and_without_prior
    far = torch.tensor([[-4.0], [-3.0], [3.0], [4.0]])
    gap = torch.linspace(-0.15, 0.15, 7)[:, None]
    inside = torch.cat([torch.linspace(-0.95, -0.5, 10), torch.linspace(0.5, 0.95, 10)])[:, None]

    def epistemic(model: ProbabilisticEnsemble, a: Tensor) -> Tensor:
        return model.predict(torch.zeros(len(a), 1), a).epistemic_var.mean()

    assert epistemic(prior, far) > 5 * epistemic(plain, far)
    assert epistemic(prior, gap) > 3 * epistemic(plain, gap)
    # on the data the prior is fitted through: mean, noise and agreement as without it
    p_in = prior.predict(torch.zeros(len(inside), 1), inside)
    torch.testing.assert_close(p_in.mean, torch.sin(3 * inside), atol=0.06, rtol=0)
    assert 0.75 < float(p_in.aleatoric_var.mean()) / sigma**2 < 1.25
    assert epistemic(prior, gap) > 10 * epistemic(prior, inside)


def test_prior_acts_in_function_draws_bf16_and_stratified_members(
    with_and_without_prior: tuple[ProbabilisticEnsemble, ProbabilisticEnsemble, float],
) -> None:
    """The folded fast path computes the training-time mean ``net + beta * prior`` (raw
    inputs, delta units) for any draw of members, and in bfloat16 too."""
    _, model, _ = with_and_without_prior
    assert model.prior is not None
    g = torch.Generator().manual_seed(1)
    s, a = torch.randn(5, 11, 1, generator=g), 3 * torch.rand(5, 11, 1, generator=g) - 1.5
    x = model.input_normalizer.normalize(torch.cat([s, a], -1))
    with torch.no_grad():
        mean_n, logvar_n = model.normalized_forward(x)
        without_prior = model.net(x)[0]
    assert (mean_n - without_prior).abs().max() > 0.5  # the prior matters at these inputs
    fs = model.sample_functions(5)
    torch.testing.assert_close(
        fs.mean(s, a), s + model.delta_normalizer.denormalize(mean_n), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        fs(s, a).stddev, (0.5 * logvar_n).exp() * model.delta_normalizer.std, rtol=1e-5, atol=1e-6
    )
    # 12 stratified draws: function i is member member_index[i], prior included
    f12 = model.sample_functions(12, torch.Generator().manual_seed(0))
    idx = f12.member_index  # type: ignore[attr-defined]
    s12, a12 = s[0].expand(12, -1, -1), a[0].expand(12, -1, -1)
    torch.testing.assert_close(
        f12.mean(s12, a12), fs.mean(s[0].expand(5, -1, -1), a[0].expand(5, -1, -1))[idx]
    )
    bf16 = fs.with_compute_dtype(torch.bfloat16)
    torch.testing.assert_close(bf16.mean(s, a), fs.mean(s, a), atol=0.1, rtol=0.05)


def test_prior_is_checkpointed_and_a_mismatch_is_refused(
    with_and_without_prior: tuple[ProbabilisticEnsemble, ProbabilisticEnsemble, float],
) -> None:
    plain, model, _ = with_and_without_prior
    state = torch.load(_roundtrip(model.state_dict()), weights_only=True)
    other_seed = _prior_model(3.0, seed=9)  # a different random prior until loaded
    other_seed.load_state_dict(state)
    a = torch.linspace(-4, 4, 9)[:, None]
    torch.testing.assert_close(
        other_seed.predict(torch.zeros(9, 1), a).mean, model.predict(torch.zeros(9, 1), a).mean
    )
    with pytest.raises(
        ModelError, match=r"saved with randomized prior functions .*prior_scale = 0"
    ):
        _prior_model(0.0).load_state_dict(state)
    with pytest.raises(
        ModelError, match=r"saved with prior_scale = 3, this model has prior_scale = 1"
    ):
        _prior_model(1.0).load_state_dict(state)
    with pytest.raises(ModelError, match="saved without randomized prior functions"):
        _prior_model(3.0).load_state_dict(plain.state_dict())


def test_a_prior_scale_float32_cannot_hold_exactly_loads_back() -> None:
    # 0.1 is saved as a float32 buffer (0.10000000149); its run must resume and analyze
    saved = _prior_model(0.1, hidden_sizes=[8])
    state = torch.load(_roundtrip(saved.state_dict()), weights_only=True)
    assert float(state["prior"]["scale"]) != 0.1
    loaded = _prior_model(0.1, hidden_sizes=[8], seed=5)
    loaded.load_state_dict(state)
    assert loaded.prior is not None and saved.prior is not None
    torch.testing.assert_close(loaded.prior.weights[0], saved.prior.weights[0])


def test_prior_scale_zero_is_the_plain_ensemble() -> None:
    """prior_scale = 0 builds no prior: same initial weights, same state keys, same fit and
    no prior in the function draws; a prior is drawn after the members' weights, so it
    does not change their initialization either."""
    buf, _ = noisy_sine_buffer()
    default = ProbabilisticEnsemble(1, 1, num_members=3, hidden_sizes=[16], max_epochs=3, seed=7)
    zero = ProbabilisticEnsemble(
        1, 1, num_members=3, hidden_sizes=[16], max_epochs=3, seed=7, prior_scale=0.0
    )
    with_prior = ProbabilisticEnsemble(
        1, 1, num_members=3, hidden_sizes=[16], max_epochs=3, seed=7, prior_scale=1.0,
        prior_hidden_sizes=[8],
    )  # fmt: skip
    assert zero.prior is None and with_prior.prior is not None
    with pytest.raises(OptionError, match=r"prior_scale = -1\.0"):
        ProbabilisticEnsemble(1, 1, prior_scale=-1.0)
    with pytest.raises(OptionError, match=r"prior_hidden_sizes = \[0\]"):
        ProbabilisticEnsemble(1, 1, prior_scale=1.0, prior_hidden_sizes=[0])
    assert with_prior.prior.weights[0].shape == (3, 2, 8)
    for a, b in zip(zero.net.parameters(), with_prior.net.parameters(), strict=True):
        assert torch.equal(a, b)
    for model in (default, zero):
        model.fit(buf, torch.Generator().manual_seed(5))
    assert set(zero.state_dict()) == {
        "net", "input_normalizer", "delta_normalizer", "optimizer", "fitted"
    }  # fmt: skip
    for a, b in zip(default.net.parameters(), zero.net.parameters(), strict=True):
        assert torch.equal(a, b)
    fs = zero.sample_functions(3)
    assert fs.prior_weights is None  # type: ignore[attr-defined]
    s, act = torch.zeros(3, 4, 1), torch.linspace(-1, 1, 4)[None, :, None].expand(3, -1, -1)
    assert torch.equal(fs.mean(s, act), default.sample_functions(3).mean(s, act))


@pytest.mark.parametrize("activation", ["silu", "relu", "tanh", "elu"])
def test_planning_path_equals_the_differentiable_path(activation: str) -> None:
    """The bias-row MLP that planning runs (no autograd) is the baddbmm network that
    autograd differentiates, for every activation, with a prior, at every batch size in
    turn (its buffers grow and are reused), and its outputs never alias its buffers."""
    buf, _ = noisy_sine_buffer()
    model = _prior_model(0.5, hidden_sizes=[24, 17, 32], max_epochs=3, activation=activation)
    model.fit(buf, torch.Generator().manual_seed(0))
    fs = model.sample_functions(7, torch.Generator().manual_seed(1))
    # the bias column is written once where the activation has an exact fixed point
    # (ReLU, ELU: 1; SiLU: 32); tanh has none and refills it before every layer
    fixed = {"silu": 32.0, "relu": 1.0, "elu": 1.0, "tanh": None}[activation]
    assert fs._fast is not None and fs._fast.fixed == fixed
    g = torch.Generator().manual_seed(2)
    kept = []
    for rows in (40, 3, 40, 65):
        s, a = torch.randn(7, rows, 1, generator=g), torch.rand(7, rows, 1, generator=g) * 2 - 1
        with torch.inference_mode():
            fast = fs(s, a)
            fast_mean, fast_std = fast.mean.clone(), fast.stddev.clone()
        with torch.enable_grad():
            s_grad = s.clone().requires_grad_(True)
            slow = fs(s_grad, a)
            # the differentiable path really is differentiable
            (grad,) = torch.autograd.grad(slow.mean.sum(), s_grad)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        torch.testing.assert_close(fast_mean, slow.mean.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast_std, slow.stddev.detach(), rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # outside inference mode, after inference-mode calls
            torch.testing.assert_close(fs.mean(s, a), fast_mean, rtol=0, atol=0)
        kept.append((fast.mean, fast_mean))
    for out, copy in kept:  # later calls did not write into earlier outputs
        assert torch.equal(out, copy)


@pytest.mark.parametrize("activation", ["silu", "relu", "tanh", "elu"])
def test_bf16_planning_path_equals_the_bf16_differentiable_path(activation: str) -> None:
    """In bfloat16 the bias-row path computes the bf16 ``baddbmm`` network to bf16
    rounding: the bias rows scaled by a power of two round as the biases do (tanh's,
    divided by ``tanh(1)``, round once more)."""
    buf, _ = noisy_sine_buffer()
    model = _prior_model(0.5, hidden_sizes=[24, 17, 32], max_epochs=3, activation=activation)
    model.fit(buf, torch.Generator().manual_seed(0))
    fs = model.sample_functions(7, torch.Generator().manual_seed(1))
    fs16 = fs.with_compute_dtype(torch.bfloat16)
    assert fs16._fast is not None and fs16._fast.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(2)
    for rows in (40, 65):
        s, a = torch.randn(7, rows, 1, generator=g), torch.rand(7, rows, 1, generator=g) * 2 - 1
        with torch.inference_mode():
            fast = fs16(s, a)
            fast_mean, fast_std = fast.mean.clone(), fast.stddev.clone()
        with torch.enable_grad():
            slow = fs16(s.clone().requires_grad_(True), a)
        torch.testing.assert_close(fast_mean, slow.mean.detach(), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(fast_std, slow.stddev.detach(), rtol=1e-2, atol=1e-4)
        # and bf16 is float32 to bf16's precision (the path is not a different function)
        torch.testing.assert_close(fast_mean, fs.mean(s, a), rtol=0.05, atol=0.05)
