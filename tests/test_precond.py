"""The data-free PSD preconditioner (optim.scale_by_msk / msk_sgd / msk_directions).

Oracles: the full Jacobian J (n·c × #params) formed with jacrev in float64 and numpy's
eigh of K = J Jᵀ, never the code under test.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import jax.flatten_util
import optax
import pytest
import flax.linen as nn
from flax import nnx
from flax.training import train_state

from mskjax import function_space, modifiers, optim, steps, tracking


class MLP(nn.Module):
  width: int = 64
  out: int = 3

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.width)(x))
    x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(self.out)(x)


def _full_jacobian(f, params):
  """J of all outputs (row = point·c + output) against the flattened params, float64 numpy."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  J = jax.jacrev(lambda v: f(unravel(v)).reshape(-1))(flat.astype(jnp.float64))
  return np.asarray(J, np.float64), unravel


def _rows(d):
  """The directions as a (k, #params) float64 matrix (rows q_i)."""
  return np.stack([np.asarray(jax.flatten_util.ravel_pytree(
      jax.tree.map(lambda l: l[i], d.directions))[0], np.float64) for i in range(d.k)])


def _setup(model_kind, n=8, c=3, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((n, 5)))
  if model_kind == "linear":  # random features: f(w, x) = φ(x) W, J exact and constant
    rng_w = np.asarray(rng.standard_normal((5, 40)))
    params = {"w": jnp.asarray(rng.standard_normal((40, c))) / 7.0}
    apply_fn = lambda p, xx: jnp.tanh(xx @ rng_w) @ p["w"]
    return apply_fn, params, x, apply_fn
  model = MLP(width=128, out=c)
  variables = model.init(jax.random.PRNGKey(seed), x)
  variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
  return model.apply, variables, x, (lambda p, xx: model.apply({"params": p}, xx))


@pytest.mark.parametrize("kind,c", [pytest.param("linear", 1, marks=pytest.mark.slow),
                                    ("linear", 3), ("wide", 3)])
def test_P_JT_e_equals_JT_S_e(kind, c):
  apply_fn, params, x, f = _setup(kind, c=c)
  # the linear model's kernel is Φ Φᵀ ⊗ I_c (exact c-fold ties): cut k at a block edge,
  # where S is unique
  k = 6 if (kind == "linear" and c == 3) else 4
  d = optim.msk_directions(apply_fn, params, x, modifiers.power(0.5), k, tol=1e-12,
                           max_cycles=30)
  p = params["params"] if kind == "wide" else params
  J, unravel = _full_jacobian(lambda q: f(q, x), p)
  K = J @ J.T                                       # full (n·c)×(n·c) NTK, cross terms in
  lam, U = np.linalg.eigh(K)
  lam, U = lam[::-1], U[:, ::-1]
  # eigenvalues of the full multi-output kernel (float64 Krylov vs eigh: round-off)
  np.testing.assert_allclose(d.values, lam[:k], rtol=1e-9)
  np.testing.assert_allclose(d.next_value, lam[k], rtol=1e-9)
  g = np.sqrt(lam[:k])                              # power(0.5)
  np.testing.assert_allclose(d.new_values, g, rtol=1e-9)
  S = np.eye(len(lam)) + (U[:, :k] * (g / lam[:k] - 1)) @ U[:, :k].T
  e = np.random.default_rng(1).standard_normal(len(lam))
  Pu = optim.precondition(d, unravel(jnp.asarray(J.T @ e)))
  Pu = np.asarray(jax.flatten_util.ravel_pytree(Pu)[0])
  want = J.T @ S @ e
  # float64; the directions come from a residual-1e-12 eigen-solve: round-off level.
  np.testing.assert_allclose(Pu, want, rtol=0, atol=1e-8 * np.abs(want).max())
  # P is positive definite: orthonormal q_i, so its eigenvalues are g/λ (on the q_i) and 1
  Q = _rows(d)
  np.testing.assert_allclose(Q @ Q.T, np.eye(k), atol=1e-10)
  if J.shape[1] <= 400:
    ev = np.linalg.eigvalsh(np.eye(J.shape[1]) + (Q.T * (g / lam[:k] - 1)) @ Q)
    np.testing.assert_allclose(np.sort(ev)[:k], np.sort(g / lam[:k]), rtol=1e-8)
    assert ev.min() > 0


