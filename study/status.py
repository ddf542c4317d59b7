"""How far a study is: points done / running / diverged / failed / left, per method and total.

Everything is computed from the storage alone (the study stores its search-space document, so
"left" is known without the YAML file), read through study.reader. What is counted here are the
points of the search space (``point_key`` = method, parameters, seed), the progress of the
sweep: a point run again after an interruption counts once, and interrupted trials are not
finished. (``reader.trial_counts`` counts trials per status, as the dashboards show them.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from proxstudy.study import records as R
from proxstudy.study.lease import live_driver
from proxstudy.study.points import expected_per_method
from proxstudy.study.reader import StorageLike, read_study, study_names
from proxstudy.study.storage import storage_engine

#: Notes on what could not be read shown under a study's table (the rest: "and N more").
MAX_NOTES = 5

__all__ = [
    "Counts",
    "StudyStatus",
    "all_study_statuses",
    "counts_from_records",
    "format_list",
    "format_status",
    "study_status",
]


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
    notes: list[str] = field(default_factory=list)  # what could not be read (reader.read_study)
    driver: str | None = None  # host:pid of the `proxstudy run` holding the study's lease

    @property
    def total(self) -> Counts:
        out = Counts(total=0)
        for counts in self.methods.values():
            out.add(counts)
        return out


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


def study_status(storage: StorageLike, study_name: str) -> StudyStatus:
    """The counts of one study (raises StudyNotFound)."""
    read = read_study(storage, study_name)  # another proxstudy version's document: no "left"
    expected = expected_per_method(read.space) if read.space is not None else None
    return StudyStatus(study_name, read.settings.direction, counts_from_records(read.records, expected),
                       read.notes, _live_driver(storage, study_name))


def _live_driver(storage: StorageLike, study_name: str) -> str | None:
    if not isinstance(storage, str):
        return None
    engine = storage_engine(storage)
    try:
        return live_driver(engine, study_name)
    finally:
        engine.dispose()


def all_study_statuses(storage: StorageLike) -> list[StudyStatus]:
    """The counts of every study in the storage, by name."""
    return [study_status(storage, name) for name in study_names(storage)]


_COLUMNS = ("done", R.STATUS_COMPLETED, R.STATUS_DIVERGED, R.STATUS_FAILED, R.STATUS_RUNNING, "left", "total")


def _row(label: str, counts: Counts) -> list[str]:
    left = counts.left
    total = counts.total
    return [label, str(counts.done), str(counts.completed), str(counts.diverged), str(counts.failed),
            str(counts.running), "?" if left is None else str(left), "?" if total is None else str(total)]


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def format_status(status: StudyStatus) -> str:
    """The `proxstudy status STUDY` text: one row per method and a total row."""
    rows = [_row(m, c) for m, c in status.methods.items()]
    rows.append(_row("total", status.total))
    running = f", being run by driver {status.driver}" if status.driver else ""
    text = f"study {status.study_name} ({status.direction}{running})\n" + format_table(rows, ["method", *_COLUMNS])
    shown = status.notes[:MAX_NOTES]
    more = len(status.notes) - len(shown)
    return "\n".join([text, *(f"note: {note}" for note in shown)]
                     + ([f"note: and {more} more"] if more > 0 else []))


def format_list(statuses: list[StudyStatus]) -> str:
    """The `proxstudy list` text: one row per study."""
    if not statuses:
        return "no studies"
    rows = [_row(s.study_name, s.total) for s in statuses]
    return format_table(rows, ["study", *_COLUMNS])
