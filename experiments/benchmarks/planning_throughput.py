"""Planning throughput of CEM through a probabilistic ensemble, against the machine's matmul rate.

Workload (issue 2): plan one action with CEM, 5 iterations x population 350 x 20
particles x horizon 15, ``ts_inf``, through a 5-member ensemble of Gaussian MLPs
with 4 hidden layers of 200 units (obs 3, action 1; the Pendulum-v1 reward).
``--model ensemble_prior`` is the same ensemble with randomized prior functions of the
members' size (``prior_scale`` 0.1; issue 20's remedy): twice the matmuls per step.
``--model bnn`` runs the same workload through a Bayesian neural network of the same
architecture (one weight draw per particle: 20 functions x 350 rows per matmul instead
of 5 members x 1400 rows, the same FLOPs). ``--model distilled`` runs it through a
student distilled from that ensemble (``model.kind = "distilled"``, hidden widths
``--student-hidden``; one network for every particle). Several models in one call
(``--model ensemble distilled``) are timed in the same run, each against the same
matmul reference, and their speeds compared with the first.

Prints imagined transitions per second and the achieved FLOP/s of the model's
matmuls as a fraction of this machine's batched-matmul FLOP/s at the same shapes,
``torch.bmm`` of (5, 1400, 200) x (5, 200, 200), measured in the same run: the
reference and the plan are timed in interleaved rounds and the best round of each
is kept, so a machine whose speed drifts during the run does not skew the ratio.
A second reference line gives the rate of the same product written into a strided
output (torch then runs one GEMM per member; on 2 CPU threads faster than its batched
kernel, which splits 5 members unevenly): the ensemble's planning path on the CPU
computes that way, so its fraction of the ``bmm`` reference can exceed what the
GEMMs alone would allow against the strided one.

``--device cuda`` times the same workload on a GPU (the ensemble: the models that move
to a device); timers then synchronize the device, and ``--precision tf32`` runs the
float32 plan with TF32 matmuls allowed. ``--cuda-graphs`` also times each model's plan
recorded once as a CUDA graph and replayed (:class:`~bayes_mbrl.planning.GraphPlans`,
what a run does with ``planner.cuda_graphs = true``), as ``MODEL+graph``.

Each plan scores through one :meth:`~bayes_mbrl.planning.RolloutEvaluator.scorer` (the
functions drawn once per plan, the values checked on its first call), as an MPC agent
plans.

Run::

    python experiments/benchmarks/planning_throughput.py [--precision float32 bfloat16]
        [--model ensemble bnn distilled] [--student-hidden 128 128] [--device cuda]
        [--cuda-graphs]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable

import torch

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.devices import device_scope, resolve_device
from bayes_mbrl.envs import get_task
from bayes_mbrl.errors import ModelError
from bayes_mbrl.models import DynamicsModel, ProbabilisticEnsemble
from bayes_mbrl.models.bnn import BayesianNeuralNet
from bayes_mbrl.models.distill import distill
from bayes_mbrl.planning import CEMPlanner, GraphPlans, RolloutEvaluator

MEMBERS, HIDDEN, LAYERS = 5, 200, 4
OBS_DIM, ACTION_DIM = 3, 1
ITERATIONS, POPULATION, PARTICLES, HORIZON = 5, 350, 20, 15


def model_flops_per_transition(hidden: list[int] | None = None, heads: int = 2) -> int:
    """Multiply-adds x 2 of one forward pass through one member (or through a network of
    ``hidden`` widths with ``heads`` output heads of size obs_dim)."""
    hidden = [HIDDEN] * LAYERS if hidden is None else hidden
    sizes = [OBS_DIM + ACTION_DIM, *hidden, heads * OBS_DIM]
    return sum(2 * a * b for a, b in itertools.pairwise(sizes))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timers on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bmm_seconds(
    dtype: torch.dtype, device: torch.device, strided_out: bool = False
) -> Callable[[], float]:
    """Timer of one ``torch.bmm`` (5, 1400, 200) x (5, 200, 200) in ``dtype``, seconds per call.

    ``strided_out``: into the first 200 columns of a (5, 1400, 201) buffer, as the
    ensemble's planning path on the CPU writes (torch then runs one GEMM per member): the
    fastest GEMM rate these shapes reach here, a second reference.
    """
    rows = POPULATION * PARTICLES // MEMBERS
    a = torch.randn(MEMBERS, rows, HIDDEN).to(device, dtype)
    b = torch.randn(MEMBERS, HIDDEN, HIDDEN).to(device, dtype)
    out = torch.empty(MEMBERS, rows, HIDDEN + 1, device=device, dtype=dtype)[..., :HIDDEN]
    n_inner = 20 if dtype == torch.float32 or device.type != "cpu" else 2
    if device.type != "cpu":
        n_inner *= 10

    def timed() -> float:
        synchronize(device)
        t = time.perf_counter()
        for _ in range(n_inner):
            if strided_out:
                torch.bmm(a, b, out=out)
            else:
                torch.bmm(a, b)
        synchronize(device)
        return (time.perf_counter() - t) / n_inner

    timed()  # warm up
    return timed


def fitted_model(
    activation: str, kind: str = "ensemble", student_hidden: list[int] | None = None
) -> DynamicsModel:
    """A model fitted briefly on random Pendulum-like data (weights only matter for realism).

    Args:
        activation: hidden activation.
        kind: ``"ensemble"`` (5 members), ``"ensemble_prior"`` (the same with randomized
            prior functions, ``prior_scale`` 0.1), ``"bnn"`` (mean-field Bayesian neural net) or
            ``"distilled"`` (a student of ``student_hidden`` widths of that ensemble).
    """
    g = torch.Generator().manual_seed(0)
    n = 400
    th = torch.rand(n, generator=g) * 6.28 - 3.14
    obs = torch.stack([th.cos(), th.sin(), torch.randn(n, generator=g)], -1)
    action = torch.rand(n, 1, generator=g) * 4 - 2
    next_obs = obs + 0.05 * torch.randn(n, 3, generator=g)
    buf = ReplayBuffer(OBS_DIM, ACTION_DIM, n)
    buf.add(obs, action, torch.zeros(n), next_obs, torch.zeros(n), torch.zeros(n))
    model: DynamicsModel
    if kind == "bnn":
        model = BayesianNeuralNet(
            OBS_DIM, ACTION_DIM, hidden_sizes=[HIDDEN] * LAYERS, activation=activation, max_epochs=2
        )
    else:
        model = ProbabilisticEnsemble(
            OBS_DIM,
            ACTION_DIM,
            num_members=MEMBERS,
            hidden_sizes=[HIDDEN] * LAYERS,
            activation=activation,
            max_epochs=2,
            prior_scale=0.1 if kind == "ensemble_prior" else 0.0,
        )
    model.fit(buf, g)
    if kind == "distilled":
        widths = student_hidden or [HIDDEN, HIDDEN]
        return distill(model, buf, hidden_sizes=widths, activation=activation, max_epochs=2)
    return model


def plan_seconds(
    model: DynamicsModel, precision: str, device: torch.device, graphs: bool = False
) -> Callable[[], float]:
    """A timer of one CEM plan (5 x 350 x 20 x 15) from a fixed state (seconds per call);
    with ``graphs``, of its replay as a CUDA graph (recorded before the timer returns)."""
    task = get_task("Pendulum-v1")
    g = torch.Generator(device=device).manual_seed(1)
    evaluator = RolloutEvaluator(
        model, task.reward_fn, HORIZON, PARTICLES, "ts_inf", precision=precision, generator=g
    )
    planner = CEMPlanner(
        task.action_low.to(device),
        task.action_high.to(device),
        HORIZON,
        POPULATION,
        ITERATIONS,
        generator=g,
    )
    obs = torch.tensor([1.0, 0.0, 0.0], device=device)
    plans = GraphPlans(planner, evaluator, warmup=1) if graphs else None

    def timed() -> float:
        planner.reset()
        synchronize(device)
        t = time.perf_counter()
        with device_scope(device):
            if plans is not None:
                plans.plan(obs)
            else:
                planner.plan(evaluator.scorer(obs))
        synchronize(device)
        return time.perf_counter() - t

    timed()  # warm up (with graphs: the eager plan before the recording)
    if plans is not None:
        timed()  # recorded, then replayed
        if plans.failure is not None or plans.recordings != 1:
            raise ModelError(f"the plan was not recorded as a CUDA graph: {plans.failure}")
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--activation", default="silu", choices=["silu", "relu", "tanh", "elu"])
    parser.add_argument(
        "--model",
        nargs="+",
        default=["ensemble"],
        choices=["ensemble", "ensemble_prior", "bnn", "distilled"],
    )
    parser.add_argument("--student-hidden", type=int, nargs="+", default=[HIDDEN, HIDDEN])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="also time the plans replayed as CUDA graphs"
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.cuda_graphs and device.type != "cuda":
        parser.error("--cuda-graphs needs --device cuda (CUDA graphs record GPU work)")
    torch.manual_seed(0)
    transitions = ITERATIONS * POPULATION * PARTICLES * HORIZON
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, device {device} ({where}), threads "
        f"{torch.get_num_threads()}, activation {args.activation}, models {args.model}"
    )
    print(
        f"workload: CEM {ITERATIONS} it x pop {POPULATION} x {PARTICLES} particles x "
        f"horizon {HORIZON} = {transitions} imagined transitions/plan"
    )
    models = {k: fitted_model(args.activation, k, args.student_hidden) for k in args.model}
    if device.type != "cpu":
        models = {k: m.to(device) for k, m in models.items() if k.startswith("ensemble")}
    per_transition = {
        "ensemble": model_flops_per_transition(),
        # the member and its prior net (whose output is the mean only)
        "ensemble_prior": model_flops_per_transition() + model_flops_per_transition(heads=1),
        "bnn": model_flops_per_transition(),
        "distilled": model_flops_per_transition(args.student_hidden, 3),
    }
    for precision in args.precision:
        # tf32: float32 tensors, TF32 tensor-core matmuls (on a GPU)
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        plan_precision = "float32" if precision == "tf32" else precision
        dtype = getattr(torch, plan_precision)
        ref_timer = bmm_seconds(dtype, device)
        strided_timer = bmm_seconds(dtype, device, strided_out=True)
        timers = {}
        for k, model in models.items():
            for graphs in (False, True) if args.cuda_graphs else (False,):
                name = f"{k}+graph" if graphs else k
                try:
                    timers[name] = plan_seconds(model, plan_precision, device, graphs)
                except ModelError as exc:
                    print(f"{precision:>9}: {name} skipped ({exc})")
        rounds = args.repeats if precision == "float32" or device.type != "cpu" else 1
        # interleave the reference and the planners so all see the same machine state;
        # the best round of each is kept
        ref_s = strided_s = math.inf
        best = dict.fromkeys(timers, math.inf)
        for _ in range(rounds):
            ref_s = min(ref_s, ref_timer())
            strided_s = min(strided_s, strided_timer())
            for k, timer in timers.items():
                best[k] = min(best[k], timer())
        gemm_flops = 2 * MEMBERS * (POPULATION * PARTICLES // MEMBERS) * HIDDEN * HIDDEN
        ref, strided = gemm_flops / ref_s, gemm_flops / strided_s
        first = next(iter(best.values()), math.inf)
        for k, plan_s in best.items():
            achieved = transitions * per_transition[k.removesuffix("+graph")] / plan_s
            print(
                f"{precision:>9} {k:>9}: plan {plan_s * 1e3:8.1f} ms | "
                f"{transitions / plan_s / 1e6:6.3f} M transitions/s "
                f"({first / plan_s:.2f}x the first) | {per_transition[k]} FLOP/transition | "
                f"{achieved / 1e9:6.1f} GFLOP/s | bmm reference {ref / 1e9:6.1f} GFLOP/s | "
                f"fraction {achieved / ref:.2f}  (best of {rounds} interleaved rounds)"
            )
        print(
            f"{precision:>9} per-member GEMM reference (bmm into a strided output) "
            f"{strided / 1e9:6.1f} GFLOP/s = {strided / ref:.2f}x the bmm reference"
        )


if __name__ == "__main__":
    main()
