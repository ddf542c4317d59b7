"""Several studies side by side: the same methods' robustness numbers, and a performance profile.

Pure functions of ``summary_document`` dicts (the `proxstudy summary --format json` contract),
so a comparison shows exactly the numbers each study's summary shows.

Performance profile (Dolan and More 2002, as AlgoPerf scores submissions across workloads):
in each study s, r(s, m) = lr_sensitivity(s, m) / min over methods of lr_sensitivity(s, .);
rho_m(tau) = the share of ALL compared studies where r(s, m) <= tau. A method that is not in a
study, or has no sensitivity there, counts as never within any factor (r = inf), so a curve
reaching 1 means "within tau of the best in every study". When the best sensitivity of a
study is 0 (some method trains as well as the best everywhere), methods at 0 have r = 1 and
every other method r = inf: no finite factor brings a positive number within reach of 0.
Ratios within 1e-12 of a tau count as within (floating-point ties).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from proxstudy.study.redaction import redact

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "COMPARED_KEYS",
    "compare_document",
    "compare_text",
    "performance_profile",
    "profile_figure",
    "profile_taus",
    "sensitivity_ratios",
    "storage_label",
    "study_labels",
]

#: The per-method numbers of each study's summary that a comparison shows.
COMPARED_KEYS = ("lr_sensitivity", "lr_sensitivity_ci", "sensitivity_params", "trained_lr", "trained_decades",
                 "trained_decades_ci", "divergence_rate", "robust_params")


def _method_order(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    order: list[str] = []
    for doc in summaries:
        for method in doc["methods"]:
            if method not in order:
                order.append(method)
    return order


def sensitivity_ratios(sensitivity: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float]]:
    """study -> method -> r(s, m) for every method of any study (``math.inf`` where absent)."""
    methods: list[str] = []
    for by_method in sensitivity.values():
        methods.extend(m for m in by_method if m not in methods)
    out: dict[str, dict[str, float]] = {}
    for study, by_method in sensitivity.items():
        known = {m: float(v) for m, v in by_method.items() if v is not None and math.isfinite(v)}
        best = min(known.values()) if known else None
        row = {}
        for m in methods:
            if m not in known or best is None:
                row[m] = math.inf
            elif best == 0.0:
                row[m] = 1.0 if known[m] == 0.0 else math.inf
            else:
                row[m] = known[m] / best
        out[study] = row
    return out


def profile_taus(ratios: Mapping[str, Mapping[str, float]], tau_max: float | None = None) -> list[float]:
    """The factors where some curve steps: 1 and every finite ratio (sorted), up to ``tau_max``."""
    finite = {r for row in ratios.values() for r in row.values() if math.isfinite(r)}
    taus = sorted({1.0} | finite)
    return [t for t in taus if tau_max is None or t <= tau_max]


def performance_profile(ratios: Mapping[str, Mapping[str, float]], taus: Sequence[float]) -> dict[str, list[float]]:
    """method -> rho_m(tau) for each tau: the share of studies where r(s, m) <= tau."""
    n = len(ratios)
    methods: list[str] = []
    for row in ratios.values():
        methods.extend(m for m in row if m not in methods)
    return {
        m: [sum(row.get(m, math.inf) <= t + 1e-12 for row in ratios.values()) / n if n else 0.0 for t in taus]
        for m in methods
    }


def study_labels(studies: Sequence[tuple[str, str]]) -> list[str]:
    """A distinct label for each (study name, storage URL): the name, or where the same name
    comes from several storages (CPU and GPU runs of one space), the name and its storage."""
    labels = []
    for name, url in studies:
        if sum(other == name for other, _ in studies) == 1:
            labels.append(name)
        else:
            labels.append(f"{name} ({storage_label(url)})")
    if len(set(labels)) < len(labels):  # same name, storages whose short forms agree
        labels = [f"{label} [{i + 1}]" for i, label in enumerate(labels)]
    return labels


def storage_label(url: str) -> str:
    """A short, password-free name of a storage: a SQLite file's name, else host/database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return os.path.basename(parsed.database or "") or ":memory:"
    return f"{parsed.host or ''}/{parsed.database or ''}"


