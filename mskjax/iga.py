r"""Inductive Gradient Adjustment (IGA): the empirical-NTK gradient adjustment of Shi et al.

IGA fits an implicit neural representation (a coordinate network f(θ, x) fitted to an
image) with a gradient whose residual has been reshaped by an MSK-style map built from the
empirical NTK of the network *at the current parameters*, recomputed every step:

1. **Groups.** The training pixels are tiled into P patches of equal shape
   (:func:`patch_groups`): ``groups[i, s]`` is the training point at position s of patch i.
2. **Sampled points.** In each patch, one representative point: the one of largest error
   ``Σ_c |r_c|`` (the choice active in the reference code; ``sample='center'`` takes the
   middle position instead) — :func:`representatives`.
3. **Kernel.** The P×P empirical NTK of the output-summed network ``h = (1/√c) Σ_c f_c`` on
   the representatives (the reference's "multidimensional output approximation"):
   ``K = J_h J_hᵀ`` (:func:`summed_output_ntk`).
4. **Transformation.** ``K = Σ λ_i v_i v_iᵀ`` (descending); the top-k eigenvalues are
   replaced by ``g(λ)`` — by default ``mskjax.modifiers.flatten()``: λ_i → λ_{k+1} (the
   reference's ``xuhao = replace_end = k``, ``replace_start = 0``), giving

   .. math:: S = I + \sum_{i\le k,\ \lambda_i>0}\Big(\frac{g_i}{\lambda_i}-1\Big)v_i v_i^\top

   (:func:`adjustment_matrix`: the same S as ``mskjax.msk_spectrum`` on a P×P Gram matrix).
5. **Lift to all points.** The residual of *every* training point is mixed across patches at
   the same position: ``r'[groups[i, s]] = Σ_j S_ij r[groups[j, s]]`` (:func:`lift`).
6. **Gradient.** ``(2/N) Jᵀ r'`` (N = number of residual entries) replaces the MSE gradient
   ``(2/N) Jᵀ r``; the reference then takes an Adam step (lr 5e-3 with IGA vs 1e-3 without,
   k = 25 for ReLU MLPs on 32×32 patches of Kodak images).

:func:`iga_loss` packages 2–6 as a loss whose *value* is the plain MSE and whose *gradient*
is the IGA gradient, so any optax optimizer applies IGA: ``jax.grad(iga_loss)``.

Relation to mskjax's preconditioner: ``optim.scale_by_msk`` applies a fixed parameter-space
map ``P`` built once from the top-k NTK directions (``P Jᵀ e = Jᵀ S e``); IGA instead
rebuilds a small P×P function-space S every step on P sampled points and lifts it to the
rest of the image by the patch grouping (cost: P per-point gradients and a P×P eigh per
step, no one-off cost).

Reference:
  K. Shi, X. Wei, Q. Guo, ... S. Gu, *Inductive Gradient Adjustment for Spectral Bias in
  Implicit Neural Representations*, ICML 2025; code: github.com/LabShuHangGU/IGA-INR
  (``image_fitting/fitting.py``: ``compute_NTK``, ``calculate_precondition_matrix``,
  ``weighted_loss``; ``train_relu.sh``: 32×32 patches of 512×768 images = 384 patches,
  ``xuhao = replace_end = 25`` (k = 25; 20 with positional encoding), Adam lr 5e-3 with
  IGA vs 1e-3 without, StepLR ×0.1 at step 3000 of 10000, every pixel trained). One
  difference by default: the reference's ``a[:, max_indices, :]`` indexes every patch at
  *all* patches' max-error positions, so each kernel row there is the gradient of a sum of
  P points of a patch; here (``sample='max_error'``) each row is the single sampled point
  of the patch, as the paper describes; ``sample='max_error_sum'`` reproduces the code.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mskjax import _validate as _v
from mskjax import tangents as _tangents
from mskjax import modifiers as _modifiers

__all__ = ["patch_groups", "representatives", "summed_output_ntk", "adjustment_matrix", "lift",
           "iga_loss"]

SAMPLES = ("max_error", "center", "max_error_sum")


def patch_groups(height: int, width: int, patch_size: int, *, mask=None) -> np.ndarray:
  """Training points of an image grouped by patch: ``groups[i, s]`` = point s of patch i.

  The image's pixels are in row-major order; the training points are the pixels where
  ``mask`` is True, in that order (all pixels when ``mask`` is None), and ``groups`` holds
  indices into them. Patches tile the image in row-major order; within a patch, its
  training pixels are in row-major order. Every patch must hold its training pixels at the
  same positions (so that position s means the same offset in every patch, which
  :func:`lift` relies on) — true for no mask, and for a checkerboard mask with an even
  ``patch_size``.

  Args:
    height, width: image size in pixels (multiples of ``patch_size``).
    patch_size: side of the square patches.
    mask: optional ``(height, width)`` boolean array of training pixels.

  Returns:
    ``(P, m)`` int64 array, P = (height/patch_size)·(width/patch_size), m training points
    per patch.

  Example:
    >>> from mskjax import iga
    >>> iga.patch_groups(4, 4, 2).tolist()[:2]
    [[0, 1, 4, 5], [2, 3, 6, 7]]
  """
  height = _v.check_int(height, "height", lo=1)
  width = _v.check_int(width, "width", lo=1)
  patch_size = _v.check_int(patch_size, "patch_size", lo=1)
  if height % patch_size or width % patch_size:
    raise ValueError(f"patch_groups: `patch_size` ({patch_size}) must divide the image size "
                     f"({height}×{width}); pick a divisor.")
  if mask is None:
    mask = np.ones((height, width), bool)
  mask = np.asarray(mask)
  if mask.shape != (height, width) or mask.dtype != bool:
    raise ValueError(f"patch_groups: `mask` must be a ({height}, {width}) boolean array; got "
                     f"shape {mask.shape}, dtype {mask.dtype}.")
  index = np.full((height, width), -1, np.int64)
  index[mask] = np.arange(int(mask.sum()))
  ph, pw = height // patch_size, width // patch_size
  blocks = index.reshape(ph, patch_size, pw, patch_size).transpose(0, 2, 1, 3)
  blocks = blocks.reshape(ph * pw, patch_size * patch_size)
  pattern = blocks >= 0
  if not pattern.any():
    raise ValueError("patch_groups: `mask` selects no pixel.")
  if not (pattern == pattern[0]).all():
    raise ValueError("patch_groups: the patches hold their training pixels at different "
                     "positions, so the adjustment cannot be lifted position by position; use "
                     "an even `patch_size` with a checkerboard mask (or no mask).")
  return blocks[:, pattern[0]]


def _check_groups(groups, n=None):
  if _v.is_concrete(groups):
    g = np.asarray(groups)
    if g.ndim != 2 or not np.issubdtype(g.dtype, np.integer) or g.shape[0] < 2:
      raise ValueError(f"`groups` must be a (P, m) integer array with P ≥ 2 patches "
                       f"(iga.patch_groups); got shape {g.shape}, dtype {g.dtype}.")
    if n is not None and (g.min() < 0 or g.max() >= n):
      raise ValueError(f"`groups` indexes points outside [0, {n}); build it from the mask of "
                       "the training points (iga.patch_groups(..., mask=...)).")
    if n is not None and np.unique(g).size != g.size:
      raise ValueError("`groups` lists a point twice; patches must be disjoint.")
  return jnp.asarray(groups)


def representatives(residuals, groups, *, sample: str = "max_error") -> jax.Array:
  """The sampled point of every patch: index into the training points, ``(P,)``.

  Args:
    residuals: ``(n,)`` or ``(n, c)`` residuals f(x) − y on the training points.
    groups: ``(P, m)`` from :func:`patch_groups`.
    sample: ``'max_error'`` (largest Σ_c |r_c| in the patch, the paper's choice),
      ``'center'`` (position m // 2 of every patch) or ``'max_error_sum'`` (the reference
      code's indexing ``a[:, max_indices]``: patch i is represented by its points at the
      max-error positions of *all* P patches).

  Returns:
    ``(P,)`` integer indices, or ``(P, P)`` for ``'max_error_sum'`` (row i: patch i's
    points at positions s_1..s_P, s_j the max-error position of patch j). Jittable (no
    Python control flow on values).

  Example:
    >>> import jax.numpy as jnp; from mskjax import iga
    >>> iga.representatives(jnp.array([0.1, -0.5, 0.2, 0.3]), jnp.array([[0, 1], [2, 3]])).tolist()
    [1, 3]
  """
  _v.check_choice(sample, "sample", SAMPLES)
  r = jnp.asarray(residuals)
  groups = _check_groups(groups, r.shape[0])
  P, m = groups.shape
  if sample == "center":
    return groups[:, m // 2]
  score = jnp.abs(r.reshape(r.shape[0], -1)).sum(-1)[groups]        # (P, m)
  pos = jnp.argmax(score, axis=1)                                    # (P,) positions
  if sample == "max_error_sum":
    return groups[:, pos]                                            # (P, P)
  return jnp.take_along_axis(groups, pos[:, None], axis=1)[:, 0]


def summed_output_ntk(apply_fn: Callable, params, x, *, sets: bool = False) -> jax.Array:
  r"""P×P empirical NTK of the output-summed network ``h = (1/√c) Σ_c f_c``.

  .. math:: K_{ij} = \Big\langle \frac{\partial h(x_i)}{\partial\theta},
     \frac{\partial h(x_j)}{\partial\theta}\Big\rangle
     = \frac1c \sum_{a,b} \langle \partial_\theta f_a(x_i), \partial_\theta f_b(x_j)\rangle.

  One gradient per point (``vmap`` of ``grad``), then ``J Jᵀ``; jittable. For c = 1 it is
  the plain empirical NTK (``mskjax.empirical_ntk``). With ``sets=True`` row i is a *set*
  of points ``x[i]`` (shape ``(P, m, ...)``) and its gradient is that of ``Σ_s h(x[i, s])``
  (the reference code's kernel, :func:`representatives` ``'max_error_sum'``).

  Args:
    apply_fn, params: ``apply_fn(params, x)`` → ``(n,)`` or ``(n, c)``; flax linen
      ``model.apply`` with its variables (the kernel is over ``variables['params']``).
    x: ``(P, ...)`` points, or ``(P, m, ...)`` sets of points with ``sets=True``.
    sets: see above.

  Returns:
    ``(P, P)`` kernel in the parameters' dtype.

  Example:
    >>> import jax.numpy as jnp; from mskjax import iga
    >>> f = lambda p, x: x @ p                       # J = X: K = X Xᵀ
    >>> iga.summed_output_ntk(f, jnp.ones(2), jnp.array([[1.0, 0.0], [1.0, 2.0]])).tolist()
    [[1.0, 1.0], [1.0, 5.0]]
  """
  fn, p = _tangents.trainable_fn(apply_fn, params)
  x = jnp.asarray(x)
  one = x[0, :1] if sets else x[:1]
  out_c = int(np.prod(jax.eval_shape(lambda q, z: fn(q, z), p, one).shape[1:]))

  def h(q, xi):
    return jnp.sum(fn(q, xi if sets else xi[None])) * float(1.0 / np.sqrt(out_c))

  grads = jax.vmap(jax.grad(h), in_axes=(None, 0))(p, x)
  rows = [l.reshape(l.shape[0], -1) for l in jax.tree.leaves(grads)]
  return sum(r @ r.T for r in rows)


def adjustment_matrix(gram, k: int, g: Optional[_modifiers.Modifier] = None) -> jax.Array:
  r"""IGA's S: the top-k eigenvalues of ``gram`` transformed by ``g``, as a P×P map on residuals.

  .. math:: S = I + \sum_{i\le k,\ \lambda_i > \epsilon\lambda_1}
     \Big(\frac{g(\lambda)_i}{\lambda_i} - 1\Big) v_i v_i^\top

  with ``gram = Σ λ_i v_i v_iᵀ`` descending and ``g`` a mskjax modifier called on all P
  eigenvalues (default ``modifiers.flatten()``: g_i = λ_{k+1}, IGA's default). Eigenvalues
  at round-off level are left alone (the reference stops at the first λ_i ≤ 0). Jittable
  (``jnp.linalg.eigh`` in the gram's dtype).

  Args:
    gram: ``(P, P)`` symmetric PSD kernel (:func:`summed_output_ntk`).
    k: number of transformed eigenvalues, 1 ≤ k < P.
    g: modifier ``g(evals, k)`` returning k values (``mskjax.modifiers``).

  Returns:
    ``(P, P)`` symmetric S.

  Example:
    >>> import jax.numpy as jnp; from mskjax import iga
    >>> iga.adjustment_matrix(jnp.diag(jnp.array([1.0, 4.0, 2.0])), 1).tolist()  # 4 → 2
    [[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]]
  """
  gram = jnp.asarray(gram)
  if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
    raise ValueError(f"adjustment_matrix: `gram` must be square (P, P); got {gram.shape}.")
  P = gram.shape[0]
  k = _v.check_int(k, "k", lo=1, hi=P - 1)
  g = _modifiers.flatten() if g is None else g
  if not callable(g):
    raise TypeError(f"adjustment_matrix: `g` must be a modifier g(evals, k); got {type(g)}.")
  w, V = jnp.linalg.eigh(0.5 * (gram + gram.T))
  w, V = w[::-1], V[:, ::-1]
  new = jnp.asarray(g(w, k), gram.dtype)
  if new.shape != (k,):
    raise ValueError(f"adjustment_matrix: g(evals, k) must return k={k} values; got "
                     f"shape {new.shape}.")
  eps = 100 * jnp.finfo(gram.dtype).eps
  ok = w[:k] > eps * jnp.maximum(w[0], jnp.finfo(gram.dtype).tiny)
  coef = jnp.where(ok, new / jnp.where(ok, w[:k], 1.0) - 1.0, 0.0)
  Vk = V[:, :k]
  return jnp.eye(P, dtype=gram.dtype) + (Vk * coef) @ Vk.T


def lift(S, residuals, groups) -> jax.Array:
  """The adjustment on every training point: ``r'[groups[i, s]] = Σ_j S_ij r[groups[j, s]]``.

  Points in no group keep their residual.

  Args:
    S: ``(P, P)`` (:func:`adjustment_matrix`).
    residuals: ``(n,)`` or ``(n, c)``.
    groups: ``(P, m)`` (:func:`patch_groups`).

  Returns:
    Adjusted residuals, same shape and dtype as ``residuals``.

  Example:
    >>> import jax.numpy as jnp; from mskjax import iga
    >>> S = jnp.array([[0.5, 0.5], [0.5, 0.5]])
    >>> iga.lift(S, jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([[0, 1], [2, 3]])).tolist()
    [2.0, 3.0, 2.0, 3.0]
  """
  r = jnp.asarray(residuals)
  groups = _check_groups(groups, r.shape[0])
  if S.shape != (groups.shape[0],) * 2:
    raise ValueError(f"lift: `S` must be ({groups.shape[0]}, {groups.shape[0]}) for "
                     f"{groups.shape[0]} patches; got {S.shape}.")
  mixed = jnp.tensordot(S.astype(r.dtype), r[groups], axes=1)      # (P, m, ...)
  return r.at[groups].set(mixed)


def iga_loss(apply_fn: Callable, params, x, targets, groups, k: int, *,
             g: Optional[_modifiers.Modifier] = None, sample: str = "max_error") -> jax.Array:
  r"""MSE whose gradient is the IGA gradient: value ``mean(r²)``, gradient ``(2/N) Jᵀ r'``.

  With ``r = f(θ, x) − y`` (N entries), ``S`` from the summed-output NTK on the sampled
  point of every patch at the current θ (:func:`representatives`,
  :func:`summed_output_ntk`, :func:`adjustment_matrix`) and ``r' = lift(S, r)``,

  .. math:: L(\theta) = \overline{r^2} + \frac{2}{N}\sum (r - \bar r)\odot(\bar r' - \bar r),
     \qquad \nabla_\theta L = \frac{2}{N} J^\top r',

  where a bar is ``stop_gradient`` (S and r' are constants of the step, as in the
  reference). Its value equals the MSE. Use with any optax optimizer (the reference: Adam).

  Args:
    apply_fn, params: ``apply_fn(params, x)`` → ``(n,)`` or ``(n, c)`` (a flax linen
      ``model.apply`` with variables; differentiate w.r.t. ``params``).
    x: ``(n, ...)`` training inputs; targets: ``(n,)``/``(n, c)`` like the outputs.
    groups: ``(P, m)`` patches of training points (:func:`patch_groups`).
    k: transformed eigenvalues (1 ≤ k < P); IGA uses 25 of 384 patches for ReLU MLPs.
    g: modifier (default ``modifiers.flatten()``).
    sample: ``'max_error'`` (default, the paper), ``'center'`` or ``'max_error_sum'`` (the
      reference code's kernel: each row sums P points of its patch; P× the cost) — see
      :func:`representatives`.

  Returns:
    Scalar loss.

  Example:
    >>> import jax, jax.numpy as jnp; from mskjax import iga
    >>> x = jnp.stack(jnp.meshgrid(jnp.linspace(-1, 1, 4), jnp.linspace(-1, 1, 4),
    ...                            indexing='ij'), -1).reshape(16, 2)
    >>> f = lambda p, x: jnp.tanh(x @ p['w1']) @ p['w2']
    >>> p = {'w1': jax.random.normal(jax.random.PRNGKey(0), (2, 8)), 'w2': jnp.ones(8) / 8}
    >>> y = jnp.sin(3 * x[:, 0]); groups = iga.patch_groups(4, 4, 2)
    >>> loss = iga.iga_loss(f, p, x, y, groups, k=1)
    >>> bool(jnp.allclose(loss, jnp.mean((f(p, x) - y) ** 2)))          # value: the MSE
    True
    >>> jax.grad(lambda q: iga.iga_loss(f, q, x, y, groups, k=1))(p)['w1'].shape
    (2, 8)

  Reference:
    Shi et al., *Inductive Gradient Adjustment for Spectral Bias in Implicit Neural
    Representations*, ICML 2025.
  """
  pred = apply_fn(params, x)
  targets = jnp.asarray(targets)
  if pred.shape != targets.shape:
    raise ValueError(f"iga_loss: `targets` {tuple(targets.shape)} must have the shape of the "
                     f"network's outputs {tuple(pred.shape)}.")
  groups = _check_groups(groups, pred.shape[0])
  r = (pred - targets.astype(pred.dtype))
  rs = lax.stop_gradient(r)
  idx = representatives(rs, groups, sample=sample)
  K = summed_output_ntk(apply_fn, lax.stop_gradient(params), jnp.asarray(x)[idx],
                        sets=sample == "max_error_sum")
  S = adjustment_matrix(K, k, g)
  ra = lax.stop_gradient(lift(S, rs, groups))
  N = r.size
  return jnp.mean(r ** 2) + (2.0 / N) * jnp.sum((r - rs) * (ra - rs))
