"""`proxstudy run --ray-address` on a two-node Ray cluster built on this machine.

Two `ray start --block` nodes (one CPU each), each in its own session and temp dir so that
teardown kills exactly them; the second node takes another loopback address (127.0.0.2) so
that the node a trial ran on is visible in its `worker` user attr. The driver (the CLI) is
the only writer of the SQLite storage; trials must run on both nodes.

Both nodes get a trial whatever the machine's load: the data comes from a loopback server that
holds its answer until two trials run at once, which with one CPU per node means one on each
(with short trials and no hold, one node could finish the sweep before the other's worker
process was up).
"""

from __future__ import annotations

import subprocess
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from proxstudy.study import records as R
from tests.support.cli import PROXSTUDY, cli_env, write_space
from tests.support.data_files import md5, serve, usps_arrays, usps_bytes
from tests.support.processes import free_port
from tests.support.ray_nodes import ray_env, wait_for_nodes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SPACE = {
    "study": "cluster",
    "model": {"name": "mlp", "hidden": [32]},
    "training": {"epochs": 3, "batch_size": 32, "seeds": [0, 1]},
    "sampler": {"name": "grid"},
    "objective": "train_loss",
    "methods": {"backprop": {"mode": "gradient", "lr": [0.01, 0.1, 0.5],
                             "optimizer": {"name": "sgd", "momentum": 0.9}}},
}
SYNTHETIC = {"name": "synthetic", "n_train": 1024, "n_val": 128, "input_shape": [1, 8, 8], "num_classes": 3, "seed": 0}


def _write_space(tmp_path, dataset: dict) -> str:
    return str(write_space(tmp_path / "space.yaml", {**SPACE, "dataset": dataset}))


def _running_trials(url: str) -> int:
    try:
        trials = optuna.load_study(study_name="cluster", storage=url).get_trials(deepcopy=False)
    except Exception:  # not created yet, or the database is locked for a moment
        return 0
    return sum(t.state == TrialState.RUNNING for t in trials)


@pytest.fixture
def two_node_cluster(start_ray_node):
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = start_ray_node("--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                          "--num-cpus=1", "--num-gpus=0")
    wait_for_nodes(address, 1, [head])
    worker = start_ray_node(f"--address={address}", "--node-ip-address=127.0.0.2", "--num-cpus=1", "--num-gpus=0")
    wait_for_nodes(address, 2, [head, worker])
    return address


def test_sweep_through_ray_address_runs_on_both_nodes(two_node_cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'cluster.db'}"
    files = {"usps.bz2": usps_bytes(*usps_arrays(128, seed=1)), "usps.t.bz2": usps_bytes(*usps_arrays(16, seed=2))}
    held, requested = threading.Event(), threading.Event()
    held.set()
    with serve(files, held=held, requested=requested) as base:
        dataset = {"name": "usps", "root": str(tmp_path / "data"), "download": True, "url": base,
                   "md5": {name: md5(payload) for name, payload in files.items()}, "val_size": 16}
        driver = subprocess.Popen(
            # --fuse 1: one point per trial, so that the two running trials are one per node
            [PROXSTUDY, "run", _write_space(tmp_path, dataset), "--storage", url, "--ray-address", two_node_cluster,
             "--fuse", "1"],
            cwd=tmp_path, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 120
            while not (requested.is_set() and _running_trials(url) == 2):
                assert driver.poll() is None and time.monotonic() < deadline, "two trials never ran at once"
                time.sleep(0.2)
            held.clear()  # one trial on each node: let them have their data
            _, stderr = driver.communicate(timeout=240)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    assert driver.returncode == 0, stderr[-3000:]
    trials = optuna.load_study(study_name="cluster", storage=url).get_trials(deepcopy=False)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs[R.ATTR_POINT_KEY] for t in trials}) == 6
    node_ips = {t.user_attrs[R.ATTR_WORKER].split()[1] for t in trials}
    assert len(node_ips) == 2 and "127.0.0.2" in node_ips, node_ips  # both nodes ran trials


def test_unreachable_ray_address_is_one_line_and_writes_nothing(tmp_path):
    space_file = _write_space(tmp_path, SYNTHETIC)
    db = tmp_path / "x.db"
    result = subprocess.run(
        [PROXSTUDY, "run", str(space_file), "--storage", f"sqlite:///{db}", "--ray-address",
         f"127.0.0.1:{free_port()}"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("proxstudy: error: --ray-address 127.0.0.1:") and "cannot reach" in line
    assert not db.exists()  # checked before the study is created
