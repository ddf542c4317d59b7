"""The dashboard in a real headless Chromium, driven over the Chrome DevTools protocol.

Checks what only a browser shows: the index renders the studies, the study page draws its
Plotly figures, the CSV export works, a study named like a script tag stays text (no dialog),
and a live study's page updates in place when a trial finishes (no reload).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import requests

from proxstudy.dashboards import app as A
from proxstudy.dashboards import data as D
from tests.support import study_fixtures as F

websocket = pytest.importorskip("websocket")
XSS = "<script>alert(1)</script>"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM} (run scripts/install_chromium.sh)"
)


class Browser:
    """A headless Chromium with one page, over CDP (Runtime.evaluate, Page.navigate)."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "--remote-allow-origins=*", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not start")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)
            if message.get("method") == "Page.javascriptDialogOpening":  # never leave it blocking
                self._id += 1
                self.ws.send(json.dumps({"id": self._id, "method": "Page.handleJavaScriptDialog",
                                         "params": {"accept": True}}))

    def eval(self, expression: str, await_promise: bool = False):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            time.sleep(0.2)

    def dialogs(self) -> list[dict]:
        return [e for e in self.events if e.get("method") == "Page.javascriptDialogOpening"]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'studies.db'}"
    F.build_study(url, "digits", n_failed=1)  # trial 0 failed; its error text holds <b> tags
    live = F.SyntheticSpace(lrs=(0.01, 0.1), taus=(1.0,), cgs=(3,), seeds=(0,))
    F.build_study(url, XSS, live, n_running=1)
    D.clear_cache()
    server = F.RunningServer(A.create_app(url))
    browser = Browser()
    try:
        yield server, browser, url, live
    finally:
        browser.close()
        server.stop()


def test_index_lists_the_studies(site):
    server, browser, _, _ = site
    browser.navigate(server.base + "/")
    browser.wait_for("document.querySelectorAll('#study-index a.study-link').length === 2")
    names = browser.eval("[...document.querySelectorAll('#study-index a.study-link')].map(a => a.textContent)")
    assert sorted(names) == sorted(["digits", XSS])


def test_study_page_renders_figures_and_csv_export(site):
    server, browser, _, _ = site
    browser.navigate(server.base + "/study/digits")
    # 8 graphs: sensitivity, lr curves, divergence, 2 heatmaps (one per method), 2 training
    # curves, tunability.
    browser.wait_for("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 16", timeout=45)
    assert browser.eval("document.querySelectorAll('.js-plotly-plot').length") == 8
    # The verdict is the first section: one sentence per method with its interval, the pair.
    verdict = browser.eval("document.querySelector('#verdict').innerText")
    assert "backprop: lr sensitivity " in verdict and "proxprop-cg: lr sensitivity " in verdict
    assert "less lr-sensitive than" in verdict and "bootstrap resamples of the seeds" in verdict
    assert browser.eval("document.querySelector('#verdict').compareDocumentPosition("
                        "document.querySelector('.js-plotly-plot')) === Node.DOCUMENT_POSITION_FOLLOWING")
    _check_new_figures(browser)
    heatmaps = browser.eval("[0, 1].map(i => document.querySelectorAll('#fig-heatmap-' + i + ' .hm').length)")
    assert heatmaps[0] == 1 and heatmaps[1] == 2  # BackProp: one facet; ProxProp: cg1 and cg3
    # Diverged cells are marked with x markers in the heatmaps.
    assert browser.eval("document.querySelectorAll('#fig-heatmap-0 .scatterlayer .point').length") >= 1
    assert browser.eval("!!document.querySelector('#trials-table button.export')")
    # Error messages are shown as text: the literal tags, no <b> element.
    assert browser.eval("[...document.querySelectorAll('#trials-table td')]"
                        ".some(td => td.textContent.includes('<b>synthetic</b>'))")
    assert browser.eval("document.querySelectorAll('#trials-table td b').length") == 0
    csv_text = browser.eval("fetch(document.querySelector('#download-csv').href).then(r => r.text())",
                            await_promise=True)
    assert len(csv_text.strip().splitlines()) == 1 + 50


def _check_new_figures(browser) -> None:
    """What the robustness views draw: error bars on the sensitivity bars, a log y axis of the lr
    curves, heatmap colour bars labelled in real units, tunability on log axes."""
    assert browser.eval("document.querySelectorAll('#fig-sensitivity .bars .point').length") == 2
    assert browser.eval("document.querySelectorAll('#fig-sensitivity .errorbar').length") == 2
    assert browser.eval("document.querySelector('#fig-robustness .js-plotly-plot')._fullLayout.yaxis.type") == "log"
    assert browser.eval("document.querySelectorAll('#fig-robustness .scatterlayer .trace').length") >= 6
    ticks = browser.eval(
        "[...document.querySelectorAll('#fig-heatmap-1 .colorbar .cbaxis text')].map(t => t.textContent)")
    assert "2.000" in ticks and "0.100" in ticks  # log10 values, labelled in the loss's own units
    assert browser.eval("document.querySelector('#fig-tunability .js-plotly-plot')._fullLayout.xaxis.type") == "log"


