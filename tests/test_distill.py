"""Posterior distillation (``model.kind = "distilled"``, bayes_mbrl/models/distill.py).

* a teacher with known moments (two functions ``m(x) +- sqrt(v_e(x))`` with noise
  ``v_a(x)``): the student's three heads recover ``m``, ``v_a`` and ``v_e``, on the data
  and, thanks to the off-data inputs, away from it;
* the student's functions: their spread is the epistemic head, their noise the
  aleatoric head (Monte Carlo);
* the temperature scales only the mean term of the loss (closed form);
* a real teacher (the ensemble) distilled from the config, resumed from its state;
* bad input: an unfitted teacher, other sizes, a temperature <= 0, an unknown teacher.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from bayes_mbrl.config import load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError, ModelError
from bayes_mbrl.models.base import MODELS, DynamicsModel, FitReport, FunctionSample
from bayes_mbrl.models.distill import DistilledDynamics, distill
from bayes_mbrl.options import OptionError
from bayes_mbrl.uncertainty.inference_data import to_inference_data


def _moments(obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The known teacher: mean, aleatoric and epistemic variance of ``s'``."""
    x = obs[..., :1]
    mean = obs + 0.3 * torch.sin(2 * x) + 0.2 * action
    var_a = (0.02 + 0.05 * x**2).expand_as(obs)
    var_e = (0.01 * (1 + 2 * x**2) ** 2).expand_as(obs)
    return mean, var_a, var_e


class _TwoFunctions(FunctionSample):
    n = 2

    def __call__(self, obs: Tensor, action: Tensor) -> Independent:
        mean, var_a, var_e = _moments(obs, action)
        sign = torch.tensor([1.0, -1.0]).reshape(2, *([1] * (obs.dim() - 1)))
        return Independent(Normal(mean + sign * var_e.sqrt(), var_a.sqrt()), 1)


class KnownTeacher(DynamicsModel):
    """Two functions ``m +- sqrt(v_e)``: the mixture's moments are exactly ``m``, ``v_a``
    and ``v_e``."""

    num_functions_hint = 2

    def __init__(self, obs_dim: int = 2, action_dim: int = 1, fitted: bool = True) -> None:
        self.obs_dim, self.action_dim, self.fitted = obs_dim, action_dim, fitted

    def fit(self, data: ReplayBuffer, generator=None, progress=None) -> FitReport:  # type: ignore[no-untyped-def]
        self.fitted = True
        return FitReport()

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        if not self.fitted:
            raise ModelError("KnownTeacher has not been fitted")
        return _TwoFunctions()

    def state_dict(self) -> dict[str, bool]:
        return {"fitted": self.fitted}

    def load_state_dict(self, state: dict[str, bool]) -> None:
        self.fitted = bool(state["fitted"])


