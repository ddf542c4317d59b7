"""The Ray Tune trainable through a real (local, one-CPU) Ray Tune run."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from proxstudy.workers.trainable import proxprop_trainable, threads_for_trial  # noqa: E402


@pytest.fixture
def local_ray():
    # a private local cluster: random free ports, no dashboard; always shut down
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


class _CollectReports(tune.Callback):
    """What the driver receives, per trial, in order: the stream the sweep recorder consumes
    (read here rather than from Tune's result files, which are written asynchronously)."""

    def __init__(self):
        self.by_lr: dict[float, list[dict]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.by_lr.setdefault(trial.config["lr"], []).append(dict(result))


def test_one_report_per_epoch_through_tuner(local_ray, tmp_path):
    base = {
        "dataset": {"name": "digits", "train_samples": 200},
        "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 2, "batch_size": 100},
        "objective": "train_loss",
        "method": "arm",
        "mode": "prox_cg",
        "tau_prox": 0.5,
        "cg_iterations": 2,
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "seed": 0,
        "_point_key": "arm|x|0",
        # lr 1: completes; lr 1e5: blows up in the first epoch; lr 2 on a device that does
        # not exist (cuda:99): fails at run time
        "lr": tune.grid_search([1.0, 1.0e5, 2.0]),
        "device": tune.sample_from(lambda spec: "cuda:99" if spec.config.lr == 2.0 else "cpu"),
    }
    reports = _CollectReports()
    tuner = tune.Tuner(
        proxprop_trainable,
        param_space=base,
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), name="workers-test", verbose=0, callbacks=[reports]
        ),
    )
    results = tuner.fit()
    assert results.num_errors == 0

    done = reports.by_lr[1.0]
    assert [r["epoch"] for r in done] == [0, 1, 2]  # one report per epoch, epoch 0 included
    assert [r["trial_status"] for r in done] == ["running", "running", "completed"]
    assert all(r["device"] == "cpu" for r in done) and done[-1]["train_loss"] < done[0]["train_loss"]
    assert [r["training_iteration"] for r in done] == [1, 2, 3]

    blown = reports.by_lr[1.0e5]
    assert blown[-1]["trial_status"] == "diverged"
    assert blown[-1]["diverged_epoch"] == blown[-1]["epoch"] >= 1
    assert len(blown) == blown[-1]["epoch"] + 1

    failed = reports.by_lr[2.0]
    assert failed[-1]["trial_status"] == "failed" and failed[-1]["error"]
    assert failed[-1]["diverged_epoch"] is None and len(failed) == 1


def test_threads_follow_the_cpus_given():
    assert threads_for_trial({"_cpus": 2}) == 2
    assert threads_for_trial({"_cpus": 0.5}) == 1  # fractional CPUs still get one thread
