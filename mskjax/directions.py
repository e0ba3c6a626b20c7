r"""Parameter-space directions of a finite network's NTK: what the MSK preconditioner stores.

With ``J = ∂f(θ, X)/∂θ`` (all n·c outputs on the points used) and ``K = J Jᵀ = Σ λ_i v_i v_iᵀ``,
the directions ``q_i = Jᵀ v_i / √λ_i`` are orthonormal in parameter space, and

.. math:: P u = u + \sum_{i\le k} \Big(\frac{g_i}{\lambda_i} - 1\Big) q_i \langle q_i, u\rangle

satisfies ``P Jᵀ e = Jᵀ S e`` for every function-space gradient ``e``
(``S = I + Σ (g_i/λ_i − 1) v_i v_iᵀ``). :func:`msk_directions` builds them;
:func:`precondition` applies P; :func:`check_directions` holds every invariant of the record
(the optimizers and step rules call it). The eigen-solve runs through
:func:`mskjax.eigh_top`; the optax transforms live in :mod:`mskjax.optim` and the step rules
in :mod:`mskjax.steps`. The mathematics: ``docs/theory.md``.
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

from mskjax import _linalg
from mskjax import _loops
from mskjax import _validate as _v
from mskjax import kernels as _kernels
from mskjax import modifiers as _modifiers
from mskjax import spectrum as _spectrum
from mskjax import tangents as _tangents
from mskjax.msk import MSKSpectrum, modified_max_value

key_seed = _linalg.key_seed

__all__ = ["MSKDirections", "msk_directions", "precondition", "loss_hessian_sqrt"]


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
    vectors: ``(s·c, k)`` the function-space eigenvectors v_i on those points (row index
      point·c + output), or None: what re-forms the directions at other parameters.
    indices: ``(s,)`` indices into ``x`` of the points used (None: all of ``x``).
    hessian_sqrt: ``(s, c, c)`` per-point ``H_i^½`` of the loss's output Hessian at the
      parameters the directions were built at (None: H = I, the MSE loss). With it the
      directions at other parameters θ' are ``orth(J(θ')ᵀ H^½ V)`` (V = ``vectors``), the
      tracking form; ``vectors`` are then eigenvectors of the Gauss–Newton kernel
      ``H^½ J Jᵀ H^½``.
  """
  directions: Any
  values: jax.Array
  new_values: jax.Array
  next_value: jax.Array
  residuals: Any = None
  beta: Any = None
  n_points: Any = None
  vectors: Any = None
  indices: Any = None
  hessian_sqrt: Any = None

  @property
  def k(self) -> int:
    return int(self.values.shape[0])

  @property
  def max_value(self) -> jax.Array:
    """λ_max(K_g) = max(g(λ₁..λ_k), λ_{k+1})."""
    return modified_max_value(self.new_values, self.next_value)



def _is_masked(x):
  return isinstance(x, optax.MaskedNode) or x is None


def check_directions(directions, where, *, params=None, what="`params`",
                     label="`directions.directions`", orthonormal=False):
  """Every invariant of an :class:`MSKDirections`, checked in one place; ``(values,
  new_values)``.

  Always: the type; ``values``/``new_values`` both ``(k,)``; every direction leaf floating
  with a leading axis of k; and, where concrete, finite values with λ > 0 and g(λ) > 0.
  With ``params`` (a pytree: the parameters, the updates, …; ``optax.MaskedNode`` leaves
  are skipped): the same pytree structure and direction leaves ``(k, *leaf.shape)``
  (``what`` names that pytree in the error, ``label`` the directions). With
  ``orthonormal=True`` and concrete directions: ``P = I + Σ (g_i/λ_i − 1) q_i q_iᵀ`` is
  positive definite and the rows q_i that enter it are orthonormal (to
  ``max(1e-6, 100·√eps)``). Errors name ``where``, the field and the fix.

  Example:
    >>> import jax.numpy as jnp
    >>> d = MSKDirections({'w': jnp.array([[1.0, 0.0]])}, jnp.array([4.0]), jnp.array([1.0]),
    ...                   jnp.array(1.0))
    >>> check_directions(d, "demo", params={'w': jnp.zeros(3)})
    Traceback (most recent call last):
    ...
    ValueError: demo: `directions.directions` does not match `params`: a direction leaf has shape (1, 2) where `params` has (3,) (directions are (k, *leaf shape)); build the directions from the same parameter pytree (for flax linen: variables['params']).
  """
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
  if params is not None:
    check_layout(directions.directions, params, where, what, label)
  if orthonormal:
    _v.check_orthonormal_directions(
        directions.directions,
        msk_coefficients(values, new_values, tree_dtype(directions.directions)), where)
  return values, new_values


def check_layout(dirs, tree, where, what="`params`", label="`directions.directions`"):
  """``dirs`` (a pytree of ``(k, ...)`` direction leaves) matches ``tree`` (the parameters,
  the updates, …): same pytree structure and leaves ``(k, *leaf.shape)``; masked leaves
  (``optax.MaskedNode``/None) skipped. Static shapes only: also under ``jit``."""
  fix = ("build the directions from the same parameter pytree (for flax linen: "
         "variables['params']).")
  ds = jax.tree.structure(dirs, is_leaf=_is_masked)
  ts = jax.tree.structure(tree, is_leaf=_is_masked)
  if ds != ts:
    raise ValueError(f"{where}: {label} does not match {what}: different pytree structures "
                     f"({ds} vs {ts}); {fix}")
  for q, a in zip(jax.tree.leaves(dirs, is_leaf=_is_masked),
                  jax.tree.leaves(tree, is_leaf=_is_masked)):
    if _is_masked(a) or _is_masked(q):
      continue
    if tuple(np.shape(q))[1:] != tuple(np.shape(a)):
      raise ValueError(f"{where}: {label} does not match {what}: a direction leaf has shape "
                       f"{tuple(np.shape(q))} where {what} has {tuple(np.shape(a))} "
                       f"(directions are (k, *leaf shape)); {fix}")


