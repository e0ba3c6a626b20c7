"""Loss-aware directions (mskjax.directions.msk_directions) and their safety checks.

Oracle: the Jacobian J (s·c × #params) by jax.jacrev of the flattened parameters in float64,
the per-point output Hessians H_i in closed form in numpy (never jax.hessian), H_i^½ by numpy
eigh, and numpy eigh of the Gauss–Newton kernel H^½ J Jᵀ H^½ (explicit, not the code under
test).
"""
import re
import warnings

import numpy as np
import pytest

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp

from mskjax import modifiers, optim, tangents
from mskjax.directions import MSKDirections


class MLP(nn.Module):
  out: int = 3

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(24)(x))
    return nn.Dense(self.out)(x)


def _quartic(f, y):
  """A per-point loss with a non-diagonal Hessian: ¼Σ(f−y)⁴ + ½(Σ(f−y))² + ½‖f−y‖²."""
  r = f - y
  return 0.25 * jnp.sum(r ** 4) + 0.5 * jnp.sum(r) ** 2 + 0.5 * jnp.sum(r ** 2)


def _hessians(kind, F, Y):
  """Closed-form per-point output Hessians (numpy float64)."""
  s, c = F.shape
  if kind == "mse":
    return np.broadcast_to(np.eye(c), (s, c, c))
  if kind == "softmax_cross_entropy":
    z = np.exp(F - F.max(1, keepdims=True))
    p = z / z.sum(1, keepdims=True)
    return np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])
  r = F - Y
  return np.stack([np.diag(3 * ri ** 2) + np.ones((c, c)) + np.eye(c) for ri in r])


def _setup(n=10, c=3, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((n, 4)))
  y = jnp.asarray(rng.standard_normal((n, c)))
  model = MLP(out=c)
  variables = jax.tree.map(lambda a: a.astype(jnp.float64),
                           model.init(jax.random.PRNGKey(seed), x))
  return model, variables, x, y


def _oracle(model, variables, x, y, kind):
  p = variables["params"]
  flat, unravel = jax.flatten_util.ravel_pytree(p)
  f = lambda v: model.apply({"params": unravel(v)}, x)
  J = np.asarray(jax.jacrev(lambda v: f(v).reshape(-1))(flat), np.float64)
  F = np.asarray(f(flat), np.float64)
  H = _hessians(kind, F, np.asarray(y))
  w, U = np.linalg.eigh(H)
  Hh = np.einsum("pij,pj,pkj->pik", U, np.sqrt(np.clip(w, 0, None)), U)
  s, c = F.shape
  A = np.einsum("pcd,pdq->pcq", Hh, J.reshape(s, c, -1)).reshape(s * c, -1)
  lam, V = np.linalg.eigh(A @ A.T)
  return lam[::-1], V[:, ::-1], A, unravel


def _rows(d):
  return np.stack([np.asarray(jax.flatten_util.ravel_pytree(
      jax.tree.map(lambda l: l[i], d.directions))[0], np.float64) for i in range(d.k)])


LOSSES = ["mse", "softmax_cross_entropy", "callable"]


@pytest.mark.parametrize("kind,method", [(kind, "dense") for kind in LOSSES] + [
    pytest.param("mse", "krylov", marks=pytest.mark.slow), ("softmax_cross_entropy", "krylov"),
    pytest.param("callable", "krylov", marks=pytest.mark.slow)])
