"""The large-n prediction path: symmetric kernel products, the CG solver, kernel_gd_mse.

Oracles: numpy/scipy solves and eigendecompositions of K evaluated in one call of the
closed-form kernel (itself tested against neural-tangents in test_kernels.py), explicit
matrix iterations in numpy, and the CG iteration bound of a prescribed spectrum.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import mskjax
from mskjax import _solve, kernels, modifiers
from mskjax.kernels import mlp_kernel_fn
from mskjax.predict import kernel_gd_mse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KF = mlp_kernel_fn(mskjax.MLPSpec(depth=2, width=8, b_std=0.1))


def _data(n, d=5, c=2, seed=0, m=40):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d))
  y = np.stack([np.sin(x[:, 0]), np.cos(x[:, 1] + x[:, 2])][:c], axis=1)
  xt = rng.standard_normal((m, d))
  return x, y, xt


def _K(a, b=None):
  """K in one call of the closed-form kernel (exact diagonal angles on k(a, a))."""
  return np.asarray(KF(jnp.asarray(a), None if b is None else jnp.asarray(b), "ntk"))


# ------------------------------------------------------------------ the symmetric product
@pytest.mark.parametrize("n,bs", [(257, 64), (300, 100), (50, 64)])
def test_symmetric_product_equals_plain_and_numpy(n, bs):
  x, _, xt = _data(n)
  v = np.random.default_rng(1).standard_normal((n, 3))
  K = _K(x)
  ref = K @ v
  scale = np.abs(ref).max()
  sym = kernels.kernel_operator(KF, x, block_size=bs, cache=False, symmetric=True)
  plain = kernels.kernel_operator(KF, x, block_size=bs, cache=False, symmetric=False)
  assert sym.symmetric and not plain.symmetric
  out_s, out_p = np.asarray(sym @ v), np.asarray(plain @ v)
  # Symmetric: diagonal blocks through k(a, None) like the one-call K, so only summation
  # order differs (float64 round-off, ~n·eps).
  np.testing.assert_allclose(out_s, ref, rtol=0, atol=1e-12 * scale)
  # Plain: k(a, a) from two copies carries ~1e-8 relative rounding on the diagonal.
  np.testing.assert_allclose(out_p, ref, rtol=0, atol=1e-7 * scale)
  np.testing.assert_allclose(np.asarray(sym @ v[:, 0]), ref[:, 0], rtol=0, atol=1e-12 * scale)
  # k(x_test, X) V in blocks
  cref = _K(xt, x) @ v
  np.testing.assert_allclose(np.asarray(sym.cross(xt, v)), cref, rtol=0,
                             atol=1e-12 * np.abs(cref).max())


def test_float32_blocks_have_float32_accuracy():
  x, _, _ = _data(300)
  v = np.random.default_rng(1).standard_normal((300, 2))
  ref = _K(x) @ v
  op = kernels.kernel_operator(KF, x, block_size=64, cache=False, block_dtype=jnp.float32)
  out = np.asarray(op @ v)
  assert out.dtype == np.float64 and op.block_dtype == jnp.float32
  err = np.abs(out - ref).max() / np.abs(ref).max()
  # float32 entries (eps 6e-8, ~3e-4 angle error for nearly parallel pairs) and float32
  # GEMMs over 64 terms; the sums over blocks are float64.
  assert 1e-9 < err < 1e-5, err


def test_symmetric_product_refuses_jit_and_keeps_the_plain_one_there():
  x, _, _ = _data(40)
  v = np.ones((40, 1))
  f = jax.jit(lambda a, w: kernels.kernel_operator(KF, a, block_size=16, cache=False) @ w)
  np.testing.assert_allclose(f(x, v), _K(x) @ v, rtol=1e-7)
  with pytest.raises(ValueError, match="symmetric=True"):
    jax.jit(lambda a: kernels.kernel_operator(KF, a, cache=False, symmetric=True).n)(x)
  with pytest.raises(ValueError, match="symmetric"):
    kernels.kernel_operator(KF, x, symmetric="yes")
  with pytest.raises(TypeError, match="block_dtype"):
    kernels.kernel_operator(KF, x, block_dtype=jnp.int32)


_SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np, jax.numpy as jnp
    import mskjax
    from mskjax import kernels
    from mskjax.predict import kernel_gd_mse
    assert len(jax.devices()) == 8, jax.devices()
    kf = kernels.mlp_kernel_fn(mskjax.MLPSpec(depth=2, width=8, b_std=0.1))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((333, 6)); v = rng.standard_normal((333, 3))
    one = kernels.kernel_operator(kf, x, block_size=32, cache=False, devices=jax.devices()[:1])
    many = kernels.kernel_operator(kf, x, block_size=32, cache=False)
    print("product", float(np.abs(np.asarray(one @ v) - np.asarray(many @ v)).max()))
    y = np.sin(x[:, :2]); xt = rng.standard_normal((20, 6))
    kw = dict(method="matrix_free", block_size=32, precond_rank=20, rtol=1e-8)
    p1 = kernel_gd_mse(kf, x, y, devices=jax.devices()[:1], **kw)(jnp.inf, x_test=xt)
    p8 = kernel_gd_mse(kf, x, y, **kw)(jnp.inf, x_test=xt)
    print("predict", float(np.abs(np.asarray(p1.test) - np.asarray(p8.test)).max()))
""")


