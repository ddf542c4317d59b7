"""Bad options and odd inputs: exit 2 with one line naming what is wrong, nothing written
(issue 13, items 3 and 5 to 9). Each case runs through the command's main in this process."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from proxstudy.errors import UsageError
from proxstudy.study.cli import main
from proxstudy.study.ray_cluster import check_trial_fits
from tests.support.cli import synthetic_space, write_space


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    _out, err = capsys.readouterr()
    return exit_info.value.code, err


def _refused(argv: list[str], capsys, *expected: str) -> str:
    code, err = run_main(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("proxstudy: error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def space(tmp_path):
    return str(write_space(tmp_path / "good.yaml", synthetic_space("good")))


@pytest.mark.parametrize(("options", "expected"), [
    (["--gpus-per-trial", "5"], ("--gpus-per-trial 5: no node can run a trial", "GPU(s)")),
    (["--cpus-per-trial", "100000"], ("--cpus-per-trial 100000: no node can run a trial", f"{os.cpu_count()} CPU(s)")),
    (["--cpus-per-trial", "nan"], ("--cpus-per-trial nan: must be a number > 0",)),
    (["--gpus-per-trial", "inf"], ("--gpus-per-trial inf",)),
    (["--device", "tpu"], ("--device", "'tpu'")),
    (["--max-retries", "-5"], ("--max-retries -5: must be >= 0",)),
    (["--study-name", ""], ("--study-name: must be a non-empty string",)),
    (["--study-name", "a\nb"], ("--study-name: a study name must not contain control characters",)),
    (["--study-name", "x" * 513], ("--study-name: a study name has at most 512 characters",)),
    (["--max-concurrent", "0"], ("--max-concurrent 0",)),
])
def test_run_refuses_bad_options_and_writes_nothing(space, tmp_path, capsys, options, expected):
    if options[:2] == ["--gpus-per-trial", "5"] and torch.cuda.device_count() >= 5:
        pytest.skip("this machine has 5 GPUs")
    db = tmp_path / "x.db"
    _refused(["run", space, "--storage", f"sqlite:///{db}", *options], capsys, *expected)
    assert not db.exists()


def test_empty_storage_option_is_refused_not_replaced_by_the_default(space, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(["run", space, "--storage", ""], capsys, "--storage: the storage URL is empty")
    _refused(["status", "--storage", ""], capsys, "--storage: the storage URL is empty")
    assert list(tmp_path.iterdir()) == [tmp_path / "good.yaml"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(space, tmp_path, capsys):
    db = tmp_path / "x.db"
    _refused(["run", space, "--storage", f"sqlite:///{db}", "--device", "cuda"], capsys,
             "--device: cuda asked for, but no CUDA device is available")
    _refused(["run", space, "--storage", f"sqlite:///{db}", "--device", "cuda:3"], capsys, "--device: cuda:3")
    assert not db.exists()


def test_trial_fit_against_nodes_and_the_autoscaling_wait():
    nodes = [{"CPU": 4.0}, {"CPU": 2.0, "GPU": 1.0}]
    assert check_trial_fits(2, 1, nodes, wait=False) is None
    assert check_trial_fits(4, 0, nodes, wait=False) is None
    with pytest.raises(UsageError, match=r"--cpus-per-trial 3: .* 2 node\(s\), 6 CPU\(s\) and 1 GPU\(s\), "
                                         r"at most 4 CPU\(s\) and 1 GPU\(s\) on one node"):
        check_trial_fits(3, 1, nodes, wait=False)  # 4 CPUs and 1 GPU exist, not on one node
    with pytest.raises(UsageError, match=r"--gpus-per-trial 2: .*--wait-for-resources"):
        check_trial_fits(1, 2, nodes, wait=False)
    line = check_trial_fits(1, 2, nodes, wait=True)
    assert line is not None and line.startswith("waiting for the cluster to add a node with 1 CPU(s) and 2 GPU(s)")


def _cifar_space(tmp_path, root, download: bool) -> str:
    doc = synthetic_space("c")
    doc["dataset"] = {"name": "cifar10", "root": str(root), "download": download}
    doc["model"] = {"name": "mlp", "hidden": [8]}
    return str(write_space(tmp_path / "cifar.yaml", doc))


def test_data_problems_name_the_file_and_dataset_root(tmp_path, capsys):
    db = tmp_path / "x.db"
    a_file = tmp_path / "plain-file"
    a_file.write_text("not a directory")
    storage = ["--storage", f"sqlite:///{db}"]
    for download in (True, False):
        space = _cifar_space(tmp_path, a_file, download)
        _refused(["run", space, *storage], capsys, f"{space}: dataset.root: {a_file} is a file, not a directory")
    space = _cifar_space(tmp_path, a_file / "below", True)
    _refused(["run", space, *storage], capsys, f"{space}: dataset.root: {a_file} is a file, so the download")
    space = _cifar_space(tmp_path, tmp_path / "empty", False)
    _refused(["run", space, *storage], capsys, f"{space}: dataset.root: ", "not found; set download: true")
    assert not db.exists()


def test_unreadable_inputs_are_refused(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    _refused(["run", "/dev/zero", "--storage", db], capsys, "/dev/zero: is not a regular file")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20))
    _refused(["run", str(big), "--storage", db], capsys, f"{big}: is larger than 1024 KiB")
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    _refused(["train", str(binary)], capsys, f"{binary}: is not a UTF-8 text file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: bp\nlr: [0.1,\n  mode: : x\n")
    _refused(["train", str(broken)], capsys, f"{broken}: not valid YAML: ", "at line 3, column")
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    _refused(["train", str(deep)], capsys, f"{deep}: the YAML is nested too deeply")
    assert not (tmp_path / "x.db").exists()


def test_report_out_directory_names_out(tmp_path, capsys):
    from tests.support.study_fixtures import SyntheticSpace, build_study

    url = f"sqlite:///{tmp_path / 'r.db'}"
    build_study(url, "s", SyntheticSpace(lrs=(0.05,), seeds=(0,)), n_trials=2)
    _refused(["report", "s", "--storage", url, "--out", str(tmp_path)], capsys,
             f"--out {tmp_path}: is a directory")


@pytest.mark.parametrize(("options", "expected"), [
    (["--port", "99999"], "--port 99999: must be between 1 and 65535"),
    (["--host", "nosuch.invalid", "--allow-remote"], "--host nosuch.invalid: cannot be resolved"),
])
def test_dashboard_listen_address_is_checked_before_the_server_starts(tmp_path, capsys, options, expected):
    from tests.support.study_fixtures import SyntheticSpace, build_study

    url = f"sqlite:///{tmp_path / 'd.db'}"
    build_study(url, "s", SyntheticSpace(lrs=(0.05,), seeds=(0,)), n_trials=2)
    _refused(["dashboard", "--storage", url, *options], capsys, expected)


def _immutable(path) -> bool:
    chattr = shutil.which("chattr")
    return chattr is not None and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0


def test_an_immutable_sqlite_file_is_refused_before_writing(space, tmp_path, capsys):
    db = tmp_path / "ro.db"
    db.write_bytes(b"")
    if os.geteuid() != 0:
        db.chmod(0o444)
    elif not _immutable(db):
        pytest.skip("root, and chattr +i is not permitted here")
    try:
        _refused(["run", space, "--storage", f"sqlite:///{db}"], capsys,
                 f"the database file {db} cannot be written")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(db)], check=False)
    assert db.stat().st_size == 0


def test_train_names_the_file_and_dataset_root(tmp_path, capsys):
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    config = {"dataset": {"name": "cifar10", "root": str(a_file), "download": True},
              "model": {"name": "mlp", "hidden": [8]}, "training": {"epochs": 1, "batch_size": 32},
              "objective": "train_loss", "method": "bp", "mode": "gradient", "lr": 0.1,
              "optimizer": {"name": "sgd"}, "seed": 0}
    path = write_space(tmp_path / "trial.yaml", config)
    _refused(["train", str(path)], capsys, f"{path}: dataset.root: {a_file} is a file, not a directory")
    config["seed"] = 2**64
    write_space(path, config)
    _refused(["train", str(path)], capsys, f"{path}: seed: a seed must be < 2**64")


def test_a_file_that_is_not_a_database_is_refused_by_every_command(space, tmp_path, capsys):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(bytes(range(256)) * 20)
    url = f"sqlite:///{garbage}"
    for argv in (["status"], ["list"], ["report", "s", "--out", str(tmp_path / "r.html")], ["run", space]):
        _refused([*argv, "--storage", url], capsys, f"{garbage} is not a SQLite database")
    assert garbage.read_bytes() == bytes(range(256)) * 20


def test_a_damaged_database_is_exit_2_not_an_internal_error(tmp_path, capsys):
    from tests.support.study_fixtures import SyntheticSpace, build_study

    db = tmp_path / "damaged.db"
    build_study(f"sqlite:///{db}", "s", SyntheticSpace(lrs=(0.05, 0.5), seeds=(0,)), n_trials=4)
    data = bytearray(db.read_bytes())
    data[100:] = bytes(len(data) - 100)  # the header survives, every page is zeroed
    db.write_bytes(bytes(data))
    line = _refused(["status", "--storage", f"sqlite:///{db}"], capsys, f"cannot read {db}", "malformed")
    assert "internal error" not in line


def test_the_trial_limit_is_raised_by_the_environment_and_checked_itself(tmp_path, capsys, monkeypatch):
    doc = synthetic_space("big", seeds=(0,))
    doc["methods"] = {"bp": {"mode": "gradient", "lr": {"low": 0.001, "high": 1.0, "points": 150_000}}}
    path = str(write_space(tmp_path / "big.yaml", doc))
    argv = ["run", path, "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--gpus-per-trial", "4096"]
    _refused(argv, capsys, f"{path}: methods.bp.lr.points: points asks for 150,000 trials, over the limit of "
                           "100,000 per study; split the study, or raise the limit with PROXSTUDY_MAX_TRIALS=150000")
    monkeypatch.setenv("PROXSTUDY_MAX_TRIALS", "150000")
    _refused(argv, capsys, "--gpus-per-trial 4096")  # valid now: refused only for the impossible request
    monkeypatch.setenv("PROXSTUDY_MAX_TRIALS", "lots")
    _refused(argv, capsys, "PROXSTUDY_MAX_TRIALS: must be a whole number >= 1, got 'lots'")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("command", [["status"], ["status", "s"], ["summary", "s"], ["export", "s"]])
def test_reading_commands_write_nothing_into_a_database_without_optuna_tables(tmp_path, capsys, command):
    import sqlite3

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    before = other.read_bytes()
    for db in (empty, other):
        _refused([*command[:1], "--storage", f"sqlite:///{db}", *command[1:]], capsys,
                 f"{db} holds no Optuna studies")
    assert empty.stat().st_size == 0
    assert other.read_bytes() == before
