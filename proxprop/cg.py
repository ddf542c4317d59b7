"""Conjugate gradient on many independent SPD systems at once (one per row).

Every ProxProp system has the form  M x = b  with  M = A^T A + I/tau_prox,  b = A^T g,
started at x = 0 (the warm start X_k of ALGORITHM.md section 2, shifted so that the solver
returns the direction X_k - X_{k+1} directly).  The rows of ``b`` are the output units.

The loop never synchronises with the device: the reference's early stop (all rows stop once
the largest squared residual is below tol^2 times the mean initial squared residual) is a
0/1 factor on the step length, so CUDA streams and torch.compile see a fixed graph.  On the
CPU the loop leaves as soon as the factor drops to 0, which saves the remaining operator
applications of matrix-free solves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["EARLY_STOP_TOL", "REFERENCE_EPS", "batched_cg"]

#: The reference's relative tolerance of the early stop (on the residual norm).
EARLY_STOP_TOL = 1e-2
#: The constant the reference adds to CG's denominators (used by the "_ref" variant only).
REFERENCE_EPS = 1e-6


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den > 0, else 0: a zero residual (g == 0) gives a zero step, not NaN."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), 0.0)


def _step_length(rr: Tensor, p_m_p: Tensor, active: Tensor, eps: float, reference_variant: bool) -> Tensor:
    """CG's alpha per row, zero where the early stop has fired, shaped to scale rows."""
    alpha = rr / (p_m_p + eps) if reference_variant else _safe_div(rr, p_m_p)
    return (alpha * active)[..., None]


def batched_cg(
    apply_m: Callable[[Tensor], Tensor],
    b: Tensor,
    iterations: int,
    weight: Tensor | None = None,
    joint: bool = False,
    reference_variant: bool = False,
    tol: float = EARLY_STOP_TOL,
    curvature: Callable[[Tensor], Tensor] | None = None,
    inner: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Run ``iterations`` CG steps from x = 0 on  M x_i = b_i  for every row i of ``b``.

    b: (..., rows, q); leading dimensions are independent problems (each with its own early
        stop), rows are the right-hand sides of one problem.
    apply_m: maps a (..., rows, q) tensor to M applied to each row.
    weight: optional (..., q) non-negative weights defining the inner product <u, v> = sum w u v
        (the dual/eigen coordinates of solvers.py use it; None means the plain dot product).
    inner: optional per-row inner product (..., rows, q) x (..., rows, q) -> (..., rows) that
        replaces the weighted dot product (moments.py: coefficient vectors under a Gram matrix).
    joint: one CG over all rows as a single vector (the reference's generic layers) instead of
        one CG per row.
    reference_variant: reproduce the reference loop, whose first search-direction update reads
        the already-updated residual (P aliases R) and whose denominators carry + 1e-6.
    curvature: optional map from p to the per-row <p, M p> (unweighted, per row) that is
        cheaper than apply_m (|A p|^2 + |p|^2/tau needs only A, not A^T); used for the last
        iteration, which needs the step length but not M p.
    """
    def dot(u: Tensor, v: Tensor) -> Tensor:
        if inner is not None:
            per_row = inner(u, v)
        else:
            per_row = (u * v).sum(dim=-1) if weight is None else ((u * v) @ weight[..., None])[..., 0]
        return per_row.sum(dim=-1, keepdim=True).expand_as(per_row) if joint else per_row

    eps = REFERENCE_EPS if reference_variant else 0.0
    x = torch.zeros_like(b, memory_format=torch.contiguous_format)
    r = b
    p = r
    rr = dot(r, r)
    threshold = (tol * tol) * rr.mean(dim=-1, keepdim=True)
    active = torch.ones_like(threshold)
    host_checks = b.device.type == "cpu" and not torch.compiler.is_compiling()
    for k in range(iterations):
        last = k == iterations - 1
        if last and curvature is not None and weight is None:
            # the step length needs only <p, M p>; M p itself is never used again
            p_m_p = curvature(p)
            if joint:
                p_m_p = p_m_p.sum(dim=-1, keepdim=True).expand_as(p_m_p)
            x.addcmul_(_step_length(rr, p_m_p, active, eps, reference_variant), p)
            break
        mp = apply_m(p)
        alpha = _step_length(rr, dot(p, mp), active, eps, reference_variant)
        x.addcmul_(alpha, p)
        if last:
            break
        r = torch.addcmul(r, alpha, mp, value=-1.0)
        rr_new = dot(r, r)
        active = active * (rr_new.amax(dim=-1, keepdim=True) >= threshold).to(b.dtype)
        if host_checks and not bool(active.any()):
            break
        if reference_variant:
            beta = rr_new / (rr + eps)
            # the reference's P is the same tensor as R during the first iteration
            p = torch.addcmul(r, beta[..., None], r if k == 0 else p)
        else:
            p = torch.addcmul(r, _safe_div(rr_new, rr)[..., None], p)
        rr = rr_new
    return x
