"""steps.stable_learning_rate (measured curvature), curvature_estimator, set_learning_rate,
and the named errors of the optax transforms (safety)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mskjax import optim, steps, tracking


def _orth_dirs(dim, k, values, new_values, seed=0, dtype=jnp.float64):
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))
  d = optim.MSKDirections({"w": jnp.asarray(q.T, dtype)}, jnp.asarray(values),
                          jnp.asarray(new_values), jnp.asarray(min(new_values)))
  return d, q


@pytest.mark.parametrize("precondition", [False, True])
def test_curvature_is_top_positive_eigenvalue_of_preconditioned_hessian(precondition):
  """Quadratic loss ½wᵀAw with an indefinite A whose largest |eigenvalue| is negative:
  the estimate is the top *positive* eigenvalue of P^½AP^½ (numpy eigh, float64)."""
  with jax.enable_x64(True):
    dim = 12
    rng = np.random.default_rng(1)
    O, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    A = (O * np.r_[-40.0, np.linspace(-1, 5, dim - 1)]) @ O.T
    loss = lambda p, b: 0.5 * p["w"] @ (b @ p["w"])
    d = None
    Ph = np.eye(dim)
    if precondition:
      d, q = _orth_dirs(dim, 2, [8.0, 2.0], [1.0, 4.0])
      Ph = np.eye(dim) + (q * (np.sqrt(np.array([1 / 8, 2.0])) - 1)) @ q.T
    top = np.linalg.eigvalsh(Ph @ A @ Ph)[-1]
    eta = steps.stable_learning_rate(d, loss_fn=loss, params={"w": jnp.ones(dim)},
                                     batch=jnp.asarray(A), iters=dim, safety=0.5)
    # iters = dim: Lanczos is exact up to float64 round-off
    assert eta == pytest.approx(0.5 / top, rel=1e-8)


def test_curvature_of_network_loss_matches_explicit_hessian():
  """A small tanh network with cross-entropy (residual term included): Lanczos vs the
  explicit jax.hessian + numpy eigh of P^½HP^½, float64."""
  with jax.enable_x64(True):
    kx, kw, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (16, 3), jnp.float64)
    y = jnp.arange(16) % 3
    p = {"w": jax.random.normal(kw, (3 * 4,), jnp.float64)}
    V = jax.random.normal(kv, (4, 3), jnp.float64)

    def loss(pp, b):
      xx, yy = b
      logits = jnp.tanh(xx @ pp["w"].reshape(3, 4)) @ V
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yy))
    H = np.asarray(jax.hessian(lambda w: loss({"w": w}, (x, y)))(p["w"]))
    d, q = _orth_dirs(12, 3, [9.0, 4.0, 2.0], [1.0, 1.0, 1.0], seed=2)
    Ph = np.eye(12) + (q * (np.sqrt(np.array([1 / 9, 1 / 4, 1 / 2])) - 1)) @ q.T
    top = np.linalg.eigvalsh(Ph @ H @ Ph)[-1]
    eta, lam = steps.curvature_estimator(loss, d, iters=12)(p, (x, y))
    assert float(lam) == pytest.approx(top, rel=1e-8)
    assert float(eta) == pytest.approx(steps.SAFETY / top, rel=1e-8)
    # the one-off path (a Python loop over one jitted Lanczos step) against the same oracle
    eta1 = steps.stable_learning_rate(d, loss_fn=loss, params=p, batch=(x, y), iters=12)
    assert eta1 == pytest.approx(steps.SAFETY / top, rel=1e-8)


def test_set_learning_rate_changes_the_step_without_recompiling():
  d, q = _orth_dirs(4, 1, [4.0], [1.0], dtype=jnp.float32)
  tx = optax.inject_hyperparams(optim.msk_sgd)(learning_rate=0.1, directions=d)
  p = {"w": jnp.zeros(4, jnp.float32)}
  st = tx.init(p)
  step = jax.jit(lambda g, s: tx.update(g, s))
  u = {"w": jnp.ones(4, jnp.float32)}
  P = np.eye(4) + (q * (0.25 - 1)) @ q.T
  up1, _ = step(u, st)
  up2, _ = step(u, steps.set_learning_rate(st, 0.4))
  # float32 arithmetic on O(1) numbers
  np.testing.assert_allclose(up1["w"], -0.1 * P @ np.ones(4), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(up2["w"], -0.4 * P @ np.ones(4), rtol=1e-5, atol=1e-6)
  assert step._cache_size() == 1
  with pytest.raises(ValueError, match="inject_hyperparams"):
    steps.set_learning_rate(optim.msk_sgd(0.1, d).init(p), 0.2)
  with pytest.raises(ValueError, match="learning_rate"):
    steps.set_learning_rate(st, -1.0)


def test_measured_step_errors():
  loss = lambda p, b: 0.5 * jnp.sum(b * p ** 2)
  with pytest.raises(ValueError, match="params"):
    steps.stable_learning_rate(loss_fn=loss, params=jnp.ones(2))
  with pytest.raises(ValueError, match="no positive eigenvalue"):
    steps.stable_learning_rate(loss_fn=loss, params=jnp.ones(2), batch=-jnp.ones(2), iters=2)
  with pytest.raises(ValueError, match="not finite"):
    steps.stable_learning_rate(loss_fn=loss, params=jnp.ones(2),
                               batch=jnp.array([jnp.nan, 1.0]), iters=2)
  with pytest.raises(ValueError, match="beta"):
    steps.stable_learning_rate(loss_fn=loss, params=jnp.ones(2), batch=jnp.ones(2), iters=2,
                               critical_batch=True)


@pytest.mark.parametrize("iters", [4, 30])
def test_return_info_gives_the_curvature_and_a_true_residual_bound(iters):
  """λ̂ and its Lanczos residual r: an eigenvalue of A lies within r of λ̂ (numpy eigvalsh,
  float64); with iters = dim Lanczos is exact and r is round-off."""
  with jax.enable_x64(True):
    dim = 30
    rng = np.random.default_rng(2)
    O, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    lam = np.linspace(0.1, 10.0, dim)
    A = (O * lam) @ O.T
    loss = lambda p, b: 0.5 * p @ (b @ p)
    eta, info = steps.stable_learning_rate(loss_fn=loss, params=jnp.ones(dim),
                                           batch=jnp.asarray(A), iters=iters, return_info=True)
    assert eta == info.learning_rate == pytest.approx(steps.SAFETY / info.curvature, rel=1e-12)
    assert info.iters == iters
    # r bounds the distance of λ̂ to the spectrum (rounding of a 30×30 float64 problem)
    assert np.min(np.abs(lam - info.curvature)) <= info.residual + 1e-12
    if iters == dim:
      assert info.residual < 1e-8 and info.curvature == pytest.approx(10.0, rel=1e-10)
    else:
      assert info.residual > 1e-6 and info.curvature < 10.0    # 4 steps: not converged


@pytest.mark.parametrize("params", [{"v": jnp.ones(4)}, {"w": jnp.ones(5)}])
def test_directions_that_do_not_match_params_are_named(params):
  """Directions of another pytree or other leaf shapes: a named error from both the
  one-off rule and the estimator, not a shape error inside XLA."""
  d = _orth_dirs(4, 2, [8.0, 2.0], [1.0, 1.0], dtype=jnp.float32)[0]
  loss = lambda p, b: 0.5 * sum(jnp.sum(l ** 2) for l in jax.tree.leaves(p))
  with pytest.raises(ValueError, match="does not match `params`"):
    steps.stable_learning_rate(d, loss_fn=loss, params=params, batch=0.0, iters=2)
  with pytest.raises(ValueError, match="does not match `params`"):
    steps.curvature_estimator(loss, d, iters=2)(params, 0.0)


# ------------------------------------------------------------------ safety of the transforms
def _d32():
  return _orth_dirs(4, 2, [8.0, 2.0], [1.0, 1.0], dtype=jnp.float32)[0]


@pytest.mark.parametrize("lr, match", [(None, "ascent"), (-0.1, "ascent"),
                                       (float("nan"), "finite"), (float("inf"), "finite")])
def test_msk_sgd_rejects_bad_learning_rates(lr, match):
  with pytest.raises(ValueError, match=match):
    optim.msk_sgd(lr, _d32())


@pytest.mark.parametrize("m", [1.0, -0.1, 1.5, float("nan")])
def test_msk_sgd_rejects_bad_momentum(m):
  with pytest.raises(ValueError, match="momentum"):
    optim.msk_sgd(0.1, _d32(), momentum=m)


def test_non_orthonormal_or_indefinite_directions_are_named():
  q = np.array([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0]])          # nearly parallel rows
  d = optim.MSKDirections({"w": jnp.asarray(q)}, jnp.array([8.0, 4.0]), jnp.array([1.0, 1.0]),
                          jnp.array(1.0))
  with pytest.raises(ValueError, match="indefinite"):
    optim.scale_by_msk(d)                                    # 1 + c·2 < 0 on span: indefinite
  d2 = d._replace(directions={"w": jnp.asarray(2.0 * np.eye(3)[:2])}, new_values=jnp.array(
      [6.0, 3.0]))
  with pytest.raises(ValueError, match="not orthonormal"):
    optim.scale_by_msk(d2)                                   # PD but ‖q‖ = 2
  with pytest.raises(ValueError, match="not orthonormal"):
    optim.replace_directions(optim.msk_sgd(0.1, _d32()).init({"w": jnp.zeros(4)}),
                             d2._replace(directions={"w": jnp.asarray(2.0 * np.eye(4)[:2])}))


def test_wrong_leaf_shapes_are_named():
  d = _d32()
  tx = optim.msk_sgd(0.1, d)
  st = tx.init({"w": jnp.zeros(4)})
  with pytest.raises(ValueError, match="shape"):
    tx.update({"w": jnp.ones(5)}, st)
  with pytest.raises(ValueError, match="pytree structures"):
    tx.update({"v": jnp.ones(4)}, st)
  with pytest.raises(ValueError, match="shape"):
    jax.jit(tx.update)({"w": jnp.ones((2, 2))}, st)          # static shapes: also under jit
  bad = d._replace(directions={"w": jnp.zeros((2, 5))})
  with pytest.raises(ValueError, match="shape"):
    optim.replace_directions(st, bad._replace(directions={"w": jnp.eye(5)[:2]}))
  f = lambda w, x: x @ w
  dt = d._replace(vectors=jnp.asarray(np.eye(3)[:, :2]))
  tr = tracking.scale_by_msk_tracking(f, jnp.ones((3, 4)), dt)
  with pytest.raises(ValueError, match="shape"):
    tr.update({"w": jnp.ones(5)}, tr.init({"w": jnp.zeros(4)}), {"w": jnp.zeros(4)})
  with pytest.raises(ValueError, match="vectors"):
    tracking.scale_by_msk_tracking(f, jnp.ones((3, 4)), d)
  with pytest.raises(ValueError, match="params"):
    tr.update({"w": jnp.ones(4)}, tr.init({"w": jnp.zeros(4)}))


def test_non_finite_updates_are_skipped_with_apply_if_finite():
  """The documented guard for NaN/inf gradients: optax.apply_if_finite around msk_sgd."""
  tx = optax.apply_if_finite(optim.msk_sgd(0.1, _d32()), max_consecutive_errors=3)
  st = tx.init({"w": jnp.zeros(4)})
  up, st = tx.update({"w": jnp.array([1.0, jnp.nan, 0.0, 0.0])}, st)
  assert np.all(np.asarray(up["w"]) == 0) and int(st.notfinite_count) == 1


def test_estimators_with_the_same_loss_share_one_compilation():
  """A new estimator (new directions of the same k, another safety) with the same loss
  function object reuses the module-level compilation; its results follow its own
  directions and safety (numpy eigh oracle, float64)."""
  with jax.enable_x64(True):
    dim = 6
    A = np.diag(np.arange(1.0, dim + 1))
    loss = lambda p, b: 0.5 * p["w"] @ (b @ p["w"])
    p = {"w": jnp.ones(dim)}
    n0 = steps._estimate_top._cache_size()
    for seed, safety in ((3, 0.5), (4, 1.0)):
      d, q = _orth_dirs(dim, 2, [8.0, 2.0], [1.0, 1.0], seed=seed)
      Ph = np.eye(dim) + (q * (np.sqrt(np.array([1 / 8, 1 / 2])) - 1)) @ q.T
      top = np.linalg.eigvalsh(Ph @ A @ Ph)[-1]
      eta, lam = steps.curvature_estimator(loss, d, iters=dim, safety=safety)(
          p, jnp.asarray(A))
      # iters = dim: Lanczos is exact up to float64 round-off
      assert float(lam) == pytest.approx(top, rel=1e-8)
      assert float(eta) == pytest.approx(safety / top, rel=1e-8)
    assert steps._estimate_top._cache_size() == n0 + 1


def test_default_step_is_inside_the_quadratic_edge():
  """On a quadratic ½wᵀAw, GD at the default measured step multiplies the top eigen-
  component by 1 − η λ_max = 1 − SAFETY: the default sits strictly inside the edge 2/λ̂
  (|1 − SAFETY| < 1) and the iterates contract (numpy, float64)."""
  with jax.enable_x64(True):
    dim = 8
    O, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((dim, dim)))
    lam = np.r_[6.0, np.linspace(0.5, 3.0, dim - 1)]
    A = (O * lam) @ O.T
    loss = lambda w, b: 0.5 * w @ (b @ w)
    w0 = O[:, 0] + 0.1 * O[:, 1]
    eta = steps.stable_learning_rate(loss_fn=loss, params=jnp.asarray(w0),
                                     batch=jnp.asarray(A), iters=dim)
    assert 0 < steps.SAFETY < 2
    w1 = w0 - eta * A @ w0
    # iters = dim: λ̂ = 6 up to float64 round-off
    assert O[:, 0] @ w1 == pytest.approx(1 - steps.SAFETY, rel=1e-8)
    w = w0
    for _ in range(50):
      w = w - eta * A @ w
    assert np.linalg.norm(w) < 0.1 * np.linalg.norm(w0)


def test_one_off_curvature_in_float32_matches_explicit_hessian_and_the_estimator():
  """The one-off path in float32 (HVP compiled at LLVM -O0, P^½ and the Lanczos basis on
  the host) on a small tanh network with cross-entropy: λ̂ against the explicit float64
  Hessian + numpy eigh of P^½HP^½ (iters = dim: Lanczos is exact up to float32 HVPs), and
  the jitted curvature_estimator (same start vector) at iters < dim."""
  kx, kw, kv = jax.random.split(jax.random.PRNGKey(3), 3)
  x = np.asarray(jax.random.normal(kx, (16, 3)), np.float32)
  y = np.arange(16) % 3
  w = np.asarray(jax.random.normal(kw, (12,)), np.float32)
  V = np.asarray(jax.random.normal(kv, (4, 3)), np.float32)

  def loss(pp, b):
    xx, yy = b
    logits = jnp.tanh(xx @ pp["w"].reshape(3, 4)) @ V
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yy))
  with jax.enable_x64(True):
    H = np.asarray(jax.hessian(lambda ww: loss({"w": ww}, (x.astype(np.float64), y)))(
        w.astype(np.float64)))
  d, q = _orth_dirs(12, 3, [9.0, 4.0, 2.0], [1.0, 1.0, 1.0], seed=4, dtype=jnp.float32)
  Ph = np.eye(12) + (q * (np.sqrt(np.array([1 / 9, 1 / 4, 1 / 2])) - 1)) @ q.T
  top = np.linalg.eigvalsh(Ph @ H @ Ph)[-1]
  p = {"w": jnp.asarray(w)}
  eta = steps.stable_learning_rate(d, loss_fn=loss, params=p, batch=(x, y), iters=12)
  # float32 HVPs and directions: relative error ~1e-6 of λ̂, margin ×100
  assert steps.SAFETY / eta == pytest.approx(top, rel=1e-4)
  lam_rule = steps.SAFETY / steps.stable_learning_rate(d, loss_fn=loss, params=p,
                                                       batch=(x, y), iters=5)
  lam_est = float(steps.curvature_estimator(loss, d, iters=5)(p, (x, y))[1])
  # same iteration, float32 on the device vs float64 basis on the host
  assert lam_rule == pytest.approx(lam_est, rel=1e-5)
