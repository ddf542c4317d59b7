"""The paper's models for K fused members: one stacked network instead of K small ones.

Each member's initial weights are exactly its unfused trial's: workers.training.build_trial_model
builds the unfused model (the same function run_trial uses), and `stack_models`
copies the K models' parameters into stacked layers (proxprop/stacked.py).  Walking the built
modules (rather than re-describing the architectures) keeps the fused MLP, ConvNet and
autoencoder the same as the unfused ones by construction.

Why bmm / grouped convolution and not torch.func.vmap over functional_call: vmap cannot batch
the unfused ProxProp layers' custom autograd Functions (their backward makes data-dependent
solver choices and host-side early stops), and where it does apply, plain BackProp, it was
slower: a vmapped grad of the MLP [64, 64] on digits batches (K = 16, one thread) took
1.3-1.5x as long per step as the explicit bmm stack (2.3-2.7 vs 1.6-2.0 ms in two runs;
benchmarks/fused_sweep.py --compare-vmap).  So the stacked layers are explicit.

Layouts inside a StackedNet:
    input            (K, n, *input_shape) per member, or (n, *input_shape) shared (evaluation)
    linear stages    (K, n, features)
    conv stages      (n, K*channels, H, W): member k owns channels [k*C, (k+1)*C)
    output           (K, n, classes) or, for the autoencoder, (K, n, *input_shape)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from proxprop.stacked import StackedConv2d, StackedLinear
from proxstudy.workers.models import Autoencoder

__all__ = ["StackedNet", "stack_models"]


class _ToMembers(nn.Module):
    """nn.Flatten of the unfused models: any layout -> (K, n, features) (shared: (n, features))."""

    def forward(self, x: Tensor, members: int, shared: bool, grouped: bool) -> Tensor:
        if grouped:  # (n, K*C, H, W) -> (K, n, C*H*W), each member's features in (C, H, W) order
            n = x.shape[0]
            return x.reshape(n, members, -1).transpose(0, 1)
        return x.flatten(1) if shared else x.flatten(2)


def _stack_layer(modules: Sequence[nn.Module]) -> nn.Module:
    if len({type(module) for module in modules}) != 1:
        raise ValueError("stacked models need one architecture")
    first = modules[0]
    if isinstance(first, nn.Linear):
        return StackedLinear.from_layers(modules)
    if isinstance(first, nn.Conv2d):
        return StackedConv2d.from_layers(modules)
    if isinstance(first, nn.Flatten):
        return _ToMembers()
    if isinstance(first, (nn.ReLU, nn.Sigmoid, nn.MaxPool2d)):
        return first  # parameter-free and per channel: the same module serves every layout
    raise ValueError(f"no stacked form for {type(first).__name__}")


class StackedNet(nn.Module):
    """K members of one sequential model (workers/models.py), stacked; see the module doc."""

    def __init__(self, layers: Sequence[nn.Module], output_shape: tuple[int, ...] | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.output_shape = output_shape  # the autoencoder's reconstruction shape, else None

    @property
    def members(self) -> int:
        return self.stacked_layers[0].members

    @property
    def stacked_layers(self) -> list[StackedLinear | StackedConv2d]:
        """The layers with stacked parameters, in order."""
        return [layer for layer in self.layers if isinstance(layer, (StackedLinear, StackedConv2d))]

    def forward(self, x: Tensor, shared: bool = False) -> Tensor:
        """x: (K, n, *input_shape), or with shared=True (n, *input_shape) for every member."""
        members = self.members
        grouped = False
        for layer in self.layers:
            if isinstance(layer, StackedConv2d):
                if not grouped and not shared:  # (K, n, C, H, W) -> (n, K*C, H, W)
                    x = x.transpose(0, 1).reshape((x.shape[1], -1, *tuple(x.shape[3:])))
                x = layer(x, shared=shared)
                grouped, shared = True, False
            elif isinstance(layer, _ToMembers):
                x = layer(x, members, shared, grouped)
                grouped = False
            else:
                x = layer(x)
                shared = shared and not isinstance(layer, StackedLinear)
        if self.output_shape is not None:
            x = x.reshape(x.shape[:2] + self.output_shape)
        return x

    @torch.no_grad()
    def widest_activation(self, sample: Tensor) -> int:
        """The largest number of elements one sample's activation has after any layer, for all
        members together (sizes evaluation chunks); ``sample`` is one input (1, *input_shape)."""
        sizes: list[int] = []
        hooks = [layer.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel())) for layer in self.layers]
        try:
            self(sample, shared=True)
        finally:
            for hook in hooks:
                hook.remove()
        return max(sizes)

    def select_(self, index: Tensor) -> None:
        """Keep only the members at ``index``, in place; the parameters are new objects (give
        them to the optimizer again)."""
        for layer in self.stacked_layers:
            layer.select_(index)


def _sequential_of(model: nn.Module) -> tuple[nn.Sequential, tuple[int, ...] | None]:
    if isinstance(model, Autoencoder):
        return model.net, model.input_shape
    if isinstance(model, nn.Sequential):
        return model, None
    raise ValueError(f"no stacked form for {type(model).__name__}")


def stack_models(models: Sequence[nn.Module]) -> StackedNet:
    """One StackedNet whose member k has models[k]'s parameters (copied) and tau_prox.

    The models must share the architecture and layer mode (built by workers/models.py)."""
    if not models:
        raise ValueError("stack_models needs at least one model")
    sequences = [_sequential_of(model) for model in models]
    output_shapes = {shape for _, shape in sequences}
    lengths = {len(seq) for seq, _ in sequences}
    if len(output_shapes) != 1 or len(lengths) != 1:
        raise ValueError("stacked models need one architecture")
    layers = [_stack_layer([seq[i] for seq, _ in sequences]) for i in range(lengths.pop())]
    return StackedNet(layers, output_shapes.pop())
