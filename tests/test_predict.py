import jax.numpy as jnp
import numpy as np
import pytest

import mskjax
from mskjax import modifiers
import oracles

GS = {"identity": modifiers.identity(), "flatten": modifiers.flatten(),
      "power0.5": modifiers.power(0.5), "reverse": modifiers.reverse()}


def circle_problem(n=24, m=10, freq=3, seed=0):
  rng = np.random.default_rng(seed)
  X = np.sort(rng.uniform(0, 2 * np.pi, n))
  x = rng.uniform(0, 2 * np.pi, m)
  K = oracles.circle_kernel(X, X)
  Kx = oracles.circle_kernel(x, X)
  y = np.stack([np.cos(freq * X), np.sin(X)], axis=1)
  return K, Kx, y


@pytest.mark.parametrize("name", sorted(GS))
def test_discrete_matches_explicit_matrix_power(name):
  g = GS[name]
  K, Kx, y = circle_problem()
  k = 5
  K_g, S = [np.asarray(a) for a in (mskjax.msk_gram(K, g, k), mskjax.preconditioner(K, g, k))]
  eta = 1.0 / np.linalg.eigvalsh(K_g).max()
  f0 = 0.1 * np.random.default_rng(1).standard_normal(y.shape)
  f0x = 0.1 * np.random.default_rng(2).standard_normal((Kx.shape[0], 2))
  ts = np.array([0, 1, 7, 50])
  p = mskjax.predict_gd_mse(K, y, g, k, ts, learning_rate=eta, K_test_train=Kx,
                            f0_train=f0, f0_test=f0x)
  assert p.train.shape == (4,) + y.shape and p.test.shape == (4, Kx.shape[0], 2)
  for i, t in enumerate(ts):
    # Oracle: r_t = (I − η K_g)^t r_0 by repeated multiplication; test f_t by summing the
    # kernel-GD updates f ← f − η k_g(x, X) r over t steps.
    r = f0 - y
    ftest = f0x.copy()
    for _ in range(int(t)):
      ftest = ftest - eta * (Kx @ S) @ r
      r = r - eta * K_g @ r
    np.testing.assert_allclose(p.train[i], y + oracles.matrix_power_residual(K_g, f0 - y, eta, t),
                               atol=1e-10)
    np.testing.assert_allclose(p.train[i] - y, r, atol=1e-10)
    np.testing.assert_allclose(p.test[i], ftest, atol=1e-9)


def test_identity_flow_matches_neural_tangents():
  from mskjax._nt import nt_predict
  K, Kx, y = circle_problem()
  f0 = 0.05 * np.ones_like(y)
  f0x = -0.05 * np.ones((Kx.shape[0], 2))
  ts = np.array([0.0, 0.3, 2.0, 15.0])
  ours = mskjax.predict_gd_mse(K, y, modifiers.identity(), 3, ts, flow=True, learning_rate=1.0,
                               K_test_train=Kx, f0_train=f0, f0_test=f0x)
  none = mskjax.predict_gd_mse(K, y, None, None, ts, flow=True, learning_rate=1.0,
                               K_test_train=Kx, f0_train=f0, f0_test=f0x)
  # neural-tangents uses ½(1/N)‖r‖²: learning_rate = N makes its time equal to ours at η = 1.
  fn = nt_predict.gradient_descent_mse(jnp.asarray(K), jnp.asarray(y), learning_rate=y.size)
  nt_train, nt_test = fn(ts, f0, f0x, Kx)
  np.testing.assert_allclose(ours.train, nt_train, atol=1e-9)
  np.testing.assert_allclose(ours.test, nt_test, atol=1e-9)
  np.testing.assert_allclose(none.test, nt_test, atol=1e-9)


@pytest.mark.parametrize("name", sorted(GS))
def test_msk_flow_matches_neural_tangents_with_modified_kernels(name):
  """K S as train kernel and k(x,X) S as test kernel make nt an exact oracle.

  docs/pitfalls.md#loss-normalisation-of-neural-tangents
  """
  from mskjax._nt import nt_predict
  g = GS[name]
  K, Kx, y = circle_problem(seed=3)
  S = np.asarray(mskjax.preconditioner(K, g, 5))
  ts = np.array([0.5, 4.0, 40.0])
  ours = mskjax.predict_gd_mse(K, y, g, 5, ts, flow=True, learning_rate=1.0, K_test_train=Kx)
  fn = nt_predict.gradient_descent_mse(jnp.asarray(K @ S), jnp.asarray(y), learning_rate=y.size)
  nt_train, nt_test = fn(ts, np.zeros_like(y), np.zeros((Kx.shape[0], 2)), Kx @ S)
  np.testing.assert_allclose(ours.train, nt_train, atol=1e-8)
  np.testing.assert_allclose(ours.test, nt_test, atol=1e-8)


