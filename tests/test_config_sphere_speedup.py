"""Helpers of configs/sphere_speedup.py that its quick smoke run (S¹ only) does not reach."""
import importlib.util
from pathlib import Path

import jax
import numpy as np

import mskjax  # noqa: F401
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
