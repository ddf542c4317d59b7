"""CG from spectral moments (proxprop/moments.py) against CG loops written here in numpy.

The references run CG vector by vector on the diagonal system diag(mu) x = c (the system
every Gram solve becomes after its eigendecomposition): textbook CG, and the reference
release's aliased loop (P is R during the first iteration, + 1e-6 in the denominators), with
the reference's early stop (all rows stop once the largest squared residual is below
tol^2 times the mean initial squared residual).  Spectra are ill-conditioned: log-spaced over
8 decades, and an MLP-like one (a few large outliers above a bulk, as A A^T of non-negative
inputs has).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from proxprop.modes import SolverConfig
from proxprop.moments import MAX_ITERATIONS, moment_cg
from proxprop.solvers import FactoredRows, cg_strategy_for, gram_solve_factored

TOL = 1e-2


def numpy_cg(mu: np.ndarray, c: np.ndarray, iterations: int, aliased: bool = False, tol: float = TOL,
             dtype=np.float64) -> np.ndarray:
    """CG on diag(mu) x = c_i for every row i of c, from x = 0, vector by vector."""
    mu = mu.astype(dtype)
    b = c.astype(dtype)
    eps = dtype(1e-6) if aliased else dtype(0)
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = (r * r).sum(axis=1)
    threshold = tol * tol * rr.mean()
    for k in range(iterations):
        mp = p * mu
        pmp = (p * mp).sum(axis=1) + eps
        alpha = np.where(pmp > 0, rr / np.where(pmp > 0, pmp, 1), 0).astype(dtype)
        x = x + alpha[:, None] * p
        if k == iterations - 1:
            break
        r = r - alpha[:, None] * mp
        rr_new = (r * r).sum(axis=1)
        if rr_new.max() < threshold:
            break
        beta = np.where(rr + eps > 0, rr_new / np.where(rr + eps > 0, rr + eps, 1), 0).astype(dtype)
        p = r + beta[:, None] * (r if (aliased and k == 0) else p)
        rr = rr_new
    return x


def log_spectrum(n: int = 300) -> np.ndarray:
    return np.logspace(0, 8, n)


def mlp_spectrum(n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([[3e5, 2e4, 5e3], rng.uniform(0, 2e3, n - 3)]) + 20.0


def moments_solution(mu: np.ndarray, c: np.ndarray, iterations: int, aliased: bool = False,
                     tol: float = TOL, dtype=torch.float64) -> np.ndarray:
    mu_t = torch.from_numpy(mu).to(dtype)
    c_t = torch.from_numpy(c).to(dtype)
    return moment_cg(mu_t, c_t, iterations, reference_variant=aliased, tol=tol).double().numpy()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("spectrum", [log_spectrum, mlp_spectrum])
@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
@pytest.mark.parametrize("aliased", [False, True])
@pytest.mark.parametrize("tol", [TOL, 0.0])
def test_moments_equal_vector_cg_in_float64(spectrum, iterations, aliased, tol):
    mu = spectrum()
    rng = np.random.default_rng(iterations)
    c = rng.standard_normal((40, mu.size)) * rng.uniform(0.1, 10, (40, 1))
    expected = numpy_cg(mu, c, iterations, aliased, tol)
    got = moments_solution(mu, c, iterations, aliased, tol)
    assert rel(got, expected) < 1e-10


@pytest.mark.parametrize("iterations", [1, 3, 5])
@pytest.mark.parametrize("aliased", [False, True])
def test_moments_with_weighted_inner_product_equal_vector_cg(iterations, aliased):
    """The dual's case: <u, v> = sum lam u v.  With y = sqrt(lam) x the weighted CG on
    diag(mu) x = c is plain CG on diag(mu) y = sqrt(lam) c, which numpy_cg runs."""
    mu_base = mlp_spectrum()
    lam = mu_base - 20.0
    rng = np.random.default_rng(20 + iterations)
    c = rng.standard_normal((30, lam.size))
    root = np.sqrt(lam)
    expected = numpy_cg(mu_base, c * root, iterations, aliased) / root
    got = moment_cg(torch.from_numpy(mu_base), torch.from_numpy(c), iterations,
                    measure_scale=torch.from_numpy(lam), reference_variant=aliased).numpy()
    assert rel(got, expected) < 1e-10


@pytest.mark.parametrize("iterations", [10, 20])
@pytest.mark.parametrize("aliased", [False, True])
def test_moments_many_iterations_on_log_spectrum(iterations, aliased):
    """Eight decades, evenly spread: textbook CG in float64 is itself stable here."""
    mu = log_spectrum()
    c = np.random.default_rng(7).standard_normal((30, mu.size))
    expected = numpy_cg(mu, c, iterations, aliased, tol=0.0)
    assert rel(moments_solution(mu, c, iterations, aliased, tol=0.0), expected) < 1e-10


def test_moments_early_stop_matches_reference_rule():
    """Small 1/tau-shifted spread: the residual falls under the stop level within 10 steps."""
    mu = np.linspace(1.0, 1.5, 50)
    c = np.random.default_rng(3).standard_normal((6, 50))
    full = numpy_cg(mu, c, 10, tol=0.0)
    stopped = numpy_cg(mu, c, 10)
    assert rel(stopped, full) > 1e-6  # the rule did stop early
    assert rel(moments_solution(mu, c, 10), stopped) < 1e-10


def test_moments_measure_with_few_points_and_zero_rows():
    """Fewer support points than iterations (CG ends exactly) and an all-zero right-hand side."""
    mu = np.array([1.0, 2.0, 5.0, 7.0, 100.0])
    c = np.random.default_rng(4).standard_normal((4, 5))
    c[2] = 0.0
    got = moments_solution(mu, c, 10, tol=0.0)
    assert np.all(got[2] == 0.0)
    exact = c / mu
    assert rel(got, exact) < 1e-10


def test_moments_joint_is_one_cg_over_all_rows():
    mu = mlp_spectrum(80)
    c = np.random.default_rng(5).standard_normal((5, 80))
    expected = numpy_cg(np.tile(mu, 5), c.reshape(1, -1), 4, aliased=True).reshape(5, 80)
    got = moment_cg(torch.from_numpy(mu), torch.from_numpy(c), 4, joint=True, reference_variant=True)
    assert rel(got.numpy(), expected) < 1e-10


@pytest.mark.parametrize("spectrum,iterations", [(log_spectrum, 3), (log_spectrum, 10),
                                                (log_spectrum, MAX_ITERATIONS), (mlp_spectrum, 3),
                                                (mlp_spectrum, 5)])
def test_moments_float32_error(spectrum, iterations):
    """float32 inputs against CG on the same (rounded) inputs in numpy's extended precision.

    Measured (40 rows, dual-like weights c ~ sqrt(mu)): the moments path 3.4e-8 to 3.8e-8 on
    both spectra, which is the float32 rounding of the result itself (the polynomial's values
    before that rounding: 1e-9 to 6e-9); float32 textbook CG 2e-7 to 1e-5 on the log spectrum and 2e-2 to 1e-1 on the
    MLP-like one at N = 5 (loss of orthogonality); the moments path keeps its scalar work in
    float64.  (From N = 10 on the MLP-like spectrum even float64 textbook CG is 10% away from
    the extended-precision one: CG itself is ill-conditioned there, so no path is checked.)"""
    mu = spectrum().astype(np.float32).astype(np.float64)
    rng = np.random.default_rng(11)
    c = (rng.standard_normal((40, mu.size)) * np.sqrt(mu)).astype(np.float32).astype(np.float64)
    truth = numpy_cg(mu, c, iterations, tol=0.0, dtype=np.longdouble).astype(np.float64)
    got = moments_solution(mu, c, iterations, tol=0.0, dtype=torch.float32)
    assert rel(got, truth) < 1e-7


def test_solver_accepts_batches_and_tensor_tau():
    """Stacked Gram matrices (..., s, s), right-hand sides (..., m, s), 1/tau per member."""
    torch.manual_seed(0)
    a = torch.randn(3, 12, 20, dtype=torch.float64)
    gram = a @ a.mT
    rhs = torch.randn(3, 4, 12, dtype=torch.float64)
    inv_tau = torch.tensor([0.5, 2.0, 10.0], dtype=torch.float64)
    from proxprop.solvers import exact_solve

    got = exact_solve(gram, rhs, inv_tau)
    assert isinstance(got, FactoredRows)
    for i in range(3):
        expected = np.linalg.solve(gram[i].numpy() + inv_tau[i].item() * np.eye(12), rhs[i].numpy().T).T
        assert rel(got.dense()[i].numpy(), expected) < 1e-10
    cfg = SolverConfig.make("prox_cg3", 0.5)
    batched = gram_solve_factored(gram, rhs, cfg, dual=False, cg_strategy="moments").dense()
    for i in range(3):
        mu, vecs = np.linalg.eigh(gram[i].numpy())
        coeffs = rhs[i].numpy() @ vecs
        expected = numpy_cg(np.clip(mu, 0, None) + 2.0, coeffs, 3) @ vecs.T
        assert rel(batched[i].numpy(), expected) < 1e-10
    dual = gram_solve_factored(gram, rhs, cfg, dual=True).dense()  # automatic choice
    for i in range(3):
        one = gram_solve_factored(gram[i], rhs[i], cfg, dual=True, cg_strategy="direct").dense()
        assert rel(dual[i].numpy(), one.numpy()) < 1e-10


def test_factored_rows_association_and_sums():
    torch.manual_seed(1)
    left, right = torch.randn(6, 5, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    rows = FactoredRows(left, right)
    for k in (2, 9):
        mat = torch.randn(5, k, dtype=torch.float64)
        torch.testing.assert_close(rows.times(mat), left @ right @ mat)
    torch.testing.assert_close(rows.row_sums(), (left @ right).sum(dim=1))


@pytest.mark.parametrize("iterations,bound", [(3, 1e-6), (20, 1e-2)])
def test_moments_lose_accuracy_on_disjoint_row_measures(iterations, bound):
    """Where the shared basis is weak: half the rows live on the lower half of a 6-decade
    spectrum, half on the upper half.  Measured 8e-8 (N=3), 2e-4 to 1e-3 (N=20, depending on
    rounding in the average measure) in float64, where
    textbook CG keeps 1e-16: the reason float64 layers never pick this path automatically."""
    mu = np.logspace(0, 6, 300)
    c = np.random.default_rng(2).standard_normal((40, 300))
    c[:20, 150:] *= 1e-6
    c[20:, :150] *= 1e-6
    expected = numpy_cg(mu, c, iterations, tol=0.0)
    error = rel(moments_solution(mu, c, iterations, tol=0.0), expected)
    assert 1e-12 < error < bound


def test_moments_chosen_automatically_only_below_float64_and_up_to_max_iterations():
    """The switch between the moments path and the elementwise loops (solvers._cg_costs)."""
    cpu = torch.device("cpu")
    for name in ("prox_cg3", "prox_cg3_ref", "prox_cg10"):
        cfg = SolverConfig.make(name, 0.05)
        assert cg_strategy_for(500, 4000, cfg, torch.float32, cpu) == "moments"  # the paper's MLP
        assert cg_strategy_for(500, 4000, cfg, torch.float64, cpu) != "moments"
    too_many = SolverConfig.make(f"prox_cg{MAX_ITERATIONS + 1}", 0.05)
    assert cg_strategy_for(500, 4000, too_many, torch.float32, cpu) != "moments"
    cfg3 = SolverConfig.make("prox_cg3", 0.05)
    assert cg_strategy_for(500, 4000, cfg3, torch.float64, cpu, cg_strategy="moments") == "moments"
    with pytest.raises(ValueError, match="cg_strategy"):
        cg_strategy_for(500, 4000, cfg3, torch.float32, cpu, cg_strategy="lanczos")


@pytest.mark.parametrize("dtype,tiny", [(torch.float32, 1e-21), (torch.float64, 1e-160)])
@pytest.mark.parametrize("aliased", [False, True])
def test_moments_row_with_subnormal_mass(dtype, tiny, aliased):
    """One row of gradients ~1e-21 (a nearly dead ReLU unit; float64: ~1e-160) next to ordinary
    rows, on a spectrum with empty points (zero weights).  Its mass sum c^2 was subnormal
    (summed in float32; in float64 it still is for 1e-160), so 1/mass overflowed to inf, and
    inf * 0 made the basis and every row NaN: the cause of the digits demo's divergence
    (cg3-paper, lr 3.16) with this path.  The ordinary rows must match
    CG in float64 on the same (rounded) inputs: 1e-10 in float64; in float32, 1e-7 (measured
    3e-9: the small work runs in float64); the tiny row must be finite and tiny."""
    mu = mlp_spectrum(120)
    rng = np.random.default_rng(12)
    c = rng.standard_normal((16, mu.size))
    c[:, :10] = 0.0  # points no row weighs (directions the gradients do not reach)
    c[5] *= tiny
    c = torch.from_numpy(c).to(dtype).double().numpy()
    got = moment_cg(torch.from_numpy(mu).to(dtype), torch.from_numpy(c).to(dtype), 3,
                    reference_variant=aliased, tol=0.0).double().numpy()
    assert np.isfinite(got).all()
    ordinary = np.arange(16) != 5
    expected = numpy_cg(mu.astype(np.float32).astype(np.float64) if dtype == torch.float32 else mu,
                        c[ordinary], 3, aliased, tol=0.0)
    assert rel(got[ordinary], expected) < (1e-10 if dtype == torch.float64 else 1e-7)
    assert np.abs(got[5]).max() <= 1e3 * tiny


def test_moments_layer_with_a_dead_unit_matches_direct():
    """The same failure through a layer: an output unit whose gradient is 1e-21 (float32)."""
    from proxprop import ProxPropLinear

    torch.manual_seed(3)
    x = torch.rand(100, 64)
    grads = {}
    for strategy in ("direct", "moments"):
        layer = ProxPropLinear(64, 32, tau_prox=0.05, optimization_mode="prox_cg3_ref", cg_strategy=strategy)
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(-0.1, 0.1, 32 * 64).reshape(32, 64))
        g = torch.randn(100, 32, generator=torch.Generator().manual_seed(4))
        g[:, 7] *= 1e-21
        layer(x).backward(g)
        grads[strategy] = layer.weight.grad
    assert torch.isfinite(grads["moments"]).all()
    # float32 paths differ by rounding: measured 1.8e-6 relative over the whole matrix
    assert rel(grads["moments"].double().numpy(), grads["direct"].double().numpy()) < 1e-5