@pytest.mark.parametrize("name", sorted(GS))
@pytest.mark.parametrize("discrete", [False, True])
def test_infinite_time_is_kernel_regression(name, discrete):
  g = GS[name]
  K, Kx, y = circle_problem(n=20, seed=4)
  eta = 0.5 * mskjax.steps.max_learning_rate(K, g, 5) if discrete else 1.0
  p = mskjax.predict_gd_mse(K, y, g, 5, jnp.inf, learning_rate=eta, flow=not discrete,
                            K_test_train=Kx)
  ref = Kx @ np.linalg.solve(K, y)  # the plain-GD solution, the same for every g
  np.testing.assert_allclose(p.test, ref, atol=1e-6 * np.abs(ref).max() * np.linalg.cond(K) ** 0.5)
  np.testing.assert_allclose(p.train, y, atol=1e-8)


@pytest.mark.parametrize("flow", [False, True])
def test_singular_kernel_uses_pseudo_inverse(flow):
  # Discrete GD too: at η = 1/λ_max the numerically-zero μ have 1 − ημ == 1.0 exactly, which
  # once read as "divergent" and gave NaN at t = ∞.
  rng = np.random.default_rng(0)
  A = rng.standard_normal((8, 3))
  K = A @ A.T  # rank 3
  y = rng.standard_normal(8)
  p = mskjax.predict_gd_mse(K, y, modifiers.flatten(), 1, np.array([5, np.inf]), flow=flow,
                            K_test_train=K)
  np.testing.assert_allclose(p.test[1], K @ np.linalg.pinv(K) @ y, atol=1e-8)
  assert np.all(np.isfinite(p.train))


def test_max_learning_rate_and_steps():
  K, _, y = circle_problem()
  lam = np.linalg.eigvalsh(K)[::-1]
  assert mskjax.steps.max_learning_rate(K) == pytest.approx(2 / lam[0], rel=1e-12)
  assert mskjax.steps.max_learning_rate(K, modifiers.flatten(), 5) == pytest.approx(2 / lam[5], rel=1e-12)
  # steps_to_tolerance against brute-force iteration of the explicit matrix.
  for g in (None, modifiers.flatten()):
    K_g = np.asarray(K if g is None else mskjax.msk_gram(K, g, 5))
    eta = 1 / np.linalg.eigvalsh(K_g).max()
    r, t = y[:, 0].copy(), 0
    while np.linalg.norm(r) >= 0.1 * np.linalg.norm(y[:, 0]):
      r, t = r - eta * K_g @ r, t + 1
    assert mskjax.steps_to_tolerance(K, y[:, 0], g, 5) == t


def test_eigenpairs_are_computed_once_and_there_is_no_hidden_cache(monkeypatch):
  # Sweeps evaluate one K for several targets, modifiers and time grids: eigenpairs= (or a
  # gradient_descent_mse closure) diagonalises once; without them every call diagonalises
  # (no module-level state), and all answers agree.
  from mskjax import spectrum as S
  K, _, y = circle_problem()
  K = jnp.asarray(K)
  calls = []
  real = S.eigh_desc
  monkeypatch.setattr(S, "eigh_desc", lambda A, **kw: calls.append(1) or real(A, **kw))
  fresh = [mskjax.steps_to_tolerance(K, y[:, 0], g, 5) for g in (None, modifiers.flatten())]
  assert len(calls) == 2                       # same K object, diagonalised again: no cache
  E = mskjax.eigh_desc(K)
  calls.clear()
  got = [mskjax.steps_to_tolerance(K, y[:, 0], g, 5, eigenpairs=E)
         for g in (None, modifiers.flatten())]
  assert got == fresh
  assert mskjax.steps.max_learning_rate(K, modifiers.flatten(), 5, eigenpairs=E) == pytest.approx(
      mskjax.steps.max_learning_rate(K, modifiers.flatten(), 5), rel=1e-12)
  calls.clear()
  predict_fn = mskjax.gradient_descent_mse(K, y, modifiers.flatten(), 5)
  a, b = predict_fn(np.array([0, 3])), predict_fn(np.array([7, 100]), f0_train=0.1 * y)
  c = mskjax.predict_gd_mse(K, y, modifiers.flatten(), 5, 3, eigenpairs=E)
  assert len(calls) == 1                       # the closure's one eigh; eigenpairs= none
  np.testing.assert_allclose(a.train[1], c.train, atol=1e-13)
  assert b.train.shape == (2,) + y.shape


