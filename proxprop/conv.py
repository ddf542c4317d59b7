"""ProxPropConv2d: an nn.Conv2d whose backward writes the ProxProp direction into .grad.

ALGORITHM.md section 3: with im2col the input becomes A (one row per sample and output
position, C_in*k_h*k_w columns plus a ones column for the bias) and each output channel is one
column of X.  The direction is solved per output channel (per group for grouped convolutions)
with one of three strategies picked by a flop model from the shapes:

* Gram: form S = A^T A (p x p) once (gram.py: Fourier or shift method for stride-1 convs,
  chunked im2col GEMM otherwise), then exact Cholesky or CG on S for all channels at once
  (solvers.py).  The right-hand side is the ordinary weight gradient.
* matrix-free CG: each iteration applies A (a convolution with the candidate weights) and A^T
  (the convolution weight gradient); the last iteration needs only |A p|^2, so cg1 costs one
  extra forward convolution.  Cheaper for few output channels and few iterations.
* dual: for n < p (tiny batches, large kernels) K = A A^T (n x n) from an explicit im2col; the
  direction is the ordinary weight gradient of g' = (K + I/tau)^{-1} g (or CG on it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cg import batched_cg
from .gram import conv2d_gram, conv2d_gram_flops, row_gram
from .layer_options import ProxPropOptions
from .modes import SolverConfig
from .solvers import gram_solve_cost, gram_solve_factored
from .strategies import CG_STRATEGIES, CONV_STRATEGIES, GRAM_METHODS, check_choice

__all__ = ["ConvGeometry", "ConvStrategies", "ProxPropConv2d", "conv2d_direction"]
#: Convolutions (forward + weight gradient) in GEMM-flop equivalents per flop, measured with
#: oneDNN on the idle 2-core CPU (GEMM 100-200 GFLOP/s): 180-290 GFLOP/s with 16-20 input
#: channels, 57 with 3 (the paper's first layer), so few-input convolutions count 3x.
def _conv_slowdown(inputs_per_output: int) -> float:
    return 1.0 if inputs_per_output >= 128 else 3.0
#: im2col copies on top of the GEMM of the dual form.
_UNFOLD_SLOWDOWN = 2.0
#: Largest explicit im2col (elements) the dual form may build.
_DUAL_MAX_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class ConvGeometry:
    """stride, padding, dilation: (height, width) each; padding is numeric (explicit_padding)."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int


@dataclass(frozen=True)
class ConvStrategies:
    """The layer's strategy keywords (strategies.py), validated; None = flop model."""

    conv_strategy: str | None = None
    gram_method: str | None = None
    cg_strategy: str | None = None

    def __post_init__(self) -> None:
        check_choice("conv_strategy", self.conv_strategy, CONV_STRATEGIES)
        check_choice("gram_method", self.gram_method, GRAM_METHODS)
        check_choice("cg_strategy", self.cg_strategy, CG_STRATEGIES)


