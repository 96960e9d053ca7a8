"""The shared store of MCMC draws: chain-major layout, thinning and draw selection against
hand-computed indices, finiteness, persistence, and one real NUTS chain's progress."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.posterior_draws import (
    SAMPLE_STATS,
    NutsChain,
    PosteriorDraws,
    chain_diagnostics,
    run_nuts_chain,
)


def _store(chains: int = 2, per_chain: int = 5) -> PosteriorDraws:
    """Draw ``j`` of chain ``c`` has value ``10 c + j`` at site "a" (and a (2,) site "v")."""
    store = PosteriorDraws()
    store.set_chains(
        [
            {
                "a": 10.0 * c + torch.arange(per_chain, dtype=torch.float32),
                "v": torch.full((per_chain, 2), float(c)),
            }
            for c in range(chains)
        ]
    )
    return store


def test_chains_are_stored_chain_major() -> None:
    store = _store()
    assert store.num_chains == 2 and store.total == 10 and store.per_chain == 5
    assert store.samples["a"].tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    assert store.samples["v"].shape == (10, 2)


@pytest.mark.parametrize(
    ("num_draws", "expected"),
    [
        (None, list(range(10))),
        (4, [0, 4, 5, 9]),  # 2 per chain at linspace(0, 4, 2) = [0, 4]
        (6, [0, 2, 4, 5, 7, 9]),  # 3 per chain at [0, 2, 4]
        (7, [0, 2, 4, 5, 7, 9]),  # 7 // 2 = 3 per chain
        (1, [0, 5]),  # at least one per chain
        (100, list(range(10))),  # at most every draw
    ],
)
def test_thinning_is_even_within_each_chain(num_draws: int | None, expected: list[int]) -> None:
    assert _store().thinned_index(num_draws).tolist() == expected


def test_draws_without_replacement_up_to_the_total_then_with() -> None:
    store = _store()
    idx = store.draw_index(10, torch.Generator().manual_seed(3))
    assert sorted(idx.tolist()) == list(range(10))  # a permutation: no repeats
    assert idx.tolist() == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    few = store.draw_index(4, torch.Generator().manual_seed(3))
    assert few.tolist() == idx[:4].tolist()
    many = store.draw_index(25, torch.Generator().manual_seed(3))
    assert (
        many.tolist()
        == torch.randint(10, (25,), generator=torch.Generator().manual_seed(3)).tolist()
    )
    assert store.take(few)["a"].tolist() == store.samples["a"][few].tolist()
    with pytest.raises(DataError, match="must be >= 1, got 0"):
        store.draw_index(0)
    with pytest.raises(ModelError, match="no posterior draws"):
        PosteriorDraws().draw_index(1)


def test_non_finite_draws_are_refused_and_the_previous_ones_kept() -> None:
    store = _store()
    before = store.samples["a"].clone()
    bad = [{"a": torch.tensor([1.0, math.nan]), "v": torch.zeros(2, 2)}]
    with pytest.raises(ModelError, match=r"non-finite samples of 'a'; the previous .*kept\. Try"):
        store.set_chains(bad, fix="Try this")
    assert torch.equal(store.samples["a"], before) and store.num_chains == 2


def test_run_chains_runs_each_chain_in_order_and_keeps_named_sites() -> None:
    order: list[int] = []

    def chain(c: int) -> dict[str, Tensor]:
        order.append(c)
        return {"a": torch.full((2,), float(c)), "skip": torch.zeros(2)}

    store = PosteriorDraws()
    store.run_chains(3, chain, names=["a"])
    assert order == [0, 1, 2]
    assert list(store.samples) == ["a"] and store.samples["a"].tolist() == [0, 0, 1, 1, 2, 2]


def test_state_dict_round_trip_and_malformed_states() -> None:
    store = _store()
    state = store.state_dict()
    state["samples"]["a"].add_(1000)  # a copy: the store is not changed through it
    assert store.samples["a"][0] == 0
    other = PosteriorDraws()
    other.load_state_dict(_store().state_dict())
    assert torch.equal(other.samples["v"], store.samples["v"]) and other.num_chains == 2
    with pytest.raises(ValueError, match="do not split into 3 chains"):
        other.load_state_dict({"samples": {"a": torch.zeros(10)}, "num_chains": 3})
    with pytest.raises(ValueError, match="tensors"):
        other.load_state_dict({"samples": {"a": [1, 2]}, "num_chains": 1})
    assert other.num_chains == 2 and other.total == 10


def test_run_nuts_chain_reports_every_iteration() -> None:
    from pyro.infer import NUTS

    calls: list[tuple[int, float, float]] = []
    kernel = NUTS(potential_fn=lambda p: 0.5 * (p["x"] ** 2).sum(), max_tree_depth=3)
    torch.manual_seed(0)
    draws, stats = run_nuts_chain(
        kernel,
        num_samples=4,
        warmup_steps=3,
        initial_params={"x": torch.zeros(2)},
        progress=lambda *a: calls.append(a),
        first_step=7,
        num_transitions=2,
    )
    assert draws["x"].shape == (4, 2)
    assert list(stats) == list(SAMPLE_STATS) and all(v.shape == (4,) for v in stats.values())
    # lp is minus the potential energy of each draw
    energy = 0.5 * (draws["x"] ** 2).sum(-1)
    torch.testing.assert_close(stats["lp"], -energy.double(), rtol=1e-6, atol=1e-6)
    assert [c[0] for c in calls] == list(range(7, 14))
    # the reported loss is the current state's potential energy per transition
    last = draws["x"][-1]
    assert calls[-1][1] == pytest.approx(float(0.5 * (last**2).sum()) / 2, rel=1e-5)
    assert all(math.isnan(c[2]) for c in calls)


def test_nuts_statistics_per_draw_agree_with_the_kernel() -> None:
    """Pyro keeps no per-iteration statistics; the ones read around each iteration must
    add up to what the kernel reports for the whole chain (its running mean acceptance
    probability and its divergence list, read at the last iteration before cleanup)."""
    from pyro.infer import NUTS

    at_end: dict[str, float] = {}

    def hook(k: Any, stage: str, i: int) -> None:
        if stage == "Sample":
            at_end.update(accept=k._mean_accept_prob, divergences=len(k._divergences))

    def potential(p: dict[str, Tensor]) -> Tensor:
        return 0.5 * (p["x"] ** 2).sum() + 3 * (p["x"] ** 4).sum()

    torch.manual_seed(1)
    kernel = NUTS(potential_fn=potential, max_tree_depth=5, target_accept_prob=0.6)
    _, stats = run_nuts_chain(
        kernel, num_samples=200, warmup_steps=50, initial_params={"x": torch.zeros(3)}, hook=hook
    )
    accept = stats["acceptance_rate"]
    assert float(accept.min()) >= 0 and float(accept.max()) <= 1
    assert float(accept.mean()) == pytest.approx(at_end["accept"], abs=1e-9)
    assert int(stats["diverging"].sum()) == at_end["divergences"] > 0
    assert stats["diverging"].dtype == torch.bool
    # one step size after warm-up; a tree of depth d holds 2**(d-1) .. 2**d - 1 leapfrog steps
    assert len(set(stats["step_size"].tolist())) == 1
    steps, depth = stats["n_steps"], stats["tree_depth"]
    assert bool(((2 ** (depth - 1) <= steps) & (steps <= 2**depth - 1)).all())
    assert int(depth.max()) <= 5 and int(steps.min()) >= 1
    # the kernel is left as it was: its own potential, its own setup
    assert kernel.potential_fn is potential and "setup" not in vars(kernel)


def test_leapfrog_steps_are_counted_exactly_and_divergences_per_draw() -> None:
    from pyro.infer import HMC, NUTS

    # HMC takes a fixed number of leapfrog steps per iteration once adapted
    torch.manual_seed(0)
    hmc = HMC(potential_fn=lambda p: 0.5 * (p["x"] ** 2).sum(), num_steps=7)
    _, stats = run_nuts_chain(
        hmc, num_samples=10, warmup_steps=10, initial_params={"x": torch.zeros(2)}
    )
    assert stats["n_steps"].tolist() == [hmc.num_steps] * 10 and "tree_depth" not in stats
    # a step far too large for a quartic well diverges on the first leapfrog step of every
    # iteration: one step, a tree of depth 1, and every draw marked diverging
    torch.manual_seed(0)
    nuts = NUTS(potential_fn=lambda p: (p["x"] ** 4).sum(), step_size=5.0, adapt_step_size=False)
    _, stats = run_nuts_chain(
        nuts, num_samples=6, warmup_steps=0, initial_params={"x": torch.ones(2)}
    )
    assert stats["diverging"].tolist() == [True] * 6
    assert stats["n_steps"].tolist() == [1] * 6 and stats["tree_depth"].tolist() == [1] * 6
    assert chain_diagnostics(stats)["divergences"] == 6.0


def test_statistics_follow_their_draws_through_chains_thinning_and_state() -> None:
    def chain(c: int) -> NutsChain:
        draws = {"a": 10.0 * c + torch.arange(5.0)}
        stats = {
            "acceptance_rate": torch.full((5,), 0.5 + 0.25 * c, dtype=torch.float64),
            "diverging": torch.arange(5) == c,
            "n_steps": 10 * c + torch.arange(5),
            "step_size": torch.full((5,), 0.1 * (c + 1), dtype=torch.float64),
            "tree_depth": torch.full((5,), c + 1),
        }
        return NutsChain(draws, stats)

    store = PosteriorDraws()
    store.run_chains(2, chain)
    index = store.thinned_index(4)  # [0, 4, 5, 9]
    assert store.take_stats(index)["n_steps"].tolist() == store.take(index)["a"].tolist()
    assert store.take_stats(index)["diverging"].tolist() == [True, False, False, False]
    diag = store.run_diagnostics
    assert [d["accept_prob"] for d in diag] == [0.5, 0.75]
    assert [d["divergences"] for d in diag] == [1.0, 1.0]
    assert [d["leapfrog_per_sample"] for d in diag] == [2.0, 12.0]
    assert [d["step_size"] for d in diag] == pytest.approx([0.1, 0.2])
    assert [d["tree_depth_max"] for d in diag] == [1.0, 2.0]
    assert all(d["seconds"] >= 0 for d in diag)
    other = PosteriorDraws()
    other.load_state_dict(store.state_dict())
    assert all(torch.equal(other.stats[k], v) for k, v in store.stats.items())
    assert other.run_diagnostics == [{k: v for k, v in d.items() if k != "seconds"} for d in diag]
    # an older state without statistics loads its draws alone
    other.load_state_dict({"samples": store.samples, "num_chains": 2})
    assert other.stats == {} and other.take_stats(index) == {} and other.total == 10
    # draws without statistics (a plain dict per chain) are still accepted
    store.run_chains(1, lambda c: {"a": torch.zeros(3)})
    assert store.stats == {} and store.total == 3
