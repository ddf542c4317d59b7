"""Keeping the cyclic garbage collector from re-walking the dashboard's drawn studies.

A snapshot of a 50,000-trial study is about a million container objects (records, their
per-epoch lists, table rows). Built while the collector is paused (``records_sql.gc_paused``),
they are all young when it resumes: the next collections walk them as generation 0, again as
generation 1, and then the whole heap in a full collection, 1.3-1.8 s of CPU per build
(benchmarks/dashboard_load.py, 50,000 trials), while nothing in them is cyclic garbage.

So the server freezes the heap after each build (``gc.freeze``: tracked objects move to a
permanent generation that collections skip; objects are still freed by reference counting as
usual). What a frozen object cannot get is the collection of a reference cycle it is part of
once that cycle is dropped (a replaced snapshot's Plotly figures, ~3,000 objects). Every
``FULL_COLLECT_EVERY`` builds the heap is therefore unfrozen and fully collected once, which
bounds what waits for collection to the cycles dropped over that many builds.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["FULL_COLLECT_EVERY", "release", "settle"]

#: Builds between full collections of the unfrozen heap (the bound on deferred cyclic garbage).
FULL_COLLECT_EVERY = 10

_lock = threading.Lock()
_builds = 0


def settle() -> None:
    """After a snapshot is built: freeze the heap, with a full collection every
    ``FULL_COLLECT_EVERY`` calls. Call it while the collector is still paused, so that the
    build's objects are frozen before any collection walks them."""
    global _builds
    with _lock:
        _builds += 1
        if _builds >= FULL_COLLECT_EVERY:
            _builds = 0
            gc.unfreeze()
            gc.collect()
        gc.freeze()


def release() -> None:
    """Unfreeze the heap (the dashboard's caches were cleared): what was frozen is collected
    by the ordinary collections again."""
    global _builds
    with _lock:
        _builds = 0
        gc.unfreeze()
