"""`proxstudy publish` against a real optuna-dashboard process on the same SQLite storage: its
HTTP API lists our figures and our note, a second publish replaces the first, and the note and
figures render in headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import requests

from proxstudy.dashboards import data as D
from proxstudy.dashboards import publish as P
from tests.support import study_fixtures as F

OPTUNA_DASHBOARD = str(Path(sys.executable).with_name("optuna-dashboard"))
MARKUP = "<b>X</b><br>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('publish') / 'studies.db'}"
    F.build_study(url, "digits", F.SyntheticSpace(backprop=MARKUP), n_failed=1)
    D.clear_cache()
    return url


@pytest.fixture(scope="module")
def optuna_dashboard(storage, tmp_path_factory):
    if not Path(OPTUNA_DASHBOARD).exists():
        pytest.skip("optuna-dashboard is not installed")
    port = _free_port()
    log = tmp_path_factory.mktemp("od") / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen([OPTUNA_DASHBOARD, storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                                stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "/api/studies", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _detail(base: str, name: str) -> dict:
    studies = requests.get(base + "/api/studies", timeout=30).json()["study_summaries"]
    (study_id,) = [s["study_id"] for s in studies if s["study_name"] == name]
    return requests.get(f"{base}/api/studies/{study_id}", timeout=60).json() | {"study_id": study_id}


def _run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxstudy.study.cli", *argv], capture_output=True, text=True,
                          timeout=300)


def test_publish_is_listed_by_optuna_dashboard_and_a_second_publish_replaces_the_first(storage, optuna_dashboard):
    # An earlier publish stored a heatmap of a method that is gone by now: it must disappear.
    study = optuna.load_study(study_name="digits", storage=storage)
    from optuna_dashboard import save_plotly_graph_object

    save_plotly_graph_object(study, optuna.visualization.plot_optimization_history(study),
                             graph_object_id=P.GRAPH_PREFIX + "heatmap-7")
    done = _run_cli("publish", "digits", "--storage", storage)
    assert done.returncode == 0, done.stderr
    assert "published 6 figures" in done.stdout and "removed 1 figures" in done.stdout
    detail = _detail(optuna_dashboard, "digits")
    ids = sorted(g["id"] for g in detail["plotly_graph_objects"])
    assert ids == sorted(P.GRAPH_PREFIX + v for v in
                         ("sensitivity", "robustness", "tunability", "divergence", "heatmap-0", "heatmap-1"))
    graphs = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
    bars = graphs[P.GRAPH_PREFIX + "sensitivity"]["data"]
    assert {trace["name"] for trace in bars} == {"&lt;b&gt;X&lt;/b&gt;&lt;br&gt;", "proxprop-cg"}
    note = detail["note"]
    assert note["version"] >= 1 and "lr sensitivity" in note["body"]
    assert "\\<" not in note["body"] and "&lt;b&gt;X&lt;/b&gt;&lt;br&gt;" in note["body"]
    assert "| method | lr sensitivity \\[95% CI\\] |" in note["body"]
    # The note is the verdict of the same analysis `summary` prints.
    data = D.study_summary_data(storage, "digits")
    first_sentence = P.markdown_text(next(iter(data.metrics.methods.values())).method)
    assert f"- {first_sentence}: lr sensitivity" in note["body"]

    again = _run_cli("publish", "digits", "--storage", storage)
    assert again.returncode == 0 and "removed" not in again.stdout
    detail2 = _detail(optuna_dashboard, "digits")
    assert sorted(g["id"] for g in detail2["plotly_graph_objects"]) == ids  # replaced, not added
    assert detail2["note"]["version"] == note["version"] + 1 and detail2["note"]["body"] == note["body"]


def test_publish_of_an_unknown_study_exits_2(storage):
    done = _run_cli("publish", "nope", "--storage", storage)
    assert done.returncode == 2 and "no study 'nope'" in done.stderr and done.stderr.count("\n") == 1


def test_markdown_text_shows_study_text_literally():
    assert P.markdown_text("a|b *c* <i>d</i>\nnext") == "a\\|b \\*c\\* &lt;i&gt;d&lt;/i&gt; next"


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="no Chromium (run scripts/install_chromium.sh)")
def test_published_note_and_figures_render_in_optuna_dashboard(storage, optuna_dashboard):
    from tests.support.browser import Browser

    assert _run_cli("publish", "digits", "--storage", storage).returncode == 0
    study_id = _detail(optuna_dashboard, "digits")["study_id"]
    browser = Browser()
    try:
        browser.navigate(f"{optuna_dashboard}/dashboard/studies/{study_id}")  # figures: on the study's page
        browser.wait_for("document.querySelectorAll('.js-plotly-plot').length >= 7", timeout=60)  # + its history
        titles = browser.eval("[...document.querySelectorAll('.js-plotly-plot .gtitle')].map(t => t.textContent)")
        assert any(t.startswith("lr sensitivity per method") for t in titles)
        assert any(t.startswith(MARKUP + ": capped") for t in titles)  # the name as text, not markup
        browser.navigate(f"{optuna_dashboard}/dashboard/studies/{study_id}/note")  # the note: its own tab
        browser.wait_for("!!document.body && document.body.innerText.includes('published by proxstudy')", timeout=60)
        text = browser.eval("document.body.innerText")
        assert "lr sensitivity" in text and MARKUP + ": lr sensitivity" in text
        assert browser.eval("document.querySelectorAll('table th').length") == 12  # the metrics table
        assert browser.dialogs() == []
    finally:
        browser.close()


def test_run_publishes_at_its_end_and_a_failed_publish_leaves_its_result(storage, tmp_path, capsys):
    """What `run` calls after the sweep (unless --no-publish): the figures land in the study; a
    storage where publishing fails gets one line on stderr naming the retry, and no exception."""
    from proxstudy.study import cli

    assert "--no-publish" in cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    cli._publish_after_run(storage, "digits")
    assert "published 6 figures" in capsys.readouterr().out
    cli._publish_after_run(f"sqlite:///{tmp_path / 'gone.db'}", "digits")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not published" in err and "proxstudy publish digits" in err
