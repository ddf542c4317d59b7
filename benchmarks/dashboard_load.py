"""How fast the dashboard serves a large study: first load, cached load and the HTTP callback.

    .venv/bin/python benchmarks/dashboard_load.py [--trials 5000] [--epochs 20] [--db PATH]

Fills a SQLite Optuna storage with ``--trials`` synthetic trials (records with ``--epochs``
epochs, written through Optuna exactly as the runner writes them; tests/dashboard_fixtures.py).
Writing 5,000 trials through Optuna's ORM takes minutes, so the file is kept (default in the
temp directory) and reused by later runs when it already holds the study.

Then it times, in one process:
  (0) baseline, the Optuna API path (how the dashboard read a study before ``study.records_sql``):
      a fresh Optuna storage object -> load_records(storage, fast=False) -> metrics -> figures
      -> page;
  (a) first load (cold): no cache, no engine -> counts -> records (SQL read path) -> points/
      metrics -> every figure -> page;
  (b) reload after a change: the fingerprint changed; finished trials are reused, the rest re-read;
  (c) cached load: nothing changed (fingerprint check) + figure and page building;
  (d) HTTP, a server as `proxstudy dashboard` starts it, before its preload has read anything:
      the Dash callback that serves the study page, POSTed to 127.0.0.1: the cold first load
      (answered at once with the counts, the first page of trials read from SQL and a
      "computing" state) and the time until the page's polling gets the analysis; a warm
      reload (median of 5); the index page; the trial table's server-side page (filter + sort
      over every trial, median of 5); then a trial finishes (one is written through Optuna and
      removed again at the end): the first request after it (answered from the previous
      snapshot, marked "updating") and the time until the updated analysis is served;
  (e) as `proxstudy dashboard` serves: the start-up preload (read and draw every study, in
      the background), then the first load of the study page and a warm reload over HTTP;
and prints each with its ratio to (0), the baseline measured in the same run (``--no-baseline``
skips (0), which takes minutes at 50,000 trials; ratios are then not printed).

Large cases: above 5,000 trials the study is written through Optuna for 3 seeds of the grid
and grown to ``--trials`` by copying those rows with shifted seeds (``replicate_seeds``), e.g.

    .venv/bin/python benchmarks/dashboard_load.py --trials 50000 --no-baseline

Goals at 50,000 trials (issue 12): first load of the study page < 2 s, warm reload < 0.3 s,
first request after a trial finishes < 2 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.support: the benchmark builds its study like the tests do

import optuna  # noqa: E402
import requests  # noqa: E402

from proxstudy.dashboards import app as A  # noqa: E402
from proxstudy.dashboards import data as D  # noqa: E402
from proxstudy.dashboards.figures import study_figures  # noqa: E402
from proxstudy.study import records as R  # noqa: E402
from proxstudy.study import records_sql  # noqa: E402
from proxstudy.study.reader import load_records  # noqa: E402
from tests.support import study_fixtures as F  # noqa: E402

STUDY = "dashboard-bench"


#: Above this many trials the study is written through Optuna up to BASE_SEEDS seeds only and
#: then grown by copying those trials' rows with shifted seeds (see :func:`replicate_seeds`).
DIRECT_LIMIT = 5000
BASE_SEEDS = 3


def replicate_seeds(path: Path, base: int, total: int, seeds_in_base: int) -> None:
    """Grow the (only) study in the SQLite file at ``path`` from its first ``base`` trials (whole
    seeds, trial_id = number + 1) to ``total`` trials: copy k holds the same rows with the seed
    raised by k * ``seeds_in_base``. Plain SQL, seconds instead of hours through Optuna's ORM;
    the copies are rows exactly as Optuna wrote the originals."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        for table in ("trial_params", "trial_values", "trial_user_attributes", "trial_intermediate_values",
                      "trial_system_attributes", "trial_heartbeats"):
            conn.execute(f"DELETE FROM {table} WHERE trial_id > ?", (base,))
        conn.execute("DELETE FROM trials WHERE trial_id > ?", (base,))
        copy = 1
        while copy * base < total:
            shift, n = copy * base, min(base, total - copy * base)
            conn.execute("INSERT INTO trials (trial_id, number, study_id, state, datetime_start, datetime_complete) "
                         "SELECT trial_id + ?, number + ?, study_id, state, datetime_start, datetime_complete "
                         "FROM trials WHERE trial_id <= ?", (shift, shift, n))
            conn.execute("INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                         "SELECT trial_id + ?, param_name, CASE WHEN param_name = ? THEN param_value + ? "
                         "ELSE param_value END, distribution_json FROM trial_params WHERE trial_id <= ?",
                         (shift, R.PARAM_SEED, copy * seeds_in_base, n))
            for table, columns in (("trial_values", "objective, value, value_type"),
                                   ("trial_user_attributes", "key, value_json"),
                                   ("trial_intermediate_values", "step, intermediate_value, intermediate_value_type")):
                conn.execute(f"INSERT INTO {table} (trial_id, {columns}) SELECT trial_id + ?, {columns} "
                             f"FROM {table} WHERE trial_id <= ?", (shift, n))
            copy += 1


