"""kernels.sphere_mercer_eigenvalues against independent computations.

Oracles: on an equispaced circle the Fourier modes are exact eigenvectors of any
dot-product Gram matrix, so the Rayleigh quotient of cos(jθ) is an exact Gram eigenvalue,
equal to n μ_j / (2π) up to aliasing (negligible for a smooth kernel and j ≪ n); the mean
of the Gram matrix over uniform points estimates μ_0 / |S^{d−1}|; the linear kernel κ(t) = t
has μ_1 = |S^{d−1}| / d and every other μ_l = 0 (closed form).
"""
import jax
import numpy as np
import pytest
from scipy.special import gamma

from mskjax import data, kernels, nets


def _area(d):
  return 2 * np.pi ** (d / 2) / gamma(d / 2)


@pytest.mark.parametrize("activation, rtol", [
    # ReLU: μ_j decays like j^-2 on S¹, so aliasing (μ_{n±j}) is ~1e-5 of μ_max at n = 256;
    # erf/gelu decay exponentially and alias below 1e-8 (quadrature error is smaller still).
    ("relu", 1e-4), ("erf", 1e-8), ("gelu", 1e-8)])
def test_circle_gram_eigenvalues_equal_n_mu_over_2pi(activation, rtol):
  kf = nets.stax_mlp(nets.MLPSpec(depth=1, width=8, b_std=0.1, activation=activation))[2]
  mu = kernels.sphere_mercer_eigenvalues(kf, 2, 8)
  n = 256
  x, th = data.circle(n)
  K = np.asarray(kernels.gram(kf, x))
  for j in range(9):
    v = np.cos(j * np.asarray(th))
    exact = v @ K @ v / (v @ v)
    assert abs(n * mu[j] / (2 * np.pi) - exact) <= rtol * n * mu.max() / (2 * np.pi), (j, exact)


@pytest.mark.parametrize("d", [2, 3, 4, 5])
def test_linear_kernel_closed_form(d):
  lin = lambda x1, x2, get: x1 @ (x1 if x2 is None else x2).T  # noqa: E731  κ(t) = t
  mu = kernels.sphere_mercer_eigenvalues(lin, d, 4)
  expected = np.zeros(5)
  expected[1] = _area(d) / d        # ∫ ⟨x,e⟩⟨x,e⟩ dσ = |S^{d-1}|/d, eigenfunction ⟨x, e⟩
  np.testing.assert_allclose(mu, expected, atol=1e-12 * _area(d))


@pytest.mark.parametrize("d", [3, 4])
def test_degree_zero_is_the_mean_kernel(d):
  kf = nets.stax_mlp(nets.MLPSpec(depth=1, width=8, b_std=0.1))[2]
  mu0 = kernels.sphere_mercer_eigenvalues(kf, d, 0)[0]
  x = data.sphere(400, d, jax.random.PRNGKey(0))
  K = np.asarray(kernels.gram(kf, x))
  # Monte-Carlo mean over 400² pairs of uniform points: a few % standard error
  assert abs(K.mean() / (mu0 / _area(d)) - 1) < 0.03


def test_bias_free_relu_odd_degrees_vanish_on_s2():
  # 2-layer bias-free ReLU NTK: odd degrees >= 3 have eigenvalue 0 (Bietti & Mairal 2019)
  kf = nets.stax_mlp(nets.MLPSpec(depth=1, width=8, b_std=0.0))[2]
  mu = kernels.sphere_mercer_eigenvalues(kf, 3, 7)
  assert np.all(np.abs(mu[[3, 5, 7]]) < 1e-3 * mu[4]), mu


@pytest.mark.parametrize("kw, match", [
    (dict(d=1, lmax=3), "`d` must be an int >= 2"),
    (dict(d=3, lmax=-1), "`lmax` must be an int >= 0"),
    (dict(d=3.0, lmax=3), "`d` must be an int"),
    (dict(d=3, lmax=3, get="cov"), "get must be"),
])
def test_bad_arguments(kw, match):
  kf = nets.stax_mlp(nets.MLPSpec(depth=1, width=8))[2]
  with pytest.raises(ValueError, match=match):
    kernels.sphere_mercer_eigenvalues(kf, **kw)
