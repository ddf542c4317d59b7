"""Process helpers for the tests that start Ray outside pytest (subprocess drivers, clusters).

They read /proc because Ray's workers leave the node's process group but not its process tree,
so a test can kill exactly what it started and nothing else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path


def _proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_text(int(entry), "stat")
            if stat:
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    tree, out, stack = _children_map(), [], [pid]
    while stack:
        for child in tree.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def processes_marked(marker: str) -> list[int]:
    """Processes whose command line or environment mentions ``marker`` (a unique temp dir)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            pid = int(entry)
            if marker in _proc_text(pid, "cmdline") or marker in _proc_text(pid, "environ"):
                out.append(pid)
    return out


def kill_everything_of(leader: int, marker: str, known: list[int] = ()) -> None:
    """SIGKILL what one test started: a process (group) leader, its descendants (Ray workers
    leave the group, not the tree), anything carrying the test's unique marker, and ``known``
    pids snapshotted earlier (orphans re-parented away from the leader)."""
    pids = set(descendants(leader)) | set(processes_marked(marker)) | set(known)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