def test_eight_host_devices_give_identical_results():
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                       env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  vals = dict(line.split() for line in out.stdout.strip().splitlines())
  # One block pair per device and the same host summation order: bit-identical.
  assert float(vals["product"]) == 0.0, out.stdout
  assert float(vals["predict"]) == 0.0, out.stdout


# ------------------------------------------------------------------ the solver
def _spd(n, eigs, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
  return (q * eigs) @ q.T, q


def test_pcg_matches_numpy_solve_per_column():
  A, _ = _spd(80, np.linspace(1.0, 50.0, 80))
  B = np.random.default_rng(2).standard_normal((80, 3))
  B[:, 2] *= 1e-6                      # a small column converges on its own scale
  x, info = _solve.pcg(lambda v: A @ v, B, rtol=1e-10, max_iter=500)
  ref = np.linalg.solve(A, B)
  for j in range(3):   # ‖x − x*‖ <= ‖A⁻¹‖ ‖r‖ <= rtol ‖b‖ / λ_min (λ_min = 1)
    assert np.linalg.norm(x[:, j] - ref[:, j]) <= 2e-10 * np.linalg.norm(B[:, j])
  assert info.converged and info.history.shape == (info.iterations + 1, 3)
  np.testing.assert_allclose(info.residual, B - A @ x, atol=1e-9 * np.abs(B).max())


@pytest.mark.parametrize("kappa,rtol", [(100.0, 1e-6), (1e4, 1e-4)])
def test_cg_iterations_within_the_condition_number_bound(kappa, rtol):
  # ‖r_t‖/‖b‖ <= √κ ‖e_t‖_A/‖e_0‖_A <= 2√κ ((√κ − 1)/(√κ + 1))^t
  n = 300
  A, _ = _spd(n, np.geomspace(1.0, kappa, n))
  b = np.random.default_rng(3).standard_normal(n)
  _, info = _solve.pcg(lambda v: A @ v, b, rtol=rtol, max_iter=10 * n)
  sk = math.sqrt(kappa)
  bound = math.ceil(math.log(rtol / (2 * sk)) / math.log((sk - 1) / (sk + 1)))
  assert info.converged and info.iterations <= bound, (info.iterations, bound)


def test_pcg_with_exact_msk_preconditioner_meets_the_preconditioned_bound():
  # Kernel with a prescribed spectrum: the linear kernel on x = Q diag(√λ) has K = Q Λ Qᵀ.
  # With all points as Nyström landmarks (K̂ = K) the preconditioner is built from the exact top-r
  # eigenpairs: S = I + Σ_{i<r} (λ_r/λ_i − 1) v_i v_iᵀ, so κ(S K) = λ_r/λ_n (20 here,
  # against 1e4 for K): a steep top of r eigenvalues above a flat bulk in [1, 10].
  n, r = 300, 30
  lam = np.concatenate([np.geomspace(1e4, 20.0, r), np.linspace(10.0, 1.0, n - r)])
  _, q = _spd(n, lam, seed=4)
  x = q * np.sqrt(lam)
  y = np.random.default_rng(5).standard_normal((n, 2))
  lin = lambda a, b: a @ b.T
  rtol = 1e-6
  f = kernel_gd_mse(lin, x, y, get=None, method="matrix_free", precond_rank=r, n_landmarks=n,
                    rtol=rtol, max_iter=400)
  p = f(jnp.inf)
  sk = math.sqrt(lam[r - 1] / lam[-1])
  bound = math.ceil(math.log(rtol / (2 * sk)) / math.log((sk - 1) / (sk + 1)))
  plain = kernel_gd_mse(lin, x, y, get=None, method="matrix_free", precond_rank=0,
                        rtol=rtol, max_iter=400)
  plain(jnp.inf)
  assert f.info.converged and f.info.iterations <= bound, (f.info.iterations, bound)
  # without it, CG spends about one iteration per isolated top eigenvalue first
  assert plain.info.iterations > f.info.iterations + r // 2, (plain.info.iterations,
                                                              f.info.iterations)
  assert f.info.preconditioner == f"nystrom-rpcholesky(rank={r}, landmarks={n})"
  # K α = y − r with ‖r_j‖ <= rtol ‖y_j‖
  res = np.linalg.norm(np.asarray(p.train) - y, axis=0) / np.linalg.norm(y, axis=0)
  assert np.all(res <= 1.01 * rtol), res


