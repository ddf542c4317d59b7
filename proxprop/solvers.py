"""The ProxProp direction from a Gram matrix: exact (Cholesky) or CG, for many rows at once.

ALGORITHM.md section 2: with M = A^T A + I/tau the direction is M^{-1} A^T g (exact) or N CG
steps on it from zero.  Section 4: the same direction is A^T (A A^T + I/tau)^{-1} g, so a layer
forms whichever Gram matrix is smaller:

* primal: S = A^T A (p x p); right-hand sides are the rows of A^T g (the ordinary weight
  gradient); the result rows ARE the direction.
* dual:   K = A A^T (n x n); right-hand sides are the columns of g; the result g' replaces g in
  the ordinary weight-gradient formula (direction = A^T g').  Every CG iterate lies in
  range(A^T), so CG runs on dual coordinates q (vector A^T q) with <A^T q, A^T q'> = q^T K q'.

The result comes factored, rows = left @ right (FactoredRows): the exact step is
g^T (K + I/tau)^{-1} and the eigenbasis paths end in (...) @ U^T, so a caller that multiplies
the rows by another matrix (the linear layer's inputs) picks the cheaper association.

CG strategies (strategies.py), chosen per call by a flop model unless forced:
* "direct":   one Gram product per iteration plus ~12 elementwise passes over the rows;
* "spectral": one eigh of the Gram matrix, then elementwise CG on the diagonal system
              (~10 passes per iteration);
* "moments":  one eigh, then CG's scalars from each row's spectral moments (moments.py):
              two products and a few passes whatever N.  The switch to the other paths is in
              _cg_costs: moments is a candidate only below float64 and for
              N <= moments.MAX_ITERATIONS, where its error stays under float32's own.
All rows are solved together: the Gram matrix is factored once per layer and step.

Leading batch dimensions (the layers of several stacked models at once): gram_solve_factored
takes Gram matrices (..., s, s) and right-hand sides (..., m, s); exact_solve and
moments.moment_cg also take 1/tau as a tensor of shape (...,).  The direct dual
loop (row blocks) takes one problem at a time, so stacked dual problems use the eigenbasis.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import moments
from .cg import EARLY_STOP_TOL, REFERENCE_EPS, _safe_div, batched_cg
from .modes import SolverConfig
from .strategies import CG_STRATEGIES, check_choice
from .threads import single_threaded

__all__ = [
    "FactoredRows",
    "cg_strategy_for",
    "eigh_flops_per_n3",
    "exact_solve",
    "gram_solve_cost",
    "gram_solve_factored",
]


def eigh_flops_per_n3(device: torch.device) -> float:
    """Cost of a symmetric eigendecomposition of size s, in GEMM-flop equivalents per s^3.

    Measured on the 2-core CPU: eigh(500) in float32 takes 7 ms with two threads but up to
    1.4 s when another process holds a core (its many small parallel regions wait for the
    descheduled thread); with one thread it takes 11 ms (max 30 ms under the same load), about
    as long as 16 * 500^3 GEMM flops.  So small factorisations run single-threaded on the CPU
    (threads.py) and eigh costs 16 s^3.  On GPUs the eigensolver is slow relative to GEMM.
    """
    return 16.0 if device.type == "cpu" else 2000.0


#: An elementwise pass over one element of a (rows x s) array, in GEMM-flop equivalents
#: (memory-bound: 0.4 ms per 2M float32 elements on an idle CPU, up to 4.5 ms when other
#: processes share the cores, vs ~100 GFLOP/s GEMM; priced for the shared machine: with 30,
#: MLP cg3 took its middle layer through the direct loop and ran slower than cg10).
_PASS_FLOPS = 100.0
#: Elementwise passes per iteration of the direct and spectral CG loops, and of the moments
#: path as a whole (two reads of c for the average measure and H, whose float64 squares stay
#: in cache, and the result's read and write).
_DIRECT_PASSES = 12
_SPECTRAL_PASSES = 10
_MOMENT_PASSES = 4


class FactoredRows(NamedTuple):
    """Solution rows (..., m, s) held as ``left @ right`` (``right`` None: ``left`` itself)."""

    left: Tensor
    right: Tensor | None

    def dense(self) -> Tensor:
        return self.left if self.right is None else self.left @ self.right

    def times(self, mat: Tensor) -> Tensor:
        """rows @ mat, associated so that the cheaper product comes first."""
        if self.right is None:
            return self.left @ mat
        if mat.shape[-1] < self.left.shape[-2]:  # (s x s)(s x k) costs s^2 k < s^2 m
            return self.left @ (self.right @ mat)
        return self.dense() @ mat

    def row_sums(self) -> Tensor:
        if self.right is None:
            return self.left.sum(dim=-1)
        return self.left @ self.right.sum(dim=-1)


def _eigh(gram: Tensor) -> tuple[Tensor, Tensor]:
    with single_threaded(gram.device, gram.shape[-1]):
        evals, evecs = torch.linalg.eigh(gram)
    return evals.clamp_min(0.0), evecs


def _column(inv_tau: float | Tensor) -> float | Tensor:
    """1/tau broadcastable against (..., s): a float, or a (...,) tensor as (..., 1)."""
    return inv_tau[..., None] if isinstance(inv_tau, Tensor) else inv_tau


def exact_solve(gram: Tensor, rhs: Tensor, inv_tau: float | Tensor) -> FactoredRows:
    """Rows of rhs (..., m, s) times (K + I/tau)^{-1}, factored; inv_tau a float or (...,).

    Cholesky, then an explicit inverse when there are many rows (one GEMM instead of two
    triangular solves, which run 2.5x slower than GEMM here)."""
    size = gram.shape[-1]
    eye = torch.eye(size, dtype=gram.dtype, device=gram.device)
    shift = _column(inv_tau)
    shifted = gram + (shift[..., None] if isinstance(shift, Tensor) else shift) * eye
    with single_threaded(gram.device, size):
        factor, info = torch.linalg.cholesky_ex(shifted)
    if not bool((info != 0).any()):
        if 4 * rhs.shape[-2] >= size:
            with single_threaded(gram.device, size):
                return FactoredRows(rhs, torch.cholesky_inverse(factor))
        return FactoredRows(torch.cholesky_solve(rhs.mT, factor).mT, None)
    # rounding made the shifted matrix numerically indefinite: the eigenvalues are clamped
    evals, evecs = _eigh(gram)
    return FactoredRows((rhs @ evecs) / (evals + shift).unsqueeze(-2), evecs.mT)


def _cg_costs(size: int, rows: int, cfg: SolverConfig, dtype: torch.dtype,
              device: torch.device, joint: bool) -> dict[str, float]:
    """GEMM-flop-equivalent cost of each CG strategy that applies."""
    iterations = cfg.cg_iterations
    product = 2.0 * size * size * rows
    passes = _PASS_FLOPS * size * rows
    eigh = eigh_flops_per_n3(device) * size**3
    costs = {
        "spectral": eigh + 2.0 * product + _SPECTRAL_PASSES * iterations * passes,
    }
    if not joint:
        # one iteration is a line search along the right-hand side: a product and 3 passes
        loop_passes = 3 if iterations == 1 else _DIRECT_PASSES * iterations
        costs["direct"] = iterations * product + loop_passes * passes
    if dtype != torch.float64 and iterations <= moments.MAX_ITERATIONS:
        pairs = (iterations + 1) * (iterations + 2) / 2
        # the H product runs in float64 (twice the GEMM cost)
        costs["moments"] = eigh + 2.0 * product + _MOMENT_PASSES * passes + 4.0 * pairs * size * rows
    return costs


def cg_strategy_for(
    size: int, rows: int, cfg: SolverConfig, dtype: torch.dtype, device: torch.device,
    *, joint: bool = False, cg_strategy: str | None = None,
) -> str:
    """The CG strategy gram_solve_factored uses: ``cg_strategy`` if given, else the cheapest.

    "direct" runs one CG per row, so a joint CG (all rows as one vector) takes "spectral".
    """
    check_choice("cg_strategy", cg_strategy, CG_STRATEGIES)
    if cg_strategy is not None:
        return "spectral" if (cg_strategy == "direct" and joint) else cg_strategy
    costs = _cg_costs(size, rows, cfg, dtype, device, joint)
    return min(costs, key=costs.__getitem__)


def gram_solve_cost(
    size: int, rows: int, cfg: SolverConfig, device: torch.device,
    dtype: torch.dtype = torch.float32, *, cg_strategy: str | None = None,
) -> float:
    """Flop estimate of gram_solve_factored for an s x s Gram matrix and ``rows`` right-hand sides."""
    product = 2.0 * size * size * rows
    if cfg.kind == "gradient":
        return 0.0
    if cfg.kind == "prox_exact":
        return size**3 + product
    strategy = cg_strategy_for(size, rows, cfg, dtype, device, cg_strategy=cg_strategy)
    return _cg_costs(size, rows, cfg, dtype, device, False).get(strategy, float("inf"))


#: Rows per block in the dual CG loop (elements): a block's working set stays in cache across the
#: ~12 elementwise updates of one iteration (measured gain small on a 48 MB-L3 CPU; kept coarse).
_ROW_BLOCK_ELEMENTS = 1_048_576


def _curv(kr: Tensor, r: Tensor, inv_tau: float) -> Tensor:
    """Per-row <A^T r, M A^T r> in dual coordinates: |K r|^2 + <r, K r> / tau."""
    return (kr * torch.add(kr, r, alpha=inv_tau)).sum(dim=1)


def _dual_direct_cg(gram: Tensor, rhs: Tensor, cfg: SolverConfig, tol: float, inv_tau: float) -> Tensor:
    """CG on dual coordinates with K-weighted inner products, one K product per iteration.

    Tracks K r and K p alongside r and p:  <p, M p> = |K p|^2 + <p, K p>/tau needs only K p,
    and K r_new = K r - alpha (K K p + K p / tau) needs the single product K (K p).  Rows are
    independent except for the early stop (a global flag that only scales the next step), so
    each iteration sweeps over blocks of rows and updates them in place.  The reference's
    aliased loop (prox_cg_ref) differs in the first direction update and the + 1e-6.
    """
    reference = cfg.kind == "prox_cg_ref"
    eps = REFERENCE_EPS if reference else 0.0
    rows, size = rhs.shape
    if cfg.cg_iterations == 1:  # one exact line search along A^T g: no state to update
        kr = rhs @ gram
        rr = (rhs * kr).sum(dim=1)
        curv = _curv(kr, rhs, inv_tau)
        alpha = rr / (curv + eps) if reference else _safe_div(rr, curv)
        return rhs * alpha[:, None]
    block = max(1, _ROW_BLOCK_ELEMENTS // max(1, size)) if rhs.device.type == "cpu" else rows
    r = rhs.clone(memory_format=torch.contiguous_format)
    x = torch.zeros_like(r)
    kr = r @ gram
    p, kp = r.clone(), kr.clone()
    rr = (r * kr).sum(dim=1)
    rr_new = torch.empty_like(rr)
    threshold = (tol * tol) * rr.mean()
    active = torch.ones((), dtype=rhs.dtype, device=rhs.device)
    host_checks = rhs.device.type == "cpu" and not torch.compiler.is_compiling()
    iterations = cfg.cg_iterations
    for k in range(iterations):
        last = k == iterations - 1
        for start in range(0, rows, block):
            sl = slice(start, start + block)
            p_b, kp_b, r_b, kr_b = p[sl], kp[sl], r[sl], kr[sl]
            m_p = torch.add(kp_b, p_b, alpha=inv_tau)  # dual coordinates of M (A^T p)
            curv = (kp_b * m_p).sum(dim=1)
            alpha = rr[sl] / (curv + eps) if reference else _safe_div(rr[sl], curv)
            alpha = (alpha * active)[:, None]
            x[sl].addcmul_(alpha, p_b)
            if last:
                continue
            kkp = (kp_b @ gram).add_(kp_b, alpha=inv_tau)
            r_b.addcmul_(alpha, m_p, value=-1.0)
            kr_b.addcmul_(alpha, kkp, value=-1.0)
            rr_b = (r_b * kr_b).sum(dim=1)
            rr_new[sl] = rr_b
            if reference:
                beta = (rr_b / (rr[sl] + eps))[:, None]
                if k == 0:  # the reference's P is R here: the new direction is (1 + beta) r
                    p_b.copy_(r_b)
                    kp_b.copy_(kr_b)
                p_b.mul_(beta).add_(r_b)
                kp_b.mul_(beta).add_(kr_b)
                continue
            beta = _safe_div(rr_b, rr[sl])[:, None]
            p_b.mul_(beta).add_(r_b)
            kp_b.mul_(beta).add_(kr_b)
        if last:
            break
        active = active * (rr_new.max() >= threshold).to(rhs.dtype)
        if host_checks and not bool(active):
            break
        rr, rr_new = rr_new, rr
    return x


def _eigen_cg(gram: Tensor, rhs: Tensor, cfg: SolverConfig, dual: bool, joint: bool, tol: float,
              use_moments: bool, inv_tau: float | Tensor) -> FactoredRows:
    """CG in the eigenbasis K = U diag(lam) U^T: M is diag(lam + 1/tau); a row's coefficients
    are c = rhs @ U, weighted by lam in the dual (<A^T q, A^T q> = q^T K q)."""
    reference = cfg.kind == "prox_cg_ref"
    evals, evecs = _eigh(gram)
    diag = evals + _column(inv_tau)
    coeffs = rhs @ evecs
    if use_moments:
        with single_threaded(gram.device):
            solved = moments.moment_cg(
                diag, coeffs, cfg.cg_iterations, measure_scale=evals if dual else None,
                joint=joint, reference_variant=reference, tol=tol, out=coeffs,
            )
        return FactoredRows(solved, evecs.mT)
    coeffs = batched_cg(
        lambda v: v * diag.unsqueeze(-2), coeffs, cfg.cg_iterations,
        weight=evals if dual else None, joint=joint, reference_variant=reference, tol=tol,
    )
    return FactoredRows(coeffs, evecs.mT)


def gram_solve_factored(
    gram: Tensor,
    rhs: Tensor,
    cfg: SolverConfig,
    dual: bool,
    *,
    joint: bool = False,
    tol: float = EARLY_STOP_TOL,
    cg_strategy: str | None = None,
    inv_tau: Tensor | None = None,
) -> FactoredRows:
    """Solve every row of ``rhs`` (..., m, s) against the shared (..., s, s) Gram matrix.

    primal (dual=False): rhs rows are A^T g per output unit; returns direction rows.
    dual (dual=True): rhs rows are g per output unit; returns g' rows (direction = A^T g').
    joint: one CG over all rows together (only used by the reference variant of conv layers).
    cg_strategy: None (flop model), "direct", "spectral" or "moments" (strategies.py).
    inv_tau: 1/tau per problem, shape (...,) (0-dim for one problem), in place of cfg's one
        tau (stacked layers of several models, proxprop/stacked.py).
    """
    if cfg.kind == "gradient":
        return FactoredRows(rhs, None)
    if gram.dtype in (torch.float16, torch.bfloat16):
        # factorisations need at least single precision; the result goes back to the layer dtype
        solved = gram_solve_factored(gram.float(), rhs.float(), cfg, dual, joint=joint, tol=tol,
                                     cg_strategy=cg_strategy, inv_tau=None if inv_tau is None else inv_tau.float())
        return FactoredRows(solved.dense().to(rhs.dtype), None)
    shift: float | Tensor = cfg.inv_tau if inv_tau is None else inv_tau
    if cfg.kind == "prox_exact":
        return exact_solve(gram, rhs, shift)
    rows, size = rhs.shape[-2:]
    strategy = cg_strategy_for(size, rows, cfg, gram.dtype, gram.device, joint=joint,
                               cg_strategy=cg_strategy)
    if strategy == "direct" and dual and rhs.dim() > 2:
        strategy = "spectral"  # the direct dual loop (row blocks) takes one problem at a time
    if strategy != "direct":
        return _eigen_cg(gram, rhs, cfg, dual, joint, tol, use_moments=strategy == "moments", inv_tau=shift)
    if dual:
        return FactoredRows(_dual_direct_cg(gram, rhs, cfg, tol, float(shift)), None)
    row_shift = shift if inv_tau is None else inv_tau[..., None, None]
    rows_solved = batched_cg(lambda v: v @ gram + row_shift * v, rhs, cfg.cg_iterations, tol=tol,
                             reference_variant=cfg.kind == "prox_cg_ref")
    return FactoredRows(rows_solved, None)
