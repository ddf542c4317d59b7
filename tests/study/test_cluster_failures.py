"""A sweep survives a lost Ray node and a PostgreSQL outage: real Ray, real PostgreSQL, the CLI.

What is real here: a Ray cluster on this machine (a head that runs no trial and one-CPU worker
nodes, each a `ray start --block` process in its own process group and temp dir, so one node can
be killed like a crashed machine without touching any other Ray on the host), `proxstudy run
--ray-address` as users run it, and the shared PostgreSQL server. The outage is a TCP proxy in
front of PostgreSQL that drops every connection and refuses new ones for a few seconds: the
shared server is never stopped.

Contract checked (DESIGN.md "The proxstudy command", docs/CLUSTER.md):
* node failure: the trials of the dead node are retried on the remaining node; at the end every
  point of the grid is recorded exactly once, finished, and no trial is left RUNNING;
* storage outage: the sweep either rides it out, or stops with a non-zero status and a clear
  message (no traceback); `proxstudy run` again then completes the study, every point recorded
  exactly once as finished.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.support import cli
from tests.support.cli import write_space
from tests.support.data_files import md5, serve, usps_arrays, usps_bytes
from tests.support.postgres import PG_URL, needs_pg
from tests.support.processes import free_port
from tests.support.ray_nodes import RayNode, ray_env, wait_for_nodes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

# PROXSTUDY_TEST_CLI: test another `proxstudy` executable than the one beside this Python.
PROXSTUDY = os.environ.get("PROXSTUDY_TEST_CLI", cli.PROXSTUDY)

# 3 seeds x 2 lr = 6 trials; on SYNTHETIC ~1-2 s each on one core: long enough to interrupt
# mid-sweep, short for CI.
SYNTHETIC = {"name": "synthetic", "n_train": 1024, "n_val": 128, "input_shape": [1, 8, 8], "num_classes": 3,
             "seed": 0}
SPACE = {
    "model": {"name": "mlp", "hidden": [64]},
    "sampler": {"name": "grid"},
    "objective": "train_loss",
    "methods": {"backprop": {"mode": "gradient", "lr": [0.01, 0.03], "optimizer": {"name": "sgd", "momentum": 0.9}}},
}

# Ray notices a dead node after period x threshold; the defaults make that ~15-30 s.
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head node on free ports that runs no trial (no CPUs, as in the compose deployment), so
    a test decides which node a trial runs on by which worker nodes it starts; torn down
    whatever happens."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    node = RayNode(
        ["--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false"],
        tmp_path_factory.mktemp("ray") / "head.log", ray_env(**FAST_NODE_DEATH),
    )
    try:
        wait_for_nodes(address, 1, [node])
        yield address
    finally:
        node.stop()


@pytest.fixture
def start_worker_node(ray_head, start_ray_node):
    """Starts a worker node of one CPU joining the head and waits until the cluster has
    `nodes` live nodes (the head included)."""

    def start(nodes: int) -> RayNode:
        node = start_ray_node(f"--address={ray_head}", "--num-cpus=1", "--num-gpus=0")
        wait_for_nodes(ray_head, nodes, [node])
        return node

    return start


# ------------------------------------------------------------------------------------------
# a PostgreSQL that can go away: a TCP proxy in front of the shared server


class PausableProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL; `outage()` drops every connection and refuses
    new ones (the port is closed) until `restore()`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._conns.difference_update((src, dst))

    def outage(self) -> None:
        if self._listener is not None:
            # shutdown() first: a bare close() leaves the socket listening while the accept
            # thread is blocked in it.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.outage()


@pytest.fixture
def pg_proxy():
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    proxy = PausableProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.close()


# ------------------------------------------------------------------------------------------
# the study


@pytest.fixture
def study_name():
    """A unique study name; the study is deleted from the shared database afterwards."""
    name = f"cluster-failure-{uuid.uuid4().hex[:10]}"
    yield name
    import optuna

    with contextlib.suppress(Exception):
        optuna.delete_study(study_name=name, storage=PG_URL)


def _write_space(tmp_path: Path, study: str, epochs: int, dataset: dict = SYNTHETIC) -> Path:
    doc = {"study": study, "dataset": dataset, "training": {"epochs": epochs, "batch_size": 32, "seeds": [0, 1, 2]},
           **SPACE}
    return write_space(tmp_path / "space.yaml", doc)


def _expected_keys(space_path: Path) -> set[str]:
    from proxstudy.study.space import grid_points, load_space

    return {p.key for p in grid_points(load_space(space_path))}


def _trials(study: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study, storage=PG_URL).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def _n_finished(study: str) -> int:
    from proxstudy.study import records as R

    return sum(1 for t in _trials(study) if t.user_attrs.get(R.ATTR_STATUS) in R.FINAL_STATUSES
               and t.state.is_finished())


def _assert_each_point_once_finished(study: str, expected: set[str]) -> None:
    from proxstudy.study import records as R

    trials = _trials(study)
    records = [R.record_from_frozen_trial(t) for t in trials]
    assert not [r for r in records if r.status in (R.STATUS_RUNNING, R.STATUS_WAITING)], \
        "trials left RUNNING"
    finished = Counter(r.point_key for r in records if r.finished)
    assert set(finished) == expected, (set(finished) ^ expected)
    duplicated = {k: n for k, n in finished.items() if n != 1}
    assert not duplicated, f"points recorded more than once: {duplicated}"
    statuses = Counter(r.status for r in records if r.finished)
    assert statuses == {R.STATUS_COMPLETED: len(expected)}, statuses


def _run_cli(space: Path, storage: str, ray_address: str, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PROXSTUDY, "run", str(space), "--storage", storage, "--ray-address", ray_address,
         "--max-concurrent", "2", "--cpus-per-trial", "1", *extra],
        stdout=subprocess.PIPE, stderr=open(log, "w"), env=ray_env(), cwd=log.parent,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"proxstudy run did not finish in {timeout} s:\n{log.read_text()[-3000:]}") from None
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode, log.read_text()


@pytest.fixture
def cli_procs():
    """Driver processes started by a test; killed (with their group) if the test fails."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"proxstudy run exited ({proc.returncode}) before {what}:\n"
                                 f"{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


