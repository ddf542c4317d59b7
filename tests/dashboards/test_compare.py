"""Comparing studies: the performance profile by hand, `proxstudy compare` against the raw trials."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from sqlalchemy.engine import make_url

from proxstudy.dashboards.compare import (
    compare_document,
    compare_text,
    performance_profile,
    profile_figure,
    profile_taus,
    sensitivity_ratios,
)
from tests.support import study_fixtures as F
from tests.support.cli import run_main
from tests.support.postgres import PG_URL, needs_pg
from tests.support.robustness_reference import reference

INF = math.inf


def test_profile_on_hand_made_numbers():
    sensitivity = {
        "s1": {"A": 0.25, "B": 0.5, "C": 0.375},  # A best; B 2x; C 1.5x (exact in binary)
        "s2": {"A": 0.3, "B": 0.3},  # a tie: both 1x; C absent
        "s3": {"A": 0.5, "B": None},  # B has no sensitivity here
        "s4": {"A": 0.0, "B": 0.1},  # best 0: only a 0 is within any factor
    }
    ratios = sensitivity_ratios(sensitivity)
    assert ratios == {
        "s1": {"A": 1.0, "B": 2.0, "C": 1.5},
        "s2": {"A": 1.0, "B": 1.0, "C": INF},
        "s3": {"A": 1.0, "B": INF, "C": INF},
        "s4": {"A": 1.0, "B": INF, "C": INF},
    }
    taus = profile_taus(ratios)
    assert taus == [1.0, 1.5, 2.0]
    assert performance_profile(ratios, taus) == {
        "A": [1.0, 1.0, 1.0],  # best in all four
        "B": [0.25, 0.25, 0.5],  # s2 at 1; s1 at 2
        "C": [0.0, 0.25, 0.25],  # s1 at 1.5
    }
    assert performance_profile(ratios, [1.999999999999999])["B"] == [0.5]  # ties within 1e-12 count
    assert profile_taus(ratios, tau_max=1.5) == [1.0, 1.5]
    assert performance_profile({}, [1.0]) == {}


def _summary(study, sens):
    return {"study": study, "objective": "train_loss",
            "methods": {m: {"lr_sensitivity": s, "lr_sensitivity_ci": None if s is None else [s, s],
                            "trained_decades": 1.0} for m, s in sens.items()}}


def test_document_text_and_figure():
    doc = compare_document([_summary("mlp", {"bp": 0.6, "cg": 0.3}), _summary("conv", {"cg": 0.5, "exact": 0.4})])
    assert doc["studies"] == ["mlp", "conv"]
    assert list(doc["methods"]) == ["bp", "cg", "exact"]  # first appearance
    assert set(doc["methods"]["bp"]) == {"mlp"} and set(doc["methods"]["cg"]) == {"mlp", "conv"}
    assert doc["methods"]["cg"]["conv"]["lr_sensitivity"] == 0.5
    assert doc["profile"]["ratios"]["mlp"] == {"bp": 2.0, "cg": 1.0, "exact": None}
    assert doc["profile"]["share_within"]["cg"][0] == 0.5  # best in mlp, 1.25x in conv
    json.dumps(doc, allow_nan=False)  # strict JSON: no inf
    text = compare_text(doc)
    assert "0.60 [0.60, 0.60]; 1.0 dec" in text and "(not in study)" in text
    assert text.splitlines()[-1].split()[0] == "exact"
    fig = profile_figure(doc)
    assert [t.name for t in fig.data] == ["bp", "cg", "exact"] and fig.layout.xaxis.type == "log"


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'studies.db'}"
    F.build_study(url, "wide")
    F.build_study(url, "narrow", F.SyntheticSpace(lrs=(5e-3, 0.05, 0.5), seeds=(0, 1, 2)))
    return url


def test_compare_json_against_the_raw_trials(storage, capsys):
    code, out, err = run_main(["compare", "wide", "narrow", "--storage", storage, "--format", "json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["studies"] == ["wide", "narrow"]
    for study in ("wide", "narrow"):
        ref = reference(storage, study)
        best = min(r.sensitivity for r in ref.values())
        for method, r in ref.items():
            entry = doc["methods"][method][study]
            assert entry["lr_sensitivity"] == pytest.approx(r.sensitivity, abs=1e-12)
            assert entry["sensitivity_params"] == pytest.approx(r.theta)
            assert doc["profile"]["ratios"][study][method] == pytest.approx(r.sensitivity / best)
    ratios = [doc["profile"]["ratios"][s]["backprop"] for s in ("wide", "narrow")]
    expected = [sum(r <= t + 1e-12 for r in ratios) / 2 for t in doc["profile"]["taus"]]
    assert doc["profile"]["share_within"]["backprop"] == pytest.approx(expected)


def test_compare_table_and_bad_input(storage, capsys):
    code, out, _ = run_main(["compare", "wide", "narrow", "--storage", storage], capsys)
    assert code == 0
    assert out.splitlines()[2].split() == ["method", "wide", "narrow"]
    assert "within a factor tau of the best" in out
    code, out, err = run_main(["compare", "wide", "absent", "--storage", storage], capsys)
    assert code == 2 and out == "" and "no study 'absent'" in err and err.count("\n") == 1
    code, _, err = run_main(["compare", "wide", "wide", "--storage", storage], capsys)
    assert code == 2 and "STUDY wide: named more than once" in err
    code, _, err = run_main(["compare", "wide", "--storage", storage, "--delta", "1.5"], capsys)
    assert code == 2 and "--delta" in err


def test_compare_studies_of_the_same_name_in_different_storages(storage, tmp_path, capsys):
    """CPU and GPU runs of one space: the same study name in two storages, told apart by label."""
    other = f"sqlite:///{tmp_path / 'gpu.db'}"
    F.build_study(other, "wide", F.SyntheticSpace(lrs=(5e-3, 0.05, 0.5), seeds=(0, 1, 2)))
    argv = ["compare", "wide", "wide", "--storage", storage, "--storage", other, "--format", "json"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    doc = json.loads(out)
    labels = ["wide (studies.db)", "wide (gpu.db)"]
    assert doc["studies"] == labels and doc["storages"] == dict(zip(labels, (storage, other), strict=True))
    for label, url in zip(labels, (storage, other), strict=True):
        for method, r in reference(url, "wide").items():
            assert doc["methods"][method][label]["lr_sensitivity"] == pytest.approx(r.sensitivity, abs=1e-12)
    code, _, err = run_main(["compare", "wide", "narrow", "wide", "--storage", storage, "--storage", other], capsys)
    assert code == 2 and "--storage: given 2 times for 3 studies" in err
    code, _, err = run_main(["compare", "wide", "wide", "--storage", other, "--storage", other], capsys)
    assert code == 2 and "STUDY wide: named more than once for the same storage" in err


@needs_pg
def test_compare_across_sqlite_and_postgresql_never_shows_the_password(storage, capsys):
    name = f"compare-pg-{uuid.uuid4().hex[:12]}"
    F.build_study(PG_URL, name, F.SyntheticSpace(lrs=(5e-3, 0.05, 0.5), seeds=(0, 1)))
    secret = "pw-" + uuid.uuid4().hex  # trust auth: the server never asks for it
    with_password = make_url(PG_URL).set(password=secret).render_as_string(hide_password=False)
    for output in ("json", "table"):
        argv = ["compare", "wide", name, "--storage", storage, "--storage", with_password, "--format", output]
        code, out, err = run_main(argv, capsys)
        assert code == 0, err
        assert secret not in out + err
    doc = json.loads(run_main([*argv[:-1], "json"], capsys)[1])
    assert doc["studies"] == ["wide", name] and "***" in doc["storages"][name]
    for method, r in reference(PG_URL, name).items():
        assert doc["methods"][method][name]["lr_sensitivity"] == pytest.approx(r.sensitivity, abs=1e-12)


def test_compare_and_importance_pages_render_in_chromium(storage):
    """The dashboard's compare page (table and profile) and a study's importance page, drawn by
    a real headless Chromium; the index and the study page link to them."""
    import shutil

    from proxstudy.dashboards import app as A
    from proxstudy.dashboards import data as D

    pytest.importorskip("websocket")
    from tests.support.browser import CHROMIUM, Browser

    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM}")
    D.clear_cache()
    with F.RunningServer(A.create_app(storage)) as server:
        browser = Browser()
        try:
            browser.navigate(server.base + "/")
            browser.wait_for("!!document.querySelector('#extra-pages a')")
            browser.eval("[...document.querySelectorAll('#extra-pages a')]"
                         ".find(a => a.textContent === 'Compare the studies').click()")
            browser.wait_for("document.querySelectorAll('#fig-profile .scatterlayer .trace').length === 2", timeout=45)
            heads = browser.eval("[...document.querySelectorAll('#compare-table th')].map(t => t.textContent)")
            assert heads == ["method", "narrow", "wide"]  # every study, in the index's order
            cells = browser.eval("[...document.querySelectorAll('#compare-table .sensitivity')].length")
            assert cells == 4
            layout = "document.querySelector('#fig-profile .js-plotly-plot')._fullLayout"
            assert browser.eval(layout + ".xaxis.type") == "log"

            browser.navigate(server.base + "/compare?study=wide")
            browser.wait_for("document.querySelectorAll('#compare-table th').length === 2", timeout=45)

            browser.navigate(server.base + "/study/wide")
            browser.wait_for("!!document.querySelector('#importance-link')", timeout=45)
            browser.eval("document.querySelector('#importance-link').click()")
            browser.wait_for("document.querySelectorAll('#fig-importance .bars .point').length >= 4", timeout=60)
            items = browser.eval("[...document.querySelectorAll('#importance-list li')].map(li => li.textContent)")
            assert items[0] == "backprop: lr 100%" and items[1].startswith("proxprop-cg: lr ")

            browser.navigate(server.base + "/compare?study=wide&study=absent")
            browser.wait_for("!!document.querySelector('.error') && document.querySelector('.error').textContent"
                             ".includes(\"no study 'absent'\")", timeout=30)
        finally:
            browser.close()


def test_names_from_the_storage_show_literally_in_the_figure():
    doc = compare_document([_summary("s", {"<b>bp</b>": 0.5, "cg": 0.25})])
    assert [t.name for t in profile_figure(doc).data] == ["&lt;b&gt;bp&lt;/b&gt;", "cg"]
