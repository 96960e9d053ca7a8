"""Model kinds as extension points: every registered kind's options agree with its
constructor, constructors check their arguments through their options, ``from_options``
builds the same model, progress is reported within ``progress_total``, and the default
``predict`` / ``log_likelihood`` follow the law of total variance over functions."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.models import (
    MODELS,
    BayesianNeuralNet,
    BNNOptions,
    DynamicsModel,
    EnsembleOptions,
    FitReport,
    FunctionSample,
    ProbabilisticEnsemble,
    PyroDynamics,
    PyroOptions,
)
from bayes_mbrl.options import OptionError


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return dict(v)
    return list(v) if isinstance(v, tuple) else v


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    assert f.default_factory is not dataclasses.MISSING
    return f.default_factory()


@pytest.mark.parametrize("kind", MODELS.names())
def test_option_defaults_equal_the_constructor_defaults(kind: str) -> None:
    entry = MODELS.entry(kind)
    assert entry.options is not None, f"model kind {kind!r} registers no options"
    params = inspect.signature(entry.obj.__init__).parameters
    overrides_from_options = "from_options" in vars(entry.obj)
    for f in dataclasses.fields(entry.options):
        if f.name in params:
            ctor = params[f.name].default
            assert _plain(ctor) == _plain(_default(f)), (
                f"{kind}: option {f.name} defaults to {_default(f)!r}, "
                f"the constructor of {entry.obj.__name__} to {ctor!r}"
            )
        else:  # an option with no argument of that name must be translated
            assert overrides_from_options, (
                f"{kind}: option {f.name} is no argument of {entry.obj.__name__} and its "
                "from_options does not translate it"
            )


def test_the_three_families_are_registered_with_their_config_keys() -> None:
    names = {k: [f.name for f in dataclasses.fields(MODELS.options(k))] for k in MODELS.names()}
    assert (
        MODELS["ensemble"] is ProbabilisticEnsemble
        and MODELS.options("ensemble") is EnsembleOptions
    )
    assert MODELS["bnn"] is BayesianNeuralNet and MODELS.options("bnn") is BNNOptions
    assert MODELS["pyro"] is PyroDynamics and MODELS.options("pyro") is PyroOptions
    assert names["ensemble"] == [
        "num_members", "hidden_sizes", "activation", "learning_rate", "weight_decay",
        "batch_size", "max_epochs", "patience", "val_fraction", "probabilistic",
        "prior_scale", "prior_hidden_sizes",
    ]  # fmt: skip
    assert names["bnn"] == [
        "hidden_sizes", "activation", "prior_scale", "noise", "learning_rate", "batch_size",
        "max_epochs", "patience", "val_fraction", "inference", "num_samples", "warmup_steps",
        "num_chains", "max_tree_depth",
    ]  # fmt: skip
    assert names["pyro"] == [
        "pyro_model", "inference", "guide", "num_steps", "learning_rate", "num_samples",
        "warmup_steps", "num_chains", "max_tree_depth",
    ]  # fmt: skip


def test_per_kind_bounds_and_defaults() -> None:
    assert BNNOptions().max_tree_depth == 6
    assert dataclasses.fields(PyroOptions)[-1].default == 10
    for cls in (EnsembleOptions, BNNOptions):
        cls(val_fraction=0.49)
        with pytest.raises(OptionError, match=r"val_fraction = 0\.5 .*\[0, 0\.5\)"):
            cls(val_fraction=0.5)
    with pytest.raises(OptionError, match=r"max_tree_depth = 16 .*\[1, 15\]"):
        BNNOptions(max_tree_depth=16)


def test_constructors_check_their_arguments_through_their_options() -> None:
    with pytest.raises(OptionError, match=r"ProbabilisticEnsemble: num_members = 0 \(int\)"):
        ProbabilisticEnsemble(3, 1, num_members=0)
    with pytest.raises(OptionError, match=r"ProbabilisticEnsemble: weight_decay = -1\.0"):
        ProbabilisticEnsemble(3, 1, weight_decay=-1.0)
    with pytest.raises(OptionError, match=r"ProbabilisticEnsemble: val_fraction = 0\.7"):
        ProbabilisticEnsemble(3, 1, val_fraction=0.7)
    with pytest.raises(OptionError, match=r"BayesianNeuralNet: val_fraction = 0\.7"):
        BayesianNeuralNet(3, 1, val_fraction=0.7)
    with pytest.raises(OptionError, match=r"BayesianNeuralNet: hidden_sizes = \[0\]"):
        BayesianNeuralNet(3, 1, hidden_sizes=[0])
    model = ProbabilisticEnsemble(3, 1, num_members=2, hidden_sizes=[8])
    assert model.options == EnsembleOptions(num_members=2, hidden_sizes=[8])


def test_from_options_builds_the_constructors_model() -> None:
    opts = EnsembleOptions(num_members=2, hidden_sizes=[8], learning_rate=0.01)
    built = MODELS["ensemble"].from_options(opts, 3, 1, seed=4)
    direct = ProbabilisticEnsemble(
        3, 1, num_members=2, hidden_sizes=[8], learning_rate=0.01, seed=4
    )
    for a, b in zip(built.net.parameters(), direct.net.parameters(), strict=True):
        assert torch.equal(a, b)
    bnn = MODELS["bnn"].from_options(BNNOptions(hidden_sizes=[4], inference="nuts"), 2, 1, seed=1)
    assert isinstance(bnn, BayesianNeuralNet) and bnn.inference == "nuts" and bnn.seed == 1


MODEL_FILE = """
import pyro
import pyro.distributions as dist


