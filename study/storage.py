"""Where studies live: storage-URL resolution, connectivity checks and password redaction.

Every command resolves its storage URL here, so the default (``PROXSTUDY_STORAGE`` else
``sqlite:///proxstudy.db`` in the working directory) is defined once. Connectivity is checked
with a short timeout *before* anything is written, so a wrong host or password fails fast with
one clear line instead of a hanging sweep or a half-created study. URLs are only ever shown
through :func:`redact`, which hides the password.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from proxstudy.errors import StorageError
from proxstudy.study.redaction import redact, redact_text, scrub_secrets, unencoded_at

__all__ = [
    "StorageError",
    "check_storage",
    "open_storage",
    "redact",
    "redact_text",
    "resolve_storage_url",
    "scrub_secrets",
    "sqlite_path",
    "storage_engine",
    "write_failure",
]

ENV_STORAGE = "PROXSTUDY_STORAGE"
DEFAULT_SQLITE_FILE = "proxstudy.db"
CONNECT_TIMEOUT_S = 5


def resolve_storage_url(url: str | None = None, cwd: str | os.PathLike | None = None) -> str:
    """The storage URL a command uses: the argument, else ``$PROXSTUDY_STORAGE``, else SQLite.

    The SQLite default is made absolute so that messages show where the file really is.
    """
    if url is not None:
        if not url.strip():
            raise StorageError("--storage: the storage URL is empty (leave the option out for the default)")
        return url
    from_env = os.environ.get(ENV_STORAGE, "").strip()
    if from_env:
        return from_env
    base = Path(cwd) if cwd is not None else Path.cwd()
    return f"sqlite:///{(base / DEFAULT_SQLITE_FILE).resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for in-memory or non-SQLite URLs)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _connect_args(url: str) -> dict:
    parsed = make_url(url)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "postgresql":
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    if backend == "mysql" and driver in {"pymysql", "mysqldb", "mysqlconnector"}:
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    if backend == "sqlite":
        # The driver is the only writer, but readers (status, dashboards) may hold a lock briefly.
        return {"timeout": 30}
    return {}


def check_storage(url: str, *, must_exist: bool) -> None:
    """Fail fast with a :class:`StorageError` if ``url`` cannot be used; writes nothing.

    ``must_exist``: the command only reads (status, export, ...), so a missing SQLite file is an
    error rather than something to create. For SQLite nothing is opened at all (opening would
    create the file); for servers one ``SELECT 1`` is run with a short connect timeout.
    """
    shown = redact(url)
    if not url.strip():
        raise StorageError("--storage: the storage URL is empty")
    try:
        make_url(url)
    except Exception:
        raise StorageError(f"storage URL {shown!r} is not a valid SQLAlchemy URL "
                           "(expected e.g. sqlite:///FILE or postgresql+psycopg://USER@HOST/DB)") from None
    if unencoded_at(url):
        raise StorageError(f"storage {shown}: the part before the host holds more than one '@'; "
                           "write an '@' inside the password as %40")

    path = sqlite_path(url)
    if path is not None:
        if must_exist and not path.is_file():
            raise StorageError(f"storage {shown}: no database file at {path}")
        _check_sqlite_header(path, shown)
        if must_exist:
            _check_has_studies_table(path, shown)
        if not must_exist and not path.parent.is_dir():
            raise StorageError(f"storage {shown}: directory {path.parent} does not exist")
        if not must_exist:
            _check_writable(path, shown)
        return
    if make_url(url).get_backend_name() == "sqlite":
        return  # in-memory: nothing to reach
    try:
        engine = create_engine(url, connect_args=_connect_args(url))
    except Exception as exc:  # unknown dialect, driver not installed
        raise StorageError(f"storage {shown}: {scrub_secrets(_first_line(exc), url)}") from None
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        reason = scrub_secrets(_first_line(getattr(exc, "orig", None) or exc), url)
        raise StorageError(f"storage {shown} is not reachable: {reason}") from None
    finally:
        engine.dispose()


#: The first bytes of every SQLite 3 database file (an empty file is an empty database too).
_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_header(path: Path, shown: str) -> None:
    """A file that exists but is not a SQLite database fails here, before any driver reads it."""
    if not path.is_file():
        return
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StorageError(f"storage {shown}: cannot read {path} ({exc.strerror or exc})") from None
    if head and head != _SQLITE_HEADER:
        raise StorageError(f"storage {shown}: {path} is not a SQLite database")


def _check_has_studies_table(path: Path, shown: str) -> None:
    """A command that only reads refuses a SQLite file without Optuna's tables (an empty file,
    another program's database): opening it with Optuna would write the tables into it."""
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'studies'").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise StorageError(f"storage {shown}: cannot read {path} ({exc})") from None
    if found is None:
        raise StorageError(f"storage {shown}: {path} holds no Optuna studies (no Optuna tables); "
                           "`proxstudy run` creates them")


