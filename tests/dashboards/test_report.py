"""The static HTML report: self-contained, escaped, complete and written atomically."""

from __future__ import annotations

import os
import re

import pytest

from proxstudy.dashboards import data as D
from proxstudy.dashboards.report import write_report
from tests.support import study_fixtures as F

XSS = "<script>alert(1)</script>"
BP = "bp</script><script>alert(2)</script>"  # a method name that tries to end a script


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'studies.db'}"
    F.build_study(url, XSS, F.SyntheticSpace(lrs=(0.05, 5.0), taus=(1.0,), cgs=(3,), seeds=(0, 1), backprop=BP))
    D.clear_cache()
    return url


def test_report_is_self_contained_and_escaped(storage, tmp_path):
    out = tmp_path / "report.html"
    write_report(storage, XSS, str(out))
    text = out.read_text(encoding="utf-8")
    # plotly.js inlined exactly once, no external scripts or stylesheets.
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not re.search(r"<link[^>]*https?:", text, re.I)
    assert text.count("Plotly.newPlot") >= 7 and len(text) > 3_000_000
    assert text.count("plotly.js v") <= 2  # the bundle's banner, once
    # The study name only appears escaped in the HTML (inside the plot JSON it is a JS string).
    assert "<h1>&lt;script&gt;alert(1)&lt;/script&gt;</h1>" in text
    html_part = re.sub(r"<script\b.*?</script>", "", text, flags=re.S)
    assert XSS not in html_part
    assert "<script>alert(2)" not in text  # escaped in tables, \u003c-escaped inside plot JSON
    # Table 1: BackProp diverged at lr 5 -> "-".
    table1 = re.search(r'<table class="data" id="table1">(.*?)</table>', text, re.S).group(1)
    assert "<td>bp&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;</td><td>-</td>" in table1
    trials = re.search(r'<table class="data" id="trials">(.*?)</table>', text, re.S).group(1)
    assert trials.count("<tr>") == 1 + 8  # header + 2 lrs x (BackProp + ProxProp cg3) x 2 seeds
    assert os.stat(out).st_mode & 0o044 == 0o044  # readable like any written file


def test_unknown_study_writes_nothing(storage, tmp_path):
    out = tmp_path / "none.html"
    with pytest.raises(D.StudyNotFound):
        write_report(storage, "missing", str(out))
    assert list(tmp_path.iterdir()) == []


def test_existing_report_is_replaced_whole(storage, tmp_path):
    out = tmp_path / "report.html"
    out.write_text("old")
    write_report(storage, XSS, str(out))
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left


def test_report_of_a_study_written_by_another_tool(tmp_path):
    """Issue 13, item 10: `report` writes what can be read plus the notes (no exit 1)."""
    from tests.support import foreign_study as FS

    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    FS.build_foreign_study(url)
    D.clear_cache()
    for study in (FS.STUDY, FS.TEXT_LR_STUDY):
        out = tmp_path / f"{study}.html"
        write_report(url, study, str(out))
        text = out.read_text(encoding="utf-8")
        assert '<section id="study-notes">' in text and "stores no search space" in text
    assert "&lt;b&gt;X&lt;/b&gt;&lt;br&gt;" in (tmp_path / f"{FS.STUDY}.html").read_text(encoding="utf-8")
