"""The Python API (study.runner.run_sweep with SweepOptions) on one local Ray shared by this module.

Covers the random and TPE samplers, resume of a finished study, a changed search space
(refused, then --force-new), and failing trials recorded as failed while the sweep goes on.
"""

from __future__ import annotations

import copy

import optuna
import pytest
from optuna.trial import TrialState

from proxstudy.errors import SweepError
from proxstudy.study import records as R
from proxstudy.study.runner import SweepOptions, run_sweep
from tests.support.cli import synthetic_space

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import ray

    if ray.is_initialized():  # another module's Ray: run_sweep uses it as a notebook would
        yield
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


def _trials(url: str, study: str):
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def test_random_sampler_runs_n_trials_per_method_and_seed_then_resume_and_changed_space(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    doc = synthetic_space("rand", sampler={"name": "random", "n_trials": 2, "seed": 3}, seeds=(0,))
    summary = run_sweep(doc, SweepOptions(storage=url, progress=False))
    assert (summary.created, summary.total, summary.completed, summary.ran, summary.left) == (True, 4, 4, 4, 0)
    trials = _trials(url, "rand")
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.params["method"] for t in trials} == {"backprop", "cg"}
    assert all(0.01 <= t.params["lr"] <= 1.0 for t in trials)
    assert len({t.user_attrs[R.ATTR_POINT_KEY] for t in trials}) == 4

    again = run_sweep(doc, SweepOptions(storage=url, progress=False))
    assert (again.created, again.ran, again.skipped, again.left) == (False, 0, 4, 0)
    assert len(_trials(url, "rand")) == 4

    changed = copy.deepcopy(doc)
    changed["training"]["epochs"] = 3
    with pytest.raises(SweepError, match=r"different search space.*--force-new"):
        run_sweep(changed, SweepOptions(storage=url, progress=False))
    assert len(optuna.get_all_study_names(url)) == 1  # refused before writing anything
    forced = run_sweep(changed, SweepOptions(storage=url, progress=False, force_new=True))
    assert forced.study_name == "rand-2" and forced.created and forced.completed == 4
    assert optuna.load_study(study_name="rand-2", storage=url).user_attrs[R.STUDY_ATTR_SPACE]["training"]["epochs"] == 3


def test_tpe_sampler_records_every_point_for_every_seed(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    doc = synthetic_space("tpe", sampler={"name": "tpe", "n_trials": 2, "seed": 0})
    summary = run_sweep(doc, SweepOptions(storage=url, progress=False, max_concurrent=2))
    assert (summary.total, summary.completed + summary.diverged, summary.left) == (8, 8, 0)
    by_point = {}
    for t in _trials(url, "tpe"):
        params = tuple(sorted((k, v) for k, v in t.params.items() if k != "seed"))
        by_point.setdefault(params, []).append(t.params["seed"])
    assert len(by_point) == 4 and all(sorted(s) == [0, 1] for s in by_point.values())


def test_failing_trials_are_recorded_failed_and_the_sweep_goes_on(tmp_path):
    # Files the driver finds (so the run starts) but no trial can read: every trial fails.
    batches = tmp_path / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (batches / name).write_bytes(b"not a pickle")
    url = f"sqlite:///{tmp_path / 'f.db'}"
    doc = synthetic_space("fail", seeds=(0,))
    doc["dataset"] = {"name": "cifar10", "root": str(tmp_path / "cifar")}
    doc["methods"] = {"backprop": {"mode": "gradient", "lr": [0.1, 0.2, 0.3]}}
    summary = run_sweep(doc, SweepOptions(storage=url, progress=False, device="cpu"))
    assert (summary.failed, summary.completed, summary.left) == (3, 0, 0)
    trials = _trials(url, "fail")
    assert len(trials) == 3
    for t in trials:
        assert t.state == TrialState.FAIL and t.user_attrs[R.ATTR_STATUS] == "failed"
        assert "not a cifar-10 python batch" in t.user_attrs[R.ATTR_ERROR].lower()
    # failed points are finished: a rerun does not repeat them
    assert run_sweep(doc, SweepOptions(storage=url, progress=False, device="cpu")).ran == 0
