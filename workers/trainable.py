"""The Ray Tune function trainable: one trial config in, one report per epoch out.

Each report is the epoch dict of workers.training plus trial_status, diverged_epoch, device and
error; the last report carries the final status. A failed trial (status "failed") is reported,
not raised: to the study it is a result like any other.

The Tune config: a sweep passes its validated :class:`TrialConfig` under ``TRIAL_CONFIG_KEY``,
beside ``POINT_KEY`` (the point's key, for the driver) and ``CPUS_KEY`` (torch threads). A Tune
``param_space`` of one's own is a plain trial config (INTERFACES.md), validated here, where it
enters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray
import torch
from ray import tune

from proxstudy.errors import ConfigError
from proxstudy.workers.config import TrialConfig, validate_trial_config
from proxstudy.workers.training import run_trial
from proxstudy.workers.vocabulary import (
    EPOCH_KEYS,
    REPORT_DEVICE,
    REPORT_DIVERGED_EPOCH,
    REPORT_ERROR,
    REPORT_STATUS,
    STATUS_FAILED,
)

__all__ = ["CPUS_KEY", "POINT_KEY", "TRIAL_CONFIG_KEY", "failure_metrics", "proxprop_trainable", "threads_for_trial"]

TRIAL_CONFIG_KEY = "trial_config"
POINT_KEY = "_point_key"
CPUS_KEY = "_cpus"


def threads_for_trial(config: Mapping[str, Any]) -> int | None:
    """Torch threads matching the CPUs this trial was given (config[CPUS_KEY] if the sweep sets
    it, else Ray's assigned resources), so concurrent trials do not oversubscribe the node."""
    cpus = config.get(CPUS_KEY)
    if cpus is None:
        try:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except Exception:  # outside Ray or an API change: leave torch's default
            cpus = None
    if cpus is None:
        return None
    return max(1, int(float(cpus)))


def failure_metrics(last: Mapping[str, Any], device: str | None, error: str | None) -> dict[str, Any]:
    """What a failed trial reports: its last epoch dict (None values before epoch 0), status
    failed, the device and the error."""
    return {**{key: last.get(key) for key in EPOCH_KEYS}, REPORT_STATUS: STATUS_FAILED, REPORT_DIVERGED_EPOCH: None,
            REPORT_DEVICE: device, REPORT_ERROR: error}


def _trial_config(config: Mapping[str, Any]) -> TrialConfig:
    given = config.get(TRIAL_CONFIG_KEY)
    if isinstance(given, TrialConfig):
        return given
    return validate_trial_config(config, "<config>")


def proxprop_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable for one trial (see the module docstring for ``config``)."""
    threads = threads_for_trial(config)
    if threads is not None:
        torch.set_num_threads(threads)
    last: dict[str, Any] = dict.fromkeys(EPOCH_KEYS)

    def report(metrics: dict[str, Any]) -> None:
        last.update({key: metrics[key] for key in EPOCH_KEYS})
        tune.report(metrics)

    def report_failure(device: str | None, error: str | None) -> None:
        tune.report(failure_metrics(last, device, error))

    try:
        trial = _trial_config(config)
    except ConfigError as exc:  # a Tune user's own param_space: record it as failed, don't crash
        report_failure(None, str(exc))
        return
    outcome = run_trial(trial, on_report=report)
    if outcome.status == STATUS_FAILED:
        report_failure(outcome.device, outcome.error)
