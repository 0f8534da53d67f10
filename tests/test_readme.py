"""The README's Python examples run as written.

Every ```python block of README.md runs, in order, in one namespace (as a reader pasting them into one session
would), in a scratch directory. A block may be skipped only when it needs a GPU or several processes, and must say
so on the line right above its fence: ``<!-- readme-test: skip (needs a GPU) -->``. An example that uses a deprecated
name (a DeprecationWarning raised at the README's own line) fails as well.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<why>[^)]*)\)\s*-->")
ALLOWED_SKIP = re.compile(r"GPU|CUDA|process", re.IGNORECASE)


def python_blocks(text: str) -> list:
    """(line number, code, skip reason or None) of every ```python block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, j = i + 1, i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            above = lines[i - 1] if i > 0 else ""
            m = SKIP.search(above)
            blocks.append((start + 1, "\n".join(lines[start:j]), m.group("why") if m else None))
            i = j
        i += 1
    return blocks


def test_the_parser_sees_blocks_and_skip_marks():
    text = "a\n```python\nx = 1\n```\n<!-- readme-test: skip (needs a GPU) -->\n```python\ny\n```\n"
    assert python_blocks(text) == [(3, "x = 1", None), (7, "y", "needs a GPU")]


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python blocks"
    monkeypatch.chdir(tmp_path)  # examples may write files (a CSV log, a PNG)
    namespace: dict = {"__name__": "__readme__"}
    with warnings.catch_warnings():
        # a deprecated name in an example (a DeprecationWarning attributed to the README's own code) fails too
        warnings.filterwarnings("error", category=DeprecationWarning, module="__readme__")
        for line, code, skip in blocks:
            if skip is not None:
                assert ALLOWED_SKIP.search(skip), f"README.md:{line}: a block may be skipped only for a GPU or " \
                                                  f"several processes, not {skip!r}"
                continue
            try:
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
            except Exception as e:  # noqa: BLE001 - say which block failed; the traceback is chained
                pytest.fail(f"README.md: the python block at line {line} fails: {type(e).__name__}: {e}")
