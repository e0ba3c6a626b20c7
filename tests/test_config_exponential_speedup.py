"""configs/exponential_speedup.py: the growth-model fit against closed forms, and the claim
itself on the analytic kernel (erf: GD steps grow exponentially in j, PGD needs 1 step)."""
import numpy as np
import pytest

import mskjax
from mskjax import data, kernels, nets
from mskjax.experiments import exponential_speedup


@pytest.mark.parametrize("model", ["exponential", "polynomial"])
def test_fit_growth_recovers_closed_forms(model):
  js = np.array([2, 4, 6, 8, 10])
  steps = 3.0 * np.exp(1.3 * js) if model == "exponential" else 5.0 * js ** 2.5
  f = exponential_speedup.fit_growth(js, steps)
  assert f["better_model"] == model
  if model == "exponential":
    np.testing.assert_allclose([f["exp_slope"], f["growth_per_j"]], [1.3, np.exp(1.3)],
                               rtol=1e-10)   # exact data: only round-off
    assert f["exp_rms"] < 1e-10
  else:
    np.testing.assert_allclose(f["poly_slope"], 2.5, rtol=1e-10)
    assert f["poly_rms"] < 1e-10


def test_erf_gd_steps_follow_the_inverse_eigenvalue_and_pgd_takes_one_step():
  # S¹, 64 equispaced points, erf NTK: even frequencies 2, 4, 6 lie in the flattened band.
  kf = nets.stax_mlp(nets.MLPSpec(depth=1, width=8, activation="erf", b_std=0.1))[2]
  x, th = data.circle(64)
  K = kernels.gram(kf, x)
  lam = np.asarray(mskjax.eigh_desc(K).values)
  for j in (2, 4, 6):
    y = data.fourier_target(th, j)
    v = np.cos(j * np.asarray(th))
    lam_j = v @ np.asarray(K) @ v / (v @ v)          # exact grid eigenvalue of frequency j
    # Closed form for an eigenvector target: (1 − λ_j/λ_1)^t < tol  ⇔  t > ln tol / ln(1 − λ_j/λ_1)
    t = int(np.floor(np.log(0.1) / np.log1p(-lam_j / lam[0]))) + 1
    assert mskjax.steps_to_tolerance(K, y, tol=0.1) == t
    assert mskjax.steps_to_tolerance(K, y, mskjax.modifiers.flatten(), 13, tol=0.1) == 1
