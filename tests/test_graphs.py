"""Plans recorded as CUDA graphs (:mod:`bayes_mbrl.planning.graphs`): the capturable
searches copy nothing to the host (checked on the CPU, counting the calls that would
make a GPU wait), :class:`GraphPlans` replays what the eager planner plans (checked
with a recorder that replays by searching again), and on a GPU only, runs with and
without graphs agree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bayes_mbrl.config import load_config
from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import get_task
from bayes_mbrl.errors import ConfigError, DataError
from bayes_mbrl.experiment import run_experiment
from bayes_mbrl.models import ProbabilisticEnsemble, ensemble
from bayes_mbrl.planning import (
    OBJECTIVES,
    GraphPlans,
    Planner,
    PlanResult,
    RolloutEvaluator,
    Searched,
    make_objective,
)
from bayes_mbrl.planning.imagine import skip_host_checks
from bayes_mbrl.planning.lqr import ILQRPlanner
from bayes_mbrl.planning.optimizers import (
    CEMPlanner,
    ICEMPlanner,
    MPPIPlanner,
    RandomShootingPlanner,
)
from tests.test_devices import TINY_MPC

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PLANNERS = {
    "cem": CEMPlanner,
    "icem": ICEMPlanner,
    "mppi": MPPIPlanner,
    "random_shooting": RandomShootingPlanner,
}

#: the Tensor methods that copy a value to the host (on a GPU each one waits for the
#: queue; inside a CUDA graph recording each one is an error)
_TENSOR_SYNCS = (
    "__bool__", "item", "__float__", "__int__", "__index__", "tolist", "nonzero", "numpy",
    "equal",
)  # fmt: skip


def _model(members: int = 2, prior_scale: float = 0.0) -> ProbabilisticEnsemble:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(64, 3, generator=g)
    action = torch.rand(64, 1, generator=g) * 4 - 2
    buf = ReplayBuffer(3, 1, 64)
    buf.add(obs, action, torch.zeros(64), obs + 0.1 * action, torch.zeros(64), torch.zeros(64))
    model = ProbabilisticEnsemble(
        3, 1, num_members=members, hidden_sizes=[8], max_epochs=1, prior_scale=prior_scale
    )
    model.fit(buf, torch.Generator().manual_seed(0))
    return model


def _setup(
    kind: str, propagation: str, precision: str = "float32", seed: int = 1
) -> tuple[Planner, RolloutEvaluator, torch.Generator]:
    task = get_task("Pendulum-v1")
    g = torch.Generator().manual_seed(seed)
    evaluator = RolloutEvaluator(
        _model(), task.reward_fn, 6, 4, propagation, precision=precision, generator=g
    )
    planner = PLANNERS[kind](task.action_low, task.action_high, 6, population=24, generator=g)
    return planner, evaluator, g


def _host_syncs(monkeypatch: pytest.MonkeyPatch, run: Callable[[], object]) -> int:
    calls = [0]
    with monkeypatch.context() as patch:
        for name in _TENSOR_SYNCS:
            method = getattr(torch.Tensor, name)

            def counted(self: torch.Tensor, *a: object, _method: object = method, **k: object):
                calls[0] += 1
                return _method(self, *a, **k)  # type: ignore[operator]

            patch.setattr(torch.Tensor, name, counted)
        # torch.equal reads a result on the host; torch.tensor and torch.as_tensor of
        # Python data copy from the host (from pageable memory: not allowed in a recording)
        for name in ("equal", "tensor", "as_tensor"):
            function = getattr(torch, name)

            def counted_function(*a: object, _function: object = function, **k: object):
                calls[0] += 1
                return _function(*a, **k)  # type: ignore[operator]

            patch.setattr(torch, name, counted_function)
        run()
    return calls[0]


def _search_syncs(
    monkeypatch: pytest.MonkeyPatch, planner: Planner, evaluator: RolloutEvaluator
) -> int:
    """Host syncs of one search from a fixed state after an eager plan (as before a
    recording: it checks the inputs; on the CPU the model finds its activation's fixed
    point once; iCEM then carries elites), with the host checks off."""
    obs = torch.tensor([1.0, 0.0, 0.0])
    planner.plan(evaluator.scorer(obs))
    planner.advance(1)

    def search() -> Searched:
        with skip_host_checks():
            return planner.search(evaluator.scorer(obs), *planner.search_inputs())

    return _host_syncs(monkeypatch, search)


@pytest.mark.parametrize("kind", list(PLANNERS))
@pytest.mark.parametrize("propagation", ["ts_inf", "ts_1", "expectation"])
@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_a_capturable_search_copies_nothing_to_the_host(
    monkeypatch: pytest.MonkeyPatch, kind: str, propagation: str, path: str
) -> None:
    """The whole search of a plan (drawing the functions, every iteration, every
    imagined step, the planner's updates) makes no host sync with the host checks off:
    what a CUDA graph recording requires. The second plan also carries iCEM's elites.
    ``gpu``: the ensemble computes as it does on a GPU (``baddbmm`` per layer, not the
    CPU's bias-row path)."""
    if path == "gpu":
        monkeypatch.setattr(ensemble, "_BiasRowMLP", lambda *args: None)
    planner, evaluator, _ = _setup(kind, propagation)
    drawn = evaluator.scorer(torch.zeros(3))._prepared
    assert (drawn._fast is None) == (path == "gpu")
    assert planner.capturable
    for _ in range(2):  # the second search carries iCEM's elites
        assert _search_syncs(monkeypatch, planner, evaluator) == 0
    obs = torch.tensor([1.0, 0.0, 0.0])
    # the counter sees a sync: the eager plan checks its inputs and copies its value out
    assert _host_syncs(monkeypatch, lambda: planner.plan(evaluator.scorer(obs))) > 0


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_scores_without_host_syncs(
    monkeypatch: pytest.MonkeyPatch, objective: str
) -> None:
    planner, evaluator, _ = _setup("cem", "ts_inf")
    evaluator.objective = make_objective(objective, 1.0, 0.25)
    assert _search_syncs(monkeypatch, planner, evaluator) == 0


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_the_ensemble_with_priors_searches_without_host_syncs(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    if path == "gpu":
        monkeypatch.setattr(ensemble, "_BiasRowMLP", lambda *args: None)
    task = get_task("Pendulum-v1")
    model = _model(prior_scale=0.1)
    g = torch.Generator().manual_seed(1)
    evaluator = RolloutEvaluator(model, task.reward_fn, 6, 4, "ts_inf", generator=g)
    planner = ICEMPlanner(task.action_low, task.action_high, 6, population=24, generator=g)
    assert _search_syncs(monkeypatch, planner, evaluator) == 0


def test_the_bfloat16_search_copies_nothing_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    planner, evaluator, _ = _setup("icem", "ts_inf", precision="bfloat16")
    assert _search_syncs(monkeypatch, planner, evaluator) == 0


class _SearchAgain:
    """A recorder for the CPU: "recording" draws nothing (the generator's state is put
    back, as a CUDA graph recording draws nothing), and a replay runs the search again
    on the same input buffers, writing into the same output tensors, as a graph does."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.eager_plans = 0

    def eager(self, plan: Callable[[], PlanResult]) -> PlanResult:
        self.eager_plans += 1
        return plan()

    def record(self, search: Callable[[], Searched]) -> tuple[Callable[[], None], Searched]:
        state = self.generator.get_state()
        out = search()
        self.generator.set_state(state)

        def replay() -> None:
            fresh = search()
            out.actions.copy_(fresh.actions)
            out.value.copy_(fresh.value)
            out.history.copy_(fresh.history)
            if out.spread is not None and fresh.spread is not None:
                out.spread.copy_(fresh.spread)
            for k, v in fresh.state.items():
                out.state[k].copy_(v)

        return replay, out


@pytest.mark.parametrize("kind", list(PLANNERS))
def test_graph_plans_replay_what_the_eager_planner_plans(kind: str) -> None:
    """Two episodes of plans from moving states, reseeded before each plan as a run
    does: the recorded plans equal the eager planner's bit for bit (the state, the warm
    start and iCEM's carried elites reach the recording through its buffers; the warm
    start and the elites are kept after a replay; a reset drops the recordings)."""
    eager, eager_eval, eager_gen = _setup(kind, "ts_inf")
    graphed, graphed_eval, graphed_gen = _setup(kind, "ts_inf")
    recorder = _SearchAgain(graphed_gen)
    plans = GraphPlans(graphed, graphed_eval, recorder=recorder, warmup=1)
    for episode in range(2):
        eager.reset()
        graphed.reset()
        plans.reset()
        for step in range(5):
            seed = 100 * episode + step
            obs = torch.tensor([1.0 - 0.1 * step, 0.3 * step, -0.2])
            eager_gen.manual_seed(seed)
            want = eager.plan(eager_eval.scorer(obs))
            graphed_gen.manual_seed(seed)
            got = plans.plan(obs)
            assert torch.equal(got.actions, want.actions)
            assert got.value == want.value and got.iteration_values == want.iteration_values
            assert (got.action_std is None) == (want.action_std is None)
            if want.action_std is not None:
                assert got.action_std is not None
                assert torch.equal(got.action_std, want.action_std)
            assert getattr(graphed, "last_sizes", None) == getattr(eager, "last_sizes", None)
            eager.advance(1)
            graphed.advance(1)
    # iCEM's first plan of an episode (no elites carried) is its own shape: one eager
    # plan per episode never reaches a recording; the others record once per episode
    assert plans.recordings == 2
    assert plans.replays == 2 * (5 - 1 - (kind == "icem"))
    assert recorder.eager_plans == 2 * (1 + (kind == "icem"))
    assert plans.failure is None


@pytest.mark.parametrize("mode", ["mpc", "v1.0"])
def test_an_mpc_agent_with_graph_plans_acts_as_without(mode: str) -> None:
    """The agent's path through :class:`GraphPlans` (plan, keep the plan's actions,
    advance, reset each episode) gives the actions the eager agent gives, replanning
    every step (``mpc``) or every horizon (``v1.0``)."""
    from bayes_mbrl.algorithms.mpc import MPCAgent

    agents = []
    for graphs in (False, True):
        planner, evaluator, g = _setup("icem", "ts_inf")
        plans = GraphPlans(planner, evaluator, recorder=_SearchAgain(g), warmup=1)
        agents.append(MPCAgent(planner, evaluator, mode, graphs=plans if graphs else None))
    eager, graphed = agents
    for episode in range(2):
        eager.reset()
        graphed.reset()
        for step in range(14):
            obs = torch.tensor([1.0 - 0.05 * step, 0.2 * episode, 0.1 * step])
            assert torch.equal(graphed.act(obs), eager.act(obs)), (episode, step)
    assert graphed.graphs is not None and graphed.graphs.replays > 0


def test_a_failed_recording_leaves_planning_eager() -> None:
    planner, evaluator, g = _setup("cem", "ts_inf")

    class Broken(_SearchAgain):
        def record(self, search: Callable[[], Searched]) -> tuple[Callable[[], None], Searched]:
            raise RuntimeError("operation not permitted when stream is capturing")

    recorder = Broken(g)
    plans = GraphPlans(planner, evaluator, recorder=recorder, warmup=1)
    obs = torch.tensor([1.0, 0.0, 0.0])
    plans.plan(obs)
    with pytest.warns(RuntimeWarning, match="stays eager.*cuda_graphs = false"):
        plans.plan(obs)
    assert plans.failure is not None and "not permitted" in plans.failure
    plans.plan(obs)
    assert recorder.eager_plans == 3 and plans.recordings == 0


def test_graph_plans_and_searches_refuse_bad_input_by_name() -> None:
    planner, evaluator, g = _setup("icem", "ts_inf")
    plans = GraphPlans(planner, evaluator, recorder=_SearchAgain(g), warmup=1)
    with pytest.raises(DataError, match=r"shape \(3,\), got \(2,\)"):
        plans.plan(torch.zeros(2))
    with pytest.raises(DataError, match=r"shape \(3,\), got list"):
        plans.plan([1.0, 0.0, 0.0])  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"NaN or inf.*finite observation"):
        plans.plan(torch.tensor([1.0, float("nan"), 0.0]))
    assert plans.recordings == 0 and plans.replays == 0  # nothing was planned
    score = evaluator.scorer(torch.zeros(3))
    with pytest.raises(ConfigError, match=r"takes the 2 tensor\(s\) of search_inputs\(\)"):
        planner.search(score, planner.initial_mean())
    with pytest.raises(DataError, match=r"warm start must have shape \(6, 1\), got \(5, 1\)"):
        planner.search(score, torch.zeros(5, 1), None)


def test_graph_plans_refuse_a_planner_that_cannot_be_recorded() -> None:
    task = get_task("Pendulum-v1")
    evaluator = RolloutEvaluator(_model(), task.reward_fn, 6, 4, "ts_inf")
    ilqr = ILQRPlanner(task.action_low, task.action_high, 6)
    assert not ilqr.capturable
    with pytest.raises(ConfigError, match="cuda_graphs = false"):
        GraphPlans(ilqr, evaluator)


def test_cuda_graphs_are_off_the_run_log_on_the_cpu() -> None:
    from bayes_mbrl.algorithms.base import build_algorithm

    config = load_config(None, ["model.num_members=2", "model.hidden_sizes=[8]"])
    parts = build_algorithm(config, get_task("Pendulum-v1"), torch.Generator().manual_seed(0))
    assert parts.agent.graphs is None  # type: ignore[attr-defined]
    assert not any("CUDA graph" in n for n in parts.notes)


# ------------------------------------------------------------------ on a GPU only
TINY = [*TINY_MPC, "experiment.device=cuda"]


@cuda
@pytest.mark.parametrize("kind", ["icem", "cem"])
def test_a_run_with_cuda_graphs_equals_the_eager_run(tmp_path: Path, kind: str) -> None:
    graphed = run_experiment(load_config(None, [*TINY, f"planner.kind={kind}"]), tmp_path / "g")
    eager = run_experiment(
        load_config(None, [*TINY, f"planner.kind={kind}", "planner.cuda_graphs=false"]),
        tmp_path / "e",
    )
    assert graphed.returns == eager.returns
    assert (graphed.run_dir / "transitions.f32").read_bytes() == (
        eager.run_dir / "transitions.f32"
    ).read_bytes()


@cuda
def test_graph_plans_record_and_replay_on_the_gpu() -> None:
    model = _model()
    model.to("cuda")
    task = get_task("Pendulum-v1")
    g = torch.Generator(device="cuda").manual_seed(0)
    evaluator = RolloutEvaluator(model, task.reward_fn, 6, 4, "ts_inf", generator=g)
    low, high = task.action_low.cuda(), task.action_high.cuda()
    planner = ICEMPlanner(low, high, 6, population=24, generator=g)
    eager = ICEMPlanner(low, high, 6, population=24, generator=g)
    plans = GraphPlans(planner, evaluator, warmup=1)
    obs = torch.tensor([1.0, 0.0, 0.0], device="cuda")
    with torch.device("cuda"):
        for step in range(5):
            g.manual_seed(step)
            want = eager.plan(evaluator.scorer(obs))
            g.manual_seed(step)
            got = plans.plan(obs)
            assert torch.equal(got.actions, want.actions), step
            eager.advance(1)
            planner.advance(1)
    assert plans.failure is None and plans.recordings == 1 and plans.replays == 3
