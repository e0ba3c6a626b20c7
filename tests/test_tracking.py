"""The tracking MSK preconditioner (tracking.scale_by_msk_tracking) against independent
computations: explicit jacrev Jacobians, numpy orthonormalisation and numpy P u, float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mskjax import modifiers, optim, tracking


def _net(width=8, d=3, c=2, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = {"W": jax.random.normal(k1, (d, width), jnp.float64),
            "b": jax.random.normal(k2, (width,), jnp.float64)}
  A = jax.random.normal(k3, (width, c), jnp.float64)

  def f(p, x):
    return jnp.tanh(x @ p["W"] / np.sqrt(d) + p["b"]) @ A / np.sqrt(width)
  return f, params


def _jac(f, p, x):
  J = jax.jacrev(lambda q: f(q, x))(p)            # leaves (s, c, *shape)
  s, c = f(p, x).shape
  return np.concatenate([np.asarray(J[k]).reshape(s * c, -1) for k in ("W", "b")], 1)


def _flat(t):
  return np.concatenate([np.asarray(t["W"]).ravel(), np.asarray(t["b"]).ravel()])


def _moved(p, scale, seed=3):
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  return {k: v + scale * jnp.linalg.norm(v) / np.sqrt(v.size) * jax.random.normal(kk, v.shape,
                                                                                   v.dtype)
          for (k, v), kk in zip(sorted(p.items()), keys)}


def _np_reformed(A, d, rayleigh_ritz, coefficients):
  """Numpy oracle of a re-formation from the rows A (s·c × #params: J, or H^½ J) at the
  moved parameters: ``(Q, coef, W U)`` — Löwdin ``orth(Aᵀ V Λ^{-1/2})`` with g/λ − 1, or one
  subspace step on K = A Aᵀ + Rayleigh–Ritz with g/θ − 1 ('ritz') or g/λ − 1 ('build');
  W U are the new function-space vectors (None for Löwdin)."""
  V = np.asarray(d.vectors)
  lam, g = np.asarray(d.values), np.asarray(d.new_values)
  if rayleigh_ritz:
    K1 = A @ A.T
    W, _ = np.linalg.qr(K1 @ V)
    theta, U = np.linalg.eigh(W.T @ K1 @ W)
    theta, U = theta[::-1], U[:, ::-1]
    Q = A.T @ W @ U / np.sqrt(theta)
    return Q, (g / theta - 1 if coefficients == "ritz" else g / lam - 1), W @ U
  B = A.T @ V / np.sqrt(lam)
  e, U = np.linalg.eigh(B.T @ B)
  return B @ (U / np.sqrt(e)) @ U.T, g / lam - 1, None


# memory_budget: the default builds the explicit per-point Jacobian (GEMM route); 1 byte
# forces the matrix-free route (vmapped VJPs/JVPs). Both must give the oracle's update.
# coefficients='build' keeps g/λ of the build on the Rayleigh–Ritz span.
@pytest.mark.parametrize("rayleigh_ritz,memory_budget,coefficients", [
    (False, None, "ritz"), (False, 1, "ritz"), (True, None, "ritz"), (True, 1, "ritz"),
    (True, None, "build")])
def test_tracked_update_matches_explicit_jacobian(rayleigh_ritz, memory_budget, coefficients):
  with jax.enable_x64(True):
    f, p0 = _net()
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3), jnp.float64)
    k = 3
    d = optim.msk_directions(f, p0, x, modifiers.flatten(), k, compute_beta=False)
    p1 = _moved(p0, 0.3)
    u = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(7), a.shape, a.dtype), p0)
    kw = {} if memory_budget is None else {"memory_budget": memory_budget}
    tx = tracking.scale_by_msk_tracking(f, x, d, rayleigh_ritz=rayleigh_ritz,
                                     coefficients=coefficients, **kw)
    out, st = tx.update(u, tx.init(p0), p1)
    # oracle: explicit J at p1, numpy orthonormalisation, numpy P u
    Q, coef, WU = _np_reformed(_jac(f, p1, x), d, rayleigh_ritz, coefficients)
    np.testing.assert_allclose(Q.T @ Q, np.eye(k), atol=1e-10)
    uf = _flat(u)
    expect = uf + Q @ (coef * (Q.T @ uf))
    # float64 throughout; the only differences are round-off in two orders of summation
    np.testing.assert_allclose(_flat(out), expect, rtol=1e-9, atol=1e-9 * np.abs(expect).max())
    # the new function-space vectors and Ritz values (Rayleigh–Ritz; unique up to sign)
    if rayleigh_ritz:
      np.testing.assert_allclose(np.asarray(st.coef), coef, rtol=1e-9)
      Wn = np.asarray(st.vectors)
      np.testing.assert_allclose(np.abs(np.sum(Wn * WU, 0)), 1.0, rtol=1e-9)
    # at the build parameters, Löwdin re-forms the stored directions
    if not rayleigh_ritz:
      out0, _ = tx.update(u, tx.init(p0), p0)
      np.testing.assert_allclose(_flat(out0), _flat(optim.precondition(d, u)), rtol=1e-8,
                                 atol=1e-10)


def _lazy(n=32, width=128, seed=0):
  theta = jnp.linspace(0, 2 * np.pi, n, endpoint=False)
  x = jnp.stack([jnp.cos(theta), jnp.sin(theta)], 1).astype(jnp.float64)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  p = {"W": jax.random.normal(k1, (2, width), jnp.float64),
       "b": jax.random.normal(k2, (width,), jnp.float64)}
  a = jax.random.normal(k3, (width,), jnp.float64)
  f = lambda q, xx: jax.nn.relu(xx @ q["W"] / np.sqrt(2.0) + q["b"]) @ a / np.sqrt(width)
  return f, p, x


def _lam_max_JPJ(f, p, x, Q, coef):
  J = _jac(lambda q, xx: f(q, xx)[:, None], p, x)
  P = np.eye(J.shape[1]) + (Q * coef) @ Q.T
  return np.linalg.eigvalsh(J @ P @ J.T)[-1]


def _Q(dirs):
  return np.concatenate([np.asarray(dirs[k]).reshape(dirs[k].shape[0], -1)
                         for k in ("W", "b")], 1).T


def test_tracked_preconditioner_keeps_top_at_max_g_after_parameters_move():
  """Move the first layer by ~25 % (what one large MSK step does to a lazy network):
  the fixed directions no longer flatten the top of J_t Jᵀ_t, the re-formed ones do.
  Rayleigh–Ritz with the Ritz-value coefficients keeps λ_max(J_t P_t J_tᵀ) at max g (to the
  λ_{k+1} drift of the kernel);
  Löwdin with the fixed function-space vectors only partly (its span does not rotate)."""
  with jax.enable_x64(True):
    f, p0, x = _lazy()
    k = 6
    d = optim.msk_directions(f, p0, x, modifiers.flatten(), k, compute_beta=False)
    gmax = float(d.max_value)
    coef = np.asarray(d.new_values) / np.asarray(d.values) - 1
    assert _lam_max_JPJ(f, p0, x, _Q(d.directions), coef) == pytest.approx(gmax, rel=1e-6)
    p1 = _moved(p0, 0.25)
    fixed = _lam_max_JPJ(f, p1, x, _Q(d.directions), coef)
    res = {}
    for rr in (False, True):
      st = tracking.scale_by_msk_tracking(f, x, d, rayleigh_ritz=rr, coefficients="ritz")
      _, s1 = st.update(jax.tree.map(jnp.zeros_like, p0), st.init(p0), p1)
      res[rr] = _lam_max_JPJ(f, p1, x, _Q(s1.directions), np.asarray(s1.coef))
    assert fixed > 3 * gmax, (fixed, gmax)
    assert res[True] < 1.5 * gmax, (res, gmax)
    assert res[False] < 0.5 * fixed, (res, fixed)


def test_tracking_refuses_gauss_newton_directions_without_their_loss():
  # Cross-entropy directions need Jᵀ H^½ V at the current outputs: with the default
  # loss='mse' the transform would track the wrong kernel, so it must refuse by name.
  q = {"W": jnp.zeros((1, 3, 8)).at[0, 0, 0].set(1.0), "b": jnp.zeros((1, 8))}
  d = optim.MSKDirections(q, jnp.array([4.0]), jnp.array([1.0]), jnp.array(1.0),
                          vectors=jnp.ones((4, 1)) / 2.0,
                          hessian_sqrt=jnp.tile(jnp.eye(2), (2, 1, 1)) * 0.5)
  f, _ = _net()
  with pytest.raises(ValueError, match="hessian_sqrt"):
    tracking.scale_by_msk_tracking(f, jnp.ones((2, 3)), d)


def _quartic(fi, yi):
  return jnp.sum((fi - yi) ** 2 + 0.1 * (fi - yi) ** 4)


def _np_hessian_sqrt(kind, F, Y):
  """Independent numpy H_i^½ (float64): softmax CE or the quartic loss above."""
  s, c = F.shape
  if kind == "softmax_cross_entropy":
    z = np.exp(F - F.max(1, keepdims=True))
    pr = z / z.sum(1, keepdims=True)
    H = pr[:, :, None] * np.eye(c) - pr[:, :, None] * pr[:, None, :]
  else:
    H = np.eye(c)[None] * (2.0 + 1.2 * (F - Y) ** 2)[:, :, None]
  w, U = np.linalg.eigh(H)
  return np.einsum("pij,pj,pkj->pik", U, np.sqrt(np.clip(w, 0, None)), U)


# Gauss–Newton directions (loss ≠ MSE): the re-formation must use H^½ at the *current*
# outputs; explicit and matrix-free constructions, Löwdin and Rayleigh–Ritz.
@pytest.mark.parametrize("kind,rayleigh_ritz,memory_budget", [
    ("softmax_cross_entropy", True, None), ("softmax_cross_entropy", False, None),
    ("softmax_cross_entropy", True, 1), ("callable", True, None)])
def test_gauss_newton_tracking_matches_jacrev_oracle(kind, rayleigh_ritz, memory_budget):
  with jax.enable_x64(True):
    c = 3
    f, p0 = _net(c=c)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3), jnp.float64)
    Y = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (6, c), jnp.float64))
    loss = _quartic if kind == "callable" else kind
    tgt = jnp.asarray(Y) if kind == "callable" else None
    k = 4
    d = optim.msk_directions(f, p0, x, modifiers.flatten(), k, loss=loss, targets=tgt,
                             compute_beta=False)
    p1 = _moved(p0, 0.3)
    u = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(7), a.shape, a.dtype), p0)
    kw = {} if memory_budget is None else {"memory_budget": memory_budget}
    tx = tracking.scale_by_msk_tracking(f, x, d, rayleigh_ritz=rayleigh_ritz, loss=loss,
                                     targets=tgt, **kw)
    out, st = jax.jit(tx.update)(u, tx.init(p0), p1)
    F1 = np.asarray(f(p1, x))
    Hh = _np_hessian_sqrt(kind, F1, Y)
    A = np.einsum("pcd,pdq->pcq", Hh, _jac(f, p1, x).reshape(6, c, -1)).reshape(6 * c, -1)
    Q, coef, _ = _np_reformed(A, d, rayleigh_ritz, "build")     # the default coefficients
    uf = _flat(u)
    expect = uf + Q @ (coef * (Q.T @ uf))
    # float64; c×c eigh in the graph vs numpy and two summation orders: round-off only
    np.testing.assert_allclose(_flat(out), expect, rtol=1e-8, atol=1e-8 * np.abs(expect).max())
    if not rayleigh_ritz:       # at the build parameters H is the build's: q unchanged
      out0, _ = tx.update(u, tx.init(p0), p0)
      np.testing.assert_allclose(_flat(out0), _flat(optim.precondition(d, u)), rtol=1e-8,
                                 atol=1e-10)


def test_tracking_loss_must_match_the_directions():
  q = {"W": jnp.zeros((1, 3, 8)).at[0, 0, 0].set(1.0), "b": jnp.zeros((1, 8))}
  d = optim.MSKDirections(q, jnp.array([4.0]), jnp.array([1.0]), jnp.array(1.0),
                          vectors=jnp.ones((4, 1)) / 2.0)
  f, _ = _net()
  with pytest.raises(ValueError, match="hessian_sqrt is None"):
    tracking.scale_by_msk_tracking(f, jnp.ones((2, 3)), d, loss="softmax_cross_entropy")
  with pytest.raises(ValueError, match="targets"):
    tracking.scale_by_msk_tracking(f, jnp.ones((2, 3)), d._replace(
        hessian_sqrt=jnp.tile(jnp.eye(2), (2, 1, 1))), loss=_quartic)
  with pytest.raises(ValueError, match="loss"):
    tracking.scale_by_msk_tracking(f, jnp.ones((2, 3)), d, loss="hinge")
  with pytest.raises(ValueError, match="coefficients"):
    tracking.scale_by_msk_tracking(f, jnp.ones((2, 3)), d, coefficients="current")