def test_multi_output_kernel_is_not_the_traced_one():
  """The directions see the cross-output terms: λ differ from those of K_traced ⊗ I."""
  apply_fn, params, x, f = _setup("wide", c=3)
  J, _ = _full_jacobian(lambda q: f(q, x), params["params"])
  K = J @ J.T
  Kt = np.einsum("acbc->ab", K.reshape(8, 3, 8, 3)) / 3     # NT's output-traced kernel
  d = optim.msk_directions(apply_fn, params, x, modifiers.identity(), 3, tol=1e-12,
                           max_cycles=30, compute_beta=False)
  np.testing.assert_allclose(d.values, np.linalg.eigvalsh(K)[::-1][:3], rtol=1e-9)
  assert not np.allclose(d.values, np.linalg.eigvalsh(Kt)[::-1][:3], rtol=1e-3)


def test_beta_and_subsample_and_init_vectors():
  apply_fn, params, x, f = _setup("wide", n=12, c=2)
  k = 3
  d = optim.msk_directions(apply_fn, params, x, modifiers.flatten(), k, tol=1e-12,
                           max_cycles=30)
  J, _ = _full_jacobian(lambda q: f(q, x), params["params"])
  K = J @ J.T
  lam, U = np.linalg.eigh(K)
  lam, U = lam[::-1], U[:, ::-1]
  Kg = K + (U[:, :k] * (lam[k] - lam[:k])) @ U[:, :k].T
  blocks = [Kg[2 * i:2 * i + 2, 2 * i:2 * i + 2] for i in range(12)]
  np.testing.assert_allclose(d.beta, max(np.linalg.eigvalsh(b)[-1] for b in blocks),
                             rtol=1e-8)
  assert d.n_points == 12
  # subsample: the kernel of the chosen s points (which ones: recoverable from the values)
  ds = optim.msk_directions(apply_fn, params, x, modifiers.flatten(), k, subsample=6,
                            tol=1e-12, max_cycles=30, key=jax.random.PRNGKey(3))
  assert ds.n_points == 6 and ds.directions["Dense_0"]["kernel"].shape[0] == k
  assert float(ds.values[0]) < float(d.values[0])      # a principal submatrix's top λ
  # start from given (here exact, traced-kernel) eigenvectors: one Rayleigh–Ritz step on
  # the span of v ⊗ e_j is exact when the span is invariant (it is for exact ones)
  Kt = np.einsum("acbc->ab", K.reshape(12, 2, 12, 2)) / 2
  _, Ut = np.linalg.eigh(Kt)
  # tol = 1e-12 only keeps it from stopping early: 3 cycles cannot reach it (the
  # residuals stay ~1e-5 λ₁), and msk_directions says so.
  with pytest.warns(UserWarning, match="did not converge"):
    di = optim.msk_directions(apply_fn, params, x, modifiers.flatten(), k, method="krylov",
                              init_vectors=Ut[:, ::-1][:, :8], max_cycles=3, tol=1e-12)
  np.testing.assert_allclose(di.values, lam[:k], rtol=1e-8)


def _linear_dirs(p_dim=6, seed=0):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((p_dim, 2)))
  d = optim.MSKDirections({"a": jnp.asarray(q[:4].T, jnp.float32),
                           "b": {"c": jnp.asarray(q[4:].T, jnp.float32)}},
                          jnp.asarray([8.0, 2.0]), jnp.asarray([1.0, 1.0]), jnp.asarray(1.0))
  P = np.eye(p_dim) + (q * (np.array([1 / 8, 1 / 2]) - 1)) @ q.T
  return d, P