def test_script_named_study_stays_text_and_page_updates_live(site):
    server, browser, url, live = site
    browser.navigate(server.base + "/")
    browser.wait_for("document.querySelectorAll('#study-index a.study-link').length === 2")
    browser.eval("[...document.querySelectorAll('a.study-link')].find(a => a.textContent.includes('script')).click()")
    title = browser.wait_for(
        "document.querySelector('#study-title') && document.querySelector('#study-title').textContent")
    assert title == XSS
    time.sleep(0.5)
    assert browser.dialogs() == []
    assert not browser.eval("[...document.scripts].some(s => s.textContent.includes('alert(1)'))")
    # Live: finish one more trial in the storage; the counts update in place (no page reload).
    browser.eval("window.__not_reloaded = true")
    before = browser.eval("document.querySelector('#study-counts').textContent")
    assert "1 running" in before
    study = optuna.load_study(study_name=XSS, storage=url)
    F.add_trial(study, live, live.backprop, {"lr": 0.01}, 7, status="completed")
    browser.wait_for("document.querySelector('#study-counts').textContent.includes('5 completed')", timeout=25)
    assert browser.eval("window.__not_reloaded === true")


def test_static_report_renders_every_figure_offline(site, tmp_path):
    from proxstudy.dashboards.report import write_report

    _, browser, url, _ = site
    out = tmp_path / "report.html"
    write_report(url, "digits", str(out))
    browser.events.clear()
    browser.navigate(out.as_uri())  # a file: URL, no server and no network: plotly.js is inline
    # the study page's 8 figures and the parameter importance
    browser.wait_for("document.querySelectorAll('.js-plotly-plot').length === 9", timeout=45)
    assert browser.eval("document.querySelectorAll('.plotly-graph-div').length") == 9
    assert browser.eval("document.querySelectorAll('#importance .bars .point').length") >= 4
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    assert errors == []
    verdict = browser.eval("document.querySelector('#verdict').innerText")
    assert verdict.startswith("Verdict") and "backprop: lr sensitivity " in verdict and "P = " in verdict
    assert browser.eval("document.querySelectorAll('#verdict li').length") == 3  # 2 methods + 1 pair
    # The sensitivity bars (with their error bars) render in the offline file too.
    assert browser.eval("document.querySelectorAll('.errorbar').length") >= 2


def test_study_written_by_another_tool_shows_notes_and_markup_names_literally(site, tmp_path):
    """Issue 13, items 10 and 11: a study written straight through Optuna (damaged attributes,
    a method named ``<b>X</b><br>``) renders with its notes, and Plotly shows the name as text
    in legends, tick labels and titles (no bold, no line break), on the page and in the report."""
    from proxstudy.dashboards.report import write_report
    from tests.support import foreign_study as FS

    _, browser, _, _ = site
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    FS.build_foreign_study(url)
    D.clear_cache()
    literal = FS.MARKUP_METHOD
    svg_texts = ("[...document.querySelectorAll('.js-plotly-plot svg text')].map(t => t.textContent)")
    bold = ("[...document.querySelectorAll('.js-plotly-plot svg tspan')]"
            ".filter(t => (t.getAttribute('style') || '').includes('bold')).length")
    with F.RunningServer(A.create_app(url)) as server:
        browser.navigate(server.base + "/study/" + FS.STUDY)
        browser.wait_for("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 16", timeout=45)
        notes = browser.eval("document.querySelector('#study-notes').innerText")
        assert "'train_loss' is a str, not a list of numbers" in notes
        texts = browser.eval(svg_texts)
        assert any(literal in t for t in texts)  # legend entries and the bar chart's tick label
        assert any(t.startswith(literal + ":") for t in texts)  # the heatmap's title
        assert browser.eval(bold) == 0
        assert browser.dialogs() == []
    out = tmp_path / "report.html"
    write_report(url, FS.STUDY, str(out))
    browser.navigate(out.as_uri())
    browser.wait_for("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 16", timeout=45)
    assert "'train_loss' is a str" in browser.eval("document.querySelector('#study-notes').innerText")
    assert any(literal in t for t in browser.eval(svg_texts)) and browser.eval(bold) == 0
    cells = browser.eval("[...document.querySelectorAll('#metrics td')].map(td => td.textContent)")
    assert any(literal in c for c in cells)