# ------------------------------------------------------------------ kernel_gd_mse vs oracles
@pytest.mark.parametrize("ridge", [0.0, 1e-2])
def test_t_infinity_matches_scipy_solve(ridge):
  n = 400
  x, y, xt = _data(n)
  K = _K(x)
  A = K + ridge * np.eye(n)
  alpha = scipy.linalg.solve(A, y, assume_a="pos")
  ref_test = _K(xt, x) @ alpha
  lam_min = np.linalg.eigvalsh(A)[0]
  rtol = 1e-9
  dense = kernel_gd_mse(KF, x, y, ridge=ridge, method="dense")
  free = kernel_gd_mse(KF, x, y, ridge=ridge, method="matrix_free", precond_rank=60,
                       rtol=rtol, max_iter=500)
  pd, pf = dense(jnp.inf, x_test=xt), free(jnp.inf, x_test=xt)
  assert dense.info.solver == "cholesky" and free.info.solver == "pcg" and free.info.converged
  kx = np.linalg.norm(_K(xt, x), 2)
  for j in range(y.shape[1]):
    # Cholesky: backward stable, error ~ eps·κ; CG: ‖α − α*‖ <= rtol‖y‖/λ_min(A).
    tol_dense = 1e-13 * np.linalg.cond(A) * kx * np.linalg.norm(alpha[:, j]) + 1e-12
    tol_free = 2 * rtol * np.linalg.norm(y[:, j]) / lam_min * kx
    assert np.abs(np.asarray(pd.test)[:, j] - ref_test[:, j]).max() <= tol_dense
    assert np.abs(np.asarray(pf.test)[:, j] - ref_test[:, j]).max() <= tol_free
    a = free.coefficients(jnp.inf)[:, j]
    assert np.linalg.norm(a - alpha[:, j]) <= 2 * rtol * np.linalg.norm(y[:, j]) / lam_min
    # train predictions K α: within the solver's residual of y − ρα*
    ref_train = K @ alpha[:, j]
    assert np.abs(np.asarray(pf.train)[:, j] - ref_train).max() <= \
        2 * rtol * np.linalg.norm(y[:, j]) * (1 + np.linalg.norm(K, 2) / lam_min)


def _numpy_gd(K, y, g_values, V, eta, steps, ridge=0.0):
  """α_t by the explicit iteration α ← α + η S (y − (K + ρI) α), S from numpy's eigh."""
  n = K.shape[0]
  S = np.eye(n) if V is None else np.eye(n) + (V * g_values) @ V.T
  A = K + ridge * np.eye(n)
  out, a = {}, np.zeros_like(y)
  for t in range(max(steps) + 1):
    if t in steps:
      out[t] = a.copy()
    a = a + eta * S @ (y - A @ a)
  return out


