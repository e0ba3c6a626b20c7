r"""Step rules for (preconditioned) gradient descent: every rule in one module.

* :func:`kernel_step` -- the full-batch step ``factor/λ_max`` of kernel GD with K or K_g
  (the paper's step; the linearised network).
* :func:`max_learning_rate` -- the edge ``2/λ_max`` of that iteration.
* :func:`stable_learning_rate` -- ``safety/λ̂`` from the measured top positive eigenvalue λ̂
  of the preconditioned loss Hessian ``P^½ ∇²L P^½`` (Lanczos on Hessian-vector
  products; any loss, residual term included).
* :func:`critical_batch_learning_rate` -- the minibatch step of Ma, Bassily & Belkin
  (2018) for the linearised model (MSE), from λ_max(K_g), β and the batch size.
* :func:`curvature_estimator` -- a jitted ``estimate(params, batch) -> (η, λ̂)`` to
  re-estimate the step during training.
* :func:`set_learning_rate` -- put a new step into an ``optax.inject_hyperparams`` state
  (no recompilation).

Measured behaviour of these rules: ``docs/results.md#the-measured-step-rule-against-a-factor-2-grid``.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, NamedTuple, Optional

import numpy as np

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from mskjax import _linalg
from mskjax import _validate as _v
from mskjax import modifiers as _modifiers
from mskjax import msk as _msk
from mskjax import spectrum as _spectrum
from mskjax.directions import MSKDirections, check_directions, flat_rows
from mskjax._loops import in_background
from mskjax._validate import check_float_params

__all__ = ["kernel_step", "max_learning_rate", "stable_learning_rate",
           "critical_batch_learning_rate", "curvature_estimator", "set_learning_rate",
           "StepInfo"]

#: η = SAFETY/λ̂: 3/8 of the edge 2/λ̂ of GD on the local quadratic model at θ₀ (the
#: curvature at init bounds neither direction: it grows early and falls late).
SAFETY = 0.75


class StepInfo(NamedTuple):
  """What :func:`stable_learning_rate` measured (``return_info=True``).

  Attributes:
    learning_rate: η (a Python float).
    curvature: λ̂, the top positive Ritz value of ``P^½ ∇²L P^½`` (η = safety/λ̂).
    residual: ``‖A y − λ̂ y‖`` of its unit Ritz vector y (A = P^½ ∇²L P^½), the Lanczos
      residual: λ̂ is within it of an eigenvalue of A.
    iters: Lanczos steps taken.
  """
  learning_rate: float
  curvature: float
  residual: float
  iters: int


# ------------------------------------------------------------------ linearised (kernel) rules
def kernel_step(top, factor: float = 1.0) -> float:
  """The paper's full-batch step on the summed loss ½‖r‖², η = factor / λ_max.

  For kernel GD (and the linearised network) with the Gram matrix K_g, every mode
  contracts monotonically for η ≤ 1/λ_max(K_g) and the run diverges past 2/λ_max(K_g)
  (:func:`max_learning_rate`). ``top`` is what carries λ_max: an
  :class:`~mskjax.MSKSpectrum` or :class:`~mskjax.MSKDirections` (its ``max_value`` =
  max(g(λ_i), λ_{k+1})), or the number itself (λ₁ for plain GD). For a loss averaged over
  n points multiply by n (``docs/theory.md``, "Loss normalisation"); for minibatches and
  real networks use :func:`stable_learning_rate`.

  Args:
    top: MSKSpectrum / MSKDirections (anything with ``max_value``) or a positive λ_max.
    factor: multiplies the step (a config's ``*_factor``); positive.

  Returns:
    η as a Python float.

  Raises:
    ValueError: λ_max or ``factor`` not positive and finite.

  Example:
    >>> import jax.numpy as jnp
    >>> from mskjax.msk import MSKSpectrum
    >>> s = MSKSpectrum(jnp.array([4.0]), jnp.eye(2)[:, :1], jnp.array([1.0]), jnp.array(1.0))
    >>> kernel_step(s), kernel_step(4.0), kernel_step(4.0, factor=0.5)
    (1.0, 0.25, 0.125)
  """
  lam = getattr(top, "max_value", top)
  try:
    lam = float(lam)
  except (TypeError, ValueError):
    raise TypeError("kernel_step: `top` must be an MSKSpectrum / MSKDirections or a number "
                    f"λ_max; got {type(top).__name__}.") from None
  if not np.isfinite(lam) or lam <= 0:
    raise ValueError(f"kernel_step: λ_max must be positive and finite; got {lam!r} (an "
                     "indefinite or all-zero kernel has no stable step).")
  factor = float(factor)
  if not np.isfinite(factor) or factor <= 0:
    raise ValueError(f"kernel_step: `factor` must be positive and finite; got {factor!r}.")
  return factor / lam


def max_learning_rate(K, g: _modifiers.Modifier | None = None, k: int | None = None, *,
                      spectrum: _msk.MSKSpectrum | None = None,
                      eigenpairs: _spectrum.Eigenpairs | None = None) -> float:
  r"""Largest stable step of GD on ½‖r‖² with kernel K (or K_g): η < 2 / λ_max.

  GD: ``2 / λ₁``; PGD with an MSK: ``2 / max(g(λ₁..λ_k), λ_{k+1})``. (neural-tangents'
  ``predict.max_learning_rate`` is broken on current SciPy; this is the spectral form.)
  ``learning_rate=None`` in :func:`mskjax.gradient_descent_mse`,
  :func:`mskjax.predict_gd_mse` and :func:`mskjax.steps_to_tolerance` means half this
  bound, η = 1/λ_max (:func:`kernel_step`, the step the paper uses). An indefinite K
  raises (no step is stable when an eigenvalue is negative).

  Args:
    K: ``(n, n)`` Gram matrix.
    g, k: optional modifier and number of modified eigenvalues.
    spectrum: a precomputed :class:`mskjax.MSKSpectrum` (then K, g, k are not used).
    eigenpairs: a precomputed full descending :class:`mskjax.Eigenpairs` of K (no new eigh).

  Returns:
    The bound 2 / λ_max as a Python float.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> K = jnp.diag(jnp.array([4.0, 2.0, 1.0]))
    >>> max_learning_rate(K), max_learning_rate(K, mskjax.modifiers.flatten(), 1)
    (0.5, 1.0)
  """
  if spectrum is not None:
    spectrum = _msk.check_spectrum(spectrum, name="spectrum")
    return 2.0 / _linalg.lambda_max(spectrum.max_value, "`spectrum`")
  if eigenpairs is not None:
    K = _v.check_square_symmetric(K, "K")
    with jax.enable_x64(True):
      full = _spectrum.check_eigenpairs(K, eigenpairs)
      if g is None:
        return 2.0 / _linalg.lambda_max(full.values, "`K`")
      k = _v.check_k(k, K.shape[0])
      spec = _msk.msk_spectrum_from_eigenpairs(full, g, k, dtype=K.dtype)
      return 2.0 / _linalg.lambda_max(spec.max_value, "`K_g`")
  if g is None:
    top = _spectrum.eigh_top(K, 1, method="dense").values
    return 2.0 / _linalg.lambda_max(top, "`K`")
  top = _msk.msk_spectrum(K, g, k, method="dense").max_value
  return 2.0 / _linalg.lambda_max(top, "`K_g`")


# ------------------------------------------------------------------ measured curvature
def _start_vector(seed, flat):
  v0 = jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype)
  return v0 / jnp.linalg.norm(v0)


def _preconditioned_hessian(loss_fn, params, batch, Q, ch):
  """``(v ↦ P^½ ∇²L P^½ v, flat params)`` on flat vectors (traceable).

  ``Q`` (k, #params): the directions as flat rows (None: P = I), ``ch = √(g/λ) − 1``, so
  ``P^½ v = v + Qᵀ (ch ⊙ Q v)`` — two GEMVs (cheaper to compile than the pytree form).
  """
  check_float_params(params, "curvature_estimator")
  flat, _ = ravel_pytree(params)
  hvp = lambda v: _linalg.flat_hvp(loss_fn, params, batch, v)
  if Q is not None:
    Q, ch = Q.astype(flat.dtype), ch.astype(flat.dtype)
  half = _linalg.half_preconditioner(Q, ch)
  return (lambda v: half(hvp(half(v)))), flat


def curvature_estimator(loss_fn: Callable, directions: Optional[MSKDirections] = None, *,
                        iters: int = 20, safety: float = SAFETY, seed: int = 0) -> Callable:
  r"""A jitted ``estimate(params, batch) -> (η, λ̂)`` for the preconditioned loss Hessian.

  .. math:: \hat\lambda = \lambda_{\max}^{+}\big(P^{1/2}\,
\nabla^2_\theta L(\theta; B)\,P^{1/2}\big),
     \qquad \eta = \text{safety}/\hat\lambda,

  with ``P^½ = I + Σ (√(g_i/λ_i) − 1) q_i q_iᵀ`` (``directions``; None: P = I, plain SGD).
  Hessian-vector products are ``jax.jvp`` of ``jax.grad`` (exact for any loss, the
  residual term ``Σ r_i ∇²f_i`` included — the Gauss–Newton part alone can miss the edge
  by orders of magnitude); ``iters`` Lanczos steps with full re-orthogonalisation give
  the top *positive* eigenvalue (``PHP`` is indefinite away from a minimum; power
  iteration would find the negative end). Preconditioned GD ``θ ← θ − η P ∇L`` is stable
  on the local quadratic model for η < 2/λ̂ (PH is similar to P^½HP^½).

  Cost: ``iters`` Hessian-vector products (≈ 2–3 gradient passes each) on ``batch`` plus
  O(iters · #params) memory for the Lanczos basis. Compiled once per (``loss_fn``,
  ``iters``, ``seed``, shapes) for the whole process: a new estimator with the same
  ``loss_fn`` object (new directions of the same k, another ``safety``) reuses the
  compilation. Call it every N steps during training and pass η to
  :func:`set_learning_rate`.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (the loss the optimizer minimises; use
      a batch of the training batch size: the batch Hessian's top eigenvalue carries the
      per-sample curvature that limits small-batch steps).
    directions: :class:`MSKDirections` of the preconditioner, or None (plain SGD).
    iters: Lanczos steps (≥ 2).
    safety: η = safety/λ̂ (default :data:`SAFETY` = 0.75, 3/8 of the quadratic edge 2/λ̂).
    seed: seed of the start vector.

  Returns:
    ``estimate(params, batch) -> (eta, lam)`` (jitted; scalar arrays).

  Example:
    >>> import jax.numpy as jnp
    >>> from mskjax import steps
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)      # Hessian diag(b)
    >>> est = steps.curvature_estimator(loss, iters=3)
    >>> eta, lam = est(jnp.ones(3), jnp.array([4.0, 1.0, -9.0]))
    >>> round(float(lam), 4), round(float(eta), 4)        # top positive, not |−9|; 0.75/λ̂
    (4.0, 0.1875)
  """
  if not callable(loss_fn):
    raise TypeError(f"curvature_estimator: `loss_fn` must be callable loss_fn(params, batch); "
                    f"got {type(loss_fn).__name__}.")
  iters = _v.check_int(iters, "iters", lo=2)
  safety = _v.check_real(safety, "safety", lo=0, lo_open=True)

  Q, ch = flat_rows(directions, "curvature_estimator")
  if Q is not None:
    Q, ch = jnp.asarray(Q), jnp.asarray(ch)

  def estimate(params, batch):
    if directions is not None:
      check_directions(directions, "curvature_estimator", params=params)
    lam = _estimate_top(loss_fn, iters, seed, params, batch, Q, ch)
    return jnp.asarray(safety, lam.dtype) / lam, lam

  return estimate


# One module-level compilation per (loss_fn, iters, seed, shapes): estimators built again
# with the same ``loss_fn`` (new directions, another safety) reuse it. The directions enter
# as arguments, not closed-over constants (XLA would constant-fold k parameter-sized arrays
# at compile time).
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _estimate_top(loss_fn, iters, seed, params, batch, Q, ch):
  op, flat = _preconditioned_hessian(loss_fn, params, batch, Q, ch)
  n = min(iters, flat.shape[0])
  alpha, beta = _linalg.lanczos_jit(op, _start_vector(seed, flat), n)
  return _linalg.tridiagonal_top(alpha, beta)[0]


#: XLA options of the one-off Hessian-vector product: LLVM at -O0. On XLA:CPU the HVP's
#: time is in library GEMMs/convolutions, which -O0 does not slow, and the compilation is
#: shorter. Local to this one program: no JAX setting changes.
ONE_OFF_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}

#: :func:`mskjax._linalg.flat_hvp` compiled once per (loss_fn, shapes) for the one-off
#: measurement: repeated calls with the same ``loss_fn`` reuse it.
_flat_hvp = jax.jit(_linalg.flat_hvp, static_argnums=(0,),
                    compiler_options=ONE_OFF_COMPILER_OPTIONS)


def _measure_top(loss_fn, directions, params, batch, iters, seed):
  """``(λ̂, residual, steps)`` of :func:`curvature_estimator` for a one-off call: the same
  Lanczos iteration from the same start vector, with only the Hessian-vector product
  compiled (:data:`_flat_hvp`, at LLVM -O0, reused by later calls with the same
  ``loss_fn``); ``P^½`` (two GEMVs in the parameters' dtype) and the re-orthogonalisation
  run in numpy, the tridiagonal is solved on the host. The compilation starts in a worker
  thread (XLA releases the GIL) while the main thread draws the start vector and flattens
  the directions."""
  Q, ch = flat_rows(directions, "stable_learning_rate")
  if directions is not None:
    check_directions(directions, "stable_learning_rate", params=params)
  check_float_params(params, "stable_learning_rate")
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise TypeError("stable_learning_rate: `params` has no array leaves; pass the parameters "
                    "`loss_fn` is differentiated against.")
  dt = np.dtype(jnp.result_type(*[jnp.asarray(l).dtype for l in leaves]))
  dim = sum(int(np.prod(np.shape(l))) for l in leaves)      # ravel_pytree's length
  n = min(iters, dim)
  compiled = in_background(lambda: _flat_hvp(loss_fn, params, batch,
                                             np.zeros(dim, dt)).block_until_ready())
  # _start_vector's draw (the same v0 as curvature_estimator), normalised on the host
  v0 = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (dim,), dt), np.float64)
  compiled.result()
  if Q is not None:
    Q, ch = Q.astype(dt), ch.astype(dt)
  half = _linalg.half_preconditioner(Q, ch)
  matvec = lambda u: half(np.asarray(_flat_hvp(loss_fn, params, batch, half(u.astype(dt)))))
  alpha, beta = _linalg.lanczos(matvec, v0 / np.linalg.norm(v0), n)
  lam, res = _linalg.tridiagonal_top(alpha, beta)
  return float(lam), float(res), n


def set_learning_rate(opt_state, learning_rate):
  """Put a new step into every ``optax.inject_hyperparams`` state inside ``opt_state``.

  Build the optimizer as ``optax.inject_hyperparams(optim.msk_sgd)(learning_rate=η,
  directions=d)`` (or any injected optax optimizer); the new value is an array of the
  same shape and dtype, so a jitted step does not recompile.

  With :func:`mskjax.train.fit`, train in segments and re-estimate between them (the
  compiled chunk is reused: the state has the same structure)::

    est = steps.curvature_estimator(lambda p, b: loss(p, b, None), d)
    res = fit(loss, params, tx, data, steps=500, batch_size=128)
    for _ in range(9):
      eta, _ = est(res.state.params, batch)            # a batch of the training size
      st = res.state._replace(opt_state=steps.set_learning_rate(res.state.opt_state, eta))
      res = fit(loss, None, tx, data, steps=500, batch_size=128, state=st)

  In a user's own loop call ``est`` every N steps the same way.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from mskjax import steps
    >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    >>> st = steps.set_learning_rate(tx.init(jnp.zeros(2)), 0.5)
    >>> tx.update(jnp.ones(2), st)[0].tolist()
    [-0.5, -0.5]
  """
  if _v.is_concrete(learning_rate):
    lr = float(np.asarray(learning_rate))
    if not np.isfinite(lr) or lr < 0:
      raise ValueError(f"set_learning_rate: `learning_rate` must be a finite number ≥ 0; got "
                       f"{lr!r}.")
  found = []
  is_inj = lambda s: isinstance(s, optax.InjectStatefulHyperparamsState)

  def put(s):
    if is_inj(s) and "learning_rate" in s.hyperparams:
      hp = dict(s.hyperparams)
      old = jnp.asarray(hp["learning_rate"])
      hp["learning_rate"] = jnp.asarray(learning_rate, old.dtype).reshape(old.shape)
      found.append(True)
      return s._replace(hyperparams=hp)
    return s

  out = jax.tree.map(put, opt_state, is_leaf=is_inj)
  if not found:
    raise ValueError("set_learning_rate: `opt_state` has no optax.inject_hyperparams state "
                     "with a 'learning_rate'; build the optimizer as "
                     "optax.inject_hyperparams(optim.msk_sgd)(learning_rate=η, directions=d).")
  return out


def stable_learning_rate(directions: Optional[MSKDirections] = None, batch_size: int = 1, *,
                         loss_fn: Optional[Callable] = None, params=None, batch=None,
                         safety: float = SAFETY, iters: int = 20, critical_batch: bool = False,
                         reduction: str = "mean", seed: int = 0, return_info: bool = False,
                         lambda_max=None, beta=None, n_points=None):
  r"""Largest useful step of (preconditioned) minibatch SGD from the measured curvature.

  .. math:: \eta = \text{safety}/\hat\lambda,\qquad
     \hat\lambda = \lambda_{\max}^{+}\big(P^{1/2}\,\nabla^2_\theta L(\theta; B)\,P^{1/2}\big)

  λ̂ the top positive eigenvalue of the preconditioned loss Hessian on ``batch`` (Lanczos
  with full re-orthogonalisation on exact Hessian-vector products, the same iteration as
  :func:`curvature_estimator`; ``directions=None``: plain SGD). Any loss; the residual term
  of the Hessian is included. Pass a batch of the size you train with. With
  ``critical_batch=True`` and directions that carry β, the result is the min of that and
  :func:`critical_batch_learning_rate` (sound for MSE, where that rule's Gauss–Newton
  curvature is the loss's; for cross-entropy it is far too small, so it is off by
  default). The curvature moves during training: re-estimate it with
  :func:`curvature_estimator`.

  Without ``loss_fn`` (deprecated spelling) this is :func:`critical_batch_learning_rate`
  (``batch_size``, ``lambda_max``, ``beta``, ``n_points``, ``reduction``).

  Args:
    directions: :class:`MSKDirections` of the preconditioner, or None (plain SGD).
    batch_size: b ≥ 1 (used by ``critical_batch``).
    loss_fn: ``loss_fn(params, batch) -> scalar`` (the loss the optimizer minimises).
    params, batch: where to measure the curvature.
    safety: η = safety/λ̂ (default :data:`SAFETY` = 0.75, 3/8 of the quadratic edge 2/λ̂).
    iters: Lanczos steps (≥ 2).
    critical_batch: also take the min with :func:`critical_batch_learning_rate` (needs β).
    reduction: of the batch loss, for ``critical_batch`` (``'mean'`` or ``'sum'``).
    seed: Lanczos start vector.
    return_info: also return a :class:`StepInfo` (λ̂ and its Lanczos residual).
    lambda_max, beta, n_points: the deprecated linearised spelling only.

  Returns:
    η as a Python float; ``(η, StepInfo)`` with ``return_info=True``.

  Example:
    >>> import jax.numpy as jnp                            # H = diag(b), λ̂ = 4
    >>> eta, info = stable_learning_rate(loss_fn=lambda w, b: 0.5 * jnp.sum(b * w ** 2),
    ...                                  params=jnp.ones(3), batch=jnp.array([4.0, 1.0, -9.0]),
    ...                                  iters=3, return_info=True)
    >>> round(eta, 4), round(info.curvature, 4), info.residual < 1e-6   # SAFETY / λ̂
    (0.1875, 4.0, True)
  """
  batch_size = _v.check_int(batch_size, "batch_size", lo=1)
  if loss_fn is None:
    warnings.warn("stable_learning_rate without `loss_fn` is the linearised minibatch rule: "
                  "call steps.critical_batch_learning_rate(directions, batch_size) instead.",
                  DeprecationWarning, stacklevel=2)
    if return_info:
      raise ValueError("stable_learning_rate: `return_info` reports the measured curvature; "
                       "pass `loss_fn`, `params` and `batch`.")
    return critical_batch_learning_rate(directions, batch_size, lambda_max=lambda_max,
                                        beta=beta, n_points=n_points, reduction=reduction)
  if params is None or batch is None:
    raise ValueError("stable_learning_rate: with `loss_fn` pass `params` and `batch` (where "
                     "to measure the curvature).")
  if not callable(loss_fn):
    raise TypeError("stable_learning_rate: `loss_fn` must be callable loss_fn(params, "
                    f"batch); got {type(loss_fn).__name__}.")
  iters = _v.check_int(iters, "iters", lo=2)
  safety = _v.check_real(safety, "safety", lo=0, lo_open=True)
  lam, res, n = _measure_top(loss_fn, directions, params, batch, iters, seed)
  if not np.isfinite(lam):
    raise ValueError(f"stable_learning_rate: the measured curvature is {lam!r} (the loss or "
                     "its gradient is not finite at `params`).")
  if lam <= 0:
    raise ValueError(f"stable_learning_rate: the preconditioned Hessian has no positive "
                     f"eigenvalue (top {lam:.3g}) at `params`: no curvature limits the step "
                     "here; measure at other parameters or a larger batch.")
  eta = float(safety) / lam
  if critical_batch:
    if directions is None or directions.beta is None:
      raise ValueError("stable_learning_rate: `critical_batch=True` needs directions with "
                       "`beta` (optim.msk_directions(..., compute_beta=True)).")
    eta = min(eta, critical_batch_learning_rate(directions, batch_size, reduction=reduction))
  return (eta, StepInfo(eta, lam, res, n)) if return_info else eta


def critical_batch_learning_rate(directions: Optional[MSKDirections] = None,
                                 batch_size: int = 1, *, lambda_max=None, beta=None,
                                 n_points=None, reduction: str = "mean") -> float:
  r"""The minibatch step of the linearised model (MSE) with the MSK ``K_g``.

  Ma, Bassily & Belkin (2018), applied to ``K_g``: with the operator eigenvalue
  ``λ = λ_max(K_g)/N`` (N points the kernel was built on) and ``β = max_x λ_max(K_g(x, x))``
  (the largest per-point c×c block), the step for the batch-mean loss
  ``(1/b) Σ_{j∈B} ½‖f(x_j) − y_j‖²`` is

  .. math:: \eta^*(b) = \frac{b}{\beta + (b - 1)\,\lambda}.

  It grows linearly in b up to the critical batch size ``b* ≈ β/λ`` and saturates at
  the full-batch value ≈ 1/λ (= N/λ_max(K_g) for the mean loss) beyond. In expectation
  the error on the stiffest direction contracts for η < 2η*(b) (exactly so when all
  points have the same β), so η*(b) sits at half the mean-square divergence threshold.
  For a summed batch loss (``reduction='sum'``) the step is η*(b)/b. For cross-entropy the
  logit Hessian is at most ½·I (Gauss–Newton), so the same rule is conservative by up to 2×.

  Args:
    directions: :class:`MSKDirections` with ``beta`` and ``n_points`` (from
      :func:`msk_directions`); or None and give the three numbers below.
    batch_size: b ≥ 1.
    lambda_max: λ_max(K_g) of the Gram matrix (default ``directions.max_value``).
    beta: β (default ``directions.beta``).
    n_points: N, the size of that Gram matrix in points (default ``directions.n_points``).
    reduction: ``'mean'`` (loss averaged over the batch) or ``'sum'``.

  Returns:
    η as a Python float.

  Example:
    >>> critical_batch_learning_rate(batch_size=1, lambda_max=100.0, beta=2.0, n_points=100)
    0.5
    >>> critical_batch_learning_rate(batch_size=100, lambda_max=100.0, beta=2.0, n_points=100)
    0.9900990099009901

  References:
    S. Ma, R. Bassily, M. Belkin, *The power of interpolation: understanding the
    effectiveness of SGD in modern over-parametrized learning*, ICML 2018.
  """
  where = "critical_batch_learning_rate"
  batch_size = _v.check_int(batch_size, "batch_size", lo=1)
  if reduction not in ("mean", "sum"):
    raise ValueError(f"{where}: `reduction` must be 'mean' or 'sum'; got {reduction!r}.")
  if directions is not None:
    check_directions(directions, where)
    lambda_max = directions.max_value if lambda_max is None else lambda_max
    beta = directions.beta if beta is None else beta
    n_points = directions.n_points if n_points is None else n_points
  for name, val in (("lambda_max", lambda_max), ("beta", beta), ("n_points", n_points)):
    if val is None:
      raise ValueError(f"{where}: `{name}` is unknown; pass it or build the directions with "
                       "optim.msk_directions (which computes it).")
    _v.check_scalar(val, name, positive=True)
    if not _v.is_concrete(val):
      raise TypeError(f"{where}: `{name}` must be concrete (call it outside jit).")
    if not np.isfinite(float(val)) or float(val) <= 0:
      raise ValueError(f"{where}: `{name}` must be a positive finite number; got "
                       f"{float(val)!r}.")
  b = int(batch_size)
  lam = float(lambda_max) / float(n_points)
  eta = b / (float(beta) + (b - 1) * lam)
  return eta / b if reduction == "sum" else eta
