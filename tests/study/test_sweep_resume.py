"""Resume after a crash: `proxstudy run` is killed with SIGKILL mid-sweep, then run again.

Contract (DESIGN.md): finished trials are never re-run, the trials the dead driver left
RUNNING are closed (FAIL, status "interrupted", not final) and their points re-run, and at the
end every point of the grid is recorded exactly once as finished. The killed driver's local
Ray (its own RAY_TMPDIR) is killed too, so nothing leaks.
"""

from __future__ import annotations

import subprocess
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from proxstudy.study import records as R
from proxstudy.study.space import grid_points, load_space
from tests.support.cli import PROXSTUDY, cli_env
from tests.support.kill_driver import kill_9_run_when, trial_states

pytestmark = pytest.mark.timeout(300)

SPACE = """\
study: resume
dataset: {name: synthetic, n_train: 2048, n_val: 256, input_shape: [1, 8, 8], num_classes: 3, seed: 0}
model: {name: mlp, hidden: [64]}
training: {epochs: 8, batch_size: 32, seeds: [0, 1]}
sampler: {name: grid}
objective: train_loss
methods:
  cg:
    mode: prox_cg
    cg_iterations: 3
    tau_prox: 1.0
    lr: [0.05, 0.1, 0.2, 0.4]
"""


def test_kill_9_mid_sweep_then_resume_records_every_point_once(tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    url = f"sqlite:///{tmp_path / 'resume.db'}"

    def ready() -> bool:
        states = trial_states(url, "resume")
        return states[TrialState.COMPLETE] >= 2 and states[TrialState.RUNNING] >= 1

    # --fuse 1: trials finish one by one, so finished and running trials coexist for a while;
    # two equal fused trials would end together (fused kill -9: tests/study/test_fused_sweep.py)
    kill_9_run_when([str(space_file), "--storage", url, "--max-concurrent", "2", "--fuse", "1"], tmp_path, ready,
                    "finished and running trials at once", poll=0.2)

    before = optuna.load_study(study_name="resume", storage=url).get_trials(deepcopy=False)
    finished_before = {t.user_attrs[R.ATTR_POINT_KEY]: t.number for t in before if t.state == TrialState.COMPLETE}
    running_before = [t.number for t in before if t.state == TrialState.RUNNING]
    assert finished_before and running_before

    resumed = subprocess.run([PROXSTUDY, "run", str(space_file), "--storage", url, "--fuse", "1"],
                             cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(running_before)} interrupted trial(s) closed and re-run" in resumed.stdout
    assert f"{len(finished_before)} already finished" in resumed.stdout

    trials = optuna.load_study(study_name="resume", storage=url).get_trials(deepcopy=False)
    grid = {p.key for p in grid_points(load_space(space_file))}
    finished = Counter(t.user_attrs[R.ATTR_POINT_KEY] for t in trials
                       if t.user_attrs.get(R.ATTR_STATUS) in R.FINAL_STATUSES)
    assert set(finished) == grid and set(finished.values()) == {1}  # every point exactly once
    for t in trials:
        assert t.state != TrialState.RUNNING
        if t.number in running_before:
            assert t.state == TrialState.FAIL and t.user_attrs[R.ATTR_STATUS] == "interrupted"
            assert t.user_attrs[R.ATTR_ERROR] == "interrupted: driver stopped"
    for key, number in finished_before.items():  # not re-run: the same trial is the record
        assert [t.number for t in trials if t.user_attrs[R.ATTR_POINT_KEY] == key] == [number]
    assert len(trials) == len(grid) + len(running_before)
    status = subprocess.run([PROXSTUDY, "status", "resume", "--storage", url], cwd=tmp_path,
                            env=cli_env(), capture_output=True, text=True, timeout=60)
    total_row = status.stdout.splitlines()[-1].split()
    assert total_row == ["total", "8", "8", "0", "0", "0", "0", "8"], status.stdout
