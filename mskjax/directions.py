r"""Parameter-space directions of a finite network's NTK: what the MSK preconditioner stores.

With ``J = ∂f(θ, X)/∂θ`` (all n·c outputs on the points used) and ``K = J Jᵀ = Σ λ_i v_i v_iᵀ``,
the directions ``q_i = Jᵀ v_i / √λ_i`` are orthonormal in parameter space, and

.. math:: P u = u + \sum_{i\le k} \Big(\frac{g_i}{\lambda_i} - 1\Big) q_i \langle q_i, u\rangle

satisfies ``P Jᵀ e = Jᵀ S e`` for every function-space gradient ``e``
(``S = I + Σ (g_i/λ_i − 1) v_i v_iᵀ``). :func:`msk_directions` builds them;
:func:`precondition` applies P; the optax transforms live in :mod:`mskjax.optim` and the
step rules in :mod:`mskjax.steps`. The mathematics: ``docs/theory.md``.
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

from mskjax import _validate as _v
from mskjax import kernels as _kernels
from mskjax import modifiers as _modifiers
from mskjax import spectrum as _spectrum
from mskjax import tangents as _tangents
from mskjax.msk import MSKSpectrum

__all__ = ["MSKDirections", "msk_directions", "precondition"]


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

  @property
  def k(self) -> int:
    return int(self.values.shape[0])

  @property
  def max_value(self) -> jax.Array:
    """λ_max(K_g) = max(g(λ₁..λ_k), λ_{k+1})."""
    return jnp.maximum(jnp.max(self.new_values), self.next_value)



def _is_masked(x):
  return isinstance(x, optax.MaskedNode) or x is None


def check_directions(directions, where):
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


def msk_coefficients(values, new_values, dtype):
  # g/λ − 1, clipped so that g/λ >= tiny under tracing (concrete inputs are checked above).
  ratio = new_values.astype(dtype) / values.astype(dtype)
  return jnp.maximum(ratio, jnp.finfo(dtype).tiny) - 1.0


def tree_dtype(tree):
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
  JVP/VJP over blocks of points, :func:`mskjax.tangents.jacobian_operator`), applies
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
  fn, p = _tangents.trainable_fn(apply_fn, params)
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
    op = _tangents.jacobian_operator(fn, p, x, columns=k + 1 + oversample,
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
      D = np.asarray(_tangents.ntk_diagonal_blocks(fn, op.params, x, dtype=cdt,
                                                  memory_budget=memory_budget), np.float64)
      Yk = Y[:, :k].reshape(s, c, k)
      Dg = D + np.einsum("pci,i,pdi->pcd", Yk, new - w[:k], Yk)
      beta = float(np.max(np.linalg.eigvalsh(0.5 * (Dg + np.swapaxes(Dg, 1, 2)))[:, -1]))
  fdt = jnp.result_type(float)
  dirs = jax.tree.map(lambda l, dt: jnp.asarray(l, dt), dirs, out_dtypes)
  return MSKDirections(dirs, jnp.asarray(w[:k], fdt), jnp.asarray(new, fdt),
                       jnp.asarray(w[k], fdt), jnp.asarray(res[:k], fdt),
                       None if beta is None else jnp.asarray(beta, fdt), s,
                       jnp.asarray(Y[:, :k], fdt), None if idx is None else np.asarray(idx))
