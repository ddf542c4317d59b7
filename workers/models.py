"""The paper's models, built with ProxProp layers in every hidden linear part.

The last (output) layer is a plain nn.Linear, as in the paper: ProxProp replaces the explicit
step only where a layer feeds a nonlinearity. Mode "gradient" gives the BackProp baseline on the
identical architecture (same layers, same initialisation for the same seed).

Models take inputs of shape (N, *input_shape); the MLP and the autoencoder flatten inside, so
one data set serves every model.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import nn

from proxprop import ProxPropConv2d, ProxPropLinear

__all__ = ["Autoencoder", "build_model"]


def _mlp(spec: Mapping, input_shape: tuple[int, ...], num_classes: int, mode: str, tau: float) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(input_shape)
    for hidden in spec["hidden"]:
        layers += [ProxPropLinear(width, hidden, tau_prox=tau, optimization_mode=mode), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _convnet(spec: Mapping, input_shape: tuple[int, ...], num_classes: int, mode: str, tau: float) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"convnet needs (channels, height, width) inputs, got {input_shape}")
    channels, height, width = input_shape
    kernel = spec["kernel_size"]
    layers: list[nn.Module] = []
    for index, out_channels in enumerate(spec["channels"]):
        layers += [
            ProxPropConv2d(channels, out_channels, kernel, padding=kernel // 2, tau_prox=tau, optimization_mode=mode),
            nn.ReLU(),
        ]
        if index < 2:  # the paper pools after the first two convolutions
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out_channels
    if height < 1 or width < 1:
        raise ValueError(f"convnet pools {input_shape} inputs down to nothing")
    layers += [nn.Flatten(), nn.Linear(channels * height * width, num_classes)]
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """Fully connected autoencoder: ProxProp encoder and decoder hidden layers, a plain output
    layer; returns reconstructions in the input's shape (trained with MSE)."""

    def __init__(self, spec: Mapping, input_shape: tuple[int, ...], mode: str, tau: float) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        features = _numel(input_shape)
        sizes = [features, *list(spec["hidden"]), *list(reversed(spec["hidden"][:-1]))]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [ProxPropLinear(fan_in, fan_out, tau_prox=tau, optimization_mode=mode), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], features))
        if spec["output"] == "sigmoid":  # inputs are scaled to [0, 1]
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape((x.shape[0], *self.input_shape))


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def build_model(
    model_spec: Mapping,
    input_shape: tuple[int, ...],
    num_classes: int,
    layer_mode: str,
    tau_prox: float | None,
) -> nn.Module:
    """The model a validated spec (``TrialConfig.model``, or ``validate_model_spec``'s result)
    names, for inputs of `input_shape`; hidden layers use ProxProp with `layer_mode`
    ("gradient" | "prox_exact" | "prox_cgN") and `tau_prox` (unused, and may be None, in
    gradient mode)."""
    spec = model_spec
    tau = 1.0 if tau_prox is None else float(tau_prox)
    input_shape = tuple(int(s) for s in input_shape)
    if spec["name"] == "autoencoder":
        return Autoencoder(spec, input_shape, layer_mode, tau)
    if num_classes < 2:
        raise ValueError(f"{spec['name']} is a classifier and needs num_classes >= 2, got {num_classes}")
    if spec["name"] == "mlp":
        return _mlp(spec, input_shape, num_classes, layer_mode, tau)
    return _convnet(spec, input_shape, num_classes, layer_mode, tau)
