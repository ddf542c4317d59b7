"""Single-threaded regions for small work on a CPU whose cores other processes share.

Measured on the 2-core CPU while another process held one core: eigh(500) took up to 1.4 s
and cholesky_inverse(500) 1.5 s with two threads (7 ms and 2 ms idle), and the moments
path's O(m N^2) scalar loop grew from 20 ms to seconds.  Work cut into many small parallel
regions waits at every region's barrier for the descheduled thread.  With one thread the same
calls take 11 ms, 3 ms and 20 ms whatever the load.  Large GEMMs are unaffected (much work per
region), so only small factorisations and the scalar loops run inside ``single_threaded``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["SINGLE_THREAD_SIZE", "single_threaded"]

#: Largest matrix that the CPU factorises single-threaded; larger ones (primal systems of wide
#: layers) have enough work per parallel region to use every thread.
SINGLE_THREAD_SIZE = 1024


@contextlib.contextmanager
def single_threaded(device: torch.device, size: int = 0) -> Iterator[None]:
    """One intra-op thread inside the block on the CPU when ``size`` <= SINGLE_THREAD_SIZE."""
    if device.type != "cpu" or size > SINGLE_THREAD_SIZE or torch.compiler.is_compiling():
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