@pytest.mark.parametrize("g_name,k", [(None, None), ("flatten", 8), ("power", 5)])
@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_finite_t_matches_explicit_iteration_and_dense(g_name, k, ridge):
  n = 300
  x, y, xt = _data(n, seed=1)
  K = _K(x)
  w, U = np.linalg.eigh(K + ridge * np.eye(n))
  w, U = w[::-1], U[:, ::-1]
  g = None if g_name is None else (modifiers.flatten() if g_name == "flatten"
                                   else modifiers.power(0.5, scale=float(np.sqrt(w[0]))))
  if g is None:
    coef, V, top = None, None, w[0]
  else:
    new = np.asarray(g(jnp.asarray(w), k))
    coef, V = new / w[:k] - 1.0, U[:, :k]
    top = max(new.max(), w[k])
  eta = 1.0 / top
  steps = [0, 1, 7, 40]
  ref = _numpy_gd(K, y, coef, V, eta, steps, ridge)
  ts = jnp.array(steps)
  free = kernel_gd_mse(KF, x, y, g, k, ridge=ridge, method="matrix_free")
  dense = kernel_gd_mse(KF, x, y, g, k, ridge=ridge, method="dense")
  pf, pd = free(ts, x_test=xt), dense(ts, x_test=xt)
  kxt = _K(xt, x)
  ysc = np.abs(y).max()
  for i, t in enumerate(steps):
    # Krylov eigenpairs to residual 1e-7·λ₁ perturb S by ~1e-7; float64 iterations otherwise
    np.testing.assert_allclose(np.asarray(pf.train[i]), K @ ref[t], rtol=0, atol=1e-6 * ysc)
    np.testing.assert_allclose(np.asarray(pf.test[i]), kxt @ ref[t], rtol=0, atol=1e-6 * ysc)
    np.testing.assert_allclose(np.asarray(pd.test[i]), kxt @ ref[t], rtol=0, atol=1e-8 * ysc)
  assert free.info.gd_steps == 40 and free.info.eigensolver == "krylov"
  assert abs(free.info.learning_rate - eta) <= 1e-9 * eta
  # later t continues from the kept iterate (no recomputation of earlier steps)
  free(jnp.array([41]))
  assert free.info.gd_steps == 41


def test_nystrom_eigenpairs_give_approximate_dynamics():
  # EigenPro's approximation: S from Nyström eigenvectors. Not exact; it stays close.
  n = 300
  x, y, _ = _data(n, seed=2)
  g = modifiers.flatten()
  ex = kernel_gd_mse(KF, x, y, g, 5, method="matrix_free")
  ny = kernel_gd_mse(KF, x, y, g, 5, method="matrix_free", eigensolver="nystrom",
                     n_landmarks=150)
  a, b = np.asarray(ex(jnp.array([20])).train), np.asarray(ny(jnp.array([20])).train)
  rel = np.linalg.norm(a - b) / np.linalg.norm(a)
  assert 0 < rel < 0.1, rel
  assert ny.info.eigensolver == "nystrom" and ny.info.eig_residual is None


# ------------------------------------------------------------------ checkpoint / resume
class _Stop(Exception):
  pass


def test_interrupted_solve_resumes_identically(tmp_path):
  n = 300
  x, y, xt = _data(n, seed=3)
  kw = dict(method="matrix_free", precond_rank=10, rtol=1e-10, max_iter=200,
            checkpoint_every=3)
  full = kernel_gd_mse(KF, x, y, checkpoint=str(tmp_path / "full.npz"), **kw)
  ref = full(jnp.inf, x_test=xt)
  assert full.info.iterations > 8

  def interrupt(p):
    if p.iteration == 7:
      raise KeyboardInterrupt
  path = str(tmp_path / "cg.npz")
  with pytest.raises(KeyboardInterrupt):
    kernel_gd_mse(KF, x, y, checkpoint=path, progress=interrupt, **kw)(jnp.inf)
  seen = []
  again = kernel_gd_mse(KF, x, y, checkpoint=path, progress=seen.append, **kw)
  out = again(jnp.inf, x_test=xt)
  assert seen[0].iteration == 8        # iteration 7 was kept: nothing lost
  np.testing.assert_array_equal(np.asarray(out.test), np.asarray(ref.test))
  np.testing.assert_array_equal(again.info.history, full.info.history)


def test_interrupt_inside_a_product_keeps_the_last_iteration(tmp_path):
  A, _ = _spd(60, np.linspace(1, 100, 60))
  b = np.ones((60, 2))
  calls = []

  def mv(v):
    calls.append(1)
    if len(calls) == 5:
      raise KeyboardInterrupt
    return A @ v
  path = str(tmp_path / "s.npz")
  fp = dict(problem="A")
  with pytest.raises(KeyboardInterrupt):
    _solve.pcg(mv, b, rtol=1e-12, max_iter=100, checkpoint=path, fingerprint=fp,
               checkpoint_every=100)
  x, info = _solve.pcg(lambda v: A @ v, b, rtol=1e-12, max_iter=100, checkpoint=path,
                       fingerprint=fp)
  ref, rinfo = _solve.pcg(lambda v: A @ v, b, rtol=1e-12, max_iter=100)
  assert info.resumed_from == 4
  np.testing.assert_array_equal(x, ref)
  np.testing.assert_array_equal(info.history, rinfo.history)


