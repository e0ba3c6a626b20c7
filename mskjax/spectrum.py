"""Eigenpairs of kernel matrices and kernel operators, in descending order: one entry.

:func:`eigh_top` is the one eigensolver entry: dense, randomized, block Krylov (products
with a :class:`mskjax.kernels.KernelOperator` only, K never formed) or Nyström, returning
:class:`Eigenpairs` and (``return_info=True``) an :class:`EighInfo` with the residuals
``‖K v_i − λ_i v_i‖``. :func:`eigh_desc` is the full dense decomposition.

Every eigendecomposition of a concrete matrix runs in float64 whatever the caller's
precision (``jax.enable_x64`` as a local context inside the call: no global setting
changes) and returns the caller's dtype. Negative eigenvalues produced by round-off of a
PSD kernel (down to ``-psd_tolerance(n, dtype)·max|λ|``) are clamped to zero; larger
ones raise ``ValueError`` (the matrix is not a kernel Gram matrix).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mskjax import _validate as _v
from mskjax._blocks import map_row_blocks
from mskjax.kernels import KernelOperator, matrix_operator

__all__ = ["Eigenpairs", "EighInfo", "eigh_desc", "eigh_top",
           "METHODS", "RANDOMIZED_RTOL", "KRYLOV_RTOL", "AUTO_DENSE_MAX_N",
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
  if _v.is_concrete(K) and not _v.tracing():
    with jax.enable_x64(True):
      w, v = _eigh_desc_raw(jnp.asarray(K, jnp.float64))
      _v.check_psd_eigenvalues(w, n, dtype, name, psd_rtol)
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
  K = _v.check_square_symmetric(K, "K")
  if psd_rtol is not None:
    psd_rtol = _v.check_real(psd_rtol, "psd_rtol", lo=0)
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
  residuals: jax.Array     # (k,) ‖K v_i − λ_i v_i‖ in K's units


def _randomized(K, k, key, oversample, n_iter) -> _Randomized:
  """Randomized top-k in float64 on K / max|K| (no overflow), PSD-checked, in K's dtype."""
  dtype = K.dtype
  n = K.shape[0]
  key = jax.random.PRNGKey(0) if key is None else key
  if not _v.is_concrete(K) or _v.tracing():
    Kc = K.astype(jnp.promote_types(dtype, _upcast_dtype()))
    s = jnp.max(jnp.abs(Kc))
    s = jnp.where(s > 0, s, 1.0)
    w, v, res, _ = _randomized_eigh_top(Kc / s, key, k, oversample, n_iter)
    return _Randomized(Eigenpairs((jnp.maximum(w, 0.0) * s).astype(dtype), v.astype(dtype)),
                       float("nan"), (res * s).astype(dtype))
  with jax.enable_x64(True):
    K64 = jnp.asarray(K, jnp.float64)
    s = float(jnp.max(jnp.abs(K64)))
    s = s if s > 0 else 1.0
    # Scale to max|K| = 1 first: K·1e307 would overflow in K @ Q.
    w, v, res, w_all = _randomized_eigh_top(K64 / s, key, k, oversample, n_iter)
    _v.check_psd_eigenvalues(w_all, n, dtype, "K")
    lam1 = max(float(jnp.max(jnp.abs(w_all))), np.finfo(float).tiny)
    rel = float(jnp.max(res)) / lam1
    pairs = Eigenpairs((jnp.maximum(w, 0.0) * s).astype(dtype), v.astype(dtype))
    resid = (res * s).astype(dtype)
  return _Randomized(pairs, rel, resid)


RANDOMIZED_RTOL = 1e-6
"""Residual tolerance ``max_i ‖K v_i − λ_i v_i‖ <= RANDOMIZED_RTOL · λ₁`` of the randomized
solver: above it ``eigh_top(method='randomized')`` warns and ``eigh_top(method='auto')`` falls
back to the dense solver."""


