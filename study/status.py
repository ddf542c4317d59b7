"""How far a study is: trials done / running / diverged / failed / left, per method and total.

Everything is computed from the storage alone (the study stores its search-space document, so
"left" is known without the YAML file). A point counts once, by its ``point_key``: a point run
again after an interruption is not counted twice, and interrupted trials are not finished.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import optuna

from proxstudy.study import records as R


class UnknownStudyError(LookupError):
    """No study of that name in the storage (message names the studies there)."""


@dataclass
class Counts:
    """Trial counts of one method (or the total); ``done`` = completed + diverged + failed."""

    completed: int = 0
    diverged: int = 0
    failed: int = 0
    running: int = 0
    total: int | None = None  # what the search space asks for (None: unknown document)

    @property
    def done(self) -> int:
        return self.completed + self.diverged + self.failed

    @property
    def left(self) -> int | None:
        if self.total is None:
            return None
        return max(0, self.total - self.done - self.running)

    def add(self, other: Counts) -> None:
        self.completed += other.completed
        self.diverged += other.diverged
        self.failed += other.failed
        self.running += other.running
        if self.total is not None and other.total is not None:
            self.total += other.total
        else:
            self.total = None


@dataclass
class StudyStatus:
    study_name: str
    direction: str
    methods: dict[str, Counts] = field(default_factory=dict)

    @property
    def total(self) -> Counts:
        out = Counts(total=0)
        for counts in self.methods.values():
            out.add(counts)
        return out


def _space_from_attrs(user_attrs: dict):
    document = user_attrs.get(R.STUDY_ATTR_SPACE)
    if not isinstance(document, dict):
        return None
    from proxstudy.study.space import parse_space

    try:
        return parse_space(document, str(user_attrs.get(R.STUDY_ATTR_SOURCE, "<stored document>")))
    except Exception:  # a document from another proxstudy version: counts without "left"
        return None


def counts_from_records(records: Iterable[R.TrialRecord], expected: dict[str, int] | None) -> dict[str, Counts]:
    """Per-method counts; a point_key finished several times counts once (its last record)."""
    by_method: dict[str, Counts] = {}
    if expected:
        for method, total in expected.items():
            by_method[method] = Counts(total=total)
    finished: dict[tuple[str, str], str] = {}
    for record in records:
        counts = by_method.setdefault(record.method, Counts(total=0 if expected else None))
        if record.status == R.STATUS_RUNNING:
            counts.running += 1
        elif record.finished:
            key = record.point_key or f"#{record.number}"
            finished[(record.method, key)] = record.status
    for (method, _), status in finished.items():
        counts = by_method[method]
        setattr(counts, status, getattr(counts, status) + 1)
    return by_method


def study_status(storage: str | optuna.storages.BaseStorage, study_name: str) -> StudyStatus:
    """The counts of one study (raises :class:`UnknownStudyError`)."""
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if study_name not in summaries:
        names = ", ".join(sorted(summaries)) or "none"
        raise UnknownStudyError(f"no study {study_name!r} in the storage (studies there: {names})")
    summary = summaries[study_name]
    space = _space_from_attrs(summary.user_attrs)
    expected = None
    if space is not None:
        from proxstudy.study.runner import expected_per_method

        expected = expected_per_method(space)
    records = R.load_records(storage, study_name)
    direction = summary.directions[0].name.lower() if summary.directions else "minimize"
    return StudyStatus(study_name, direction, counts_from_records(records, expected))


def all_study_names(storage: str | optuna.storages.BaseStorage) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


_COLUMNS = ("done", "completed", "diverged", "failed", "running", "left", "total")


def _row(label: str, counts: Counts) -> list[str]:
    left = counts.left
    total = counts.total
    return [label, str(counts.done), str(counts.completed), str(counts.diverged), str(counts.failed),
            str(counts.running), "?" if left is None else str(left), "?" if total is None else str(total)]


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def format_status(status: StudyStatus) -> str:
    """The `proxstudy status STUDY` text: one row per method and a total row."""
    rows = [_row(m, c) for m, c in status.methods.items()]
    rows.append(_row("total", status.total))
    return f"study {status.study_name} ({status.direction})\n" + format_table(rows, ["method", *_COLUMNS])


def format_list(statuses: list[StudyStatus]) -> str:
    """The `proxstudy list` text: one row per study."""
    if not statuses:
        return "no studies"
    rows = [_row(s.study_name, s.total) for s in statuses]
    return format_table(rows, ["study", *_COLUMNS])
