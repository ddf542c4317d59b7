"""The read-only Dash web app: an index of the storage's studies and one page per study.

Pages: ``/`` lists the studies with trial counts by status; ``/study/<url-encoded name>``
opens with the verdict (one sentence per method with its lr sensitivity and intervals, then the
pairwise probabilities), then the figures, the metrics, the Table 1 view and the trials.
While a study has running trials a ``dcc.Interval`` re-polls every ``REFRESH_MS``; the
callback answers "no update" unless the cached data changed, so tables keep their filters.
A study of more than ``SYNC_TRIALS`` trials is read and drawn in a background thread
(:class:`Snapshots`): until its first analysis is ready the page shows the counts, the first
page of trials from SQL and a "computing" box, polling every ``PENDING_MS``; after a change it
shows the previous analysis under an "updating" line until the new one replaces it.
Downloads are plain Flask routes: ``/download/trials.csv?study=NAME`` and
``/download/export.yaml?study=NAME`` (or ``export.json``).

Safety: every piece of text from the storage goes into Dash components as text (React escapes
it; nothing uses dangerously_allow_html); the storage URL is only shown redacted; binding to
anything but localhost needs ``allow_remote=True`` and prints a warning.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import dash
from dash import Input, Output, State, dcc, html
from dash.dash_table.DataTable import DataTable
from flask import Response, request

from proxstudy.dashboards import analysis_pages, heap
from proxstudy.dashboards import data as D
from proxstudy.dashboards.exported import NothingToExport, export_text
from proxstudy.dashboards.figures import study_figures
from proxstudy.dashboards.metrics import __doc__ as METRICS_DOC
from proxstudy.dashboards.server import DEFAULT_THREADS, ServerOptions, check_options, serve
from proxstudy.dashboards.tables import METRIC_COLUMNS, csv_text, format_lr, metrics_rows, table1, trial_rows, verdict
from proxstudy.dashboards.trial_query import page_of
from proxstudy.study import reader
from proxstudy.study.records_sql import gc_paused
from proxstudy.study.storage import scrub_secrets

REFRESH_MS = 5000
TRIALS_PAGE_SIZE = 25
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
STUDY_PREFIX = "/study/"


@dataclass(frozen=True)
class ExtraPage:
    """A page beyond the index and the study pages (e.g. a comparison of studies).

    Served at ``path`` (exact match) and linked from the index as ``title``; ``render(storage,
    search)`` returns the page's Dash content, ``search`` being the URL's query string
    (``"?study=a&study=b"`` or ``""``). It must not raise for bad input: show a message instead.
    """

    path: str
    title: str
    render: Callable[[str, str], Any]


#: Pages other modules add to the app (one line each here; create_app(pages=...) overrides).
EXTRA_PAGES: tuple[ExtraPage, ...] = (
    ExtraPage(analysis_pages.COMPARE_PATH, "Compare the studies", analysis_pages.compare_page),
    ExtraPage(analysis_pages.IMPORTANCE_PATH, "Parameter importance", analysis_pages.importance_page),
)

#: Sections appended to every study page, after the views: ``section(data)`` -> Dash components.
STUDY_SECTIONS: tuple[Callable[[D.StudyData], list[Any]], ...] = (analysis_pages.study_links,)


def study_href(name: str) -> str:
    """The study page's path; the name is fully URL-encoded (slashes, quotes, <, > ...)."""
    return STUDY_PREFIX + quote(name, safe="")


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in D.STATUS_ORDER)


