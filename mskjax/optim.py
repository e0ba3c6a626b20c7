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
* :func:`msk_mse_loss` — the exact function-space form ``½ rᵀ S r`` for MSE on the
  training set (full batch), whose plain gradient is ``Jᵀ S r``. Use it as the reference
  in the linear regime and when the kernel changes a lot during training (its step
  depends only on g/λ ratios, not on the kernel's size). Its minibatch form with
  ``batch_indices`` is biased and its batch matrix ``S_B`` is often indefinite at small b
  (DESIGN.md §4, "Minibatch S_B"): prefer :func:`msk_sgd` for minibatches.
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


# ============================================================ data-free PSD preconditioner
class MSKDirections(NamedTuple):
  r"""The top-k parameter-space eigen-directions of the empirical NTK and their new values.

  With ``J = ∂f(θ, X)/∂θ`` (all n·c outputs on the points used) and ``K = J Jᵀ =
  Σ λ_i v_i v_iᵀ``, the directions are ``q_i = Jᵀ v_i / √λ_i`` (orthonormal in parameter
  space); :func:`scale_by_msk` applies ``P = I + Σ (g_i/λ_i − 1) q_i q_iᵀ``.

  Attributes:
    directions: pytree with the structure of the parameters the optimizer sees; each
      leaf has shape ``(k, *leaf.shape)`` in the parameter's dtype (row i is q_i).
    values: ``(k,)`` λ₁ ≥ … ≥ λ_k of the full (n·c)×(n·c) empirical NTK Gram matrix.
    new_values: ``(k,)`` g(λ₁..λ_k) > 0.
    next_value: λ_{k+1} (scalar), the largest eigenvalue left unchanged.
    residuals: ``(k,)`` ‖K v_i − λ_i v_i‖₂ / λ₁ of the eigen-solve (unit v_i), or None.
    beta: max over the points of λ_max of the point's c×c block of K_g (the β of the
      minibatch step rule, :func:`stable_learning_rate`), or None.
    n_points: number of points the kernel was built on (s for a subsample), or None.
  """
  directions: Any
  values: jax.Array
  new_values: jax.Array
  next_value: jax.Array
  residuals: Any = None
  beta: Any = None
  n_points: Any = None

  @property
  def k(self) -> int:
    return int(self.values.shape[0])

  @property
  def max_value(self) -> jax.Array:
    """λ_max(K_g) = max(g(λ₁..λ_k), λ_{k+1})."""
    return jnp.maximum(jnp.max(self.new_values), self.next_value)


class ScaleByMSKState(NamedTuple):
  """State of :func:`scale_by_msk`: the directions and their coefficients, no data.

  Attributes:
    directions: pytree like the parameters, each leaf ``(k, *leaf.shape)``.
    coef: ``(k,)`` g_i/λ_i − 1 (> −1).
  """
  directions: Any
  coef: jax.Array


def _is_masked(x):
  return isinstance(x, optax.MaskedNode) or x is None


def _check_directions(directions, where):
  if not isinstance(directions, MSKDirections):
    raise TypeError(f"{where}: `directions` must be an optim.MSKDirections (from "
                    "optim.msk_directions(apply_fn, params, x, g, k)); got "
                    f"{type(directions).__name__}.")
  values = jnp.asarray(directions.values)
  new_values = jnp.asarray(directions.new_values)
  if values.ndim != 1 or new_values.shape != values.shape:
    raise ValueError(f"{where}: `directions.values` and `.new_values` must both be (k,); got "
                     f"{tuple(values.shape)} and {tuple(new_values.shape)}.")
  k = values.shape[0]
  leaves = jax.tree.leaves(directions.directions)
  if not leaves:
    raise ValueError(f"{where}: `directions.directions` has no array leaves.")
  for leaf in leaves:
    if not hasattr(leaf, "shape") or leaf.ndim < 1 or leaf.shape[0] != k:
      raise ValueError(f"{where}: every leaf of `directions.directions` must have a leading "
                       f"axis of k={k} directions; got shape {getattr(leaf, 'shape', None)}.")
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(f"{where}: direction leaves must be floating; got {leaf.dtype}.")
  if _v.is_concrete(values) and _v.is_concrete(new_values):
    v, nv = np.asarray(values, np.float64), np.asarray(new_values, np.float64)
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(nv))):
      raise ValueError(f"{where}: `directions.values`/`.new_values` contain NaN or inf.")
    if np.any(v <= 0):
      raise ValueError(f"{where}: `directions.values` must be > 0 (top eigenvalues of the NTK); "
                       f"got min {v.min():.3g}. Lower k to exclude zero eigenvalues.")
    if np.any(nv <= 0):
      raise ValueError(f"{where}: `directions.new_values` g(λ) must be > 0 for a positive "
                       f"definite preconditioner; got min {nv.min():.3g}.")
  return values, new_values


