"""Eigenpairs of kernel matrices: dense and randomized top-k, in descending order.

All eigendecompositions run in float64 when ``jax_enable_x64`` is on (mskjax never turns
it on by itself; the runner and the tests do), and tiny negative eigenvalues produced by
round-off of a PSD kernel are clamped to zero.
"""
from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mskjax import _validate as V

__all__ = ["Eigenpairs", "eigh_desc", "eigh_top", "randomized_eigh_top",
           "eigenvalue_blocks", "round_k_to_block", "warn_if_k_splits_block"]


class Eigenpairs(NamedTuple):
  """Eigenpairs in descending order: ``K ≈ vectors @ diag(values) @ vectors.T``.

  Attributes:
    values: ``(m,)`` eigenvalues λ₁ ≥ … ≥ λ_m ≥ 0.
    vectors: ``(n, m)`` orthonormal eigenvectors, column ``i`` belongs to ``values[i]``.
  """
  values: jax.Array
  vectors: jax.Array


@jax.jit
def _eigh_desc(K):
  K = 0.5 * (K + K.T)
  w, v = jnp.linalg.eigh(K)
  w, v = w[::-1], v[:, ::-1]
  return Eigenpairs(jnp.maximum(w, 0.0), v)


def eigh_desc(K) -> Eigenpairs:
  r"""All eigenpairs of a symmetric PSD matrix, descending, negatives clamped to 0.

  .. math:: K = V \Lambda V^\top,\quad \lambda_1 \ge \dots \ge \lambda_n \ge 0.

  Args:
    K: ``(n, n)`` symmetric positive semi-definite matrix.

  Returns:
    :class:`Eigenpairs` with ``values`` of shape ``(n,)`` and ``vectors`` ``(n, n)``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> mskjax.eigh_desc(jnp.diag(jnp.array([1.0, 3.0, 2.0]))).values.tolist()
    [3.0, 2.0, 1.0]
  """
  K = V.check_square_symmetric(K, "K")
  return _eigh_desc(K)


@functools.partial(jax.jit, static_argnames=("k", "oversample", "n_iter"))
def _randomized_eigh_top(K, key, k, oversample, n_iter):
  n = K.shape[0]
  m = min(n, k + oversample)
  Q = jax.random.normal(key, (n, m), dtype=K.dtype)
  Q, _ = jnp.linalg.qr(K @ Q)

  def body(_, Q):  # subspace (power) iteration, re-orthonormalised each step
    Q, _ = jnp.linalg.qr(K @ Q)
    return Q

  Q = jax.lax.fori_loop(0, n_iter, body, Q)
  T = Q.T @ (K @ Q)  # Rayleigh-Ritz on the subspace
  w, u = jnp.linalg.eigh(0.5 * (T + T.T))
  w, u = w[::-1][:k], u[:, ::-1][:, :k]
  return Eigenpairs(jnp.maximum(w, 0.0), Q @ u)


def randomized_eigh_top(K, k: int, *, key=None, oversample: int = 20,
                        n_iter: int = 30) -> Eigenpairs:
  r"""Top-k eigenpairs by randomized subspace iteration (Halko, Martinsson & Tropp 2011).

  ``Q ← orth(K Q)`` repeated ``n_iter`` times from a Gaussian ``(n, k + oversample)``
  start, then Rayleigh–Ritz: eigenpairs of ``Qᵀ K Q``. The error in eigenvalue ``i``
  decays like ``(λ_{k+oversample+1}/λ_i)^{2 n_iter}``, so a fast-decaying spectrum (every
  NTK on the sphere) converges in a few tens of iterations.

  Args:
    K: ``(n, n)`` symmetric PSD matrix.
    k: number of eigenpairs, ``1 <= k <= n``.
    key: ``jax.random.PRNGKey`` for the start (default ``PRNGKey(0)``).
    oversample: extra columns in the subspace.
    n_iter: subspace iterations.

  Returns:
    :class:`Eigenpairs` with ``values`` ``(k,)`` and ``vectors`` ``(n, k)``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.diag(2.0 ** -jnp.arange(50.0))
    >>> [round(v, 6) for v in mskjax.randomized_eigh_top(K, 3).values.tolist()]
    [1.0, 0.5, 0.25]
  """
  K = V.check_square_symmetric(K, "K")
  n = K.shape[0]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
    raise ValueError(f"`k` must be an int with 1 <= k <= n = {n}, got {k!r}.")
  key = jax.random.PRNGKey(0) if key is None else key
  return _randomized_eigh_top(K, key, int(k), int(oversample), int(n_iter))


