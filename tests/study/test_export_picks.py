"""`proxstudy export --pick` and `proxstudy train --pick` end to end on a real SQLite study.

The best and most robust configurations are recomputed from the raw Optuna trials with the
definitions of DESIGN.md ("Robustness metrics") by tests/support/robustness_reference.py, not
through the product's functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support import study_fixtures as F
from tests.support.cli import run_main
from tests.support.robustness_reference import reference

DELTA = 0.1


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('export') / 'studies.db'}"
    F.build_study(url, "digits")
    return url


def test_export_writes_best_and_robust_per_method(storage, tmp_path, capsys):
    out = tmp_path / "picks.yaml"
    code, _, err = run_main(["export", "digits", "--storage", storage, "--out", str(out)], capsys)
    assert code == 0, err
    assert "--pick best|robust" in err
    doc = yaml.safe_load(out.read_text())
    expected = {method: {"best": ref.best, **({"robust": ref.robust} if ref.robust else {})}
                for method, ref in reference(storage, "digits").items()}
    assert list(doc["methods"]) == ["backprop", "proxprop-cg"]
    for method, picks in expected.items():
        assert set(doc["methods"][method]) == set(picks)
        for kind, params in picks.items():
            entry = doc["methods"][method][kind]
            assert entry["params"] == pytest.approx(params), (method, kind)
            config = entry["trial_config"]
            assert config["method"] == method and config["lr"] == pytest.approx(params["lr"])
            assert config["seed"] == entry["seeds"][0]
    # the synthetic ProxProp tolerates a wider lr range: its robust lr is not its best lr
    robust = doc["methods"]["proxprop-cg"]["robust"]
    assert robust["params"] != doc["methods"]["proxprop-cg"]["best"]["params"]
    assert robust["trained_lr"][0] <= robust["params"]["lr"] <= robust["trained_lr"][1]
    assert robust["objective"]["n"] == len(robust["seeds"]) == 2


@pytest.mark.parametrize("pick", ["best", "robust"])
def test_export_one_pick(storage, pick, capsys):
    code, text, err = run_main(["export", "digits", "--storage", storage, "--format", "json", "--pick", pick],
                               capsys)
    assert code == 0, err
    doc = json.loads(text)
    assert all(set(entry) == {pick} for entry in doc["methods"].values())


def test_export_bad_pick_is_a_usage_error(storage, capsys):
    code, _, err = run_main(["export", "digits", "--storage", storage, "--pick", "worst"], capsys)
    assert code == 2 and "--pick" in err


def _export_file(storage, tmp_path, capsys, *extra) -> str:
    out = tmp_path / "picks.yaml"
    code, _, err = run_main(["export", "digits", "--storage", storage, "--out", str(out), *extra], capsys)
    assert code == 0, err
    return str(out)


def test_train_needs_pick_when_the_file_has_both(storage, tmp_path, capsys):
    path = _export_file(storage, tmp_path, capsys)
    code, out, err = run_main(["train", path, "--method", "proxprop-cg"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert f"{path}: --pick: methods.proxprop-cg has the best and the most robust configuration" in err


def test_train_pick_selects_the_configuration(storage, tmp_path, capsys):
    from proxstudy.workers.config import load_train_file

    path = _export_file(storage, tmp_path, capsys)
    doc = yaml.safe_load(Path(path).read_text())
    for kind in ("best", "robust"):
        (config,) = load_train_file(path, "proxprop-cg", kind)
        assert config.lr == doc["methods"]["proxprop-cg"][kind]["trial_config"]["lr"]
    only_best = _export_file(storage, tmp_path, capsys, "--pick", "best")
    assert [c.method for c in load_train_file(only_best)] == ["backprop", "proxprop-cg"]  # no --pick needed
    code, _, err = run_main(["train", only_best, "--pick", "robust"], capsys)
    assert code == 2 and "--pick: methods.backprop has no robust configuration (it has: best)" in err


def test_train_pick_on_a_bare_trial_config_is_refused(tmp_path, capsys):
    from tests.support.trial_configs import trial_config

    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(trial_config()))
    code, _, err = run_main(["train", str(path), "--pick", "best"], capsys)
    assert code == 2 and f"{path}: --pick:" in err


def test_train_runs_an_exported_robust_configuration(storage, tmp_path, capsys):
    """The whole path on a real data set: a robust pick of a digits study trains."""
    import copy

    path = _export_file(storage, tmp_path, capsys, "--pick", "robust", "--format", "json")
    doc = json.loads(Path(path).read_text())
    method = "proxprop-cg"
    config = copy.deepcopy(doc["methods"][method]["robust"]["trial_config"])
    config["dataset"] = {"name": "digits", "train_samples": 200}
    config["training"]["epochs"] = 1
    doc["methods"] = {method: {"robust": {**doc["methods"][method]["robust"], "trial_config": config}}}
    small = tmp_path / "small.json"
    small.write_text(json.dumps(doc))
    code, out, err = run_main(["train", str(small), "--device", "cpu"], capsys)
    assert code == 0, err
    assert f"== method {method}" in out and "status:" in out
