"""Row blocking, padding and the memory budget: the machinery of every blocked product.

Shared by the kernel operator (``kernels``), the empirical NTK and Jacobian products
(``tangents``), Nyström (``spectrum``) and the MSK kernel (``msk``):

* :func:`rows_for_budget` -- the one block-size rule (``per_pair·b² + per_row·b <= budget``);
  :func:`block_size_for_budget` its form for kernel blocks; :func:`resolve_block` the edge of
  a product split over devices;
* :func:`pad_rows` -- pads a block of points by repeating the last one (one compiled shape);
* :func:`assemble_blocks` -- a Gram matrix from fixed-shape jitted blocks (upper triangle
  mirrored when symmetric);
* :func:`map_row_blocks` -- ``fn`` over row blocks, concatenated;
* :func:`row_block_products` / :func:`row_block_products_python` -- ``Σ_J k(X_I, X_J) V_J``
  over all row blocks I (compiled ``lax`` loops, or a Python loop of a jitted step);
* :func:`cache_by_function` -- one jitted block program per (function, option).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mskjax import _validate as _v

__all__ = ["DEFAULT_MEMORY_BUDGET", "TEMPORARIES", "float_dtype", "rows_for_budget",
           "block_size_for_budget", "resolve_block", "pad_rows", "assemble_blocks",
           "map_row_blocks", "row_block_products", "row_block_products_python",
           "cache_by_function"]


def float_dtype():
  """float64 iff ``jax_enable_x64`` is on, else float32 (JAX's default float)."""
  return jax.dtypes.canonicalize_dtype(jnp.float64)


DEFAULT_MEMORY_BUDGET = 1 << 30
"""Default per-device budget (bytes) for the kernel blocks of one product: 1 GiB."""

TEMPORARIES = 24
"""Estimated ``b × b`` temporaries alive while a neural-tangents MLP kernel block is built
(NNGP, NTK and the arc-cosine intermediates, plus XLA fusion buffers); measured on 2--3
layer ReLU MLPs, kept generous."""


def rows_for_budget(memory_bytes: int = DEFAULT_MEMORY_BUDGET, *, per_row: int = 0,
                    per_pair: int = 0, n: Optional[int] = None, multiple: int = 1) -> int:
  r"""The one block-size rule: the largest block of ``b`` rows (points) whose memory fits.

  .. math:: \text{per\_pair}\cdot b^2 + \text{per\_row}\cdot b \le \text{memory\_bytes}

  rounded down to a multiple of ``multiple``, at least ``multiple`` (a block must hold
  something), and at most ``n`` when given. Every blocked product states its costs in these
  two numbers: kernel blocks (``b × b`` temporaries: :func:`block_size_for_budget`), per-point
  Jacobian blocks (``per_row`` = c·#params·itemsize × copies, ``tangents``), NTK-vector
  products (``per_pair``).

  Args:
    memory_bytes: budget in bytes (positive int).
    per_row: bytes that grow linearly with the block's rows.
    per_pair: bytes that grow with the square of the block's rows (pairs of points).
    n: the number of rows there are (cap), or None.
    multiple: round down to a multiple of this.

  Returns:
    The block's rows ``b`` (int).

  Example:
    >>> rows_for_budget(1000, per_row=10), rows_for_budget(1000, per_pair=10)
    (100, 10)
    >>> rows_for_budget(1000, per_row=10, n=30), rows_for_budget(10, per_row=100)
    (30, 1)
  """
  memory_bytes = _v.check_int(memory_bytes, "memory_bytes", lo=1)
  a = _v.check_int(per_pair, "per_pair", lo=0)
  bq = _v.check_int(per_row, "per_row", lo=0)
  multiple = _v.check_int(multiple, "multiple", lo=1)
  if a == 0 and bq == 0:
    raise ValueError("rows_for_budget: give the block's cost, `per_row` and/or `per_pair` > 0.")
  if a == 0:
    b = memory_bytes // bq
  else:     # largest root of a b² + bq b − memory = 0, then corrected for rounding
    b = int((-bq + math.sqrt(bq * bq + 4 * a * memory_bytes)) / (2 * a))
    while b > 0 and a * b * b + bq * b > memory_bytes:
      b -= 1
  b = max(multiple, (b // multiple) * multiple)
  return int(b if n is None else min(b, max(int(n), 1)))


def block_size_for_budget(memory_bytes: int = DEFAULT_MEMORY_BUDGET, *, m: int = 0,
                          itemsize: Optional[int] = None, temporaries: int = TEMPORARIES,
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
  m = _v.check_int(m, "m", lo=0)
  if itemsize is None:
    itemsize = jnp.dtype(float_dtype()).itemsize
  return rows_for_budget(memory_bytes, per_pair=temporaries * itemsize, per_row=2 * m * itemsize,
                         multiple=multiple)


def resolve_block(block_size, memory_budget, n, m, n_dev):
  """The block edge of a product over ``n`` points split over ``n_dev`` devices:
  ``block_size`` (or the budget's :func:`block_size_for_budget`), lowered to the smallest
  edge (a multiple of 8) that covers each device's rows with the same number of blocks."""
  if block_size is None:
    block_size = block_size_for_budget(memory_budget, m=m)
  else:
    block_size = _v.check_int(block_size, "block_size", lo=1)
  # Same number of blocks per device, but the smallest edge that covers each device's
  # rows: padding waste is then < 8 rows per block instead of up to a whole block.
  share = math.ceil(n / n_dev)
  nb = math.ceil(share / int(block_size))
  b = math.ceil(share / nb)
  return int(min(int(block_size), 8 * math.ceil(b / 8) if b > 8 else b))


def pad_rows(x, size):
  """Pads ``x`` to ``size`` rows by repeating its last row (real inputs keep kernels finite).

  The blocking primitive of every blocked kernel evaluation (``kernels.gram``,
  ``tangents.empirical_ntk``, ``kernels.kernel_operator``, :func:`map_row_blocks`): padded
  rows are real points, so kernel values stay finite, and callers drop them (or multiply
  them by zero rows of V).

  Example:
    >>> pad_rows(jnp.array([[1.0], [2.0]]), 3).tolist()
    [[1.0], [2.0], [2.0]]
  """
  pad = size - x.shape[0]
  return x if pad == 0 else jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1), mode="edge")


def assemble_blocks(pair_fn, sym_fn, x1, x2, block_size):
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
      _v.check_kernel_block(block, (b1, b2), symmetric=diagonal and i == 0)
      if diagonal:                 # exactly symmetric (a no-op on a symmetric block)
        block = 0.5 * (block + block.T)
      if out is None:
        out = np.empty((n1p, n2p), dtype=block.dtype)
      out[i:i + b1, j:j + b2] = block
      if x2 is None and j > i:
        out[j:j + b2, i:i + b1] = block.T
  return jnp.asarray(out[:n1, :n2])


def cache_by_function(builder):
  """lru_cache that falls back to building afresh for unhashable functions."""
  cached = functools.lru_cache(maxsize=64)(builder)

  def wrapper(fn, arg):
    try:
      hash(fn)
    except TypeError:
      return builder(fn, arg)
    return cached(fn, arg)
  return wrapper


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


def row_block_products(call, bs, xr, xc, vc, args):
  """Σ_J k(X_I, X_J) V_J for the row blocks I of ``xr`` (a multiple of ``bs`` points) and
  the column blocks J of ``xc`` / ``vc`` (``lax.map`` over I, ``lax.scan`` over J): the one
  blocked product behind ``kernels.kernel_operator`` (all rows, one device or row-sharded)."""
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


def row_block_products_python(step, bs, xr, xc, vc, args):
  """:func:`row_block_products` as a Python loop over a jitted block product
  ``step(acc, x_I, x_J, V_J, args) = acc + k(x_I, x_J) V_J`` (the same sums in the same
  order): for kernels with convolutions on the CPU, where XLA runs them inside
  ``lax.map``/``lax.scan`` on a slow path (:mod:`mskjax._loops`)."""
  m = vc.shape[1]
  rows = []
  for i in range(0, xr.shape[0], bs):
    acc = jnp.zeros((bs, m), vc.dtype)
    for j in range(0, xc.shape[0], bs):
      acc = step(acc, xr[i:i + bs], xc[j:j + bs], vc[j:j + bs], args)
    rows.append(acc)
  return jnp.concatenate(rows)
