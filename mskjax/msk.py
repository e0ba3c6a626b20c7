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

from mskjax import _validate as V
from mskjax import modifiers as _modifiers
from mskjax import spectrum as _spectrum

__all__ = ["MSKSpectrum", "msk_spectrum", "msk_gram", "preconditioner",
           "msk_gram_from_spectrum", "preconditioner_from_spectrum",
           "apply_preconditioner", "msk_kernel_fn"]


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
    return jnp.maximum(jnp.max(self.new_values), self.next_value)


def msk_spectrum(K, g: _modifiers.Modifier, k: int, *, method: str = "auto",
                 tie_rtol: float = 1e-6, key=None) -> MSKSpectrum:
  r"""Top-(k+1) eigenpairs of ``K`` and the modified values ``g(λ₁..λ_k)``.

  Args:
    K: ``(n, n)`` symmetric PSD Gram matrix (float64 recommended).
    g: modifier ``g(evals, k)`` (see :mod:`mskjax.modifiers`).
    k: number of modified eigenvalues, ``1 <= k <= n - 1``.
    method: eigen-solver, see :func:`mskjax.eigh_top`.
    tie_rtol: warn when λ_k and λ_{k+1} agree to this relative tolerance (the cut
      would split a block of equal eigenvalues and break the data's symmetry).
    key: PRNG key for the randomized solver.

  Returns:
    :class:`MSKSpectrum`.

  Raises:
    ValueError: if λ_k is numerically zero relative to λ₁ (``k`` exceeds the numerical
      rank: g(λ)/λ would be meaningless), or ``g`` breaks its contract.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> s = mskjax.msk_spectrum(jnp.diag(jnp.array([4.0, 2.0, 1.0])), mskjax.modifiers.flatten(), 1)
    >>> s.values.tolist(), s.new_values.tolist(), float(s.next_value)
    ([4.0], [2.0], 2.0)
  """
  K = V.check_square_symmetric(K, "K")
  n = K.shape[0]
  k = V.check_k(k, n)
  top = _spectrum.eigh_top(K, k + 1, method=method, key=key)
  return _msk_spectrum_from_eigenpairs(top, g, k, K.dtype, tie_rtol)


def _msk_spectrum_from_eigenpairs(top, g, k, dtype, tie_rtol=1e-6) -> MSKSpectrum:
  """MSKSpectrum from descending eigenpairs (at least k+1) of an n×n K (no new eigh)."""
  n = top.vectors.shape[0]
  new = _modifiers.apply_modifier(g, top.values, k)
  if V.is_concrete(top.values):
    lam = np.asarray(top.values)
    floor = n * np.finfo(np.dtype(dtype)).eps * max(lam[0], np.finfo(float).tiny)
    if lam[k - 1] <= floor:
      raise ValueError(
          f"`k`={k} exceeds the numerical rank of `K`: λ_k = {lam[k - 1]:.3g} <= "
          f"{floor:.3g} (n·eps·λ₁). g(λ)/λ is undefined there; choose a smaller k.")
    _spectrum.warn_if_k_splits_block(lam, k, tie_rtol)
  return MSKSpectrum(top.values[:k], top.vectors[:, :k], new, top.values[k])


@jax.jit
def msk_gram_from_spectrum(K, spec: MSKSpectrum) -> jax.Array:
  """K_g = K + V_k diag(g − λ) V_kᵀ from a precomputed :class:`MSKSpectrum` (jitted)."""
  Vk = spec.vectors
  K_g = K + (Vk * (spec.new_values - spec.values)) @ Vk.T
  return 0.5 * (K_g + K_g.T)


@jax.jit
def preconditioner_from_spectrum(spec: MSKSpectrum) -> jax.Array:
  """S = I + V_k diag(g/λ − 1) V_kᵀ from a precomputed :class:`MSKSpectrum` (jitted)."""
  Vk = spec.vectors
  n = Vk.shape[0]
  S = jnp.eye(n, dtype=Vk.dtype) + (Vk * (spec.new_values / spec.values - 1.0)) @ Vk.T
  return 0.5 * (S + S.T)


