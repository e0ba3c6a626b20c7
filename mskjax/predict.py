r"""Infinite-width predictions: kernel gradient descent with a Modified Spectrum Kernel.

For the MSE loss ½‖f(X) − Y‖² (no 1/n), kernel GD with step η and the MSK Gram matrix
``K_g = U diag(μ) Uᵀ`` (μ = g(λ) on the top-k, λ elsewhere) gives

.. math::
  r_t = U (1 - \eta\mu)^t U^\top r_0 \quad\text{(discrete)},\qquad
  r_t = U e^{-\eta t\mu} U^\top r_0 \quad\text{(gradient flow)},

  f_t(x) = f_0(x) + k(x, X)\, S\, U \operatorname{diag}\Big(\frac{1-(1-\eta\mu)^t}{\mu}\Big)
  U^\top (Y - f_0(X)),

with r = f(X) − Y and ``k_g(x, X) = k(x, X) S``. At t = ∞ this is
``f₀(x) + k(x, X) K⁻¹ (Y − f₀(X))`` for every g: the plain-GD solution.

:func:`gradient_descent_mse` diagonalises K once and returns ``predict_fn(t, ...)`` (the
neural-tangents pattern); :func:`predict_gd_mse` is the one-shot form. All functions accept
``eigenpairs=`` (a precomputed ``mskjax.eigh_desc(K)``) so one K is diagonalised once for
any number of targets, modifiers, steps and time grids. There is no hidden cache.

**One meaning of ``learning_rate=None``:** η = 1/λ_max(K_g), half the stability bound
:func:`mskjax.steps.max_learning_rate`, in :func:`gradient_descent_mse`, :func:`predict_gd_mse` and
:func:`steps_to_tolerance`. Gradient flow is ``flow=True`` (dθ/dt = −η∇L, t continuous).

**Convention vs neural-tangents.** ``neural_tangents.predict.gradient_descent_mse`` uses
the loss ½·(1/N)‖r‖² (N = ``y_train.size``): its dynamics at ``learning_rate=lr`` and time
``t`` equal our ``flow=True, learning_rate=lr/N`` at time ``t``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import time
import warnings
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mskjax import _blocks
from mskjax import _solve
from mskjax import _linalg
from mskjax import _validate as _v
from mskjax import kernels as _kernels
from mskjax import modifiers as _modifiers
from mskjax import msk as _msk
from mskjax import spectrum as _spectrum

__all__ = ["Predictions", "gradient_descent_mse", "predict_gd_mse", "steps_to_tolerance",
           "EDGE_RTOL", "kernel_gd_mse", "KernelSolveInfo", "METHODS", "EIGENSOLVERS"]


class Predictions(NamedTuple):
  """Outputs of :func:`predict_gd_mse`: leading axes are those of ``t``."""
  train: jax.Array
  test: jax.Array | None


EDGE_RTOL = 1e-12
"""A step with η·λ_max >= 2·(1 − EDGE_RTOL) counts as divergent: at η = 2/λ_max computed in
floating point, |1 − ηλ_max| is 1 up to round-off and GD does not converge."""


def _full_eigenpairs(K, eigenpairs):
  """Eigenpairs of a checked K, float64 when K is concrete (call inside ``jax.enable_x64``
  for concrete K); ``eigenpairs`` (a precomputed full descending decomposition of K) is
  checked and upcast instead of a new eigh."""
  n = K.shape[0]
  concrete = _v.is_concrete(K) and not _v.tracing()
  if eigenpairs is not None:
    return _spectrum.check_eigenpairs(K, eigenpairs)
  if not concrete:
    return _spectrum.eigh_desc(K)
  # The PSD tolerance is that of the caller's dtype (float32 round-off stays round-off).
  return _spectrum.eigh_desc(jnp.asarray(K, jnp.float64),
                             psd_rtol=_v.psd_tolerance(n, K.dtype))


_SPEC_KWARGS = ("tie_rtol",)
"""The keywords ``**kwargs`` of :func:`gradient_descent_mse` accepts."""


def _modified_eigh(K, g, k, spec_kwargs, eigenpairs=None):
  """Full eigendecomposition of K with the top-k eigenvalues replaced by g."""
  full = _full_eigenpairs(K, eigenpairs)
  if g is None:
    return full.values, full.values, full.vectors, None
  k = _v.check_k(k, K.shape[0])
  spec = _msk.msk_spectrum_from_eigenpairs(full, g, k, dtype=K.dtype,
                                           tie_rtol=spec_kwargs.get("tie_rtol", 1e-6))
  mu = full.values.at[:k].set(spec.new_values)
  # Use the full basis for the top-k too so U is exactly orthonormal.
  spec = spec._replace(vectors=full.vectors[:, :k], values=full.values[:k])
  return full.values, mu, full.vectors, spec


@functools.partial(jax.jit, static_argnames=("flow",))
def _gain(mu, t, eta, flow):
  r"""(1 − decay(t)) / μ per eigenvalue; shape t.shape + μ.shape.

  decay = (1 − ημ)^t (discrete, t integer) or e^{−ηtμ} (flow), computed without a log of a
  non-positive number: for 1 − ημ > 0 as expm1(t·log1p(−ημ)) (exact for tiny ημ), at and
  past the edge (1 − ημ <= 0, e.g. ημ = 1 + 1e-7 in float32) as (−1)^t |1 − ημ|^t with
  0^0 = 1. μ = 0 exactly: the limit η t. t = ∞: 1/μ where GD converges
  (|1 − ημ| < 1) and μ > n·eps·max μ (pseudo-inverse: numerically-zero directions are not
  learned), NaN where it diverges.
  """
  t = t[..., None]
  inf = jnp.isinf(t)
  tf = jnp.where(inf, 0.0, t)
  pos = mu > 0
  mu_safe = jnp.where(pos, mu, 1.0)
  floor = jnp.finfo(mu.dtype).eps * jnp.max(mu) * mu.shape[0]
  zero_gain = eta * tf
  if flow:
    decay_m1 = jnp.expm1(-eta * tf * mu_safe)             # e^{-ηtμ} − 1, in (−1, 0]
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
    # Numerically-zero μ (<= floor) are not learned at t = ∞ (gain 0), whatever the step:
    # there 1 − ημ may round to exactly 1, which is not divergence.
    converges = (absb < 1.0) | (mu <= floor)
  gain_fin = -decay_m1 / mu_safe
  gain_inf = jnp.where(converges, jnp.where(mu > floor, 1.0 / mu_safe, 0.0), jnp.nan)
  gain = jnp.where(inf, gain_inf, gain_fin)
  return jnp.where(pos, gain, jnp.where(inf, 0.0, zero_gain))


def _default_step(mu, learning_rate, what):
  """η: ``learning_rate``, or 1/λ_max(K_g) when it is None (the one meaning of None)."""
  if learning_rate is not None:
    return learning_rate
  if _v.is_concrete(mu):
    return 1.0 / _linalg.lambda_max(mu, what)
  return 1.0 / jnp.max(mu)


def _check_t(t, discrete: bool):
  """``t`` as an array (and a float64 host copy when concrete), checked."""
  if t is None or isinstance(t, (str, bytes, bool, np.bool_)):
    raise _v.ArgumentTypeError(
        f"`t` must be a number of steps (an int, or a time with flow=True), jnp.inf, or a 1-D "
        f"array of them; got {type(t).__name__} {t!r}.")
  try:
    t_arr = jnp.asarray(t)
  except (TypeError, ValueError):
    raise _v.ArgumentTypeError(f"`t` must be a number or a 1-D array of numbers; got "
                               f"{type(t).__name__} {t!r}.") from None
  if not (jnp.issubdtype(t_arr.dtype, jnp.floating) or jnp.issubdtype(t_arr.dtype, jnp.integer)):
    raise TypeError(f"`t` must be real times/steps, got dtype {t_arr.dtype}.")
  if t_arr.ndim > 1:
    raise ValueError(f"`t` must be a scalar or 1-D array of times, got shape {t_arr.shape}.")
  t_host = None
  if _v.is_concrete(t_arr):
    t_host = np.asarray(t, dtype=np.float64)   # exact integers (float32 would round 2^24+1)
    if np.any(np.isnan(t_host)) or np.any(t_host < 0):
      raise ValueError(f"`t` must be non-negative (jnp.inf allowed), got {t}.")
    if discrete:
      finite = t_host[np.isfinite(t_host)]
      if np.any(finite != np.round(finite)):
        raise ValueError("`t` counts discrete gradient-descent steps: pass integers (or "
                         f"jnp.inf), got {t}. Use flow=True for continuous-time gradient "
                         "flow.")
  return t_arr, t_host


def gradient_descent_mse(K_train, y_train, g: _modifiers.Modifier | None = None,
                         k: int | None = None, *, learning_rate: float | None = None,
                         flow: bool = False, eigenpairs: _spectrum.Eigenpairs | None = None,
                         **kwargs):
  r"""Build once, evaluate at many t: a ``predict_fn(t, ...)`` for kernel GD with the MSK.

  The neural-tangents pattern (``neural_tangents.predict.gradient_descent_mse``): the
  (float64) eigendecomposition of ``K_train`` and the modified spectrum μ are computed here,
  once; every call of the returned function only applies the closed form

  .. math::
    f_t(X) = Y - U\,d_t(\mu)\,U^\top (Y - f_0(X)),\qquad
    f_t(x) = f_0(x) + k(x,X)\, S\, U \operatorname{diag}\Big(\frac{1-d_t(\mu)}{\mu}\Big)
    U^\top (Y - f_0(X)),

  with ``d_t(μ) = (1 − ημ)^t`` (discrete GD, t integer steps) or ``e^{−ηtμ}``
  (``flow=True``, gradient flow, t continuous). ``t = jnp.inf`` gives the kernel-regression
  interpolant (the same for every g); discrete GD needs a convergent step there,
  η < 2/λ_max(K_g) (else ``ValueError``). Directions with μ = 0 follow their limits; at
  t = ∞ directions with μ <= n·eps·max μ are not learned (pseudo-inverse).

  **Step size.** ``learning_rate=None`` means η = 1/λ_max(K_g) — half of
  :func:`mskjax.steps.max_learning_rate` — here, in :func:`predict_gd_mse` and in
  :func:`steps_to_tolerance` (the one meaning of None). With ``flow=True`` the flow is
  dθ/dt = −η ∇½‖r‖², so flow at time t is the continuous version of t steps of η;
  ``flow=True, learning_rate=1.0`` is the flow of ½‖r‖² in its own time unit.

  **Precision.** For concrete inputs the eigendecomposition and the formula run in float64
  whatever the caller's precision (``jax.enable_x64`` as a local context, no global change);
  results come back in the inputs' dtype. The gain (1 − (1 − ημ)^t)/μ is computed without
  log(1 − ημ) of a non-positive number, so η = 1/λ_max — where ημ rounds to 1 + 1e-7 in
  float32 — and steps slightly past the edge stay exact. Under ``jit`` (traced inputs) it
  runs in the widest dtype JAX allows there with the same formula.

  **Convention vs neural-tangents.** neural-tangents uses ½·(1/N)‖r‖² (N =
  ``y_train.size``): its ``learning_rate=lr`` at time ``t`` equals ours with
  ``flow=True, learning_rate=lr/N`` at time ``t``.

  Args:
    K_train: ``(n, n)`` Gram matrix of the *unmodified* kernel on the training set
      (symmetric PSD; indefinite beyond round-off raises).
    y_train: ``(n,)`` or ``(n, c)`` targets.
    g: modifier (see :mod:`mskjax.modifiers`); ``None`` or ``modifiers.identity()`` for
      plain kernel GD.
    k: number of modified eigenvalues (ignored when ``g`` is None).
    learning_rate: step η > 0; ``None`` for η = 1/λ_max(K_g).
    flow: ``True`` for gradient flow (continuous t), ``False`` for discrete GD steps.
    eigenpairs: optional full descending :class:`mskjax.Eigenpairs` of ``K_train`` (e.g.
      ``mskjax.eigh_desc(K_train)``, computed once and shared with
      :func:`steps_to_tolerance` and :func:`mskjax.steps.max_learning_rate`); no new eigh is done then.
      It is used in float64 (its accuracy is that of the dtype it was computed in). Checked
      cheaply against ``K_train`` (the top 3 pairs must satisfy ``‖K v − λ v‖ <=
      psd_tolerance · λ₁``): eigenpairs of another kernel with the same n raise.
    **kwargs: passed to :func:`mskjax.msk.msk_spectrum_from_eigenpairs` (``tie_rtol``); any
      other keyword raises ``TypeError`` (also with ``g=None``).

  Returns:
    ``predict_fn(t, f0_train=None, f0_test=None, K_test_train=None)`` →
    :class:`Predictions` ``(train, test)`` of shapes ``t.shape + y_train.shape`` and
    ``t.shape + (m,) + y_train.shape[1:]`` (``test`` is None without the ``(m, n)``
    unmodified test kernel ``K_test_train`` = k(x_test, X)). ``t``: scalar or 1-D,
    non-negative (integers for discrete GD), may be ``jnp.inf``; ``f0_*``: network outputs
    at initialisation (default 0).

  Raises:
    ValueError: NaN/inf in any input, shape mismatches, indefinite ``K_train``, a zero
      kernel with ``learning_rate=None``, ``eigenpairs`` of another kernel; at call time
      negative or (discrete) non-integer ``t``, ``t = inf`` with a divergent step, or a
      ``K_test_train`` with no rows.
    TypeError: an unknown keyword; ``t`` that is not a number or 1-D array of numbers.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.array([[2.0, 0.5], [0.5, 1.0]]); y = jnp.array([1.0, -1.0])
    >>> predict_fn = mskjax.gradient_descent_mse(K, y, mskjax.modifiers.flatten(), 1)
    >>> p = predict_fn(jnp.array([0, 1, 10]))
    >>> p.train.shape, p.train[-1].round(4).tolist()
    ((3, 2), [1.0, -1.0])

  References: Lee et al., *Wide Neural Networks of Any Depth Evolve as Linear Models Under
  Gradient Descent*, NeurIPS 2019 (the MSE closed form); Geifman et al., arXiv:2307.14531
  (the MSK).
  """
  # Also with g=None (where nothing reads them): a misspelt keyword is never silently
  # ignored.
  _v.check_known_kwargs(kwargs, _SPEC_KWARGS, "gradient_descent_mse")
  K_train = _v.check_square_symmetric(K_train, "K_train")
  n = K_train.shape[0]
  y = _v.finite_array(y_train, "y_train", ndim=(1, 2))
  _v.check_rows(y, n, "y_train", "K_train")
  flow = _v.check_bool(flow, "flow")
  if learning_rate is not None:
    learning_rate = _v.check_real(learning_rate, "learning_rate", lo=0, lo_open=True)
  what = "`K_train`" if g is None else "`K_g`"
  out_dtype = jnp.result_type(K_train.dtype, y.dtype)
  host = (not _v.tracing() and _v.is_concrete(K_train) and _v.is_concrete(y)
          and (eigenpairs is None or all(_v.is_concrete(a) for a in eigenpairs)))
  if host:
    with jax.enable_x64(True):
      _, mu, U, spec = _modified_eigh(K_train, g, k, kwargs, eigenpairs)
      # Host copies (numpy float64): usable later in any precision context, also as
      # constants inside a user's jit.
      mu, U = np.asarray(mu, np.float64), np.asarray(U, np.float64)
      if spec is not None:
        spec = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), spec)
      y64 = np.asarray(y, np.float64)
  else:
    _, mu, U, spec = _modified_eigh(K_train, g, k, kwargs, eigenpairs)
    y64 = y
  eta = _default_step(mu, learning_rate, what)

  def predict_fn(t, f0_train=None, f0_test=None, K_test_train=None) -> Predictions:
    t_arr, t_host = _check_t(t, discrete=not flow)
    f0_tr = jnp.zeros_like(y) if f0_train is None else _v.finite_array(f0_train, "f0_train")
    _v.check_same_shape(f0_tr, y.shape, "f0_train", "that of `y_train`")
    f0_te = None
    if K_test_train is not None:
      Kx = _v.finite_array(K_test_train, "K_test_train", ndim=2)
      if Kx.shape[1] != n:
        raise ValueError(f"`K_test_train` must have shape (m, n={n}) (test rows, train "
                         f"columns), got {Kx.shape}.")
      m = Kx.shape[0]
      if m == 0:
        raise ValueError(f"`K_test_train` has no rows (shape {tuple(Kx.shape)}): pass k(x_test, "
                         "X) for at least one test point, or K_test_train=None for train "
                         "predictions only.")
      f0_te = (jnp.zeros((m,) + y.shape[1:], y.dtype) if f0_test is None
               else _v.finite_array(f0_test, "f0_test"))
      _v.check_same_shape(f0_te, (m,) + y.shape[1:], "f0_test",
                          "K_test_train rows + the output shape of `y_train`")
    elif f0_test is not None:
      raise ValueError("`f0_test` was given without `K_test_train`; pass both (test "
                       "predictions need k(x_test, X)).")
    else:
      Kx = None
    if (not flow and t_host is not None and _v.is_concrete(mu)
        and bool(np.any(np.isinf(t_host)))):
      top = float(np.max(np.asarray(mu)))
      edge = float(eta) * top
      if edge >= 2.0 * (1.0 - EDGE_RTOL):
        raise ValueError(
            f"`t` = inf with `learning_rate` = {float(eta):.6g} >= 2/λ_max(K_g) = "
            f"{2.0 / top:.6g}: gradient descent diverges (|1 − ηλ_max| = "
            f"{abs(1.0 - edge):.4g} >= 1), so it has no t = ∞ limit. Use a step below "
            "mskjax.steps.max_learning_rate(...) (e.g. learning_rate=None: 1/λ_max) or finite t.")
    arrays = (f0_tr, Kx, f0_te, t_arr)
    if host and not _v.tracing() and all(a is None or _v.is_concrete(a) for a in arrays):
      with jax.enable_x64(True):
        up = lambda a: None if a is None else jnp.asarray(a, jnp.float64)
        return _predict_core(up(mu), up(U), spec, up(y64), up(f0_tr), up(Kx), up(f0_te),
                             jnp.asarray(t_host, jnp.float64), eta, flow, out_dtype)
    dt = jnp.promote_types(out_dtype, jax.dtypes.canonicalize_dtype(jnp.float64))
    up = lambda a: None if a is None else jnp.asarray(a, dt)
    spec_t = None if spec is None else jax.tree_util.tree_map(up, spec)
    return _predict_core(up(mu), up(U), spec_t, up(y64), up(f0_tr), up(Kx), up(f0_te),
                         up(t_arr), eta, flow, out_dtype)

  return predict_fn


def _predict_core(mu, U, spec, y, f0_tr, K_test_train, f0_te, t_arr, eta, flow, out_dtype):
  n = U.shape[0]
  dt = U.dtype
  gain = _gain(mu, t_arr.reshape(-1), jnp.asarray(eta, dt), flow)     # (T, n)
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
    test = f0_te.reshape(1, m, -1) + jnp.einsum("mn,tnc->tmc", K_test_train, alpha)
    test = test.reshape(t_arr.shape + (m,) + y.shape[1:]).astype(out_dtype)
  return Predictions(train, test)


def predict_gd_mse(K_train, y_train, g: _modifiers.Modifier | None, k: int | None, t, *,
                   learning_rate: float | None = None, flow: bool = False, K_test_train=None,
                   f0_train=None, f0_test=None, eigenpairs: _spectrum.Eigenpairs | None = None,
                   **kwargs) -> Predictions:
  r"""Train (and test) predictions of kernel GD with the MSK after ``t`` steps (one shot).

  ``gradient_descent_mse(K_train, y_train, g, k, learning_rate=…, flow=…,
  eigenpairs=…)(t, f0_train, f0_test, K_test_train)``: see :func:`gradient_descent_mse`
  for the formula, the step-size convention (``learning_rate=None`` is η = 1/λ_max(K_g);
  ``flow=True`` is gradient flow) and the precision. Each call diagonalises ``K_train``
  unless ``eigenpairs`` is given: to evaluate one K for several targets, modifiers or time
  grids, compute ``mskjax.eigh_desc(K)`` once and pass it, or build
  :func:`gradient_descent_mse` once.

  .. math::
    f_t(X) = Y - U(1-\eta\mu)^t U^\top (Y - f_0(X)),\qquad
    f_t(x) = f_0(x) + k(x,X) S U \operatorname{diag}\Big(\tfrac{1-(1-\eta\mu)^t}{\mu}\Big)
    U^\top (Y - f_0(X)).

  Args:
    K_train, y_train, g, k, learning_rate, flow, eigenpairs, **kwargs: as in
      :func:`gradient_descent_mse`.
    t: scalar or 1-D array of steps (non-negative integers; times when ``flow=True``; may
      be ``jnp.inf``).
    K_test_train: optional ``(m, n)`` unmodified kernel k(x_test, X).
    f0_train, f0_test: network outputs at initialisation (default 0).

  Returns:
    :class:`Predictions` ``(train, test)`` of shapes ``t.shape + y_train.shape`` and
    ``t.shape + (m,) + y_train.shape[1:]`` (``test`` is None without ``K_test_train``).

  Raises:
    ValueError: as :func:`gradient_descent_mse` and its ``predict_fn``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.array([[2.0, 0.5], [0.5, 1.0]]); y = jnp.array([1.0, -1.0])
    >>> p = mskjax.predict_gd_mse(K, y, mskjax.modifiers.flatten(), 1, jnp.inf,
    ...                           K_test_train=K)
    >>> p.train.round(6).tolist(), p.test.round(6).tolist()
    ([1.0, -1.0], [1.0, -1.0])
  """
  _v.check_known_kwargs(kwargs, _SPEC_KWARGS, "predict_gd_mse")
  _check_t(t, discrete=not _v.check_bool(flow, "flow"))     # before the eigh: fail fast
  predict_fn = gradient_descent_mse(K_train, y_train, g, k, learning_rate=learning_rate,
                                    flow=flow, eigenpairs=eigenpairs, **kwargs)
  return predict_fn(t, f0_train, f0_test, K_test_train)


def steps_to_tolerance(K, y, g: _modifiers.Modifier | None = None, k: int | None = None, *,
                       learning_rate: float | None = None, tol: float = 0.1,
                       max_steps: int = 10**7,
                       eigenpairs: _spectrum.Eigenpairs | None = None) -> int:
  r"""Smallest t with ‖(I − η K_g)^t y‖ < tol·‖y‖ (the linearized iteration count).

  With ``learning_rate=None`` it uses η = 1/λ_max(K_g) (as :func:`gradient_descent_mse`).
  Returns ``max_steps`` + 1 when the tolerance is not reached by then (e.g. y has energy in
  the null space of K). Computed in float64 from the eigendecomposition (binary search on
  the exact residual norm, which is non-increasing in t for a stable step).

  Args:
    K: ``(n, n)`` symmetric PSD Gram matrix.
    y: ``(n,)`` or ``(n, c)`` targets (finite, not all zero).
    g, k: optional modifier and number of modified eigenvalues.
    learning_rate: step η with ``0 < η < 2/λ_max(K_g)``; ``None`` for 1/λ_max(K_g).
    tol: relative tolerance, a finite number > 0.
    max_steps: search limit, an int >= 1.
    eigenpairs: a precomputed full descending :class:`mskjax.Eigenpairs` of K (no new eigh).

  Raises:
    ValueError: bad shapes/values, zero K, or an unstable step (η >= 2/λ_max(K_g)).

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.diag(jnp.array([1.0, 0.01])); y = jnp.array([0.0, 1.0])
    >>> mskjax.steps_to_tolerance(K, y), mskjax.steps_to_tolerance(K, y, mskjax.modifiers.flatten(), 1)
    (230, 1)
  """
  K = _v.check_square_symmetric(K, "K")
  n = K.shape[0]
  yv = _v.finite_array(y, "y", ndim=(1, 2))
  _v.check_rows(yv, n, "y", "K")
  tol = _v.check_real(tol, "tol", lo=0, lo_open=True)
  max_steps = _v.check_int(max_steps, "max_steps", lo=1)
  if learning_rate is not None:
    learning_rate = _v.check_real(learning_rate, "learning_rate", lo=0, lo_open=True)
  with jax.enable_x64(True):
    _, mu, U, _ = _modified_eigh(K, g, k, {}, eigenpairs)
    mu = np.asarray(mu, dtype=np.float64)
    top = _linalg.lambda_max(mu, "`K`" if g is None else "`K_g`")
    eta = _default_step(mu, learning_rate, "`K`")
    if eta * top >= 2.0 * (1.0 - EDGE_RTOL):
      raise ValueError(
          f"`learning_rate` = {eta:.6g} is unstable: it must be < 2/λ_max = {2.0 / top:.6g} "
          f"(|1 − ηλ_max| = {abs(1.0 - eta * top):.4g} >= 1, GD does not converge). Use "
          "mskjax.steps.max_learning_rate(...) or learning_rate=None (η = 1/λ_max).")
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


# ------------------------------------------------------------------ from the kernel function
METHODS = ("auto", "dense", "matrix_free")
"""The paths of :func:`kernel_gd_mse`."""

EIGENSOLVERS = ("krylov", "nystrom")
"""How :func:`kernel_gd_mse` finds the top-k eigenpairs for finite t (matrix-free)."""

MAX_PRECOND_RANK = 3000
"""Largest default rank of the matrix-free CG preconditioner (``precond_rank=None``)."""

PRECOND_MEMORY = 3 << 30
"""Bytes the default preconditioner rank is sized for: the float64 Nyström factor
``(n, n_landmarks)`` while it is built plus the ``(n, r)`` vectors kept (float32 with float32
kernel blocks)."""


def default_precond_rank(n: int, vector_itemsize: int = 8) -> int:
  """The matrix-free preconditioner's default rank r: ``min(n // 4, MAX_PRECOND_RANK)``, lowered
  so that the Nyström factor (float64, ``n × r`` while it is built) and the kept vectors
  (``n × r`` of ``vector_itemsize`` bytes) fit :data:`PRECOND_MEMORY`. CG's iterations fall
  as r grows (the preconditioned condition number is about ``λ̂_r / λ_min``) while the set-up
  grows as n·r²: a few thousand balances them on 10⁴–10⁵ points.

  Example:
    >>> default_precond_rank(1000), default_precond_rank(100_000, 4), default_precond_rank(10**6, 4)
    (250, 2684, 268)
  """
  by_memory = PRECOND_MEMORY // (max(n, 1) * (8 + vector_itemsize))
  return int(max(0, min(n // 4, MAX_PRECOND_RANK, by_memory)))



class KernelSolveInfo(NamedTuple):
  """What :func:`kernel_gd_mse` did (``predict_fn.info``, updated by every call).

  Attributes:
    method: ``'dense'`` or ``'matrix_free'`` (``'auto'`` resolved).
    solver: how t = ∞ was (or would be) solved: ``'cholesky'`` (dense), ``'eigh'`` (dense,
      K not numerically positive definite: pseudo-inverse), ``'pcg'`` (matrix-free).
    preconditioner: the CG preconditioner, e.g.
      ``'nystrom-rpcholesky(rank=1000, landmarks=1000)'``, or ``'none'``.
    iterations: CG iterations of the t = ∞ solve (0 before it ran, or dense).
    residuals: ``(c,)`` final relative residuals ``‖Y − (K + ridge·I) A‖/‖Y‖`` per output
      (CG's recurrence residual; dense: computed), or ``None`` before a t = ∞ solve.
    converged: whether every output reached ``rtol`` (True for dense).
    gd_steps: matrix-free kernel-GD steps done so far for finite t (each one product).
    eigensolver: how the top-k eigenpairs of the finite-t dynamics were found
      (``'dense'``, ``'krylov'``, ``'nystrom'``), or ``None`` before they were needed.
    eig_residual: ``max_i ‖K v_i − λ_i v_i‖ / λ₁`` of those pairs (``None`` for Nyström).
    learning_rate: the step η of the finite-t dynamics (``None`` before it was needed).
    setup_seconds: wall seconds of the set-up so far (operator and first compilation at
      build; preconditioner and eigenpairs when first needed).
    solve_seconds: wall seconds of the solves and predictions so far (set-up excluded).
    history: ``(iterations + 1, c)`` relative residuals of the CG iterations, or ``None``.
  """
  method: str
  solver: str
  preconditioner: str
  iterations: int = 0
  residuals: Optional[np.ndarray] = None
  converged: bool = False
  gd_steps: int = 0
  eigensolver: Optional[str] = None
  eig_residual: Optional[float] = None
  learning_rate: Optional[float] = None
  setup_seconds: float = 0.0
  solve_seconds: float = 0.0
  history: Optional[np.ndarray] = None


def _kernel_identity(kernel_fn) -> str:
  """A description of a kernel that is the same in every process for the same kernel:
  the ``repr`` of a kernel object (e.g. :class:`mskjax.kernels.MLPKernel`, a NamedTuple of
  its hyper-parameters), or module, qualified name and a hash of the bytecode of a
  function. Kernels built by one closure (e.g. neural-tangents' ``stax``) with different
  hyper-parameters are not told apart: use one checkpoint path per kernel."""
  code = getattr(kernel_fn, "__code__", None)
  if code is None:
    return repr(kernel_fn)
  h = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16]
  return f"{getattr(kernel_fn, '__module__', '?')}.{getattr(kernel_fn, '__qualname__', '?')}#{h}"


def _kernel_diagonal(op):
  """``k(x_i, x_i)`` for every point, from ``1 × 1`` kernel blocks (n evaluations)."""
  fn = jax.jit(jax.vmap(lambda p: op.kernel(p[None])[0, 0]))
  return np.asarray(_blocks.map_row_blocks(fn, op.x, op.block_size), np.float64)


def _precond_vector_dtype(block_dtype) -> np.dtype:
  """The CG preconditioner's vectors follow the kernel blocks: float32 blocks already carry
  float32 rounding in every product, and float32 vectors halve the O(n·r) memory and GEMMs."""
  return np.dtype(np.float32 if jnp.dtype(block_dtype).itemsize <= 4 else np.float64)


WIDE_RATIO = 1e-3
"""Preconditioner vectors whose eigenvalue ratio ``λ̂_r / λ̂_i`` is below this are kept in
float64 even when the others are float32: S shrinks those directions to that ratio, and a
float32 vector's rounding (~1e-7 off orthonormal) must stay far below it for S to remain
positive definite (λ̂_1 grows like n: the ratio of the top direction falls with n)."""


def _rpcholesky_pairs(op, rank, n_pivots, key, dtype=np.float64):
  r"""Top-``rank`` eigenpairs of a Nyström approximation ``K̂ = F Fᵀ`` of K from
  ``n_pivots`` columns chosen by block randomly pivoted Cholesky.

  Pivots are drawn in blocks with probability proportional to the diagonal of the
  residual ``K − F Fᵀ`` (so well-represented points are not drawn again); each block's
  columns ``G = k(X, X_S) − F F_Sᵀ`` are added as ``G Q w^{-1/2}`` (``H = G_S = Q w Qᵀ``,
  numerically-zero w dropped), so ``K̂ = C W⁺ Cᵀ`` on the chosen landmarks and ``K − K̂`` is
  PSD. The eigenpairs of ``F Fᵀ`` then come from the small ``FᵀF``. Never holds more than
  ``(n, n_pivots)`` numbers; ``n · n_pivots`` kernel evaluations, O(n · n_pivots²) flops
  (GEMMs), no eigendecomposition larger than ``n_pivots``.

  Returns (values (rank',) float64, U (n, rank') numpy in ``dtype``, U_wide, pivots) with
  rank' <= rank and U_wide the leading columns of U with ``λ̂_rank' / λ̂_i < WIDE_RATIO`` in
  float64 (``None`` when ``dtype`` is float64). The pivoting and F are float64 whatever
  ``dtype``; U in float32 halves the memory of the vectors a preconditioner keeps (and of its
  O(n·r) GEMMs).

  Reference: Chen, Epperly, Tropp & Webber, *Randomly pivoted Cholesky: practical
  approximation of a kernel matrix with few entry evaluations*, CPAM 2024 (block variant).
  """
  import scipy.linalg
  n = op.n
  x = op.x
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key) if jnp.issubdtype(
      key.dtype, jax.dtypes.prng_key) else key).astype(np.uint64).tolist())
  d = np.maximum(_kernel_diagonal(op), 0.0)
  trace0 = float(d.sum())
  blk = max(1, math.ceil(n_pivots / 8))
  F = np.empty((n, n_pivots))       # filled column block by column block, never copied
  cols = 0
  pivots = []
  while cols < n_pivots and d.sum() > n * np.finfo(np.float64).eps * trace0:
    b = min(blk, n_pivots - cols, int(np.count_nonzero(d)))
    S = np.sort(rng.choice(n, size=b, replace=False, p=d / d.sum()))
    xs = x[S]
    G = np.array(_blocks.map_row_blocks(lambda a: op.kernel(a, xs), x, op.block_size),
                 np.float64)
    if cols:
      G -= F[:, :cols] @ F[S, :cols].T
    H = 0.5 * (G[S] + G[S].T)
    w, Q = scipy.linalg.eigh(H)
    keep = w > max(w.max(), 0.0) * b * 1e-12
    if not keep.any():
      d[S] = 0.0
      continue
    kb = int(keep.sum())
    F[:, cols:cols + kb] = G @ (Q[:, keep] / np.sqrt(w[keep]))
    del G
    d = np.maximum(d - np.sum(F[:, cols:cols + kb] ** 2, axis=1), 0.0)
    d[S] = 0.0
    cols += kb
    pivots.extend(S.tolist())
  if cols == 0:
    raise ValueError("the kernel is numerically zero on `x_train`: no preconditioner can be "
                     "built (check the kernel).")
  F = F[:, :cols]
  s2, P = scipy.linalg.eigh(F.T @ F)
  s2, P = np.maximum(s2[::-1], 0.0), P[:, ::-1]
  r = min(rank, int(np.sum(s2 > s2[0] * cols * np.finfo(np.float64).eps)))
  M = P[:, :r] / np.sqrt(s2[:r])
  # U = F M in row blocks (orthonormal to round-off), written over F when r = s in float64
  dtype = np.dtype(dtype)
  wide = None
  if dtype != np.float64:
    t = int(np.sum(s2[r - 1] < WIDE_RATIO * s2[:r]))
    wide = np.empty((n, t))
  U = F if (r == cols and dtype == F.dtype) else np.empty((n, r), dtype)
  step = max(1, (1 << 26) // (8 * max(cols, 1)))
  for i in range(0, n, step):
    blk = F[i:i + step] @ M
    if wide is not None:
      wide[i:i + step] = blk[:, :wide.shape[1]]
    U[i:i + step] = blk
  del F
  return s2[:r], U, wide, np.asarray(pivots)


def _shifted_spectrum(top, g, k, ridge, n, dtype):
  """The MSK spectrum of K + ridge·I from the top-(k+1) eigenpairs of K (``g=None``: no
  modification, returns None)."""
  shifted = _spectrum.Eigenpairs(top.values + ridge, top.vectors)
  if g is None:
    return None
  return _msk.msk_spectrum_from_eigenpairs(shifted, g, k, dtype=dtype)


def kernel_gd_mse(kernel_fn: Callable, x_train, y_train, g: _modifiers.Modifier | None = None,
                  k: int | None = None, *, get: str | None = "ntk", ridge: float = 0.0,
                  learning_rate: float | None = None, flow: bool = False,
                  method: str = "auto", memory_budget: int | None = None,
                  kernel_dtype=None, precond_rank: int | None = None,
                  n_landmarks: int | None = None, rtol: float = 1e-3, max_iter: int = 200,
                  eigensolver: str = "krylov", key=None, progress=False,
                  checkpoint: str | None = None, checkpoint_every: int = 5,
                  devices=None, block_size: int | None = None):
  r"""Kernel GD / kernel regression predictions from ``(kernel_fn, x_train, y_train)``,
  with or without forming K: build once, evaluate at any t.

  The predictions of :func:`gradient_descent_mse` (MSE loss ½‖f(X) − Y‖², kernel GD with
  the MSK ``K_g`` of modifier ``g`` on the top-k eigenvalues, step η) written in the
  coefficients ``f(x) = k(x, X) α``:

  .. math::
    \alpha_{t+1} = \alpha_t + \eta\, S_g\, \big(Y - (K + \rho I)\,\alpha_t\big),\qquad
    S_g = I + V_k \operatorname{diag}\!\Big(\frac{g(\lambda_i)}{\lambda_i} - 1\Big) V_k^\top,
    \qquad \alpha_\infty = (K + \rho I)^{-1} Y,

  with ``ρ = ridge`` (``ρ = 0``: plain kernel GD, interpolation at t = ∞; the eigenpairs
  λ, V are those of ``K + ρI``), train predictions ``K α_t`` and test predictions
  ``k(x_test, X) α_t`` (no network output at initialisation: f₀ = 0). ``t = ∞`` is the same
  for every g.

  **Paths** (``method``; ``'auto'``: dense when K in float64 fits ``memory_budget``, else
  matrix-free):

  * ``'dense'``: K is formed (:func:`mskjax.kernels.gram`, float64). t = ∞: a Cholesky
    solve (scipy, float64) — no eigendecomposition; if K + ρI is not numerically positive
    definite, the pseudo-inverse of :func:`gradient_descent_mse`. Finite t: the closed form
    of :func:`gradient_descent_mse` (one float64 ``eigh``).
  * ``'matrix_free'``: K is never formed; every product ``K V`` is a pass over kernel blocks
    (:func:`mskjax.kernels.kernel_operator`, symmetric: half the evaluations, blocks sized by
    ``memory_budget``, optionally ``kernel_dtype=jnp.float32``, sharded over ``devices``).
    t = ∞: preconditioned CG (``mskjax._solve.pcg``) on ``(K + ρI) A = Y``, all outputs
    sharing each product, to ``‖Y − (K + ρI) A‖ <= rtol·‖Y‖`` per output or ``max_iter``
    iterations. Its preconditioner is the MSK's own S with ``g = flatten``, built from
    the top ``precond_rank`` eigenpairs (λ̂_i, u_i) of a Nyström approximation K̂ of K on
    ``n_landmarks`` points chosen by randomly pivoted Cholesky (n·s kernel evaluations,
    O(n s²) flops; Nyström PCG, EigenPro 2): ``S = I + Σ_{i<r} ((λ̂_r + ρ)/(λ̂_i + ρ) − 1)
    u_i u_iᵀ``, applied at O(n·r) per iteration (:func:`mskjax.msk.apply_preconditioner`).
    The solver's rank is its own knob, independent of the modifier's k (a rank of a
    hundred is a weak CG preconditioner on large n). Finite t: the iteration above, one
    product per step, with the top-(k+1) eigenpairs of ``K`` from block Krylov
    (``eigensolver='krylov'``, converged to residual ``KRYLOV_RTOL·λ₁``: exactly the dense
    dynamics up to that accuracy) or from Nyström (``eigensolver='nystrom'``, EigenPro's
    approximation: S is then built from approximate eigenvectors, so the dynamics are
    those of a slightly different preconditioner and the step 1/λ_max(K_g) is estimated;
    the difference to the exact dynamics is measured in ``docs/results.md``).
    ``flow=True`` needs the dense path.

  **Precision.** Everything is computed in float64 inside a local ``jax.enable_x64``
  context (no global setting changes) except the kernel blocks of the matrix-free product
  when ``kernel_dtype=jnp.float32`` (their sums are float64); predictions come back in
  JAX's default float dtype.

  **Checkpoints** (matrix-free). ``checkpoint=PATH`` saves the CG state of t = ∞ atomically
  every ``checkpoint_every`` iterations, at the end and on ``KeyboardInterrupt``; the same
  call again resumes from the saved iteration (the same iterates as an uninterrupted run);
  a checkpoint of another problem (n, shapes, dtypes, kernel, ridge, preconditioner
  settings, key, kernel block size, data) is refused with the differing fields named.
  ``rtol`` and ``max_iter`` are not part of the problem: a rerun with a tighter ``rtol`` or a
  larger ``max_iter`` continues the saved solve. Finite t keeps its own state in
  ``PATH + '.gd.npz'`` the same way (every ``checkpoint_every`` steps: the iterate, the
  iterates of the t's asked for, S_g and η, so a resumed run continues the same dynamics;
  also refused for another g, k or learning rate).

  **Progress.** ``progress=True`` prints a line per CG iteration / kernel-GD step (relative
  residual ``‖Y − (K + ρI)α‖/‖Y‖``, seconds); a callable receives each
  ``mskjax._solve.SolveProgress``, whose ``solution`` is the iterate α (e.g. to follow a
  validation metric; raising ``KeyboardInterrupt`` there stops the run as Ctrl-C does, with
  the state saved).

  Args:
    kernel_fn: ``kernel_fn(x1, x2, get)`` (neural-tangents style, e.g.
      ``mskjax.kernels.mlp_kernel_fn(spec)``), or ``kernel_fn(x1, x2)`` with ``get=None``.
    x_train: ``(n, d)`` (or ``(n, ...)``) training inputs.
    y_train: ``(n,)`` or ``(n, c)`` targets.
    g, k: modifier and number of modified eigenvalues for finite t (``g=None``: plain
      kernel GD); ignored at t = ∞.
    get: ``'ntk'``, ``'nngp'`` or ``None``.
    ridge: ρ >= 0 added to the diagonal of K (kernel ridge regression at t = ∞).
    learning_rate: η > 0, or ``None`` for η = 1/λ_max(K_g + ρI) (as
      :func:`gradient_descent_mse`).
    flow: gradient flow (continuous t), dense path only.
    method: one of :data:`METHODS`.
    memory_budget: bytes for K (dense) / the kernel blocks of one product (matrix-free);
      default :data:`mskjax.kernels.DEFAULT_MEMORY_BUDGET`.
    kernel_dtype: dtype of the matrix-free kernel blocks (default float64;
      ``jnp.float32`` is about twice as fast, see Precision).
    precond_rank: rank r of the CG preconditioner (default :func:`default_precond_rank`:
      ``min(n // 4, 3000)`` within :data:`PRECOND_MEMORY`; 0: plain CG). Its vectors are
      float32 when ``kernel_dtype`` is float32.
    n_landmarks: Nyström landmarks (pivots) s >= r (default r); the top r eigenpairs of
      the rank-s approximation are used.
    rtol: CG's relative residual tolerance per output, in (0, 1).
    max_iter: CG iterations at most.
    eigensolver: one of :data:`EIGENSOLVERS` (matrix-free finite t).
    key: PRNG key for the landmarks and the Krylov start (default ``PRNGKey(0)``).
    progress: ``True`` prints CG / kernel-GD progress to stderr; a callable receives each
      ``mskjax._solve.SolveProgress`` (see Progress).
    checkpoint, checkpoint_every: see Checkpoints.
    devices: devices to shard the kernel blocks over (default ``jax.devices()``).
    block_size: kernel block edge (default: from ``memory_budget``).

  Returns:
    ``predict_fn(t=jnp.inf, x_test=None)`` → :class:`Predictions` ``(train, test)`` of
    shapes ``t.shape + y_train.shape`` and ``t.shape + (m,) + y_train.shape[1:]`` (``test``
    is None without ``x_test``); ``t``: scalar or 1-D, non-negative integers (discrete GD)
    or ``jnp.inf``. ``predict_fn.info`` is a :class:`KernelSolveInfo`;
    ``predict_fn.coefficients(t)`` returns α_t. Finite-t iterates are kept, so a later call
    with larger t continues from the last one.

  Raises:
    ValueError / TypeError: naming the argument: shapes (``x_train``/``y_train`` rows, a
      ``x_test`` of another per-point shape), NaN/inf or non-numeric data, empty inputs,
      ``k`` outside ``1..n − 1``, ``ridge < 0``, a ``memory_budget`` below one kernel row
      block, ``method='dense'`` with K larger than the budget, a mismatched ``checkpoint``.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, mskjax
    >>> from mskjax.kernels import mlp_kernel_fn
    >>> kf = mlp_kernel_fn(mskjax.MLPSpec(depth=2, width=8))
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (300, 5)); y = jnp.sin(x[:, 0])
    >>> dense = kernel_gd_mse(kf, x, y, method="dense")
    >>> free = kernel_gd_mse(kf, x, y, method="matrix_free", rtol=1e-8, precond_rank=50)
    >>> a, b = dense().train, free().train
    >>> bool(jnp.max(jnp.abs(a - b)) < 1e-5), free.info.solver, free.info.converged
    (True, 'pcg', True)

  References: Ma & Belkin, *Kernel machines that adapt to GPUs for effective large batch
  training* (EigenPro 2), MLSys 2019; Frangella, Tropp & Udell, *Randomized Nyström
  preconditioning*, SIAM J. Matrix Anal. Appl. 2023; Rudi, Carratino & Rosasco, *FALKON*,
  NeurIPS 2017; Geifman et al., arXiv:2307.14531 (the MSK).
  """
  t_setup = time.perf_counter()
  method = _v.check_choice(method, "method", METHODS)
  eigensolver = _v.check_choice(eigensolver, "eigensolver", EIGENSOLVERS)
  flow = _v.check_bool(flow, "flow")
  ridge = _v.check_real(ridge, "ridge", lo=0)
  if learning_rate is not None:
    learning_rate = _v.check_real(learning_rate, "learning_rate", lo=0, lo_open=True)
  memory_budget = (_kernels.DEFAULT_MEMORY_BUDGET if memory_budget is None
                   else _v.check_int(memory_budget, "memory_budget", lo=1))
  rtol = _v.check_real(rtol, "rtol", lo=0, lo_open=True, hi=1, hi_open=True)
  max_iter = _v.check_int(max_iter, "max_iter", lo=0)
  if checkpoint is not None:          # before the set-up: never fail to save after minutes
    checkpoint = _solve.checkpoint_path(checkpoint)
  out_dtype = jax.dtypes.canonicalize_dtype(jnp.float64)    # the caller's default float
  with jax.enable_x64(True):
    x = _v.as_points(x_train, "x_train", nonempty=True)
    _v.check_kernel_fn(kernel_fn, get)
    n = x.shape[0]
    y = _v.finite_array(y_train, "y_train", ndim=(1, 2))
    _v.check_rows(y, n, "y_train", "x_train")
    if y.size == 0:
      raise ValueError(f"`y_train` has no outputs (shape {tuple(y.shape)}); pass at least one "
                       "target column.")
    y64 = np.asarray(y, np.float64)
    Y = y64.reshape(n, -1)
    c = Y.shape[1]
    if g is not None:
      k = _v.check_k(k, n)
    if kernel_dtype is not None:
      try:
        kernel_dtype = jnp.dtype(kernel_dtype)
      except TypeError:
        raise TypeError(f"`kernel_dtype` must be a float dtype, got {kernel_dtype!r}.") from None
      if not jnp.issubdtype(kernel_dtype, jnp.floating):
        raise TypeError(f"`kernel_dtype` must be a float dtype, got {kernel_dtype}.")
    if precond_rank is None:     # the blocks' dtype: kernel_dtype, else x's (kernel_operator)
      block_dtype = kernel_dtype if kernel_dtype is not None else x.dtype
      precond_rank = default_precond_rank(n, _precond_vector_dtype(block_dtype).itemsize)
    precond_rank = _v.check_int(precond_rank, "precond_rank", lo=0, hi=n)
    if n_landmarks is None:
      n_landmarks = max(precond_rank, 1)
    n_landmarks = _v.check_int(n_landmarks, "n_landmarks", lo=max(precond_rank, 1), hi=n)
    key = jax.random.PRNGKey(0) if key is None else key
    key_data = np.asarray(jax.random.key_data(key) if jnp.issubdtype(
        getattr(key, "dtype", np.float64), jax.dtypes.prng_key) else key)
    if key_data.shape != (2,) or not np.issubdtype(key_data.dtype, np.integer):
      raise TypeError(f"`key` must be a jax.random.PRNGKey (shape (2,) uint32), got "
                      f"{type(key).__name__} of shape {key_data.shape}.")
    k_bytes = 8 * n * n
    if method == "auto":
      method = "dense" if k_bytes <= memory_budget else "matrix_free"
    elif method == "dense" and k_bytes > memory_budget:
      raise ValueError(f"method='dense' needs K in float64, {k_bytes / 2**30:.2f} GiB, above "
                       f"`memory_budget` = {memory_budget / 2**30:.2f} GiB; raise the budget or "
                       "use method='matrix_free' (or 'auto').")
    if flow and method == "matrix_free":
      raise ValueError("flow=True (gradient flow) is available on the dense path only; use "
                       "discrete steps (flow=False) or method='dense'.")
    if method == "dense":
      state = _dense_setup(kernel_fn, x, Y, g, k, get, ridge, learning_rate, flow,
                           block_size, memory_budget)
    else:
      per_row = 8 * (x[0].size + c)
      min_bytes = _blocks.TEMPORARIES * 8 * 8 * 8 + per_row * 8
      if memory_budget < min_bytes:
        raise ValueError(f"`memory_budget` = {memory_budget} bytes is below one 8 × 8 kernel "
                         f"block ({min_bytes} bytes); give at least that (default "
                         f"{_kernels.DEFAULT_MEMORY_BUDGET}).")
      op = _kernels.kernel_operator(kernel_fn, x, get=get, m=max(c, 1), cache=False,
                                    memory_budget=memory_budget, devices=devices,
                                    block_size=block_size, block_dtype=kernel_dtype)
      state = _MatrixFree(op, Y, g, k, ridge, learning_rate, precond_rank, n_landmarks,
                          rtol, max_iter, eigensolver, key, progress, checkpoint,
                          checkpoint_every,
                          dict(n=n, x_shape=list(x.shape), y_shape=list(y64.shape),
                               x_dtype=str(np.asarray(x_train).dtype) if not hasattr(
                                   x_train, "dtype") else str(x_train.dtype),
                               kernel=_kernel_identity(kernel_fn), get=get,
                               ridge=ridge, precond_rank=precond_rank,
                               n_landmarks=n_landmarks, key=key_data.tolist(),
                               kernel_dtype=str(op.block_dtype), block_size=op.block_size,
                               data=_solve.fingerprint_arrays(np.asarray(x), y64)))
  state.info = state.info._replace(setup_seconds=time.perf_counter() - t_setup)

  @contextlib.contextmanager
  def counted():
    """A call's seconds into ``info.solve_seconds`` (set-up done lazily inside it — the
    preconditioner, the eigenpairs — is already counted as set-up) and ``predict_fn.info``
    brought up to date."""
    t0 = time.perf_counter()
    setup_before = state.info.setup_seconds
    yield
    setup_here = state.info.setup_seconds - setup_before
    state.info = state.info._replace(solve_seconds=state.info.solve_seconds
                                     + time.perf_counter() - t0 - setup_here)
    predict_fn.info = state.info

  def predict_fn(t=jnp.inf, x_test=None) -> Predictions:
    t_arr, t_host = _check_t(t, discrete=not flow)
    if t_host is None:
      raise TypeError("`t` must be concrete (not traced under jit): kernel_gd_mse evaluates "
                      "on the host.")
    with counted(), jax.enable_x64(True):
      xt = None
      if x_test is not None:
        xt = _v.as_points(x_test, "x_test", nonempty=True)
        if xt.shape[1:] != x.shape[1:]:
          raise ValueError(f"`x_test` must have the per-point shape of `x_train` "
                           f"{tuple(x.shape[1:])}; got shape {tuple(xt.shape)}.")
      ts = t_host.reshape(-1)
      alphas, train = state.coefficients(ts)               # (T, n, c) each
      test = None
      if xt is not None:
        T = ts.size
        flat = np.transpose(alphas, (1, 0, 2)).reshape(n, T * c)
        kx = state.cross(xt, flat)                          # (m, T c)
        m = xt.shape[0]
        test = np.transpose(kx.reshape(m, T, c), (1, 0, 2))
    tr = jnp.asarray(train.reshape(t_arr.shape + y64.shape), out_dtype)
    te = None if test is None else jnp.asarray(
        test.reshape(t_arr.shape + (xt.shape[0],) + y64.shape[1:]), out_dtype)
    return Predictions(tr, te)

  def coefficients(t=jnp.inf) -> np.ndarray:
    """``α_t`` (float64 numpy, shape ``t.shape + y_train.shape``) with ``f_t(x) = k(x, X) α_t``."""
    _, t_host = _check_t(t, discrete=not flow)
    with counted(), jax.enable_x64(True):
      alphas, _ = state.coefficients(t_host.reshape(-1))
    return alphas.reshape(np.shape(t_host) + y64.shape)

  predict_fn.info = state.info
  predict_fn.coefficients = coefficients
  return predict_fn


class _Dense:
  """Dense path state: K (float64), the Cholesky factor (lazy) and the closed form."""

  def __init__(self, kernel_fn, x, Y, g, k, get, ridge, learning_rate, flow, block_size):
    self.kernel_fn, self.x, self.Y, self.g, self.k, self.get = kernel_fn, x, Y, g, k, get
    self.ridge, self.learning_rate, self.flow = ridge, learning_rate, flow
    self.block_size = block_size
    self.fn = kernel_fn if get is not None else _PlainKernel(kernel_fn)
    self.K = np.asarray(_kernels.gram(self.fn, x, get=get or "ntk", block_size=block_size),
                        np.float64)
    self.alpha_inf = None
    self.closed = None
    self.info = KernelSolveInfo("dense", "cholesky", "none", converged=True)

  def _solve_inf(self):
    import scipy.linalg
    n = self.K.shape[0]
    A = self.K + self.ridge * np.eye(n)
    try:
      cf = scipy.linalg.cho_factor(A, lower=True, check_finite=False)
      alpha = scipy.linalg.cho_solve(cf, self.Y, check_finite=False)
      solver = "cholesky"
    except np.linalg.LinAlgError:
      alpha = self._closed_form(np.array([np.inf]))[0]
      solver = "eigh"
    res = np.linalg.norm(self.Y - A @ alpha, axis=0) / np.maximum(
        np.linalg.norm(self.Y, axis=0), np.finfo(float).tiny)
    self.info = self.info._replace(solver=solver, residuals=res)
    return alpha

  def _closed_form(self, ts):
    n = self.K.shape[0]
    if self.closed is None:
      A = self.K + self.ridge * np.eye(n)
      self.closed = gradient_descent_mse(jnp.asarray(A), jnp.asarray(self.Y), self.g,
                                         self.k, learning_rate=self.learning_rate,
                                         flow=self.flow)
      self.info = self.info._replace(eigensolver="dense")
    # test predictions with k(x, X) = I are the coefficients α_t (S applied)
    p = self.closed(jnp.asarray(ts), K_test_train=jnp.eye(n))
    return np.asarray(p.test, np.float64)

  def coefficients(self, ts):
    ts = np.asarray(ts, np.float64)
    out = np.empty((ts.size,) + self.Y.shape)
    fin = np.isfinite(ts)
    if (~fin).any():
      if self.alpha_inf is None:
        self.alpha_inf = self._solve_inf()
      out[~fin] = self.alpha_inf
    if fin.any():
      out[fin] = self._closed_form(ts[fin])
    return out, np.einsum("ij,tjc->tic", self.K, out)

  def cross(self, xt, V):
    out = np.zeros((xt.shape[0], V.shape[1]))
    n = self.K.shape[0]
    rows = self.block_size or _blocks.rows_for_budget(1 << 26, per_row=8 * n, multiple=8)
    for i in range(0, xt.shape[0], rows):
      kx = np.asarray(_kernels.gram(self.fn, xt[i:i + rows], self.x, get=self.get or "ntk",
                                    block_size=self.block_size), np.float64)
      out[i:i + rows] = kx @ V
    return out


class _PlainKernel(NamedTuple):
  """``kernel_fn(x1, x2)`` as ``kernel_fn(x1, x2, get)`` (hashable, for :func:`gram`)."""
  fn: Callable

  def __call__(self, a, b, get=None):
    return self.fn(a, a if b is None else b)


def _dense_setup(kernel_fn, x, Y, g, k, get, ridge, learning_rate, flow, block_size,
                 memory_budget):
  n = x.shape[0]
  if block_size is None:
    left = max(memory_budget - 8 * n * n, memory_budget // 8)
    block_size = _blocks.block_size_for_budget(left, itemsize=8)
  return _Dense(kernel_fn, x, Y, g, k, get, ridge, learning_rate, flow, block_size)

class _MatrixFree:
  """Matrix-free state: the operator, the preconditioner / eigenpairs (lazy), α∞ and the
  finite-t iterates."""

  def __init__(self, op, Y, g, k, ridge, learning_rate, rank, n_landmarks, rtol, max_iter,
               eigensolver, key, progress, checkpoint, checkpoint_every, fingerprint):
    self.op, self.Y, self.g, self.k, self.ridge = op, Y, g, k, ridge
    self.learning_rate, self.rank, self.s = learning_rate, rank, n_landmarks
    self.rtol, self.max_iter, self.eigensolver, self.key = rtol, max_iter, eigensolver, key
    self.progress, self.checkpoint, self.every = progress, checkpoint, checkpoint_every
    self.fingerprint = fingerprint
    self.precond = None
    self.alpha_inf = None
    self.gd = None          # (step, alpha, K alpha) of the finite-t iteration
    self.saved = {}         # step -> (alpha, K alpha)
    pre = (f"nystrom-rpcholesky(rank={rank}, landmarks={n_landmarks})" if rank
           else "none")
    self.info = KernelSolveInfo("matrix_free", "pcg", pre)

  def product(self, V):
    out = np.asarray(self.op @ jnp.asarray(V), np.float64)
    return out + self.ridge * V if self.ridge else out

  def _preconditioner(self):
    if self.rank == 0:
      return None
    vals, U, wide, _ = _rpcholesky_pairs(self.op, self.rank, self.s, self.key,
                                         dtype=_precond_vector_dtype(self.op.block_dtype))
    # S of the MSK with g = flatten on K̂ + ρI: the top r−1 pairs flattened to λ̂_r + ρ
    kk = vals.size - 1
    if kk < 1:
      return None
    lam = jnp.asarray(vals + self.ridge, jnp.float64)
    t = 0 if wide is None else min(wide.shape[1], kk)

    def spec(lo, hi, vecs):      # the pairs lo..hi−1 (S is a sum over pairs)
      return _msk.check_spectrum(_msk.MSKSpectrum(lam[lo:hi], jnp.asarray(vecs),
                                                  jnp.full((hi - lo,), lam[kk]), lam[kk]))
    # validated once here; each CG iteration applies S without re-checking its n·r entries
    parts = [spec(0, t, wide[:, :t])] if t else []
    if t < kk:
      parts.append(spec(t, kk, U[:, t:kk]))
    del U, wide

    def apply(R):
      R = jnp.asarray(R)
      out = R
      for sp in parts:        # S R = R + Σ_parts V D Vᵀ R
        out = out + (_msk.apply_preconditioner(sp, R, check_spec=False) - R)
      return np.asarray(out, np.float64)
    return apply

  def _solve_inf(self):
    if self.precond is None:
      t0 = time.perf_counter()
      self.precond = self._preconditioner() or (lambda r: r)
      self.info = self.info._replace(setup_seconds=self.info.setup_seconds
                                     + time.perf_counter() - t0)
    alpha, si = _solve.pcg(self.product, self.Y, precond=self.precond, rtol=self.rtol,
                           max_iter=self.max_iter, progress=self.progress,
                           checkpoint=self.checkpoint, checkpoint_every=self.every,
                           fingerprint=self.fingerprint)
    if not si.converged:
      warnings.warn(f"kernel_gd_mse: CG stopped after {si.iterations} iterations at relative "
                    f"residual {float(np.max(si.residuals)):.3g} > rtol = {self.rtol:g}; raise "
                    "max_iter or precond_rank (predict_fn.info has the history).",
                    UserWarning, stacklevel=3)
    self.info = self.info._replace(iterations=si.iterations, residuals=si.residuals,
                                   converged=si.converged, history=si.history)
    # K α = Y − ρ α − r with r CG's final residual: the train predictions, no extra product
    return alpha, self.Y - self.ridge * alpha - si.residual.reshape(self.Y.shape)

  def _dynamics(self):
    """The MSK spectrum of S_g (None: S = I), η and the eigensolver's relative residual for
    the finite-t iteration."""
    kk = 1 if self.g is None else self.k + 1
    if self.eigensolver == "krylov":
      top, ei = _spectrum.eigh_top(self.op, kk, method="krylov", key=self.key,
                                   return_info=True)
      res = float(np.max(np.asarray(ei.residuals)) / max(float(top.values[0]), 1e-300))
    else:
      top = _spectrum.eigh_top(self.op, kk, method="nystrom", key=self.key,
                               n_landmarks=max(self.s, kk))
      res = None
    top = _spectrum.Eigenpairs(jnp.asarray(top.values, jnp.float64),
                               jnp.asarray(top.vectors, jnp.float64))
    if self.g is not None:
      # Round-off of the eigenvalues: the products sum in float64 (the n·eps·λ₁ floor of
      # msk_spectrum_from_eigenpairs, in float64); each kernel entry carries the relative
      # rounding ε of the blocks' dtype, which moves an eigenvalue by at most ε·‖|K|‖₂
      # (= ε·λ₁ for a kernel with non-negative entries): λ_k must clear that, with margin.
      eps_b = float(np.finfo(np.dtype(self.op.block_dtype)).eps)
      lam = np.asarray(top.values)
      floor = 64 * eps_b * float(lam[0])
      if lam[self.k - 1] <= floor:
        usable = int(np.sum(lam > floor))
        raise ValueError(
            f"`k`={self.k}: λ_k = {lam[self.k - 1]:.3g} is within the rounding of the "
            f"{np.dtype(self.op.block_dtype).name} kernel blocks (64·eps·λ₁ = {floor:.3g}); "
            f"{usable} eigenvalues clear it. Lower `k` to at most {max(usable - 1, 0)} or pass "
            "kernel_dtype=jnp.float64.")
    spec = _shifted_spectrum(top, self.g, self.k, self.ridge, self.op.n, np.float64)
    lam_max = (float(top.values[0]) + self.ridge if spec is None
               else float(spec.max_value))
    eta = self.learning_rate if self.learning_rate is not None else 1.0 / lam_max
    return spec, float(eta), res

  # -- the finite-t iteration's checkpoint: PATH + '.gd.npz' beside the CG one ----------
  _GD_NAMES = ("step", "alpha", "Ka", "eta", "eig_residual", "has_spec", "values", "vectors",
               "new_values", "next_value", "saved_t", "saved_alpha", "saved_Ka", "elapsed")

  def _gd_path(self):
    return None if self.checkpoint is None else self.checkpoint + ".gd.npz"

  def _gd_fingerprint(self):
    return dict(self.fingerprint, kind="kernel-gd", g=repr(self.g), k=self.k,
                learning_rate=self.learning_rate, eigensolver=self.eigensolver)

  def _save_gd(self, elapsed):
    step, alpha, Ka, spec, eta, res = self.gd
    ts = sorted(self.saved)
    z = np.zeros(0)
    _solve.save_arrays(self._gd_path(), dict(
        step=np.int64(step), alpha=alpha, Ka=Ka, eta=np.float64(eta),
        eig_residual=np.float64(np.nan if res is None else res),
        has_spec=np.bool_(spec is not None),
        values=z if spec is None else np.asarray(spec.values),
        vectors=z if spec is None else np.asarray(spec.vectors),
        new_values=z if spec is None else np.asarray(spec.new_values),
        next_value=z if spec is None else np.asarray(spec.next_value),
        saved_t=np.asarray(ts, np.int64),
        saved_alpha=np.stack([self.saved[t][0] for t in ts]),
        saved_Ka=np.stack([self.saved[t][1] for t in ts]),
        elapsed=np.float64(elapsed)), self._gd_fingerprint())

  def _load_gd(self):
    z = _solve.load_arrays(self._gd_path(), self._gd_fingerprint(), self._GD_NAMES)
    if z is None:
      return None
    if z["alpha"].shape != self.Y.shape:
      raise ValueError(f"`checkpoint` {self._gd_path()!r} holds iterates of shape "
                       f"{z['alpha'].shape}, the problem has {self.Y.shape}; delete it or "
                       "pass another path.")
    spec = (_msk.MSKSpectrum(jnp.asarray(z["values"]), jnp.asarray(z["vectors"]),
                             jnp.asarray(z["new_values"]), jnp.asarray(z["next_value"]))
            if bool(z["has_spec"]) else None)
    res = float(z["eig_residual"])
    self.saved = {int(t): (a, b) for t, a, b in zip(z["saved_t"], z["saved_alpha"],
                                                     z["saved_Ka"])}
    return (int(z["step"]), z["alpha"], z["Ka"], spec, float(z["eta"]),
            None if np.isnan(res) else res), float(z["elapsed"])

  def _advance(self, ts):
    """Runs α ← α + η S_g (Y − (K + ρI) α) to every requested t, one product per step, with
    progress (``progress``) and, with ``checkpoint``, a saved state every
    ``checkpoint_every`` steps, at the end and on ``KeyboardInterrupt``; a later call with
    the same checkpoint resumes from its last step."""
    elapsed0 = 0.0
    if self.gd is None:
      t0 = time.perf_counter()
      loaded = self._load_gd() if self.checkpoint is not None else None
      if loaded is not None:
        self.gd, elapsed0 = list(loaded[0]), loaded[1]
      else:
        spec, eta, res = self._dynamics()
        z = np.zeros_like(self.Y)
        self.gd = [0, z, z.copy(), spec, eta, res]
        self.saved[0] = (z, z.copy())
      self.info = self.info._replace(
          setup_seconds=self.info.setup_seconds + time.perf_counter() - t0,
          eigensolver=self.eigensolver, eig_residual=self.gd[5], learning_rate=self.gd[4])
    step, alpha, Ka, spec, eta, _ = self.gd
    apply_s = ((lambda R: R) if spec is None else
               (lambda R: np.asarray(_msk.apply_preconditioner(spec, jnp.asarray(R),
                                                               check_spec=False), np.float64)))
    report = _solve.check_progress(self.progress, "kernel GD")
    ynorm = np.linalg.norm(self.Y, axis=0)
    ynorm = np.where(ynorm > 0, ynorm, 1.0)
    want = sorted({int(t) for t in ts if int(t) not in self.saved})
    t_run = time.perf_counter()
    last_saved = step

    def save():
      nonlocal last_saved
      self.gd[:3] = [step, alpha, Ka]
      if self.checkpoint is not None and last_saved != step:
        self._save_gd(elapsed0 + time.perf_counter() - t_run)
        last_saved = step

    try:
      for target in want:
        if target < step:    # earlier than the iterate kept: restart from 0
          step, alpha, Ka = 0, np.zeros_like(self.Y), np.zeros_like(self.Y)
        while step < target:
          # (α, Kα, step) change together: an interrupt inside the product saves the last step
          new_alpha = alpha + eta * apply_s(self.Y - Ka - self.ridge * alpha)
          new_Ka = np.asarray(self.op @ jnp.asarray(new_alpha), np.float64)
          alpha, Ka, step = new_alpha, new_Ka, step + 1
          self.info = self.info._replace(gd_steps=self.info.gd_steps + 1)
          if report is not None:
            rel = np.linalg.norm(self.Y - Ka - self.ridge * alpha, axis=0) / ynorm
            report(_solve.SolveProgress(step, float(rel.max()), rel,
                                        elapsed0 + time.perf_counter() - t_run, 0, alpha))
          if self.checkpoint is not None and step % self.every == 0:
            save()
        self.saved[target] = (alpha, Ka)
    except KeyboardInterrupt:
      save()
      raise
    save()

  def coefficients(self, ts):
    ts = np.asarray(ts, np.float64)
    T = ts.size
    alphas = np.empty((T,) + self.Y.shape)
    train = np.empty_like(alphas)
    fin = np.isfinite(ts)
    if (~fin).any():
      if self.alpha_inf is None:
        self.alpha_inf = self._solve_inf()
      alphas[~fin] = self.alpha_inf[0]
      train[~fin] = self.alpha_inf[1]
    if fin.any():
      self._advance(ts[fin])
      for i in np.flatnonzero(fin):
        alphas[i], train[i] = self.saved[int(ts[i])]
    return alphas, train

  def cross(self, xt, V):
    return np.asarray(self.op.cross(xt, V), np.float64)
