r"""Optax transformations for MSK-preconditioned training of a finite network.

Which entry point to use
------------------------
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
  P u), and its state holds k parameter-shaped directions, no training data. Build the
  directions with :func:`msk_directions` (matrix-free top-k of the empirical NTK, on all
  points or a subsample) and the step with :func:`stable_learning_rate` (it depends on the
  batch size). Refresh them with :func:`replace_directions` when the kernel drifts.
* :func:`msk_sgd_tracking` / :func:`scale_by_msk_tracking` — **when one step moves the
  weights by a sizeable fraction** (lazy / NTK-parameterised networks at the large steps
  MSK allows): the fixed directions of :func:`msk_sgd` stop cancelling the stiff
  function-space directions and training diverges. The tracking form re-forms the
  directions from the current Jacobian at every update (one warm-started subspace step
  + Rayleigh–Ritz with ``rayleigh_ritz=True``, keeping the build's g/λ coefficients, the
  measured robust choice; or Löwdin on the fixed function-space vectors), or only when
  the parameters moved by a set fraction (``moved=0.01``: ~4 % of the steps in the
  measured lazy run, same quality). When the explicit Jacobian of the s points fits the
  memory budget it is formed once per update and the re-formation is GEMMs on it (~15
  gradient steps of a one-layer net); otherwise 2k VJPs + k JVPs (~150). Any loss whose directions
  :func:`msk_directions` built (``loss=``; H^½ re-evaluated at the current outputs).
  Measured in ``benchmarks/README.md`` ("Step rules and tracking").
* :func:`msk_mse_loss` — the exact function-space form ``½ rᵀ S r`` for MSE on the
  training set (full batch), whose plain gradient is ``Jᵀ S r``. Use it as the reference
  in the linear regime and when the kernel changes a lot during training (its step
  depends only on g/λ ratios, not on the kernel's size). Its minibatch form with
  ``batch_indices`` is biased and its batch matrix ``S_B`` is often indefinite at small b
  (docs/pitfalls.md#minibatch-restriction-of-s): prefer :func:`msk_sgd` for minibatches.
* :func:`scale_by_msk_jvp` / :func:`msk_sgd_jvp` — the older data-dependent form: one
  JVP and one VJP of the network on the *whole* training set per step (full-batch
  gradients only; cost: ``benchmarks/README.md``, "Notes moved from API docstrings").
  Kept for exact full-batch studies where the spectrum is refreshed from the current
  empirical NTK (``refresh_every``). With a stored spectrum and a drifting kernel its map
  ``u + Jᵀ V C Λ⁻¹ Vᵀ J u`` can become indefinite
  (the stored λ no longer match the current J); it checks this at every step and falls
  back to the plain gradient (see ``guard``).

Details of the older forms follow.


With the training Gram matrix ``K = V Λ Vᵀ`` and a modifier ``g`` on the top-k
eigenvalues, preconditioned GD (PGD) is ``θ ← θ − η Jᵀ S r`` with

.. math::
  S = I + V_k \operatorname{diag}(g/\lambda - 1) V_k^\top,\qquad K S = K_g,

so in the linearized (wide) regime the residual follows kernel GD with the MSK,
``r_{t+1} = (I − η K_g) r_t`` — the same formula as :func:`mskjax.predict_gd_mse`.
Two entry points give the same step:

* :func:`scale_by_msk_jvp` / :func:`msk_sgd_jvp` — loss-agnostic, in parameter space. From the
  parameter gradient ``u = Jᵀ e`` of *any* loss on the training set (``e = ∂ℓ/∂f``),

  .. math:: P u = u + J^\top V_k \operatorname{diag}\Big(\frac{g/\lambda - 1}{\lambda}\Big)
     V_k^\top (J u)

  (one JVP and one VJP of the network on the training inputs). Since ``J u = Ĵ Ĵᵀ e``
  is the empirical NTK applied to ``e``, ``P u = Jᵀ S e`` exactly when the empirical NTK
  has the eigenpairs used (and approximately for a wide network with the analytic ones).
* :func:`msk_mse_loss` — the loss ``½ rᵀ S r`` whose *plain* gradient is ``Jᵀ S r``, so
  ``optax.sgd`` on it costs what plain GD on ½‖r‖² costs (``S r`` is O(nk)).

**Minibatches** (:func:`msk_mse_loss` with ``batch_indices``). The Nyström eigenfunctions
``φ_i(x) = k(x, X) v_i / λ_i`` evaluated at the training points are the eigenvector
entries, ``φ_i(x_j) = (K v_i)_j / λ_i = V_{ji}``, so the batch features
``Φ_B = V_k[B]`` (|B| × k) are a gather from the precomputed ``V_k``: a step costs
O(|B| k) on top of the network, independent of n. Write the full preconditioned gradient
as ``Jᵀ S r = Σ_j J_jᵀ r_j + Σ_j J_jᵀ Φ_j C (Σ_l Φ_lᵀ r_l)`` with ``C = diag(g/λ − 1)``
and replace each sum over the n training points by (n/b) times the sum over the batch B
(b = |B| points drawn without replacement). That is the gradient of

.. math::
  L_B = \frac{n}{b}\cdot\frac12\, r_B^\top S_B r_B,\qquad
  S_B = I_b + \frac{n}{b}\,\Phi_B C \Phi_B^\top .

For B = all n points (b = n), ``S_B = S`` and ``L_B = ½ rᵀ S r``: it reduces exactly to
full-batch PGD. Over uniformly drawn batches the estimate of ``Jᵀ r`` is unbiased and,
with ``M = Φ C Φᵀ`` (n × n) and ``D = diag(M)``, the lifted batch gradient has mean

.. math:: J^\top\Big[r + \frac{n(b-1)}{b(n-1)}(M - D)\,r + \frac{n}{b} D\,r\Big]

(checked by enumerating all batches in ``tests/test_optim.py``): the off-diagonal part
is shrunk by 1 − (n−b)/(b(n−1)) and the diagonal part inflated by n/b; both are exact at
b = n. With delocalised eigenvectors ``D ≈ (tr C / n) I``, so the bias is about
``(tr C)/b``: use batches several times larger than k (as in EigenPro); for b < k the
batch matrix ``S_B`` can lose positive definiteness. The (n/b) factor in front keeps the
step size of full-batch GD: use the same ``η ≤ 1/λ_max(K_g)``-type rates.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mskjax import _nt
from mskjax import kernels as _kernels
from mskjax import _validate as _v
from mskjax import modifiers as _modifiers
from mskjax import spectrum as _spectrum
from mskjax.msk import MSKSpectrum
from mskjax import directions as _directions
from mskjax import tangents as _tangents
# The directions and the step rule have their own modules; their main names are re-exported
# here because every optimizer recipe uses them together.
from mskjax.directions import MSKDirections, msk_directions, precondition
from mskjax.steps import stable_learning_rate


__all__ = ["ScaleByMSKState", "scale_by_msk", "msk_sgd", "replace_directions",
           "refresh_directions",
           "ScaleByMSKTrackingState", "scale_by_msk_tracking", "msk_sgd_tracking",
           "reform_directions", "orthonormal_columns", "output_hessian_sqrt",
           "ScaleByMSKJvpState", "scale_by_msk_jvp", "msk_sgd_jvp", "msk_mse_loss",
           "adam_kernel_weights"]


# ============================================================ data-free PSD preconditioner
class ScaleByMSKState(NamedTuple):
  """State of :func:`scale_by_msk`: the directions and their coefficients, no data.

  Attributes:
    directions: pytree like the parameters, each leaf ``(k, *leaf.shape)``.
    coef: ``(k,)`` g_i/λ_i − 1 (> −1).
  """
  directions: Any
  coef: jax.Array


def _check_orthonormal(dirs, coef, where):
  """Named errors for hand-made directions whose P is not what the docs promise.

  P = I + Q C Qᵀ is positive definite for C > −1 only when the rows of Q are orthonormal.
  Where the directions are concrete, form the k×k Gram G = Q Qᵀ (k dot products of
  parameter size, float64) and require ‖G − I‖_max ≤ tol; and, independently of that,
  that P is positive definite: its eigenvalues off span(Q) are 1 and on span(Q) they are
  1 + eig(G^½ C G^½).
  """
  leaves = jax.tree.leaves(dirs)
  if not all(_v.is_concrete(l) for l in leaves) or not _v.is_concrete(coef):
    return
  k = int(np.shape(coef)[0])
  G = np.zeros((k, k))
  for leaf in leaves:
    l2 = np.asarray(leaf, np.float64).reshape(k, -1)
    G += l2 @ l2.T
  if not np.all(np.isfinite(G)):
    raise ValueError(f"{where}: `directions.directions` contain NaN or inf.")
  eps = max(float(jnp.finfo(l.dtype).eps) for l in leaves)
  tol = max(1e-6, 100.0 * np.sqrt(eps))        # float32: 3.5e-2, float64: 1.5e-6
  c = np.asarray(coef, np.float64)
  used = np.abs(c) > 0          # a direction with g/λ = 1 (coefficient 0) does not enter P
  G, c, k = G[np.ix_(used, used)], c[used], int(used.sum())
  if k == 0:
    return
  ev, U = np.linalg.eigh(0.5 * (G + G.T))
  Gh = (U * np.sqrt(np.maximum(ev, 0.0))) @ U.T
  pmin = 1.0 + np.linalg.eigvalsh(Gh @ np.diag(c) @ Gh).min()
  if pmin <= 0:
    raise ValueError(f"{where}: the preconditioner P = I + Σ (g_i/λ_i − 1) q_i q_iᵀ built from "
                     f"these directions is indefinite (smallest eigenvalue {pmin:.3g}): the q_i "
                     "are not orthonormal (max |QQᵀ − I| = "
                     f"{np.abs(G - np.eye(k)).max():.3g}). Build them with optim.msk_directions, "
                     "or orthonormalise hand-made ones (e.g. numpy.linalg.qr).")
  err = np.abs(G - np.eye(k)).max()
  if err > tol:
    raise ValueError(f"{where}: the directions are not orthonormal (max |QQᵀ − I| = {err:.3g} > "
                     f"{tol:.2g}), so P does not have the eigenvalues g_i/λ_i it is meant to. "
                     "Build them with optim.msk_directions, or orthonormalise hand-made ones "
                     "(e.g. numpy.linalg.qr on the flattened rows).")


def check_update_shapes(updates, dirs, where):
  """Named error when the updates do not match the directions leaf by leaf (static shapes)."""
  _v.check_float_updates(updates)
  is_m = lambda x: isinstance(x, optax.MaskedNode) or x is None
  su = jax.tree.structure(updates, is_leaf=is_m)
  sd = jax.tree.structure(dirs, is_leaf=is_m)
  if su != sd:
    raise ValueError(f"{where}: the updates and `directions.directions` have different pytree "
                     "structures; build the directions from the same parameter pytree the "
                     f"optimizer sees (for flax linen: variables['params']). ({su} vs {sd})")
  for u, q in zip(jax.tree.leaves(updates, is_leaf=is_m), jax.tree.leaves(dirs, is_leaf=is_m)):
    if is_m(u):
      continue
    if tuple(u.shape) != tuple(q.shape[1:]):
      raise ValueError(f"{where}: an update leaf has shape {tuple(u.shape)} but the matching "
                       f"direction leaf is (k, *shape) = {tuple(q.shape)}: the gradients are "
                       "not for the parameters the directions were built for.")


def _check_learning_rate(learning_rate, where):
  _v.check_learning_rate(learning_rate)
  if learning_rate is None:
    raise ValueError(f"{where}: `learning_rate` is None; optax.sgd(None) returns the gradient "
                     "itself, which `params + update` would follow uphill (gradient ascent). "
                     "Pass a positive step, e.g. steps.stable_learning_rate(...).")
  if callable(learning_rate) or not _v.is_concrete(learning_rate):
    return
  lr = np.asarray(learning_rate)
  if lr.ndim != 0:
    raise ValueError(f"{where}: `learning_rate` must be a scalar; got shape {lr.shape}.")
  if not np.isfinite(float(lr)) or float(lr) < 0:
    raise ValueError(f"{where}: `learning_rate` must be a finite number ≥ 0 (a negative step "
                     f"is gradient ascent); got {float(lr)!r}.")


def _check_momentum(momentum, where):
  if momentum is None or not _v.is_concrete(momentum):
    return
  m = float(np.asarray(momentum))
  if not (np.isfinite(m) and 0.0 <= m < 1.0):
    raise ValueError(f"{where}: `momentum` must be in [0, 1) (≥ 1 makes the velocity grow "
                     f"without bound); got {m!r}.")


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
  no data, no network evaluation. The state (:class:`ScaleByMSKState`) holds the
  directions (k parameter-sized arrays) and the k coefficients; it contains no training
  data. Swap in fresh directions with :func:`replace_directions` (no recompilation when
  k is unchanged). Update dtypes are preserved (float32 stays float32).

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
  _check_orthonormal(dirs, coef, "scale_by_msk")

  def init_fn(params):
    del params
    return ScaleByMSKState(dirs, coef)

  def update_fn(updates, state, params=None):
    del params
    check_update_shapes(updates, state.directions, "scale_by_msk")
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
  (Adam's per-coordinate scaling then acts on the preconditioned gradient). Measured on
  MNIST-1D (MLP, b = 128, 300 steps, tuned lrs): P before Adam lowered the train loss
  20 % vs tuned Adam at the same lr; before SGD-momentum the gain was within noise, like
  plain ``msk_sgd``; at equal wall time including the directions' build the tuned
  baselines won (``benchmarks/README.md``, "Step rules and tracking").

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
  _check_learning_rate(learning_rate, "msk_sgd")
  _check_momentum(momentum, "msk_sgd")
  return _v.check_state_matches(optax.chain(scale_by_msk(directions), optax.sgd(
      learning_rate, momentum=momentum, nesterov=nesterov)), "msk_sgd")


def replace_directions(opt_state, directions: MSKDirections):
  """Put new directions into every :class:`ScaleByMSKState` inside an optimizer state.

  For refreshing the preconditioner during training (e.g. every few epochs, from
  :func:`msk_directions` at the current parameters) without rebuilding or recompiling
  the optimizer: the new directions must have the same k, structure and dtypes.

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
  _check_orthonormal(directions.directions, _directions.msk_coefficients(
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
      return ScaleByMSKState(new_dirs, _directions.msk_coefficients(values, new_values, s.coef.dtype))
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
  parameters), then :func:`replace_directions` (same structure: a compiled step or
  :func:`mskjax.train.fit` chunk is reused, the momentum trace is kept). An unconverged
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
  step grows (6× by step 1000 on MNIST-1D, where 4 × it diverged). Cost: about a cold build
  at the same points (the top-k subspace moves during training; ``benchmarks/README.md``,
  "Refreshing the directions").

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


# ============================================================ tracking preconditioner
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


def orthonormal_columns(Z, passes: int = 2):
  r"""An orthonormal basis of the column span of a tall ``Z`` (s × k, s ≥ k), jittable.

  SVQB (Stathopoulos & Wu, SIAM J. Sci. Comput. 23, 2002): with column scaling
  ``D = diag(‖z_i‖)``, ``(Z D⁻¹)ᵀ(Z D⁻¹) = E Σ Eᵀ`` (k×k ``eigh``) and
  ``Z ← Z D⁻¹ E Σ^{-1/2}``; repeated ``passes`` times (one pass leaves an orthogonality
  error ~ eps·cond²; the second removes it). Costs two s×k×k GEMMs per pass — on XLA:CPU
  ~10x cheaper than ``jnp.linalg.qr`` for s = 1024, k = 10. Directions of ``Z`` below
  ``eps·‖Z‖`` are kept at that floor (not divided by zero).

  Example:
    >>> import jax.numpy as jnp
    >>> W = orthonormal_columns(jnp.array([[3.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    >>> [[round(v, 6) + 0.0 for v in r] for r in (W.T @ W).tolist()]
    [[1.0, 0.0], [0.0, 1.0]]
  """
  for _ in range(passes):
    d = jnp.sqrt(jnp.sum(Z * Z, 0))
    Z = Z / jnp.maximum(d, jnp.finfo(Z.dtype).tiny)[None, :]
    e, E = jnp.linalg.eigh(Z.T @ Z)
    e = jnp.maximum(e, jnp.finfo(Z.dtype).eps * jnp.maximum(e[-1], jnp.finfo(Z.dtype).tiny))
    Z = Z @ (E / jnp.sqrt(e)[None, :])
  return Z


def output_hessian_sqrt(loss, outputs, targets=None) -> jax.Array:
  r"""Per-point ``H_i^½`` of a loss's output Hessian at ``outputs`` (jittable, traced).

  ``H_i = ∂²ℓ(f_i, y_i)/∂f_i²``: ``diag(p_i) − p_i p_iᵀ`` with ``p_i = softmax(f_i)`` for
  ``'softmax_cross_entropy'``, ``jax.hessian`` of a callable ``ℓ(f_i, y_i)`` otherwise; the
  square root from a batched c×c ``eigh`` with negative eigenvalues clipped to 0 (the
  in-graph counterpart of :func:`mskjax.directions.loss_hessian_sqrt`, in the outputs'
  dtype). What the tracking transform needs to re-form Gauss–Newton directions at the
  current outputs.

  Args:
    loss: ``'softmax_cross_entropy'`` or a per-point callable ``ℓ(f_i, y_i) -> scalar``.
    outputs: ``(s, c)``.
    targets: rows of targets for a callable loss (ignored otherwise).

  Returns:
    ``(s, c, c)``.

  Example:
    >>> import jax.numpy as jnp
    >>> Hh = output_hessian_sqrt("softmax_cross_entropy", jnp.zeros((1, 2)))  # p = (½, ½)
    >>> [[round(v, 6) for v in r] for r in (Hh[0] @ Hh[0]).tolist()]
    [[0.25, -0.25], [-0.25, 0.25]]
  """
  F = jnp.asarray(outputs)
  c = F.shape[1]
  if isinstance(loss, str):
    if loss != "softmax_cross_entropy":
      raise ValueError(f"output_hessian_sqrt: `loss` must be 'softmax_cross_entropy' or a "
                       f"callable ℓ(f_i, y_i); got {loss!r}.")
    pr = jax.nn.softmax(F, axis=-1)
    H = pr[:, :, None] * jnp.eye(c, dtype=F.dtype) - pr[:, :, None] * pr[:, None, :]
  else:
    H = jax.vmap(jax.hessian(loss))(F, targets).reshape(F.shape[0], c, c).astype(F.dtype)
  H = 0.5 * (H + jnp.swapaxes(H, 1, 2))
  w, U = jnp.linalg.eigh(H)
  return jnp.einsum("pij,pj,pkj->pik", U, jnp.sqrt(jnp.maximum(w, 0.0)), U)


def reform_directions(apply_fn: Callable, params, x_points, vectors, *,
                      rayleigh_ritz: bool = False,
                      memory_budget: int = _kernels.DEFAULT_MEMORY_BUDGET,
                      loss="mse", targets=None):
  r"""Directions re-formed at ``params`` from function-space vectors (jittable).

  ``W`` = ``vectors`` (s·c × k, rows point·c + output) and ``J = ∂f(θ, x_points)/∂θ``;
  for a loss other than MSE, ``J`` stands for ``H^½ J`` with ``H^½`` the per-point root of
  the loss's output Hessian *at the current outputs* (:func:`output_hessian_sqrt`), so the
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
  every product ``Jᵀ W`` / ``J Q`` is a GEMM — measured ~15 gradient steps of a one-layer
  net at s = width = 1024, k = 10, against ~150 matrix-free (``benchmarks/README.md``,
  "Step rules and tracking"). Otherwise
  matrix-free: one forward pass, then k batched VJPs (Löwdin) or 2k VJPs + k JVPs
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
    Hh = output_hessian_sqrt(loss, f(params), targets)       # (s, c, c), symmetric
    weigh = lambda M: jnp.einsum("pcd,pdm->pcm", Hh.astype(M.dtype),
                                 M.reshape(s, c, -1)).reshape(s * c, -1)
  leaves = jax.tree.leaves(params)
  itemsize = max(jnp.dtype(l.dtype).itemsize for l in leaves) if leaves else 4
  explicit = _tangents.jacobian_block_size(params, c, s, memory_budget, itemsize) >= s
  if explicit:
    Jt = _tangents.point_jacobians(apply_fn, params, x_points, c)   # leaves (s, c, *shape)
    # materialise J once: without the barrier XLA fuses the Jacobian's producer into each
    # GEMM and recomputes it (measured 2x slower at s = width = 1024)
    Jl = [l.reshape(s, c, -1) for l in jax.tree.leaves(Jt)]
    if gn:                    # H^½ J, per point
      Jl = [jnp.einsum("pcd,pdq->pcq", Hh.astype(j.dtype), j) for j in Jl]
    Jl = lax.optimization_barrier([j.reshape(s * c, -1) for j in Jl])
    treedef = jax.tree.structure(Jt)
    shapes = [l.shape for l in leaves]
    # Q kept as one (k, #leaf) row block per leaf: every product is a GEMM in J's row-major
    # layout (Mᵀ J and J Qᵀ; XLA:CPU ran Jᵀ M 4x slower than Mᵀ J here).

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
    W = orthonormal_columns(j_times(Q))                    # orth(K W), (s·c, k)
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
  (:func:`orthonormal_columns`) and a k×k ``eigh``; otherwise a forward pass and 2k VJPs +
  k JVPs (Löwdin: k VJPs) through ``jax.vmap``, which materialises k copies of every
  activation. The re-orthonormalisation is essential: without it the net collapses to
  f ≡ 0. Measured at s = width = 1024, k = 10 (``benchmarks/README.md``, "Step rules and
  tracking"): the explicit route ~15 gradient steps of that one-layer net, the
  matrix-free one ~150; with ``moved=0.01`` ~220 of 5000 steps re-formed (about 2
  gradient steps per update on average) at the quality of every-step re-formation.
  Between re-formations an update costs what :func:`scale_by_msk` costs (O(k·#params)).
  Everything is traced: no recompilation per step (``lax.cond`` chooses whether to
  re-form). Measured against the alternatives in ``benchmarks/README.md``
  ("Step rules and tracking"): in a lazy one-layer network, Rayleigh–Ritz re-formed at
  every step follows the function-space form ½rᵀSr; every 10 steps diverges, and so does
  the fixed :func:`msk_sgd`.

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
      eigenvectors and it lets ``λ_max(J_t P_t J_tᵀ)`` drift above max g (measured:
      ``benchmarks/README.md``).
    coefficients: with ``rayleigh_ritz``, the coefficients of the re-formed directions:
      ``'build'`` (default): ``g_i/λ_i − 1`` from the build, kept fixed while the span
      follows the kernel (the parameter-space analogue of the fixed S of ½rᵀSr); or
      ``'ritz'``: ``g_i/θ_i − 1`` with θ_i the current Ritz values (``J_t P_t J_tᵀ`` has
      eigenvalues g_i on the span). Measured in the lazy one-layer network at widths 256
      and 1024 (``benchmarks/README.md``, "Step rules and tracking"): ``'ritz'`` has a
      transient in the first ~100 steps and ends 3–5× higher than ``'build'``.
    moved: alternatively, re-form when ``‖θ − θ_last‖/‖θ_last‖ > moved`` (θ_last: the
      parameters at the last re-formation; costs one parameter copy in the state).
      Re-formation also happens at the first update.
    memory_budget: bytes for the explicit Jacobian of the s points; when
      ``3·s·c·#params·itemsize`` fits, re-formation is GEMMs on it, else matrix-free
      (:func:`reform_directions`).
    loss: the loss ``directions`` were built for (:func:`msk_directions`'s ``loss``):
      ``'mse'`` (default), ``'softmax_cross_entropy'`` or a per-point callable
      ``ℓ(f_i, y_i)``. For a loss other than MSE each re-formation evaluates ``H^½`` at the
      current outputs (:func:`output_hessian_sqrt`) and tracks the Gauss–Newton kernel
      ``H^½ J Jᵀ H^½`` (one extra forward pass on the s points).
    targets: the targets of ``x``'s points, for a callable ``loss`` only.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (state :class:`ScaleByMSKTrackingState`);
    ``update`` requires ``params``. Chain it with ``optax.sgd`` (:func:`msk_sgd_tracking`).

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from mskjax import optim
    >>> X = jnp.array([[1.0, 0.0], [0.0, 2.0]]); f = lambda w, x: x @ w   # J = X
    >>> d = optim.MSKDirections(jnp.array([[0.0, 1.0]]), jnp.array([4.0]), jnp.array([1.0]),
    ...                         jnp.array(1.0), vectors=jnp.array([[0.0], [1.0]]))
    >>> tx = optim.scale_by_msk_tracking(f, X, d)
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
  _check_orthonormal(dirs0, coef0, where)
  # Löwdin re-forms Jᵀ V Λ^{-1/2} (= the stored q at the build parameters); Rayleigh–Ritz
  # iterates on unit vectors V.
  w0 = vec if rayleigh_ritz else vec / jnp.sqrt(values.astype(vec.dtype))[None, :]

  def init_fn(params):
    anchor = jax.tree.map(jnp.asarray, params) if moved is not None else None
    return ScaleByMSKTrackingState(jnp.zeros([], jnp.int32), dirs0, w0, coef0, anchor,
                                   jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(f"{where} needs `params` in update(updates, state, params): the "
                       "directions are re-formed from the Jacobian at the current parameters.")
    check_update_shapes(updates, state.directions, where)
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
    >>> from mskjax import optim
    >>> X = jnp.diag(jnp.array([2.0, 1.0])); f = lambda w, x: x @ w   # K = diag(4, 1)
    >>> d = optim.MSKDirections(jnp.array([[1.0, 0.0]]), jnp.array([4.0]),
    ...                         jnp.array([1.0]), jnp.array(1.0), vectors=jnp.array([[1.0], [0.0]]))
    >>> tx = optim.msk_sgd_tracking(0.5, f, X, d); w = jnp.zeros(2)
    >>> tx.update(jnp.ones(2), tx.init(w), w)[0].tolist()
    [-0.125, -0.5]
  """
  _check_learning_rate(learning_rate, "msk_sgd_tracking")
  _check_momentum(momentum, "msk_sgd_tracking")
  return optax.chain(scale_by_msk_tracking(apply_fn, x, directions, every=every, moved=moved,
                                           rayleigh_ritz=rayleigh_ritz,
                                           memory_budget=memory_budget, loss=loss,
                                           targets=targets, coefficients=coefficients),
                     optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


class ScaleByMSKJvpState(NamedTuple):
  """State of :func:`scale_by_msk_jvp`.

  Attributes:
    count: number of updates applied so far (int32 scalar).
    values: ``(k,)`` eigenvalues λ₁..λ_k in use.
    vectors: ``(n, k)`` eigenvectors V_k in use.
    new_values: ``(k,)`` modified values g(λ₁..λ_k) in use.
    indefinite: number of updates u with uᵀ P u ≤ 0 (the stored spectrum no longer
      matches the network's kernel; with ``guard`` those steps used u unchanged).
  """
  count: jax.Array
  values: jax.Array
  vectors: jax.Array
  new_values: jax.Array
  indefinite: jax.Array = 0


def _check_spectrum(spectrum, n):
  if not isinstance(spectrum, MSKSpectrum):
    raise TypeError("`spectrum` must be an mskjax.MSKSpectrum (from mskjax.msk_spectrum(K, g, "
                    f"k)); got {type(spectrum).__name__}.")
  if spectrum.vectors.ndim != 2 or spectrum.vectors.shape[0] != n:
    raise ValueError(f"`spectrum.vectors` has shape {tuple(spectrum.vectors.shape)}, but "
                     f"`x_train` has n={n} points: the spectrum must be that of the Gram "
                     "matrix on exactly these training inputs.")


def _jvp_vjp_precondition(apply_fn, params, x, u, vectors, values, new_values, guard=True):
  """P u = u + Jᵀ V diag((g/λ − 1)/λ) Vᵀ (J u): one linearization, one JVP, one VJP.

  Returns (P u, ok) with ok = (uᵀ P u > 0). With ``guard``, P u is replaced by u when
  ``not ok`` (the stored spectrum no longer matches the network's kernel and the map is
  indefinite along u: the step would not be a descent direction).
  """
  u_cast = jax.tree.map(lambda a, p: a.astype(p.dtype), u, params)
  out, f_jvp = jax.linearize(lambda p: apply_fn(p, x), params)
  ju = f_jvp(u_cast)                                           # (n,) or (n, c)
  n = ju.shape[0]
  ju2 = ju.reshape(n, -1)
  coef = (new_values / values - 1.0) / values                  # (k,)
  a = vectors.T @ ju2.astype(vectors.dtype)                    # (k, c)
  w = vectors @ (coef[:, None] * a)
  w = w.reshape(ju.shape).astype(out.dtype)
  (jtw,) = jax.linear_transpose(f_jvp, u_cast)(w)
  # uᵀ P u = ‖u‖² + Σ_i coef_i ‖v_iᵀ J u‖² (no extra network pass)
  unorm = sum(jnp.sum(jnp.square(l.astype(a.dtype))) for l in jax.tree.leaves(u))
  ok = unorm + jnp.sum(coef[:, None] * a * a) > 0
  keep = ok if guard else jnp.asarray(True)
  pu = jax.tree.map(lambda x_, y_: jnp.where(keep, x_ + y_, x_).astype(x_.dtype), u, jtw)
  return pu, ok


def _empirical_top(apply_fn, params, x, g, k):
  """Top-(k+1) eigenpairs of the empirical NTK at ``params`` and g(λ), traceable."""
  ntk = _nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), implementation=2)
  out = jax.eval_shape(apply_fn, params, x[:1])
  fn = ntk if len(out.shape) == 2 else _nt.empirical_ntk_fn(
      lambda p, a: apply_fn(p, a)[:, None], trace_axes=(-1,), implementation=2)
  K = fn(x, None, params)
  K = 0.5 * (K + K.T)
  evals, evecs = jnp.linalg.eigh(K)
  evals, evecs = evals[::-1][:k + 1], evecs[:, ::-1][:, :k + 1]
  new = jnp.asarray(g(evals, k)).astype(evals.dtype)
  return evals[:k], evecs[:, :k], new