def test_checkpoint_of_another_problem_is_refused(tmp_path):
  n = 200
  x, y, _ = _data(n, seed=4)
  path = str(tmp_path / "cg.npz")
  kw = dict(method="matrix_free", precond_rank=10, rtol=1e-6, checkpoint=path)
  kernel_gd_mse(KF, x, y, **kw)(jnp.inf)
  with pytest.raises(ValueError, match="ridge"):
    kernel_gd_mse(KF, x, y, ridge=0.1, **kw)(jnp.inf)
  with pytest.raises(ValueError, match="data"):
    kernel_gd_mse(KF, x, y + 1.0, **kw)(jnp.inf)
  with pytest.raises(ValueError, match="kernel"):
    kernel_gd_mse(mlp_kernel_fn(mskjax.MLPSpec(depth=3, width=8)), x, y, **kw)(jnp.inf)
  with open(path, "wb") as f:
    f.write(b"not a checkpoint")
  with pytest.raises(ValueError, match="not a readable"):
    kernel_gd_mse(KF, x, y, **kw)(jnp.inf)


def test_checkpoint_directory_is_made_or_refused_before_the_setup(tmp_path):
  n = 120
  x, y, _ = _data(n, seed=5)
  kw = dict(method="matrix_free", precond_rank=10, rtol=1e-6)
  path = tmp_path / "new" / "deeper" / "cg.npz"           # a directory that does not exist
  kernel_gd_mse(KF, x, y, checkpoint=str(path), **kw)(jnp.inf)
  assert path.is_file()
  blocker = tmp_path / "file"
  blocker.write_text("x")                                    # a file where a directory goes
  with pytest.raises(ValueError, match="`checkpoint`.*cannot be created"):
    kernel_gd_mse(KF, x, y, checkpoint=str(blocker / "cg.npz"), **kw)
  with pytest.raises(ValueError, match="`checkpoint`.*is a directory"):
    kernel_gd_mse(KF, x, y, checkpoint=str(tmp_path), **kw)


# ------------------------------------------------------------------ bad inputs
def _bad_cases():
  x, y, _ = _data(30)
  nan_x = x.copy(); nan_x[3, 1] = np.nan
  inf_y = y.copy(); inf_y[2, 0] = np.inf
  return [
      (dict(x_train=x[:, 0]), ValueError, "x_train"),
      (dict(y_train=y[:20]), ValueError, "y_train"),
      (dict(x_train=nan_x), ValueError, "x_train"),
      (dict(y_train=inf_y), ValueError, "y_train"),
      (dict(x_train=x[:0], y_train=y[:0]), ValueError, "x_train"),
      (dict(y_train=np.zeros((30, 0))), ValueError, "y_train"),
      (dict(x_train=np.array([["a"] * 5] * 30)), TypeError, "x_train"),
      (dict(g=modifiers.flatten(), k=30), ValueError, "k"),
      (dict(g=modifiers.flatten(), k=2.0), TypeError, "k"),
      (dict(ridge=-1.0), ValueError, "ridge"),
      (dict(ridge=float("nan")), ValueError, "ridge"),
      (dict(method="fast"), ValueError, "method"),
      (dict(method="dense", memory_budget=100), ValueError, "memory_budget"),
      (dict(method="matrix_free", memory_budget=100), ValueError, "memory_budget"),
      (dict(memory_budget=0), ValueError, "memory_budget"),
      (dict(precond_rank=31), ValueError, "precond_rank"),
      (dict(precond_rank=10, n_landmarks=5), ValueError, "n_landmarks"),
      (dict(rtol=0.0), ValueError, "rtol"),
      (dict(max_iter=-1), ValueError, "max_iter"),
      (dict(eigensolver="lanczos"), ValueError, "eigensolver"),
      (dict(kernel_dtype=jnp.int32), TypeError, "kernel_dtype"),
      (dict(key=3), TypeError, "key"),
      (dict(flow=True, method="matrix_free"), ValueError, "flow"),
      (dict(learning_rate=-0.1), ValueError, "learning_rate"),
  ]


