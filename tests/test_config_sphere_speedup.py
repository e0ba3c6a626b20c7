"""Helpers of configs/sphere_speedup.py that its quick smoke run (S¹ only) does not reach."""
import importlib.util
from pathlib import Path

import jax
import numpy as np

import mskjax
from mskjax import data, kernels, nets


def _config():
  path = Path(__file__).resolve().parents[1] / "configs" / "sphere_speedup.py"
  spec = importlib.util.spec_from_file_location("cfg_sphere_speedup", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_funk_hecke_degree_order_of_the_relu_ntk_on_s2():
  cfg = _config()
  kfn = lambda b: nets.make_network(nets.MLPSpec(depth=1, width=8, b_std=b)).kernel_fn  # noqa
  mu0 = cfg._funk_hecke(kfn(0.0), 7)
  # Bias-free 2-layer ReLU NTK: odd degrees >= 3 have eigenvalue 0 (Bietti & Mairal 2019).
  assert np.all(np.abs(mu0[[3, 5, 7]]) < 1e-3 * mu0[4]), mu0
  mu = cfg._funk_hecke(kfn(0.1), 8)
  order = np.argsort(-mu)
  assert order[:5].tolist() == [0, 1, 2, 4, 3]        # -> k = 4, 9, 18, 25 in the config
  # Degree 0: μ₀/(4π) is the mean of κ over pairs of uniform points.
  x = data.sphere(300, 3, jax.random.PRNGKey(0))
  K = np.asarray(kernels.gram(kfn(0.1), x))
  assert abs(K.mean() / (mu[0] / (4 * np.pi)) - 1) < 0.03


def test_local_steps_to_tolerance_equals_the_library():
  cfg = _config()
  rng = np.random.default_rng(0)
  A = rng.standard_normal((30, 30))
  lam_true = 1.0 / np.arange(1, 31) ** 2
  Q = np.linalg.qr(A)[0]
  K = (Q * lam_true) @ Q.T
  K = (K + K.T) / 2
  w, U = np.linalg.eigh(K)
  w, U = w[::-1].copy(), U[:, ::-1]
  g = mskjax.modifiers.flatten()
  for _ in range(3):
    y = rng.standard_normal((30, 1))
    for gg, k in ((None, None), (g, 3), (g, 10)):
      assert cfg._steps_from_eigh(w, U, y, gg, k, 0.1) == \
          mskjax.steps_to_tolerance(K, y, gg, k, tol=0.1)
