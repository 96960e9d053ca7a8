"""Checkpoint messages: a file that would run code is refused the same way whether it
is a ``torch.save`` file or a raw pickle, and no message relays torch's advice to
retry with ``weights_only=False`` (which would run that code)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from bayes_mbrl.errors import CheckpointError, UnsafeCheckpointError
from bayes_mbrl.runs import RunStore, load_checkpoint


class Evil:
    """Unpickling this runs code."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


def _checksummed(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    out = io.BytesIO()
    wrapper = {
        "format_version": 2,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": payload,
    }
    torch.save(wrapper, out)
    return out.getvalue()


def _torch_saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


BOMBS = {
    "raw-pickle": lambda: pickle.dumps(Evil()),
    "raw-pickle-protocol-2": lambda: pickle.dumps({"model": Evil()}, protocol=2),
    "torch-save": lambda: _torch_saved({"format_version": 1, "model": Evil()}),
    "torch-save-in-payload": lambda: _checksummed({"x": Evil()}),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_every_pickle_bomb_is_unsafe_and_names_its_global(
    bomb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ckpt_0001.pt"
    path.write_bytes(BOMBS[bomb]())
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "would run code when loaded" in message
    assert "system" in message  # the global it imports (posix.system / nt.system)
    assert "weights_only=False" not in message
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("bomb", ["raw-pickle", "torch-save"])
def test_resume_refuses_a_bomb_instead_of_falling_back(
    bomb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = RunStore(tmp_path, 3, 1)
    store.checkpoint_dir.mkdir()
    store.checkpoint_path(1).write_bytes(BOMBS[bomb]())
    with pytest.raises(UnsafeCheckpointError, match="would run code"):
        store.read_checkpoint()
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "content",
    [
        pickle.dumps({"a": 1}),  # a raw pickle torch's loader refuses (protocol 4)
        b"not a checkpoint at all" * 10,
        _torch_saved({"w": torch.ones(3)})[:200],  # truncated
    ],
    ids=["harmless-raw-pickle", "garbage", "truncated"],
)
def test_unreadable_checkpoint_message_has_no_torch_advice(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ckpt_0001.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    message = str(info.value)
    assert "not a readable checkpoint" in message
    assert "weights_only" not in message and "\n" not in message