def _coef(values, new_values, dtype):
  # g/λ − 1, clipped so that g/λ >= tiny under tracing (concrete inputs are checked above).
  ratio = new_values.astype(dtype) / values.astype(dtype)
  return jnp.maximum(ratio, jnp.finfo(dtype).tiny) - 1.0


def _leaf_dtype(tree):
  return jnp.result_type(*[l.dtype for l in jax.tree.leaves(tree)])


def _project(updates, directions):
  """a_i = Σ_leaves ⟨q_i, u⟩ in the (promoted) dtype of the updates and directions."""
  dots = []

  def dot(u, q):
    if _is_masked(u):
      return u
    dt = jnp.result_type(u.dtype, q.dtype)
    dots.append(jnp.tensordot(q.astype(dt), u.astype(dt), axes=u.ndim))
    return u

  jax.tree.map(dot, updates, directions, is_leaf=_is_masked)
  return functools.reduce(jnp.add, dots)


def _apply_dirs(updates, directions, w):
  def add(u, q):
    if _is_masked(u):
      return u
    dt = jnp.result_type(u.dtype, q.dtype)
    return (u.astype(dt) + jnp.tensordot(w.astype(dt), q.astype(dt), axes=1)).astype(u.dtype)
  return jax.tree.map(add, updates, directions, is_leaf=_is_masked)


def precondition(directions: MSKDirections, updates):
  r"""``P u = u + Σ_i (g_i/λ_i − 1) q_i ⟨q_i, u⟩`` for one pytree ``u`` (no state).

  The function behind :func:`scale_by_msk`, for use outside optax (e.g. to check
  ``P Jᵀ e = Jᵀ S e``). Updates keep their dtypes.

  Example:
    >>> import jax.numpy as jnp
    >>> from mskjax import optim
    >>> d = optim.MSKDirections({'w': jnp.array([[1.0, 0.0]])}, jnp.array([4.0]),
    ...                         jnp.array([1.0]), jnp.array(1.0))
    >>> optim.precondition(d, {'w': jnp.array([2.0, 3.0])})['w'].tolist()   # g/λ = 1/4 on e₁
    [0.5, 3.0]
  """
  values, new_values = _check_directions(directions, "precondition")
  dt = _leaf_dtype(updates)
  coef = _coef(values, new_values, dt)
  return _precondition(updates, directions.directions, coef)


def _precondition(updates, dirs, coef):
  try:
    a = _project(updates, dirs)
  except ValueError as e:
    raise ValueError("scale_by_msk: the updates and `directions.directions` have different "
                     "pytree structures; build the directions from the same parameter pytree "
                     f"the optimizer sees (for flax linen: variables['params']). ({e})") from None
  return _apply_dirs(updates, dirs, coef.astype(a.dtype) * a)


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
  values, new_values = _check_directions(directions, "scale_by_msk")
  dirs = directions.directions
  coef = _coef(values, new_values, _leaf_dtype(dirs))

  def init_fn(params):
    del params
    return ScaleByMSKState(dirs, coef)

  def update_fn(updates, state, params=None):
    del params
    return _precondition(updates, state.directions, state.coef), state

  return optax.GradientTransformation(init_fn, update_fn)


