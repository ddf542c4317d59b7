"""ProxProp solves for K independent members at once (leading member dimension K).

A fused trial trains K copies of one architecture that differ in tau_prox (and data, weights).
Each member's layer has its own system (ALGORITHM.md section 2)

    M_k = A_k^T A_k + I / tau_k,   direction_k = M_k^{-1} A_k^T g_k   (or N CG steps of it)

and, as in the unfused solvers, every output unit (row) of a member shares that member's M_k.
Here every tensor carries the member first:

    gram     (K, s, s)   S_k = A_k^T A_k (primal, s = p) or G_k = A_k A_k^T (dual, s = n)
    rhs      (K, r, s)   one row per output unit: A_k^T g (primal) or g (dual coordinates)
    inv_tau  (K,)        1 / tau_prox per member, in the parameters' dtype
    result   (K, r, s)   direction rows (primal) or g' rows with direction = A^T g' (dual)

Primal and dual give the same direction, (A^T A + I/t)^{-1} A^T = A^T (A A^T + I/t)^{-1}; the
layer picks the smaller s from the shapes (``solve_flops``).  The math is the unfused one's:
the same exact solve, the same textbook CG (warm start X_k, i.e. the direction starts at 0),
the same early stop, and the reference's aliased CG for ``prox_cg_ref``; only the batching is
new.  These functions are written to be unified with proxprop/solvers.py later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "EARLY_STOP_TOL",
    "REFERENCE_EPS",
    "StackedSolve",
    "solve_flops",
    "stacked_cg",
    "stacked_exact",
    "stacked_gram_solve",
]

#: The reference's early-stop tolerance (on the residual norm), as in proxprop/cg.py.
EARLY_STOP_TOL = 1e-2
#: The constant the reference adds to CG's denominators (``prox_cg_ref`` only).
REFERENCE_EPS = 1e-6


@dataclass(frozen=True)
class StackedSolve:
    """What a stacked layer's backward needs: the shared mode and each member's 1/tau_prox."""

    kind: str  # "gradient" | "prox_exact" | "prox_cg" | "prox_cg_ref"
    iterations: int  # CG iterations (0 unless kind is prox_cg / prox_cg_ref)
    inv_tau: Tensor  # (K,)

    @property
    def members(self) -> int:
        return int(self.inv_tau.shape[0])


def solve_flops(size: int, rows: int, solve: StackedSolve) -> float:
    """Flops (per member) of solving ``rows`` right-hand sides against an s x s Gram matrix."""
    product = 2.0 * size * size * rows
    if solve.kind == "gradient":
        return 0.0
    if solve.kind == "prox_exact":
        return size**3 / 3.0 + product
    return solve.iterations * product


def _per_member(values: Tensor, like: Tensor) -> Tensor:
    """(K,) -> (K, 1, ..., 1) broadcasting against ``like`` (K, ...)."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den > 0, else 0: a zero residual (g == 0) gives a zero step, not NaN."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), 0.0)


def stacked_exact(gram: Tensor, rhs: Tensor, inv_tau: Tensor) -> Tensor:
    """Rows of (gram_k + I/tau_k)^{-1} applied to rhs_k, for every member k.

    One batched Cholesky factorisation; a member whose shifted Gram matrix is numerically
    indefinite (rounding, tiny tau) is solved through its eigendecomposition instead, where
    eigenvalues below 0 are clipped, as the unfused solver does.
    """
    size = gram.shape[-1]
    eye = torch.eye(size, dtype=gram.dtype, device=gram.device)
    shifted = gram + _per_member(inv_tau, gram) * eye
    factor, info = torch.linalg.cholesky_ex(shifted)
    result = torch.cholesky_solve(rhs.transpose(1, 2), factor).transpose(1, 2)
    failed = torch.nonzero(info).flatten()
    if failed.numel():
        evals, evecs = torch.linalg.eigh(gram[failed])
        evals = evals.clamp_min(0.0) + inv_tau[failed, None]
        coords = torch.bmm(rhs[failed], evecs) / evals[:, None, :]
        result[failed] = torch.bmm(coords, evecs.transpose(1, 2))
    return result


