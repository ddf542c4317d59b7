"""Conjugate gradient from spectral moments: N iterations for many right-hand sides at once.

Setting (solvers.py): after one eigendecomposition the system matrix is diagonal,
M = diag(mu) with mu_i = eigenvalue + 1/tau > 0, and every right-hand side is a row of
coefficients c in the eigenbasis.  CG from x = 0 keeps every vector a polynomial in M
applied to the right-hand side,
    r_k = R_k(M) c,   p_k = P_k(M) c,   x_k = X_k(M) c,
and every scalar it needs is an inner product of two such vectors,
    <u(M) c, v(M) c> = sum_i w_i u(mu_i) v(mu_i),   w_i = c_i^2 (times the Gram eigenvalue
                                                                 in the dual; solvers.py).
So CG's step lengths depend on the right-hand side only through its spectral measure w.
Write the polynomials in a basis q_0..q_N (q_j of degree j), with the Gram matrix of the
basis under each row's measure,
    H_jk = sum_i w_i q_j(mu_i) q_k(mu_i)        (one (D(D+1)/2 x s) @ (s x m) product),
then every inner product is u^T H v on coefficient vectors of length D = N + 1, and
multiplying by M is a fixed tridiagonal map S on coefficients (the basis' three-term
recurrence).  CG (textbook or the reference's aliased loop, cg.batched_cg) then runs on
(m, D) arrays, and the iterate needs one pass:  x = c * X(mu)  with  X(mu) = coeffs @ Q^T
(moment_cg).

The basis.  Monomials (Hankel moments c^T M^j c) lose every digit after 3-4 iterations on
the MLP's spectra (4-6 decades, a few large outliers), and Chebyshev polynomials on
[mu_min, mu_max] resolve the bulk under such outliers so poorly that cg5 is off by 100%
(both measured in float64).  The basis here is orthonormal for the average of the rows'
normalised measures (Stieltjes procedure with full reorthogonalisation, O(s N^2)), so for
rows whose measure resembles the average H is close to a multiple of the identity.  All of
the small work (basis, H, the CG scalars) runs in float64 whatever the layer's dtype: it is
O(s N^2 + m N^2 + m s N^2 / 2) and keeps float32 results at eigendecomposition accuracy.

Where it loses accuracy: a row whose measure lives on a part of the spectrum that the
average barely weights (rows with nearly disjoint spectral supports on a wide spectrum) sees
an ill-conditioned H; its error grows with N (tests/proxprop/test_moments.py measures it).
solvers.py therefore uses this path only for float32 and lower and for N <= MAX_ITERATIONS.
Rows of very different size share one basis, so the normalisation that averages them must
not overflow: see _average_measure (a nearly dead unit once made every row NaN).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .cg import EARLY_STOP_TOL, batched_cg

__all__ = ["MAX_ITERATIONS", "moment_cg", "orthonormal_basis"]

#: Largest N for which solvers.py picks this path automatically (float32).  Measured worst
#: case (rows whose measures live on disjoint halves of a 6-decade spectrum, float32 inputs,
#: against CG in extended precision): 7e-8 at N = 3, 1e-6 at N = 5, 1e-4 at N = 10, 5e-4 at
#: N = 20 (float32 textbook CG: 2e-7 to 6e-7).  On realistic spectra (8 decades, or a bulk
#: under large outliers as ReLU inputs give) the path stays within 1e-8 while float32 textbook
#: CG is off by up to 1e-1 (tests/proxprop/test_moments.py).  Above 20 the elementwise loop
#: takes over, below float32's own ~1e-3 accuracy of these solves up to there.
MAX_ITERATIONS = 20

#: Float64 elements per row block of the measure and of the values (2 MB).
_BLOCK_ELEMENTS = 262_144

#: Relative size below which a new basis polynomial is taken as zero on the support (the
#: measure has fewer points than the degree needs; see orthonormal_basis).
_BREAKDOWN = 1e-11


def orthonormal_basis(mu: Tensor, weight: Tensor, degree: int) -> tuple[Tensor, Tensor]:
    """Orthonormal polynomials q_0..q_degree of the discrete measure ``weight`` on ``mu``.

    mu, weight: (..., s) float64.  Returns their values Q (..., s, degree + 1) and the map S
    (..., degree + 1, degree + 1) with  (mu * sum_k u_k q_k) = sum_j (S u)_j q_j  on the
    support, for coefficient vectors u of degree < degree:
        mu q_k = b_{k+1} q_{k+1} + a_k q_k + b_k q_{k-1}      (Stieltjes' three-term recurrence)
    A measure with fewer support points than degree + 1 continues with zero polynomials:
    every right-hand side then lives on those points, where the missing ones would vanish.
    """
    total = weight.sum(dim=-1, keepdim=True)
    q0 = torch.rsqrt(torch.where(total > 0, total, torch.ones_like(total))) * (total > 0)
    basis = [q0.expand_as(mu)]
    diag: list[Tensor] = []  # a_k
    off: list[Tensor] = []  # b_{k+1}
    scale = mu.abs().amax(dim=-1, keepdim=True)
    for k in range(degree):
        qk = basis[k]
        v = mu * qk
        a_k = (weight * v * qk).sum(dim=-1, keepdim=True)
        v = v - a_k * qk - (off[k - 1] * basis[k - 1] if k > 0 else 0.0)
        stacked = torch.stack(basis, dim=-1)  # (..., s, k+1)
        for _ in range(2):  # full reorthogonalisation: exact orthonormality in float64
            v = v - (stacked @ ((stacked * weight[..., None]).transpose(-1, -2) @ v[..., None]))[..., 0]
        norm = (weight * v * v).sum(dim=-1, keepdim=True).sqrt()
        alive = norm > _BREAKDOWN * scale
        basis.append(torch.where(alive, v / torch.where(alive, norm, torch.ones_like(norm)), 0.0))
        diag.append(a_k)
        off.append(torch.where(alive, norm, 0.0))
    q = torch.stack(basis, dim=-1)
    size = degree + 1
    s_map = mu.new_zeros(*mu.shape[:-1], size, size)
    for k in range(degree):
        s_map[..., k, k] = diag[k][..., 0]
        s_map[..., k + 1, k] = off[k][..., 0]
        s_map[..., k, k + 1] = off[k][..., 0]
    return q, s_map


def _measure_blocks(coeffs: Tensor, scale: Tensor | None) -> Iterator[Tensor]:
    """Row blocks of the spectral measure w = coeffs^2 (* scale), in float64, one at a time.

    Formed block by block from the coefficients, in cache: no (m, s) measure array is ever
    allocated (on this CPU a fresh 8 MB array took 3.7 ms to fill, an existing one 0.3 ms),
    and the squares of float32 coefficients are exact in float64 (no subnormal masses).
    """
    for part in _row_blocks(coeffs, coeffs.shape[-1]):
        block = part.square() if part.dtype == torch.float64 else part.double().square_()
        yield block if scale is None else block.mul_(scale.unsqueeze(-2))


def _average_measure(coeffs: Tensor, scale: Tensor | None) -> Tensor:
    """The rows' average normalised measure (..., s) in float64: it only chooses the basis.

    1/mass is capped at float64's largest value: a row of |c| ~ 1e-160 (a nearly dead unit of
    a float64 layer) has a subnormal mass whose reciprocal overflows to inf, and inf * 0 (the
    measure's empty points) made the average, hence the basis and EVERY row's result, NaN.
    That was the digits demo's divergence (cg3-paper, lr 3.16) when the masses were summed in
    float32, where |c| ~ 1e-21 sufficed.  A capped row weighs less than 1 in the average,
    which costs nothing: any positive measure is a valid basis.
    """
    total = coeffs.new_zeros(coeffs.shape[:-2] + coeffs.shape[-1:], dtype=torch.float64)
    for weight in _measure_blocks(coeffs, scale):
        mass = weight.sum(dim=-1, keepdim=True)
        positive = mass > 0
        inv_mass = torch.where(positive, 1.0 / torch.where(positive, mass, torch.ones_like(mass)), 0.0)
        total += (weight.mT @ inv_mass.clamp_max(torch.finfo(torch.float64).max))[..., 0]
    return total / coeffs.shape[-2]


def _pair_index(size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Upper-triangle pairs (j <= k) and the (size, size) map from (j, k) to the pair number."""
    rows, cols = torch.triu_indices(size, size, device=device)
    index = torch.empty(size, size, dtype=torch.long, device=device)
    number = torch.arange(rows.numel(), device=device)
    index[rows, cols] = number
    index[cols, rows] = number
    return rows, cols, index


def moment_cg(
    mu: Tensor,
    coeffs: Tensor,
    iterations: int,
    *,
    measure_scale: Tensor | None = None,
    joint: bool = False,
    reference_variant: bool = False,
    tol: float = EARLY_STOP_TOL,
    out: Tensor | None = None,
) -> Tensor:
    """CG's iterate  coeffs * X(mu)  (..., m, s) for every row, in coeffs' dtype; written into
    ``out`` when given (``out=coeffs`` solves in place).

    mu: (..., s) diagonal of M (> 0).  coeffs: (..., m, s) right-hand sides in the eigenbasis.
    Each row's spectral measure is w = coeffs^2, times ``measure_scale`` (..., s) where the
    inner product is weighted (the dual's Gram eigenvalues, solvers.py).  Same scalars as
    cg.batched_cg on the diagonal system (textbook or aliased loop, the reference's early
    stop, ``joint``), computed from H instead of elementwise passes; the polynomial's
    coefficients, H and the CG scalars are float64 whatever coeffs' dtype.

    Three passes over coeffs, each in cache-sized float64 row blocks: the average measure
    (the basis), H, and the result.  The small per-row work keeps the rows in the LAST
    dimension (H as (..., D, D, m)): H's product is then (D(D+1)/2, s) @ (s, rows), 2.6x
    faster here than (rows, s) @ (s, D(D+1)/2) for N = 3, and the per-row inner products
    are elementwise over contiguous rows instead of m tiny batched matrix products.
    """
    size = iterations + 1
    scale = None if measure_scale is None else measure_scale.double()
    q, s_map = orthonormal_basis(mu.double(), _average_measure(coeffs, scale), iterations)
    rows, cols, index = _pair_index(size, mu.device)
    products = (q[..., rows] * q[..., cols]).mT.contiguous()  # (..., D(D+1)/2, s)
    pairs = torch.cat([products @ weight.mT for weight in _measure_blocks(coeffs, scale)], dim=-1)
    gram = pairs[..., index, :]  # (..., D, D, m): H of every row, rows last

    def inner(u: Tensor, v: Tensor) -> Tensor:
        h_v = (gram * v.mT.unsqueeze(-3)).sum(dim=-2)  # (..., D, m)
        return (u.mT * h_v).sum(dim=-2)

    # coefficient vectors are (..., m, D) views of (..., D, m) arrays (rows last, as gram)
    # the constant polynomial 1 = q_0 / q0_value: CG's first residual is the right-hand side
    one = torch.zeros(*coeffs.shape[:-2], size, coeffs.shape[-2], dtype=torch.float64, device=mu.device).mT
    q0 = q[..., :1, 0:1]  # (..., 1, 1) constant value of q_0
    one[..., 0:1] = torch.where(q0 > 0, 1.0 / torch.where(q0 > 0, q0, torch.ones_like(q0)), 0.0)
    solution = batched_cg(
        lambda u: (s_map @ u.mT).mT, one, iterations,
        joint=joint, reference_variant=reference_variant, tol=tol, inner=inner,
    )
    basis = q.mT
    result = out if out is not None else torch.empty_like(coeffs)
    start = 0
    for part in _row_blocks(solution, basis.shape[-1]):
        stop = start + part.shape[-2]
        values = part @ basis
        # same-dtype product: multiplying float32 by float64 runs ~8x slower on the CPU
        torch.mul(coeffs[..., start:stop, :], values.to(coeffs.dtype), out=result[..., start:stop, :])
        start = stop
    return result


def _row_blocks(rows: Tensor, width: int) -> tuple[Tensor, ...]:
    """(..., m, k) split along m so that a block's float64 work of ``width`` per row (and per
    leading problem) fits in a core's cache."""
    per_row = max(1, width * rows[..., :1, :1].numel())
    return rows.split(max(1, _BLOCK_ELEMENTS // per_row), dim=-2)
