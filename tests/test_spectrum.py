import jax.numpy as jnp
import numpy as np
import pytest

import mskjax
from mskjax import modifiers
from conftest import random_psd


@pytest.mark.parametrize("n,k", [(10, 1), (40, 7), (60, 59)])
def test_eigh_top_dense_matches_numpy(n, k):
  K = random_psd(n, seed=n)
  top = mskjax.eigh_top(K, k, method="dense")
  w = np.sort(np.linalg.eigvalsh(K))[::-1][:k]
  # float64 eigh: agreement to ~1e-12 relative to λ₁.
  np.testing.assert_allclose(top.values, w, atol=1e-12 * w[0])
  np.testing.assert_allclose(K @ top.vectors, top.vectors * top.values, atol=1e-10)
  np.testing.assert_allclose(top.vectors.T @ top.vectors, np.eye(k), atol=1e-10)


@pytest.mark.parametrize("decay", [1.0, 2.0])
@pytest.mark.parametrize("k", [5, 20])
def test_randomized_matches_dense(decay, k):
  K = random_psd(300, seed=k, decay=decay)
  dense = mskjax.eigh_top(K, k, method="dense")
  rand = mskjax.eigh_top(K, k, method="randomized", n_iter=60, oversample=30)
  # The gap λ_k/λ_{k+31} ≥ (k+31)/k per power iteration pair drives errors to round-off.
  np.testing.assert_allclose(rand.values, dense.values, rtol=1e-8)
  overlap = np.abs(np.sum(np.asarray(rand.vectors) * np.asarray(dense.vectors), axis=0))
  np.testing.assert_allclose(overlap, 1.0, atol=1e-6)


def test_clamps_negative_roundoff():
  K = random_psd(20, rank=5) - 1e-14 * np.eye(20)
  assert float(jnp.min(mskjax.eigh_desc(K).values)) == 0.0


@pytest.mark.parametrize("bad,match", [
    (np.ones((3, 4)), "square"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), "NaN"),
    (np.array([[1.0, 2.0], [0.0, 1.0]]), "symmetric"),
    (np.ones(3), "dimensions"),
])
def test_eigh_top_bad_matrix(bad, match):
  with pytest.raises(ValueError, match=match):
    mskjax.eigh_top(bad, 1)


@pytest.mark.parametrize("k", [0, 11, 2.5, True])
def test_eigh_top_bad_k(k):
  with pytest.raises(ValueError, match="`k`"):
    mskjax.eigh_top(np.eye(10), k)


def test_blocks_and_rounding():
  w = [5.0, 3.0, 3.0, 1.0, 1.0, 1.0, 0.5]
  assert mskjax.spectrum.eigenvalue_blocks(w) == [0, 1, 3, 6]
  assert [mskjax.spectrum.round_k_to_block(w, k) for k in (1, 2, 3, 4, 6)] == [1, 3, 3, 6, 6]


EV = jnp.array([16.0, 8.0, 4.0, 2.0, 1.0])


@pytest.mark.parametrize("g,k,expected", [
    (modifiers.identity(), 3, [16.0, 8.0, 4.0]),
    (modifiers.flatten(), 3, [2.0, 2.0, 2.0]),
    (modifiers.power(0.5, scale=2.0), 2, [8.0, 2 * np.sqrt(8.0)]),
    (modifiers.exponential(np.log(3.0)), 2, [4.0 * 9.0, 4.0 * 3.0]),  # λ_3 = 4
    (modifiers.scale(0.25), 2, [4.0, 2.0]),
    (modifiers.values([1.0, 2.0]), 2, [1.0, 2.0]),
    (modifiers.reverse(), 3, [4.0, 8.0, 16.0]),
    (modifiers.reverse(blocks=True), 3, [4.0, 8.0, 16.0]),   # singleton blocks: same
    (lambda ev, k: jnp.sqrt(ev[:k] * ev[k]), 2, [np.sqrt(64.0), np.sqrt(32.0)]),
])
def test_modifier_families(g, k, expected):
  # Closed forms of each family, written out by hand.
  np.testing.assert_allclose(modifiers.apply_modifier(g, EV, k), expected, rtol=1e-12)


