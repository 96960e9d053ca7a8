"""GP dynamics scaling: fit + predict time against n for the exact and the sparse GP.

Data: synthetic Pendulum-v1 transitions, uniform random states (theta in [-pi, pi],
theta_dot in [-8, 8]) and actions in [-2, 2] through the true Pendulum-v1 dynamics
(g = 10, dt = 0.05), observed as (cos, sin, theta_dot) with N(0, 0.01^2) noise added
to the next observation, so that a held-out NLL means something.

For each n (1k, 4k, 16k, 64k by default) it times ``fit`` plus ``predict`` and the
analytic held-out log density on 500 fresh transitions, prints a table with the
held-out NLL (nats per transition, summed over the 3 observation dimensions) and
the fitted log-log growth exponent of the time in n for each flavour (total, fit
and predict apart). The exact GP's ``fit`` optimizes its hyperparameters on a fixed
subset of at most 1024 points (50 Adam steps: a cost constant in n once n > 1024);
its ``predict`` includes conditioning on all n points (the Cholesky, cubic in n). The exact
GP runs only up to ``--exact-max`` transitions (default 4096): its conditioning
Cholesky is cubic in n and the 16k case does not fit this shared 2-core machine's
time budget (about 64x the 4k case).

``--throughput`` also times one CEM plan at the planning_throughput workload
(5 iterations x population 350 x 20 particles x horizon 15, ts_inf) through GP
function draws and, in the same run, through the benchmark's ensemble.
``--pendulum`` fits an exact GP on 2 random Pendulum-v1 episodes, reports the
one-step error on a third, held-out episode and times one CEM plan (horizon 30,
population 200, 5 iterations, 5 particles, ts_inf).

Run::

    python experiments/benchmarks/gp_scaling.py [--sizes 1024 4096 16384 65536]
        [--exact-max 4096] [--throughput] [--pendulum]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path

import torch

from bayes_mbrl.data import ReplayBuffer
from bayes_mbrl.envs import get_task
from bayes_mbrl.models.gp import ExactGPDynamics, SparseGPDynamics
from bayes_mbrl.planning import CEMPlanner, RolloutEvaluator

OBS_DIM, ACTION_DIM = 3, 1
NOISE = 0.01
TEST_POINTS = 500


def pendulum_step(
    th: torch.Tensor, thdot: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pendulum-v1's dynamics (gymnasium): ``(theta, theta_dot, u) -> (theta', theta_dot')``."""
    g, m, length, dt = 10.0, 1.0, 1.0, 0.05
    u = u.clamp(-2.0, 2.0)
    new_thdot = thdot + (3 * g / (2 * length) * torch.sin(th) + 3.0 / (m * length**2) * u) * dt
    new_thdot = new_thdot.clamp(-8.0, 8.0)
    return th + new_thdot * dt, new_thdot


def synthetic(n: int, generator: torch.Generator) -> ReplayBuffer:
    """``n`` random Pendulum-v1 transitions with observation noise on the next state."""
    th = (torch.rand(n, generator=generator) * 2 - 1) * math.pi
    thdot = (torch.rand(n, generator=generator) * 2 - 1) * 8
    u = (torch.rand(n, 1, generator=generator) * 2 - 1) * 2
    nth, nthdot = pendulum_step(th, thdot, u[:, 0])
    obs = torch.stack([th.cos(), th.sin(), thdot], -1)
    nxt = torch.stack([nth.cos(), nth.sin(), nthdot], -1)
    nxt = nxt + NOISE * torch.randn(n, OBS_DIM, generator=generator)
    buf = ReplayBuffer(OBS_DIM, ACTION_DIM, n)
    z = torch.zeros(n)
    buf.add(obs, u, z, nxt, z, z)
    return buf


def timed_fit_predict(
    model: ExactGPDynamics | SparseGPDynamics, train: ReplayBuffer, test: ReplayBuffer
) -> tuple[float, float, float]:
    """Fit and predict; returns (fit seconds, predict seconds, held-out NLL per transition)."""
    t0 = time.perf_counter()
    model.fit(train, torch.Generator().manual_seed(0))
    t1 = time.perf_counter()
    b = test.all()
    model.predict(b.obs, b.action)
    nll = -float(model.log_predictive_density(b.obs, b.action, b.next_obs).mean())
    return t1 - t0, time.perf_counter() - t1, nll