def index_page(storage: str, pages: tuple[ExtraPage, ...] = ()) -> html.Div:
    """The list of studies with counts by status and links to their pages (and the extra pages)."""
    studies = D.list_studies(storage)
    header = html.Tr([html.Th("study"), html.Th("trials")] + [html.Th(s) for s in D.STATUS_ORDER])
    rows = [
        html.Tr(
            [html.Td(dcc.Link(s.name, href=study_href(s.name), className="study-link")), html.Td(str(s.total))]
            + [html.Td(str(s.counts.get(st, 0))) for st in D.STATUS_ORDER]
        )
        for s in studies
    ]
    return html.Div(
        [
            html.H1("ProxProp robustness studies"),
            html.P(f"Storage: {D.redact(storage)}", className="storage"),
            html.Table([html.Thead(header), html.Tbody(rows)], id="study-index")
            if studies else html.P("No studies in this storage yet."),
            html.Ul([html.Li(dcc.Link(p.title, href=p.path)) for p in pages], id="extra-pages") if pages else "",
        ]
    )


NUMERIC_TRIAL_COLUMNS = frozenset({"value", "final_train_loss", "lr", "tau_prox"})


def _datatable(table_id: str, columns: list[tuple[str, str]], rows: list[dict], **kwargs: Any) -> DataTable:
    # Dash 4 announces DataTable's future removal on every construction; it is still the
    # built-in table with native filter/sort/CSV export, which is what the page needs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _make_datatable(table_id, columns, rows, **kwargs)


def _make_datatable(
    table_id: str, columns: list[tuple[str, str]], rows: list[dict], numeric: frozenset[str] = frozenset(),
    **kwargs: Any,
) -> DataTable:
    from dash.dash_table.Format import Format, Scheme

    short = Format(precision=4, scheme=Scheme.decimal_or_exponent).to_plotly_json()  # display only; CSV: full
    return DataTable(
        id=table_id,
        columns=[{"name": title, "id": cid, "type": "numeric", "format": short} if cid in numeric
                 else {"name": title, "id": cid} for cid, title in columns],
        data=rows,
        style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "sans-serif", "fontSize": 13, "textAlign": "left", "maxWidth": 360,
                    "overflow": "hidden", "textOverflow": "ellipsis"},
        **kwargs,
    )


def _graph(fig, graph_id: str) -> dcc.Graph:
    return dcc.Graph(id=graph_id, figure=fig, config={"displaylogo": False}, className="study-graph")


def notes_box(notes: list[str]) -> html.Div | str:
    """What could not be read of a study (written by another tool, or damaged), shown on top."""
    if not notes:
        return ""
    return html.Div(
        [html.H2("Not everything in this study could be read"),
         html.P("The page shows what could be read; these parts are left out:"),
         html.Ul([html.Li(note) for note in notes])],
        id="study-notes",
        style={"background": "#fff8c5", "border": "1px solid #d4a72c", "padding": "4px 16px"},
    )