def compare_document(summaries: Sequence[Mapping[str, Any]],
                     storages: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The `proxstudy compare --format json` document of several summary documents.

    ``studies``: their labels in order (the study names, see :func:`study_labels`);
    ``storages``: label -> its storage URL, password redacted (when given); ``methods``:
    method -> study -> the COMPARED_KEYS of that study's summary (a study without the method is
    absent); ``profile``: the performance profile over its step points ``taus`` (``ratios``:
    study -> method -> r, null for inf).
    """
    names = [str(doc["study"]) for doc in summaries]
    methods: dict[str, dict[str, Any]] = {}
    for method in _method_order(summaries):
        methods[method] = {
            doc["study"]: {key: doc["methods"][method].get(key) for key in COMPARED_KEYS}
            for doc in summaries if method in doc["methods"]
        }
    sensitivity = {doc["study"]: {m: v.get("lr_sensitivity") for m, v in doc["methods"].items()} for doc in summaries}
    ratios = sensitivity_ratios(sensitivity)
    taus = profile_taus(ratios)
    return {
        "studies": names,
        **({"storages": {label: redact(url) for label, url in storages.items()}} if storages is not None else {}),
        "objectives": {doc["study"]: doc.get("objective") for doc in summaries},
        "methods": methods,
        "profile": {
            "taus": taus,
            "ratios": {s: {m: (r if math.isfinite(r) else None) for m, r in row.items()} for s, row in ratios.items()},
            "share_within": performance_profile(ratios, taus),
        },
    }


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "(not in study)"
    sens, ci = entry.get("lr_sensitivity"), entry.get("lr_sensitivity_ci")
    text = _number(sens) + (f" [{_number(ci[0])}, {_number(ci[1])}]" if ci else "")
    decades = entry.get("trained_decades")
    text += f"; {_number(decades, 1)} dec" if decades is not None else "; none trained"
    return text


def compare_text(document: Mapping[str, Any]) -> str:
    """A plain-text table: one row per method, one column per study (lr sensitivity [95%
    interval]; trained decades of lr), then the performance profile at a few factors."""
    studies = list(document["studies"])
    header = ["method", *studies]
    rows = [[method] + [_cell(by_study.get(s)) for s in studies] for method, by_study in document["methods"].items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["lr sensitivity [95% interval]; trained lr range in decades, per study", ""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    profile = document["profile"]
    shown = [1.0, 1.1, 1.25, 1.5, 2.0, 4.0]
    ratios = {s: {m: (math.inf if r is None else r) for m, r in row.items()} for s, row in profile["ratios"].items()}
    shares = performance_profile(ratios, shown)
    lines += ["", f"Share of the {len(studies)} studies where a method's lr sensitivity is within a factor tau "
                  "of the best:"]
    lines.append("  ".join(["tau".ljust(widths[0])] + [f"{t:g}".rjust(5) for t in shown]))
    for method, values in shares.items():
        lines.append("  ".join([method.ljust(widths[0])] + [f"{v:5.2f}" for v in values]))
    return "\n".join(lines)


def profile_figure(document: Mapping[str, Any]) -> go.Figure:
    """The performance profile as step curves on a log tau axis (one per method)."""
    import plotly.graph_objects as go

    from proxstudy.dashboards.figures import plot_text

    profile = document["profile"]
    taus = list(profile["taus"])
    top = max(taus) * 1.5 if taus and max(taus) > 1.0 else 2.0
    fig = go.Figure()
    for method, shares in profile["share_within"].items():
        name = plot_text(method)
        fig.add_trace(go.Scatter(x=[*taus, top], y=[*list(shares), shares[-1] if shares else 0.0], name=name,
                                 mode="lines+markers", line={"shape": "hv"},
                                 hovertemplate=f"{name}<br>tau %{{x:.3g}}: share %{{y:.2f}}<extra></extra>"))
    fig.update_layout(
        title=f"Performance profile over {len(document['studies'])} studies (lr sensitivity)",
        xaxis={"title": "tau: within this factor of the best lr sensitivity", "type": "log"},
        yaxis={"title": "share of studies", "range": [-0.02, 1.02]},
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, legend={"orientation": "h"},
    )
    return fig
