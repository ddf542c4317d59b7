"""The errors proxstudy raises for what a user gave it (never for its own bugs).

Every expected failure -- bad input, unusable storage, missing data, a study that does not
exist or cannot be run as asked -- is a :class:`ProxstudyError`, so a caller (the ``proxstudy``
command, a notebook) catches one class and prints ``str(error)``: one line, safe to show (never
a password). This module imports nothing, so any layer can raise these errors and the command
can catch them without importing torch, Ray or Optuna.

Each subclass also derives from the built-in exception it used to be (``ValueError``,
``RuntimeError``, ``LookupError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "NothingToExport",
    "ProxstudyError",
    "StorageError",
    "StudyNotFound",
    "SweepError",
    "UsageError",
    "printable",
]


class ProxstudyError(Exception):
    """Base of every error caused by the user's input or environment; the message is one line
    that names what is wrong (the file and field, the storage, the study)."""


class ConfigError(ProxstudyError, ValueError):
    """Bad user input: ``str(e) == "<source>: <field.path>: <what is wrong>"``.

    ``source`` is the file name (or ``"<config>"``), ``field`` the dotted path of the field
    ("" for the whole document), ``message`` what is wrong with it.
    """

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        where = f"{printable(source)}: {printable(field)}: " if field else f"{printable(source)}: "
        super().__init__(where + printable(message))


def printable(text: str) -> str:
    """``text`` on one line: control, format and line-separator characters (a newline in a
    method name, a bidi override) shown escaped, as ``\\n`` or ``\\u202e``."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char == " " else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


class DataError(ProxstudyError, ValueError):
    """Data files missing or unusable; the message names the path and how to get the data."""


class StorageError(ProxstudyError, RuntimeError):
    """The storage cannot be used: bad URL, unreachable server, missing SQLite file."""


class SweepError(ProxstudyError, RuntimeError):
    """A sweep cannot start or go on as asked (changed search space, study busy, Ray
    unreachable, the storage failed mid-sweep)."""


class StudyNotFound(ProxstudyError, LookupError):
    """No study of that name in the storage (the message names the studies there)."""


class NothingToExport(ProxstudyError, LookupError):
    """The study has nothing exportable (no stored search space, or no completed point)."""


class UsageError(ProxstudyError):
    """A command-line option that cannot work (an --out directory that does not exist, a
    dashboard host beyond localhost without --allow-remote)."""
