"""Kernel matrices: analytic NTK/NNGP and empirical NTK Gram blocks, and the kernel operator.

* :func:`gram` -- K_ij = Theta(x1_i, x2_j) from a neural-tangents ``kernel_fn``;
* :func:`mskjax.tangents.empirical_ntk` (its home is :mod:`mskjax.tangents`) --
  Theta_hat(x, x') = (1/c) sum_k <df_k(x)/dtheta, df_k(x')/dtheta>;
* :func:`kernel_operator` -- K = k(X, X) as a :class:`KernelOperator` ``V -> K V``: blocked,
  memory-budgeted (:func:`block_size_for_budget`), row-sharded over devices, optionally
  with K cached (then every product is a GEMM); what the eigensolvers of
  :mod:`mskjax.spectrum` and :func:`mskjax.msk_spectrum` consume;
* :func:`kernel_matvec` -- one product K(x, x) v of that operator (jittable).

Blocking (:mod:`mskjax._blocks`): inputs are padded (by repeating their last row) to a multiple of
the block size, and one jitted block function of a fixed shape is called for every block, so
there is a single compilation per (block shape, kernel) and device memory stays O(block^2)
plus the output. Symmetric Gram matrices (:func:`gram`, :func:`empirical_ntk` with
``x2=None``, a cached operator) evaluate the upper block triangle once and mirror it.
:func:`gram` and :func:`empirical_ntk` are host-side drivers (a Python loop over blocks, not
jittable); the operator's product is one jitted function (``lax.map`` over row blocks,
``lax.scan`` over column blocks), or, for kernels with convolutions on the CPU (where XLA
runs them inside loops on a slow path, :mod:`mskjax._loops`), a Python loop over the
jitted block product with the same sums in the same order. :func:`mlp_kernel_fn` gives the
closed-form MLP kernels (one GEMM plus one elementwise pass per layer). Everything is float64 when ``jax_enable_x64`` is on
(inputs are cast to the default float dtype).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mskjax import _blocks
from mskjax import _loops
from mskjax import _validate
from mskjax._blocks import DEFAULT_MEMORY_BUDGET, block_size_for_budget  # public spellings

__all__ = ["gram", "kernel_matvec", "KernelOperator", "kernel_operator",
           "matrix_operator", "DEFAULT_MEMORY_BUDGET", "block_size_for_budget",
           "sphere_mercer_eigenvalues", "MLPKernel", "mlp_kernel_fn"]

_GETS = ("ntk", "nngp")


_float_dtype = _blocks.float_dtype


def as_inputs(x, name, where):
  """Casts ``x`` to a float array of ``n`` points, shape ``(n, ...)`` (``(n, d)`` vectors,
  ``(n, L, C)`` sequences, ``(n, H, W, C)`` images in neural-tangents' NHWC convention),
  checking the shape and (when concrete) finiteness. Blocking acts on the point axis only."""
  if x is None:
    raise TypeError(f"{where}: {name} must be an array of shape (n, ...) (e.g. (n, d)); got None.")
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  if len(x.shape) < 2:
    raise ValueError(f"{where}: {name} must have a leading axis of n points and at least one "
                     f"feature axis, shape (n, d) or (n, ...); got shape {tuple(x.shape)}. "
                     f"Reshape it, e.g. {name}[:, None] for scalar inputs.")
  if any(s == 0 for s in x.shape):
    raise ValueError(f"{where}: {name} must be non-empty; got shape {tuple(x.shape)}.")
  if not (jnp.issubdtype(x.dtype, jnp.number) or jnp.issubdtype(x.dtype, jnp.bool_)):
    raise TypeError(f"{where}: {name} must be numeric; got dtype {x.dtype}.")
  if isinstance(x, np.ndarray):
    # a host array: checked on the host (the device check compiles a program per shape)
    xh = np.asarray(x, _float_dtype())
    if not np.all(np.isfinite(xh)):
      raise ValueError(f"{where}: {name} contains NaN or inf; remove or impute those rows "
                       "before computing the kernel.")
    return jax.device_put(xh)     # (jnp.asarray of a host array compiles an identity)
  x = jnp.asarray(x, _float_dtype())
  if not isinstance(x, jax.core.Tracer):
    # evaluated now even under jit (a closed-over constant), never staged into the trace
    with jax.ensure_compile_time_eval():
      bad = not bool(jnp.all(jnp.isfinite(x)))
    if bad:
      raise ValueError(f"{where}: {name} contains NaN or inf; remove or impute those rows "
                       "before computing the kernel.")
  return x


def check_pair(x1, x2, where):
  x1 = as_inputs(x1, "x1", where)
  if x2 is not None:
    x2 = as_inputs(x2, "x2", where)
    if x2.shape[1:] != x1.shape[1:]:
      raise ValueError(f"{where}: x1 and x2 must have the same per-point shape; got "
                       f"x1.shape={tuple(x1.shape)}, x2.shape={tuple(x2.shape)}.")
  return x1, x2


def check_block_size(block_size, required=False):
  if block_size is None and not required:
    return None
  return _validate.check_int(block_size, "block_size", lo=1)


def _check_get(get, where):
  if get not in _GETS:
    raise ValueError(f"{where}: get must be one of {_GETS}; got {get!r}.")


def gram(kernel_fn: Callable, x1, x2=None, *, get: str = "ntk",
         block_size: Optional[int] = None) -> jax.Array:
  """Analytic Gram matrix K_ij = k(x1_i, x2_j) of a neural-tangents ``kernel_fn``, blockwise.

  k is the NTK Theta (``get='ntk'``) or the NNGP covariance (``get='nngp'``); the output axis
  is traced as in neural-tangents (full kernel K (x) I_c). With ``x2=None`` K = k(x1, x1) is
  computed on the upper block triangle only and mirrored, so it is exactly symmetric.

  Args:
    kernel_fn: ``kernel_fn(x1, x2, get)``, e.g. ``stax_mlp(spec)[2]``.
    x1: inputs of shape (n1, d).
    x2: inputs of shape (n2, d), or None for x1.
    get: ``'ntk'`` or ``'nngp'``.
    block_size: rows/columns per block; None computes K in one call. Memory on the device
      is O(block_size^2 + n1 n2); one compilation per (kernel_fn, get, block shape).

  Returns:
    (n1, n2) array (float64 under ``jax_enable_x64``).

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> from mskjax.nets import MLPSpec, stax_mlp
    >>> kernel_fn = stax_mlp(MLPSpec(depth=1, width=8))[2]
    >>> x = jnp.array([[1., 0.], [0., 1.], [0.6, 0.8]])
    >>> print(np.round(np.asarray(gram(kernel_fn, x, block_size=2), float), 3))
    [[0.5   0.08  0.275]
     [0.08  0.5   0.366]
     [0.275 0.366 0.5  ]]
  """
  _check_get(get, "gram")
  _validate.check_kernel_fn(kernel_fn, get, fix="gram needs kernel_fn(x1, x2, get): wrap a "
                            "plain kernel k(x1, x2) as lambda a, b, get: k(a, b)")
  x1, x2 = check_pair(x1, x2, "gram")
  block_size = check_block_size(block_size)
  pair2, sym2 = _block_fns(kernel_fn, get)
  pair, sym = (lambda a, b: pair2(a, b, ())), (lambda a: sym2(a, ()))
  if block_size is None:
    K = sym(x1) if x2 is None else pair(x1, x2)
    _validate.check_kernel_block(K, (x1.shape[0], (x1 if x2 is None else x2).shape[0]),
                                 symmetric=x2 is None, inputs="x1")
    return K
  return _blocks.assemble_blocks(pair, sym, x1, x2, block_size)


def _kernel_call(kernel_fn, get):
  if get is None:
    return lambda a, b, *args: kernel_fn(a, b, *args)
  return lambda a, b, *args: kernel_fn(a, b, get, *args)


@_blocks.cache_by_function
def _block_product_fn(kernel_fn, get):
  """Jitted ``acc + k(x_I, x_J) V_J``: the body of ``_blocks.row_block_products`` as one
  call (for ``_blocks.row_block_products_python``)."""
  call = _kernel_call(kernel_fn, get)

  @jax.jit
  def step(acc, xa, xj, vj, args):
    return acc + call(xa, xj, *args).astype(vj.dtype) @ vj
  return step


@functools.lru_cache(maxsize=64)
def _product_fn(kernel_fn, get, bs, devices):
  """One jitted (and, for several devices, row-sharded) blocked product per configuration."""
  local = functools.partial(_blocks.row_block_products, _kernel_call(kernel_fn, get), bs)
  if len(devices) == 1:
    return jax.jit(local)
  from jax.sharding import Mesh, PartitionSpec as P
  mesh = Mesh(np.asarray(devices), ("rows",))
  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("rows"), P(), P(), P()),
                          out_specs=P("rows"), check_vma=False)
  return jax.jit(sharded)


@_blocks.cache_by_function
def _block_fns(kernel_fn, get):
  """Jitted ``k(a, b, *args)`` and ``k(a, None, *args)`` (symmetric diagonal blocks)."""
  call = _kernel_call(kernel_fn, get)
  pair = jax.jit(lambda a, b, args: call(a, b, *args))
  sym = jax.jit(lambda a, args: call(a, None, *args))
  return pair, sym


def _check_devices(devices):
  devices = tuple(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("`devices` must be a non-empty sequence of jax devices (or None for all).")
  return devices


@jax.jit
def _dense_product(K, v):
  return K @ v


class KernelOperator(NamedTuple):
  r"""The kernel matrix ``K = k(X, X)`` as an operator ``V ↦ K V`` (``op @ V``).

  Built by :func:`kernel_operator` (from a kernel function, blocked, memory-budgeted,
  row-sharded, optionally with K cached), :func:`matrix_operator` (from a matrix K), or
  directly as ``KernelOperator(n, dtype, matmul)`` for any symmetric PSD product
  (e.g. an empirical NTK ``V ↦ J (Jᵀ V)``).
  Every eigensolver of :func:`mskjax.eigh_top` and :func:`mskjax.msk_spectrum` accepts it.

  Attributes:
    n: number of points (K is ``n × n``).
    dtype: dtype of the products.
    matmul: ``V ↦ K V`` for ``V`` of shape ``(n,)`` or ``(n, m)`` (checked: shape, NaN/inf).
    block_size: block edge b of the kernel blocks (``n`` for a matrix; else ``None``).
    devices: devices the rows are sharded over.
    cached: whether K is held in memory (every product is then one GEMM).
    matrix: the cached ``(n, n)`` K, or ``None``.
    x: the points X (``None`` for :func:`matrix_operator`).
    kernel: ``(a, b) ↦ k(a, b)`` for point blocks a, b (``b=None``: k(a, a)), or ``None``;
      what Nyström needs.
    symmetric: whether products evaluate only the blocks ``(I, J)``, ``J >= I``, each used
      for both ``K_IJ V_J`` and ``K_JI V_I`` (half the kernel evaluations).
    block_dtype: dtype the kernel blocks are evaluated and multiplied in (``dtype`` unless
      asked otherwise); sums over blocks are float64 in the symmetric product.
    cross: ``(x_new, V) ↦ k(x_new, X) V`` in row blocks of the same budget (never the whole
      ``(m, n)`` matrix), or ``None``; what test predictions need.
  """
  n: int
  dtype: Any
  matmul: Callable
  block_size: Optional[int] = None
  devices: tuple = ()
  cached: bool = False
  matrix: Any = None
  x: Any = None
  kernel: Optional[Callable] = None
  symmetric: bool = False
  block_dtype: Any = None
  cross: Optional[Callable] = None

  def __matmul__(self, v):
    return self.matmul(v)


def _checked_columns(v, n, dtype):
  v = _validate.finite_array(v, "V", ndim=(1, 2)).astype(dtype)
  if v.shape[0] != n:
    raise ValueError(f"`V` must have n = {n} rows (one per point of `x`), got shape "
                     f"{tuple(v.shape)}.")
  return v


# ------------------------------------------------------------------ the symmetric product
def _block_pairs(nb):
  """The upper block triangle (I, J), J > I, in a fixed order (row-major)."""
  ii, jj = np.triu_indices(nb, k=1)
  return ii.astype(np.int32), jj.astype(np.int32)


@functools.lru_cache(maxsize=64)
def _symmetric_programs(kernel_fn, get, devices, block_dtype):
  """The two jitted block programs of the symmetric product, one per shape:

  * ``diag(xb, vb, I, args)`` → ``k(X_I, X_I) V_I`` (``k(a, None)``: exact diagonal angles
    for neural-tangents style kernels);
  * ``pair(xb, vb, I, J, args)`` → ``(K_IJ V_J, K_IJᵀ V_I)`` with ``K_IJ = k(X_I, X_J)``.

  ``xb`` ``(nb, b, ...)`` and ``vb`` ``(nb, b, m)`` hold all blocks (replicated); ``I``, ``J``
  are ``(n_devices,)`` block indices, one pair per device (``jax.shard_map`` over a 1-D mesh
  for several devices): every pair is the same computation on one device or many."""
  call = _kernel_call(kernel_fn, get)
  dt = jnp.dtype(block_dtype)

  def diag_local(xb, vb, I, args):
    xi, vi = xb[I[0]], vb[I[0]]
    kb = (call(xi, None, *args) if get is not None else call(xi, xi, *args)).astype(dt)
    return (kb @ vi)[None]

  def pair_local(xb, vb, I, J, args):
    xi, xj = xb[I[0]], xb[J[0]]
    kb = call(xi, xj, *args).astype(dt)
    return (kb @ vb[J[0]])[None], (kb.T @ vb[I[0]])[None]

  if len(devices) == 1:
    return jax.jit(diag_local), jax.jit(pair_local)
  from jax.sharding import Mesh, PartitionSpec as P
  mesh = Mesh(np.asarray(devices), ("pairs",))
  diag = jax.shard_map(diag_local, mesh=mesh, in_specs=(P(), P(), P("pairs"), P()),
                       out_specs=P("pairs"), check_vma=False)
  pair = jax.shard_map(pair_local, mesh=mesh, in_specs=(P(), P(), P("pairs"), P("pairs"), P()),
                       out_specs=(P("pairs"), P("pairs")), check_vma=False)
  return jax.jit(diag), jax.jit(pair)


def _symmetric_product(programs, xb, v, bs, nd, args, out_dtype):
  r"""``K V`` from the upper block triangle: ``(K V)_I = Σ_{J>=I} K_IJ V_J + Σ_{J<I} K_JIᵀ V_J``.

  A Python loop over batches of ``nd`` block pairs (one per device), each batch one call of
  a jitted program of fixed shape; the next batch is dispatched before the previous one's
  two ``(b, m)`` results are added, in float64 on the host, in the same order whatever the
  number of devices. The blocks and their GEMMs run in ``block_dtype``."""
  diag, pair = programs
  n, m = v.shape
  nb = xb.shape[0]
  dt = xb.dtype
  vh = np.zeros((nb * bs, m), dt)
  vh[:n] = np.asarray(v, dt)
  vb = jax.device_put(vh.reshape(nb, bs, m))
  acc = np.zeros((nb, bs, m), np.float64)
  ii, jj = _block_pairs(nb)
  dsteps = [np.arange(s, s + nd) % nb for s in range(0, nb, nd)]
  psteps = [(np.arange(s, s + nd) % max(len(ii), 1), s) for s in range(0, len(ii), nd)]

  def diag_add(out, idx):
    out = np.asarray(out, np.float64)
    for t, i in enumerate(idx):
      acc[i] += out[t]

  pending = None
  for s, idx in enumerate(dsteps):
    out = diag(xb, vb, jnp.asarray(idx), args)
    if pending is not None:
      pending()
    cnt = min(nd, nb - s * nd)
    pending = (lambda o=out, ix=idx[:cnt]: diag_add(o, ix))
  for sel, start in psteps:
    I, J = ii[sel], jj[sel]
    a, b = pair(xb, vb, jnp.asarray(I), jnp.asarray(J), args)
    if pending is not None:
      pending()
    cnt = min(nd, len(ii) - start)

    def pair_add(a=a, b=b, I=I[:cnt], J=J[:cnt]):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      for t in range(len(I)):
        acc[I[t]] += a[t]
        acc[J[t]] += b[t]
    pending = pair_add
  if pending is not None:
    pending()
  return acc.reshape(-1, m)[:n].astype(out_dtype)


LANES = 8
"""Independent accumulators of the compiled symmetric product: block pairs are dealt to
``LANES`` lanes round-robin, each lane sums its pairs in order, and the lanes are added on
the host in order — the same sums for any number of devices dividing ``LANES``."""


def _lanes(nd, n_rows, m, memory_budget):
  """Lanes for ``nd`` devices: a multiple of ``nd`` (``LANES`` rounded up) when their
  ``(n, m)`` float64 accumulators take at most a quarter of the budget, else ``nd``."""
  lanes = nd * math.ceil(LANES / nd)
  return lanes if lanes * n_rows * m * 8 <= memory_budget // 4 else nd


def _lane_schedule(nb, lanes):
  """``(I, J, W)`` of shape ``(lanes, T)``: the upper block triangle (diagonal included)
  dealt round-robin to the lanes, padded with weight-0 pairs (0, 0)."""
  ii, jj = np.triu_indices(nb)
  p = ii.size
  T = math.ceil(p / lanes)
  I = np.zeros(lanes * T, np.int32); J = np.zeros(lanes * T, np.int32)
  W = np.zeros(lanes * T, np.float32)
  I[:p], J[:p], W[:p] = ii, jj, 1.0
  # pair q goes to lane q % lanes, step q // lanes
  return (I.reshape(T, lanes).T.copy(), J.reshape(T, lanes).T.copy(),
          W.reshape(T, lanes).T.copy())


@functools.lru_cache(maxsize=64)
def _symmetric_program(kernel_fn, get, devices, block_dtype):
  r"""The compiled symmetric product: for each lane, ``lax.scan`` over its block pairs
  ``(I, J)``, ``J >= I``, adding ``K_IJ V_J`` to rows I and ``K_IJᵀ V_I`` to rows J (not
  twice on a diagonal block, which is ``k(X_I, None)``: exact diagonal angles) of a float64
  accumulator; ``lax.map`` over the lanes of a device; lanes split over devices with
  ``jax.shard_map``. One compilation per (kernel, block shape, lanes)."""
  call = _kernel_call(kernel_fn, get)
  dt = jnp.dtype(block_dtype)
  acc_dt = jnp.promote_types(dt, jax.dtypes.canonicalize_dtype(jnp.float64))

  def block(xi, xj, same, args):
    if get is None:
      return call(xi, xj, *args).astype(dt)
    return lax.cond(same, lambda: call(xi, None, *args).astype(dt),
                    lambda: call(xi, xj, *args).astype(dt))

  def local(xb, vb, I, J, W, args):
    nb, b, m = vb.shape

    def lane(ijw):
      def step(acc, t):
        i, j, w = t
        same = i == j
        kb = block(xb[i], xb[j], same, args)
        a = (kb @ vb[j]).astype(acc_dt) * w.astype(acc_dt)
        bt = (kb.T @ vb[i]).astype(acc_dt) * jnp.where(same, 0.0, w).astype(acc_dt)
        return acc.at[i].add(a).at[j].add(bt), None
      acc, _ = lax.scan(step, jnp.zeros((nb, b, m), acc_dt), ijw)
      return acc
    return lax.map(lane, (I, J, W))

  if len(devices) == 1:
    return jax.jit(local)
  from jax.sharding import Mesh, PartitionSpec as P
  mesh = Mesh(np.asarray(devices), ("lanes",))
  return jax.jit(jax.shard_map(local, mesh=mesh,
                               in_specs=(P(), P(), P("lanes"), P("lanes"), P("lanes"), P()),
                               out_specs=P("lanes"), check_vma=False))


def _symmetric_product_compiled(program, schedule, xb, v, bs, args, out_dtype):
  """``K V`` by :func:`_symmetric_program`; the lanes' float64 sums are added on the host
  in lane order."""
  n, m = v.shape
  nb = xb.shape[0]
  vh = np.zeros((nb * bs, m), xb.dtype)
  vh[:n] = np.asarray(v, xb.dtype)
  out = np.asarray(program(xb, jax.device_put(vh.reshape(nb, bs, m)), *schedule, args),
                   np.float64)
  acc = out[0].copy()
  for lane in out[1:]:
    acc += lane
  return acc.reshape(-1, m)[:n].astype(out_dtype)


@_blocks.cache_by_function
def _cross_fn(kernel_fn, get):
  """Jitted ``k(a, b) V_b`` for the cross products ``k(x_new, X) V``."""
  call = _kernel_call(kernel_fn, get)

  @jax.jit
  def step(xa, xb, vb, args):
    kb = call(xa, xb, *args)
    return kb.astype(vb.dtype) @ vb
  return step


def _cross_product(kernel_fn, get, x, bs, block_dtype, args, out_dtype, x_new, v):
  r"""``k(x_new, X) V`` from ``b × b`` blocks: Python loop over (new, train) block pairs of
  one jitted program, float64 sums over train blocks on the host."""
  x_new = _validate.as_points(x_new, "x_test", nonempty=True)
  if x_new.shape[1:] != x.shape[1:]:
    raise ValueError(f"`x_test` must have the per-point shape of the training points "
                     f"{tuple(x.shape[1:])}; got shape {tuple(x_new.shape)}.")
  n = x.shape[0]
  v = np.asarray(v)
  if v.ndim not in (1, 2) or v.shape[0] != n:
    raise ValueError(f"`V` must have shape (n,) or (n, m) with n = {n}; got {v.shape}.")
  if not np.all(np.isfinite(v)):
    raise ValueError("`V` contains NaN or inf.")
  v2 = v.reshape(n, -1)
  m = v2.shape[1]
  dt = jnp.dtype(block_dtype)
  step = _cross_fn(kernel_fn, get)
  nx = x_new.shape[0]
  nbx, nbt = math.ceil(nx / bs), math.ceil(n / bs)
  xa = np.asarray(_blocks.pad_rows(jnp.asarray(x_new, dt), nbx * bs))
  xt = np.asarray(_blocks.pad_rows(jnp.asarray(x, dt), nbt * bs))
  vh = np.zeros((nbt * bs, m), dt)
  vh[:n] = v2
  out = np.zeros((nbx * bs, m), np.float64)
  for i in range(nbx):
    ai = jax.device_put(xa[i * bs:(i + 1) * bs])
    parts = [step(ai, xt[j * bs:(j + 1) * bs], vh[j * bs:(j + 1) * bs], args)
             for j in range(nbt)]
    for p in parts:
      out[i * bs:(i + 1) * bs] += np.asarray(p, np.float64)
  res = out[:nx].astype(out_dtype)
  return res.reshape((nx,) + v.shape[1:])


def kernel_operator(kernel_fn: Callable, x, *, get: Optional[str] = "ntk",
                    kernel_args: tuple = (), m: int = 128, block_size: Optional[int] = None,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET,
                    devices: Optional[Sequence] = None, cache="auto", symmetric="auto",
                    block_dtype=None) -> KernelOperator:
  r"""``V ↦ K V`` with ``K = k(X, X)``: blocked, memory-budgeted and sharded over devices.

  .. math:: (K V)_I = \sum_{J \ge I} K_{IJ} V_J + \sum_{J < I} K_{JI}^\top V_J,
     \qquad K_{IJ} = k(X_I, X_J)

  **Symmetric product** (``symmetric=True``; the default for concrete ``x``): only the
  blocks ``J >= I`` of the upper block triangle are evaluated, each used for both
  ``K_IJ V_J`` and ``K_IJᵀ V_I`` — half the kernel evaluations of the plain product. One
  jitted program of a fixed block shape per kind of block (diagonal / off-diagonal), called
  from a Python loop over the blocks (each block is ~b² kernel entries, so the loop's
  overhead is that of one dispatch per block); the ``(b, m)`` results are summed in float64
  on the host in a fixed order. With several devices each call evaluates one block pair per
  device (``jax.shard_map`` over a 1-D mesh): every block is the same computation on one
  device or many and the sums run in the same order, so the result does not depend on the
  number of devices. Not jittable (a host loop).

  **Plain product** (``symmetric=False``, or ``x`` traced under ``jax.jit``): rows of X are
  padded (repeating the last row) to a multiple of ``b · n_devices`` and split over a 1-D
  device mesh (``jax.shard_map``); columns are padded with zero rows of V; ``lax.map`` over
  row blocks and ``lax.scan`` over column blocks (a Python loop of the jitted block product
  for convolutional kernels on the CPU, :mod:`mskjax._loops`). n²/n_devices kernel
  evaluations per device and product, sums in the operator's dtype.

  With ``cache`` K is instead evaluated once, exactly as :func:`gram` does (upper-triangle
  blocks, mirrored), and every product is one GEMM.

  **Precision.** ``block_dtype=jnp.float32`` evaluates the kernel blocks and their GEMMs in
  float32 (half the memory per block, so larger blocks, and about twice the throughput of
  float64 on CPUs) while the symmetric product still sums the blocks in float64: each
  entry then carries float32 rounding (relative ~1e-7, more for nearly parallel inputs
  under arc-cosine kernels, see :class:`MLPKernel`) and each block GEMM a float32
  accumulation over b terms.

  Args:
    kernel_fn: ``kernel_fn(x1, x2, get, *kernel_args)`` (neural-tangents style), or
      ``kernel_fn(x1, x2, *kernel_args)`` when ``get is None`` (e.g. an empirical NTK
      ``lambda a, b, params: ...`` with ``kernel_args=(params,)``). Must be jittable and
      hashable (functions are).
    x: inputs X of shape ``(n, d)`` or ``(n, ...)`` (e.g. ``(n, L, C)`` sequences or
      ``(n, H, W, C)`` images for a CNN kernel); blocks split the point axis only.
    get: ``'ntk'``, ``'nngp'`` or ``None`` (see ``kernel_fn``).
    kernel_args: extra (traced, replicated) arguments of ``kernel_fn``.
    m: typical number of columns of V, used only to size blocks from the budget.
    block_size: block edge b; ``None`` derives it from ``memory_budget``.
    memory_budget: bytes per device for kernel blocks (see :func:`block_size_for_budget`,
      with the itemsize of ``block_dtype``) and, with ``cache='auto'``, for the cached K.
    devices: devices to shard over; ``None`` means ``jax.devices()``.
    cache: ``True`` evaluates K once and every product is then a dense ``K @ V``
      (2n²m flops instead of n² kernel evaluations: an analytic NTK entry costs as much as
      a GEMM pass with tens of columns, ``docs/results.md#analytic-mlp-kernel-evaluation``); ``False`` never
      stores K; ``'auto'`` (default) caches when one device is used, ``x`` is concrete (not
      under ``jit``) and ``2·n²·itemsize`` (K plus its host copy while it is assembled) fits
      ``memory_budget``.
    symmetric: ``True``, ``False`` or ``'auto'`` (default: ``True`` whenever ``x`` and
      ``kernel_args`` are concrete, i.e. outside ``jit``).
    block_dtype: dtype of the kernel blocks and their GEMMs (default: that of ``x``, float64
      under ``jax_enable_x64``); products come back in ``x``'s dtype.

  Returns:
    :class:`KernelOperator` (``op @ V`` or ``op.matmul(V)``; ``op.cross(x_new, V)`` for
    ``k(x_new, X) V``).

  Raises:
    ValueError: ``x`` with no points; a ``kernel_fn`` whose block ``k(a, b)`` does not have
      shape ``(len(a), len(b))``, that is not symmetric on a diagonal block (to 1e-5
      relative), or that returns NaN/inf (on the first block; uncached, also on any
      product with a finite V). Checked once on one block (cheap), not on every entry.
      ``symmetric=True`` under ``jit``.

  Example:
    >>> import jax.numpy as jnp
    >>> lin = lambda a, b: a @ b.T
    >>> X = jnp.arange(6.0).reshape(3, 2)
    >>> op = kernel_operator(lin, X, get=None, block_size=2)
    >>> (op @ jnp.ones(3)).tolist(), op.n, op.cached
    ([9.0, 39.0, 69.0], 3, True)
    >>> op = kernel_operator(lin, X, get=None, block_size=2, cache=False)
    >>> (op @ jnp.ones(3)).tolist(), op.symmetric
    ([9.0, 39.0, 69.0], True)
  """
  x = _validate.as_points(x, "x", nonempty=True)
  _validate.check_kernel_fn(kernel_fn, get, len(tuple(kernel_args)))
  devices = _check_devices(devices)
  memory_budget = _validate.check_int(memory_budget, "memory_budget", lo=1)
  m = _validate.check_int(m, "m", lo=1)
  n = x.shape[0]
  nd = len(devices)
  if cache not in (True, False, "auto"):
    raise ValueError(f"`cache` must be True, False or 'auto', got {cache!r}.")
  if symmetric not in (True, False, "auto"):
    raise ValueError(f"`symmetric` must be True, False or 'auto', got {symmetric!r}.")
  dtype = x.dtype
  if block_dtype is None:
    block_dtype = dtype
  else:
    try:
      block_dtype = jnp.dtype(block_dtype)
    except TypeError:
      raise TypeError(f"`block_dtype` must be a float dtype (e.g. jnp.float32), got "
                      f"{block_dtype!r}.") from None
    if not jnp.issubdtype(block_dtype, jnp.floating):
      raise TypeError(f"`block_dtype` must be a float dtype (e.g. jnp.float32), got "
                      f"{block_dtype}.")
    block_dtype = jax.dtypes.canonicalize_dtype(block_dtype)
  k_bytes = 2 * n * n * x.dtype.itemsize        # K, and a host copy while it is assembled
  args = tuple(kernel_args)
  traced = not _validate.is_concrete(x) or _validate.tracing() or not all(
      _validate.is_concrete(a) for a in jax.tree.leaves(args))
  if cache == "auto":
    cache = nd == 1 and k_bytes <= memory_budget and not traced
  elif cache and traced:
    raise ValueError("`cache=True` assembles K on the host and cannot run under jax.jit "
                     "(`x` is traced); use cache=False inside jit.")
  if symmetric == "auto":
    symmetric = not traced and not cache
  elif symmetric and traced:
    raise ValueError("`symmetric=True` loops over blocks on the host and cannot run under "
                     "jax.jit (`x` or `kernel_args` is traced); use symmetric=False inside jit.")
  # With K cached the kernel blocks get what the budget leaves (at least an eighth of it).
  block_budget = max(memory_budget - k_bytes, memory_budget // 8) if cache else memory_budget
  if block_size is None:
    block_size = _blocks.block_size_for_budget(block_budget, m=m,
                                               itemsize=jnp.dtype(block_dtype).itemsize)
  bs = _blocks.resolve_block(block_size, block_budget, n, m, 1 if symmetric else nd)
  pair, sym = _block_fns(kernel_fn, get)
  kernel = lambda a, b=None: pair(a, a if b is None else b, args)
  cross = functools.partial(_cross_product, kernel_fn, get, x, bs, block_dtype, args, dtype)
  if cache:
    # diagonal blocks through k(a, None) where the convention has it (neural-tangents style
    # kernels): k(x, x) from one input has its angles exactly 0 on the diagonal, k(a, a)
    # from two copies carries ~1e-8 relative rounding there; assemble_blocks symmetrises them
    diag = ((lambda a: sym(a, args)) if get is not None
            else (lambda a: kernel(a, a)))
    K = _blocks.assemble_blocks(kernel, diag, x, None, bs).astype(dtype)
    if not bool(jnp.all(jnp.isfinite(K))):
      raise ValueError("`kernel_fn` returned NaN/inf on `x` (the cached K is not finite): "
                       "check the kernel's parameters and the inputs' scale.")

    def matmul(v):
      v = _checked_columns(v, n, dtype)
      return _dense_product(K, v.reshape(n, -1)).reshape(v.shape)
    return KernelOperator(n, dtype, matmul, bs, devices, True, K, x, kernel, False, dtype,
                          cross)

  # The products never see a whole block on the host: check one diagonal block of the
  # kernel now (shape always; values when concrete), as the cached path does.
  x0 = x[:min(n, bs)]
  if traced:
    probe = jax.eval_shape(lambda a: pair(a, a, args), x0)
  else:
    probe = kernel(x0, x0)
  _validate.check_kernel_block(probe, (x0.shape[0],) * 2, symmetric=True)

  def finite(out):
    if _validate.is_concrete(out) and not _validate.tracing() and \
        not bool(jnp.all(jnp.isfinite(out))):
      raise ValueError("`kernel_fn` returned NaN/inf on `x` (the product K V is not finite, V "
                       "is): check the kernel's parameters and the inputs' scale.")
    return out

  if symmetric:
    nb = math.ceil(n / bs)
    xb = jax.device_put(np.asarray(_blocks.pad_rows(x.astype(block_dtype), nb * bs))
                        .reshape((nb, bs) + x.shape[1:]))
    host_loop = _loops.python_loop_faster(
        lambda a, b, *r: _kernel_call(kernel_fn, get)(a, b, *r), x[:bs], x[:bs], *args)
    bname = jnp.dtype(block_dtype).name
    if host_loop:     # convolutions on the CPU: a Python loop over the blocks
      programs = _symmetric_programs(kernel_fn, get, devices, bname)
    else:
      program = _symmetric_program(kernel_fn, get, devices, bname)
      schedules = {}

    def matmul(v):
      v = _checked_columns(v, n, dtype)
      v2 = np.asarray(v.reshape(n, -1))
      if host_loop:
        out = _symmetric_product(programs, xb, v2, bs, nd, args, dtype)
      else:
        lanes = _lanes(nd, nb * bs, v2.shape[1], memory_budget)
        if lanes not in schedules:
          schedules[lanes] = tuple(jnp.asarray(a) for a in _lane_schedule(nb, lanes))
        out = _symmetric_product_compiled(program, schedules[lanes], xb, v2, bs, args, dtype)
      return finite(jnp.asarray(out).reshape(v.shape))
    return KernelOperator(n, dtype, matmul, bs, devices, False, None, x, kernel, True,
                          block_dtype, cross)

  nr = bs * nd * math.ceil(n / (bs * nd))
  nc = bs * math.ceil(n / bs)
  xr = _blocks.pad_rows(x, nr).astype(block_dtype)
  xc = _blocks.pad_rows(x, nc).astype(block_dtype)
  fn = _product_fn(kernel_fn, get, bs, devices)
  if nd == 1 and not traced and _loops.python_loop_faster(
      lambda a, b, *r: _kernel_call(kernel_fn, get)(a, b, *r), x[:bs], x[:bs], *args):
    # convolutions on the CPU: the same blocked product as a Python loop (mskjax._loops)
    fn = functools.partial(_blocks.row_block_products_python,
                           _block_product_fn(kernel_fn, get), bs)

  def matmul(v):
    v = _checked_columns(v, n, dtype)
    vc = jnp.pad(v.reshape(n, -1), ((0, nc - n), (0, 0))).astype(block_dtype)
    out = fn(xr, xc, vc, args)[:n].reshape(v.shape).astype(dtype)
    return finite(out)
  return KernelOperator(n, dtype, matmul, bs, devices, False, None, x, kernel, False,
                        block_dtype, cross)


def matrix_operator(K) -> KernelOperator:
  """A given symmetric matrix ``K`` as a :class:`KernelOperator` (products are GEMMs).

  Example:
    >>> import jax.numpy as jnp
    >>> (matrix_operator(jnp.eye(2) * 3.0) @ jnp.ones(2)).tolist()
    [3.0, 3.0]
  """
  K = _validate.check_square_symmetric(K, "K")
  n = K.shape[0]

  def matmul(v):
    v = _checked_columns(v, n, K.dtype)
    return _dense_product(K, v.reshape(n, -1)).reshape(v.shape)
  return KernelOperator(n, K.dtype, matmul, n, tuple(jax.devices()[:1]), True, K)


def kernel_matvec(kernel_fn: Callable, x, v, *, block_size: Optional[int] = None,
                  get: Optional[str] = "ntk", kernel_args: tuple = (),
                  memory_budget: int = DEFAULT_MEMORY_BUDGET,
                  devices: Optional[Sequence] = None) -> jax.Array:
  r"""``K(x, x) @ v`` from on-the-fly blocks, never forming the n × n matrix K.

  .. math:: (K v)_I = \sum_J k(x_I, x_J)\, v_J

  A one-shot product of :func:`kernel_operator` (``cache=False``: one product does not pay
  for caching K; see it for the arguments): live memory O(b² + b m) per device, rows
  sharded over ``devices``. Works under ``jax.jit`` too (``kernel_fn`` static).

  Args:
    kernel_fn: ``kernel_fn(x1, x2, get, *kernel_args)``, e.g. ``stax_mlp(spec)[2]``.
    x: inputs of shape (n, d) or (n, ...).
    v: vector(s) of shape (n,) or (n, m).
    block_size: points per block (default: from ``memory_budget``).
    get, kernel_args, memory_budget, devices: see :func:`kernel_operator`.

  Returns:
    K v with the shape of ``v``.

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> from mskjax.nets import MLPSpec, stax_mlp
    >>> kernel_fn = stax_mlp(MLPSpec(depth=1, width=8))[2]
    >>> x = jnp.array([[1., 0.], [0., 1.], [0.6, 0.8]])
    >>> kv = kernel_matvec(kernel_fn, x, jnp.ones(3), block_size=2)
    >>> print(np.round(np.asarray(kv, float), 3))
    [0.855 0.945 1.141]
  """
  x = as_inputs(x, "x", "kernel_matvec")
  if not hasattr(v, "shape"):
    v = np.asarray(v)
  if len(v.shape) not in (1, 2) or v.shape[0] != x.shape[0]:
    raise ValueError(f"kernel_matvec: v must have shape (n,) or (n, m) with n = "
                     f"x.shape[0] = {x.shape[0]}; got shape {tuple(v.shape)}.")
  _validate.check_finite(v, "v")
  m = 1 if len(v.shape) == 1 else max(int(v.shape[1]), 1)
  op = kernel_operator(kernel_fn, x, get=get, kernel_args=kernel_args, m=m,
                       block_size=block_size, memory_budget=memory_budget, devices=devices,
                       cache=False)
  return op @ v


def sphere_mercer_eigenvalues(kernel_fn: Callable, d: int, lmax: int, *, get: str = "ntk",
                              quadrature_points: int = 800) -> np.ndarray:
  r"""Mercer eigenvalues μ_0..μ_lmax of a dot-product kernel on the sphere S^{d−1} (Funk–Hecke).

  A kernel k(x, x') = κ(⟨x, x'⟩) on the unit sphere S^{d−1} ⊂ R^d (every NTK/NNGP of a
  fully-connected net on normalised inputs) has the spherical harmonics of degree l as
  eigenfunctions, with eigenvalue (w.r.t. the *surface* measure)

  .. math::
    μ_l = |S^{d-2}| \int_{-1}^{1} κ(t)\, P_l^{(d)}(t)\, (1 - t^2)^{(d-3)/2}\, dt,
    \qquad |S^{d-2}| = \frac{2\pi^{(d-1)/2}}{Γ((d-1)/2)},

  with P_l^{(d)} = C_l^{((d-2)/2)} / C_l^{((d-2)/2)}(1) the Legendre polynomial of dimension d
  (Chebyshev T_l for d = 2, Legendre P_l for d = 3). Multiplicity of degree l: 2 on S¹
  (l ≥ 1), 2l + 1 on S². For n points spread uniformly on the sphere the Gram eigenvalues are
  ≈ n μ_l / |S^{d−1}| (exactly so on an equispaced circle, up to aliasing). Computed by
  Gauss–Jacobi quadrature of κ evaluated through ``kernel_fn`` in float64 on the host.

  Args:
    kernel_fn: ``kernel_fn(x1, x2, get)`` of a dot-product kernel, e.g. ``stax_mlp(spec)[2]``.
    d: ambient dimension (2 for the circle S¹, 3 for S²); ``d >= 2``.
    lmax: largest degree (``>= 0``).
    get: ``'ntk'`` or ``'nngp'``.
    quadrature_points: Gauss–Jacobi nodes (exact for polynomial κ of degree < 2·points − lmax).

  Returns:
    ``(lmax + 1,)`` float64 numpy array, ``μ_l`` for l = 0..lmax (not sorted: the ReLU NTK,
    for instance, does not order degrees monotonically).

  Example:
    >>> import numpy as np
    >>> lin = lambda x1, x2, get: (x1 @ (x1 if x2 is None else x2).T)   # κ(t) = t
    >>> np.round(sphere_mercer_eigenvalues(lin, 2, 2), 6).tolist()   # ∫ cos θ cos jθ dθ
    [0.0, 3.141593, 0.0]

  Reference: Bietti & Mairal, *On the inductive bias of neural tangent kernels*, NeurIPS 2019.
  """
  import scipy.special as sp

  _check_get(get, "sphere_mercer_eigenvalues")
  for name, value, low in (("d", d, 2), ("lmax", lmax, 0), ("quadrature_points",
                                                           quadrature_points, 2)):
    _validate.check_int(value, name, lo=low)
  alpha = (d - 3) / 2.0
  t, w = sp.roots_jacobi(int(quadrature_points), alpha, alpha)
  x1 = np.zeros((1, d)); x1[0, 0] = 1.0
  x2 = np.zeros((t.size, d)); x2[:, 0] = t; x2[:, 1] = np.sqrt(np.clip(1.0 - t * t, 0.0, None))
  with jax.enable_x64(True):
    kappa = np.asarray(kernel_fn(jnp.asarray(x2, jnp.float64), jnp.asarray(x1, jnp.float64),
                                 get), dtype=np.float64).reshape(-1)
  area = 2.0 * np.pi ** ((d - 1) / 2.0) / sp.gamma((d - 1) / 2.0)
  out = np.empty(int(lmax) + 1)
  for l in range(int(lmax) + 1):
    if d == 2:
      p = sp.eval_chebyt(l, t)
    else:
      lam = (d - 2) / 2.0
      p = sp.eval_gegenbauer(l, lam, t) / sp.eval_gegenbauer(l, lam, 1.0)
    out[l] = area * np.sum(w * kappa * p)
  return out


# ------------------------------------------------------------------ closed-form MLP kernels
_CLOSED_FORM_ACTIVATIONS = ("relu", "erf", "linear")

# Cephes' asin (S. L. Moshier, Cephes Math Library, asin.c): asin(y) = y + y z P(z)/Q(z),
# z = y², relative error ~2e-16 for 0 <= y <= 0.625 (checked against numpy in the tests).
_ASIN_P = (4.253011369004428248960e-3, -6.019598008014123785661e-1, 5.444622390564711410273e0,
           -1.626247967210700244449e1, 1.956261983317594739197e1, -8.198089802484824371615e0)
_ASIN_Q = (-1.474091372988853791896e1, 7.049610280856842141659e1, -1.471791292232726029859e2,
           1.395105614657485689735e2, -4.918853881490881290097e1)
# Cephes' asinf (asinf.c), the single-precision version: asin(y) = y + y z R(z), a
# polynomial (no divide), relative error ~2.5e-7 for 0 <= y <= 0.5 — float32's own rounding.
_ASINF_R = (4.2163199048e-2, 2.4181311049e-2, 4.5470025998e-2, 7.4953002686e-2,
            1.6666752422e-1)


def _asin_reduced(a):
  """``(big, g)`` with ``g = asin(y)`` for ``a = |c| ∈ [0, 1]``: ``y = a`` when ``a <= 1/2``
  (``big`` False), else ``y = √((1 − a)/2)`` (so ``asin a = π/2 − 2g``); y <= 1/2 either way,
  inside Cephes' range. float64 (and wider) uses the double-precision rational P/Q; float32
  and narrower the single-precision polynomial, which needs no divide (a divide costs as
  much as several multiplies per vector lane).

  Written so that every expensive op (the one ``sqrt``, the one divide) has a single
  consumer: XLA:CPU then fuses a whole kernel layer — and the whole depth — into one
  elementwise loop. (A multi-consumer ``sqrt``/divide is materialised as an n × n buffer and
  the cheap ops around it recomputed in every consumer, which made an ``atan2`` form
  several times slower per entry.)"""
  big = a > 0.5
  z = jnp.where(big, 0.5 - 0.5 * a, a * a)        # y², computed without y
  y = jnp.where(big, jnp.sqrt(z), a)
  if jnp.finfo(a.dtype).bits <= 32:
    r = _ASINF_R[0]
    for c in _ASINF_R[1:]:
      r = r * z + c
    return big, y + y * (z * r)
  p = _ASIN_P[0]
  for c in _ASIN_P[1:]:
    p = p * z + c
  q = z + _ASIN_Q[0]
  for c in _ASIN_Q[1:]:
    q = q * z + c
  return big, y + y * (z * p / q)


def _arccos(c):
  """``arccos(c)`` for ``c ∈ [−1, 1]``, one branch-free polynomial pass (no libm call)."""
  big, g = _asin_reduced(jnp.abs(c))
  t = jnp.where(big, 2.0 * g, 0.5 * jnp.pi - g)     # arccos |c|
  return jnp.where(c < 0, jnp.pi - t, t)


def _arcsin(c):
  """``arcsin(c)`` for ``c ∈ [−1, 1]``, as :func:`_arccos`."""
  big, g = _asin_reduced(jnp.abs(c))
  t = jnp.where(big, 0.5 * jnp.pi - 2.0 * g, g)     # arcsin |c|
  return jnp.where(c < 0, -t, t)


def _inv_sqrt(q):
  """``1/√q``, 0 where ``q = 0`` (a zero input with no bias: its cosines are then 0)."""
  return jnp.where(q > 0, 1.0 / jnp.sqrt(jnp.where(q > 0, q, 1.0)), 0.0)


class MLPKernel(NamedTuple):
  r"""Closed-form NNGP/NTK of a fully-connected network in the NTK parameterisation.

  One GEMM and one fused elementwise pass per block, in the caller's dtype. With
  q⁽⁰⁾(x, x') = σ_W² ⟨x, x'⟩ / d + σ_b² and Θ⁽⁰⁾ = q⁽⁰⁾, each hidden layer ℓ = 1..depth
  applies the activation's dual to the 2 × 2 covariance [[q, q₁₂], [q₁₂, q']] (q = q(x, x),
  q' = q(x', x'), vectors):

  * ReLU (arc-cosine, c = q₁₂/√(q q') = cos θ):
    q₁₂ ← √(q q') (sin θ + (π − θ) c) / (2π),  q̇ = (π − θ)/(2π),  q ← q/2;
  * erf (arcsine, ρ = 2q₁₂/√((1+2q)(1+2q'))):
    q₁₂ ← (2/π) arcsin ρ,  q̇ = (4/π) / √((1+2q)(1+2q') − 4q²₁₂);
  * linear: q unchanged, q̇ = 1;

  then the Dense layer: q ← σ_W² q + σ_b², Θ ← q + σ_W² q̇ Θ. The readout Dense is the last
  of these; the output axis is traced (full kernel Θ ⊗ I_c), as in neural-tangents'
  ``stax.serial(Dense, Relu/Erf/Identity, ..., Dense)`` (same kernel; tested against it to
  1e-12 in float64).

  Cost: the angles are computed from the cosine c (1/√q are vectors, so c is one multiply
  per entry) with a branch-free Cephes arcsine (:func:`_asin_reduced`: one sqrt and one
  divide, each with a single consumer), so XLA:CPU fuses all layers into one elementwise
  loop after the GEMM: ~5 ns per entry and layer in float64 on one core
  (``benchmarks/bench_kernel_eval.py``). On k(X, X) (``x2=None``) the diagonal cosines are
  exactly 1 (the rounding of ⟨x, x⟩ / ‖x‖² would otherwise give angles of ~1e-8 there).
  In float32 the entries of nearly parallel pairs carry the usual √ε_32 ≈ 3e-4 angle error
  (as neural-tangents' own float32 kernel); use float64 inputs where that matters.

  Attributes:
    depth: hidden layers; activation: 'relu', 'erf' or 'linear'; W_std, b_std: σ_W, σ_b
    (b_std = 0 for no bias).

  Call: ``kernel(x1, x2=None, get='ntk')`` with ``x1`` ``(n1, d)``, ``x2`` ``(n2, d)`` or
  None (= x1); returns ``(n1, n2)``.

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> k = MLPKernel(1, 'relu', 1.0, 0.0)
    >>> x = jnp.array([[1., 0.], [0., 1.]])  # orthogonal: off-diagonal 1/(4 pi)
    >>> print(np.round(np.asarray(k(x, None, 'ntk'), float), 4))
    [[0.5    0.0796]
     [0.0796 0.5   ]]

  Reference: Cho & Saul, *Kernel methods for deep learning*, NeurIPS 2009 (arc-cosine);
  Williams, *Computing with infinite networks*, NeurIPS 1996 (erf); Jacot, Gabriel &
  Hongler, *Neural Tangent Kernel*, NeurIPS 2018; Novak et al., *Neural Tangents*, ICLR 2020.
  """
  depth: int
  activation: str
  W_std: float
  b_std: float

  def __call__(self, x1, x2=None, get="ntk"):
    if get not in _GETS:
      raise ValueError(f"MLPKernel: get must be one of {_GETS}; got {get!r}.")
    if x1.ndim != 2 or (x2 is not None and (x2.ndim != 2 or x2.shape[1] != x1.shape[1])):
      raise ValueError("MLPKernel: inputs must be (n, d) matrices with the same d; got "
                       f"{tuple(x1.shape)} and {None if x2 is None else tuple(x2.shape)}.")
    sym = x2 is None
    x2_ = x1 if sym else x2
    d = x1.shape[1]
    w2 = self.W_std ** 2
    b2 = self.b_std ** 2
    q12 = w2 * ((x1 @ x2_.T) / d) + b2
    q1 = w2 * (jnp.sum(x1 * x1, axis=1) / d) + b2
    q2 = q1 if sym else w2 * (jnp.sum(x2_ * x2_, axis=1) / d) + b2
    eye = jnp.eye(q12.shape[0], dtype=bool) if sym else None
    ntk = q12 if get == "ntk" else None
    for _ in range(self.depth):
      # vectors (q, 1/√q, ...) are O(n); everything n1 × n2 below is one fused pass
      if self.activation == "relu":
        r1, r2 = jnp.sqrt(q1), jnp.sqrt(q2)
        u1, u2 = _inv_sqrt(q1), _inv_sqrt(q2)
        c = jnp.clip(q12 * u1[:, None] * u2[None, :], -1.0, 1.0)
        if sym:   # cos 0 = 1 exactly on the diagonal (0 for a zero input without bias)
          c = jnp.where(eye, jnp.sign(q1)[:, None], c)
        theta = _arccos(c)
        sin = jnp.sqrt((1.0 - c) * (1.0 + c))
        dot = (1.0 / (2 * jnp.pi)) * (jnp.pi - theta)
        q12 = (r1[:, None] * r2[None, :]) * ((1.0 / (2 * jnp.pi)) * sin + dot * c)
        q1, q2 = 0.5 * q1, 0.5 * q2
      elif self.activation == "erf":
        v1 = lax.rsqrt(1.0 + 2.0 * q1)
        v2 = v1 if sym else lax.rsqrt(1.0 + 2.0 * q2)
        rho = jnp.clip(2.0 * q12 * v1[:, None] * v2[None, :], -1.0, 1.0)
        dot = ((4 / jnp.pi) * v1[:, None] * v2[None, :]) * lax.rsqrt((1.0 - rho) *
                                                                     (1.0 + rho))
        q12 = (2 / jnp.pi) * _arcsin(rho)
        diag = lambda q: (2 / jnp.pi) * jnp.arctan2(q, jnp.sqrt(q + 0.25))   # vectors
        q1 = diag(q1)
        q2 = q1 if sym else diag(q2)
      else:
        dot = None
      if ntk is not None and dot is not None:
        ntk = ntk * dot
      q12 = w2 * q12 + b2
      q1 = w2 * q1 + b2
      q2 = q1 if sym else w2 * q2 + b2
      if ntk is not None:
        ntk = q12 + w2 * ntk
    return q12 if ntk is None else ntk


def mlp_kernel_fn(spec, fallback: Optional[Callable] = None) -> Callable:
  """The closed-form :class:`MLPKernel` of a :class:`mskjax.MLPSpec` when one exists (NTK
  parameterisation, ReLU/erf/linear), else ``fallback`` (e.g. ``stax_mlp(spec)[2]``).

  A drop-in ``kernel_fn(x1, x2, get)`` for :func:`gram`, :func:`kernel_operator` and
  everything built on them; ``nets.make_network`` uses it for MLPs. Hashable by value
  (equal specs share compiled blocks).

  Example:
    >>> from mskjax.nets import MLPSpec
    >>> mlp_kernel_fn(MLPSpec(depth=2, width=8, b_std=0.1))
    MLPKernel(depth=2, activation='relu', W_std=1.0, b_std=0.1)
  """
  act = getattr(spec, "activation", None)
  if getattr(spec, "parameterization", None) == "ntk" and act in _CLOSED_FORM_ACTIVATIONS:
    b = float(spec.b_std) if spec.b_std else 0.0
    return MLPKernel(int(spec.depth), act, float(spec.W_std), b)
  if fallback is None:
    raise ValueError(f"mlp_kernel_fn: no closed form for {spec!r} (needs "
                     f"parameterization='ntk' and activation in {_CLOSED_FORM_ACTIVATIONS}); "
                     "pass fallback=stax_mlp(spec)[2].")
  return fallback