def msk_coefficients(values, new_values, dtype):
  """``g/λ − 1`` in ``dtype``, clipped so that g/λ ≥ tiny under tracing (concrete inputs
  are checked by :func:`check_directions`)."""
  ratio = new_values.astype(dtype) / values.astype(dtype)
  return jnp.maximum(ratio, jnp.finfo(dtype).tiny) - 1.0


def tree_dtype(tree):
  return jnp.result_type(*[l.dtype for l in jax.tree.leaves(tree)])


def flat_rows(directions, where):
  """``(Q, ch)``: the directions as host rows (k, #params) in ``ravel_pytree`` order and
  ``√(g/λ) − 1`` (the coefficients of P^½) in the directions' dtype; (None, None) for None."""
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
  values, new_values = check_directions(directions, "precondition")
  dt = tree_dtype(updates)
  coef = msk_coefficients(values, new_values, dt)
  return apply_directions(updates, directions.directions, coef)


def apply_directions(updates, dirs, coef):
  try:
    a = _project(updates, dirs)
  except ValueError as e:
    raise ValueError("scale_by_msk: the updates and `directions.directions` have different "
                     "pytree structures; build the directions from the same parameter pytree "
                     f"the optimizer sees (for flax linen: variables['params']). ({e})") from None
  return _apply_dirs(updates, dirs, coef.astype(a.dtype) * a)


# ============================================================ building the directions
LOSSES = _linalg.LOSSES
METHODS = ("auto", "dense", "randomized", "krylov")
"""Eigensolvers of :func:`msk_directions`: the methods of :func:`mskjax.eigh_top` that run
on products with the kernel."""
JACOBIANS = ("auto", "explicit", "matrix_free")
"""How :func:`msk_directions` forms the products with the kernel."""


def loss_hessian_sqrt(loss, outputs, targets=None):
  r"""Per-point square roots ``H_i^½`` of the loss's output Hessian (PSD-clipped), or None.

  ``H_i = ∂²ℓ(f_i, y_i)/∂f_i²`` at the outputs ``f_i`` (``(s, c)``, float64): the identity
  for ``'mse'`` (½‖f − y‖²; returns None), ``diag(p_i) − p_i p_iᵀ`` with ``p_i =
  softmax(f_i)`` for ``'softmax_cross_entropy'`` (no targets needed), ``jax.hessian`` of a
  callable ``ℓ(f_i, y_i)`` (per point, f_i flattened to ``(c,)``) otherwise. Each ``H_i^½``
  comes from a c×c eigh with negative eigenvalues clipped to 0. Host (numpy, float64), with
  the outputs and the loss checked; the traceable form is the same formula.

  Example:
    >>> import numpy as np
    >>> Hh = loss_hessian_sqrt("softmax_cross_entropy", np.zeros((1, 2)))   # p = (½, ½)
    >>> np.round(Hh[0] @ Hh[0], 6).tolist()                      # H = diag(p) − ppᵀ
    [[0.25, -0.25], [-0.25, 0.25]]
  """
  F = np.asarray(outputs, np.float64)
  s, c = F.shape
  if not np.all(np.isfinite(F)):
    raise ValueError("msk_directions: the network's outputs at `params` are NaN or inf on "
                     f"{int(np.sum(~np.all(np.isfinite(F), axis=1)))} of the {s} points (did "
                     "training diverge?); the loss Hessian needs finite outputs.")
  if isinstance(loss, str) and loss == "mse":
    return None
  if isinstance(loss, str):
    H = _linalg.output_hessian(loss, F, xp=np)
  else:
    with jax.enable_x64(True):
      y = jax.tree.map(lambda a: jnp.asarray(a), targets)
      try:
        H = _linalg.output_hessian(loss, F, y, xp=np)
      except Exception as e:  # noqa: BLE001 -- re-raised with the argument named
        raise ValueError("msk_directions: `loss` must be a per-point loss ℓ(f_i, y_i) -> "
                         f"scalar of the point's outputs f_i (shape ({c},)) and its target "
                         f"y_i (a row of `targets`); calling jax.hessian of it failed: {e}"
                         ) from e
    if H.shape != (s, c, c):
      raise ValueError(f"msk_directions: `loss`(f_i, y_i) must return a scalar, so that its "
                       f"Hessian in f_i is ({c}, {c}) per point; got Hessians of shape "
                       f"{H.shape[1:]}.")
    if not np.all(np.isfinite(H)):
      raise ValueError("msk_directions: the Hessian of `loss` at the current outputs has NaN "
                       "or inf entries; check the loss and the `targets`.")
  return _linalg.psd_power(H, 0.5)


class _Explicit:
  """A = H^½ J as a host matrix (N, P) in the compute dtype."""

  def __init__(self, A, p):
    self.A, self.p = A, p
    self.sizes = [int(np.prod(np.shape(l))) for l in jax.tree.leaves(p)]
    self.treedef = jax.tree.structure(p)
    self.shapes = [np.shape(l) for l in jax.tree.leaves(p)]

  def _flat(self, tree):
    return np.concatenate([np.asarray(l, np.float64).reshape(l.shape[0], -1)
                           for l in jax.tree.leaves(tree)], axis=1)        # (m, P)

  def weigh(self, Hh, s, c):
    A3 = self.A.reshape(s, c, -1)
    for lo in range(0, s, 256):   # in place, a few points at a time
      A3[lo:lo + 256] = np.einsum("pcd,pdq->pcq", Hh[lo:lo + 256].astype(self.A.dtype),
                                  A3[lo:lo + 256])

  def range(self, m, rng):
    return np.asarray(self.A @ rng.standard_normal((self.A.shape[1], m)).astype(self.A.dtype),
                      np.float64)

  def push(self, tree):
    return np.asarray(self.A @ self._flat(tree).T.astype(self.A.dtype), np.float64)

  def gram(self, Q):
    Q = Q.astype(self.A.dtype)
    return np.asarray(self.A @ (self.A.T @ Q), np.float64)

  def matrix(self):
    K = np.asarray(self.A @ self.A.T, np.float64)
    return 0.5 * (K + K.T)

  def adjoint(self, V):
    M = np.asarray(self.A.T @ V.astype(self.A.dtype), np.float64).T          # (m, P)
    parts = np.split(M, np.cumsum(self.sizes)[:-1], axis=1)
    return jax.tree.unflatten(self.treedef, [a.reshape((M.shape[0],) + sh)
                                             for a, sh in zip(parts, self.shapes)])

  def diag_blocks(self, s, c):
    A3 = self.A.reshape(s, c, -1)
    return np.asarray(np.einsum("pcq,pdq->pcd", A3, A3), np.float64)