def max_trial_id(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT MAX(trial_id) FROM trials").fetchone()[0])


def remove_trials_after(path: Path, last_trial_id: int) -> None:
    """Delete what the benchmark added (trials after ``last_trial_id``) so the file is reused."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        for table in ("trial_params", "trial_values", "trial_user_attributes", "trial_intermediate_values",
                      "trial_system_attributes", "trial_heartbeats", "trials"):
            conn.execute(f"DELETE FROM {table} WHERE trial_id > ?", (last_trial_id,))


def ensure_storage(path: Path, trials: int, epochs: int) -> str:
    url = f"sqlite:///{path}"
    if path.exists():
        try:
            storage = optuna.storages.get_storage(url)  # a separate object: (a) still starts cold
            n = storage.get_n_trials(storage.get_study_id_from_name(STUDY))
            if n == trials:
                print(f"reusing {path} ({n} trials)")
                return url
        except Exception:
            pass
        path.unlink()
    space = F.benchmark_space(trials, epochs)
    per_seed = len(space.points()) // len(space.seeds)
    direct = trials if trials <= DIRECT_LIMIT else per_seed * BASE_SEEDS
    print(f"writing {direct} trials of {epochs} epochs to {path} through Optuna (takes minutes) ...", flush=True)
    t0 = time.perf_counter()
    F.build_study(url, STUDY, space, n_trials=direct)
    if direct < trials:
        print(f"  copying them with shifted seeds up to {trials} trials ...", flush=True)
        replicate_seeds(path, direct, trials, BASE_SEEDS)
    print(f"  written in {time.perf_counter() - t0:.0f} s")
    return url


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): other jobs on a shared machine stretch the
    wall time, the CPU time says what the same work takes on an idle one."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def page_build(url: str) -> None:
    data = D.load_study_data(url, STUDY)
    study_figures(data)
    A.study_page(url, data)


def baseline_build(url: str) -> None:
    """The Optuna API path, cold, through the same aggregation, figures and page."""
    storage = optuna.storages.get_storage(url)
    study_id = storage.get_study_id_from_name(STUDY)
    records = load_records(storage, STUDY, fast=False)
    space = storage.get_study_user_attrs(study_id).get(R.STUDY_ATTR_SPACE)
    data = D.build_study_data(STUDY, records, space=space if isinstance(space, dict) else None)
    study_figures(data)
    A.study_page(url, data)


def cold() -> None:
    """Forget every cache of this process: dashboard data, engines, verified schemas."""
    D.clear_cache()
    records_sql._distribution.cache_clear()


def main() -> None:
    global STUDY
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--study", default=STUDY, help="study name in --db (default %(default)s)")
    parser.add_argument("--no-baseline", action="store_true", help="skip (0), the Optuna API path")
    args = parser.parse_args()
    STUDY = args.study
    db = args.db or Path(tempfile.gettempdir()) / f"proxstudy-dashboard-bench-{args.trials}x{args.epochs}.db"
    url = ensure_storage(db, args.trials, args.epochs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    cold()
    first = timed(page_build, url)
    data = D.load_study_data(url, STUDY)
    print(f"study: {len(data.records)} trials, {len(data.points)} parameter points, "
          f"{len(data.metrics.methods)} methods")
    baseline = None if args.no_baseline else timed(baseline_build, url)

    D._cache.clear()  # as if a trial had finished: new and unfinished trials are read again
    changed = timed(page_build, url)
    cached = sorted(timed(page_build, url) for _ in range(3))[1]

    # As `proxstudy dashboard` serves, before its start-up preload has read anything: a page
    # answered at once (counts, first trials from SQL, "computing"), the analysis polled for.
    cold()
    last_trial = max_trial_id(db)
    snapshots = A.Snapshots(url, A.STUDY_SECTIONS)
    server = F.RunningServer(A.create_app(url, snapshots=snapshots))
    try:
        session = requests.Session()
        endpoint = server.base + "/_dash-update-component"
        payload = F.page_callback_payload("/study/" + STUDY)

        def post(body: dict) -> dict:
            r = session.post(endpoint, json=body, timeout=120)
            r.raise_for_status()
            return {} if r.status_code == 204 else r.json()["response"]

        def poll_version(version) -> None:
            """What the page does: ask for the body every PENDING_MS until a snapshot newer than
            ``version`` comes (each ask counts the trials; asking back to back would slow the
            build it waits for); an open page asks as often while a change is being rebuilt."""
            while "version" not in post(F.refresh_callback_payload(STUDY, version)):
                time.sleep(A.PENDING_MS / 1000)

        t_cold = time.perf_counter()
        http_cold = timed(lambda: post(payload))
        analysis_cold = timed(lambda: poll_version(None))
        analysis_cold = (time.perf_counter() - t_cold, analysis_cold[1] + http_cold[1])
        sizes: list[int] = []
        times = [timed(lambda: sizes.append(len(session.post(endpoint, json=payload, timeout=120).content)))
                 for _ in range(5)]
        http = sorted(times)[2]
        size = sizes[-1]
        index = timed(lambda: post(F.page_callback_payload("/")))
        trials_payload = F.trials_callback_payload(
            STUDY, None, page_current=3, filter_query='{method} scontains "prox" && {lr} >= 0.01',
            sort_by=[{"column_id": "value", "direction": "desc"}])
        trial_sizes: list[int] = []
        trial_page = sorted(timed(lambda: trial_sizes.append(len(session.post(endpoint, json=trials_payload,
                                                                                timeout=120).content)))
                            for _ in range(5))[2]
        # A trial finishes (written through Optuna as the runner writes it; removed again below).
        version = snapshots.get(STUDY).data.version
        space = F.benchmark_space(args.trials, args.epochs)
        study = optuna.load_study(study_name=STUDY, storage=url)
        F.add_trial(study, space, space.backprop, {"lr": space.lrs[3]}, max(space.seeds) + 50,
                    status=R.STATUS_COMPLETED)
        t_finish = time.perf_counter()
        after_trial = timed(lambda: post(payload))
        updated = timed(lambda: poll_version(version))
        updated = (time.perf_counter() - t_finish, updated[1] + after_trial[1])
    finally:
        server.stop()
        remove_trials_after(db, last_trial)

    # What `proxstudy dashboard` does: read and draw every study in the background at start-up;
    # a user's first visit and every reload are then served from that snapshot.
    cold()
    snapshots = A.Snapshots(url)
    preload = timed(snapshots.warm)
    with F.RunningServer(A.create_app(url, snapshots=snapshots)) as started:
        endpoint = started.base + "/_dash-update-component"
        session = requests.Session()
        first_visit = timed(lambda: session.post(endpoint, json=payload, timeout=120).raise_for_status())
        reload = sorted(timed(lambda: session.post(endpoint, json=payload, timeout=120).raise_for_status())
                        for _ in range(5))[2]

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    rows = [
        ("(a) first load (cold): counts -> records -> metrics -> figures -> page", first),
        ("(b) reload after a change (finished trials reused, others re-read)", changed),
        ("(c) cached load + figures + page (median of 3)", cached),
        ("(d) HTTP study page, cold first load (server's first request; shows 'computing')", http_cold),
        ("(d)   ... until the analysis is shown (the page polls; cold read + draw)", analysis_cold),
        (f"(d) HTTP study page, warm reload (median of 5, {size / 1e6:.2f} MB JSON)", http),
        ("(d) HTTP index-page callback", index),
        (f"(d) HTTP trial-table page, filter + sort of all trials ({trial_sizes[-1] / 1e3:.0f} kB)", trial_page),
        ("(d) HTTP study page, first request after a trial finishes (shows 'updating')", after_trial),
        ("(d)   ... until the updated analysis is shown (background rebuild)", updated),
        ("(e) start-up preload in the background (read + draw every study)", preload),
        ("(e) first load of the study page after start-up (HTTP)", first_visit),
        ("(e) warm reload of the study page (HTTP, median of 5)", reload),
    ]
    if baseline is not None:
        rows.insert(0, ("(0) baseline, Optuna API path, cold: storage -> records -> ... -> page", baseline))
    print(f"{'':<84} {'wall':>8}   {'CPU':>7}" + ("   wall vs (0)" if baseline else ""))
    for label, (wall, cpu) in rows:
        ratio = f" {baseline[0] / wall:7.1f}x faster than (0)" if baseline else ""
        print(f"{label:<84} {wall:8.3f} s {cpu:7.3f} s{ratio}")


if __name__ == "__main__":
    main()