def _tree(v):
  return {"a": jnp.asarray(v[:4], jnp.float32), "b": {"c": jnp.asarray(v[4:], jnp.float32)}}


def _flat(t):
  return np.concatenate([np.asarray(t["a"]), np.asarray(t["b"]["c"])])


def test_optax_composition():
  d, P = _linear_dirs()
  u = np.arange(1.0, 7.0)
  params = _tree(np.zeros(6))
  # float32 user data: float32 round-off
  tol = dict(rtol=1e-5, atol=1e-5)
  # chain with sgd+momentum: first step = -lr P u
  tx = optax.chain(optim.scale_by_msk(d), optax.sgd(0.1, momentum=0.9))
  up, st = jax.jit(tx.update)(_tree(u), tx.init(params))
  np.testing.assert_allclose(_flat(up), -0.1 * P @ u, **tol)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(up))
  # inject_hyperparams: lr in the state, no data in it (directions and k coefficients)
  tx = optax.inject_hyperparams(optim.msk_sgd)(learning_rate=0.5, directions=d)
  st = tx.init(params)
  st.hyperparams["learning_rate"] = jnp.asarray(0.25)
  up, _ = tx.update(_tree(u), st)
  np.testing.assert_allclose(_flat(up), -0.25 * P @ u, **tol)
  # only lr and count are array leaves: the directions and coefficients are held as static
  # data of the state (constants of a jitted step, never copied by it)
  assert sum(l.size for l in jax.tree.leaves(st)) == 2  # lr, count
  # MultiSteps: the mean of two micro-batch gradients, preconditioned
  tx = optax.MultiSteps(optim.msk_sgd(1.0, d), every_k_schedule=2)
  st = tx.init(params)
  up1, st = tx.update(_tree(u), st, params)
  assert np.all(_flat(up1) == 0)
  up2, st = tx.update(_tree(3 * u), st, params)
  np.testing.assert_allclose(_flat(up2), -P @ (2 * u), **tol)
  # masked: P compressed to the leaves in the mask (still positive definite)
  mask = {"a": True, "b": {"c": False}}
  tx = optax.masked(optim.scale_by_msk(d), mask)
  up, _ = tx.update(_tree(u), tx.init(params))
  Pm = P[:4, :4]
  np.testing.assert_allclose(_flat(up)[:4], Pm @ u[:4], **tol)
  np.testing.assert_allclose(_flat(up)[4:], u[4:])
  assert np.linalg.eigvalsh(Pm).min() > 0
  # replace_directions on a chained state
  tx = optax.chain(optim.scale_by_msk(d), optax.sgd(1.0))
  d2, P2 = _linear_dirs(seed=5)
  st = optim.replace_directions(tx.init(params), d2)
  np.testing.assert_allclose(_flat(tx.update(_tree(u), st)[0]), -P2 @ u, **tol)


def test_flax_train_state_and_nnx_optimizer():
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 4))
  y = jax.random.normal(jax.random.PRNGKey(1), (16, 2))
  model = MLP(width=16, out=2)
  variables = model.init(jax.random.PRNGKey(2), x)
  d = optim.msk_directions(model.apply, variables, x, modifiers.flatten(), 3,
                           compute_beta=False)
  state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                        tx=optim.msk_sgd(0.01, d))
  loss = lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)
  g = jax.grad(loss)(state.params)
  new = state.apply_gradients(grads=g)
  want = optim.precondition(d, g)
  for a, b, w in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params),
                     jax.tree.leaves(want)):
    np.testing.assert_allclose(b - a, -0.01 * w, rtol=1e-5, atol=1e-7)

  class NMLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(4, 16, rngs=rngs)
      self.l2 = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
      return self.l2(jax.nn.relu(self.l1(x)))

  m = NMLP(nnx.Rngs(0))
  dn = optim.msk_directions(m, None, x, modifiers.flatten(), 3, compute_beta=False)
  opt = nnx.Optimizer(m, optim.msk_sgd(0.01, dn), wrt=nnx.Param)
  before = nnx.as_pure(nnx.state(m, nnx.Param))
  grads = nnx.grad(lambda mm: jnp.mean((mm(x) - y) ** 2))(m)
  opt.update(m, grads)
  after = nnx.as_pure(nnx.state(m, nnx.Param))
  want = optim.precondition(dn, nnx.as_pure(nnx.state(grads, nnx.Param)))
  for a, b, w in zip(jax.tree.leaves(before), jax.tree.leaves(after), jax.tree.leaves(want)):
    np.testing.assert_allclose(b - a, -0.01 * w, rtol=1e-5, atol=1e-7)


