"""Kernel matrices: analytic NTK/NNGP and empirical NTK Gram blocks, and the kernel operator.

* :func:`gram` -- K_ij = Theta(x1_i, x2_j) from a neural-tangents ``kernel_fn``;
* :func:`empirical_ntk` -- Theta_hat(x, x') = (1/c) sum_k <df_k(x)/dtheta, df_k(x')/dtheta>;
* :func:`kernel_operator` -- K = k(X, X) as a :class:`KernelOperator` ``V -> K V``: blocked,
  memory-budgeted (:func:`block_size_for_budget`), row-sharded over devices, optionally
  with K cached (then every product is a GEMM); what the eigensolvers of
  :mod:`mskjax.spectrum` and :func:`mskjax.msk_spectrum` consume;
* :func:`kernel_matvec` -- one product K(x, x) v of that operator (jittable).

Blocking: inputs are padded (by repeating their last row, :func:`pad_rows`) to a multiple of
the block size, and one jitted block function of a fixed shape is called for every block, so
there is a single compilation per (block shape, kernel) and device memory stays O(block^2)
plus the output. Symmetric Gram matrices (:func:`gram`, :func:`empirical_ntk` with
``x2=None``, a cached operator) evaluate the upper block triangle once and mirror it.
:func:`gram` and :func:`empirical_ntk` are host-side drivers (a Python loop over blocks, not
jittable); the operator's product is one jitted function (``lax.map`` over row blocks,
``lax.scan`` over column blocks). Everything is float64 when ``jax_enable_x64`` is on
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

from mskjax import _validate
from mskjax._nt import empirical_ntk_fn

__all__ = ["gram", "empirical_ntk", "kernel_matvec", "KernelOperator", "kernel_operator",
           "matrix_operator", "DEFAULT_MEMORY_BUDGET", "block_size_for_budget",
           "map_row_blocks", "trainable_fn", "JacobianOperator", "jacobian_operator",
           "ntk_diagonal_blocks", "sphere_mercer_eigenvalues", "pad_rows"]

_GETS = ("ntk", "nngp")


def _float_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 iff jax_enable_x64


def _as_inputs(x, name, where):
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
  x = jnp.asarray(x, _float_dtype())
  if not isinstance(x, jax.core.Tracer):
    # evaluated now even under jit (a closed-over constant), never staged into the trace
    with jax.ensure_compile_time_eval():
      bad = not bool(jnp.all(jnp.isfinite(x)))
    if bad:
      raise ValueError(f"{where}: {name} contains NaN or inf; remove or impute those rows "
                       "before computing the kernel.")
  return x


def _check_pair(x1, x2, where):
  x1 = _as_inputs(x1, "x1", where)
  if x2 is not None:
    x2 = _as_inputs(x2, "x2", where)
    if x2.shape[1:] != x1.shape[1:]:
      raise ValueError(f"{where}: x1 and x2 must have the same per-point shape; got "
                       f"x1.shape={tuple(x1.shape)}, x2.shape={tuple(x2.shape)}.")
  return x1, x2


def _check_block_size(block_size, required=False):
  if block_size is None and not required:
    return None
  return _validate.check_int(block_size, "block_size", lo=1)


def _check_get(get, where):
  if get not in _GETS:
    raise ValueError(f"{where}: get must be one of {_GETS}; got {get!r}.")


def pad_rows(x, size):
  """Pads ``x`` to ``size`` rows by repeating its last row (real inputs keep kernels finite).

  The blocking primitive of every blocked kernel evaluation (``gram``, ``empirical_ntk``,
  :func:`kernel_operator`, :func:`map_row_blocks`): padded rows are real points, so kernel values stay finite, and
  callers drop them (or multiply them by zero rows of V).

  Example:
    >>> pad_rows(jnp.array([[1.0], [2.0]]), 3).tolist()
    [[1.0], [2.0], [2.0]]
  """
  pad = size - x.shape[0]
  return x if pad == 0 else jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1), mode="edge")


def _blocked(pair_fn, sym_fn, x1, x2, block_size):
  """Assembles K from fixed-shape jitted blocks; upper triangle only when x2 is None."""
  n1 = x1.shape[0]
  n2 = n1 if x2 is None else x2.shape[0]
  b1, b2 = min(block_size, n1), min(block_size, n2)
  if x2 is None:
    b2 = b1
  n1p, n2p = b1 * math.ceil(n1 / b1), b2 * math.ceil(n2 / b2)
  x1p = pad_rows(x1, n1p)
  x2p = x1p if x2 is None else pad_rows(x2, n2p)
  out = None
  for i in range(0, n1p, b1):
    for j in range(0, n2p, b2):
      if x2 is None and j < i:
        continue
      diagonal = x2 is None and i == j
      block = np.asarray(sym_fn(x1p[i:i + b1]) if diagonal else
                         pair_fn(x1p[i:i + b1], x2p[j:j + b2]))
      # Cheap checks on the host copy (a wrong shape would be broadcast into K below; an
      # asymmetric kernel, checked on the first diagonal block, would be mirrored).
      _validate.check_kernel_block(block, (b1, b2), symmetric=diagonal and i == 0)
      if diagonal:                 # exactly symmetric (a no-op on a symmetric block)
        block = 0.5 * (block + block.T)
      if out is None:
        out = np.empty((n1p, n2p), dtype=block.dtype)
      out[i:i + b1, j:j + b2] = block
      if x2 is None and j > i:
        out[j:j + b2, i:i + b1] = block.T
  return jnp.asarray(out[:n1, :n2])


def _cached(builder):
  """lru_cache that falls back to building afresh for unhashable functions."""
  cached = functools.lru_cache(maxsize=64)(builder)

  def wrapper(fn, arg):
    try:
      hash(fn)
    except TypeError:
      return builder(fn, arg)
    return cached(fn, arg)
  return wrapper


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
  x1, x2 = _check_pair(x1, x2, "gram")
  block_size = _check_block_size(block_size)
  pair2, sym2 = _block_fns(kernel_fn, get)
  pair, sym = (lambda a, b: pair2(a, b, ())), (lambda a: sym2(a, ()))
  if block_size is None:
    K = sym(x1) if x2 is None else pair(x1, x2)
    _validate.check_kernel_block(K, (x1.shape[0], (x1 if x2 is None else x2).shape[0]),
                                 symmetric=x2 is None, inputs="x1")
    return K
  return _blocked(pair, sym, x1, x2, block_size)


@_cached
def _empirical_block_fns(apply_fn, implementation):
  fn = empirical_ntk_fn(apply_fn, trace_axes=(-1,), implementation=implementation)
  pair = jax.jit(lambda a, b, params: fn(a, b, params))
  sym = jax.jit(lambda a, params: fn(a, None, params))
  return pair, sym


EMPIRICAL_NTK_MEMORY_BUDGET = 1 << 30


def _empirical_block_edge(params, c, n_max, implementation, memory_budget):
  """Rows per block so one block pair's Jacobians / NTK-vector products fit the budget.

  implementation 1 holds two Jacobian blocks of b·c·P numbers (×2 for temporaries);
  implementation 2 holds NTK-vector products of up to b²·c·A numbers with A activations
  per example, bounded here by P (an over-estimate for MLPs, so blocks err on the small side).
  """
  P = sum(int(np.prod(np.shape(l))) for l in jax.tree_util.tree_leaves(params))
  itemsize = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64)).itemsize
  per = c * max(P, 1) * itemsize
  if implementation == 1:
    b = memory_budget // (4 * per)
  else:
    b = int(math.isqrt(max(memory_budget // per, 1)))
  return int(min(max(b, 1), n_max))


def empirical_ntk(apply_fn: Callable, params, x1, x2=None, *, full: bool = False,
                  implementation="auto", block_size: Optional[int] = None,
                  memory_budget: int = EMPIRICAL_NTK_MEMORY_BUDGET,
                  weights=None) -> jax.Array:
  r"""Empirical NTK Gram matrix of a finite network, blockwise, traced over outputs or full.

  .. math:: \hat\Theta(x, x') = \frac1c \sum_{k=1}^{c}
     \Big\langle \frac{\partial f_k(\theta, x)}{\partial\theta},
     \frac{\partial f_k(\theta, x')}{\partial\theta}\Big\rangle

  (``full=False``: the *mean* over the diagonal of each c×c output block, exactly
  neural-tangents' ``empirical_ntk_fn(..., trace_axes=(-1,))``, matching the analytic
  ``kernel_fn(.., 'ntk')`` whose full kernel is Θ ⊗ I_c), or with ``full=True`` the
  whole (n1·c)×(n2·c) kernel ``J₁ J₂ᵀ`` with the cross-output terms (row = point·c + output,
  as :func:`jacobian_operator`): the kernel that governs the finite network's training.

  mskjax's own implementations (default) are pure JAX (``lax.map`` over point blocks,
  jittable — also under ``jax.jit`` with closed-over inputs), memory-bounded by
  ``memory_budget`` and take inputs of any per-point shape and outputs ``(n,)`` or
  ``(n, c, ...)`` (all output axes flattened into c):

  * ``'jacobian'``: per-point Jacobians of a block (``vmap`` of ``jacrev``), contracted
    with those of the other block (``einsum``); memory 2·block·c·#params;
  * ``'jvp'``: the rows of block I's Jacobian pushed forward through the network on each
    column block (one ``jax.linearize`` per block, ``vmap`` over block·c tangents): about
    c/2 times fewer flops than contracting Jacobians when c is large;
  * ``'auto'``: ``'jvp'`` for c ≥ 4 outputs, else ``'jacobian'`` (the crossover and its
    timings: ``benchmarks/README.md``, "Optimizer", section 3).

  ``weights``: a pytree like the trainable parameters of non-negative per-parameter
  weights W (a diagonal parameter metric) gives ``J W Jᵀ`` instead of ``J Jᵀ`` (same trace
  / full conventions): with W the per-parameter step sizes of a diagonal optimiser (Adam:
  η/(√v̂ + ε), :func:`mskjax.optim.adam_kernel_weights`) it is the kernel of that
  optimiser's linearised function-space dynamics, df = −J W Jᵀ ∂ℓ/∂f. Computed on the same
  machinery as the Jacobian of f(θ + √W ⊙ δ) at δ = 0 (exact for W = 0 entries).

  neural-tangents' implementations 1 and 2 stay available (``implementation=1|2``;
  host-side blocks, inputs ``(n, d)``, outputs ``(n, c)``, traced only); 3 is broken on
  current JAX.

  Args:
    apply_fn: ``apply_fn(params, x)``, a flax ``model.apply`` (with variables
      ``{'params': ...}``: the kernel is over ``variables['params']``), or an nnx Module
      (``params`` None), see :func:`trainable_fn`.
    params: the parameters (flax variables) passed to ``apply_fn``.
    x1: inputs ``(n1, ...)``.
    x2: inputs ``(n2, ...)``, or None for x1.
    full: return the full multi-output kernel ``(n1·c, n2·c)`` instead of ``(n1, n2)``.
    implementation: ``'auto'``, ``'jacobian'``, ``'jvp'``, 1 or 2 (see above).
    block_size: points per block; None picks it from ``memory_budget``.
    memory_budget: bytes for one block's Jacobians/tangent products (default 1 GiB).
    weights: optional pytree (the structure and shapes of the trainable parameters; for a
      flax linen ``model.apply`` also like the variables ``{'params': ...}``) of
      non-negative per-parameter weights W: the kernel becomes J W Jᵀ.

  Returns:
    ``(n1, n2)`` (or ``(n1·c, n2·c)`` with ``full=True``) array.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from mskjax.nets import FlaxMLP, MLPSpec
    >>> model = FlaxMLP(MLPSpec(depth=1, width=4, activation='linear', out_dim=2))
    >>> x = jnp.array([[1., 0.], [0., 1.], [1., 1.]])
    >>> variables = model.init(jax.random.PRNGKey(0), x)
    >>> K = empirical_ntk(model.apply, variables, x, block_size=2)
    >>> Kf = empirical_ntk(model.apply, variables, x, full=True)
    >>> K.shape, Kf.shape, bool(jnp.allclose(K, (Kf[::2, ::2] + Kf[1::2, 1::2]) / 2))
    ((3, 3), (6, 6), True)
  """
  if implementation == 3:
    raise ValueError("empirical_ntk: implementation=3 (structured derivatives) is broken on "
                     "current JAX (it relies on removed JAX internals); use 'auto', 'jvp', "
                     "'jacobian', 1 or 2.")
  _validate.check_choice(implementation, "implementation", ("auto", "jacobian", "jvp", 1, 2))
  memory_budget = _validate.check_int(memory_budget, "memory_budget", lo=1)
  block_size = _check_block_size(block_size)
  if implementation not in (1, 2):
    x1, x2 = _check_pair(x1, x2, "empirical_ntk")
    return _empirical_own(apply_fn, params, x1, x2, bool(full), block_size, memory_budget,
                          implementation, weights)
  if weights is not None:
    raise ValueError("empirical_ntk: weights= needs implementation 'auto', 'jacobian' or "
                     "'jvp' (neural-tangents' implementations have no parameter metric).")
  if full:
    raise ValueError("empirical_ntk: full=True needs implementation 'auto', 'jacobian' or "
                     "'jvp' (neural-tangents' implementations trace over outputs here).")
  x1, x2 = _check_pair(x1, x2, "empirical_ntk")
  out = jax.eval_shape(apply_fn, params, x1[:1])
  if not hasattr(out, "shape") or len(out.shape) != 2:
    raise ValueError("empirical_ntk: apply_fn(params, x) must return an array of shape "
                     f"(n, c); got {getattr(out, 'shape', type(out).__name__)}. Wrap it, e.g. "
                     "lambda p, x: f(p, x)[:, None].")
  pair, sym = _empirical_block_fns(apply_fn, int(implementation))
  pair_p = lambda a, b: pair(a, b, params)
  sym_p = lambda a: sym(a, params)
  n_max = max(x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0])
  if block_size is None:
    block_size = _empirical_block_edge(params, int(out.shape[1]), n_max, int(implementation),
                                       int(memory_budget))
    if block_size >= n_max:
      return sym_p(x1) if x2 is None else pair_p(x1, x2)
  return _blocked(pair_p, sym_p, x1, x2, block_size)


# ------------------------------------------------------------------ the kernel operator
DEFAULT_MEMORY_BUDGET = 1 << 30
"""Default per-device budget (bytes) for the kernel blocks of one product: 1 GiB."""

_TEMPORARIES = 24
"""Estimated ``b × b`` temporaries alive while a neural-tangents MLP kernel block is built
(NNGP, NTK and the arc-cosine intermediates, plus XLA fusion buffers); measured on 2--3
layer ReLU MLPs, kept generous."""


def block_size_for_budget(memory_bytes: int = DEFAULT_MEMORY_BUDGET, *, m: int = 0,
                          itemsize: Optional[int] = None, temporaries: int = _TEMPORARIES,
                          multiple: int = 64) -> int:
  r"""The largest block edge ``b`` whose kernel blocks fit a memory budget.

  .. math:: \text{itemsize}\cdot(\text{temporaries}\cdot b^2 + 2 b m) \le \text{memory\_bytes}

  rounded down to a multiple of ``multiple`` (at least ``multiple``).

  Args:
    memory_bytes: budget in bytes for one device (positive int).
    m: columns of the block ``V`` multiplied by each kernel block.
    itemsize: bytes per float (default: 8 under ``jax_enable_x64``, else 4).
    temporaries: ``b × b`` arrays alive while a kernel block is computed.
    multiple: round ``b`` down to a multiple of this.

  Returns:
    The block edge ``b`` (int).

  Example:
    >>> block_size_for_budget(1 << 30, itemsize=8)
    2304
  """
  memory_bytes = _validate.check_int(memory_bytes, "memory_bytes", lo=1)
  m = _validate.check_int(m, "m", lo=0)
  if itemsize is None:
    itemsize = jnp.dtype(_float_dtype()).itemsize
  a, bq, c = temporaries * itemsize, 2 * m * itemsize, -int(memory_bytes)
  b = int((-bq + math.sqrt(bq * bq - 4 * a * c)) / (2 * a))
  return max(multiple, (b // multiple) * multiple)


def _kernel_call(kernel_fn, get):
  if get is None:
    return lambda a, b, *args: kernel_fn(a, b, *args)
  return lambda a, b, *args: kernel_fn(a, b, get, *args)


def _row_block_products(call, bs, xr, xc, vc, args):
  """Σ_J k(X_I, X_J) V_J for the row blocks I of ``xr`` (a multiple of ``bs`` points) and
  the column blocks J of ``xc`` / ``vc`` (``lax.map`` over I, ``lax.scan`` over J): the one
  blocked product behind :func:`kernel_matvec` and :class:`KernelOperator`."""
  m = vc.shape[1]
  xrb = xr.reshape((-1, bs) + xr.shape[1:])    # blocks of points; per-point shape kept
  xcb = xc.reshape((-1, bs) + xc.shape[1:])
  vcb = vc.reshape(-1, bs, m)

  def row(xa):
    def body(acc, blk):
      xj, vj = blk
      return acc + call(xa, xj, *args).astype(vc.dtype) @ vj, None
    acc, _ = lax.scan(body, jnp.zeros((bs, m), vc.dtype), (xcb, vcb))
    return acc

  return lax.map(row, xrb).reshape(-1, m)


@functools.lru_cache(maxsize=64)
def _product_fn(kernel_fn, get, bs, devices):
  """One jitted (and, for several devices, row-sharded) blocked product per configuration."""
  local = functools.partial(_row_block_products, _kernel_call(kernel_fn, get), bs)
  if len(devices) == 1:
    return jax.jit(local)
  from jax.sharding import Mesh, PartitionSpec as P
  mesh = Mesh(np.asarray(devices), ("rows",))
  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("rows"), P(), P(), P()),
                          out_specs=P("rows"), check_vma=False)
  return jax.jit(sharded)


@_cached
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


def _resolve_block(block_size, memory_budget, n, m, n_dev):
  if block_size is None:
    block_size = block_size_for_budget(memory_budget, m=m)
  else:
    block_size = _validate.check_int(block_size, "block_size", lo=1)
  # Same number of blocks per device, but the smallest edge that covers each device's
  # rows: padding waste is then < 8 rows per block instead of up to a whole block.
  share = math.ceil(n / n_dev)
  nb = math.ceil(share / int(block_size))
  b = math.ceil(share / nb)
  return int(min(int(block_size), 8 * math.ceil(b / 8) if b > 8 else b))


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

  def __matmul__(self, v):
    return self.matmul(v)


def _checked_columns(v, n, dtype):
  v = _validate.finite_array(v, "V", ndim=(1, 2)).astype(dtype)
  if v.shape[0] != n:
    raise ValueError(f"`V` must have n = {n} rows (one per point of `x`), got shape "
                     f"{tuple(v.shape)}.")
  return v


def kernel_operator(kernel_fn: Callable, x, *, get: Optional[str] = "ntk",
                    kernel_args: tuple = (), m: int = 128, block_size: Optional[int] = None,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET,
                    devices: Optional[Sequence] = None, cache="auto") -> KernelOperator:
  r"""``V ↦ K V`` with ``K = k(X, X)``: blocked, memory-budgeted and row-sharded over devices.

  .. math:: (K V)_I = \sum_J k(X_I, X_J)\, V_J \qquad (\text{row blocks } I,\ \text{column blocks } J)

  Rows of X are padded (repeating the last row) to a multiple of ``b · n_devices`` and split
  over a 1-D device mesh (``jax.shard_map``); columns are padded to a multiple of ``b``
  with zero rows of V, so every output row is the same sum in the same order on one or many
  devices. Per device: O(b² · temporaries + n m) memory, n²/n_devices kernel evaluations
  per product. With ``cache`` K is instead evaluated once, exactly as :func:`gram` does
  (upper-triangle blocks, mirrored), and every product is one GEMM.

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
    memory_budget: bytes per device for kernel blocks (see :func:`block_size_for_budget`)
      and, with ``cache='auto'``, for the cached K.
    devices: devices to shard rows over; ``None`` means ``jax.devices()``.
    cache: ``True`` evaluates K once and every product is then a dense ``K @ V``
      (2n²m flops instead of n² kernel evaluations: an analytic NTK entry costs as much as
      a GEMM pass with tens of columns, see ``benchmarks/README.md``); ``False`` never
      stores K; ``'auto'`` (default) caches when one device is used, ``x`` is concrete (not
      under ``jit``) and ``2·n²·itemsize`` (K plus its host copy while it is assembled) fits
      ``memory_budget``.

  Returns:
    :class:`KernelOperator` (``op @ V`` or ``op.matmul(V)``).

  Raises:
    ValueError: ``x`` with no points; a ``kernel_fn`` whose block ``k(a, b)`` does not have
      shape ``(len(a), len(b))``, that is not symmetric on a diagonal block (to 1e-5
      relative), or that returns NaN/inf (on the first block; uncached, also on any
      product with a finite V). Checked once on one block (cheap), not on every entry.

  Example:
    >>> import jax.numpy as jnp
    >>> lin = lambda a, b: a @ b.T
    >>> X = jnp.arange(6.0).reshape(3, 2)
    >>> op = kernel_operator(lin, X, get=None, block_size=2)
    >>> (op @ jnp.ones(3)).tolist(), op.n, op.cached
    ([9.0, 39.0, 69.0], 3, True)
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
  k_bytes = 2 * n * n * x.dtype.itemsize        # K, and a host copy while it is assembled
  traced = not _validate.is_concrete(x)
  if cache == "auto":
    cache = nd == 1 and k_bytes <= memory_budget and not traced
  elif cache and traced:
    raise ValueError("`cache=True` assembles K on the host and cannot run under jax.jit "
                     "(`x` is traced); use cache=False inside jit.")
  # With K cached the kernel blocks get what the budget leaves (at least an eighth of it).
  block_budget = max(memory_budget - k_bytes, memory_budget // 8) if cache else memory_budget
  bs = _resolve_block(block_size, block_budget, n, m, nd)
  args = tuple(kernel_args)
  pair, sym = _block_fns(kernel_fn, get)
  kernel = lambda a, b=None: pair(a, a if b is None else b, args)
  dtype = x.dtype
  if cache:
    # _blocked checks the first block's shape and symmetry and symmetrises diagonal blocks
    K = _blocked(kernel, lambda a: kernel(a, a), x, None, bs).astype(dtype)
    if not bool(jnp.all(jnp.isfinite(K))):
      raise ValueError("`kernel_fn` returned NaN/inf on `x` (the cached K is not finite): "
                       "check the kernel's parameters and the inputs' scale.")

    def matmul(v):
      v = _checked_columns(v, n, dtype)
      return _dense_product(K, v.reshape(n, -1)).reshape(v.shape)
    return KernelOperator(n, dtype, matmul, bs, devices, True, K, x, kernel)

  nr = bs * nd * math.ceil(n / (bs * nd))
  nc = bs * math.ceil(n / bs)
  xr, xc = pad_rows(x, nr), pad_rows(x, nc)
  fn = _product_fn(kernel_fn, get, bs, devices)
  # The products never see a whole block on the host: check one diagonal block of the
  # kernel now (shape always; values when concrete), as the cached path does.
  x0 = x[:min(n, bs)]
  if traced or _validate.tracing():
    probe = jax.eval_shape(lambda a: pair(a, a, args), x0)
  else:
    probe = kernel(x0, x0)
  _validate.check_kernel_block(probe, (x0.shape[0],) * 2, symmetric=True)

  def matmul(v):
    v = _checked_columns(v, n, dtype)
    vc = jnp.pad(v.reshape(n, -1), ((0, nc - n), (0, 0)))  # zero rows: padding adds nothing
    out = fn(xr, xc, vc, args)[:n].reshape(v.shape)
    if _validate.is_concrete(out) and not _validate.tracing() and \
        not bool(jnp.all(jnp.isfinite(out))):
      raise ValueError("`kernel_fn` returned NaN/inf on `x` (the product K V is not finite, V "
                       "is): check the kernel's parameters and the inputs' scale.")
    return out
  return KernelOperator(n, dtype, matmul, bs, devices, False, None, x, kernel)


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
  x = _as_inputs(x, "x", "kernel_matvec")
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


def map_row_blocks(fn: Callable, x, block_size: Optional[int]) -> jax.Array:
  """``fn`` applied to row blocks of ``x`` and concatenated (the last block padded by
  repeating the last row, then trimmed): one compiled shape for every block.

  Example:
    >>> map_row_blocks(lambda a: 2 * a, jnp.arange(5.0)[:, None], 2).ravel().tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0]
  """
  n = x.shape[0]
  if block_size is None or n <= block_size:
    return fn(x)
  xp = pad_rows(x, block_size * math.ceil(n / block_size))
  out = [fn(xp[i:i + block_size]) for i in range(0, xp.shape[0], block_size)]
  return jnp.concatenate(out, axis=0)[:n]


# ------------------------------------------------- Jacobian operators of a finite network
class _Call(NamedTuple):
  """Hashable ``call(p, rest, x)`` (a static argument of jitted functions: one compile per
  network, not per call)."""
  kind: str
  base: Any

  def __call__(self, p, rest, x):
    if self.kind == "plain":
      return self.base(p, x)
    if self.kind == "linen":
      return self.base({**rest, "params": p}, x)
    from flax import nnx
    return nnx.merge(self.base, p, rest)(x)


def _split(apply_fn, params):
  """(call, p, rest): the trainable parameters p and everything else held fixed."""
  try:
    from flax import nnx
    import flax.linen as nn
  except ImportError:  # pragma: no cover
    nnx = nn = None
  if nnx is not None and isinstance(apply_fn, nnx.Module):
    filt = nnx.Param if params is None else params
    graphdef, state, rest = nnx.split(apply_fn, filt, ...)
    return _Call("nnx", graphdef), nnx.as_pure(state), rest
  if not callable(apply_fn):
    raise TypeError(f"`apply_fn` must be callable apply_fn(params, x) (or an nnx.Module); got "
                    f"{type(apply_fn).__name__}.")
  owner = getattr(apply_fn, "__self__", None)
  if nn is not None and isinstance(owner, nn.Module) and hasattr(params, "keys") \
      and "params" in params:
    rest = {key: val for key, val in params.items() if key != "params"}
    return _Call("linen", apply_fn), params["params"], rest
  if params is None:
    raise TypeError("`params` is None; pass the parameters apply_fn(params, x) takes.")
  return _Call("plain", apply_fn), params, None


def trainable_fn(apply_fn, params=None):
  """``(f, p)`` with ``f(p, x) -> (n, ...)`` a function of the *trainable* parameters only.

  The parameter pytree an optimizer sees, for the three ways users hold a network:

  * ``apply_fn(params, x)`` with any pytree ``params``: returned unchanged;
  * flax linen ``model.apply`` with ``variables = {'params': ..., other collections}``:
    ``p = variables['params']`` and the other collections (e.g. ``batch_stats``) are
    held fixed;
  * a flax nnx ``Module`` (pass it as ``apply_fn``; ``params`` None or an nnx filter,
    default ``nnx.Param``): ``p = nnx.as_pure(nnx.state(model, nnx.Param))``, the
    pytree ``nnx.Optimizer`` passes to optax.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> model = nn.Dense(2); x = jnp.ones((3, 4))
    >>> variables = model.init(jax.random.PRNGKey(0), x)
    >>> f, p = trainable_fn(model.apply, variables)
    >>> sorted(p), f(p, x).shape
    (['bias', 'kernel'], (3, 2))
  """
  call, p, rest = _split(apply_fn, params)
  if call.kind == "plain":
    return call.base, p
  return (lambda q, x: call(q, rest, x)), p


class JacobianOperator(NamedTuple):
  """Products with the Jacobian ``J = ∂f(θ, X)/∂θ`` (n·c rows) without forming it.

  Attributes:
    jvp: ``T ↦ J T``: a parameter pytree with a leading axis m on every leaf →
      ``(n, c, m)``.
    vjp: ``V ↦ Jᵀ V``: ``(n, c, m)`` → parameter pytree, leaves ``(m, *leaf.shape)``.
    ntk_matvec: ``V ↦ J (Jᵀ V)`` on ``(n·c, m)`` arrays: the full multi-output empirical
      NTK (cross-output terms included, row index = point·c + output) times V.
    n: number of points; c: outputs per point (all output axes flattened).
    params: the (trainable) parameters, in the compute dtype.
    block_size: points per block.
  """
  jvp: Callable
  vjp: Callable
  ntk_matvec: Callable
  n: int
  c: int
  params: Any
  block_size: int


def _jaxprs_in_params(params):
  try:
    from jax.extend.core import jaxprs_in_params
  except ImportError:  # pragma: no cover
    return []
  return jaxprs_in_params(params)


def _activation_size(fn, params, x1):
  """Numbers in all intermediates of one forward pass on one point (a memory estimate)."""
  jaxpr = jax.make_jaxpr(fn)(params, x1)
  total = 0

  def walk(jx):
    nonlocal total
    for eqn in jx.eqns:
      for v in eqn.outvars:
        total += int(np.prod(getattr(v.aval, "shape", ()) or (1,)))
      for sub in _jaxprs_in_params(eqn.params):
        walk(getattr(sub, "jaxpr", sub))
  walk(jaxpr.jaxpr)
  return max(total, 1)


def _tree_size(tree):
  return sum(int(np.prod(np.shape(l))) for l in jax.tree.leaves(tree))


def _network_inputs(apply_fn, params, x, dtype, where):
  """(fn, params, x, dtype, n, c): the trainable function, parameters and inputs cast to
  the compute dtype, and the number of outputs per point."""
  fn, p = trainable_fn(apply_fn, params)
  x = _as_inputs(x, "x", where)
  dt = x.dtype if dtype is None else jnp.dtype(dtype)
  x = x.astype(dt)
  p = jax.tree.map(lambda a: jnp.asarray(a).astype(dt)
                   if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, p)
  out = jax.eval_shape(fn, p, x[:1])
  if not hasattr(out, "shape") or len(out.shape) < 1 or out.shape[0] != 1:
    raise ValueError(f"{where}: apply_fn(params, x) must return an array with a leading axis "
                     f"of n points; got {getattr(out, 'shape', type(out).__name__)}.")
  return fn, p, x, dt, x.shape[0], int(np.prod(out.shape[1:]))


def jacobian_operator(apply_fn: Callable, params, x, *, columns: int = 32,
                      block_size: Optional[int] = None,
                      memory_budget: int = 1 << 30, dtype=None) -> JacobianOperator:
  r"""Jitted, blocked products with the network Jacobian and the full empirical NTK.

  ``J T`` is one JVP and ``Jᵀ V`` one VJP per block of points, vectorised over the m
  columns (``vmap``) and looped over blocks (``lax.map`` / ``lax.scan``), so memory is
  O(m·#params + block·m·A) (A: activations per point) and never O(n·#params).
  ``ntk_matvec`` applies the full (n·c)×(n·c) empirical NTK ``K = J Jᵀ`` (not the
  output-traced one) — what a matrix-free eigensolver needs.

  Args:
    apply_fn, params: the network, as accepted by :func:`trainable_fn` (a plain
      ``apply_fn(params, x)``, a linen ``model.apply`` with variables, or an nnx Module).
    x: inputs ``(n, ...)`` of any per-point shape.
    columns: the typical m, used only to size blocks from the budget.
    block_size: points per block (default: from ``memory_budget``).
    memory_budget: bytes for one block's activations times ``columns``.
    dtype: compute dtype of the parameters and inputs (default: the inputs' float dtype;
      pass ``jnp.float64`` under ``jax.enable_x64`` for float64 products).

  Returns:
    :class:`JacobianOperator`.

  Example:
    >>> import jax.numpy as jnp
    >>> X = jnp.array([[1., 0.], [0., 2.], [1., 1.]])
    >>> op = jacobian_operator(lambda w, x: x @ w, jnp.zeros(2), X, block_size=2)
    >>> op.ntk_matvec(jnp.eye(3)).tolist()   # J = X: the NTK is X Xᵀ
    [[1.0, 0.0, 1.0], [0.0, 4.0, 2.0], [1.0, 2.0, 2.0]]
  """
  fn, p, x, dt, n, c = _network_inputs(apply_fn, params, x, dtype, "jacobian_operator")
  if block_size is None:
    per = _activation_size(fn, p, x[:1]) * max(int(columns), 1) * jnp.dtype(dt).itemsize * 3
    block_size = int(min(max(int(memory_budget) // max(per, 1), 1), n))
  block_size = _check_block_size(block_size, required=True)
  bs = min(block_size, n)
  nb = math.ceil(n / bs)
  xb = pad_rows(x, nb * bs).reshape((nb, bs) + x.shape[1:])

  def fb(q, xa):
    return fn(q, xa).reshape(bs, c)

  # p and the input blocks are arguments, not closed-over constants (XLA would fold the
  # network's forward pass on them at compile time and embed them in the program).
  def _jvp(T, p, xb):
    def one(xa):
      _, lin = jax.linearize(lambda q: fb(q, xa), p)
      return jax.vmap(lin, out_axes=-1)(T)                     # (bs, c, m)
    return lax.map(one, xb).reshape(nb * bs, c, -1)[:n]

  def _vjp(Vc, p, xb):
    m = Vc.shape[-1]
    Vp = jnp.pad(Vc.astype(dt), ((0, nb * bs - n), (0, 0), (0, 0))).reshape(nb, bs, c, m)

    def body(acc, blk):
      xa, va = blk
      _, pull = jax.vjp(lambda q: fb(q, xa), p)
      (g,) = jax.vmap(pull, in_axes=-1)(va)                     # leaves (m, *shape)
      return jax.tree.map(jnp.add, acc, g), None

    zero = jax.tree.map(lambda a: jnp.zeros((m,) + a.shape, a.dtype), p)
    acc, _ = lax.scan(body, zero, (xb, Vp))
    return acc

  jvp_j, vjp_j = jax.jit(_jvp), jax.jit(_vjp)
  ntk_j = jax.jit(lambda Vf, p, xb: _jvp(_vjp(Vf.reshape(n, c, Vf.shape[-1]), p, xb), p, xb)
                  .reshape(n * c, Vf.shape[-1]))
  jvp = lambda T: jvp_j(T, p, xb)
  vjp = lambda Vc: vjp_j(Vc, p, xb)
  ntk_matvec = lambda Vf: ntk_j(Vf, p, xb)

  return JacobianOperator(jvp, vjp, ntk_matvec, n, c, p, bs)


def _point_jacobians(fn, p, xa, c):
  """Per-point Jacobians of a block: leaves (bs, c, *leaf.shape) (vmap of jacrev)."""
  single = lambda q, xi: fn(q, xi[None]).reshape(c)
  return jax.vmap(jax.jacrev(single), in_axes=(None, 0))(p, xa)


def _jac_contract(ja, jb):
  """Σ_leaves ⟨J_a, J_b⟩ over parameters: (na, c, ...) × (nb, c, ...) → (na, c, nb, c)."""
  terms = [jnp.einsum("acp,bdp->acbd", a.reshape(a.shape[0], a.shape[1], -1),
                      b.reshape(b.shape[0], b.shape[1], -1))
           for a, b in zip(jax.tree.leaves(ja), jax.tree.leaves(jb))]
  return functools.reduce(jnp.add, terms)


def ntk_diagonal_blocks(apply_fn: Callable, params, x, *, block_size: Optional[int] = None,
                        memory_budget: int = 1 << 30, dtype=None) -> jax.Array:
  """The c×c diagonal blocks ``J_x J_xᵀ`` of the full empirical NTK, one per point.

  Per-point Jacobians (``vmap`` of ``jacrev`` over a block of points, memory
  block·c·#params), contracted over parameters; a ``lax.map`` over blocks.

  Args:
    apply_fn, params: as in :func:`trainable_fn`.
    x: inputs ``(n, ...)``.
    block_size: points per block (default: from ``memory_budget``).
    memory_budget: bytes for one block of per-point Jacobians.
    dtype: compute dtype (default: the inputs' float dtype).

  Returns:
    ``(n, c, c)`` array.

  Example:
    >>> import jax.numpy as jnp
    >>> ntk_diagonal_blocks(lambda w, x: x @ w, jnp.zeros((2, 2)),
    ...                     jnp.array([[1., 2.]]))[0].tolist()   # ‖x‖² I_c
    [[5.0, 0.0], [0.0, 5.0]]
  """
  fn, p, x, dt, n, c = _network_inputs(apply_fn, params, x, dtype, "ntk_diagonal_blocks")
  if block_size is None:
    per = 3 * c * max(_tree_size(p), 1) * jnp.dtype(dt).itemsize
    block_size = int(min(max(int(memory_budget) // per, 1), n))
  bs = min(_check_block_size(block_size, required=True), n)
  nb = math.ceil(n / bs)
  xb = pad_rows(x, nb * bs).reshape((nb, bs) + x.shape[1:])

  @jax.jit
  def run(xb, p):
    def one(xa):
      ja = _point_jacobians(fn, p, xa, c)
      return functools.reduce(jnp.add, [jnp.einsum("acp,adp->acd", l.reshape(bs, c, -1),
                                                   l.reshape(bs, c, -1))
                                        for l in jax.tree.leaves(ja)])
    return lax.map(one, xb).reshape(nb * bs, c, c)[:n]

  return run(xb, p)


@functools.partial(jax.jit, static_argnames=("call", "c", "strategy", "trace"))
def _ntk_run(call, p, rest, x1b, x2b, c, strategy, trace):
  """Kernel rows for blocks x1b (nb1, bs1, ...) against x2b (nb2, bs2, ...) (lax.map)."""
  fn = lambda q, x: call(q, rest, x)
  bs1, bs2 = x1b.shape[1], x2b.shape[1]

  def rows(xa):
    ja = _point_jacobians(fn, p, xa, c)                       # leaves (bs1, c, *shape)
    if strategy == "jvp":
      tang = jax.tree.map(lambda l: l.reshape((bs1 * c,) + l.shape[2:]), ja)

      def col(xb):
        _, lin = jax.linearize(lambda q: fn(q, xb).reshape(bs2, c), p)
        return jax.vmap(lin)(tang).reshape(bs1, c, bs2, c)
    else:
      def col(xb):
        return _jac_contract(ja, _point_jacobians(fn, p, xb, c))
    blocks = lax.map(col, x2b)                                # (nb2, bs1, c, bs2, c)
    if trace:
      blocks = jnp.einsum("jacbc->jab", blocks) / c
      return jnp.moveaxis(blocks, 0, 1).reshape(bs1, -1)
    return jnp.moveaxis(blocks, 0, 2).reshape(bs1, c, -1, c)

  return lax.map(rows, x1b)


class _WeightedCall(NamedTuple):
  """``call`` reparametrised as δ ↦ f(θ + √W ⊙ δ) (``rest`` = (rest, θ, √W)): its
  Jacobian at δ = 0 is J diag(√W), so its empirical NTK is J W Jᵀ."""
  base: Any

  def __call__(self, d, rest, x):
    rest0, p0, sw = rest
    return self.base(jax.tree.map(lambda a, s, e: a + s * e, p0, sw, d), rest0, x)


def _check_weights(weights, p):
  """√W as a pytree like p (same structure and shapes), non-negative and finite."""
  want, got = jax.tree.structure(p), jax.tree.structure(weights)
  if want != got:
    raise ValueError(f"empirical_ntk: `weights` must have the structure of the trainable "
                     f"parameters {want}; got {got}.")
  out = []
  for a, w in zip(jax.tree.leaves(p), jax.tree.leaves(weights)):
    w = jnp.asarray(w, jnp.asarray(a).dtype)
    if w.shape != jnp.shape(a):
      raise ValueError(f"empirical_ntk: a `weights` leaf has shape {w.shape}; the parameter "
                       f"it weights has shape {jnp.shape(a)}.")
    if _validate.is_concrete(w) and not bool(np.all(np.asarray(w) >= 0)):
      raise ValueError("empirical_ntk: `weights` must be finite and non-negative (a diagonal "
                       "metric W >= 0).")
    out.append(jnp.sqrt(w))
  return jax.tree.unflatten(want, out)


def _empirical_own(apply_fn, params, x1, x2, full, block_size, memory_budget, strategy,
                   weights=None):
  call, p, rest = _split(apply_fn, params)
  dt = x1.dtype
  p = jax.tree.map(lambda a: jnp.asarray(a).astype(dt)
                   if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, p)
  if weights is not None:
    if call.kind == "linen" and hasattr(weights, "keys") and "params" in weights \
        and jax.tree.structure(weights) != jax.tree.structure(p):
      weights = weights["params"]          # given like the variables: weight their 'params'
    call, rest, p = (_WeightedCall(call), (rest, p, _check_weights(weights, p)),
                     jax.tree.map(jnp.zeros_like, p))
  fn = lambda q, x: call(q, rest, x)
  out = jax.eval_shape(fn, p, x1[:1])
  if not hasattr(out, "shape") or len(out.shape) < 1 or out.shape[0] != 1:
    raise ValueError("empirical_ntk: apply_fn(params, x) must return an array with a leading "
                     f"axis of n points, shape (n,) or (n, c, ...); got "
                     f"{getattr(out, 'shape', type(out).__name__)}.")
  c = int(np.prod(out.shape[1:]))
  n1 = x1.shape[0]
  xb2 = x1 if x2 is None else x2
  n2 = xb2.shape[0]
  P = max(_tree_size(p), 1)
  if strategy == "auto":
    strategy = "jvp" if c >= 4 else "jacobian"   # the crossover: benchmarks/README.md
  item = jnp.dtype(dt).itemsize
  if block_size is None:
    # per-point Jacobians of a block (b·c·P, ×2 blocks for 'jacobian') plus the block's
    # activations times the b·c tangents for 'jvp' (b²·c·A), ×2 for temporaries
    A = _activation_size(fn, p, x1[:1])
    per_row = (2 if strategy == "jacobian" else 1) * c * P * item * 2
    bsz = max(1, int(memory_budget) // per_row)
    if strategy == "jvp":
      bsz = max(1, min(bsz, int(math.isqrt(max(int(memory_budget) // (2 * c * A * item), 1)))))
    block_size = bsz
  bs1, bs2 = min(block_size, n1), min(block_size, n2)
  nb1, nb2 = math.ceil(n1 / bs1), math.ceil(n2 / bs2)
  x1b = pad_rows(x1, nb1 * bs1).reshape((nb1, bs1) + x1.shape[1:])
  x2b = pad_rows(xb2, nb2 * bs2).reshape((nb2, bs2) + xb2.shape[1:])
  K = _ntk_run(call, p, rest, x1b, x2b, c, strategy, not full)
  if full:
    K = K.reshape(nb1 * bs1, c, nb2 * bs2, c)[:n1, :, :n2, :]
    return K.reshape(n1 * c, n2 * c)
  return K.reshape(nb1 * bs1, nb2 * bs2)[:n1, :n2]


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