def study_body(
    storage: str, data: D.StudyData, sections: tuple[Callable[[D.StudyData], list[Any]], ...] = ()
) -> list[Any]:
    """What a live refresh replaces: counts, notes, verdict, figures and tables, not the trials."""
    figs = study_figures(data)
    methods = list(data.metrics.methods) or sorted({p.method for p in data.points})
    answer = verdict(data.metrics, data.objective)
    t1 = table1(data.points, data.records, data.direction)
    t1_columns = [("method", "method")] + [(format_lr(lr), f"lr {format_lr(lr)}") for lr in t1.lrs]
    q = quote(data.name, safe="")
    side = {"display": "grid", "gridTemplateColumns": "repeat(auto-fit, minmax(520px, 1fr))", "gap": "8px"}
    return [
        html.P(f"Storage: {D.redact(storage)} | objective: {data.objective} ({data.direction}) | "
               f"trials: {_counts_text(data.counts)}", id="study-counts"),
        html.P("Live: refreshing every 5 s while trials run." if data.live else "", id="live-note"),
        notes_box(data.notes),
        html.Div(
            [
                html.A("Download trials (CSV)", href=f"/download/trials.csv?study={q}", id="download-csv"),
                " | ",
                html.A("Download best and most robust configurations (YAML)",
                       href=f"/download/export.yaml?study={q}", id="download-export"),
                " | ",
                html.A("(JSON)", href=f"/download/export.json?study={q}", id="download-export-json"),
                " | ",
                dcc.Link("All studies", href="/"),
            ]
        ),
        html.Div(
            [
                html.H2("Verdict: how sensitive is each method to its learning rate?"),
                html.P(answer.scale, className="scale"),
                html.Ul([html.Li(t) for t in answer.methods], className="methods"),
                html.P(answer.ranking, className="ranking"),
                html.Ul([html.Li(t) for t in answer.comparisons], className="comparisons"),
            ],
            id="verdict",
            style={"background": "#f6f8fa", "border": "1px solid #d0d7de", "padding": "4px 16px"},
        ),
        html.Div([_graph(figs["sensitivity"], "fig-sensitivity"), _graph(figs["robustness"], "fig-robustness")],
                 style=side),
        html.H2("Robustness metrics"),
        _datatable("metrics-table", list(METRIC_COLUMNS), metrics_rows(data.metrics)),
        html.Details([html.Summary("How the metrics are defined"), html.Pre(METRICS_DOC or "")]),
        html.H2("Final training loss per learning rate (the paper's Table 1)"),
        _datatable("table1", t1_columns, t1.as_records()),
        html.H2("Capped objective over lr x tau_prox, per method (log colour scale)"),
        html.Div([_graph(figs[f"heatmap:{m}"], f"fig-heatmap-{i}") for i, m in enumerate(methods)
                  if f"heatmap:{m}" in figs], style=side),
        html.Div([_graph(figs["tunability"], "fig-tunability"), _graph(figs["divergence"], "fig-divergence")],
                 style=side),
        html.H2("Training curves of each method's best point"),
        html.Div([_graph(figs["training_epoch"], "fig-training-epoch"),
                  _graph(figs["training_seconds"], "fig-training-seconds")], style=side),
        *[component for section in sections for component in section(data)],
    ]


def study_page(
    storage: str,
    data: D.StudyData,
    sections: tuple[Callable[[D.StudyData], list[Any]], ...] = (),
    body: list[Any] | None = None,
    trials: TrialTable | None = None,
    *,
    pending: bool = False,
    status: Any = "",
) -> html.Div:
    """The study page for one snapshot of its data: the refreshable body, then the trial table,
    paged on the server (filters, sort and page live in the table, so a refresh keeps them).
    ``pending``: a newer snapshot is being built; the page polls until it gets it (``status``,
    shown above the body, says why: then every ``PENDING_MS``)."""
    trials = trials or TrialTable.of(data)
    first = page_of(trials.rows, 0, TRIALS_PAGE_SIZE)
    note = (f"{len(trials.rows)} trials; filter (e.g. cg3, > 0.1, {{method}} contains bp) and sort on the "
            "server; the CSV download above has them all.")
    says_why = not isinstance(status, str) or bool(status)  # a component, or text (not a Dash truth value)
    return _page_frame(data.name, data.version, data.live or pending, PENDING_MS if says_why else REFRESH_MS,
                       body if body is not None else study_body(storage, data, sections),
                       trials.columns, first.rows, first.page_count, note, status)


def _page_frame(name: str, version: int | None, polling: bool, interval_ms: int, body: list[Any],
                columns: list[str], rows: list[dict], page_count: int, trials_note: str,
                status: Any = "") -> html.Div:
    """The study page's frame: title, state, the refreshable status line and body, and the
    server-paged trials."""
    return html.Div(
        [
            html.H1(name, id="study-title"),
            dcc.Store(id="study-name", data=name),
            dcc.Store(id="version", data=version),
            dcc.Interval(id="tick", interval=interval_ms, disabled=not polling),
            html.Div(status, id="study-status"),
            html.Div(body, id="study-body"),
            html.H2("Trials"),
            html.P(trials_note, id="trials-note"),
            _datatable("trials-table", [(c, c) for c in columns], rows, numeric=NUMERIC_TRIAL_COLUMNS,
                       filter_action="custom", sort_action="custom", sort_mode="multi", page_action="custom",
                       page_current=0, page_size=TRIALS_PAGE_SIZE, page_count=page_count),
        ]
    )