def test_gauss_newton_directions_match_the_jacrev_oracle(kind, method):
  model, variables, x, y = _setup()
  k = 4
  loss = _quartic if kind == "callable" else kind
  d = optim.msk_directions(model.apply, variables, x, modifiers.power(0.5), k, loss=loss,
                           targets=y if kind == "callable" else None, method=method,
                           tol=1e-12, max_cycles=40)
  lam, V, A, _ = _oracle(model, variables, x, y, kind)
  # float64 products and a 1e-12 solve (or LAPACK): round-off of a 30×30 eigenproblem
  np.testing.assert_allclose(d.values, lam[:k], rtol=1e-8)
  np.testing.assert_allclose(d.next_value, lam[k], rtol=1e-8)
  # q_i = Aᵀ v_i / √λ_i (up to sign): orthonormal, and the projector onto them matches
  Q = _rows(d)
  Qo = (A.T @ V[:, :k] / np.sqrt(lam[:k])).T
  np.testing.assert_allclose(Q @ Q.T, np.eye(k), atol=1e-10)
  np.testing.assert_allclose(Q.T @ Q, Qo.T @ Qo, atol=1e-7)
  # the tracking data: V are eigenvectors of the GN kernel; H^½ re-forms q = Jᵀ H^½ V / √λ
  Vd = np.asarray(d.vectors)
  np.testing.assert_allclose(np.abs(np.sum(Vd * V[:, :k], 0)), 1.0, atol=1e-8)
  if kind == "mse":
    assert d.hessian_sqrt is None
  else:
    s, c = x.shape[0], 3
    p = variables["params"]
    flat, _ = jax.flatten_util.ravel_pytree(p)
    Jt = np.asarray(jax.jacrev(lambda v: model.apply(
        {"params": jax.flatten_util.ravel_pytree(p)[1](v)}, x).reshape(-1))(flat))
    W = np.einsum("pcd,pdk->pck", np.asarray(d.hessian_sqrt), Vd.reshape(s, c, k))
    np.testing.assert_allclose(np.abs(Jt.T @ W.reshape(s * c, k) / np.sqrt(lam[:k])),
                               np.abs(Q.T), atol=1e-7)
  # P Aᵀ w = Aᵀ S w with S = I + Σ (g/λ − 1) v vᵀ (function space of the GN kernel)
  w = np.random.default_rng(1).standard_normal(A.shape[0])
  S_w = w + V[:, :k] @ ((np.asarray(d.new_values) / lam[:k] - 1) * (V[:, :k].T @ w))
  _, unravel = jax.flatten_util.ravel_pytree(variables["params"])
  Pu = optim.precondition(d, unravel(jnp.asarray(A.T @ w)))
  np.testing.assert_allclose(jax.flatten_util.ravel_pytree(Pu)[0], A.T @ S_w,
                             rtol=1e-7, atol=1e-9 * np.abs(A.T @ w).max())


@pytest.mark.parametrize("kind", ["mse", "softmax_cross_entropy"])
def test_sketch_default_accuracy_is_about_a_percent(kind):
  model, variables, x, y = _setup(n=12)
  k = 4
  d = optim.msk_directions(model.apply, variables, x, modifiers.flatten(), k, loss=kind,
                           method="randomized", jacobian="matrix_free")
  lam = _oracle(model, variables, x, y, kind)[0]
  # the default promise: each of λ₁..λ_{k+1} within tol = 1 % (a bound, checked loosely)
  np.testing.assert_allclose(d.values, lam[:k], rtol=1e-2)
  np.testing.assert_allclose(d.next_value, lam[k], rtol=1e-2)


def test_cross_entropy_kernel_is_smaller_than_the_ntk():
  # H_i = diag(p) − ppᵀ ≼ ½ I: every eigenvalue of the GN kernel ≤ ½ that of J Jᵀ (Weyl /
  # Ostrowski); at init (p ≈ uniform) about 1/c of it.
  model, variables, x, y = _setup(c=5)
  dm = optim.msk_directions(model.apply, variables, x, modifiers.flatten(), 3)
  dc = optim.msk_directions(model.apply, variables, x, modifiers.flatten(), 3,
                            loss="softmax_cross_entropy")
  assert np.all(np.asarray(dc.values) <= 0.5 * np.asarray(dm.values) * (1 + 1e-9))


def test_refresh_is_one_product_and_its_next_value_is_right():
  model, variables, x, y = _setup(n=12)
  k, g = 3, modifiers.flatten()
  d0 = optim.msk_directions(model.apply, variables, x, g, k, method="randomized", jacobian="matrix_free", tol=1e-10,
                            max_cycles=60)
  moved = jax.tree.map(lambda a: a * 1.02 + 0.01, variables)   # as after some training
  lam = _oracle(model, moved, x, y, "mse")[0]
  with warnings.catch_warnings():
    warnings.simplefilter("error")                             # converged: no warning
    warm = optim.msk_directions(model.apply, moved, x, g, k, init_vectors=d0,
                                method="randomized", jacobian="matrix_free", max_cycles=2)
  # tol = 1e-2 default: eigenvalues and λ_{k+1} within ~1 %
  np.testing.assert_allclose(warm.values, lam[:k], rtol=1e-2)
  np.testing.assert_allclose(warm.next_value, lam[k], rtol=1e-2)
  # one product only, unconverged at a tight tol: it says so (no silent 18–43 % errors)
  with pytest.warns(UserWarning, match="did not converge"):
    optim.msk_directions(model.apply, moved, x, g, k, method="randomized", jacobian="matrix_free", max_cycles=1,
                         tol=1e-9)


