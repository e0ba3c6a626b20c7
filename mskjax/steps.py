r"""Step rules for (preconditioned) gradient descent on real networks.

* :func:`stable_learning_rate` -- with ``loss_fn``: ``safety/λ̂`` from the measured top
  positive eigenvalue λ̂ of the preconditioned loss Hessian ``P^½ ∇²L P^½`` (Lanczos on
  Hessian-vector products; any loss, residual term included); without it, the
  critical-batch step of Ma, Bassily & Belkin (2018) for the linearised model (MSE).
* :func:`curvature_estimator` -- a jitted ``estimate(params, batch) -> (η, λ̂)`` to
  re-estimate the step during training (the curvature moves: on the MNIST-1D MLP it grew
  4.5× early and fell below its initial value late).
* :func:`set_learning_rate` -- put a new step into an ``optax.inject_hyperparams`` state
  (no recompilation).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import numpy as np

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from mskjax import _validate as _v
from mskjax.directions import MSKDirections, check_directions, few_blas_threads
from mskjax.tangents import check_float_params, in_background

__all__ = ["stable_learning_rate", "curvature_estimator", "set_learning_rate"]

#: η = SAFETY/λ̂: 3/8 of the edge 2/λ̂ of GD on the local quadratic model at θ₀. Measured
#: (``benchmarks/README.md``, "The measured step rule vs a factor-2 grid": msk_sgd without
#: momentum, λ̂ at init on one batch of the training size, steps 0.25–6/λ̂ on every seed):
#: 2/λ̂ diverges within 12 steps on the digits README example (3/3 seeds), the regression
#: MLP, and one of three MNIST-1D MLP seeds at b = 512, and the CNN falls to 0.50 test
#: accuracy; 1/λ̂ blew up the digits example on one seed of three (train CE back to chance
#: at step 100) and the CNN on one of three (step 579); 0.75/λ̂ ran stably in all 27 runs
#: (6–8 seeds per classification setting, the CNN for 2000 steps, the regression MLP's one
#: initialisation for 2000; one CNN seed of six dipped and recovered three times), is the best step stable on every seed of digits
#: and the CNN, and within 2× of the best step of its own factor-2 grid everywhere — but the
#: MNIST-1D MLP's best of all steps tried, 2/λ̂ (where it trains past the quadratic edge as
#: λ̂ grows 4.5×), is 2.67× it.
#: The curvature at init bounds neither direction: it grows early and falls late.
SAFETY = 0.75


def _lanczos_step(matvec, j, carry):
  """Lanczos step ``j`` on the carry ``(V, α, β)`` (jittable; ``j`` may be traced).

  ``V`` (iters+1, dim) holds the basis rows, row 0 the normalised start vector. Full
  re-orthogonalisation against the stored basis in the vector dtype; the top of the
  tridiagonal's spectrum converges to the top *positive* eigenvalue of a symmetric operator
  (plain power iteration converges to the largest |eigenvalue|, which for a loss Hessian
  away from a minimum can be a negative one).
  """
  V, alpha, beta = carry
  w = matvec(V[j])
  a = jnp.dot(w, V[j])
  w = w - V.T @ (V @ w)          # full re-orthogonalisation (rows > j are zero)
  w = w - V.T @ (V @ w)
  b = jnp.linalg.norm(w)
  safe = jnp.where(b > 0, b, 1.0)
  V = V.at[j + 1].set(jnp.where(b > 0, w / safe, 0.0))
  return V, alpha.at[j].set(a), beta.at[j].set(b)


def _lanczos_top(alpha, beta, xp=jnp):
  """Largest algebraic Ritz value: top eigenvalue of the tridiagonal T(α, β) (``xp``: jnp
  inside jit, numpy on the host)."""
  T = xp.diag(alpha) + xp.diag(beta[:-1], 1) + xp.diag(beta[:-1], -1)
  return xp.linalg.eigvalsh(T)[-1]


def _start_vector(seed, flat):
  v0 = jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype)
  return v0 / jnp.linalg.norm(v0)


def _preconditioned_hessian(loss_fn, params, batch, Q, ch):
  """``(v ↦ P^½ ∇²L P^½ v, flat params)`` on flat vectors (traceable).

  ``Q`` (k, #params): the directions as flat rows (None: P = I), ``ch = √(g/λ) − 1``, so
  ``P^½ v = v + Qᵀ (ch ⊙ Q v)`` — two GEMVs (cheaper to compile than the pytree form).
  """
  check_float_params(params, "curvature_estimator")
  flat, unravel = ravel_pytree(params)
  grad_flat = lambda v: ravel_pytree(jax.grad(loss_fn)(unravel(v), batch))[0]
  hvp = lambda v: jax.jvp(grad_flat, (flat,), (v,))[1]
  if Q is None:
    return hvp, flat
  Q = Q.astype(flat.dtype)
  ch = ch.astype(flat.dtype)
  half = lambda v: v + Q.T @ (ch * (Q @ v))
  return (lambda v: half(hvp(half(v)))), flat


def _flat_directions(directions, where):
  """``(Q, ch)``: the directions as host rows (k, #params) in ``ravel_pytree`` order and
  ``√(g/λ) − 1`` (None, None without directions)."""
  if directions is None:
    return None, None
  values, new_values = check_directions(directions, where)
  leaves = jax.tree.leaves(directions.directions)
  k = int(np.shape(values)[0])
  dt = np.result_type(*[np.asarray(l).dtype for l in leaves])
  Q = np.concatenate([np.asarray(l, dt).reshape(k, -1) for l in leaves], axis=1)
  ratio = np.asarray(new_values, np.float64) / np.asarray(values, np.float64)
  ch = np.sqrt(np.maximum(ratio, np.finfo(np.float64).tiny)) - 1.0
  return Q, ch.astype(dt)


def _check_layout(directions, params, where):
  """The directions' leaves must be (k, *leaf shape) of ``params``' leaves, same pytree."""
  if directions is None:
    return
  ds, ps = jax.tree.structure(directions.directions), jax.tree.structure(params)
  k = int(np.shape(directions.values)[0])
  shapes = [tuple(np.shape(l)) for l in jax.tree.leaves(directions.directions)]
  want = [(k,) + tuple(np.shape(l)) for l in jax.tree.leaves(params)]
  if ds != ps or shapes != want:
    raise ValueError(f"{where}: `directions.directions` does not match `params` (pytrees "
                     f"{ds} vs {ps}; leaf shapes {shapes} vs (k, *param shape) {want}); build "
                     "the directions from the same parameter pytree (for flax linen: "
                     "variables['params']).")


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

  Q, ch = _flat_directions(directions, "curvature_estimator")
  if Q is not None:
    Q, ch = jnp.asarray(Q), jnp.asarray(ch)

  def estimate(params, batch):
    _check_layout(directions, params, "curvature_estimator")
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
  V = jnp.zeros((n + 1, flat.shape[0]), flat.dtype).at[0].set(_start_vector(seed, flat))
  carry = (V, jnp.zeros((n,), flat.dtype), jnp.zeros((n,), flat.dtype))
  _, alpha, beta = jax.lax.fori_loop(0, n, lambda j, c: _lanczos_step(op, j, c), carry)
  return _lanczos_top(alpha, beta)


#: XLA options of the one-off Hessian-vector product: LLVM at -O0. On XLA:CPU the HVP's
#: time is in library GEMMs/convolutions, which -O0 does not slow; the compilation halves
#: (MNIST-1D MLP, 78k parameters: 1.5–1.8 s → 0.8 s; ``benchmarks/README.md``, "The one-off
#: cost of `msk_sgd`"). Local to this one program: no JAX setting changes.
ONE_OFF_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnums=(0,), compiler_options=ONE_OFF_COMPILER_OPTIONS)
def _flat_hvp(loss_fn, params, batch, v):
  """``∇²L(params; batch) v`` on a flat vector (``ravel_pytree`` order); compiled once per
  (loss_fn, shapes): repeated one-off calls with the same ``loss_fn`` reuse it."""
  flat, unravel = ravel_pytree(params)
  grad_flat = lambda w: ravel_pytree(jax.grad(loss_fn)(unravel(w), batch))[0]
  return jax.jvp(grad_flat, (flat,), (v,))[1]


def _host_lanczos(matvec, v0, n):
  """``n`` Lanczos steps of :func:`_lanczos_step` on the host (float64 basis, full
  re-orthogonalisation twice), ``matvec`` a host map of float64 vectors; returns (α, β)."""
  V = np.zeros((n + 1, v0.shape[0]))
  V[0] = v0
  alpha, beta = np.zeros(n), np.zeros(n)
  for j in range(n):
    w = np.array(matvec(V[j]), np.float64)    # a writable copy
    alpha[j] = w @ V[j]
    w -= V.T @ (V @ w)            # rows > j are zero
    w -= V.T @ (V @ w)
    beta[j] = np.linalg.norm(w)
    if beta[j] > 0:
      V[j + 1] = w / beta[j]
  return alpha, beta


def _measure_top(loss_fn, directions, params, batch, iters, seed):
  """λ̂ of :func:`curvature_estimator` for a one-off call: the same Lanczos iteration from
  the same start vector, with only the Hessian-vector product compiled
  (:func:`_flat_hvp`, a small program compiled at LLVM -O0, reused by later calls with the
  same ``loss_fn``); ``P^½ u = u + Qᵀ(ch ⊙ Q u)`` (two GEMVs in the parameters' dtype) and
  the re-orthogonalisation run in numpy, the tridiagonal solved on the host. The
  compilation starts in a worker thread (XLA releases the GIL) while the main thread draws
  the start vector and flattens the directions (``benchmarks/README.md``, "The one-off cost
  of `msk_sgd`")."""
  Q, ch = _flat_directions(directions, "stable_learning_rate")
  _check_layout(directions, params, "stable_learning_rate")
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
    half = lambda u: u + Q.T @ (ch * (Q @ u))
  else:
    half = lambda u: u
  matvec = lambda u: half(np.asarray(_flat_hvp(loss_fn, params, batch, half(u.astype(dt)))))
  with few_blas_threads(v0.size * (n + 1)):   # GEMVs on (n+1, #params): one BLAS thread
    alpha, beta = _host_lanczos(matvec, v0 / np.linalg.norm(v0), n)
  return _lanczos_top(alpha, beta, xp=np)


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

  In a user's own loop call ``est`` every N steps the same way. (Measured on the MNIST-1D
  MLP, re-estimating did not beat the step fixed at initialisation, and a step raised
  after λ̂ fell diverged: ``benchmarks/README.md``, "The measured step rule vs a factor-2
  grid".)

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
                         lambda_max=None, beta=None, n_points=None,
                         reduction: str = "mean", loss_fn: Optional[Callable] = None,
                         params=None, batch=None, safety: float = SAFETY, iters: int = 20,
                         critical_batch: bool = False, seed: int = 0) -> float:
  r"""Largest useful step of (preconditioned) minibatch SGD.

  **Measured (recommended; give** ``loss_fn``, ``params``, ``batch``\ **).** η = safety/λ̂
  with λ̂ the top positive eigenvalue of ``P^½ ∇²L(θ; batch) P^½`` (Lanczos on exact
  Hessian-vector products, :func:`curvature_estimator`; ``directions=None``: plain SGD).
  Any loss; the residual term of the Hessian is included. Pass a batch of the size you
  train with. With ``critical_batch=True`` and directions that carry β, the result is the
  min of that and the critical-batch rule below (sound for MSE, where the rule's
  Gauss–Newton curvature is the loss's; for cross-entropy the rule is ~16× too small,
  so it is off by default). Measured against a factor-2 grid on every seed (MNIST-1D MLP
  b = 128 / 512 and CNN, the digits README example, a regression MLP; ``benchmarks/
  README.md``, "The measured step rule vs a factor-2 grid"): the default never diverged
  (27 runs), and the best step was 1–2× it (MLP: 2×; the best of every step tried there, 2/λ̂, is
  2.7× it). The curvature moves during training (MNIST-1D MLP at 1/λ̂: λ̂ rose 4.5× in
  500 steps, then fell to a quarter of its initial value by step 2000, the run stable
  throughout); re-estimating the step from it (:func:`curvature_estimator`) did not pay
  there: every 250 steps at 0.75/λ̂_t it cut the step 3–5.5× while λ̂ was high (final test
  accuracy 0.654 vs 0.680 at the fixed step), and at 1.5/λ̂_t it raised the step 2.5× once
  λ̂ fell and diverged at step 1026 (fixed: 0.723).

  **Linearised model (no** ``loss_fn``\ **).**

  Ma, Bassily & Belkin (2018), applied to the MSK ``K_g``: with the operator eigenvalue
  ``λ = λ_max(K_g)/N`` (N points the kernel was built on) and ``β = max_x λ_max(K_g(x, x))``
  (the largest per-point c×c block), the step for the batch-mean loss
  ``(1/b) Σ_{j∈B} ½‖f(x_j) − y_j‖²`` is

  .. math:: \eta^*(b) = \frac{b}{\beta + (b - 1)\,\lambda}.

  It grows linearly in b up to the critical batch size ``b* ≈ β/λ`` and saturates at
  the full-batch value ≈ 1/λ (= N/λ_max(K_g) for the mean loss) beyond. In expectation
  the error on the stiffest direction contracts for η < 2η*(b) (exactly so when all
  points have the same β), so η*(b) sits at half the mean-square divergence threshold;
  tests/test_precond_step.py measures the threshold. For a summed batch loss
  (``reduction='sum'``) the step is η*(b)/b. For cross-entropy the logit Hessian is at
  most ½·I (Gauss–Newton), so the same rule is conservative by up to 2×.

  Args:
    directions: :class:`MSKDirections` with ``beta`` and ``n_points`` (from
      :func:`msk_directions`); or None and give the three numbers below (or, with
      ``loss_fn``, None for plain SGD).
    batch_size: b ≥ 1.
    lambda_max: λ_max(K_g) of the Gram matrix (default ``directions.max_value``).
    beta: β (default ``directions.beta``).
    n_points: N, the size of that Gram matrix in points (default ``directions.n_points``).
    reduction: ``'mean'`` (loss averaged over the batch) or ``'sum'``.
    loss_fn: ``loss_fn(params, batch) -> scalar``: measure the curvature (see above).
    params, batch: where to measure it (required with ``loss_fn``).
    safety: η = safety/λ̂ (default :data:`SAFETY` = 0.75, 3/8 of the quadratic edge 2/λ̂).
    iters: Lanczos steps.
    critical_batch: also take the min with the critical-batch rule (needs β).
    seed: Lanczos start vector.

  Returns:
    η as a Python float.

  Example:
    >>> from mskjax import optim
    >>> optim.stable_learning_rate(batch_size=1, lambda_max=100.0, beta=2.0, n_points=100)
    0.5
    >>> optim.stable_learning_rate(batch_size=100, lambda_max=100.0, beta=2.0, n_points=100)
    0.9900990099009901
    >>> import jax.numpy as jnp                            # measured: H = diag(b), λ̂ = 4
    >>> round(optim.stable_learning_rate(loss_fn=lambda w, b: 0.5 * jnp.sum(b * w ** 2),
    ...                                  params=jnp.ones(3), batch=jnp.array([4.0, 1.0, -9.0]),
    ...                                  iters=3), 4)              # SAFETY / λ̂ = 0.75 / 4
    0.1875

  References:
    S. Ma, R. Bassily, M. Belkin, *The power of interpolation: understanding the
    effectiveness of SGD in modern over-parametrized learning*, ICML 2018.
  """
  batch_size = _v.check_int(batch_size, "batch_size", lo=1)
  if loss_fn is not None:
    if params is None or batch is None:
      raise ValueError("stable_learning_rate: with `loss_fn` pass `params` and `batch` (where "
                       "to measure the curvature).")
    if not callable(loss_fn):
      raise TypeError("stable_learning_rate: `loss_fn` must be callable loss_fn(params, "
                      f"batch); got {type(loss_fn).__name__}.")
    iters = _v.check_int(iters, "iters", lo=2)
    safety = _v.check_real(safety, "safety", lo=0, lo_open=True)
    lam = float(_measure_top(loss_fn, directions, params, batch, iters, seed))
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
      eta = min(eta, stable_learning_rate(directions, batch_size, reduction=reduction))
    return eta
  if reduction not in ("mean", "sum"):
    raise ValueError(f"stable_learning_rate: `reduction` must be 'mean' or 'sum'; got "
                     f"{reduction!r}.")
  if directions is not None:
    check_directions(directions, "stable_learning_rate")
    lambda_max = directions.max_value if lambda_max is None else lambda_max
    beta = directions.beta if beta is None else beta
    n_points = directions.n_points if n_points is None else n_points
  for name, val in (("lambda_max", lambda_max), ("beta", beta), ("n_points", n_points)):
    if val is None:
      raise ValueError(f"stable_learning_rate: `{name}` is unknown; pass it or build the "
                       "directions with optim.msk_directions (which computes it).")
    _v.check_scalar(val, name, positive=True)
    if not _v.is_concrete(val):
      raise TypeError(f"stable_learning_rate: `{name}` must be concrete (call it outside jit).")
    if not np.isfinite(float(val)) or float(val) <= 0:
      raise ValueError(f"stable_learning_rate: `{name}` must be a positive finite number; "
                       f"got {float(val)!r}.")
  b = int(batch_size)
  lam = float(lambda_max) / float(n_points)
  eta = b / (float(beta) + (b - 1) * lam)
  return eta / b if reduction == "sum" else eta
