"""The same small digits sweep on a two-node Ray cluster (2 x 1 CPU) and on a local Ray (2 CPUs).

Why: joining a cluster (`proxstudy run --ray-address`) adds scheduling across raylets, object
transfer between nodes and a driver that is not co-located with the trials. This measures that
cost against the single-machine baseline, in the same run, on the same cores:

* local:      one node (`ray start --head --num-cpus=2`), `run_sweep(space, SweepOptions(ray_address=it))`;
* cluster:    a head (`--num-cpus=1`) and a worker (`--num-cpus=1`) on this machine, each its own
              process group; `run_sweep(space, SweepOptions(ray_address=head))`;
* local-auto: `run_sweep(...)` with no address: the runner starts (and stops) its own local Ray.
All with --max-concurrent 2 and 1 CPU per trial.

Printed: the sweep wall time (Ray up -> last trial recorded, the runner's `wall_seconds`) and
the end-to-end time of the call for each, and the ratios. The headline is cluster / local: both
started beforehand (as a cluster is for its users), so it isolates the cost of spreading the
trials over two raylets; local-auto also pays for starting Ray and its worker processes. Each
configuration writes a fresh study to its own SQLite file (or to --storage with a unique study
name).

    .venv/bin/python benchmarks/cluster_vs_local.py [--space search_spaces/digits-mlp-quick.yaml]
        [--repeat 1] [--storage URL]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Before Ray is imported: no usage reporting, and no token auth picked up from ~/.ray (the
# nodes below are started with the same setting).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("OMP_NUM_THREADS", "1")

RAY = str(Path(sys.executable).parent / "ray")

# 2 methods x 4 points x 2 seeds = 16 trials of a few seconds each on one core.
DEFAULT_SPACE = {
    "study": "bench-cluster-vs-local",
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [64, 64]},
    "training": {"epochs": 6, "batch_size": 100, "seeds": [0, 1]},
    "sampler": {"name": "grid"},
    "objective": "train_loss",
    "methods": {
        "backprop": {
            "mode": "gradient",
            "lr": {"low": 0.01, "high": 1.0, "log": True, "points": 4},
            "optimizer": {"name": "sgd", "momentum": 0.95, "nesterov": True},
        },
        "proxprop-cg3": {
            "mode": "prox_cg",
            "cg_iterations": 3,
            "tau_prox": 0.05,
            "lr": {"low": 0.1, "high": 10.0, "log": True, "points": 4},
            "optimizer": {"name": "sgd", "momentum": 0.95, "nesterov": True},
        },
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


class Node:
    """A `ray start --block` node in its own process group and temp dir."""

    def __init__(self, args: list[str]) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")
        self.proc = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
             f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
             "--num-gpus=0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def stop(self) -> None:
        pids = _descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _wait_cpus(address: str, cpus: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.strip().endswith(" CPU") and "/" in line and float(line.split("/")[1].split()[0]) >= cpus:
                return
        time.sleep(1)
    raise SystemExit(f"cluster at {address} did not reach {cpus} CPUs in {timeout} s")


@contextlib.contextmanager
def ray_cluster(cpus_per_node: list[int]):
    """Nodes on this machine with these CPU counts (the first is the head); yields its address."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes = [Node(["--head", f"--port={port}", f"--num-cpus={cpus_per_node[0]}", "--include-dashboard=false"])]
    try:
        time.sleep(2)
        for cpus in cpus_per_node[1:]:
            nodes.append(Node([f"--address={address}", f"--num-cpus={cpus}"]))
        _wait_cpus(address, sum(cpus_per_node))
        yield address
    finally:
        for node in reversed(nodes):
            node.stop()


def _sweep(space, storage: str | None, workdir: Path, ray_address: str | None) -> tuple[float, float, int, float]:
    from proxstudy.study.runner import SweepOptions, run_sweep

    url = storage or f"sqlite:///{workdir / (uuid.uuid4().hex + '.db')}"
    name = f"bench-{'cluster' if ray_address else 'local'}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    summary = run_sweep(space, SweepOptions(storage=url, study_name=name, ray_address=ray_address,
                                            max_concurrent=2, cpus_per_trial=1, progress=False))
    total = time.perf_counter() - t0
    if summary.left or summary.failed:
        raise SystemExit(f"sweep {name} did not finish cleanly: {summary}")
    # wall / (training seconds / concurrency): 1.0 = no time lost outside training. Training
    # seconds slow down with the machine's load too, so this is steadier than wall times.
    return summary.wall_seconds, total, summary.ran, summary.overhead_ratio or float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", help="search-space YAML (default: a 16-trial digits sweep)")
    parser.add_argument("--storage", help="storage URL (default: a fresh SQLite file per sweep)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)

    from proxstudy.study.space import as_search_space

    space = as_search_space(args.space or DEFAULT_SPACE)
    configs = {
        # name: (description, CPUs per node or None for the runner's own local Ray)
        "local": ("1 node x 2 CPUs, started beforehand", [2]),
        "cluster": ("2 nodes x 1 CPU, started beforehand", [1, 1]),
        "local-auto": ("the runner's own local Ray (no --ray-address)", None),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="bench-cvl-") as tmp:
        workdir = Path(tmp)
        for _ in range(args.repeat):
            for name, (what, cpus) in configs.items():
                if cpus is None:
                    wall, total, ran, overhead = _sweep(space, args.storage, workdir, None)
                else:
                    with ray_cluster(cpus) as address:
                        wall, total, ran, overhead = _sweep(space, args.storage, workdir, address)
                results[name].append((wall, total, overhead))
                print(f"{name:10s} {ran} trials, sweep {wall:6.1f} s, call {total:6.1f} s, "
                      f"overhead x{overhead:.2f}  ({what})", flush=True)

    def best(name: str, index: int) -> float:
        return min(r[index] for r in results[name])

    label = args.space or "built-in 16-trial digits sweep"
    print(f"sweep wall time ratio cluster/local:           {best('cluster', 0) / best('local', 0):.2f}  "
          f"(best of {args.repeat}; {label})")
    print(f"overhead ratio cluster/local:                  {best('cluster', 2) / best('local', 2):.2f}  "
          "(wall / (training time / concurrency), best of each)")
    print(f"end-to-end ratio cluster/local-auto:           {best('cluster', 1) / best('local-auto', 1):.2f}  "
          "(local-auto includes starting Ray; the cluster was already up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