def test_float32_pipeline_stays_float32():
  """With x64 off (a user's process), nothing float64 reaches params, updates or state."""
  with jax.enable_x64(False):
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 6))
    y = jax.nn.one_hot(jnp.arange(16) % 3, 3)
    model = MLP(width=32, out=3)
    variables = model.init(jax.random.PRNGKey(1), x)
    d = optim.msk_directions(model.apply, variables, x, modifiers.flatten(), 4)
    # default: float32 products, a solve to what a preconditioner needs (tol 1e-2 on the
    # eigenvalue error bound): residuals / λ₁ of that order, not 1e-6
    assert float(d.residuals.max()) < 2e-2
    tx = optim.msk_sgd(steps.critical_batch_learning_rate(d, 8), d)
    params = variables["params"]
    st = tx.init(params)

    @jax.jit
    def step(params, st, xb, yb):
      g = jax.grad(lambda p: optax.softmax_cross_entropy(
          model.apply({"params": p}, xb), yb).mean())(params)
      up, st = tx.update(g, st, params)
      return optax.apply_updates(params, up), st

    params, st = step(params, st, x[:8], y[:8])
    for leaf in jax.tree.leaves((params, st, d.directions, d.values)):
      assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert not jax.config.jax_enable_x64


def test_errors():
  d, _ = _linear_dirs()
  with pytest.raises(TypeError, match="directions"):
    optim.scale_by_msk({"a": 1})
  with pytest.raises(ValueError, match="new_values"):
    optim.scale_by_msk(d._replace(new_values=jnp.asarray([1.0, -1.0])))
  with pytest.raises(ValueError, match="leading axis"):
    optim.scale_by_msk(d._replace(directions={"a": jnp.zeros((3, 4))}))
  tx = optim.scale_by_msk(d)
  with pytest.raises(ValueError, match="pytree structures"):
    tx.update({"a": jnp.zeros(4)}, tx.init(None))
  with pytest.raises(ValueError, match="beta"):
    steps.critical_batch_learning_rate(d, 32)
  with pytest.raises(ValueError, match="batch_size"):
    steps.critical_batch_learning_rate(batch_size=0, lambda_max=1.0, beta=1.0, n_points=1)
  x = jnp.ones((4, 2))
  with pytest.raises(ValueError, match="rank"):   # one parameter: the NTK has rank 1
    optim.msk_directions(lambda w, xx: xx @ w[:, None] * 0 + xx[:, :1] * w[0],
                         jnp.ones(2), x, modifiers.flatten(), 2, compute_beta=False)


