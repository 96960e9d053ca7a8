"""iCEM (``planner.kind = "icem"``): decaying population, colored samples, kept
elites within a plan and across time steps, the mean scored last, the best returned."""

from __future__ import annotations

import math

import pytest
import torch

from bayes_mbrl.config import load_config
from bayes_mbrl.errors import ConfigError
from bayes_mbrl.planning import PLANNERS
from bayes_mbrl.planning.optimizers import ICEMPlanner

LOW, HIGH = torch.tensor([-1.0]), torch.tensor([1.0])


def _planner(**kw: object) -> ICEMPlanner:
    args: dict[str, object] = {"population": 100, "iterations": 3, "generator": None}
    args.update(kw)
    args["generator"] = torch.Generator().manual_seed(0)
    return ICEMPlanner(LOW, HIGH, 20, **args)  # type: ignore[arg-type]


def test_population_decays_and_kept_elites_and_mean_join() -> None:
    planner = _planner()
    assert planner.sizes() == [100, 80, 64]
    seen: list[torch.Tensor] = []

    def score(a: torch.Tensor) -> torch.Tensor:
        seen.append(a.clone())
        return -(a**2).sum((1, 2))

    planner.plan(score)
    kept = planner.num_kept
    assert kept == 3  # 30% of 10 elites
    assert planner.last_sizes == [100, 80 + kept, 64 + kept + 1]
    # the last candidate of the last iteration is the mean of the sampling distribution
    assert [len(s) for s in seen] == planner.last_sizes


def test_samples_are_colored_along_the_horizon() -> None:
    lag1 = {}
    for beta in (0.0, 2.0):
        planner = _planner(noise_beta=beta, population=2000, iterations=1, init_std_fraction=0.1)
        seen: list[torch.Tensor] = []

        def score(a: torch.Tensor, seen: list[torch.Tensor] = seen) -> torch.Tensor:
            seen.append(a.clone())
            return -(a**2).sum((1, 2))

        planner.plan(score)
        x = seen[0][:2000, :, 0]  # inside the bounds: std 0.2 around 0
        x = x - x.mean(1, keepdim=True)
        lag1[beta] = float((x[:, 1:] * x[:, :-1]).mean() / (x**2).mean())
    assert abs(lag1[0.0]) < 0.1 and lag1[2.0] > 0.6


def test_finds_a_smooth_target_better_with_colored_samples() -> None:
    """A smooth optimum (what dynamics make of plans): red samples get closer than white
    ones in the same budget, and the plan returned is the best sequence scored."""
    target = (0.6 * torch.sin(torch.linspace(0, math.pi, 20)))[:, None]

    def score(a: torch.Tensor) -> torch.Tensor:
        return -((a - target) ** 2).sum((1, 2))

    values = {}
    for beta in (0.0, 2.0):
        vals = []
        for seed in range(3):
            planner = ICEMPlanner(
                LOW, HIGH, 20, population=200, iterations=6, noise_beta=beta,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            result = planner.plan(score)
            assert result.value == pytest.approx(float(score(result.actions[None])[0]))
            if beta == 2.0:
                assert float((result.actions - target).abs().max()) < 0.2
            vals.append(result.value)
        values[beta] = sum(vals) / 3
    assert values[2.0] > values[0.0]


def test_elites_are_shifted_into_the_next_plan() -> None:
    planner = _planner()
    planner.plan(lambda a: -(a**2).sum((1, 2)))
    elites = planner._elites
    assert elites is not None
    planner.advance(1)
    shifted = torch.cat([elites[:, 1:], torch.zeros(len(elites), 1, 1)], dim=1)
    seen: list[torch.Tensor] = []
    planner.plan(lambda a: seen.append(a.clone()) or -(a**2).sum((1, 2)))
    first = seen[0]
    assert torch.equal(first[100 : 100 + planner.num_kept], shifted[: planner.num_kept])
    planner.reset()
    assert planner._elites is None


def test_built_from_a_config_and_bad_settings_are_named() -> None:
    sets = ["planner.kind=icem", "planner.icem_noise_beta=3.0", "planner.icem_keep_fraction=0.5"]
    cfg = load_config(None, sets).planner
    planner = PLANNERS["icem"].from_config(cfg, LOW, HIGH)
    assert isinstance(planner, ICEMPlanner)
    # 10% of the default population of 100 are elites; half of them are kept
    assert planner.noise_beta == 3.0 and planner.num_kept == round(0.5 * 0.1 * cfg.population)
    with pytest.raises(ConfigError, match="icem_population_decay"):
        load_config(None, ["planner.icem_population_decay=0.5"])
    with pytest.raises(ConfigError, match="keep_fraction"):
        ICEMPlanner(LOW, HIGH, 5, keep_fraction=1.5)