class _MatrixFree:
  """A = H^½ J through blocked JVP/VJP (Python loops of jitted blocks)."""

  def __init__(self, op, Hh, s, c, net, x, dtype, memory_budget, m):
    self.op, self.Hh, self.s, self.c = op, Hh, s, c
    # net = (apply_fn, params) as the caller gave them: the diagonal-block programs are
    # keyed on apply_fn, so a second build of the same network reuses their compilation
    self.net, self.x, self.dtype, self.memory_budget = net, x, dtype, memory_budget
    self.cdt = jax.tree.leaves(op.params)[0].dtype
    self.m = m      # blocks of fewer columns are zero-padded to m: one compilation each

  def weigh(self, Hh, s, c):
    self.Hh = Hh

  def _pad(self, a, axis):
    n = a.shape[axis]
    if n >= self.m:
      return a, n
    w = [(0, 0)] * a.ndim
    w[axis] = (0, self.m - n)
    return np.pad(np.asarray(a), w), n

  def _jvp(self, tree):
    n = jax.tree.leaves(tree)[0].shape[0]
    # host arrays cast on the host, straight into the jitted blocks (an eager device cast
    # or jnp.asarray of a host array compiles a small program per shape)
    T = jax.tree.map(lambda a: np.asarray(self._pad(a, 0)[0], self.cdt), tree)
    out = np.asarray(self.op.jvp(T), np.float64).reshape(self.s * self.c, -1)[:, :n]
    return _linalg.weigh_rows(self.Hh, out, self.s, self.c)

  def range(self, m, rng):
    T = jax.tree.map(lambda a: rng.standard_normal((m,) + a.shape), self.op.params)
    return self._jvp(T)

  def push(self, tree):
    return self._jvp(tree)

  def adjoint(self, V):
    V, n = self._pad(V, 1)
    W = _linalg.weigh_rows(self.Hh, V, self.s, self.c).reshape(self.s, self.c, -1)
    return jax.tree.map(lambda a: np.asarray(a)[:n],
                        self.op.vjp(np.asarray(W, self.cdt)))

  def gram(self, Q):
    return self._jvp(self.adjoint(Q))

  def diag_blocks(self, s, c):
    D = np.asarray(_tangents.ntk_diagonal_blocks(*self.net, self.x,
                                                 dtype=self.dtype,
                                                 memory_budget=self.memory_budget),
                   np.float64)
    if self.Hh is None:
      return D
    return np.einsum("pab,pbc,pdc->pad", self.Hh, D, self.Hh)


def _forward_flops(fn, p, x1):
  """Flops of one forward pass on one point (XLA's cost analysis; 2·#params if none)."""
  P = sum(int(np.prod(np.shape(l))) for l in jax.tree.leaves(p))
  try:
    cost = jax.jit(fn).lower(p, x1).cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    flops = float(cost.get("flops", 0.0))
  except Exception:  # noqa: BLE001 -- a cost estimate only
    flops = 0.0
  return flops if flops > 0 else 2.0 * P


def choose_jacobian(n_rows, n_params, c, m, forward_flops, itemsize, memory_budget):
  """``'explicit'`` or ``'matrix_free'`` for ``jacobian='auto'``: a flop model per point.

  Explicit: the Jacobian (c backward passes, ~3·c·F flops) plus, per product with K, two
  GEMMs that read the (N, P) matrix (4·c·P·m flops, weighted ×2: memory-bound).
  Matrix-free: per product m JVPs and VJPs (~5·m·F). Explicit also needs N·P·itemsize ≤
  ``memory_budget``. (F: forward flops per point; MLPs have F ≈ 2P, so matrix-free wins by
  ~c; convolutions reuse each weight over positions, F ≫ P, so the explicit Jacobian wins.)

  Example:
    >>> choose_jacobian(2500, 23306, 10, 31, 8.4e5, 4, 1 << 30)    # 1-D CNN, 250 points
    'explicit'
    >>> choose_jacobian(5000, 78858, 10, 41, 1.6e5, 4, 1 << 30)    # MLP: 1.6 GB > budget
    'matrix_free'
    >>> choose_jacobian(1000, 78858, 10, 41, 1.6e5, 4, 1 << 30)    # MLP: F ≈ 2P
    'matrix_free'
  """
  if n_rows * n_params * itemsize > memory_budget:
    return "matrix_free"
  iters = 4
  explicit = 3 * c * forward_flops + iters * 8 * c * n_params * m
  free = iters * 5 * m * forward_flops + 2.5 * m * forward_flops
  return "explicit" if explicit < free else "matrix_free"


def _refresh_block(ops, dirs, m, rng):
  """Start block of a refresh: ``H^½ J [q_1..q_k, ω_1..ω_(m−k)]`` at the new parameters.

  The previous parameter-space directions q_i and fresh Gaussian columns ω (the cold
  build's range sample) pushed through the *current* operator in one product with A. Not
  the stored function-space vectors: for a loss-weighted kernel they carry the old
  ``H^½`` (the outputs, hence H, change most during training) and make a worse start.
  """
  leaves, treedef = jax.tree.flatten(dirs)
  kp = int(np.shape(leaves[0])[0])
  extra = max(int(m) - kp, 0)
  block = [np.concatenate([np.asarray(l, np.float64),
                           rng.standard_normal((extra,) + tuple(np.shape(l))[1:])], axis=0)
           for l in leaves]
  return ops.push(jax.tree.unflatten(treedef, block))


