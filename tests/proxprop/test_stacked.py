"""Stacked ProxProp layers (K members at once) against independent float64 references and
against the unfused layers, member by member.

The references build each member's A explicitly (augmented inputs; im2col by slicing the
padded image in numpy), solve with scipy, and run CG column by column in numpy in the form of
ALGORITHM.md section 2: warm-started at X_k on (A^T A + I/tau) X = A^T Y + X_k/tau with
Y = A X_k - g, the direction being X_k - X_N.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import proxprop.stacked
import proxprop.stacked_solvers
from proxprop import ProxPropConv2d, ProxPropLinear
from proxprop.stacked import (
    StackedConv2d,
    StackedLinear,
    stacked_conv2d_direction,
    stacked_linear_direction,
)
from proxprop.stacked import StackedConvGeometry as Geometry
from proxprop.stacked_solvers import StackedSolve, stacked_gram_solve

EARLY_STOP = 1e-2
TAUS = [0.05, 1.0, 20.0]
MODES = ["gradient", "prox_exact", "prox_cg3", "prox_cg8", "prox_cg3_ref", "prox_cg1"]


def parse(mode: str) -> tuple[str, int]:
    if mode in ("gradient", "prox_exact"):
        return mode, 0
    iterations = int(mode[len("prox_cg"):].removesuffix("_ref"))
    return ("prox_cg_ref" if mode.endswith("_ref") else "prox_cg"), iterations


def solve_for(mode: str, taus=TAUS) -> StackedSolve:
    kind, iterations = parse(mode)
    return StackedSolve(kind, iterations, torch.tensor([1.0 / t for t in taus], dtype=torch.float64))


# ----------------------------------------------------------------------------- references


def with_ones(a: np.ndarray) -> np.ndarray:
    return np.hstack([a, np.ones((a.shape[0], 1))])


def im2col(x: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """Rows (sample, out_y, out_x), columns (channel, ky, kx), from numpy slicing."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kernel) // stride + 1
    wo = (w + 2 * padding - kernel) // stride + 1
    patches = np.empty((n, ho, wo, c, kernel, kernel))
    for ky in range(kernel):
        for kx in range(kernel):
            window = xp[:, :, ky:ky + stride * ho:stride, kx:kx + stride * wo:stride]  # (n, c, ho, wo)
            patches[:, :, :, :, ky, kx] = window.transpose(0, 2, 3, 1)
    return patches.reshape(n * ho * wo, c * kernel * kernel)


def reference_cg(m: np.ndarray, b: np.ndarray, x0: np.ndarray, iterations: int, joint: bool, aliased: bool):
    """CG on every column of M X = B from X0 (joint: all columns as one vector, one step length),
    the reference's early stop; aliased: the reference's loop (p is r in the first update, +1e-6)."""
    eps = 1e-6 if aliased else 0.0
    def inner(u, v):
        per_column = np.einsum("ij,ij->j", u, v)
        return np.full_like(per_column, per_column.sum()) if joint else per_column
    x = x0.copy()
    r = b - m @ x
    p = r.copy()
    rs = inner(r, r)
    threshold = EARLY_STOP**2 * rs.mean()
    for k in range(iterations):
        mp = m @ p
        curvature = inner(p, mp) + eps
        alpha = np.divide(rs, curvature, out=np.zeros_like(rs), where=curvature > 0)
        x = x + alpha * p
        if k == iterations - 1:
            break
        r = r - alpha * mp
        rs_new = inner(r, r)
        if rs_new.max() < threshold:
            break
        beta = np.divide(rs_new, rs + eps, out=np.zeros_like(rs), where=rs + eps > 0)
        p = r + beta * (r if (aliased and k == 0) else p)
        rs = rs_new
    return x


