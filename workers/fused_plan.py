"""Which trials can be fused, and how many members a fused trial should take.

Members of one fused trial share everything that fixes the computation's shapes and kind:
dataset, model, training schedule (epochs, batch size, evaluation chunk, drop_last), the mode
and its CG iterations, the optimizer's name and the device.  They differ in lr, tau_prox, seed,
the optimizer's fields, the objective, the divergence factor and the method label.

`default_fuse_size` picks K from the model's memory and the device:

    K = max(1, min(K_memory, max(K_compute, MIN_FUSE_SIZE[device]), max_size))
    K_memory  = floor(budget / bytes of one member)          budget: CUDA 80% of the free
                memory, CPU 25% of the available RAM (other trials and the data share it)
    K_compute = ceil(TARGET_FLOPS[device] / flops of one member's training step)

One member's bytes: parameters x (2 + optimizer state tensors) + the training step's saved
activations and their gradients (3 x batch x activation elements per sample) + the ProxProp
solver workspace (Gram matrix and CG vectors per ProxProp layer) + the evaluation chunk's
activations.  Fusing pays because a step has a fixed cost (Python, dispatch, kernel launches)
that K members share; once one fused step's arithmetic dwarfs that cost, a larger K only adds
memory.  TARGET_FLOPS is that point.  CPU: measured on this 2-core CPU with the digits MLP
(1e7 flops per member step), K = 14 and 28 ran about equally fast and K = 7 slower, so 2e8
(K = 20, grids cut evenly into groups of ~14).  GPU: ~0.5 ms of launch overhead per step at
tens of TFLOP/s, so 5e11.  MIN_FUSE_SIZE: on this shared CPU the paper's MLP ran at
0.91-1.05x of unfused with K = 1 and 0.77-1.16x with K = 3-6 (run-to-run noise ~10%; the low
figure while another benchmark ran): fusing a few members of a compute-bound model costs
nothing measurable, and in a sweep each fused trial saves K - 1 trial start-ups, so K >= 4
where memory allows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from proxstudy.workers.config import MODE_EXACT, MODE_GRADIENT, ConfigError, TrialConfig, dataset_input_shape
from proxstudy.workers.models import build_model

T = TypeVar("T")

__all__ = [
    "TARGET_FLOPS",
    "MemberCost",
    "check_fusable",
    "default_fuse_size",
    "fusion_key",
    "member_cost",
    "plan_groups",
    "split_evenly",
]

#: Fields every member of a fused trial shares (a trial config's top-level keys).
SHARED_FIELDS = ("dataset", "model", "mode", "cg_iterations", "device")
#: Training fields every member shares (divergence_factor may differ).
SHARED_TRAINING_FIELDS = ("epochs", "batch_size", "eval_batch_size", "drop_last")
#: Flops of one fused step beyond which a larger K buys nothing (see the module doc).
TARGET_FLOPS = {"cpu": 2.0e8, "cuda": 5.0e11}
#: Smallest K where memory allows (see the module doc).
MIN_FUSE_SIZE = {"cpu": 4, "cuda": 1}
#: Fractions of the free device memory / available RAM a fused trial may plan for.
MEMORY_FRACTION = {"cpu": 0.25, "cuda": 0.8}


def _shared_part(config: TrialConfig) -> dict:
    shared = {field: getattr(config, field) for field in SHARED_FIELDS}
    shared["training"] = {field: config.training.get(field) for field in SHARED_TRAINING_FIELDS}
    shared["optimizer"] = config.optimizer["name"]
    return shared


def fusion_key(config: TrialConfig) -> str:
    """A string equal for exactly the validated trial configs that can share a fused trial."""
    return json.dumps(_shared_part(config), sort_keys=True)


def check_fusable(configs: Sequence[TrialConfig]) -> None:
    """Raise ConfigError naming the first field in which a member differs from the first."""
    if not configs:
        raise ConfigError("<fused>", "", "a fused trial needs at least one member")
    first = _shared_part(configs[0])
    for index, config in enumerate(configs[1:], start=1):
        other = _shared_part(config)
        for field, value in first.items():
            if other[field] != value:
                raise ConfigError(
                    f"<fused member {index}>", field, f"differs from member 0 ({other[field]!r} vs {value!r}); "
                    "members of a fused trial must share it"
                )


@dataclass(frozen=True)
class MemberCost:
    """One member's share of a fused trial."""

    bytes: float  # peak memory
    flops_per_step: float  # one training step (forward, backward, ProxProp solves)


