"""The paper's models: output shapes per input shape, ProxProp in hidden layers only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from proxprop import ProxPropConv2d, ProxPropLinear
from proxstudy.workers.config import validate_model_spec
from proxstudy.workers.models import build_model


def _spec(spec: dict) -> dict:
    """build_model takes a validated spec, as a trial config holds it."""
    return validate_model_spec(spec, "<test>")


def _proxprop_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (ProxPropLinear, ProxPropConv2d))]


def _last_affine(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (20,), (3, 32, 32)])
def test_mlp_shapes_and_layers(input_shape):
    model = build_model(_spec({"name": "mlp", "hidden": [12, 7]}), input_shape, 10, "prox_cg3", 0.05)
    out = model(torch.rand((5, *input_shape)))
    assert out.shape == (5, 10)
    hidden = _proxprop_layers(model)
    features = 1
    for size in input_shape:
        features *= size
    assert [(m.in_features, m.out_features) for m in hidden] == [(features, 12), (12, 7)]
    assert all(m.optimization_mode == "prox_cg3" and m.tau_prox == 0.05 for m in hidden)
    last = _last_affine(model)
    assert type(last) is nn.Linear and (last.in_features, last.out_features) == (7, 10)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2


@pytest.mark.parametrize(
    "input_shape, head_in",
    [((1, 8, 8), 20 * 2 * 2), ((1, 16, 16), 20 * 4 * 4), ((3, 32, 32), 20 * 8 * 8)],
)
def test_convnet_is_the_papers(input_shape, head_in):
    model = build_model(_spec({"name": "convnet"}), input_shape, 10, "prox_exact", 1.0)
    assert model(torch.rand((3, *input_shape))).shape == (3, 10)
    convs = _proxprop_layers(model)
    assert [type(m) for m in convs] == [ProxPropConv2d] * 3
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.padding) for m in convs] == [
        (input_shape[0], 16, (5, 5), (2, 2)),
        (16, 20, (5, 5), (2, 2)),
        (20, 20, (5, 5), (2, 2)),
    ]
    assert all(m.optimization_mode == "prox_exact" for m in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    last = _last_affine(model)
    assert type(last) is nn.Linear and last.in_features == head_in


def test_gradient_mode_is_backprop_on_the_same_model():
    torch.manual_seed(0)
    prox = build_model(_spec({"name": "mlp", "hidden": [9]}), (4,), 3, "prox_cg1", 0.5)
    torch.manual_seed(0)
    plain = build_model(_spec({"name": "mlp", "hidden": [9]}), (4,), 3, "gradient", None)
    assert all(m.optimization_mode == "gradient" for m in _proxprop_layers(plain))
    for a, b in zip(prox.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # identical architecture and initialisation


def test_autoencoder_reconstructs_input_shape():
    model = build_model(_spec({"name": "autoencoder", "hidden": [32, 8]}), (1, 16, 16), 0, "prox_cg3", 0.1)
    x = torch.rand(4, 1, 16, 16)
    out = model(x).detach()
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    sizes = [(m.in_features, m.out_features) for m in _proxprop_layers(model)]
    assert sizes == [(256, 32), (32, 8), (8, 32)]
    last = _last_affine(model)
    assert type(last) is nn.Linear and (last.in_features, last.out_features) == (32, 256)


def test_prox_directions_reach_hidden_layers():
    """One backward pass fills .grad of every parameter (ProxProp layers included)."""
    model = build_model(_spec({"name": "convnet", "channels": [4, 4, 4]}), (1, 8, 8), 10, "prox_cg2", 1.0)
    loss = nn.functional.cross_entropy(model(torch.rand(6, 1, 8, 8)), torch.arange(6))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
