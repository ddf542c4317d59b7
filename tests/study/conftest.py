"""Fixtures shared by the sweep tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.ray_nodes import RayNode


@pytest.fixture
def start_ray_node(tmp_path) -> Iterator[Callable[..., RayNode]]:
    """Starts Ray nodes on this machine (``start_ray_node(*args)``, args of `ray start`);
    every node started is stopped at the end of the test, whatever happens."""
    started: list[RayNode] = []

    def start(*args: str, env: dict[str, str] | None = None) -> RayNode:
        node = RayNode(args, tmp_path / f"ray-node-{len(started)}.log", env)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in reversed(started):
            node.stop()
