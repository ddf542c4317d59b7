"""How much a sweep costs beyond its training: wall time vs training time / concurrency.

Runs a digits sweep of short ProxProp trials (about 2 s each on one core) through the real
stack (local Ray started by run_sweep, Ray Tune, Optuna SQLite storage written by the driver)
and prints

    ideal   = sum over trials of their run time on the worker (Tune's time_total_s: model
              build, training and per-epoch evaluation) / concurrency
    ratio   = wall / ideal                      (goal <= 1.25)

(the ratio against the pure epoch seconds, evaluation excluded, is printed as well)

for two walls: the whole ``run_sweep`` call (Ray start, cold worker start, Tune, storage) and
the steady state (first trial start to last trial end, i.e. without the fixed start-up cost).
The baseline (training time) is measured in the same run, by the trials themselves.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials-per-seed N] [--seeds S] [--epochs E]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def space_document(lrs: list[float], seeds: int, epochs: int) -> dict:
    return {
        "study": "sweep-overhead",
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [64, 64]},
        "training": {"epochs": epochs, "batch_size": 100, "seeds": list(range(seeds))},
        "sampler": {"name": "grid"},
        "objective": "train_loss",
        "methods": {
            "proxprop-cg3": {
                "mode": "prox_cg",
                "cg_iterations": 3,
                "tau_prox": 1.0,
                "lr": lrs,
                "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True},
            }
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials-per-seed", type=int, default=8, help="lr grid points")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--concurrent", type=int, default=2)
    args = parser.parse_args()

    from proxstudy.study.reader import load_records
    from proxstudy.study.runner import SweepOptions, run_sweep

    lrs = [round(0.01 * 1.5**i, 6) for i in range(args.trials_per_seed)]
    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        url = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        t0 = time.monotonic()
        options = SweepOptions(storage=url, max_concurrent=args.concurrent, cpus_per_trial=1, progress=False)
        summary = run_sweep(space_document(lrs, args.seeds, args.epochs), options)
        call_wall = time.monotonic() - t0
        records = load_records(url, summary.study_name)
    starts = [r.datetime_start for r in records if r.datetime_start]
    ends = [r.datetime_complete for r in records if r.datetime_complete]
    steady_wall = (max(ends) - min(starts)).total_seconds()
    train = sum(sum(s or 0.0 for s in r.epoch_seconds) for r in records)
    trial_wall = sum((r.datetime_complete - r.datetime_start).total_seconds() for r in records
                     if r.datetime_start and r.datetime_complete)
    concurrency = args.concurrent
    ideal = summary.trial_seconds / concurrency
    ideal_epochs = train / concurrency
    n = len(records)
    print(f"trials: {n} ({summary.completed} completed, {summary.diverged} diverged, "
          f"{summary.failed} failed), concurrency {concurrency} (most seen: {summary.concurrency})")
    print(f"per trial: run time on the worker {summary.trial_seconds / max(n, 1):.2f} s, of which "
          f"epochs {train / max(n, 1):.2f} s; duration seen by the driver {trial_wall / max(n, 1):.2f} s")
    print(f"ideal = worker run time / concurrency     : {ideal:8.2f} s   (epochs only: {ideal_epochs:.2f} s)")
    print(f"steady wall (first start..last end)      : {steady_wall:8.2f} s   ratio {steady_wall / ideal:.3f}"
          f"   (vs epochs only {steady_wall / ideal_epochs:.3f})")
    print(f"sweep wall (run_sweep after Ray start)    : {summary.wall_seconds:8.2f} s   "
          f"ratio {summary.wall_seconds / ideal:.3f}")
    print(f"whole call (incl. validation, Ray start)  : {call_wall:8.2f} s   ratio {call_wall / ideal:.3f}")
    print(f"goal: ratio <= 1.25 ({os.cpu_count()} CPUs on this machine; load average "
          f"{os.getloadavg()[0]:.1f} at the end)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