def reference_direction(a: np.ndarray, g: np.ndarray, xk: np.ndarray, tau: float, mode: str, joint: bool = False):
    """(p, m) direction for one member: a (n, p) explicit A, g (n, m), X_k (p, m)."""
    kind, iterations = parse(mode)
    if kind == "gradient":
        return a.T @ g
    m = a.T @ a + np.eye(a.shape[1]) / tau
    if kind == "prox_exact":
        return scipy.linalg.solve(m, a.T @ g, assume_a="pos")
    rhs = a.T @ (a @ xk - g) + xk / tau
    return xk - reference_cg(m, rhs, xk, iterations, joint, kind == "prox_cg_ref")


def assert_close(actual: torch.Tensor, expected: np.ndarray, rtol: float = 1e-9):
    actual = actual.detach().double().numpy()
    scale = max(np.abs(expected).max(), 1e-300)
    err = np.abs(actual - expected).max() / scale
    assert err < rtol, f"relative error {err:.3e}"


# ----------------------------------------------------------------------------- solvers


LINEAR_FORMS = [(mode, form) for mode in MODES for form in ("primal", "dual", "matrix_free")
                if form != "matrix_free" or mode.startswith("prox_cg")]


@pytest.fixture(params=["batched", "per-member"])
def solve_members(request, monkeypatch):
    """Gram solves of small problems are batched over the members, large ones solved member by
    member with the unfused solvers; "per-member" makes every problem large."""
    if request.param == "per-member":
        monkeypatch.setattr(proxprop.stacked_solvers, "PER_MEMBER_PRODUCT", 0)
    return request.param