def model(obs, action, next_obs=None):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        loc = a.unsqueeze(-1) * obs + action
        pyro.sample("next_obs", dist.Normal(loc, 0.1).to_event(1), obs=next_obs)
"""


def test_pyro_from_options_imports_the_users_model(tmp_path: Path) -> None:
    path = tmp_path / "my_dynamics.py"
    path.write_text(MODEL_FILE)
    opts = PyroOptions(pyro_model=f"{path}:model", num_steps=5, inference="svi")
    model = MODELS["pyro"].from_options(opts, 1, 1, seed=2)
    assert isinstance(model, PyroDynamics)
    assert model.model_fn.__name__ == "model" and model.num_steps == 5 and model.seed == 2
    assert model.options == opts
    with pytest.raises(OptionError, match=r"PyroOptions: pyro_model = ''.*path/to/file\.py"):
        PyroOptions()
    with pytest.raises(OptionError, match=r"pyro_model = 'no_colon'"):
        PyroOptions(pyro_model="no_colon")
    with pytest.raises(ConfigError, match="has no function 'other'"):
        MODELS["pyro"].from_options(PyroOptions(pyro_model=f"{path}:other"), 1, 1)


def _data(n: int, obs_dim: int = 1, seed: int = 0) -> ReplayBuffer:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, obs_dim, generator=g)
    a = torch.rand(n, 1, generator=g) * 2 - 1
    ns = 0.9 * s + 0.5 * a + 0.1 * torch.randn(n, obs_dim, generator=g)
    buf = ReplayBuffer(obs_dim, 1, n)
    buf.add(s, a, torch.zeros(n), ns, torch.zeros(n), torch.zeros(n))
    return buf


def _linear(obs: Tensor, action: Tensor, next_obs: Tensor | None = None) -> None:
    import pyro
    import pyro.distributions as dist

    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("transitions", obs.shape[-2], dim=-1):
        loc = a.unsqueeze(-1) * obs + action
        pyro.sample("next_obs", dist.Normal(loc, 0.1).to_event(1), obs=next_obs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ProbabilisticEnsemble(1, 1, num_members=2, hidden_sizes=[8], max_epochs=7),
        lambda: BayesianNeuralNet(1, 1, hidden_sizes=[4], max_epochs=3),
        lambda: BayesianNeuralNet(
            1, 1, hidden_sizes=[2], inference="nuts", num_samples=3, warmup_steps=2,
            num_chains=2, map_steps=5, max_tree_depth=2,
        ),
        lambda: PyroDynamics(_linear, 1, 1, num_steps=250),
        lambda: PyroDynamics(
            _linear, 1, 1, inference="nuts", num_samples=4, warmup_steps=3, num_chains=2,
            map_steps=5, max_tree_depth=3,
        ),
    ],
    ids=["ensemble", "bnn-svi", "bnn-nuts", "pyro-svi", "pyro-nuts"],
)  # fmt: skip
def test_fit_reports_progress_within_progress_total(make: Any) -> None:
    model = make()
    total = model.progress_total()
    calls: list[tuple[int, float, float]] = []
    model.fit(_data(40), torch.Generator().manual_seed(0), progress=lambda *a: calls.append(a))
    steps = [c[0] for c in calls]
    assert calls and steps == sorted(steps) and len(set(steps)) == len(steps)
    assert len(calls) <= total and steps[-1] + 1 <= total
    assert all(math.isfinite(c[1]) for c in calls)
    if getattr(model, "inference", "") == "nuts":  # every NUTS iteration is reported
        assert steps == list(range(total))
    if isinstance(model, PyroDynamics) and model.inference == "svi":
        assert steps[-1] + 1 == total  # the last SVI step is always reported


class _KnownFunctions(FunctionSample):
    """Function i at input x: N(x + i, (i + 1)^2), independently per dimension."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, obs: Tensor, action: Tensor) -> Distribution:
        i = torch.arange(self.n, dtype=torch.float32).view(-1, 1, 1)
        return Independent(Normal(obs + i, (i + 1).expand_as(obs)), 1)