def _conv_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, has_bias: bool, geom: ConvGeometry, mask: list[bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Input gradient, weight gradient (= A^T g) and bias gradient in one ATen call."""
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, [weight.shape[0]] if has_bias else None,
        list(geom.stride), list(geom.padding), list(geom.dilation), False, [0, 0], geom.groups, mask,
    )


def _param_grads(
    grad_out: Tensor, x: Tensor, weight: Tensor, has_bias: bool, geom: ConvGeometry
) -> tuple[Tensor, Tensor | None]:
    """Weight gradient (= A^T g) and bias gradient (None without bias) of ``grad_out``."""
    _, grad_w, grad_b = _conv_backward(grad_out, x, weight, has_bias, geom, [False, True, has_bias])
    assert grad_w is not None  # requested by the mask
    return grad_w, grad_b


def _rows(grad_w: Tensor, grad_b: Tensor | None) -> Tensor:
    rows = grad_w.reshape(grad_w.shape[0], -1)
    return rows if grad_b is None else torch.cat([rows, grad_b[:, None]], dim=1)


def _dual_direction(
    x: Tensor, weight: Tensor, has_bias: bool, geom: ConvGeometry, cfg: SolverConfig,
    grad_out: Tensor, joint: bool, cg_strategy: str | None,
) -> tuple[Tensor, Tensor | None]:
    """Dual form for few rows (n < p): K = A A^T from an explicit im2col, then the ordinary
    weight gradient of g' = (K + I/tau)^{-1} g (per output channel)."""
    batch, m = grad_out.shape[:2]
    cols = F.unfold(x, weight.shape[2:], dilation=geom.dilation, padding=geom.padding, stride=geom.stride)
    a = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (n, p0), rows ordered (b, i, j)
    gram = row_gram(a)
    if has_bias:
        gram += 1.0
    g_rows = grad_out.transpose(0, 1).reshape(m, -1)
    g_dual = gram_solve_factored(gram, g_rows, cfg, dual=True, joint=joint, cg_strategy=cg_strategy).dense()
    g_img = g_dual.reshape(m, batch, *grad_out.shape[2:]).transpose(0, 1).contiguous()
    return _param_grads(g_img, x, weight, has_bias, geom)


def _single_group_direction(
    x: Tensor, weight: Tensor, has_bias: bool, geom: ConvGeometry, cfg: SolverConfig,
    grad_w: Tensor, grad_b: Tensor | None, grad_out: Tensor, how: ConvStrategies,
) -> tuple[Tensor, Tensor | None]:
    out_hw = grad_out.shape[2:]
    m = weight.shape[0]
    p0 = weight[0].numel()
    p = p0 + int(has_bias)
    n = x.shape[0] * out_hw[0] * out_hw[1]
    joint = cfg.kind == "prox_cg_ref"  # the reference flattens all conv parameters into one CG
    rhs = _rows(grad_w, grad_b)
    gram_cost = conv2d_gram_flops(x, weight.shape[2:], geom.stride, geom.padding, geom.dilation,
                                  method=how.gram_method)
    gram_cost += gram_solve_cost(p, m, cfg, x.device, x.dtype, cg_strategy=how.cg_strategy)
    free_cost = (4.0 * cfg.cg_iterations - 2.0) * n * p * m * _conv_slowdown(p0)
    if cfg.kind == "prox_exact":
        free_cost = float("inf")
    dual_cost = float("inf")
    if n * p0 <= _DUAL_MAX_ELEMENTS:
        dual_cost = _UNFOLD_SLOWDOWN * 2.0 * n * n * p0 + gram_solve_cost(
            n, m, cfg, x.device, x.dtype, cg_strategy=how.cg_strategy)
        dual_cost += 2.0 * n * p * m * _conv_slowdown(p0)
    strategy = how.conv_strategy or min(
        ("gram", gram_cost), ("matrix_free", free_cost), ("dual", dual_cost), key=lambda item: item[1]
    )[0]
    if strategy == "dual" and n * p0 <= _DUAL_MAX_ELEMENTS:
        return _dual_direction(x, weight, has_bias, geom, cfg, grad_out, joint, how.cg_strategy)
    if cfg.kind == "prox_exact" or strategy != "matrix_free":
        gram = conv2d_gram(x, weight.shape[2:], geom.stride, geom.padding, geom.dilation, has_bias,
                           method=how.gram_method)
        direction = gram_solve_factored(gram, rhs, cfg, dual=False, joint=joint,
                                        cg_strategy=how.cg_strategy).dense()
    else:
        inv_tau = cfg.inv_tau

        def apply_a(v: Tensor) -> Tensor:
            w = v[:, :p0].reshape(weight.shape)
            b = v[:, p0] if has_bias else None
            return F.conv2d(x, w, b, geom.stride, geom.padding, geom.dilation, 1)

        def apply_m(v: Tensor) -> Tensor:
            return torch.add(_rows(*_param_grads(apply_a(v), x, weight, has_bias, geom)), v, alpha=inv_tau)

        def curvature(v: Tensor) -> Tensor:
            return apply_a(v).square().sum(dim=(0, 2, 3)) + inv_tau * v.square().sum(dim=1)

        direction = batched_cg(
            apply_m, rhs, cfg.cg_iterations, joint=joint, reference_variant=joint, curvature=curvature
        )
    w_dir = direction[:, :p0].reshape(weight.shape)
    return w_dir, (direction[:, p0] if has_bias else None)


def conv2d_direction(
    x: Tensor, weight: Tensor, has_bias: bool, geom: ConvGeometry, cfg: SolverConfig,
    grad_w: Tensor, grad_b: Tensor | None, grad_out: Tensor,
    *, conv_strategy: str | None = None, gram_method: str | None = None, cg_strategy: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """ProxProp direction of a 2-d convolution given its ordinary weight/bias gradients.

    Grouped convolutions are split into independent single-group problems (each group's
    output channels only see that group's input channels).  The strategy keywords are those
    of ProxPropConv2d (None: flop model).
    """
    how = ConvStrategies(conv_strategy, gram_method, cg_strategy)
    if cfg.kind == "gradient":
        return grad_w, grad_b
    if geom.groups == 1:
        return _single_group_direction(x, weight, has_bias, geom, cfg, grad_w, grad_b, grad_out, how)
    single = ConvGeometry(geom.stride, geom.padding, geom.dilation, 1)
    c_in = x.shape[1] // geom.groups
    m_g = weight.shape[0] // geom.groups
    w_parts: list[Tensor] = []
    b_parts: list[Tensor] = []
    for gi in range(geom.groups):
        outs = slice(gi * m_g, (gi + 1) * m_g)
        w_dir, b_dir = _single_group_direction(
            x[:, gi * c_in:(gi + 1) * c_in], weight[outs], has_bias, single, cfg,
            grad_w[outs], None if grad_b is None else grad_b[outs], grad_out[:, outs], how,
        )
        w_parts.append(w_dir)
        if b_dir is not None:
            b_parts.append(b_dir)
    return torch.cat(w_parts), (torch.cat(b_parts) if has_bias else None)


class _ProxConv2dFunction(torch.autograd.Function):
    """Forward = F.conv2d; backward = ordinary input gradient + ProxProp parameter direction."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, geom: ConvGeometry, cfg: SolverConfig,
        how: ConvStrategies,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geom, ctx.cfg, ctx.how, ctx.has_bias = geom, cfg, how, bias is not None
        return F.conv2d(x, weight, bias, geom.stride, geom.padding, geom.dilation, geom.groups)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        has_bias = ctx.has_bias
        need_x = ctx.needs_input_grad[0]
        need_params = ctx.needs_input_grad[1] or (has_bias and ctx.needs_input_grad[2])
        grad_x, grad_w, grad_b = _conv_backward(
            grad_out, x, weight, has_bias, ctx.geom, [need_x, need_params, has_bias and need_params]
        )
        if need_params:
            assert grad_w is not None  # requested by the mask
            grad_w, grad_b = conv2d_direction(
                x, weight, has_bias, ctx.geom, ctx.cfg, grad_w, grad_b, grad_out, **asdict(ctx.how)
            )
            if not ctx.needs_input_grad[1]:
                grad_w = None
            if not (has_bias and ctx.needs_input_grad[2]):
                grad_b = None
        return grad_x, grad_w, grad_b, None, None, None


def explicit_padding(module: nn.modules.conv._ConvNd, input: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """Return (input padded as the module would, numeric padding left for the convolution).

    String padding ("same"/"valid") and non-zero padding modes are applied with F.pad first so
    that the solver only ever sees a plain zero-padded convolution.
    """
    if module.padding_mode != "zeros":
        padded = F.pad(input, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        return padded, (0,) * (input.dim() - 2)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return input, (0,) * (input.dim() - 2)
        pads: list[int] = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(input, pads), (0,) * (input.dim() - 2)
    return input, tuple(module.padding)


class ProxPropConv2d(ProxPropOptions, nn.Conv2d):
    """nn.Conv2d trained by ProxProp (per-output-channel direction; ALGORITHM.md section 3).

    Extra keyword arguments: tau_prox (> 0, default 1.0) and optimization_mode ("gradient",
    "prox_exact", "prox_cg<N>"; default "prox_cg1").  In "gradient" mode the layer is a plain
    nn.Conv2d (no custom autograd function at all).

    How the direction is computed (strategies.py; None = chosen per step by a flop model from
    the input and kernel shapes; every choice gives the same direction up to rounding):
      conv_strategy: "gram" (form A^T A, p x p with p = in_channels/groups * k_h * k_w + bias),
        "matrix_free" (CG with one convolution and one weight gradient per iteration; exact
        solves still form A^T A) or "dual" (A A^T from an explicit im2col; tiny batches).
      gram_method: "unfold" (chunked im2col GEMM), "shift" (shifted products) or "fft"
        (Fourier transforms); the last two for stride-1 undilated convolutions (gram.py).
      cg_strategy: "direct", "spectral" or "moments" (solvers.py).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        tau_prox: float = 1.0,
        optimization_mode: str = "prox_cg1",
        conv_strategy: str | None = None,
        gram_method: str | None = None,
        cg_strategy: str | None = None,
    ) -> None:
        self._init_options(tau_prox, optimization_mode)
        how = ConvStrategies(conv_strategy, gram_method, cg_strategy)
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
            device=device, dtype=dtype,
        )
        self.conv_strategy = how.conv_strategy
        self.gram_method = how.gram_method
        self.cg_strategy = how.cg_strategy

    def forward(self, input: Tensor) -> Tensor:
        if self.solver_config.kind == "gradient":
            return self._conv_forward(input, self.weight, self.bias)
        x, padding = explicit_padding(self, input)
        geom = ConvGeometry(tuple(self.stride), padding, tuple(self.dilation), self.groups)
        how = ConvStrategies(self.conv_strategy, self.gram_method, self.cg_strategy)
        return _ProxConv2dFunction.apply(x, self.weight, self.bias, geom, self.solver_config, how)

    def extra_repr(self) -> str:
        options = self.options_repr(
            conv_strategy=self.conv_strategy, gram_method=self.gram_method, cg_strategy=self.cg_strategy
        )
        return f"{nn.Conv2d.extra_repr(self)}, {options}"