@pytest.mark.parametrize("g,match", [
    (lambda ev, k: ev[:k] - 10.0, "strictly positive"),
    (lambda ev, k: ev[: k + 1], "shape"),
    (lambda ev, k: ev[:k] * jnp.nan, "NaN"),
    ("flatten", "callable"),
])
def test_modifier_contract_errors(g, match):
  with pytest.raises((ValueError, TypeError), match=match):
    modifiers.apply_modifier(g, EV, 2)


def test_modifier_constructor_errors():
  with pytest.raises(ValueError, match="scale"):
    modifiers.scale(-1.0)
  with pytest.raises(ValueError, match="positive"):
    modifiers.values([1.0, -2.0])
  with pytest.raises(ValueError, match="exactly k"):
    modifiers.apply_modifier(modifiers.values([1.0, 2.0]), EV, 3)


@pytest.mark.parametrize("mult", [(1, 2, 2, 2), (1, 3, 5, 7), (2, 1, 3)])
def test_reverse_blocks_on_sphere_like_multiplicities(mult):
  # Blocks of sizes `mult` with values 2^-b (S¹: 1, 2, 2, ...; S²: 2l+1). Block b must take
  # the value of block B-1-b at each of its own positions (written out by hand).
  vals = [2.0 ** -b for b in range(len(mult))]
  ev = jnp.array(sum(([v] * m for v, m in zip(vals, mult)), []) + [1e-3])
  k = sum(mult)
  expected = sum(([vals[len(mult) - 1 - b]] * m for b, m in enumerate(mult)), [])
  np.testing.assert_allclose(modifiers.reverse(blocks=True)(ev, k), expected, rtol=1e-12)
  # Tiny splits inside a block (round-off) are averaged away; eigenvalue-wise reverse keeps them.
  noisy = ev * (1 + 1e-9 * (jnp.arange(ev.shape[0]) % 2))
  np.testing.assert_allclose(modifiers.reverse(blocks=True)(noisy, k), expected, rtol=1e-8)
  with pytest.raises(ValueError, match="rtol"):
    modifiers.reverse(blocks=True, rtol=-1.0)


def test_modifiers_are_jittable():
  import jax
  for g in (modifiers.flatten(), modifiers.power(0.5), modifiers.exponential(0.3),
            modifiers.reverse(), modifiers.reverse(blocks=True), modifiers.scale(2.0)):
    out = jax.jit(lambda ev: g(ev, 3))(EV)
    np.testing.assert_allclose(out, g(EV, 3), rtol=1e-12)


# ------------------------------------------------------------------ reliability (issue 13)
import warnings  # noqa: E402

import jax  # noqa: E402

from mskjax import kernels, spectrum as S  # noqa: E402


@pytest.mark.parametrize("solver", [
    lambda K: mskjax.eigh_desc(K),
    lambda K: mskjax.eigh_top(K, 1),
    lambda K: mskjax.eigh_top(K, 1, method="randomized"),
    lambda K: mskjax.spectrum.eigh_top(K, 1, method="randomized"),
])
def test_indefinite_matrix_is_rejected_not_clamped(solver):
  # diag(1, −5) used to come back as [1, 0]: a large negative eigenvalue is not round-off.
  with pytest.raises(ValueError, match="not positive semi-definite"):
    solver(np.diag([1.0, -5.0]))
  with pytest.raises(ValueError, match="not positive semi-definite"):
    solver(random_psd(8) - 0.2 * np.eye(8))      # λ = 1/i − 0.2: λ_min = −0.075 = −0.09 λ₁
  # Round-off negatives (|λ| <= 1e-5 · λ_max, the stated tolerance) are clamped.
  ok = solver(random_psd(8, rank=3) - 1e-9 * np.eye(8))
  assert float(jnp.min(ok.values)) >= 0.0


