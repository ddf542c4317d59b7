"""The Ray Tune function trainable: one trial config in, one report per epoch out.

Ray is imported inside the function only, so the rest of workers/ (and `proxstudy train`)
works without it. Each report is the epoch dict of workers.training plus trial_status,
diverged_epoch, device and error; the last report carries the final status. A failed trial
(status "failed") is reported, not raised: to the study it is a result like any other.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from proxstudy.workers.config import ConfigError
from proxstudy.workers.training import EPOCH_KEYS, run_trial

__all__ = ["proxprop_trainable", "threads_for_trial"]


def threads_for_trial(config: Mapping) -> int | None:
    """Torch threads matching the CPUs this trial was given (config["_cpus"] if the sweep sets
    it, else Ray's assigned resources), so concurrent trials do not oversubscribe the node."""
    cpus = config.get("_cpus")
    if cpus is None:
        try:
            import ray

            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except Exception:  # outside Ray or an API change: leave torch's default
            cpus = None
    if cpus is None:
        return None
    return max(1, int(float(cpus)))


def proxprop_trainable(config: dict) -> None:
    """Ray Tune function trainable for one trial config (plus optional "_point_key")."""
    from ray import tune

    threads = threads_for_trial(config)
    if threads is not None:
        torch.set_num_threads(threads)
    last: dict = {key: None for key in EPOCH_KEYS}

    def report(metrics: dict) -> None:
        last.update({key: metrics[key] for key in EPOCH_KEYS})
        tune.report(metrics)

    try:
        outcome = run_trial(config, on_report=report)
    except ConfigError as exc:  # the sweep validated it, so this is a bug: record, don't crash
        tune.report({**last, "trial_status": "failed", "diverged_epoch": None, "device": None, "error": str(exc)})
        return
    if outcome.status == "failed":
        tune.report(
            {
                **last,
                "trial_status": "failed",
                "diverged_epoch": None,
                "device": outcome.device,
                "error": outcome.error,
            }
        )
