"""The ProxProp direction from a Gram matrix: exact (Cholesky) or textbook CG.

ALGORITHM.md section 2: with M = A^T A + I/tau the direction is M^{-1} A^T g (exact) or N CG
steps on it from zero.  Section 4: the same direction is A^T (A A^T + I/tau)^{-1} g, so a layer
forms whichever Gram matrix is smaller:

* primal: S = A^T A (p x p); right-hand sides are the rows of A^T g (the ordinary weight
  gradient); the result rows ARE the direction.
* dual:   K = A A^T (n x n); right-hand sides are the columns of g; the result g' replaces g in
  the ordinary weight-gradient formula (direction = A^T g').  Every CG iterate lies in
  range(A^T), so CG runs on dual coordinates q (vector A^T q) with <A^T q, A^T q'> = q^T K q'.

CG is run either "direct" (one Gram product per iteration) or "spectral" (one eigh of the
Gram matrix, after which M is diagonal and N iterations cost O(N * m * s) elementwise work);
a flop model picks the cheaper.  The exact step always uses a Cholesky factorisation (with an
eigen fallback when rounding makes the shifted Gram matrix numerically indefinite).
All rows are solved together: the Gram matrix is factored once per layer and step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cg import EARLY_STOP_TOL, _safe_div, batched_cg
from .modes import SolverConfig

__all__ = ["gram_solve_rows", "gram_solve_cost", "eigh_flops_per_n3"]


def eigh_flops_per_n3(device: torch.device) -> float:
    """Cost of a symmetric eigendecomposition of size s, in GEMM-flop equivalents per s^3.

    Measured: eigh(500) takes as long as ~25 * 500^3 GEMM flops on an idle 2-core CPU but up to
    50x longer when other processes share the cores (its many small parallel regions suffer most
    from oversubscription), so the CPU figure is set high: the spectral path is then chosen only
    for many CG iterations, where it wins even on a loaded machine.  On GPUs the eigensolver is
    slow relative to GEMM anyway.
    """
    return 100.0 if device.type == "cpu" else 2000.0


#: Test/benchmark hook: "direct" or "spectral" forces the CG strategy; None lets the flop model choose.
FORCE_CG_STRATEGY: str | None = None


def _use_spectral(size: int, rows: int, cfg: SolverConfig, device: torch.device) -> bool:
    if cfg.kind == "prox_cg_ref":
        return True
    if FORCE_CG_STRATEGY is not None:
        return FORCE_CG_STRATEGY == "spectral"
    product = 2.0 * size * size * rows
    direct = cfg.cg_iterations * product
    spectral = eigh_flops_per_n3(device) * size**3 + 2.0 * product
    return spectral < direct


def gram_solve_cost(size: int, rows: int, cfg: SolverConfig, device: torch.device) -> float:
    """Flop estimate of gram_solve_rows for an s x s Gram matrix and ``rows`` right-hand sides."""
    product = 2.0 * size * size * rows
    if cfg.kind == "gradient":
        return 0.0
    if cfg.kind == "prox_exact":
        return size**3 / 3.0 + product
    if _use_spectral(size, rows, cfg, device):
        return eigh_flops_per_n3(device) * size**3 + 2.0 * product
    return cfg.cg_iterations * product


def _eigh(gram: Tensor) -> tuple[Tensor, Tensor]:
    evals, evecs = torch.linalg.eigh(gram)
    return evals.clamp_min(0.0), evecs


def _exact(gram: Tensor, rhs: Tensor, inv_tau: float) -> Tensor:
    shifted = gram + inv_tau * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(shifted)
    if int(info) == 0:
        return torch.cholesky_solve(rhs.T, factor).T
    evals, evecs = _eigh(gram)
    return ((rhs @ evecs) / (evals + inv_tau)) @ evecs.T


#: Rows per block in the dual CG loop (elements): a block's working set stays in cache across the
#: ~12 elementwise updates of one iteration (measured gain small on a 48 MB-L3 CPU; kept coarse).
_ROW_BLOCK_ELEMENTS = 1_048_576


def _curv(kr: Tensor, r: Tensor, inv_tau: float) -> Tensor:
    """Per-row <A^T r, M A^T r> in dual coordinates: |K r|^2 + <r, K r> / tau."""
    return (kr * torch.add(kr, r, alpha=inv_tau)).sum(dim=1)


def _dual_direct_cg(gram: Tensor, rhs: Tensor, cfg: SolverConfig, tol: float) -> Tensor:
    """CG on dual coordinates with K-weighted inner products, one K product per iteration.

    Tracks K r and K p alongside r and p:  <p, M p> = |K p|^2 + <p, K p>/tau needs only K p,
    and K r_new = K r - alpha (K K p + K p / tau) needs the single product K (K p).  Rows are
    independent except for the early stop (a global flag that only scales the next step), so
    each iteration sweeps over blocks of rows and updates them in place.
    """
    inv_tau = cfg.inv_tau
    rows, size = rhs.shape
    if cfg.cg_iterations == 1:  # one exact line search along A^T g: no state to update
        kr = rhs @ gram
        rr = (rhs * kr).sum(dim=1)
        alpha = _safe_div(rr, _curv(kr, rhs, inv_tau))
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
            alpha = (_safe_div(rr[sl], (kp_b * m_p).sum(dim=1)) * active)[:, None]
            x[sl].addcmul_(alpha, p_b)
            if last:
                continue
            kkp = (kp_b @ gram).add_(kp_b, alpha=inv_tau)
            r_b.addcmul_(alpha, m_p, value=-1.0)
            kr_b.addcmul_(alpha, kkp, value=-1.0)
            rr_b = (r_b * kr_b).sum(dim=1)
            rr_new[sl] = rr_b
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


def gram_solve_rows(
    gram: Tensor,
    rhs: Tensor,
    cfg: SolverConfig,
    dual: bool,
    joint: bool = False,
    tol: float = EARLY_STOP_TOL,
) -> Tensor:
    """Solve every row of ``rhs`` (m x s) against the shared s x s Gram matrix.

    primal (dual=False): rhs rows are A^T g per output unit; returns direction rows.
    dual (dual=True): rhs rows are g per output unit; returns g' rows (direction = A^T g').
    joint: one CG over all rows together (only used by the reference variant of conv layers).
    """
    if cfg.kind == "gradient":
        return rhs
    if gram.dtype in (torch.float16, torch.bfloat16):
        # factorisations need at least single precision; the result goes back to the layer dtype
        return gram_solve_rows(gram.float(), rhs.float(), cfg, dual, joint, tol).to(rhs.dtype)
    if cfg.kind == "prox_exact":
        return _exact(gram, rhs, cfg.inv_tau)
    reference = cfg.kind == "prox_cg_ref"
    rows, size = rhs.shape
    if _use_spectral(size, rows, cfg, gram.device) or joint:
        evals, evecs = _eigh(gram)
        diag = evals + cfg.inv_tau
        coeffs = batched_cg(
            lambda v: v * diag,
            rhs @ evecs,
            cfg.cg_iterations,
            weight=evals if dual else None,
            joint=joint,
            reference_variant=reference,
            tol=tol,
        )
        return coeffs @ evecs.T
    if dual:
        return _dual_direct_cg(gram, rhs, cfg, tol)
    inv_tau = cfg.inv_tau
    return batched_cg(lambda v: v @ gram + inv_tau * v, rhs, cfg.cg_iterations, tol=tol)
