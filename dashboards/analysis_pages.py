"""Dashboard pages beyond one study's: several studies compared, and parameter importance.

Registered in ``app.EXTRA_PAGES`` (each gets ``storage`` and the URL's query string) and
``app.STUDY_SECTIONS`` (a line of links on every study page):

* ``/compare`` compares every study in the storage, ``/compare?study=A&study=B`` the named
  ones: the same methods' lr sensitivity and trained lr range side by side
  (``dashboards.compare``) and the performance profile.
* ``/importance?study=A`` shows a study's parameter importance (``dashboards.importance``);
  fANOVA takes seconds on large studies, so it has its own page and the study page stays
  quick. Without ``study`` it lists the studies to choose from.

Bad input (an unknown study, a storage that cannot be read) is shown on the page, never raised.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from dash import dcc, html

from proxstudy.dashboards import data as D
from proxstudy.dashboards.compare import __doc__ as COMPARE_DOC
from proxstudy.dashboards.compare import compare_document, profile_figure
from proxstudy.dashboards.importance import (
    MethodImportance,
    importance_figure,
    log_params_of_document,
    study_importance,
)
from proxstudy.dashboards.importance import __doc__ as IMPORTANCE_DOC
from proxstudy.dashboards.metrics import summary_document
from proxstudy.study.storage import scrub_secrets

__all__ = ["COMPARE_PATH", "IMPORTANCE_PATH", "compare_href", "compare_page", "importance_href",
           "importance_page", "study_links"]

COMPARE_PATH = "/compare"
IMPORTANCE_PATH = "/importance"


def compare_href(names: list[str] | None = None) -> str:
    return COMPARE_PATH + (("?" + urlencode([("study", n) for n in names])) if names else "")


def importance_href(name: str) -> str:
    return IMPORTANCE_PATH + "?" + urlencode({"study": name})


def _study_href(name: str) -> str:
    return "/study/" + quote(name, safe="")


def _studies(search: str) -> list[str]:
    return parse_qs(search.lstrip("?")).get("study", [])


def _problem(title: str, exc: Exception, storage: str) -> html.Div:
    text = str(exc) if isinstance(exc, D.StudyNotFound) else scrub_secrets(f"{type(exc).__name__}: {exc}", storage)
    return html.Div([html.H1(title), html.P(text, className="error"), dcc.Link("All studies", href="/")])


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(entry: dict | None) -> html.Td:
    if entry is None:
        return html.Td("not in this study", className="absent")
    ci = entry.get("lr_sensitivity_ci")
    decades = entry.get("trained_decades")
    return html.Td([
        html.Span(_number(entry.get("lr_sensitivity")), className="sensitivity"),
        f" [{_number(ci[0])}, {_number(ci[1])}]" if ci else "",
        html.Br(),
        f"trained over {_number(decades, 1)} decades" if decades is not None else "nothing trained",
    ])


def compare_page(storage: str, search: str = "") -> html.Div:
    """The comparison of the studies named in ``search`` (every study in the storage if none)."""
    try:
        names = _studies(search) or [s.name for s in D.list_studies(storage)]
        summaries = []
        for name in names:
            data = D.load_study_data(storage, name)
            summaries.append(summary_document(data.metrics, name, data.objective))
    except Exception as exc:  # shown on the page, never raised
        return _problem("Cannot compare", exc, storage)
    document = compare_document(summaries)
    header = html.Tr([html.Th("method")] + [html.Th(dcc.Link(n, href=_study_href(n))) for n in document["studies"]])
    rows = [html.Tr([html.Td(method)] + [_cell(by_study.get(n)) for n in document["studies"]])
            for method, by_study in document["methods"].items()]
    return html.Div([
        html.H1("Compare studies", id="compare-title"),
        html.P(f"Storage: {D.redact(storage)} | {len(names)} studies | lr sensitivity [95% interval] "
               "(0 = as good as the best of its study at every lr) and the width of the trained lr range"),
        html.Table([html.Thead(header), html.Tbody(rows)], id="compare-table"),
        dcc.Graph(id="fig-profile", figure=profile_figure(document), config={"displaylogo": False}),
        html.Details([html.Summary("How the comparison is defined"), html.Pre(COMPARE_DOC or "")]),
        dcc.Link("All studies", href="/"),
    ])


_importance_cache: dict[tuple[str, str], tuple[int, dict[str, MethodImportance]]] = {}
_importance_lock = threading.Lock()


def _importance(storage: str, data: D.StudyData) -> dict[str, MethodImportance]:
    """The study's importance, computed once per snapshot of its data (``data.version``)."""
    key = (storage, data.name)
    with _importance_lock:
        cached = _importance_cache.get(key)
    if cached is not None and cached[0] == data.version:
        return cached[1]
    found = study_importance(data.metrics, log_params_of_document(data.space))
    with _importance_lock:
        _importance_cache[key] = (data.version, found)
    return found


def importance_page(storage: str, search: str = "") -> html.Div:
    """The parameter importance of the study named in ``search``, per method."""
    names = _studies(search)
    try:
        if not names:
            studies = D.list_studies(storage)
            return html.Div([
                html.H1("Parameter importance", id="importance-title"),
                html.P("Choose a study:"),
                html.Ul([html.Li(dcc.Link(s.name, href=importance_href(s.name))) for s in studies]),
            ])
        name = names[0]
        found = _importance(storage, D.load_study_data(storage, name))
    except Exception as exc:  # shown on the page, never raised
        return _problem("Parameter importance", exc, storage)
    items = [html.Li(f"{method}: " + (", ".join(f"{p} {share:.0%}" for p, share in
                                                sorted(f.shares.items(), key=lambda kv: -kv[1]))
                                      or "nothing to explain (no varying parameter or a constant value)"))
             for method, f in found.items()]
    return html.Div([
        html.H1(f"Parameter importance: {name}", id="importance-title"),
        html.Ul(items, id="importance-list"),
        dcc.Graph(id="fig-importance", figure=importance_figure(found), config={"displaylogo": False}),
        html.Details([html.Summary("How importance is computed"), html.Pre(IMPORTANCE_DOC or "")]),
        dcc.Link("Back to the study", href=_study_href(name)), " | ", dcc.Link("All studies", href="/"),
    ])


def study_links(data: D.StudyData) -> list[Any]:
    """The study page's section: links to its importance and to the comparison of all studies."""
    return [html.P([dcc.Link("Parameter importance of this study", href=importance_href(data.name),
                             id="importance-link"),
                    " | ", dcc.Link("Compare all studies", href=compare_href())], id="analysis-links")]
