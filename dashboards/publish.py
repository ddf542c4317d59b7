"""Publish a study's robustness analysis into the study, where optuna-dashboard shows it.

``proxstudy publish STUDY`` (and every ``proxstudy run`` unless ``--no-publish``) stores, with
optuna-dashboard's own functions, the robustness figures (``save_plotly_graph_object``, one
fixed id per view, so a later publish overwrites them) and the verdict with the metrics table
as the study's note (``save_note``, Markdown). Figures an earlier publish stored under our
prefix that this one no longer draws (a method that is gone) are removed from the study's
system attributes, so the study shows exactly the latest analysis. Text from the study is
escaped for Markdown and HTML in the note, and for Plotly in the figures (figures.plot_text).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
import plotly.graph_objects as go

from proxstudy.dashboards import data as D
from proxstudy.dashboards.figures import study_figures
from proxstudy.dashboards.tables import METRIC_COLUMNS, metrics_rows, verdict

#: Every graph id a publish stores starts with this (optuna-dashboard's key: dashboard:plot_data:<id>:<chunk>).
GRAPH_PREFIX = "proxstudy-"
PLOT_DATA_KEY = "dashboard:plot_data:"
#: The views published, in the order optuna-dashboard lists them (heatmaps follow, one per method).
VIEWS = ("sensitivity", "robustness", "tunability", "divergence")

__all__ = ["GRAPH_PREFIX", "Published", "markdown_text", "note_markdown", "publish", "published_figures"]


@dataclass(frozen=True)
class Published:
    study: str
    graph_ids: list[str]
    note_chars: int
    removed: int  # stale graph ids of an earlier publish removed


def markdown_text(text: object) -> str:
    """Text from the study shown literally in Markdown: HTML characters as entities, Markdown
    punctuation backslash-escaped, line breaks as spaces (one table cell stays one cell)."""
    escaped = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", escaped)
    return re.sub(r"[\r\n]+", " ", escaped)


def note_markdown(data: D.StudyData) -> str:
    """The study's note: the verdict sentences, the pairwise probabilities, the metrics table."""
    answer = verdict(data.metrics, data.objective)
    lines = [f"## Robustness of {markdown_text(data.name)} (published by proxstudy)", "",
             markdown_text(answer.scale), ""]
    lines += [f"- {markdown_text(sentence)}" for sentence in answer.methods]
    if answer.ranking:
        lines += ["", markdown_text(answer.ranking)]
    if answer.comparisons:
        lines += [""] + [f"- {markdown_text(sentence)}" for sentence in answer.comparisons]
    rows = metrics_rows(data.metrics)
    if rows:
        lines += ["", "| " + " | ".join(markdown_text(title) for _, title in METRIC_COLUMNS) + " |",
                  "|" + "---|" * len(METRIC_COLUMNS)]
        lines += ["| " + " | ".join(markdown_text(row[key]) for key, _ in METRIC_COLUMNS) + " |" for row in rows]
    if data.notes:
        lines += ["", "Not everything in this study could be read:"] + [f"- {markdown_text(n)}" for n in data.notes]
    counts = ", ".join(f"{data.counts.get(s, 0)} {s}" for s in D.STATUS_ORDER)
    lines += ["", f"Trials: {counts}. Figures: the plots published beside this note (ids {GRAPH_PREFIX}...)."]
    return "\n".join(lines) + "\n"


def published_figures(data: D.StudyData) -> dict[str, go.Figure]:
    """The figures a publish stores, by graph id."""
    figs = study_figures(data)
    out = {f"{GRAPH_PREFIX}{view}": figs[view] for view in VIEWS if view in figs}
    heatmaps = [key for key in figs if key.startswith("heatmap:")]
    out.update({f"{GRAPH_PREFIX}heatmap-{i}": figs[key] for i, key in enumerate(heatmaps)})
    return out


def _remove_stale(storage: optuna.storages.BaseStorage, study_id: int, keep: Sequence[str]) -> int:
    """Delete the system attributes of graph ids under GRAPH_PREFIX not in ``keep`` (RDB storages;
    Optuna's API can set attributes but not delete them). Returns how many ids were removed."""
    from sqlalchemy import text

    prefix = PLOT_DATA_KEY + GRAPH_PREFIX
    wanted = {PLOT_DATA_KEY + graph_id for graph_id in keep}
    attrs = storage.get_study_system_attrs(study_id)
    stale = [key for key in attrs if key.startswith(prefix) and key.rsplit(":", 1)[0] not in wanted]
    engine = getattr(storage, "engine", None)
    if not stale or engine is None:
        return 0
    with engine.begin() as conn:
        for key in stale:
            conn.execute(text("DELETE FROM study_system_attributes WHERE study_id = :sid AND key = :key"),
                         {"sid": study_id, "key": key})
    return len({key.rsplit(":", 1)[0] for key in stale})


def publish(url: str, study_name: str) -> Published:
    """Store the study's robustness figures and note in it (raises StudyNotFound)."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    data = D.study_summary_data(url, study_name)
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    study = optuna.load_study(study_name=study_name, storage=storage)
    figures = published_figures(data)
    for graph_id, fig in figures.items():
        save_plotly_graph_object(study, fig, graph_object_id=graph_id)
    removed = _remove_stale(storage, storage.get_study_id_from_name(study_name), list(figures))
    body = note_markdown(data)
    save_note(study, body)
    return Published(study_name, list(figures), len(body), removed)
