"""How fast the dashboard serves a large study: first load, cached load and the HTTP callback.

    .venv/bin/python benchmarks/dashboard_load.py [--trials 5000] [--epochs 20] [--db PATH]

Fills a SQLite Optuna storage with ``--trials`` synthetic trials (records with ``--epochs``
epochs, written through Optuna exactly as the runner writes them; tests/dashboard_fixtures.py).
Writing 5,000 trials through Optuna's ORM takes minutes, so the file is kept (default in the
temp directory) and reused by later runs when it already holds the study.

Then it times, in one process:
  (a) first load: a cold storage object -> records -> points/metrics -> every figure -> page;
  (b) reload after a change: the study's fingerprint changed, Optuna's trial cache is warm;
  (c) cached load: nothing changed (fingerprint check) + figure and page building;
  (d) HTTP: the Dash callback that serves the study page, POSTed to a server on 127.0.0.1,
      after the cache is warm (median of 5) and the same callback on the index page.
and prints each with its ratio to (a), the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import optuna  # noqa: E402
import requests  # noqa: E402

import dashboard_fixtures as F  # noqa: E402
from dashboards import app as A  # noqa: E402
from dashboards import data as D  # noqa: E402
from dashboards.figures import study_figures  # noqa: E402

STUDY = "dashboard-bench"


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
    print(f"writing {trials} trials of {epochs} epochs to {path} through Optuna (takes minutes) ...", flush=True)
    t0 = time.perf_counter()
    F.build_study(url, STUDY, F.benchmark_space(trials, epochs), n_trials=trials)
    print(f"  written in {time.perf_counter() - t0:.0f} s")
    return url


def page_build(url: str) -> float:
    t0 = time.perf_counter()
    data = D.load_study_data(url, STUDY)
    study_figures(data)
    A.study_page(url, data)
    return time.perf_counter() - t0


def main() -> None:
    global STUDY
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--study", default=STUDY, help="study name in --db (default %(default)s)")
    args = parser.parse_args()
    STUDY = args.study
    db = args.db or Path(tempfile.gettempdir()) / f"proxstudy-dashboard-bench-{args.trials}x{args.epochs}.db"
    url = ensure_storage(db, args.trials, args.epochs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    D.clear_cache()
    first = page_build(url)
    data = D.load_study_data(url, STUDY)
    print(f"study: {len(data.records)} trials, {len(data.points)} parameter points, {len(data.metrics)} methods")

    D._cache.clear()  # as if a trial had finished: rebuild records from Optuna's warm trial cache
    changed = page_build(url)
    cached = statistics.median(page_build(url) for _ in range(3))

    server = F.RunningServer(A.create_app(url))
    try:
        session = requests.Session()
        endpoint = server.base + "/_dash-update-component"
        payload = F.page_callback_payload("/study/" + STUDY)
        times, size = [], 0
        for _ in range(5):
            t0 = time.perf_counter()
            r = session.post(endpoint, json=payload, timeout=120)
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
            size = len(r.content)
        http = statistics.median(times)
        t0 = time.perf_counter()
        session.post(endpoint, json=F.page_callback_payload("/"), timeout=120).raise_for_status()
        index = time.perf_counter() - t0
    finally:
        server.stop()

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    rows = [
        ("(a) first load: storage -> records -> metrics -> figures -> page", first),
        ("(b) reload after a change (Optuna trial cache warm)", changed),
        ("(c) cached load + figures + page (median of 3)", cached),
        (f"(d) HTTP study-page callback, warm (median of 5, {size / 1e6:.1f} MB JSON)", http),
        ("(d) HTTP index-page callback", index),
    ]
    for label, seconds in rows:
        print(f"{label:<78} {seconds:8.3f} s   {first / seconds:7.1f}x faster than (a)")


if __name__ == "__main__":
    main()
