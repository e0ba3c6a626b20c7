"""mskjax.kernels: blocked Gram matrices and matvecs equal their dense counterparts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
import jax.flatten_util

from mskjax import _loops, kernels, tangents
from mskjax.kernels import gram, kernel_matvec
from mskjax.tangents import empirical_ntk
from mskjax.nets import FlaxMLP, MLPSpec, stax_mlp
from mskjax._nt import empirical_ntk_fn

SPEC = MLPSpec(depth=2, width=64, activation="erf", W_std=1.4, b_std=0.2)


@pytest.fixture(scope="module")
def kernel_fn():
  return stax_mlp(SPEC)[2]


@pytest.fixture(scope="module")
def xs():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(size=(11, 3))), jnp.asarray(rng.normal(size=(7, 3)))


@pytest.mark.parametrize("get, block_size", [("ntk", None), ("ntk", 1), ("ntk", 3), ("ntk", 7),
                                              ("ntk", 50), ("nngp", None), ("nngp", 4)])
def test_gram_blocked_equals_dense(kernel_fn, xs, block_size, get):
  x1, x2 = xs
  k = gram(kernel_fn, x1, x2, get=get, block_size=block_size)
  assert k.shape == (11, 7) and k.dtype == jnp.float64
  np.testing.assert_allclose(k, kernel_fn(x1, x2, get), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("block_size", [None, 4, 11])
def test_gram_symmetric(kernel_fn, xs, block_size):
  x1, _ = xs
  k = np.asarray(gram(kernel_fn, x1, block_size=block_size))
  np.testing.assert_array_equal(k, k.T)
  np.testing.assert_allclose(k, kernel_fn(x1, x1, "ntk"), rtol=1e-12, atol=1e-14)


def test_gram_accepts_numpy_and_lists(kernel_fn):
  x = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
  np.testing.assert_allclose(gram(kernel_fn, x), gram(kernel_fn, np.asarray(x)))


@pytest.mark.parametrize("block_size", [None, 3, 5, "budget"])
@pytest.mark.parametrize("implementation", ["auto", "jvp", 1, 2])   # auto: c=3 -> jacobian
def test_empirical_ntk_blocked(xs, block_size, implementation):
  x1, x2 = xs
  spec = MLPSpec(depth=1, width=32, out_dim=3, b_std=0.1)
  model = FlaxMLP(spec)
  v = model.init(jax.random.PRNGKey(0), x1)
  ref = jax.jit(empirical_ntk_fn(model.apply, trace_axes=(-1,), implementation=1))(x1, x2, v)
  opts = dict(block_size=block_size)
  if block_size == "budget":   # P = 227 params, c = 3: a 100 kB budget gives 4-row blocks
    opts = dict(block_size=None, memory_budget=100_000)
    if implementation in (1, 2):
      assert 1 < tangents._empirical_block_edge(v, 3, 11, implementation, 100_000) < 11
  k = empirical_ntk(model.apply, v, x1, x2, implementation=implementation, **opts)
  np.testing.assert_allclose(k, ref, rtol=1e-10, atol=1e-12)
  ksym = np.asarray(empirical_ntk(model.apply, v, x1, **opts))
  np.testing.assert_allclose(ksym, ksym.T, rtol=1e-12, atol=1e-12)
  # Trace over outputs is a mean: (1/c) sum_k J_k J_k^T.
  jac = jax.jit(jax.jacobian(lambda p: model.apply(p, x1)))(v)
  flat = jnp.concatenate([a.reshape(11, 3, -1) for a in jax.tree.leaves(jac)], axis=-1)
  np.testing.assert_allclose(ksym, jnp.einsum("ikp,jkp->ij", flat, flat) / 3, rtol=1e-10)


@pytest.mark.parametrize("block_size, m", [(1, None), (4, None), (4, 3), (5, 1), (11, 3),
                                           (64, None)])
def test_kernel_matvec(kernel_fn, xs, block_size, m):
  x, _ = xs
  shape = (11,) if m is None else (11, m)
  v = jnp.asarray(np.random.default_rng(1).normal(size=shape))
  kv = kernel_matvec(kernel_fn, x, v, block_size=block_size)
  assert kv.shape == shape
  np.testing.assert_allclose(kv, kernel_fn(x, None, "ntk") @ v, rtol=1e-12, atol=1e-12)


def test_kernel_matvec_jittable(kernel_fn, xs):
  x, _ = xs
  v = jnp.ones(11)
  f = jax.jit(lambda x, v: kernel_matvec(kernel_fn, x, v, block_size=4, get="nngp"))
  np.testing.assert_allclose(f(x, v), kernel_fn(x, None, "nngp") @ v, rtol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (jnp.ones(5), "x1 must have a leading axis of n points"),
    (jnp.ones((0, 3)), "non-empty"),
    (jnp.array([[1.0, jnp.nan, 0.0]]), "x1 contains NaN"),
    (jnp.array([[1.0, jnp.inf, 0.0]]), "x1 contains NaN"),
])
def test_gram_bad_x1(kernel_fn, bad, match):
  with pytest.raises(ValueError, match=match):
    gram(kernel_fn, bad)


def test_gram_bad_x2_and_args(kernel_fn, xs):
  x1, _ = xs
  with pytest.raises(ValueError, match="same per-point shape"):
    gram(kernel_fn, x1, jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="x2 contains NaN"):
    gram(kernel_fn, x1, jnp.full((2, 3), jnp.nan))
  with pytest.raises(ValueError, match="x2 must have a leading axis"):
    gram(kernel_fn, x1, jnp.ones(3))
  with pytest.raises(ValueError, match="get must be"):
    gram(kernel_fn, x1, get="cov")
  for bs in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match="block_size"):
      gram(kernel_fn, x1, block_size=bs)
  with pytest.raises(TypeError, match="numeric"):
    gram(kernel_fn, np.array([["a", "b", "c"]]))


def test_empirical_ntk_errors(xs):
  x1, _ = xs
  model = FlaxMLP(MLPSpec(depth=1, width=4))
  v = model.init(jax.random.PRNGKey(0), x1)
  with pytest.raises(ValueError, match="implementation=3"):
    empirical_ntk(model.apply, v, x1, implementation=3)
  with pytest.raises(ValueError, match="`implementation` must be one of 'auto'"):
    empirical_ntk(model.apply, v, x1, implementation=0)
  with pytest.raises(ValueError, match=r"shape \(n, c\)"):
    empirical_ntk(lambda p, x: model.apply(p, x)[:, 0], v, x1, implementation=1)
  with pytest.raises(ValueError, match="full=True"):
    empirical_ntk(model.apply, v, x1, full=True, implementation=2)
  with pytest.raises(ValueError, match="x1 contains NaN"):
    empirical_ntk(model.apply, v, x1.at[0, 0].set(jnp.nan), implementation=1)
  with pytest.raises(ValueError, match="x1 contains NaN"):
    empirical_ntk(model.apply, v, x1.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="memory_budget"):
    empirical_ntk(model.apply, v, x1, memory_budget=0)


class _CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("implementation", ["jacobian", "jvp"])
def test_empirical_ntk_full_images_jit(implementation):
  """Full multi-output kernel on image inputs = J Jᵀ from a jacrev full Jacobian (float64);
  callable under jit with closed-over inputs; blocks from a small budget change nothing."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 6, 6, 1)))
  model = _CNN()
  v = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.PRNGKey(0), x))
  flat, unravel = jax.flatten_util.ravel_pytree(v["params"])
  J = jax.jacrev(lambda f: model.apply({"params": unravel(f)}, x).reshape(-1))(flat)
  want = np.asarray(J @ J.T)
  Kf = empirical_ntk(model.apply, v, x, full=True, implementation=implementation)
  np.testing.assert_allclose(Kf, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())
  small = empirical_ntk(model.apply, v, x, full=True, implementation=implementation,
                        memory_budget=20_000)
  np.testing.assert_allclose(small, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())
  Kt = jax.jit(lambda p: empirical_ntk(model.apply, p, x, implementation=implementation))(v)
  np.testing.assert_allclose(Kt, np.einsum("acbc->ab", want.reshape(5, 3, 5, 3)) / 3,
                             rtol=1e-10)
  # scalar outputs (n,) are one output per point
  k1 = empirical_ntk(lambda p, a: model.apply(p, a)[:, 0], v, x, implementation=implementation)
  np.testing.assert_allclose(k1, want[::3, ::3], rtol=1e-10, atol=1e-12 * np.abs(want).max())