def test_jacobian_matrix_matches_jacrev():
  model, variables, x, _ = _setup(n=5)
  J = tangents.jacobian_matrix(model.apply, variables, x, block_size=2)
  flat, unravel = jax.flatten_util.ravel_pytree(variables["params"])
  Jo = np.asarray(jax.jacrev(lambda v: model.apply({"params": unravel(v)}, x).reshape(-1))(
      flat))
  np.testing.assert_allclose(J, Jo, rtol=1e-12, atol=1e-14)   # same arithmetic, float64


def _linear(lams, seed=0):
  """f(w, x) = x·w with K = X Xᵀ = diag(lams) in a random basis (c = 1)."""
  rng = np.random.default_rng(seed)
  n = len(lams)
  U, _ = np.linalg.qr(rng.standard_normal((n, n)))
  W, _ = np.linalg.qr(rng.standard_normal((n + 2, n)))
  X = (U * np.sqrt(lams)) @ W.T
  return (lambda w, xx: xx @ w), jnp.zeros(n + 2), jnp.asarray(X)


def test_near_equal_warning_is_relative_to_lambda_k():
  fn, w, X = _linear([1e5, 0.424, 0.397, 0.2, 0.1, 0.05])
  with warnings.catch_warnings():
    warnings.simplefilter("error")     # 0.424 vs 0.397: a 7 % gap, not a tie
    optim.msk_directions(fn, w, X, modifiers.flatten(), 2, compute_beta=False)
  fn, w, X = _linear([1e5, 0.4, 0.4, 0.2, 0.1, 0.05])
  with pytest.warns(UserWarning, match="block"):
    optim.msk_directions(fn, w, X, modifiers.flatten(), 2, compute_beta=False)


def _directions32(lams, k):
  """msk_directions of `_linear(lams)` with float32 products (x64 off inside the call)."""
  fn, w, X = _linear(lams)
  with jax.enable_x64(False):
    return optim.msk_directions(fn, np.asarray(w, np.float32), np.asarray(X, np.float32),
                                modifiers.flatten(), k, compute_beta=False, method="dense")


def test_smooth_spectrum_below_round_off_is_not_a_cluster():
  # float32 products: round-off ~ max(100, 10√N)·eps·λ₁ = 1.2e-5. λ₃/λ₄ = 1.03 differ by
  # 6e-6 < round-off, but by 3 % of λ₃ (> CLUSTER_RTOL = 0.1 %): a smooth spectrum, not a
  # block — no warning (the old rule, gap ≤ round-off, warned here at every such k).
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    d = _directions32([1.0, 0.5, 2e-4, 1.94e-4, 1e-4, 5e-5], 3)
  assert d.values.dtype == np.float32
  # float32 products (eps 1.2e-7 of λ₁ = 1): λ₃ to ~1e-6 absolute; oracle = the design
  np.testing.assert_allclose(d.values, [1.0, 0.5, 2e-4], rtol=1e-2)


