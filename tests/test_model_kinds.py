"""Every model kind through the experiment runner: config -> run -> checkpoint -> analyze.

The BNN and a user-written Pyro model are selected by config exactly like the
ensemble; ``bayes-mbrl analyze`` then reloads the run's model from its checkpoint
and writes the uncertainty report.
"""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest
import torch

from bayes_mbrl.cli import main
from bayes_mbrl.config import load_config
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.experiment import load_run, load_user_function, run_experiment

TINY = [
    "env.episode_length=30",
    "experiment.episodes=2",
    "experiment.progress=false",
    "planner.kind=cem",
    "planner.population=16",
    "planner.iterations=2",
    "planner.particles=4",
    "planner.horizon=4",
]

# A user's grey-box model of Pendulum-v1 written against the PyroDynamics contract:
# unknown mass and length, known gravity and time step.
PENDULUM_MODEL = textwrap.dedent(
    """
    import pyro
    import pyro.distributions as dist
    import torch


    def pendulum(obs, action, next_obs=None):
        mass = pyro.sample("mass", dist.LogNormal(0.0, 0.5))
        length = pyro.sample("length", dist.LogNormal(0.0, 0.5))
        noise = pyro.sample("noise", dist.LogNormal(-4.0, 1.0))
        th = torch.atan2(obs[..., 1], obs[..., 0])
        thdot = obs[..., 2]
        u = action[..., 0].clamp(-2.0, 2.0)
        m, l = mass, length  # scalars, or (n, 1) when n posterior draws run at once
        newthdot = (thdot + (15.0 / l * torch.sin(th) + 3.0 / (m * l**2) * u) * 0.05).clamp(-8, 8)
        newth = th + newthdot * 0.05
        loc = torch.stack([torch.cos(newth), torch.sin(newth), newthdot], dim=-1)
        with pyro.plate("transitions", obs.shape[-2], dim=-1):
            pyro.sample(
                "next_obs",
                dist.Normal(loc, noise.unsqueeze(-1)).to_event(1),
                obs=next_obs,
            )
    """
)


def test_load_user_function_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text("def model(obs, action, next_obs=None):\n    return 7\n")
    monkeypatch.chdir(tmp_path)
    fn = load_user_function("my_models.py:model", "model.pyro_model")
    assert fn(None, None) == 7
    assert load_user_function("math:sqrt", "model.pyro_model")(9.0) == 3.0


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        (None, "missing.py:model", "not found"),
        ("def other():\n    pass\n", "m.py:model", "its functions are ['other']"),
        ("raise RuntimeError('boom')\n", "m.py:model", "'m.py' failed (RuntimeError: boom)"),
        ("x = 1\n", "m.py:x", "has no function 'x'"),
        (None, "no_such_module_xyz:model", "importing 'no_such_module_xyz' failed"),
    ],
)
def test_load_user_function_errors_name_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str | None, spec: str, message: str
) -> None:
    if source is not None:
        (tmp_path / "m.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"model\.pyro_model") as info:
        load_user_function(spec, "model.pyro_model")
    assert message in str(info.value)


def test_pyro_kind_needs_a_model() -> None:
    with pytest.raises(ConfigError, match=r"model\.pyro_model"):
        load_config(None, ["model.kind=pyro"])


def _returns(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["return"]) for r in csv.DictReader(f)]


def _analyze_and_check(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(run_dir), "--num-draws", "8"]) == 0
    out = capsys.readouterr().out
    assert "30 held-out transitions" in out
    analysis = run_dir / "analysis"
    assert (analysis / "summary.csv").stat().st_size > 0
    assert list(analysis.glob("*.nc")), "the InferenceData is written as netCDF"
    pngs = list(analysis.glob("*.png"))
    assert len(pngs) >= 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_bnn_run_resumable_and_analyzable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(
        None, [*TINY, "model.kind=bnn", "model.hidden_sizes=[16, 16]", "model.max_epochs=5"]
    )
    run_dir = tmp_path / "bnn"
    result = run_experiment(config, run_dir)
    assert len(result.returns) == 2 and all(r < 0 for r in result.returns)
    loaded = load_run(run_dir)
    assert type(loaded.model).__name__ == "BayesianNeuralNet"
    assert len(loaded.train) == 30 and len(loaded.held_out) == 30
    # the reloaded posterior predicts the held-out episode like the one that planned it
    pred = loaded.model.predict(loaded.held_out.obs, loaded.held_out.action)
    assert torch.isfinite(pred.total_var).all()
    _analyze_and_check(run_dir, capsys)


def test_user_pyro_model_run_recovers_physics_and_is_analyzable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "user_pendulum.py").write_text(PENDULUM_MODEL)
    monkeypatch.chdir(tmp_path)
    config = load_config(
        None,
        [
            *TINY,
            "model.kind=pyro",
            "model.pyro_model=user_pendulum.py:pendulum",
            "model.inference=svi",
            "model.num_steps=600",
            "model.learning_rate=0.05",
        ],
    )
    run_dir = tmp_path / "pyro"
    run_experiment(config, run_dir)
    loaded = load_run(run_dir)
    latents = loaded.model.posterior_functions(64, torch.Generator().manual_seed(0)).latents()
    # 30 random transitions of the true pendulum (mass 1, length 1) pin both down
    assert abs(float(latents["length"].mean()) - 1.0) < 0.1
    assert abs(float(latents["mass"].mean()) - 1.0) < 0.1
    _analyze_and_check(run_dir, capsys)


def test_analyze_before_any_fit_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(None, [*TINY, "experiment.episodes=1", "model.hidden_sizes=[8]"])
    run_experiment(config, tmp_path / "r")
    assert main(["analyze", str(tmp_path / "r")]) == 2
    assert "no model has been fitted yet" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("gp", ["model.num_steps=20", "model.num_features=64"]),
        ("sparse_gp", ["model.num_inducing=16", "model.max_epochs=2", "model.num_features=64"]),
    ],
)
def test_gp_kinds_run_and_reload(kind: str, extra: list[str], tmp_path: Path) -> None:
    config = load_config(None, [*TINY, f"model.kind={kind}", *extra])
    run_dir = tmp_path / kind
    run_experiment(config, run_dir)
    loaded = load_run(run_dir)
    assert type(loaded.model).__name__ == {"gp": "ExactGPDynamics"}.get(kind, "SparseGPDynamics")
    # the reloaded GP predicts the unseen episode: its one-step error is far below the
    # spread of the states themselves
    pred = loaded.model.predict(loaded.held_out.obs, loaded.held_out.action)
    err = (pred.mean - loaded.held_out.next_obs).pow(2).mean(0)
    assert bool((err < 0.5 * loaded.held_out.next_obs.var(0) + 1e-3).all()), err
