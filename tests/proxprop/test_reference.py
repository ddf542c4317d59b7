"""ProxProp layers against independent float64 references written from ALGORITHM.md.

The references build A explicitly (augmented inputs for linear layers, an explicit im2col loop
for convolutions), solve with scipy.linalg.solve and run a plain per-column textbook CG in
numpy, warm-started at X_k on  (A^T A + I/tau) X = A^T Y + X_k / tau  with Y = A X_k - g.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import proxprop
from proxprop import ProxPropConv2d, ProxPropLinear, proxprop_module_generator
from proxprop import gram as gram_module
from proxprop import gram_fft as gram_fft_module
from proxprop import solvers as solvers_module

TOL = 1e-2  # the reference's early-stop tolerance

# ----------------------------------------------------------------------------- references


def linear_matrix(x: np.ndarray, bias: bool) -> np.ndarray:
    return np.hstack([x, np.ones((x.shape[0], 1))]) if bias else x


def conv_matrix(x: np.ndarray, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
                bias: bool) -> np.ndarray:
    """im2col by explicit loops, for any number of spatial dimensions (rows: sample, position)."""
    dims = x.ndim - 2
    pad = [(0, 0), (0, 0)] + [(p, p) for p in padding]
    xp = np.pad(x, pad)
    out_sizes = [
        (xp.shape[2 + d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(dims)
    ]
    rows = []
    for b in range(x.shape[0]):
        for pos in itertools.product(*[range(s) for s in out_sizes]):
            row = []
            for c in range(x.shape[1]):
                for k in itertools.product(*[range(s) for s in kernel]):
                    idx = tuple(pos[d] * stride[d] + k[d] * dilation[d] for d in range(dims))
                    row.append(xp[(b, c, *idx)])
            rows.append(row)
    a = np.array(rows)
    return np.hstack([a, np.ones((a.shape[0], 1))]) if bias else a


def ref_exact(a: np.ndarray, g: np.ndarray, tau: float) -> np.ndarray:
    m = a.T @ a + np.eye(a.shape[1]) / tau
    return scipy.linalg.solve(m, a.T @ g, assume_a="pos")


def ref_cg(a: np.ndarray, g: np.ndarray, xk: np.ndarray, tau: float, iterations: int,
           joint: bool = False, aliased: bool = False) -> np.ndarray:
    """Textbook CG per column (or on all columns as one vector), warm start X_k, reference stop.

    aliased=True reproduces the reference's loop (P is R in the first iteration, +1e-6)."""
    y = a @ xk - g
    m = a.T @ a + np.eye(a.shape[1]) / tau
    b = a.T @ y + xk / tau
    if joint:
        shape = xk.shape
        big = np.kron(np.eye(shape[1]), m)  # column-major stacking of all columns
        vec_b = b.reshape(-1, order="F")[:, None]
        vec_x = xk.reshape(-1, order="F")[:, None]
        out = _cg_loop(big, vec_b, vec_x, iterations, aliased)
        return xk - out.reshape(shape, order="F")
    return xk - _cg_loop(m, b, xk, iterations, aliased)


STOPS: list[int] = []  # iterations done by each reference CG run that stopped early


def _cg_loop(m, b, x0, iterations, aliased):
    eps = 1e-6 if aliased else 0.0
    x = x0.copy()
    r = b - m @ x
    p = r.copy()
    rs = (r * r).sum(axis=0)
    scale = rs.mean()
    for k in range(iterations):
        mp = m @ p
        pmp = (p * mp).sum(axis=0) + eps
        alpha = np.where(pmp > 0, rs / np.where(pmp > 0, pmp, 1.0), 0.0)
        x = x + alpha * p
        if k == iterations - 1:
            break
        r = r - alpha * mp
        rs_new = (r * r).sum(axis=0)
        if rs_new.max() < TOL**2 * scale:
            STOPS.append(k + 1)
            break
        beta = np.where(rs + eps > 0, rs_new / np.where(rs + eps > 0, rs + eps, 1.0), 0.0)
        p = r + (r if (aliased and k == 0) else p) * beta
        rs = rs_new
    return x


def ref_direction(a, g, xk, tau, mode, joint=False):
    kind, n = proxprop.parse_mode(mode)
    if kind == "gradient":
        return a.T @ g
    if kind == "prox_exact":
        return ref_exact(a, g, tau)
    return ref_cg(a, g, xk, tau, n, joint=joint, aliased=kind == "prox_cg_ref")