@pytest.mark.parametrize("flow", [False, True])
def test_closure_matches_numpy_oracle_at_many_times(flow):
  # Oracle: numpy's eigh of K_g (float64) and the closed form r_t = U d_t(μ) Uᵀ r₀ with
  # d_t = (1 − ημ)^t or e^{−ηtμ}; test f_t(x) = f₀(x) + k(x,X) S U (1 − d_t)/μ Uᵀ (Y − f₀).
  g, k = modifiers.power(0.5), 4
  K, Kx, y = circle_problem(seed=7)
  K_g = np.asarray(mskjax.msk_gram(K, g, k))
  S = np.asarray(mskjax.preconditioner(K, g, k))
  mu, U = np.linalg.eigh(K_g)
  eta = 1.0 / mu.max()                          # learning_rate=None means 1/λ_max(K_g)
  f0 = 0.1 * np.random.default_rng(3).standard_normal(y.shape)
  predict_fn = mskjax.gradient_descent_mse(K, y, g, k, flow=flow)
  ts = np.array([0.0, 2.0, 9.0, 40.0])
  p = predict_fn(ts, f0_train=f0, K_test_train=Kx)
  for i, t in enumerate(ts):
    d = np.exp(-eta * t * mu) if flow else (1 - eta * mu) ** t
    r = U @ (d[:, None] * (U.T @ (f0 - y)))
    ftest = Kx @ S @ U @ (((1 - d) / mu)[:, None] * (U.T @ (y - f0)))
    np.testing.assert_allclose(p.train[i], y + r, atol=1e-10)   # float64 round-off, cond ~1e3
    np.testing.assert_allclose(p.test[i], ftest, atol=1e-9)


def test_eigenpairs_argument_is_checked():
  K, _, y = circle_problem(n=6, m=3)
  E = mskjax.eigh_desc(K)
  with pytest.raises(ValueError, match="full decomposition"):
    mskjax.predict_gd_mse(K, y, None, None, 1, eigenpairs=mskjax.Eigenpairs(E.values[:3],
                                                                            E.vectors[:, :3]))
  with pytest.raises(ValueError, match="descending"):
    mskjax.steps_to_tolerance(K, y, eigenpairs=mskjax.Eigenpairs(E.values[::-1], E.vectors))
  with pytest.raises(TypeError, match="Eigenpairs"):
    mskjax.steps.max_learning_rate(K, eigenpairs=np.eye(6))
  with pytest.raises(TypeError, match="`flow`"):
    mskjax.gradient_descent_mse(K, y, flow="yes")


