"""The training loop: records, divergence, determinism, failures."""

from __future__ import annotations

import math

import pytest
import torch

from proxstudy.workers.config import ConfigError
from proxstudy.workers.training import EPOCH_KEYS, run_trial
from tests.support.trial_configs import trial_config


def digits_trial(**changes) -> dict:
    base = {
        "dataset": {"name": "digits", "train_samples": 400},
        "model": {"name": "mlp", "hidden": [32]},
        "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True},
        "device": "cpu",
    }
    return trial_config(**{**base, **changes})


def test_completed_trial_records_every_epoch():
    seen, reports = [], []
    outcome = run_trial(digits_trial(), seen.append, on_report=reports.append)
    assert outcome.status == "completed" and outcome.error is None and outcome.diverged_epoch is None
    assert outcome.device == "cpu"
    assert [e["epoch"] for e in outcome.history] == [0, 1, 2] and seen == outcome.history
    for entry in outcome.history:
        assert tuple(entry) == EPOCH_KEYS
        assert entry["objective"] == entry["train_loss"]
        assert 0.0 <= entry["train_accuracy"] <= 1.0 and 0.0 <= entry["val_accuracy"] <= 1.0
    assert outcome.history[0]["epoch_seconds"] == 0.0 and outcome.history[1]["epoch_seconds"] > 0.0
    # epoch 0 is the untrained net: cross-entropy near log(10); training lowers the full-batch loss
    assert abs(outcome.history[0]["train_loss"] - math.log(10)) < 0.2
    assert outcome.history[-1]["train_loss"] < 0.85 * outcome.history[0]["train_loss"]
    assert outcome.value == outcome.history[-1]["train_loss"]
    assert [r["trial_status"] for r in reports] == ["running", "running", "completed"]
    assert all(r["device"] == "cpu" and r["error"] is None for r in reports)


def test_full_batch_loss_is_the_mean_over_the_training_set():
    """The recorded train loss is the full-batch loss of the model, not a running average."""
    config = digits_trial(training={"epochs": 1, "batch_size": 50, "eval_batch_size": 7})
    outcome = run_trial(config)
    other = run_trial({**config, "training": {"epochs": 1, "batch_size": 50, "eval_batch_size": 10_000}})
    # chunking the evaluation does not change the value
    assert outcome.history[1]["train_loss"] == pytest.approx(other.history[1]["train_loss"], rel=1e-5)


def test_val_accuracy_objective_and_autoencoder():
    outcome = run_trial(digits_trial(objective="val_accuracy", mode="gradient", lr=0.1, optimizer={"name": "adam"}))
    assert outcome.status == "completed"
    assert all(e["objective"] == e["val_accuracy"] for e in outcome.history)
    auto = run_trial(digits_trial(model={"name": "autoencoder", "hidden": [16, 4]}, mode="prox_exact",
                                  optimizer={"name": "adam"}, lr=1e-2, tau_prox=1.0))
    assert auto.status == "completed"
    assert all(e["train_accuracy"] is None and e["val_accuracy"] is None for e in auto.history)
    assert auto.history[-1]["train_loss"] < auto.history[0]["train_loss"]


def test_convnet_on_synthetic():
    config = digits_trial(
        dataset={"name": "synthetic", "n_train": 64, "n_val": 16, "input_shape": [1, 8, 8], "num_classes": 3},
        model={"name": "convnet", "channels": [4, 4, 4]},
        optimizer={"name": "adam", "betas": [0.9, 0.99]},
        lr=1e-3, mode="prox_cg", cg_iterations=2, tau_prox=1.0, training={"epochs": 1, "batch_size": 32},
    )
    outcome = run_trial(config)
    assert outcome.status == "completed" and len(outcome.history) == 2


def test_divergence_stops_early():
    config = digits_trial(mode="gradient", lr=1e4, optimizer={"name": "sgd"}, training={"epochs": 6, "batch_size": 100})
    reports = []
    outcome = run_trial(config, on_report=reports.append)
    assert outcome.status == "diverged" and outcome.error is None
    assert outcome.diverged_epoch is not None and 1 <= outcome.diverged_epoch < 6
    assert len(outcome.history) == outcome.diverged_epoch + 1
    last = outcome.history[-1]
    assert last["train_loss"] is None or last["train_loss"] > 10 * outcome.history[0]["train_loss"]
    assert reports[-1]["trial_status"] == "diverged" and reports[-1]["diverged_epoch"] == outcome.diverged_epoch


