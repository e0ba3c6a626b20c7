r"""The tracking MSK preconditioner: directions re-formed from the current Jacobian.

:func:`msk_sgd_tracking` / :func:`scale_by_msk_tracking` — **when one step moves the
weights by a sizeable fraction** (lazy / NTK-parameterised networks at the large steps
MSK allows): the fixed directions of :func:`mskjax.optim.msk_sgd` stop cancelling the
stiff function-space directions and training diverges. The tracking form re-forms the
directions from the current Jacobian at every update (one warm-started subspace step
+ Rayleigh–Ritz with ``rayleigh_ritz=True``, keeping the build's g/λ coefficients, the
default; or Löwdin on the fixed function-space vectors), or only when the parameters
moved by a set fraction (``moved=0.01``). When the explicit Jacobian of the s points fits
the memory budget it is formed once per update and the re-formation is GEMMs on it;
otherwise 2k VJPs + k JVPs. Any loss whose directions
:func:`mskjax.directions.msk_directions` built (``loss=``; H^½ re-evaluated at the current
outputs). Results: ``docs/results.md#iga-inrs-experiment-1-function-space-tracking-and-tuned-adam``.

:func:`reform_directions` is the re-formation itself (jittable; SVQB orthonormalisation and
the per-point H^½ of the loss's output Hessian come from the shared ``_linalg``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mskjax import kernels as _kernels
from mskjax import _linalg
from mskjax import _validate as _v
from mskjax import directions as _directions
from mskjax import tangents as _tangents
from mskjax.directions import MSKDirections


__all__ = ["ScaleByMSKTrackingState", "scale_by_msk_tracking", "msk_sgd_tracking",
           "reform_directions"]


class ScaleByMSKTrackingState(NamedTuple):
  """State of :func:`scale_by_msk_tracking`.

  Attributes:
    count: number of updates so far (int32).
    directions: the q_i in use, pytree like the parameters with leaves ``(k, *shape)``
      (re-formed at the current parameters every ``every`` updates).
    vectors: ``(s·c, k)`` the function-space vectors: the fixed v_i/√λ_i (Löwdin), or the
      current eigenvector estimates (``rayleigh_ritz``).
    coef: ``(k,)`` g_i/λ_i − 1 (with ``rayleigh_ritz``, λ_i the current Ritz values).
    anchor: parameters at the last re-formation (only with ``moved``; else None).
    reforms: number of re-formations done (int32).
  """
  count: jax.Array
  directions: Any
  vectors: jax.Array
  coef: jax.Array
  anchor: Any
  reforms: jax.Array


def reform_directions(apply_fn: Callable, params, x_points, vectors, *,
                      rayleigh_ritz: bool = False,
                      memory_budget: int = _kernels.DEFAULT_MEMORY_BUDGET,
                      loss="mse", targets=None):
  r"""Directions re-formed at ``params`` from function-space vectors (jittable).

  ``W`` = ``vectors`` (s·c × k, rows point·c + output) and ``J = ∂f(θ, x_points)/∂θ``;
  for a loss other than MSE, ``J`` stands for ``H^½ J`` with ``H^½`` the per-point root of
  the loss's output Hessian *at the current outputs* (``_linalg.loss_hessian_sqrt``), so the
  kernel tracked is the Gauss–Newton kernel ``H^½ J Jᵀ H^½`` that :func:`msk_directions`
  built the vectors from (``q = Jᵀ H^½ v / √λ``).

  * ``rayleigh_ritz=False``: ``Q = orth(Jᵀ W)`` by Löwdin, ``Q ← G^{-1/2} Jᵀ W`` with
    ``G = Wᵀ J Jᵀ W`` (k×k ``eigh``). The span of W is kept.
  * ``rayleigh_ritz=True``: one step of warm-started subspace iteration on the current
    empirical NTK ``K = J Jᵀ``: ``W ← orth(K W)`` (QR), then Rayleigh–Ritz: with
    ``Wᵀ K W = U Θ Uᵀ``, ``Q = Jᵀ W U Θ^{-1/2}`` (exactly orthonormal) and the new
    vectors ``W U`` (orthonormal eigenvector estimates of K) with Ritz values θ. The span
    follows the rotating eigenvectors.

  Construction, chosen by size (static, so one compilation): when the explicit Jacobian
  of the s points fits ``memory_budget`` (:func:`mskjax.tangents.jacobian_block_size`
  returns s: ``3·s·c·#params·itemsize ≤ memory_budget``), it is formed once per call
  (:func:`mskjax.tangents.point_jacobians`: one batched backward pass per output) and
  every product ``Jᵀ W`` / ``J Q`` is a GEMM (far cheaper than the matrix-free route when
  the Jacobian fits). Otherwise matrix-free: one forward pass, then k batched VJPs (Löwdin) or 2k VJPs + k JVPs
  (Rayleigh–Ritz) through ``jax.vmap``, which holds k copies of every activation.

  Args:
    apply_fn: ``apply_fn(params, x) -> (s,)`` or ``(s, c)``.
    params: the parameters (pytree of floating arrays).
    x_points: the s inputs.
    vectors: ``(s·c, k)`` function-space vectors.
    rayleigh_ritz: see above.
    memory_budget: bytes allowed for the explicit Jacobian (and two temporaries of its
      size); default :data:`mskjax.kernels.DEFAULT_MEMORY_BUDGET` (1 GiB).
    loss: ``'mse'`` (H = I), ``'softmax_cross_entropy'`` or a per-point callable
      ``ℓ(f_i, y_i)`` (as in :func:`msk_directions`).
    targets: ``(s, ...)`` targets of the s points, for a callable ``loss`` only.

  Returns:
    ``(Q, W_new, theta)``: Q a pytree like ``params`` with leaves ``(k, *shape)``; W_new
    ``(s·c, k)`` (``vectors`` unchanged for Löwdin); θ ``(k,)`` the Rayleigh quotients
    ``diag(Wᵀ K W)`` for Löwdin (unit-norm W), the Ritz values for Rayleigh–Ritz.

  Example:
    >>> import jax.numpy as jnp
    >>> X = jnp.diag(jnp.array([2.0, 1.0])); f = lambda w, x: x @ w   # J = X, K = diag(4, 1)
    >>> Q, W, theta = reform_directions(f, jnp.zeros(2), X, jnp.array([[0.6], [0.8]]),
    ...                                 rayleigh_ritz=True)
    >>> [round(v, 4) for v in theta.tolist()]   # w ∝ K (0.6, 0.8) = (2.4, 0.8): wᵀKw
    [3.7]
  """
  x_points = jnp.asarray(x_points)
  s = x_points.shape[0]
  f = lambda p: apply_fn(p, x_points).reshape(s, -1)
  out_shape = jax.eval_shape(f, params)
  c = out_shape.shape[1]
  k = vectors.shape[1]
  W = jnp.asarray(vectors).astype(out_shape.dtype)
  gn = not (isinstance(loss, str) and loss == "mse")
  Hh = None
  if gn:
    if isinstance(loss, str) and loss != "softmax_cross_entropy":
      raise ValueError(f"reform_directions: `loss` must be 'mse', 'softmax_cross_entropy' or "
                       f"a callable ℓ(f_i, y_i); got {loss!r}.")
    Hh = _linalg.loss_hessian_sqrt(loss, f(params), targets)  # (s, c, c), symmetric
    weigh = lambda M: jnp.einsum("pcd,pdm->pcm", Hh.astype(M.dtype),
                                 M.reshape(s, c, -1)).reshape(s * c, -1)
  leaves = jax.tree.leaves(params)
  itemsize = max(jnp.dtype(l.dtype).itemsize for l in leaves) if leaves else 4
  explicit = _tangents.jacobian_block_size(params, c, s, memory_budget, itemsize) >= s
  if explicit:
    Jt = _tangents.point_jacobians(apply_fn, params, x_points, c)   # leaves (s, c, *shape)
    # materialise J once: without the barrier XLA fuses the Jacobian's producer into each
    # GEMM and recomputes it (slower by a multiple for wide nets)
    Jl = [l.reshape(s, c, -1) for l in jax.tree.leaves(Jt)]
    if gn:                    # H^½ J, per point
      Jl = [jnp.einsum("pcd,pdq->pcq", Hh.astype(j.dtype), j) for j in Jl]
    Jl = lax.optimization_barrier([j.reshape(s * c, -1) for j in Jl])
    treedef = jax.tree.structure(Jt)
    shapes = [l.shape for l in leaves]
    # Q kept as one (k, #leaf) row block per leaf: every product is a GEMM in J's row-major
    # layout (Mᵀ J and J Qᵀ; XLA:CPU runs Jᵀ M several times slower than Mᵀ J).

    def jt_times(M):          # (Jᵀ M)ᵀ per leaf: (k, #leaf)
      return [M.T.astype(j.dtype) @ j for j in Jl]

    def j_times(Qs):          # J Q: (s·c, k)
      return functools.reduce(jnp.add, [j @ q.T for j, q in zip(Jl, Qs)])

    def gram(Qs):
      return functools.reduce(jnp.add, [q @ q.T for q in Qs])

    def to_tree(Qs, M):       # leaves (k, *shape) of Q M
      return jax.tree.unflatten(treedef, [(M.T.astype(q.dtype) @ q).reshape((k,) + sh)
                                          for q, sh in zip(Qs, shapes)])
  else:
    out, vjp = jax.vjp(f, params)
    to_rows = lambda M: M.T.reshape(k, s, c)

    def jt_times(M):
      M = weigh(M) if gn else M
      (Q,) = jax.vmap(vjp)(to_rows(M.astype(out.dtype)))
      return Q

    def j_times(Q):
      jvp = lambda t: jax.jvp(f, (params,), (t,))[1]
      JQ = jax.vmap(jvp)(Q).reshape(k, s * c).T
      return weigh(JQ) if gn else JQ

    def gram(Q):
      return functools.reduce(jnp.add, [jnp.einsum("ia,ja->ij", l.reshape(k, -1),
                                                   l.reshape(k, -1))
                                        for l in jax.tree.leaves(Q)])

    def to_tree(Q, M):
      return jax.tree.map(lambda l: jnp.tensordot(M.T.astype(l.dtype), l, axes=1), Q)

  Q = jt_times(W)
  if rayleigh_ritz:
    W = _linalg.svqb(j_times(Q))                    # orth(K W), (s·c, k)
    Q = jt_times(W)
    theta, U = jnp.linalg.eigh(gram(Q))
    theta, U = theta[::-1], U[:, ::-1]
    floor = jnp.finfo(theta.dtype).eps * jnp.maximum(theta[0], jnp.finfo(theta.dtype).tiny)
    M = U / jnp.sqrt(jnp.maximum(theta, floor))[None, :]
    return to_tree(Q, M), W @ U, theta
  G = gram(Q)
  ev, U = jnp.linalg.eigh(0.5 * (G + G.T))
  floor = jnp.finfo(ev.dtype).eps * jnp.max(ev) * k
  Ginv = (U / jnp.sqrt(jnp.maximum(ev, floor))) @ U.T
  return to_tree(Q, Ginv), jnp.asarray(vectors), jnp.diag(G) / jnp.sum(W * W, 0)


def _tree_moved(a, b):
  num = sum(jnp.sum(jnp.square((x - y).astype(jnp.float32))) for x, y in
            zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  den = sum(jnp.sum(jnp.square(y.astype(jnp.float32))) for y in jax.tree.leaves(b))
  return jnp.sqrt(num / jnp.maximum(den, jnp.finfo(jnp.float32).tiny))


def scale_by_msk_tracking(apply_fn: Callable, x, directions: MSKDirections, *,
                          every: int = 1, moved: Optional[float] = None,
                          rayleigh_ritz: bool = True,
                          memory_budget: int = _kernels.DEFAULT_MEMORY_BUDGET,
                          loss="mse", targets=None, coefficients: str = "build"
                          ) -> optax.GradientTransformationExtraArgs:
  r"""MSK preconditioner that stays tied to the *current* Jacobian (re-formed directions).

  .. math:: P_t u = u + \sum_{i\le k}\Big(\frac{g_i}{\lambda_i} - 1\Big) q_i^{(t)}
     \langle q_i^{(t)}, u\rangle,\qquad
     Q^{(t)} = \operatorname{orth}\big(J_t^\top V_k \Lambda_k^{-1/2}\big),

  with ``J_t = ∂f(θ_t, X_s)/∂θ`` on the s points the directions were built on and the
  function-space eigenvectors ``V_k`` (``directions.vectors``; fixed for Löwdin, followed
  by one subspace step per re-formation by default, see ``rayleigh_ritz``). The
  function-space eigenvectors change little while the parameters move (function space
  is stable); the parameter-space directions ``q_i = J_0ᵀ v_i/√λ_i`` of
  :func:`scale_by_msk` do not: when one step changes a weight matrix by a sizeable fraction
  (lazy networks at the large steps MSK enables), ``J_t`` acquires components along the
  stiff function-space directions that the old q_i no longer cancel, ``λ_max(J_t P J_tᵀ)``
  jumps far above max g and the fixed preconditioner diverges. Re-forming ``Q`` from
  ``J_tᵀ V_k`` keeps ``v_iᵀ J_t (I − Q Qᵀ) = 0``: the stiff directions stay flattened.

  Cost per re-formation (:func:`reform_directions`): when ``3·s·c·#params·itemsize``
  fits ``memory_budget``, the explicit per-point Jacobian of the s points (one batched
  backward pass) and GEMMs with it, an (s·c)×k orthonormalisation
  (SVQB, ``_linalg.svqb``) and a k×k ``eigh``; otherwise a forward pass and 2k VJPs +
  k JVPs (Löwdin: k VJPs) through ``jax.vmap``, which materialises k copies of every
  activation. The re-orthonormalisation is essential: without it the net collapses to
  f ≡ 0. With ``moved`` only the steps where the parameters moved by that fraction pay a
  re-formation. Between re-formations an update costs what :func:`scale_by_msk` costs (O(k·#params)).
  Everything is traced: no recompilation per step (``lax.cond`` chooses whether to
  re-form). Rayleigh–Ritz re-formed at every step (or with ``moved``) follows the
  function-space form ½rᵀSr in a lazy one-layer network, where the fixed :func:`msk_sgd`
  diverges (``docs/results.md#iga-inrs-experiment-1-function-space-tracking-and-tuned-adam``).

  Args:
    apply_fn: ``apply_fn(params, x) -> (s,)`` or ``(s, c)`` with ``params`` the pytree the
      optimizer sees (for flax linen: ``lambda p, x: model.apply({'params': p}, x)``).
    x: the inputs ``directions`` were built on: either the s points themselves, or the
      full ``x`` passed to :func:`msk_directions` (then ``directions.indices`` picks them).
    directions: :class:`MSKDirections` with ``vectors`` (from :func:`msk_directions`).
    every: re-form every this many updates (1: at every update, the recommended setting).
    rayleigh_ritz: True (default): re-form by one warm-started subspace-iteration step and
      Rayleigh–Ritz on the current empirical NTK (:func:`reform_directions`): the span
      follows the rotating eigenvectors (coefficients: see ``coefficients``). False: Löwdin ``orth(J_tᵀ V_k Λ^{-1/2})`` with the
      fixed function-space vectors (k VJPs); its span does not rotate with the kernel's
      eigenvectors, so ``λ_max(J_t P_t J_tᵀ)`` can drift above max g.
    coefficients: with ``rayleigh_ritz``, the coefficients of the re-formed directions:
      ``'build'`` (default): ``g_i/λ_i − 1`` from the build, kept fixed while the span
      follows the kernel (the parameter-space analogue of the fixed S of ½rᵀSr); or
      ``'ritz'``: ``g_i/θ_i − 1`` with θ_i the current Ritz values (``J_t P_t J_tᵀ`` has
      eigenvalues g_i on the span). ``'build'`` is the recommended setting (``'ritz'``
      ended higher in the lazy one-layer network).
    moved: alternatively, re-form when ``‖θ − θ_last‖/‖θ_last‖ > moved`` (θ_last: the
      parameters at the last re-formation; costs one parameter copy in the state).
      Re-formation also happens at the first update.
    memory_budget: bytes for the explicit Jacobian of the s points; when
      ``3·s·c·#params·itemsize`` fits, re-formation is GEMMs on it, else matrix-free
      (:func:`reform_directions`).
    loss: the loss ``directions`` were built for (:func:`msk_directions`'s ``loss``):
      ``'mse'`` (default), ``'softmax_cross_entropy'`` or a per-point callable
      ``ℓ(f_i, y_i)``. For a loss other than MSE each re-formation evaluates ``H^½`` at the
      current outputs (``_linalg.loss_hessian_sqrt``) and tracks the Gauss–Newton kernel
      ``H^½ J Jᵀ H^½`` (one extra forward pass on the s points).
    targets: the targets of ``x``'s points, for a callable ``loss`` only.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (state :class:`ScaleByMSKTrackingState`);
    ``update`` requires ``params``. Chain it with ``optax.sgd`` (:func:`msk_sgd_tracking`).

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from mskjax import optim, tracking
    >>> X = jnp.array([[1.0, 0.0], [0.0, 2.0]]); f = lambda w, x: x @ w   # J = X
    >>> d = optim.MSKDirections(jnp.array([[0.0, 1.0]]), jnp.array([4.0]), jnp.array([1.0]),
    ...                         jnp.array(1.0), vectors=jnp.array([[0.0], [1.0]]))
    >>> tx = tracking.scale_by_msk_tracking(f, X, d)
    >>> w = jnp.zeros(2)
    >>> tx.update(jnp.ones(2), tx.init(w), w)[0].tolist()   # g/λ = 1/4 on q = Xᵀe₂/2 = e₂
    [1.0, 0.25]

  References:
    Geifman, Barzilai, Basri & Galun, arXiv:2307.14531 (TMLR 2024); Löwdin symmetric
    orthonormalisation, J. Chem. Phys. 18 (1950).
  """
  where = "scale_by_msk_tracking"
  if not callable(apply_fn):
    raise TypeError(f"{where}: `apply_fn` must be callable apply_fn(params, x); got "
                    f"{type(apply_fn).__name__}.")
  values, new_values = _directions.check_directions(directions, where)
  if directions.vectors is None:
    raise ValueError(f"{where}: `directions.vectors` is None; build the directions with "
                     "optim.msk_directions (it keeps the function-space eigenvectors).")
  gn = not (isinstance(loss, str) and loss == "mse")
  if isinstance(loss, str) and loss not in ("mse", "softmax_cross_entropy"):
    raise ValueError(f"{where}: `loss` must be 'mse', 'softmax_cross_entropy' or a callable "
                     f"ℓ(f_i, y_i); got {loss!r}.")
  if not gn and getattr(directions, "hessian_sqrt", None) is not None:
    # Gauss–Newton directions of another loss need Jᵀ H^½ V with H at the current outputs.
    raise ValueError(f"{where}: `directions` were built for a loss with a non-identity "
                     "output Hessian (directions.hessian_sqrt is set) but `loss` is 'mse'; "
                     "pass the loss they were built for, e.g. "
                     "scale_by_msk_tracking(..., loss='softmax_cross_entropy').")
  if gn and getattr(directions, "hessian_sqrt", None) is None:
    raise ValueError(f"{where}: `loss`={loss!r} but `directions` are MSE directions "
                     "(directions.hessian_sqrt is None); build them with "
                     "msk_directions(..., loss=the same loss).")
  if gn and not isinstance(loss, str) and not callable(loss):
    raise TypeError(f"{where}: `loss` must be a string or a callable ℓ(f_i, y_i); got "
                    f"{type(loss).__name__}.")
  if gn and not isinstance(loss, str) and targets is None:
    raise ValueError(f"{where}: a callable `loss` needs `targets` (one row per point of `x`).")
  every = _v.check_int(every, "every", lo=1)
  memory_budget = _v.check_int(memory_budget, "memory_budget", lo=1)
  if coefficients not in ("ritz", "build"):
    raise ValueError(f"{where}: `coefficients` must be 'ritz' or 'build'; got "
                     f"{coefficients!r}.")
  if moved is not None:
    moved = _v.check_real(moved, "moved", lo=0, lo_open=True)
  x = jnp.asarray(x)
  vec = jnp.asarray(directions.vectors)
  k = values.shape[0]
  if vec.ndim != 2 or vec.shape[1] != k:
    raise ValueError(f"{where}: `directions.vectors` must be (s·c, k={k}); got "
                     f"{tuple(vec.shape)}.")
  idx = directions.indices
  if idx is not None and x.shape[0] != np.shape(idx)[0]:
    if targets is not None:
      if jax.tree.leaves(targets)[0].shape[0] != x.shape[0]:
        raise ValueError(f"{where}: `targets` must have one row per point of `x` "
                         f"({x.shape[0]}).")
      targets = jax.tree.map(lambda a: jnp.asarray(a)[jnp.asarray(idx)], targets)
    x = x[jnp.asarray(idx)]
  s = x.shape[0]
  if targets is not None and jax.tree.leaves(targets)[0].shape[0] != s:
    raise ValueError(f"{where}: `targets` must have one row per point of `x` ({s}).")
  if vec.shape[0] % s:
    raise ValueError(f"{where}: `directions.vectors` has {vec.shape[0]} rows, not a multiple "
                     f"of the {s} points in `x`; pass the inputs the directions were built on.")
  dirs0 = directions.directions
  dt = _directions.tree_dtype(dirs0)
  coef0 = _directions.msk_coefficients(values, new_values, dt)
  _v.check_orthonormal_directions(dirs0, coef0, where)
  # Löwdin re-forms Jᵀ V Λ^{-1/2} (= the stored q at the build parameters); Rayleigh–Ritz
  # iterates on unit vectors V.
  w0 = vec if rayleigh_ritz else vec / jnp.sqrt(values.astype(vec.dtype))[None, :]

  def init_fn(params):
    # copies: the state is the step's to donate; it must never alias the caller's
    # MSKDirections or parameters (a donated step would delete them)
    own = lambda t: jax.tree.map(lambda a: jnp.array(a, copy=True), t)
    anchor = own(params) if moved is not None else None
    return ScaleByMSKTrackingState(jnp.zeros([], jnp.int32), own(dirs0), own(w0), own(coef0),
                                   anchor, jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(f"{where} needs `params` in update(updates, state, params): the "
                       "directions are re-formed from the Jacobian at the current parameters.")
    _v.check_update_shapes(updates, state.directions, where)
    if moved is not None:
      do = (state.count == 0) | (_tree_moved(params, state.anchor) > moved)
    else:
      do = state.count % every == 0
    def reform():
      Q, W, theta = reform_directions(apply_fn, params, x, state.vectors,
                                      rayleigh_ritz=rayleigh_ritz,
                                      memory_budget=memory_budget, loss=loss,
                                      targets=targets)
      Q = jax.tree.map(lambda q, n: n.astype(q.dtype), state.directions, Q)
      if rayleigh_ritz:
        coef = state.coef         # 'build': g_i/λ_i of the build, the span follows the kernel
        if coefficients == "ritz":   # λ_i ← current Ritz values: J P Jᵀ = g_i on the span
          coef = _directions.msk_coefficients(theta, new_values, state.coef.dtype)
        return Q, W.astype(state.vectors.dtype), coef
      return Q, state.vectors, state.coef
    keep = lambda: (state.directions, state.vectors, state.coef)
    if every == 1 and moved is None:
      dirs, vectors, coef = reform()
    else:
      dirs, vectors, coef = lax.cond(do, reform, keep)
    anchor = state.anchor
    if moved is not None:
      anchor = jax.tree.map(lambda p, a: jnp.where(do, p, a).astype(a.dtype), params, anchor)
    out = _directions.apply_directions(updates, dirs, coef)
    return out, ScaleByMSKTrackingState(optax.safe_increment(state.count), dirs, vectors,
                                        coef, anchor,
                                        state.reforms + do.astype(jnp.int32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def msk_sgd_tracking(learning_rate: optax.ScalarOrSchedule, apply_fn: Callable, x,
                     directions: MSKDirections, *, every: int = 1,
                     moved: Optional[float] = None, rayleigh_ritz: bool = True,
                     memory_budget: int = _kernels.DEFAULT_MEMORY_BUDGET,
                     loss="mse", targets=None, coefficients: str = "build",
                     momentum: Optional[float] = None,
                     nesterov: bool = False) -> optax.GradientTransformationExtraArgs:
  r"""``optax.chain(scale_by_msk_tracking(...), optax.sgd(lr, momentum))``: θ ← θ − η P_t ∇ℓ.

  The recommended MSK optimizer when one step moves the weights by a sizeable fraction
  (lazy / NTK-parameterised networks at the steps MSK allows): see
  :func:`scale_by_msk_tracking` for the map and its cost. ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mskjax import optim, tracking
    >>> X = jnp.diag(jnp.array([2.0, 1.0])); f = lambda w, x: x @ w   # K = diag(4, 1)
    >>> d = optim.MSKDirections(jnp.array([[1.0, 0.0]]), jnp.array([4.0]),
    ...                         jnp.array([1.0]), jnp.array(1.0), vectors=jnp.array([[1.0], [0.0]]))
    >>> tx = tracking.msk_sgd_tracking(0.5, f, X, d); w = jnp.zeros(2)
    >>> tx.update(jnp.ones(2), tx.init(w), w)[0].tolist()
    [-0.125, -0.5]
  """
  _v.check_learning_rate(learning_rate, "msk_sgd_tracking")
  _v.check_momentum(momentum, "msk_sgd_tracking")
  return optax.chain(scale_by_msk_tracking(apply_fn, x, directions, every=every, moved=moved,
                                           rayleigh_ritz=rayleigh_ritz,
                                           memory_budget=memory_budget, loss=loss,
                                           targets=targets, coefficients=coefficients),
                     optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))