def test_real_cluster_in_float32_warns_and_names_the_block_edge():
  # A double eigenvalue computed in float32 differs by round-off (≪ 0.1 % of λ₂): a block
  # k = 2 splits; the message names k = 1 (below the block) as the fix.
  with pytest.warns(UserWarning, match=r"block.*Use k = 1"):
    _directions32([1.0, 0.5, 0.5, 0.1, 0.05, 0.01], 2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rank_error_says_how_many_directions_are_usable(dtype):
  lams = [3.0, 2.0, 1.0, 0.0, 0.0, 0.0]     # rank 3
  with pytest.raises(ValueError, match="rank") as e:
    if dtype == "float32":
      _directions32(lams, 4)
    else:
      fn, w, X = _linear(lams)
      optim.msk_directions(fn, w, X, modifiers.flatten(), 4, compute_beta=False,
                           method="dense")
  assert "3 eigenvalues are above round-off" in str(e.value)
  # float64=True is offered only where the products ran in float32
  assert ("float64=True" in str(e.value)) == (dtype == "float32")


def test_k_at_the_numerical_rank_with_flatten_is_refused():
  fn, w, X = _linear([3.0, 2.0, 1.0, 0.0, 0.0, 0.0])   # rank 3; λ₄ is round-off
  with pytest.raises(ValueError, match="rank"):
    optim.msk_directions(fn, w, X, modifiers.flatten(), 3, compute_beta=False)
  d = optim.msk_directions(fn, w, X, modifiers.flatten(), 2, compute_beta=False)
  np.testing.assert_allclose(d.values, [3.0, 2.0], rtol=1e-10)


def test_bad_inputs_name_the_argument():
  model, variables, x, y = _setup(n=6)
  g = modifiers.flatten()
  call = lambda **kw: optim.msk_directions(model.apply, variables, x, kw.pop("g", g),
                                           kw.pop("k", 2), **kw)
  with pytest.raises(TypeError, match="`k`"):
    call(k=2.0)
  with pytest.raises(ValueError, match="`tol`"):
    call(tol=0.0)
  with pytest.raises((TypeError, ValueError), match="memory_budget"):
    call(memory_budget=1.5)
  with pytest.raises(TypeError, match="init_vectors"):
    call(init_vectors="previous")
  with pytest.raises(ValueError, match="method"):
    call(method="lanczos")
  with pytest.raises(ValueError, match="loss"):
    call(loss="hinge")
  with pytest.raises(ValueError, match="targets"):
    call(loss=_quartic)
  d = call()
  other = MLP(out=3).init(jax.random.PRNGKey(0), jnp.ones((1, 7)))   # 7 inputs, not 4
  do = optim.msk_directions(MLP(out=3).apply, other, jnp.ones((6, 7)), g, 2,
                            compute_beta=False)
  with pytest.raises(ValueError, match="init_vectors"):
    call(init_vectors=do)
  for bad, what in ((lambda e, k: jnp.zeros(k), "≤ 0"), (lambda e, k: -e[:k], "≤ 0"),
                    (lambda e, k: e[:k] * jnp.nan, "NaN"), (lambda e, k: e, "shape")):
    with pytest.raises(ValueError, match=f"`g`.*{what}|{what}.*`g`|`g`"):
      call(g=bad)
  assert isinstance(d, MSKDirections)
  step = {"w": jnp.ones((4, 1)), "count": jnp.asarray(3, jnp.int32)}
  with pytest.raises(TypeError, match=r"\['count'\].*int32"):
    optim.msk_directions(lambda p, xx: xx @ p["w"], step, x, g, 2)


def test_seed_from_typed_and_raw_keys_and_subsample_depends_on_the_key():
  """The subsample is drawn from the key's bits on the host: jax.random.key(s) and
  PRNGKey(s) (the same bits) pick the same points, another key other points; a key of the
  wrong kind is named."""
  from mskjax import directions
  assert directions.key_seed(jax.random.key(7)) == directions.key_seed(jax.random.PRNGKey(7))
  x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
  fn = lambda w, xx: xx @ w
  w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2)), jnp.float32)
  idx = [optim.msk_directions(fn, w, x, modifiers.flatten(), 2, subsample=10, key=key,
                              compute_beta=False).indices
         for key in (jax.random.PRNGKey(5), jax.random.key(5), jax.random.PRNGKey(6))]
  np.testing.assert_array_equal(idx[0], idx[1])
  assert not np.array_equal(idx[0], idx[2])
  with pytest.raises(TypeError, match="key"):
    optim.msk_directions(fn, w, x, modifiers.flatten(), 2, key=np.float32(1.0))


def _trained(model, variables, x, steps=60, lr=2.0, seed=1):
  """GD on softmax cross-entropy with random labels: the outputs (hence H_i) move a lot."""
  labels = jax.nn.one_hot(jnp.asarray(np.random.default_rng(seed).integers(0, 3, x.shape[0])), 3)

  def loss(v):
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(model.apply(v, x)), -1))
  grad = jax.jit(jax.grad(loss))
  for _ in range(steps):
    variables = jax.tree.map(lambda a, g: a - lr * g, variables, grad(variables))
  return variables


def _refresh_case():
  """Directions (cross-entropy, k = 6, sketch) at init, the parameters after `_trained`, and
  the jacrev + eigh oracle's eigenvalues there: the set-up of the refresh tests."""
  model, variables, x, y = _setup(n=40)
  k, g, ce = 6, modifiers.flatten(), "softmax_cross_entropy"
  d0 = optim.msk_directions(model.apply, variables, x, g, k, loss=ce, method="randomized", jacobian="matrix_free")
  moved = _trained(model, variables, x)
  lam = _oracle(model, moved, x, y, ce)[0]
  return model, variables, x, y, k, g, ce, d0, moved, lam