def test_exploding_but_finite_loss_counts_as_divergence():
    """A tight divergence_factor turns an exploding (still finite) full-batch loss into divergence."""
    config = digits_trial(mode="gradient", lr=100.0, optimizer={"name": "sgd"},
                          training={"epochs": 3, "batch_size": 100, "divergence_factor": 5.0})
    outcome = run_trial(config)
    assert outcome.status == "diverged" and outcome.diverged_epoch == 1 and len(outcome.history) == 2
    bad = outcome.history[1]
    assert math.isfinite(bad["train_loss"]) and bad["train_loss"] > 5.0 * outcome.history[0]["train_loss"]
    assert bad["objective"] == bad["train_loss"]
    # a loose bound lets the same run complete (its loss is ~14x the initial one at epoch 1)
    assert run_trial({**config, "training": {"epochs": 1, "batch_size": 100, "divergence_factor": 50.0}}).status == "completed"


def test_loss_blown_up_fifty_fold_is_diverged_by_default():
    """BackProp at lr 120 blows the full-batch loss up to ~47x its initial value in one epoch: a
    run everyone reading Table 1 calls diverged. The default factor (10) records it so; the old
    default (1e3) recorded it as completed."""
    config = digits_trial(mode="gradient", lr=120.0, training={"epochs": 1, "batch_size": 100},
                          optimizer={"name": "sgd", "momentum": 0.95, "nesterov": True})
    loose = run_trial({**config, "training": {**config["training"], "divergence_factor": 1e3}})
    ratio = loose.history[1]["train_loss"] / loose.history[0]["train_loss"]
    assert loose.status == "completed" and 30.0 < ratio < 1e3
    outcome = run_trial(config)
    assert outcome.status == "diverged" and outcome.diverged_epoch == 1
    assert outcome.history[1]["train_loss"] == pytest.approx(loose.history[1]["train_loss"])


def test_same_seed_same_numbers_different_seed_different():
    first = run_trial(digits_trial())
    second = run_trial(digits_trial())
    strip = lambda h: [{k: v for k, v in e.items() if k != "epoch_seconds"} for e in h]  # noqa: E731
    assert strip(first.history) == strip(second.history)
    third = run_trial(digits_trial(seed=1))
    assert strip(third.history) != strip(first.history)
    # the trial does not disturb the caller's random state
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_trial(digits_trial(training={"epochs": 1, "batch_size": 200}))
    assert torch.equal(torch.rand(3), expected)


def test_failure_is_an_outcome_not_an_exception():
    # an absent CUDA device (CPU build) or a non-existent one (cuda:99) fails at run time
    outcome = run_trial(digits_trial(device="cuda:99"))
    assert outcome.status == "failed" and outcome.history == [] and outcome.value is None
    assert outcome.error and outcome.error.split(":")[0] in {"AssertionError", "RuntimeError", "AcceleratorError", "ValueError"}
    missing = run_trial(digits_trial(dataset={"name": "cifar10", "root": "/nonexistent/proxstudy"}))
    assert missing.status == "failed" and "DataError" in missing.error and "download: true" in missing.error


def test_invalid_config_raises_config_error():
    with pytest.raises(ConfigError) as info:
        run_trial(digits_trial(lr=-1))
    assert info.value.field == "lr"


def test_callback_exceptions_propagate():
    class Stop(Exception):
        pass

    def stop(entry):
        raise Stop

    with pytest.raises(Stop):
        run_trial(digits_trial(), stop)


def test_test_set_metrics_after_completion(tmp_path):
    from tests.support.data_files import cifar_arrays, write_cifar_batches

    write_cifar_batches(tmp_path / "cifar-10-batches-py", cifar_arrays(4))
    config = digits_trial(dataset={"name": "cifar10", "root": str(tmp_path), "val_size": 4},
                          training={"epochs": 1, "batch_size": 8})
    outcome = run_trial(config)
    assert outcome.status == "completed"
    assert 0.0 <= outcome.test_accuracy <= 1.0 and outcome.test_loss > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_the_recorded_device():
    outcome = run_trial(digits_trial(device="cuda"))
    assert outcome.status == "completed" and outcome.device.startswith("cuda:")