class EighInfo(NamedTuple):
  """How :func:`eigh_top` found its eigenpairs, and how good they are.

  Attributes:
    method: the solver that ran: ``'dense'``, ``'randomized'``, ``'krylov'`` or
      ``'nystrom'`` (``'auto'`` resolved).
    residuals: ``(k,)`` ``‖K v_i − λ_i v_i‖₂`` of the unit eigenvectors (exact K), or
      ``None`` for ``'nystrom'`` (its pairs are exact for the approximation K̂, not for K:
      see ``trace_error``).
    n_matvecs: products with K, each on a block of columns (0 for ``'dense'``).
    iterations: restart cycles (``'krylov'``), subspace iterations (``'randomized'``),
      1 otherwise.
    converged: ``max(residuals) <= tol · λ₁`` (always True for ``'dense'`` and
      ``'nystrom'``).
    trace_error: ``'nystrom'``: tr(K − K̂) ≥ ‖K − K̂‖₂ ≥ λ_i(K) − λ_i(K̂) ≥ 0, a computable
      bound on every eigenvalue's error; ``None`` otherwise.
    landmarks: ``'nystrom'``: ``(m,)`` landmark indices; ``None`` otherwise.
  """
  method: str
  residuals: Optional[jax.Array]
  n_matvecs: int
  iterations: int
  converged: bool
  trace_error: Optional[jax.Array] = None
  landmarks: Optional[jax.Array] = None


METHODS = ("auto", "dense", "randomized", "krylov", "nystrom")
"""The solvers of :func:`eigh_top`."""

KRYLOV_RTOL = 1e-7
"""Default residual tolerance ``max_i ‖K v_i − λ_i v_i‖ <= KRYLOV_RTOL · λ₁`` of the block
Krylov solver (eigenvalue errors are about residual² / gap, far smaller)."""


