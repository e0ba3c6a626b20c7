import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import mskjax
from mskjax import modifiers, msk, steps
import oracles
from conftest import random_psd

MODIFIERS = {
    "identity": modifiers.identity(),
    "flatten": modifiers.flatten(),
    "power0.5": modifiers.power(0.5),
    "exp0.2": modifiers.exponential(0.2),
    "scale3": modifiers.scale(3.0),
    "reverse": modifiers.reverse(),
}


def explicit_msk(K, g, k):
  """Oracle: numpy eigh, replace eigenvalues, rebuild; S = K⁺-free formula V diag(g/λ) Vᵀ."""
  w, v = np.linalg.eigh(K)
  w, v = w[::-1], v[:, ::-1]
  new = np.asarray(g(jnp.asarray(w), k))
  w_g = w.copy()
  w_g[:k] = new
  S_diag = np.ones_like(w)
  S_diag[:k] = new / w[:k]
  return (v * w_g) @ v.T, (v * S_diag) @ v.T


@pytest.mark.parametrize("name", sorted(MODIFIERS))
@pytest.mark.parametrize("k", [1, 4, 15])
def test_msk_gram_and_preconditioner_vs_explicit(name, k):
  g = MODIFIERS[name]
  K = random_psd(24, seed=k, decay=1.5)
  K_g_ref, S_ref = explicit_msk(K, g, k)
  K_g, S = mskjax.msk_gram(K, g, k), mskjax.preconditioner(K, g, k)
  # float64 throughout: errors are round-off, scaled by the largest entry.
  np.testing.assert_allclose(K_g, K_g_ref, atol=1e-12 * np.abs(K_g_ref).max())
  np.testing.assert_allclose(S, S_ref, atol=1e-10 * np.abs(S_ref).max())
  np.testing.assert_allclose(K @ S, K_g, atol=1e-12 * np.abs(K_g_ref).max())


def test_identity_is_a_no_op():
  K = random_psd(16, seed=3)
  g = modifiers.identity()
  np.testing.assert_allclose(mskjax.msk_gram(K, g, 5), K, atol=1e-14)
  np.testing.assert_allclose(mskjax.preconditioner(K, g, 5), np.eye(16), atol=1e-13)
  X = np.random.default_rng(0).uniform(0, 2 * np.pi, 16)
  kf = lambda a, b: oracles.circle_kernel(a[:, 0], b[:, 0], jnp)
  kg = mskjax.msk_kernel_fn(kf, X[:, None], g, 5, get=None)
  x = np.linspace(0, 2 * np.pi, 9)[:, None]
  np.testing.assert_allclose(kg(x, X[:, None]), kf(x, X[:, None]), atol=1e-12)
  np.testing.assert_allclose(kg(x), kf(x, x), atol=1e-12)


def _stax_relu():
  from mskjax._nt import stax
  return stax.serial(stax.Dense(1, W_std=1.0, b_std=0.1), stax.Relu(),
                     stax.Dense(1, W_std=1.0, b_std=0.1))[2]


