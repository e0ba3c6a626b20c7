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


_EIGH_CACHE: list = []        # [(K, x64 enabled, Eigenpairs)], most recent last
_EIGH_CACHE_SIZE, _EIGH_CACHE_MAX_N = 4, 4096


EDGE_RTOL = 1e-12
"""A step with η·λ_max >= 2·(1 − EDGE_RTOL) counts as divergent: at η = 2/λ_max computed in
floating point, |1 − ηλ_max| is 1 up to round-off and GD does not converge."""


def _eigh64(K):
  """Eigenpairs of a checked K: float64 (inside ``jax.enable_x64``) when K is concrete.

  steps_to_tolerance / predict_gd_mse are typically called many times with one Gram
  matrix and different y, g or t; JAX arrays are immutable, so object identity implies
  equal contents (the cache keeps a reference, so the id cannot be reused). Small n only.
  Must be called inside ``jax.enable_x64(True)`` for concrete K.
  """
  if not V.is_concrete(K) or V.tracing():
    return _spectrum.eigh_desc(K)
  wide = jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64   # x64 on here?
  cacheable = isinstance(K, jax.Array) and K.shape[0] <= _EIGH_CACHE_MAX_N
  if cacheable:
    for i, (Kc, w, full) in enumerate(_EIGH_CACHE):
      if Kc is K and w == wide:
        _EIGH_CACHE.append(_EIGH_CACHE.pop(i))
        return full
  # The PSD tolerance is that of the caller's dtype (float32 round-off stays round-off).
  # Without x64 (a traced call in a float32 program) eigh_desc still decomposes in float64
  # internally and returns K's dtype.
  full = (_spectrum.eigh_desc(jnp.asarray(K, jnp.float64),
                              psd_rtol=V.psd_tolerance(K.shape[0], K.dtype))
          if wide else _spectrum.eigh_desc(K))
  if cacheable:
    _EIGH_CACHE.append((K, wide, full))
    del _EIGH_CACHE[:-_EIGH_CACHE_SIZE]
  return full


def _modified_eigh(K, g, k, spec_kwargs):
  """Full eigendecomposition of K with the top-k eigenvalues replaced by g."""
  full = _eigh64(K)
  if g is None:
    return full.values, full.values, full.vectors, None
  unknown = set(spec_kwargs) - {"tie_rtol", "key"}   # key: accepted and unused (dense eigh)
  if unknown:
    raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; accepted: tie_rtol "
                    "(the full eigendecomposition is always dense).")
  k = V.check_k(k, K.shape[0])
  spec = _msk.msk_spectrum_from_eigenpairs(full, g, k, dtype=K.dtype,
                                           tie_rtol=spec_kwargs.get("tie_rtol", 1e-6))
  mu = full.values.at[:k].set(spec.new_values)
  # Use the full basis for the top-k too so U is exactly orthonormal.
  spec = spec._replace(vectors=full.vectors[:, :k], values=full.values[:k])
  return full.values, mu, full.vectors, spec


@functools.partial(jax.jit, static_argnames=("flow",))
def _gain(mu, t, eta, flow):
  r"""(1 − decay(t)) / μ per eigenvalue; shape t.shape + μ.shape.

  decay = (1 − ημ)^t (discrete, t integer) or e^{−tμ} (flow), computed without a log of a
  non-positive number: for 1 − ημ > 0 as expm1(t·log1p(−ημ)) (exact for tiny ημ), at and
  past the edge (1 − ημ <= 0, e.g. ημ = 1 + 1e-7 in float32) as (−1)^t |1 − ημ|^t with
  0^0 = 1. μ = 0 exactly: the limit η t (or t). t = ∞: 1/μ where GD converges
  (|1 − ημ| < 1) and μ > n·eps·max μ (pseudo-inverse: numerically-zero directions are not
  learned), NaN where it diverges.
  """
  t = t[..., None]
  inf = jnp.isinf(t)
  tf = jnp.where(inf, 0.0, t)
  pos = mu > 0
  mu_safe = jnp.where(pos, mu, 1.0)
  floor = jnp.finfo(mu.dtype).eps * jnp.max(mu) * mu.shape[0]
  if flow:
    decay_m1 = jnp.expm1(-tf * mu_safe)                   # e^{-tμ} − 1, in (−1, 0]
    zero_gain = tf
    converges = jnp.ones_like(mu, dtype=bool)
  else:
    # Each quantity is used once (no two-sided test of the same rounded value): XLA may
    # fuse 1 − ημ differently in two places, which at the edge (ημ ≈ 1) gave 0 vs ±1e-17.
    x = eta * mu_safe
    above = x < 1.0
    dm_pos = jnp.where(tf == 0, 0.0, jnp.expm1(tf * jnp.log1p(-jnp.minimum(x, 1.0))))
    mag = jnp.where(tf == 0, 1.0, jnp.exp(tf * jnp.log(jnp.abs(1.0 - x))))   # log 0 = −inf
    odd = jnp.mod(tf, 2.0) == 1.0
    dm_neg = jnp.where(odd, -mag, mag) - 1.0
    decay_m1 = jnp.where(above, dm_pos, dm_neg)
    absb = jnp.abs(1.0 - x)
    zero_gain = eta * tf
    converges = (absb < 1.0) | ~pos
  gain_fin = -decay_m1 / mu_safe
  gain_inf = jnp.where(converges, jnp.where(mu > floor, 1.0 / mu_safe, 0.0), jnp.nan)
  gain = jnp.where(inf, gain_inf, gain_fin)
  return jnp.where(pos, gain, jnp.where(inf, 0.0, zero_gain))