class _KnownModel(DynamicsModel):
    """A model with only functions: predict / log_likelihood come from DynamicsModel."""

    obs_dim, action_dim, num_functions_hint = 2, 1, 4

    def __init__(self) -> None:
        self.drawn: list[int] = []

    def fit(self, data: ReplayBuffer, generator: Any = None, progress: Any = None) -> FitReport:
        return FitReport()

    def sample_functions(self, n: int, generator: torch.Generator | None = None) -> FunctionSample:
        self.drawn.append(n)
        return _KnownFunctions(n)


def test_default_predict_is_the_law_of_total_variance_over_functions() -> None:
    model = _KnownModel()
    obs, action = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.zeros(2, 1)
    p = model.predict(obs, action)  # None: posterior_functions -> the 4 functions of the hint
    means = torch.arange(4.0)  # function i shifts by i, variance (i + 1)^2
    torch.testing.assert_close(p.mean, obs + means.mean())
    torch.testing.assert_close(
        p.epistemic_var, torch.full((2, 2), float(means.var(unbiased=False)))
    )
    torch.testing.assert_close(
        p.aleatoric_var, torch.full((2, 2), float(((means + 1) ** 2).mean()))
    )
    model.predict(obs, action, num_functions=3)
    assert model.drawn == [4, 3]
    next_obs = obs + 1.0
    ll = model.log_likelihood(obs, action, next_obs, num_functions=3)
    expected = torch.stack(
        [Normal(obs + i, float(i + 1)).log_prob(next_obs).sum(-1) for i in range(3)]
    )
    torch.testing.assert_close(ll, expected)
    with pytest.raises(DataError, match="num_functions must be >= 1 or None, got 0"):
        model.predict(obs, action, num_functions=0)
    with pytest.raises(DataError, match=r"obs must have shape \(B, 2\)"):
        model.log_likelihood(obs[:, :1], action, next_obs)


def test_seeded_predictions_repeat_and_ensemble_default_uses_every_member() -> None:
    model = PyroDynamics(_linear, 1, 1, num_steps=20, seed=3)
    model.fit(_data(30))
    obs, action = torch.zeros(2, 1), torch.ones(2, 1)
    a, b = model.predict(obs, action, 7), model.predict(obs, action, 7)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.epistemic_var, b.epistemic_var)
    ens = ProbabilisticEnsemble(1, 1, num_members=3, hidden_sizes=[8], max_epochs=2)
    ens.fit(_data(30), torch.Generator().manual_seed(0))
    dist = ens.sample_functions(3).at(obs, action)
    p = ens.predict(obs, action)
    torch.testing.assert_close(p.mean, dist.mean.mean(0), rtol=0, atol=0)
    assert ens.log_likelihood(obs, action, obs).shape == (3, 2)