def growth_exponent(ns: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(n)."""
    if len(ns) < 2:
        return math.nan
    x = torch.tensor(ns, dtype=torch.float64).log()
    y = torch.tensor(seconds, dtype=torch.float64).log()
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / xc.square().sum())


def scaling(
    sizes: list[int],
    exact_max: int,
    flavours: list[str],
    sparse_epochs: int = 10,
    sparse_min_steps: int = 300,
) -> None:
    """Time fit + predict against n; ``sparse_min_steps=0`` makes the sparse GP's work
    a fixed number of passes over the data (the setting that measures its growth in n)."""
    g = torch.Generator().manual_seed(0)
    test = synthetic(TEST_POINTS, torch.Generator().manual_seed(123))
    rows: dict[str, list[tuple[int, float, float, float]]] = {"exact": [], "sparse": []}
    print(f"{'flavour':>7} {'n':>6} {'fit s':>8} {'predict s':>9} {'total s':>8} {'NLL':>8}")
    for n in sizes:
        train = synthetic(n, g)
        models: list[tuple[str, ExactGPDynamics | SparseGPDynamics]] = []
        if n <= exact_max and "exact" in flavours:
            models.append(
                (
                    "exact",
                    ExactGPDynamics(
                        OBS_DIM,
                        ACTION_DIM,
                        training_steps=50,
                        learning_rate=0.1,
                        hyper_max_points=1024,
                    ),
                )
            )
        if "sparse" in flavours:
            models.append(
                (
                    "sparse",
                    SparseGPDynamics(
                        OBS_DIM, ACTION_DIM, epochs=sparse_epochs, min_steps=sparse_min_steps
                    ),
                )
            )
        for name, model in models:
            fit_s, pred_s, nll = timed_fit_predict(model, train, test)
            rows[name].append((n, fit_s, pred_s, nll))
            print(
                f"{name:>7} {n:>6} {fit_s:8.2f} {pred_s:9.3f} {fit_s + pred_s:8.2f} {nll:8.3f}",
                flush=True,
            )
        if n > exact_max and "exact" in flavours:
            print(f"{'exact':>7} {n:>6}  skipped (n > --exact-max {exact_max}; cubic Cholesky)")
    for name, r in rows.items():
        if len(r) < 2:
            continue
        ns = [x[0] for x in r]
        total = [x[1] + x[2] for x in r]
        print(
            f"{name}: fit+predict time grows as n^{growth_exponent(ns, total):.2f} "
            f"(fit n^{growth_exponent(ns, [x[1] for x in r]):.2f}, predict "
            f"n^{growth_exponent(ns, [x[2] for x in r]):.2f}) over n = {ns}"
        )
    print("held-out NLL (nats/transition, 500 fresh transitions):")
    for n in sizes:
        cells = []
        for name in ("exact", "sparse"):
            hit = [x for x in rows[name] if x[0] == n]
            cells.append(f"{name} {hit[0][3]:8.3f}" if hit else f"{name}      n/a")
        print(f"  n={n:>6}: " + " | ".join(cells))


def _throughput_module() -> object:
    path = Path(__file__).with_name("planning_throughput.py")
    spec = importlib.util.spec_from_file_location("planning_throughput", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def throughput(repeats: int) -> None:
    pt = _throughput_module()
    ensemble = pt.fitted_model("silu")  # type: ignore[attr-defined]
    # the same 400 random Pendulum-like points the benchmark's ensemble is fitted on
    g = torch.Generator().manual_seed(0)
    n = 400
    th = torch.rand(n, generator=g) * 6.28 - 3.14
    obs = torch.stack([th.cos(), th.sin(), torch.randn(n, generator=g)], -1)
    action = torch.rand(n, 1, generator=g) * 4 - 2
    next_obs = obs + 0.05 * torch.randn(n, 3, generator=g)
    buf = ReplayBuffer(OBS_DIM, ACTION_DIM, n)
    buf.add(obs, action, torch.zeros(n), next_obs, torch.zeros(n), torch.zeros(n))
    transitions = pt.ITERATIONS * pt.POPULATION * pt.PARTICLES * pt.HORIZON  # type: ignore[attr-defined]
    print(f"workload: CEM planning_throughput ({transitions} imagined transitions/plan)")
    timers = {"ensemble": pt.plan_seconds(ensemble, "float32")}  # type: ignore[attr-defined]
    for name, model in (
        ("exact GP N=400 F=1024", ExactGPDynamics(OBS_DIM, ACTION_DIM, training_steps=50)),
        (
            "sparse GP M=128 F=1024",
            SparseGPDynamics(OBS_DIM, ACTION_DIM, num_inducing=128, min_steps=100),
        ),
        (
            "exact GP N=400 F=256",
            ExactGPDynamics(OBS_DIM, ACTION_DIM, training_steps=50, num_features=256),
        ),
    ):
        model.fit(buf, torch.Generator().manual_seed(0))
        timers[name] = pt.plan_seconds(model, "float32")  # type: ignore[attr-defined]
    best = {k: math.inf for k in timers}
    for _ in range(repeats):  # interleaved rounds, best of each
        for k, timer in timers.items():
            best[k] = min(best[k], timer())
    for k, s in best.items():
        print(
            f"{k:>24}: plan {s * 1e3:9.1f} ms | {transitions / s / 1e6:6.3f} M transitions/s | "
            f"{s / best['ensemble']:6.2f}x the ensemble's time (best of {repeats})"
        )


def pendulum() -> None:
    import gymnasium as gym

    task = get_task("Pendulum-v1")
    env = gym.make("Pendulum-v1")
    rng = torch.Generator().manual_seed(0)

    def episode(seed: int) -> ReplayBuffer:
        buf = ReplayBuffer(OBS_DIM, ACTION_DIM, 200)
        obs, _ = env.reset(seed=seed)
        for _ in range(200):
            a = (torch.rand(1, generator=rng) * 4 - 2).numpy()
            nxt, r, term, trunc, _ = env.step(a)
            buf.add(obs, a, float(r), nxt, term, trunc)
            obs = nxt
        return buf

    eps = [episode(s) for s in (0, 1, 2)]
    train = ReplayBuffer(OBS_DIM, ACTION_DIM, 400)
    for e in eps[:2]:
        train.add_batch(e.all())
    model = ExactGPDynamics(OBS_DIM, ACTION_DIM)
    report = model.fit(train, torch.Generator().manual_seed(0))
    held = eps[2].all()
    pred = model.predict(held.obs, held.action)
    err = pred.mean - held.next_obs
    rmse = err.square().mean(0).sqrt()
    scale = (held.next_obs - held.obs).std(0)
    nll = -float(model.log_predictive_density(held.obs, held.action, held.next_obs).mean())
    z = (err.square() / pred.total_var).mean(0)
    print(
        "exact GP on 2 random Pendulum-v1 episodes (400 transitions): "
        f"fit {report.wall_seconds:.1f} s"
    )
    print(f"  held-out episode one-step RMSE per dim (cos, sin, thdot): {rmse.tolist()}")
    print(f"  std of the true deltas per dim:                           {scale.tolist()}")
    print(f"  held-out NLL {nll:.3f} nats/transition; mean squared z per dim {z.tolist()}")
    g = torch.Generator().manual_seed(1)
    evaluator = RolloutEvaluator(model, task.reward_fn, 30, 5, "ts_inf", generator=g)
    planner = CEMPlanner(task.action_low, task.action_high, 30, 200, 5, generator=g)
    start = held.obs[0]
    times = []
    for _ in range(3):
        planner.reset()
        t = time.perf_counter()
        planner.plan(lambda a: evaluator(start, a))
        times.append(time.perf_counter() - t)
    print(
        f"  one CEM plan (horizon 30, pop 200, 5 it, 5 particles ts_inf): "
        f"best {min(times):.3f} s of 3, all {[round(x, 3) for x in times]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--exact-max", type=int, default=4096)
    parser.add_argument("--flavours", nargs="+", default=["exact", "sparse"])
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--pendulum", action="store_true")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparse-epochs", type=int, default=10)
    parser.add_argument(
        "--sparse-min-steps",
        type=int,
        default=300,
        help="floor on the sparse GP's optimizer steps; 0 for a fixed-epoch scaling run",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.no_scaling:
        scaling(
            args.sizes, args.exact_max, args.flavours, args.sparse_epochs, args.sparse_min_steps
        )
    if args.throughput:
        throughput(args.repeats)
    if args.pendulum:
        pendulum()


if __name__ == "__main__":
    main()