@pytest.mark.parametrize("name", ["flatten", "power0.5", "reverse"])
@pytest.mark.parametrize("block_size", [None, 7])
def test_msk_kernel_fn_identities(name, block_size):
  g = MODIFIERS[name]
  kernel_fn = _stax_relu()
  rng = np.random.default_rng(1)
  X = rng.standard_normal((30, 3))
  x = rng.standard_normal((11, 3))
  K = np.asarray(kernel_fn(X, X, "ntk"))
  kg = mskjax.msk_kernel_fn(kernel_fn, X, g, 6, block_size=block_size)
  S = mskjax.preconditioner(K, g, 6)
  scale = np.abs(K).max()
  # The oracle's K is one neural-tangents call on all of X; msk_kernel_fn evaluates k(X, X)
  # again, in blocks (K_train, and k(X, X)·V inside k_g). The ReLU kernel's diagonal carries
  # arccos(1 − a few ulp) rounding of up to ~1e-8 relative that changes with the evaluation
  # shape and the instruction set (blocked vs one-shot diagonal: 3.5e-9 under AVX2, 3.9e-9
  # under SSE4.2, where the old 1e-10·scale failed [7-reverse] by 2.5x on a 0.003 entry).
  # S = I + V diag(g/λ − 1) Vᵀ carries that perturbation into k_g, so the tolerance is that
  # rounding times max|K| times max|S| (measured: ≤ 3.5e-9·max|K|·max|S| under SSE4.2, AVX2
  # and AVX-512; a wrong coefficient or sign in the Nyström term is off by O(max|K|)).
  tol = dict(rtol=0, atol=1e-8 * scale * max(1.0, float(np.abs(S).max())))
  np.testing.assert_allclose(kg(X, X), mskjax.msk_gram(K, g, 6), **tol)
  np.testing.assert_allclose(kg(x, X), np.asarray(kernel_fn(x, X, "ntk")) @ S, **tol)
  Kxx = kg(x)
  np.testing.assert_allclose(Kxx, Kxx.T, atol=1e-12 * scale)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 30), seed=st.integers(0, 10**6), frac=st.floats(0.0, 1.0),
       name=st.sampled_from(sorted(MODIFIERS)), decay=st.floats(0.5, 3.0))
def test_property_identities(n, seed, frac, name, decay):
  g = MODIFIERS[name]
  k = 1 + int(frac * (n - 2))
  K = random_psd(n, seed=seed, decay=decay)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    spec = mskjax.msk_spectrum(K, g, k)
  K_g = mskjax.msk.msk_gram_from_spectrum(K, spec)
  S = mskjax.msk.preconditioner_from_spectrum(spec)
  # Tolerances relative to ‖K_g‖: the condition number grows to n^decay ≤ 30^3.
  tol = 1e-10 * max(float(np.abs(K_g).max()), 1.0)
  np.testing.assert_allclose(K @ S, K_g, atol=tol)
  np.testing.assert_allclose(S, S.T, atol=1e-12 * float(np.abs(S).max()))
  assert np.linalg.eigvalsh(np.asarray(S)).min() > 0  # SPD since g > 0
  w_g = np.sort(np.linalg.eigvalsh(np.asarray(K_g)))[::-1]
  expected = np.sort(np.concatenate([np.asarray(spec.new_values),
                                     np.linalg.eigvalsh(K)[::-1][k:]]))[::-1]
  np.testing.assert_allclose(w_g, expected, atol=tol)
  r = np.random.default_rng(seed).standard_normal(n)
  np.testing.assert_allclose(mskjax.msk.apply_preconditioner(spec, r), S @ r, atol=tol)


def test_bad_inputs():
  K = random_psd(10)
  g = modifiers.flatten()
  with pytest.raises(ValueError, match="1 <= k"):
    mskjax.msk_gram(K, g, 0)
  with pytest.raises(ValueError, match="1 <= k"):
    mskjax.preconditioner(K, g, 10)
  with pytest.raises(TypeError, match="`k`"):
    mskjax.msk_gram(K, g, 2.0)
  with pytest.raises(ValueError, match="positive"):
    mskjax.msk_gram(K, lambda ev, k: -ev[:k], 2)
  with pytest.raises(ValueError, match="shape"):
    mskjax.msk_gram(K, lambda ev, k: ev, 2)
  with pytest.raises(ValueError, match="numerical rank"):
    mskjax.msk_gram(random_psd(10, rank=3), g, 5)
  with pytest.raises(ValueError, match="symmetric"):
    mskjax.msk_gram(K + np.triu(np.ones((10, 10)), 1), g, 2)
  with pytest.raises(ValueError, match="x_train"):
    mskjax.msk_kernel_fn(lambda a, b: a @ b.T, np.full((5, 2), np.nan), g, 2, get=None)
  kg = mskjax.msk_kernel_fn(lambda a, b: (1 + a @ b.T) ** 2, np.random.default_rng(0).standard_normal((8, 2)), g, 2, get=None)
  with pytest.raises(ValueError, match="features"):
    kg(np.ones((3, 5)))