def test_kernel_matvec_errors(kernel_fn, xs):
  x, _ = xs
  with pytest.raises(ValueError, match=r"v must have shape \(n,\)"):
    kernel_matvec(kernel_fn, x, jnp.ones(10), block_size=4)
  with pytest.raises(ValueError, match=r"v must have shape"):
    kernel_matvec(kernel_fn, x, jnp.ones((11, 2, 1)), block_size=4)
  with pytest.raises(ValueError, match="`v` has 11 NaN"):
    kernel_matvec(kernel_fn, x, jnp.full(11, jnp.nan), block_size=4)
  with pytest.raises(ValueError, match="x contains NaN"):
    kernel_matvec(kernel_fn, x.at[1, 1].set(jnp.nan), jnp.ones(11), block_size=4)
  with pytest.raises(ValueError, match="block_size"):
    kernel_matvec(kernel_fn, x, jnp.ones(11), block_size=0)


# ------------------------------------------------------------------ closed-form MLP kernels
@pytest.mark.parametrize("activation", ["relu", "erf", "linear"])
@pytest.mark.parametrize("depth,W_std,b_std", [(1, 1.0, 0.0), (3, 1.7, 0.3), (2, 0.8, None)])
def test_mlp_kernel_matches_neural_tangents_to_1e12_in_float64(activation, depth, W_std,
                                                               b_std):
  # Oracles. Off the diagonal: neural-tangents' stax kernel_fn of the same MLPSpec
  # (independent code, libm arctan2); 1e-12 relative to the largest entry allows float64
  # rounding of a few dozen operations (measured ~1e-16). On the diagonal of k(x, x):
  # the variance-only recursion of tests/oracles.py (the angle is exactly 0 there, no
  # arccos), to the same 1e-12. neural-tangents is no oracle on that diagonal: it forms
  # cos θ = q₁₂/√(q q') ≈ 1 − δ with δ a few ulp whose size depends on how XLA rounds the
  # GEMM and the norms (the instruction set it compiles for: exact 1 under AVX2, 1 − 4e-16
  # under AVX-512/SSE4.2), and arccos turns δ into θ ≈ √(2δ) ~ 3e-8, i.e. ~1e-8 relative in
  # the ReLU NTK's (π − θ)/π per layer. Its diagonal is still checked against the oracle,
  # to depth · √(2 · 16 ε)/π (δ ≤ 16 ε), which also validates the oracle.
  from mskjax.nets import MLPSpec, stax_mlp
  from oracles import mlp_kernel_diagonal
  rng = np.random.default_rng(3)
  x1 = jnp.asarray(rng.standard_normal((23, 5)), jnp.float64)
  x2 = jnp.asarray(rng.standard_normal((11, 5)), jnp.float64)
  # a zero input (the (0, 0) angle). Not tested: (anti)parallel pairs of distinct rows,
  # where √(q q' − q₁₂²) turns the rounding of the GEMM (1e-16) into 1e-8 in both codes,
  # with signs that depend on the summation order.
  x1 = x1.at[3].set(0.0)
  spec = MLPSpec(depth=depth, width=4, activation=activation, W_std=W_std, b_std=b_std)
  nt = stax_mlp(spec)[2]
  mk = kernels.mlp_kernel_fn(spec)
  assert isinstance(mk, kernels.MLPKernel)
  off = ~np.eye(x1.shape[0], dtype=bool)
  eps = np.finfo(np.float64).eps
  nt_diag_rtol = depth * np.sqrt(2 * 16 * eps) / np.pi
  for get in ("ntk", "nngp"):
    diag = mlp_kernel_diagonal(np.asarray(x1), activation, depth, W_std, b_std, get)
    for other in (None, x2):
      A = np.asarray(nt(x1, other, get))
      B = np.asarray(mk(x1, other, get))
      assert B.shape == A.shape and B.dtype == np.float64
      scale = np.abs(A).max()
      if other is not None:
        np.testing.assert_allclose(B, A, rtol=0, atol=1e-12 * scale)
        continue
      np.testing.assert_allclose(B[off], A[off], rtol=0, atol=1e-12 * scale)
      np.testing.assert_allclose(np.diag(B), diag, rtol=0, atol=1e-12 * scale)
      np.testing.assert_allclose(np.diag(A), diag, rtol=0, atol=nt_diag_rtol * scale)
  # through the blocked drivers (the diagonal blocks carry the exact-cosine branch)
  G = np.asarray(kernels.gram(mk, x1, block_size=8))
  A = np.asarray(nt(x1, None, "ntk"))
  np.testing.assert_allclose(G[off], A[off], rtol=0, atol=1e-12 * np.abs(A).max())
  np.testing.assert_allclose(np.diag(G), mlp_kernel_diagonal(np.asarray(x1), activation, depth,
                                                             W_std, b_std, "ntk"),
                             rtol=0, atol=1e-12 * np.abs(A).max())


