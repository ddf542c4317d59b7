"""The compare and importance pages as Dash components (no browser): content, cache, bad input."""

from __future__ import annotations

import json

import pytest

from proxstudy.dashboards import analysis_pages as P
from proxstudy.dashboards import data as D
from tests.support import study_fixtures as F


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('pages') / 'studies.db'}"
    F.build_study(url, "a")
    F.build_study(url, "b", F.SyntheticSpace(lrs=(5e-3, 0.05, 0.5)))
    D.clear_cache()
    return url


def _text(component) -> str:
    return json.dumps(component.to_plotly_json(), default=lambda o: o.to_plotly_json())


def test_hrefs_round_trip_names():
    assert P.compare_href() == "/compare"
    assert P.compare_href(["a b", "x&y"]) == "/compare?study=a+b&study=x%26y"
    assert P._studies("?study=a+b&study=x%26y") == ["a b", "x&y"]
    assert P.importance_href("<s>") == "/importance?study=%3Cs%3E"


def test_compare_page_names_the_studies_it_compares(storage):
    text = _text(P.compare_page(storage, "?study=b"))
    assert "fig-profile" in text and "1 studies" in text
    assert "| 2 studies" in _text(P.compare_page(storage, ""))  # every study of the storage


def test_bad_input_is_shown_not_raised(storage):
    assert "no study 'zz'" in _text(P.compare_page(storage, "?study=a&study=zz"))
    assert "no study 'zz'" in _text(P.importance_page(storage, "?study=zz"))
    chooser = _text(P.importance_page(storage, ""))
    assert "Choose a study" in chooser and "/importance?study=a" in chooser


def test_importance_is_computed_once_per_snapshot(storage, monkeypatch):
    calls = []
    real = P.study_importance
    monkeypatch.setattr(P, "study_importance", lambda *a, **k: calls.append(1) or real(*a, **k))
    P._importance_cache.clear()
    first = _text(P.importance_page(storage, "?study=a"))
    assert _text(P.importance_page(storage, "?study=a")) == first
    assert len(calls) == 1
    assert "backprop: lr 100%" in first
