"""Ray for a sweep: start a local Ray or join a cluster, quietly, and size Tune's queue."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import ray

from proxstudy.errors import SweepError

__all__ = ["check_ray_address", "cluster_slots", "pending_trials_limit", "quiet_ray", "quiet_ray_loggers",
           "start_ray"]

_RAY_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.air")


def quiet_ray(verbose: bool) -> None:
    """Fewer files and less noise from Tune (the user's own settings win); Tune reads these
    variables when a run starts."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1" if verbose else "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    # The new output engine prints an experiment table even at verbose=0; the legacy one obeys.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose else "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "60")
    if not verbose:
        # A retried or failed trial gets one line from the recorder, not Tune's traceback.
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        os.environ.setdefault("RAY_LOG_TO_STDERR", "0")
        os.environ.setdefault("TUNE_MAX_LEN_IDENTIFIER", "40")


def quiet_ray_loggers(verbose: bool) -> None:
    """Ray's own loggers at ERROR unless verbose; set once the Tuner exists (it sets up Tune's
    logging when it is made)."""
    if not verbose:
        for name in _RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


def check_ray_address(address: str) -> None:
    """Fail in seconds, not minutes, on a wrong ``--ray-address`` host:port."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--ray-address {address!r}: expected HOST:PORT of a Ray head (GCS port)")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise SweepError(f"--ray-address {address}: cannot reach the Ray head ({exc.strerror or exc})") from None


def start_ray(ray_address: str | None, verbose: bool) -> bool:
    """Connect to / start Ray; returns whether this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if ray_address:
        check_ray_address(ray_address)
        try:
            ray.init(address=ray_address, **kwargs)
        except Exception as exc:
            raise SweepError(f"--ray-address {ray_address}: cannot join the Ray cluster: {exc}") from None
    else:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **kwargs)
    return True


def cluster_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the Ray cluster can run at once right now (at least 1)."""
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 1.0) // cpus_per_trial) if cpus_per_trial > 0 else 1
    if gpus_per_trial > 0:
        slots = min(slots, int(resources.get("GPU", 0.0) // gpus_per_trial))
    return max(1, slots)


@contextlib.contextmanager
def pending_trials_limit(n: int) -> Iterator[None]:
    """Let Tune queue ``n`` trials at once while the block runs. With a custom searcher Tune
    keeps a single trial pending, which starts trials one by one; the only setting for this is
    Tune's ``TUNE_MAX_PENDING_TRIALS_PG`` environment variable, read when a run starts, so it is
    set for the run and restored after it."""
    name = "TUNE_MAX_PENDING_TRIALS_PG"
    previous = os.environ.get(name)
    os.environ[name] = str(n)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
