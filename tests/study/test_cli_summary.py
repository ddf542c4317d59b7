"""`proxstudy summary`: the robustness document and table of a stored study, through the CLI."""

from __future__ import annotations

import json

import pytest

from proxstudy.dashboards.importance import log_params_of, study_importance
from proxstudy.dashboards.metrics import compute_robustness, summary_document
from proxstudy.study.cli import main
from proxstudy.study.reader import load_records
from proxstudy.study.space import parse_space
from tests.support.study_fixtures import SyntheticSpace, build_study


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('summary-cli') / 'studies.db'}"
    build_study(url, "s", n_failed=1)
    return url


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_json_is_the_summary_document_of_the_stored_study(storage, capsys):
    code, out, err = _run(["summary", "s", "--storage", storage, "--format", "json", "--delta", "0.2"], capsys)
    assert code == 0, err
    robustness = compute_robustness(load_records(storage, "s"), "minimize", delta=0.2)
    shares = {name: found.shares for name, found in study_importance(robustness, log_params_of(
        parse_space(SyntheticSpace().document("s")))).items()}
    expected = summary_document(robustness, "s", "train_loss", shares)
    assert json.loads(out) == json.loads(json.dumps(expected))


def test_table_names_every_method(storage, capsys):
    code, out, _ = _run(["summary", "s", "--storage", storage], capsys)
    assert code == 0 and out.startswith("s: train_loss (minimize)")
    assert "backprop" in out and "proxprop-cg" in out


@pytest.mark.parametrize(
    "argv, words",
    [(["summary", "nope"], "no study 'nope' in the storage (studies there: s)"),
     (["summary", "s", "--delta", "1.5"], "--delta 1.5: must be between 0 and 1")],
)
def test_bad_input_is_one_line_and_exit_2(storage, capsys, argv, words):
    code, _, err = _run([*argv, "--storage", storage], capsys)
    assert code == 2 and err.strip() == f"proxstudy: error: {words}" + (" (exclusive)" if "delta" in words else "")