#: How often a page waiting for its first analysis asks whether it is ready.
PENDING_MS = 1000
TRIALS_READING_NOTE = "; filter and sort apply as soon as every trial is read."


def computing_body(storage: str, counts: dict[str, int]) -> list[Any]:
    """The body of a study page whose analysis is still being computed (a large study read cold):
    the counts now, and what the page is waiting for."""
    return [
        html.P(f"Storage: {D.redact(storage)} | trials: {_counts_text(counts)}", id="study-counts"),
        html.P(f"Computing the robustness analysis of {sum(counts.values())} trials: reading every trial and "
               "bootstrapping the metrics takes a few seconds for a large study. The verdict, figures and "
               "tables appear here when it is ready (no reload needed).", id="computing", className="computing",
               style={"background": "#ddf4ff", "border": "1px solid #54aeff", "padding": "8px 16px"}),
        dcc.Link("All studies", href="/"),
    ]


def updating_note(counts: dict[str, int]) -> html.P:
    """Shown above a snapshot that is out of date while its successor is built."""
    return html.P(f"Updating: the study now has {_counts_text(counts)}. What follows is the analysis of its "
                  "previous state, replaced in place when the new one is ready.", id="updating",
                  style={"background": "#ddf4ff", "border": "1px solid #54aeff", "padding": "4px 16px"})


def computing_page(storage: str, name: str, counts: dict[str, int]) -> html.Div:
    """The study page before its first analysis is ready: the counts, a "computing" state and
    the first page of trials read straight from the storage (a few small queries)."""
    page = reader.load_trials_page(storage, name, 0, TRIALS_PAGE_SIZE)
    columns, rows = trial_rows(page.records, page.param_names)
    return _page_frame(name, None, True, PENDING_MS, computing_body(storage, counts), columns, rows,
                       max(1, math.ceil(page.total / TRIALS_PAGE_SIZE)), f"{page.total} trials" + TRIALS_READING_NOTE)


@dataclass(frozen=True)
class TrialTable:
    """The trial table's columns and rows of one snapshot of a study (built once per version)."""

    version: int
    columns: list[str]
    rows: list[dict[str, Any]]

    @classmethod
    def of(cls, data: D.StudyData) -> TrialTable:
        columns, rows = trial_rows(data.records)
        return cls(data.version, columns, rows)


@dataclass(frozen=True)
class Snapshot:
    """One version of a study's data with its drawn page body and trial rows."""

    data: D.StudyData
    body: list[Any]
    trials: TrialTable


@dataclass(frozen=True)
class Latest:
    """What a request can be answered with at once: the newest built snapshot (None before the
    first one is built), the study's counts now, and whether a newer snapshot is being built."""

    snapshot: Snapshot | None
    counts: dict[str, int]
    pending: bool


#: Studies with at most this many trials are read and drawn in the request that asks (well under
#: a second); larger ones in the background, the page showing what it has meanwhile.
SYNC_TRIALS = 2000