@pytest.mark.parametrize("scale", [1e-300, 1e-20, 1.0, 1e300])
def test_symmetry_check_is_relative_at_every_scale(scale):
  with pytest.raises(ValueError, match="symmetric"):
    mskjax.eigh_top(scale * np.array([[1.0, 5.0], [0.0, 1.0]]), 1)
  # ... and a symmetric matrix at the same scale is accepted with exact eigenvalues.
  got = mskjax.eigh_desc(scale * np.array([[2.0, 1.0], [1.0, 2.0]])).values
  np.testing.assert_allclose(np.asarray(got), scale * np.array([3.0, 1.0]), rtol=1e-12)


@pytest.mark.parametrize("x64", [True, False])
def test_float32_input_is_decomposed_in_float64(x64):
  # Eigenvalues 1 .. 1e-6 in a rotated basis, stored in float32. A float32 eigh is off by
  # ~eps32·λ₁ = 1e-7 absolute (10 % of the smallest); a float64 decomposition of the same
  # float32 numbers is exact to ~1e-16·λ₁, i.e. to float32 rounding of each value.
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
  K32 = ((q * np.geomspace(1.0, 1e-6, 30)) @ q.T).astype(np.float32)
  K32 = (K32 + K32.T) / 2
  want = np.linalg.eigvalsh(K32.astype(np.float64))[::-1]
  with jax.enable_x64(x64):
    got = mskjax.eigh_desc(jnp.asarray(K32))
    top = mskjax.eigh_top(jnp.asarray(K32), 30)
  assert got.values.dtype == jnp.float32 and top.values.dtype == jnp.float32
  for vals in (got.values, top.values):
    np.testing.assert_allclose(np.asarray(vals, np.float64), want, rtol=1e-6, atol=0)


def test_auto_checks_randomized_residuals_and_falls_back(monkeypatch):
  # A slowly decaying spectrum: 30 subspace iterations leave residuals ~1e-3 λ₁. 'auto' above
  # the dense limit used to return that silently; now it warns and answers with dense eigh.
  monkeypatch.setattr(S, "AUTO_DENSE_MAX_N", 50)
  K = random_psd(120, decay=0.05, seed=3)
  want = np.linalg.eigvalsh(K)[::-1][:5]
  with pytest.warns(UserWarning, match="falling back to the dense solver"):
    got = mskjax.eigh_top(K, 5)
  np.testing.assert_allclose(np.asarray(got.values), want, rtol=1e-12)
  with pytest.warns(UserWarning, match="exceeds tol"):
    mskjax.spectrum.eigh_top(K, 5, method="randomized")
  # A fast-decaying spectrum converges: no warning, randomized answer kept.
  Kf = random_psd(120, decay=3.0, seed=3)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = mskjax.eigh_top(Kf, 5)
  np.testing.assert_allclose(np.asarray(got.values), np.linalg.eigvalsh(Kf)[::-1][:5],
                             rtol=1e-9)


def test_randomized_does_not_overflow_on_huge_kernels():
  # K·1e307 overflowed inside K @ Q (7 % error with only a numpy warning).
  K = np.diag(2.0 ** -np.arange(40.0)) * 1e307
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = mskjax.spectrum.eigh_top(K, 3, method="randomized")
  np.testing.assert_allclose(np.asarray(got.values), 1e307 * np.array([1.0, 0.5, 0.25]),
                             rtol=1e-10)


