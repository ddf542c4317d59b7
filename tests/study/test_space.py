"""Search-space loading: the shipped spaces, grids, distributions and the malformed corpus.

Expected counts and grid values are computed here from the raw YAML (not through study.space),
so a loader that mis-counts or mis-spaces a grid fails.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import check_distribution_compatibility

from proxstudy.study.records import point_key
from proxstudy.study.space import (
    grid_points,
    load_space,
    parse_space,
    recorded_distributions,
    trial_config,
)
from proxstudy.workers.config import ConfigError, validate_trial_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))
BAD = sorted((ROOT / "tests" / "study" / "bad_spaces").glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _base(**methods) -> dict:
    return {
        "study": "t",
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [8]},
        "training": {"epochs": 1, "batch_size": 50, "seeds": [0, 1]},
        "methods": methods,
    }


def _axis_size(value) -> int:
    """How many grid values a raw YAML swept value has (independent of study.space)."""
    if isinstance(value, dict):
        return int(value["points"])
    if isinstance(value, list):
        return len(value)
    return 1


def _expected_points(raw: dict) -> int:
    seeds = raw["training"].get("seeds", [0])
    n_seeds = seeds if isinstance(seeds, int) else len(seeds)
    total = 0
    for method in raw["methods"].values():
        size = 1
        for key in ("lr", "tau_prox", "cg_iterations"):
            if key in method:
                size *= _axis_size(method[key])
        for key, value in (method.get("optimizer") or {}).items():
            if key not in ("name", "betas"):
                size *= _axis_size(value)
        total += size
    return total * n_seeds


# --------------------------------------------------------------------------------------------
# shipped spaces


def test_the_expected_spaces_are_shipped():
    names = {p.name for p in SHIPPED}
    for name in (
        "paper-cifar10-mlp.yaml",
        "paper-cifar10-convnet.yaml",
        "paper-table1-lr-sweep.yaml",
        "digits-table1-quick.yaml",
        "digits-mlp-quick.yaml",
        "digits-convnet-quick.yaml",
        "paper-usps-autoencoder.yaml",
        "tiny-test.yaml",
    ):
        assert name in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_loads_and_counts(path):
    raw = yaml.safe_load(path.read_text())
    space = load_space(path)
    points = grid_points(space)
    assert len(points) == _expected_points(raw)
    assert len({p.key for p in points}) == len(points)  # every trial is distinct
    assert space.study_name == raw["study"] == path.stem
    # JSON-able, stable and a fixed point of parsing (what resume compares)
    text = json.dumps(space.document, sort_keys=True)
    assert json.loads(text) == space.document
    assert load_space(path).document == space.document
    assert parse_space(copy.deepcopy(space.document), "stored").document == space.document


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_grid_point_records_under_the_study_distributions(path):
    space = load_space(path)
    dists = recorded_distributions(space)
    study = optuna.create_study(direction=space.direction)
    for point in grid_points(space):
        params = {"method": point.method, "seed": point.seed, **point.params}
        trial = optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=0.0
        )
        study.add_trial(trial)  # raises on an incompatible or out-of-range param
    assert len(study.trials) == len(grid_points(space))


def test_cifar_spaces_use_the_shared_data_root():
    for path in SHIPPED:
        raw = yaml.safe_load(path.read_text())
        if raw["dataset"]["name"] == "cifar10":
            assert raw["dataset"] == {"name": "cifar10", "root": "data/cifar10", "download": True}
            assert Path(load_space(path).dataset["root"]).is_absolute()


def test_table1_space_has_the_papers_learning_rates():
    space = load_space(ROOT / "search_spaces" / "paper-table1-lr-sweep.yaml")
    lrs = {5e-4, 5e-3, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0}
    assert set(space.methods) == {"backprop", "cg1-paper", "cg3-paper", "cg5-paper", "cg3-textbook", "cg5-textbook"}
    for method in space.methods.values():
        assert set(method.params["lr"].grid_values()) == lrs
    assert [space.methods[m].params["cg_iterations"].values for m in ("cg1-paper", "cg3-paper", "cg5-paper")] == [
        (1,),
        (3,),
        (5,),
    ]
    assert space.training["epochs"] == 50 and space.objective == "train_loss"


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.name.startswith(("paper-", "digits-"))], ids=lambda p: p.name)
def test_arms_claiming_the_papers_setting_use_the_papers_cg(path):
    """The paper's numbers come from the reference's aliased CG loop (prox_cg_ref); textbook CG
    (prox_cg) is a different method and its arms say so in their names."""
    space = load_space(path)
    cg_arms = {name: m.mode for name, m in space.methods.items() if m.mode in ("prox_cg", "prox_cg_ref")}
    assert cg_arms, path.name
    for name, mode in cg_arms.items():
        assert name.endswith("-paper" if mode == "prox_cg_ref" else "-textbook"), (name, mode)
    assert "prox_cg_ref" in cg_arms.values()


def test_demo_space_compares_three_methods_on_one_wide_lr_grid_with_seeds():
    space = load_space(ROOT / "search_spaces" / "digits-table1-quick.yaml")
    assert {name: m.mode for name, m in space.methods.items()} == {
        "backprop": "gradient", "cg3-paper": "prox_cg_ref", "cg3-textbook": "prox_cg"}
    grids = {tuple(m.params["lr"].grid_values()) for m in space.methods.values()}
    assert len(grids) == 1  # the same learning rates for every method
    (lrs,) = grids
    assert min(lrs) <= 1e-3 and max(lrs) >= 100.0 and len(space.seeds) >= 3


def test_usps_autoencoder_space_is_the_papers_third_experiment():
    space = load_space(ROOT / "search_spaces" / "paper-usps-autoencoder.yaml")
    assert space.dataset["name"] == "usps" and space.model["name"] == "autoencoder"
    assert space.objective == "train_loss" and {"backprop", "cg3-paper", "cg3-textbook"} <= set(space.methods)


# --------------------------------------------------------------------------------------------
# grids


def test_log_range_grid_is_log_spaced_with_exact_endpoints():
    doc = _base(bp={"mode": "gradient", "lr": {"low": 1e-3, "high": 10.0, "log": True, "points": 5}})
    values = load_values(doc, "bp", "lr")
    assert values == [0.001, 0.01, 0.1, 1.0, 10.0]
    doc = _base(bp={"mode": "gradient", "lr": {"low": 2e-4, "high": 3.0, "log": True, "points": 7}})
    values = load_values(doc, "bp", "lr")
    assert values[0] == 2e-4 and values[-1] == 3.0
    ratios = [b / a for a, b in zip(values, values[1:])]
    expected = (3.0 / 2e-4) ** (1 / 6)
    assert all(math.isclose(r, expected, rel_tol=1e-10) for r in ratios)


def test_linear_and_integer_range_grids():
    doc = _base(
        cg={
            "mode": "prox_cg",
            "lr": 1.0,
            "tau_prox": 1.0,
            "cg_iterations": {"low": 1, "high": 10, "log": True, "points": 3},
            "optimizer": {"name": "sgd", "momentum": {"low": 0.0, "high": 0.9, "points": 4}},
        }
    )
    assert load_values(doc, "cg", "cg_iterations") == [1, 3, 10]
    assert load_values(doc, "cg", "optimizer.momentum") == [0.0, 0.3, 0.6, 0.9]
    space = parse_space(doc)
    assert all(type(v) is int for v in space.methods["cg"].params["cg_iterations"].values)


def load_values(doc, method, name):
    return parse_space(doc).methods[method].params[name].grid_values()


def test_grid_order_params_and_keys():
    doc = _base(
        bp={"mode": "gradient", "lr": [0.1, 1.0], "optimizer": {"name": "sgd", "momentum": 0.9}},
        ex={"mode": "prox_exact", "lr": 1.0, "tau_prox": [0.5, 2.0]},
    )
    points = grid_points(parse_space(doc))
    got = [(p.seed, p.method, p.params) for p in points]
    assert got == [
        (0, "bp", {"lr": 0.1}),
        (0, "bp", {"lr": 1.0}),
        (0, "ex", {"lr": 1.0, "tau_prox": 0.5}),
        (0, "ex", {"lr": 1.0, "tau_prox": 2.0}),
        (1, "bp", {"lr": 0.1}),
        (1, "bp", {"lr": 1.0}),
        (1, "ex", {"lr": 1.0, "tau_prox": 0.5}),
        (1, "ex", {"lr": 1.0, "tau_prox": 2.0}),
    ]
    assert points[2].key == "ex|lr=1.0|tau_prox=0.5|seed=0"
    assert all(p.key == point_key(p.method, p.params, p.seed) for p in points)


def test_defaults_and_shorthands():
    doc = _base(bp={"mode": "gradient", "lr": 0.1})
    doc["training"]["seeds"] = 3
    space = parse_space(doc)
    assert space.seeds == (0, 1, 2)
    assert space.document["training"]["seeds"] == [0, 1, 2]
    assert space.sampler == {"name": "grid"}
    assert space.objective == "train_loss" and space.direction == "minimize"
    assert space.methods["bp"].optimizer == {"name": "sgd"}
    doc["sampler"] = {"name": "tpe", "n_trials": 5}
    doc["objective"] = "val_accuracy"
    space = parse_space(doc)
    assert space.sampler == {"name": "tpe", "n_trials": 5, "seed": 0}
    assert space.direction == "maximize"


# --------------------------------------------------------------------------------------------
# trial configs


def test_trial_config_overlays_swept_optimizer_fields():
    doc = _base(
        cg={
            "mode": "prox_cg",
            "lr": [0.5, 1.0],
            "tau_prox": 0.2,
            "cg_iterations": 3,
            "optimizer": {"name": "sgd", "nesterov": True, "momentum": [0.5, 0.95], "weight_decay": 1e-4},
        },
        bp={"mode": "gradient", "lr": 0.1, "optimizer": {"name": "adam", "betas": [0.8, 0.99]}},
    )
    space = parse_space(doc, "mine.yaml")
    cg = space.methods["cg"]
    assert set(cg.params) == {"lr", "tau_prox", "cg_iterations", "optimizer.momentum"}
    assert cg.optimizer == {"name": "sgd", "nesterov": True, "weight_decay": 1e-4}
    config = trial_config(space, "cg", {"lr": 1.0, "tau_prox": 0.2, "cg_iterations": 3,
                                        "optimizer.momentum": 0.95}, seed=1)
    assert config == {
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "model": {"name": "mlp", "hidden": [8]},
        "training": {"epochs": 1, "batch_size": 50, "divergence_factor": 10.0,
                     "eval_batch_size": 2000, "drop_last": False},
        "objective": "train_loss",
        "method": "cg",
        "mode": "prox_cg",
        "lr": 1.0,
        "tau_prox": 0.2,
        "cg_iterations": 3,
        "optimizer": {"name": "sgd", "nesterov": True, "weight_decay": 1e-4, "momentum": 0.95},
        "seed": 1,
        "device": "auto",
    }
    assert validate_trial_config(config, "x") == config
    bp = trial_config(space, "bp", {"lr": 0.1}, seed=0, device="cpu")
    assert bp["tau_prox"] is None and bp["cg_iterations"] is None and bp["device"] == "cpu"
    assert bp["optimizer"] == {"name": "adam", "betas": [0.8, 0.99]}
    assert set(space.methods["bp"].params) == {"lr"}  # betas is a pair, never swept
    # configs are copies: changing one does not change the space
    bp["dataset"]["name"] = "changed"
    assert space.dataset["name"] == "digits"
    with pytest.raises(KeyError):
        trial_config(space, "cg", {"lr": 1.0}, seed=0)  # swept momentum has no value
    with pytest.raises(KeyError):
        trial_config(space, "nope", {}, seed=0)


def test_every_grid_point_gives_a_valid_trial_config():
    space = load_space(ROOT / "search_spaces" / "tiny-test.yaml")
    for point in grid_points(space):
        config = trial_config(space, point.method, point.params, point.seed)
        assert config["method"] == point.method and config["seed"] == point.seed
        assert config["lr"] == point.params["lr"]


# --------------------------------------------------------------------------------------------
# distributions


def test_recorded_distributions_span_all_methods():
    doc = _base(
        a={"mode": "gradient", "lr": {"low": 1e-3, "high": 0.1, "log": True, "points": 3},
           "optimizer": {"name": "sgd", "momentum": [0.0, 0.5], "nesterov": False}},
        b={"mode": "prox_cg", "lr": [5.0, 50.0], "tau_prox": 0.05, "cg_iterations": [1, 10],
           "optimizer": {"name": "sgd", "momentum": {"low": 0.8, "high": 0.99, "points": 2},
                         "nesterov": [True, False]}},
    )
    space = parse_space(doc)
    dists = recorded_distributions(space)
    assert dists["method"].choices == ("a", "b")
    assert (dists["seed"].low, dists["seed"].high) == (0, 1)
    assert (dists["lr"].low, dists["lr"].high, dists["lr"].log) == (1e-3, 50.0, True)
    assert (dists["tau_prox"].low, dists["tau_prox"].high) == (0.05, 0.05)
    assert (dists["cg_iterations"].low, dists["cg_iterations"].high) == (1, 10)
    assert (dists["optimizer.momentum"].low, dists["optimizer.momentum"].high) == (0.0, 0.99)
    assert set(dists["optimizer.nesterov"].choices) == {True, False}
    study = optuna.create_study()
    for point in grid_points(space):
        params = {"method": point.method, "seed": point.seed, **point.params}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=1.0))
    assert len(study.trials) == 2 * (3 * 2 + 2 * 2 * 2 * 2)


def test_sampled_space_draws_from_compatible_distributions():
    doc = _base(
        a={"mode": "gradient", "lr": {"low": 1e-3, "high": 0.1, "log": True}},
        b={"mode": "prox_cg", "lr": 1.0, "tau_prox": {"low": 0.01, "high": 10.0, "log": True},
           "cg_iterations": {"low": 1, "high": 10}},
    )
    doc["sampler"] = {"name": "tpe", "n_trials": 20, "seed": 3}
    space = parse_space(doc)
    recorded = recorded_distributions(space)
    for method in space.methods.values():
        for name, param in method.params.items():
            check_distribution_compatibility(recorded[name], param.optuna_distribution())
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=5))
    for _ in range(space.sampler["n_trials"]):
        trial = study.ask()
        method = space.methods[trial.suggest_categorical("method", list(space.methods))]
        params = {}
        for name, param in method.params.items():
            dist = param.optuna_distribution()
            if isinstance(dist, optuna.distributions.IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
            else:
                params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        seed = trial.suggest_int("seed", min(space.seeds), max(space.seeds))
        config = trial_config(space, method.name, params, seed)
        for name, value in params.items():
            assert recorded[name]._contains(recorded[name].to_internal_repr(value))
        study.tell(trial, config["lr"])
    assert len(study.trials) == 20


def test_grid_sampler_needs_points_but_sampled_spaces_do_not():
    doc = _base(bp={"mode": "gradient", "lr": {"low": 1e-3, "high": 0.1, "log": True}})
    with pytest.raises(ConfigError, match="points"):
        parse_space(doc)
    doc["sampler"] = {"name": "random", "n_trials": 4}
    space = parse_space(doc)
    with pytest.raises(ValueError):
        grid_points(space)


# --------------------------------------------------------------------------------------------
# the malformed corpus (also run through `proxstudy run` by the CLI tests)


def test_the_bad_corpus_is_large_enough():
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_space_is_refused_with_file_and_field(path):
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    assert first.startswith("# expect: "), f"{path.name} needs a '# expect: FIELD' first line"
    expect = first[len("# expect: "):].strip()
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert info.value.source == str(path)
    assert expect in message, message
    assert "\n" not in message


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_space(tmp_path / "nope.yaml")


def test_reference_cg_mode_reaches_the_layers_as_the_aliased_variant():
    from proxstudy.workers.config import layer_mode
    from proxstudy.workers.models import build_model

    doc = {
        "study": "ref-cg",
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [8]},
        "training": {"epochs": 1, "batch_size": 50, "seeds": [0]},
        "objective": "train_loss",
        "methods": {"paper-cg3": {"mode": "prox_cg_ref", "cg_iterations": 3, "tau_prox": 0.05, "lr": 1.0}},
    }
    space = parse_space(doc, "ref.yaml")
    (point,) = grid_points(space)
    config = trial_config(space, point.method, point.params, point.seed)
    assert layer_mode(config) == "prox_cg3_ref"
    model = build_model(config["model"], (64,), 10, layer_mode(config), config["tau_prox"])
    modes = {m.optimization_mode for m in model.modules() if hasattr(m, "optimization_mode")}
    assert modes == {"prox_cg3_ref"}
    with pytest.raises(ConfigError, match="cg_iterations"):
        parse_space({**doc, "methods": {"m": {"mode": "prox_cg_ref", "tau_prox": 1.0, "lr": 1.0}}}, "ref.yaml")