class Snapshots:
    """Per study, the latest data's page body and trial rows, built once per data version (a
    study of 50,000 trials takes seconds to read and draw; a reload then only serialises the page).

    :meth:`get` waits for the current snapshot; :meth:`latest` never waits for a study of more
    than ``sync_trials`` trials: it answers with the newest built snapshot, or none, and builds
    the current one in a background thread (one per study at a time). Every snapshot is a full
    rebuild of ``D.load_study_data``'s data, so what the page finally shows is the same either way.
    """

    def __init__(self, storage: str, sections: tuple[Callable[[D.StudyData], list[Any]], ...] = (),
                 *, sync_trials: int = SYNC_TRIALS) -> None:
        self.storage = storage
        self.sections = sections
        self.sync_trials = sync_trials
        self._built: dict[str, Snapshot] = {}
        self._building: set[str] = set()
        self._build_locks: dict[str, threading.Lock] = {}
        self._failed: dict[str, tuple[dict[str, int], Exception]] = {}  # counts it failed at, error
        self._lock = threading.Lock()

    def get(self, name: str) -> Snapshot:
        """The study's current snapshot, built here if it is not yet (raises what reading raises)."""
        with self._lock:
            build_lock = self._build_locks.setdefault(name, threading.Lock())
        # One build per study at a time (the start-up preload and a page's request must not draw
        # the same snapshot twice). Building allocates millions of acyclic objects; collections
        # during it walked every cached study and nearly doubled its CPU time
        # (benchmarks/dashboard_load.py).
        with build_lock, gc_paused():
            data = D.load_study_data(self.storage, name)
            with self._lock:
                cached = self._built.get(name)
            if cached is not None and cached.data.version == data.version:
                return cached
            snapshot = Snapshot(data, study_body(self.storage, data, self.sections), TrialTable.of(data))
            with self._lock:
                current = self._built.get(name)
                if current is None or current.data.version < snapshot.data.version:
                    self._built[name] = snapshot
                self._failed.pop(name, None)
            heap.settle()  # still paused: the collector never walks the new snapshot (dashboards.heap)
        return snapshot

    def latest(self, name: str) -> Latest:
        """The newest snapshot without waiting for a large study (raises StudyNotFound, and a
        background build's error while there is no snapshot to show and the counts are those it
        failed at)."""
        counts = reader.trial_counts(self.storage, name)
        with self._lock:
            built = self._built.get(name)
            failed = self._failed.get(name)
        if built is not None and not _out_of_date(built.data, counts):
            return Latest(built, counts, False)
        if sum(counts.values()) <= self.sync_trials:
            return Latest(self.get(name), counts, False)
        if failed is not None and failed[0] == counts:
            if built is None:
                raise failed[1]
            return Latest(built, counts, False)  # shown as it is; a change of counts retries
        self._start(name, counts)
        return Latest(built, counts, True)

    def _start(self, name: str, counts: dict[str, int]) -> None:
        with self._lock:
            if name in self._building:
                return
            self._building.add(name)

        def build() -> None:
            try:
                self.get(name)
            except Exception as exc:  # shown by the next request (latest); never lost in a thread
                with self._lock:
                    self._failed[name] = (counts, exc)
            finally:
                with self._lock:
                    self._building.discard(name)

        threading.Thread(target=build, daemon=True, name=f"dashboard-build-{len(name)}").start()

    def warm(self) -> None:
        """Read and draw every study once (the server does this in the background at start-up)."""
        for summary in D.list_studies(self.storage):
            try:
                self.get(summary.name)
            except Exception:  # a broken study must not stop the others; its page shows the error
                continue


def _out_of_date(data: D.StudyData, counts: dict[str, int]) -> bool:
    """Whether a snapshot may not be the study's current state: its counts changed, or it is
    live and older than ``D.LIVE_TTL_S`` (running trials report epochs without changing counts)."""
    return data.counts != counts or (data.live and time.monotonic() - data.loaded_at > D.LIVE_TTL_S)