@jax.jit
def apply_preconditioner(spec: MSKSpectrum, r) -> jax.Array:
  """S r = r + V_k diag(g/λ − 1) V_kᵀ r without forming S (r is (n,) or (n, c)); O(nk)."""
  Vk = spec.vectors
  coef = spec.new_values / spec.values - 1.0
  proj = Vk.T @ r
  return r + Vk @ (coef.reshape((-1,) + (1,) * (r.ndim - 1)) * proj)


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
  K = V.check_square_symmetric(K, "K")
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
  K = V.check_square_symmetric(K, "K")
  return preconditioner_from_spectrum(msk_spectrum(K, g, k, **kwargs))


def _as_kernel_callable(kernel_fn, get):
  if not callable(kernel_fn):
    raise TypeError(f"`kernel_fn` must be callable, got {type(kernel_fn).__name__}.")
  if get is None:
    return lambda a, b: kernel_fn(a, b)
  return lambda a, b: kernel_fn(a, b, get)


def _as_points(x, name):
  """``x`` as a finite float array of n points, ``(n, d)`` or ``(n, ...)`` (sequences
  ``(n, L, C)``, images ``(n, H, W, C)``: neural-tangents' channels-last convention)."""
  x = V.as_float_array(x, name)
  if x.ndim < 2:
    raise ValueError(f"`{name}` must have a leading axis of n points and at least one feature "
                     f"axis, shape (n, d) or (n, ...); got shape {tuple(x.shape)}. Reshape "
                     f"it, e.g. {name}[:, None] for scalar inputs.")
  V.check_finite(x, name)
  return x


def _blocked_rows(fn, x, block_size):
  """Apply ``fn`` to row blocks of ``x`` (the last block padded, then trimmed)."""
  n = x.shape[0]
  if block_size is None or n <= block_size:
    return fn(x)
  pad = (-n) % block_size
  xp = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x
  out = [fn(xp[i:i + block_size]) for i in range(0, xp.shape[0], block_size)]
  return jnp.concatenate(out, axis=0)[:n]


def msk_kernel_fn(kernel_fn: Callable, x_train, g: _modifiers.Modifier, k: int, *,
                  get: str | None = "ntk", K_train=None, block_size: int | None = 1024,
                  **kwargs) -> Callable:
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
    K_train: optional precomputed ``k(X, X)``.
    block_size: rows of ``x1``/``x2`` evaluated at a time (bounded memory).
    **kwargs: passed to :func:`msk_spectrum`.

  Returns:
    A function ``(x1, x2=None) -> (n1, n2)`` Gram matrix of ``k_g`` (x1, x2 with the
    per-point shape of ``x_train``); it carries the
    :class:`MSKSpectrum` as attribute ``.spectrum``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> rbf = lambda a, b: jnp.exp(-((a[:, None] - b[None]) ** 2).sum(-1))
    >>> X = jnp.linspace(-1, 1, 6)[:, None]
    >>> kg = mskjax.msk_kernel_fn(rbf, X, mskjax.modifiers.flatten(), 2, get=None)
    >>> bool(jnp.allclose(kg(X, X), mskjax.msk_gram(rbf(X, X), mskjax.modifiers.flatten(), 2)))
    True
  """
  kf = _as_kernel_callable(kernel_fn, get)
  x_train = _as_points(x_train, "x_train")
  if K_train is None:
    K_train = _blocked_rows(lambda a: kf(a, x_train), x_train, block_size)
  K_train = V.check_square_symmetric(K_train, "K_train")
  V.check_rows(K_train, x_train.shape[0], "K_train", "x_train")
  spec = msk_spectrum(K_train, g, k, **kwargs)
  coef = (spec.new_values - spec.values) / spec.values ** 2

  @jax.jit
  def _features(a):  # k(a, X) V_k : (m, k)
    return kf(a, x_train) @ spec.vectors

  @jax.jit
  def _pair(a, b):
    return kf(a, b) + (_features(a) * coef) @ _features(b).T

  def k_g(x1, x2=None):
    x1 = _as_points(x1, "x1")
    x2 = x1 if x2 is None else _as_points(x2, "x2")
    for name, x in (("x1", x1), ("x2", x2)):
      if x.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"`{name}` has per-point shape {tuple(x.shape[1:])} but `x_train` has "
                         f"{tuple(x_train.shape[1:])}: the features of every point must have the same "
                         "shape (n, ...).")
    return _blocked_rows(
        lambda a: _blocked_rows(lambda b: _pair(a, b).T, x2, block_size).T, x1, block_size)

  k_g.spectrum = spec
  return k_g
