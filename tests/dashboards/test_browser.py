"""The dashboard in a real headless Chromium, driven over the Chrome DevTools protocol.

Checks what only a browser shows: the index renders the studies, the study page draws its
Plotly figures, the CSV export works, a study named like a script tag stays text (no dialog),
and a live study's page updates in place when a trial finishes (no reload).
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import optuna
import pytest

from proxstudy.dashboards import app as A
from proxstudy.dashboards import data as D
from tests.support import study_fixtures as F

pytest.importorskip("websocket")
from tests.support.browser import CHROMIUM, Browser

XSS = "<script>alert(1)</script>"

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM} (run scripts/install_chromium.sh)"
)


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
    assert browser.eval("document.querySelectorAll('#trials-table td[data-dash-column=\"number\"]').length") == 25
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
    # The trial table: filter the method column, sort by lr (descending), scroll to the table.
    method_filter = "document.querySelector('#trials-table th.dash-filter[data-dash-column=\"method\"] input')"
    browser.wait_for(f"!!{method_filter}")
    browser.eval(method_filter + ".focus()")
    browser.call("Input.insertText", text=live.backprop)
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)
    rows = "[...document.querySelectorAll('#trials-table td[data-dash-column=\"method\"]')].map(td => td.textContent)"
    # BackProp: 2 finished trials and the running one.
    browser.wait_for(f"{rows}.length === 3 && {rows}.every(m => m === {json.dumps(live.backprop)})")
    sort = "document.querySelector('#trials-table th.dash-header[data-dash-column=\"lr\"] .column-header--sort')"
    browser.eval(sort + ".click()")
    browser.eval(sort + ".click()")
    lrs = "[...document.querySelectorAll('#trials-table td[data-dash-column=\"lr\"]')].map(td => td.textContent)"
    browser.wait_for(f"JSON.stringify({lrs}) === JSON.stringify(['0.1000', '0.01000', '0.01000'])")
    browser.eval("window.scrollTo(0, document.querySelector('#trials-table').getBoundingClientRect().top"
                 " + window.scrollY - 40)")
    scrolled = browser.eval("window.scrollY")
    assert scrolled > 100
    # Live: finish one more trial in the storage; the counts update in place (no page reload),
    # and the table shows the new trial under the same filter and order, at the same scroll.
    browser.eval("window.__not_reloaded = true")
    before = browser.eval("document.querySelector('#study-counts').textContent")
    assert "1 running" in before
    study = optuna.load_study(study_name=XSS, storage=url)
    F.add_trial(study, live, live.backprop, {"lr": 0.01}, 7, status="completed")
    browser.wait_for("document.querySelector('#study-counts').textContent.includes('5 completed')", timeout=25)
    browser.wait_for(f"{rows}.length === 4", timeout=15)
    assert browser.eval(lrs) == ["0.1000", "0.01000", "0.01000", "0.01000"]
    assert browser.eval(method_filter + ".value") == live.backprop
    assert browser.eval("window.__not_reloaded === true")
    assert abs(browser.eval("window.scrollY") - scrolled) < 5


def test_large_study_page_shows_computing_then_fills_in_place(site, tmp_path):
    """A study too large to read and draw within the request (``sync_trials=0`` makes this one
    such a study): the page shows its counts, a "computing" state and the first trials at once,
    then the verdict and figures arrive in place; when a trial finishes, an "updating" note
    stands above the previous analysis until the new one replaces it (no reload)."""
    _, browser, _, _ = site
    url, name = f"sqlite:///{tmp_path / 'large.db'}", "large"
    space = F.build_study(url, name, n_running=1)
    counts = D.list_studies(url)[0].counts
    gate = threading.Event()

    def held(data: D.StudyData) -> list:  # a study-page section: the build waits here
        assert gate.wait(timeout=60)
        return []

    snapshots = A.Snapshots(url, (held,), sync_trials=0)
    trial_rows = "document.querySelectorAll('#trials-table td[data-dash-column=\"number\"]').length"
    with F.RunningServer(A.create_app(url, sections=(held,), snapshots=snapshots)) as server:
        browser.navigate(server.base + "/study/" + name)
        browser.wait_for("!!document.querySelector('#computing')", timeout=30)
        assert f"Computing the robustness analysis of {sum(counts.values())} trials" in browser.eval(
            "document.querySelector('#computing').innerText")
        browser.wait_for(f"{trial_rows} === 25")
        assert browser.eval("document.querySelector('#verdict')") is None
        browser.eval("window.__not_reloaded = true")
        gate.set()
        browser.wait_for("!!document.querySelector('#verdict')", timeout=30)
        browser.wait_for("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 16", timeout=45)
        assert browser.eval("document.querySelector('#computing')") is None
        assert "proxprop-cg: lr sensitivity " in browser.eval("document.querySelector('#verdict').innerText")
        assert browser.eval(trial_rows) == 25
        # A trial finishes while the rebuild is held: "updating" above the previous analysis.
        gate.clear()
        study = optuna.load_study(study_name=name, storage=url)
        F.add_trial(study, space, space.backprop, {"lr": 0.05}, 9, status="completed")
        browser.wait_for("!!document.querySelector('#updating')", timeout=25)
        before, after = f"{counts['completed']} completed", f"{counts['completed'] + 1} completed"
        assert after in browser.eval("document.querySelector('#updating').innerText")
        assert before in browser.eval("document.querySelector('#study-counts').innerText")
        assert browser.eval("!!document.querySelector('#verdict')")
        gate.set()
        browser.wait_for(f"document.querySelector('#study-counts').innerText.includes('{after}')", timeout=25)
        assert browser.eval("document.querySelector('#updating')") is None
        assert browser.eval("window.__not_reloaded === true")
        assert browser.dialogs() == []
    gate.set()


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
        assert "'train_loss' is" in notes and "str, not a list of numbers" in notes
        texts = browser.eval(svg_texts)
        assert any(literal in t for t in texts)  # legend entries and the bar chart's tick label
        assert any(t.startswith(literal + ":") for t in texts)  # the heatmap's title
        assert browser.eval(bold) == 0
        assert browser.dialogs() == []
    out = tmp_path / "report.html"
    write_report(url, FS.STUDY, str(out))
    browser.navigate(out.as_uri())
    browser.wait_for("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 16", timeout=45)
    assert "str, not a list of numbers" in browser.eval("document.querySelector('#study-notes').innerText")
    assert any(literal in t for t in browser.eval(svg_texts)) and browser.eval(bold) == 0
    cells = browser.eval("[...document.querySelectorAll('#metrics td')].map(td => td.textContent)")
    assert any(literal in c for c in cells)