def _predict_core(K_train, y, f0_tr, K_test_train, f0_te, t_arr, g, k, learning_rate,
                  kwargs, out_dtype):
  n = K_train.shape[0]
  lam, mu, U, spec = _modified_eigh(K_train, g, k, kwargs)
  dt = U.dtype
  flow = learning_rate is None
  eta = jnp.asarray(1.0 if flow else learning_rate, dt)
  if not flow and V.is_concrete(mu) and V.is_concrete(t_arr) and bool(jnp.any(jnp.isinf(t_arr))):
    edge = float(learning_rate) * float(jnp.max(mu))
    if edge >= 2.0 * (1.0 - EDGE_RTOL):
      raise ValueError(
          f"`t` = inf with `learning_rate` = {learning_rate:.6g} >= 2/λ_max(K_g) = "
          f"{2.0 / float(jnp.max(mu)):.6g}: gradient descent diverges (|1 − ηλ_max| = "
          f"{abs(1.0 - edge):.4g} >= 1), so it has no t = ∞ limit. Use a step below "
          "mskjax.max_learning_rate(...) (e.g. 1/λ_max) or finite t.")
  y = y.astype(dt)
  f0_tr = f0_tr.astype(dt)
  gain = _gain(mu, t_arr.reshape(-1).astype(dt), eta, flow)     # (T, n)
  rhs = U.T @ (y - f0_tr).reshape(n, -1)                     # (n, c)
  coeff = gain[:, :, None] * rhs[None]                        # (T, n, c): K_g⁻¹(I − decay)
  train = y.reshape(1, n, -1) - jnp.einsum("ni,tic->tnc", U, rhs[None] - mu[None, :, None] * coeff)
  train = train.reshape(t_arr.shape + y.shape).astype(out_dtype)
  test = None
  if K_test_train is not None:
    m = K_test_train.shape[0]
    alpha = jnp.einsum("ni,tic->tnc", U, coeff)              # (T, n, c)
    if spec is not None:                                      # k(x, X) S
      alpha = jax.vmap(lambda a: _msk.apply_preconditioner(spec, a))(alpha)
    test = f0_te.astype(dt).reshape(1, m, -1) + jnp.einsum(
        "mn,tnc->tmc", K_test_train.astype(dt), alpha)
    test = test.reshape(t_arr.shape + (m,) + y.shape[1:]).astype(out_dtype)
  return Predictions(train, test)


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
  every g); it requires a convergent step, η < 2/λ_max(K_g) (else ``ValueError``).
  Directions with μ = 0 follow their limits; at t = ∞ directions with μ <= n·eps·max μ
  (numerically zero) are not learned (pseudo-inverse); at finite t every direction follows
  the exact formula (so predictions are monotone in t for a stable step).

  **Precision.** The eigendecomposition and the formula run in float64 whatever the
  caller's precision (``jax.enable_x64`` as a local context, no global change); the result
  comes back in the inputs' dtype. The gain (1 − (1 − ημ)^t)/μ is computed without
  log(1 − ημ) of a non-positive number, so η = 1/λ_max — where ημ rounds to 1 + 1e-7 in
  float32 — and steps slightly past the edge stay exact. Under ``jit`` (traced inputs) it
  runs in the inputs' dtype with the same formula.

  Args:
    K_train: ``(n, n)`` Gram matrix of the *unmodified* kernel on the training set
      (symmetric PSD; indefinite beyond round-off raises).
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

  Raises:
    ValueError: NaN/inf in any input, shape mismatches, indefinite ``K_train``, negative
      or non-integer ``t``, or ``t = inf`` with a divergent step.

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
  y = V.finite_array(y_train, "y_train", ndim=(1, 2))
  V.check_rows(y, n, "y_train", "K_train")
  t_arr = jnp.asarray(t)
  if not (jnp.issubdtype(t_arr.dtype, jnp.floating) or jnp.issubdtype(t_arr.dtype, jnp.integer)):
    raise TypeError(f"`t` must be real times/steps, got dtype {t_arr.dtype}.")
  t_arr = t_arr.astype(K_train.dtype)
  if t_arr.ndim > 1:
    raise ValueError(f"`t` must be a scalar or 1-D array of times, got shape {t_arr.shape}.")
  t_host = None
  if V.is_concrete(t_arr):
    t_host = np.asarray(t, dtype=np.float64)   # exact integers (float32 would round 2^24+1)
    if np.any(np.isnan(t_host)) or np.any(t_host < 0):
      raise ValueError(f"`t` must be non-negative (jnp.inf allowed), got {t}.")
    if learning_rate is not None:
      finite = t_host[np.isfinite(t_host)]
      if np.any(finite != np.round(finite)):
        raise ValueError("`t` counts discrete steps when `learning_rate` is given: pass "
                         f"integers (or jnp.inf), got {t}. Use learning_rate=None for "
                         "continuous-time gradient flow.")
  if learning_rate is not None:
    learning_rate = V.check_real(learning_rate, "learning_rate", lo=0, lo_open=True)
  f0_tr = jnp.zeros_like(y) if f0_train is None else V.finite_array(f0_train, "f0_train")
  if f0_tr.shape != y.shape:
    raise ValueError(f"`f0_train` has shape {f0_tr.shape}; it must match `y_train` {y.shape}.")
  f0_te = None
  if K_test_train is not None:
    K_test_train = V.finite_array(K_test_train, "K_test_train", ndim=2)
    if K_test_train.shape[1] != n:
      raise ValueError(f"`K_test_train` must have shape (m, n={n}) (test rows, train "
                       f"columns), got {K_test_train.shape}.")
    m = K_test_train.shape[0]
    f0_te = (jnp.zeros((m,) + y.shape[1:], y.dtype) if f0_test is None
             else V.finite_array(f0_test, "f0_test"))
    if f0_te.shape != (m,) + y.shape[1:]:
      raise ValueError(f"`f0_test` has shape {f0_te.shape}; expected {(m,) + y.shape[1:]}.")
  elif f0_test is not None:
    raise ValueError("`f0_test` was given without `K_test_train`; pass both (test "
                     "predictions need k(x_test, X)).")
  out_dtype = jnp.result_type(K_train.dtype, y.dtype)
  arrays = (K_train, y, f0_tr, K_test_train, f0_te, t_arr)
  if not V.tracing() and all(a is None or V.is_concrete(a) for a in arrays):
    with jax.enable_x64(True):
      up = lambda a: None if a is None else jnp.asarray(a, jnp.float64)
      return _predict_core(K_train, up(y), up(f0_tr), up(K_test_train), up(f0_te),
                           jnp.asarray(t_host, jnp.float64), g, k, learning_rate, kwargs,
                           out_dtype)
  return _predict_core(K_train, y, f0_tr, K_test_train, f0_te, t_arr, g, k, learning_rate,
                       kwargs, out_dtype)


