"""Fused sweeps end to end through the `proxstudy` command (`run --fuse K`).

Real parts only: the installed entry point, a local Ray, Ray Tune, the fused trainable, Optuna's
RDB storage on SQLite.  Checked: every point recorded exactly once as its own Optuna trial with
per-epoch curves, a diverging member recorded while the others of its fused trial go on, the
same numbers as the unfused sweep (float32 rounding), and resume after kill -9 in the middle of
a fused trial (finished members kept, the others closed as interrupted and re-run).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from proxstudy.study import records as R
from proxstudy.study.space import grid_points, load_space
from tests.support.cli import PROXSTUDY, cli_env
from tests.support.kill_driver import kill_9_run_when, trial_states

pytestmark = pytest.mark.timeout(300)

SPACE = """\
study: fused
dataset: {name: digits, train_samples: 300}
model: {name: mlp, hidden: [16]}
training: {epochs: 3, batch_size: 50, seeds: [0, 1]}
sampler: {name: grid}
objective: train_loss
methods:
  backprop:
    mode: gradient
    lr: [0.1, 0.3, 10000.0]   # 1e4 diverges in the first epoch
    optimizer: {name: sgd}
  cg:
    mode: prox_cg
    cg_iterations: 2
    tau_prox: 1.0
    lr: [0.5, 1.0]
"""


def run(space_file: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROXSTUDY, "run", str(space_file), "--storage", url, "--no-progress", *extra],
                          cwd=space_file.parent, env=cli_env(), capture_output=True, text=True, timeout=240)


def trials_by_key(url: str, study: str) -> dict[str, optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    keys = [t.user_attrs[R.ATTR_POINT_KEY] for t in trials]
    assert len(keys) == len(set(keys)), "a point recorded twice"
    return {t.user_attrs[R.ATTR_POINT_KEY]: t for t in trials}


def fused_groups(trials) -> list[int]:
    """Sizes of the groups of trials that shared a fused trial: its members share the wall
    time of every fused epoch, so equal epoch_seconds lists (floats) mean the same run."""
    return sorted(Counter(tuple(t.user_attrs[R.ATTR_EPOCH_SECONDS][1:]) for t in trials).values())


def test_run_fuse_4_records_every_point_once_like_the_unfused_sweep(tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    fused_url, unfused_url = f"sqlite:///{tmp_path / 'fused.db'}", f"sqlite:///{tmp_path / 'unfused.db'}"
    fused_run = run(space_file, fused_url, "--fuse", "4", "--max-concurrent", "2")
    assert fused_run.returncode == 0, fused_run.stderr[-3000:]
    assert "10/10 done (8 completed, 2 diverged, 0 failed)" in fused_run.stdout
    unfused_run = run(space_file, unfused_url, "--max-concurrent", "2")
    assert unfused_run.returncode == 0, unfused_run.stderr[-3000:]

    fused, unfused = trials_by_key(fused_url, "fused"), trials_by_key(unfused_url, "fused")
    assert set(fused) == {p.key for p in grid_points(load_space(space_file))} == set(unfused)
    # 6 backprop points in two fused trials of 3 (each with a diverging member); the 4 cg points
    # would fit one, but with 2 slots they run as two of 2 (every round fills both slots)
    completed = [t for t in fused.values() if t.state == TrialState.COMPLETE]
    assert fused_groups(completed) == [2, 2, 2, 2]
    for key, mine in fused.items():
        theirs = unfused[key]
        assert mine.params == theirs.params and mine.state == theirs.state
        assert mine.user_attrs[R.ATTR_STATUS] == theirs.user_attrs[R.ATTR_STATUS]
        assert mine.user_attrs[R.ATTR_ATTEMPTS] == 1 and mine.user_attrs[R.ATTR_WORKER]
        assert mine.user_attrs[R.ATTR_DEVICE] == "cpu"
        assert sorted(mine.intermediate_values) == sorted(theirs.intermediate_values)
        for name in (R.ATTR_TRAIN_LOSS, R.ATTR_VAL_LOSS, R.ATTR_TRAIN_ACCURACY, R.ATTR_VAL_ACCURACY):
            assert mine.user_attrs[name] == pytest.approx(theirs.user_attrs[name], rel=1e-5), (key, name)
        if mine.params["lr"] == 10000.0:
            assert mine.state == TrialState.PRUNED and mine.user_attrs[R.ATTR_DIVERGED_EPOCH] == 1
            assert len(mine.user_attrs[R.ATTR_TRAIN_LOSS]) == 2  # epochs 0 and 1: stopped at once
        else:
            assert mine.state == TrialState.COMPLETE and len(mine.user_attrs[R.ATTR_TRAIN_LOSS]) == 4
            assert mine.value == pytest.approx(theirs.value, rel=1e-5)


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_a_bad_fuse_value_is_one_line_and_writes_nothing(tmp_path, value):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    result = run(space_file, f"sqlite:///{tmp_path / 'never.db'}", "--fuse", value)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"proxstudy: error: --fuse must be an integer >= 1 or auto, got {value!r}"]
    assert not (tmp_path / "never.db").exists()


KILL_SPACE = """\
study: fusedkill
dataset: {name: synthetic, n_train: 2048, n_val: 256, input_shape: [1, 8, 8], num_classes: 3, seed: 0}
model: {name: mlp, hidden: [64]}
training: {epochs: 120, batch_size: 32, seeds: [0, 1]}
sampler: {name: grid}
objective: train_loss
methods:
  backprop:
    mode: gradient
    lr: [0.05, 0.1, 0.2, 10000.0]   # 1e4 diverges in the first epoch, the others go on
    optimizer: {name: sgd}
