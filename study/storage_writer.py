"""The one writer of a sweep's storage: Optuna writes, in order, on a background thread."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import optuna
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from proxstudy.errors import SweepError

__all__ = ["STORAGE_RETRY_S", "StorageWriter", "is_connection_error"]

log = logging.getLogger(__name__)

#: How long the driver keeps retrying a storage write through connection errors.
STORAGE_RETRY_S = 60.0

Job = Callable[[], object]


def is_connection_error(exc: BaseException | None) -> bool:
    """Whether a storage error is the database being unreachable (worth retrying) rather than
    a bad write. Optuna wraps SQLAlchemy's errors in StorageInternalError: look at the causes."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (OperationalError, InterfaceError, DisconnectionError)):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class StorageWriter:
    """Runs the storage writes in order on one background thread of the driver.

    Tune's function trainables wait for the driver to take each result before they go on, so
    commits made inside the Tune callbacks (several per epoch; SQLite fsyncs each) would slow
    every trial down. Queued here they overlap with training; there is still a single writer.
    A storage failure is re-raised in the driver at the next submit/flush, which stops Tune.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._error: BaseException | None = None
        self.failure: str | None = None  # first failure, kept for the final message
        self._thread = threading.Thread(target=self._work, name="proxstudy-storage-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self.failure is None:
                    self._run_with_retries(job)
            except BaseException as exc:  # kept and re-raised in the driver thread
                self._error = exc
                self.failure = (f"writing to the storage failed: {type(exc).__name__}: "
                                f"{(str(exc).strip().splitlines() or [''])[0]}")
            finally:
                self._queue.task_done()

    @staticmethod
    def _run_with_retries(job: Job) -> None:
        """Ride out a short database outage (server restart, network blip): connection errors
        are retried with backoff for up to STORAGE_RETRY_S; anything else fails at once. A
        state change that did commit before the connection broke is not an error on retry."""
        deadline = time.monotonic() + STORAGE_RETRY_S
        delay = 0.5
        retried = False
        while True:
            try:
                job()
                return
            except optuna.exceptions.UpdateFinishedTrialError:
                if retried:
                    return
                raise
            except Exception as exc:
                if not is_connection_error(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("storage unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                retried = True

    def _raise(self) -> None:
        if self._error is not None:  # kept: every later call fails too, so Tune stops
            raise SweepError(self.failure) from self._error

    def __getstate__(self) -> dict:  # pickled with Tune's experiment state: see DriverState
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def submit(self, job: Job) -> None:
        self._raise()
        self._queue.put(job)

    def flush(self) -> None:
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)