def eigh_top(K, k: int, *, method: str = "auto", key=None, oversample: int = 20,
             n_iter: int = 30, depth: int = 8, tol: Optional[float] = None,
             max_cycles: int = 8, n_landmarks: Optional[int] = None, landmarks=None,
             rcond: Optional[float] = None, start=None, return_info: bool = False):
  r"""The top-k eigenpairs (descending) of a symmetric PSD matrix or kernel operator.

  .. math:: K v_i = \lambda_i v_i,\quad i = 1..k,\quad \lambda_1 \ge \dots \ge \lambda_k.

  The one entry for every eigensolver:

  * ``'dense'``: ``jnp.linalg.eigh`` in float64, exact, O(n³) (needs the matrix);
  * ``'randomized'``: subspace iteration ``Q ← orth(K Q)`` ``n_iter`` times + Rayleigh–Ritz
    (randomized subspace iteration, Halko, Martinsson & Tropp 2011: ``Q ← orth(K Q)`` from a
    Gaussian start, then Rayleigh–Ritz; needs the matrix);
  * ``'krylov'``: randomized block Krylov (block Lanczos with full re-orthogonalisation,
    Musco & Musco 2015) with thick restarts, from products ``V ↦ K V`` only: a
    :class:`mskjax.kernels.KernelOperator` (K never formed, or cached) or a matrix.
    From an orthonormal block Q₀ of ``b = k + oversample`` columns it builds
    ``[Q₀, K Q₀, …, K^depth Q₀]`` (each block orthogonalised against the earlier ones by
    two block Gram–Schmidt passes and shifted Cholesky-QR, all GEMMs), takes the
    Rayleigh–Ritz pairs and restarts from the top b Ritz vectors until
    ``‖K v_i − λ_i v_i‖ <= tol · λ₁`` (checked once per cycle); each cycle costs
    ``depth + 1`` products with b columns. Ritz values are Rayleigh quotients: λ_i is
    accurate to about r_i² / gap_i. The basis is float64 whatever the caller's precision
    (``jax.enable_x64`` as a local context; the products run in the operator's dtype) and
    the products are scaled by a power of two of the first one's size (exact), so entries
    of any magnitude (1e-250 to 1e300) neither overflow nor underflow. A hand-built
    operator whose ``n`` does not fit its product raises a ``ValueError`` naming ``K.n``;
  * ``'nystrom'``: eigenpairs of the Nyström approximation K̂ = C W⁺ Cᵀ from m landmark
    points (O(n m²) time, O(n m) memory; needs a :class:`~mskjax.kernels.KernelOperator`
    built from a kernel). With B = C Q diag(w)^{-1/2} (W = Q diag(w) Qᵀ), K̂ = B Bᵀ and its
    eigenpairs come from the m × m matrix BᵀB. K − K̂ is PSD (a Schur complement), so
    ``0 <= λ_i(K) − λ_i(K̂) <= tr(K − K̂)`` (Weyl), returned as ``info.trace_error``;
    the kernel on the landmarks, W, must be PSD (an indefinite one raises);
  * ``'auto'``: a matrix: dense for ``n <= AUTO_DENSE_MAX_N``, above randomized with a
    residual check falling back to dense (``UserWarning``) when the residual exceeds
    ``RANDOMIZED_RTOL · λ₁``; an operator: dense when it holds K and
    ``n <= AUTO_DENSE_MAX_N``, else Krylov.

  Args:
    K: ``(n, n)`` symmetric PSD matrix (NaN/inf, asymmetry and indefiniteness beyond
      round-off are rejected, see :func:`eigh_desc`) or a
      :class:`mskjax.kernels.KernelOperator`.
    k: number of eigenpairs, ``1 <= k <= n`` (``k <= n_landmarks`` for Nyström).
    method: one of :data:`METHODS` (see above).
    key: ``jax.random.PRNGKey`` for the random start / landmark draw (default ``PRNGKey(0)``).
    oversample: extra columns of the randomized / Krylov block.
    n_iter: subspace iterations (``'randomized'``).
    depth: Krylov blocks per cycle after the start block (``'krylov'``; 0: subspace
      iteration with Rayleigh–Ritz).
    tol: residual tolerance relative to λ₁ (default ``KRYLOV_RTOL`` for Krylov,
      ``RANDOMIZED_RTOL`` for randomized).
    max_cycles: restart cycles at most (``'krylov'``; it warns when not converged).
    n_landmarks: m for ``'nystrom'`` (default: the number of ``landmarks`` if given, else
      ``min(n, max(10 k, 1000))``).
    landmarks: optional ``(m,)`` distinct landmark indices overriding the random draw.
    rcond: ``'nystrom'``: eigenvalues of W below ``rcond · max(w)`` are dropped
      (default ``m · eps``).
    start: ``'krylov'``: optional ``(n, m)`` start block (e.g. approximate eigenvectors
      from an earlier solve): the first columns of Q₀ (the block grows to m columns when
      m > k + oversample; random columns fill the rest). With a good start, ``depth=0,
      max_cycles=1`` is one Rayleigh–Ritz step on its span.
    return_info: also return an :class:`EighInfo` (residuals, products, convergence).

  Returns:
    :class:`Eigenpairs` with ``values`` ``(k,)`` (clamped at 0) and ``vectors`` ``(n, k)``
    in K's dtype; ``(Eigenpairs, EighInfo)`` with ``return_info=True``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    >>> top = mskjax.eigh_top(K, 1)
    >>> round(float(top.values[0]), 6), [round(abs(float(v)), 4) for v in top.vectors[:, 0]]
    (3.0, [0.7071, 0.7071])
    >>> op = mskjax.kernels.matrix_operator(jnp.diag(1.0 / jnp.arange(1.0, 201.0)))
    >>> top, info = mskjax.eigh_top(op, 3, method="krylov", return_info=True)
    >>> [round(x, 8) for x in top.values.tolist()], info.method, info.converged
    ([1.0, 0.5, 0.33333333], 'krylov', True)
  """
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
  if start is not None and method != "krylov":
    raise ValueError(f"`start` is used by method='krylov' only (got method={method!r}).")
  if isinstance(K, KernelOperator):
    pairs, info = _eigh_top_operator(K, k, method, key, oversample, n_iter, depth, tol,
                                     max_cycles, n_landmarks, landmarks, rcond, start)
  else:
    if method == "nystrom":
      raise ValueError("method='nystrom' needs the kernel, not a matrix: pass "
                       "mskjax.kernels.kernel_operator(kernel_fn, x) as `K`.")
    K = _v.check_square_symmetric(K, "K")
    if method == "krylov":
      pairs, info = _eigh_top_operator(matrix_operator(K), k, method, key, oversample,
                                       n_iter, depth, tol, max_cycles, None, None, None, start)
    else:
      pairs, info = _eigh_top_matrix(K, k, method, key, oversample, n_iter, tol, return_info)
  return (pairs, info) if return_info else pairs


