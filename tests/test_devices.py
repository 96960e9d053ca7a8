"""``experiment.device``: the CPU path unchanged, device-independent checkpoints, and (on
a machine with CUDA only) whole runs on the GPU that repeat bit for bit and resume on the
CPU."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from bayes_mbrl.config import load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.devices import PlanRandomness, randn_like_on, resolve_device, state_to_cpu
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.experiment import resume_experiment, run_experiment
from bayes_mbrl.models import ProbabilisticEnsemble
from bayes_mbrl.runs import read_run_config
from tests.tiny_runs import StopAfter

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY_MPC = [
    "experiment.episodes=3",
    "experiment.seed_episodes=1",
    "experiment.progress=false",
    "experiment.threads=1",
    "env.episode_length=15",
    "model.hidden_sizes=[16, 16]",
    "model.num_members=2",
    "model.max_epochs=3",
    "planner.horizon=5",
    "planner.population=20",
    "planner.iterations=2",
    "planner.particles=2",
]


def test_plan_randomness_on_the_cpu_is_the_master_generator() -> None:
    # CPU runs draw exactly what they drew before devices existed
    master = torch.Generator().manual_seed(3)
    randomness = PlanRandomness(master, torch.device("cpu"))
    assert randomness.generator is master
    before = master.get_state()
    randomness.reseed()
    assert torch.equal(master.get_state(), before)  # reseeding consumes nothing on the CPU


def test_randn_like_on_draws_what_torch_randn_draws() -> None:
    like = torch.zeros(4, 3, dtype=torch.float64)
    a = randn_like_on(like, torch.Generator().manual_seed(5))
    b = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(a, b) and a.dtype == torch.float64


def test_state_to_cpu_walks_containers() -> None:
    state = {"a": [torch.ones(2), (torch.zeros(1), 3)], "b": "x", "c": {"d": torch.ones(1)}}
    out = state_to_cpu(state)
    assert out["b"] == "x" and out["a"][1][1] == 3
    assert torch.equal(out["a"][0], torch.ones(2)) and out["a"][0].device.type == "cpu"
    assert isinstance(out["a"][1], tuple) and torch.equal(out["c"]["d"], torch.ones(1))


def test_resolve_device_names_the_fix() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"sees no CUDA device.*experiment\.device = 'cpu'"):
            resolve_device("cuda")


def test_resume_on_another_device_is_recorded(tmp_path: Path) -> None:
    config = load_config(None, TINY_MPC)
    run_dir = tmp_path / "run"
    run_experiment(config, run_dir, callbacks=[StopAfter(2)])
    result = resume_experiment(run_dir, progress=False, device="cpu")
    assert len(result.returns) == 3 and all(math.isfinite(r) for r in result.returns)
    assert read_run_config(run_dir).experiment.device == "cpu"


#: the Tensor methods that copy a value to the host: on a GPU each one waits for the queue
_HOST_SYNCS = (
    "__bool__", "item", "__float__", "__int__", "__index__", "tolist", "nonzero", "numpy"
)  # fmt: skip


def _in_a_rollout() -> bool:
    """Whether the caller runs inside the imagined rollout (``imagine.rollout``)."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "rollout" and code.co_filename.endswith("imagine.py"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _rollout_host_syncs(
    monkeypatch: pytest.MonkeyPatch, planner_cls: type, propagation: str, horizon: int
) -> int:
    """How many host-sync calls the imagined rollouts of one plan make, through a small
    ensemble (CPU tensors: the calls that would make a GPU wait are the same ones)."""
    from bayes_mbrl.envs import get_task
    from bayes_mbrl.planning import RolloutEvaluator

    model = ProbabilisticEnsemble(3, 1, num_members=2, hidden_sizes=[8], max_epochs=1)
    model.fit(_data(), torch.Generator().manual_seed(0))
    task = get_task("Pendulum-v1")
    g = torch.Generator().manual_seed(1)
    evaluator = RolloutEvaluator(model, task.reward_fn, horizon, 4, propagation, generator=g)
    planner = planner_cls(task.action_low, task.action_high, horizon, population=16, generator=g)
    score = evaluator.scorer(torch.tensor([1.0, 0.0, 0.0]))
    calls = [0]
    with monkeypatch.context() as patch:
        for name in _HOST_SYNCS:
            method = getattr(torch.Tensor, name)

            def counted(self: torch.Tensor, *a: object, _method: object = method, **k: object):
                calls[0] += _in_a_rollout()
                return _method(self, *a, **k)  # type: ignore[operator]

            patch.setattr(torch.Tensor, name, counted)
        planner.plan(score)
    return calls[0]


