"""Writing a file so that readers never see half of it: the one atomic write of the product.

Used for everything proxstudy writes for the user or caches (export files, HTML reports, the
CIFAR-10 array cache). This module imports only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_output", "write_atomically"]

#: Permissions of a written file (a temporary file starts private; the result is an ordinary file).
FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """A handle on a temporary file beside ``path`` that replaces ``path`` (fsync, rename)
    when the block ends; if the block raises, ``path`` keeps its old content and the
    temporary file is removed. ``mode``: "w" (text, UTF-8) or "wb"."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        handle: IO[Any] = os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(text: str, path: str | os.PathLike[str]) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as handle:
        handle.write(text)
