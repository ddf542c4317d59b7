"""Time one training step (forward + backward + optimizer step) of the paper's models.

ProxProp layers in every optimization mode are timed against plain PyTorch BackProp
(nn.Linear / nn.Conv2d) measured in the same run: every round runs BackProp, variant,
BackProp, variant, ..., BackProp (the variants' order rotates every round), and each
variant's ratio is its time over the mean of the two BackProp timings around it, so load
from other processes affects both sides alike.  The table reports median ms/step and the
median (and min-max) over rounds of the ratios.

Memory: the peak of one training step (after warm-up) relative to BackProp's, counting every
tensor: the model's parameters, gradients, optimizer state and batch alive at the step's
start, plus the highest level that the step's own allocations reach.  On CUDA that is
torch.cuda.max_memory_allocated.  On the CPU torch keeps no allocator statistics and
tracemalloc does not see torch's allocations (c10 allocates with posix_memalign, outside
Python's allocator), so the step runs once under torch.profiler with profile_memory=True,
whose allocation events (size, +/-) come from the allocator itself; their running sum in time
order gives the step's own peak.

    python benchmarks/proxprop_step.py                  # both models, batch 500, CPU
    python benchmarks/proxprop_step.py --quick          # fewer rounds, for a smoke run
    python benchmarks/proxprop_step.py --device cuda --repeats 9
    python benchmarks/proxprop_step.py --baseline /tmp/old   # also time /tmp/old/proxprop's
                                       # layers in the same rounds (rows "MODE@baseline")
    python benchmarks/proxprop_step.py --threads 1 --clock cpu   # CPU time of the one thread

Clocks: "wall" (default) is what a user waits; on a CPU shared with other processes it
includes the time the step's threads spend descheduled, which varied 10x between runs on this
machine.  "cpu" (only with --threads 1) counts the CPU time of the thread running the step
(time.thread_time), which other processes barely change: the work the step does.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import proxprop

MODES = ["gradient", "prox_cg1", "prox_cg3", "prox_cg10", "prox_exact"]


def load_baseline(root: str):
    """The proxprop package under ``root`` (e.g. an older checkout), as another module."""
    init = Path(root) / "proxprop" / "__init__.py"
    spec = importlib.util.spec_from_file_location("proxprop_baseline", init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["proxprop_baseline"] = module
    spec.loader.exec_module(module)
    return module


def mlp(mode: str | None, package=proxprop) -> nn.Module:
    """3072-4000-1000-4000-10, ReLU; ProxProp hidden layers (tau 0.05), plain last layer."""
    def lin(i: int, o: int) -> nn.Module:
        if mode is None:
            return nn.Linear(i, o)
        return package.ProxPropLinear(i, o, tau_prox=0.05, optimization_mode=mode)

    return nn.Sequential(
        nn.Flatten(), lin(3072, 4000), nn.ReLU(), lin(4000, 1000), nn.ReLU(), lin(1000, 4000),
        nn.ReLU(), nn.Linear(4000, 10),
    )


def convnet(mode: str | None, package=proxprop) -> nn.Module:
    """conv5x5(16) ReLU pool, conv5x5(20) ReLU pool, conv5x5(20) ReLU, Linear(1280, 10)."""
    def conv(i: int, o: int) -> nn.Module:
        if mode is None:
            return nn.Conv2d(i, o, 5, padding=2)
        return package.ProxPropConv2d(i, o, 5, padding=2, tau_prox=1.0, optimization_mode=mode)

    return nn.Sequential(
        conv(3, 16), nn.ReLU(), nn.MaxPool2d(2), conv(16, 20), nn.ReLU(), nn.MaxPool2d(2),
        conv(20, 20), nn.ReLU(), nn.Flatten(), nn.Linear(20 * 8 * 8, 10),
    )


def make_step(arch: str, mode: str | None, x: torch.Tensor, y: torch.Tensor,
              package=proxprop) -> tuple[Callable[[], None], Callable[[], int]]:
    """The training step and a function returning the bytes alive between steps."""
    torch.manual_seed(0)
    model = (mlp if arch == "mlp" else convnet)(mode, package).to(x.device)
    if arch == "mlp":
        lr = 0.05 if mode in (None, "gradient") else 1.0
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.95, nesterov=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    def resident() -> int:
        tensors = [x, y, *model.parameters(), *model.buffers()]
        tensors += [p.grad for p in model.parameters() if p.grad is not None]
        tensors += [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t)]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())

    return step, resident


def step_peak_bytes(step: Callable[[], None], resident: Callable[[], int], device: torch.device) -> int:
    """Peak bytes of tensors alive during one step (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    before = resident()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = []

    def walk(node) -> None:
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    level = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):
        level += size
        peak = max(peak, level)
    return before + peak


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], steps: int, device: torch.device,
               clock: Callable[[], float] = time.perf_counter) -> float:
    sync(device)
    start = clock()
    for _ in range(steps):
        step()
    sync(device)
    return (clock() - start) / steps * 1e3


Row = tuple[str, float, list[float], float]  # variant, median ms, ratios per round, memory ratio


def bench(arch: str, modes: list[str], args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    variants = {"backprop": make_step(arch, None, x, y)}
    variants.update({mode: make_step(arch, mode, x, y) for mode in modes})
    if args.baseline:
        baseline = load_baseline(args.baseline)
        variants.update({f"{mode}@baseline": make_step(arch, mode, x, y, baseline) for mode in modes})
    timed = [name for name in variants if name != "backprop"]
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    for step, _ in variants.values():  # warm-up
        for _ in range(args.warmup):
            step()
    sync(device)
    peak = {name: step_peak_bytes(step, resident, device) for name, (step, resident) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.repeats):
        shift = round_index % len(timed)
        order = timed[shift:] + timed[:shift]
        backprop = [time_steps(variants["backprop"][0], args.steps, device, clock)]
        for name in order:
            times[name].append(time_steps(variants[name][0], args.steps, device, clock))
            backprop.append(time_steps(variants["backprop"][0], args.steps, device, clock))
            ratios[name].append(times[name][-1] / ((backprop[-2] + backprop[-1]) / 2))
        times["backprop"].append(statistics.median(backprop))
        ratios["backprop"].append(1.0)
    return [
        (name, statistics.median(times[name]), ratios[name], peak[name] / peak["backprop"])
        for name in variants
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (median)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--arch", choices=["mlp", "convnet", "both"], default="both")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    parser.add_argument("--baseline", default="", help="a folder holding another proxprop/ to time alongside")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 step, 1 warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or the step thread's CPU time (needs --threads 1 on the CPU)")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and (args.threads != 1 or args.device != "cpu"):
        print("proxprop_step.py: --clock: 'cpu' needs --threads 1 and --device cpu", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.steps, args.warmup = 3, 1, 1
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    archs = ["mlp", "convnet"] if args.arch == "both" else [args.arch]
    print(f"device={args.device} batch={args.batch} rounds={args.repeats} steps/round={args.steps} "
          f"threads={torch.get_num_threads()} clock={args.clock} torch={torch.__version__}")
    print(f"{'model':<8} {'variant':<20} {'ms/step':>9} {'x BackProp':>11} {'(min-max)':>11} {'memory x':>9}")
    for arch in archs:
        for name, ms, ratios, memory in bench(arch, modes, args):
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(f"{arch:<8} {name:<20} {ms:>9.1f} {statistics.median(ratios):>11.2f} {spread:>11} "
                  f"{memory:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
