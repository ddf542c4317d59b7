"""Making storage URLs safe to show: every password form SQLAlchemy accepts, masked.

The one place passwords are taken out of URLs and of texts that quote them (error messages of
database drivers). Everything that shows, logs or stores a storage URL -- error lines, the
"see the results" commands, the dashboard, the HTML report -- goes through :func:`redact` (or
:func:`scrub_secrets` for a driver's message). Pure string work, no imports beyond the
standard library, so the command line can redact its error lines without loading SQLAlchemy.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

__all__ = ["redact", "redact_text", "scrub_secrets", "unencoded_at"]

#: ``scheme://`` of a URL inside any text (error messages quote URLs).
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
#: A password given in a query: ``?password=...``, ``&sslpassword=...``, and libpq's
#: ``password=...`` inside a value (a conninfo string), the ``=`` plain or percent-encoded.
_QUERY_PASSWORD = re.compile(r"(?i)((?:ssl)?pass(?:word)?\s*(?:=|%3D)\s*)('[^']*'|(?:(?!%20|%26)[^&\s+])*)")
_MASK = "***"


#: SQLAlchemy's own ``user:password@`` grammar: the password runs to the first "@" and may
#: hold "/", "?" and ":".
_USER_PASSWORD = re.compile(r"([^:/@]*):([^@]*)@")


def _user_part(rest: str) -> tuple[str, str, int] | None:
    """(user, password, end) of the part of ``rest`` (a URL after ``://``) before the host, or
    None when it gives no password. A password may hold an unencoded "@" (and "?" or "/"), so
    the part ends at the last "@" that a "/" follows (the database's), else at the last "@":
    when in doubt, more is hidden, never less."""
    match = _USER_PASSWORD.match(rest)
    if match is None:
        return None
    first = match.end() - 1  # where SQLAlchemy ends the password
    at = rest.rfind("@", first, max(first, rest.rfind("/")))
    if at < 0:
        at = rest.rfind("@")
    return match.group(1), rest[match.start(2):at], at


def _redact_one(url: str) -> str:
    """One URL (no surrounding text) with every password form masked."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _QUERY_PASSWORD.sub(rf"\g<1>{_MASK}", url)
    user_part = _user_part(rest)
    if user_part is not None:
        user, _password, at = user_part
        rest = f"{user}:{_MASK}" + rest[at:]
    query_at = rest.find("?")
    if query_at >= 0:
        rest = rest[:query_at] + _QUERY_PASSWORD.sub(rf"\g<1>{_MASK}", rest[query_at:])
    return f"{scheme}://{rest}"


def redact(url: str) -> str:
    """The URL with every password SQLAlchemy accepts masked as ``***``: ``user:password@``
    (an unencoded ``@`` in it included), ``?password=`` and a libpq ``password=`` in the query.
    The one function that makes a URL safe to show, log or store."""
    return _redact_one(str(url))


def redact_text(text: str) -> str:
    """Any text with every URL in it redacted (the URL runs to the next whitespace)."""
    out, pos = [], 0
    for match in _URL_START.finditer(text):
        if match.start() < pos:
            continue
        end = match.start()
        while end < len(text) and not text[end].isspace() and text[end] not in "'\"":
            end += 1
        out.append(text[pos:match.start()])
        out.append(_redact_one(text[match.start():end]))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _secrets(url: str) -> list[str]:
    """The password values a URL carries, as written and percent-decoded (longest first)."""
    found: list[str] = []
    _, sep, rest = url.partition("://")
    user_part = _user_part(rest) if sep else None
    if user_part is not None:
        found.append(user_part[1])
    found.extend(m.group(2).strip("'") for m in _QUERY_PASSWORD.finditer(url.partition("?")[2]))
    found += [unquote_plus(s) for s in found]
    # SQLAlchemy splits an unencoded "@" in a password at its first "@" (the rest becomes the
    # host, which a driver's message then quotes): each piece is a secret too.
    found += [piece for s in found for piece in re.split(r"[@:]", s)]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def scrub_secrets(text: str, url: str) -> str:
    """A driver's error message with the URL's passwords removed, wherever they appear in it,
    and every URL in it redacted."""
    for secret in _secrets(url):
        text = text.replace(secret, _MASK)
    return redact_text(text)


def unencoded_at(url: str) -> bool:
    """Whether the URL's user part holds more than one ``@`` (a password with an unencoded
    ``@``, which SQLAlchemy would take for part of the host)."""
    _, sep, rest = url.partition("://")
    user_part = _user_part(rest) if sep else None
    return user_part is not None and "@" in user_part[1]
