"""The kernel operator (blocked, budgeted, sharded, cached V ↦ K V) and the eigensolvers that
use it: eigh_top(operator, method='krylov'|'nystrom') and msk_spectrum(operator).

Oracles are dense: the Gram matrix from one ``kernel_fn`` call and numpy's LAPACK eigh.
"""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mskjax
from mskjax import _blocks, kernels, modifiers
from mskjax.tangents import empirical_ntk
from mskjax.nets import FlaxMLP, MLPSpec, stax_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sphere(n, d=10, seed=0):
  x = np.random.default_rng(seed).standard_normal((n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def ntk2():
  return stax_mlp(MLPSpec(depth=2, width=8, b_std=0.1))[2]


def _dense(kernel_fn, x, block_size=None, get="ntk"):
  """Dense K from the same ``block_size × block_size`` kernel calls the code makes.

  neural-tangents' arc-cosine NTK has ~1e-8 relative round-off on its diagonal
  (arccos'(1) = ∞ amplifies the ~1e-16 error of x·x/‖x‖² ≈ 1), and that round-off depends
  on the block shape XLA compiles. Building the oracle from the same block calls isolates
  what the operator adds (summation order, ~1e-13) from the kernel's own round-off.
  """
  x = jnp.asarray(x)
  n = x.shape[0]
  bs = n if block_size is None else _blocks.resolve_block(block_size, None, n, 0, 1)
  nb = -(-n // bs)
  xp = jnp.concatenate([x, jnp.repeat(x[-1:], nb * bs - n, axis=0)])
  f = jax.jit(lambda a, b: kernel_fn(a, b, get))
  rows = [np.concatenate([np.asarray(f(xp[i:i + bs], xp[j:j + bs])) for j in range(0, nb * bs, bs)],
                         axis=1) for i in range(0, nb * bs, bs)]
  return np.concatenate(rows)[:n, :n].astype(np.float64)


@pytest.mark.parametrize("block_size", [64, 100, 1000])
def test_blocked_matvec_equals_dense(ntk2, block_size):
  x = _sphere(301, seed=1)  # 301: not a multiple of any block size (padding is exercised)
  K = _dense(ntk2, x, block_size)
  v = np.random.default_rng(2).standard_normal((301, 7))
  out = mskjax.kernels.kernel_matvec(ntk2, x, v, block_size=block_size)
  # Same products summed in another order: float64 round-off, ~1e-13 relative.
  np.testing.assert_allclose(out, K @ v, rtol=0, atol=1e-12 * np.abs(K @ v).max())
  out1 = mskjax.kernels.kernel_matvec(ntk2, x, v[:, 0], block_size=block_size)
  assert out1.shape == (301,)
  np.testing.assert_allclose(out1, K @ v[:, 0], atol=1e-12 * np.abs(K @ v[:, 0]).max())


@pytest.mark.parametrize("cache", [True, "auto"])
def test_cached_operator_equals_blocked(ntk2, cache):
  x = _sphere(301, seed=1)
  v = np.random.default_rng(2).standard_normal((301, 7))
  blocked = kernels.kernel_operator(ntk2, x, block_size=64, cache=False)
  cached = kernels.kernel_operator(ntk2, x, block_size=64, cache=cache)
  assert cached.cached and not blocked.cached     # 2·301²·8 B fits the default 1 GiB budget
  K = _dense(ntk2, x, 64)
  # The cached K holds the same block calls (upper triangle mirrored): K V to round-off.
  np.testing.assert_allclose((cached @ v), K @ v, rtol=0, atol=1e-12 * np.abs(K @ v).max())
  np.testing.assert_allclose((cached @ v), (blocked @ v), rtol=0, atol=1e-12 * np.abs(K @ v).max())
  assert not kernels.kernel_operator(ntk2, x, block_size=64, memory_budget=1 << 20).cached
  with pytest.raises(ValueError, match="`cache` must be"):
    kernels.kernel_operator(ntk2, x, cache="yes")


def test_block_size_from_budget(ntk2):
  b_small = kernels.block_size_for_budget(1 << 24, m=10, itemsize=8)
  b_big = kernels.block_size_for_budget(1 << 30, m=10, itemsize=8)
  assert 64 <= b_small < b_big and b_big % 64 == 0
  # The chosen block honours the budget formula.
  assert 8 * (_blocks.TEMPORARIES * b_big ** 2 + 2 * b_big * 10) <= 1 << 30
  x = _sphere(200, seed=3)
  mv = kernels.kernel_operator(ntk2, x, memory_budget=1 << 21, m=4, cache=False)
  assert mv.block_size == 56  # 4 blocks of <= 64 rows, edge trimmed to cover 200 rows
  v = np.ones((200, 4))
  np.testing.assert_allclose((mv @ v), _dense(ntk2, x, 56) @ v, rtol=1e-12)
  with pytest.raises(ValueError, match="memory_bytes"):
    kernels.block_size_for_budget(0)


def test_empirical_ntk_through_kernel_args():
  model = FlaxMLP(MLPSpec(depth=1, width=16, out_dim=2))
  x = _sphere(40, d=3, seed=4)
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(x))
  K = np.asarray(empirical_ntk(model.apply, params, x))
  from mskjax._nt import empirical_ntk_fn
  fn = empirical_ntk_fn(model.apply, trace_axes=(-1,), implementation=2)
  emp = lambda a, b, p: fn(a, b, p)
  v = np.random.default_rng(5).standard_normal((40, 3))
  out = mskjax.kernels.kernel_matvec(emp, x, v, get=None, kernel_args=(params,), block_size=16)
  np.testing.assert_allclose(out, K @ v, atol=1e-10 * np.abs(K @ v).max())


@pytest.mark.slow   # ~1 min; test_msk_spectrum_of_an_operator_matches_dense covers the path
def test_topk_matfree_matches_dense_eigh(ntk2):
  n, k = 1000, 60
  x = _sphere(n, seed=6)
  K = _dense(ntk2, x, 512)
  w, U = np.linalg.eigh(K)
  w, U = w[::-1], U[:, ::-1]
  mv = kernels.kernel_operator(ntk2, x, m=k + 21, block_size=512, cache=False)
  top, info = mskjax.eigh_top(mv, k + 1, method="krylov", tol=1e-8, return_info=True)
  assert info.converged and info.method == "krylov" and info.n_matvecs >= 1
  assert top.values.shape == (k + 1,) and top.vectors.shape == (n, k + 1)
  # Ritz values are Rayleigh quotients: error ≈ residual²/gap, far below the residual
  # tolerance 1e-8·λ₁, so agreement is at float64 round-off of a 1000-point eigh (~1e-12).
  np.testing.assert_allclose(top.values, w[:k + 1], rtol=1e-10)
  # Reported residuals are the true ones (recomputed with the dense K).
  V = np.asarray(top.vectors)[:, :k]
  res = np.linalg.norm(K @ V - V * np.asarray(top.values)[:k], axis=0)
  np.testing.assert_allclose(info.residuals[:k], res, rtol=1e-3, atol=1e-13 * w[0])
  assert res.max() <= 1e-8 * w[0]
  np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-12)
  # Eigenvectors up to sign where the gap to the neighbours is not tiny.
  gap = np.minimum(np.abs(w[:k] - w[1:k + 1]), np.abs(w[:k] - np.r_[np.inf, w[:k - 1]]))
  ok = gap > 1e-3 * w[0]
  overlap = np.abs(np.sum(V * U[:, :k], axis=0))
  np.testing.assert_allclose(overlap[ok], 1.0, atol=1e-8)
  # The cached operator and a plain matrix take the same Krylov path (products are GEMMs).
  for op in (kernels.kernel_operator(ntk2, x, block_size=512, cache=True),
             kernels.matrix_operator(K)):
    got = mskjax.eigh_top(op, k + 1, method="krylov", tol=1e-8)
    np.testing.assert_allclose(got.values, w[:k + 1], rtol=1e-10)


def test_krylov_diagonal_and_validation():
  K = jnp.diag(1.0 / jnp.arange(1.0, 61.0))
  op = kernels.KernelOperator(60, K.dtype, lambda v: K @ v)   # any symmetric product
  top = mskjax.eigh_top(op, 5, oversample=4, depth=2)
  np.testing.assert_allclose(top.values, 1.0 / np.arange(1, 6), rtol=1e-12)
  with pytest.raises(ValueError, match="k"):
    mskjax.eigh_top(op, 61)
  with pytest.raises(ValueError, match="depth"):
    mskjax.eigh_top(op, 5, depth=-1)     # depth 0 is subspace iteration (allowed)
  with pytest.raises(ValueError, match="method"):
    mskjax.eigh_top(op, 5, method="lanczos")
  with pytest.raises(ValueError, match="needs the matrix"):
    mskjax.eigh_top(op, 5, method="dense")
  with pytest.raises(ValueError, match="nystrom"):
    mskjax.eigh_top(K, 5, method="nystrom")


@pytest.mark.slow   # ~1 min; Nyström's convergence is tested in test_msk (Mercer oracle)
def test_nystrom_error(ntk2):
  n, k = 600, 10
  x = _sphere(n, seed=7)
  K = _dense(ntk2, x, 256)
  w = np.linalg.eigvalsh(K)[::-1]
  errs = []
  for m in (100, 400):
    op = kernels.kernel_operator(ntk2, x, block_size=256, cache=False)
    ny, info = mskjax.eigh_top(op, k, method="nystrom", n_landmarks=m, return_info=True)
    assert info.method == "nystrom" and info.residuals is None
    L = np.asarray(info.landmarks)
    C = K[:, L]
    Khat = C @ np.linalg.pinv(K[np.ix_(L, L)], rcond=1e-13, hermitian=True) @ C.T
    op_err = np.linalg.norm(K - Khat, 2)
    dw = w[:k] - np.asarray(ny.values)
    # The docstring's chain 0 ≤ λ_i(K) − λ_i(K̂) ≤ ‖K − K̂‖₂ ≤ tr(K − K̂) (round-off slack).
    assert np.all(dw >= -1e-9 * w[0])
    assert np.all(dw <= op_err * (1 + 1e-6) + 1e-9 * w[0])
    assert op_err <= float(info.trace_error) * (1 + 1e-6) + 1e-9 * w[0]
    # Its eigenpairs are those of K̂ (independent dense oracle).
    np.testing.assert_allclose(ny.values, np.linalg.eigvalsh(Khat)[::-1][:k], rtol=1e-7)
    errs.append(np.max(dw / w[:k]))
    print("nystrom", m, errs[-1], op_err / w[0], float(info.trace_error) / w[0])
  # Measured (n=600, seed 7): worst top-10 relative eigenvalue error ≈ 0.1 at m=100 and
  # ≈ 0.01 at m=400. Bounds with a factor ~2 margin; 4× the landmarks must help ≥ 3×.
  assert errs[0] < 0.2 and errs[1] < 0.03 and errs[1] < errs[0] / 3


def test_nystrom_on_a_cached_operator_uses_its_columns(ntk2):
  x = _sphere(150, seed=11)
  L = np.arange(0, 150, 3)                               # 50 landmarks, m from `landmarks`
  K = _dense(ntk2, x, 64)
  C = K[:, L]
  Khat = C @ np.linalg.pinv(K[np.ix_(L, L)], rcond=1e-13, hermitian=True) @ C.T
  want = np.linalg.eigvalsh(Khat)[::-1][:5]               # independent dense oracle
  for cache in (False, True):
    op = kernels.kernel_operator(ntk2, x, block_size=64, cache=cache)
    top, info = mskjax.eigh_top(op, 5, method="nystrom", landmarks=L, return_info=True)
    assert info.landmarks.shape == (50,)
    # K̂'s top eigenvalues are well separated here: float64 round-off of W⁺ (~1e-9 rel.)
    np.testing.assert_allclose(top.values, want, rtol=1e-7)


def test_msk_spectrum_of_an_operator_matches_dense(ntk2):
  n, k = 400, 11
  x = _sphere(n, d=3, seed=8)
  K = _dense(ntk2, x, 256)
  g = modifiers.flatten()
  dense = mskjax.msk_spectrum(jnp.asarray(K), g, k, method="dense")
  op = kernels.kernel_operator(ntk2, x, block_size=256, cache=False)
  spec, info = mskjax.msk_spectrum(op, g, k, method="krylov", return_info=True)
  assert isinstance(spec, mskjax.MSKSpectrum) and info.converged
  np.testing.assert_allclose(spec.values, dense.values, rtol=1e-10)
  np.testing.assert_allclose(spec.new_values, dense.new_values, rtol=1e-10)
  np.testing.assert_allclose(float(spec.next_value), float(dense.next_value), rtol=1e-10)
  r = np.random.default_rng(9).standard_normal(n)
  # S r is invariant to the eigenvector signs / rotations inside the top-k space.
  np.testing.assert_allclose(mskjax.msk.apply_preconditioner(spec, r),
                             mskjax.msk.apply_preconditioner(dense, r), atol=1e-8)
  ny = mskjax.msk_spectrum(op, g, k, method="nystrom", n_landmarks=n)
  np.testing.assert_allclose(ny.values, dense.values, rtol=1e-7)  # m = n: K̂ = K
  with pytest.raises(ValueError, match="method"):
    mskjax.msk_spectrum(op, g, k, method="lanczos")
  with pytest.raises(ValueError, match="k"):
    mskjax.msk_spectrum(op, g, n)


def test_minibatch_pgd_with_a_matrix_free_spectrum():
  """Minibatch PGD at scale: spectrum of an operator (K never formed), steps on a batch.

  Model: f(w, x) = φ(x)·w with random features φ (p = 64), so the empirical NTK is exactly
  K = Φ Φᵀ and full-batch PGD is exactly kernel GD with K_g (predict_gd_mse is the oracle).
  A minibatch step touches only ``spectrum.vectors[batch]`` (O(b k)).
  """
  from mskjax import train as T
  import optax
  n, p, k = 600, 64, 4
  rng = np.random.default_rng(0)
  W, phase = rng.standard_normal((3, p)), rng.uniform(0, 2 * np.pi, p)
  feats = lambda a: jnp.cos(jnp.asarray(a) @ W + phase)     # random Fourier features
  kfn = lambda a, b: feats(a) @ feats(b).T
  x = _sphere(n, d=3, seed=1)
  Phi = np.asarray(feats(x))
  evals, evecs = np.linalg.eigh(Phi @ Phi.T)
  y = jnp.asarray(evecs[:, -1] + evecs[:, -k - 2] + evecs[:, -k - 10])  # top and beyond-k mix
  g = modifiers.flatten()
  op = kernels.kernel_operator(kfn, x, get=None, block_size=128, cache=False)  # 5 × 5 blocks
  spec = mskjax.msk_spectrum(op, g, k, method="krylov")
  apply_fn = lambda w, a: feats(a) @ w
  eta = 1.0 / float(spec.max_value)
  w0 = jnp.zeros(p)
  # b = n: the batch loss is the full ½ rᵀ S r, so 20 steps = 20 steps of kernel GD with K_g.
  full = T.train(apply_fn, w0, optax.sgd(eta), x, y, steps=20, loss="msk_mse", spectrum=spec,
                 batch_size=n, record_steps=[20], progress=False)
  pred = mskjax.predict_gd_mse(jnp.asarray(Phi @ Phi.T), y, g, k, 20, learning_rate=eta)
  np.testing.assert_allclose(full.train_predictions[-1], pred.train, atol=1e-8)
  # b = n/6: same number of steps, PGD reduces the residual far below minibatch SGD at its
  # own stable step (half of 1/λ₁ and of 1/λ_max(K_g)). Measured: 0.14 vs 0.49 (λ₁/λ₅ = 9).
  # Known limit (module docstring of mskjax.optim): the batch estimator is biased by
  # ~(tr C)/b, so for λ₁/λ_{k+1} ≫ b it diverges (1.7e5 with cos(xW) features: NaN).
  steps, b = 120, 100
  pgd = T.train(apply_fn, w0, optax.sgd(0.5 * eta), x, y, steps=steps, loss="msk_mse",
                spectrum=spec, batch_size=b, record_steps=[steps], progress=False)
  sgd = T.train(apply_fn, w0, optax.sgd(0.5 / float(evals[-1])), x, y, steps=steps,
                batch_size=b, record_steps=[steps], progress=False)
  r_pgd = np.linalg.norm(pgd.train_predictions[-1] - y) / np.linalg.norm(y)
  r_sgd = np.linalg.norm(sgd.train_predictions[-1] - y) / np.linalg.norm(y)
  assert r_pgd < 0.5 * r_sgd, (r_pgd, r_sgd)


def test_input_errors(ntk2):
  x = _sphere(20, seed=10)
  with pytest.raises(ValueError, match="`get`"):
    kernels.kernel_operator(ntk2, x, get="foo")
  with pytest.raises(ValueError, match="`x`"):
    kernels.kernel_operator(ntk2, x[0])
  with pytest.raises(ValueError, match="NaN"):
    kernels.kernel_operator(ntk2, np.full((3, 2), np.nan))
  with pytest.raises(ValueError, match="`V`"):
    kernels.kernel_operator(ntk2, x) @ np.ones(5)
  with pytest.raises(TypeError, match="kernel_fn"):
    kernels.kernel_operator(3, x)
  with pytest.raises(ValueError, match="NaN/inf on `x`"):   # was a silently NaN K V
    kernels.kernel_operator(lambda a, b: jnp.log(a @ b.T), x, get=None, cache=True)
  # Under jit the operator works uncached ('auto' never caches a traced x).
  v = np.ones(20)
  f = jax.jit(lambda x, v: kernels.kernel_operator(ntk2, x, block_size=8) @ v)
  np.testing.assert_allclose(f(x, v), kernels.kernel_operator(ntk2, x, block_size=8) @ v,
                             rtol=1e-12)
  with pytest.raises(ValueError, match="n_landmarks"):
    mskjax.eigh_top(kernels.kernel_operator(ntk2, x), 3, method="nystrom", n_landmarks=50)


_SHARDED = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import mskjax
    from mskjax import kernels, modifiers
    from mskjax.nets import MLPSpec, stax_mlp
    assert len(jax.devices()) == 8, jax.devices()
    kf = stax_mlp(MLPSpec(depth=2, width=8, b_std=0.1))[2]
    x = np.random.default_rng(0).standard_normal((333, 10))
    v = np.random.default_rng(1).standard_normal((333, 5))
    one = np.asarray(mskjax.kernels.kernel_matvec(kf, x, v, block_size=32,
                                          devices=jax.devices()[:1]))
    many = np.asarray(mskjax.kernels.kernel_matvec(kf, x, v, block_size=32))
    K = np.asarray(kf(x, x, "ntk"))  # one call: its diagonal round-off differs (~1e-8)
    print("matvec", np.abs(many - one).max() / np.abs(one).max(),
          np.abs(many - K @ v).max() / np.abs(one).max())
    opts = dict(method="krylov", depth=3, oversample=6)
    op1 = kernels.kernel_operator(kf, x, block_size=32, cache=False, devices=jax.devices()[:1])
    op8 = kernels.kernel_operator(kf, x, block_size=32, cache=False)
    s1 = mskjax.msk_spectrum(op1, modifiers.flatten(), 5, **opts)
    s8 = mskjax.msk_spectrum(op8, modifiers.flatten(), 5, **opts)
    print("values", np.abs(np.asarray(s8.values) - np.asarray(s1.values)).max() / float(s1.values[0]))
""")


def test_sharded_equals_single_device():
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = dict(l.split(" ", 1) for l in out.stdout.strip().splitlines())
  same, dense = map(float, lines["matvec"].split())
  # Each row is the same sequence of block products on 1 or 8 devices; only XLA's
  # per-shape fusion/GEMM choices could differ, so allow a few ulps, not more.
  # Against a one-call dense K: the arc-cosine kernel's own ~1e-8 diagonal round-off.
  assert same <= 1e-14 and dense <= 1e-7
  assert float(lines["values"]) <= 1e-12


def _conv_features(a, w):
  h = jax.lax.conv_general_dilated(a, w, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
  return jnp.tanh(h).reshape(a.shape[0], -1)


def _conv_kernel(a, b, w):
  """A PSD kernel with convolutions: φ(a) φ(b)ᵀ, φ = tanh(conv(·, w)) flattened."""
  return _conv_features(a, w) @ _conv_features(b, w).T


def test_conv_kernel_operator_loops_in_python_and_matches_the_gram():
  # Uncached products of a kernel with convolutions on the CPU are a Python loop over
  # jitted blocks (mskjax._loops); oracle: Φ Φᵀ V in numpy (features computed once, no
  # blocking); the jitted kernel_matvec (lax path) agrees. (neural-tangents' CNN kernels
  # have no conv primitive — reduce_window sums — and keep the lax loop.)
  from mskjax import _loops
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((10, 8, 1)))
  w = jnp.asarray(rng.standard_normal((3, 1, 4)))
  V = jnp.asarray(rng.standard_normal((10, 3)))
  assert _loops.python_loop_faster(_conv_kernel, x[:4], x[:4], w)
  F = np.asarray(_conv_features(x, w))
  want = F @ (F.T @ np.asarray(V))
  op = kernels.kernel_operator(_conv_kernel, x, get=None, kernel_args=(w,), block_size=4,
                               cache=False)
  tol = dict(rtol=1e-12, atol=1e-12 * np.abs(want).max())
  np.testing.assert_allclose(np.asarray(op @ V), want, **tol)
  jitted = jax.jit(lambda a, u: kernels.kernel_matvec(_conv_kernel, a, u, get=None,
                                                      kernel_args=(w,), block_size=4))(x, V)
  np.testing.assert_allclose(np.asarray(jitted), want, **tol)
