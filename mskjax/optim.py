r"""Optax transformations for MSK-preconditioned training of a finite network: fixed P.

* :func:`msk_sgd` / :func:`scale_by_msk` — **the default for real training** (any loss,
  minibatches, multi-output, flax linen/nnx, float32). A fixed, data-free, positive
  definite linear map on the gradient,

  .. math:: P u = u + \sum_{i\le k} \Big(\frac{g_i}{\lambda_i} - 1\Big) q_i \langle q_i, u\rangle,
     \qquad q_i = J^\top v_i / \sqrt{\lambda_i},

  with (λ_i, v_i) the top eigenpairs of the full multi-output empirical NTK
  ``K = J Jᵀ`` (n·c × n·c) on the training set and ``J = ∂f(θ, X)/∂θ``. The q_i are
  orthonormal, so ``P Jᵀ e = Jᵀ S e`` for *every* function-space gradient ``e`` (any loss)
  with ``S = I + Σ (g_i/λ_i − 1) v_i v_iᵀ``: it is PGD in the linearized model. P costs
  O(k·#params) per step, is positive definite when g > 0 (eigenvalues g_i/λ_i on the q_i
  and 1 elsewhere), is the same matrix for every batch (P u_B is an unbiased estimate of
  P u), and it keeps k parameter-shaped directions (constants of a jitted step, not state
  arrays it copies), no training data. Build the
  directions with :func:`msk_directions` (matrix-free top-k of the empirical NTK, on all
  points or a subsample) and the step with :func:`stable_learning_rate` (it depends on the
  batch size). Refresh them with :func:`replace_directions` / :func:`refresh_directions`
  when the kernel drifts.

The other forms have their own modules: :mod:`mskjax.tracking` (directions re-formed from
the current Jacobian, for networks whose weights move a sizeable fraction per step) and
:mod:`mskjax.function_space` (the reference function-space forms ½ rᵀ S r and the
JVP/VJP map).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import numpy as np

import jax
import jax.numpy as jnp
import optax

from mskjax import _validate as _v
from mskjax import modifiers as _modifiers
from mskjax import directions as _directions
# The directions and the step rule have their own modules; their main names are re-exported
# here because every optimizer recipe uses them together.
from mskjax.directions import MSKDirections, msk_directions, precondition
from mskjax.steps import stable_learning_rate


__all__ = ["ScaleByMSKState", "HeldDirections", "scale_by_msk", "msk_sgd", "replace_directions",
           "refresh_directions"]


class HeldDirections:
  """The directions and coefficients a :class:`ScaleByMSKState` refers to (no array leaves).

  A pytree node with no children: the arrays are *static* data of the optimizer state, so
  a jitted step ``(params, opt_state, batch) → (params, opt_state, loss)`` takes them as
  constants of the compiled program instead of as arguments it must return. Returning
  them would make XLA write a fresh copy of the k parameter-sized arrays at every step
  (an output may not alias an input that is not donated); as constants they are read in
  place, and donating the step's arguments can never delete them. Equality is identity:
  the same holder means the same compiled step; :func:`replace_directions` makes a new
  holder, so a jitted step traces and compiles once for the new directions.

  Pickling stores the arrays (as numpy); orbax and other leaf-based checkpointers see no
  leaves here: restore into a state from ``tx.init`` built with the directions in use.
  """
  __slots__ = ("directions", "coef")

  def __init__(self, directions, coef):
    self.directions = jax.tree.map(jnp.asarray, directions)
    self.coef = jnp.asarray(coef)

  def __eq__(self, other):
    return self is other

  def __hash__(self):
    return id(self)

  def __repr__(self):
    return f"HeldDirections(k={self.coef.shape[0]})"

  def __reduce__(self):
    return (HeldDirections, (jax.tree.map(np.asarray, self.directions), np.asarray(self.coef)))


jax.tree_util.register_pytree_node(HeldDirections, lambda h: ((), h), lambda h, _: h)


class ScaleByMSKState(NamedTuple):
  """State of :func:`scale_by_msk`: a reference to the directions, no array leaves, no data.

  Attributes:
    held: :class:`HeldDirections` (static: constants of a jitted step, never copied).

  Properties ``directions`` (pytree like the parameters, each leaf ``(k, *leaf.shape)``)
  and ``coef`` (``(k,)`` g_i/λ_i − 1 > −1) read through to it.
  """
  held: HeldDirections

  @property
  def directions(self):
    return self.held.directions

  @property
  def coef(self):
    return self.held.coef


def scale_by_msk(directions: MSKDirections) -> optax.GradientTransformation:
  r"""Precondition updates with the data-free, positive definite MSK map P.

  .. math:: P u = u + \sum_{i\le k}\Big(\frac{g(\lambda_i)}{\lambda_i} - 1\Big)
     q_i\,\langle q_i, u\rangle,\qquad q_i = J^\top v_i/\sqrt{\lambda_i}.

  For orthonormal q_i, ``P Jᵀ e = Jᵀ S e`` with ``S = I + Σ (g_i/λ_i − 1) v_i v_iᵀ``: the
  gradient of *any* loss becomes the PGD step of Geifman et al. (2024), in the linearized
  model exactly. P is the same for every batch, so a minibatch gradient gives an unbiased
  estimate of the full-batch preconditioned gradient; its eigenvalues are g_i/λ_i (on
  the q_i) and 1, so it is positive definite for g > 0 (also under ``optax.masked``,
  where it acts as the compression of P to the unmasked leaves).

  Cost: two passes over the k stored directions (one projection, one update), O(k·#params);
  no data, no network evaluation. The state (:class:`ScaleByMSKState`) has no array
  leaves: it refers to the directions and the k coefficients (:class:`HeldDirections`),
  which a jitted training step takes as constants, read in place. A step that returns
  the optimizer state therefore writes no copy of the k parameter-sized arrays, and
  donating the step's arguments (``donate_argnums``) never deletes the caller's
  :class:`MSKDirections`. Swap in fresh directions with :func:`replace_directions` (a
  jitted step compiles once more for them). Update dtypes are preserved (float32 stays
  float32).

  Args:
    directions: :class:`MSKDirections` (from :func:`msk_directions`). Its ``directions``
      pytree must have the structure of the updates (the parameters the optimizer sees).

  Returns:
    An ``optax.GradientTransformation``; ``params`` are not needed.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from mskjax import optim
    >>> d = optim.MSKDirections({'w': jnp.array([[1.0, 0.0]])}, jnp.array([4.0]),
    ...                         jnp.array([2.0]), jnp.array(2.0))
    >>> tx = optax.chain(optim.scale_by_msk(d), optax.sgd(0.1))
    >>> params = {'w': jnp.zeros(2)}
    >>> tx.update({'w': jnp.ones(2)}, tx.init(params))[0]['w'].tolist()  # −0.1·(½, 1)
    [-0.05, -0.1]

  References:
    Geifman, Barzilai, Basri & Galun, arXiv:2307.14531 (TMLR 2024); Ma & Belkin,
    *Diving into the shallows* (EigenPro), NeurIPS 2017.
  """
  values, new_values = _directions.check_directions(directions, "scale_by_msk")
  dirs = directions.directions
  coef = _directions.msk_coefficients(values, new_values, _directions.tree_dtype(dirs))
  _v.check_orthonormal_directions(dirs, coef, "scale_by_msk")

  held = HeldDirections(dirs, coef)

  def init_fn(params):
    del params
    return ScaleByMSKState(held)

  def update_fn(updates, state, params=None):
    del params
    # the directions come from the state's holder (static), not from this closure, so that
    # replace_directions and optax.inject_hyperparams (which rebuilds the transform at
    # every update) use the directions the state refers to
    _v.check_update_shapes(updates, state.directions, "scale_by_msk")
    return _directions.apply_directions(updates, state.directions, state.coef), state

  return optax.GradientTransformation(init_fn, update_fn)


def msk_sgd(learning_rate: optax.ScalarOrSchedule, directions: MSKDirections, *,
            momentum: Optional[float] = None, nesterov: bool = False
            ) -> optax.GradientTransformation:
  r"""MSK-preconditioned SGD: ``optax.chain(scale_by_msk(directions), optax.sgd(lr, ...))``.

  ``θ ← θ − η P ∇_θ ℓ_B`` for the loss ℓ_B of any batch. For MSE on the full training set
  in the linearized regime the residual follows ``r ← (I − η K_g) r`` (kernel GD with the
  MSK, :func:`mskjax.predict_gd_mse`). With minibatches the largest stable step depends
  on the batch size: use :func:`stable_learning_rate` (with ``loss_fn``: measured from the
  preconditioned loss Hessian, any loss). To re-estimate it during training build
  ``optax.inject_hyperparams(msk_sgd)(learning_rate=η, directions=d)`` and call
  :func:`mskjax.steps.set_learning_rate` (no recompilation).

  Errors: ``learning_rate`` None, negative or non-finite (concrete values) and
  ``momentum`` outside [0, 1) are rejected by name; so are hand-made directions that are
  not orthonormal or make P indefinite (:func:`scale_by_msk`), and gradients whose leaf
  shapes differ from the directions'. A non-finite *gradient* is not checked (that
  would need a host sync per step): P maps it to a non-finite update and the parameters
  become NaN. To skip such steps inside jit wrap the optimizer,
  ``optax.apply_if_finite(msk_sgd(η, d), max_consecutive_errors=5)`` (the update is
  zeroed and counted in ``notfinite_count``).

  Composition: P is a fixed linear map, so it chains with any optax optimizer
  (``optax.chain(scale_by_msk(d), optax.adam(lr))``). Put P *first*, on the raw gradient
  (Adam's per-coordinate scaling then acts on the preconditioned gradient). Against tuned
  baselines at equal wall time, the directions' build included:
  ``docs/results.md#the-optimizer-table-msk_sgd-against-tuned-sgd-momentum-adam-and-muon``.

  Args:
    learning_rate: η (float or optax schedule).
    directions: :class:`MSKDirections` (see :func:`scale_by_msk`).
    momentum, nesterov: as in ``optax.sgd``.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp
    >>> from mskjax import optim
    >>> d = optim.MSKDirections({'w': jnp.array([[0.0, 1.0]])}, jnp.array([9.0]),
    ...                         jnp.array([3.0]), jnp.array(3.0))
    >>> tx = optim.msk_sgd(1.0, d)
    >>> p = {'w': jnp.zeros(2)}
    >>> tx.update({'w': jnp.array([3.0, 3.0])}, tx.init(p))[0]['w'].tolist()
    [-3.0, -1.0]
  """
  _v.check_learning_rate(learning_rate, "msk_sgd")
  _v.check_momentum(momentum, "msk_sgd")
  return _v.check_state_matches(optax.chain(scale_by_msk(directions), optax.sgd(
      learning_rate, momentum=momentum, nesterov=nesterov)), "msk_sgd")


def replace_directions(opt_state, directions: MSKDirections):
  """Put new directions into every :class:`ScaleByMSKState` inside an optimizer state.

  For refreshing the preconditioner during training (e.g. every few epochs, from
  :func:`msk_directions` at the current parameters) without rebuilding the optimizer:
  the new directions must have the same k, structure and dtypes. The returned state
  refers to the new directions (a new :class:`HeldDirections`); a jitted step that takes
  it compiles once more, since the directions are constants of the compiled step (this
  is what keeps a step from copying them; the states of the other transforms, e.g. the
  momentum, are kept).

  Example:
    >>> import jax.numpy as jnp
    >>> from mskjax import optim
    >>> d = optim.MSKDirections({'w': jnp.array([[1.0, 0.0]])}, jnp.array([4.0]),
    ...                         jnp.array([1.0]), jnp.array(1.0))
    >>> tx = optim.msk_sgd(1.0, d); state = tx.init({'w': jnp.zeros(2)})
    >>> d2 = d._replace(directions={'w': jnp.array([[0.0, 1.0]])})
    >>> state = optim.replace_directions(state, d2)
    >>> tx.update({'w': jnp.array([4.0, 4.0])}, state)[0]['w'].tolist()
    [-4.0, -1.0]
  """
  values, new_values = _directions.check_directions(directions, "replace_directions")
  _v.check_orthonormal_directions(directions.directions, _directions.msk_coefficients(
      values, new_values, _directions.tree_dtype(directions.directions)), "replace_directions")
  found = []

  def swap(s):
    if isinstance(s, ScaleByMSKState):
      _v.check_same_structure(directions.directions, s.directions, "directions.directions",
                              "the directions in `opt_state`")
      if jax.tree.structure(s.directions) != jax.tree.structure(directions.directions):
        raise ValueError("replace_directions: the new directions have a different pytree "
                         "structure from the ones in the state.")
      if s.coef.shape != values.shape:
        raise ValueError(f"replace_directions: k changed ({s.coef.shape[0]} -> "
                         f"{values.shape[0]}); build a new optimizer instead.")
      for old_l, new_l in zip(jax.tree.leaves(s.directions),
                              jax.tree.leaves(directions.directions)):
        if tuple(old_l.shape) != tuple(np.shape(new_l)):
          raise ValueError(f"replace_directions: a new direction leaf has shape "
                           f"{tuple(np.shape(new_l))}, the one in the state "
                           f"{tuple(old_l.shape)}; build them for the same parameters.")
      found.append(True)
      new_dirs = jax.tree.map(lambda old, new: jnp.asarray(new, old.dtype), s.directions,
                              directions.directions)
      return ScaleByMSKState(HeldDirections(
          new_dirs, _directions.msk_coefficients(values, new_values, s.coef.dtype)))
    return s

  out = jax.tree.map(swap, opt_state, is_leaf=lambda s: isinstance(s, ScaleByMSKState))
  if not found:
    raise ValueError("replace_directions: `opt_state` contains no ScaleByMSKState (was the "
                     "optimizer built with optim.scale_by_msk / optim.msk_sgd?).")
  return out


def refresh_directions(opt_state, apply_fn: Callable, params, x, previous: MSKDirections,
                       g: _modifiers.Modifier, *, loss="mse", targets=None, key=None,
                       **kwargs):
  """Rebuild the directions at the current parameters and swap them into ``opt_state``.

  A refresh of the preconditioner during training: :func:`msk_directions` at ``params``
  on the points ``previous`` was built on (``previous.indices`` into ``x``, or all of
  ``x``), with the same k and β choice, warm-started from ``previous``
  (``init_vectors=previous``: the start block is ``H^½ J [q_1..q_k, ω...]`` at the new
  parameters), then :func:`replace_directions` (the momentum trace is kept; a jitted step
  or :func:`mskjax.train.fit` chunk compiles once for the new directions). An unconverged
  solve warns with its error bound, as :func:`msk_directions` does.

  The step grows with training: re-measure it at the same time when the optimizer was
  built with ``optax.inject_hyperparams`` (no recompilation)::

    tx = optax.inject_hyperparams(optim.msk_sgd)(learning_rate=eta, directions=d)
    res = train.fit(loss, params, tx, data, steps=R, batch_size=b)      # then, every R steps:
    st, d = optim.refresh_directions(res.state.opt_state, apply_fn, res.state.params, x, d,
                                     g, loss='softmax_cross_entropy')
    eta = steps.stable_learning_rate(d, b, loss_fn=lambda p, bt: loss(p, bt, None),
                                     params=res.state.params, batch=batch)
    st = steps.set_learning_rate(st, eta)
    res = train.fit(loss, None, tx, data, steps=R, batch_size=b,
                    state=res.state._replace(opt_state=st))

  In a user's own loop the same two calls go between steps (``opt_state`` is the loop's
  optimizer state). Re-measure at the rule's own safety, not at a multiple of it tuned at
  initialisation: near interpolation the cross-entropy curvature shrinks and the measured
  step grows, so a multiple of the initial rule can diverge. Cost: about a cold build at
  the same points (the top-k subspace moves during training;
  ``docs/results.md#refreshing-the-directions``).

  Args:
    opt_state: the optimizer state (contains a :class:`ScaleByMSKState`).
    apply_fn, params: as for :func:`msk_directions` (``params`` the current ones).
    x: the inputs ``previous`` was built from (the full ``x`` when it was built with
      ``subsample``; ``previous.indices`` picks the same points).
    previous: the :class:`MSKDirections` in use.
    g: the modifier.
    loss, targets: as for :func:`msk_directions`; must be the loss ``previous`` was built
      for (MSE or not).
    key: ``jax.random.PRNGKey`` of the fresh random columns of the start block.
    **kwargs: further :func:`msk_directions` arguments (``method``, ``tol``,
      ``max_cycles``, ``oversample``, ``memory_budget``, ``float64``, ...).

  Returns:
    ``(opt_state, directions)``: the state with the new directions and the new
    :class:`MSKDirections` (with ``previous.indices``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from mskjax import optim, modifiers
    >>> f = lambda w, x: x @ w; x = jax.random.normal(jax.random.PRNGKey(0), (8, 5))
    >>> d = optim.msk_directions(f, jnp.zeros(5), x, modifiers.flatten(), 2)
    >>> tx = optim.msk_sgd(0.1, d); st = tx.init(jnp.zeros(5))
    >>> st, d2 = optim.refresh_directions(st, f, jnp.ones(5), x, d, modifiers.flatten())
    >>> bool(jnp.allclose(d2.values, d.values, rtol=1e-3))     # linear model: K fixed
    True
  """
  if not isinstance(previous, MSKDirections):
    raise TypeError("refresh_directions: `previous` must be the MSKDirections in use (from "
                    f"msk_directions); got {type(previous).__name__}.")
  for name in ("init_vectors", "subsample", "k", "compute_beta"):
    if name in kwargs:
      raise ValueError(f"refresh_directions: `{name}` is taken from `previous` (same points, "
                       "k and β); call msk_directions directly for other choices.")
  is_mse = isinstance(loss, str) and loss == "mse"
  if (previous.hessian_sqrt is None) != is_mse:
    raise ValueError("refresh_directions: `loss` must be the loss `previous` was built for: "
                     f"previous has {'no ' if previous.hessian_sqrt is None else ''}output "
                     f"Hessian (built for {'MSE' if previous.hessian_sqrt is None else 'a non-MSE loss'}"
                     f"), got loss={loss!r}.")
  idx = previous.indices
  if idx is not None:
    idx = np.asarray(idx)
    n = int(np.shape(jax.tree.leaves(x)[0])[0]) if not hasattr(x, "shape") else int(x.shape[0])
    if idx.size and int(idx.max()) >= n:
      raise ValueError(f"refresh_directions: `previous.indices` point past `x` ({n} rows): "
                       "pass the full `x` that `previous` was built from.")
    x = np.asarray(x)[idx]
    if targets is not None:
      targets = jax.tree.map(lambda t: np.asarray(t)[idx], targets)
  d = msk_directions(apply_fn, params, x, g, previous.k, loss=loss, targets=targets, key=key,
                     init_vectors=previous, compute_beta=previous.beta is not None, **kwargs)
  d = d._replace(indices=None if idx is None else idx)
  return replace_directions(opt_state, d), d