def stacked_cg(
    apply_gram: Callable[[Tensor], Tensor],
    rhs: Tensor,
    inv_tau: Tensor,
    iterations: int,
    *,
    dual: bool,
    joint: bool = False,
    reference: bool = False,
    tol: float = EARLY_STOP_TOL,
    last_curvature: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``iterations`` CG steps from 0 on (G_k + I/tau_k) x = rhs for every row of every member.

    apply_gram: v (K, r, s) -> G v (the batched Gram product, or a matrix-free operator).
    dual: rows are dual coordinates q of primal vectors A^T q.  CG must then use the primal
        inner product <A^T u, A^T v> = u^T G v, so the loop carries W v for its vectors, with
        W = I (primal) or W = G (dual).  Writing P = W p, the operator in these coordinates is
        Mc p = G p + p/t and
            <p, Mc p> = P . (G p + p/t)              primal: P = p, one product G p
                      = P . (P + p/t)                dual:   G p = P, no product
            W Mc p    = Mc p                         primal
                      = G P + P/t                    dual:   one product G P
        so each iteration costs one Gram product in both forms (none in the dual's last one).
    joint: one CG per member over all its rows as a single vector (the reference's conv layers).
    reference: the reference's loop: + REFERENCE_EPS in both denominators, and a first search
        direction update that reads the already-updated residual (p aliases r): p = (1 + beta) r.
    Early stop (the reference's rule, per member): once a member's largest squared residual
    falls under tol^2 x the mean of its initial ones, its remaining steps have length 0.
    last_curvature: optional p -> per-row p . G p (primal only) cheaper than apply_gram, used
        for the last iteration, which needs the step length but not G p itself.
    """
    inv_tau_rows = inv_tau[:, None]  # (K, 1) against per-row quantities (K, r)
    inv_tau_full = _per_member(inv_tau, rhs)
    eps = REFERENCE_EPS if reference else 0.0

    # products for inner products and the dual's M p go to buffers reused across iterations:
    # a fresh tensor of this size per operation costs page faults that, for the paper's MLP,
    # added ~10% to a training step
    scratch = torch.empty_like(rhs, memory_format=torch.contiguous_format)
    m_p_buffer = torch.empty_like(scratch) if dual else None

    def dot(u: Tensor, v: Tensor) -> Tensor:
        per_row = torch.mul(u, v, out=scratch).sum(dim=2)  # (K, r)
        return per_row.sum(dim=1, keepdim=True).expand_as(per_row) if joint else per_row

    x = torch.zeros_like(rhs, memory_format=torch.contiguous_format)
    # r, W r, p, W p are updated in place (own copies; in the primal form W r is r, W p is p)
    r = rhs.clone(memory_format=torch.contiguous_format) if iterations > 1 else rhs
    wr = apply_gram(r) if dual else r
    p = r.clone() if iterations > 1 else r
    wp = (wr.clone() if iterations > 1 else wr) if dual else p
    rr = dot(r, wr)
    threshold = (tol * tol) * rr.mean(dim=1, keepdim=True)  # (K, 1)
    active = torch.ones_like(threshold)
    host_checks = rhs.device.type == "cpu" and not torch.compiler.is_compiling()
    for k in range(iterations):
        last = k == iterations - 1
        if dual:
            m_p = torch.addcmul(wp, inv_tau_full, p, out=m_p_buffer)
            curvature = dot(wp, m_p)
        elif last and last_curvature is not None:
            m_p = None
            curvature = last_curvature(p) + inv_tau_rows * torch.mul(p, p, out=scratch).sum(dim=2)  # per row
            if joint:
                curvature = curvature.sum(dim=1, keepdim=True).expand_as(curvature)
        else:
            m_p = apply_gram(p).addcmul_(inv_tau_full, p)
            curvature = dot(p, m_p)
        alpha = rr / (curvature + eps) if reference else _safe_div(rr, curvature)
        alpha = (alpha * active)[:, :, None]
        x.addcmul_(alpha, p)
        if last:
            break
        assert m_p is not None  # only the last iteration skips M p
        r.addcmul_(alpha, m_p, value=-1.0)
        if dual:
            wr.addcmul_(alpha, apply_gram(wp).addcmul_(inv_tau_full, wp), value=-1.0)
        rr_new = dot(r, wr)
        active = active * (rr_new.amax(dim=1, keepdim=True) >= threshold).to(rhs.dtype)
        if host_checks and not bool(active.any()):
            break
        if reference:
            beta = (rr_new / (rr + eps))[:, :, None]
            if k == 0:  # the reference's p is the very tensor r during the first iteration
                p.copy_(r)
                wp.copy_(wr)
            p.mul_(beta).add_(r)
            if dual:
                wp.mul_(beta).add_(wr)
        else:
            beta = _safe_div(rr_new, rr)[:, :, None]
            p.mul_(beta).add_(r)
            if dual:
                wp.mul_(beta).add_(wr)
        rr = rr_new
    return x


def stacked_gram_solve(
    gram: Tensor, rhs: Tensor, solve: StackedSolve, *, dual: bool, joint: bool = False
) -> Tensor:
    """The direction rows (primal) or g' rows (dual) for every member: see the module doc."""
    if solve.kind == "gradient":
        return rhs
    if gram.dtype in (torch.float16, torch.bfloat16):
        # factorisations need at least single precision; the result goes back to the layer dtype
        upcast = StackedSolve(solve.kind, solve.iterations, solve.inv_tau.float())
        return stacked_gram_solve(gram.float(), rhs.float(), upcast, dual=dual, joint=joint).to(rhs.dtype)
    if solve.kind == "prox_exact":
        return stacked_exact(gram, rhs, solve.inv_tau)
    return stacked_cg(
        lambda v: torch.bmm(v, gram),  # rows times the symmetric Gram matrix
        rhs,
        solve.inv_tau,
        solve.iterations,
        dual=dual,
        joint=joint,
        reference=solve.kind == "prox_cg_ref",
    )