@pytest.mark.parametrize("i", range(len(_bad_cases())))
def test_bad_arguments_are_named(i):
  kwargs, exc, name = _bad_cases()[i]
  x, y, _ = _data(30)
  args = dict(x_train=x, y_train=y)
  args.update(kwargs)
  with pytest.raises(exc, match=name):
    kernel_gd_mse(KF, args.pop("x_train"), args.pop("y_train"), **args)


def test_bad_call_arguments_are_named():
  x, y, xt = _data(30)
  f = kernel_gd_mse(KF, x, y, method="matrix_free", precond_rank=5)
  with pytest.raises(ValueError, match="x_test"):
    f(jnp.inf, x_test=xt[:, :3])
  with pytest.raises(ValueError, match="x_test"):
    f(jnp.inf, x_test=xt[:0])
  bad = xt.copy(); bad[0, 0] = np.inf
  with pytest.raises(ValueError, match="x_test"):
    f(jnp.inf, x_test=bad)
  with pytest.raises(ValueError, match="`t`"):
    f(-1)
  with pytest.raises(ValueError, match="`t`"):
    f(1.5)
  with pytest.raises(TypeError, match="kernel_fn"):
    kernel_gd_mse(lambda a, b: a @ b.T, x, y)        # a plain kernel under get='ntk'


def test_pcg_bad_arguments_are_named(tmp_path):
  A = np.eye(3)
  with pytest.raises(ValueError, match="`b`"):
    _solve.pcg(lambda v: A @ v, np.full(3, np.nan))
  with pytest.raises(ValueError, match="`b`"):
    _solve.pcg(lambda v: A @ v, np.zeros((0, 2)))
  with pytest.raises(ValueError, match="matmul"):
    _solve.pcg(lambda v: v[:2], np.ones(3))
  with pytest.raises(ValueError, match="not finite"):
    _solve.pcg(lambda v: v * np.nan, np.ones(3))
  with pytest.raises(ValueError, match="fingerprint"):
    _solve.pcg(lambda v: A @ v, np.ones(3), checkpoint=str(tmp_path / "c.npz"))
  with pytest.raises(TypeError, match="progress"):
    _solve.pcg(lambda v: A @ v, np.ones(3), progress="yes")


def test_indefinite_operator_stops_the_column_by_name():
  A = np.diag([1.0, -1.0, 2.0])
  x, info = _solve.pcg(lambda v: A @ v, np.array([[0.0], [1.0], [0.0]]), rtol=1e-8)
  assert info.breakdown.tolist() == [True] and not info.converged


def test_auto_picks_dense_below_the_budget_and_matrix_free_above():
  x, y, _ = _data(100)
  assert kernel_gd_mse(KF, x, y).info.method == "dense"
  f = kernel_gd_mse(KF, x, y, memory_budget=8 * 100 * 100 - 1, precond_rank=10)
  assert f.info.method == "matrix_free"