def create_app(
    storage: str,
    pages: tuple[ExtraPage, ...] | None = None,
    sections: tuple[Callable[[D.StudyData], list[Any]], ...] | None = None,
    snapshots: Snapshots | None = None,
) -> dash.Dash:
    """The Dash app for one storage URL (not started; see :func:`run_dashboard`).

    ``pages`` and ``sections`` default to :data:`EXTRA_PAGES` and :data:`STUDY_SECTIONS`;
    ``snapshots``: the cache of drawn studies (run_dashboard warms it at start-up).
    """
    extra = {p.path: p for p in (EXTRA_PAGES if pages is None else pages)}
    study_sections = STUDY_SECTIONS if sections is None else sections
    app = dash.Dash(__name__, title="ProxProp studies", suppress_callback_exceptions=True,
                    update_title="")
    app.layout = html.Div([dcc.Location(id="url"), html.Div(id="page")],
                          style={"fontFamily": "sans-serif", "margin": "12px"})
    snapshots = snapshots or Snapshots(storage, study_sections)

    def problem(title: str, exc: Exception) -> html.Div:
        # shown, never an HTTP 500; no password in the text
        shown = exc.args[0] if isinstance(exc, D.StudyNotFound) else f"{type(exc).__name__}: {exc}"
        return html.Div([html.H1(title), html.P(scrub_secrets(str(shown), storage), className="error"),
                         dcc.Link("All studies", href="/")])

    def status(latest: Latest) -> Any:
        """The "updating" note while the snapshot shown is not of the study's current counts."""
        assert latest.snapshot is not None
        return updating_note(latest.counts) if latest.snapshot.data.counts != latest.counts else ""

    @app.callback(Output("page", "children"), Input("url", "pathname"), State("url", "search"))
    def render(pathname: str | None, search: str | None):
        pathname = pathname or "/"
        try:
            if pathname in extra:
                return extra[pathname].render(storage, search or "")
            if not pathname.startswith(STUDY_PREFIX):
                return index_page(storage, tuple(extra.values()))
            name = unquote(pathname[len(STUDY_PREFIX):])
            latest = snapshots.latest(name)
            if latest.snapshot is None:
                return computing_page(storage, name, latest.counts)
        except D.StudyNotFound as exc:
            return problem("Study not found", exc)
        except Exception as exc:
            return problem("Cannot read the storage", exc)
        data = latest.snapshot.data
        try:
            return study_page(storage, data, study_sections, latest.snapshot.body, latest.snapshot.trials,
                              pending=latest.pending, status=status(latest))
        except Exception as exc:  # a view that cannot be built must not become an HTTP 500
            return problem(f"This study's page cannot be built: {data.name}", exc)

    @app.callback(
        Output("study-body", "children"), Output("tick", "disabled"), Output("version", "data"),
        Output("tick", "interval"), Output("study-status", "children"),
        Input("tick", "n_intervals"), State("version", "data"), State("study-name", "data"),
        prevent_initial_call=True,
    )
    def refresh(_n: int | None, version: Any, name: str):
        """While trials run or an analysis is computed: replace the body when a newer snapshot is
        ready; "no update" otherwise. The trial table is not replaced (its own callback
        re-queries on the new version)."""
        try:
            latest = snapshots.latest(name)
        except Exception as exc:
            return [problem("Cannot read the storage", exc)], True, dash.no_update, dash.no_update, ""
        if latest.snapshot is None:  # still computing the first analysis
            return dash.no_update, False, dash.no_update, PENDING_MS, dash.no_update
        data = latest.snapshot.data
        disabled = not (data.live or latest.pending)
        body = dash.no_update if data.version == version else latest.snapshot.body
        interval = PENDING_MS if data.counts != latest.counts else REFRESH_MS  # a rebuild for a change: ask often
        return body, disabled, dash.no_update if body is dash.no_update else data.version, interval, status(latest)

    @app.callback(
        Output("trials-table", "data"), Output("trials-table", "page_count"), Output("trials-note", "children"),
        Input("trials-table", "page_current"), Input("trials-table", "page_size"),
        Input("trials-table", "sort_by"), Input("trials-table", "filter_query"), Input("version", "data"),
        State("study-name", "data"),
        prevent_initial_call=True,
    )
    def trials_page(page_current: int | None, page_size: int | None, sort_by: list | None,
                    filter_query: str | None, _version: Any, name: str):
        try:
            latest = snapshots.latest(name)
            if latest.snapshot is None:  # not every trial read yet: pages in trial order from SQL
                size = max(1, int(page_size or TRIALS_PAGE_SIZE))
                current = max(0, int(page_current or 0))
                sql = reader.load_trials_page(storage, name, current * size, size)
                _, rows = trial_rows(sql.records, sql.param_names)
                return rows, max(1, math.ceil(sql.total / size)), f"{sql.total} trials" + TRIALS_READING_NOTE
        except Exception:  # the body's refresh shows the error
            return dash.no_update, dash.no_update, dash.no_update
        trials = latest.snapshot.trials
        page = page_of(trials.rows, page_current, page_size, sort_by, filter_query)
        shown = (f"{page.matched} of {len(trials.rows)} trials match the filter" if filter_query
                 else f"{len(trials.rows)} trials")
        return page.rows, page.page_count, shown + "; filtered and sorted on the server; the CSV download has all."

    def _study_arg() -> D.StudyData | Response:
        name = request.args.get("study", "")
        try:
            return D.load_study_data(storage, name)
        except D.StudyNotFound as exc:
            return Response(str(exc), status=404, mimetype="text/plain")

    def _filename(name: str, ext: str) -> str:
        return (re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "study") + ext

    def _attachment(filename: str) -> dict[str, str]:
        return {"Content-Disposition": f'attachment; filename="{filename}"'}

    @app.server.route("/download/trials.csv")
    def download_trials():
        data = _study_arg()
        if isinstance(data, Response):
            return data
        columns, rows = trial_rows(data.records)
        return Response(csv_text(columns, rows), mimetype="text/csv",
                        headers=_attachment(_filename(data.name, "-trials.csv")))

    @app.server.route("/download/export.<fmt>")
    def download_export(fmt: str):
        if fmt not in ("yaml", "json"):
            return Response("format must be yaml or json", status=404, mimetype="text/plain")
        data = _study_arg()
        if isinstance(data, Response):
            return data
        try:
            text = export_text(storage, data, fmt)
        except NothingToExport as exc:
            return Response(str(exc), status=404, mimetype="text/plain")
        mimetype = "application/json" if fmt == "json" else "application/x-yaml"
        return Response(text, mimetype=mimetype, headers=_attachment(_filename(data.name, "-export." + fmt)))

    return app


