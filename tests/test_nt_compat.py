"""Canary for the neural-tangents compatibility shim (mskjax/_nt.py).

neural-tangents 0.6.5 is patched at import time to run on current JAX. If a JAX upgrade
breaks the patch, these tests fail first, with a message saying so. The oracle is an
independent closed form: the arc-cosine kernels of Cho & Saul (2009), orders 0 and 1,
composed by hand in numpy into the NNGP/NTK recursion of a ReLU network in NTK
parameterisation.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from mskjax._nt import empirical_ntk_fn, nt, nt_predict, stax

SHIM = ("neural-tangents compat shim (mskjax/_nt.py) broken on jax "
        f"{jax.__version__}: ")


def _arccos_relu_ntk(x1, x2, depth, W_std, b_std):
  """NNGP and NTK of [Dense -> ReLU] x depth -> Dense (NTK parameterisation), in numpy.

  Sigma_0(x, x') = W^2 <x, x'>/d + b^2,  Theta_0 = Sigma_0, and for each hidden layer
    Sigma_l = W^2 k1(Sigma_{l-1}) + b^2,   Theta_l = Sigma_l + W^2 k0(Sigma_{l-1}) Theta_{l-1}
  with, for c = q12/sqrt(q11 q22) and t = arccos(c) (Cho & Saul arc-cosine kernels):
    k1 = E[relu(u) relu(v)]   = sqrt(q11 q22) (sin t + (pi - t) cos t) / (2 pi)
    k0 = E[relu'(u) relu'(v)] = (pi - t) / (2 pi).
  """
  x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
  d = x1.shape[1]
  q12 = W_std**2 * x1 @ x2.T / d + b_std**2
  q11 = W_std**2 * np.sum(x1**2, 1) / d + b_std**2
  q22 = W_std**2 * np.sum(x2**2, 1) / d + b_std**2
  ntk = q12.copy()
  for _ in range(depth):
    norm = np.sqrt(np.outer(q11, q22))
    t = np.arccos(np.clip(q12 / norm, -1.0, 1.0))
    k1 = norm * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2 * np.pi)
    k0 = (np.pi - t) / (2 * np.pi)
    q12, ntk = W_std**2 * k1 + b_std**2, W_std**2 * k1 + b_std**2 + W_std**2 * k0 * ntk
    q11 = W_std**2 * q11 / 2 + b_std**2  # k1 on the diagonal (t = 0) is q / 2
    q22 = W_std**2 * q22 / 2 + b_std**2
  return q12, ntk


def _stax_relu(depth, W_std, b_std, width=64):
  b = None if b_std == 0 else b_std
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(width, W_std=W_std, b_std=b), stax.Relu()]
  return stax.serial(*layers, stax.Dense(1, W_std=W_std, b_std=b))


@pytest.fixture(scope="module")
def xs():
  rng = np.random.default_rng(0)
  return rng.normal(size=(7, 5)), rng.normal(size=(4, 5))


@pytest.mark.parametrize("depth, W_std, b_std", [(1, 1.0, 0.0), (1, 1.5, 0.1), (3, 1.3, 0.2)])
def test_stax_relu_ntk_matches_arccos_closed_form(xs, depth, W_std, b_std):
  x1, x2 = xs
  _, _, kernel_fn = _stax_relu(depth, W_std, b_std)
  k = kernel_fn(jnp.asarray(x1), jnp.asarray(x2), ("nngp", "ntk"))
  assert k.ntk.dtype == jnp.float64, SHIM + f"expected float64 kernels, got {k.ntk.dtype}"
  nngp_ref, ntk_ref = _arccos_relu_ntk(x1, x2, depth, W_std, b_std)
  for name, got, ref in (("nngp", k.nngp, nngp_ref), ("ntk", k.ntk, ntk_ref)):
    err = np.max(np.abs(np.asarray(got) - ref) / np.abs(ref))
    assert err <= 1e-6, (SHIM + f"analytic {name} of Dense-Relu-Dense (depth={depth}, "
                         f"W_std={W_std}, b_std={b_std}) differs from the arc-cosine closed "
                         f"form by relative error {err:.2e} > 1e-6.")


def test_empirical_ntk_implementations_agree(xs):
  x1, x2 = (jnp.asarray(a) for a in xs)
  init_fn, apply_fn, _ = _stax_relu(2, 1.2, 0.1, width=32)
  _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
  try:
    ks = [jax.jit(empirical_ntk_fn(apply_fn, trace_axes=(-1,), implementation=i))(x1, x2, params)
          for i in (1, 2)]
  except Exception as e:  # pragma: no cover - only when the shim breaks
    pytest.fail(SHIM + f"empirical_ntk_fn failed: {e!r}")
  np.testing.assert_allclose(ks[0], ks[1], rtol=1e-10, atol=1e-12,
                             err_msg=SHIM + "empirical_ntk_fn implementations 1 and 2 disagree")


def test_gradient_descent_mse_runs_and_matches_closed_form(xs):
  x_train, x_test = (jnp.asarray(a) for a in xs)
  _, _, kernel_fn = _stax_relu(1, 1.0, 0.1)
  k_tt = np.asarray(kernel_fn(x_train, None, "ntk"))
  k_st = np.asarray(kernel_fn(x_test, x_train, "ntk"))
  y = np.sin(np.arange(x_train.shape[0]))[:, None]
  lr, t = 0.5, 3.0
  try:
    predict_fn = nt_predict.gradient_descent_mse(jnp.asarray(k_tt), jnp.asarray(y),
                                                 learning_rate=lr)
    fx_train_t, fx_test_t = predict_fn(t, 0.0, 0.0, jnp.asarray(k_st))
    fx_train_inf, fx_test_inf = predict_fn(None, 0.0, 0.0, jnp.asarray(k_st))
  except Exception as e:  # pragma: no cover - only when the shim breaks
    pytest.fail(SHIM + f"nt.predict.gradient_descent_mse failed: {e!r}")
  # Gradient flow on the loss (1/2)(1/N)||r||^2 (N = y.size): r_t = exp(-lr t K / N) r_0.
  n = y.size
  decay = scipy.linalg.expm(-lr * t * k_tt / n)
  np.testing.assert_allclose(fx_train_t, y - decay @ y, rtol=1e-8, atol=1e-10,
                             err_msg=SHIM + "gradient_descent_mse (finite t) is wrong")
  alpha = np.linalg.solve(k_tt, (np.eye(len(y)) - decay) @ y)
  np.testing.assert_allclose(fx_test_t, k_st @ alpha, rtol=1e-7, atol=1e-9,
                             err_msg=SHIM + "gradient_descent_mse (finite t, test) is wrong")
  np.testing.assert_allclose(fx_train_inf, y, rtol=1e-7, atol=1e-9,
                             err_msg=SHIM + "gradient_descent_mse (t=inf) does not interpolate")
  np.testing.assert_allclose(fx_test_inf, k_st @ np.linalg.solve(k_tt, y), rtol=1e-7,
                             atol=1e-9, err_msg=SHIM + "gradient_descent_mse (t=inf, test)")


def test_shim_exports_a_working_stax():
  # nt.stax through the shim: a linear layer's NTK and NNGP in NTK parameterisation are
  # W_std² x·x'/d + b_std² (closed form, numpy)
  x = np.random.default_rng(0).standard_normal((5, 3))
  _, _, kernel_fn = nt.stax.serial(nt.stax.Dense(1, W_std=1.5, b_std=0.5))
  k = kernel_fn(jnp.asarray(x), None, ("nngp", "ntk"))
  want = 1.5 ** 2 * x @ x.T / 3 + 0.5 ** 2
  np.testing.assert_allclose(np.asarray(k.nngp), want, rtol=1e-6, err_msg=SHIM + "stax.Dense")
  np.testing.assert_allclose(np.asarray(k.ntk), want, rtol=1e-6, err_msg=SHIM + "stax.Dense")
  assert nt.predict is nt_predict, SHIM + "nt.predict is not the patched module"