def _lambda_max(mu, what: str) -> float:
  top = float(jnp.max(mu))
  if not top > 0:
    raise ValueError(f"{what} is zero (λ_max = 0): gradient descent never moves, so there is "
                     "no step size or iteration count; check the kernel.")
  return top


def max_learning_rate(K, g: _modifiers.Modifier | None = None, k: int | None = None, *,
                      spectrum: _msk.MSKSpectrum | None = None) -> float:
  r"""Largest stable step of GD on ½‖r‖² with kernel K (or K_g): η < 2 / λ_max.

  GD: ``2 / λ₁``; PGD with an MSK: ``2 / max(g(λ₁..λ_k), λ_{k+1})``. (neural-tangents'
  ``predict.max_learning_rate`` is broken on current SciPy; this is the spectral form.)
  Use a fraction of it in practice (e.g. ``1 / λ_max``, which the paper and the tests use).
  An indefinite K raises (no step is stable when an eigenvalue is negative).

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
    spectrum = _msk.check_spectrum(spectrum, name="spectrum")
    return 2.0 / _lambda_max(spectrum.max_value, "`spectrum`")
  if g is None:
    return 2.0 / _lambda_max(_spectrum.eigh_top(K, 1, method="dense").values, "`K`")
  return 2.0 / _lambda_max(_msk.msk_spectrum(K, g, k, method="dense").max_value, "`K_g`")


def steps_to_tolerance(K, y, g: _modifiers.Modifier | None = None, k: int | None = None, *,
                       learning_rate: float | None = None, tol: float = 0.1,
                       max_steps: int = 10**7) -> int:
  r"""Smallest t with ‖(I − η K_g)^t y‖ < tol·‖y‖ (the linearized iteration count).

  With ``learning_rate=None`` it uses η = 1/λ_max(K_g). Returns ``max_steps`` + 1 when the
  tolerance is not reached by then (e.g. y has energy in the null space of K). Computed in
  float64 from the eigendecomposition (binary search on the exact residual norm, which is
  non-increasing in t for a stable step).

  Args:
    K: ``(n, n)`` symmetric PSD Gram matrix.
    y: ``(n,)`` or ``(n, c)`` targets (finite, not all zero).
    g, k: optional modifier and number of modified eigenvalues.
    learning_rate: step η with ``0 < η < 2/λ_max(K_g)``; ``None`` for 1/λ_max(K_g).
    tol: relative tolerance, a finite number > 0.
    max_steps: search limit, an int >= 1.

  Raises:
    ValueError: bad shapes/values, zero K, or an unstable step (η >= 2/λ_max(K_g)).

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.diag(jnp.array([1.0, 0.01])); y = jnp.array([0.0, 1.0])
    >>> mskjax.steps_to_tolerance(K, y), mskjax.steps_to_tolerance(K, y, mskjax.modifiers.flatten(), 1)
    (230, 1)
  """
  K = V.check_square_symmetric(K, "K")
  n = K.shape[0]
  yv = V.finite_array(y, "y", ndim=(1, 2))
  V.check_rows(yv, n, "y", "K")
  tol = V.check_real(tol, "tol", lo=0, lo_open=True)
  max_steps = V.check_int(max_steps, "max_steps", lo=1)
  if learning_rate is not None:
    learning_rate = V.check_real(learning_rate, "learning_rate", lo=0, lo_open=True)
  with jax.enable_x64(True):
    lam, mu, U, _ = _modified_eigh(K, g, k, {})
    mu = np.asarray(mu, dtype=np.float64)
    top = _lambda_max(mu, "`K`" if g is None else "`K_g`")
    eta = 1.0 / top if learning_rate is None else learning_rate
    if eta * top >= 2.0 * (1.0 - EDGE_RTOL):
      raise ValueError(
          f"`learning_rate` = {eta:.6g} is unstable: it must be < 2/λ_max = {2.0 / top:.6g} "
          f"(|1 − ηλ_max| = {abs(1.0 - eta * top):.4g} >= 1, GD does not converge). Use "
          "mskjax.max_learning_rate(...) or learning_rate=None (η = 1/λ_max).")
    c2 = np.sum(np.asarray(U.T @ jnp.asarray(yv, jnp.float64).reshape(n, -1)) ** 2, axis=1)
  total = float(np.sum(c2))
  if not total > 0:
    raise ValueError("`y` is zero: the relative tolerance ‖r_t‖ < tol·‖y‖ is undefined.")
  logb = np.log(np.abs(1.0 - eta * mu) + 1e-300)
  target = tol ** 2 * total

  def res2(t):
    return float(np.sum(c2 * np.exp(2 * t * logb)))

  if res2(max_steps) >= target:
    return max_steps + 1
  lo, hi = 0, max_steps  # res2 is non-increasing in t since |1 − ημ| <= 1 (checked above)
  while lo < hi:
    mid = (lo + hi) // 2
    if res2(mid) < target:
      hi = mid
    else:
      lo = mid + 1
  return lo
