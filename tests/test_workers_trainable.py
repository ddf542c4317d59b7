"""The Ray Tune trainable through a real (local, one-CPU) Ray Tune run."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from workers.trainable import proxprop_trainable, threads_for_trial  # noqa: E402


@pytest.fixture
def local_ray():
    # a private local cluster: random free ports, no dashboard; always shut down
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


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
    tuner = tune.Tuner(
        proxprop_trainable,
        param_space=base,
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="workers-test", verbose=0),
    )
    results = tuner.fit()
    assert results.num_errors == 0
    by_lr = {r.config["lr"]: r for r in results}

    done = by_lr[1.0].metrics_dataframe
    assert done["epoch"].tolist() == [0, 1, 2]  # one report per epoch, epoch 0 included
    assert done["trial_status"].tolist() == ["running", "running", "completed"]
    assert (done["device"] == "cpu").all() and done["train_loss"].iloc[-1] < done["train_loss"].iloc[0]
    assert done["training_iteration"].tolist() == [1, 2, 3]

    blown = by_lr[1.0e5]
    assert blown.metrics["trial_status"] == "diverged"
    assert blown.metrics["diverged_epoch"] == blown.metrics["epoch"] >= 1
    assert len(blown.metrics_dataframe) == blown.metrics["epoch"] + 1

    failed = by_lr[2.0]
    assert failed.metrics["trial_status"] == "failed" and failed.metrics["error"]
    assert failed.metrics["diverged_epoch"] is None and len(failed.metrics_dataframe) == 1


def test_threads_follow_the_cpus_given():
    assert threads_for_trial({"_cpus": 2}) == 2
    assert threads_for_trial({"_cpus": 0.5}) == 1  # fractional CPUs still get one thread
