"""Trial-config validation: normalised output, errors naming source and field."""

from __future__ import annotations

import json

import pytest
import yaml

from proxstudy.workers.config import (
    ConfigError,
    layer_mode,
    load_train_file,
    validate_dataset_spec,
    validate_optimizer_spec,
    validate_trial_config,
)
from tests.support.trial_configs import trial_config



def test_valid_config_is_normalised():
    out = validate_trial_config(trial_config(_point_key="abc"), "<config>")
    assert out["device"] == "auto" and out["_point_key"] == "abc"
    assert out["training"]["divergence_factor"] == 10.0 and out["dataset"]["val_fraction"] == 0.2
    assert layer_mode(out) == "prox_cg3"
    assert layer_mode(validate_trial_config(trial_config(mode="prox_exact"), "x")) == "prox_exact"
    gradient = validate_trial_config(trial_config(mode="gradient", tau_prox=None, cg_iterations=None), "x")
    assert layer_mode(gradient) == "gradient" and gradient["tau_prox"] is None
    assert validate_trial_config(out, "<config>") == out  # idempotent


@pytest.mark.parametrize(
    "changes, field, words",
    [
        ({"lr": 0}, "lr", "> 0"),
        ({"lr": "fast"}, "lr", "number"),
        ({"tau_prox": None}, "tau_prox", "required"),
        ({"cg_iterations": 0}, "cg_iterations", ">= 1"),
        ({"mode": "prox"}, "mode", "one of"),
        ({"objective": "loss"}, "objective", "one of"),
        ({"seed": 1.5}, "seed", "integer"),
        ({"device": "tpu"}, "device", "cuda:N"),
        ({"colour": 1}, "colour", "unknown key"),
        ({"training": {"epochs": 0, "batch_size": 10}}, "training.epochs", ">= 1"),
        ({"training": {"epochs": True, "batch_size": 10}}, "training.epochs", "integer"),
        ({"training": {"epochs": 1}}, "training.batch_size", "required"),
        ({"model": {"name": "mlp", "hidden": [16, -1]}}, "model.hidden[1]", ">= 1"),
        ({"model": {"name": "resnet"}}, "model.name", "one of"),
        ({"model": {"name": "convnet", "kernel": 5}}, "model.kernel", "unknown key"),
        ({"dataset": {"name": "mnist"}}, "dataset.name", "one of"),
        ({"dataset": {"name": "cifar10", "download": "yes"}}, "dataset.download", "true or false"),
        ({"dataset": {"name": "usps", "md5": "abc"}}, "dataset.md5", "mapping"),
        ({"dataset": {"name": "synthetic", "input_shape": [20]}, "model": {"name": "convnet"}}, "model.name", "convnet"),
        ({"optimizer": {"name": "sgd", "momentun": 0.9}}, "optimizer.momentun", "unknown key"),
        ({"optimizer": {"name": "sgd", "nesterov": True}}, "optimizer.nesterov", "momentum"),
        ({"optimizer": {"name": "adam", "betas": [0.9]}}, "optimizer.betas", "pair"),
        ({"optimizer": {"name": "adam", "lr": 0.1}}, "optimizer.lr", "lr"),
        ({"model": {"name": "autoencoder"}, "objective": "val_accuracy"}, "objective", "accuracy"),
    ],
)
def test_errors_name_the_field(changes, field, words):
    with pytest.raises(ConfigError) as info:
        validate_trial_config(trial_config(**changes), "space.yaml")
    assert info.value.source == "space.yaml" and info.value.field == field
    assert str(info.value).startswith(f"space.yaml: {field}: ") and words in str(info.value)


def test_dataset_and_optimizer_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = validate_dataset_spec({"name": "cifar10", "root": "cifar", "md5": "A" * 32}, "s")
    assert spec["root"] == str(tmp_path / "cifar")  # absolute: Ray trials run elsewhere
    assert spec["md5"] == {"cifar-10-python.tar.gz": "a" * 32} and spec["val_size"] == 5000
    assert validate_optimizer_spec({"name": "adam", "betas": [0.8, 0.9], "eps": "1e-6"}, "s", "o") == {
        "name": "adam", "betas": [0.8, 0.9], "eps": 1e-6
    }


def _export(tmp_path, suffix=".yaml"):
    doc = {
        "study": "s",
        "objective": "train_loss",
        "direction": "minimize",
        "methods": {
            "backprop": {"params": {"lr": 0.05}, "objective": {"mean": 0.1, "std": 0.0, "n": 1}, "seeds": [0],
                         "trial_config": trial_config(method="backprop", mode="gradient", lr=0.05, tau_prox=None, cg_iterations=None)},
            "proxprop-cg": {"params": {"lr": 1.0}, "objective": {"mean": 0.1, "std": 0.0, "n": 1}, "seeds": [0],
                            "trial_config": trial_config()},
        },
    }
    path = tmp_path / f"export{suffix}"
    path.write_text(json.dumps(doc) if suffix == ".json" else yaml.safe_dump(doc))
    return path


def test_load_train_file_reads_exports_and_bare_configs(tmp_path):
    path = _export(tmp_path)
    assert [c["method"] for c in load_train_file(path)] == ["backprop", "proxprop-cg"]
    assert [c["method"] for c in load_train_file(_export(tmp_path, ".json"), "proxprop-cg")] == ["proxprop-cg"]
    with pytest.raises(ConfigError, match="backprop, proxprop-cg") as info:
        load_train_file(path, "adam")
    assert info.value.field == "methods"
    bare = tmp_path / "trial.yaml"
    bare.write_text(yaml.safe_dump(trial_config()))
    assert load_train_file(bare)[0]["lr"] == 1.0
    with pytest.raises(ConfigError):
        load_train_file(bare, "backprop")


def test_load_train_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_train_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("methods: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_train_file(broken)
    assert info.value.source == str(broken)
    doc = yaml.safe_load(_export(tmp_path).read_text())
    doc["methods"]["backprop"]["trial_config"]["lr"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_train_file(bad)
    assert info.value.field == "methods.backprop.trial_config.lr"
