"""Fused vs unfused sweeps of one grid, in one run: trials per minute and their ratio.

Default (the driver): the grid is run twice through ``study.runner.run_sweep`` -- the whole
``proxstudy run`` (local Ray, Tune, the Optuna recorder on a fresh SQLite file) -- once with
``fuse=1`` (one point per trial, today's sweep) and once fused (``--fuse K``, default auto:
fused_plan.default_fuse_size).  The time is run_sweep's wall time, Ray's start included, for
both.  ``--core`` measures the training loops alone instead (no Ray, no storage): run_trial
one config at a time vs run_fused_trials per group, interleaved, best of ``--repeat``.

Grids:
  demo   the grid of search_spaces/digits-table1-quick.yaml, as the file says (model, epochs,
         batch size, methods, seeds): the make-demo sweep's trials.
  convnet  (extra) the grid of search_spaces/digits-convnet-quick.yaml (digits ConvNet).
  paper  the paper's MLP 3072-4000-1000-4000-10 at batch 500 on synthetic CIFAR-shaped data
         (3x32x32, 10 classes), reduced to fit a 2-core CPU: --paper-train training samples
         (default 1000: two mini-batches) and 200 validation samples, --paper-epochs epochs
         (default 1), a 3 lr x 2 tau_prox grid of ProxProp cg3 (Nesterov SGD 0.95).

Concurrency: --max-concurrent trials at once (default 2, the demo's), one CPU and one torch
thread each, for both runs.  The script also checks that each fused point ended like its
unfused one (status, every epoch's training loss to 1e-3 relative: float32 rounding) and
prints how many did.

    .venv/bin/python benchmarks/fused_sweep.py [--grid demo|paper|both|convnet] [--fuse K] [--core]
    .venv/bin/python benchmarks/fused_sweep.py --compare-vmap     # the bmm-vs-vmap choice
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO_SPACE = ROOT / "search_spaces" / "digits-table1-quick.yaml"
CONVNET_SPACE = ROOT / "search_spaces" / "digits-convnet-quick.yaml"


def space_configs(space) -> list:
    """Every grid point of a search space (a path or a document) as a trial config on the CPU."""
    from proxstudy.study.space import as_search_space, grid_points, trial_config

    space = as_search_space(space)
    return [trial_config(space, p.method, p.params, p.seed, device="cpu") for p in grid_points(space)]


def paper_space(train: int, epochs: int) -> dict:
    """The reduced paper grid as a search space."""
    return {
        "study": "fused-bench-paper",
        "dataset": {"name": "synthetic", "input_shape": [3, 32, 32], "num_classes": 10,
                    "n_train": train, "n_val": 200},
        "model": {"name": "mlp", "hidden": [4000, 1000, 4000]},
        "training": {"epochs": epochs, "batch_size": 500, "seeds": [0]},
        "sampler": {"name": "grid"},
        "objective": "train_loss",
        "methods": {"proxprop-cg3": {
            "mode": "prox_cg", "cg_iterations": 3, "lr": [0.3, 1.0, 3.0], "tau_prox": [0.05, 0.5],
            "optimizer": {"name": "sgd", "momentum": 0.95, "nesterov": True},
        }},
    }


def fused_groups(configs: list, fuse: int | None) -> list[list[int]]:
    from proxstudy.workers.fused_plan import plan_groups

    return plan_groups(configs, fuse, "cpu")


def agreement(fused: list[tuple[str, list]], unfused: list[tuple[str, list]]) -> tuple[int, int]:
    """(points whose status equals the unfused one's, points whose every recorded training loss
    also agrees to 1e-3 relative), from (status, per-epoch training losses) pairs.  In float32
    a fused member is not bit-equal to its unfused trial (batched products round differently);
    at unstable learning rates such differences grow, as with any change of BLAS or thread
    count (float64 equality is tested in tests/workers/test_fused_training.py)."""
    same_status = same_curve = 0
    for (status, losses), (their_status, their_losses) in zip(fused, unfused, strict=True):
        if status != their_status:
            continue
        same_status += 1
        if len(losses) == len(their_losses) and all(
            (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-3 * abs(b))
            for a, b in zip(losses, their_losses, strict=True)
        ):
            same_curve += 1
    return same_status, same_curve


def report(name: str, count: int, statuses: dict, groups: str, unfused_wall: float, fused_wall: float,
           same: tuple[int, int]) -> float:
    per_minute_unfused = 60.0 * count / unfused_wall
    per_minute_fused = 60.0 * count / fused_wall
    ratio = per_minute_fused / per_minute_unfused
    print(f"[{name}] {count} trials ({statuses}), {groups}")
    print(f"  unfused: {unfused_wall:7.1f} s  {per_minute_unfused:8.1f} trials/min")
    print(f"  fused:   {fused_wall:7.1f} s  {per_minute_fused:8.1f} trials/min")
    print(f"  ratio fused/unfused: {ratio:5.2f}x")
    print(f"  points with the unfused status: {same[0]}/{count}, "
          f"and every epoch's loss within 1e-3: {same[1]}/{count} (float32)")
    return ratio


def sweep(space, fuse: int | None, max_concurrent: int, directory: Path) -> tuple[float, dict]:
    """One whole sweep through the driver on a fresh SQLite file: (wall seconds, records by point)."""
    from proxstudy.study.reader import load_records
    from proxstudy.study.runner import SweepOptions, run_sweep

    label = fuse or "auto"
    url = f"sqlite:///{directory / f'fuse-{label}.db'}"
    options = SweepOptions(storage=url, max_concurrent=max_concurrent, progress=False, device="cpu", fuse=fuse)
    started = time.perf_counter()
    summary = run_sweep(space, options)
    wall = time.perf_counter() - started
    return wall, {r.point_key: r for r in load_records(url, summary.study_name)}


def measure_driver(name: str, space, fuse: int | None, max_concurrent: int) -> float:
    """The grid through run_sweep unfused, then fused (see the module doc)."""
    from proxstudy.study.space import as_search_space
    from proxstudy.workers.fused_plan import plan_groups

    space = as_search_space(space)
    configs = space_configs(space)
    with tempfile.TemporaryDirectory(prefix="fused-bench-") as directory:
        unfused_wall, unfused = sweep(space, 1, max_concurrent, Path(directory))
        fused_wall, fused = sweep(space, fuse, max_concurrent, Path(directory))
    keys = sorted(unfused)
    same = agreement([(fused[k].status, fused[k].train_loss) for k in keys],
                     [(unfused[k].status, unfused[k].train_loss) for k in keys])
    sizes = sorted({len(g) for g in plan_groups(configs, fuse, "cpu")}, reverse=True)
    statuses = dict(Counter(r.status for r in unfused.values()))
    return report(name, len(keys), statuses, f"fused trials of K in {sizes}, {max_concurrent} at once",
                  unfused_wall, fused_wall, same)


def measure(name: str, configs: list, fuse: int | None, repeat: int) -> float:
    """Per fused group, interleaved: its members one at a time, then the group fused; the best
    of ``repeat`` rounds each (the machine is shared: the minimum is the least disturbed)."""
    from proxstudy.workers.data import load_dataset
    from proxstudy.workers.fused_training import run_fused_trials
    from proxstudy.workers.training import run_trial

    load_dataset(configs[0].dataset, "cpu")  # cached per process: load it outside both timings
    groups = fused_groups(configs, fuse)
    unfused_wall = fused_wall = 0.0
    fused: list = [None] * len(configs)
    unfused: list = [None] * len(configs)
    for group in groups:
        best_unfused = best_fused = math.inf
        for _ in range(repeat):
            started = time.perf_counter()
            outcomes = [run_trial(configs[i]) for i in group]
            best_unfused = min(best_unfused, time.perf_counter() - started)
            started = time.perf_counter()
            fused_outcomes = run_fused_trials([configs[i] for i in group])
            best_fused = min(best_fused, time.perf_counter() - started)
        unfused_wall += best_unfused
        fused_wall += best_fused
        for index, mine, theirs in zip(group, fused_outcomes, outcomes, strict=True):
            fused[index], unfused[index] = mine, theirs

    same = agreement([(o.status, [e["train_loss"] for e in o.history]) for o in fused],
                     [(o.status, [e["train_loss"] for e in o.history]) for o in unfused])
    sizes = sorted({len(g) for g in groups}, reverse=True)
    statuses = dict(Counter(o.status for o in unfused))
    return report(f"{name}, training loops only", len(configs), statuses,
                  f"{len(groups)} fused trials of K in {sizes}, best of {repeat}", unfused_wall, fused_wall, same)


def compare_vmap(members: int = 16, steps: int = 100) -> None:
    """Per-step time of the stacked MLP (bmm) vs torch.func.vmap over functional_call of the
    unfused model, gradient mode (vmap cannot batch the ProxProp layers' custom backward)."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    from proxstudy.workers.fused_models import stack_models
    from proxstudy.workers.models import build_model

    torch.manual_seed(0)
    models = [build_model({"name": "mlp", "hidden": [64, 64]}, (1, 8, 8), 10, "gradient", None)
              for _ in range(members)]
    x = torch.rand(members, 100, 1, 8, 8)
    y = torch.randint(0, 10, (members, 100))
    stacked = stack_models(models)

    def stacked_step():
        out = stacked(x)
        torch.nn.functional.cross_entropy(out.reshape(-1, 10), y.reshape(-1), reduction="none").reshape(
            members, -1).mean(dim=1).sum().backward()

    params, buffers = stack_module_state(models)
    base = models[0]

    def loss(p, b, xb, yb):
        return torch.nn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    per_member_grad = vmap(grad(loss), in_dims=(0, 0, 0, 0))

    def vmap_step():
        per_member_grad(params, buffers, x, y)

    for label, step in (("bmm stack", stacked_step), ("vmap", vmap_step)):
        for _ in range(10):
            step()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        print(f"  {label:10s} {1e3 * (time.perf_counter() - started) / steps:6.2f} ms per step (K={members})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=("demo", "paper", "both", "convnet"), default="both")
    parser.add_argument("--fuse", type=int, default=None, help="members per fused trial (default: auto)")
    parser.add_argument("--max-concurrent", type=int, default=2, help="trials at once (driver runs)")
    parser.add_argument("--core", action="store_true", help="the training loops alone, no Ray or storage")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (--core)")
    parser.add_argument("--paper-train", type=int, default=1000)
    parser.add_argument("--paper-epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per group; the best counts (--core)")
    parser.add_argument("--compare-vmap", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {'training loops' if args.core else 'whole sweeps (run_sweep)'}")
    if args.compare_vmap:
        compare_vmap()
        return 0
    grids = {"demo": DEMO_SPACE, "convnet": CONVNET_SPACE, "paper": paper_space(args.paper_train, args.paper_epochs)}
    names = {"both": ["demo", "paper"]}.get(args.grid, [args.grid])
    ratios = {}
    for name in names:
        if args.core:
            ratios[name] = measure(f"{name} grid", space_configs(grids[name]), args.fuse, args.repeat)
        else:
            ratios[name] = measure_driver(f"{name} grid", grids[name], args.fuse, args.max_concurrent)
    goals = {"demo": 5.0, "paper": 1.0}
    for name, ratio in ratios.items():
        if name in goals:
            verdict = "meets" if ratio >= goals[name] else "misses"
            print(f"{name}: {ratio:.2f}x {verdict} the goal of {goals[name]:g}x")
    return 0 if all(math.isfinite(r) for r in ratios.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
