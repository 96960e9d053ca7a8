"""ReplayBuffer, Normalizer and transition validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayes_mbrl.data import Normalizer, ReplayBuffer, validate_transitions
from bayes_mbrl.errors import BayesMBRLError, DataError


def _buffer(capacity: int = 100) -> ReplayBuffer:
    return ReplayBuffer(3, 1, capacity, torch.tensor([-2.0]), torch.tensor([2.0]))


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 3, generator=g)
    action = torch.rand(n, 1, generator=g) * 4 - 2
    return obs, action, torch.randn(n, generator=g), obs + 0.1, torch.zeros(n), torch.zeros(n)


def test_add_single_and_batch_and_read_back() -> None:
    buf = _buffer()
    buf.add(np.array([1.0, 0.0, 0.5]), np.array([0.3]), -1.5, [1.0, 0.1, 0.4], False, True)
    obs, action, reward, next_obs, term, trunc = _batch(5)
    buf.add(obs, action, reward, next_obs, term, trunc)
    assert len(buf) == 6
    data = buf.all()
    torch.testing.assert_close(data.obs[0], torch.tensor([1.0, 0.0, 0.5]))
    assert data.truncated[0].item() is True and data.terminated[0].item() is False
    torch.testing.assert_close(data.obs[1:], obs)
    torch.testing.assert_close(data.reward[1:], reward)


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("obs", torch.full((4, 3), math.nan), "NaN"),
        ("next_obs", torch.full((4, 3), math.inf), "NaN or inf"),
        ("reward", torch.tensor([0.0, math.nan, 0.0, 0.0]), "reward contains NaN"),
        ("obs", torch.zeros(4, 2), "shape"),
        ("action", torch.zeros(4, 2), "shape"),
        ("action", torch.full((4, 1), 3.0), "outside the action space"),
        ("reward", torch.zeros(3), "shape"),
        ("terminated", torch.full((4,), 0.5), "boolean"),
    ],
)
def test_bad_transitions_raise_and_store_nothing(
    field: str, bad: torch.Tensor, message: str
) -> None:
    buf = _buffer()
    buf.add(*_batch(2))
    before = buf.state_dict()
    fields = dict(
        zip(
            ("obs", "action", "reward", "next_obs", "terminated", "truncated"),
            _batch(4),
            strict=True,
        )
    )
    fields[field] = bad
    with pytest.raises(DataError, match=message):
        buf.add(**fields)
    assert len(buf) == 2
    for key, value in buf.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_overflow_raises_before_storing() -> None:
    buf = _buffer(capacity=3)
    buf.add(*_batch(2))
    with pytest.raises(BayesMBRLError, match="full"):
        buf.add(*_batch(2))
    assert len(buf) == 2


def test_split_is_disjoint_cover_and_seeded() -> None:
    buf = _buffer()
    buf.add(*_batch(50))
    tr, va = buf.split(0.2, torch.Generator().manual_seed(0))
    assert len(va) == 10 and len(tr) == 40
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(50))
    tr2, va2 = buf.split(0.2, torch.Generator().manual_seed(0))
    assert torch.equal(tr, tr2) and torch.equal(va, va2)


def test_bootstrap_indices_resample_with_replacement() -> None:
    idx = torch.arange(10, 1010)
    boot = ReplayBuffer.bootstrap_indices(4, idx, torch.Generator().manual_seed(0))
    assert boot.shape == (4, 1000)
    assert bool(((boot >= 10) & (boot < 1010)).all())
    # a bootstrap resample leaves out about 1/e of the points
    unique_fraction = torch.tensor([len(torch.unique(row)) / 1000 for row in boot])
    assert torch.allclose(unique_fraction, torch.full((4,), 1 - math.exp(-1)), atol=0.03)
    assert not torch.equal(boot[0], boot[1])


def test_sample_seeded() -> None:
    buf = _buffer()
    buf.add(*_batch(20))
    a = buf.sample(8, torch.Generator().manual_seed(3))
    b = buf.sample(8, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.obs, b.obs)
    with pytest.raises(DataError, match="empty"):
        _buffer().sample(1)


def test_state_dict_round_trip() -> None:
    buf = _buffer()
    buf.add(*_batch(7))
    other = _buffer()
    other.load_state_dict(buf.state_dict())
    torch.testing.assert_close(other.all().next_obs, buf.all().next_obs)


def test_normalizer_standardizes_and_inverts() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g) * torch.tensor([2.0, 0.5, 0.0]) + torch.tensor(
        [1.0, -3.0, 4.0]
    )
    norm = Normalizer(3)
    norm.fit(x)
    z = norm.normalize(x)
    torch.testing.assert_close(z[:, :2].mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    assert norm.std[2].item() == 1.0  # constant column passes unchanged
    torch.testing.assert_close(norm.denormalize(z), x)
    with pytest.raises(DataError, match="expects"):
        norm.fit(torch.zeros(5, 2))


def test_validate_rejects_non_numeric() -> None:
    with pytest.raises(DataError, match="obs"):
        validate_transitions(
            ["a", "b", "c"], [0.0], 0.0, [0, 0, 0], False, False, obs_dim=3, action_dim=1
        )
