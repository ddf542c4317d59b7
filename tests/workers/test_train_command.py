"""`proxstudy train` glue: table output, export files, bad input."""

from __future__ import annotations

import io

import pytest
import yaml

from proxstudy.workers.config import ConfigError
from proxstudy.workers.data import DataError
from proxstudy.workers.train_command import TABLE_HEADER, train_main
from tests.support.trial_configs import trial_config


def _trial(**changes) -> dict:
    base = trial_config(
        dataset={"name": "digits", "train_samples": 200},
        method="proxprop-exact",
        mode="prox_exact",
        optimizer={"name": "sgd", "momentum": 0.9, "nesterov": True},
    )
    del base["cg_iterations"]
    return {**base, **changes}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_bare_config_prints_the_epoch_table(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(_trial()))
    out, err = io.StringIO(), io.StringIO()
    assert train_main(path, stream=out, progress_stream=err, device="cpu") == 0
    lines = _lines(out.getvalue())
    assert lines[0].startswith("== method proxprop-exact (mode prox_exact, lr 1, tau_prox 0.05, sgd)")
    assert lines[1] == TABLE_HEADER
    rows = [line.split() for line in lines[2:5]]
    assert [row[0] for row in rows] == ["0", "1", "2"]
    assert all(len(row) == 6 for row in rows) and float(rows[2][1]) < float(rows[0][1])
    assert lines[5].startswith("status: completed on cpu")
    assert "epoch 2/2" in err.getvalue()  # the progress indicator went to stderr


def test_export_file_runs_each_method_or_the_chosen_one(tmp_path):
    doc = {
        "study": "s", "objective": "train_loss", "direction": "minimize",
        "methods": {
            "backprop": {"params": {"lr": 1e4}, "seeds": [0],
                         "trial_config": _trial(method="backprop", mode="gradient", lr=1e4, tau_prox=None,
                                                optimizer={"name": "sgd"})},
            "proxprop-exact": {"params": {"lr": 1.0}, "seeds": [0], "trial_config": _trial()},
        },
    }
    path = tmp_path / "export.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = io.StringIO()
    assert train_main(path, stream=out, progress_stream=io.StringIO()) == 0  # divergence is a result
    text = out.getvalue()
    assert text.count(TABLE_HEADER) == 2 and "method backprop" in text and "method proxprop-exact" in text
    assert "status: diverged" in text and "(diverged at epoch 1)" in text
    out = io.StringIO()
    assert train_main(path, "proxprop-exact", stream=out, progress_stream=io.StringIO()) == 0
    assert out.getvalue().count(TABLE_HEADER) == 1 and "method backprop" not in out.getvalue()


def test_bad_input_raises_clear_errors(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(_trial(lr="quick")))
    with pytest.raises(ConfigError) as info:
        train_main(path, stream=io.StringIO())
    assert str(info.value).startswith(f"{path}: lr: ")
    path.write_text(yaml.safe_dump(_trial()))
    with pytest.raises(ConfigError, match="--device"):
        train_main(path, device="gpu", stream=io.StringIO())
    with pytest.raises(ConfigError, match="runs method 'proxprop-exact', not 'adam'"):
        train_main(path, "adam", stream=io.StringIO())
    for asked in ("cuda:99", "cuda:4096"):  # torch.device("cuda:4096") would wrap round to cuda:0
        with pytest.raises(ConfigError) as info:
            train_main(path, device=asked, stream=io.StringIO())
        assert str(info.value).startswith(f"<command line>: --device: {asked} asked for")
    path.write_text(yaml.safe_dump(_trial(device="cuda:4096")))
    with pytest.raises(ConfigError) as info:
        train_main(path, stream=io.StringIO())
    assert str(info.value).startswith(f"{path}: device: cuda:4096 asked for")
    missing = tmp_path / "cifar.yaml"
    missing.write_text(yaml.safe_dump(_trial(dataset={"name": "cifar10", "root": str(tmp_path / "none")})))
    out = io.StringIO()
    with pytest.raises(DataError, match="download: true"):
        train_main(missing, stream=out)
    assert out.getvalue() == ""  # nothing printed before the data is there