def _check_writable(path: Path, shown: str) -> None:
    """A SQLite file (or its directory) that cannot be written fails here, before anything is
    written: opening the file for update writes nothing (even root gets EPERM on an
    immutable file)."""
    if path.is_dir():
        raise StorageError(f"storage {shown}: {path} is a directory, not a database file")
    if path.exists():
        try:
            with open(path, "r+b"):
                pass
        except OSError as exc:
            raise StorageError(f"storage {shown}: the database file {path} cannot be written "
                               f"({exc.strerror or exc})") from None
    elif not os.access(path.parent, os.W_OK):
        raise StorageError(f"storage {shown}: directory {path.parent} is not writable")


def _first_line(exc: BaseException) -> str:
    message = str(exc).strip() or type(exc).__name__
    return message.splitlines()[0]


#: Tries at opening a storage whose Optuna tables another process is creating at that moment.
_OPEN_TRIES = 4


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url`` (creates Optuna's tables if needed).

    Two processes creating the tables of a fresh database at once make one of them fail (an
    ``IntegrityError`` on ``alembic_version``, or a table that exists after all); that one
    tries again, and then finds the tables made."""
    engine_kwargs: dict = {"connect_args": _connect_args(url)}
    if sqlite_path(url) is None and not url.startswith("sqlite"):
        engine_kwargs["pool_pre_ping"] = True
    for attempt in range(_OPEN_TRIES):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
            if make_url(url).get_backend_name() == "sqlite":
                _commit_without_fsync(storage.engine)
            return storage
        except SQLAlchemyError as exc:
            if attempt == _OPEN_TRIES - 1:
                raise StorageError(f"storage {redact(url)}: {scrub_secrets(_first_line(exc), url)}") from None
            time.sleep(0.2 * (attempt + 1))  # the other process finishes its CREATE TABLEs
        except Exception as exc:
            raise StorageError(f"storage {redact(url)}: {scrub_secrets(_first_line(exc), url)}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _commit_without_fsync(engine: Engine) -> None:
    """The sweep's SQLite connections commit with ``synchronous=NORMAL``: the driver writes a
    commit per epoch of every trial, and with SQLite's default (FULL) each waits for the disk
    (5-18 ms here against 1 ms; a fused sweep's writes fell 16 s behind its trials).  A commit
    still survives the driver's crash or kill -9 (the OS holds it); a power cut may lose the
    last ones.  The journal mode stays SQLite's default, so readers need nothing new."""
    def set_synchronous(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", set_synchronous)
    engine.dispose()  # the connections made while creating the tables get it too


def storage_engine(url: str) -> Engine:
    """A SQLAlchemy engine for ``url`` with the connect arguments the storage uses (the driver
    lease lives in the study's own database). A server's pooled connections are checked before
    use, as the storage's are: after an outage the pool holds dead ones."""
    pre_ping = sqlite_path(url) is None and not url.startswith("sqlite")
    return create_engine(url, connect_args=_connect_args(url), pool_pre_ping=pre_ping)


def write_failure(url: str, exc: BaseException) -> StorageError:
    """The error for a database that refused a write (a read-only file, a name too long)."""
    reason = scrub_secrets(_first_line(getattr(exc, "orig", None) or exc), url)
    return StorageError(f"storage {redact(url)}: cannot write the study: {reason}")