def test_mlp_kernel_fn_falls_back_or_names_the_fix():
  from mskjax.nets import MLPSpec, stax_mlp
  spec = MLPSpec(depth=1, width=4, activation="gelu")
  fb = stax_mlp(spec)[2]
  assert kernels.mlp_kernel_fn(spec, fallback=fb) is fb
  with pytest.raises(ValueError, match="fallback"):
    kernels.mlp_kernel_fn(MLPSpec(depth=1, width=4, parameterization="standard"))
  with pytest.raises(ValueError, match="get"):
    kernels.mlp_kernel_fn(MLPSpec(depth=1, width=4))(jnp.ones((2, 3)), None, "both")


def test_polynomial_arccos_arcsin_match_numpy_on_the_whole_interval():
  # oracle: numpy's libm arccos/arcsin on [-1, 1] (dense grid, both branch edges ±1/2, the
  # ends, values within 1e-12 of ±1); 4 ulp of π absolute.
  c = np.concatenate([np.linspace(-1.0, 1.0, 20001), [0.5, -0.5, np.nextafter(0.5, 1),
                                                       1 - 1e-12, -1 + 1e-12, 0.0, 1e-300]])
  with jax.enable_x64(True):
    acos = np.asarray(kernels._arccos(jnp.asarray(c)))
    asin = np.asarray(kernels._arcsin(jnp.asarray(c)))
  np.testing.assert_allclose(acos, np.arccos(c), rtol=0, atol=4 * np.pi * 2.0 ** -52)
  np.testing.assert_allclose(asin, np.arcsin(c), rtol=0, atol=4 * np.pi * 2.0 ** -52)


