"""What installing the product claims: one import package, ``proxstudy`` (plus ``proxprop``),
and no generic top-level names such as ``study`` or ``workers``.

Run in a fresh interpreter from an empty directory in isolated mode (``-I``: like ``-P``, neither
the current directory nor the script's is on sys.path, and no PYTHON* variable applies; it
exists on every Python we support), so only what is installed can be imported.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        print(name, "ok")
    except ModuleNotFoundError:
        print(name, "missing")
"""


@pytest.mark.parametrize(
    "name, expected",
    [
        ("proxstudy.study", "ok"),
        ("proxstudy.workers", "ok"),
        ("proxstudy.dashboards", "ok"),
        ("proxstudy.errors", "ok"),
        ("proxprop", "ok"),
        ("study", "missing"),
        ("workers", "missing"),
        ("dashboards", "missing"),
    ],
)
def test_only_the_product_packages_are_installed(tmp_path, name, expected):
    result = subprocess.run([sys.executable, "-I", "-c", PROBE, name], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [name, expected], result.stdout + result.stderr