def eigh_top(K, k: int, *, method: str = "auto", key=None, oversample: int = 20,
             n_iter: int = 30) -> Eigenpairs:
  r"""The top-k eigenpairs (descending) of a symmetric PSD matrix.

  .. math:: K v_i = \lambda_i v_i,\quad i = 1..k,\quad \lambda_1 \ge \dots \ge \lambda_k.

  Args:
    K: ``(n, n)`` symmetric positive semi-definite matrix (NaN/inf and asymmetry are
      rejected).
    k: number of eigenpairs, ``1 <= k <= n``.
    method: ``'dense'`` (``jnp.linalg.eigh``, exact), ``'randomized'``
      (:func:`randomized_eigh_top`, O(n² k) per iteration) or ``'auto'`` (dense for
      ``n <= 4096``, randomized above).
    key, oversample, n_iter: options of the randomized path.

  Returns:
    :class:`Eigenpairs` with ``values`` ``(k,)`` (clamped at 0) and ``vectors`` ``(n, k)``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    >>> top = mskjax.eigh_top(K, 1)
    >>> round(float(top.values[0]), 6), [round(abs(float(v)), 4) for v in top.vectors[:, 0]]
    (3.0, [0.7071, 0.7071])
  """
  if method not in ("auto", "dense", "randomized"):
    raise ValueError(f"`method` must be 'auto', 'dense' or 'randomized', got {method!r}.")
  K = V.check_square_symmetric(K, "K")
  n = K.shape[0]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
    raise ValueError(f"`k` must be an int with 1 <= k <= n = {n}, got {k!r}.")
  if method == "auto":
    method = "dense" if n <= 4096 else "randomized"
  if method == "dense":
    full = _eigh_desc(K)
    return Eigenpairs(full.values[:k], full.vectors[:, :k])
  return randomized_eigh_top(K, k, key=key, oversample=oversample, n_iter=n_iter)


def eigenvalue_blocks(values, rtol: float = 1e-6) -> list[int]:
  """Indices where a new block of (numerically) equal eigenvalues starts.

  Two consecutive eigenvalues belong to one block when they differ by at most
  ``rtol · λ₁``. Dot-product kernels on the sphere have such blocks (2 per frequency
  on S¹, 2j+1 per degree on S²).

  Example:
    >>> import mskjax
    >>> mskjax.eigenvalue_blocks([4.0, 2.0, 2.0, 1.0, 1.0, 1.0])
    [0, 1, 3]
  """
  w = np.asarray(values, dtype=np.float64)
  tol = rtol * max(float(np.max(np.abs(w))) if w.size else 0.0, np.finfo(float).tiny)
  return [0] + [i for i in range(1, w.size) if abs(w[i - 1] - w[i]) > tol]


def round_k_to_block(values, k: int, rtol: float = 1e-6) -> int:
  """The smallest ``k' >= k`` that does not split a block of equal eigenvalues.

  Example:
    >>> import mskjax
    >>> mskjax.round_k_to_block([4.0, 2.0, 2.0, 1.0, 1.0, 1.0], 2)
    3
  """
  starts = eigenvalue_blocks(values, rtol) + [len(values)]
  return next(s for s in starts if s >= k)


def warn_if_k_splits_block(values, k: int, rtol: float = 1e-6) -> None:
  """Warn when λ_k and λ_{k+1} are numerically equal: the cut breaks a symmetry.

  Warns (``UserWarning``) iff ``|λ_k − λ_{k+1}| <= rtol · |λ_1|`` for the descending
  ``values``; the message names the nearest block boundary (:func:`round_k_to_block`).

  Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...   warnings.simplefilter("always")
    ...   warn_if_k_splits_block([3.0, 2.0, 2.0, 1.0], 2)
    ...   warn_if_k_splits_block([3.0, 2.0, 2.0, 1.0], 3)
    >>> len(w), "k=3" in str(w[0].message)
    (1, True)
  """
  w = np.asarray(values)
  if w.size > k and abs(w[k - 1] - w[k]) <= rtol * max(abs(w[0]), np.finfo(float).tiny):
    warnings.warn(
        f"k={k} cuts inside a block of equal eigenvalues (λ_k ≈ λ_(k+1) ≈ {w[k]:.4g}); "
        "the modified kernel then breaks the data's symmetry (e.g. rotations of the "
        f"sphere). Use k={round_k_to_block(w, k, rtol)} (mskjax.round_k_to_block) or a "
        "k at a block boundary.", UserWarning, stacklevel=3)