def test_krylov_checks_the_operator():
  K = np.diag(1.0 / np.arange(1.0, 41.0))
  opts = dict(method="krylov", depth=1, max_cycles=1, oversample=0)  # one block size
  op = lambda f: kernels.KernelOperator(40, np.float64, f)
  with pytest.raises(ValueError, match="matmul` must map"):
    mskjax.eigh_top(op(lambda v: (K @ v)[:-1]), 2, **opts)
  with pytest.raises(ValueError, match="NaN/inf"):
    mskjax.eigh_top(op(lambda v: K @ v * np.inf), 2, **opts)
  with pytest.raises(ValueError, match="not positive semi-definite"):
    mskjax.eigh_top(op(lambda v: -(K @ v)), 2, **opts)
  with pytest.warns(UserWarning, match="not converged"):
    top, info = mskjax.eigh_top(op(lambda v: K @ v), 2, tol=1e-14, return_info=True, **opts)
  assert not info.converged and info.residuals.shape == (2,)


def test_eigh_info_residuals_are_the_true_ones():
  K = random_psd(60, decay=2.0, seed=4)
  for method in ("dense", "randomized", "krylov"):
    top, info = mskjax.eigh_top(K, 4, method=method, return_info=True)
    want = np.linalg.norm(K @ np.asarray(top.vectors) - np.asarray(top.vectors * top.values),
                          axis=0)
    assert info.method == method and info.converged
    # residuals of unit vectors at float64 round-off (a few 1e-16·λ₁) or the solver's own
    np.testing.assert_allclose(np.asarray(info.residuals), want, rtol=1e-6, atol=1e-14)
    np.testing.assert_allclose(top.values, np.linalg.eigvalsh(K)[::-1][:4], rtol=1e-9)


@pytest.mark.parametrize("landmarks,err,match", [
    ([0, 1, 2, 100], IndexError, "index 100"),
    ([0, 1, 2, -1], IndexError, "index -1"),
    ([0, 1, 2, 2], ValueError, "repeated"),
    ([0.0, 1.0, 2.0, 3.0], TypeError, "integer"),
])
def test_nystrom_landmarks_are_bounds_checked(landmarks, err, match):
  # landmarks=[…, 100] with n = 40 used to compute with point 39 and report 100.
  lin = lambda a, b: a @ b.T
  X = jnp.asarray(np.random.default_rng(0).standard_normal((40, 3)))
  op = kernels.kernel_operator(lin, X, get=None)
  with pytest.raises(err, match=match):
    mskjax.eigh_top(op, 1, method="nystrom", n_landmarks=4, landmarks=np.asarray(landmarks))


def test_kernel_operator_rejects_nan_vectors():
  # V with a NaN used to give a silent all-NaN K V.
  lin = lambda a, b: a @ b.T
  for cache in (True, False):
    mv = kernels.kernel_operator(lin, jnp.arange(6.0).reshape(3, 2), get=None, block_size=2,
                                 cache=cache)
    with pytest.raises(ValueError, match="`V`.*NaN"):
      mv @ jnp.array([1.0, np.nan, 0.0])
    np.testing.assert_allclose(mv @ jnp.ones(3), [9.0, 39.0, 69.0])


def test_krylov_start_block_is_used_and_checked():
  # depth 0, one cycle: a single Rayleigh–Ritz step on span(start). With the exact top
  # eigenvectors (numpy oracle) as start it is exact; the shape and method are checked.
  rng = np.random.default_rng(0)
  A = rng.standard_normal((60, 60))
  K = A @ A.T
  lam, U = np.linalg.eigh(K)
  lam, U = lam[::-1], U[:, ::-1]
  top, info = mskjax.eigh_top(K, 4, method="krylov", start=U[:, :4], oversample=0, depth=0,
                              max_cycles=1, return_info=True)
  # rtol: float64 Rayleigh quotients on an exact invariant subspace, ~1e-13 relative.
  np.testing.assert_allclose(np.asarray(top.values), lam[:4], rtol=1e-10)
  assert info.converged and info.n_matvecs == 1
  with pytest.raises(ValueError, match="`start`.*rows"):
    mskjax.eigh_top(K, 4, method="krylov", start=U[:10, :4])
  with pytest.raises(ValueError, match="`start`.*krylov"):
    mskjax.eigh_top(K, 4, method="dense", start=U[:, :4])
