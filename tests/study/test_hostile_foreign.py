"""Studies written by other tools, or damaged, are read as far as they go, with notes."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from proxstudy.study import reader
from proxstudy.study import records as R


def _foreign_study(url: str) -> None:
    study = optuna.create_study(study_name="foreign", storage=url)
    distributions = {
        "method": CategoricalDistribution(["bp", "<b>X</b>"]),
        "lr": FloatDistribution(1e-3, 1.0),
        "seed": CategoricalDistribution(["one", "two"]),
    }
    for number in range(3):
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=0.5 + number,
                params={"method": "bp", "lr": 0.1, "seed": "one"},
                distributions=distributions,
                user_attrs={
                    R.ATTR_TRAIN_LOSS: "not a list",
                    R.ATTR_VAL_LOSS: [1.0, "x", None, [2]],
                    R.ATTR_STATUS: {"weird": 1},
                    R.ATTR_DIVERGED_EPOCH: "soon",
                    R.ATTR_DEVICE: 7,
                },
            )
        )
    study.set_user_attr(R.STUDY_ATTR_SPACE, {"version": "from the future"})


def _check(read: reader.StudyRead) -> None:
    assert [r.number for r in read.records] == [0, 1, 2]
    first = read.records[0]
    assert first.status == R.STATUS_COMPLETED and first.value == 0.5
    assert first.train_loss == [] and first.val_loss == [1.0, None, None, None]
    assert first.seed == 0 and first.diverged_epoch is None and first.device is None
    notes = "\n".join(read.notes)
    assert read.space is None and "search space cannot be read" in notes
    assert "3 trials (first: 0): user attribute 'train_loss' is a str" in notes
    assert "'val_loss' holds entries that are not numbers" in notes
    assert "param 'seed' is a str" in notes and "'diverged_epoch'" in notes and "'device' is an int, not text" in notes
    assert all("\n" not in note for note in read.notes)
    # aggregation works on what was read
    (point,) = R.aggregate_points(read.records)
    assert point.values == [2.5] and point.seeds == [0]  # one seed (0) read: the last trial wins


def test_foreign_study_is_read_with_notes_on_both_paths(tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    _foreign_study(url)
    reader.clear_cache()
    fast = reader.read_study(url, "foreign")
    _check(fast)
    api = reader.read_study(optuna.storages.get_storage(url), "foreign")
    _check(api)
    assert fast.records == api.records


def test_study_of_proxstudy_has_no_notes_on_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    study = optuna.create_study(study_name="plain", storage=url)
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE, value=1.0,
            params={"method": "bp", "seed": 1},
            distributions={"method": CategoricalDistribution(["bp"]),
                           "seed": CategoricalDistribution([1])},
            user_attrs={R.ATTR_STATUS: R.STATUS_COMPLETED, R.ATTR_TRAIN_LOSS: [2.0, 1.0]},
        )
    )
    reader.clear_cache()
    read = reader.read_study(url, "plain")
    assert read.records[0].notes == [] and read.records[0].train_loss == [2.0, 1.0]
    assert read.notes == ["the study stores no search space (not made by `proxstudy run`)"]


def test_status_shows_the_notes_of_a_foreign_study(tmp_path):
    from proxstudy.study.status import MAX_NOTES, format_status, study_status

    url = f"sqlite:///{tmp_path / 'f.db'}"
    _foreign_study(url)
    reader.clear_cache()
    text = format_status(study_status(url, "foreign"))
    notes = [line for line in text.splitlines() if line.startswith("note: ")]
    assert notes[0] == ("note: the stored search space cannot be read by this version (version: unknown key "
                        "(allowed: dataset, methods, model, objective, sampler, study, training))")
    assert len(notes) == MAX_NOTES + 1 and notes[-1] == "note: and 1 more"
    assert "bp         3          3" in text  # the counts are there all the same
