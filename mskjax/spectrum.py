"""Eigenpairs of kernel matrices: dense and randomized top-k, in descending order.

Every eigendecomposition of a concrete matrix runs in float64 whatever the caller's
precision (``jax.enable_x64`` as a local context inside the call: no global setting
changes) and returns the caller's dtype. Negative eigenvalues produced by round-off of a
PSD kernel (down to ``-psd_tolerance(n, dtype)·max|λ|``) are clamped to zero; larger
ones raise ``ValueError`` (the matrix is not a kernel Gram matrix).
"""
from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mskjax import _validate as V

__all__ = ["Eigenpairs", "eigh_desc", "eigh_top", "randomized_eigh_top", "RANDOMIZED_RTOL",
           "AUTO_DENSE_MAX_N",
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
def _eigh_desc_raw(K):
  K = 0.5 * (K + K.T)
  w, v = jnp.linalg.eigh(K)
  return w[::-1], v[:, ::-1]


def _upcast_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def _dense_eigh(K, name: str = "K", psd_rtol: float | None = None) -> Eigenpairs:
  """Full descending eigh of a checked K in float64, PSD-checked, in K's dtype.

  Concrete K: decomposed in float64 whatever the caller's x64 setting (``jax.enable_x64``
  as a local context; no global change); eigenvalues below ``-psd_tolerance · max|λ|``
  raise, the rest of the negatives (round-off) are clamped to 0. Traced K (inside jit):
  decomposed in the widest dtype JAX allows there, clamped without a check.
  """
  dtype = K.dtype
  n = K.shape[0]
  if V.is_concrete(K) and not V.tracing():
    with jax.enable_x64(True):
      w, v = _eigh_desc_raw(jnp.asarray(K, jnp.float64))
      V.check_psd_eigenvalues(w, n, dtype, name, psd_rtol)
      return Eigenpairs(jnp.maximum(w, 0.0).astype(dtype), v.astype(dtype))
  w, v = _eigh_desc_raw(K.astype(jnp.promote_types(dtype, _upcast_dtype())))
  return Eigenpairs(jnp.maximum(w, 0.0).astype(dtype), v.astype(dtype))


def eigh_desc(K, *, psd_rtol: float | None = None) -> Eigenpairs:
  r"""All eigenpairs of a symmetric PSD matrix, descending, round-off negatives clamped to 0.

  .. math:: K = V \Lambda V^\top,\quad \lambda_1 \ge \dots \ge \lambda_n \ge 0.

  The decomposition runs in float64 for every input dtype (a float32 K is upcast inside
  the call, also when ``jax_enable_x64`` is off) and the result comes back in K's dtype.
  Negative eigenvalues within ``max(1e-5, 10·n·eps)·max|λ|`` (:func:`mskjax._validate.
  psd_tolerance`) are round-off and become 0; a more negative one means K is not PSD and
  raises ``ValueError`` (``diag(1, −5)`` is rejected, not clamped to ``[1, 0]``).

  Args:
    K: ``(n, n)`` symmetric positive semi-definite matrix (finite, symmetric to 1e-5
      relative to max|K| at every scale).
    psd_rtol: negative eigenvalues down to ``-psd_rtol·max|λ|`` are clamped as round-off
      (default ``psd_tolerance(n, K.dtype)``; pass the tolerance of the precision K was
      computed in when it was cast up).

  Returns:
    :class:`Eigenpairs` with ``values`` of shape ``(n,)`` and ``vectors`` ``(n, n)``.

  Raises:
    ValueError: NaN/inf, asymmetric, non-square or indefinite K.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> mskjax.eigh_desc(jnp.diag(jnp.array([1.0, 3.0, 2.0]))).values.tolist()
    [3.0, 2.0, 1.0]
  """
  K = V.check_square_symmetric(K, "K")
  if psd_rtol is not None:
    psd_rtol = V.check_real(psd_rtol, "psd_rtol", lo=0)
  return _dense_eigh(K, "K", psd_rtol)


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
  KQ = K @ Q
  T = Q.T @ KQ  # Rayleigh-Ritz on the subspace
  w_all, u = jnp.linalg.eigh(0.5 * (T + T.T))
  w, u = w_all[::-1][:k], u[:, ::-1][:, :k]
  res = jnp.linalg.norm(KQ @ u - (Q @ u) * w, axis=0)   # ‖K v_i − λ_i v_i‖
  return w, Q @ u, res, w_all


class _Randomized(NamedTuple):
  pairs: Eigenpairs
  residual: float          # max_i ‖K v_i − λ_i v_i‖ / λ₁


def _randomized(K, k, key, oversample, n_iter) -> _Randomized:
  """Randomized top-k in float64 on K / max|K| (no overflow), PSD-checked, in K's dtype."""
  dtype = K.dtype
  n = K.shape[0]
  key = jax.random.PRNGKey(0) if key is None else key
  if not V.is_concrete(K) or V.tracing():
    Kc = K.astype(jnp.promote_types(dtype, _upcast_dtype()))
    s = jnp.max(jnp.abs(Kc))
    s = jnp.where(s > 0, s, 1.0)
    w, v, res, _ = _randomized_eigh_top(Kc / s, key, k, oversample, n_iter)
    return _Randomized(Eigenpairs((jnp.maximum(w, 0.0) * s).astype(dtype), v.astype(dtype)),
                       float("nan"))
  with jax.enable_x64(True):
    K64 = jnp.asarray(K, jnp.float64)
    s = float(jnp.max(jnp.abs(K64)))
    s = s if s > 0 else 1.0
    # Scale to max|K| = 1 first: K·1e307 would overflow in K @ Q.
    w, v, res, w_all = _randomized_eigh_top(K64 / s, key, k, oversample, n_iter)
    V.check_psd_eigenvalues(w_all, n, dtype, "K")
    lam1 = max(float(jnp.max(jnp.abs(w_all))), np.finfo(float).tiny)
    rel = float(jnp.max(res)) / lam1
    pairs = Eigenpairs((jnp.maximum(w, 0.0) * s).astype(dtype), v.astype(dtype))
  return _Randomized(pairs, rel)


RANDOMIZED_RTOL = 1e-6
"""Residual tolerance ``max_i ‖K v_i − λ_i v_i‖ <= RANDOMIZED_RTOL · λ₁`` of the randomized
solver: above it :func:`randomized_eigh_top` warns and ``eigh_top(method='auto')`` falls
back to the dense solver."""


def randomized_eigh_top(K, k: int, *, key=None, oversample: int = 20,
                        n_iter: int = 30, tol: float = RANDOMIZED_RTOL) -> Eigenpairs:
  r"""Top-k eigenpairs by randomized subspace iteration (Halko, Martinsson & Tropp 2011).

  ``Q ← orth(K Q)`` repeated ``n_iter`` times from a Gaussian ``(n, k + oversample)``
  start, then Rayleigh–Ritz: eigenpairs of ``Qᵀ K Q``. The error in eigenvalue ``i``
  decays like ``(λ_{k+oversample+1}/λ_i)^{2 n_iter}``, so a fast-decaying spectrum (every
  NTK on the sphere) converges in a few tens of iterations. Runs in float64 on
  ``K / max|K|`` (no overflow for huge K) and returns K's dtype. The residuals
  ``‖K v_i − λ_i v_i‖`` are checked: above ``tol · λ₁`` a ``UserWarning`` says so (a slowly
  decaying spectrum needs more ``n_iter``/``oversample`` or the dense solver).

  Args:
    K: ``(n, n)`` symmetric PSD matrix.
    k: number of eigenpairs, ``1 <= k <= n``.
    key: ``jax.random.PRNGKey`` for the start (default ``PRNGKey(0)``).
    oversample: extra columns in the subspace (int >= 0).
    n_iter: subspace iterations (int >= 1).
    tol: residual tolerance relative to λ₁ for the warning.

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
  k = V.check_int(k, "k", lo=1, hi=n)
  oversample = V.check_int(oversample, "oversample", lo=0)
  n_iter = V.check_int(n_iter, "n_iter", lo=1)
  tol = V.check_real(tol, "tol", lo=0, lo_open=True)
  out = _randomized(K, k, key, oversample, n_iter)
  if out.residual > tol:
    warnings.warn(
        f"randomized_eigh_top: max ‖K v − λ v‖ = {out.residual:.3g}·λ₁ exceeds tol = "
        f"{tol:g}·λ₁ (slowly decaying spectrum): raise n_iter/oversample or use "
        "eigh_top(..., method='dense').", UserWarning, stacklevel=2)
  return out.pairs


def eigh_top(K, k: int, *, method: str = "auto", key=None, oversample: int = 20,
             n_iter: int = 30) -> Eigenpairs:
  r"""The top-k eigenpairs (descending) of a symmetric PSD matrix.

  .. math:: K v_i = \lambda_i v_i,\quad i = 1..k,\quad \lambda_1 \ge \dots \ge \lambda_k.

  Args:
    K: ``(n, n)`` symmetric positive semi-definite matrix (NaN/inf, asymmetry and
      indefiniteness beyond round-off are rejected, see :func:`eigh_desc`).
    k: number of eigenpairs, ``1 <= k <= n``.
    method: ``'dense'`` (``jnp.linalg.eigh`` in float64, exact), ``'randomized'``
      (:func:`randomized_eigh_top`, O(n² k) per iteration, warns when its residuals exceed
      ``RANDOMIZED_RTOL · λ₁``) or ``'auto'``: dense for ``n <= 4096``; above, randomized
      with a residual check that falls back to dense (with a ``UserWarning``) when
      ``max ‖K v − λ v‖ > RANDOMIZED_RTOL · λ₁``.
    key, oversample, n_iter: options of the randomized path.

  Returns:
    :class:`Eigenpairs` with ``values`` ``(k,)`` (clamped at 0) and ``vectors`` ``(n, k)``
    in K's dtype.

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
  k = V.check_int(k, "k", lo=1, hi=n)
  if method == "randomized":
    return randomized_eigh_top(K, k, key=key, oversample=oversample, n_iter=n_iter)
  if method == "auto" and n > AUTO_DENSE_MAX_N:
    out = _randomized(K, k, key, V.check_int(oversample, "oversample", lo=0),
                      V.check_int(n_iter, "n_iter", lo=1))
    if not out.residual > RANDOMIZED_RTOL:     # NaN (traced K) keeps the randomized answer
      return out.pairs
    warnings.warn(
        f"eigh_top(method='auto'): the randomized solver's residual {out.residual:.3g}·λ₁ "
        f"exceeds {RANDOMIZED_RTOL:g}·λ₁ at n = {n}; falling back to the dense solver "
        "(exact, O(n³)). Pass method='dense' to skip the randomized attempt.",
        UserWarning, stacklevel=2)
  full = _dense_eigh(K)
  return Eigenpairs(full.values[:k], full.vectors[:, :k])


AUTO_DENSE_MAX_N = 4096
"""``eigh_top(method='auto')`` uses the dense solver up to this n."""


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
