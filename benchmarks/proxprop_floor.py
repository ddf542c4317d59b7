"""The cost floor of a ProxProp step: what the direction's unavoidable operations cost alone.

proxprop_step.py times whole training steps.  This script times, next to the same BackProp
step, only the operations that each way of computing the exact direction cannot skip, on
the layers' real inputs and output gradients (captured from the BackProp step), and reports
1 + (their sum over the ProxProp layers) / (BackProp step): no implementation of that way can
be cheaper than this ratio on this machine (its own small work, copies and page faults come
on top).  Ways (ALGORITHM.md section 4; solvers.py, conv.py):

  linear layers (dual form, n = batch rows, k inputs, m outputs, K = A A^T):
    eigenbasis (any N, the "spectral" and "moments" strategies):
        K (upper triangle) + eigh(K) + coefficients g^T U (m n^2)
        + the result's extra product min(U^T A: n^2 k, c U^T: m n^2)
    direct CG (N iterations): K + N products with K (m n^2 each); the result g'^T A is
        BackProp's own weight-gradient product
    exact: K + Cholesky + inverse + min(n^2 k, m n^2)
  convolutions (primal form, p = C k_h k_w + 1):
    cgN: min(A^T A by gram.conv2d_gram, matrix-free CG's N extra forward convolutions and
        N - 1 weight gradients) per layer (the p x p solves for m <= 20 channels cost well
        under a millisecond)
    exact: A^T A and its Cholesky factor

    python benchmarks/proxprop_floor.py                 # both models, batch 500, one thread
    python benchmarks/proxprop_floor.py --arch mlp --repeats 9

Times are the CPU time of the one thread (time.thread_time), median over rounds; each
round times BackProp, then every operation, then BackProp again.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxprop_step import convnet, make_step, mlp

from proxprop.gram import conv2d_gram, row_gram

ITERATIONS = (1, 3, 10)
TAU = {"mlp": 0.05, "convnet": 1.0}  # proxprop_step.py's settings


def captured_layers(arch: str, x: Tensor, y: Tensor) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """(layer, input, output gradient) of every layer that ProxProp replaces (all but the
    last Linear), from one forward and backward pass of the benchmark's BackProp model."""
    torch.manual_seed(0)
    model = (mlp if arch == "mlp" else convnet)(None)
    layers = [mod for mod in model if isinstance(mod, nn.Linear | nn.Conv2d)][:-1]
    found: dict[nn.Module, list[Tensor]] = {layer: [] for layer in layers}

    def keep(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        found[mod].append(inp[0].detach())
        out.register_hook(lambda grad: found[mod].append(grad.detach()))

    for layer in layers:
        layer.register_forward_hook(keep)
    nn.CrossEntropyLoss()(model(x), y).backward()
    return [(layer, *found[layer]) for layer in layers]


def linear_operations(a: Tensor, g: Tensor, tau: float) -> dict[str, Callable[[], object]]:
    """The unavoidable operations of one linear layer's direction (module docstring), formed
    as linear.py's dual form does (the bias column adds 1 to every Gram entry)."""
    n = a.shape[0]

    def dual_gram() -> Tensor:
        gram = row_gram(a)
        gram += 1.0
        return gram

    gram = dual_gram()
    evecs = torch.linalg.eigh(gram)[1]
    coeffs = g.T @ evecs
    shifted = gram + torch.eye(n) / tau
    factor = torch.linalg.cholesky(shifted)
    return {
        "gram": dual_gram,
        "eigh": lambda: torch.linalg.eigh(gram),
        "coefficients": lambda: g.T @ evecs,
        "result U^T A": lambda: evecs.T @ a,
        "result c U^T": lambda: coeffs @ evecs.T,
        "K product": lambda: g.T @ gram,
        "cholesky": lambda: torch.linalg.cholesky(shifted),
        "inverse": lambda: torch.cholesky_inverse(factor),
    }


def conv_operations(layer: nn.Conv2d, x: Tensor, g: Tensor) -> dict[str, Callable[[], object]]:
    shifted = torch.eye(layer.weight[0].numel() + 1)
    args = (layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    weight = layer.weight.detach()

    def weight_gradient() -> object:
        return torch.ops.aten.convolution_backward(
            g, x, weight, [weight.shape[0]], list(layer.stride), list(layer.padding),
            list(layer.dilation), False, [0, 0], 1, [False, True, True])

    return {
        "gram": lambda: conv2d_gram(x, *args, True),
        "extra conv": lambda: F.conv2d(x, weight, None, layer.stride, layer.padding),
        "weight gradient": weight_gradient,
        "cholesky": lambda: torch.linalg.cholesky(shifted),
    }


def floors(arch: str, op_ms: list[dict[str, float]]) -> dict[str, tuple[float, str]]:
    """Per mode: (floor in ms over all layers, the way that attains it per layer)."""
    out: dict[str, tuple[float, str]] = {}
    for mode in [f"prox_cg{n}" for n in ITERATIONS] + ["prox_exact"]:
        total, ways = 0.0, []
        for ops in op_ms:
            if arch == "mlp":
                result = min(ops["result U^T A"], ops["result c U^T"])
                if mode == "prox_exact":
                    options = {"exact": ops["gram"] + ops["cholesky"] + ops["inverse"] + result}
                else:
                    iterations = int(mode.removeprefix("prox_cg"))
                    options = {
                        "eigen": ops["gram"] + ops["eigh"] + ops["coefficients"] + result,
                        "direct": ops["gram"] + iterations * ops["K product"],
                    }
            elif mode == "prox_exact":
                options = {"gram": ops["gram"] + ops["cholesky"]}
            else:
                iterations = int(mode.removeprefix("prox_cg"))
                options = {
                    "gram": ops["gram"],
                    "conv": iterations * ops["extra conv"] + (iterations - 1) * ops["weight gradient"],
                }
            way = min(options, key=options.__getitem__)
            total += options[way]
            ways.append(way)
        out[mode] = (total, "/".join(ways))
    return out


def run(arch: str, args: argparse.Namespace) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    step, _ = make_step(arch, None, x, y)
    layers = captured_layers(arch, x, y)
    if arch == "mlp":
        ops = [linear_operations(inp.flatten(1), grad, TAU[arch]) for _, inp, grad in layers]
    else:
        ops = [conv_operations(layer, inp, grad) for layer, inp, grad in layers]
    for fn in [step] + [f for layer_ops in ops for f in layer_ops.values()]:
        fn()  # warm-up
    backprop: list[float] = []
    samples: list[dict[str, list[float]]] = [{name: [] for name in layer_ops} for layer_ops in ops]

    def timed(fn: Callable[[], object]) -> float:
        start = time.thread_time()
        fn()
        return (time.thread_time() - start) * 1e3

    for _ in range(args.repeats):
        backprop.append(timed(step))
        for layer_ops, layer_samples in zip(ops, samples, strict=True):
            for name, fn in layer_ops.items():
                layer_samples[name].append(timed(fn))
        backprop.append(timed(step))
    bp = statistics.median(backprop)
    op_ms = [{name: statistics.median(v) for name, v in layer.items()} for layer in samples]
    print(f"{arch}: BackProp step {bp:.1f} ms; per layer (ms):")
    for (layer, inp, _), layer_ms in zip(layers, op_ms, strict=True):
        cells = ", ".join(f"{name} {ms:.1f}" for name, ms in layer_ms.items())
        print(f"  {layer.__class__.__name__}{tuple(inp.shape[1:])}: {cells}")
    for mode, (total, ways) in floors(arch, op_ms).items():
        print(f"  {mode:<11} floor {1 + total / bp:.3f} x BackProp  ({total:.1f} ms; {ways})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["mlp", "convnet", "both"], default="both")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7, help="rounds (median)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"batch={args.batch} rounds={args.repeats} threads=1 clock=cpu torch={torch.__version__}")
    for arch in ["mlp", "convnet"] if args.arch == "both" else [args.arch]:
        run(arch, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