def run_dashboard(
    storage: str,
    host: str = "127.0.0.1",
    port: int = 8050,
    allow_remote: bool = False,
    *,
    threads: int = DEFAULT_THREADS,
    debug: bool = False,
) -> None:
    """Serve the dashboard until interrupted (blocking), on waitress with ``threads`` worker
    threads (``dashboards.server`` says why), or on Flask's development server with ``debug``.

    Binding to a non-local address exposes every study in the storage to the network, so it
    needs ``allow_remote=True`` and prints a warning; otherwise a ValueError names the argument.
    ``debug`` (Flask's interactive debugger) is refused beyond localhost.
    """
    options = ServerOptions(host=host, port=port, threads=threads, debug=debug)
    check_options(options)
    if host not in LOCAL_HOSTS and not allow_remote:
        raise ValueError(f"--host {host}: serving beyond this machine needs allow_remote=True "
                         "(the dashboard has no authentication)")
    if host not in LOCAL_HOSTS and debug:
        raise ValueError(f"--debug: Flask's debugger runs code sent to it; not with --host {host}")
    if host not in LOCAL_HOSTS:
        print(f"WARNING: the dashboard listens on {host}:{port} without authentication; anyone who "
              "can reach this address can read every study in the storage.", file=sys.stderr)
    D.list_studies(storage)  # fail fast on a bad storage, before the server starts
    snapshots = Snapshots(storage, STUDY_SECTIONS)
    app = create_app(storage, snapshots=snapshots)
    threading.Thread(target=snapshots.warm, daemon=True, name="dashboard-warm-cache").start()
    how = "Flask's development server (--debug)" if debug else f"waitress, {threads} threads"
    print(f"Dashboard for storage {D.redact(storage)} at http://{host}:{port}/ ({how})", file=sys.stderr, flush=True)
    serve(app.server, options)


__all__ = ["EXTRA_PAGES", "STUDY_SECTIONS", "ExtraPage", "Latest", "Snapshot", "Snapshots", "computing_page",
           "create_app", "index_page", "run_dashboard", "study_href", "study_page"]
