"""The recorder with a fused Tune trial: one Optuna trial per member, retries per member.

Tune's callbacks are called directly with real Tune Trial objects (stubs: no trainable is
registered or run) in the order Tune calls them; the storage is a real SQLite RDB storage.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from ray.tune.experiment import Trial

from proxstudy.study import records as R
from proxstudy.study.driver_state import DriverState
from proxstudy.study.opening import open_study
from proxstudy.study.points import point_source
from proxstudy.study.progress import Progress
from proxstudy.study.recorder import OptunaRecorder
from proxstudy.study.space import grid_points, parse_space, recorded_distributions, trial_config
from proxstudy.study.storage import open_storage
from proxstudy.workers.fused_trainable import FUSED_MEMBERS_KEY, MEMBER_REPORTS_KEY
from proxstudy.workers.trainable import POINT_KEY, TRIAL_CONFIG_KEY
from proxstudy.workers.vocabulary import EPOCH, OBJECTIVE, REPORT_ERROR, REPORT_STATUS, TRAIN_LOSS
from tests.support.cli import synthetic_space


def report(key: str, epoch: int, status: str, loss: float | None = 1.0, error: str | None = None) -> dict:
    return {POINT_KEY: key, EPOCH: epoch, TRAIN_LOSS: loss, OBJECTIVE: loss, REPORT_STATUS: status,
            REPORT_ERROR: error}


def fused_setup(tmp_path, members: int) -> tuple[OptunaRecorder, Trial, list[str], str]:
    """A new study on SQLite, a recorder, and a fused Tune trial of the first ``members``
    backprop points (one fusion key); returns (recorder, trial, point keys, storage URL)."""
    url = f"sqlite:///{tmp_path / 'rec.db'}"
    space = parse_space(synthetic_space(seeds=(0,)), "<test>")
    storage = open_storage(url)
    name, study_id, _ = open_study(storage, space, "rec", False, url)
    driver = DriverState(storage=storage, study_id=study_id, space=space, source=point_source(space, []),
                         distributions=recorded_distributions(space), device="cpu", cpus_per_trial=1.0,
                         progress=Progress(name, members, 0, 0, 0, enabled=False))
    points = [p for p in grid_points(space) if p.method == "backprop"][:members]
    for point in points:
        driver.points_by_key[point.key] = point
    config = {FUSED_MEMBERS_KEY: [{POINT_KEY: p.key, TRIAL_CONFIG_KEY: trial_config(space, p.method, p.params, p.seed)}
                                  for p in points]}
    return OptunaRecorder(driver), Trial("fused_trainable", config=config, trial_id="f1", stub=True), \
        [p.key for p in points], url


def recorded(url: str) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.user_attrs[R.ATTR_POINT_KEY]: t for t in
            optuna.load_study(study_name="rec", storage=url).get_trials(deepcopy=False)}


def test_members_are_trials_finished_one_by_one_and_a_retry_reruns_only_the_unfinished(tmp_path):
    recorder, trial, keys, url = fused_setup(tmp_path, 3)
    recorder.on_trial_start(0, [trial], trial)
    recorder.on_trial_result(0, [trial], trial, {MEMBER_REPORTS_KEY: [report(k, 0, "running") for k in keys]})
    # epoch 1: member 0 diverges, member 1 fails (its own error), member 2 goes on
    recorder.on_trial_result(0, [trial], trial, {MEMBER_REPORTS_KEY: [
        report(keys[0], 1, "diverged", None), report(keys[2], 1, "running", 0.8)]})
    recorder.on_trial_result(0, [trial], trial, {MEMBER_REPORTS_KEY: [
        report(keys[1], 0, "failed", error="RuntimeError: solver broke")]})
    # the worker dies; Tune retries the fused trial: only member 2 runs again in the record
    recorder.on_trial_recover(0, [trial], trial)
    recorder.on_trial_start(0, [trial], trial)
    rerun = [report(k, e, "running", 0.9) for e in (0, 1) for k in keys]
    recorder.on_trial_result(0, [trial], trial, {MEMBER_REPORTS_KEY: rerun})
    recorder.on_trial_result(0, [trial], trial, {MEMBER_REPORTS_KEY: [
        report(k, 2, "completed", 0.5) for k in keys]})
    recorder.on_trial_complete(0, [trial], trial)
    assert recorder.close() == 0

    trials = recorded(url)
    assert sorted(trials) == sorted(keys)  # one Optuna trial per member, each once
    diverged, failed, completed = (trials[k] for k in keys)
    assert diverged.state == TrialState.PRUNED and diverged.user_attrs[R.ATTR_STATUS] == "diverged"
    assert diverged.user_attrs[R.ATTR_ATTEMPTS] == 1 and diverged.user_attrs[R.ATTR_TRAIN_LOSS] == [1.0, None]
    assert failed.state == TrialState.FAIL and failed.user_attrs[R.ATTR_ERROR] == "RuntimeError: solver broke"
    assert completed.state == TrialState.COMPLETE and completed.value == 0.5
    assert completed.user_attrs[R.ATTR_ATTEMPTS] == 2  # its epochs are the retry's
    assert completed.user_attrs[R.ATTR_TRAIN_LOSS] == [0.9, 0.9, 0.5]
    assert completed.intermediate_values == {0: 0.9, 1: 0.9, 2: 0.5}
    progress = recorder._d.progress
    assert (progress.completed, progress.diverged, progress.failed) == (1, 1, 1)


def test_a_fused_trial_that_dies_for_good_fails_its_open_members(tmp_path):
    recorder, trial, keys, url = fused_setup(tmp_path, 2)
    recorder.on_trial_start(0, [trial], trial)
    recorder.on_trial_result(0, [trial], trial, {MEMBER_REPORTS_KEY: [report(keys[0], 0, "completed")]})
    recorder.on_trial_error(0, [trial], trial)
    assert recorder.close() == 0
    trials = recorded(url)
    assert trials[keys[0]].state == TrialState.COMPLETE and trials[keys[0]].user_attrs[R.ATTR_ATTEMPTS] == 1
    assert trials[keys[1]].state == TrialState.FAIL and trials[keys[1]].user_attrs[R.ATTR_STATUS] == "failed"
    assert trials[keys[1]].user_attrs[R.ATTR_ERROR]


def test_members_rewrite_their_epoch_lists_as_often_as_one_trial(tmp_path, monkeypatch):
    """K members' per-epoch lists are rewritten every K x ATTR_FLUSH_S (intermediate values at
    every epoch): a fused trial costs the single storage writer what one trial costs."""
    from proxstudy.study import recorder as recorder_module

    clock = [1000.0]
    monkeypatch.setattr(recorder_module.time, "monotonic", lambda: clock[0])
    recorder, trial, keys, url = fused_setup(tmp_path, 3)  # K = 3: every 3 x ATTR_FLUSH_S
    recorder.on_trial_start(0, [trial], trial)

    def epoch(number: int, seconds_later: float) -> dict[str, list | None]:
        clock[0] += seconds_later
        reports = [report(k, number, "running", 1.0 / (number + 1)) for k in keys]
        recorder.on_trial_result(0, [trial], trial, {MEMBER_REPORTS_KEY: reports})
        recorder._w.flush()
        return {key: t.user_attrs.get(R.ATTR_TRAIN_LOSS) for key, t in recorded(url).items()}

    lists = epoch(0, 0.0)  # the first epoch's lists are written at once
    assert all(v == [1.0] for v in lists.values()), lists
    flush = recorder_module.ATTR_FLUSH_S
    lists = epoch(1, 3 * flush)
    assert all(v == [1.0, 0.5] for v in lists.values()), lists
    lists = epoch(2, 2 * flush)  # one unfused trial would rewrite now; the members wait
    assert all(v == [1.0, 0.5] for v in lists.values()), lists
    lists = epoch(3, 1 * flush)
    assert all(v == [1.0, 0.5, 1 / 3, 0.25] for v in lists.values()), lists
    assert all(t.intermediate_values == {0: 1.0, 1: 0.5, 2: 1 / 3, 3: 0.25} for t in recorded(url).values())
    recorder.on_trial_complete(0, [trial], trial)
    recorder.close()


def test_the_sweeps_sqlite_commits_do_not_wait_for_the_disk(tmp_path):
    """open_storage's SQLite connections use synchronous=NORMAL; a commit is still a commit
    (another connection reads it)."""
    import sqlite3

    from sqlalchemy import text

    path = tmp_path / "s.db"
    storage = open_storage(f"sqlite:///{path}")
    with storage.engine.connect() as connection:
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL (FULL is 2)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    trial_id = storage.create_new_trial(study_id)
    storage.set_trial_intermediate_value(trial_id, 3, 0.25)
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT step, intermediate_value FROM trial_intermediate_values").fetchall() == [(3, 0.25)]
