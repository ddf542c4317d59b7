"""Snapshots of large studies: what the page shows before and while they are built, and that a
snapshot built from the incremental read equals a full rebuild (real Optuna storages: SQLite
and, where reachable, PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid

import optuna
import plotly
import pytest
import requests
from optuna.trial import TrialState

from proxstudy.dashboards import app as A
from proxstudy.dashboards import data as D
from proxstudy.dashboards.metrics import summary_document
from proxstudy.dashboards.tables import trial_rows
from proxstudy.study import reader
from proxstudy.study import records as R
from tests.support import study_fixtures as F
from tests.support.postgres import PG_URL, needs_pg

SPACE = F.SyntheticSpace(lrs=(0.005, 0.05, 0.5, 5.0), taus=(0.05, 1.0), cgs=(1, 3), seeds=(0, 1, 2))


def _study(url: str, name: str) -> optuna.Study:
    F.build_study(url, name, SPACE, n_running=2)
    return optuna.load_study(study_name=name, storage=url)


def _json(value) -> str:
    return json.dumps(value, cls=plotly.utils.PlotlyJSONEncoder, sort_keys=True)


def _full_rebuild(url: str, name: str, sections) -> tuple[D.StudyData, list, list]:
    """The reference: every trial read afresh through a new Optuna storage object (no cache of
    this process involved), aggregated and drawn from scratch."""
    records = reader.load_records(url, name, fast=False)
    settings = reader.study_settings(optuna.storages.get_storage(url), name)
    data = D.build_study_data(name, records, None, settings.space_document, settings.direction,
                              notes=R.study_notes(records))
    return data, A.study_body(url, data, sections), trial_rows(records)[1]


def _assert_equal_to_full_rebuild(snapshots: A.Snapshots, url: str, name: str) -> None:
    snapshot = snapshots.get(name)
    data, body, rows = _full_rebuild(url, name, snapshots.sections)
    assert snapshot.data.records == data.records
    assert snapshot.data.points == data.points
    assert snapshot.data.counts == data.counts
    assert snapshot.data.notes == data.notes
    summary = summary_document(snapshot.data.metrics, name, snapshot.data.objective)
    assert _json(summary) == _json(summary_document(data.metrics, name, data.objective))
    assert _json(snapshot.body) == _json(body)  # every figure, table and sentence of the page
    assert snapshot.trials.rows == rows


def _finish(study: optuna.Study, number: int, status: str, value: float | None) -> None:
    """What the runner does when a running trial ends: its status attribute, then its state."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, R.ATTR_STATUS, status)
    if status == R.STATUS_DIVERGED:
        storage.set_trial_user_attr(trial._trial_id, R.ATTR_DIVERGED_EPOCH, 1)
    storage.set_trial_state_values(trial._trial_id, R.STATE_FOR_STATUS[status],
                                   None if value is None else [value])


def _check_incremental(url: str, name: str) -> None:
    study = _study(url, name)
    running = [t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    assert len(running) == 2
    snapshots = A.Snapshots(url, A.STUDY_SECTIONS)
    _assert_equal_to_full_rebuild(snapshots, url, name)
    # New trials: one completed, one diverged, one failed (each a new point or a new seed).
    F.add_trial(study, SPACE, SPACE.backprop, {"lr": 0.05}, 7, status=R.STATUS_COMPLETED)
    F.add_trial(study, SPACE, SPACE.proxprop, {"lr": 5.0, "tau_prox": 1.0, "cg_iterations": 3}, 7,
                status=R.STATUS_DIVERGED)
    F.add_trial(study, SPACE, SPACE.proxprop, {"lr": 0.5, "tau_prox": 1.0, "cg_iterations": 3}, 8,
                status=R.STATUS_FAILED)
    _assert_equal_to_full_rebuild(snapshots, url, name)
    # The running trials end: one completes with a value better than any, one diverges.
    _finish(study, running[0], R.STATUS_COMPLETED, 1e-4)
    _assert_equal_to_full_rebuild(snapshots, url, name)
    _finish(study, running[1], R.STATUS_DIVERGED, None)
    _assert_equal_to_full_rebuild(snapshots, url, name)
    assert snapshots.get(name).data.counts[R.STATUS_RUNNING] == 0


@pytest.fixture
def clean():
    D.clear_cache()
    yield
    D.clear_cache()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_pg)])
def place(request, tmp_path):
    """(storage URL, study name) on SQLite or the shared PostgreSQL (the study deleted after)."""
    name = f"dash-{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}", name
        return
    try:
        yield PG_URL, name
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG_URL)


def test_incremental_snapshot_equals_full_rebuild(place, clean):
    _check_incremental(*place)


def _check_trials_page(url: str, name: str) -> None:
    _study(url, name)
    every = reader.load_records(url, name, fast=False)
    names = sorted({k for r in every for k in r.params})
    assert names == [R.PARAM_CG, R.PARAM_LR, R.PARAM_TAU]
    for offset, limit in ((0, 25), (25, 25), (len(every) - 3, 25), (len(every) + 5, 25), (3, 0)):
        for storage in (url, optuna.storages.get_storage(url)):  # SQL path, and the Optuna API path
            page = reader.load_trials_page(storage, name, offset, limit)
            assert page.records == every[offset:offset + limit]
            assert page.param_names == names and page.total == len(every)
    with pytest.raises(D.StudyNotFound):
        reader.load_trials_page(url, "nope", 0, 25)


def test_a_page_of_trials_equals_the_slice_of_all_records(place, clean):
    _check_trials_page(*place)


# -- over HTTP: a study too large to be drawn in the request (sync_trials=0 makes every study one)


