"""End to end through the `proxstudy` command: a digits sweep on SQLite and on PostgreSQL.

Real parts only: the installed entry point (subprocess), a local Ray started by `run`, Ray
Tune, workers' trainable, Optuna's RDB storage. Checked: what every trial records (params,
statuses incl. a diverging lr, values, intermediate values, user attrs), the stored search
space, `status`/`list` output, resume of a finished study, export -> `proxstudy train`.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from proxstudy.study import records as R
from proxstudy.study.space import load_space
from tests.support.cli import PROXSTUDY, cli_env
from tests.support.postgres import PG_URL, needs_pg

pytestmark = pytest.mark.timeout(300)

SPACE = """\
study: {study}
dataset: {{name: digits, train_samples: 300}}
model: {{name: mlp, hidden: [16]}}
training: {{epochs: 2, batch_size: 50, seeds: [0, 1]}}
sampler: {{name: grid}}
objective: train_loss
methods:
  backprop:
    mode: gradient
    lr: [0.1, 10000.0]        # 1e4 diverges in the first epoch
    optimizer: {{name: sgd}}
  proxprop-cg:
    mode: prox_cg
    cg_iterations: 2
    tau_prox: 1.0
    lr: 0.5
"""


def proxstudy(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([PROXSTUDY, *args], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def check_recorded_study(url: str, study: str, space_file: Path) -> None:
    loaded = optuna.load_study(study_name=study, storage=url)
    trials = loaded.get_trials(deepcopy=False)
    assert loaded.direction == optuna.study.StudyDirection.MINIMIZE
    assert loaded.user_attrs[R.STUDY_ATTR_SPACE] == load_space(space_file).document
    assert loaded.user_attrs[R.STUDY_ATTR_SOURCE] == str(space_file)
    assert len(trials) == 6  # (2 + 1 points) x 2 seeds, each exactly once
    keys = [t.user_attrs[R.ATTR_POINT_KEY] for t in trials]
    assert len(set(keys)) == 6
    for t in trials:
        p = t.params
        assert p["seed"] in (0, 1) and p["method"] in ("backprop", "proxprop-cg")
        assert R.point_key(p["method"], {k: v for k, v in p.items() if k not in ("method", "seed")},
                           p["seed"]) == t.user_attrs[R.ATTR_POINT_KEY]
        assert t.user_attrs[R.ATTR_DEVICE] == "cpu"
        assert t.user_attrs[R.ATTR_ATTEMPTS] == 1 and t.user_attrs[R.ATTR_WORKER]
        if p["method"] == "proxprop-cg":
            assert (p["tau_prox"], p["cg_iterations"], p["lr"]) == (1.0, 2, 0.5)
        else:
            assert set(p) == {"method", "seed", "lr"}
        if p["lr"] == 10000.0:
            assert t.state == TrialState.PRUNED and t.user_attrs[R.ATTR_STATUS] == "diverged"
            assert t.user_attrs[R.ATTR_DIVERGED_EPOCH] == 1 and t.value is None
            assert len(t.user_attrs[R.ATTR_TRAIN_LOSS]) == 2  # epochs 0 and 1 only
        else:
            assert t.state == TrialState.COMPLETE and t.user_attrs[R.ATTR_STATUS] == "completed"
            assert sorted(t.intermediate_values) == [0, 1, 2]
            assert t.value == pytest.approx(t.intermediate_values[2])
            losses = t.user_attrs[R.ATTR_TRAIN_LOSS]
            assert len(losses) == 3 and losses[2] == pytest.approx(t.value)  # objective = train loss
            assert losses[2] < losses[0]  # it trained
            assert len(t.user_attrs[R.ATTR_VAL_ACCURACY]) == 3
            assert t.user_attrs[R.ATTR_EPOCH_SECONDS][0] == 0.0 and t.user_attrs[R.ATTR_EPOCH_SECONDS][1] > 0
            assert t.user_attrs.get(R.ATTR_DIVERGED_EPOCH) is None


def run_sweep_and_check(url: str, study: str, tmp_path: Path, full: bool = True) -> None:
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE.format(study=study))
    result = proxstudy("run", str(space_file), "--storage", url, "--max-concurrent", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Trial status" not in result.stdout + result.stderr
    assert f"[{study}] 6/6 done (4 completed, 2 diverged, 0 failed), 0 running, 0 left" in result.stderr
    shown = url  # no password in these URLs
    assert f"proxstudy dashboard --storage '{shown}'" in result.stdout
    assert f"proxstudy report {study} --storage '{shown}' --out report.html" in result.stdout
    check_recorded_study(url, study, space_file)

    status = proxstudy("status", study, "--storage", url, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()[2:]}
    # done completed diverged failed running left total
    assert rows["backprop"] == ["4", "2", "2", "0", "0", "0", "4"]
    assert rows["proxprop-cg"] == ["2", "2", "0", "0", "0", "0", "2"]
    assert rows["total"] == ["6", "4", "2", "0", "0", "0", "6"]
    if not full:  # the rest does not depend on the storage backend
        return
    listed = proxstudy("list", "--storage", url, cwd=tmp_path)
    assert listed.returncode == 0 and any(
        line.split() == [study, "6", "4", "2", "0", "0", "0", "6"] for line in listed.stdout.splitlines())

    # Running a finished study again runs nothing and records nothing new.
    again = proxstudy("run", str(space_file), "--storage", url, cwd=tmp_path)
    assert again.returncode == 0 and "nothing left to run" in again.stdout, again.stderr
    assert len(optuna.load_study(study_name=study, storage=url).trials) == 6

    out = tmp_path / "best.yaml"
    exported = proxstudy("export", study, "--storage", url, "--out", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    doc = yaml.safe_load(out.read_text())
    assert (doc["study"], doc["objective"], doc["direction"]) == (study, "train_loss", "minimize")
    assert list(doc["methods"]) == ["backprop", "proxprop-cg"]
    assert "best" in doc["methods"]["backprop"]
    best = doc["methods"]["backprop"]["best"]
    assert best["params"] == {"lr": 0.1}  # the diverged lr ranks last
    values = [t.value for t in optuna.load_study(study_name=study, storage=url).trials
              if t.params["method"] == "backprop" and t.params["lr"] == 0.1]
    assert best["objective"]["n"] == 2 and best["seeds"] == [0, 1]
    assert best["objective"]["mean"] == pytest.approx(sum(values) / 2)
    assert best["trial_config"]["lr"] == 0.1 and best["trial_config"]["seed"] == 0

    report = proxstudy("report", study, "--storage", url, "--out", str(tmp_path / "r.html"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert study in (tmp_path / "r.html").read_text(encoding="utf-8")

    trained = proxstudy("train", str(out), "--method", "proxprop-cg", "--pick", "best", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "Traceback" not in trained.stderr


def test_digits_sweep_on_sqlite_end_to_end(tmp_path):
    run_sweep_and_check(f"sqlite:///{tmp_path / 'study.db'}", "e2e-digits", tmp_path)


@needs_pg
def test_digits_sweep_on_postgresql_end_to_end(tmp_path):
    study = f"e2e-pg-{uuid.uuid4().hex[:10]}"
    try:
        run_sweep_and_check(PG_URL, study, tmp_path, full=False)
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study, storage=PG_URL)
