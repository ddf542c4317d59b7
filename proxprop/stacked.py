"""Stacked ProxProp layers: K independent copies of one layer, trained as one.

A fused trial trains K members of one architecture together.  Their parameters are stacked
along a leading member dimension and each layer runs one batched product for all of them:

    StackedLinear   weight (K, m, k), bias (K, m); input (K, n, k) -> output (K, n, m) by bmm.
                    An input without the member dimension, (n, k), is shared by all members
                    (full-batch evaluation on one data set): output (K, n, m).
    StackedConv2d   weight (K, m, c, kh, kw), bias (K, m); activations in the grouped layout
                    (n, K*c, H, W), member k owning channels [k*c, (k+1)*c), so one grouped
                    convolution (groups=K) serves all members and ReLU / max-pooling apply
                    unchanged.  A shared input (n, c, H, W) is convolved with all K*m filters
                    at once (groups=1) and comes out in the grouped layout.

In ProxProp modes the backward writes each member's own direction (its own A_k, g_k and
tau_k; ALGORITHM.md sections 2-3) into the stacked .grad through a custom autograd Function,
so .grad[k] equals what the unfused layer of member k would hold after its own backward.  The
input gradient is ordinary backprop.  In "gradient" mode the layers use plain autograd.
The batched solves are the unfused layers' (stacked_solvers.py adapts the calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gram import conv2d_gram, conv2d_gram_flops
from .stacked_solvers import StackedSolve, solve_flops, stacked_cg, stacked_gram_solve

__all__ = [
    "StackedConv2d",
    "StackedLinear",
    "stacked_conv2d_direction",
    "stacked_linear_direction",
]

#: Convolutions (forward + weight gradient) run below GEMM speed: flops -> GEMM equivalents
#: (the unfused layer's factor).
_CONV_SLOWDOWN = 3.0


# --------------------------------------------------------------------------------------------
# linear


def _linear_form(n: int, k: int, m: int, has_bias: bool, solve: StackedSolve) -> str:
    """The cheapest way (per member, in flops) to solve for these shapes:
    primal  p x p Gram A^T A:  2 n p^2 + 2 n p m (right-hand sides) + solve(p)
    dual    n x n Gram A A^T:  2 n^2 k + solve(n) + 2 n m k (the direction g'^T a)
    matrix-free CG (A and A^T as products with a):  2 n p m (right-hand sides) and 2 n p m per
            product, two per iteration but one in the last (only |A p|^2 is needed there)."""
    p = k + int(has_bias)
    costs = {
        "primal": 2.0 * n * p * p + 2.0 * n * p * m + solve_flops(p, m, solve),
        "dual": 2.0 * n * n * k + solve_flops(n, m, solve) + 2.0 * n * m * k,
    }
    if solve.kind in ("prox_cg", "prox_cg_ref"):
        costs["matrix_free"] = 2.0 * n * p * m * (2 * solve.iterations)
    return min(costs, key=costs.__getitem__)


def stacked_linear_direction(
    a: Tensor, g: Tensor, has_bias: bool, solve: StackedSolve, *, form: str | None = None
) -> tuple[Tensor, Tensor | None]:
    """Directions for weight (K, m, k) and bias (K, m) from inputs a (K, n, k), g (K, n, m).

    A_k = [a_k, 1] (n x p).  Three forms, the cheapest for these shapes unless ``form`` forces
    one: dual (n x n Gram A A^T; the result g' replaces g in the ordinary gradient g'^T a),
    primal (p x p Gram A^T A; right-hand sides the ordinary gradient rows A^T g), or, for CG,
    matrix-free (each Gram product as A^T (A v), two products with a).
    """
    n, k = a.shape[1], a.shape[2]
    m = g.shape[2]
    g_rows = g.transpose(1, 2)  # (K, m, n)
    if solve.kind == "gradient":
        return torch.bmm(g_rows, a), (g.sum(dim=1) if has_bias else None)
    form = form or _linear_form(n, k, m, has_bias, solve)
    if form == "matrix_free" and solve.kind not in ("prox_cg", "prox_cg_ref"):
        raise ValueError(f"the matrix-free form runs CG only, not {solve.kind}")
    if form == "dual":
        gram = torch.bmm(a, a.transpose(1, 2))
        if has_bias:
            gram = gram + 1.0
        g_dual = stacked_gram_solve(gram, g_rows, solve, dual=True)  # (K, m, n)
        return torch.bmm(g_dual, a), (g_dual.sum(dim=2) if has_bias else None)
    a_aug = torch.cat([a, a.new_ones(a.shape[0], n, 1)], dim=2) if has_bias else a  # (K, n, p)
    rhs = torch.bmm(g_rows, a_aug)  # (K, m, p): the ordinary gradient rows A^T g
    if form == "primal":
        gram = torch.bmm(a_aug.transpose(1, 2), a_aug)  # (K, p, p)
        direction = stacked_gram_solve(gram, rhs, solve, dual=False)
    else:
        a_rows = a_aug.transpose(1, 2)

        def apply_gram(v: Tensor) -> Tensor:  # rows v (K, r, p) -> rows of A^T A v
            return torch.bmm(torch.bmm(v, a_rows), a_aug)

        def last_curvature(v: Tensor) -> Tensor:  # per row |A v|^2
            return torch.bmm(v, a_rows).square().sum(dim=2)

        direction = stacked_cg(
            apply_gram, rhs, solve.inv_tau, solve.iterations,
            reference=solve.kind == "prox_cg_ref", last_curvature=last_curvature,
        )
    if has_bias:
        return direction[:, :, :k], direction[:, :, k]
    return direction, None


def _linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """(K, n, k) or shared (n, k) inputs -> (K, n, m)."""
    if x.dim() == 2:
        out = torch.matmul(x, weight.transpose(1, 2))
        return out if bias is None else out + bias[:, None, :]
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))


class _StackedProxLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, solve: StackedSolve) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.solve, ctx.has_bias = solve, bias is not None
        return _linear_forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad_out, weight) if ctx.needs_input_grad[0] else None
        grad_w, grad_b = stacked_linear_direction(x, grad_out, ctx.has_bias, ctx.solve)
        return grad_x, grad_w, grad_b, None


# --------------------------------------------------------------------------------------------
# convolution


@dataclass(frozen=True)
class StackedConvGeometry:
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


def _grouped_weight(weight: Tensor) -> Tensor:
    """(K, m, c, kh, kw) -> (K*m, c, kh, kw)."""
    return weight.reshape((-1, *tuple(weight.shape[2:])))


#: Devices where a grouped convolution (groups = K) is run as K ordinary convolutions: on CPU
#: oneDNN's grouped kernels were 1.1-7x slower than the loop (digits ConvNet layers, K = 6,
#: batch 100, forward and backward; measured on this 2-core CPU).  On CUDA groups are kept.
LOOP_GROUPS_ON = ("cpu",)


def _loop_groups(x: Tensor, groups: int) -> bool:
    return groups > 1 and x.device.type in LOOP_GROUPS_ON


def _grouped_conv(x: Tensor, weight: Tensor, bias: Tensor | None, geom: StackedConvGeometry,
                  groups: int) -> Tensor:
    """F.conv2d(x, weight, bias, ..., groups): (n, K*c, H, W) with (K*m, c, kh, kw) filters."""
    if not _loop_groups(x, groups):
        return F.conv2d(x, weight, bias, geom.stride, geom.padding, geom.dilation, groups)
    biases = [None] * groups if bias is None else bias.chunk(groups)
    return torch.cat([
        F.conv2d(part, w, b, geom.stride, geom.padding, geom.dilation)
        for part, w, b in zip(x.chunk(groups, dim=1), weight.chunk(groups), biases, strict=True)
    ], dim=1)


def _conv_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, has_bias: bool, geom: StackedConvGeometry,
    groups: int, mask: list[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Input, weight (= A^T g per member) and bias gradients of a grouped convolution."""
    def backward(g: Tensor, part: Tensor, w: Tensor, count: int) -> tuple:
        return torch.ops.aten.convolution_backward(
            g, part, w, [w.shape[0]] if has_bias else None,
            list(geom.stride), list(geom.padding), list(geom.dilation), False, [0, 0], count, mask,
        )

    if not _loop_groups(x, groups):
        return backward(grad_out, x, weight, groups)
    parts = [
        backward(g, part, w, 1)
        for g, part, w in zip(grad_out.chunk(groups, dim=1), x.chunk(groups, dim=1), weight.chunk(groups), strict=True)
    ]
    grad_x, grad_w, grad_b = zip(*parts, strict=True)
    return (
        torch.cat(grad_x, dim=1) if mask[0] else None,
        torch.cat(grad_w) if mask[1] else None,
        torch.cat(grad_b) if mask[2] else None,
    )


def _member_inputs(x: Tensor, members: int) -> list[Tensor]:
    """The grouped input (n, K*c, H, W) as K views (n, c, H, W)."""
    return list(x.chunk(members, dim=1))


def stacked_conv2d_gram(x: Tensor, members: int, kernel: tuple[int, int], geom: StackedConvGeometry,
                        has_bias: bool) -> Tensor:
    """A_k^T A_k for every member (K, p, p), A_k = [im2col of member k's channels, 1], from
    the unfused layers' Gram formation (proxprop/gram.py: the shift method for stride-1 convs,
    ~10x fewer flops than an im2col product for 5x5 kernels), one member at a time: each is a
    large computation of its own."""
    return torch.stack([
        conv2d_gram(part, kernel, geom.stride, geom.padding, geom.dilation, has_bias)
        for part in _member_inputs(x, members)
    ])


def stacked_conv2d_direction(
    x: Tensor, weight: Tensor, has_bias: bool, geom: StackedConvGeometry, solve: StackedSolve,
    grad_w: Tensor, grad_b: Tensor | None, grad_out: Tensor, *, strategy: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Directions for a stacked convolution, per member and output channel.

    x (n, K*c, H, W) grouped input, weight (K, m, c, kh, kw), grad_w (K*m, c, kh, kw) and
    grad_b (K*m,) the ordinary gradients (A_k^T g_k), grad_out (n, K*m, H', W').
    Strategy from a flop model (per member, as the unfused layer's): the Gram form (exact or
    CG on S_k = A_k^T A_k, formed as the unfused layer forms it) or matrix-free CG (A is the
    grouped convolution with the candidate weights, A^T its weight gradient), cheaper for few
    channels and iterations.
    ``strategy`` ("gram" | "matrix_free") forces one (prox_exact always uses the Gram form).
    The reference variant (prox_cg_ref) runs one CG over all of a member's channels (joint),
    like the reference's conv layers.
    """
    members, m = weight.shape[0], weight.shape[1]
    kernel = (weight.shape[3], weight.shape[4])
    p0 = weight[0, 0].numel()
    rhs = grad_w.reshape(members, m, p0)
    if has_bias:
        assert grad_b is not None  # computed whenever the layer has a bias
        rhs = torch.cat([rhs, grad_b.reshape(members, m, 1)], dim=2)
    if solve.kind == "gradient":
        directions = rhs
    else:
        p = p0 + int(has_bias)
        n = grad_out.shape[0] * grad_out.shape[2] * grad_out.shape[3]
        joint = solve.kind == "prox_cg_ref"
        member_x = _member_inputs(x, members)[0]
        gram_cost = conv2d_gram_flops(member_x, kernel, geom.stride, geom.padding, geom.dilation)
        gram_cost += solve_flops(p, m, solve)
        free_cost = (4.0 * solve.iterations - 2.0) * n * p * m * _CONV_SLOWDOWN
        strategy = strategy or ("gram" if gram_cost <= free_cost else "matrix_free")
        if solve.kind == "prox_exact" or strategy == "gram":
            gram = stacked_conv2d_gram(x, members, kernel, geom, has_bias)
            directions = stacked_gram_solve(gram, rhs, solve, dual=False, joint=joint)
        else:
            directions = _matrix_free_cg(x, weight, has_bias, geom, solve, rhs, joint)
    w_dir = directions[:, :, :p0].reshape(weight.shape)
    return w_dir, (directions[:, :, p0] if has_bias else None)


def _matrix_free_cg(
    x: Tensor, weight: Tensor, has_bias: bool, geom: StackedConvGeometry, solve: StackedSolve,
    rhs: Tensor, joint: bool,
) -> Tensor:
    members, m = weight.shape[0], weight.shape[1]
    p0 = weight[0, 0].numel()
    grouped = _grouped_weight(weight)

    def apply_a(v: Tensor) -> Tensor:  # (K, m, p) candidate parameters -> A v (n, K*m, H', W')
        w = v[:, :, :p0].reshape(grouped.shape)
        b = v[:, :, p0].reshape(-1) if has_bias else None
        return _grouped_conv(x, w, b, geom, members)

    def apply_gram(v: Tensor) -> Tensor:  # A^T A v
        _, aw, ab = _conv_backward(apply_a(v), x, grouped, has_bias, geom, members, [False, True, has_bias])
        rows = _tensor(aw).reshape(members, m, p0)
        return torch.cat([rows, ab.reshape(members, m, 1)], dim=2) if ab is not None else rows

    def last_curvature(v: Tensor) -> Tensor:  # per row |A v|^2
        return apply_a(v).square().sum(dim=(0, 2, 3)).reshape(members, m)

    return stacked_cg(
        apply_gram, rhs, solve.inv_tau, solve.iterations, joint=joint,
        reference=solve.kind == "prox_cg_ref", last_curvature=last_curvature,
    )


class _StackedProxConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, geom: StackedConvGeometry, solve: StackedSolve
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geom, ctx.solve, ctx.has_bias = geom, solve, bias is not None
        members = weight.shape[0]
        return _grouped_conv(x, _grouped_weight(weight), None if bias is None else bias.reshape(-1), geom, members)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        has_bias, members = ctx.has_bias, weight.shape[0]
        need_x = ctx.needs_input_grad[0]
        grad_x, grad_w, grad_b = _conv_backward(
            grad_out, x, _grouped_weight(weight), has_bias, ctx.geom, members, [need_x, True, has_bias]
        )
        assert grad_w is not None  # asked for in the mask
        w_dir, b_dir = stacked_conv2d_direction(x, weight, has_bias, ctx.geom, ctx.solve, grad_w, grad_b, grad_out)
        return grad_x, w_dir, b_dir, None, None


# --------------------------------------------------------------------------------------------
# modules


def _tensor(value: object) -> Tensor:
    """A layer attribute known to be a tensor (nn.Module's attribute type is wider)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    return value


def _pair(value: object) -> tuple[int, int]:
    """A convolution's stride / padding / dilation as a pair of ints."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"stacked convolutions need 2-d geometry, got {value!r}")
    return int(value[0]), int(value[1])


class _StackedLayer(nn.Module):
    """Common part: stacked weight/bias parameters, the mode, and per-member 1/tau_prox."""

    inv_tau: Tensor  # (K,) buffer

    def __init__(self, weight: Tensor, bias: Tensor | None, kind: str, iterations: int, tau_prox: Sequence[float]):
        super().__init__()
        if len(tau_prox) != weight.shape[0]:
            raise ValueError(f"need one tau_prox per member ({weight.shape[0]}), got {len(tau_prox)}")
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.kind, self.iterations = kind, iterations
        inv_tau = torch.tensor([1.0 / float(t) for t in tau_prox], dtype=torch.float64)
        self.register_buffer("inv_tau", inv_tau.to(dtype=weight.dtype, device=weight.device))

    @property
    def members(self) -> int:
        return int(self.weight.shape[0])

    def solve(self) -> StackedSolve:
        return StackedSolve(self.kind, self.iterations, self.inv_tau)

    @staticmethod
    def _stack_options(layers: Sequence[nn.Module]) -> tuple[Tensor, Tensor | None, str, int, list[float]]:
        """Stacked parameters (copies) and the shared mode of K unfused layers; plain torch
        layers (no ProxProp options) are plain stacked layers (mode "gradient")."""
        configs = [getattr(layer, "solver_config", None) for layer in layers]
        modes = {(c.kind, c.cg_iterations) if c is not None else ("gradient", 0) for c in configs}
        if len(modes) != 1:
            raise ValueError(f"stacked layers need one mode for all members, got {sorted(modes)}")
        kind, iterations = modes.pop()
        taus = [c.tau_prox if c is not None else 1.0 for c in configs]
        weight = torch.stack([_tensor(layer.weight).detach() for layer in layers]).clone()
        has_bias = {layer.bias is not None for layer in layers}
        if len(has_bias) != 1:
            raise ValueError("stacked layers need bias on all members or on none")
        bias = torch.stack([_tensor(layer.bias).detach() for layer in layers]).clone() if has_bias.pop() else None
        return weight, bias, kind, iterations, taus

    def select_(self, index: Tensor) -> None:
        """Keep only the members at ``index`` (in that order), in place.  The parameters are new
        Parameter objects (autograd caches a leaf's shape, so resizing one in place would break
        graphs built before): optimizers must be given them again."""
        self.weight = nn.Parameter(self.weight.detach()[index].contiguous())
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.detach()[index].contiguous())
        self.inv_tau = self.inv_tau[index]

    def extra_repr(self) -> str:
        return f"members={self.members}, kind={self.kind!r}, iterations={self.iterations}"


class StackedLinear(_StackedLayer):
    """K linear layers (ProxProp in prox modes); see the module doc for shapes."""

    @classmethod
    def from_layers(cls, layers: Sequence[nn.Module]) -> StackedLinear:
        """Stack K nn.Linear / ProxPropLinear layers (parameters copied, member k = layers[k])."""
        return cls(*cls._stack_options(layers))

    def forward(self, x: Tensor) -> Tensor:
        """x: (K, n, k) per member, or (n, k) shared by all members."""
        if self.kind == "gradient" or not torch.is_grad_enabled():
            return _linear_forward(x, self.weight, self.bias)
        if x.dim() == 2:
            x = x.expand(self.members, -1, -1)
        return _StackedProxLinearFunction.apply(x, self.weight, self.bias, self.solve())


class StackedConv2d(_StackedLayer):
    """K 2-d convolutions (ProxProp in prox modes) on the grouped layout; see the module doc."""

    def __init__(self, weight: Tensor, bias: Tensor | None, kind: str, iterations: int,
                 tau_prox: Sequence[float], geometry: StackedConvGeometry):
        super().__init__(weight, bias, kind, iterations, tau_prox)
        self.geometry = geometry

    @classmethod
    def from_layers(cls, layers: Sequence[nn.Module]) -> StackedConv2d:
        """Stack K nn.Conv2d / ProxPropConv2d layers with numeric zero padding and groups=1."""
        geometries = set()
        for layer in layers:
            if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise ValueError("stacked convolutions need groups=1 and numeric zero padding")
            geometries.add(StackedConvGeometry(_pair(layer.stride), _pair(layer.padding), _pair(layer.dilation)))
        if len(geometries) != 1:
            raise ValueError("stacked convolutions need one geometry for all members")
        return cls(*cls._stack_options(layers), geometry=geometries.pop())

    def forward(self, x: Tensor, shared: bool = False) -> Tensor:
        """x: grouped (n, K*c, H, W), or with shared=True one input (n, c, H, W) for all members;
        the output is grouped (n, K*m, H', W')."""
        geom = self.geometry
        bias = None if self.bias is None else self.bias.reshape(-1)
        if self.kind == "gradient" or not torch.is_grad_enabled():
            return _grouped_conv(x, _grouped_weight(self.weight), bias, geom, 1 if shared else self.members)
        if shared:
            x = x.repeat(1, self.members, 1, 1)
        return _StackedProxConv2dFunction.apply(x, self.weight, self.bias, geom, self.solve())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.geometry}"

