"""mskjax.data: sampling, targets, digits, user-array validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mskjax.data import (Dataset, as_dataset, circle, fourier_target, load_digits, sphere,
                         zonal_harmonic_target)


def test_circle_equispaced():
  x, theta = circle(64)
  assert x.shape == (64, 2) and theta.shape == (64,) and x.dtype == jnp.float64
  np.testing.assert_allclose(jnp.linalg.norm(x, axis=1), 1.0, atol=1e-14)
  np.testing.assert_allclose(jnp.diff(theta), 2 * np.pi / 64, atol=1e-13)
  np.testing.assert_allclose(theta[0], 0.0)
  np.testing.assert_allclose(jnp.arctan2(x[:, 1], x[:, 0]) % (2 * np.pi), theta, atol=1e-12)


def test_circle_random():
  x, theta = circle(100, equispaced=False, key=jax.random.PRNGKey(0))
  assert bool(jnp.all((theta >= 0) & (theta < 2 * np.pi)))
  np.testing.assert_allclose(x, jnp.stack([jnp.cos(theta), jnp.sin(theta)], 1))
  with pytest.raises(ValueError, match="key"):
    circle(10, equispaced=False)
  with pytest.raises(ValueError, match="`n` must be"):
    circle(0)


@pytest.mark.parametrize("d", [2, 3, 10])
def test_sphere_on_sphere_and_centred(d):
  x = sphere(4000, d, jax.random.PRNGKey(d))
  assert x.shape == (4000, d)
  np.testing.assert_allclose(jnp.linalg.norm(x, axis=1), 1.0, atol=1e-13)
  # Uniform: mean 0 and E[x x^T] = I/d; 5-sigma Monte Carlo bounds (sd of a mean <= 1/sqrt(n)).
  assert float(jnp.max(jnp.abs(x.mean(0)))) < 5 / np.sqrt(4000)
  np.testing.assert_allclose(x.T @ x / 4000, np.eye(d) / d, atol=5 / np.sqrt(4000))
  with pytest.raises(ValueError, match="`d` must be"):
    sphere(3, 1, jax.random.PRNGKey(0))


def test_fourier_target():
  _, theta = circle(16)
  y = fourier_target(theta, 3)
  assert y.shape == (16, 1)
  np.testing.assert_allclose(y[:, 0], np.cos(3 * np.asarray(theta)))
  # Orthogonality of distinct frequencies on the equispaced grid.
  assert abs(float(jnp.vdot(y, fourier_target(theta, 5)))) < 1e-12
  with pytest.raises(ValueError, match="`j` must be"):
    fourier_target(theta, -1)
  with pytest.raises(ValueError, match="1-D"):
    fourier_target(theta[:, None], 1)


def _s2_product_quadrature(n_t=24, n_phi=48):
  """Gauss-Legendre in t = cos(polar angle) x equispaced azimuth: exact for polynomials of
  degree < 2 n_t in t and trigonometric degree < n_phi; weights sum to 1 (uniform measure)."""
  t, wt = np.polynomial.legendre.leggauss(n_t)
  phi = 2 * np.pi * np.arange(n_phi) / n_phi
  tt, pp = np.meshgrid(t, phi, indexing="ij")
  r = np.sqrt(1 - tt**2)
  x = np.stack([r * np.cos(pp), r * np.sin(pp), tt], -1).reshape(-1, 3)
  w = np.repeat(wt / 2, n_phi) / n_phi
  return x, w


@pytest.mark.parametrize("axis", [None, [1.0, 2.0, -0.5]])
def test_zonal_harmonics_orthonormal_quadrature(axis):
  # Products Y_i Y_j (i, j <= 5) are polynomials of degree <= 10 in x for any axis, which
  # the product rule integrates exactly, so the tolerance is rounding only.
  x, w = _s2_product_quadrature()
  ys = np.concatenate([np.asarray(zonal_harmonic_target(x, j, axis)) for j in range(6)], 1)
  gram = ys.T @ (w[:, None] * ys)
  np.testing.assert_allclose(gram, np.eye(6), atol=1e-12)


def test_zonal_harmonics_orthogonal_monte_carlo():
  # Monte Carlo on n = 100k uniform points: each entry of the empirical Gram matrix is a
  # mean of n i.i.d. terms Y_i Y_j; the largest standard error sd(Y_i Y_j)/sqrt(n) is
  # ~0.0045 here, and the tolerance 0.03 is ~6.5 of those (observed max |G - I| ~0.007).
  x = sphere(100_000, 3, jax.random.PRNGKey(3))
  ys = jnp.concatenate([zonal_harmonic_target(x, j, axis=[0.0, 1.0, 1.0]) for j in range(5)], 1)
  gram = np.asarray(ys.T @ ys / x.shape[0])
  assert np.max(np.abs(gram - np.eye(5))) < 0.03


def test_zonal_harmonic_values_and_errors():
  e = np.array([0.0, 0.6, 0.8])
  x = np.stack([e, -e, [1.0, 0.0, 0.0]])
  y = np.asarray(zonal_harmonic_target(x, 3, axis=5 * e))[:, 0]
  np.testing.assert_allclose(y, np.sqrt(7) * np.array([1.0, -1.0, 0.0]), atol=1e-14)
  assert zonal_harmonic_target(x, 0).shape == (3, 1)
  with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
    zonal_harmonic_target(np.ones((2, 4)) / 2, 1)
  with pytest.raises(ValueError, match="unit norm"):
    zonal_harmonic_target(2 * x, 1)
  with pytest.raises(ValueError, match="axis"):
    zonal_harmonic_target(x, 1, axis=[0.0, 0.0, 0.0])
  with pytest.raises(ValueError, match="degree"):
    zonal_harmonic_target(x, 1.5)


@pytest.mark.parametrize("labels", ["onehot", "pm1"])
def test_load_digits(labels):
  ds = load_digits(labels=labels, test_fraction=0.25, seed=1)
  assert isinstance(ds, Dataset)
  n_test = int(np.ceil(0.25 * 1797))
  assert ds.x_train.shape == (1797 - n_test, 64) and ds.x_test.shape == (n_test, 64)
  assert ds.y_train.shape == (1797 - n_test, 10) and ds.y_test.shape == (n_test, 10)
  np.testing.assert_allclose(jnp.linalg.norm(ds.x_train, axis=1), 1.0, atol=1e-12)
  lo = 0.0 if labels == "onehot" else -1.0
  for y in (ds.y_train, ds.y_test):
    assert set(np.unique(np.asarray(y))) == {lo, 1.0}
    np.testing.assert_array_equal((np.asarray(y) == 1).sum(1), 1)
  # Stratified: every class in both splits.
  assert bool(jnp.all((ds.y_test == 1).sum(0) > 0))


def test_load_digits_options_and_user_arrays():
  raw = load_digits(normalize=False)
  assert float(raw.x_train.max()) == 16.0
  again = load_digits(normalize=False)
  np.testing.assert_array_equal(raw.x_train, again.x_train)  # seed-deterministic
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(40, 5)), np.repeat([3, 7], 20)
  ds = load_digits(x=x, y=y, labels="pm1", test_fraction=0.5)
  assert ds.x_train.shape == (20, 5) and ds.y_train.shape == (20, 2)
  with pytest.raises(ValueError, match="labels"):
    load_digits(labels="ova")
  with pytest.raises(ValueError, match="test_fraction"):
    load_digits(test_fraction=1.0)
  with pytest.raises(ValueError, match="both x and y"):
    load_digits(x=x)
  with pytest.raises(TypeError, match="integer class labels"):
    load_digits(x=x, y=y.astype(float))
  with pytest.raises(ValueError, match="1-D integer labels"):
    load_digits(x=x, y=y[:10])


def test_as_dataset():
  x = np.arange(12.0).reshape(6, 2)
  ds = as_dataset(x, np.arange(6.0), x[:2], np.zeros(2))
  assert ds.y_train.shape == (6, 1) and ds.y_test.shape == (2, 1)
  assert ds.x_train.dtype == jnp.float64
  ds = as_dataset(x, np.ones((6, 3)))
  assert ds.x_test is None and ds.y_test is None and ds.y_train.shape == (6, 3)


@pytest.mark.parametrize("args, exc, match", [
    ((np.ones(6), np.ones(6)), ValueError, "x_train must be 2-D"),
    ((np.ones((6, 2)), np.ones(5)), ValueError, "same number of rows"),
    ((np.ones((6, 2)), np.ones((6, 1, 1))), ValueError, "y_train must be 1-D"),
    ((np.full((6, 2), np.nan), np.ones(6)), ValueError, "x_train contains NaN"),
    ((np.ones((6, 2)), np.full(6, np.inf)), ValueError, "y_train contains NaN"),
    ((np.ones((6, 2)), np.array(["a"] * 6)), TypeError, "y_train must be numeric"),
    ((np.ones((6, 2)), np.ones(6), np.ones((2, 2))), ValueError, "both x_test and y_test"),
    ((np.ones((6, 2)), np.ones(6), np.ones((2, 3)), np.ones(2)), ValueError, "features"),
    ((np.ones((6, 2)), np.ones(6), np.ones((2, 2)), np.ones((2, 2))), ValueError, "outputs"),
    ((np.ones((6, 2)), np.ones(6), np.ones((2, 2)), np.ones(3)), ValueError, "x_test and y_test"),
])
def test_as_dataset_errors(args, exc, match):
  with pytest.raises(exc, match=match):
    as_dataset(*args)


# ---------------------------------------------------------------- MNIST-1D (offline)

def test_load_mnist1d_standard_split_has_the_documented_shapes(tmp_path):
  # The published set: 4000 train / 1000 test sequences of length 40, 10 classes
  # (Greydanus & Kobak). Generated offline (~10-25 s on 2 cores) and cached in the default
  # cache ($MSKJAX_CACHE or ~/.cache/mskjax), so reruns take < 1 s.
  import random
  from mskjax.data import load_mnist1d
  np.random.seed(123)
  random.seed(123)
  before = (np.random.random(), random.random())
  np.random.seed(123)
  random.seed(123)
  ds = load_mnist1d()
  assert (np.random.random(), random.random()) == before     # global generators untouched
  assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
  assert ds.y_train.shape == (4000,) and ds.y_test.shape == (1000,)
  assert ds.y_train.dtype == jnp.int32 and ds.x_train.dtype == jnp.float64
  assert set(np.unique(ds.y_train).tolist()) == set(range(10))
  assert set(np.unique(ds.y_test).tolist()) == set(range(10))
  counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]))
  assert counts.tolist() == [500] * 10                         # 5000 // 10 per class
  x_all = np.concatenate([ds.x_train, ds.x_test])
  np.testing.assert_allclose([x_all.mean(), x_all.std()], [0.0, 1.0], atol=1e-10)  # standardised
  oh = load_mnist1d(labels="onehot")
  np.testing.assert_array_equal(np.argmax(oh.y_test, 1), ds.y_test)
  # A small set through an explicit cache directory: written once, read back identically.
  small = load_mnist1d(num_samples=50, cache_dir=tmp_path)
  assert small.x_train.shape == (40, 40) and small.x_test.shape == (10, 40)
  assert (tmp_path / "mnist1d_n50_seed42.npz").exists()
  again = load_mnist1d(num_samples=50, cache_dir=tmp_path)
  np.testing.assert_array_equal(again.x_train, small.x_train)
  fresh = load_mnist1d(num_samples=50, cache=False)
  np.testing.assert_array_equal(fresh.x_train, small.x_train)  # the generator is seeded
  for bad, match in ((dict(num_samples=55), "num_samples"), (dict(labels="pm1"), "labels")):
    with pytest.raises(ValueError, match=match):
      load_mnist1d(**bad)
