r"""Infinite-width predictions: kernel gradient descent with a Modified Spectrum Kernel.

For the MSE loss ½‖f(X) − Y‖² (no 1/n), kernel GD with step η and the MSK Gram matrix
``K_g = U diag(μ) Uᵀ`` (μ = g(λ) on the top-k, λ elsewhere) gives

.. math::
  r_t = U (1 - \eta\mu)^t U^\top r_0 \quad\text{(discrete)},\qquad
  r_t = U e^{-t\mu} U^\top r_0 \quad\text{(gradient flow)},

  f_t(x) = f_0(x) + k(x, X)\, S\, U \operatorname{diag}\Big(\frac{1-(1-\eta\mu)^t}{\mu}\Big)
  U^\top (Y - f_0(X)),

with r = f(X) − Y and ``k_g(x, X) = k(x, X) S``. At t = ∞ this is
``f₀(x) + k(x, X) K⁻¹ (Y − f₀(X))`` for every g: the plain-GD solution.

**Convention vs neural-tangents.** ``neural_tangents.predict.gradient_descent_mse`` uses
the loss ½·(1/N)‖r‖² (N = ``y_train.size``): its dynamics at ``learning_rate=lr`` and time
``t`` equal our gradient flow at time ``t·lr/N``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mskjax import _validate as V
from mskjax import modifiers as _modifiers
from mskjax import msk as _msk
from mskjax import spectrum as _spectrum

__all__ = ["Predictions", "predict_gd_mse", "max_learning_rate", "steps_to_tolerance"]


class Predictions(NamedTuple):
  """Outputs of :func:`predict_gd_mse`: leading axes are those of ``t``."""
  train: jax.Array
  test: jax.Array | None


_EIGH_CACHE: list = []        # [(K, Eigenpairs)], most recent last
_EIGH_CACHE_SIZE, _EIGH_CACHE_MAX_N = 4, 4096


def _cached_eigh_desc(K):
  """eigh_desc(K), reused for the same (immutable) jax.Array object.

  steps_to_tolerance / predict_gd_mse are typically called many times with one Gram
  matrix and different y, g or t; JAX arrays are immutable, so object identity implies
  equal contents (the cache keeps a reference, so the id cannot be reused). Small n only.
  """
  if not isinstance(K, jax.Array) or not V.is_concrete(K) or K.shape[0] > _EIGH_CACHE_MAX_N:
    return _spectrum.eigh_desc(K)
  for i, (Kc, full) in enumerate(_EIGH_CACHE):
    if Kc is K:
      _EIGH_CACHE.append(_EIGH_CACHE.pop(i))
      return full
  full = _spectrum.eigh_desc(K)
  _EIGH_CACHE.append((K, full))
  del _EIGH_CACHE[:-_EIGH_CACHE_SIZE]
  return full


def _modified_eigh(K, g, k, spec_kwargs):
  """Full eigendecomposition of K with the top-k eigenvalues replaced by g."""
  full = _cached_eigh_desc(K)
  if g is None:
    return full.values, full.values, full.vectors, None
  unknown = set(spec_kwargs) - {"tie_rtol", "key"}   # key: accepted and unused (dense eigh)
  if unknown:
    raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; accepted: tie_rtol "
                    "(the full eigendecomposition is always dense).")
  k = V.check_k(k, K.shape[0])
  spec = _msk._msk_spectrum_from_eigenpairs(full, g, k, K.dtype,
                                            spec_kwargs.get("tie_rtol", 1e-6))
  mu = full.values.at[:k].set(spec.new_values)
  # Use the full basis for the top-k too so U is exactly orthonormal.
  spec = spec._replace(vectors=full.vectors[:, :k], values=full.values[:k])
  return full.values, mu, full.vectors, spec


@functools.partial(jax.jit, static_argnames=("flow",))
def _gain(mu, t, eta, flow):
  """(1 − decay(t)) / μ per eigenvalue, stable for μ → 0 and t = ∞; shape t.shape + μ.shape."""
  t = t[..., None]
  tiny = jnp.finfo(mu.dtype).eps * jnp.max(mu) * mu.shape[0]
  pos = mu > tiny
  mu_safe = jnp.where(pos, mu, 1.0)
  if flow:
    decay_m1 = jnp.expm1(-t * mu_safe)                   # e^{-tμ} − 1
    small = t
  else:
    base = 1.0 - eta * mu_safe
    pos_base = base > 0
    log_base = jnp.log1p(-eta * jnp.where(pos_base, mu_safe, 0.0))
    decay_m1 = jnp.where(pos_base, jnp.expm1(t * log_base),
                         jnp.power(base, jnp.where(jnp.isinf(t), 0.0, t)) - 1.0)
    small = eta * t
  gain = jnp.where(jnp.isinf(t), 1.0 / mu_safe, -decay_m1 / mu_safe)
  # Zero eigen-directions: the limit (1 - decay)/μ → η t (or t), and 0 at t = ∞ (pseudo-inverse).
  return jnp.where(pos, gain, jnp.where(jnp.isinf(t), 0.0, small))


def predict_gd_mse(K_train, y_train, g: _modifiers.Modifier | None, k: int | None, t, *,
                   learning_rate: float | None = None, K_test_train=None,
                   f0_train=None, f0_test=None, **kwargs) -> Predictions:
  r"""Train (and test) predictions of kernel GD with the MSK after ``t`` steps.

  .. math::
    f_t(X) = Y - U(1-\eta\mu)^t U^\top (Y - f_0(X)),\qquad
    f_t(x) = f_0(x) + k(x,X) S U \operatorname{diag}\Big(\tfrac{1-(1-\eta\mu)^t}{\mu}\Big)
    U^\top (Y - f_0(X)).

  With ``learning_rate=None`` it is gradient flow, (1−ημ)^t → e^{−tμ} with ``t`` the
  continuous time. ``t = jnp.inf`` gives the kernel-regression interpolant (the same for
  every g). Zero eigenvalues are handled by their limits (pseudo-inverse at t = ∞).

  Args:
    K_train: ``(n, n)`` Gram matrix of the *unmodified* kernel on the training set.
    y_train: ``(n,)`` or ``(n, c)`` targets.
    g: modifier (see :mod:`mskjax.modifiers`); ``None`` or ``modifiers.identity()`` for
      plain kernel GD.
    k: number of modified eigenvalues (ignored when ``g`` is None).
    t: scalar or 1-D array of times/steps (non-negative; integers when discrete; may be
      ``jnp.inf``).
    learning_rate: step η for discrete GD on ½‖r‖²; ``None`` for gradient flow.
    K_test_train: optional ``(m, n)`` unmodified kernel k(x_test, X).
    f0_train, f0_test: network outputs at initialisation (default 0).
    **kwargs: passed to :func:`mskjax.msk_spectrum` (e.g. ``tie_rtol``).

  Returns:
    :class:`Predictions` ``(train, test)`` of shapes ``t.shape + y_train.shape`` and
    ``t.shape + (m,) + y_train.shape[1:]`` (``test`` is None without ``K_test_train``).

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.array([[2.0, 0.5], [0.5, 1.0]]); y = jnp.array([1.0, -1.0])
    >>> p = mskjax.predict_gd_mse(K, y, mskjax.modifiers.flatten(), 1, jnp.inf,
    ...                           K_test_train=K)
    >>> p.train.round(6).tolist(), p.test.round(6).tolist()
    ([1.0, -1.0], [1.0, -1.0])
  """
  K_train = V.check_square_symmetric(K_train, "K_train")
  n = K_train.shape[0]
  y = V.as_float_array(y_train, "y_train", ndim=(1, 2))
  V.check_finite(y, "y_train")
  V.check_rows(y, n, "y_train", "K_train")
  t_arr = jnp.asarray(t, dtype=K_train.dtype)
  if t_arr.ndim > 1:
    raise ValueError(f"`t` must be a scalar or 1-D array of times, got shape {t_arr.shape}.")
  if V.is_concrete(t_arr):
    if bool(jnp.any(jnp.isnan(t_arr))) or bool(jnp.any(t_arr < 0)):
      raise ValueError(f"`t` must be non-negative (jnp.inf allowed), got {t}.")
    if learning_rate is not None:
      finite = t_arr[jnp.isfinite(t_arr)]
      if bool(jnp.any(finite != jnp.round(finite))):
        raise ValueError("`t` counts discrete steps when `learning_rate` is given: pass "
                         f"integers (or jnp.inf), got {t}. Use learning_rate=None for "
                         "continuous-time gradient flow.")
  if learning_rate is not None and (not np.isfinite(learning_rate) or learning_rate <= 0):
    raise ValueError(f"`learning_rate` must be a positive finite step or None (gradient "
                     f"flow), got {learning_rate}.")
  f0_tr = jnp.zeros_like(y) if f0_train is None else V.as_float_array(f0_train, "f0_train")
  if f0_tr.shape != y.shape:
    raise ValueError(f"`f0_train` has shape {f0_tr.shape}; it must match `y_train` {y.shape}.")
  if K_test_train is not None:
    K_test_train = V.as_float_array(K_test_train, "K_test_train", ndim=2)
    V.check_finite(K_test_train, "K_test_train")
    if K_test_train.shape[1] != n:
      raise ValueError(f"`K_test_train` must have shape (m, n={n}) (test rows, train "
                       f"columns), got {K_test_train.shape}.")
    m = K_test_train.shape[0]
    f0_te = (jnp.zeros((m,) + y.shape[1:], y.dtype) if f0_test is None
             else V.as_float_array(f0_test, "f0_test"))
    if f0_te.shape != (m,) + y.shape[1:]:
      raise ValueError(f"`f0_test` has shape {f0_te.shape}; expected {(m,) + y.shape[1:]}.")

  lam, mu, U, spec = _modified_eigh(K_train, g, k, kwargs)
  flow = learning_rate is None
  eta = jnp.asarray(1.0 if flow else learning_rate, K_train.dtype)
  gain = _gain(mu, t_arr.reshape(-1), eta, flow)            # (T, n)
  rhs = U.T @ (y - f0_tr).reshape(n, -1)                     # (n, c)
  coeff = gain[:, :, None] * rhs[None]                        # (T, n, c): K_g⁻¹(I − decay)
  train = y.reshape(1, n, -1) - jnp.einsum("ni,tic->tnc", U, rhs[None] - mu[None, :, None] * coeff)
  train = train.reshape(t_arr.shape + y.shape)
  test = None
  if K_test_train is not None:
    alpha = jnp.einsum("ni,tic->tnc", U, coeff)              # (T, n, c)
    if spec is not None:                                      # k(x, X) S
      alpha = jax.vmap(lambda a: _msk.apply_preconditioner(spec, a))(alpha)
    test = f0_te.reshape(1, m, -1) + jnp.einsum("mn,tnc->tmc", K_test_train, alpha)
    test = test.reshape(t_arr.shape + (m,) + y.shape[1:])
  return Predictions(train, test)


def max_learning_rate(K, g: _modifiers.Modifier | None = None, k: int | None = None, *,
                      spectrum: _msk.MSKSpectrum | None = None) -> float:
  r"""Largest stable step of GD on ½‖r‖² with kernel K (or K_g): η < 2 / λ_max.

  GD: ``2 / λ₁``; PGD with an MSK: ``2 / max(g(λ₁..λ_k), λ_{k+1})``. (neural-tangents'
  ``predict.max_learning_rate`` is broken on current SciPy; this is the spectral form.)
  Use a fraction of it in practice (e.g. ``1 / λ_max``, which the paper and the tests use).

  Args:
    K: ``(n, n)`` Gram matrix.
    g, k: optional modifier and number of modified eigenvalues.
    spectrum: a precomputed :class:`mskjax.MSKSpectrum` (then K, g, k are not used).

  Returns:
    The bound 2 / λ_max as a Python float.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.diag(jnp.array([4.0, 2.0, 1.0]))
    >>> mskjax.max_learning_rate(K), mskjax.max_learning_rate(K, mskjax.modifiers.flatten(), 1)
    (0.5, 1.0)
  """
  if spectrum is not None:
    return float(2.0 / spectrum.max_value)
  if g is None:
    return float(2.0 / _spectrum.eigh_top(K, 1).values[0])
  return float(2.0 / _msk.msk_spectrum(K, g, k).max_value)


def steps_to_tolerance(K, y, g: _modifiers.Modifier | None = None, k: int | None = None, *,
                       learning_rate: float | None = None, tol: float = 0.1,
                       max_steps: int = 10**7) -> int:
  r"""Smallest t with ‖(I − η K_g)^t y‖ < tol·‖y‖ (the linearized iteration count).

  With ``learning_rate=None`` it uses η = 1/λ_max(K_g). Returns ``max_steps`` + 1 when the
  tolerance is not reached by then.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.diag(jnp.array([1.0, 0.01])); y = jnp.array([0.0, 1.0])
    >>> mskjax.steps_to_tolerance(K, y), mskjax.steps_to_tolerance(K, y, mskjax.modifiers.flatten(), 1)
    (230, 1)
  """
  K = V.check_square_symmetric(K, "K")
  yv = V.as_float_array(y, "y", ndim=(1, 2)).reshape(K.shape[0], -1)
  lam, mu, U, _ = _modified_eigh(K, g, k, {})
  eta = 1.0 / float(jnp.max(mu)) if learning_rate is None else float(learning_rate)
  c2 = np.asarray(jnp.sum((U.T @ yv) ** 2, axis=1))
  logb = np.log(np.abs(1.0 - eta * np.asarray(mu)) + 1e-300)
  target = tol ** 2 * float(np.sum(c2))

  def res2(t):
    return float(np.sum(c2 * np.exp(2 * t * logb)))

  if res2(max_steps) >= target:
    return max_steps + 1
  lo, hi = 0, max_steps  # res2 is non-increasing in t when |1 − ημ| <= 1
  while lo < hi:
    mid = (lo + hi) // 2
    if res2(mid) < target:
      hi = mid
    else:
      lo = mid + 1
  return lo