"""


def test_kill_9_in_the_middle_of_a_fused_trial_then_resume(tmp_path):
    """One fused trial of all 8 points: two members diverge early and are recorded at once;
    the driver is killed while the six others run.  The resumed sweep keeps the two, closes
    the six as interrupted and runs them again: every point recorded once as finished."""
    space_file = tmp_path / "space.yaml"
    space_file.write_text(KILL_SPACE)
    url = f"sqlite:///{tmp_path / 'kill.db'}"

    def ready() -> bool:
        states = trial_states(url, "fusedkill")
        return states[TrialState.PRUNED] == 2 and states[TrialState.RUNNING] == 6

    kill_9_run_when([str(space_file), "--storage", url, "--fuse", "8", "--max-concurrent", "1"], tmp_path, ready,
                    "diverged and running members of the fused trial at once")

    before = optuna.load_study(study_name="fusedkill", storage=url).get_trials(deepcopy=False)
    diverged_before = {t.user_attrs[R.ATTR_POINT_KEY]: t.number for t in before if t.state == TrialState.PRUNED}
    running_before = [t.number for t in before if t.state == TrialState.RUNNING]
    assert len(diverged_before) == 2 and len(running_before) == 6

    resumed = run(space_file, url, "--fuse", "8")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "6 interrupted trial(s) closed and re-run" in resumed.stdout
    assert "2 already finished" in resumed.stdout

    trials = optuna.load_study(study_name="fusedkill", storage=url).get_trials(deepcopy=False)
    grid = {p.key for p in grid_points(load_space(space_file))}
    finished = Counter(t.user_attrs[R.ATTR_POINT_KEY] for t in trials
                       if t.user_attrs.get(R.ATTR_STATUS) in R.FINAL_STATUSES)
    assert set(finished) == grid and set(finished.values()) == {1}  # every point exactly once
    for t in trials:
        assert t.state != TrialState.RUNNING
        if t.number in running_before:
            assert t.state == TrialState.FAIL and t.user_attrs[R.ATTR_STATUS] == "interrupted"
        elif t.user_attrs[R.ATTR_STATUS] == "completed":
            assert len(t.user_attrs[R.ATTR_TRAIN_LOSS]) == 121 and sorted(t.intermediate_values) == list(range(121))
    for key, number in diverged_before.items():  # not re-run: the same trial is the record
        assert [t.number for t in trials if t.user_attrs[R.ATTR_POINT_KEY] == key] == [number]
    assert len(trials) == len(grid) + len(running_before)