@pytest.mark.parametrize(("mode", "form"), LINEAR_FORMS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n", [4, 9])
def test_linear_direction_matches_reference(mode, form, bias, n, solve_members):
    gen = torch.Generator().manual_seed(n)
    k_members, k, m = len(TAUS), 5, 3
    a = torch.randn(k_members, n, k, generator=gen, dtype=torch.float64)
    g = torch.randn(k_members, n, m, generator=gen, dtype=torch.float64)
    w_dir, b_dir = stacked_linear_direction(a, g, bias, solve_for(mode), form=form)
    assert w_dir.shape == (k_members, m, k) and (b_dir is None) == (not bias)
    for member, tau in enumerate(TAUS):
        a_np = a[member].numpy()
        a_np = with_ones(a_np) if bias else a_np
        xk = np.random.default_rng(member).standard_normal((a_np.shape[1], m))
        expected = reference_direction(a_np, g[member].numpy(), xk, tau, mode)
        assert_close(w_dir[member], expected[:k].T)
        if bias:
            assert_close(b_dir[member], expected[k])


@pytest.fixture(params=["looped", "grouped"])
def conv_groups(request, monkeypatch):
    """Stacked convolutions run as K ordinary ones on CPU; "grouped" forces the grouped kernel
    (groups = K) that CUDA uses, so both paths are checked here."""
    if request.param == "grouped":
        monkeypatch.setattr(proxprop.stacked, "LOOP_GROUPS_ON", ())
    return request.param


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", ["gram", "matrix_free"])
@pytest.mark.parametrize("geometry", [(3, 1, 1), (3, 2, 0)], ids=["k3-pad1", "k3-stride2"])
def test_conv_direction_matches_reference(mode, strategy, geometry, conv_groups, solve_members):
    kernel, stride, padding = geometry
    gen = torch.Generator().manual_seed(1)
    members, batch, c, m = len(TAUS), 2, 2, 3
    xs = torch.randn(members, batch, c, 6, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(members, m, c, kernel, kernel, generator=gen, dtype=torch.float64)
    geom = Geometry((stride, stride), (padding, padding), (1, 1))
    grouped_x = xs.transpose(0, 1).reshape(batch, members * c, 6, 6)
    out_size = (6 + 2 * padding - kernel) // stride + 1
    grad_out = torch.randn(batch, members * m, out_size, out_size, generator=gen, dtype=torch.float64)
    _, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_out, grouped_x, weight.reshape(members * m, c, kernel, kernel), [members * m],
        [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], members, [False, True, True],
    )
    w_dir, b_dir = stacked_conv2d_direction(
        grouped_x, weight, True, geom, solve_for(mode), grad_w, grad_b, grad_out, strategy=strategy
    )
    for member, tau in enumerate(TAUS):
        a = with_ones(im2col(xs[member].numpy(), kernel, stride, padding))
        g = grad_out[:, member * m:(member + 1) * m].permute(0, 2, 3, 1).reshape(-1, m).numpy()
        xk = np.random.default_rng(member).standard_normal((a.shape[1], m))
        expected = reference_direction(a, g, xk, tau, mode, joint=mode.endswith("_ref"))
        assert_close(w_dir[member].reshape(m, -1), expected[:-1].T)
        assert_close(b_dir[member], expected[-1])


def test_cg_early_stop_is_per_member():
    """The well-conditioned member (tiny tau) meets the stop rule after 1 iteration, the other
    after 4 (p = 4); each must equal its own reference run, which a stop decided over all
    members would break.  A member with g = 0 gets a zero direction, not NaN."""
    gen = torch.Generator().manual_seed(3)
    taus = [1e-4, 1.0, 100.0]
    a = torch.randn(3, 12, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 12, 2, generator=gen, dtype=torch.float64)
    g[2] = 0.0
    w_dir, _ = stacked_linear_direction(a, g, False, solve_for("prox_cg10", taus), form="primal")
    for member in (0, 1):
        xk = np.zeros((4, 2))
        expected = reference_direction(a[member].numpy(), g[member].numpy(), xk, taus[member], "prox_cg10")
        assert_close(w_dir[member], expected.T)
    assert torch.equal(w_dir[2], torch.zeros_like(w_dir[2]))


def test_exact_falls_back_to_eigh_for_an_indefinite_member():
    """A member whose shifted Gram matrix is numerically indefinite is solved through its
    clipped eigendecomposition; the other members keep their Cholesky solves."""
    gen = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(2, 5, 5, generator=gen, dtype=torch.float64))
    evals = torch.tensor([[3.0, 2.0, 1.0, 0.5, 0.1], [3.0, 2.0, 1.0, 0.5, -4.0]], dtype=torch.float64)
    gram = q @ torch.diag_embed(evals) @ q.transpose(1, 2)
    rhs = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    inv_tau = torch.tensor([1.0, 1.0], dtype=torch.float64)
    result = stacked_gram_solve(gram, rhs, StackedSolve("prox_exact", 0, inv_tau), dual=False)
    clipped = evals.clamp_min(0.0) + 1.0
    for member in range(2):
        m = q[member] @ torch.diag(clipped[member]) @ q[member].T
        expected = np.linalg.solve(m.numpy(), rhs[member].numpy().T).T
        assert_close(result[member], expected, rtol=1e-12)


# ----------------------------------------------------------------------------- layers


def quadratic_loss(out: torch.Tensor, seed: int) -> torch.Tensor:
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return 0.5 * ((out - target) ** 2).mean()


