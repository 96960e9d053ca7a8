"""The Python code blocks of README.md and of every page under docs/ (subfolders
included) run, in order, per file, in one namespace per file.

Each file's test records how many blocks it executed; ``tests/conftest.py`` prints the
total at the end of the run ("doc code blocks executed: N in M files").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOCS = [p for p in PAGES if BLOCK.search(p.read_text())]

#: pages that promise runnable examples (a page that lost all of them would otherwise
#: drop out of the parametrization silently)
WITH_EXAMPLES = (
    "README.md",
    "docs/quickstart.md",
    "docs/guide.md",
    "docs/models.md",
    "docs/algorithms.md",
    "docs/pyro_models.md",
    "docs/gp.md",
    "docs/uncertainty.md",
    "docs/api_loop.md",
    "docs/extending.md",
)


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_pages_with_examples_have_python_blocks() -> None:
    missing = [name for name in WITH_EXAMPLES if (ROOT / name) not in DOCS]
    assert not missing, f"these pages should contain ```python examples: {missing}"


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_doc_code_blocks_run(path: Path, record_property: Callable[[str, object], None]) -> None:
    blocks = BLOCK.findall(path.read_text())
    namespace: dict[str, object] = {"__name__": f"doc_{path.stem}"}
    executed = 0
    try:
        for i, code in enumerate(blocks):
            try:
                # dont_inherit: the blocks run as a user would run them, not under this
                # file's `from __future__ import annotations`
                code_object = compile(code, f"{_name(path)}[block {i}]", "exec", dont_inherit=True)
                exec(code_object, namespace)
            except Exception as exc:  # report which block failed
                raise AssertionError(f"{_name(path)} block {i} failed: {exc!r}") from exc
            executed += 1
    finally:
        record_property("doc_code_blocks", executed)
    # DOCS holds only pages with examples: every one of them ran
    assert executed == len(blocks) > 0