def _optimizer_states(optimizer: Mapping) -> int:
    if optimizer["name"] == "adam":
        return 3 if optimizer.get("amsgrad") else 2
    return 1 if optimizer.get("momentum", 0.0) else 0


def _layer_shapes(model: nn.Module, batch: int, input_shape: tuple[int, ...]) -> list[tuple[nn.Module, tuple, tuple]]:
    """(module, input shape, output shape) of every leaf module: worked out from the modules
    of a chain of known layers (the project's models), else from a forward on 'meta' (the first
    such forward imports torch's decompositions: 1.4 s of the driver's start on this CPU)."""
    shapes = _chain_shapes(model, (batch, *input_shape))
    return shapes if shapes is not None else _meta_shapes(model, batch, input_shape)


_ELEMENTWISE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Identity)


def _leaf_output(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The output shape of a known leaf module on inputs of ``shape``, else None."""
    if isinstance(module, _ELEMENTWISE):
        return shape
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return (shape[0], math.prod(shape[1:]))
    if isinstance(module, nn.Linear) and len(shape) == 2 and shape[1] == module.in_features:
        return (shape[0], module.out_features)
    if isinstance(module, nn.Conv2d) and len(shape) == 4 and isinstance(module.padding, tuple):
        sizes = _window_sizes(shape[2:], module.kernel_size, module.stride, module.padding, module.dilation)
        return (shape[0], module.out_channels, *sizes)
    if isinstance(module, nn.MaxPool2d) and len(shape) == 4 and not module.ceil_mode:
        stride = module.stride if module.stride is not None else module.kernel_size
        sizes = _window_sizes(shape[2:], _pair(module.kernel_size), _pair(stride), _pair(module.padding),
                              _pair(module.dilation))
        return (*shape[:2], *sizes)
    return None


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    """A pooling layer's int-or-tuple field as a (height, width) pair."""
    return value if isinstance(value, tuple) else (value, value)


def _window_sizes(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                  dilation: Sequence[int]) -> tuple[int, ...]:
    """Output sizes of a sliding window (convolution, pooling) as torch computes them."""
    return tuple(
        (size + 2 * pad - dil * (k - 1) - 1) // step + 1
        for size, k, step, pad, dil in zip(sizes, kernel, stride, padding, dilation, strict=True)
    )


def _chain_shapes(model: nn.Module, shape: tuple[int, ...]) -> list[tuple[nn.Module, tuple, tuple]] | None:
    """The leaf modules' shapes of a model whose leaves run one after the other (nn.Sequential
    chains, the autoencoder's net), or None where any leaf is not a known layer."""
    seen: list[tuple[nn.Module, tuple, tuple]] = []
    for module in model.modules():
        if list(module.children()):
            if not isinstance(module, nn.Sequential) and len(list(module.children())) > 1:
                return None  # a container whose forward order is not its modules' order
            continue
        out = _leaf_output(module, shape)
        if out is None:
            return None
        seen.append((module, shape, out))
        shape = out
    return seen


def _meta_shapes(model: nn.Module, batch: int, input_shape: tuple[int, ...]) -> list[tuple[nn.Module, tuple, tuple]]:
    """(module, input shape, output shape) of every leaf module, from a forward on 'meta'."""
    seen: list[tuple[nn.Module, tuple, tuple]] = []
    hooks = [
        module.register_forward_hook(lambda m, inp, out: seen.append((m, tuple(inp[0].shape), tuple(out.shape))))
        for module in model.modules()
        if not list(module.children())
    ]
    with torch.no_grad():
        model(torch.empty((batch, *input_shape), device="meta"))
    for hook in hooks:
        hook.remove()
    return seen


def member_cost(config: TrialConfig) -> MemberCost:
    """Memory and flops of one member of a validated trial config (no data is loaded)."""
    input_shape = tuple(dataset_input_shape(config.dataset))
    num_classes = int(config.dataset.get("num_classes", 10))
    batch = config.training["batch_size"]
    chunk = config.training["eval_batch_size"]
    with torch.device("meta"):
        model = build_model(config.model, input_shape, num_classes, "gradient", None)
    params = sum(p.numel() for p in model.parameters())
    prox = config.mode != MODE_GRADIENT
    iterations = config.cg_iterations or 1
    activations = flops = workspace = 0.0
    for module, _in_shape, out_shape in _layer_shapes(model, batch, input_shape):
        out_per_sample = math.prod(out_shape[1:])
        activations += out_per_sample
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        macs = module.weight.numel() * (out_per_sample // module.weight.shape[0])
        flops += 6.0 * batch * macs  # forward, input gradient, weight gradient
        if prox and type(module) is not nn.Linear:  # the ProxProp layers (the head is plain)
            rows = batch * (out_per_sample // module.weight.shape[0])  # samples x positions
            p = module.weight[0].numel() + 1
            size = min(rows, p) if isinstance(module, nn.Linear) else p
            gram_flops = 2.0 * rows * size * p
            solve = size**3 / 3.0 if config.mode == MODE_EXACT else 0.0
            flops += gram_flops + solve + 2.0 * iterations * size * size * module.weight.shape[0]
            workspace = max(workspace, size * size + 6.0 * module.weight.shape[0] * size)
    element = torch.finfo(torch.get_default_dtype()).bits // 8
    train = 3.0 * batch * activations + workspace
    evaluate = 2.0 * chunk * activations
    total = params * (2 + _optimizer_states(config.optimizer)) + max(train, evaluate)
    return MemberCost(bytes=total * element, flops_per_step=flops)


def _memory_budget(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return MEMORY_FRACTION["cuda"] * free
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 8 GiB
        available = 8 * 2**30
    return MEMORY_FRACTION["cpu"] * available


def default_fuse_size(
    config: TrialConfig, device: str | torch.device = "cpu", *, max_size: int = 32, memory_budget: float | None = None
) -> int:
    """K for fused trials of a validated trial config on ``device`` (see the module doc)."""
    device = torch.device(device)
    cost = member_cost(config)
    budget = _memory_budget(device) if memory_budget is None else memory_budget
    k_memory = int(budget // max(cost.bytes, 1.0))
    kind = "cuda" if device.type == "cuda" else "cpu"
    k_compute = max(math.ceil(TARGET_FLOPS[kind] / max(cost.flops_per_step, 1.0)), MIN_FUSE_SIZE[kind])
    return max(1, min(k_memory, k_compute, max_size))


def plan_groups(
    configs: Sequence[TrialConfig], fuse: int | None = None, device: str | torch.device = "cpu", *, max_size: int = 32
) -> list[list[int]]:
    """Indices of validated trial configs grouped into fused trials: by fusion key (keys in
    order of first appearance, members in their order), each key's n members cut into
    ceil(n / K) groups of as equal sizes as possible, K = ``fuse`` or default_fuse_size."""
    by_key: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        by_key.setdefault(fusion_key(config), []).append(index)
    groups = []
    for members in by_key.values():
        size = fuse or default_fuse_size(configs[members[0]], device, max_size=max_size)
        groups.extend(split_evenly(members, -(-len(members) // max(1, size))))
    return groups


def split_evenly(items: Sequence[T], count: int) -> list[list[T]]:
    """``items`` in order, cut into ``count`` runs whose lengths differ by at most one."""
    base, extra = divmod(len(items), count)
    runs, start = [], 0
    for position in range(count):
        stop = start + base + (1 if position < extra else 0)
        runs.append(list(items[start:stop]))
        start = stop
    return runs