def test_warns_when_k_splits_a_tie():
  K = np.diag([4.0, 2.0, 2.0, 1.0])
  with pytest.warns(UserWarning, match="round_k_to_block"):
    mskjax.msk_gram(K, modifiers.flatten(), 2)


def _mercer_sup_error(n, seed, g, k, m_pairs, grid):
  """Sup error on a grid between the Nyström MSK (n random points) and the exact Mercer MSK."""
  rng = np.random.default_rng(seed)
  X = rng.uniform(0, 2 * np.pi, n)
  kf = lambda a, b: oracles.circle_kernel(a[:, 0], b[:, 0], jnp)
  kg = mskjax.msk_kernel_fn(kf, X[:, None], g, k, get=None, tie_rtol=0.0)
  nystrom = np.asarray(kg(grid[:, None]))
  # Exact Mercer MSK: Fourier coefficient a_j (operator eigenvalue, multiplicity 2 for j>0).
  a = oracles.fourier_coefficients(oracles.circle_kernel_of_cos)
  op = np.concatenate([[a[0]], np.repeat(a[1:m_pairs + 2], 2)])  # descending on S¹
  assert np.all(np.diff(op) <= 1e-15)  # frequencies in order: top-k = |j| <= m_pairs
  new = np.asarray(g(jnp.asarray(op), k))  # g is 1-homogeneous: acts the same on λ/n
  delta = np.subtract.outer(grid, grid)
  exact = oracles.circle_kernel(grid, grid) + (new[0] - a[0])
  for j in range(1, m_pairs + 1):
    exact += 2 * (new[2 * j - 1] - a[j]) * np.cos(j * delta)
  return np.abs(nystrom - exact).max()


# Modifiers that are 1-homogeneous (g(cλ) = c g(λ), so they act the same on Gram and operator
# eigenvalues) and keep equal eigenvalues equal (the S¹ spectrum comes in pairs).
GEOMETRIC_MEAN = lambda ev, k: jnp.sqrt(ev[:k] * ev[k])


@pytest.mark.parametrize("g,ns", [
    (modifiers.flatten(), [32, 128, 512, 1024]),
    (modifiers.scale(0.3), [32, 128, 512, 1024]),
    (GEOMETRIC_MEAN, [32, 128, 512, 1024]),
    pytest.param(modifiers.flatten(), [32, 128, 512, 2048, 4096], marks=pytest.mark.slow),
], ids=["flatten", "scale", "geometric-mean", "flatten-to-4096"])
def test_nystrom_converges_to_mercer_on_circle(g, ns):
  m_pairs = 3
  k = 2 * m_pairs + 1  # a block boundary: frequencies 0..3
  grid = np.linspace(0, 2 * np.pi, 48, endpoint=False)
  errs = [np.mean([_mercer_sup_error(n, s, g, k, m_pairs, grid) for s in (0, 1)]) for n in ns]
  # Monte-Carlo Nyström error ~ n^{-1/2}: 32x more points should cut it by ~5.7; ask for 3.
  assert errs[-1] < errs[0] / 3 * np.sqrt(1024 / ns[-1] * 32 / ns[0]), errs
  assert all(b < a * 1.2 for a, b in zip(errs, errs[1:])), errs


# ------------------------------------------------------------------ reliability (issue 13)
def _spec(n=6, k=2):
  return mskjax.msk_spectrum(random_psd(n), modifiers.flatten(), k)


@pytest.mark.parametrize("r,err,match", [
    (np.ones(5), ValueError, "rows"),                 # n = 6 eigenvector rows
    (np.ones((7, 2)), ValueError, "rows"),
    (np.ones((6, 2, 2)), ValueError, "dimensions"),
    (np.r_[np.nan, np.ones(5)], ValueError, "`r`.*NaN"),
])
def test_apply_preconditioner_checks_its_inputs(r, err, match):
  # These used to end in dot_general errors or silent NaN.
  with pytest.raises(err, match=match):
    mskjax.msk.apply_preconditioner(_spec(), r)


