"""The trial table paged on the server: Dash DataTable's filter and sort requests applied to rows.

The study page sends one page of trials at a time (a study of 50,000 trials would otherwise
send tens of MB of JSON); the table sends back what the user typed in its filter cells
(``filter_query``, e.g. ``{method} contains "cg3" && {lr} >= 0.1``), its sort order
(``sort_by``) and the page it shows. Pure functions of the rows.

Filter grammar (what DataTable writes): clauses joined by ``&&``, each ``{column} OP value``
with OP one of ``= eq != ne < lt <= le > gt >= ge contains datestartswith``, the relational ones
and ``contains`` optionally prefixed ``s`` (case-sensitive, the default) or ``i`` (insensitive):
``scontains``, ``i=``... (a value in quotes is text; unquoted, a number where it reads as one),
or ``{column} is blank`` / ``is not blank``. Numbers compare as numbers; text compares as text. A clause that does not
parse, or names no column, matches nothing, so a typo shows an empty table rather than
everything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, Any]

_CLAUSE = re.compile(
    r"^\{(?P<column>[^}]+)\}\s+(?P<op>is not blank|is blank|datestartswith|"
    r"(?P<case>[si]?)(?:contains|eq|ne|lt|le|gt|ge|!=|<=|>=|=|<|>))\s*(?P<value>.*)$", re.DOTALL)
_SYNONYMS = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    page_count: int
    matched: int


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _literal(text: str) -> tuple[str, float | None]:
    """The clause's value as text, and as a number unless it was quoted or is not one."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        return text[1:-1], None
    try:
        number = float(text)
    except ValueError:
        return text, None
    return text, number if math.isfinite(number) else None


def _clause(part: str) -> Callable[[Row], bool]:
    match = _CLAUSE.match(part.strip())
    if match is None:
        return lambda row: False
    column, case = match["column"], match["case"] or ""
    op = match["op"][len(case):]
    op = _SYNONYMS.get(op, op)
    insensitive = case == "i"
    if op in ("is blank", "is not blank"):
        want_blank = op == "is blank"
        return lambda row: (row.get(column) in (None, "")) == want_blank
    text, number = _literal(match["value"])
    if insensitive:
        text = text.lower()
    if op in ("contains", "datestartswith"):

        def contains(row: Row) -> bool:
            cell = row.get(column)
            if cell is None:
                return False
            cell_text = str(cell).lower() if insensitive else str(cell)
            return text in cell_text if op == "contains" else cell_text.startswith(text)

        return contains

    def compare(row: Row) -> bool:
        cell = row.get(column)
        if cell is None:
            return op == "!="
        cell_number = _number(cell)
        left: Any
        right: Any
        if cell_number is not None and number is not None:
            left, right = cell_number, number
        else:
            left, right = (str(cell).lower() if insensitive else str(cell)), text
        if op == "=":
            return bool(left == right)
        if op == "!=":
            return bool(left != right)
        if (cell_number is None) != (number is None):  # a number and text are not ordered
            return False
        return bool({"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op])

    return compare


def filter_rows(rows: Sequence[Row], filter_query: str | None) -> list[Row]:
    """The rows every clause of ``filter_query`` matches (all rows for an empty query)."""
    parts = [p for p in re.split(r"\s+&&\s+", (filter_query or "").strip()) if p.strip()]
    if not parts:
        return list(rows)
    clauses = [_clause(p) for p in parts]
    return [row for row in rows if all(clause(row) for clause in clauses)]


def _sort_key(value: Any) -> tuple[int, float, str]:
    number = _number(value)
    return (0, number, "") if number is not None else (1, 0.0, str(value))


def sort_rows(rows: list[Row], sort_by: Sequence[Mapping[str, str]] | None) -> list[Row]:
    """Rows ordered by each ``{"column_id", "direction"}`` in turn (the first is the main key);
    numbers before text, empty cells last in either direction."""
    out = list(rows)
    for spec in reversed(list(sort_by or [])):
        column = spec.get("column_id", "")
        present = [r for r in out if r.get(column) is not None]
        missing = [r for r in out if r.get(column) is None]
        present.sort(key=lambda r: _sort_key(r.get(column)), reverse=spec.get("direction") == "desc")
        out = present + missing
    return out


def page_of(
    rows: Sequence[Row],
    page_current: int | None,
    page_size: int | None,
    sort_by: Sequence[Mapping[str, str]] | None = None,
    filter_query: str | None = None,
) -> Page:
    """One page of the filtered, sorted rows; a page beyond the last gives the last page."""
    size = max(1, int(page_size or 25))
    matched = sort_rows(filter_rows(rows, filter_query), sort_by)
    count = max(1, math.ceil(len(matched) / size))
    current = min(max(0, int(page_current or 0)), count - 1)
    return Page([dict(r) for r in matched[current * size:(current + 1) * size]], count, len(matched))
