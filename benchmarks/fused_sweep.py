"""Fused vs unfused training of one grid, in one process: trials per minute and their ratio.

Phase 1 measures the training core alone (no Ray, no storage): the same trial configs are run
one at a time with workers.training.run_trial (today's trial, minus the sweep around it) and
grouped into fused trials of K members with workers.fused_training.run_fused_trials.  Members
are grouped by fused_plan.plan_groups: by fusion key (same mode, CG iterations, optimizer) in
grid order, cut into groups of at most K (``--fuse K``; default fused_plan.default_fuse_size).

Grids:
  demo   the grid of search_spaces/digits-table1-quick.yaml, as the file says (model, epochs,
         batch size, methods, seeds): the make-demo sweep's trials.
  convnet  (extra) the grid of search_spaces/digits-convnet-quick.yaml (digits ConvNet).
  paper  the paper's MLP 3072-4000-1000-4000-10 at batch 500 on synthetic CIFAR-shaped data
         (3x32x32, 10 classes), reduced to fit a 2-core CPU: --paper-train training samples
         (default 1000: two mini-batches) and 200 validation samples, --paper-epochs epochs
         (default 1), a 3 lr x 2 tau_prox grid of ProxProp cg3 (Nesterov SGD 0.95).

Both runs use the same torch thread count (--threads, default 1: one CPU per trial, as the
sweep's default).  The script also checks that each fused member ended like its unfused trial
(status, final training loss to float32 rounding) and prints how many did.

    .venv/bin/python benchmarks/fused_sweep.py [--grid demo|paper|both|convnet] [--fuse K] [--repeat N]
    .venv/bin/python benchmarks/fused_sweep.py --compare-vmap     # the bmm-vs-vmap choice
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO_SPACE = ROOT / "search_spaces" / "digits-table1-quick.yaml"
CONVNET_SPACE = ROOT / "search_spaces" / "digits-convnet-quick.yaml"


def space_configs(path: Path = DEMO_SPACE) -> list:
    """Every grid point of a search space as a trial config on the CPU."""
    from proxstudy.study.space import grid_points, load_space, trial_config

    space = load_space(path)
    return [trial_config(space, p.method, p.params, p.seed, device="cpu") for p in grid_points(space)]


def paper_configs(train: int, epochs: int) -> list:
    from proxstudy.workers.config import validate_trial_config

    base = {
        "dataset": {"name": "synthetic", "input_shape": [3, 32, 32], "num_classes": 10,
                    "n_train": train, "n_val": 200},
        "model": {"name": "mlp", "hidden": [4000, 1000, 4000]},
        "training": {"epochs": epochs, "batch_size": 500},
        "objective": "train_loss",
        "method": "proxprop-cg3",
        "mode": "prox_cg",
        "cg_iterations": 3,
        "optimizer": {"name": "sgd", "momentum": 0.95, "nesterov": True},
        "device": "cpu",
    }
    return [
        validate_trial_config({**base, "lr": lr, "tau_prox": tau, "seed": 0}, "<bench>")
        for lr in (0.3, 1.0, 3.0)
        for tau in (0.05, 0.5)
    ]


def fused_groups(configs: list, fuse: int | None) -> list[list[int]]:
    from proxstudy.workers.fused_plan import plan_groups

    return plan_groups(configs, fuse, "cpu")


def agreement(fused, unfused) -> tuple[int, int]:
    """(members whose status equals their unfused trial's, members whose every recorded
    training loss also agrees to 1e-3 relative).  In float32 a fused member is not bit-equal to
    its unfused trial (batched products round differently); at unstable learning rates such
    differences grow, as with any change of BLAS or thread count (float64 equality is tested in
    tests/workers/test_fused_training.py)."""
    same_status = same_curve = 0
    for mine, theirs in zip(fused, unfused, strict=True):
        if mine.status != theirs.status:
            continue
        same_status += 1
        pairs = [(a["train_loss"], b["train_loss"]) for a, b in zip(mine.history, theirs.history, strict=False)]
        if len(mine.history) == len(theirs.history) and all(
            (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-3 * abs(b))
            for a, b in pairs
        ):
            same_curve += 1
    return same_status, same_curve


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

    per_minute_unfused = 60.0 * len(configs) / unfused_wall
    per_minute_fused = 60.0 * len(configs) / fused_wall
    ratio = per_minute_fused / per_minute_unfused
    same_status, same_curve = agreement(fused, unfused)
    sizes = sorted({len(g) for g in groups}, reverse=True)
    statuses = {s: sum(o.status == s for o in unfused) for s in ("completed", "diverged", "failed")}
    print(f"[{name}] {len(configs)} trials ({statuses}), {len(groups)} fused trials of K in {sizes}, "
          f"best of {repeat}")
    print(f"  unfused, one at a time: {unfused_wall:7.1f} s  {per_minute_unfused:8.1f} trials/min")
    print(f"  fused:                  {fused_wall:7.1f} s  {per_minute_fused:8.1f} trials/min")
    print(f"  ratio fused/unfused:    {ratio:7.2f}x")
    print(f"  members with the unfused status: {same_status}/{len(configs)}, "
          f"and every epoch's loss within 1e-3: {same_curve}/{len(configs)} (float32)")
    return ratio


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
    parser.add_argument("--fuse", type=int, default=None, help="members per fused trial (default: the rule)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paper-train", type=int, default=1000)
    parser.add_argument("--paper-epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per group; the best counts")
    parser.add_argument("--compare-vmap", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    if args.compare_vmap:
        compare_vmap()
        return 0
    ratios = {}
    if args.grid in ("demo", "both"):
        ratios["demo"] = measure("demo grid, digits", space_configs(DEMO_SPACE), args.fuse, args.repeat)
    if args.grid == "convnet":
        measure("convnet grid, digits", space_configs(CONVNET_SPACE), args.fuse, args.repeat)
    if args.grid in ("paper", "both"):
        configs = paper_configs(args.paper_train, args.paper_epochs)
        ratios["paper"] = measure("paper MLP, synthetic CIFAR-shaped", configs, args.fuse, args.repeat)
    goals = {"demo": 5.0, "paper": 1.0}
    for name, ratio in ratios.items():
        verdict = "meets" if ratio >= goals[name] else "misses"
        print(f"{name}: {ratio:.2f}x {verdict} the goal of {goals[name]:g}x")
    return 0 if all(math.isfinite(r) for r in ratios.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
