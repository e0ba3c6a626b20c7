"""mskjax/experiments/kernel_scale.py (the program of configs/kernel_scale.py).

Its dense path (``mskjax.gradient_descent_mse`` on the Gram, evaluated at validation/test
points) must be MSK kernel GD step for step: checked against the explicit numpy iteration
F ← F + η K_g (Y − F), F_e ← F_e + η K_e S (Y − F) with S = I + V_k diag(g/λ − 1) V_kᵀ from
``numpy.linalg.eigh`` — the oracle never calls the code under test. And the config's own
rules (budget among the times, the validation split outside the training prefix).
"""
import numpy as np
import pytest

from mskjax import kernels, nets
from mskjax import run as runner
from mskjax.experiments import kernel_scale as P


def _numpy_msk_gd(K, Ke, Y, g_top, k, steps):
  lam, V = np.linalg.eigh(K)
  lam, V = lam[::-1], V[:, ::-1]
  mu = lam.copy()
  mu[:k] = g_top(lam, k)
  S = np.eye(len(K)) + (V[:, :k] * (mu[:k] / lam[:k] - 1.0)) @ V[:, :k].T
  Kg = K @ S
  eta = 1.0 / mu.max()
  F, Fe, out = np.zeros_like(Y), np.zeros((Ke.shape[0], Y.shape[1])), {}
  for t in range(1, max(steps) + 1):
    R = Y - F
    F, Fe = F + eta * Kg @ R, Fe + eta * Ke @ S @ R
    if t in steps:
      out[t] = Fe.copy()
  return out


@pytest.mark.parametrize("item, g_top", [
    ("relpow2@4", lambda lam, k: lam[k] * (lam[:k] / lam[k]) ** 2),
    ("relpow0@4", lambda lam, k: np.full(k, lam[k])),
    ("none", None),
])
def test_dense_path_is_msk_kernel_gd(item, g_top):
  import mskjax
  rng = np.random.default_rng(0)
  x, xe = rng.standard_normal((40, 6)), rng.standard_normal((9, 6))
  Y = np.eye(3)[rng.integers(0, 3, 40)]
  kf = kernels.mlp_kernel_fn(nets.MLPSpec(depth=2, width=8, b_std=0.1))
  g, k = mskjax.modifiers.from_spec(item)
  steps = (1, 7, 40)
  got = P._path_dense(kf, x, Y, xe, g, k, steps, block=16)
  import jax
  with jax.enable_x64(True):
    K = np.asarray(mskjax.gram(kf, jax.numpy.asarray(x)), np.float64)
    Ke = np.asarray(mskjax.gram(kf, jax.numpy.asarray(xe), jax.numpy.asarray(x)), np.float64)
  want = _numpy_msk_gd(K, Ke, Y, g_top if g_top else (lambda lam, k: lam[:k]), k or 1, steps)
  for t, pred in zip(steps, got):
    # float64 closed form vs a float64 40-step recursion: rounding ~1e-13 of the scale
    np.testing.assert_allclose(pred, want[t], rtol=1e-9, atol=1e-11 * np.abs(want[t]).max())


def test_config_rules():
  cfg = runner.load_config("configs/kernel_scale.py:quick")
  module = runner.load_config_module("configs/kernel_scale.py")
  runner.validate_config(cfg, module)
  assert cfg.budget in cfg.times
  load = lambda: runner.load_config("configs/kernel_scale.py:quick")
  bad = runner.apply_overrides(load(), ["budget=7"])
  with pytest.raises(ValueError, match="budget = 7 must be one of times"):
    runner.validate_config(bad, module)
  bad = runner.apply_overrides(load(), ["n_val=3600"])      # 1000 + 3600 > 4000 training pool
  with pytest.raises(ValueError, match="exceeds the training pool"):
    runner.validate_config(bad, module)