def _buffer(n: int = 1500, seed: int = 0, obs_dim: int = 2) -> ReplayBuffer:
    """Inputs in ``|x| <= 1``, next states from the known teacher's mean."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, obs_dim, generator=g) * 2 - 1
    action = torch.rand(n, 1, generator=g) * 2 - 1
    nxt, _, _ = _moments(obs, action)
    buf = ReplayBuffer(obs_dim, 1, n)
    for i in range(n):
        buf.add(obs[i], action[i], 0.0, nxt[i], False, False)
    return buf


SMALL = {"hidden_sizes": [64, 64], "max_epochs": 150, "patience": 20, "learning_rate": 3e-3}


@pytest.fixture(scope="module")
def student() -> DistilledDynamics:
    return distill(KnownTeacher(), _buffer(), seed=0, off_data_scale=0.7, **SMALL)


def test_student_recovers_the_teachers_mean_and_both_variances(student: DistilledDynamics) -> None:
    g = torch.Generator().manual_seed(5)
    obs = torch.rand(400, 2, generator=g) * 2 - 1
    action = torch.rand(400, 1, generator=g) * 2 - 1
    mean, var_a, var_e = _moments(obs, action)
    p = student.predict(obs, action)
    sd = (var_a + var_e).sqrt()
    assert float(((p.mean - mean).abs() / sd).mean()) < 0.1
    for got, want in ((p.aleatoric_var, var_a), (p.epistemic_var, var_e)):
        ratio = (got / want).log().abs()
        assert float(ratio.median()) < math.log(1.25), float(ratio.median())


def test_sample_labels_recover_the_teacher_too() -> None:
    """``labels = "samples"``: the mean term is the likelihood of the teacher's draws (two
    per input here, one per function), so the mean is noisier but still unbiased."""
    student = distill(KnownTeacher(), _buffer(), seed=1, labels="samples", **SMALL)
    g = torch.Generator().manual_seed(8)
    obs = torch.rand(400, 2, generator=g) * 2 - 1
    action = torch.rand(400, 1, generator=g) * 2 - 1
    mean, var_a, var_e = _moments(obs, action)
    p = student.predict(obs, action)
    assert float(((p.mean - mean).abs() / (var_a + var_e).sqrt()).mean()) < 0.2
    for got, want in ((p.aleatoric_var, var_a), (p.epistemic_var, var_e)):
        assert float((got / want).log().abs().median()) < math.log(1.3)


def test_off_data_inputs_teach_where_the_teacher_is_unsure(student: DistilledDynamics) -> None:
    """Outside the data (|x| in [1.2, 1.6]) the teacher's epistemic variance grows like
    (1 + 2 x^2)^2; the student ranks the inputs as the teacher does and stays within a
    factor 2 of it."""
    g = torch.Generator().manual_seed(6)
    x = 1.2 + 0.4 * torch.rand(300, 1, generator=g)
    obs = torch.cat([x * torch.sign(torch.randn(300, 1, generator=g)), torch.rand(300, 1)], 1)
    action = torch.zeros(300, 1)
    _, _, var_e = _moments(obs, action)
    got = student.predict(obs, action).epistemic_var[:, 0]
    rank = lambda t: t.argsort().argsort().float()  # noqa: E731
    rho = torch.corrcoef(torch.stack([rank(got), rank(var_e[:, 0])]))[0, 1]
    assert float(rho) > 0.8, float(rho)
    assert float((got / var_e[:, 0]).log().abs().median()) < math.log(2.0)


def test_functions_split_epistemic_and_aleatoric_as_the_heads_say(
    student: DistilledDynamics,
) -> None:
    obs, action = torch.tensor([[0.5, -0.2]]), torch.tensor([[0.3]])
    p = student.predict(obs, action)
    fs = student.sample_functions(4000, torch.Generator().manual_seed(0))
    d = fs(obs.expand(4000, 1, 2), action.expand(4000, 1, 1))
    assert d.batch_shape == (4000, 1) and d.event_shape == (2,)
    means = d.mean[:, 0]  # across functions: the epistemic spread
    torch.testing.assert_close(
        means.mean(0), p.mean[0], atol=4 * p.epistemic_var[0].sqrt().max() / 60, rtol=0
    )
    torch.testing.assert_close(means.var(0), p.epistemic_var[0], rtol=0.1, atol=0)
    torch.testing.assert_close(d.variance[0, 0], p.aleatoric_var[0], rtol=1e-5, atol=1e-7)
    # a function is one function: the same draw at the same input gives the same mean
    again = fs(obs.expand(4000, 1, 2), action.expand(4000, 1, 1)).mean
    assert torch.equal(again, d.mean)


def test_temperature_scales_only_the_mean_term() -> None:
    teacher = KnownTeacher()
    buf = _buffer(200)
    models = {
        t: DistilledDynamics(
            2, 1, teacher=teacher, fit_teacher=False, temperature=t, seed=3, **SMALL
        )
        for t in (1.0, 4.0)
    }
    x = torch.randn(50, 3)
    for m in models.values():  # the same normalizers and labels
        m.input_normalizer.fit(torch.randn(200, 3))
        m.delta_normalizer.fit(torch.randn(200, 2))
    lab = models[1.0]._labels(x, None)
    with torch.no_grad():
        mu, log_a, log_e = models[1.0].student(x)
        u = log_a.exp() + log_e.exp()
        v = lab["var_a"] + lab["var_e"]
        mean_term = (0.5 * (lab["mean"] - mu) ** 2 / u).sum(-1).mean()
        gap = models[1.0]._loss(x, lab) - models[4.0]._loss(x, lab)
    torch.testing.assert_close(gap, mean_term * (1 - 1 / 4), rtol=1e-4, atol=1e-5)
    assert bool((v > 0).all()) and len(buf) == 200


def test_distilled_ensemble_from_the_config_fits_plans_and_resumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(
        "pendulum-ensemble-mpc",
        [
            "model.kind=distilled",
            'model.teacher="ensemble"',
            "model.teacher_options={num_members = 3, hidden_sizes = [32, 32], max_epochs = 5}",
            "model.hidden_sizes=[32, 32]",
            "model.max_epochs=5",
        ],
    )
    from bayes_mbrl.algorithms.base import build_model

    model = build_model(cfg, 3, 1)
    assert isinstance(model, DistilledDynamics) and model.teacher.num_functions_hint == 3
    buf = ReplayBuffer(3, 1, 300)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        o = torch.randn(3, generator=g)
        a = torch.rand(1, generator=g) * 4 - 2
        buf.add(o, a, 0.0, o + 0.05 * a, False, False)
    calls: list[int] = []
    report = model.fit(buf, torch.Generator().manual_seed(1), lambda e, t, v: calls.append(e))
    assert model.fitted and report.epochs >= 1 and math.isfinite(report.train_losses[-1])
    assert calls == sorted(calls) and len(calls) == model.last_teacher_report.epochs + report.epochs  # type: ignore[union-attr]
    path = tmp_path / "d.pt"
    torch.save(model.state_dict(), path)
    again = build_model(cfg, 3, 1)
    again.load_state_dict(torch.load(path, weights_only=True))
    obs, action = torch.randn(7, 3), torch.randn(7, 1)
    p, q = model.predict(obs, action), again.predict(obs, action)
    assert torch.equal(p.mean, q.mean) and torch.equal(p.epistemic_var, q.epistemic_var)
    t1, t2 = model.teacher.predict(obs, action), again.teacher.predict(obs, action)
    assert torch.equal(t1.mean, t2.mean)
    # the pointwise log-likelihood every family exports to ArviZ
    ll = model.log_likelihood(obs, action, obs + 0.05 * action, num_functions=10)
    assert ll.shape == (10, 7) and torch.isfinite(ll).all()
    idata = to_inference_data(model, buf, num_draws=20)
    assert idata.log_likelihood["next_obs"].shape[:2] == (1, 20)
    assert idata.posterior["eps"].shape[:2] == (1, 20)  # each function's error direction


def test_bad_input_is_named() -> None:
    with pytest.raises(ModelError, match="unfitted teacher"):
        distill(KnownTeacher(fitted=False), _buffer(50), **SMALL)
    with pytest.raises(DataError, match="teacher"):
        DistilledDynamics(3, 1, teacher=KnownTeacher(obs_dim=2))
    with pytest.raises(DataError, match="buffer holds"):
        distill(KnownTeacher(obs_dim=3), _buffer(50, obs_dim=2), **SMALL)
    with pytest.raises(OptionError, match="temperature"):
        DistilledDynamics(2, 1, teacher=KnownTeacher(), temperature=0.0)
    with pytest.raises(OptionError, match="teacher"):
        DistilledDynamics(2, 1, teacher="distilled")
    with pytest.raises(ConfigError, match=r"num_memberz.*num_members"):
        DistilledDynamics(2, 1, teacher="ensemble", teacher_options={"num_memberz": 3})
    with pytest.raises(OptionError, match="num_members"):
        DistilledDynamics(2, 1, teacher="ensemble", teacher_options={"num_members": 0})
    with pytest.raises(ConfigError, match="teacher"):
        load_config("pendulum-ensemble-mpc", ["model.kind=distilled", 'model.teacher="ensembel"'])
    with pytest.raises(ModelError, match="not been fitted"):
        DistilledDynamics(2, 1, teacher=KnownTeacher()).sample_functions(3)
    assert "distilled" in MODELS
