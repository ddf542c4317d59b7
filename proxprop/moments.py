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
    H_jk = sum_i w_i q_j(mu_i) q_k(mu_i)        (one (m x s) @ (s x D(D+1)/2) product),
then every inner product is u^T H v on coefficient vectors of length D = N + 1, and
multiplying by M is a fixed tridiagonal map S on coefficients (the basis' three-term
recurrence).  CG (textbook or the reference's aliased loop, cg.batched_cg) then runs on
(m, D) arrays, and the iterate needs one pass:  x = c * X(mu)  with  X(mu) = coeffs @ Q^T.

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

import torch
from torch import Tensor

from .cg import EARLY_STOP_TOL, batched_cg

__all__ = ["MAX_ITERATIONS", "moment_cg_polynomial", "orthonormal_basis"]

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


def _average_measure(weight: Tensor) -> Tensor:
    """The rows' average normalised measure (..., s) in float64: it only chooses the basis.

    One matrix-vector product in the input dtype.  1/mass is formed in float64 and capped at
    the dtype's largest value: a row of tiny gradients (a nearly dead ReLU unit, |c| ~ 1e-20)
    has a subnormal float32 mass whose reciprocal overflows to inf, and inf * 0 (the measure's
    empty points) made the average, hence the basis and EVERY row's result, NaN.  That was the
    divergence of the digits demo (cg3-paper, lr 3.16) with this path.  A capped row weighs
    less than 1 in the average, which costs nothing: any positive measure is a valid basis.
    """
    # summed in the input dtype (a float64 sum of a float32 array first copies all of it);
    # a sum of positive subnormals stays positive
    mass = weight.sum(dim=-1, keepdim=True).double()
    positive = mass > 0
    inv_mass = torch.where(positive, 1.0 / torch.where(positive, mass, torch.ones_like(mass)), 0.0)
    inv_mass = inv_mass.clamp_max(torch.finfo(weight.dtype).max).to(weight.dtype)
    return (weight.mT @ inv_mass)[..., 0].double() / weight.shape[-2]


def _pair_index(size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Upper-triangle pairs (j <= k) and the (size, size) map from (j, k) to the pair number."""
    rows, cols = torch.triu_indices(size, size, device=device)
    index = torch.empty(size, size, dtype=torch.long, device=device)
    number = torch.arange(rows.numel(), device=device)
    index[rows, cols] = number
    index[cols, rows] = number
    return rows, cols, index


def moment_cg_polynomial(
    mu: Tensor,
    weight: Tensor,
    iterations: int,
    *,
    joint: bool = False,
    reference_variant: bool = False,
    tol: float = EARLY_STOP_TOL,
    dtype: torch.dtype = torch.float64,
    times: Tensor | None = None,
) -> Tensor:
    """Values X(mu) (..., m, s) of the CG iterate's polynomial for every row, computed in
    float64 and returned in ``dtype``; or, with ``times`` (..., m, s), times * X(mu), written
    into ``times`` block by block (one pass less over the rows than forming X(mu) first).

    mu: (..., s) diagonal of M (> 0).  weight: (..., m, s) each row's spectral measure w.
    The CG iterate of a row with coefficients c (w = c^2 in the primal) is  c * X(mu).
    Same scalars as cg.batched_cg on the diagonal system (textbook or aliased loop, the
    reference's early stop, ``joint``), computed from H instead of elementwise passes.
    """
    size = iterations + 1
    average = _average_measure(weight)
    q, s_map = orthonormal_basis(mu.double(), average, iterations)
    rows, cols, index = _pair_index(size, mu.device)
    products = q[..., rows] * q[..., cols]  # (..., s, D(D+1)/2)
    # in row blocks: each block's float64 copy stays in cache (one whole-array copy of a
    # 4000 x 500 measure cost 7 ms, as much as the rest of this function)
    gram = torch.cat([part.double() @ products for part in _row_blocks(weight, weight.shape[-1])], dim=-2)[..., index]

    def inner(u: Tensor, v: Tensor) -> Tensor:
        return (u * (gram @ v[..., None])[..., 0]).sum(dim=-1)

    # the constant polynomial 1 = q_0 / q0_value: CG's first residual is the right-hand side
    one = torch.zeros(*weight.shape[:-1], size, dtype=torch.float64, device=mu.device)
    q0 = q[..., :1, 0:1]  # (..., 1, 1) constant value of q_0
    one[..., 0:1] = torch.where(q0 > 0, 1.0 / torch.where(q0 > 0, q0, torch.ones_like(q0)), 0.0)
    coeffs = batched_cg(
        lambda u: u @ s_map.transpose(-1, -2), one, iterations,
        joint=joint, reference_variant=reference_variant, tol=tol, inner=inner,
    )
    basis = q.transpose(-1, -2)
    out = times if times is not None else coeffs.new_empty(*weight.shape, dtype=dtype)
    start = 0
    for part in _row_blocks(coeffs, basis.shape[-1]):
        block = out[..., start:start + part.shape[-2], :]
        start += part.shape[-2]
        values = part @ basis
        if times is None:
            block.copy_(values)
        else:
            # same-dtype product: multiplying float32 by float64 in place runs ~8x slower on
            # the CPU (17 ms vs 2 ms for 4000 x 500)
            block.mul_(values.to(block.dtype))
    return out


def _row_blocks(rows: Tensor, width: int) -> tuple[Tensor, ...]:
    """(..., m, k) split along m so that a block's float64 work of ``width`` per row (and per
    leading problem) fits in a core's cache."""
    per_row = max(1, width * rows[..., :1, :1].numel())
    return rows.split(max(1, _BLOCK_ELEMENTS // per_row), dim=-2)