def test_apply_preconditioner_matches_explicit_S_and_checks_the_spectrum():
  spec = _spec()
  r = np.random.default_rng(0).standard_normal((6, 3))
  S = np.asarray(mskjax.msk.preconditioner_from_spectrum(spec))
  np.testing.assert_allclose(mskjax.msk.apply_preconditioner(spec, r), S @ r, atol=1e-12)
  with pytest.raises(TypeError, match="MSKSpectrum"):
    mskjax.msk.apply_preconditioner((spec.values, spec.vectors), r)
  with pytest.raises(ValueError, match="inconsistent"):
    mskjax.msk.apply_preconditioner(spec._replace(new_values=spec.new_values[:1]), r)
  with pytest.raises(ValueError, match="g\\(λ_i\\) > 0"):
    mskjax.msk.apply_preconditioner(spec._replace(new_values=-spec.new_values), r)
  with pytest.raises(ValueError, match="NaN"):
    mskjax.msk.apply_preconditioner(spec._replace(vectors=spec.vectors * np.nan), r)


def test_msk_gram_from_spectrum_checks_shapes():
  spec = _spec()
  with pytest.raises(ValueError, match="required"):
    mskjax.msk.msk_gram_from_spectrum(random_psd(5), spec)
  with pytest.raises(ValueError, match="square"):
    mskjax.msk.msk_gram_from_spectrum(np.ones((6, 5)), spec)


def test_kernel_fn_arity_and_block_size_errors_are_clear():
  rbf = lambda a, b: jnp.exp(-((a[:, None] - b[None]) ** 2).sum(-1))
  X = jnp.linspace(-1, 1, 6)[:, None]
  # A 2-argument kernel with the default get='ntk' used to fail with "takes 2 positional
  # arguments but 3 were given" from deep inside.
  with pytest.raises(TypeError, match="get=None"):
    mskjax.msk_kernel_fn(rbf, X, modifiers.flatten(), 2)
  with pytest.raises(ValueError, match="`block_size`"):     # was ZeroDivisionError
    mskjax.msk_kernel_fn(rbf, X, modifiers.flatten(), 2, get=None, block_size=0)
  with pytest.raises(ValueError, match="`get`"):
    mskjax.msk_kernel_fn(rbf, X, modifiers.flatten(), 2, get="ntk2")
  with pytest.raises(TypeError, match="get=None"):           # same check in the operator
    mskjax.kernel_operator(rbf, X)


def test_msk_spectrum_from_eigenpairs_is_public_and_equal_to_msk_spectrum():
  K = random_psd(8)
  a = mskjax.msk_spectrum(K, modifiers.flatten(), 3)
  b = mskjax.msk.msk_spectrum_from_eigenpairs(mskjax.eigh_desc(K), modifiers.flatten(), 3)
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.abs(np.asarray(x)), np.abs(np.asarray(y)), atol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_kernel_step_is_one_over_lambda_max_and_refuses_bad_values(bad):
  # η = factor / max(g(λ₁..λ_k), λ_{k+1}); the oracle is the numpy eigenvalue of K_g
  K = np.diag([8.0, 4.0, 2.0, 1.0])
  s = msk.msk_spectrum(jnp.asarray(K), modifiers.flatten(), 2, method="dense")
  Kg = np.asarray(msk.msk_gram(jnp.asarray(K), modifiers.flatten(), 2))
  assert steps.kernel_step(s, factor=0.5) == pytest.approx(0.5 / np.linalg.eigvalsh(Kg)[-1],
                                                         rel=1e-12)
  with pytest.raises(ValueError, match="positive and finite"):
    steps.kernel_step(bad)
  with pytest.raises(ValueError, match="factor"):
    steps.kernel_step(s, factor=bad)
