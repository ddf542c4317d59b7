"""Kill -9 a `proxstudy run` driver at a chosen moment (the resume tests).

The driver runs in its own session with its own RAY_TMPDIR, so everything it started (its
local Ray and the workers) can be killed with it and nothing leaks into the next test.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
import pytest

from tests.support.cli import PROXSTUDY, cli_env
from tests.support.processes import descendants, kill_everything_of


def trial_states(url: str, study: str) -> Counter:
    """How many trials of the study are in each state (empty while it does not exist yet)."""
    try:
        trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    except Exception:  # not created yet, or the database is locked for a moment
        return Counter()
    return Counter(t.state for t in trials)


def kill_9_run_when(args: Sequence[str], cwd: Path, ready: Callable[[], bool], what: str,
                    *, timeout: float = 180, poll: float = 0.1) -> None:
    """Start `proxstudy run ARGS` in ``cwd``, SIGKILL it (and its Ray) once ``ready()`` holds;
    the test fails with "the sweep never had <what>" if that does not happen in time."""
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths
    driver = subprocess.Popen(
        [PROXSTUDY, "run", *args], cwd=cwd, env=cli_env(RAY_TMPDIR=ray_tmp, TMPDIR=str(cwd)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    tree: list[int] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
            tree = sorted(set(tree) | set(descendants(driver.pid)))
            if ready():
                break
            time.sleep(poll)
        else:
            pytest.fail(f"the sweep never had {what}")
        driver.kill()  # SIGKILL: no cleanup of any kind in the driver
        driver.wait(timeout=30)
    finally:
        kill_everything_of(driver.pid, ray_tmp, tree)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        driver.stdout.close()
        driver.stderr.close()
