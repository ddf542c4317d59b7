"""The static report: one self-contained HTML file with the study page's verdict, figures, tables.

plotly.js is inlined once (the file works offline, no external script), every piece of text
from the storage is HTML-escaped, and the file is written to a temporary file in the target
directory and renamed, so a reader never sees half a report and a failure leaves no file.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

from plotly.offline import get_plotlyjs

from proxstudy.dashboards import data as D
from proxstudy.dashboards.figures import study_figures
from proxstudy.dashboards.importance import report_section as importance_section
from proxstudy.dashboards.metrics import __doc__ as METRICS_DOC
from proxstudy.dashboards.tables import METRIC_COLUMNS, format_lr, metrics_rows, table1, trial_rows, verdict
from proxstudy.files import write_atomically

_STYLE = """
body { font-family: sans-serif; margin: 16px; }
table.data { border-collapse: collapse; margin: 8px 0 16px; }
table.data th, table.data td { border: 1px solid #ccc; padding: 3px 8px; text-align: center; }
table.data td:first-child { text-align: left; }
/* Two fixed columns: plotly sizes a figure when its script runs, before later grid items
   exist, so an auto-fit grid would first give the first figure the whole row. */
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px; }
@media (max-width: 1100px) { .grid { grid-template-columns: minmax(0, 1fr); } }
pre { white-space: pre-wrap; }
#study-notes { background: #fff8c5; border: 1px solid #d4a72c; padding: 4px 16px; }
#verdict { background: #f6f8fa; border: 1px solid #d0d7de; padding: 4px 16px; }
"""


#: Sections appended to every report after the views: ``section(data)`` -> an HTML fragment
#: (escape every text from the storage; figures with ``fig.to_html(include_plotlyjs=False)``).
REPORT_SECTIONS: tuple[Callable[[D.StudyData], str], ...] = (importance_section,)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="data" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_report(data: D.StudyData, storage_shown: str = "") -> str:
    """The report's HTML for one study's data (pure: no I/O)."""
    esc = html.escape
    figs = study_figures(data)
    parts: list[str] = []
    # plotly.js goes once into <head>, so every figure can be placed anywhere in the body: a
    # figure placed before the one that carried the library would find `Plotly` undefined.
    config = {"displaylogo": False, "responsive": True}
    fig_html = {key: fig.to_html(full_html=False, include_plotlyjs=False, config=config) for key, fig in figs.items()}
    t1 = table1(data.points, data.records, data.direction)
    mrows = metrics_rows(data.metrics)
    answer = verdict(data.metrics, data.objective)
    counts = ", ".join(f"{data.counts.get(s, 0)} {s}" for s in D.STATUS_ORDER)
    parts.append(f"<h1>{esc(data.name)}</h1>")
    parts.append(f"<p>Storage: {esc(storage_shown)} | objective: {esc(data.objective)} ({esc(data.direction)}) "
                 f"| trials: {esc(counts)}</p>")
    if data.notes:
        parts.append('<section id="study-notes"><h2>Not everything in this study could be read</h2>'
                     "<p>The report shows what could be read; these parts are left out:</p><ul>"
                     + "".join(f"<li>{esc(note)}</li>" for note in data.notes) + "</ul></section>")
    parts.append('<section id="verdict"><h2>Verdict: how sensitive is each method to its learning rate?</h2>')
    parts.append(f'<p class="scale">{esc(answer.scale)}</p>')
    parts.append('<ul class="methods">' + "".join(f"<li>{esc(t)}</li>" for t in answer.methods) + "</ul>")
    if answer.ranking:
        parts.append(f'<p class="ranking">{esc(answer.ranking)}</p>')
    parts.append('<ul class="comparisons">' + "".join(f"<li>{esc(t)}</li>" for t in answer.comparisons) + "</ul>")
    parts.append("</section>")
    parts.append(f'<div class="grid">{fig_html["sensitivity"]}{fig_html["robustness"]}</div>')
    parts.append("<h2>Robustness metrics</h2>")
    parts.append(_table([t for _, t in METRIC_COLUMNS], [[r[k] for k, _ in METRIC_COLUMNS] for r in mrows], "metrics"))
    parts.append("<details><summary>How the metrics are defined</summary>"
                 f"<pre>{esc(METRICS_DOC or '')}</pre></details>")
    parts.append("<h2>Final training loss per learning rate (the paper's Table 1; - = diverged)</h2>")
    parts.append(_table(["method"] + [format_lr(lr) for lr in t1.lrs],
                        [[row, *cells] for row, cells in zip(t1.rows, t1.cells, strict=True)], "table1"))
    parts.append("<h2>Capped objective over lr x tau_prox, per method (log colour scale)</h2>")
    parts.append('<div class="grid">' + "".join(v for k, v in fig_html.items() if k.startswith("heatmap:")) + "</div>")
    parts.append(f'<div class="grid">{fig_html["tunability"]}{fig_html["divergence"]}</div>')
    parts.append("<h2>Training curves of each method's best point</h2>")
    parts.append(f'<div class="grid">{fig_html["training_epoch"]}{fig_html["training_seconds"]}</div>')
    parts.extend(section(data) for section in REPORT_SECTIONS)
    columns, trows = trial_rows(data.records)
    parts.append(f"<details><summary>All {len(trows)} trials</summary>")
    parts.append(_table(columns, [[_cell(r.get(c)) for c in columns] for r in trows], "trials"))
    parts.append("</details>")
    title = esc(f"{data.name} - ProxProp robustness report")
    head = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_STYLE}</style><script>{get_plotlyjs()}</script></head><body>\n")
    return head + "\n".join(parts) + "\n</body></html>\n"


def write_report(storage: str, study_name: str, out_path: str) -> None:
    """Write the study's self-contained HTML report to ``out_path`` atomically.

    Raises ``dashboards.data.StudyNotFound`` for an unknown study (nothing is written).
    """
    data = D.load_study_data(storage, study_name)
    text = render_report(data, D.redact(storage))
    write_atomically(text, out_path)