def test_msk_sgd_jvp_guard_against_kernel_drift():
  """A stored spectrum from X used on a network whose kernel grew 9× (f = 3·X w): for
  flatten, uᵀ P u < 0 along some gradients; the guard passes u through and counts it."""
  rng = np.random.default_rng(0)
  X = jnp.asarray(rng.standard_normal((6, 8)))
  K = X @ X.T
  import mskjax
  spec = mskjax.msk_spectrum(K, modifiers.scale(0.01), 2)   # g/λ = 0.01: coef ≈ −0.99/λ
  f_drift = lambda w, x: 3.0 * (x @ w)                      # empirical NTK = 9 K
  lam, U = np.linalg.eigh(np.asarray(K))
  u = 3.0 * np.asarray(X).T @ U[:, -1]                      # a gradient along v₁: Jᵀ v₁
  # explicit map: P u = u + Jᵀ V C Λ⁻¹ Vᵀ J u with J = 3X
  J = 3.0 * np.asarray(X)
  Vk = np.asarray(spec.vectors)
  coef = (np.asarray(spec.new_values) / np.asarray(spec.values) - 1) / np.asarray(spec.values)
  Pu = u + J.T @ Vk @ (coef * (Vk.T @ (J @ u)))
  assert u @ Pu < 0                                         # indefinite along u
  w = jnp.zeros(8)
  for guard, want in ((False, Pu), (True, u)):
    tx = function_space.scale_by_msk_jvp(f_drift, X, spec, guard=guard)
    out, st = tx.update(jnp.asarray(u), tx.init(w), w)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    assert int(st.indefinite) == 1
  # without drift the map is PD: the same u is preconditioned and not counted
  tx = function_space.scale_by_msk_jvp(lambda w_, x: x @ w_, X, spec)
  u0 = np.asarray(X).T @ U[:, -1]
  out, st = tx.update(jnp.asarray(u0), tx.init(w), w)
  assert int(st.indefinite) == 0 and float(jnp.dot(out, u0)) > 0


def test_warns_when_k_cuts_a_block_of_equal_eigenvalues():
  apply_fn, params, x, _ = _setup("linear", c=3)      # kernel Φ Φᵀ ⊗ I₃: 3-fold ties
  with pytest.warns(UserWarning, match="block"):
    optim.msk_directions(apply_fn, params, x, modifiers.flatten(), 4, compute_beta=False)


def test_warm_start_from_previous_directions():
  # A refresh warm-started from earlier directions pushes them through J: at the same θ,
  # J q_i = √λ_i v_i spans the top eigenvectors exactly, so one Rayleigh–Ritz step
  # (one product with K) already has the eigenvalues of the jacrev oracle; a random start
  # with the same budget does not (the control shows the test can fail).
  apply_fn, params, x, f = _setup("wide", n=12, c=2)
  k, g = 3, modifiers.flatten()
  J, _ = _full_jacobian(lambda q: f(q, x), params["params"])
  lam = np.linalg.eigvalsh(J @ J.T)[::-1]
  d0 = optim.msk_directions(apply_fn, params, x, g, k + 4, tol=1e-12, max_cycles=30)
  once = dict(method="randomized", jacobian="matrix_free", max_cycles=1, oversample=0)
  warm = optim.msk_directions(apply_fn, params, x, g, k, init_vectors=d0, **once)
  with pytest.warns(UserWarning, match="did not converge"):   # and says so
    cold = optim.msk_directions(apply_fn, params, x, g, k, **once)
  # rtol: the directions were solved to 1e-12·λ₁; Rayleigh quotients are second order.
  np.testing.assert_allclose(warm.values, lam[:k], rtol=1e-9)
  assert np.max(np.abs(np.asarray(cold.values) - lam[:k]) / lam[0]) > 1e-3
  # directions of another model are refused with the argument named
  other = {"w": jnp.zeros((5, 2))}
  with pytest.raises(ValueError, match="init_vectors"):
    optim.msk_directions(apply_fn, params, x, g, k, init_vectors=d0._replace(directions=other))


def _quadratic_step(tx, donate):
  """A user's jitted step (params, opt_state, batch) → (params, opt_state, loss) with the
  gradient of ½‖p − batch‖² (so the update of each step is known in closed form)."""
  def step(params, st, batch):
    loss, g = jax.value_and_grad(
        lambda p: 0.5 * sum(jnp.sum((a - b) ** 2) for a, b in
                            zip(jax.tree.leaves(p), jax.tree.leaves(batch))))(params)
    up, st = tx.update(g, st, params)
    return optax.apply_updates(params, up), st, loss
  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