@pytest.mark.parametrize("planner", ["cem", "icem", "mppi", "random"])
@pytest.mark.parametrize("propagation", ["ts_inf", "ts_1", "expectation"])
def test_no_host_sync_inside_the_horizon_loop(
    monkeypatch: pytest.MonkeyPatch, planner: str, propagation: str
) -> None:
    """The imagined rollouts of a plan copy nothing to the host after their first step
    (whose reward is checked once): their host syncs do not grow with the horizon, so on
    a GPU the horizon loop only queues kernels."""
    from bayes_mbrl.planning.optimizers import (
        CEMPlanner,
        ICEMPlanner,
        MPPIPlanner,
        RandomShootingPlanner,
    )

    cls = {
        "cem": CEMPlanner,
        "icem": ICEMPlanner,
        "mppi": MPPIPlanner,
        "random": RandomShootingPlanner,
    }[planner]
    short = _rollout_host_syncs(monkeypatch, cls, propagation, 3)
    long = _rollout_host_syncs(monkeypatch, cls, propagation, 12)
    assert short > 0  # the counter sees the first step's check
    assert long == short


# ------------------------------------------------------------------ on a GPU only
def _data(n: int = 64) -> ReplayBuffer:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, 3, generator=g)
    action = torch.rand(n, 1, generator=g) * 4 - 2
    buf = ReplayBuffer(3, 1, n)
    buf.add(obs, action, torch.zeros(n), obs + 0.1 * action, torch.zeros(n), torch.zeros(n))
    return buf


@cuda
def test_ensemble_fits_and_predicts_on_the_gpu_as_on_the_cpu() -> None:
    def fitted(device: str) -> ProbabilisticEnsemble:
        model = ProbabilisticEnsemble(3, 1, num_members=2, hidden_sizes=[16], max_epochs=5)
        model.to(device)
        model.fit(_data(), torch.Generator().manual_seed(1))
        return model

    cpu, gpu = fitted("cpu"), fitted("cuda")
    assert gpu.device.type == "cuda"
    x, u = torch.randn(2, 5, 3), torch.rand(2, 5, 1)
    mean_cpu = cpu.posterior_functions()(x, u).mean
    mean_gpu = gpu.posterior_functions()(x.cuda(), u.cuda()).mean
    assert torch.allclose(mean_cpu, mean_gpu.cpu(), atol=1e-4)


@cuda
def test_a_gpu_run_repeats_bit_for_bit_and_resumes_on_the_cpu(tmp_path: Path) -> None:
    config = load_config(None, [*TINY_MPC, "experiment.device=cuda"])
    first = run_experiment(config, tmp_path / "a")
    second = run_experiment(config, tmp_path / "b")
    assert first.returns == second.returns
    assert (first.run_dir / "transitions.f32").read_bytes() == (
        second.run_dir / "transitions.f32"
    ).read_bytes()
    run_dir = tmp_path / "c"
    run_experiment(config, run_dir, callbacks=[StopAfter(2)])
    resumed = resume_experiment(run_dir, progress=False, device="cpu")
    assert len(resumed.returns) == 3 and all(math.isfinite(r) for r in resumed.returns)
    assert resumed.returns[:2] == first.returns[:2]
