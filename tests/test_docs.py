"""The Python code blocks of README.md and docs/*.md run, in order, per file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_doc_code_blocks_run(path: Path) -> None:
    blocks = BLOCK.findall(path.read_text())
    if path.name in ("README.md", "guide.md"):
        assert blocks, f"{path.name} should contain Python examples"
    namespace: dict[str, object] = {"__name__": f"doc_{path.stem}"}
    for i, code in enumerate(blocks):
        try:
            # dont_inherit: the blocks run as a user would run them, not under this
            # file's `from __future__ import annotations`
            exec(compile(code, f"{path.name}[block {i}]", "exec", dont_inherit=True), namespace)
        except Exception as exc:  # report which block failed
            raise AssertionError(f"{path.name} block {i} failed: {exc!r}") from exc
