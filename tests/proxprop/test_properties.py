"""Behavioural properties of the ProxProp layers: limits, descent, autograd conventions, API."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from proxprop import ProxPropConv2d, ProxPropLinear, parse_mode, proxprop_module_generator


def make_layer(kind: str, mode: str, tau: float = 0.5, dtype=torch.float64, bias=True, device="cpu"):
    torch.manual_seed(11)
    if kind == "linear":
        layer = ProxPropLinear(6, 4, bias=bias, tau_prox=tau, optimization_mode=mode)
        x = torch.randn(9, 6)
    elif kind == "conv":
        layer = ProxPropConv2d(2, 3, 3, padding=1, stride=2, bias=bias, tau_prox=tau, optimization_mode=mode)
        x = torch.randn(3, 2, 6, 5)
    else:
        layer = proxprop_module_generator(nn.Conv1d)(2, 3, 3, bias=bias, tau_prox=tau, optimization_mode=mode)
        x = torch.randn(3, 2, 8)
    return layer.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)


def plain_copy(layer):
    if isinstance(layer, nn.Linear):
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d):
        plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, bias=layer.bias is not None)
    else:
        plain = nn.Conv1d(layer.in_channels, layer.out_channels, layer.kernel_size, bias=layer.bias is not None)
    plain = plain.to(dtype=layer.weight.dtype, device=layer.weight.device)
    plain.load_state_dict(layer.state_dict())
    return plain


def loss_of(out):
    target = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    return 0.5 * ((out - target) ** 2).mean()


def grads(module):
    return [p.grad.clone() for p in module.parameters()]


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


KINDS = ["linear", "conv", "generic"]
PROX_MODES = ["prox_exact", "prox_cg1", "prox_cg3", "prox_cg10"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradient_mode_equals_autograd(kind, bias):
    layer, x = make_layer(kind, "gradient", bias=bias)
    plain = plain_copy(layer)
    loss_of(layer(x)).backward()
    loss_of(plain(x)).backward()
    for a, b in zip(grads(layer), grads(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", PROX_MODES)
def test_input_gradient_is_plain_backprop_and_input_untouched(kind, mode):
    layer, x = make_layer(kind, mode)
    plain = plain_copy(layer)
    x_before = x.clone()
    x_leaf = x.clone().requires_grad_(True)
    out = layer(x_leaf)
    torch.testing.assert_close(out, plain(x))
    loss_of(out).backward()
    x_ref = x.clone().requires_grad_(True)
    loss_of(plain(x_ref)).backward()
    torch.testing.assert_close(x_leaf.grad, x_ref.grad, rtol=1e-12, atol=1e-14)
    # an input that does not require grad stays that way and keeps its values
    layer.zero_grad()
    loss_of(layer(x)).backward()
    assert not x.requires_grad and x.grad is None
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [*PROX_MODES, "gradient"])
def test_gradients_accumulate_like_autograd(kind, mode):
    layer, x = make_layer(kind, mode)
    loss_of(layer(x)).backward()
    once = grads(layer)
    loss_of(layer(x)).backward()
    for g1, g2 in zip(once, grads(layer), strict=True):
        torch.testing.assert_close(g2, 2 * g1, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", PROX_MODES)
def test_small_tau_limit_is_scaled_gradient(kind, mode):
    tau = 1e-7
    layer, x = make_layer(kind, mode, tau=tau)
    plain = plain_copy(layer)
    loss_of(layer(x)).backward()
    loss_of(plain(x)).backward()
    got = flat(grads(layer)) / tau
    expected = flat(grads(plain))
    assert torch.linalg.vector_norm(got - expected) <= 1e-4 * torch.linalg.vector_norm(expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", PROX_MODES)
@pytest.mark.parametrize("tau", [0.05, 1.0, 100.0])
def test_direction_is_a_descent_direction(kind, mode, tau):
    layer, x = make_layer(kind, mode, tau=tau)
    plain = plain_copy(layer)
    loss_of(layer(x)).backward()
    loss_of(plain(x)).backward()
    rows = lambda ts: torch.cat([t.reshape(t.shape[0], -1) for t in ts], dim=1)  # noqa: E731
    # per output unit (weight row and bias entry together): <d_j, (A^T g)_j> > 0
    inner = (rows(grads(layer)) * rows(grads(plain))).sum(dim=1)
    assert bool((inner > 0).all()), inner


@pytest.mark.parametrize("kind", KINDS)
def test_cg_with_many_iterations_approaches_exact(kind):
    exact_layer, x = make_layer(kind, "prox_exact", tau=2.0)
    loss_of(exact_layer(x)).backward()
    exact = flat(grads(exact_layer))
    errors = []
    for mode in ["prox_cg1", "prox_cg60"]:
        layer, _ = make_layer(kind, mode, tau=2.0)
        loss_of(layer(x)).backward()
        errors.append(float(torch.linalg.vector_norm(flat(grads(layer)) - exact) / torch.linalg.vector_norm(exact)))
    # the early stop (residual below 1e-2 of the initial one) bounds the accuracy of "many"
    assert errors[1] < 0.1 and errors[1] < errors[0] / 10, errors


@pytest.mark.parametrize("kind", KINDS)
def test_cg1_is_the_line_searched_gradient(kind):
    tau = 0.3
    layer, x = make_layer(kind, "prox_cg1", tau=tau)
    plain = plain_copy(layer)
    out = layer(x)
    loss_of(out).backward()
    loss_of(plain(x)).backward()
    # A^T A v with the plain layer: the gradient of 1/2 |A v|^2 at theta = v (the layer map is
    # linear in (weight, bias) jointly)
    probe = copy.deepcopy(plain)
    for p, g in zip(probe.parameters(), plain.parameters(), strict=True):
        p.data.copy_(g.grad)
        p.grad = None
    (0.5 * probe(x).pow(2).sum()).backward()
    rows = lambda ts: torch.cat([t.reshape(t.shape[0], -1) for t in ts], dim=1)  # noqa: E731
    r0 = rows([p.grad for p in plain.parameters()])
    ata_r0 = rows([p.grad for p in probe.parameters()])
    alpha = (r0 * r0).sum(1) / ((r0 * ata_r0).sum(1) + (r0 * r0).sum(1) / tau)
    torch.testing.assert_close(rows(grads(layer)), alpha[:, None] * r0, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [*PROX_MODES, "prox_cg3_ref"])
def test_zero_upstream_gradient_gives_zero_direction(kind, mode):
    layer, x = make_layer(kind, mode)
    (0.0 * layer(x).sum()).backward()
    for g in grads(layer):
        assert torch.isfinite(g).all() and bool((g == 0).all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["prox_exact", "prox_cg3"])
def test_float32_close_to_float64(kind, mode):
    l64, x64 = make_layer(kind, mode, tau=0.5, dtype=torch.float64)
    l32, x32 = make_layer(kind, mode, tau=0.5, dtype=torch.float32)
    loss_of(l64(x64)).backward()
    loss_of(l32(x32)).backward()
    for a, b in zip(grads(l32), grads(l64), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-5 * float(b.abs().max()))


def test_tau_prox_is_full_precision_in_float64():
    layer = ProxPropLinear(3, 2, tau_prox=0.1).double()
    assert layer.tau_prox == 0.1 and isinstance(layer.tau_prox, float)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_with_plain_layers(kind):
    layer, x = make_layer(kind, "prox_cg3")
    plain = plain_copy(layer)  # loads layer.state_dict() into the plain layer
    assert set(layer.state_dict()) == set(plain.state_dict())
    fresh, _ = make_layer(kind, "prox_exact")
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fresh.load_state_dict(plain.state_dict())
    torch.testing.assert_close(fresh(x), plain(x))
    clone = copy.deepcopy(layer)
    assert clone.tau_prox == layer.tau_prox and clone.optimization_mode == layer.optimization_mode


def test_parse_mode():
    assert parse_mode("prox_cg3") == ("prox_cg", 3)
    assert parse_mode("prox_cg12") == ("prox_cg", 12)
    assert parse_mode("gradient") == ("gradient", 0)
    assert parse_mode("prox_exact") == ("prox_exact", 0)
    assert parse_mode("prox_cg2_ref") == ("prox_cg_ref", 2)


@pytest.mark.parametrize("mode", ["prox_cg0", "foo", "prox_cg", "prox_cg-1", "prox_cg1.5", "PROX_EXACT", 3, None])
def test_bad_mode_raises_naming_the_argument(mode):
    with pytest.raises(ValueError, match="optimization_mode"):
        parse_mode(mode)
    with pytest.raises(ValueError, match="optimization_mode"):
        ProxPropLinear(2, 2, optimization_mode=mode)
    with pytest.raises(ValueError, match="optimization_mode"):
        ProxPropConv2d(2, 2, 3, optimization_mode=mode)
    with pytest.raises(ValueError, match="optimization_mode"):
        proxprop_module_generator(nn.Conv1d)(2, 2, 3, optimization_mode=mode)
    layer = ProxPropLinear(2, 2)
    with pytest.raises(ValueError, match="optimization_mode"):
        layer.optimization_mode = mode
    assert layer.optimization_mode == "prox_cg1"


@pytest.mark.parametrize("tau", [0.0, -1.0, math.nan, math.inf, "x", None, True])
def test_bad_tau_raises_naming_the_argument(tau):
    with pytest.raises(ValueError, match="tau_prox"):
        ProxPropLinear(2, 2, tau_prox=tau)
    with pytest.raises(ValueError, match="tau_prox"):
        ProxPropConv2d(2, 2, 3, tau_prox=tau)
    with pytest.raises(ValueError, match="tau_prox"):
        proxprop_module_generator(nn.Conv3d)(2, 2, 3, tau_prox=tau)
    layer = ProxPropConv2d(2, 2, 3, tau_prox=0.5)
    with pytest.raises(ValueError, match="tau_prox"):
        layer.tau_prox = tau
    assert layer.tau_prox == 0.5


def test_options_can_be_changed_after_construction():
    layer, x = make_layer("linear", "prox_cg1")
    layer.optimization_mode = "gradient"
    layer.tau_prox = 3.0
    plain = plain_copy(layer)
    loss_of(layer(x)).backward()
    loss_of(plain(x)).backward()
    torch.testing.assert_close(grads(layer), grads(plain))
    assert "tau_prox=3.0" in repr(layer)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [*PROX_MODES, "gradient"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(kind, mode, dtype):
    cpu_layer, x = make_layer(kind, mode, dtype=torch.float64)
    loss_of(cpu_layer(x)).backward()
    gpu_layer, xg = make_layer(kind, mode, dtype=dtype, device="cuda")
    out = gpu_layer(xg)
    assert out.is_cuda
    loss_of(out).backward()
    for a, b in zip(grads(gpu_layer), grads(cpu_layer), strict=True):
        assert a.is_cuda and a.dtype == dtype
        tol = 1e-9 if dtype == torch.float64 else 2e-3
        torch.testing.assert_close(a.double().cpu(), b, rtol=tol, atol=tol * float(b.abs().max()))


@pytest.mark.parametrize("make,kwargs,argument", [
    (ProxPropLinear, {"solver_form": "dense"}, "solver_form"),
    (ProxPropLinear, {"cg_strategy": "lanczos"}, "cg_strategy"),
    (ProxPropConv2d, {"conv_strategy": "fft"}, "conv_strategy"),
    (ProxPropConv2d, {"gram_method": "im2col"}, "gram_method"),
    (ProxPropConv2d, {"cg_strategy": 3}, "cg_strategy"),
])
def test_bad_strategy_raises_naming_the_argument(make, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make(2, 2, 3, **kwargs) if make is ProxPropConv2d else make(2, 2, **kwargs)


@pytest.mark.parametrize("mode", ["prox_cg3", "prox_cg10", "prox_cg3_ref"])
@pytest.mark.parametrize("form", ["dual", "primal"])
def test_float32_moments_close_to_float64_textbook(mode, form):
    """The moments path in float32 against the elementwise loop in float64, on a layer with
    non-negative inputs (the spectrum with one large outlier that ReLU activations give)."""
    directions = []
    for dtype, strategy in [(torch.float64, "direct"), (torch.float32, "moments")]:
        torch.manual_seed(2)
        layer = ProxPropLinear(40, 30, tau_prox=0.05, optimization_mode=mode, solver_form=form,
                               cg_strategy=strategy).to(dtype)
        torch.manual_seed(3)
        x = torch.rand(60, 40, dtype=torch.float64).to(dtype)
        loss_of(layer(x)).backward()
        directions.append(flat(grads(layer)).double())
    error = torch.linalg.vector_norm(directions[1] - directions[0]) / torch.linalg.vector_norm(directions[0])
    assert error < 1e-4, float(error)


def test_forced_strategies_show_in_repr_and_defaults_do_not():
    assert "cg_strategy='moments'" in repr(ProxPropLinear(2, 2, cg_strategy="moments"))
    assert "strategy" not in repr(ProxPropLinear(2, 2)) and "form" not in repr(ProxPropLinear(2, 2))
    conv = ProxPropConv2d(2, 2, 3, conv_strategy="matrix_free", gram_method="unfold")
    assert "conv_strategy='matrix_free'" in repr(conv) and "gram_method='unfold'" in repr(conv)
