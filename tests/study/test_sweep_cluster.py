"""`proxstudy run --ray-address` on a two-node Ray cluster built on this machine.

Two `ray start --block` nodes (one CPU each), each in its own session and temp dir so that
teardown kills exactly them; the second node takes another loopback address (127.0.0.2) so
that the node a trial ran on is visible in its `worker` user attr. The driver (the CLI) is
the only writer of the SQLite storage; trials must run on both nodes.
"""

from __future__ import annotations

import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from proxstudy.study import records as R
from tests.support.cli import PROXSTUDY, cli_env
from tests.support.processes import free_port
from tests.support.ray_nodes import ray_env, wait_for_nodes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SPACE = """\
study: cluster
dataset: {name: synthetic, n_train: 1024, n_val: 128, input_shape: [1, 8, 8], num_classes: 3, seed: 0}
model: {name: mlp, hidden: [32]}
training: {epochs: 3, batch_size: 32, seeds: [0, 1]}
sampler: {name: grid}
objective: train_loss
methods:
  backprop:
    mode: gradient
    lr: [0.01, 0.1, 0.5]
    optimizer: {name: sgd, momentum: 0.9}
"""


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
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    url = f"sqlite:///{tmp_path / 'cluster.db'}"
    result = subprocess.run(
        [PROXSTUDY, "run", str(space_file), "--storage", url, "--ray-address", two_node_cluster],
        cwd=tmp_path, env=ray_env(), capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="cluster", storage=url).get_trials(deepcopy=False)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs[R.ATTR_POINT_KEY] for t in trials}) == 6
    node_ips = {t.user_attrs[R.ATTR_WORKER].split()[1] for t in trials}
    assert len(node_ips) == 2 and "127.0.0.2" in node_ips, node_ips  # both nodes ran trials


def test_unreachable_ray_address_is_one_line_and_writes_nothing(tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    db = tmp_path / "x.db"
    result = subprocess.run(
        [PROXSTUDY, "run", str(space_file), "--storage", f"sqlite:///{db}", "--ray-address",
         f"127.0.0.1:{free_port()}"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("proxstudy: error: --ray-address 127.0.0.1:") and "cannot reach" in line
    assert not db.exists()  # checked before the study is created
