"""A valid trial config (docs/INTERFACES.md) to start tests from; keyword arguments replace keys."""

from __future__ import annotations


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