def _eigh_top_matrix(K, k, method, key, oversample, n_iter, tol, want_info):
  n = K.shape[0]
  k = _v.check_int(k, "k", lo=1, hi=n)
  oversample = _v.check_int(oversample, "oversample", lo=0)
  n_iter = _v.check_int(n_iter, "n_iter", lo=1)
  tol = RANDOMIZED_RTOL if tol is None else _v.check_real(tol, "tol", lo=0, lo_open=True)
  if method == "randomized" or (method == "auto" and n > AUTO_DENSE_MAX_N):
    out = _randomized(K, k, key, oversample, n_iter)
    info = EighInfo("randomized", out.residuals, n_iter + 2, n_iter,
                    not out.residual > tol)
    if method == "randomized":
      if out.residual > tol:
        warnings.warn(
            f"eigh_top(method='randomized'): max ‖K v − λ v‖ = {out.residual:.3g}·λ₁ exceeds "
            f"tol = {tol:g}·λ₁ (slowly decaying spectrum): raise n_iter/oversample or use "
            "method='dense' or 'krylov'.", UserWarning, stacklevel=3)
      return out.pairs, info
    if not out.residual > tol:     # NaN (traced K) keeps the randomized answer
      return out.pairs, info
    warnings.warn(
        f"eigh_top(method='auto'): the randomized solver's residual {out.residual:.3g}·λ₁ "
        f"exceeds {tol:g}·λ₁ at n = {n}; falling back to the dense solver "
        "(exact, O(n³)). Pass method='dense' to skip the randomized attempt.",
        UserWarning, stacklevel=3)
  full = _dense_eigh(K)
  pairs = Eigenpairs(full.values[:k], full.vectors[:, :k])
  res = None
  if want_info:
    res = jnp.linalg.norm(K @ pairs.vectors - pairs.vectors * pairs.values, axis=0)
  return pairs, EighInfo("dense", res, 0, 1, True)


def _eigh_top_operator(op, k, method, key, oversample, n_iter, depth, tol, max_cycles,
                       n_landmarks, landmarks, rcond, start=None):
  n = _v.check_operator(op, "K")
  if method == "auto":
    method = "dense" if op.matrix is not None and n <= AUTO_DENSE_MAX_N else "krylov"
  if method in ("dense", "randomized"):
    if op.matrix is None:
      raise ValueError(f"method={method!r} needs the matrix K, but this KernelOperator does "
                       "not hold it (cache=False): use method='krylov' or 'nystrom', or "
                       "build it with kernel_operator(..., cache=True).")
    return _eigh_top_matrix(op.matrix, k, method, key, oversample, n_iter, tol, True)
  if method == "nystrom":
    return _nystrom(op, k, n_landmarks, key, landmarks, rcond)
  with jax.enable_x64(True):   # host-side loop: float64 basis whatever the caller's setting
    return _krylov(op, k, oversample=oversample, depth=depth, tol=tol, max_cycles=max_cycles,
                   key=key, start=start)


# ------------------------------------------------------------------ block Krylov
@jax.jit
def _cholqr(w, shift):
  """One shifted Cholesky-QR pass: w R⁻¹ with RᵀR = wᵀw + shift·tr(wᵀw)·I.

  GEMM-based (much faster than Householder QR on CPU for tall w); the shift keeps the
  Cholesky factorisation defined for ill-conditioned or rank-deficient w (Fukaya et al.,
  SIAM J. Sci. Comput. 2020).
  """
  g = w.T @ w
  g = 0.5 * (g + g.T)
  s = shift * jnp.trace(g) + jnp.finfo(w.dtype).tiny
  r = jnp.linalg.cholesky(g + s * jnp.eye(g.shape[0], dtype=w.dtype))
  return jax.scipy.linalg.solve_triangular(r, w.T, lower=True).T


