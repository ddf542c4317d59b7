"""The Dash app over HTTP against a real SQLite Optuna storage: page callback, downloads, safety."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
import requests
import yaml

from proxstudy.dashboards import app as A
from proxstudy.dashboards import data as D
from proxstudy.study.storage import scrub_secrets
from tests.support import study_fixtures as F

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'studies.db'}"
    F.build_study(url, "digits", n_failed=1)
    F.build_study(url, XSS, F.SyntheticSpace(lrs=(0.01, 0.1), taus=(1.0,), cgs=(3,), seeds=(0,)), n_running=1)
    D.clear_cache()
    return url


@pytest.fixture(scope="module")
def server(storage):
    with F.RunningServer(A.create_app(storage)) as srv:
        yield srv


def _render(server, pathname, **kwargs):
    r = requests.post(server.base + "/_dash-update-component",
                      json=F.page_callback_payload(pathname, **kwargs), timeout=60)
    r.raise_for_status()
    return r.json()["response"]


def _texts(node) -> list[str]:
    """All string children of a serialized Dash component tree."""
    out = []
    if isinstance(node, str):
        out.append(node)
    elif isinstance(node, list):
        for n in node:
            out += _texts(n)
    elif isinstance(node, dict):
        out += _texts(node.get("props", {}).get("children"))
    return out


def _find(node, predicate):
    if isinstance(node, list):
        for n in node:
            yield from _find(n, predicate)
    elif isinstance(node, dict):
        if predicate(node):
            yield node
        yield from _find(node.get("props", {}).get("children"), predicate)


def test_index_lists_studies_with_counts_and_encoded_links(server):
    page = _render(server, "/")["page"]["children"]
    links = list(_find(page, lambda n: n.get("props", {}).get("className") == "study-link"))
    assert {link["props"]["children"] for link in links} == {"digits", XSS}
    assert {link["props"]["href"] for link in links} == {"/study/digits",
                                                         "/study/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"}
    texts = _texts(page)
    # digits: 2 seeds x (5 BackProp + 20 ProxProp) = 50 trials, first one failed.
    assert "50" in texts and XSS in texts


def test_study_page_has_every_figure_and_table(server, storage):
    response = _render(server, "/study/digits")
    page = response["page"]["children"]
    graphs = list(_find(page, lambda n: n.get("type") == "Graph"))
    ids = {g["props"]["id"] for g in graphs}
    assert {"fig-sensitivity", "fig-robustness", "fig-divergence", "fig-heatmap-0", "fig-heatmap-1",
            "fig-training-epoch", "fig-training-seconds", "fig-tunability"} == ids
    # The page opens with the verdict: before every figure, one sentence per method, the pair.
    (box,) = _find(page, lambda n: n.get("props", {}).get("id") == "verdict")
    texts = _texts(box)
    assert any(t.startswith("backprop: lr sensitivity ") for t in texts)
    assert any(t.startswith("proxprop-cg: lr sensitivity ") for t in texts)
    assert any("less lr-sensitive" in t and "backprop" in t and "proxprop-cg" in t for t in texts)
    order = [n["props"]["id"] for n in _find(page, lambda n: n.get("props", {}).get("id") in ("verdict", *ids))]
    assert order[0] == "verdict"
    tables = {t["props"]["id"]: t["props"] for t in _find(page, lambda n: n.get("type") == "DataTable")}
    trials = tables["trials-table"]
    assert len(trials["data"]) == 25 and trials["page_count"] == 2  # the first page of 50 trials only
    assert trials["filter_action"] == trials["sort_action"] == trials["page_action"] == "custom"
    assert [r["method"] for r in tables["metrics-table"]["data"]] == ["backprop", "proxprop-cg"]
    assert tables["table1"]["data"][0]["method"] == "backprop" and tables["table1"]["data"][0]["5"] == "-"
    # Finished study: live refresh off.
    assert _prop(page, "tick", "disabled") is True


def _prop(page, component_id, prop):
    (node,) = _find(page, lambda n: n.get("props", {}).get("id") == component_id)
    return node["props"].get(prop)


def _post(server, payload):
    r = requests.post(server.base + "/_dash-update-component", json=payload, timeout=60)
    if r.status_code == 204:  # every output "no update"
        return {}
    r.raise_for_status()
    return r.json()["response"]


def test_live_study_polls_and_tick_without_change_is_no_update(server):
    page = _render(server, f"/study/{XSS}")["page"]["children"]
    assert _prop(page, "tick", "disabled") is False  # a running trial -> refresh on
    again = _post(server, F.refresh_callback_payload(XSS, _prop(page, "version", "data")))
    assert "study-body" not in again and "version" not in again  # nothing changed: left as it is
    stale = _post(server, F.refresh_callback_payload(XSS, -1))  # the page shows an older snapshot
    assert "study-body" in stale and stale["version"]["data"] == _prop(page, "version", "data")


def test_trial_table_is_filtered_sorted_and_paged_on_the_server(server):
    page = _render(server, "/study/digits")["page"]["children"]
    version = _prop(page, "version", "data")
    first = _post(server, F.trials_callback_payload("digits", version, filter_query='{method} contains "backprop"',
                                                    sort_by=[{"column_id": "lr", "direction": "desc"}], page_size=4))
    rows = first["trials-table"]["data"]
    assert len(rows) == 4 and first["trials-table"]["page_count"] == 3  # 10 backprop trials, 4 a page
    assert {r["method"] for r in rows} == {"backprop"} and [r["lr"] for r in rows] == sorted(
        (r["lr"] for r in rows), reverse=True)
    assert rows[0]["lr"] == 5.0 and first["trials-note"]["children"].startswith("10 of 50 trials match")
    last = _post(server, F.trials_callback_payload("digits", version, page_current=2, page_size=4,
                                                   filter_query='{method} contains "backprop"'))
    assert len(last["trials-table"]["data"]) == 2
    numeric = _post(server, F.trials_callback_payload("digits", version, filter_query="{lr} >= 0.5 && {seed} = 1"))
    assert numeric["trials-table"]["data"] and all(r["lr"] >= 0.5 and r["seed"] == 1
                                                   for r in numeric["trials-table"]["data"])


def test_csv_download_has_every_trial(server):
    r = requests.get(server.base + "/download/trials.csv", params={"study": "digits"}, timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 50 and {"number", "method", "lr", "tau_prox", "seed", "status", "value"} <= set(rows[0])
    assert rows[0]["status"] == "failed" and "<b>synthetic</b>" in rows[0]["error"]
    missing = requests.get(server.base + "/download/trials.csv", params={"study": "nope"}, timeout=60)
    assert missing.status_code == 404


def test_export_download_is_the_best_point_per_method(server):
    r = requests.get(server.base + "/download/export.yaml", params={"study": "digits"}, timeout=60)
    doc = yaml.safe_load(r.text)
    assert doc["study"] == "digits" and doc["direction"] == "minimize"
    bp = doc["methods"]["backprop"]["best"]
    assert bp["params"] == {"lr": 0.05} and bp["objective"]["n"] == 2 and bp["seeds"] == [0, 1]
    assert bp["trial_config"]["mode"] == "gradient" and bp["trial_config"]["lr"] == 0.05
    js = requests.get(server.base + "/download/export.json", params={"study": "digits"}, timeout=60)
    assert json.loads(js.text)["methods"]["proxprop-cg"]["robust"]["trial_config"]["cg_iterations"] in (1, 3)


def test_unknown_study_page_says_so(server):
    page = _render(server, "/study/nope")["page"]["children"]
    assert any("no study 'nope' in the storage" in t for t in _texts(page))


def test_remote_binding_needs_allow_remote(storage):
    with pytest.raises(ValueError, match="allow_remote"):
        A.run_dashboard(storage, host="0.0.0.0", port=1)


def test_remote_binding_with_allow_remote_warns(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    with pytest.raises(FileNotFoundError):  # stops at the storage check, after the warning
        A.run_dashboard(missing, host="0.0.0.0", port=1, allow_remote=True)
    assert "WARNING" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()  # read-only: no empty database created


def test_password_is_never_shown():
    url = "postgresql+psycopg://user:hunter2secret@db.example:5432/studies"
    assert "hunter2secret" not in D.redact(url) and "db.example" in D.redact(url)
    assert "hunter2secret" not in scrub_secrets(f"could not connect to {url}", url)


def test_password_not_on_index_page_with_real_postgres():
    pytest.importorskip("psycopg")
    url = os.environ.get("PROXSTUDY_TEST_PG", "postgresql+psycopg://postgres:pw-not-shown@127.0.0.1:5432/test")
    try:
        studies = D.list_studies(url)
    except Exception as exc:  # no server here
        pytest.skip(f"PostgreSQL not reachable: {type(exc).__name__}")
    page = A.index_page(url)
    assert "pw-not-shown" not in json.dumps(page.to_plotly_json(), default=str)
    assert isinstance(studies, list)


def test_export_download_equals_proxstudy_export(server, storage):
    from proxstudy.dashboards.exported import study_export_document
    from proxstudy.study import export as study_export

    r = requests.get(server.base + "/download/export.yaml", params={"study": "digits"}, timeout=60)
    expected = study_export.render(study_export_document(storage, "digits"), "yaml")
    assert r.status_code == 200 and r.text == expected
    assert set(yaml.safe_load(r.text)["methods"])  # at least one method exported


def test_run_dashboard_serves_on_localhost(storage, tmp_path):
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import sys; from proxstudy.dashboards.app import run_dashboard; "
            f"run_dashboard(sys.argv[1], port={port})")
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, storage], stderr=err, stdout=err,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    response = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
                    if response.status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    assert f"http://127.0.0.1:{port}/ (waitress, 8 threads)" in log.read_text()
    assert response.headers["Server"] == "waitress"  # the production server, not werkzeug's


@pytest.mark.parametrize("argv, named", [
    (["--port", "99999"], "--port 99999"),
    (["--threads", "0"], "--threads 0"),
    (["--debug", "--host", "0.0.0.0", "--allow-remote"], "--debug"),
])
def test_dashboard_options_out_of_range_exit_2_naming_the_option(storage, argv, named):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "proxstudy.study.cli", "dashboard", "--storage", storage, *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and named in done.stderr, done.stderr


def test_extra_pages_and_study_sections_are_served(storage):
    """The hook other page modules use: a page at its own path (with the URL's query) and a
    section at the end of every study page."""
    seen: list[str] = []

    def render(url: str, search: str):
        seen.append(search)
        return A.html.Div([A.html.H1("Compare"), A.html.P(f"query {search}")], id="compare-page")

    def section(data: D.StudyData):
        return [A.html.H2(f"Extra for {data.name}", id="extra-section")]

    page = A.ExtraPage("/compare", "Compare studies", render)
    with F.RunningServer(A.create_app(storage, pages=(page,), sections=(section,))) as srv:
        response = _post(srv, F.page_callback_payload("/compare", "?study=digits"))
        assert "query ?study=digits" in _texts(response["page"]["children"])
        assert seen == ["?study=digits"]
        index = _render(srv, "/")["page"]["children"]
        (link,) = _find(index, lambda n: n.get("props", {}).get("href") == "/compare")
        assert link["props"]["children"] == "Compare studies"
        study = _render(srv, "/study/digits")["page"]["children"]
        assert "Extra for digits" in _texts(study)


def test_study_written_by_another_tool_is_shown_with_notes(tmp_path):
    """Issue 13, item 10: a study written straight through Optuna with damaged attributes and a
    text lr is served (HTTP 200) with what can be read and a note on what cannot."""
    from tests.support import foreign_study as FS

    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    FS.build_foreign_study(url)
    D.clear_cache()
    with F.RunningServer(A.create_app(url)) as srv:
        page = _render(srv, "/study/" + FS.STUDY)["page"]["children"]
        (notes,) = _find(page, lambda n: n.get("props", {}).get("id") == "study-notes")
        text = "\n".join(_texts(notes))
        assert "user attribute 'train_loss' is" in text and "str, not a list of numbers" in text
        assert "stores no search space" in text
        tables = {t["props"]["id"]: t["props"] for t in _find(page, lambda n: n.get("type") == "DataTable")}
        assert {r["method"] for r in tables["metrics-table"]["data"]} == {FS.PLAIN_METHOD, FS.MARKUP_METHOD}
        text_lr = _render(srv, "/study/" + FS.TEXT_LR_STUDY)["page"]["children"]
        (notes,) = _find(text_lr, lambda n: n.get("props", {}).get("id") == "study-notes")
        assert any("param 'lr' is str, not a finite number" in t for t in _texts(notes))
        assert [r["lr"] for r in _prop(text_lr, "trials-table", "data")] == ["fast", "slow", "<i>mid</i>"]
        csv_rows = requests.get(srv.base + "/download/trials.csv", params={"study": FS.TEXT_LR_STUDY}, timeout=60)
        assert csv_rows.status_code == 200 and "fast" in csv_rows.text
