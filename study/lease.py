"""One live driver per study: a lease row in the study's own database.

Two ``proxstudy run`` of one study at once would both create every trial (each sees no running
trial when it starts). So before a driver opens a study it takes the study's lease: a row of
``proxstudy_driver_leases`` keyed by the study name, taken with one INSERT (the primary key
makes it atomic on SQLite and PostgreSQL alike: of two drivers started together exactly one
insert succeeds). The holder renews the row's expiry from a background thread (heartbeat) and
deletes it when it ends, Ctrl-C included. A driver that died leaves its row behind; a successor
takes it over when it has expired, or at once when the holder was a process on this host that
no longer exists, by an UPDATE conditioned on the row's token (compare-and-swap: of two
successors one wins). The loser gets a :class:`~proxstudy.errors.SweepError` naming the live
driver (host and pid).

Expiry uses the drivers' wall clocks, so the clocks of the hosts that run drivers must agree to
well within :data:`DEFAULT_TTL_S`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa

from proxstudy.errors import SweepError

__all__ = ["DEFAULT_TTL_S", "LEASE_TABLE", "Lease", "acquire_lease", "lease_holder", "live_driver"]

_log = logging.getLogger(__name__)

#: A lease not renewed for this long is free for a successor (a driver renews every third).
DEFAULT_TTL_S = 60.0
LEASE_TABLE = "proxstudy_driver_leases"

_META = sa.MetaData()
_LEASES = sa.Table(
    LEASE_TABLE,
    _META,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("driver", sa.String(300), nullable=False),  # host:pid
    sa.Column("token", sa.String(64), nullable=False),  # one per acquisition
    sa.Column("expires_at", sa.Float, nullable=False),  # unix time
)


def _ensure_table(engine: sa.engine.Engine) -> None:
    """Create the lease table unless it exists; two drivers creating it at once is fine."""
    try:
        _META.create_all(engine, checkfirst=True)
    except sa.exc.SQLAlchemyError:
        # The other driver created it between our check and our CREATE: that is all we wanted.
        if not sa.inspect(engine).has_table(LEASE_TABLE):
            raise


def _this_driver() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_here(driver: str) -> bool:
    """Whether ``driver`` (host:pid) was a process on this host that no longer exists."""
    host, _, pid = driver.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False  # this very process (another thread's sweep): alive
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


@dataclass(eq=False)
class Lease:
    """A held lease; :meth:`release` (or the ``with`` block's end) gives it back."""

    engine: sa.engine.Engine
    study_name: str
    driver: str
    token: str
    ttl_s: float
    took_over: str | None = None  # the dead driver whose lease this one took over
    lost: bool = False  # a successor took it over (this driver was stalled past the expiry)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def renew(self) -> bool:
        """Push the expiry on; False (and ``lost``) when the lease is no longer this one's."""
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(_LEASES)
                .where(_LEASES.c.study_name == self.study_name, _LEASES.c.token == self.token)
                .values(expires_at=time.time() + self.ttl_s)
            )
        if result.rowcount != 1:
            self.lost = True
        return not self.lost

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="proxstudy-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    _log.error("the lease of study %r was taken over by another driver", self.study_name)
                    return
            except sa.exc.SQLAlchemyError as exc:  # the database is away: try again next beat
                _log.warning("renewing the lease of study %r failed (%s)", self.study_name, type(exc).__name__)

    def release(self) -> None:
        """Stop the heartbeat and delete the row (only if it is still this lease's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.delete(_LEASES)
                    .where(_LEASES.c.study_name == self.study_name, _LEASES.c.token == self.token)
                )
        except sa.exc.SQLAlchemyError as exc:  # it expires by itself
            _log.warning("releasing the lease of study %r failed (%s)", self.study_name, type(exc).__name__)
        finally:
            self.engine.dispose()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lease_holder(engine: sa.engine.Engine, study_name: str) -> tuple[str, float] | None:
    """(driver, expires_at) of the study's lease row, or None when there is none."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(_LEASES.c.driver, _LEASES.c.expires_at).where(_LEASES.c.study_name == study_name)
        ).first()
    return None if row is None else (str(row[0]), float(row[1]))


def live_driver(engine: sa.engine.Engine, study_name: str) -> str | None:
    """The driver (host:pid) holding the study's unexpired lease, or None: no lease table, no
    row, an expired one, or a database that cannot say (reading never creates the table)."""
    try:
        if not sa.inspect(engine).has_table(LEASE_TABLE):
            return None
        holder = lease_holder(engine, study_name)
    except sa.exc.SQLAlchemyError:
        return None
    if holder is None or holder[1] <= time.time() or _dead_here(holder[0]):
        return None
    return holder[0]


def acquire_lease(engine: sa.engine.Engine, study_name: str, *, ttl_s: float = DEFAULT_TTL_S,
                  heartbeat: bool = True, driver: str | None = None) -> Lease:
    """Take the study's lease (see the module doc) or raise :class:`SweepError` naming the live
    driver. The lease owns ``engine`` from here on (it is disposed on release)."""
    me = driver or _this_driver()
    _ensure_table(engine)
    for _ in range(5):  # each pass ends in a decision unless the row changed under us
        token = uuid.uuid4().hex
        try:
            with engine.begin() as conn:
                conn.execute(sa.insert(_LEASES).values(
                    study_name=study_name, driver=me, token=token, expires_at=time.time() + ttl_s))
            return _held(Lease(engine, study_name, me, token, ttl_s), heartbeat)
        except sa.exc.IntegrityError:
            pass  # a row exists: held, or left by a dead driver
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(_LEASES.c.driver, _LEASES.c.token, _LEASES.c.expires_at)
                .where(_LEASES.c.study_name == study_name)
            ).first()
        if row is None:
            continue  # released meanwhile: try the insert again
        holder, old_token, expires_at = str(row[0]), str(row[1]), float(row[2])
        if expires_at > time.time() and not _dead_here(holder):
            engine.dispose()
            left = max(0, round(expires_at - time.time()))
            raise SweepError(
                f"study {study_name!r} is being run by driver {holder} (host:pid); wait for it to "
                f"finish or stop it first (if it died on another host, its lease expires within {left} s)"
            )
        with engine.begin() as conn:
            result = conn.execute(
                sa.update(_LEASES)
                .where(_LEASES.c.study_name == study_name, _LEASES.c.token == old_token)
                .values(driver=me, token=token, expires_at=time.time() + ttl_s)
            )
        if result.rowcount == 1:
            return _held(Lease(engine, study_name, me, token, ttl_s, took_over=holder), heartbeat)
    engine.dispose()
    raise SweepError(f"study {study_name!r}: its driver lease keeps changing hands; try again")


def _held(lease: Lease, heartbeat: bool) -> Lease:
    if heartbeat:
        lease.start_heartbeat()
    return lease