def scale_by_msk_jvp(apply_fn: Callable, x_train, spectrum: MSKSpectrum, *,
                 refresh_every: Optional[int] = None,
                 g: Optional[_modifiers.Modifier] = None, guard: bool = True
                 ) -> optax.GradientTransformationExtraArgs:
  r"""Turn a training-set loss gradient into the MSK-preconditioned direction.

  .. math:: P u = u + J^\top V_k \operatorname{diag}\Big(\frac{g(\lambda)/\lambda - 1}{\lambda}
     \Big) V_k^\top (J u),\qquad J = \partial f(\theta, X)/\partial\theta,

  which equals ``Jᵀ S e`` for ``u = Jᵀ e`` when the empirical NTK has the eigenpairs
  used (module docstring). Costs one JVP and one VJP of the network on ``x_train`` per
  update plus O(nk). Updates must be the gradient of a loss over the *whole* training
  set ``x_train`` (for minibatches use :func:`msk_mse_loss` with ``batch_indices``).

  The eigenpairs come from ``spectrum`` (e.g. the analytic NTK, computed once). With
  ``refresh_every=N`` they are recomputed from the empirical NTK at the current
  parameters every N updates (``lax.cond`` inside the update: no recompilation; a refresh
  costs the n×n empirical NTK and an eigendecomposition).

  Works inside ``optax.chain``, under ``jax.jit``, with ``optax.MultiSteps`` and flax's
  ``TrainState``; unknown extra arguments are ignored; update dtypes are kept. With
  ``optax.inject_hyperparams`` pass the callables as static:
  ``optax.inject_hyperparams(msk_sgd_jvp, static_args=('apply_fn', 'g'))(...)``.

  Args:
    apply_fn: ``apply_fn(params, x) -> (n,)`` or ``(n, c)``, with ``params`` the pytree
      the optimizer sees (for flax: ``lambda p, x: model.apply({'params': p}, x)``).
    x_train: ``(n, d)`` training inputs (the same order as ``spectrum.vectors`` rows).
    spectrum: :class:`mskjax.MSKSpectrum` of the (analytic) NTK Gram matrix on
      ``x_train`` (``mskjax.msk_spectrum(K, g, k)``).
    refresh_every: recompute the eigenpairs from the empirical NTK every this many
      updates (positive int), or None to keep ``spectrum`` fixed.
    g: the modifier used at a refresh (required with ``refresh_every``).
    guard: the map ``u + Jᵀ V diag((g/λ − 1)/λ) Vᵀ J u`` is positive definite only while
      the network's kernel matches the stored spectrum (kernel drift, e.g. a kernel that
      grows during training, makes it indefinite for g < λ). Every update computes
      ``uᵀ P u = ‖u‖² + Σ_i (g_i/λ_i − 1)/λ_i ‖v_iᵀ J u‖²`` at no extra cost; with
      ``guard=True`` (default) an update with ``uᵀ P u ≤ 0`` is passed through unchanged
      (plain gradient), and ``state.indefinite`` counts such updates either way. For
      training, prefer the data-free :func:`scale_by_msk`, which is PD by construction.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is :class:`ScaleByMSKJvpState`;
    ``update`` requires ``params``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> from mskjax import optim
    >>> X = jnp.eye(3); apply_fn = lambda w, x: x @ w   # linear model: J = X = I
    >>> spec = mskjax.MSKSpectrum(jnp.array([1.0]), jnp.array([[1.0], [0.0], [0.0]]),
    ...                           jnp.array([4.0]), jnp.array(1.0))
    >>> tx = optim.scale_by_msk_jvp(apply_fn, X, spec)
    >>> w = jnp.zeros(3); u = jnp.ones(3)
    >>> tx.update(u, tx.init(w), w)[0].tolist()   # S u with g/λ = 4 on e₁
    [4.0, 1.0, 1.0]
  """
  if not callable(apply_fn):
    raise TypeError(f"`apply_fn` must be callable apply_fn(params, x); got "
                    f"{type(apply_fn).__name__}.")
  x_train = jnp.asarray(x_train)
  if x_train.ndim < 1:
    raise ValueError(f"`x_train` must have a leading axis of n points; got shape "
                     f"{tuple(x_train.shape)}.")
  _check_spectrum(spectrum, x_train.shape[0])
  if refresh_every is not None:
    refresh_every = _v.check_int(refresh_every, "refresh_every", lo=1)
    if not callable(g):
      raise TypeError("`g` (the modifier, e.g. mskjax.modifiers.flatten()) is required with "
                      f"`refresh_every`; got {type(g).__name__}.")
  k = spectrum.k

  def init_fn(params):
    del params
    return ScaleByMSKJvpState(jnp.zeros([], jnp.int32), jnp.asarray(spectrum.values),
                              jnp.asarray(spectrum.vectors), jnp.asarray(spectrum.new_values),
                              jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("scale_by_msk_jvp needs `params` in update(updates, state, params): the "
                       "preconditioner uses the network Jacobian at the current parameters.")
    values, vectors, new_values = state.values, state.vectors, state.new_values
    if refresh_every is not None:
      def refresh(_):
        lam, vec, new = _empirical_top(apply_fn, params, x_train, g, k)
        return (lam.astype(values.dtype), vec.astype(vectors.dtype),
                new.astype(new_values.dtype))
      do = (state.count > 0) & (state.count % refresh_every == 0)
      values, vectors, new_values = lax.cond(do, refresh, lambda _: (values, vectors,
                                                                     new_values), None)
    out, ok = _jvp_vjp_precondition(apply_fn, params, x_train, updates, vectors, values,
                                    new_values, guard)
    return out, ScaleByMSKJvpState(optax.safe_increment(state.count), values, vectors,
                                   new_values, state.indefinite + (~ok).astype(jnp.int32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def msk_sgd_jvp(learning_rate: optax.ScalarOrSchedule, apply_fn: Callable, x_train,
            spectrum: MSKSpectrum, *, refresh_every: Optional[int] = None,
            g: Optional[_modifiers.Modifier] = None,
            guard: bool = True) -> optax.GradientTransformationExtraArgs:
  r"""Preconditioned GD: ``optax.chain(scale_by_msk_jvp(...), scale_by_learning_rate(η))``.

  ``θ ← θ − η P ∇_θ ℓ``; for ℓ = ½‖f(X) − Y‖² this is ``θ ← θ − η Jᵀ S r``, which in the
  linearized regime is kernel GD with K_g (:func:`mskjax.predict_gd_mse` with the same g,
  k and ``learning_rate=η``). Stable steps: ``η < mskjax.predict.max_learning_rate(K, g, k)``
  (= 2/λ_max(K_g)); 1/λ_max(K_g) is a safe default.

  When the fixed spectrum is valid (experiments/README.md, silent_alignment):

  * the correction ``Jᵀ V_k diag((g/λ − 1)/λ) V_kᵀ J u`` assumes the network's kernel has
    the stored eigenpairs *and size*. For a wide network near init (lazy regime) the
    analytic NTK is right to O(1/√width); modifiers with g/λ ≪ 1 on many modes (flatten at
    large k, reverse) amplify that error, so build the spectrum from the network's own
    empirical NTK at init (``mskjax.tangents.empirical_ntk``);
  * in the rich / small-init regime the kernel grows by orders of magnitude during
    training and a fixed spectrum diverges. Use ``refresh_every`` (empirical NTK recomputed), or
    :func:`msk_mse_loss`, whose step ``Jᵀ S r`` depends only on g/λ ratios.

  Args:
    learning_rate: η (float or optax schedule).
    apply_fn, x_train, spectrum, refresh_every, g, guard: see :func:`scale_by_msk_jvp`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> from mskjax import optim
    >>> X = jnp.diag(jnp.array([2.0, 1.0])); apply_fn = lambda w, x: x @ w  # NTK = X Xᵀ
    >>> spec = mskjax.msk_spectrum(X @ X.T, mskjax.modifiers.scale(0.5), 1)  # S = diag(.5, 1)
    >>> tx = optim.msk_sgd_jvp(0.1, apply_fn, X, spec)
    >>> w = jnp.zeros(2)
    >>> tx.update(jnp.ones(2), tx.init(w), w)[0].tolist()
    [-0.05, -0.1]
  """
  return optax.chain(
      scale_by_msk_jvp(apply_fn, x_train, spectrum, refresh_every=refresh_every, g=g,
                       guard=guard),
      optax.scale_by_learning_rate(learning_rate))


def msk_mse_loss(predictions, targets, spectrum: MSKSpectrum, *,
                 batch_indices=None) -> jax.Array:
  r"""MSE whose plain gradient is the MSK-preconditioned step: ``½ rᵀ S r``.

  .. math::
    \text{full batch: } \tfrac12 r^\top S r,\qquad
    \text{batch } B: \tfrac{n}{b}\cdot\tfrac12\, r_B^\top\Big(I + \tfrac{n}{b}\Phi_B
    \operatorname{diag}(g/\lambda - 1)\Phi_B^\top\Big) r_B,\quad \Phi_B = V_k[B],

  with r = predictions − targets (summed over outputs; S acts on the point axis and is
  treated as a constant). ∇_θ of the full-batch loss is ``Jᵀ S r``: ``optax.sgd`` on it
  is PGD at the cost of plain GD. The batch form is derived in the module docstring; it
  equals the full-batch loss when B is all n points, and costs O(bk).

  Args:
    predictions: ``(n,)`` or ``(n, c)`` network outputs on the training set, or on the
      batch ``x_train[batch_indices]`` (then ``(b,)`` or ``(b, c)``).
    targets: same shape as ``predictions``.
    spectrum: :class:`mskjax.MSKSpectrum` of the training Gram matrix.
    batch_indices: ``(b,)`` integer indices of the batch into the training set, or None
      for the full batch.

  Returns:
    Scalar loss (the dtype of ``predictions``).

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> from mskjax import optim
    >>> spec = mskjax.msk_spectrum(jnp.diag(jnp.array([4.0, 2.0, 1.0])),
    ...                            mskjax.modifiers.flatten(), 1)   # S = diag(.5, 1, 1)
    >>> float(optim.msk_mse_loss(jnp.ones(3), jnp.zeros(3), spec))
    1.25
  """
  if not isinstance(spectrum, MSKSpectrum):
    raise TypeError("`spectrum` must be an mskjax.MSKSpectrum (mskjax.msk_spectrum(K, g, k)); "
                    f"got {type(spectrum).__name__}.")
  predictions = jnp.asarray(predictions)
  targets = jnp.asarray(targets)
  if predictions.shape != targets.shape:
    raise ValueError(f"`predictions` {tuple(predictions.shape)} and `targets` "
                     f"{tuple(targets.shape)} must have the same shape.")
  if predictions.ndim not in (1, 2):
    raise ValueError(f"`predictions` must be (n,) or (n, c); got shape "
                     f"{tuple(predictions.shape)}.")
  _v.check_finite(predictions, "predictions")        # NaN policy: reject at the boundary
  _v.check_finite(targets, "targets")
  dtype = jnp.result_type(predictions.dtype, jnp.float32) \
      if not jnp.issubdtype(predictions.dtype, jnp.floating) else predictions.dtype
  r = (predictions - targets).astype(dtype)
  b = r.shape[0]
  r2 = r.reshape(b, -1)
  vectors = lax.stop_gradient(jnp.asarray(spectrum.vectors))
  coef = lax.stop_gradient(jnp.asarray(spectrum.new_values) / jnp.asarray(spectrum.values)
                           - 1.0)
  n = vectors.shape[0]
  if batch_indices is None:
    if b != n:
      raise ValueError(f"`predictions` has {b} rows but the spectrum has n={n} training "
                       "points; pass `batch_indices` for a minibatch.")
    phi, scale = vectors, 1.0
  else:
    idx = jnp.asarray(batch_indices)
    if idx.ndim != 1 or idx.shape[0] != b or not jnp.issubdtype(idx.dtype, jnp.integer):
      raise ValueError(f"`batch_indices` must be a 1-D integer array with one index per row "
                       f"of `predictions` ({b}); got shape {tuple(idx.shape)}, dtype "
                       f"{idx.dtype}.")
    idx = _v.check_indices(idx, n, "batch_indices")   # JAX would clamp out-of-range rows
    phi, scale = vectors[idx], n / b
  phi = phi.astype(dtype)
  sr = r2 + scale * (phi @ (coef.astype(dtype)[:, None] * (phi.T @ r2)))
  return (scale * 0.5 * jnp.sum(r2 * sr)).astype(dtype)


def adam_kernel_weights(learning_rate: float, *, b2: float = 0.999, eps: float = 1e-8
                        ) -> Callable:
  r"""Per-parameter step sizes of Adam, D = η / (√v̂ + ε), for an optimiser-metric empirical NTK.

  The diagonal metric of Adam's (momentum-free) step: pass the result as
  ``mskjax.tangents.empirical_ntk(..., weights=)`` to get Θ_D = J D Jᵀ, or as
  ``kernel_weights_fn`` to :func:`mskjax.recorder.record_kernel_training`.
  v̂ = ν / (1 − β₂^t) is read from the ``ScaleByAdamState`` inside the optax state; at
  t = 0 (no second-moment estimate yet) v̂ = g², the value Adam's first step uses. Momentum
  is ignored: Θ_D = J D Jᵀ is the kernel of the momentum-free (RMSProp-like) step.

  Args:
    learning_rate: η of the Adam optimiser being recorded.
    b2, eps: Adam's β₂ and ε (same as passed to ``optax.adam``).

  Returns:
    ``weights_fn(params, opt_state, grads) -> pytree`` of step sizes.

  Example:
    >>> import jax.numpy as jnp, optax, mskjax
    >>> p = {'w': jnp.ones(2)}
    >>> s = optax.adam(0.1).init(p)
    >>> mskjax.optim.adam_kernel_weights(0.1)(p, s, {'w': jnp.array([1.0, 2.0])})['w'].round(6).tolist()
    [0.1, 0.05]
  """
  def find(state):
    if isinstance(state, optax.ScaleByAdamState):
      return state
    if isinstance(state, (tuple, list)):
      for s in state:
        found = find(s)
        if found is not None:
          return found
    return None

  def weights_fn(params, opt_state, grads):
    st = find(opt_state)
    if st is None:
      raise ValueError("adam_kernel_weights: no optax ScaleByAdamState in opt_state; use it "
                       "with optax.adam / optax.scale_by_adam.")
    t = st.count
    bc = 1.0 - b2 ** jnp.maximum(t, 1).astype(jnp.result_type(float))
    return jax.tree_util.tree_map(
        lambda nu, g: learning_rate / (jnp.sqrt(jnp.where(t > 0, nu / bc, g ** 2)) + eps),
        st.nu, grads)

  return weights_fn