def _cholqr3(w):
  """Shifted CholeskyQR3: orthonormal columns to round-off, even for rank-deficient w."""
  eps = jnp.finfo(w.dtype).eps
  rows, cols = w.shape
  w = _cholqr(w, 11.0 * (rows * cols + cols * (cols + 1)) * eps)
  w = _cholqr(w, cols * eps)
  return _cholqr(w, cols * eps)


@jax.jit
def _orth(w):
  return _cholqr3(w)


@jax.jit
def _project_out(q, w):
  return w - q @ (q.T @ w)


def _orth_against(blocks, w):
  """Orthonormal columns spanning w minus its part in the span of the orthonormal ``blocks``.

  Block Gram–Schmidt against each earlier block, twice ("twice is enough"), shifted
  Cholesky-QR, one more sweep and two plain Cholesky-QR passes: orthonormal and orthogonal
  to the blocks to round-off even when w is (numerically) inside their span. Only GEMMs,
  and every jitted piece has the shape of one block (one compilation per solve).
  """
  eps = jnp.finfo(w.dtype).eps
  rows, cols = w.shape
  for _ in range(2):
    for q in blocks:
      w = _project_out(q, w)
  w = _cholqr(w, 11.0 * (rows * cols + cols * (cols + 1)) * eps)
  for q in blocks:
    w = _project_out(q, w)
  w = _cholqr(w, cols * eps)
  return _cholqr(w, cols * eps)


@jax.jit
def _projected(B, KB):
  T = B.T @ KB
  return 0.5 * (T + T.T)


@jax.jit
def _ritz_pairs(B, KB, w, u):
  Y, KY = B @ u, KB @ u
  return Y, KY, jnp.linalg.norm(KY - Y * w, axis=0)


def _rayleigh_ritz(B, KB, nk):
  """Top-nk Ritz pairs of K on span(B) (B orthonormal, KB = K B) and their residuals.

  The small eigenproblem Bᵀ K B runs in LAPACK on the host (``scipy.linalg.eigh``, MRRR,
  only the top nk pairs): on the clustered spectra of kernels XLA's CPU ``eigh`` is far
  slower on the same matrix (timings: ``benchmarks/README.md``, eigensolver section).
  """
  import scipy.linalg
  T = np.asarray(_projected(B, KB), np.float64)
  m = T.shape[0]
  w, u = scipy.linalg.eigh(T, subset_by_index=(m - nk, m - 1), driver="evr")
  w, u = w[::-1].copy(), u[:, ::-1].copy()
  w = jnp.asarray(w, B.dtype)
  Y, KY, res = _ritz_pairs(B, KB, w, jnp.asarray(u, B.dtype))
  return w, Y, KY, res


def _checked_product(op, Q):
  """op @ Q with its shape and finiteness checked (a named error, not an XLA one)."""
  try:
    out = op.matmul(Q)
  except (TypeError, ValueError) as e:
    raise ValueError(f"`K.matmul` failed on an (n, b) = {tuple(Q.shape)} block, n = `K.n` "
                     f"({type(e).__name__}: {e}). For a hand-built KernelOperator(n, dtype, "
                     "matmul), `K.n` must be the size of the matrix its matmul applies.") from e
  if not hasattr(out, "shape") or tuple(out.shape) != tuple(Q.shape):
    got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
    raise ValueError(f"the operator's `matmul` must map an (n, b) = {tuple(Q.shape)} block V "
                     f"to K V of the same shape; it returned {got}.")
  out = jnp.asarray(out, Q.dtype)
  if _v.is_concrete(out) and not bool(jnp.all(jnp.isfinite(out))):
    raise ValueError("the operator returned NaN/inf (NaN in the kernel, or overflow: scale "
                     "the kernel down, e.g. divide it by its largest diagonal entry, and scale "
                     "the eigenvalues back).")
  return out


