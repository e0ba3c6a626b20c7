r"""MSK for large training sets: blocked and sharded kernel matvecs, matrix-free top-k.

A dense ``n × n`` Gram matrix and a dense eigendecomposition stop at a few ten thousand
points (memory n², time n³). Everything here needs only products ``K V`` with a tall
``(n, m)`` matrix ``V``, computed from kernel blocks that are evaluated on the fly:

.. math:: (K V)_I = \sum_J k(X_I, X_J)\, V_J \qquad (\text{row blocks } I,\ \text{column blocks } J)

* :func:`block_size_for_budget` -- the block edge ``b`` from a memory budget in bytes;
* :func:`kernel_matvec_large` -- ``K V`` in ``b × b`` blocks, data-parallel over the rows on
  all JAX devices (``jax.shard_map`` over a 1-D mesh); the same code runs on one CPU, one
  GPU or a multi-device host, and the summation order of every row does not depend on the
  number of devices;
* :func:`kernel_operator` -- that product as a function ``V -> K V`` for a fixed ``X``;
* :func:`topk_eigh_matfree` -- top-k eigenpairs from a matvec alone (randomized block
  Krylov / block Lanczos with full re-orthogonalisation, Rayleigh--Ritz and restarts),
  reporting the residuals ``‖K v_i − λ_i v_i‖``;
* :func:`nystrom_eigh` -- top-k eigenpairs of the Nyström approximation from ``m``
  landmarks, O(n m²) time and O(n m) memory (EigenPro-style), with a computable error bound;
* :func:`msk_spectrum_large` -- an :class:`mskjax.MSKSpectrum` without ever forming K.

Memory: live device memory is O(b² · c_L + n m) per device, where c_L is the number of
``b × b`` temporaries of the analytic kernel (grows with depth). Time: one pass over K
costs n² kernel evaluations plus 2 n² m flops; :func:`topk_eigh_matfree` needs depth + 1 = 9 passes
per restart cycle by default, and one or two cycles for ReLU-NTK spectra with k = 100.

The solver drivers (:func:`topk_eigh_matfree`, :func:`nystrom_eigh`) are host-side loops
over jitted pieces (the stopping test reads concrete residuals); the matvec itself is a
pure jitted function.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mskjax import _validate as V
from mskjax import modifiers as _modifiers
from mskjax import spectrum as _spectrum
from mskjax.kernels import pad_rows
from mskjax.msk import MSKSpectrum

__all__ = ["DEFAULT_MEMORY_BUDGET", "block_size_for_budget", "kernel_matvec_large",
           "kernel_operator", "TopKEigh", "topk_eigh_matfree", "NystromEigh",
           "nystrom_eigh", "msk_spectrum_large"]

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Default per-device budget (bytes) for the kernel blocks of one matvec: 1 GiB."""

_TEMPORARIES = 24
"""Estimated ``b × b`` temporaries alive while a neural-tangents MLP kernel block is built
(NNGP, NTK and the arc-cosine intermediates, plus XLA fusion buffers); measured on 2--3
layer ReLU MLPs, kept generous."""


# --------------------------------------------------------------------------- blocking
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
  memory_bytes = V.check_int(memory_bytes, "memory_bytes", lo=1)
  if itemsize is None:
    itemsize = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64)).itemsize
  a, bq, c = temporaries * itemsize, 2 * m * itemsize, -int(memory_bytes)
  b = int((-bq + math.sqrt(bq * bq - 4 * a * c)) / (2 * a))
  return max(multiple, (b // multiple) * multiple)


def _kernel_call(kernel_fn, get):
  if get is None:
    return lambda a, b, *args: kernel_fn(a, b, *args)
  return lambda a, b, *args: kernel_fn(a, b, get, *args)


def _local_matvec(kernel_fn, get, bs, xr, xc, vc, args):
  """Rows ``xr`` (a multiple of ``bs``) against all columns ``xc``: Σ_J k(xr, X_J) V_J."""
  call = _kernel_call(kernel_fn, get)
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
def _matvec_fn(kernel_fn, get, bs, devices):
  """One jitted (and, for several devices, row-sharded) matvec per configuration."""
  local = functools.partial(_local_matvec, kernel_fn, get, bs)
  if len(devices) == 1:
    return jax.jit(lambda xr, xc, vc, args: local(xr, xc, vc, args))
  from jax.sharding import Mesh, PartitionSpec as P
  mesh = Mesh(np.asarray(devices), ("rows",))
  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("rows"), P(), P(), P()),
                          out_specs=P("rows"), check_vma=False)
  return jax.jit(sharded)


