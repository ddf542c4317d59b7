"""Commands that need no training do not import torch (or Ray, Dash, Plotly): they stay quick
and work where those are absent or broken.

Each command runs in a fresh interpreter through ``proxstudy.study.cli.main``; afterwards the
wrapper prints which heavy packages ``sys.modules`` holds.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.cli import cli_env
from tests.support.study_fixtures import build_study

HEAVY = ("torch", "ray", "dash", "plotly")

RUN_AND_LIST_HEAVY = """
import json, sys
from proxstudy.study.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def _proxprop_modes_pulls_torch() -> bool:
    probe = "import sys, proxprop.modes; print('torch' in sys.modules)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          check=True).stdout.strip() == "True"


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
        ["summary", "light"],
    ],
    ids=lambda argv: "-".join(argv),
)
def test_reading_commands_import_no_training_or_web_stack(storage, argv):
    result = subprocess.run([sys.executable, "-c", RUN_AND_LIST_HEAVY, *argv, "--storage", storage],
                            capture_output=True, text=True, timeout=300, env=cli_env())
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "heavy": []}, result.stderr[-2000:]


def test_proxprop_modes_imports_without_torch():
    assert not _proxprop_modes_pulls_torch()