def test_float32_arccos_arcsin_polynomial_match_numpy_to_float32_rounding():
  # The float32 path (Cephes asinf: a polynomial, no divide). Oracle: numpy's float64 libm
  # on the float32 grid points; 8 float32 ulp of π absolute (asinf's own ~2.5e-7 relative
  # error plus the reduction's rounding), and exactly float32 results.
  c32 = np.concatenate([np.linspace(-1.0, 1.0, 20001), [0.5, -0.5, 1 - 2e-7, -1 + 2e-7,
                                                        0.0]]).astype(np.float32)
  acos = jax.jit(kernels._arccos)(jnp.asarray(c32))
  asin = jax.jit(kernels._arcsin)(jnp.asarray(c32))
  assert acos.dtype == asin.dtype == jnp.float32
  c = c32.astype(np.float64)
  tol = 8 * np.pi * 2.0 ** -23
  np.testing.assert_allclose(np.asarray(acos, np.float64), np.arccos(c), rtol=0, atol=tol)
  np.testing.assert_allclose(np.asarray(asin, np.float64), np.arcsin(c), rtol=0, atol=tol)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_mlp_kernel_in_float32_within_3e6_of_neural_tangents_float64(activation):
  # Float32 inputs compute in float32. Oracle: neural-tangents' kernel in float64. Points
  # in general position (no nearly parallel pairs, where a float32 ReLU NTK carries √ε_32
  # angle errors in any implementation); 3e-6 of the largest entry ≈ 25 float32 ulp
  # (measured under jit: ReLU 4e-7, erf 1.3e-6 — XLA's float32 rsqrt/atan2 add a few ulp).
  from mskjax.nets import MLPSpec, stax_mlp
  rng = np.random.default_rng(5)
  x1, x2 = rng.standard_normal((40, 6)), rng.standard_normal((17, 6))
  spec = MLPSpec(depth=3, width=4, activation=activation, W_std=1.3, b_std=0.1)
  mk = kernels.mlp_kernel_fn(spec)
  with jax.enable_x64(True):
    nt = stax_mlp(spec)[2]
    # the NTK recursion contains the NNGP one: 'ntk' on k(X, X) and k(X, X') covers both
    for other in (None, x2):
      A = np.asarray(nt(jnp.asarray(x1), None if other is None else jnp.asarray(other),
                        "ntk"))
      # jitted: one compilation instead of one per elementwise op in eager mode
      B = (jax.jit(lambda a: mk(a, None, "ntk"))(jnp.asarray(x1, jnp.float32))
           if other is None else
           jax.jit(lambda a, b: mk(a, b, "ntk"))(jnp.asarray(x1, jnp.float32),
                                                 jnp.asarray(other, jnp.float32)))
      assert B.dtype == jnp.float32
      np.testing.assert_allclose(np.asarray(B, np.float64), A, rtol=0,
                                 atol=3e-6 * np.abs(A).max())


