"""mskjax.function_space: scale_by_msk_jvp / msk_sgd_jvp / msk_mse_loss against explicit matrices."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import mskjax
from mskjax import data, kernels, tangents, nets, function_space
from conftest import random_psd


def _linear_problem(n=6, p=4, c=1, seed=0):
  """f(w, X) = X w: J = X exactly, empirical NTK = X Xᵀ (an explicit-matrix oracle)."""
  rng = np.random.default_rng(seed)
  X = rng.standard_normal((n, p))
  W = rng.standard_normal((p, c)) if c > 1 else rng.standard_normal(p)
  Y = rng.standard_normal((n, c)) if c > 1 else rng.standard_normal(n)
  return jnp.asarray(X), jnp.asarray(W), jnp.asarray(Y), (lambda w, x: x @ w)


def _explicit_S(K, g_new, k):
  lam, U = np.linalg.eigh(np.asarray(K))
  lam, U = lam[::-1], U[:, ::-1]
  Uk = U[:, :k]
  return np.eye(K.shape[0]) + (Uk * (g_new / lam[:k] - 1.0)) @ Uk.T


def test_scale_by_msk_linear_model_equals_JT_S_e():
  X, W, Y, f = _linear_problem(n=6, p=8)
  K = X @ X.T
  spec = mskjax.msk_spectrum(K, mskjax.modifiers.power(0.5), 2)
  e = f(W, X) - Y
  u = X.T @ e                                   # gradient of ½‖r‖²
  tx = function_space.scale_by_msk_jvp(f, X, spec)
  Pu, state = tx.update(u, tx.init(W), W)
  S = _explicit_S(K, np.asarray(spec.new_values), 2)
  # float64, one JVP/VJP on a 6x8 problem: round-off only.
  np.testing.assert_allclose(Pu, np.asarray(X).T @ S @ np.asarray(e), rtol=1e-10, atol=1e-12)
  assert int(state.count) == 1


def test_scale_by_msk_and_msk_mse_loss_give_same_update_on_a_network():
  """Both entry points give Jᵀ S r when the spectrum is that of the empirical NTK."""
  x, th = data.circle(16)
  y = data.fourier_target(th, 2)
  net = nets.make_network(nets.MLPSpec(depth=2, width=64, b_std=0.1), antisymmetric=False)
  variables = net.model.init(jax.random.PRNGKey(0), x)
  params = variables["params"]
  apply_fn = lambda p, a: net.model.apply({"params": p}, a)
  K_emp = tangents.empirical_ntk(net.model.apply, variables, x)
  spec = mskjax.msk_spectrum(K_emp, mskjax.modifiers.flatten(), 5)
  lr = 0.05
  tx1 = function_space.msk_sgd_jvp(lr, apply_fn, x, spec)
  g1 = jax.grad(lambda p: 0.5 * jnp.sum((apply_fn(p, x) - y) ** 2))(params)
  up1, _ = tx1.update(g1, tx1.init(params), params)
  tx2 = optax.sgd(lr)
  g2 = jax.grad(lambda p: function_space.msk_mse_loss(apply_fn(p, x), y, spec))(params)
  up2, _ = tx2.update(g2, tx2.init(params), params)
  scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(up2))
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(up1), jax.tree.leaves(up2)))
  # float64: the two differ only by round-off of the eigendecomposition (K_emp V = V Λ).
  assert diff <= 1e-9 * scale


def test_msk_mse_loss_full_batch_explicit_and_batch_reduction():
  K = random_psd(8, seed=1)
  spec = mskjax.msk_spectrum(K, mskjax.modifiers.flatten(), 3)
  S = _explicit_S(K, np.asarray(spec.new_values), 3)
  rng = np.random.default_rng(2)
  p, y = rng.standard_normal((8, 2)), rng.standard_normal((8, 2))
  r = p - y
  want = 0.5 * np.trace(r.T @ S @ r)
  np.testing.assert_allclose(function_space.msk_mse_loss(p, y, spec), want, rtol=1e-12)
  perm = rng.permutation(8)  # the batch form with B = all points (any order) is exact
  np.testing.assert_allclose(
      function_space.msk_mse_loss(p[perm], y[perm], spec, batch_indices=jnp.asarray(perm)), want,
      rtol=1e-12)
  np.testing.assert_allclose(                     # gradient wrt predictions is S r
      jax.grad(lambda q: function_space.msk_mse_loss(q, y, spec))(jnp.asarray(p)), S @ r, rtol=1e-10,
      atol=1e-12)


def test_minibatch_expectation_matches_closed_form():
  """E_B of the lifted batch gradient (n/b)·S_B r_B, by enumerating all batches, equals
  r + a·(M − D) r + (n/b)·D r with M = Φ C Φᵀ, D = diag(M), a = (n/b)²·b(b−1)/(n(n−1))."""
  n, b, k = 7, 3, 2
  K = random_psd(n, seed=3)
  spec = mskjax.msk_spectrum(K, mskjax.modifiers.scale(3.0), k)
  r = np.random.default_rng(4).standard_normal(n)
  acc = np.zeros(n)
  subsets = list(itertools.combinations(range(n), b))
  for B in subsets:
    idx = np.asarray(B)
    gB = jax.grad(lambda q: function_space.msk_mse_loss(q, jnp.zeros(b), spec,
                                               batch_indices=jnp.asarray(idx)))(
        jnp.asarray(r[idx]))
    acc[idx] += np.asarray(gB)
  acc /= len(subsets)
  Phi = np.asarray(spec.vectors)
  M = (Phi * (np.asarray(spec.new_values) / np.asarray(spec.values) - 1.0)) @ Phi.T
  D = np.diag(np.diag(M))
  a = (n / b) ** 2 * b * (b - 1) / (n * (n - 1))
  want = r + a * (M - D) @ r + (n / b) * D @ r
  np.testing.assert_allclose(acc, want, rtol=1e-10, atol=1e-12)


def _count_traces(f):
  calls = {"n": 0}

  def g(w, x):
    calls["n"] += 1
    return f(w, x)
  return g, calls


def test_msk_sgd_jit_chain_no_recompile_extra_args_and_dtype():
  X, W, Y, f = _linear_problem(n=6, p=5)
  spec = mskjax.msk_spectrum(X @ X.T, mskjax.modifiers.flatten(), 2)
  f_counted, calls = _count_traces(f)
  tx = optax.chain(optax.clip_by_global_norm(1e3), function_space.msk_sgd_jvp(0.01, f_counted, X, spec))
  state = tx.init(W)

  @jax.jit
  def step(w, st):
    gr = jax.grad(lambda w: 0.5 * jnp.sum((f(w, X) - Y) ** 2))(w)
    up, st = tx.update(gr, st, w, some_unknown_arg=3)
    return optax.apply_updates(w, up), st

  w = W
  for _ in range(5):
    w, state = step(w, state)
  traces = calls["n"]
  for _ in range(5):
    w, state = step(w, state)
  assert calls["n"] == traces  # no retracing after the first step
  # float32 updates stay float32 (params float32 too).
  W32 = W.astype(jnp.float32)
  tx32 = function_space.msk_sgd_jvp(0.01, f, X.astype(jnp.float32), spec)
  up, _ = tx32.update(jnp.ones_like(W32), tx32.init(W32), W32)
  assert up.dtype == jnp.float32


def test_scale_by_msk_wrappers_inject_multisteps_trainstate():
  X, W, Y, f = _linear_problem(n=6, p=5)
  K = X @ X.T
  spec = mskjax.msk_spectrum(K, mskjax.modifiers.flatten(), 2)
  S = _explicit_S(K, np.asarray(spec.new_values), 2)
  loss = lambda w: 0.5 * jnp.sum((f(w, X) - Y) ** 2)
  want = np.asarray(W) - 0.02 * np.asarray(X).T @ S @ np.asarray(f(W, X) - Y)

  inj = optax.inject_hyperparams(function_space.msk_sgd_jvp, static_args=("apply_fn", "g"))(
      learning_rate=0.02, apply_fn=f, x_train=X, spectrum=spec)
  st = inj.init(W)
  up, st = jax.jit(inj.update)(jax.grad(loss)(W), st, W)
  np.testing.assert_allclose(W + up, want, rtol=1e-10)
  assert float(st.hyperparams["learning_rate"]) == 0.02

  ms = optax.MultiSteps(function_space.msk_sgd_jvp(0.02, f, X, spec), every_k_schedule=2)
  st = ms.init(W)
  gr = jax.grad(loss)(W)
  up0, st = ms.update(gr, st, W)
  up1, st = ms.update(gr, st, W)
  np.testing.assert_allclose(up0, 0.0)
  # MultiSteps' running-mean accumulator rounds at ~1e-9 relative in this setting.
  np.testing.assert_allclose(W + up1, want, rtol=1e-7)

  # flax's TrainState wants dict params (flax-style pytrees).
  fd = lambda p, x: f(p["w"], x)
  ts = train_state.TrainState.create(apply_fn=fd, params={"w": W},
                                     tx=function_space.msk_sgd_jvp(0.02, fd, X, spec))
  ts = jax.jit(lambda s: s.apply_gradients(grads=jax.grad(lambda p: loss(p["w"]))(s.params)))(ts)
  np.testing.assert_allclose(ts.params["w"], want, rtol=1e-10)


def test_refresh_from_empirical_ntk_with_lax_cond():
  """A wrong initial spectrum is replaced by the empirical NTK's (X Xᵀ for a linear model)
  at step `refresh_every`, inside one jitted update."""
  X, W, Y, f = _linear_problem(n=6, p=5)
  K = np.asarray(X @ X.T)
  wrong = mskjax.msk_spectrum(jnp.asarray(random_psd(6, seed=9)), mskjax.modifiers.flatten(), 2)
  tx = function_space.scale_by_msk_jvp(f, X, wrong, refresh_every=3, g=mskjax.modifiers.flatten())
  st = tx.init(W)
  upd = jax.jit(tx.update)
  for _ in range(3):
    _, st = upd(jnp.ones_like(W), st, W)
  np.testing.assert_allclose(st.values, wrong.values)  # steps 0, 1, 2: not refreshed
  u, st = upd(jnp.ones_like(W), st, W)                  # step 3: refreshed
  lam = np.linalg.eigvalsh(K)[::-1]
  np.testing.assert_allclose(st.values, lam[:2], rtol=1e-10)
  np.testing.assert_allclose(st.new_values, [lam[2]] * 2, rtol=1e-10)
  S = _explicit_S(K, np.array([lam[2]] * 2), 2)
  e = np.linalg.lstsq(np.asarray(X).T, np.ones(5), rcond=None)[0]  # u = Xᵀ e (p < n)
  np.testing.assert_allclose(u, np.asarray(X).T @ S @ e, rtol=1e-8, atol=1e-10)


def test_errors_name_the_argument():
  X, W, Y, f = _linear_problem()
  spec = mskjax.msk_spectrum(X @ X.T, mskjax.modifiers.flatten(), 2)
  with pytest.raises(TypeError, match="spectrum"):
    function_space.scale_by_msk_jvp(f, X, (1, 2))
  with pytest.raises(ValueError, match="x_train"):
    function_space.scale_by_msk_jvp(f, X[:4], spec)
  with pytest.raises(TypeError, match="apply_fn"):
    function_space.scale_by_msk_jvp(3, X, spec)
  with pytest.raises(ValueError, match="refresh_every"):
    function_space.scale_by_msk_jvp(f, X, spec, refresh_every=0, g=mskjax.modifiers.flatten())
  with pytest.raises(TypeError, match="`g`"):
    function_space.scale_by_msk_jvp(f, X, spec, refresh_every=2)
  tx = function_space.scale_by_msk_jvp(f, X, spec)
  with pytest.raises(ValueError, match="params"):
    tx.update(W, tx.init(W))
  with pytest.raises(ValueError, match="batch_indices"):
    function_space.msk_mse_loss(jnp.ones(4), jnp.zeros(4), spec)
  with pytest.raises(ValueError, match="same shape"):
    function_space.msk_mse_loss(jnp.ones(6), jnp.zeros(5), spec)


def test_msk_mse_loss_rejects_out_of_range_indices_and_nan():
  # JAX clamps gathers: index 99 of n = 6 would silently read row 5 (issue 13).
  spec = mskjax.msk_spectrum(jnp.diag(jnp.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])),
                             mskjax.modifiers.flatten(), 2)
  with pytest.raises(IndexError, match="`batch_indices` holds index 99"):
    function_space.msk_mse_loss(jnp.ones(2), jnp.zeros(2), spec, batch_indices=jnp.array([0, 99]))
  with pytest.raises(IndexError, match="holds index -1"):
    function_space.msk_mse_loss(jnp.ones(2), jnp.zeros(2), spec, batch_indices=jnp.array([-1, 0]))
  with pytest.raises(ValueError, match="`predictions` has 1 NaN"):
    function_space.msk_mse_loss(jnp.array([1.0, jnp.nan, 0, 0, 0, 0]), jnp.zeros(6), spec)
  with pytest.raises(ValueError, match="`targets` has 1 NaN"):
    function_space.msk_mse_loss(jnp.zeros(6), jnp.array([1.0, jnp.nan, 0, 0, 0, 0]), spec)