# ---------------------------------------------------------------- msk_directions' stages
class _Setup(NamedTuple):
  """What the stages share: the network, its points and the sizes of the problem."""
  apply_fn: Callable
  params: Any
  fn: Callable          # fn(p, x) on the trainable leaves
  p: Any                # the trainable leaves
  x: Any                # the s points used
  targets: Any
  idx: Any              # indices of the subsample (None: all points)
  n: int                # points given
  s: int                # points used
  c: int
  k: int
  m: int                # block size k + 1 + oversample (≤ s·c)
  cdt: Any              # None (the inputs' dtype) or float64
  cdtype: Any           # the compute dtype
  pc: Any               # the trainable leaves in the compute dtype
  x1: Any               # one abstract point


def _check_arguments(g, k, method, jacobian, loss, targets, tol, memory_budget, oversample,
                     depth, max_cycles, init_vectors):
  """Cheap checks first, each naming the argument and the fix; returns the checked
  ``(tol, memory_budget)``."""
  if not callable(g):
    raise TypeError(f"msk_directions: `g` must be a modifier g(evals, k); got "
                    f"{type(g).__name__}.")
  if not _v.is_int(k):
    raise TypeError(f"msk_directions: `k` must be a Python int (the number of directions); "
                    f"got {type(k).__name__}.")
  _v.check_choice(method, "method", METHODS)
  _v.check_choice(jacobian, "jacobian", JACOBIANS)
  if method == "dense" and jacobian == "matrix_free":
    raise ValueError("msk_directions: `method`='dense' needs the kernel as a matrix, formed "
                     "from the explicit Jacobian; pass jacobian='explicit' or 'auto', or "
                     "method='randomized' / 'krylov' for matrix-free products.")
  if not (callable(loss) or (isinstance(loss, str) and loss in LOSSES)):
    raise ValueError(f"msk_directions: `loss` must be one of {LOSSES} or a per-point loss "
                     f"ℓ(f_i, y_i) -> scalar; got {loss!r}.")
  if callable(loss) and targets is None:
    raise ValueError("msk_directions: a callable `loss` needs `targets` (n, ...) (the y_i "
                     "of ℓ(f_i, y_i)); pass targets=..., or loss='mse' / "
                     "'softmax_cross_entropy'.")
  if tol is not None:
    tol = _v.check_real(tol, "tol", lo=0, lo_open=True, hi=1)
  memory_budget = _v.check_int(memory_budget, "memory_budget", lo=1)
  for name, val, lo in (("oversample", oversample, 0), ("depth", depth, 0)):
    _v.check_int(val, name, lo=lo)
  if max_cycles is not None:
    _v.check_int(max_cycles, "max_cycles", lo=1)
  if not (init_vectors is None or isinstance(init_vectors, (MSKDirections, MSKSpectrum))
          or hasattr(init_vectors, "shape") or isinstance(init_vectors, (list, tuple))):
    raise TypeError("msk_directions: `init_vectors` must be None, an (n, m) array of start "
                    "eigenvectors, an MSKSpectrum or the previous MSKDirections of this "
                    f"model; got {type(init_vectors).__name__}.")
  return tol, memory_budget


def _subsample(x, targets, subsample, rng):
  """The points used: all of ``x`` or ``subsample`` random ones (sorted); ``(x, targets,
  idx)``."""
  n = int(x.shape[0])
  if targets is not None:
    if jax.tree.leaves(targets) and any(np.shape(t)[0] != n for t in jax.tree.leaves(targets)):
      raise ValueError(f"msk_directions: `targets` must have one row per point of `x` ({n}); "
                       f"got leading axes {[np.shape(t)[0] for t in jax.tree.leaves(targets)]}.")
  if subsample is None:
    return x, targets, None
  subsample = _v.check_int(subsample, "subsample", lo=2, hi=n)
  idx = np.sort(rng.choice(n, int(subsample), replace=False))
  x = np.asarray(x)[idx]
  if targets is not None:
    targets = jax.tree.map(lambda t: np.asarray(t)[idx], targets)
  return x, targets, idx


def _start_vectors(init_vectors, p, n, s, idx):
  """``(vectors, previous)``: function-space start vectors on the s points (or None) and
  the previous :class:`MSKDirections` of a refresh (or None)."""
  previous = None
  if isinstance(init_vectors, MSKDirections):
    previous, init_vectors = init_vectors, None
    check_directions(previous, "msk_directions: `init_vectors`", params=p, label="the "
                     "previous directions", what="`params` (directions of another model; pass "
                     "directions built for this model, or init_vectors=None for a cold build)")
  if isinstance(init_vectors, MSKSpectrum):
    init_vectors = init_vectors.vectors
  if init_vectors is not None:
    init_vectors = np.asarray(init_vectors, np.float64)
    _v.check_finite(init_vectors, "init_vectors")
    if init_vectors.ndim != 2 or init_vectors.shape[0] not in (n, s):
      raise ValueError(f"msk_directions: `init_vectors` must be (n, m) eigenvectors on the "
                       f"{n} points; got shape {init_vectors.shape}.")
    if init_vectors.shape[0] != s:
      init_vectors = init_vectors[idx]
  return init_vectors, previous


def _setup(apply_fn, params, x, targets, k, oversample, subsample, rng, float64):
  """The trainable function, the points, and the sizes (c outputs per point, N = s·c rows,
  the block m); ``x`` checked."""
  fn, p = _tangents.trainable_fn(apply_fn, params)
  _v.check_float_params(p, "msk_directions")
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  if len(x.shape) < 2:
    raise ValueError(f"msk_directions: `x` must be (n, ...) with at least one feature axis; "
                     f"got shape {tuple(x.shape)}.")
  n = int(x.shape[0])
  x, targets, idx = _subsample(x, targets, subsample, rng)
  s = int(x.shape[0])
  cdt = jnp.float64 if float64 else None
  xin = _kernels.as_inputs(x, "x", "msk_directions")
  cdtype = jnp.dtype(cdt) if cdt is not None else xin.dtype
  pc = jax.tree.map(lambda a: jnp.asarray(a, cdtype), p)
  x1 = jax.ShapeDtypeStruct((1,) + tuple(xin.shape[1:]), cdtype)   # one point, abstract
  out = jax.eval_shape(fn, pc, x1)
  if not hasattr(out, "shape") or len(out.shape) < 1:
    raise ValueError("msk_directions: apply_fn(params, x) must return an array (n, ...); "
                     f"got {type(out).__name__}.")
  c = int(np.prod(out.shape[1:]))
  k = _v.check_k(k, s * c)
  _v.check_subsample_supports_k(subsample, s, n, c, k)
  m = min(k + 1 + int(oversample), s * c)
  return _Setup(apply_fn, params, fn, p, x, targets, idx, n, s, c, k, m, cdt, cdtype, pc, x1)


