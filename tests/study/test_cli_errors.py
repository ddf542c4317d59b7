"""Bad input to `proxstudy`: one line `proxstudy: error: ...` naming the file and field, exit 2,
no traceback, nothing written to the storage.

The corpus tests/bad_spaces/ (first line `# expect: <text the message must contain>`) runs in
this one process through proxstudy.study.cli.main (cheap); one case runs as a real subprocess.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from proxstudy.study.cli import main
from tests.support.cli import PROXSTUDY, cli_env, synthetic_space, write_space

BAD = sorted((Path(__file__).parent / "bad_spaces").glob("*.yaml"))


def _expectation(path: Path) -> str:
    first = path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    assert first.startswith("# expect:"), f"{path} lacks its '# expect:' line"
    return first.split(":", 1)[1].strip()


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_every_bad_space_fails_with_one_line_naming_file_and_field(tmp_path, capsys):
    assert len(BAD) >= 20
    db = tmp_path / "x.db"
    problems = []
    for path in BAD:
        code, _out, err = run_main(["run", str(path), "--storage", f"sqlite:///{db}"], capsys)
        lines = err.strip().splitlines()
        expected = _expectation(path)
        ok = (code == 2 and len(lines) == 1 and lines[0].startswith("proxstudy: error: ")
              and str(path) in lines[0] and expected in lines[0] and "Traceback" not in err)
        if not ok:
            problems.append(f"{path.name}: exit {code}, expected {expected!r} in: {err.strip()!r}")
    assert not problems, "\n".join(problems)
    assert not db.exists()  # nothing written for invalid input


def test_bad_space_as_a_real_subprocess_writes_nothing(tmp_path):
    db = tmp_path / "x.db"
    bad = next(p for p in BAD if p.name == "lr-negative.yaml")
    result = subprocess.run([PROXSTUDY, "run", str(bad), "--storage", f"sqlite:///{db}"], cwd=tmp_path,
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"proxstudy: error: {bad}: methods.bp.lr") and "Traceback" not in result.stderr
    assert not db.exists() and result.stdout == ""


def test_unreachable_storage_is_one_line_without_password_and_writes_nothing(tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml", synthetic_space())
    code, _, err = run_main(["run", str(space), "--storage",
                             "postgresql+psycopg://alice:hunter2@127.0.0.1:1/db"], capsys)
    assert code == 2 and "hunter2" not in err and "alice:***@127.0.0.1:1" in err
    assert err.startswith("proxstudy: error: storage ") and len(err.strip().splitlines()) == 1
    code, _, err = run_main(["run", str(space), "--storage", f"sqlite:///{tmp_path}/no/such/dir/x.db"], capsys)
    assert code == 2 and "does not exist" in err


def test_missing_data_files_fail_before_the_study_is_created(tmp_path, capsys):
    doc = synthetic_space()
    doc["dataset"] = {"name": "cifar10", "root": str(tmp_path / "nodata"), "download": False}
    doc["model"] = {"name": "mlp", "hidden": [8]}
    space = write_space(tmp_path / "c.yaml", doc)
    db = tmp_path / "x.db"
    code, _, err = run_main(["run", str(space), "--storage", f"sqlite:///{db}"], capsys)
    assert code == 2 and "nodata" in err and len(err.strip().splitlines()) == 1, err
    assert not db.exists()


def test_read_commands_on_missing_database_or_unknown_study(tmp_path, capsys):
    db = tmp_path / "none.db"
    for argv in (["status", "--storage", f"sqlite:///{db}"], ["list", "--storage", f"sqlite:///{db}"],
                 ["export", "s", "--storage", f"sqlite:///{db}"]):
        code, _, err = run_main(argv, capsys)
        assert code == 2 and "no database file" in err, (argv, err)
    assert not db.exists()  # reading never creates a database
    import optuna

    optuna.create_study(study_name="present", storage=f"sqlite:///{db}")
    for argv in (["status", "absent", "--storage", f"sqlite:///{db}"],
                 ["export", "absent", "--storage", f"sqlite:///{db}"]):
        code, _, err = run_main(argv, capsys)
        assert code == 2 and "no study 'absent'" in err and "present" in err, err
    code, _out, _ = run_main(["export", "present", "--storage", f"sqlite:///{db}"], capsys)
    assert code == 2  # not a proxstudy study: nothing to export
    code, _, err = run_main(["export", "present", "--storage", f"sqlite:///{db}", "--out",
                             str(tmp_path / "nodir" / "x.yaml")], capsys)
    assert code == 2 and "does not exist" in err


def test_dashboard_refuses_a_remote_host_without_allow_remote(tmp_path, capsys):
    import optuna

    db = tmp_path / "d.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    code, _, err = run_main(["dashboard", "--storage", f"sqlite:///{db}", "--host", "0.0.0.0"], capsys)
    assert code == 2 and "--allow-remote" in err
