r"""Modified Spectrum Kernels (MSK): Gram matrix, Nyström extension and preconditioner.

With ``K = V Λ Vᵀ`` (descending) and a modifier ``g`` acting on the top-k eigenvalues
(Geifman, Barzilai, Basri & Galun, arXiv:2307.14531):

.. math::
  K_g = K + \sum_{i\le k} (g(\lambda_i) - \lambda_i)\, v_i v_i^\top,\qquad
  S = I + \sum_{i\le k} \Big(\frac{g(\lambda_i)}{\lambda_i} - 1\Big) v_i v_i^\top,
  \qquad K S = K_g,

  k_g(x, x') = k(x, x') + \sum_{i\le k} \frac{g(\lambda_i) - \lambda_i}{\lambda_i^2}
     (k(x, X) v_i)(k(x', X) v_i).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mskjax import _validate as _v
from mskjax import modifiers as _modifiers
from mskjax import kernels as _kernels
from mskjax import spectrum as _spectrum
from mskjax._blocks import map_row_blocks
from mskjax.kernels import KernelOperator

__all__ = ["MSKSpectrum", "modified_max_value", "msk_spectrum", "msk_spectrum_from_eigenpairs", "msk_gram",
           "preconditioner", "check_spectrum",
           "msk_gram_from_spectrum", "preconditioner_from_spectrum",
           "apply_preconditioner", "MSKKernel", "msk_kernel_fn", "transfer_msk_spectrum"]


def modified_max_value(new_values, next_value) -> jax.Array:
  """Largest eigenvalue of the modified kernel, max(g(λ₁), …, g(λ_k), λ_{k+1}).

  The one definition behind :attr:`MSKSpectrum.max_value` and
  ``directions.MSKDirections.max_value``: the top k eigenvalues are replaced by
  g(λ_i), the rest of the spectrum is left as it was, so its top is λ_{k+1}.

  Args:
    new_values: ``(k,)`` modified eigenvalues g(λ_i).
    next_value: λ_{k+1} (scalar).

  Returns:
    The scalar λ_max(K_g).

  Example:
    >>> import jax.numpy as jnp
    >>> float(modified_max_value(jnp.array([0.5, 0.5]), jnp.array(0.25)))
    0.5
  """
  return jnp.maximum(jnp.max(new_values), next_value)


class MSKSpectrum(NamedTuple):
  """The top of a kernel's spectrum and its modification: everything MSK needs.

  Attributes:
    values: ``(k,)`` original top eigenvalues λ₁ ≥ … ≥ λ_k of the Gram matrix.
    vectors: ``(n, k)`` their orthonormal eigenvectors V_k.
    new_values: ``(k,)`` modified eigenvalues g(λ_i) > 0.
    next_value: λ_{k+1}, the largest eigenvalue left unchanged (scalar).
  """
  values: jax.Array
  vectors: jax.Array
  new_values: jax.Array
  next_value: jax.Array

  @property
  def k(self) -> int:
    return int(self.values.shape[0])

  @property
  def max_value(self) -> jax.Array:
    """Largest eigenvalue of K_g: max(g(λ₁..λ_k), λ_{k+1})."""
    return modified_max_value(self.new_values, self.next_value)


def msk_spectrum(K, g: _modifiers.Modifier, k: int, *, method: str = "auto",
                 tie_rtol: float = 1e-6, key=None, return_info: bool = False,
                 **solver_options):
  r"""Top-(k+1) eigenpairs of ``K`` and the modified values ``g(λ₁..λ_k)``.

  .. math:: \text{new\_values} = g(\lambda_1..\lambda_k),\quad
     \text{next\_value} = \lambda_{k+1}

  The one MSK-spectrum path: :func:`mskjax.eigh_top` (dense, randomized, block Krylov or
  Nyström) on a matrix or on a :class:`mskjax.kernels.KernelOperator` (K never formed,
  or cached), then :func:`msk_spectrum_from_eigenpairs`.

  Args:
    K: ``(n, n)`` symmetric PSD Gram matrix (float64 recommended), or a
      :class:`mskjax.kernels.KernelOperator` (e.g. ``kernels.kernel_operator(kernel_fn, X)``
      for large n).
    g: modifier ``g(evals, k)`` (see :mod:`mskjax.modifiers`).
    k: number of modified eigenvalues, ``1 <= k <= n - 1``.
    method: eigen-solver, see :func:`mskjax.eigh_top`.
    tie_rtol: warn when λ_k and λ_{k+1} agree to this relative tolerance (the cut
      would split a block of equal eigenvalues and break the data's symmetry).
    key: PRNG key for the randomized / Krylov start or the Nyström landmarks.
    return_info: also return the solver's :class:`mskjax.spectrum.EighInfo` (residuals, products).
    **solver_options: passed to :func:`mskjax.eigh_top` (``oversample``, ``depth``,
      ``tol``, ``max_cycles``, ``n_landmarks``, ...).

  Returns:
    :class:`MSKSpectrum` (``(spectrum, info)`` with ``return_info=True``).

  Raises:
    ValueError: if λ_k is numerically zero relative to λ₁ (``k`` exceeds the numerical
      rank: g(λ)/λ would be meaningless), if ``g`` breaks its contract (k finite values
      > 0), or if a new value is of round-off size (<= n·eps·λ₁, e.g. ``flatten`` with k
      equal to the rank of K, whose λ_(k+1) is round-off: S would be numerically singular;
      the message names the largest usable k).

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> s = mskjax.msk_spectrum(jnp.diag(jnp.array([4.0, 2.0, 1.0])), mskjax.modifiers.flatten(), 1)
    >>> s.values.tolist(), s.new_values.tolist(), float(s.next_value)
    ([4.0], [2.0], 2.0)
    >>> rbf = lambda a, b: jnp.exp(-((a[:, None] - b[None]) ** 2).sum(-1))
    >>> X = jnp.linspace(-2, 2, 40)[:, None]
    >>> op = mskjax.kernels.kernel_operator(rbf, X, get=None, cache=False)
    >>> s = mskjax.msk_spectrum(op, mskjax.modifiers.flatten(), 3, method="krylov")
    >>> d = mskjax.msk_spectrum(rbf(X, X), mskjax.modifiers.flatten(), 3)
    >>> bool(jnp.allclose(s.values, d.values, rtol=1e-10)), s.vectors.shape
    (True, (40, 3))
  """
  if isinstance(K, KernelOperator):
    n, dtype = _v.check_operator(K, "K"), K.dtype
  else:
    K = _v.check_square_symmetric(K, "K")
    n, dtype = K.shape[0], K.dtype
  k = _v.check_k(k, n)
  out = _spectrum.eigh_top(K, k + 1, method=method, key=key, return_info=return_info,
                           **solver_options)
  top, info = out if return_info else (out, None)
  spec = msk_spectrum_from_eigenpairs(top, g, k, dtype=dtype, tie_rtol=tie_rtol)
  return (spec, info) if return_info else spec


def msk_spectrum_from_eigenpairs(top: _spectrum.Eigenpairs, g: _modifiers.Modifier, k: int,
                                 *, dtype=None, tie_rtol: float = 1e-6) -> MSKSpectrum:
  r"""An :class:`MSKSpectrum` from precomputed descending eigenpairs (no new eigh).

  ``values = λ₁..λ_k``, ``new_values = g(λ₁..λ_k)``, ``next_value = λ_{k+1}``.

  Args:
    top: :class:`mskjax.Eigenpairs` of an ``n × n`` K, descending, at least ``k + 1`` pairs.
    g: modifier ``g(evals, k)``.
    k: number of modified eigenvalues, ``1 <= k <= (number of pairs) - 1``.
    dtype: dtype K was computed in (for the numerical-rank floor n·eps·λ₁; default the
      eigenvalues' dtype).
    tie_rtol: warn when λ_k ≈ λ_{k+1} to this relative tolerance.

  Returns:
    :class:`MSKSpectrum`.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> top = mskjax.eigh_desc(jnp.diag(jnp.array([4.0, 2.0, 1.0])))
    >>> mskjax.msk.msk_spectrum_from_eigenpairs(top, mskjax.modifiers.flatten(), 1).new_values.tolist()
    [2.0]
  """
  if not isinstance(top, tuple) or not hasattr(top, "values") or not hasattr(top, "vectors"):
    raise TypeError("`top` must be an mskjax.Eigenpairs (values, vectors), got "
                    f"{type(top).__name__}.")
  vals = _v.finite_array(top.values, "top.values", ndim=1)
  vecs = _v.finite_array(top.vectors, "top.vectors", ndim=2)
  if vecs.shape[1] != vals.shape[0]:
    raise ValueError(f"`top.vectors` has {vecs.shape[1]} columns but `top.values` has "
                     f"{vals.shape[0]} entries; they must pair up.")
  top = _spectrum.Eigenpairs(vals, vecs)
  dtype = vals.dtype if dtype is None else dtype
  k = _v.check_k(k, vals.shape[0])
  n = top.vectors.shape[0]
  if not _v.is_concrete(top.values):
    new = _modifiers.apply_modifier(g, top.values, k)
    return MSKSpectrum(top.values[:k], top.vectors[:, :k], new, top.values[k])
  lam = np.asarray(top.values)
  # Eigenvalues at or below n·eps·λ₁ are round-off (a float64 eigh returns those of a
  # rank-r matrix beyond r at ~1e-16·λ₁): the numerical rank r counts the ones above.
  floor = _v.roundoff_floor(lam[0], n, dtype)
  rank = int(np.sum(lam > floor))
  fix = (f"lower `k` to at most {rank - 1} (the numerical rank of `K` among these "
         f"eigenvalues is {rank})" if rank >= 2 else "`K` has numerical rank <= 1: no k works")
  if lam[k - 1] <= floor:
    raise ValueError(
        f"`k`={k} exceeds the numerical rank of `K`: λ_k = {lam[k - 1]:.3g} <= "
        f"{floor:.3g} (n·eps·λ₁). g(λ)/λ is undefined there; {fix}.")
  try:
    new = _modifiers.apply_modifier(g, top.values, k)
  except ValueError as e:
    if lam[k] <= floor:           # e.g. flatten anchored at λ_(k+1) = 0 (k = the rank)
      raise ValueError(f"{e} Here λ_(k+1) = {lam[k]:.3g} is round-off (<= n·eps·λ₁ = "
                       f"{floor:.3g}): `k`={k} reaches the numerical rank of `K`; {fix}.") from None
    raise
  gmin = float(np.min(np.asarray(new))) if _v.is_concrete(new) else np.inf
  if gmin <= floor:
    name = getattr(g, "__name__", repr(g))
    why = (f"λ_(k+1) = {lam[k]:.3g} is round-off, so `k`={k} reaches the numerical rank of "
           f"`K`; {fix}" if lam[k] <= floor else
           "return values well above round-off, or lower `k`")
    raise ValueError(
        f"modifier `g` ({name}) returned a new eigenvalue of round-off size, {gmin:.3g} <= "
        f"n·eps·λ₁ = {floor:.3g}: the preconditioner S = I + V(g/λ − 1)Vᵀ would be "
        f"numerically singular (condition ~ λ/g = {lam[0] / gmin:.3g}). {why}.")
  _spectrum.warn_if_k_splits_block(lam, k, tie_rtol)
  return MSKSpectrum(top.values[:k], top.vectors[:, :k], new, top.values[k])


def check_spectrum(spec, n: int | None = None, name: str = "spec") -> MSKSpectrum:
  """Validate an :class:`MSKSpectrum`: consistent shapes, and (when concrete) finite
  entries, λ_i > 0 and g(λ_i) > 0. ``n`` (optional) is the required number of rows.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> s = mskjax.msk_spectrum(jnp.diag(jnp.array([4.0, 2.0, 1.0])), mskjax.modifiers.flatten(), 1)
    >>> check_spectrum(s, n=2)
    Traceback (most recent call last):
    ...
    ValueError: `spec.vectors` has 3 rows but 2 are required (one per training point).
  """
  if not isinstance(spec, MSKSpectrum):
    raise TypeError(f"`{name}` must be an mskjax.MSKSpectrum (from mskjax.msk_spectrum), got "
                    f"{type(spec).__name__}.")
  vals = _v.finite_array(spec.values, f"{name}.values", ndim=1)
  vecs = _v.finite_array(spec.vectors, f"{name}.vectors", ndim=2)
  new = _v.finite_array(spec.new_values, f"{name}.new_values", ndim=1)
  nxt = _v.finite_array(spec.next_value, f"{name}.next_value", ndim=0)
  k = vals.shape[0]
  if vecs.shape[1] != k or new.shape[0] != k:
    raise ValueError(f"`{name}` is inconsistent: values {tuple(vals.shape)}, vectors "
                     f"{tuple(vecs.shape)}, new_values {tuple(new.shape)}; expected (k,), "
                     "(n, k), (k,).")
  if n is not None and vecs.shape[0] != n:
    raise ValueError(f"`{name}.vectors` has {vecs.shape[0]} rows but {n} are required (one "
                     "per training point).")
  if _v.is_concrete(vals) and _v.is_concrete(new) and k:
    lam, gv = np.asarray(vals), np.asarray(new)
    if not (lam > 0).all() or not (gv > 0).all():
      raise ValueError(f"`{name}` must have λ_i > 0 and g(λ_i) > 0 (S = I + V(g/λ − 1)Vᵀ "
                       f"divides by λ); got min λ = {lam.min():.3g}, min g = "
                       f"{gv.min():.3g}.")
  return MSKSpectrum(vals, vecs, new, nxt)


@jax.jit
def _msk_gram_from_spectrum(K, spec):
  Vk = spec.vectors
  K_g = K + (Vk * (spec.new_values - spec.values)) @ Vk.T
  return 0.5 * (K_g + K_g.T)


def msk_gram_from_spectrum(K, spec: MSKSpectrum) -> jax.Array:
  """K_g = K + V_k diag(g − λ) V_kᵀ from a precomputed :class:`MSKSpectrum` (jitted core).

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.diag(jnp.array([4.0, 2.0, 1.0]))
    >>> s = mskjax.msk_spectrum(K, mskjax.modifiers.flatten(), 1)
    >>> mskjax.msk.msk_gram_from_spectrum(K, s).diagonal().tolist()
    [2.0, 2.0, 1.0]
  """
  K = _v.check_square_symmetric(K, "K")
  spec = check_spectrum(spec, K.shape[0])
  return _msk_gram_from_spectrum(K, spec)


@jax.jit
def _preconditioner_from_spectrum(spec):
  Vk = spec.vectors
  n = Vk.shape[0]
  S = jnp.eye(n, dtype=Vk.dtype) + (Vk * (spec.new_values / spec.values - 1.0)) @ Vk.T
  return 0.5 * (S + S.T)


def preconditioner_from_spectrum(spec: MSKSpectrum) -> jax.Array:
  """S = I + V_k diag(g/λ − 1) V_kᵀ from a precomputed :class:`MSKSpectrum` (jitted core).

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> s = mskjax.msk_spectrum(jnp.diag(jnp.array([4.0, 2.0, 1.0])), mskjax.modifiers.flatten(), 1)
    >>> mskjax.msk.preconditioner_from_spectrum(s).diagonal().tolist()
    [0.5, 1.0, 1.0]
  """
  return _preconditioner_from_spectrum(check_spectrum(spec))


@jax.jit
def _apply_preconditioner(spec, r):
  # the low-rank correction in the eigenvectors' dtype (float32 vectors: float32 GEMMs, no
  # float64 copy of V_k), added to r in r's dtype
  Vk = spec.vectors
  coef = (spec.new_values / spec.values - 1.0).astype(Vk.dtype)
  proj = Vk.T @ r.astype(Vk.dtype)
  corr = Vk @ (coef.reshape((-1,) + (1,) * (r.ndim - 1)) * proj)
  return r + corr.astype(r.dtype)


def apply_preconditioner(spec: MSKSpectrum, r, *, check_spec: bool = True) -> jax.Array:
  """S r = r + V_k diag(g/λ − 1) V_kᵀ r without forming S (r is (n,) or (n, c)); O(nk).

  Shapes are checked always (also under ``jit``), values (NaN/inf) when concrete. The
  low-rank correction is computed in the dtype of ``spec.vectors`` (float32 vectors: float32
  GEMMs) and added to ``r`` in the wider of the two dtypes. ``check_spec=False`` skips the
  checks of ``spec``'s n·k entries (for a caller that applies one validated spectrum many
  times, e.g. in every iteration of a solver); ``r`` is checked either way.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> s = mskjax.msk_spectrum(jnp.diag(jnp.array([4.0, 2.0, 1.0])), mskjax.modifiers.flatten(), 1)
    >>> mskjax.msk.apply_preconditioner(s, jnp.ones(3)).tolist()
    [0.5, 1.0, 1.0]
  """
  if check_spec:
    spec = check_spectrum(spec)
  r = _v.finite_array(r, "r", ndim=(1, 2))
  n = spec.vectors.shape[0]
  if r.shape[0] != n:
    raise ValueError(f"`r` has {r.shape[0]} rows but the spectrum's eigenvectors have n = {n} "
                     "rows; pass the residual on the same training points.")
  return _apply_preconditioner(spec, r.astype(jnp.result_type(r.dtype, spec.vectors.dtype)))


def msk_gram(K, g: _modifiers.Modifier, k: int, **kwargs) -> jax.Array:
  r"""The MSK Gram matrix on the training set.

  .. math:: K_g = V g(\Lambda) V^\top = K + \sum_{i\le k} (g(\lambda_i)-\lambda_i) v_i v_i^\top

  Args:
    K: ``(n, n)`` symmetric PSD Gram matrix.
    g: modifier ``g(evals, k)`` (see :mod:`mskjax.modifiers`).
    k: number of modified eigenvalues, ``1 <= k <= n - 1``.
    **kwargs: passed to :func:`msk_spectrum` (``method``, ``tie_rtol``, ``key``).

  Returns:
    ``(n, n)`` matrix ``K_g``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.diag(jnp.array([4.0, 2.0, 1.0]))
    >>> mskjax.msk_gram(K, mskjax.modifiers.flatten(), 1).diagonal().tolist()
    [2.0, 2.0, 1.0]
  """
  K = _v.check_square_symmetric(K, "K")
  return msk_gram_from_spectrum(K, msk_spectrum(K, g, k, **kwargs))


def preconditioner(K, g: _modifiers.Modifier, k: int, **kwargs) -> jax.Array:
  r"""The MSK preconditioner ``S`` (symmetric positive definite when g > 0).

  .. math:: S = I + \sum_{i\le k} \Big(\frac{g(\lambda_i)}{\lambda_i} - 1\Big) v_i v_i^\top,
     \qquad K S = K_g.

  Preconditioned GD ``θ ← θ − η Jᵀ S r`` then follows kernel GD with K_g.

  Args:
    K: ``(n, n)`` symmetric PSD Gram matrix.
    g: modifier ``g(evals, k)``.
    k: number of modified eigenvalues, ``1 <= k <= n - 1``.
    **kwargs: passed to :func:`msk_spectrum`.

  Returns:
    ``(n, n)`` matrix ``S``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.diag(jnp.array([4.0, 2.0, 1.0]))
    >>> mskjax.preconditioner(K, mskjax.modifiers.flatten(), 1).diagonal().tolist()
    [0.5, 1.0, 1.0]
  """
  K = _v.check_square_symmetric(K, "K")
  return preconditioner_from_spectrum(msk_spectrum(K, g, k, **kwargs))


class MSKKernel(NamedTuple):
  r"""The MSK ``k_g`` at any points (from :func:`msk_kernel_fn`): call it as ``k_g(x1, x2=None)``.

  Attributes:
    spectrum: the :class:`MSKSpectrum` of the training Gram matrix that defines k_g.
    x_train: the training inputs X.
    pair: jitted ``(a, b) ↦ k_g(a, b)`` on blocks of points.
    block_size: rows of ``x1``/``x2`` evaluated at a time (``None``: all at once).
  """
  spectrum: MSKSpectrum
  x_train: jax.Array
  pair: Callable
  block_size: int | None

  def __call__(self, x1, x2=None) -> jax.Array:
    x1 = _v.as_points(x1, "x1")
    x2 = x1 if x2 is None else _v.as_points(x2, "x2")
    for name, x in (("x1", x1), ("x2", x2)):
      if x.shape[1:] != self.x_train.shape[1:]:
        raise ValueError(f"`{name}` has per-point shape {tuple(x.shape[1:])} but `x_train` has "
                         f"{tuple(self.x_train.shape[1:])}: the features of every point must "
                         "have the same shape (n, ...).")
    bs = self.block_size
    return map_row_blocks(
        lambda a: map_row_blocks(lambda b: self.pair(a, b).T, x2, bs).T, x1, bs)


def msk_kernel_fn(kernel_fn: Callable, x_train, g: _modifiers.Modifier, k: int, *,
                  get: str | None = "ntk", K_train=None, block_size: int | None = 1024,
                  **kwargs) -> MSKKernel:
  r"""The MSK at any points via the Nyström extension of the top-k eigenvectors.

  .. math::
    k_g(x, x') = k(x, x') + \sum_{i\le k}\frac{g(\lambda_i)-\lambda_i}{\lambda_i^2}
    \big(k(x, X) v_i\big)\big(k(x', X) v_i\big),

  so ``k_g(X, X) = K_g`` and ``k_g(x, X) = k(x, X) S``. As n grows, k_g approaches the
  Mercer kernel Σ g(λ_i) φ_i φ_i with operator eigenvalues ≈ λ_i / n.

  Args:
    kernel_fn: a neural-tangents ``kernel_fn(x1, x2, get)`` (or any ``kernel_fn(x1, x2)``
      returning the Gram matrix when ``get=None``).
    x_train: training inputs X that define the spectrum, ``(n, d)`` or any ``(n, ...)`` the
      kernel accepts (``(n, L, C)`` sequences, ``(n, H, W, C)`` images); rows are blocked
      on the point axis only.
    g: modifier ``g(evals, k)``.
    k: number of modified eigenvalues, ``1 <= k <= n - 1``.
    get: which kernel (``'ntk'`` or ``'nngp'``); ``None`` for plain callables.
    K_train: optional precomputed ``k(X, X)`` (default: the cached
      :func:`mskjax.kernels.kernel_operator`, each block pair evaluated once).
    block_size: rows of ``x1``/``x2`` (and of the blocks of K_train) evaluated at a time.
    **kwargs: passed to :func:`msk_spectrum`.

  Returns:
    :class:`MSKKernel`: ``k_g(x1, x2=None) -> (n1, n2)`` Gram matrix of ``k_g`` (x1, x2
    with the per-point shape of ``x_train``), with the :class:`MSKSpectrum` as
    ``.spectrum``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> rbf = lambda a, b: jnp.exp(-((a[:, None] - b[None]) ** 2).sum(-1))
    >>> X = jnp.linspace(-1, 1, 6)[:, None]
    >>> kg = mskjax.msk_kernel_fn(rbf, X, mskjax.modifiers.flatten(), 2, get=None)
    >>> bool(jnp.allclose(kg(X, X), mskjax.msk_gram(rbf(X, X), mskjax.modifiers.flatten(), 2)))
    True
  """
  _v.check_kernel_fn(kernel_fn, get)
  kf = (lambda a, b: kernel_fn(a, b)) if get is None else (lambda a, b: kernel_fn(a, b, get))
  block_size = None if block_size is None else _v.check_int(block_size, "block_size", lo=1)
  x_train = _v.as_points(x_train, "x_train", nonempty=True)
  n = x_train.shape[0]
  if K_train is None:
    K_train = _kernels.kernel_operator(kernel_fn, x_train, get=get, cache=True,
                                       block_size=n if block_size is None else block_size
                                       ).matrix
  K_train = _v.check_square_symmetric(K_train, "K_train")
  _v.check_rows(K_train, n, "K_train", "x_train")
  spec = msk_spectrum(K_train, g, k, **kwargs)
  coef = (spec.new_values - spec.values) / spec.values ** 2

  @jax.jit
  def _features(a):  # k(a, X) V_k : (m, k)
    return kf(a, x_train) @ spec.vectors

  @jax.jit
  def _pair(a, b):
    return kf(a, b) + (_features(a) * coef) @ _features(b).T

  return MSKKernel(spec, x_train, _pair, block_size)


def transfer_msk_spectrum(K, source: MSKSpectrum | None, k: int) -> tuple[MSKSpectrum, float]:
  r"""The MSKSpectrum of ``K`` that carries the modification of another kernel's spectrum.

  With ``K = V̂ Λ̂ V̂ᵀ`` (descending; e.g. a finite network's empirical NTK) and ``source``,
  the MSK spectrum (v_a, g(λ_a)), a = 1..k_s, of a related kernel (e.g. the analytic NTK),
  keep the top ``k`` eigenpairs of K and give the top k_s of them the modified values of the
  source eigenvectors they are assigned to, one-to-one, maximising

  .. math::  \sum_{(a, i)} (v_a^\top \hat v_i)^2

  (``scipy.optimize.linear_sum_assignment``); the other ``k - k_s`` keep their own
  eigenvalue (g/λ = 1: no change). ``k > k_s`` pads the spectrum so that one shape serves
  every modifier (a single compiled training loop). ``source=None`` is the identity.

  Args:
    K: ``(n, n)`` symmetric kernel matrix whose eigenpairs are kept.
    source: MSKSpectrum with ``n``-row vectors, or None (no modification).
    k: eigenpairs of K kept, ``source.k <= k <= n - 1``.

  Returns:
    ``(spectrum, overlap_min)``: the MSKSpectrum (values λ̂_1..λ̂_k, vectors v̂, new values,
    next value λ̂_{k+1}) in K's dtype, and the smallest overlap of an assigned v̂_i with the
    span of the source eigenvectors that share its new value (1.0 when nothing is
    modified; near 1 means the transfer is faithful).

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> src = mskjax.msk_spectrum(jnp.diag(jnp.array([4.0, 2.0, 1.0])), mskjax.modifiers.flatten(), 1)
    >>> spec, overlap = transfer_msk_spectrum(jnp.diag(jnp.array([5.0, 2.0, 1.0])), src, 2)
    >>> spec.values.tolist(), spec.new_values.tolist(), overlap
    ([5.0, 2.0], [2.0, 2.0], 1.0)

  Reference: used for finite-width PGD in configs/spectral_bias.py (the analytic
  modification carried to the network's own kernel);
  docs/theory.md#analytic-or-empirical-eigenpairs.
  """
  from scipy.optimize import linear_sum_assignment

  K = _v.check_square_symmetric(K, "K")
  n = K.shape[0]
  k = _v.check_k(k, n)
  if source is not None:
    source = check_spectrum(source, n=n, name="source")
    if source.k > k:
      raise ValueError(f"`k` must be >= source.k = {source.k} (every modified eigenvalue "
                       f"needs a kept eigenpair of K), got k={k}.")
  e = _spectrum.eigh_desc(K)
  lam_h = np.asarray(e.values)
  vh = np.asarray(e.vectors)[:, :k]
  new = lam_h[:k].copy()
  overlap_min = 1.0
  if source is not None:
    ks = source.k
    va = np.asarray(source.vectors)
    new_a = np.asarray(source.new_values)
    overlap = (va.T @ vh[:, :ks]) ** 2                           # (source, K)
    rows, cols = linear_sum_assignment(-overlap)
    new[cols] = new_a[rows]
    same = np.isclose(new_a[:, None], new[None, :ks], rtol=1e-9)
    overlap_min = float(np.sum(overlap * same, axis=0).min())
  dt = K.dtype
  spec = MSKSpectrum(jnp.asarray(lam_h[:k], dt), jnp.asarray(vh, dt), jnp.asarray(new, dt),
                     jnp.asarray(lam_h[k], dt))
  return spec, overlap_min