def _operator(st, method, jacobian, block_size, memory_budget):
  """The products with ``A = J`` (weighted by H^½ later): an explicit host Jacobian or
  blocked JVP/VJP programs; ``jacobian='auto'`` by :func:`choose_jacobian` (``'dense'``
  always needs the explicit Jacobian)."""
  if method == "dense":
    jacobian = "explicit"
  if jacobian == "auto":
    P = sum(int(np.prod(np.shape(l))) for l in jax.tree.leaves(st.p))
    jacobian = choose_jacobian(st.s * st.c, P, st.c, st.m,
                               _forward_flops(st.fn, st.pc, st.x1),
                               jnp.dtype(st.cdtype).itemsize, memory_budget)
  if jacobian == "explicit":
    A = _tangents.jacobian_matrix(st.apply_fn, st.params, st.x, block_size=block_size,
                                  memory_budget=memory_budget, dtype=st.cdt)
    return _Explicit(A, st.pc)
  # the JVP/VJP blocks compile in worker threads while this thread goes on (forward
  # pass and H^½ below, β's program)
  op = _tangents.jacobian_operator(st.apply_fn, st.params, st.x, columns=st.m,
                                   block_size=block_size, memory_budget=memory_budget,
                                   dtype=st.cdt, precompile=True)
  return _MatrixFree(op, None, st.s, st.c, (st.apply_fn, st.params), st.x, st.cdt,
                     memory_budget, st.m)


def _hessian_weighting(st, ops, loss):
  """``H^½`` of the loss at the current outputs, applied to the operator (A ← H^½ J); None
  for MSE."""
  if isinstance(loss, str) and loss == "mse":
    return None
  F = np.asarray(_tangents.network_outputs(st.apply_fn, st.params, st.x, dtype=st.cdt),
                 np.float64).reshape(st.s, st.c)
  Hh = loss_hessian_sqrt(loss, F, st.targets)
  ops.weigh(Hh, st.s, st.c)
  return Hh


def _start_block(st, ops, Hh, init_vectors, previous, rng, method):
  """The eigen-solve's start block: weighted ``v ⊗ e_j`` of given vectors, the pushed
  previous directions (a refresh), or (``'randomized'``) a range sample ``H^½ J Ω`` topped
  up to m columns; None: the solver's own Gaussian block."""
  start = None
  N = st.s * st.c
  if init_vectors is not None:
    m0 = init_vectors.shape[1]
    start = _linalg.weigh_rows(
        Hh, np.einsum("pi,cj->pcij", init_vectors, np.eye(st.c)).reshape(N, m0 * st.c),
        st.s, st.c)
  elif previous is not None:
    start = _refresh_block(ops, previous.directions, st.m, rng)
  if method != "randomized":
    return start
  if start is None:
    return ops.range(st.m, rng)
  if start.shape[1] >= st.m or previous is not None:
    return start
  return np.concatenate([start, ops.range(st.m - start.shape[1], rng)], axis=1)


def _solve(st, ops, method, start, seed, oversample, depth, tol, cycles):
  """The top k+1 eigenpairs of ``K_H = A Aᵀ`` through :func:`mskjax.eigh_top`: ``(w, Y,
  resid, converged, criterion)`` on the host in float64."""
  N, k1 = st.s * st.c, st.k + 1
  if method == "dense":
    with jax.enable_x64(True):
      top, info = _spectrum.eigh_top(ops.matrix(), st.m, method="dense", return_info=True)
    return (np.asarray(top.values, np.float64), np.asarray(top.vectors, np.float64),
            np.asarray(info.residuals, np.float64), True, "")
  kop = _kernels.KernelOperator(N, jnp.float64, ops.gram)
  if method == "krylov":
    kop = kop._replace(matmul=lambda Vn: jnp.asarray(ops.gram(np.asarray(Vn, np.float64))))
    opts = dict(depth=int(depth), oversample=int(oversample))
    crit = f"every residual ≤ tol·λ₁ (tol = {tol:g})"
  else:
    opts = dict(oversample=st.m - k1)
    crit = f"every eigenvalue error bound ≤ tol·λ_i (tol = {tol:g}), i ≤ k+1"
  # one BLAS thread for the Krylov basis algebra when the products are XLA's (matrix-free);
  # the explicit Jacobian's GEMMs keep every thread (the Davidson step limits its own)
  few = method == "krylov" and not isinstance(ops, _Explicit)
  with (_linalg.few_blas_threads(N * st.m * (int(depth) + 1)) if few else
        contextlib.nullcontext()), warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)   # reported by the caller in its own terms
    key = jax.random.PRNGKey(seed) if method == "krylov" else None
    top, info = _spectrum.eigh_top(kop, k1, method=method, key=key,
                                   tol=float(tol), max_cycles=int(cycles), start=start,
                                   return_info=True, **opts)
  return (np.asarray(top.values, np.float64), np.asarray(top.vectors, np.float64),
          np.asarray(info.residuals, np.float64), bool(info.converged), crit)


def _warn_unconverged(w, resid, k, method, cycles, crit):
  # The relative residual r_i/θ_i (Weyl: |θ_i − λ| ≤ r_i for the nearest eigenvalue λ), not
  # the sharper min(r_i, r_i²/gap_i) the solver tests: that needs the gaps to every Ritz
  # value of the solver's block, and with only the k+1 returned its gaps are too large and
  # it could print a bound below tol. Where the criterion fails, some r_i/θ_i > tol.
  bound = np.asarray(resid[:k + 1]) / np.maximum(w[:k + 1], 1e-300)
  warnings.warn(f"msk_directions: the eigen-solve ({method}) did not converge in "
                f"{cycles} products/cycles: {crit} fails (largest relative residual "
                f"‖K v − θ v‖/θ of λ₁..λ_(k+1): {float(np.max(bound)):.3g}, a bound on each "
                "one's distance to the nearest eigenvalue). The values are Ritz values, never "
                "above the eigenvalues "
                "they stand for (θ_i ≤ λ_i), so `values`, `next_value` and `max_value` "
                "are too small if anything — by more than that bound where the block has "
                "not found an eigenvector yet — and a step from them too large; raise "
                "`max_cycles` or `tol`, or check `residuals`.", stacklevel=3)