@pytest.mark.parametrize("mode", MODES)
def test_stacked_linear_equals_unfused_layers(mode):
    torch.manual_seed(0)
    layers = [ProxPropLinear(6, 4, tau_prox=t, optimization_mode=mode, dtype=torch.float64) for t in TAUS]
    stacked = StackedLinear.from_layers(layers)
    xs = torch.randn(len(TAUS), 9, 6, dtype=torch.float64)
    stacked_in = xs.clone().requires_grad_(True)
    out = stacked(stacked_in)
    sum(quadratic_loss(out[k], seed=k) for k in range(len(TAUS))).backward()
    for k, layer in enumerate(layers):
        single_in = xs[k].clone().requires_grad_(True)
        single_out = layer(single_in)
        quadratic_loss(single_out, seed=k).backward()
        torch.testing.assert_close(out[k], single_out, rtol=1e-13, atol=0)
        torch.testing.assert_close(stacked.weight.grad[k], layer.weight.grad, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(stacked.bias.grad[k], layer.bias.grad, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(stacked_in.grad[k], single_in.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mode", MODES)
def test_stacked_conv_equals_unfused_layers(mode, conv_groups):
    torch.manual_seed(1)
    layers = [
        ProxPropConv2d(2, 3, 3, padding=1, tau_prox=t, optimization_mode=mode, dtype=torch.float64) for t in TAUS
    ]
    stacked = StackedConv2d.from_layers(layers)
    members = len(TAUS)
    xs = torch.randn(members, 4, 2, 5, 5, dtype=torch.float64)
    grouped_in = xs.transpose(0, 1).reshape(4, members * 2, 5, 5).clone().requires_grad_(True)
    out = stacked(grouped_in)  # (4, K*3, 5, 5)
    outs = out.reshape(4, members, 3, 5, 5).transpose(0, 1)
    sum(quadratic_loss(outs[k], seed=k) for k in range(members)).backward()
    in_grads = grouped_in.grad.reshape(4, members, 2, 5, 5).transpose(0, 1)
    for k, layer in enumerate(layers):
        single_in = xs[k].clone().requires_grad_(True)
        single_out = layer(single_in)
        quadratic_loss(single_out, seed=k).backward()
        torch.testing.assert_close(outs[k], single_out, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(stacked.weight.grad[k], layer.weight.grad, rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(stacked.bias.grad[k], layer.bias.grad, rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(in_grads[k], single_in.grad, rtol=1e-12, atol=1e-15)


def test_shared_input_equals_one_input_per_member():
    torch.manual_seed(2)
    linear = StackedLinear.from_layers(
        [ProxPropLinear(5, 3, tau_prox=t, optimization_mode="prox_exact", dtype=torch.float64) for t in TAUS]
    )
    conv = StackedConv2d.from_layers(
        [ProxPropConv2d(2, 3, 3, padding=1, tau_prox=t, optimization_mode="prox_cg2", dtype=torch.float64)
         for t in TAUS]
    )
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(linear(x), linear(x.expand(3, 7, 5)), rtol=1e-14, atol=0)
    images = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        shared = conv(images, shared=True)
        grouped = conv(images.repeat(1, 3, 1, 1))
    torch.testing.assert_close(shared, grouped, rtol=1e-13, atol=1e-15)


def test_directions_accumulate_and_members_can_be_dropped():
    torch.manual_seed(3)
    layers = [ProxPropLinear(4, 2, tau_prox=t, optimization_mode="prox_cg2", dtype=torch.float64) for t in TAUS]
    stacked = StackedLinear.from_layers(layers)
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    quadratic_loss(stacked(x), 0).backward()
    once = stacked.weight.grad.clone()
    quadratic_loss(stacked(x), 0).backward()
    torch.testing.assert_close(stacked.weight.grad, 2 * once, rtol=1e-14, atol=0)
    stacked.select_(torch.tensor([2, 0]))
    assert stacked.members == 2 and stacked.weight.grad is None and stacked.weight.requires_grad
    torch.testing.assert_close(stacked.inv_tau, torch.tensor([1 / TAUS[2], 1 / TAUS[0]], dtype=torch.float64))
    torch.testing.assert_close(stacked.weight[1], layers[0].weight, rtol=0, atol=0)
    quadratic_loss(stacked(x[[2, 0]]), 0).backward()  # a graph built before the drop is no obstacle
    assert stacked.weight.grad.shape == (2, 2, 4)


def test_stacking_rejects_mixed_modes():
    layers = [ProxPropLinear(4, 2, optimization_mode="prox_cg2"), ProxPropLinear(4, 2, optimization_mode="prox_exact")]
    with pytest.raises(ValueError, match="one mode"):
        StackedLinear.from_layers(layers)
