r"""Reference function-space forms of MSK preconditioning (not the training path).

**This module is the reference form**: exact full-batch PGD for studies of the
paper's dynamics (same solution, width sweeps, silent alignment). For training use
:func:`mskjax.optim.msk_sgd` (fixed, data-free P) or :func:`mskjax.tracking.msk_sgd_tracking`.

* :func:`msk_mse_loss` — the exact function-space form ``½ rᵀ S r`` for MSE on the
  training set (full batch), whose plain gradient is ``Jᵀ S r``. Use it as the reference
  in the linear regime and when the kernel changes a lot during training (its step
  depends only on g/λ ratios, not on the kernel's size). Its minibatch form with
  ``batch_indices`` is biased and its batch matrix ``S_B`` is often indefinite at small b
  (docs/pitfalls.md#minibatch-restriction-of-s): prefer :func:`mskjax.optim.msk_sgd` for
  minibatches.
* :func:`scale_by_msk_jvp` / :func:`msk_sgd_jvp` — the older data-dependent form: one
  JVP and one VJP of the network on the *whole* training set per step (full-batch
  gradients only; several times a plain step: ``docs/results.md#measured-notes-without-a-table``).
  Kept for exact full-batch studies where the spectrum is refreshed from the current
  empirical NTK (``refresh_every``). With a stored spectrum and a drifting kernel its map
  ``u + Jᵀ V C Λ⁻¹ Vᵀ J u`` can become indefinite
  (the stored λ no longer match the current J); it checks this at every step and falls
  back to the plain gradient (see ``guard``).
* :func:`adam_kernel_weights` — Adam's per-parameter step sizes, the metric of an
  optimiser-weighted empirical NTK (for :mod:`mskjax.recorder`).

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

(checked by enumerating all batches in ``tests/test_function_space.py``): the off-diagonal part
is shrunk by 1 − (n−b)/(b(n−1)) and the diagonal part inflated by n/b; both are exact at
b = n. With delocalised eigenvectors ``D ≈ (tr C / n) I``, so the bias is about
``(tr C)/b``: use batches several times larger than k (as in EigenPro); for b < k the
batch matrix ``S_B`` can lose positive definiteness. The (n/b) factor in front keeps the
step size of full-batch GD: use the same ``η ≤ 1/λ_max(K_g)``-type rates.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mskjax import _nt
from mskjax import _validate as _v
from mskjax import modifiers as _modifiers
from mskjax.msk import MSKSpectrum


__all__ = ["ScaleByMSKJvpState", "scale_by_msk_jvp", "msk_sgd_jvp", "msk_mse_loss",
           "adam_kernel_weights"]


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
    >>> from mskjax import function_space
    >>> X = jnp.eye(3); apply_fn = lambda w, x: x @ w   # linear model: J = X = I
    >>> spec = mskjax.MSKSpectrum(jnp.array([1.0]), jnp.array([[1.0], [0.0], [0.0]]),
    ...                           jnp.array([4.0]), jnp.array(1.0))
    >>> tx = function_space.scale_by_msk_jvp(apply_fn, X, spec)
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
  k and ``learning_rate=η``). Stable steps: ``η < mskjax.steps.max_learning_rate(K, g, k)``
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
    >>> from mskjax import function_space
    >>> X = jnp.diag(jnp.array([2.0, 1.0])); apply_fn = lambda w, x: x @ w  # NTK = X Xᵀ
    >>> spec = mskjax.msk_spectrum(X @ X.T, mskjax.modifiers.scale(0.5), 1)  # S = diag(.5, 1)
    >>> tx = function_space.msk_sgd_jvp(0.1, apply_fn, X, spec)
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
    >>> from mskjax import function_space
    >>> spec = mskjax.msk_spectrum(jnp.diag(jnp.array([4.0, 2.0, 1.0])),
    ...                            mskjax.modifiers.flatten(), 1)   # S = diag(.5, 1, 1)
    >>> float(function_space.msk_mse_loss(jnp.ones(3), jnp.zeros(3), spec))
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
    >>> mskjax.function_space.adam_kernel_weights(0.1)(p, s, {'w': jnp.array([1.0, 2.0])})['w'].round(6).tolist()
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
