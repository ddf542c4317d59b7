"""Running the `proxstudy` command in tests: its path, a clean environment, small search spaces."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROXSTUDY = str(BIN / "proxstudy")


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for `proxstudy` subprocesses: no Ray or proxstudy settings leaking in from
    the caller, one torch thread per trial. The installed package is what they import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PROXSTUDY_"))}
    env.pop("PYTHONPATH", None)
    env.update(RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", **extra)
    return env


def synthetic_space(study: str = "unit", sampler: dict | None = None, seeds=(0, 1)) -> dict:
    return {
        "study": study,
        "dataset": {"name": "synthetic", "n_train": 64, "n_val": 32, "input_shape": [1, 4, 4],
                    "num_classes": 3, "seed": 0},
        "model": {"name": "mlp", "hidden": [8]},
        "training": {"epochs": 2, "batch_size": 32, "seeds": list(seeds)},
        "sampler": sampler or {"name": "grid"},
        "objective": "train_loss",
        "methods": {
            "backprop": {"mode": "gradient", "lr": {"low": 0.01, "high": 1.0, "log": True, "points": 3}},
            "cg": {"mode": "prox_cg", "cg_iterations": [1, 2], "tau_prox": 1.0,
                   "lr": {"low": 0.01, "high": 1.0, "log": True, "points": 2}},
        },
    }


def write_space(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `proxstudy ARGV` in this process: (exit status, stdout, stderr) as captured by capsys."""
    import pytest

    from proxstudy.study.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err
