"""Ray nodes on this machine for cluster tests.

Each node is a `ray start --block` process in its own session and temp dir, on free ports, so a
test can kill one like a crashed machine, and tear down exactly what it started, without
touching any other Ray on the host.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.cli import BIN, cli_env
from tests.support.processes import free_port, kill_everything_of

RAY = str(BIN / "ray")


def ray_env(**extra: str) -> dict[str, str]:
    """cli_env with RAY_AUTH_MODE explicit: otherwise a token left in ~/.ray by any local Ray
    switches a head to token auth while clients started without it cannot connect."""
    return cli_env(RAY_AUTH_MODE="disabled", **extra)


class RayNode:
    """One `ray start --block` node (``args``: --head/--address, CPUs, ...); killable."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: socket path limit
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}", *args],
                stdout=out, stderr=subprocess.STDOUT, env=env or ray_env(), start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node and everything it started, like a machine that died."""
        kill_everything_of(self.proc.pid, self.temp_dir)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Tear down (SIGKILL: a SIGTERM makes `ray start --block` drain for up to 30 s)."""
        try:
            self.kill()
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def live_nodes(address: str) -> int:
    result = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, text=True,
                            env=ray_env(), timeout=60)
    if result.returncode != 0:
        return 0
    active = result.stdout.split("Pending:")[0]
    return sum(1 for line in active.splitlines() if line.strip().startswith("1 node_"))


def wait_for_nodes(address: str, n: int, nodes: Sequence[RayNode] = (), timeout: float = 120) -> None:
    """Wait until the cluster has exactly ``n`` live nodes (a killed node drops out once the
    head's health checks notice, a started one counts once it has registered); ``nodes`` must
    stay alive meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            assert node.alive(), f"ray node exited: {node.log.read_text()[-2000:]}"
        if live_nodes(address) == n:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} did not reach {n} nodes in {timeout} s")