def test_cnn_blocked_products_loop_in_python_and_match_jacrev():
  """On the CPU a conv net's blocked kernels run as Python loops over jitted blocks
  (mskjax._loops); oracle: J Jᵀ from an explicit jacrev Jacobian (float64), and the lax
  path (the same computation under jit) agrees to rounding."""
  from mskjax import _loops
  x = jnp.asarray(np.random.default_rng(1).standard_normal((7, 6, 6, 1)))
  model = _CNN()
  v = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.PRNGKey(1), x))
  assert _loops.python_loop_faster(model.apply, v, x[:1])
  flat, unravel = jax.flatten_util.ravel_pytree(v["params"])
  J = np.asarray(jax.jacrev(lambda f: model.apply({"params": unravel(f)}, x).reshape(-1))(
      flat)).reshape(7, 3, -1)
  want = np.einsum("acp,bdp->acbd", J, J)
  tol = dict(rtol=1e-10, atol=1e-12 * np.abs(want).max())
  Kf = empirical_ntk(model.apply, v, x, full=True, block_size=3)      # 3 x 3 blocks, padded
  np.testing.assert_allclose(Kf, want.reshape(21, 21), **tol)
  D = tangents.ntk_diagonal_blocks(model.apply, v, x, block_size=3)
  np.testing.assert_allclose(D, np.einsum("acp,adp->acd", J, J), **tol)
  Dj = jax.jit(lambda p: tangents.ntk_diagonal_blocks(model.apply, p, x, block_size=3))(v)
  np.testing.assert_allclose(Dj, D, **tol)


class _TwoLayer(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(jnp.tanh(nn.Dense(5)(x)))


def test_diagonal_blocks_and_precompiled_operator_match_jacrev_and_reuse_compilations():
  """An MLP (no convolution: the lax.map path) on n = 7 points in blocks of 3 (padded):
  the diagonal blocks J_x J_xᵀ and the precompiled JVP/VJP blocks against an explicit
  jacrev Jacobian (float64); a second network of the same shapes (other parameters, a
  fresh operator) compiles nothing new — the programs are keyed on the network."""
  x = jnp.asarray(np.random.default_rng(2).standard_normal((7, 4)))
  model = _TwoLayer()
  sizes = {}
  for seed in (0, 1):
    v = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.PRNGKey(seed), x))
    flat, unravel = jax.flatten_util.ravel_pytree(v["params"])
    J = np.asarray(jax.jacrev(lambda f: model.apply({"params": unravel(f)}, x).reshape(-1))(
        flat)).reshape(7, 3, -1)
    tol = dict(rtol=1e-10, atol=1e-12 * np.abs(J).max() ** 2)
    D = tangents.ntk_diagonal_blocks(model.apply, v, x, block_size=3)
    np.testing.assert_allclose(D, np.einsum("acp,adp->acd", J, J), **tol)
    op = tangents.jacobian_operator(model.apply, v, x, columns=4, block_size=3,
                                    precompile=True)
    T = np.random.default_rng(seed).standard_normal((4, flat.size))
    Tt = jax.vmap(unravel)(jnp.asarray(T))
    np.testing.assert_allclose(op.jvp(Tt), np.einsum("acp,mp->acm", J, T), **tol)
    V = np.random.default_rng(seed + 5).standard_normal((7, 3, 4))
    got = np.asarray(jax.vmap(lambda t: jax.flatten_util.ravel_pytree(t)[0])(op.vjp(V)))
    np.testing.assert_allclose(got, np.einsum("acp,acm->mp", J, V), **tol)
    sizes[seed] = (tangents._diag_run._cache_size(), tangents._jvp_block._cache_size(),
                   tangents._vjp_block._cache_size())
  assert sizes[1] == sizes[0]


def test_in_background_keeps_the_callers_x64_setting():
  """Worker threads do not inherit a jax.enable_x64 context; in_background carries it (the
  test process runs with x64 on globally, so the float32 case is the caller's context)."""
  with jax.enable_x64(False):
    assert _loops.in_background(lambda: jnp.zeros(1).dtype).result() \
        == jnp.float32
  with jax.enable_x64(True):
    assert _loops.in_background(lambda: jnp.zeros(1).dtype).result() \
        == jnp.float64
  with pytest.raises(ZeroDivisionError):
    _loops.in_background(lambda: 1 / 0).result()


def test_network_outputs_match_apply_and_compile_once_per_network():
  x = jnp.asarray(np.random.default_rng(4).standard_normal((5, 4)))
  model = _TwoLayer()
  sizes = []
  for seed in (0, 1):
    v = model.init(jax.random.PRNGKey(seed), x)
    np.testing.assert_allclose(tangents.network_outputs(model.apply, v, x),
                               model.apply(v, x), rtol=1e-12)   # the same float64 ops
    sizes.append(tangents._forward._cache_size())
  assert sizes[1] == sizes[0]
