"""``planner.precision = "auto"``: bf16 planning only on a CPU with native bf16, for a
model that computes in it; the choice is printed in the run's log."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bayes_mbrl.cli import main
from bayes_mbrl.config import load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import get_task
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.experiment import Callback, Experiment, run_experiment
from bayes_mbrl.models import ProbabilisticEnsemble
from bayes_mbrl.models.gp import ExactGPDynamics
from bayes_mbrl.planning import RolloutEvaluator, precision, resolve_precision

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import TINY_RUN as TINY  # a tiny run as CLI arguments


@pytest.fixture
def fitted() -> ProbabilisticEnsemble:
    g = torch.Generator().manual_seed(0)
    n = 200
    th = torch.rand(n, generator=g) * 6.28 - 3.14
    obs = torch.stack([th.cos(), th.sin(), torch.randn(n, generator=g)], -1)
    action = torch.rand(n, 1, generator=g) * 4 - 2
    next_obs = obs + 0.05 * torch.randn(n, 3, generator=g)
    buf = ReplayBuffer(3, 1, n)
    buf.add(obs, action, torch.zeros(n), next_obs, torch.zeros(n), torch.zeros(n))
    model = ProbabilisticEnsemble(3, 1, num_members=5, hidden_sizes=[32, 32], max_epochs=20)
    model.fit(buf, g)
    return model


def test_explicit_precisions_pass_through_and_unknown_is_refused() -> None:
    model = ProbabilisticEnsemble(3, 1, num_members=2, hidden_sizes=[8])
    assert resolve_precision("float32", model)[0] == "float32"
    assert resolve_precision("bfloat16", model)[0] == "bfloat16"
    with pytest.raises(ConfigError, match=r"'float16'.*'auto'"):
        resolve_precision("float16", model)


@pytest.mark.parametrize("feature", [None, "amx_bf16", "avx512_bf16"])
def test_auto_plans_in_bf16_only_with_native_bf16_and_a_bf16_model(
    monkeypatch: pytest.MonkeyPatch, feature: str | None
) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda: feature)
    ensemble = ProbabilisticEnsemble(3, 1, num_members=2, hidden_sizes=[8])
    chosen, why = resolve_precision("auto", ensemble)
    assert chosen == ("float32" if feature is None else "bfloat16")
    assert (feature or "no native bf16") in why
    gp = ExactGPDynamics(3, 1)  # GP paths compute in float32 (or float64) only
    assert resolve_precision("auto", gp) == (
        "float32",
        "float32 (auto: ExactGPDynamics plans in float32 only)"
        if feature
        else "float32 (auto: this CPU has no native bf16, where bf16 is slower)",
    )
    assert resolve_precision("auto", ensemble, "cuda")[0] == "float32"


def test_auto_evaluator_scores_as_float32_within_bf16_rounding(
    monkeypatch: pytest.MonkeyPatch, fitted: ProbabilisticEnsemble
) -> None:
    """With native bf16 the auto evaluator computes in bf16 and its scores match the
    float32 evaluator's (same seeds) to bf16 accuracy; without, it is float32 exactly."""
    task = get_task("Pendulum-v1")
    obs = torch.tensor([0.0, 1.0, 0.5])
    actions = torch.rand(64, 10, 1, generator=torch.Generator().manual_seed(3)) * 4 - 2

    def score(prec: str) -> tuple[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        ev = RolloutEvaluator(fitted, task.reward_fn, 10, 5, "ts_inf", precision=prec, generator=g)
        return ev.precision, ev(obs, actions)

    _, ref = score("float32")
    monkeypatch.setattr(precision, "native_bf16", lambda: "amx_bf16")
    chosen, auto = score("auto")
    assert chosen == "bfloat16"
    assert not torch.equal(auto, ref)
    torch.testing.assert_close(auto, ref, rtol=0.02, atol=0.5)  # returns of about -10..-90
    monkeypatch.setattr(precision, "native_bf16", lambda: None)
    chosen, auto = score("auto")
    assert chosen == "float32" and torch.equal(auto, ref)


def test_the_run_log_names_the_planning_precision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda: None)
    assert main(["run", "--out", str(tmp_path / "run"), *TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (
        "planning precision: float32 (auto: this CPU has no native bf16, where bf16 is slower)"
    )


class _LiveTensors(Callback):
    """Counts live tensors (and their bytes) after every episode."""

    def __init__(self) -> None:
        self.counts: list[tuple[int, int]] = []

    def _on_episode_end(self, experiment: Experiment, row: dict[str, Any]) -> bool:
        gc.collect()
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
        self.counts.append((len(tensors), sum(t.nelement() * t.element_size() for t in tensors)))
        return True


def test_no_tensors_pile_up_across_episodes(tmp_path: Path) -> None:
    """A leak check: after the second planned episode, the live tensors of a run (their
    number and bytes) stay the same from episode to episode; the transitions are kept in
    numpy and on disk, so the data's growth is not in them."""
    overrides = [o for o in TINY if o not in ("--no-progress", "--set")]
    overrides = [o for o in overrides if not o.startswith("experiment.episodes")]
    config = load_config(None, [*overrides, "experiment.episodes=6", "experiment.threads=1"])
    counter = _LiveTensors()
    run_experiment(config, tmp_path / "run", callbacks=[counter])
    assert len(counter.counts) == 6
    assert len({c for c in counter.counts[2:]}) == 1, counter.counts
