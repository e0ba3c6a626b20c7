"""Kernel diagnostics: metric identities, the deep-linear silent-alignment oracle, recorder,
kernel regression, data tools, and configs/silent_alignment.py (helpers and resume; the
real quick variant is the slow test)."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import random_psd
from mskjax import data as D
from mskjax import diagnostics as diag
from mskjax import function_space
from mskjax import train as T
from mskjax import recorder
from mskjax.tangents import empirical_ntk
from mskjax.nets import FlaxMLP, MLPSpec
from mskjax.run import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- metric identities

def test_alignment_of_yyT_is_one(rng):
  y = rng.standard_normal(17)
  # closed form: <yy^T, yy^T> / (||yy^T|| ||y||^2) = ||y||^4 / ||y||^4; round-off only.
  assert abs(float(diag.kernel_alignment(np.outer(y, y), y)) - 1) < 1e-12
  Y = rng.standard_normal((17, 3))  # multi-output convention: cos(K, Y Y^T)
  assert abs(float(diag.kernel_alignment(Y @ Y.T, Y)) - 1) < 1e-12
  assert abs(float(diag.kernel_alignment(np.outer(y, y), y, centered=True)) - 1) < 1e-12


def test_alignment_matches_formula(rng):
  K, y = random_psd(12, seed=3), rng.standard_normal(12)
  want = y @ K @ y / (np.linalg.norm(K) * (y @ y))  # the paper's definition, in numpy
  assert abs(float(diag.kernel_alignment(K, y)) - want) < 1e-12
  H = np.eye(12) - 1 / 12
  yc = H @ y
  want_c = yc @ (H @ K @ H) @ yc / (np.linalg.norm(H @ K @ H) * (yc @ yc))
  assert abs(float(diag.kernel_alignment(K, y, centered=True)) - want_c) < 1e-12
  assert abs(float(diag.kernel_alignment(np.eye(12), y)) - 1 / np.sqrt(12)) < 1e-12


def test_cosine_self_is_one_and_scale_invariant():
  K1, K2 = random_psd(10, seed=1), random_psd(10, seed=2)
  assert abs(float(diag.kernel_cosine(K1, K1)) - 1) < 1e-12
  assert abs(float(diag.kernel_cosine(K1, 7.5 * K1, centered=True)) - 1) < 1e-12
  c = float(diag.kernel_cosine(K1, K2))
  assert abs(float(diag.kernel_cosine(3 * K1, 0.01 * K2)) - c) < 1e-12
  assert abs(c - np.sum(K1 * K2) / np.linalg.norm(K1) / np.linalg.norm(K2)) < 1e-12


def test_effective_rank_identity_and_rank_one(rng):
  for n in (1, 40):
    assert abs(float(diag.effective_rank(np.eye(n))) - n) < 1e-9
    assert abs(float(diag.effective_rank(np.eye(n), "participation")) - n) < 1e-9
  v = rng.standard_normal(8)
  assert abs(float(diag.effective_rank(np.outer(v, v))) - 1) < 1e-6
  # participation ratio of eigenvalues (2, 1, 1): 16 / 6
  assert abs(float(diag.effective_rank(jnp.array([2.0, 1.0, 1.0]), "participation")) - 8 / 3) \
      < 1e-12


def test_overlap_and_energy():
  K = np.diag([5.0, 4.0, 3.0, 2.0, 1.0])
  K2 = np.diag([4.0, 5.0, 1.0, 2.0, 3.0])
  assert abs(float(diag.topk_overlap(K, K2, 2)) - 1) < 1e-12   # same top-2 span
  assert abs(float(diag.topk_overlap(K, K2, 3)) - 2 / 3) < 1e-12
  y = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
  assert abs(float(diag.target_energy(K, y, 2)) - 0.5) < 1e-12


def test_metrics_are_jittable():
  K = jnp.asarray(random_psd(6, seed=4))
  y = jnp.arange(6.0)
  f = jax.jit(lambda K, y: (diag.kernel_alignment(K, y, True), diag.kernel_cosine(K, K @ K),
                            diag.effective_rank(K), diag.target_energy(K, y, 2)))
  a, c, r, e = (float(o) for o in f(K, y))
  # numpy oracles (the definitions of the tests above), under jit: no Python control flow
  # on traced values inside the metrics
  Kn, yn = np.asarray(K), np.asarray(y)
  H = np.eye(6) - 1 / 6
  yc, Kc = H @ yn, H @ Kn @ H
  assert abs(a - yc @ Kc @ yc / (np.linalg.norm(Kc) * (yc @ yc))) < 1e-12
  K2 = Kn @ Kn
  assert abs(c - np.sum(Kn * K2) / (np.linalg.norm(Kn) * np.linalg.norm(K2))) < 1e-12
  lam, vec = np.linalg.eigh(Kn)
  p = lam / lam.sum()
  assert abs(r - np.exp(-np.sum(p * np.log(p)))) < 1e-9      # entropy effective rank
  top2 = vec[:, -2:]
  assert abs(e - np.sum((top2.T @ yn) ** 2) / (yn @ yn)) < 1e-12


def test_metric_errors_name_argument():
  with pytest.raises(ValueError, match="`K`"):
    diag.kernel_alignment(np.ones((3, 2)), np.ones(3))
  with pytest.raises(ValueError, match="`y`"):
    diag.kernel_alignment(np.eye(3), np.ones(4))
  with pytest.raises(ValueError, match="`K1` and `K2`"):
    diag.kernel_cosine(np.eye(3), np.eye(4))
  with pytest.raises(ValueError, match="`kind`"):
    diag.effective_rank(np.eye(3), "von-neumann")
  with pytest.raises(ValueError, match="`ridge`"):
    diag.kernel_regression(np.eye(2), np.eye(2), np.ones(2), ridge=-1.0)


# ------------------------------------------------------------------ empirical NTK

@pytest.mark.parametrize("implementation", ["jacobian", "jvp"])
@pytest.mark.parametrize("full", [False, True])
def test_weighted_empirical_ntk_matches_explicit_jacobian(implementation, full):
  # weights= on the one empirical NTK: J W Jᵀ (full) or its output trace /c, against an
  # independent flattened Jacobian (jacrev of the raveled parameters) in numpy.
  spec = MLPSpec(depth=2, width=16, activation="relu", b_std=0.1, out_dim=2)
  model = FlaxMLP(spec)
  x = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
  xt = jax.random.normal(jax.random.PRNGKey(2), (4, 3))
  params = model.init(jax.random.PRNGKey(0), x)
  w = jax.tree_util.tree_map(lambda p: jnp.abs(jnp.sin(jnp.arange(p.size) + 1.0))
                             .reshape(p.shape), params)
  w = jax.tree_util.tree_map(lambda a: a.at[..., 0].set(0.0), w)   # W = 0 entries are exact
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  jac = lambda a: np.asarray(jax.jacrev(lambda v: model.apply(unravel(v), a))(flat))  # (n,c,P)
  d = np.asarray(jax.flatten_util.ravel_pytree(w)[0])
  J1, J2 = jac(xt), jac(x)
  want = (np.einsum("ikp,p,jlp->ikjl", J1, d, J2).reshape(4 * 2, 7 * 2) if full
          else np.einsum("ikp,p,jkp->ij", J1, d, J2) / 2)
  for weights in (w, w["params"]):        # like the variables or like their 'params'
    got = np.asarray(empirical_ntk(model.apply, params, xt, x, weights=weights, full=full,
                                   implementation=implementation))
    assert np.max(np.abs(got - want)) < 1e-10 * np.max(np.abs(want))  # float64 round-off
  sym = np.asarray(empirical_ntk(model.apply, params, x, weights=w,
                                 implementation=implementation))
  np.testing.assert_allclose(sym, np.einsum("ikp,p,jkp->ij", J2, d, J2) / 2,
                             atol=1e-10 * np.abs(sym).max())


def test_weighted_empirical_ntk_rejects_bad_weights():
  f = lambda p, x: x @ p["w"]
  p = {"w": jnp.zeros((2, 1))}
  x = jnp.eye(2)
  with pytest.raises(ValueError, match="structure"):
    empirical_ntk(f, p, x, weights={"v": jnp.ones((2, 1))})
  with pytest.raises(ValueError, match="shape"):
    empirical_ntk(f, p, x, weights={"w": jnp.ones(2)})
  with pytest.raises(ValueError, match="non-negative"):
    empirical_ntk(f, p, x, weights={"w": -jnp.ones((2, 1))})
  with pytest.raises(ValueError, match="implementation"):
    empirical_ntk(f, p, x, weights=p, implementation=1)


def test_adam_weights_follow_second_moment():
  p = {"w": jnp.ones(3)}
  opt = optax.adam(0.01, b2=0.9)
  s = opt.init(p)
  g = {"w": jnp.array([1.0, 2.0, 4.0])}
  _, s = opt.update(g, s, p)            # count = 1, nu = (1 - b2) g^2, v_hat = g^2
  w = function_space.adam_kernel_weights(0.01, b2=0.9)(p, s, g)["w"]
  np.testing.assert_allclose(np.asarray(w), 0.01 / (np.array([1.0, 2.0, 4.0]) + 1e-8),
                             rtol=1e-12)


# ---------------------------------------------------------------- kernel regression

def test_kernel_regression_matches_numpy(rng):
  K_all = random_psd(9, seed=7)
  K, Kx = K_all[:6, :6], K_all[6:, :6]
  y, f0, f0x = rng.standard_normal((6, 2)), rng.standard_normal((6, 2)), rng.standard_normal((3, 2))
  ridge = 1e-3
  delta = ridge * np.trace(K) / 6
  want = f0x + Kx @ np.linalg.solve(K + delta * np.eye(6), y - f0)
  got = diag.kernel_regression(K, Kx, y, f0_train=f0, f0_test=f0x, ridge=ridge)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-12)
  # ridge 0 interpolates the training set
  got_tr = diag.kernel_regression(K, K, y, f0_train=f0, f0_test=f0, ridge=0.0)
  np.testing.assert_allclose(np.asarray(got_tr), y, atol=1e-8)


# ----------------------------------------------------------------------- data tools

def test_partial_whitening_spectrum_and_rank_deficiency(rng):
  lam = np.array([9.0, 4.0, 1.0, 0.0])                 # rank 3 inputs in R^4
  Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
  x = rng.standard_normal((400, 4)) * np.sqrt(lam) @ Q.T
  xt = rng.standard_normal((50, 4)) * np.sqrt(lam) @ Q.T
  for gamma in (0.0, 0.5, 1.0):
    w = D.fit_whitening(x, gamma)
    z = np.asarray(D.apply_whitening(w, x))
    emp = np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1][:3]
    got = np.linalg.eigvalsh(z.T @ z / 400)[::-1]
    # closed form: eigenvalues lambda -> lambda^gamma, null direction stays 0
    np.testing.assert_allclose(got[:3], emp ** gamma, rtol=1e-8)
    assert abs(got[3]) < 1e-8
    assert np.all(np.isfinite(np.asarray(D.apply_whitening(w, xt))))
  zt_a = np.asarray(D.whiten(x, xt, 0.0)[1])
  zt_b = np.asarray(D.apply_whitening(D.fit_whitening(x, 0.0), xt))  # fit on train only
  np.testing.assert_allclose(zt_a, zt_b)


def test_whitened_teacher_is_exact():
  ds, beta = D.whitened_linear_teacher(40, 12, 7, key=jax.random.PRNGKey(3), n_test=5)
  x = np.asarray(ds.x_train)
  C = x.T @ x / 40
  np.testing.assert_allclose(C @ C, C, atol=1e-12)        # a projection ...
  assert abs(np.trace(C) - 7) < 1e-10                     # ... of rank 7
  np.testing.assert_allclose(np.asarray(ds.y_train)[:, 0], x @ np.asarray(beta), atol=1e-12)


def test_power_law_gaussian_spectrum():
  ds, _ = D.power_law_gaussian(20000, 5, 2.0, key=jax.random.PRNGKey(0))
  lam = np.arange(1, 6) ** -2.0
  lam = lam * 5 / lam.sum()
  got = np.var(np.asarray(ds.x_train), axis=0)
  np.testing.assert_allclose(got, lam, rtol=0.05)  # 20000 samples: ~1 % sampling error


# ---------------------------------------------------- exact deep-linear oracle

def _deep_linear_run(L, r, sigma, steps, width=64, d=40, n=60, seed=0):
  ds, _ = D.whitened_linear_teacher(n, d, r, key=jax.random.PRNGKey(seed))
  spec = MLPSpec(depth=L - 1, width=width, activation="linear", b_std=None,
                 parameterization="standard", init_scale=sigma)
  model = FlaxMLP(spec)
  params = model.init(jax.random.PRNGKey(seed + 1), ds.x_train)
  mse = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
  # (1/n)-normalised loss: linearised rate eta * lambda_max(K_inf)/n = eta * L |beta|^(2-2/L)
  # with |beta| = 1 at convergence, so eta = 0.5/L is stable.
  rec = recorder.record_kernel_training(model.apply, params, optax.sgd(0.5 / L), mse, ds.x_train,
                                    ds.y_train, num_steps=steps, num_records=12)
  return rec


@pytest.mark.parametrize("L, r, sigma, steps", [(2, 30, 1e-3, 1500), (3, 30, 1e-2, 1500)])
def test_deep_linear_final_alignment_oracle(L, r, sigma, steps):
  """A_inf = L / sqrt(L^2 - 1 + r), A_0 ~ 1/sqrt(r) (Atanasov, Bordelon & Pehlevan 2022).

  Derivation: from small init, gradient descent on whitened data (X^T X = n P_r) and a
  linear teacher y = X beta ends balanced and rank one, W_l = s u_{l+1} u_l^T with
  u_1 = beta/|beta|. Layer 1 contributes |W_L..W_2|^2 x^T x' = s^(2L-2) x^T x', each of the
  L-1 other layers s^(2L-2) (u_1^T x)(u_1^T x'), so on the training set
  K_inf ∝ X X^T + (L-1) y y^T / |beta|^2 ∝ P + (L-1) yh yh^T (P: rank-r projection, yh = y/|y|
  in its range). Then yh^T K yh = L and ||K||_F^2 = L^2 + (r - 1).
  At init (width >> 1) K_0 ∝ X X^T ∝ P: A_0 = 1/sqrt(r).
  """
  rec = _deep_linear_run(L, r, sigma, steps)
  want = L / np.sqrt(L ** 2 - 1 + r)
  assert rec.loss_curve[-1] < 1e-20 * rec.loss_curve[0]     # trained to convergence
  # 1e-3: residual unbalanced init ~ sigma^2 relative, float64 otherwise exact
  assert abs(rec.alignment[-1] - want) < 1e-3, (rec.alignment[-1], want)
  # width 64: K_0 = P + O(1/sqrt(width)) fluctuations -> 25 % relative tolerance on A_0
  assert abs(rec.alignment[0] * np.sqrt(r) - 1) < 0.25, rec.alignment[0] * np.sqrt(r)
  assert rec.cos_final[-1] == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------ recorder

def _small_problem():
  ds, _ = D.whitened_linear_teacher(24, 6, key=jax.random.PRNGKey(5), n_test=10)
  model = FlaxMLP(MLPSpec(depth=1, width=32, activation="relu", b_std=None,
                          parameterization="standard", init_scale=0.1))
  params = model.init(jax.random.PRNGKey(0), ds.x_train)
  mse = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
  return ds, model, params, mse


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_recorder_with_optax(opt_name):
  ds, model, params, mse = _small_problem()
  opt = optax.sgd(0.5) if opt_name == "sgd" else optax.adam(1e-2)
  wfn = function_space.adam_kernel_weights(1e-2) if opt_name == "adam" else None
  rec = recorder.record_kernel_training(model.apply, params, opt, mse, ds.x_train, ds.y_train,
                                    num_steps=200, num_records=6, x_test=ds.x_test,
                                    kernel_weights_fn=wfn, top_k=5, energy_k=2)
  assert rec.steps[0] == 0 and rec.steps[-1] == 200
  assert rec.vectors.shape == (len(rec.steps), 24, 5)      # only top-k stored
  assert rec.loss_curve.shape == (201,) and rec.loss_curve[-1] < rec.loss_curve[0]
  # independent check of the last record: train separately with plain optax
  @jax.jit
  def step(p, s):
    g = jax.grad(lambda q: mse(model.apply(q, ds.x_train), ds.y_train))(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, g

  p, s = params, opt.init(params)
  for _ in range(200):
    p, s, _ = step(p, s)
  g = jax.grad(lambda q: mse(model.apply(q, ds.x_train), ds.y_train))(p)
  np.testing.assert_allclose(np.asarray(model.apply(p, ds.x_test)), rec.f_test, rtol=1e-8,
                             atol=1e-10)
  w = None if wfn is None else wfn(p, s, g)
  K = np.asarray(empirical_ntk(model.apply, p, ds.x_train, weights=w))
  assert abs(rec.alignment[-1] - float(diag.kernel_alignment(K, ds.y_train))) < 1e-8
  assert abs(rec.norm[-1] - np.linalg.norm(K)) < 1e-8 * np.linalg.norm(K)
  # cos_final with truncated eigenpairs respects its stated error bound
  g0 = jax.grad(lambda q: mse(model.apply(q, ds.x_train), ds.y_train))(params)
  w0 = None if wfn is None else wfn(params, opt.init(params), g0)
  K0 = np.asarray(empirical_ntk(model.apply, params, ds.x_train, weights=w0))
  exact = float(diag.kernel_cosine(K0, K))
  assert abs(rec.cos_final[0] - exact) <= rec.cos_final_err[0] + 1e-9
  assert rec.kr_distance.shape == rec.steps.shape
  assert rec.kr_distance[-1] < 1.0


def test_recorder_is_an_evaluation_hook_of_fit(monkeypatch):
  # The recorder trains through the one loop: one fit call, evaluated exactly at the
  # recorded steps, and the same parameters as fit run directly with the same loss.
  ds, model, params, mse = _small_problem()
  opt = optax.sgd(0.3)
  calls = []
  real_fit = T.fit
  monkeypatch.setattr(T, "fit", lambda *a, **k: calls.append(k) or real_fit(*a, **k))
  rec = recorder.record_kernel_training(model.apply, params, opt, mse, ds.x_train, ds.y_train,
                                 num_steps=30, record_steps=[5, 12])
  assert len(calls) == 1 and calls[0]["eval_steps"] == [0, 5, 12, 30]
  assert rec.steps.tolist() == [0, 5, 12, 30]
  direct = real_fit(lambda p, b, idx: mse(model.apply(p, b[0]), b[1]), params, opt,
                    (ds.x_train, ds.y_train), steps=30)
  for a, b in zip(jax.tree_util.tree_leaves(direct.state.params),
                  jax.tree_util.tree_leaves(rec.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # same loop, same floats
  np.testing.assert_allclose(rec.loss_curve[:-1], np.asarray(direct.records["loss"]),
                             rtol=1e-12)


def test_recorder_errors():
  ds, model, params, mse = _small_problem()
  with pytest.raises(TypeError, match="`optimizer`"):
    recorder.record_kernel_training(model.apply, params, "sgd", mse, ds.x_train, ds.y_train,
                                num_steps=3)
  with pytest.raises(ValueError, match="`num_steps`"):
    recorder.record_kernel_training(model.apply, params, optax.sgd(0.1), mse, ds.x_train,
                                ds.y_train, num_steps=0)
  with pytest.raises(ValueError, match="`top_k`"):
    recorder.record_kernel_training(model.apply, params, optax.sgd(0.1), mse, ds.x_train,
                                ds.y_train, num_steps=3, top_k=100)


# ----------------------------------- mskjax/experiments/silent_alignment.py (program)

def _load_config():
  from mskjax.experiments import silent_alignment
  return silent_alignment


def test_silent_alignment_config_helpers():
  mod = _load_config()
  assert "python -m mskjax.run configs/silent_alignment.py:quick" in mod.__doc__
  # linear interpolation of the first crossing: 0.2 -> 0.6 between steps 10 and 20
  assert mod.first_crossing([0, 10, 20], [0.0, 0.2, 0.6], 0.4) == pytest.approx(15.0)
  assert np.isnan(mod.first_crossing([0, 1], [0.0, 0.1], 0.5))
  # norm reaches 10 % of the last one half-way between steps 0 and 2; cos interpolated there
  t, cos = mod.at_norm_fraction([0, 2, 4], [0.0, 0.2, 1.0], [0.5, 0.7, 1.0])
  assert t == pytest.approx(1.0) and cos == pytest.approx(0.6)
  assert mod.t_half([4.0, 3.0, 2.0, 1.0]) == 2.0 and np.isnan(mod.t_half([1.0, 1.0]))
  # the runner stores non-finite floats as strings: read back as floats
  assert np.isnan(mod.float_array(["nan", 1.0])[0]) and mod.float_array(["inf"])[0] == np.inf


def _fake_record(apply_fn, params, optimizer, loss_fn, x, y, *, num_steps, record_steps=None,
                 num_records=30, x_test=None, **kw):
  """A cheap, deterministic stand-in for record_kernel_training (no training, no kernel)."""
  steps = np.unique(np.concatenate([[0], np.asarray(list(record_steps or range(0, num_steps + 1,
                                                    max(1, num_steps // num_records)))),
                                    [num_steps]]))
  s = steps / num_steps
  z = np.zeros_like(s)
  return recorder.KernelRecord(
      steps=steps, loss_curve=np.exp(-np.arange(num_steps + 1) / 10.0), norm=1e-6 + s ** 2,
      trace=z, alignment=0.1 + 0.3 * s, alignment_centered=z, cos_init=z,
      cos_final=0.5 + 0.5 * s, cos_final_err=z, overlap_final=z, eff_rank=z, eff_rank_pr=z,
      energy=z, values=None, vectors=None, kr_test=None,
      kr_distance=None if x_test is None else 1.0 - 0.9 * s, f_test=None, f0_test=None,
      params=params, opt_state=None)


def test_silent_alignment_config_resumes(tmp_path, monkeypatch):
  """Every expensive unit goes through ctx.cached: a rerun with the same run directory
  computes nothing and writes the same table (the training is faked: this checks the
  bookkeeping; the numbers are checked by the slow test and the CI smoke run)."""
  from mskjax.run import RunContext as _RunContext

  class RunContext(_RunContext):   # skip the PNG rendering (the slow part of a faked run)
    def savefig(self, fig, name):
      import matplotlib.pyplot as plt
      plt.close(fig)
      self.figures.append(self.out_dir / f"{name}.png")

  mod = _load_config()
  cfg = load_config("configs/silent_alignment.py")
  cfg.update(dict(n=16, d=6, rank=6, width=8, sigmas=(1e-2, 1e-4), steps=20, num_records=5,
                  alphas=(2.0,), steps_aniso=20, aniso_records=5, digits_n_train=20,
                  digits_n_test=10, digits_width=8, digits_steps=20, digits_records=3,
                  digits_gammas=(0.0,), adam_steps=20, adam_records=5, pgd_ks=(2,)))
  monkeypatch.setattr(recorder, "record_kernel_training", _fake_record)
  ctx = RunContext(tmp_path, cfg, show_progress=False)
  rows = mod.run(cfg, ctx)
  keys = [json.loads(line)["key"] for line in (tmp_path / "metrics.jsonl").read_text()
          .splitlines()]
  assert len(keys) == len(set(keys)) == 2 + 1 + 1 + 1 + 3   # σ's, α, γ, Adam, 3 PGD
  assert {r["claim"] for r in rows} == {"a", "b", "c", "d", "e"}
  assert {p.name for p in ctx.figures} == {
      "alignment_vs_sigma.png", "cos_vs_norm.png", "regression_gap.png", "pgd_alignment.png"}
  table = (tmp_path / "results.csv").read_text()

  def boom(*a, **k):
    raise AssertionError("a resumed run must not train again")

  monkeypatch.setattr(recorder, "record_kernel_training", boom)
  ctx2 = RunContext(tmp_path, cfg, show_progress=False)
  assert ctx2.resumed == len(keys)
  mod.run(cfg, ctx2)
  assert (tmp_path / "results.csv").read_text() == table


@pytest.mark.slow
def test_silent_alignment_quick_config(tmp_path):
  """The real quick variant (what CI smoke-runs, here with its numbers checked)."""
  from mskjax.run import RunContext
  mod = _load_config()
  cfg = load_config("configs/silent_alignment.py:quick")
  rows = mod.run(cfg, RunContext(tmp_path, cfg, show_progress=False))
  a = [r for r in rows if r["claim"] == "a" and r["setting"] != "fit over sigma"]
  assert max(r["t_align"] for r in a) - min(r["t_align"] for r in a) < 2   # σ-independent
  assert all(abs(r["A_final"] - r["A_oracle"]) < 1e-3 for r in a)
  c = [r for r in rows if r["claim"] == "c"][0]
  assert c["ratio"] > 2   # final-NTK regression several times closer than initial-NTK
  e = {r["setting"].split(" (")[0]: r for r in rows if r["claim"] == "e"}
  assert np.isfinite(float(e["PGD fixed K0"]["diverged_at"]))      # stale spectrum blows up
  for name in ("PGD refresh every 1", "S-loss fixed K0"):
    assert np.isnan(float(e[name]["diverged_at"]))
    assert abs(e[name]["A_final"] - e[name]["A_oracle"]) < 1e-3


# ------------------------------------------------------------------ reliability (issue 13)
@pytest.mark.parametrize("which", ["K_train", "K_test_train", "y", "f0_train", "f0_test"])
def test_kernel_regression_rejects_nan_in_every_input(which):
  K = random_psd(5)
  args = dict(K_train=K, K_test_train=K[:3], y=np.ones(5), f0_train=np.zeros((5, 1)),
              f0_test=np.zeros((3, 1)))
  bad = np.array(args[which], dtype=float)
  bad.flat[1] = np.nan
  if which == "K_train":
    bad.T.flat[1] = np.nan      # keep it symmetric: NaN is what must be caught
  args[which] = bad
  with pytest.raises(ValueError, match=f"`{which}`.*NaN"):
    diag.kernel_regression(args.pop("K_train"), args.pop("K_test_train"), args.pop("y"),
                           **args)


def test_kernel_regression_singular_without_ridge_is_an_error():
  # ridge=0 on a rank-1 K used to return inf/NaN silently.
  v = np.array([1.0, 2.0, 3.0])
  K = np.outer(v, v)
  with pytest.raises(ValueError, match="singular"):
    diag.kernel_regression(K, K, np.array([1.0, 0.0, 0.0]), ridge=0.0)
  # With a ridge it is solvable and matches numpy.
  out = diag.kernel_regression(K, K, np.array([1.0, 0.0, 0.0]), ridge=1e-3)
  delta = 1e-3 * np.trace(K) / 3
  want = K @ np.linalg.solve(K + delta * np.eye(3), np.array([1.0, 0.0, 0.0]))
  np.testing.assert_allclose(np.asarray(out).ravel(), want, rtol=1e-10)
  for ridge in (float("nan"), -1.0, True):
    with pytest.raises(ValueError, match="`ridge`"):
      diag.kernel_regression(K, K, np.ones(3), ridge=ridge)


@pytest.mark.parametrize("call,match", [
    (lambda: diag.kernel_alignment(random_psd(4), np.r_[np.nan, 1, 1, 1]), "`y`.*NaN"),
    (lambda: diag.relative_distance(np.r_[np.inf, 1.0], np.ones(2)), "`a`.*NaN"),
    (lambda: diag.eigenspace_overlap(np.full((3, 1), np.nan), np.eye(3)[:, :1]), "`V1`"),
    (lambda: diag.effective_rank(np.r_[1.0, np.nan]), "NaN"),
    (lambda: diag.topk_overlap(random_psd(4), random_psd(4), 0), "`k`"),
    (lambda: diag.topk_overlap(random_psd(4), random_psd(5), 1), "same shape"),
    (lambda: recorder.log_spaced_steps(0, 3), "`num_steps`"),
])
def test_metrics_reject_nan_and_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_recorder_of_a_diverging_run_keeps_its_shapes_and_says_nan():
  # fit stops a run at its first non-finite loss; the recorder must still return one record
  # per requested step (NaN past the stop), not fail on the missing evaluations.
  ds, model, params, mse = _small_problem()
  with pytest.warns(RuntimeWarning):
    rec = recorder.record_kernel_training(model.apply, params, optax.sgd(1e8), mse,
                                          ds.x_train, ds.y_train, num_steps=30,
                                          record_steps=[5, 12])
  assert rec.steps.tolist() == [0, 5, 12, 30]
  assert rec.alignment.shape == (4,) and rec.loss_curve.shape == (31,)
  assert np.isfinite(rec.alignment[0]) and np.isnan(rec.alignment[-1])
  assert np.isnan(rec.loss_curve[-1])
