"""Ray for a sweep: start a local Ray or join a cluster, quietly, and size Tune's queue."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ray

from proxstudy.errors import SweepError, UsageError

__all__ = ["check_ray_address", "check_trial_fits", "cluster_nodes", "cluster_slots", "local_node",
           "pending_trials_limit", "quiet_ray", "quiet_ray_loggers", "start_ray"]

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


def local_node() -> dict[str, float]:
    """What the local Ray that :func:`start_ray` starts will offer: every CPU of this machine and
    the GPUs CUDA shows (known without starting Ray)."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of each live node of the Ray cluster this process is connected to."""
    return [
        {key: float(value) for key, value in node.get("Resources", {}).items()}
        for node in ray.nodes()
        if node.get("Alive")
    ]


def _amount(value: float) -> str:
    return f"{value:g}"


def check_trial_fits(cpus_per_trial: float, gpus_per_trial: float, nodes: Sequence[Mapping[str, float]],
                     wait: bool) -> str | None:
    """Whether one trial's request fits on one node: None when it does; otherwise a
    :class:`UsageError` naming the option and what the cluster has, or with ``wait`` (an
    autoscaling cluster that will add nodes) the line saying what the sweep waits for."""
    most_cpu = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    most_gpu = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    total_cpu = sum(node.get("CPU", 0.0) for node in nodes)
    total_gpu = sum(node.get("GPU", 0.0) for node in nodes)
    has = (f"the cluster has {len(nodes)} node(s), {_amount(total_cpu)} CPU(s) and {_amount(total_gpu)} GPU(s), "
           f"at most {_amount(most_cpu)} CPU(s) and {_amount(most_gpu)} GPU(s) on one node")
    fits_cpu = any(node.get("CPU", 0.0) >= cpus_per_trial and node.get("GPU", 0.0) >= gpus_per_trial
                   for node in nodes)
    if fits_cpu:
        return None
    option, asked = (("--gpus-per-trial", gpus_per_trial) if most_gpu < gpus_per_trial
                     else ("--cpus-per-trial", cpus_per_trial))
    if wait:
        return (f"waiting for the cluster to add a node with {_amount(cpus_per_trial)} CPU(s) and "
                f"{_amount(gpus_per_trial)} GPU(s) for one trial ({option} {_amount(asked)}); now {has}")
    raise UsageError(f"{option} {_amount(asked)}: no node can run a trial asking for "
                     f"{_amount(cpus_per_trial)} CPU(s) and {_amount(gpus_per_trial)} GPU(s); {has} "
                     "(on an autoscaling cluster add --wait-for-resources)")