def params_matrix(layer) -> np.ndarray:
    """X_k: one column per output unit, bias as the last row."""
    w = layer.weight.detach().double().reshape(layer.weight.shape[0], -1).numpy()
    cols = [w] if layer.bias is None else [w, layer.bias.detach().double().numpy()[:, None]]
    return np.hstack(cols).T


def grads_matrix(layer) -> np.ndarray:
    w = layer.weight.grad.double().reshape(layer.weight.shape[0], -1).numpy()
    cols = [w] if layer.bias is None else [w, layer.bias.grad.double().numpy()[:, None]]
    return np.hstack(cols).T


def conv_g_matrix(out_grad: torch.Tensor) -> np.ndarray:
    """dL/dZ with one row per (sample, output position), one column per output channel."""
    dims = out_grad.dim()
    perm = (0, *tuple(range(2, dims)), 1)
    return out_grad.permute(perm).reshape(-1, out_grad.shape[1]).double().numpy()


def run_layer(layer, x, seed=0):
    """Forward, a loss with a random linear-quadratic form, backward; returns (out, dL/dZ)."""
    out = layer(x)
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    loss = 0.5 * ((out - target) ** 2).mean()
    out.retain_grad()
    loss.backward()
    return out, out.grad


def assert_close(actual, expected, rtol=1e-8):
    scale = max(np.abs(expected).max(), 1e-300)
    err = np.abs(actual - expected).max() / scale
    assert err < rtol, f"relative error {err:.3e} >= {rtol:.1e}"


MODES = ["gradient", "prox_exact", "prox_cg1", "prox_cg2", "prox_cg5", "prox_cg3_ref"]

# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("form,cg", [(None, None), ("primal", "direct"), ("primal", "spectral"),
                                     ("primal", "moments"), ("dual", "direct"), ("dual", "spectral"),
                                     ("dual", "moments")])
@pytest.mark.parametrize("n,k,m", [(5, 12, 4), (30, 6, 3)])
def test_linear_matches_reference(mode, bias, form, cg, n, k, m):
    torch.manual_seed(n + k)
    tau = 0.7
    layer = ProxPropLinear(k, m, bias=bias, tau_prox=tau, optimization_mode=mode,
                           solver_form=form, cg_strategy=cg).double()
    x = torch.randn(n, k, dtype=torch.float64)
    _, g = run_layer(layer, x)
    a = linear_matrix(x.numpy(), bias)
    expected = ref_direction(a, g.numpy(), params_matrix(layer), tau, mode)
    assert_close(grads_matrix(layer), expected)


def test_linear_batched_leading_dims():
    torch.manual_seed(1)
    layer = ProxPropLinear(4, 3, tau_prox=0.3, optimization_mode="prox_exact").double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    _, g = run_layer(layer, x)
    a = linear_matrix(x.reshape(-1, 4).numpy(), True)
    expected = ref_exact(a, g.reshape(-1, 3).numpy(), 0.3)
    assert_close(grads_matrix(layer), expected)


# ----------------------------------------------------------------------------- conv2d