def msk_sgd(learning_rate: optax.ScalarOrSchedule, directions: MSKDirections, *,
            momentum: Optional[float] = None, nesterov: bool = False
            ) -> optax.GradientTransformation:
  r"""MSK-preconditioned SGD: ``optax.chain(scale_by_msk(directions), optax.sgd(lr, ...))``.

  ``θ ← θ − η P ∇_θ ℓ_B`` for the loss ℓ_B of any batch. For MSE on the full training set
  in the linearized regime the residual follows ``r ← (I − η K_g) r`` (kernel GD with the
  MSK, :func:`mskjax.predict_gd_mse`). With minibatches the largest stable step depends
  on the batch size: use :func:`stable_learning_rate`.

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
  return optax.chain(scale_by_msk(directions),
                     optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


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
  values, new_values = _check_directions(directions, "replace_directions")
  found = []

  def swap(s):
    if isinstance(s, ScaleByMSKState):
      if jax.tree.structure(s.directions) != jax.tree.structure(directions.directions):
        raise ValueError("replace_directions: the new directions have a different pytree "
                         "structure from the ones in the state.")
      if s.coef.shape != values.shape:
        raise ValueError(f"replace_directions: k changed ({s.coef.shape[0]} -> "
                         f"{values.shape[0]}); build a new optimizer instead.")
      found.append(True)
      new_dirs = jax.tree.map(lambda old, new: jnp.asarray(new, old.dtype), s.directions,
                              directions.directions)
      return ScaleByMSKState(new_dirs, _coef(values, new_values, s.coef.dtype))
    return s

  out = jax.tree.map(swap, opt_state, is_leaf=lambda s: isinstance(s, ScaleByMSKState))
  if not found:
    raise ValueError("replace_directions: `opt_state` contains no ScaleByMSKState (was the "
                     "optimizer built with optim.scale_by_msk / optim.msk_sgd?).")
  return out


def stable_learning_rate(directions: Optional[MSKDirections] = None, batch_size: int = 1, *,
                         lambda_max=None, beta=None, n_points=None,
                         reduction: str = "mean") -> float:
  r"""Largest useful step of (preconditioned) minibatch SGD on a quadratic loss.

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
      :func:`msk_directions`); or None and give the three numbers below.
    batch_size: b ≥ 1.
    lambda_max: λ_max(K_g) of the Gram matrix (default ``directions.max_value``).
    beta: β (default ``directions.beta``).
    n_points: N, the size of that Gram matrix in points (default ``directions.n_points``).
    reduction: ``'mean'`` (loss averaged over the batch) or ``'sum'``.

  Returns:
    η*(b) as a Python float.

  Example:
    >>> from mskjax import optim
    >>> optim.stable_learning_rate(batch_size=1, lambda_max=100.0, beta=2.0, n_points=100)
    0.5
    >>> optim.stable_learning_rate(batch_size=100, lambda_max=100.0, beta=2.0, n_points=100)
    0.9900990099009901

  References:
    S. Ma, R. Bassily, M. Belkin, *The power of interpolation: understanding the
    effectiveness of SGD in modern over-parametrized learning*, ICML 2018.
  """
  batch_size = _v.check_int(batch_size, "batch_size", lo=1)
  if reduction not in ("mean", "sum"):
    raise ValueError(f"stable_learning_rate: `reduction` must be 'mean' or 'sum'; got "
                     f"{reduction!r}.")
  if directions is not None:
    _check_directions(directions, "stable_learning_rate")
    lambda_max = directions.max_value if lambda_max is None else lambda_max
    beta = directions.beta if beta is None else beta
    n_points = directions.n_points if n_points is None else n_points
  for name, val in (("lambda_max", lambda_max), ("beta", beta), ("n_points", n_points)):
    if val is None:
      raise ValueError(f"stable_learning_rate: `{name}` is unknown; pass it or build the "
                       "directions with optim.msk_directions (which computes it).")
    if not _v.is_concrete(val):
      raise TypeError(f"stable_learning_rate: `{name}` must be concrete (call it outside jit).")
    if not np.isfinite(float(val)) or float(val) <= 0:
      raise ValueError(f"stable_learning_rate: `{name}` must be a positive finite number; "
                       f"got {float(val)!r}.")
  b = int(batch_size)
  lam = float(lambda_max) / float(n_points)
  eta = b / (float(beta) + (b - 1) * lam)
  return eta / b if reduction == "sum" else eta

__all__ = ["MSKDirections", "ScaleByMSKState", "scale_by_msk", "msk_sgd", "precondition",
           "replace_directions", "stable_learning_rate", "msk_directions",
           "ScaleByMSKJvpState", "scale_by_msk_jvp", "msk_sgd_jvp", "msk_mse_loss",
           "adam_kernel_weights"]


# ============================================================ top-k directions, matrix-free
def _few_blas_threads(size):
  """One BLAS thread for the host-side small dense algebra (QR, eigh of the Krylov basis).

  Multi-threaded OpenBLAS on tall-skinny QRs is orders of magnitude slower on a loaded
  machine (``benchmarks/README.md``, "Notes moved from API docstrings"). A local context
  (threadpoolctl, a scikit-learn dependency); nothing global changes. Large bases keep the
  default.
  """
  try:
    import threadpoolctl
  except ImportError:  # pragma: no cover
    return contextlib.nullcontext()
  if size > 20_000_000:
    return contextlib.nullcontext()
  return threadpoolctl.threadpool_limits(1, "blas")


def msk_directions(apply_fn: Callable, params, x, g: _modifiers.Modifier, k: int, *,
                   subsample: Optional[int] = None, key=None, init_vectors=None,
                   oversample: int = 10, depth: int = 6, tol: float = 1e-6,
                   max_cycles: int = 10, block_size: Optional[int] = None,
                   memory_budget: int = 1 << 30, float64: bool = True,
                   compute_beta: bool = True) -> MSKDirections:
  r"""Top-k parameter-space directions of the full empirical NTK, without forming it.

  With ``J = ∂f(θ, X)/∂θ`` over all n·c outputs (c = outputs per point, all output axes
  flattened) and ``K = J Jᵀ`` (cross-output terms included), this finds the top k+1
  eigenpairs (λ_i, v_i) of K by block Krylov iteration on ``V ↦ J (Jᵀ V)`` (batched
  JVP/VJP over blocks of points, :func:`mskjax.kernels.jacobian_operator`), applies
  ``g`` to them (g sees λ₁..λ_{k+1}, e.g. ``flatten`` needs λ_{k+1}), and returns

  .. math:: q_i = J^\top v_i / \sqrt{\lambda_i},\qquad \langle q_i, q_j\rangle = \delta_{ij}

  (re-orthonormalised in float64) in the parameters' dtypes, for :func:`scale_by_msk`.

  EigenPro-style subsampling (Ma & Belkin 2017): with ``subsample=s`` the kernel is built
  on s random points; the directions then span the top of the parameter-space operator
  ``JᵀJ`` estimated from s points, and ``values`` are of the s-point Gram matrix (about
  s/n times those on n points; the step rule uses λ/s, see :func:`stable_learning_rate`).

  Precision: with ``float64=True`` (default) parameters, inputs, Jacobian products and
  the solver run in float64 inside ``jax.enable_x64`` (no global setting changes); with
  ``float64=False`` the products run in the inputs' dtype (the solver stays float64 on
  the host) — check ``residuals``. Outputs: ``directions`` in each parameter's dtype,
  ``values``/``new_values``/``next_value`` in the default float dtype.

  Args:
    apply_fn: ``apply_fn(params, x)``, a flax linen ``model.apply`` (with ``params`` the
      variables ``{'params': ...}``; directions are built for ``variables['params']``,
      what an optimizer sees), or an nnx ``Module`` (``params`` None: directions for
      ``nnx.Param``, the pytree ``nnx.Optimizer`` passes to optax).
    params: see ``apply_fn``.
    x: ``(n, ...)`` training inputs of any per-point shape.
    g: modifier ``g(evals, k)`` (``mskjax.modifiers``), called on the k+1 top eigenvalues.
    k: number of modified directions (1 ≤ k < s·c).
    subsample: use s random points of x (None: all n).
    key: ``jax.random.PRNGKey`` for the subsample and the random start block.
    init_vectors: optional ``(n, m)`` (or ``(s, m)``) start eigenvectors on the points,
      e.g. ``MSKSpectrum.vectors`` of the analytic NTK, or an :class:`mskjax.MSKSpectrum`;
      each is paired with every output (``v ⊗ e_j``, the analytic kernel is K ⊗ I_c) and
      pushed through J, then Rayleigh–Ritz (``max_cycles=1, depth=0`` does only that, with
      no warning when the residuals stay above ``tol``).
      Or the previous :class:`MSKDirections` of the same model (a refresh during
      training): the start block is ``J q_i`` at the current parameters (any points).
    oversample, depth, tol, max_cycles: block size k+1+oversample; Krylov blocks per
      cycle; stop when every ‖K v_i − λ_i v_i‖ ≤ tol·λ₁; at most this many restarts.
    block_size, memory_budget: points per block of the Jacobian products (default: from
      the budget in bytes).
    float64: compute in float64 (see above).
    compute_beta: also compute β = max_x λ_max of x's c×c block of K_g (per-point
      Jacobians, c backward passes per point) for :func:`stable_learning_rate`.

  Returns:
    :class:`MSKDirections` (with ``residuals``, ``beta``, ``n_points``).

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from mskjax import optim, modifiers
    >>> model = nn.Dense(3); x = jax.random.normal(jax.random.PRNGKey(0), (16, 4))
    >>> variables = model.init(jax.random.PRNGKey(1), x)
    >>> d = optim.msk_directions(model.apply, variables, x, modifiers.flatten(), 3)
    >>> d.directions['kernel'].shape, bool(d.residuals.max() < 1e-6)   # K = X̃X̃ᵀ ⊗ I₃: k = 3
    ((3, 4, 3), True)
  """
  fn, p = _kernels.trainable_fn(apply_fn, params)
  if not callable(g):
    raise TypeError(f"msk_directions: `g` must be a modifier g(evals, k); got "
                    f"{type(g).__name__}.")
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  if len(x.shape) < 2:
    raise ValueError(f"msk_directions: `x` must be (n, ...) with at least one feature axis; "
                     f"got shape {tuple(x.shape)}.")
  n = int(x.shape[0])
  key = jax.random.PRNGKey(0) if key is None else key
  seed = int(np.asarray(jax.random.randint(key, (), 0, 2**31 - 1)))
  rng = np.random.default_rng(seed)
  idx = None
  if subsample is not None:
    subsample = _v.check_int(subsample, "subsample", lo=2, hi=n)
    idx = np.sort(rng.choice(n, int(subsample), replace=False))
    x = np.asarray(x)[idx]
  s = int(x.shape[0])
  previous = None
  if isinstance(init_vectors, MSKDirections):
    previous, init_vectors = init_vectors, None
    if jax.tree.structure(previous.directions) != jax.tree.structure(p):
      raise ValueError("msk_directions: `init_vectors` (MSKDirections) has a different pytree "
                       "structure from `params`; pass directions built for this model.")
  if isinstance(init_vectors, MSKSpectrum):
    init_vectors = init_vectors.vectors
  if init_vectors is not None:
    init_vectors = np.asarray(init_vectors, np.float64)
    if init_vectors.ndim != 2 or init_vectors.shape[0] not in (n, s):
      raise ValueError(f"msk_directions: `init_vectors` must be (n, m) eigenvectors on the "
                       f"{n} points; got shape {init_vectors.shape}.")
    if init_vectors.shape[0] != s:
      init_vectors = init_vectors[idx]
  for name, val, lo in (("oversample", oversample, 0), ("depth", depth, 0),
                        ("max_cycles", max_cycles, 1)):
    _v.check_int(val, name, lo=lo)
  out_dtypes = jax.tree.map(lambda a: jnp.asarray(a).dtype, p)
  with jax.enable_x64(bool(float64)), \
      _few_blas_threads(s * (int(k) + 1 + int(oversample)) * (int(depth) + 1)):
    cdt = jnp.float64 if float64 else None
    op = _kernels.jacobian_operator(fn, p, x, columns=k + 1 + oversample,
                                    block_size=block_size, memory_budget=memory_budget,
                                    dtype=cdt)
    c = op.c
    N = s * c
    k = _v.check_k(k, N)
    start = None
    if init_vectors is not None:
      m0 = init_vectors.shape[1]
      start = np.einsum("pi,cj->pcij", init_vectors, np.eye(c)).reshape(N, m0 * c)
    elif previous is not None:
      # Warm start from earlier directions: J q_i = √λ_i v_i for the J they were built
      # from, so J' q_i is close to the new top eigenvectors while θ moves little.
      prev = jax.tree.map(lambda a: jnp.asarray(a, jax.tree.leaves(op.params)[0].dtype),
                          previous.directions)
      start = np.asarray(op.jvp(prev), np.float64).reshape(N, -1)
    cdtype = jax.tree.leaves(op.params)[0].dtype
    # The one Krylov solver (spectrum.eigh_top) on the operator V ↦ J (Jᵀ V): float64
    # basis, products in the compute dtype.
    kop = _kernels.KernelOperator(
        N, jnp.float64, lambda Vn: op.ntk_matvec(jnp.asarray(Vn, cdtype)).astype(jnp.float64))
    with warnings.catch_warnings():   # reported below, in msk_directions' own terms
      warnings.simplefilter("ignore", UserWarning)
      top, info = _spectrum.eigh_top(
          kop, k + 1, method="krylov", key=jax.random.PRNGKey(seed),
          oversample=int(oversample), depth=int(depth), tol=float(tol),
          max_cycles=int(max_cycles), start=start, return_info=True)
    if not info.converged and int(max_cycles) > 1:
      warnings.warn(f"msk_directions: the eigen-solve did not reach tol = {tol:g} in "
                    f"{max_cycles} cycles (max residual / λ₁ = "
                    f"{float(np.max(info.residuals) / top.values[0]):.3g}); raise `max_cycles` "
                    "or `depth`, or accept it (see `residuals`).", stacklevel=2)
    w, Y = np.asarray(top.values, np.float64), np.asarray(top.vectors, np.float64)
    res = np.asarray(info.residuals, np.float64) / max(w[0], np.finfo(float).tiny)
    eps = float(jnp.finfo(cdtype).eps)
    if not w[k - 1] > 100 * eps * w[0]:
      raise ValueError(f"msk_directions: λ_{k} = {w[k - 1]:.3g} is not positive: the "
                       f"empirical NTK on these {s} points has rank < {k}; lower `k`.")
    if abs(w[k - 1] - w[k]) <= 1e-6 * w[0]:
      warnings.warn(f"msk_directions: λ_{k} ≈ λ_{k + 1} ({w[k - 1]:.6g} vs {w[k]:.6g}): k cuts "
                    "through a block of (near-)equal eigenvalues, so which directions of "
                    "the block are modified is arbitrary (e.g. the c outputs of a "
                    "symmetric network at init); move k to the block edge.", stacklevel=2)
    new = np.asarray(g(jnp.asarray(w), k), np.float64)
    if new.shape != (k,):
      raise ValueError(f"msk_directions: g(evals, k) must return k={k} values; got shape "
                       f"{new.shape}.")
    Qt = op.vjp(jnp.asarray((Y[:, :k] / np.sqrt(w[:k])).reshape(s, c, k), cdtype))
    # Löwdin re-orthonormalisation q ← G^{-1/2} q, G = Q Qᵀ (≈ I up to the residuals).
    G = np.zeros((k, k))
    for leaf in jax.tree.leaves(Qt):  # (k, size) @ (size, k): a few GEMMs
      l2 = np.asarray(leaf, np.float64).reshape(k, -1)
      G += l2 @ l2.T
    ev, U = np.linalg.eigh(0.5 * (G + G.T))
    Ginv = (U / np.sqrt(np.maximum(ev, np.finfo(float).tiny))) @ U.T
    dirs = jax.tree.map(
        lambda l, dt: np.tensordot(Ginv, np.asarray(l, np.float64), axes=1), Qt, out_dtypes)
    beta = None
    if compute_beta:
      D = np.asarray(_kernels.ntk_diagonal_blocks(fn, op.params, x, dtype=cdt,
                                                  memory_budget=memory_budget), np.float64)
      Yk = Y[:, :k].reshape(s, c, k)
      Dg = D + np.einsum("pci,i,pdi->pcd", Yk, new - w[:k], Yk)
      beta = float(np.max(np.linalg.eigvalsh(0.5 * (Dg + np.swapaxes(Dg, 1, 2)))[:, -1]))
  fdt = jnp.result_type(float)
  dirs = jax.tree.map(lambda l, dt: jnp.asarray(l, dt), dirs, out_dtypes)
  return MSKDirections(dirs, jnp.asarray(w[:k], fdt), jnp.asarray(new, fdt),
                       jnp.asarray(w[k], fdt), jnp.asarray(res[:k], fdt),
                       None if beta is None else jnp.asarray(beta, fdt), s)


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
  k and ``learning_rate=η``). Stable steps: ``η < mskjax.max_learning_rate(K, g, k)``
  (= 2/λ_max(K_g)); 1/λ_max(K_g) is a safe default.

  When the fixed spectrum is valid (experiments/README.md, silent_alignment):

  * the correction ``Jᵀ V_k diag((g/λ − 1)/λ) V_kᵀ J u`` assumes the network's kernel has
    the stored eigenpairs *and size*. For a wide network near init (lazy regime) the
    analytic NTK is right to O(1/√width); modifiers with g/λ ≪ 1 on many modes (flatten at
    large k, reverse) amplify that error, so build the spectrum from the network's own
    empirical NTK at init (``mskjax.kernels.empirical_ntk``);
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
  ``mskjax.kernels.empirical_ntk(..., weights=)`` to get Θ_D = J D Jᵀ, or as
  ``kernel_weights_fn`` to :func:`mskjax.train.record_kernel_training`.
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
