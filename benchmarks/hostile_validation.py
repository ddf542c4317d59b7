"""What hostile search spaces cost to validate, against a plain one in the same run.

Issue 13 measured a 1 KB alias-bomb YAML at 86 s (its error message stringified the whole
value) and a 32,000-value list at 18.5 s (a quadratic duplicate check). This times, through
``study.space.load_space`` (read, parse, validate; nothing is written):

    baseline       a small valid search space (tests.support.cli.synthetic_space)
    alias bomb     ~1 KB: lr holds lists whose aliases expand to 10**11 numbers
    32,000 values  lr: a list of 32,000 distinct values (valid: 32,000 trials)
    deep brackets  8 KB of "[" (refused before parsing)
    huge grid      points: 1000000000 (refused before a point is built)

and prints each one's median time and its ratio to the baseline (the goal: every hostile file
refused or accepted in well under a second).

    .venv/bin/python benchmarks/hostile_validation.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from proxstudy.errors import ConfigError
from proxstudy.study.space import load_space
from tests.support.cli import synthetic_space


def _texts() -> dict[str, str]:
    base = synthetic_space("bench", seeds=(0,))
    plain = yaml.safe_dump(base, sort_keys=False)
    bomb = "&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"
    for i in range(1, 12):
        bomb = f"&a{i} [{bomb}, " + ", ".join([f"*a{i - 1}"] * 9) + "]"
    many = dict(base, methods={"bp": {"mode": "gradient", "lr": [0.001 + i * 1e-6 for i in range(32_000)]}})
    huge = dict(base, methods={"bp": {"mode": "gradient", "lr": {"low": 0.001, "high": 1, "points": 1_000_000_000}}})
    return {
        "baseline": plain,
        "alias bomb": plain.split("methods:")[0] + f"methods:\n  bp:\n    mode: gradient\n    lr: {bomb}\n",
        "32,000 values": yaml.safe_dump(many, sort_keys=False),
        "deep brackets": plain + "x: " + "[" * 8000 + "\n",
        "huge grid": yaml.safe_dump(huge, sort_keys=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="hostile-bench-")
    results: dict[str, tuple[float, str]] = {}
    for name, text in _texts().items():
        path = os.path.join(directory, f"{name.replace(' ', '-').replace(',', '')}.yaml")
        Path(path).write_text(text)
        times = []
        outcome = ""
        for _ in range(args.repeat):
            start = time.perf_counter()
            try:
                load_space(path)
                outcome = "valid"
            except ConfigError as exc:
                outcome = f"refused: {exc.message[:70]}"
            times.append(time.perf_counter() - start)
        results[name] = (statistics.median(times), outcome)
    base = results["baseline"][0]
    print(f"{'case':<15} {'bytes':>8} {'median s':>9} {'x baseline':>11}  outcome")
    for name, (seconds, outcome) in results.items():
        size = len(_texts()[name].encode())
        print(f"{name:<15} {size:>8} {seconds:>9.4f} {seconds / base:>11.1f}  {outcome}")


if __name__ == "__main__":
    main()