# ------------------------------------------------------------------ the default preconditioner
@pytest.mark.parametrize("n", [8, 1000, 20_000, 100_000, 10**6, 10**7])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_default_precond_rank_fits_its_memory(n, itemsize):
  from mskjax.predict import MAX_PRECOND_RANK, PRECOND_MEMORY, default_precond_rank
  r = default_precond_rank(n, itemsize)
  assert 0 <= r <= min(n // 4, MAX_PRECOND_RANK)
  assert n * r * (8 + itemsize) <= PRECOND_MEMORY           # factor (float64) + vectors
  # and it is the largest such rank
  assert r == min(n // 4, MAX_PRECOND_RANK) or n * (r + 1) * (8 + itemsize) > PRECOND_MEMORY


def test_float32_blocks_solve_with_float32_preconditioner_vectors_to_float32_accuracy():
  # float32 kernel blocks: the preconditioner's vectors are float32 too (half the memory);
  # oracle: scipy's float64 solve. CG to rtol 1e-5 on a problem whose K has float32 entry
  # errors ~1e-7 relative: ‖α − α*‖ <= (rtol + ε_32·κ-ish) ‖y‖/λ_min, bounded here by
  # 2·rtol‖y‖/λ_min + the float32 perturbation ‖δK‖‖α*‖/λ_min with ‖δK‖ <= 1e-6·‖K‖.
  n = 500
  x, y, _ = _data(n, seed=3)
  K = _K(x)
  alpha = scipy.linalg.solve(K, y, assume_a="pos")
  lam_min = np.linalg.eigvalsh(K)[0]
  free = kernel_gd_mse(KF, x, y, method="matrix_free", kernel_dtype=jnp.float32,
                       precond_rank=80, rtol=1e-5, max_iter=400)
  a = free.coefficients(jnp.inf)
  info = free.info                     # coefficients() updates info as predict_fn() does
  assert info.converged and info.iterations > 0 and info.solve_seconds > 0
  for j in range(y.shape[1]):
    tol = (2e-5 * np.linalg.norm(y[:, j]) + 1e-6 * np.linalg.norm(K, 2)
           * np.linalg.norm(alpha[:, j])) / lam_min
    assert np.linalg.norm(a[:, j] - alpha[:, j]) <= tol


def test_progress_receives_each_iterate():
  # the iterate handed to a progress callable is the CG iterate after that iteration:
  # oracle, an explicit numpy PCG (Saad Alg. 9.1) with the same A, B, M.
  A, _ = _spd(60, np.linspace(1.0, 40.0, 60))
  M = np.diag(1.0 / np.diag(A))
  B = np.random.default_rng(4).standard_normal((60, 2))
  seen = {}
  _solve.pcg(lambda v: A @ v, B, precond=lambda r: M @ r, rtol=1e-8, max_iter=6,
             progress=lambda p: seen.__setitem__(p.iteration, p.solution.copy()))
  assert sorted(seen) == list(range(1, 7))
  for j in range(2):
    x = np.zeros(60); r = B[:, j].copy(); z = M @ r; p = z.copy(); rz = r @ z
    for t in range(1, 7):
      q = A @ p; a = rz / (p @ q); x = x + a * p; r = r - a * q
      z = M @ r; rz_new = r @ z; p = z + (rz_new / rz) * p; rz = rz_new
      np.testing.assert_allclose(seen[t][:, j], x, rtol=0, atol=1e-12 * np.abs(x).max())


# ------------------------------------------------------------------ finite t: progress, resume
@pytest.mark.parametrize("g_name,k", [(None, None), ("flatten", 6)])
def test_interrupted_finite_t_resumes_the_same_dynamics(tmp_path, g_name, k):
  # interrupted at step 7 (checkpoints every 3 steps and on the interrupt), the same call
  # again continues from step 7 (nothing lost, nothing redone) to the iterates of an
  # uninterrupted run; oracle for the dynamics themselves: the explicit numpy iteration
  # of test_finite_t_matches_explicit_iteration_and_dense, at its tolerance.
  n = 240
  x, y, xt = _data(n, seed=6)
  g = None if g_name is None else getattr(modifiers, g_name)()
  kw = dict(method="matrix_free", checkpoint_every=3)
  full = kernel_gd_mse(KF, x, y, g, k, **kw)
  ref = full(jnp.asarray([4, 12]), x_test=xt)

  def interrupt(p):
    if p.iteration == 7:
      raise KeyboardInterrupt
  path = str(tmp_path / "run.npz")
  first = kernel_gd_mse(KF, x, y, g, k, checkpoint=path, progress=interrupt, **kw)
  with pytest.raises(KeyboardInterrupt):
    first(jnp.asarray([4, 12]))
  assert os.path.isfile(path + ".gd.npz")
  seen = []
  again = kernel_gd_mse(KF, x, y, g, k, checkpoint=path, progress=seen.append, **kw)
  out = again(jnp.asarray([4, 12]), x_test=xt)
  assert [p.iteration for p in seen] == list(range(8, 13))   # resumed after step 7
  np.testing.assert_array_equal(np.asarray(out.test), np.asarray(ref.test))
  np.testing.assert_array_equal(np.asarray(out.train), np.asarray(ref.train))
  # progress lines carry the train residual of the iterate they hand over
  K = _K(x)
  p = seen[-1]
  want = np.linalg.norm(y - K @ p.solution, axis=0) / np.linalg.norm(y, axis=0)
  np.testing.assert_allclose(p.residuals, want, rtol=1e-9)
  # another modifier / learning rate is another run: refused by name
  with pytest.raises(ValueError, match="learning_rate"):
    kernel_gd_mse(KF, x, y, g, k, checkpoint=path, learning_rate=1e-3, **kw)(3)


@pytest.mark.parametrize("C", [1e3, 1e5])
def test_float32_preconditioner_stays_positive_definite_under_a_dominant_eigenvalue(C):
  # S = I + Σ (λ̂_r/λ̂_i − 1) u_i u_iᵀ shrinks the top direction to λ̂_r/λ̂_1 (here ~1e-7 to
  # 1e-9: a constant C added to an RBF kernel gives λ̂_1 ≈ C·n). Float32 vectors are ~1e-7 off
  # orthonormal, which alone made S indefinite at C = 1e5 (min eigenvalue −1e-8, measured);
  # the leading vectors with λ̂_r/λ̂_i < WIDE_RATIO are kept in float64. Oracle: numpy's
  # eigvalsh of S applied to the identity; exact S has λ_min = λ̂_r/λ̂_1.
  from mskjax import predict
  n, r = 400, 60
  x = np.random.default_rng(0).standard_normal((n, 3))
  kf = lambda a, b: C + jnp.exp(-0.5 * jnp.sum((a[:, None] - b[None]) ** 2, -1))
  with jax.enable_x64(True):
    op = kernels.kernel_operator(kf, jnp.asarray(x), get=None, cache=False,
                                 block_dtype=jnp.float32)
    vals, _, wide, _ = predict._rpcholesky_pairs(op, r, r, jax.random.PRNGKey(0),
                                                 dtype=np.float32)
    st = predict._MatrixFree(op, np.zeros((n, 1)), None, None, 0.0, None, r, r, 1e-3, 10,
                             "krylov", jax.random.PRNGKey(0), False, None, 5, {})
    S = st._preconditioner()(np.eye(n))
  assert wide.shape[1] >= 1                       # the top direction is kept in float64
  w = np.linalg.eigvalsh(0.5 * (S + S.T))
  exact_min = vals[r - 1] / vals[0]
  assert 0.5 * exact_min <= w[0] <= 2 * exact_min
  assert abs(w[-1] - 1.0) <= 1e-6                 # directions outside U are left alone


def test_float32_blocks_allow_k_down_to_their_own_rounding():
  # Float32 kernel blocks summed in float64: an eigenvalue is round-off only below ~ε_32·λ₁
  # (entrywise rounding moves eigenvalues by at most ε‖|K|‖₂), not n·ε_32·λ₁ (which refused
  # k = 250 on 20k MNIST-1D points although λ_250 ≈ 6e-4·λ₁). Oracle: the explicit numpy
  # iteration with float64 K and eigh (_numpy_gd); a k whose λ_k is below 64·ε_32·λ₁ is
  # refused by name, pointing at kernel_dtype.
  n, ell = 1500, 1.5
  # float32 points, as a user's float32 data set (the refused k came from x's dtype)
  x = np.random.default_rng(0).standard_normal((n, 2)).astype(np.float32)
  y = (np.sin(x[:, :1]) + 0.1 * x[:, 1:]).astype(np.float64)
  kf = lambda a, b: jnp.exp(-0.5 * jnp.sum((a[:, None] - b[None]) ** 2, -1) / ell ** 2)
  with jax.enable_x64(True):
    x64 = jnp.asarray(x, jnp.float64)
    K = np.asarray(kf(x64, x64))
  w, U = np.linalg.eigh(K)
  w, U = w[::-1], U[:, ::-1]
  eps = float(np.finfo(np.float32).eps)
  r = w / w[0]
  band = [k for k in range(2, 200) if 4 * 64 * eps < r[k - 1] < n * eps / 2
          and w[k - 1] > 1.05 * w[k]]
  assert band, "no k between the two floors for this data (test set-up)"
  k = band[-1]
  g = modifiers.flatten()
  new = np.asarray(g(jnp.asarray(w), k))
  ref = _numpy_gd(K, y, new / w[:k] - 1.0, U[:, :k], 1.0 / max(new.max(), w[k]), [5])
  free = kernel_gd_mse(kf, x, y, g, k, get=None, method="matrix_free",
                       kernel_dtype=jnp.float32)
  out = np.asarray(free(5).train)
  # float32 entries (~1e-7 relative) through 5 steps with η λ ≈ 1 and S of norm ≤ λ₁/λ_k:
  # 1e-3 of the target scale is far above that and far below the predictions' own motion
  np.testing.assert_allclose(out, K @ ref[5], rtol=0, atol=1e-3 * np.abs(y).max())
  deep = next(k for k in range(2, n) if r[k - 1] < 64 * eps / 4)
  with pytest.raises(ValueError, match="kernel_dtype"):
    kernel_gd_mse(kf, x, y, g, deep, get=None, method="matrix_free",
                  kernel_dtype=jnp.float32)(3)
