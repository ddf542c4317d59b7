"""One live driver per study, enforced by the database (issue 13, item 1).

Two drivers started together race for the lease many times, on SQLite (a fresh file each
round, so the first-time creation of Optuna's tables races too) and on PostgreSQL: every round
exactly one wins and the other is told which driver holds the study. The outcome does not
depend on timing, only who wins does.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import time
import uuid

import pytest
import sqlalchemy as sa

from proxstudy.errors import SweepError
from proxstudy.study import reader
from proxstudy.study.lease import LEASE_TABLE, acquire_lease, lease_holder
from proxstudy.study.storage import open_storage, storage_engine
from tests.support.cli import PROXSTUDY, cli_env, synthetic_space, write_space
from tests.support.postgres import PG_URL, needs_pg

ROUNDS = 15


def _racer(urls, names, barrier, results) -> None:
    for url, name in zip(urls, names, strict=True):
        barrier.wait()
        try:
            open_storage(url)  # a fresh database: both create Optuna's tables at once
            lease = acquire_lease(storage_engine(url), name, heartbeat=False)
            results.put(("won", os.getpid(), ""))
        except SweepError as exc:
            lease = None
            results.put(("lost", os.getpid(), str(exc)))
        barrier.wait()  # both have decided before the winner lets go
        if lease is not None:
            lease.release()


def _race(urls: list[str], names: list[str]) -> list[list[tuple]]:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    racers = [context.Process(target=_racer, args=(urls, names, barrier, results)) for _ in range(2)]
    for racer in racers:
        racer.start()
    rounds = [sorted([results.get(timeout=120), results.get(timeout=120)]) for _ in urls]
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    return rounds


def _check_rounds(rounds: list[list[tuple]]) -> None:
    host = socket.gethostname()
    for (first, second) in rounds:
        assert (first[0], second[0]) == ("lost", "won"), (first, second)
        assert f"is being run by driver {host}:{second[1]}" in first[2]
        assert "\n" not in first[2]


def test_two_drivers_on_a_fresh_sqlite_file_one_wins_every_round(tmp_path):
    urls = [f"sqlite:///{tmp_path / f'race-{i}.db'}" for i in range(ROUNDS)]
    _check_rounds(_race(urls, ["study"] * ROUNDS))


@needs_pg
def test_two_drivers_on_postgresql_one_wins_every_round():
    names = [f"race-{uuid.uuid4().hex[:8]}" for _ in range(ROUNDS)]
    _check_rounds(_race([PG_URL] * ROUNDS, names))


def _insert(url: str, name: str, driver: str, expires_in: float) -> None:
    acquire_lease(storage_engine(url), "bootstrap-table", heartbeat=False).release()
    engine = storage_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {LEASE_TABLE} (study_name, driver, token, expires_at) "
                             "VALUES (:n, :d, 'old', :e)"), {"n": name, "d": driver, "e": time.time() + expires_in})
    engine.dispose()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid  # reaped: no process has it (until the system reuses it)


def test_a_dead_local_drivers_lease_is_taken_over_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    _insert(url, "s", f"{socket.gethostname()}:{_dead_pid()}", expires_in=3600)
    lease = acquire_lease(storage_engine(url), "s", heartbeat=False)
    assert lease.took_over is not None and lease.took_over.endswith(tuple("0123456789"))
    assert lease_holder(lease.engine, "s")[0] == lease.driver
    lease.release()


def test_another_hosts_lease_is_refused_until_it_expires(tmp_path):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    _insert(url, "live", "elsewhere.example:4242", expires_in=3600)
    with pytest.raises(SweepError, match=r"being run by driver elsewhere\.example:4242 \(host:pid\)"):
        acquire_lease(storage_engine(url), "live", heartbeat=False)
    _insert(url, "stale", "elsewhere.example:4243", expires_in=-1)
    lease = acquire_lease(storage_engine(url), "stale", heartbeat=False)
    assert lease.took_over == "elsewhere.example:4243"
    lease.release()


def test_heartbeat_renews_and_notices_a_takeover(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    lease = acquire_lease(storage_engine(url), "s", ttl_s=30, heartbeat=False)
    engine = storage_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {LEASE_TABLE} SET expires_at = 0"))
    assert lease.renew() and lease_holder(engine, "s")[1] > time.time() + 20
    successor_engine = storage_engine(url)
    with engine.begin() as conn:  # the lease expired and a successor took it
        conn.execute(sa.text(f"UPDATE {LEASE_TABLE} SET token = 'theirs'"))
    assert not lease.renew() and lease.lost
    lease.release()  # deletes nothing: the row is the successor's
    assert lease_holder(successor_engine, "s") is not None
    engine.dispose()
    successor_engine.dispose()


def _two_runs_together(tmp_path, url: str, study: str) -> None:
    space = write_space(tmp_path / "s.yaml", synthetic_space(study, seeds=(0,)))
    command = [PROXSTUDY, "run", str(space), "--storage", url, "--no-progress", "--max-concurrent", "2"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=cli_env(), cwd=tmp_path) for _ in range(2)]
    outcomes = sorted((run.wait(timeout=300), run.communicate()[1]) for run in runs)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "is being run by driver" in outcomes[1][1] and len(outcomes[1][1].strip().splitlines()) == 1
    reader.clear_cache()
    records = reader.load_records(url, study)
    assert len(records) == 7  # 3 + 2 x 2 grid points, one seed: every point once
    assert len({r.point_key for r in records}) == 7
    engine = storage_engine(url)
    assert lease_holder(engine, study) is None  # the winner gave the lease back
    engine.dispose()


def test_two_proxstudy_runs_started_together_record_every_point_once(tmp_path):
    _two_runs_together(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", "together")


@needs_pg
def test_two_proxstudy_runs_on_postgresql_record_every_point_once(tmp_path):
    _two_runs_together(tmp_path, PG_URL, f"together-{uuid.uuid4().hex[:8]}")


def test_the_heartbeat_thread_renews_the_lease_until_released(tmp_path):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    lease = acquire_lease(storage_engine(url), "s", ttl_s=0.3)  # beats every 0.1 s
    first = lease_holder(lease.engine, "s")[1]
    deadline = time.monotonic() + 60
    while lease_holder(lease.engine, "s")[1] == first:  # waits for a renewal, however slow
        assert time.monotonic() < deadline, "the heartbeat never renewed the lease"
        time.sleep(0.05)
    assert not lease.lost
    observer = storage_engine(url)
    lease.release()
    assert lease_holder(observer, "s") is None
    observer.dispose()


def test_status_names_the_driver_that_holds_the_study(tmp_path):
    from proxstudy.study.status import format_status, study_status
    from tests.support.study_fixtures import SyntheticSpace, build_study

    url = f"sqlite:///{tmp_path / 's.db'}"
    build_study(url, "s", SyntheticSpace(lrs=(0.05,), seeds=(0,)), n_trials=2)
    reader.clear_cache()
    assert study_status(url, "s").driver is None  # no lease table yet: nothing created by reading
    assert not sa.inspect(sa.create_engine(url)).has_table(LEASE_TABLE)
    lease = acquire_lease(storage_engine(url), "s", heartbeat=False)
    first_line = format_status(study_status(url, "s")).splitlines()[0]
    assert first_line == f"study s (minimize, being run by driver {lease.driver})"
    lease.release()
    assert study_status(url, "s").driver is None
