"""dashboards.heap: the server's snapshots are frozen out of collections, and cycles dropped
meanwhile are still collected within FULL_COLLECT_EVERY builds."""

from __future__ import annotations

import gc
import weakref

import pytest

from proxstudy.dashboards import heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def _unfrozen():
    heap.release()
    yield
    heap.release()


def test_settle_freezes_what_is_alive():
    kept = [[i] for i in range(1000)]
    heap.settle()
    assert gc.get_freeze_count() >= len(kept)
    assert not any(obj is kept for obj in gc.get_objects())  # collections no longer walk it


def test_a_cycle_dropped_after_a_freeze_is_collected_within_the_bound():
    node = _Node()
    gone = weakref.ref(node)
    heap.settle()
    del node
    gc.collect()
    assert gone() is not None  # frozen: ordinary collections skip it
    for _ in range(heap.FULL_COLLECT_EVERY - 1):
        heap.settle()
    assert gone() is None


def test_release_returns_frozen_objects_to_the_collector():
    node = _Node()
    gone = weakref.ref(node)
    heap.settle()
    del node
    heap.release()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None