@pytest.mark.parametrize("donate", [False, True])
def test_msk_sgd_state_holds_no_direction_arrays_and_donation_keeps_the_directions(donate):
  # The state the step returns has only the momentum as an array (no k parameter-sized
  # copies to write per step), and donating the step's arguments leaves the caller's
  # MSKDirections alive and unchanged. Oracle: explicit P, SGD-momentum in numpy.
  d, P = _linear_dirs()
  before = [np.asarray(l).copy() for l in jax.tree.leaves(d.directions)]
  lr, mom = 0.1, 0.9
  tx = optim.msk_sgd(lr, d, momentum=mom)
  params = _tree(np.zeros(6))
  st = tx.init(params)
  assert sum(l.size for l in jax.tree.leaves(st)) == 6       # the momentum trace only
  step = _quadratic_step(tx, donate)
  target = _tree(np.arange(1.0, 7.0))
  p_np, m_np = np.zeros(6), np.zeros(6)
  for _ in range(3):
    params, st, _ = step(params, st, target)
    m_np = mom * m_np + P @ (p_np - np.arange(1.0, 7.0))
    p_np = p_np - lr * m_np
  np.testing.assert_allclose(_flat(params), p_np, rtol=1e-5, atol=1e-5)   # float32 round-off
  for a, b in zip(jax.tree.leaves(d.directions), before):
    np.testing.assert_array_equal(np.asarray(a), b)       # raises if the array was deleted
  # the same directions build a fresh optimizer after the donated run
  optim.msk_sgd(lr, d).init(_tree(np.zeros(6)))


def test_tracking_state_does_not_alias_the_callers_directions_under_donation():
  X = jnp.array([[1.0, 0.0], [0.0, 2.0]]); f = lambda w, x: x @ w
  d = optim.MSKDirections(jnp.array([[0.0, 1.0]]), jnp.array([4.0]), jnp.array([1.0]),
                          jnp.array(1.0), vectors=jnp.array([[0.0], [1.0]]))
  tx = tracking.msk_sgd_tracking(0.1, f, X, d, moved=0.5)
  w = jnp.zeros(2)
  st = tx.init(w)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(w, st):
    g = jax.grad(lambda v: 0.5 * jnp.sum((X @ v - 1.0) ** 2))(w)
    up, st = tx.update(g, st, w)
    return optax.apply_updates(w, up), st
  for _ in range(2):
    w, st = step(w, st)
  np.testing.assert_array_equal(np.asarray(d.directions), [[0.0, 1.0]])
  np.testing.assert_array_equal(np.asarray(d.vectors), [[0.0], [1.0]])


def test_replace_directions_is_seen_by_an_already_compiled_step_and_state_pickles():
  # The directions are constants of the compiled step: a replaced state must not run the
  # stale program (oracle: explicit P2), and a pickled state restores the same update.
  import pickle
  d, P = _linear_dirs()
  d2, P2 = _linear_dirs(seed=5)
  tx = optax.chain(optim.scale_by_msk(d), optax.sgd(1.0))
  u = np.arange(1.0, 7.0)
  upd = jax.jit(lambda g, s: tx.update(g, s)[0])
  st = tx.init(_tree(np.zeros(6)))
  np.testing.assert_allclose(_flat(upd(_tree(u), st)), -P @ u, rtol=1e-5, atol=1e-5)
  st2 = optim.replace_directions(st, d2)
  np.testing.assert_allclose(_flat(upd(_tree(u), st2)), -P2 @ u, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_flat(upd(_tree(u), st)), -P @ u, rtol=1e-5, atol=1e-5)
  back = pickle.loads(pickle.dumps(st2))
  np.testing.assert_allclose(_flat(upd(_tree(u), back)), -P2 @ u, rtol=1e-5, atol=1e-5)