#: Gaps λ_k − λ_{k+1} below this fraction of λ_k, and below round-off, count as a cluster
#: that k splits (with the 1e-6 relative tie); larger gaps are a resolved, smooth spectrum.
CLUSTER_RTOL = 1e-3


def _check_spectrum(st, w, g, float64):
  """Named errors for a kernel of numerical rank < k and for a bad ``g``; a warning when
  k splits a cluster of near-equal eigenvalues. Returns ``g(λ₁..λ_{k+1})`` (k values)."""
  k, N, s = st.k, st.s * st.c, st.s
  eps = float(jnp.finfo(st.cdtype).eps)
  round_off = max(100.0, 10.0 * np.sqrt(N)) * eps * w[0]
  more = ("" if float64 or st.cdtype == jnp.float64 else
          f" float64=True computes the products in float64 (round-off ~{1e-16 / eps:.0e} of "
          "this one) and resolves more directions.")
  if not w[0] > 0:
    raise ValueError("msk_directions: the kernel is zero on these points (λ₁ = "
                     f"{w[0]:.3g}): the network's outputs do not depend on `params` "
                     "(or the loss Hessian vanishes); check the model and `loss`.")
  usable = int(np.sum(w > round_off))
  if not w[k - 1] > round_off:
    raise ValueError(f"msk_directions: λ_{k} = {w[k - 1]:.3g} is round-off (≤ "
                     f"{round_off:.2g} = scale-relative round-off of λ₁ = {w[0]:.3g}): the "
                     f"kernel on these {s} points has numerical rank < {k}: {usable} "
                     f"eigenvalues are above round-off, so lower `k` to at most {usable} "
                     f"({max(usable - 1, 1)} for a modifier that uses λ_(k+1), e.g. "
                     f"flatten).{more}")
  gap = abs(w[k - 1] - w[k])
  if gap <= max(1e-6 * w[k - 1], min(round_off, CLUSTER_RTOL * w[k - 1])):
    lo = k - 1
    while lo > 0 and abs(w[lo - 1] - w[lo]) <= max(1e-6 * w[lo], min(round_off,
                                                                      CLUSTER_RTOL * w[lo])):
      lo -= 1
    warnings.warn(f"msk_directions: λ_{k} ≈ λ_{k + 1} ({w[k - 1]:.6g} vs {w[k]:.6g}): k cuts "
                  f"through a block of near-equal eigenvalues (from λ_{lo + 1} on), so which "
                  "directions of the block are modified is arbitrary (e.g. the c outputs of "
                  f"a symmetric network at init). Use k = {lo} (below the block; 0 means the "
                  "block starts at λ₁) or a k past its end (raise `oversample` to see it), or "
                  "build the directions after a few training steps, when symmetric outputs "
                  "have separated.", stacklevel=3)
  try:
    new = np.asarray(g(jnp.asarray(w[:k + 1]), k), np.float64)
  except Exception as e:  # noqa: BLE001 -- re-raised with the argument named
    raise ValueError(f"msk_directions: calling `g`(evals, k) on the {k + 1} top eigenvalues "
                     f"failed: {e}") from e
  if new.shape != (k,):
    raise ValueError(f"msk_directions: `g`(evals, k) must return k={k} values; got shape "
                     f"{new.shape}.")
  if not np.all(np.isfinite(new)):
    raise ValueError(f"msk_directions: `g` returned NaN or inf new values ({new}); the "
                     "preconditioner needs finite g(λ) > 0.")
  if np.any(new <= 0):
    raise ValueError(f"msk_directions: `g` returned new values ≤ 0 (min {new.min():.3g}); "
                     "the preconditioner needs g(λ) > 0 (choose a positive modifier).")
  if w[k] <= round_off and new.min() <= 10 * round_off:
    raise ValueError(f"msk_directions: k = {k} is the kernel's numerical rank on these {s} "
                     f"points: λ_{k + 1} = {w[k]:.3g} is round-off (≤ {round_off:.2g}), and "
                     f"g turned it into new values as small as {new.min():.3g}, which "
                     f"would blow the preconditioner up; lower `k` to {max(k - 1, 1)}.{more}")
  return new


def _parameter_directions(ops, Y, w, k):
  """``q_i = Aᵀ v_i / √λ_i``, re-orthonormalised (Löwdin) in float64 on the host."""
  return _linalg.lowdin(ops.adjoint(Y[:, :k] / np.sqrt(w[:k])), k)


def _beta(ops, beta_blocks, Y, w, new, s, c, k):
  """β = max over the points of λ_max of the point's c×c block of the modified kernel
  ``K_g = K_H + Σ (g_i − λ_i) v_i v_iᵀ``."""
  D = ops.diag_blocks(s, c) if beta_blocks is None else beta_blocks.result()
  Yk = Y[:, :k].reshape(s, c, k)
  Dg = D + np.einsum("pci,i,pdi->pcd", Yk, new - w[:k], Yk)
  return float(np.max(np.linalg.eigvalsh(0.5 * (Dg + np.swapaxes(Dg, 1, 2)))[:, -1]))


def _record(st, dirs, w, new, res, beta, Y, Hh):
  """The :class:`MSKDirections`: directions in each parameter's dtype, the numbers in the
  default float dtype, cast on the host and ``device_put`` (an eager device cast, or
  ``jnp.asarray`` of a host array, compiles a small program per shape)."""
  k = st.k
  fdt = jnp.result_type(float)
  out_dtypes = jax.tree.map(lambda a: jnp.asarray(a).dtype, st.p)
  dev = lambda a, dt: jax.device_put(np.asarray(a, np.dtype(dt)))
  dirs = jax.tree.map(dev, dirs, out_dtypes)
  return MSKDirections(dirs, dev(w[:k], fdt), dev(new, fdt), dev(w[k], fdt), dev(res[:k], fdt),
                       None if beta is None else dev(beta, fdt), st.s, dev(Y[:, :k], fdt),
                       None if st.idx is None else np.asarray(st.idx),
                       None if Hh is None else dev(Hh, fdt))


