"""ProxPropLinear: an nn.Linear whose backward writes the ProxProp direction into .grad."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gram import row_gram
from .layer_options import ProxPropOptions
from .modes import SolverConfig
from .solvers import gram_solve_cost, gram_solve_factored
from .strategies import CG_STRATEGIES, SOLVER_FORMS, check_choice

__all__ = ["ProxPropLinear", "linear_direction"]


def linear_direction(
    a: Tensor, g: Tensor, has_bias: bool, cfg: SolverConfig,
    *, solver_form: str | None = None, cg_strategy: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Direction for weight (m x k) and bias (m,) from inputs a (n x k) and g = dL/dZ (n x m).

    A = [a, 1] (n x p).  solver_form None chooses the dual form (n x n Gram, then the ordinary
    weight-gradient product with g replaced by g') or the primal form (p x p Gram applied to
    the ordinary gradient) by a flop count of forming and solving each; cg_strategy is
    passed to the solver (solvers.py).
    """
    n, k = a.shape
    m = g.shape[1]
    if cfg.kind == "gradient":
        gw = g.T @ a
        return gw, (g.sum(dim=0) if has_bias else None)
    p = k + int(has_bias)
    if solver_form is None:
        dual_cost = 2.0 * n * n * k + gram_solve_cost(n, m, cfg, a.device, a.dtype, cg_strategy=cg_strategy)
        primal_cost = 2.0 * n * k * k + gram_solve_cost(p, m, cfg, a.device, a.dtype, cg_strategy=cg_strategy)
        solver_form = "dual" if dual_cost <= primal_cost else "primal"
    if solver_form == "dual":
        gram = row_gram(a)
        if has_bias:
            gram += 1.0
        # g' = g^T (...)^{-1} stays factored: (g' a) is the weight-gradient product, and
        # g' = L R may be applied as L (R a) when the layer has fewer inputs than outputs
        g_dual = gram_solve_factored(gram, g.T, cfg, dual=True, cg_strategy=cg_strategy)
        return g_dual.times(a), (g_dual.row_sums() if has_bias else None)
    gw = g.T @ a
    if has_bias:
        col_sums = a.sum(dim=0)
        n_col = torch.full((1, 1), float(n), dtype=a.dtype, device=a.device)
        gram = torch.cat(
            [torch.cat([row_gram(a.T), col_sums[:, None]], dim=1),
             torch.cat([col_sums[None, :], n_col], dim=1)],
            dim=0,
        )
        rhs = torch.cat([gw, g.sum(dim=0)[:, None]], dim=1)
    else:
        gram = row_gram(a.T)
        rhs = gw
    direction = gram_solve_factored(gram, rhs, cfg, dual=False, cg_strategy=cg_strategy).dense()
    if has_bias:
        return direction[:, :k], direction[:, k]
    return direction, None


class _ProxLinearFunction(torch.autograd.Function):
    """Forward = F.linear; backward = ordinary input gradient + ProxProp parameter direction.

    Returning the direction as the parameters' "gradient" lets autograd accumulate it into
    .grad exactly like an ordinary gradient (two backward passes give twice the direction).
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, cfg: SolverConfig,
        solver_form: str | None, cg_strategy: str | None,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.cfg = cfg
        ctx.strategies = {"solver_form": solver_form, "cg_strategy": cg_strategy}
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            a = x.reshape(-1, x.shape[-1])
            g = grad_out.reshape(-1, grad_out.shape[-1])
            grad_w, grad_b = linear_direction(a, g, ctx.has_bias, ctx.cfg, **ctx.strategies)
            if not ctx.needs_input_grad[1]:
                grad_w = None
            if not (ctx.has_bias and ctx.needs_input_grad[2]):
                grad_b = None
        return grad_x, grad_w, grad_b, None, None, None


class ProxPropLinear(ProxPropOptions, nn.Linear):
    """nn.Linear trained by ProxProp: after backward, .grad holds (A^T A + I/tau)^{-1} A^T g
    (or N CG steps of it); see ALGORITHM.md section 2.  The input gradient is ordinary.

    Extra keyword arguments: tau_prox (> 0, default 1.0) and optimization_mode ("gradient",
    "prox_exact", "prox_cg<N>"; default "prox_cg1").  In "gradient" mode the layer is a plain
    nn.Linear (no custom autograd function at all).

    How the direction is computed (strategies.py; None = chosen per step by a flop model from
    the batch size, the layer's shape and dtype; every choice gives the same direction up to
    rounding):
      solver_form: "primal" (p x p system A^T A, p = in_features + bias) or "dual" (n x n
        system A A^T, n = batch rows).
      cg_strategy: "direct", "spectral" or "moments" (solvers.py).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        tau_prox: float = 1.0,
        optimization_mode: str = "prox_cg1",
        solver_form: str | None = None,
        cg_strategy: str | None = None,
    ) -> None:
        self._init_options(tau_prox, optimization_mode)
        solver_form = check_choice("solver_form", solver_form, SOLVER_FORMS)
        cg_strategy = check_choice("cg_strategy", cg_strategy, CG_STRATEGIES)
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.solver_form = solver_form
        self.cg_strategy = cg_strategy

    def forward(self, input: Tensor) -> Tensor:
        if self.solver_config.kind == "gradient":
            return F.linear(input, self.weight, self.bias)
        return _ProxLinearFunction.apply(
            input, self.weight, self.bias, self.solver_config, self.solver_form, self.cg_strategy
        )

    def extra_repr(self) -> str:
        options = self.options_repr(solver_form=self.solver_form, cg_strategy=self.cg_strategy)
        return f"{nn.Linear.extra_repr(self)}, {options}"
