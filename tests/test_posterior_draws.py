"""The shared store of MCMC draws: chain-major layout, thinning and draw selection against
hand-computed indices, finiteness, persistence, and one real NUTS chain's progress."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from bayes_mbrl.errors import DataError, ModelError
from bayes_mbrl.models.posterior_draws import PosteriorDraws, run_nuts_chain


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
    draws = run_nuts_chain(
        kernel,
        num_samples=4,
        warmup_steps=3,
        initial_params={"x": torch.zeros(2)},
        progress=lambda *a: calls.append(a),
        first_step=7,
        num_transitions=2,
    )
    assert draws["x"].shape == (4, 2)
    assert [c[0] for c in calls] == list(range(7, 14))
    # the reported loss is the current state's potential energy per transition
    last = draws["x"][-1]
    assert calls[-1][1] == pytest.approx(float(0.5 * (last**2).sum()) / 2, rel=1e-5)
    assert all(math.isnan(c[2]) for c in calls)