@pytest.mark.parametrize("kwargs,match", [
    (dict(y_train=np.ones(5)), "rows"),
    (dict(K_test_train=np.ones((3, 7))), "K_test_train"),
    (dict(t=-1.0), "non-negative"),
    (dict(t=1.5, learning_rate=0.1), "integers"),
    (dict(t=1.5), "integers"),                           # None is η = 1/λ_max: discrete
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(f0_train=np.ones((6, 2))), "f0_train"),
    (dict(y_train=np.array([1.0, np.nan, 0, 0, 0, 0])), "NaN"),
    (dict(k=6), "1 <= k"),
    (dict(f0_train=np.array([0.0, np.nan, 0, 0, 0, 0])), "f0_train.*NaN"),
    (dict(K_test_train=np.ones((3, 6)), f0_test=np.array([0.0, np.inf, 0])), "f0_test.*NaN"),
    (dict(K_test_train=np.full((3, 6), np.nan)), "K_test_train.*NaN"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(f0_test=np.zeros(3)), "without `K_test_train`"),
])
def test_bad_inputs(kwargs, match):
  K, Kx, y = circle_problem(n=6, m=3)
  args = dict(K_train=K, y_train=y[:, 0], g=modifiers.flatten(), k=2, t=1.0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    mskjax.predict_gd_mse(args.pop("K_train"), args.pop("y_train"), args.pop("g"),
                          args.pop("k"), args.pop("t"), **args)


# ------------------------------------------------------------------ reliability (issue 13)
import jax  # noqa: E402


def test_indefinite_kernel_is_rejected():
  # diag(1, −5): literal GD diverges (−56.7 at t = 5) but the clamped spectrum predicted 0;
  # max_learning_rate returned 2 where no stable step exists.
  K, y = np.diag([1.0, -5.0]), np.array([1.0, 1.0])
  with pytest.raises(ValueError, match="not positive semi-definite"):
    mskjax.predict_gd_mse(K, y, None, None, 5, learning_rate=0.5)
  with pytest.raises(ValueError, match="not positive semi-definite"):
    mskjax.steps.max_learning_rate(K)
  with pytest.raises(ValueError, match="not positive semi-definite"):
    mskjax.steps_to_tolerance(K, y)


@pytest.mark.parametrize("factor", [2.0, 2.5, 10.0])
def test_infinite_time_with_a_divergent_step_raises(factor):
  K, _, y = circle_problem()
  lam_max = np.linalg.eigvalsh(K).max()
  with pytest.raises(ValueError, match="diverges"):
    mskjax.predict_gd_mse(K, y, None, None, np.inf, learning_rate=factor / lam_max)
  # A convergent step still gives the interpolant.
  p = mskjax.predict_gd_mse(K, y, None, None, np.inf, learning_rate=1.9 / lam_max)
  np.testing.assert_allclose(p.train, y, atol=1e-8)


def test_gradient_flow_is_exact_and_monotone_at_huge_times():
  # μ₂ = 1e-17 λ₁ is below n·eps·λ₁; at t·μ₂ ~ 1 the flow learns that direction as
  # 1 − e^{−tμ₂}. The old gain (t for "tiny" μ) gave t·μ₂ (30 instead of 1 at t = 3e18).
  K, y = np.diag([1.0, 1e-17]), np.array([1.0, 1.0])
  ts = np.array([1e15, 1e16, 1e17, 3e17, 1e18, 3e18, 1e19])
  p = mskjax.predict_gd_mse(K, y, None, None, ts, flow=True, learning_rate=1.0)
  want = 1.0 - np.exp(-ts * 1e-17)                  # exact closed form, component 2
  np.testing.assert_allclose(p.train[:, 1], want, rtol=1e-12)
  assert np.all(np.diff(p.train[:, 1]) > 0) and np.all(p.train[:, 1] <= 1.0)
  np.testing.assert_allclose(p.train[:, 0], 1.0, rtol=1e-15)


@pytest.mark.parametrize("edge", [1.0, 1.0 + 1e-7, 1.0 + 1e-3, 1.5])
def test_discrete_gd_is_exact_at_and_past_the_stability_edge(edge):
  # η·λ_max = 1 (the README step), rounding just past it, and further (still < 2).
  K, _, y = circle_problem()
  lam_max = np.linalg.eigvalsh(K).max()
  eta = edge / lam_max
  ts = np.array([0, 1, 2, 3, 10, 31])
  p = mskjax.predict_gd_mse(K, y, None, None, ts, learning_rate=eta)
  r = -y.copy()
  for i in range(32):                               # literal iteration r ← (I − ηK) r
    if i in ts:
      np.testing.assert_allclose(p.train[list(ts).index(i)], y + r, atol=1e-10)
    r = r - eta * K @ r


def _readme_example_2():
  from mskjax import data, kernels, nets
  net = nets.make_network(nets.MLPSpec(depth=1, width=4096), antisymmetric=True)
  x, theta = data.circle(64)
  y = data.fourier_target(theta, 1) + data.fourier_target(theta, 4)
  K = kernels.gram(net.kernel_fn, x)
  return K, y


def test_float32_predictions_match_float64_on_the_readme_example():
  # README example 2 with x64 off: η = 1/spectrum.max_value puts η·g at 1, which rounds to
  # 1 ± 1e-7 in float32; the old gain formula returned predictions off by 1.0 (50 %).
  g, k, ts = modifiers.flatten(), 3, np.array([10, 100])
  with jax.enable_x64(False):
    K, y = _readme_example_2()
    assert K.dtype == jnp.float32
    spectrum = mskjax.msk_spectrum(K, g, k)
    eta = 1.0 / float(spectrum.max_value)
    pred = mskjax.predict_gd_mse(K, y, g, k, jnp.array(ts), learning_rate=eta)
  assert pred.train.dtype == jnp.float32
  # Oracle: float64 literal GD with K_g from numpy's eigh of the same float32 K, same η.
  Kn, yn = np.asarray(K, np.float64), np.asarray(y, np.float64)
  w, U = np.linalg.eigh(Kn)
  w, U = w[::-1], U[:, ::-1]
  mu = w.copy()
  mu[:k] = w[k]
  K_g = (U * mu) @ U.T
  f = np.zeros_like(yn)
  for t in range(1, ts.max() + 1):
    f = f - eta * K_g @ (f - yn)
    if t in ts:
      # 1e-3 (issue 10): float32 storage of the output (~1e-7) plus the float32 K itself.
      np.testing.assert_allclose(np.asarray(pred.train[list(ts).index(t)]), f, atol=1e-3)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(y=np.ones(48)), ValueError, "rows"),               # was reshaped to (24, 2)
    (dict(y=np.r_[np.nan, np.ones(23)]), ValueError, "NaN"),
    (dict(tol=float("nan")), ValueError, "`tol`"),
    (dict(tol=-0.1), ValueError, "`tol`"),
    (dict(tol=0.0), ValueError, "`tol`"),
    (dict(learning_rate=float("nan")), ValueError, "`learning_rate`"),
    (dict(learning_rate=-1.0), ValueError, "`learning_rate`"),
    (dict(max_steps=-5), ValueError, "`max_steps`"),
    (dict(max_steps=2.5), TypeError, "`max_steps`"),
    (dict(learning_rate=0.08), ValueError, "unstable"),      # > 2/λ_max ≈ 0.0747 here
    (dict(y=np.zeros(24)), ValueError, "zero"),
])
def test_steps_to_tolerance_validates(kwargs, err, match):
  K, _, y = circle_problem()
  args = dict(K=K, y=y[:, 0])
  args.update(kwargs)
  with pytest.raises(err, match=match):
    mskjax.steps_to_tolerance(args.pop("K"), args.pop("y"), **args)


