"""A seeded fuzzer over the search-space format (issue 13): every generated file ends in exit 0
or exit 2 with one line, never a traceback, an internal error, a hang or a write after a
refusal.

Each case mutates a valid search space (values replaced by hostile ones, keys dropped or added,
aliases, deep nesting, control characters, damaged text) and runs `proxstudy run` on it through
the command's main in this process. So that a valid case does not start a sweep, every run asks
for more GPUs per trial than any machine has: a valid document is refused there, after its
validation, with a line naming ``--gpus-per-trial``; an invalid one with a line naming the file.
Either way the storage file must not exist afterwards. The seed makes the corpus the same on
every run; FUZZ_CASES sets its size.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from proxstudy.study.cli import main
from tests.support.cli import synthetic_space

SEED = 20261201
FUZZ_CASES = 600
NO_SUCH_GPUS = "4096"  # per trial, on one node

pytestmark = pytest.mark.timeout(300)  # a hang is a failure, not a stuck suite


def _base(rng: random.Random) -> dict:
    doc = synthetic_space("fuzz", seeds=(0, 1))
    if rng.random() < 0.3:
        doc["sampler"] = {"name": rng.choice(["random", "tpe"]), "n_trials": 3, "seed": 1}
        doc["methods"]["backprop"]["lr"] = {"low": 0.01, "high": 1.0, "log": True}
    if rng.random() < 0.3:
        doc["methods"]["adam"] = {"mode": "gradient", "lr": [0.01, 0.1],
                                  "optimizer": {"name": "adam", "betas": [0.9, 0.99], "eps": [1e-8, 1e-6]}}
    return doc


def _hostile_value(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Callable[[], Any]] = [
        lambda: None, lambda: True, lambda: 0, lambda: -1, lambda: 1, lambda: 2**64, lambda: 2**53 + 1,
        lambda: -(2**70), lambda: 10**400, lambda: 1e308, lambda: -0.0, lambda: 1e-320, lambda: 0.5,
        lambda: float("nan"), lambda: float("inf"), lambda: "", lambda: " ", lambda: "nan", lambda: "1e9",
        lambda: "grid", lambda: "gradient", lambda: "a\nb", lambda: "\u202ex", lambda: "x" * 2000,
        lambda: "|=", lambda: "../../etc/passwd", lambda: "<b>X</b>", lambda: [], lambda: {},
        lambda: 1_000_000_000, lambda: {"low": 0.1, "high": 0.2, "points": 100_001},
        lambda: {"low": 1, "high": 0}, lambda: {"low": 0, "high": 1, "log": True, "points": 2},
        lambda: list(range(rng.randint(2, 40))), lambda: [0.1, 0.1],
    ]
    if depth < 3:
        choices += [
            lambda: [_hostile_value(rng, depth + 1) for _ in range(rng.randint(1, 4))],
            lambda: {rng.choice(["name", "low", "high", "points", "log", "x", "1"]): _hostile_value(rng, depth + 1)
                     for _ in range(rng.randint(1, 3))},
        ]
    return rng.choice(choices)()


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


def _mutate(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(doc) if p]
        path = rng.choice(paths)
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        action = rng.random()
        if action < 0.6:
            parent[path[-1]] = _hostile_value(rng)
        elif action < 0.75 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action < 0.9 and isinstance(parent, dict):
            parent[rng.choice(["extra", "Study", "lr ", "seeds", "\t", "name"])] = _hostile_value(rng)
        elif isinstance(parent, dict):  # a key that is not a string
            parent[rng.choice([1, 2.5, None, True])] = parent.pop(path[-1])
    return doc


def _dump(doc: dict) -> str:
    try:
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return yaml.dump(doc, sort_keys=False)


def _text_damage(text: str, rng: random.Random) -> str:
    kind = rng.randrange(7)
    at = rng.randrange(len(text) + 1)
    if kind == 0:
        return text[:at]  # truncated
    if kind == 1:
        junk = ["\x00", "\t", "{", "[", "]", ": :", "&a", "*nope", "!!python/object:os.system ''", "%YAML 9.9\n",
                "---\n", "\ufeff", "'"]
        return text[:at] + rng.choice(junk) + text[at:]
    if kind == 2:  # an alias bomb under a method
        bomb = "&b0 [1, 1, 1, 1, 1, 1, 1, 1]"
        for i in range(1, 10):
            bomb = f"&b{i} [{bomb}, " + ", ".join([f"*b{i - 1}"] * 7) + "]"
        return text.replace("lr:", f"lr: {bomb}\n    lr_x:", 1)
    if kind == 3:  # deep nesting
        return text.replace("hidden:", "hidden: " + "[" * 3000 + "]" * 3000 + "\n  hidden_x:", 1)
    if kind == 4:  # a repeated key
        return text + text.splitlines()[0] + "\n"
    if kind == 5:
        return "\n".join(line for line in text.splitlines() if rng.random() > 0.15)
    return text.replace(": ", ":", 1)


def _cases(n: int) -> list[str]:
    rng = random.Random(SEED)
    cases = []
    for _ in range(n):
        doc = _base(rng)
        text = _dump(_mutate(doc, rng)) if rng.random() < 0.85 else _dump(doc)
        if rng.random() < 0.3:
            text = _text_damage(text, rng)
        cases.append(text)
    return cases


def test_every_generated_search_space_ends_in_exit_0_or_one_line_exit_2(tmp_path, capsys):
    db = tmp_path / "fuzz.db"
    space = tmp_path / "space.yaml"
    problems: list[str] = []
    outcomes = {"valid": 0, "refused": 0}
    for number, text in enumerate(_cases(FUZZ_CASES)):
        space.write_text(text, encoding="utf-8")
        with pytest.raises(SystemExit) as exit_info:
            main(["run", str(space), "--storage", f"sqlite:///{db}", "--gpus-per-trial", NO_SUCH_GPUS,
                  "--no-progress"])
        _out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        code = exit_info.value.code
        ok = (code in (0, 2) and not db.exists() and "Traceback" not in err and "internal error" not in err
              and (code == 0 or (len(lines) == 1 and lines[0].startswith("proxstudy: error: "))))
        if not ok:
            problems.append(f"case {number}: exit {code}, db written: {db.exists()}, stderr: {err[-400:]!r}\n"
                            f"{text[:600]}")
            db.unlink(missing_ok=True)
        elif code == 2 and f"--gpus-per-trial {NO_SUCH_GPUS}" in lines[0]:
            outcomes["valid"] += 1
        else:
            assert str(space) in lines[0] or "--" in lines[0], lines[0]  # names the file or the option
            outcomes["refused"] += 1
    assert not problems, f"{len(problems)} of {FUZZ_CASES} cases failed; first ones:\n" + "\n\n".join(problems[:5])
    # the corpus exercises both sides: documents that validate and documents that do not
    assert outcomes["valid"] >= FUZZ_CASES // 20 and outcomes["refused"] >= FUZZ_CASES // 2, outcomes


TRAIN_CASES = 200
NO_SUCH_DEVICE = "cuda:4096"


def _trial_config() -> dict:
    space = synthetic_space("fuzz-train", seeds=(0,))
    return {"dataset": space["dataset"], "model": space["model"],
            "training": {"epochs": 1, "batch_size": 32}, "objective": "train_loss", "method": "cg",
            "mode": "prox_cg", "lr": 0.1, "tau_prox": 1.0, "cg_iterations": 2,
            "optimizer": {"name": "sgd", "momentum": 0.9}, "seed": 0}


def test_every_generated_trial_config_ends_in_one_line_exit_2_before_training(tmp_path, capsys):
    """`proxstudy train` over mutated trial configs: a device that does not exist stops the valid
    ones after validation, before any training; every case is one line and exit 2."""
    rng = random.Random(SEED + 1)
    path = tmp_path / "trial.yaml"
    problems: list[str] = []
    valid = 0
    for number in range(TRAIN_CASES):
        text = _dump(_mutate(_trial_config(), rng) if rng.random() < 0.85 else _trial_config())
        if rng.random() < 0.3:
            text = _text_damage(text, rng)
        path.write_text(text, encoding="utf-8")
        with pytest.raises(SystemExit) as exit_info:
            main(["train", str(path), "--device", NO_SUCH_DEVICE])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        if not (exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("proxstudy: error: ")
                and "Traceback" not in err and out == ""):
            problems.append(f"case {number}: exit {exit_info.value.code}, out {out[-200:]!r}, err {err[-300:]!r}\n"
                            f"{text[:400]}")
        valid += f"--device: {NO_SUCH_DEVICE} asked for" in err  # refused for the device alone: the config was valid
    assert not problems, f"{len(problems)} of {TRAIN_CASES} failed; first ones:\n" + "\n\n".join(problems[:5])
    assert valid >= TRAIN_CASES // 20, valid