GEOMETRIES = [
    {"stride": 1, "padding": 0, "dilation": 1},
    {"stride": 2, "padding": 1, "dilation": 1},
    {"stride": 1, "padding": 2, "dilation": 2},
    {"stride": (2, 1), "padding": (0, 1), "dilation": (1, 2)},
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("strategy,gram,cg", [(None, None, None), ("gram", "unfold", None), ("gram", "shift", None),
                                              ("gram", "fft", None), ("gram", None, "moments"), ("dual", None, None),
                                              ("dual", None, "moments"), ("matrix_free", None, None)])
def test_conv2d_matches_reference(mode, bias, geometry, strategy, gram, cg):
    torch.manual_seed(3)
    tau = 0.4
    layer = ProxPropConv2d(2, 3, (3, 2), bias=bias, tau_prox=tau, optimization_mode=mode, **geometry,
                           conv_strategy=strategy, gram_method=gram, cg_strategy=cg).double()
    x = torch.randn(3, 2, 7, 6, dtype=torch.float64)
    _, g = run_layer(layer, x)
    a = conv_matrix(x.numpy(), layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias)
    joint = mode.endswith("_ref")  # the reference flattens all conv parameters into one CG
    expected = ref_direction(a, conv_g_matrix(g), params_matrix(layer), tau, mode, joint=joint)
    assert_close(grads_matrix(layer), expected)


@pytest.fixture(params=["fft", "matmul"])
def fft_gram_transform(request, monkeypatch):
    """The Fourier Gram method's plane transform, forced: torch.fft, or the separable DFT as
    matrix products (gram_fft.py picks the latter for small planes, i.e. for most shapes here)."""
    costs = (1.0, 0.0) if request.param == "matmul" else (0.0, 1.0)  # (FFT, products)
    monkeypatch.setattr(gram_fft_module, "_transform_flops", lambda *args: costs)
    return request.param


@pytest.mark.parametrize("matmul", [False, True])
@pytest.mark.parametrize("lengths", [(10, 8), (12, 12), (9, 7), (6, 11)])
def test_plane_transforms_equal_numpy_rfft2(lengths, matmul):
    """Both transforms give rfft2's spectra of the zero-padded planes, frequency-major, with
    frequencies ordered (f_w, f_h)."""
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = gram_fft_module._spectra(x, lengths, matmul=matmul)
    spectrum = np.fft.rfft2(np.pad(x.numpy(), ((0, 0), (0, 0), (0, lengths[0] - 5), (0, lengths[1] - 6))))
    expected = np.stack([spectrum.real, spectrum.imag], axis=-1)  # (4, 3, L_h, F_w, 2)
    expected = expected.transpose(3, 2, 4, 0, 1).reshape(-1, 2, 4, 3)
    assert_close(got.numpy(), expected, rtol=1e-13)


GRAM_CASES = [
    ((3, 2, 7, 6), (3, 2), (1, 0)), ((2, 3, 5, 5), (5, 5), (2, 2)), ((4, 1, 6, 7), (3, 3), (0, 1)),
    ((2, 2, 4, 4), (1, 1), (0, 0)), ((2, 9, 4, 5), (2, 3), (1, 2)), ((2, 2, 6, 5), (5, 4), (0, 0)),
    ((2, 2, 5, 6), (3, 3), (4, 3)),
]


def check_gram_against_im2col(shape, kernel, padding, method, bias):
    torch.manual_seed(8)
    x = torch.randn(*shape, dtype=torch.float64)
    got = gram_module.conv2d_gram(x, kernel, (1, 1), padding, (1, 1), bias, method=method).numpy()
    a = conv_matrix(x.numpy(), kernel, (1, 1), padding, (1, 1), bias)
    assert_close(got, a.T @ a, rtol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("method", ["unfold", "shift", "fft"])
@pytest.mark.parametrize("shape,kernel,padding", GRAM_CASES)
def test_conv2d_gram_matches_explicit_im2col(shape, kernel, padding, method, bias):
    check_gram_against_im2col(shape, kernel, padding, method, bias)


@pytest.mark.parametrize("shape,kernel,padding", GRAM_CASES)
def test_fft_gram_with_either_transform_matches_explicit_im2col(shape, kernel, padding, fft_gram_transform):
    check_gram_against_im2col(shape, kernel, padding, "fft", True)


@pytest.mark.parametrize("rows", [1, 100, 168, 169, 500, 777])
def test_row_gram_is_the_full_product(rows):
    """row_gram computes only the upper triangle's row blocks (2 to 9 blocks here)."""
    a = torch.randn(rows, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(rows))
    got = gram_module.row_gram(a)
    assert_close(got.numpy(), a.numpy() @ a.numpy().T, rtol=1e-12)
    assert_close(got.numpy(), got.numpy().T, rtol=1e-14)
    transposed = gram_module.row_gram(a.T)  # the primal form passes a strided view
    assert_close(transposed.numpy(), a.numpy().T @ a.numpy(), rtol=1e-12)


def nearly_constant_input(shape: tuple[int, ...]) -> torch.Tensor:
    """Inputs like a ReLU layer's: a large common level, tiny variations, and one channel
    almost a copy of another, so that A^T A is nearly rank-deficient (condition ~1e12)."""
    x = 3.0 + 1e-3 * torch.randn(*shape, dtype=torch.float64)
    x[:, -1] = x[:, 0] + 1e-6 * torch.randn_like(x[:, 0])
    return x


@pytest.mark.parametrize("padding", [(0, 0), (1, 2), (2, 2), (4, 3)])
def test_fft_gram_of_ill_conditioned_inputs_matches_explicit_im2col(padding, fft_gram_transform):
    torch.manual_seed(11)
    x = nearly_constant_input((3, 3, 9, 8))
    got = gram_module.conv2d_gram(x, (5, 4), (1, 1), padding, (1, 1), True, method="fft").numpy()
    a = conv_matrix(x.numpy(), (5, 4), (1, 1), padding, (1, 1), True)
    expected = a.T @ a
    assert np.linalg.cond(expected) > 1e10
    assert_close(got, expected, rtol=1e-12)


@pytest.mark.parametrize("mode", ["prox_exact", "prox_cg5"])
def test_fft_gram_direction_on_ill_conditioned_inputs_matches_reference(mode):
    torch.manual_seed(12)
    tau = 1.0
    layer = ProxPropConv2d(3, 4, 5, padding=2, tau_prox=tau, optimization_mode=mode,
                           conv_strategy="gram", gram_method="fft").double()
    x = nearly_constant_input((3, 3, 8, 7))
    _, g = run_layer(layer, x)
    a = conv_matrix(x.numpy(), (5, 5), (1, 1), (2, 2), (1, 1), True)
    expected = ref_direction(a, conv_g_matrix(g), params_matrix(layer), tau, mode)
    assert_close(grads_matrix(layer), expected, rtol=1e-10)


@pytest.mark.parametrize("mode", ["prox_exact", "prox_cg3"])
def test_conv2d_groups_are_independent_problems(mode):
    torch.manual_seed(4)
    layer = ProxPropConv2d(4, 6, 3, padding=1, groups=2, tau_prox=0.5, optimization_mode=mode).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    _, g = run_layer(layer, x)
    got = grads_matrix(layer)
    gm = conv_g_matrix(g)
    xk = params_matrix(layer)
    for gi in range(2):
        a = conv_matrix(x[:, 2 * gi:2 * gi + 2].numpy(), (3, 3), (1, 1), (1, 1), (1, 1), True)
        cols = slice(3 * gi, 3 * gi + 3)
        expected = ref_direction(a, gm[:, cols], xk[:, cols], 0.5, mode)
        assert_close(got[:, cols], expected)


@pytest.mark.parametrize("padding,padding_mode", [("same", "zeros"), (1, "reflect"), (1, "circular")])
def test_conv2d_string_padding_and_padding_modes(padding, padding_mode):
    torch.manual_seed(5)
    kw = {"padding": padding, "padding_mode": padding_mode, "dilation": 1}
    layer = ProxPropConv2d(2, 2, 3, tau_prox=0.5, optimization_mode="prox_exact", **kw).double()
    plain = nn.Conv2d(2, 2, 3, **kw).double()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    _, g = run_layer(layer, x)
    if padding_mode == "zeros":
        xp = nn.functional.pad(x, (1, 1, 1, 1))
    else:
        xp = nn.functional.pad(x, (1, 1, 1, 1), mode=padding_mode)
    torch.testing.assert_close(layer(x), plain(x))
    a = conv_matrix(xp.numpy(), (3, 3), (1, 1), (0, 0), (1, 1), True)
    assert_close(grads_matrix(layer), ref_exact(a, conv_g_matrix(g), 0.5))


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("mode", ["gradient", "prox_exact", "prox_cg1", "prox_cg4", "prox_cg3_ref"])
@pytest.mark.parametrize("base,shape,kwargs", [
    (nn.Conv1d, (3, 2, 9), {"kernel_size": 3, "stride": 2, "padding": 1}),
    (nn.Conv3d, (2, 2, 4, 4, 3), {"kernel_size": (2, 3, 2), "padding": (0, 1, 1), "dilation": (1, 1, 2)}),
])
@pytest.mark.parametrize("bias", [True, False])
def test_generator_convnd_matches_reference(base, shape, kwargs, mode, bias):
    torch.manual_seed(6)
    cls = proxprop_module_generator(base)
    assert issubclass(cls, base)
    layer = cls(2, 3, bias=bias, tau_prox=0.6, optimization_mode=mode, **kwargs).double()
    x = torch.randn(*shape, dtype=torch.float64)
    _, g = run_layer(layer, x)
    a = conv_matrix(x.numpy(), layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias)
    joint = mode.endswith("_ref")
    expected = ref_direction(a, conv_g_matrix(g), params_matrix(layer), 0.6, mode, joint=joint)
    assert_close(grads_matrix(layer), expected)


@pytest.mark.parametrize("mode", ["prox_exact", "prox_cg3"])
def test_generator_conv_transpose_joint_cg(mode):
    """ConvTranspose has no per-channel layout on dim 0: CG runs jointly over all parameters."""
    torch.manual_seed(7)
    cls = proxprop_module_generator(nn.ConvTranspose1d)
    layer = cls(2, 3, kernel_size=3, stride=2, tau_prox=0.5, optimization_mode=mode).double()
    x = torch.randn(2, 2, 4, dtype=torch.float64)
    _, g = run_layer(layer, x)
    # A column by column: apply the layer's (linear) map to every basis parameter vector
    params = [p.detach() for p in layer.parameters()]
    sizes = [p.numel() for p in params]
    cols = []
    for j in range(sum(sizes)):
        e = np.zeros(sum(sizes))
        e[j] = 1.0
        w = torch.from_numpy(e[:sizes[0]].reshape(params[0].shape))
        b = torch.from_numpy(e[sizes[0]:])
        cols.append(nn.functional.conv_transpose1d(x, w, b, stride=2).reshape(-1).numpy())
    a = np.stack(cols, axis=1)
    theta = np.concatenate([p.reshape(-1).numpy() for p in params])[:, None]
    got = np.concatenate([p.grad.reshape(-1).numpy() for p in layer.parameters()])[:, None]
    expected = ref_direction(a, g.reshape(-1, 1).numpy(), theta, 0.5, mode)
    assert_close(got, expected)


def test_generator_maps_linear_and_conv2d_to_fast_classes():
    assert proxprop_module_generator(nn.Linear) is ProxPropLinear
    assert proxprop_module_generator(nn.Conv2d) is ProxPropConv2d
    layer = proxprop_module_generator(nn.Conv1d)(2, 3, 3, tau_prox=0.2, optimization_mode="prox_cg2")
    assert "tau_prox=0.2" in repr(layer) and "prox_cg2" in repr(layer)


@pytest.mark.parametrize("mode", ["prox_exact", "prox_cg2", "prox_cg3_ref"])
def test_conv2d_tiny_batch_uses_dual_form_correctly(mode):
    """n = 2 rows < p = 73 columns: the flop model picks the dual (n x n) system."""
    torch.manual_seed(9)
    layer = ProxPropConv2d(8, 3, 3, tau_prox=0.8, optimization_mode=mode).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    _, g = run_layer(layer, x)
    a = conv_matrix(x.numpy(), (3, 3), (1, 1), (0, 0), (1, 1), True)
    expected = ref_direction(a, conv_g_matrix(g), params_matrix(layer), 0.8, mode, joint=mode.endswith("_ref"))
    assert_close(grads_matrix(layer), expected)


@pytest.mark.parametrize("form,cg,block", [("dual", "direct", 7), ("dual", "direct", None),
                                           ("primal", "direct", None), ("dual", "spectral", None),
                                           ("primal", "spectral", None), ("dual", "moments", None),
                                           ("primal", "moments", None)])
def test_linear_early_stop_and_row_blocks(form, cg, block, monkeypatch):
    """Small tau makes M nearly a multiple of I: CG meets the reference's stop rule early."""
    if block is not None:  # several row blocks in the dual loop (7 elements -> 1 row per block)
        monkeypatch.setattr(solvers_module, "_ROW_BLOCK_ELEMENTS", block)
    torch.manual_seed(10)
    tau = 2e-3
    layer = ProxPropLinear(6, 5, tau_prox=tau, optimization_mode="prox_cg10",
                           solver_form=form, cg_strategy=cg).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    _, g = run_layer(layer, x)
    STOPS.clear()
    expected = ref_direction(linear_matrix(x.numpy(), True), g.numpy(), params_matrix(layer), tau, "prox_cg10")
    assert STOPS and STOPS[0] < 10  # the reference stopped early
    assert_close(grads_matrix(layer), expected)


@pytest.mark.parametrize("strategy", ["gram", "matrix_free"])
def test_conv2d_early_stop(strategy):
    torch.manual_seed(12)
    tau = 1e-3
    layer = ProxPropConv2d(2, 3, 2, tau_prox=tau, optimization_mode="prox_cg10", conv_strategy=strategy).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    _, g = run_layer(layer, x)
    STOPS.clear()
    a = conv_matrix(x.numpy(), (2, 2), (1, 1), (0, 0), (1, 1), True)
    expected = ref_direction(a, conv_g_matrix(g), params_matrix(layer), tau, "prox_cg10")
    assert STOPS and STOPS[0] < 10
    assert_close(grads_matrix(layer), expected)


@pytest.mark.parametrize("mode", ["prox_cg1", "prox_cg2", "prox_cg5", "prox_cg1_ref", "prox_cg4_ref"])
def test_linear_dual_row_blocks_match_reference(mode, monkeypatch):
    monkeypatch.setattr(solvers_module, "_ROW_BLOCK_ELEMENTS", 10)  # 2 rows per block, 7 rows
    torch.manual_seed(13)
    layer = ProxPropLinear(12, 7, tau_prox=0.9, optimization_mode=mode, solver_form="dual",
                           cg_strategy="direct").double()
    x = torch.randn(5, 12, dtype=torch.float64)
    _, g = run_layer(layer, x)
    expected = ref_direction(linear_matrix(x.numpy(), True), g.numpy(), params_matrix(layer), 0.9, mode)
    assert_close(grads_matrix(layer), expected)