class Gate:
    """A study-page section that waits until the test opens it: the snapshot's build is held
    at a known point, so the page's "computing" and "updating" states are seen for certain."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()

    def __call__(self, data: D.StudyData) -> list:
        assert self.open.wait(timeout=60)
        return []


def _post(base: str, payload: dict) -> dict:
    r = requests.post(base + "/_dash-update-component", json=payload, timeout=60)
    if r.status_code == 204:  # every output "no update"
        return {}
    r.raise_for_status()
    return r.json()["response"]


def _find(node, component_id):
    if isinstance(node, list):
        for n in node:
            yield from _find(n, component_id)
    elif isinstance(node, dict):
        if node.get("props", {}).get("id") == component_id:
            yield node
        yield from _find(node.get("props", {}).get("children"), component_id)


def _prop(page, component_id, prop):
    (node,) = _find(page, component_id)
    return node["props"].get(prop)


def _wait_for_version(base: str, name: str, version) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = _post(base, F.refresh_callback_payload(name, version))
        if "version" in out:
            return out
        time.sleep(0.05)
    raise AssertionError("the page never got its analysis")


def test_large_study_page_shows_at_once_and_fills_in(tmp_path, clean):
    url, name = f"sqlite:///{tmp_path / 'big.db'}", "big"
    study = _study(url, name)
    gate = Gate()
    snapshots = A.Snapshots(url, (gate,), sync_trials=0)
    every = reader.load_records(url, name)
    gate.open.clear()
    with F.RunningServer(A.create_app(url, sections=(gate,), snapshots=snapshots)) as server:
        # Cold: the page answers while the analysis is held; counts, a computing state and the
        # first page of trials read from SQL, polling every PENDING_MS.
        page = _post(server.base, F.page_callback_payload(f"/study/{name}"))["page"]["children"]
        assert list(_find(page, "computing")) and not list(_find(page, "verdict"))
        assert f"{len(every)} trials" in json.dumps(page) and "running" in _prop(page, "study-counts", "children")
        assert _prop(page, "tick", "disabled") is False and _prop(page, "tick", "interval") == A.PENDING_MS
        assert _prop(page, "version", "data") is None
        first = _prop(page, "trials-table", "data")
        columns, rows = trial_rows(every)
        assert first == rows[:25]
        assert [c["id"] for c in _prop(page, "trials-table", "columns")] == columns
        # While computing: the refresh leaves the body; the table pages from SQL in trial order.
        assert "study-body" not in _post(server.base, F.refresh_callback_payload(name, None))
        second = _post(server.base, F.trials_callback_payload(name, None, page_current=1,
                                                              filter_query="{method} contains backprop"))
        assert second["trials-table"]["data"] == rows[25:50]
        assert "filter and sort apply as soon as every trial is read" in second["trials-note"]["children"]
        # The analysis is ready: the next refresh brings the verdict, the figures and the version.
        gate.open.set()
        ready = _wait_for_version(server.base, name, None)
        body = ready["study-body"]["children"]
        assert list(_find(body, "verdict")) and list(_find(body, "fig-sensitivity"))
        assert not list(_find(body, "computing"))
        version = ready["version"]["data"]
        assert version == snapshots.get(name).data.version
        assert ready["tick"]["interval"] == A.REFRESH_MS and ready["tick"]["disabled"] is False  # still live
        filtered = _post(server.base, F.trials_callback_payload(name, version,
                                                                filter_query="{method} contains backprop"))
        assert {r["method"] for r in filtered["trials-table"]["data"]} == {SPACE.backprop}

        # A trial finishes: the next request is answered from the previous snapshot, marked as
        # updating with the new counts, while the new one is built; then it replaces it.
        gate.open.clear()
        F.add_trial(study, SPACE, SPACE.backprop, {"lr": 0.05}, 9, status=R.STATUS_COMPLETED)
        page = _post(server.base, F.page_callback_payload(f"/study/{name}"))["page"]["children"]
        assert _prop(page, "version", "data") == version
        updating = _prop(page, "updating", "children")
        assert updating.startswith("Updating: the study now has ") and list(_find(page, "verdict"))
        assert _prop(page, "tick", "disabled") is False
        # A page already open learns it from its refresh: the note, and the body left as it is.
        tick = _post(server.base, F.refresh_callback_payload(name, version))
        assert "study-body" not in tick and tick["study-status"]["children"]["props"]["id"] == "updating"
        assert tick["tick"]["interval"] == A.PENDING_MS and _prop(page, "tick", "interval") == A.PENDING_MS
        gate.open.set()
        newer = _wait_for_version(server.base, name, version)
        assert newer["version"]["data"] > version
        assert newer["study-status"]["children"] == "" and not list(_find(newer["study-body"]["children"], "updating"))
        assert newer["study-body"]["children"][0]["props"]["children"].count(
            f"{snapshots.get(name).data.counts[R.STATUS_COMPLETED]} completed") == 1


def test_background_build_error_is_shown_not_lost(tmp_path, clean):
    url, name = f"sqlite:///{tmp_path / 'broken.db'}", "broken"
    _study(url, name)

    def broken(data: D.StudyData) -> list:
        raise RuntimeError("this view cannot be drawn")

    snapshots = A.Snapshots(url, (broken,), sync_trials=0)
    with F.RunningServer(A.create_app(url, sections=(broken,), snapshots=snapshots)) as server:
        deadline = time.monotonic() + 60
        while True:
            page = _post(server.base, F.page_callback_payload(f"/study/{name}"))["page"]["children"]
            if not list(_find(page, "computing")) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "RuntimeError: this view cannot be drawn" in json.dumps(page)