def _krylov(op, k, *, oversample, depth, tol, max_cycles, key, start=None):
  n = _v.check_int(op.n, "K.n", lo=1)
  k = _v.check_int(k, "k", lo=1, hi=n)
  oversample = _v.check_int(oversample, "oversample", lo=0)
  depth = _v.check_int(depth, "depth", lo=0)
  max_cycles = _v.check_int(max_cycles, "max_cycles", lo=1)
  tol = KRYLOV_RTOL if tol is None else _v.check_real(tol, "tol", lo=0, lo_open=True)
  dtype = jnp.dtype(jnp.float64)
  if start is not None:
    start = _v.finite_array(start, "start", ndim=2)
    if start.shape[0] != n:
      raise ValueError(f"`start` must be an (n, m) block with n = {n} rows; got shape "
                       f"{tuple(start.shape)}.")
  b = min(n, max(k + oversample, 0 if start is None else start.shape[1]))
  depth = min(depth, n // b - 1) if n // b >= 2 else 0
  key = jax.random.PRNGKey(0) if key is None else key
  Q = jax.random.normal(key, (n, b), dtype=dtype)
  if start is not None:
    m0 = min(start.shape[1], b)
    Q = Q.at[:, :m0].set(jnp.asarray(start[:, :m0], dtype))
  Q = _orth(Q)
  n_mv = 0
  # Products are scaled by 1/s, s a power of two (exact) of the size of the first product:
  # the Gram matrices of the basis square the entries, which would overflow (entries
  # >~ 1e154) or underflow (<~ 1e-154) and return zero eigenpairs. Eigenvalues and
  # residuals are scaled back at the end (the tolerance is relative).
  scale = None
  for cycle in range(max_cycles):
    blocks, kblocks = [Q], []
    for j in range(depth + 1):
      KQ = _checked_product(op, blocks[-1])
      if scale is None:
        top = float(jnp.max(jnp.abs(KQ)))
        scale = 2.0 ** round(math.log2(top)) if top > 0 else 1.0
      KQ = KQ / scale
      n_mv += 1
      kblocks.append(KQ)
      if j < depth:
        blocks.append(_orth_against(blocks, KQ))
    B = blocks[0] if depth == 0 else jnp.concatenate(blocks, axis=1)
    KB = kblocks[0] if depth == 0 else jnp.concatenate(kblocks, axis=1)
    del blocks, kblocks
    w, Y, KY, res = _rayleigh_ritz(B, KB, b)
    del B, KB
    lam1 = float(w[0])
    done = float(jnp.max(res[:k])) <= tol * max(lam1, np.finfo(float).tiny)
    if done or cycle == max_cycles - 1:
      break
    # Thick restart from the best b Ritz vectors; with no room for a Krylov block
    # (2b > n) this is plain subspace iteration, Q <- orth(K Y).
    Q = Y if depth else _orth(KY)
  _v.check_psd_eigenvalues(w, n, dtype, "K (the operator)")
  if not done:
    warnings.warn(f"eigh_top(method='krylov'): not converged after {max_cycles} cycles (max "
                  f"residual {float(jnp.max(res[:k])):.3g} > tol·λ₁ = {tol * lam1:.3g}); raise "
                  "max_cycles/depth/oversample. info.converged is False.",
                  UserWarning, stacklevel=4)
  out_dtype = jnp.dtype(op.dtype)
  w = jnp.maximum(w[:k], 0.0) * scale
  pairs = Eigenpairs(w.astype(out_dtype), Y[:, :k].astype(out_dtype))
  return pairs, EighInfo("krylov", (res[:k] * scale).astype(out_dtype), n_mv, cycle + 1,
                         bool(done))


# ------------------------------------------------------------------ Nyström
def _nystrom(op, k, n_landmarks, key, landmarks, rcond):
  if op.kernel is None or op.x is None:
    raise ValueError("method='nystrom' needs kernel evaluations: pass a KernelOperator from "
                     "mskjax.kernels.kernel_operator(kernel_fn, x), not a matrix.")
  x, n = op.x, op.n
  if n_landmarks is None and landmarks is not None:
    n_landmarks = int(np.shape(landmarks)[0]) if np.ndim(landmarks) == 1 else None
  if n_landmarks is None:
    n_landmarks = min(n, max(10 * int(k) if isinstance(k, (int, np.integer)) else 0, 1000))
  m = _v.check_int(n_landmarks, "n_landmarks", lo=1, hi=n)
  k = _v.check_int(k, "k", lo=1, hi=m)
  if landmarks is None:
    key = jax.random.PRNGKey(0) if key is None else key
    landmarks = jnp.sort(jax.random.choice(key, n, (m,), replace=False))
  else:
    landmarks = _v.check_indices(landmarks, n, "landmarks")
    if landmarks.shape != (m,):
      raise ValueError(f"`landmarks` must be {m} = n_landmarks integer indices, got shape "
                       f"{tuple(landmarks.shape)}.")
    if _v.is_concrete(landmarks) and np.unique(np.asarray(landmarks)).size != m:
      raise ValueError("`landmarks` has repeated indices; pass m distinct points.")
  if op.matrix is not None:          # K cached: its columns, no kernel evaluation
    C, diag = op.matrix[:, landmarks], jnp.diagonal(op.matrix)
  else:
    xl = x[landmarks]
    C = map_row_blocks(lambda a: op.kernel(a, xl), x, op.block_size).astype(op.dtype)
    diag = map_row_blocks(lambda a: jnp.diagonal(op.kernel(a)), x, op.block_size)
  W = C[landmarks]
  w, Q = jnp.linalg.eigh(0.5 * (W + W.T))
  # K̂ = C W⁺ Cᵀ needs a PSD kernel: an indefinite (e.g. negative-definite) W would be
  # clamped to nothing and return zero eigenpairs.
  _v.check_psd_eigenvalues(w, m, op.dtype, "K (the kernel on the Nyström landmarks)")
  rcond = m * np.finfo(np.dtype(op.dtype)).eps if rcond is None else \
      _v.check_real(rcond, "rcond", lo=0)
  keep = w > rcond * jnp.max(w)
  scale = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, w, 1.0)), 0.0)
  B = C @ (Q * scale)                               # (n, m), K̂ = B Bᵀ
  s2, P = jnp.linalg.eigh(B.T @ B)
  s2, P = jnp.maximum(s2[::-1], 0.0), P[:, ::-1]
  U = (B @ P[:, :k]) / jnp.sqrt(jnp.where(s2[:k] > 0, s2[:k], 1.0))
  U, _ = jnp.linalg.qr(U)  # re-orthonormalise (round-off only)
  U = U * jnp.sign(jnp.sum(U * (B @ P[:, :k]), axis=0))
  trace_error = jnp.maximum(jnp.sum(diag) - jnp.sum(B * B), 0.0)
  return (Eigenpairs(s2[:k], U),
          EighInfo("nystrom", None, 0, 1, True, trace_error, landmarks))


