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

The solves are the unfused layers' own: proxprop.solvers.gram_solve_factored (exact, and CG by
the same strategies and cost model) with one 1/tau per member, and proxprop.cg.batched_cg for
the matrix-free forms; both treat the member dimension as independent problems, each with its
own early stop.  This module only adapts the stacked layers' calls to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .cg import EARLY_STOP_TOL, batched_cg
from .modes import SolverConfig
from .solvers import gram_solve_factored

__all__ = [
    "PER_MEMBER_PRODUCT",
    "StackedSolve",
    "solve_flops",
    "stacked_cg",
    "stacked_gram_solve",
]


#: Multiply-adds of one Gram product (s x s times r rows) from which a member's problem is solved
#: on its own (the unfused solvers, strategy from their flop model: e.g. the paper MLP's
#: 500 x 500 dual systems by direct CG, one product per iteration) rather than batched with the
#: others (the digits models: 65 x 65 Gram matrices, 64 rows).
PER_MEMBER_PRODUCT = 1 << 22

@dataclass(frozen=True)
class StackedSolve:
    """What a stacked layer's backward needs: the shared mode and each member's 1/tau_prox."""

    kind: str  # "gradient" | "prox_exact" | "prox_cg" | "prox_cg_ref"
    iterations: int  # CG iterations (0 unless kind is prox_cg / prox_cg_ref)
    inv_tau: Tensor  # (K,)

    @property
    def members(self) -> int:
        return int(self.inv_tau.shape[0])

    def solver_config(self) -> SolverConfig:
        """The unfused layers' config of this mode (its tau is replaced by inv_tau per member)."""
        return SolverConfig(self.kind, self.iterations, 1.0)


def solve_flops(size: int, rows: int, solve: StackedSolve) -> float:
    """Flops (per member) of solving ``rows`` right-hand sides against an s x s Gram matrix."""
    product = 2.0 * size * size * rows
    if solve.kind == "gradient":
        return 0.0
    if solve.kind == "prox_exact":
        return size**3 / 3.0 + product
    return solve.iterations * product


def stacked_cg(
    apply_gram: Callable[[Tensor], Tensor],
    rhs: Tensor,
    inv_tau: Tensor,
    iterations: int,
    *,
    joint: bool = False,
    reference: bool = False,
    tol: float = EARLY_STOP_TOL,
    last_curvature: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``iterations`` CG steps from 0 on (G_k + I/tau_k) x = rhs for every row of every member
    (proxprop.cg.batched_cg, one problem per member).

    apply_gram: v (K, r, s) -> G v (the batched Gram product, or a matrix-free operator).
    joint: one CG per member over all its rows as a single vector (the reference's conv layers).
    reference: the reference's aliased loop (``prox_cg_ref``).
    last_curvature: optional p -> per-row p . G p, cheaper than apply_gram, used for the last
        iteration, which needs the step length but not G p itself.
    """
    shift = inv_tau[:, None, None]
    curvature = None
    if last_curvature is not None:
        def curvature(p: Tensor) -> Tensor:
            return last_curvature(p) + inv_tau[:, None] * p.square().sum(dim=2)

    return batched_cg(lambda v: apply_gram(v).addcmul_(shift, v), rhs, iterations, joint=joint,
                      reference_variant=reference, tol=tol, curvature=curvature)


def stacked_gram_solve(
    gram: Tensor, rhs: Tensor, solve: StackedSolve, *, dual: bool, joint: bool = False
) -> Tensor:
    """The direction rows (primal) or g' rows (dual) for every member: see the module doc."""
    if solve.kind == "gradient":
        return rhs
    cfg = solve.solver_config()
    size, rows = gram.shape[-1], rhs.shape[-2]
    if size * size * rows >= PER_MEMBER_PRODUCT:
        # large problems one member at a time, each exactly as its unfused layer solves it
        return torch.stack([
            gram_solve_factored(gram[k], rhs[k], cfg, dual, joint=joint, inv_tau=solve.inv_tau[k]).dense()
            for k in range(solve.members)
        ])
    # small ones batched; the primal form by CG on the Gram matrices directly: batched products
    # of K small matrices run near GEMM speed where K small eigendecompositions (the eigenbasis
    # strategies the flop model prices per problem) do not
    strategy = None if dual else "direct"
    solved = gram_solve_factored(gram, rhs, cfg, dual, joint=joint, inv_tau=solve.inv_tau, cg_strategy=strategy)
    return solved.dense()