# ------------------------------------------------------------------------------------------
# the tests


@needs_pg
@pytest.mark.parametrize("fuse", ["1", "auto"])
def test_lost_worker_node_trials_are_retried_on_the_remaining_node(ray_head, start_worker_node, tmp_path, cli_procs,
                                                                   study_name, fuse):
    """Deterministic: the first trial (--fuse 1) or fused trial (auto, the default: its
    members) runs on the only node with a CPU and hangs in its data download (a loopback
    server that holds its answer) until that node has been killed; what ran there is run
    again on the node that remains and every point ends once."""
    from proxstudy.study import records as R

    study = study_name
    files = {"usps.bz2": usps_bytes(*usps_arrays(256, seed=1)), "usps.t.bz2": usps_bytes(*usps_arrays(32, seed=2))}
    held, requested = threading.Event(), threading.Event()
    held.set()
    with serve(files, held=held, requested=requested) as base:
        dataset = {"name": "usps", "root": str(tmp_path / "data"), "download": True, "url": base,
                   "md5": {name: md5(payload) for name, payload in files.items()}, "val_size": 32}
        space = _write_space(tmp_path, study, epochs=2, dataset=dataset)
        expected = _expected_keys(space)
        doomed = start_worker_node(nodes=2)
        log = tmp_path / "run.log"
        proc = _run_cli(space, PG_URL, ray_head, log, "--fuse", fuse)
        cli_procs.append(proc)

        def trial_hangs_on_the_doomed_node() -> bool:
            return requested.is_set() and any(t.state.name == "RUNNING" for t in _trials(study))

        _wait_for(trial_hangs_on_the_doomed_node, 120, "a trial on the worker node", proc, log)
        victims = {t.number for t in _trials(study) if t.state.name == "RUNNING"}
        doomed.kill()
        held.clear()
        start_worker_node(nodes=2)  # the node that remains

        code, stderr = _finish(proc, log, timeout=200)
    assert code == 0, stderr[-3000:]
    _assert_each_point_once_finished(study, expected)
    # What was running on the dead node was run again (same Optuna trials) and finished: one
    # trial unfused, a fused trial's members (each its own Optuna trial) fused.
    if fuse == "1":
        assert len(victims) == 1, victims
    else:
        assert len(victims) >= 2, victims
    for trial in _trials(study):
        if trial.number in victims:
            assert int(trial.user_attrs.get(R.ATTR_ATTEMPTS, 1)) >= 2, (trial.user_attrs, stderr[-3000:])
            assert trial.user_attrs.get(R.ATTR_STATUS) == R.STATUS_COMPLETED
    # A handled node loss is news for the user, not a crash: no traceback on the terminal.
    assert "Traceback" not in stderr, stderr[-4000:]


@needs_pg
@pytest.mark.parametrize("fuse", ["1", "auto"])
def test_storage_outage_stops_cleanly_and_resume_completes(ray_head, start_worker_node, pg_proxy, tmp_path, cli_procs,
                                                          study_name, fuse):
    """The outage hits the sweep mid-way: unfused after the first finished trial (trials finish
    one by one); fused after the members' first recorded epoch, long before any member can
    finish (members of one fused trial finish together)."""
    start_worker_node(nodes=2)
    proxy, proxied_url = pg_proxy
    study = study_name
    space = _write_space(tmp_path, study, epochs=8 if fuse == "1" else 200)
    expected = _expected_keys(space)
    log = tmp_path / "run.log"
    proc = _run_cli(space, proxied_url, ray_head, log, "--fuse", fuse)
    cli_procs.append(proc)

    if fuse == "1":
        _wait_for(lambda: _n_finished(study) >= 1, 120, "the first finished trial", proc, log)
    else:
        _wait_for(lambda: any(t.intermediate_values for t in _trials(study)), 180, "a member's first epoch", proc, log)
    proxy.outage()
    outage_end = time.monotonic() + 6
    # The fault is real and hits the sweep mid-way: the port refuses, trials are still to come.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
    finished = _n_finished(study)
    assert (finished < len(expected) if fuse == "1" else finished == 0) and proc.poll() is None, \
        log.read_text()[-3000:]
    time.sleep(max(0.0, outage_end - time.monotonic()))
    proxy.restore()

    code, stderr = _finish(proc, log, timeout=300)
    print(f"first run: exit {code}\n{stderr[-3000:]}")
    assert "Traceback" not in stderr, stderr[-3000:]
    if code != 0:
        # Stopped: one clear line about the storage, then a resume finishes the study.
        assert any("storage" in line.lower() for line in stderr.splitlines()), stderr[-3000:]
        log2 = tmp_path / "resume.log"
        resume = _run_cli(space, proxied_url, ray_head, log2, "--fuse", fuse)
        cli_procs.append(resume)
        code2, stderr2 = _finish(resume, log2, timeout=300)
        assert code2 == 0, stderr2[-3000:]
    else:  # rode it out: the lease is released through a pool that held dead connections
        assert "releasing the lease" not in stderr, stderr[-3000:]
    _assert_each_point_once_finished(study, expected)