AUTO_DENSE_MAX_N = 4096
"""``eigh_top(method='auto')`` uses the dense solver up to this n."""


def eigenvalue_blocks(values, rtol: float = 1e-6) -> list[int]:
  """Indices where a new block of (numerically) equal eigenvalues starts.

  Two consecutive eigenvalues belong to one block when they differ by at most
  ``rtol · λ₁``. Dot-product kernels on the sphere have such blocks (2 per frequency
  on S¹, 2j+1 per degree on S²).

  Example:
    >>> import mskjax
    >>> mskjax.spectrum.eigenvalue_blocks([4.0, 2.0, 2.0, 1.0, 1.0, 1.0])
    [0, 1, 3]
  """
  w = np.asarray(values, dtype=np.float64)
  tol = rtol * max(float(np.max(np.abs(w))) if w.size else 0.0, np.finfo(float).tiny)
  return [0] + [i for i in range(1, w.size) if abs(w[i - 1] - w[i]) > tol]


def round_k_to_block(values, k: int, rtol: float = 1e-6) -> int:
  """The smallest ``k' >= k`` that does not split a block of equal eigenvalues.

  Example:
    >>> import mskjax
    >>> mskjax.spectrum.round_k_to_block([4.0, 2.0, 2.0, 1.0, 1.0, 1.0], 2)
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
        f"sphere). Use k={round_k_to_block(w, k, rtol)} (mskjax.spectrum.round_k_to_block) or a "
        "k at a block boundary.", UserWarning, stacklevel=3)
