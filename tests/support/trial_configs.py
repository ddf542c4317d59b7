"""A valid trial config (docs/INTERFACES.md) to start tests from; keyword arguments replace keys."""

from __future__ import annotations

from proxstudy.workers.config import TrialConfig, validate_trial_config


def trial_config(**changes) -> dict:
    config = {
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 2, "batch_size": 100},
        "objective": "train_loss",
        "method": "proxprop-cg",
        "mode": "prox_cg",
        "lr": 1.0,
        "tau_prox": 0.05,
        "cg_iterations": 3,
        "optimizer": {"name": "sgd", "momentum": 0.95, "nesterov": True},
        "seed": 0,
    }
    config.update(changes)
    return config


def valid_trial_config(**changes) -> TrialConfig:
    """:func:`trial_config`, validated into the typed config the training loop takes."""
    return validate_trial_config(trial_config(**changes), "<test>")
