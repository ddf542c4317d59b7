"""The README's Python examples name what exists: every import line of its python blocks runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
IMPORTS = [line.strip() for block in BLOCKS for line in block.splitlines()
           if re.match(r"\s*(from \S+ import |import )", line)]


def test_the_readme_has_python_examples():
    assert len(IMPORTS) >= 5


@pytest.mark.parametrize("line", IMPORTS)
def test_readme_import_lines_work(line):
    exec(compile(line, str(README), "exec"), {})
