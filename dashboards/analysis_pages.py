"""Dashboard pages beyond one study's: several studies compared, and parameter importance.

``/compare`` compares every study in the storage, ``/compare/<name>/<name>...`` (each name
URL-encoded) the named ones: the same methods' lr sensitivity and trained lr range side by
side (``dashboards.compare``) and the performance profile. ``/importance/<name>`` shows a
study's parameter importance (``dashboards.importance``; fANOVA takes seconds on large
studies, so it has its own page and the study page stays quick). The app asks :func:`route`
for every path first; ``None`` means "not one of these pages".
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from dash import dcc, html

from proxstudy.dashboards import data as D
from proxstudy.dashboards.compare import __doc__ as COMPARE_DOC
from proxstudy.dashboards.compare import compare_document, profile_figure
from proxstudy.dashboards.importance import __doc__ as IMPORTANCE_DOC
from proxstudy.dashboards.importance import importance_figure, log_params_of_document, study_importance
from proxstudy.dashboards.metrics import summary_document

__all__ = ["COMPARE_PREFIX", "IMPORTANCE_PREFIX", "compare_href", "compare_page", "importance_href",
           "importance_page", "route"]

COMPARE_PREFIX = "/compare"
IMPORTANCE_PREFIX = "/importance/"


def compare_href(names: list[str] | None = None) -> str:
    return COMPARE_PREFIX + "".join("/" + quote(n, safe="") for n in names or [])


def importance_href(name: str) -> str:
    return IMPORTANCE_PREFIX + quote(name, safe="")


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


def compare_page(storage: str, names: list[str] | None = None) -> html.Div:
    """The comparison of ``names`` (every study in the storage when None or empty)."""
    names = names or [s.name for s in D.list_studies(storage)]
    summaries = []
    for name in names:
        data = D.load_study_data(storage, name)  # StudyNotFound: the caller shows it
        summaries.append(summary_document(data.metrics, name, data.objective))
    document = compare_document(summaries)
    header = html.Tr([html.Th("method")] + [html.Th(dcc.Link(n, href="/study/" + quote(n, safe="")))
                                            for n in document["studies"]])
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


def importance_page(storage: str, name: str) -> html.Div:
    """The parameter importance of one study, per method."""
    data = D.load_study_data(storage, name)
    found = study_importance(data.metrics, log_params_of_document(data.space))
    items = [html.Li(f"{method}: " + (", ".join(f"{p} {share:.0%}" for p, share in
                                                sorted(f.shares.items(), key=lambda kv: -kv[1]))
                                      or "nothing to explain (no varying parameter or a constant value)"))
             for method, f in found.items()]
    return html.Div([
        html.H1(f"Parameter importance: {name}", id="importance-title"),
        html.Ul(items, id="importance-list"),
        dcc.Graph(id="fig-importance", figure=importance_figure(found), config={"displaylogo": False}),
        html.Details([html.Summary("How importance is computed"), html.Pre(IMPORTANCE_DOC or "")]),
        dcc.Link("Back to the study", href="/study/" + quote(name, safe="")), " | ", dcc.Link("All studies", href="/"),
    ])


def route(storage: str, pathname: str) -> html.Div | None:
    """The page for ``pathname`` if it is one of this module's (raises StudyNotFound)."""
    if pathname == COMPARE_PREFIX or pathname.startswith(COMPARE_PREFIX + "/"):
        parts = [unquote(p) for p in pathname[len(COMPARE_PREFIX):].split("/") if p]
        return compare_page(storage, parts)
    if pathname.startswith(IMPORTANCE_PREFIX):
        return importance_page(storage, unquote(pathname[len(IMPORTANCE_PREFIX):]))
    return None