def _check_devices(devices):
  devices = tuple(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("`devices` must be a non-empty sequence of jax devices (or None for all).")
  return devices


def _resolve_block(block_size, memory_budget, n, m, n_dev):
  if block_size is None:
    block_size = block_size_for_budget(memory_budget, m=m)
  else:
    block_size = V.check_int(block_size, "block_size", lo=1)
  # Same number of blocks per device, but the smallest edge that covers each device's
  # rows: padding waste is then < 8 rows per block instead of up to a whole block.
  share = math.ceil(n / n_dev)
  nb = math.ceil(share / int(block_size))
  b = math.ceil(share / nb)
  return int(min(int(block_size), 8 * math.ceil(b / 8) if b > 8 else b))


@functools.lru_cache(maxsize=64)
def _block_fn(kernel_fn, get):
  call = _kernel_call(kernel_fn, get)
  return jax.jit(lambda a, b, args: call(a, b, *args))


def _cached_gram(kernel_fn, get, x, bs, args, dtype):
  """K = k(X, X) from b × b blocks, each unordered pair evaluated once (upper triangle,
  mirrored), assembled on the host and put on the default device as one array."""
  n = x.shape[0]
  nc = bs * math.ceil(n / bs)
  xp = pad_rows(x, nc)
  fn = _block_fn(kernel_fn, get)
  out = np.empty((nc, nc), dtype=np.dtype(dtype))
  for i in range(0, nc, bs):
    xi = xp[i:i + bs]
    for j in range(i, nc, bs):
      blk = np.asarray(fn(xi, xp[j:j + bs], args), dtype=out.dtype)
      out[i:i + bs, j:j + bs] = blk
      if j > i:
        out[j:j + bs, i:i + bs] = blk.T
  K = jnp.asarray(out[:n, :n])
  del out
  return K


@jax.jit
def _dense_matvec(K, v):
  return K @ v


def kernel_operator(kernel_fn: Callable, x, *, get: Optional[str] = "ntk",
                    kernel_args: tuple = (), m: int = 128, block_size: Optional[int] = None,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET,
                    devices: Optional[Sequence] = None, cache="auto") -> Callable:
  r"""``V ↦ K V`` with ``K = k(X, X)`` never formed: blocked, and row-sharded over devices.

  Rows of X are padded (repeating the last row) to a multiple of ``b · n_devices`` and split
  over a 1-D device mesh; columns are padded to a multiple of ``b`` with zero rows of V, so
  every output row is the same sum Σ_J k(x_i, X_J) V_J in the same order on one or many
  devices. Per device: O(b² · temporaries + n m) memory, n²/n_devices kernel evaluations.

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
    cache: ``True`` evaluates K once (each unordered block pair once, mirrored) and every
      product is then a dense ``K @ V`` (2n²m' flops instead of n² kernel evaluations:
      an analytic NTK entry costs ~100 plain multiply-adds, so an iterative eigensolver
      that needs tens of products gains accordingly); ``False`` never stores K;
      ``'auto'`` (default) caches when one device is used and ``2·n²·itemsize`` (K plus
      one product's temporaries) fits ``memory_budget``.

  Returns:
    ``matvec(V)`` for ``V`` of shape ``(n,)`` or ``(n, m')``; it has attributes ``n``,
    ``block_size``, ``devices`` and ``cached``.

  Example:
    >>> import jax.numpy as jnp
    >>> lin = lambda a, b: a @ b.T
    >>> X = jnp.arange(6.0).reshape(3, 2)
    >>> mv = kernel_operator(lin, X, get=None, block_size=2)
    >>> mv(jnp.ones(3)).tolist()
    [9.0, 39.0, 69.0]
  """
  x = V.as_points(x, "x")
  V.check_kernel_fn(kernel_fn, get, len(tuple(kernel_args)))
  devices = _check_devices(devices)
  n = x.shape[0]
  nd = len(devices)
  if cache not in (True, False, "auto"):
    raise ValueError(f"`cache` must be True, False or 'auto', got {cache!r}.")
  k_bytes = 2 * n * n * x.dtype.itemsize        # K, and a host copy while it is assembled
  if cache == "auto":
    cache = nd == 1 and k_bytes <= int(memory_budget)
  # With K cached the kernel blocks get what the budget leaves (at least an eighth of it).
  block_budget = max(int(memory_budget) - k_bytes, int(memory_budget) // 8) if cache \
      else memory_budget
  bs = _resolve_block(block_size, block_budget, n, m, nd)
  nr = bs * nd * math.ceil(n / (bs * nd))
  nc = bs * math.ceil(n / bs)
  xr = pad_rows(x, nr)
  xc = pad_rows(x, nc)
  fn = _matvec_fn(kernel_fn, get, bs, devices)
  args = tuple(kernel_args)
  K = _cached_gram(kernel_fn, get, x, bs, args, x.dtype) if cache else None

  def matvec(v):
    v = V.finite_array(v, "V", ndim=(1, 2)).astype(x.dtype)
    if v.shape[0] != n:
      raise ValueError(f"`V` must have n = {n} rows (one per point of `x`), got shape "
                       f"{tuple(v.shape)}.")
    v2 = v.reshape(n, -1)
    if K is not None:
      return _dense_matvec(K, v2).reshape(v.shape)
    vc = jnp.pad(v2, ((0, nc - n), (0, 0)))  # zero rows: padded columns add nothing
    out = fn(xr, xc, vc, args)[:n]
    return out.reshape(v.shape)

  matvec.n, matvec.block_size, matvec.devices, matvec.cached = n, bs, devices, bool(cache)
  return matvec


def kernel_matvec_large(kernel_fn: Callable, x, v, *, get: Optional[str] = "ntk",
                        kernel_args: tuple = (), block_size: Optional[int] = None,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET,
                        devices: Optional[Sequence] = None) -> jax.Array:
  r"""``K V`` for ``K = k(X, X)`` from on-the-fly blocks, sharded over devices by rows.

  .. math:: (K V)_i = \sum_J k(x_i, X_J)\, V_J

  A one-shot form of :func:`kernel_operator` (see it for the arguments). Unlike
  :func:`mskjax.kernels.kernel_matvec` the block size may come from a memory budget and the
  rows are spread over all devices.

  Returns:
    ``K V`` with the shape of ``v``.

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> from mskjax.nets import MLPSpec, stax_mlp
    >>> kernel_fn = stax_mlp(MLPSpec(depth=1, width=8))[2]
    >>> x = jnp.array([[1., 0.], [0., 1.], [0.6, 0.8]])
    >>> print(np.round(np.asarray(kernel_matvec_large(kernel_fn, x, jnp.ones(3), block_size=2)), 3))
    [0.855 0.945 1.141]
  """
  m = 1 if np.ndim(v) == 1 else int(np.shape(v)[1])
  mv = kernel_operator(kernel_fn, x, get=get, kernel_args=kernel_args, m=m,
                       block_size=block_size, memory_budget=memory_budget, devices=devices,
                       cache=False)   # one product: caching K would only cost memory
  return mv(v)


# ------------------------------------------------------------------ matrix-free top-k
class TopKEigh(NamedTuple):
  """Top eigenpairs found from matvecs, with their quality.

  Attributes:
    values: ``(k,)`` Ritz values λ₁ ≥ … ≥ λ_k (clamped at 0).
    vectors: ``(n, k)`` orthonormal Ritz vectors.
    next_value: λ_{k+1}, the next Ritz value (what :class:`mskjax.MSKSpectrum` needs).
    residuals: ``(k + 1,)`` ‖K v_i − λ_i v_i‖₂ for i = 1..k+1 (unit vectors).
    n_matvecs: number of products with K (each on a block of columns).
    converged: whether ``max(residuals) <= tol · λ₁``.
  """
  values: jax.Array
  vectors: jax.Array
  next_value: jax.Array
  residuals: jax.Array
  n_matvecs: int
  converged: bool


def _cholqr(w, shift):
  """One (shifted) Cholesky-QR pass: w R⁻¹ with RᵀR = wᵀw + shift·tr(wᵀw)·I.

  GEMM-based (much faster than Householder QR on CPU for tall w); the shift keeps the
  Cholesky factorisation defined for ill-conditioned or rank-deficient w (Fukaya et al.,
  SIAM J. Sci. Comput. 2020).
  """
  g = w.T @ w
  g = 0.5 * (g + g.T)
  s = shift * jnp.trace(g) + jnp.finfo(w.dtype).tiny
  r = jnp.linalg.cholesky(g + s * jnp.eye(g.shape[0], dtype=w.dtype))
  return jax.scipy.linalg.solve_triangular(r, w.T, lower=True).T


@jax.jit
def _orth_against(basis, w):
  """Orthonormal columns spanning w minus its part in span(basis) (zero columns allowed).

  Projection twice (DGKS) and shifted Cholesky-QR three times (CholeskyQR3 with a
  projection between passes), so the result is orthonormal and orthogonal to ``basis`` to
  round-off even when w is (numerically) inside span(basis).
  """
  eps = jnp.finfo(w.dtype).eps
  rows, cols = w.shape
  shift = 11.0 * (rows * cols + cols * (cols + 1)) * eps
  for s in (shift, cols * eps, cols * eps):
    w = w - basis @ (basis.T @ w)
    w = w - basis @ (basis.T @ w)
    w = _cholqr(w, s)
  return w


@functools.partial(jax.jit, static_argnames=("nk",))
def _rayleigh_ritz(B, KB, nk):
  T = B.T @ KB
  w, u = jnp.linalg.eigh(0.5 * (T + T.T))
  w, u = w[::-1][:nk], u[:, ::-1][:, :nk]
  Y, KY = B @ u, KB @ u
  res = jnp.linalg.norm(KY - Y * w, axis=0)
  return w, Y, KY, res


def topk_eigh_matfree(matvec: Callable, n: int, k: int, *, oversample: int = 20,
                      depth: int = 8, tol: float = 1e-7, max_cycles: int = 8, key=None,
                      dtype=None) -> TopKEigh:
  r"""Top-(k+1) eigenpairs of a symmetric PSD operator from ``V ↦ K V`` only.

  Randomized block Krylov (block Lanczos with full re-orthogonalisation, Musco & Musco
  2015) with thick restarts: from an orthonormal block Q₀ of ``b = k + 1 + oversample``
  columns build ``[Q₀, K Q₀, …, K^depth Q₀]`` (each block re-orthogonalised against all
  earlier ones), take the Rayleigh--Ritz pairs of K on that space, and restart from the
  top b Ritz vectors until the residuals

  .. math:: r_i = \lVert K v_i - \lambda_i v_i \rVert_2 \le \text{tol}\cdot\lambda_1,
     \qquad i = 1..k+1.

  Each cycle costs ``depth + 1`` matvecs with b columns. Since the Ritz values are
  Rayleigh quotients, each λ_i is accurate to about r_i² / gap_i (gap_i: distance to the
  rest of the spectrum), far below r_i. Everything runs in the dtype of the matvec
  (float64 under ``jax_enable_x64``).

  Args:
    matvec: ``V ↦ K V`` for ``V`` of shape ``(n, b)`` (e.g. :func:`kernel_operator`).
    n: size of K.
    k: number of eigenpairs returned; λ_{k+1} is computed too, ``1 <= k <= n - 1``.
    oversample: extra columns in the block (helps when λ_k ≈ λ_{k+1}).
    depth: Krylov blocks per cycle after the start block.
    tol: residual tolerance relative to λ₁.
    max_cycles: restart cycles at most (it stops earlier when converged).
    key: ``jax.random.PRNGKey`` for the start block (default ``PRNGKey(0)``).
    dtype: float dtype of the iteration (default: float64 under x64).

  Returns:
    :class:`TopKEigh` (``values`` (k,), ``vectors`` (n, k), ``next_value``, ``residuals``).

  Example:
    >>> import jax.numpy as jnp
    >>> K = jnp.diag(1.0 / jnp.arange(1.0, 201.0))
    >>> top = topk_eigh_matfree(lambda v: K @ v, 200, 3)
    >>> [round(x, 8) for x in top.values.tolist()], round(float(top.next_value), 8), top.converged
    ([1.0, 0.5, 0.33333333], 0.25, True)
  """
  if not callable(matvec):
    raise TypeError(f"`matvec` must be callable V -> K V, got {type(matvec).__name__}.")
  n = V.check_int(n, "n", lo=2)
  k = V.check_k(k, n)
  oversample = V.check_int(oversample, "oversample", lo=0)
  depth = V.check_int(depth, "depth", lo=1)
  max_cycles = V.check_int(max_cycles, "max_cycles", lo=1)
  tol = V.check_real(tol, "tol", lo=0, lo_open=True)
  n = int(n)
  dtype = jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else jnp.dtype(dtype)
  b = min(n, k + 1 + int(oversample))
  depth = max(1, min(int(depth), n // b - 1)) if n // b >= 2 else 0
  key = jax.random.PRNGKey(0) if key is None else key
  none = jnp.zeros((n, b), dtype)
  Q = _orth_against(none, jax.random.normal(key, (n, b), dtype=dtype))
  nbasis = (depth + 1) * b
  n_mv = 0
  for cycle in range(int(max_cycles)):
    # Fixed-size basis buffer (unused columns are zero): one compilation of _orth_against.
    B = jnp.zeros((n, nbasis), dtype).at[:, :b].set(Q)
    kblocks = []
    for j in range(depth + 1):
      KQ = _checked_product(matvec, B[:, j * b:(j + 1) * b], n, b, dtype)
      n_mv += 1
      kblocks.append(KQ)
      if j < depth:
        B = B.at[:, (j + 1) * b:(j + 2) * b].set(_orth_against(B, KQ))
    KB = jnp.concatenate(kblocks, axis=1)
    w, Y, KY, res = _rayleigh_ritz(B, KB, b)
    lam1 = float(w[0])
    done = float(jnp.max(res[:k + 1])) <= tol * max(lam1, np.finfo(float).tiny)
    if done or cycle == max_cycles - 1:
      break
    # Thick restart from the best b Ritz vectors; with no room for a Krylov block
    # (2b > n) this is plain subspace iteration, Q <- orth(K Y).
    Q = Y if depth else _orth_against(none, KY)
  V.check_psd_eigenvalues(w, n, dtype, "K (the operator behind `matvec`)")
  if not done:
    warnings.warn(f"topk_eigh_matfree: not converged after {max_cycles} cycles (max residual "
                  f"{float(jnp.max(res[:k + 1])):.3g} > tol·λ₁ = {tol * lam1:.3g}); raise "
                  "max_cycles/depth/oversample. The result is returned with converged=False.",
                  UserWarning, stacklevel=2)
  w = jnp.maximum(w, 0.0)
  return TopKEigh(w[:k], Y[:, :k], w[k], res[:k + 1], n_mv, bool(done))


def _checked_product(matvec, Q, n, b, dtype):
  """matvec(Q) with its shape and finiteness checked (a named error, not an XLA one)."""
  out = matvec(Q)
  if not hasattr(out, "shape") or tuple(out.shape) != (n, b):
    got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
    raise ValueError(f"`matvec` must map an (n, b) = ({n}, {b}) block V to K V of the same "
                     f"shape; it returned {got}.")
  out = jnp.asarray(out, dtype)
  if V.is_concrete(out) and not bool(jnp.all(jnp.isfinite(out))):
    raise ValueError("`matvec` returned NaN/inf (NaN in the kernel, or overflow: scale the "
                     "kernel down, e.g. divide it by its largest diagonal entry, and scale the "
                     "eigenvalues back).")
  return out


# --------------------------------------------------------------------------- Nyström
class NystromEigh(NamedTuple):
  """Top eigenpairs of the Nyström approximation K̂ = C W⁺ Cᵀ.

  Attributes:
    values: ``(k,)`` top eigenvalues of K̂ (each ≤ the matching eigenvalue of K).
    vectors: ``(n, k)`` orthonormal eigenvectors of K̂.
    next_value: λ_{k+1}(K̂).
    landmarks: ``(m,)`` indices of the landmark points in X.
    trace_error: tr(K − K̂) ≥ ‖K − K̂‖₂ ≥ λ_i(K) − λ_i(K̂) ≥ 0 (a bound you can compute).
  """
  values: jax.Array
  vectors: jax.Array
  next_value: jax.Array
  landmarks: jax.Array
  trace_error: jax.Array


@functools.lru_cache(maxsize=64)
def _cross_fn(kernel_fn, get):
  call = _kernel_call(kernel_fn, get)

  @jax.jit
  def cross(xb, xl, args):  # k(xb, L) and diag k(xb, xb) for one row block
    return call(xb, xl, *args), jnp.diagonal(call(xb, xb, *args))
  return cross


def nystrom_eigh(kernel_fn: Callable, x, k: int, n_landmarks: int, *,
                 get: Optional[str] = "ntk", kernel_args: tuple = (), key=None,
                 landmarks=None, block_size: Optional[int] = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 rcond: Optional[float] = None) -> NystromEigh:
  r"""Top-k eigenpairs of the Nyström approximation of K from m landmark points (n ≫ m).

  With landmarks L ⊂ X (uniform without replacement), C = k(X, L) (n × m) and
  W = k(L, L) = Q diag(w) Qᵀ, the approximation is

  .. math:: \hat K = C W^{+} C^\top = B B^\top,\qquad B = C\, Q\, \mathrm{diag}(w)^{-1/2},

  and its eigenpairs come from the m × m matrix BᵀB: O(n m² + n m · kernel) time, O(n m)
  memory, one pass over C; K is never formed (EigenPro 2 uses this with m ≈ 10⁴).

  **Approximation error.** K − K̂ is the Schur complement of W, so it is PSD. Hence, by
  Weyl's inequality, for every i

  .. math:: 0 \le \lambda_i(K) - \lambda_i(\hat K) \le \lVert K - \hat K\rVert_2
     \le \operatorname{tr}(K - \hat K) = \sum_j k(x_j, x_j) - \lVert B\rVert_F^2,

  returned as ``trace_error``. For uniformly sampled landmarks the expected error is
  ‖K − K̂‖₂ ≲ λ_{s+1}(K) + (n/m)·Σ_{j>s} λ_j(K)/n-type tails (Gittens & Mahoney 2016), so
  it falls with m as fast as the spectrum decays; the eigenvectors are accurate only where
  the gaps are large compared with it. ``tests/test_large.py`` measures both.

  Args:
    kernel_fn, get, kernel_args: as in :func:`kernel_operator`.
    x: ``(n, d)`` or ``(n, ...)`` inputs (any per-point shape the kernel accepts).
    k: eigenpairs returned (λ_{k+1} too), ``1 <= k < n_landmarks``.
    n_landmarks: m, the number of landmarks, ``k + 1 <= m <= n``.
    key: PRNG key for the landmark draw (default ``PRNGKey(0)``).
    landmarks: optional ``(m,)`` integer indices overriding the random draw.
    block_size, memory_budget: rows of C computed at a time.
    rcond: eigenvalues of W below ``rcond · max(w)`` are dropped (default ``m · eps``).

  Returns:
    :class:`NystromEigh`.

  Example:
    >>> import jax.numpy as jnp
    >>> lin = lambda a, b: a @ b.T      # rank-2 kernel: 2 landmarks reproduce it exactly
    >>> X = jnp.array([[1., 0.], [0., 2.], [1., 1.], [2., 1.]])
    >>> ny = nystrom_eigh(lin, X, 1, 3, get=None)
    >>> round(float(ny.values[0]), 6), float(ny.trace_error) < 1e-12
    (9.0, True)
  """
  x = V.as_points(x, "x")
  V.check_kernel_fn(kernel_fn, get, len(tuple(kernel_args)))
  n = x.shape[0]
  m = V.check_int(n_landmarks, "n_landmarks", lo=2, hi=n)
  k = V.check_k(k, m)
  if landmarks is None:
    key = jax.random.PRNGKey(0) if key is None else key
    landmarks = jnp.sort(jax.random.choice(key, n, (m,), replace=False))
  else:
    landmarks = V.check_indices(landmarks, n, "landmarks")
    if landmarks.shape != (m,):
      raise ValueError(f"`landmarks` must be {m} = n_landmarks integer indices, got shape "
                       f"{tuple(landmarks.shape)}.")
    if V.is_concrete(landmarks) and np.unique(np.asarray(landmarks)).size != m:
      raise ValueError("`landmarks` has repeated indices; pass m distinct points.")
  xl = x[landmarks]
  bs = _resolve_block(block_size, memory_budget, n, m, 1)
  cross = _cross_fn(kernel_fn, get)
  args = tuple(kernel_args)
  npad = bs * math.ceil(n / bs)
  xp = pad_rows(x, npad)
  parts = [cross(xp[i:i + bs], xl, args) for i in range(0, npad, bs)]
  C = jnp.concatenate([p[0] for p in parts])[:n].astype(x.dtype)
  diag = jnp.concatenate([p[1] for p in parts])[:n].astype(x.dtype)
  W = C[landmarks]
  w, Q = jnp.linalg.eigh(0.5 * (W + W.T))
  rcond = m * np.finfo(np.dtype(x.dtype)).eps if rcond is None else float(rcond)
  keep = w > rcond * jnp.max(w)
  scale = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, w, 1.0)), 0.0)
  B = C @ (Q * scale)                               # (n, m), K̂ = B Bᵀ
  s2, P = jnp.linalg.eigh(B.T @ B)
  s2, P = jnp.maximum(s2[::-1], 0.0), P[:, ::-1]
  U = (B @ P[:, :k]) / jnp.sqrt(jnp.where(s2[:k] > 0, s2[:k], 1.0))
  U, _ = jnp.linalg.qr(U)  # re-orthonormalise (round-off only)
  U = U * jnp.sign(jnp.sum(U * (B @ P[:, :k]), axis=0))
  trace_error = jnp.maximum(jnp.sum(diag) - jnp.sum(B * B), 0.0)
  return NystromEigh(s2[:k], U, s2[k], landmarks, trace_error)


# ------------------------------------------------------------------- MSK spectrum
def msk_spectrum_large(kernel_fn: Callable, x, g: _modifiers.Modifier, k: int, *,
                       get: Optional[str] = "ntk", kernel_args: tuple = (),
                       method: str = "krylov", n_landmarks: Optional[int] = None,
                       block_size: Optional[int] = None,
                       memory_budget: int = DEFAULT_MEMORY_BUDGET,
                       devices: Optional[Sequence] = None, tol: float = 1e-7,
                       oversample: int = 20, depth: int = 8, max_cycles: int = 8,
                       key=None, tie_rtol: float = 1e-6, return_info: bool = False,
                       cache="auto"):
  r"""An :class:`mskjax.MSKSpectrum` of ``K = k(X, X)`` without materialising K.

  The top-(k+1) eigenpairs come from :func:`topk_eigh_matfree` on the blocked, sharded
  :func:`kernel_operator` (``method='krylov'``, exact up to the reported residuals) or from
  :func:`nystrom_eigh` (``method='nystrom'``, approximate, see its error bound), and

  .. math:: \text{new\_values} = g(\lambda_1..\lambda_k),\quad
     \text{next\_value} = \lambda_{k+1},

  exactly as :func:`mskjax.msk_spectrum` builds it from a dense K. The result plugs into
  :func:`mskjax.apply_preconditioner` (O(nk)) and minibatch preconditioning (rows
  ``spec.vectors[idx]`` of a batch).

  Args:
    kernel_fn, get, kernel_args, block_size, memory_budget, devices, cache: see
      :func:`kernel_operator` (with ``cache='auto'`` K is evaluated once and kept when it
      fits the budget — 2·n²·8 bytes, 6.4 GB at n = 20k — and the Krylov products are then
      dense GEMMs).
    x: ``(n, d)`` or ``(n, ...)`` training inputs (any per-point shape the kernel accepts).
    g: modifier ``g(evals, k)`` (see :mod:`mskjax.modifiers`).
    k: modified eigenvalues, ``1 <= k <= n - 1``.
    method: ``'krylov'`` (matrix-free, exact) or ``'nystrom'``.
    n_landmarks: m for ``'nystrom'`` (default ``min(n, max(10 (k + 1), 1000))``).
    tol, oversample, depth, max_cycles, key: see :func:`topk_eigh_matfree`.
    tie_rtol: warn when λ_k ≈ λ_{k+1} to this relative tolerance (k splits a block).
    return_info: also return the solver's :class:`TopKEigh` / :class:`NystromEigh`.

  Returns:
    :class:`mskjax.MSKSpectrum` (or ``(spectrum, info)`` with ``return_info=True``).

  Raises:
    ValueError: if λ_k is numerically zero (k exceeds the numerical rank).

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> rbf = lambda a, b: jnp.exp(-((a[:, None] - b[None]) ** 2).sum(-1))
    >>> X = jnp.linspace(-2, 2, 40)[:, None]
    >>> s = msk_spectrum_large(rbf, X, mskjax.modifiers.flatten(), 3, get=None)
    >>> d = mskjax.msk_spectrum(rbf(X, X), mskjax.modifiers.flatten(), 3)
    >>> bool(jnp.allclose(s.values, d.values, rtol=1e-10)), s.vectors.shape
    (True, (40, 3))
  """
  if method not in ("krylov", "nystrom"):
    raise ValueError(f"`method` must be 'krylov' or 'nystrom', got {method!r}.")
  x = V.as_points(x, "x")
  n = x.shape[0]
  k = V.check_k(k, n)
  if method == "krylov":
    mv = kernel_operator(kernel_fn, x, get=get, kernel_args=kernel_args,
                         m=k + 1 + oversample, block_size=block_size,
                         memory_budget=memory_budget, devices=devices, cache=cache)
    info = topk_eigh_matfree(mv, n, k, oversample=oversample, depth=depth, tol=tol,
                             max_cycles=max_cycles, key=key)
    # (topk_eigh_matfree warns itself when its residuals stay above tol·λ₁.)
  else:
    m = min(n, max(10 * (k + 1), 1000)) if n_landmarks is None else n_landmarks
    info = nystrom_eigh(kernel_fn, x, k, m, get=get, kernel_args=kernel_args, key=key,
                        block_size=block_size, memory_budget=memory_budget)
  lam = np.asarray(info.values)
  floor = n * np.finfo(np.dtype(x.dtype)).eps * max(lam[0], np.finfo(float).tiny)
  if lam[k - 1] <= floor:
    raise ValueError(f"`k`={k} exceeds the numerical rank of K: λ_k = {lam[k - 1]:.3g} <= "
                     f"{floor:.3g} (n·eps·λ₁); choose a smaller k.")
  all_vals = jnp.concatenate([info.values, info.next_value[None]])
  _spectrum.warn_if_k_splits_block(np.asarray(all_vals), k, tie_rtol)
  new = _modifiers.apply_modifier(g, all_vals, k)
  spec = MSKSpectrum(info.values, info.vectors, new, info.next_value)
  return (spec, info) if return_info else spec