def test_zero_kernel_is_a_clear_error():
  with pytest.raises(ValueError, match="is zero"):
    mskjax.steps_to_tolerance(np.zeros((3, 3)), np.ones(3))
  with pytest.raises(ValueError, match="is zero"):
    mskjax.steps.max_learning_rate(np.zeros((3, 3)))


def test_jitted_float32_pipeline_stays_float32_and_exact():
  # A float32 user program (x64 off) that jits over y with K closed over: the finiteness
  # checks used to raise TracerBoolConversionError on the constant K.
  with jax.enable_x64(False):
    K = jnp.asarray(np.diag([2.0, 1.0, 0.5]), jnp.float32)
    f = jax.jit(lambda y: mskjax.predict_gd_mse(K, y, None, None, 5.0, learning_rate=0.3).train)
    out = f(jnp.ones(3, jnp.float32))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), 1 - (1 - 0.3 * np.array([2.0, 1.0, 0.5])) ** 5,
                             rtol=1e-6)       # float32 output rounding


def test_closure_built_eagerly_can_be_jitted_over_t_in_float32():
  # NT pattern: build once outside jit (float64 eigh inside), evaluate t inside a float32 jit.
  with jax.enable_x64(False):
    K = jnp.asarray(np.diag([2.0, 1.0, 0.5]), jnp.float32)
    predict_fn = mskjax.gradient_descent_mse(K, jnp.ones(3, jnp.float32), learning_rate=0.3)
    out = jax.jit(lambda t: predict_fn(t).train)(jnp.float32(5))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), 1 - (1 - 0.3 * np.array([2.0, 1.0, 0.5])) ** 5,
                             rtol=1e-6)       # float32 output rounding