def msk_directions(apply_fn: Callable, params, x, g: _modifiers.Modifier, k: int, *,
                   loss="mse", targets=None, method: str = "auto", jacobian: str = "auto",
                   subsample: Optional[int] = None, key=None, init_vectors=None,
                   oversample: int = 10, depth: int = 6, tol: Optional[float] = None,
                   max_cycles: Optional[int] = None, block_size: Optional[int] = None,
                   memory_budget: int = _kernels.DEFAULT_MEMORY_BUDGET, float64: bool = False,
                   compute_beta: bool = True) -> MSKDirections:
  r"""Top-k parameter-space directions of the loss's Gauss–Newton kernel on the points.

  With ``J = ∂f(θ, X)/∂θ`` over all s·c outputs (c = outputs per point, all output axes
  flattened; row = point·c + output) and ``H = blockdiag(H_1..H_s)`` the per-point output
  Hessians of the loss at the current parameters (``H_i = ∂²ℓ(f_i, y_i)/∂f_i²``: the
  identity for ``'mse'``, ``diag(p_i) − p_i p_iᵀ`` with ``p_i = softmax(f_i)`` for
  ``'softmax_cross_entropy'``), the Gauss–Newton matrix of the loss is ``Jᵀ H J`` and its
  nonzero spectrum is that of the kernel

  .. math:: K_H = H^{1/2} J J^\top H^{1/2} = \sum_i \lambda_i v_i v_i^\top,\qquad
            q_i = J^\top H^{1/2} v_i / \sqrt{\lambda_i},\quad \langle q_i, q_j\rangle
            = \delta_{ij}

  (``H_i^½`` by a c×c eigh, PSD-clipped), so that ``P Jᵀ H^½ w = Jᵀ H^½ S w`` with
  ``S = I + Σ (g_i/λ_i − 1) v_i v_iᵀ`` for :func:`precondition`. For MSE this is the full
  empirical NTK ``J Jᵀ`` (cross-output terms included); for cross-entropy the raw NTK
  overstates the curvature about c-fold at init (eigenvalues of H_i are ≤ ½, ≈ 1/c), and
  the step rules need λ of K_H. ``g`` sees λ₁..λ_{k+1} (e.g. ``flatten`` needs λ_{k+1}).
  The mathematics: ``docs/theory.md``.

  Eigensolvers (``method``, the vocabulary of :func:`mskjax.eigh_top`; a preconditioner
  needs eigenvalues to about a percent, not 1e-9 residuals) on products with ``K_H``
  formed as chosen by ``jacobian``:

  * ``'dense'``: ``K_H`` as a matrix from the explicit Jacobian, one GEMM, then a dense
    eigh (exact).
  * ``'randomized'``: randomised block iteration (:func:`mskjax.eigh_top` on the products):
    start from a range sample ``H^½ J Ω`` (Ω Gaussian in parameter space), Rayleigh–Ritz,
    then per product a block Davidson step (the Ritz residuals join the basis) until every
    Ritz value i ≤ k+1 has the error bound ``min(r_i, r_i²/gap_i) ≤ tol·θ_i`` (r_i =
    ‖K_H x_i − θ_i x_i‖, gap_i to the other Ritz values; default tol 1e-2: eigenvalues to
    about 1 %), at most ``max_cycles`` products (default 10).
  * ``'krylov'``: restarted block Krylov (:func:`mskjax.eigh_top`) on the same products,
    stopping at ``‖K_H v_i − λ_i v_i‖ ≤ tol·λ₁`` (default 1e-6), for tight solves.
  * ``'auto'``: ``'dense'`` when the Jacobian is explicit and s·c ≤ 8·(k+1+oversample) or
    tol < 1e-4, else ``'randomized'``.

  Products (``jacobian``): ``'explicit'``, the Jacobian as a host matrix
  (:func:`mskjax.tangents.jacobian_matrix`, jitted per-block ``vmap(jacrev)`` called from a
  Python loop) weighted by H^½, every product two GEMMs; ``'matrix_free'``, blocked JVP/VJP
  products (:func:`mskjax.tangents.jacobian_operator`, jitted blocks in a Python loop);
  ``'auto'``: explicit when the s·c·#params matrix fits ``memory_budget`` bytes and a flop
  model says it is cheaper (convolutions: each weight is reused over positions, so the
  Jacobian is cheap next to m JVPs; MLPs: the reverse), else matrix-free
  (:func:`choose_jacobian`).

  A refresh (``init_vectors`` = the previous :class:`MSKDirections`): the start block is
  the previous function-space ``vectors`` (same points: function space is stable under
  training) or ``K_H^½``-pushed previous directions ``H^½ J q_i`` (other points), plus
  ``oversample + 1`` range samples, so one product with K_H usually converges;
  ``next_value`` is then the (k+1)-th Ritz value of that oversampled block. Every
  unconverged solve warns (with its residual).

  EigenPro-style subsampling (Ma & Belkin 2017): with ``subsample=s`` the kernel is built
  on s random points; ``values`` are of the s-point Gram matrix (about s/n times those on
  n points; the step rule uses λ/s, see :func:`mskjax.steps.stable_learning_rate`). ``tol``
  bounds the error against the s-point kernel; as estimates of the n-point spectrum the
  values also carry a sampling error that shrinks only like 1/√s and grows from λ₁ to
  λ_{k+1}: for s·c < 10·(k+1) rows it is tens of percent or more, and a ``UserWarning``
  names ``subsample`` (``docs/results.md``, "How large a subsample").

  Non-finite ``params``, ``x`` or ``init_vectors`` are a ``ValueError`` naming them, and a
  network whose Jacobian is not finite on some points one naming ``apply_fn``.

  Precision: products run in the inputs' dtype (float32 for a float32 model) and the small
  host algebra in float64; ``float64=True`` runs them in float64 inside
  ``jax.enable_x64`` (no global setting changes). Outputs: ``directions`` in each
  parameter's dtype, ``values``/``new_values``/``next_value`` in the default float dtype.

  Args:
    apply_fn: ``apply_fn(params, x)``, a flax linen ``model.apply`` (with ``params`` the
      variables ``{'params': ...}``; directions are built for ``variables['params']``,
      what an optimizer sees), or an nnx ``Module`` (``params`` None: directions for
      ``nnx.Param``). Every trainable leaf must be floating.
    params: see ``apply_fn``.
    x: ``(n, ...)`` training inputs of any per-point shape.
    g: modifier ``g(evals, k)`` (``mskjax.modifiers``), called on the k+1 top eigenvalues;
      must return k finite values > 0.
    k: number of modified directions (1 ≤ k < s·c).
    loss: ``'mse'`` (default; H = I), ``'softmax_cross_entropy'`` (H_i = diag(p_i) −
      p_i p_iᵀ, no targets needed) or a per-point loss ``ℓ(f_i, y_i) -> scalar`` of the
      point's flattened outputs ``(c,)`` and its target (needs ``targets``).
    targets: ``(n, ...)`` targets for a callable ``loss`` (rows follow ``x``).
    method: ``'auto'``, ``'dense'``, ``'randomized'`` or ``'krylov'`` (see above).
    jacobian: ``'auto'``, ``'explicit'`` or ``'matrix_free'`` (see above).
    subsample: use s random points of x (None: all n).
    key: ``jax.random.PRNGKey`` for the subsample and the random start block.
    init_vectors: a warm start: ``(n, m)`` (or ``(s, m)``) eigenvectors on the points, e.g.
      of the analytic NTK, or an :class:`mskjax.MSKSpectrum` (each paired with every output,
      ``v ⊗ e_j``); or the previous :class:`MSKDirections` of the same model (a refresh:
      the start block is ``H^½ J [q_1..q_k, ω...]`` at the new parameters, the previous
      directions and fresh Gaussian columns; same stopping rule as a cold build, so about
      its cost once training has moved the top-k subspace.
      :func:`mskjax.optim.refresh_directions` refreshes on the same points and swaps the
      result into an optimizer state).
    oversample: extra columns of the block (k+1+oversample in all).
    depth: Krylov blocks per cycle (``'krylov'`` only).
    tol: stopping tolerance (default 1e-2 for ``'randomized'``, 1e-6 for ``'krylov'``).
    max_cycles: most products with K_H (``'randomized'``, default 10) or restarts
      (``'krylov'``, default 10).
    block_size, memory_budget: points per block of the Jacobian products (default: from
      the budget in bytes); the budget also decides ``jacobian='auto'``.
    float64: compute the Jacobian products in float64 (see above).
    compute_beta: also compute β = max_x λ_max of x's c×c block of the modified kernel
      (for :func:`mskjax.steps.stable_learning_rate`).

  Returns:
    :class:`MSKDirections`: ``values`` of K_H, ``residuals`` ``‖K_H v_i − λ_i v_i‖/λ₁``,
    ``vectors`` the (s·c, k) eigenvectors v_i of K_H, ``hessian_sqrt`` the (s, c, c)
    H_i^½ used (None for MSE) and ``indices`` the subsample: the directions at other
    parameters θ' are ``orth(J(θ')ᵀ H^½ V)``.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from mskjax import optim, modifiers
    >>> model = nn.Dense(3); x = jax.random.normal(jax.random.PRNGKey(0), (16, 4))
    >>> variables = model.init(jax.random.PRNGKey(1), x)
    >>> d = optim.msk_directions(model.apply, variables, x, modifiers.flatten(), 3)
    >>> d.directions['kernel'].shape, bool(d.residuals.max() < 1e-5)   # K = X̃X̃ᵀ ⊗ I₃: k = 3
    ((3, 4, 3), True)
    >>> dc = optim.msk_directions(model.apply, variables, x, modifiers.flatten(), 3,
    ...                           loss='softmax_cross_entropy')
    >>> bool(dc.values[0] < d.values[0] / 2)    # H_i = diag(p) − ppᵀ has eigenvalues ≤ ½
    True
  """
  tol, memory_budget = _check_arguments(g, k, method, jacobian, loss, targets, tol,
                                        memory_budget, oversample, depth, max_cycles,
                                        init_vectors)
  seed = key_seed(_v.check_key(key, "key", optional=True))
  rng = np.random.default_rng(seed)
  with (jax.enable_x64(True) if float64 else contextlib.nullcontext()):
    st = _setup(apply_fn, params, x, targets, k, oversample, subsample, rng, float64)
    init_vectors, previous = _start_vectors(init_vectors, st.p, st.n, st.s, st.idx)
    ops = _operator(st, method, jacobian, block_size, memory_budget)
    if method == "auto":
      explicit = isinstance(ops, _Explicit)
      small = st.s * st.c <= 8 * st.m or (tol is not None and tol < 1e-4)
      method = "dense" if explicit and small else "randomized"
    if tol is None:
      tol = 1e-6 if method == "krylov" else 1e-2
    cycles = max_cycles if max_cycles is not None else 10
    Hh = _hessian_weighting(st, ops, loss)
    beta_blocks = None
    if compute_beta and not isinstance(ops, _Explicit):
      # β's per-point Jacobians depend on nothing the eigen-solve computes: they (and their
      # compilation) run in a worker thread alongside it
      beta_blocks = _loops.in_background(ops.diag_blocks, st.s, st.c)
    start = _start_block(st, ops, Hh, init_vectors, previous, rng, method)
    w, Y, resid, converged, crit = _solve(st, ops, method, start, seed, oversample, depth,
                                          tol, cycles)
    if not converged:
      _warn_unconverged(w, resid, st.k, method, cycles, crit)
    new = _check_spectrum(st, w, g, float64)
    dirs = _parameter_directions(ops, Y, w, st.k)
    beta = _beta(ops, beta_blocks, Y, w, new, st.s, st.c, st.k) if compute_beta else None
  res = resid / max(w[0], np.finfo(float).tiny)
  return _record(st, dirs, w, new, res, beta, Y, Hh)