def test_refresh_after_training_matches_the_oracle_cross_entropy():
  # A refresh (init_vectors = the directions before training) at parameters where the
  # cross-entropy's H_i have changed: λ₁..λ_{k+1} of the jacrev + eigh oracle at the new
  # parameters to the solver's tol (1 %, a bound on each Ritz value's error), no warning.
  model, variables, x, y, k, g, ce, d0, moved, lam = _refresh_case()
  lam0 = _oracle(model, variables, x, y, ce)[0]
  assert abs(lam[k] / lam0[k] - 1) > 0.2            # the kernel did move
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    d = optim.msk_directions(model.apply, moved, x, g, k, loss=ce, method="randomized", jacobian="matrix_free",
                             init_vectors=d0)
  np.testing.assert_allclose(d.values, lam[:k], rtol=1e-2)
  np.testing.assert_allclose(d.next_value, lam[k], rtol=1e-2)
  np.testing.assert_allclose(d.max_value, lam[k], rtol=1e-2)   # flatten: max g = λ_{k+1}


def test_one_product_refresh_warns_and_is_never_too_large():
  # The old recipe (depth=0, max_cycles=1 from the previous directions) returned next_value
  # 2.2× too small without a word on MNIST-1D; now it warns, and (Cauchy interlacing: Ritz
  # values never exceed the eigenvalues) next_value and values are ≤ the oracle's.
  model, variables, x, y, k, g, ce, d0, moved, lam = _refresh_case()
  with pytest.warns(UserWarning, match=r"did not converge.*too small if anything") as rec:
    d = optim.msk_directions(model.apply, moved, x, g, k, loss=ce, method="randomized", jacobian="matrix_free",
                             init_vectors=d0, depth=0, max_cycles=1)
  # the bound it prints is one the criterion fails: above tol (0.01), never below it
  msg = next(str(r.message) for r in rec if "did not converge" in str(r.message))
  printed = float(re.search(r"λ_\(k\+1\): ([0-9.e+-]+)", msg).group(1))
  assert printed > 0.01, msg
  # 1e-9 relative: float64 round-off of a Rayleigh quotient
  assert float(d.next_value) <= lam[k] * (1 + 1e-9)
  assert np.all(np.asarray(d.values) <= lam[:k] * (1 + 1e-9))


def test_refresh_directions_keeps_the_points_and_swaps_the_state():
  # optim.refresh_directions on a subsample: the same points (previous.indices), the new
  # directions in the optimizer state, eigenvalues of the oracle on those points at the
  # new parameters (1 %: the solver's tol), and a loss other than the previous one refused.
  model, variables, x, y = _setup(n=40)
  k, g, ce = 5, modifiers.flatten(), "softmax_cross_entropy"
  d0 = optim.msk_directions(model.apply, variables, x, g, k, loss=ce, subsample=30,
                            key=jax.random.PRNGKey(3))
  tx = optim.msk_sgd(0.1, d0)
  moved = _trained(model, variables, x)
  st, d = optim.refresh_directions(tx.init(moved["params"]), model.apply, moved, x, d0, g,
                                   loss=ce, key=jax.random.PRNGKey(4))
  np.testing.assert_array_equal(d.indices, d0.indices)
  idx = np.asarray(d0.indices)
  lam = _oracle(model, moved, x[idx], y[idx], ce)[0]
  np.testing.assert_allclose(d.values, lam[:k], rtol=1e-2)
  np.testing.assert_allclose(d.next_value, lam[k], rtol=1e-2)
  for a, b in zip(jax.tree.leaves(st[0].directions), jax.tree.leaves(d.directions)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="loss"):
    optim.refresh_directions(st, model.apply, moved, x, d0, g)          # MSE vs CE
  with pytest.raises(ValueError, match="subsample"):
    optim.refresh_directions(st, model.apply, moved, x, d0, g, loss=ce, subsample=10)


def test_nonfinite_outputs_are_refused_with_the_cause_named():
  # diverged training: the cross-entropy Hessian of NaN outputs used to fail inside LAPACK
  model, variables, x, y = _setup()
  bad = jax.tree.map(lambda a: a * np.nan, variables)
  with pytest.raises(ValueError, match="NaN or inf"):
    optim.msk_directions(model.apply, bad, x, modifiers.flatten(), 3,
                         loss="softmax_cross_entropy")
