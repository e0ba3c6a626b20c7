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

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mskjax import _validate as _v
from mskjax import modifiers as _modifiers
from mskjax import msk as _msk
from mskjax import spectrum as _spectrum

__all__ = ["Predictions", "gradient_descent_mse", "predict_gd_mse", "steps_to_tolerance",
           "EDGE_RTOL"]


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


def _lambda_max(mu, what: str) -> float:
  top = float(np.max(np.asarray(mu)))
  if not top > 0:
    raise ValueError(f"{what} is zero (λ_max = 0): gradient descent never moves, so there is "
                     "no step size or iteration count; check the kernel.")
  return top


def _default_step(mu, learning_rate, what):
  """η: ``learning_rate``, or 1/λ_max(K_g) when it is None (the one meaning of None)."""
  if learning_rate is not None:
    return learning_rate
  if _v.is_concrete(mu):
    return 1.0 / _lambda_max(mu, what)
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
    top = _lambda_max(mu, "`K`" if g is None else "`K_g`")
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
