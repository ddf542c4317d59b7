"""Commands that need no training do not import torch (or Ray, Dash, Plotly): they stay quick
and work where those are absent or broken.

Each command runs in a fresh interpreter through ``proxstudy.study.cli.main``; afterwards the
wrapper prints which heavy packages ``sys.modules`` holds.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from proxstudy.study.cli import build_parser
from tests.support.cli import cli_env
from tests.support.study_fixtures import build_study

HEAVY = ("torch", "ray", "dash", "plotly")

RUN_AND_LIST_HEAVY = """
import importlib.util, json, sys, types
if sys.argv[1] == "skip-proxprop-init":
    # proxprop/__init__ imports the layers (torch) even for `import proxprop.modes`; see
    # test_proxprop_modes_imports_without_torch. Load the package without its __init__.
    spec = importlib.util.find_spec("proxprop")
    package = types.ModuleType("proxprop")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["proxprop"] = package
from proxstudy.study.cli import main
try:
    main(sys.argv[2:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def _proxprop_modes_pulls_torch() -> bool:
    probe = "import sys, proxprop.modes; print('torch' in sys.modules)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          check=True).stdout.strip() == "True"


def _has_command(name: str) -> bool:
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args([name, "some-study"])
    except SystemExit:
        return False
    return True


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('cli-imports') / 'studies.db'}"
    build_study(url, "light")
    return url


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "light"],
        ["list"],
        ["export", "light", "--format", "json"],
        # `proxstudy summary` (DESIGN.md): checked here as soon as the command exists
        pytest.param(["summary", "light"], id="summary", marks=pytest.mark.skipif(
            not _has_command("summary"), reason="no `proxstudy summary` command yet")),
    ],
    ids=lambda argv: "-".join(argv) if isinstance(argv, list) else argv,
)
def test_reading_commands_import_no_training_or_web_stack(storage, argv):
    mode = "skip-proxprop-init" if _proxprop_modes_pulls_torch() else "as-installed"
    result = subprocess.run([sys.executable, "-c", RUN_AND_LIST_HEAVY, mode, *argv, "--storage", storage],
                            capture_output=True, text=True, timeout=300, env=cli_env())
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "heavy": []}, result.stderr[-2000:]


def test_proxprop_modes_imports_without_torch():
    assert not _proxprop_modes_pulls_torch()
