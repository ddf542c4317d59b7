"""The dashboard's cached reading of a real SQLite storage: when it reloads and when it does not."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from proxstudy.dashboards import data as D
from proxstudy.study import records as R
from proxstudy.study.reader import read_storage
from tests.support import study_fixtures as F

SPACE = F.SyntheticSpace(lrs=(0.01, 0.1), taus=(1.0,), cgs=(3,), seeds=(0,))


@pytest.fixture()
def storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    F.build_study(url, "live", SPACE, n_running=1)
    D.clear_cache()
    yield url
    D.clear_cache()


def test_unchanged_study_is_served_from_cache(storage):
    first = D.load_study_data(storage, "live")
    assert first.counts[R.STATUS_COMPLETED] == 4 and first.counts[R.STATUS_RUNNING] == 1 and first.live
    assert D.load_study_data(storage, "live") is first


def test_finished_trial_changes_the_fingerprint(storage):
    first = D.load_study_data(storage, "live")
    F.add_trial(optuna.load_study(study_name="live", storage=storage), SPACE, SPACE.backprop, {"lr": 0.01}, 5)
    second = D.load_study_data(storage, "live")
    assert second is not first and second.counts[R.STATUS_COMPLETED] == 5
    assert second.version > first.version


def test_running_trial_progress_is_picked_up_after_the_live_ttl(storage, monkeypatch):
    monkeypatch.setattr(D, "LIVE_TTL_S", 0.0)
    first = D.load_study_data(storage, "live")
    assert D.load_study_data(storage, "live") is first  # stale but nothing new: same snapshot
    writer = optuna.storages.get_storage(storage)
    running = next(t for t in writer.get_all_trials(writer.get_study_id_from_name("live"))
               if t.state == TrialState.RUNNING)
    writer.set_trial_intermediate_value(running._trial_id, 2, 0.5)
    second = D.load_study_data(storage, "live")
    assert second is not first
    assert next(r.intermediate for r in second.records if r.status == R.STATUS_RUNNING)[2] == 0.5


def test_study_list_and_missing_things(storage, tmp_path):
    assert [(s.name, s.total) for s in D.list_studies(storage)] == [("live", 5)]
    with pytest.raises(D.StudyNotFound):
        D.load_study_data(storage, "nope")
    with pytest.raises(FileNotFoundError):
        read_storage(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()


def test_interrupted_trials_are_counted_apart_from_failed_ones(storage):
    study = optuna.load_study(study_name="live", storage=storage)
    F.add_trial(study, SPACE, SPACE.backprop, {"lr": 0.1}, 3, status=R.STATUS_INTERRUPTED)
    F.add_trial(study, SPACE, SPACE.backprop, {"lr": 0.1}, 4, status=R.STATUS_FAILED)
    (summary,) = D.list_studies(storage)
    assert summary.counts[R.STATUS_INTERRUPTED] == 1 and summary.counts[R.STATUS_FAILED] == 1
    data = D.load_study_data(storage, "live")
    assert data.counts == summary.counts
    assert data.counts[R.STATUS_COMPLETED] == 4 and data.counts[R.STATUS_RUNNING] == 1


def test_trials_with_a_non_numeric_grid_parameter_are_left_out_of_the_analysis_with_a_note():
    def rec(number, lr, tau=1.0):
        return R.TrialRecord(number=number, method="pp", params={"lr": lr, "tau_prox": tau}, seed=0,
                             status=R.STATUS_COMPLETED, value=0.5, intermediate={0: 2.0})

    records = [rec(0, 0.1), rec(1, "fast"), rec(2, 0.01, tau="<i>t</i>"), rec(3, float("nan")), rec(4, True)]
    kept, notes = D.analysable(records)
    assert [r.number for r in kept] == [0]
    assert notes == [  # the type is named, never the value (it may be long or hold markup)
        "3 trials (first: 1): param 'lr' is bool or float or str, not a finite number; left out of the analysis "
        "and the figures (listed in the trial table)",
        "trial 2: param 'tau_prox' is str, not a finite number; left out of the analysis and the figures "
        "(listed in the trial table)",
    ]
    data = D.build_study_data("s", records, notes=["from the reader"])
    assert len(data.records) == 5 and [p.n for p in data.points] == [1]  # the table keeps every trial
    assert data.notes[0] == "from the reader" and len(data.notes) == 3
