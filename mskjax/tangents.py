"""Tangents of a finite network: its Jacobian products and its empirical NTK.

The finite-network side of the pipeline (the analytic kernels live in :mod:`mskjax.kernels`):

* :func:`trainable_fn` -- ``f(p, x)`` of the trainable parameters for a plain
  ``apply_fn(params, x)``, a flax linen ``model.apply`` with variables, or an nnx Module;
* :func:`jacobian_operator` -- blocked products ``J T``, ``Jᵀ V`` and ``J (Jᵀ V)`` with the
  Jacobian ``J = ∂f(θ, X)/∂θ`` (all n·c output rows) without forming it;
* :func:`jacobian_matrix` -- ``J`` itself as an ``(n·c, #params)`` host matrix, blockwise;
* :func:`point_jacobians` -- the per-point Jacobians of a block (jittable), sized by
  :func:`jacobian_block_size`;
* :func:`empirical_ntk` -- the empirical NTK Gram matrix, traced over outputs or full;
* :func:`ntk_diagonal_blocks` -- the c×c per-point blocks ``J_x J_xᵀ``.

Blocks of points are padded with :func:`mskjax._blocks.pad_rows` (one compiled shape per
block) and sized from a memory budget in bytes.
"""
from __future__ import annotations

import functools
import math
import sys
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mskjax import _blocks
from mskjax import _loops
from mskjax import _validate as _v
from mskjax import kernels as _k
from mskjax._nt import empirical_ntk_fn

__all__ = ["trainable_fn", "JacobianOperator", "jacobian_operator", "jacobian_matrix",
           "empirical_ntk", "ntk_diagonal_blocks", "point_jacobians", "network_outputs",
           "jacobian_block_size"]


@_blocks.cache_by_function
def _empirical_block_fns(apply_fn, implementation):
  fn = empirical_ntk_fn(apply_fn, trace_axes=(-1,), implementation=implementation)
  pair = jax.jit(lambda a, b, params: fn(a, b, params))
  sym = jax.jit(lambda a, params: fn(a, None, params))
  return pair, sym




def _empirical_block_edge(params, c, n_max, implementation, memory_budget):
  """Rows per block so one block pair's Jacobians / NTK-vector products fit the budget.

  implementation 1 holds two Jacobian blocks of b·c·P numbers (×2 for temporaries);
  implementation 2 holds NTK-vector products of up to b²·c·A numbers with A activations
  per example, bounded here by P (an over-estimate for MLPs, so blocks err on the small side).
  """
  P = sum(int(np.prod(np.shape(l))) for l in jax.tree_util.tree_leaves(params))
  itemsize = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64)).itemsize
  per = c * max(P, 1) * itemsize
  if implementation == 1:
    return _blocks.rows_for_budget(memory_budget, per_row=4 * per, n=n_max)
  return _blocks.rows_for_budget(memory_budget, per_pair=per, n=n_max)


def empirical_ntk(apply_fn: Callable, params, x1, x2=None, *, full: bool = False,
                  implementation="auto", block_size: Optional[int] = None,
                  memory_budget: int = _k.DEFAULT_MEMORY_BUDGET,
                  weights=None) -> jax.Array:
  r"""Empirical NTK Gram matrix of a finite network, blockwise, traced over outputs or full.

  .. math:: \hat\Theta(x, x') = \frac1c \sum_{k=1}^{c}
     \Big\langle \frac{\partial f_k(\theta, x)}{\partial\theta},
     \frac{\partial f_k(\theta, x')}{\partial\theta}\Big\rangle

  (``full=False``: the *mean* over the diagonal of each c×c output block, exactly
  neural-tangents' ``empirical_ntk_fn(..., trace_axes=(-1,))``, matching the analytic
  ``kernel_fn(.., 'ntk')`` whose full kernel is Θ ⊗ I_c), or with ``full=True`` the
  whole (n1·c)×(n2·c) kernel ``J₁ J₂ᵀ`` with the cross-output terms (row = point·c + output,
  as :func:`jacobian_operator`): the kernel that governs the finite network's training.

  mskjax's own implementations (default) are pure JAX (``lax.map`` over point blocks,
  jittable — also under ``jax.jit`` with closed-over inputs; called eagerly on a network
  with convolutions on the CPU, a Python loop over the same jitted blocks, since XLA:CPU
  runs convolutions inside ``lax`` loops on a slow path), memory-bounded by
  ``memory_budget`` and take inputs of any per-point shape and outputs ``(n,)`` or
  ``(n, c, ...)`` (all output axes flattened into c):

  * ``'jacobian'``: per-point Jacobians of a block (``vmap`` of ``jacrev``), contracted
    with those of the other block (``einsum``); memory 2·block·c·#params;
  * ``'jvp'``: the rows of block I's Jacobian pushed forward through the network on each
    column block (one ``jax.linearize`` per block, ``vmap`` over block·c tangents): about
    c/2 times fewer flops than contracting Jacobians when c is large;
  * ``'auto'``: ``'jvp'`` for c ≥ 4 outputs, else ``'jacobian'`` (the crossover on XLA:CPU,
    ``docs/results.md#empirical_ntk-strategies``).

  ``weights``: a pytree like the trainable parameters of non-negative per-parameter
  weights W (a diagonal parameter metric) gives ``J W Jᵀ`` instead of ``J Jᵀ`` (same trace
  / full conventions): with W the per-parameter step sizes of a diagonal optimiser (Adam:
  η/(√v̂ + ε), :func:`mskjax.function_space.adam_kernel_weights`) it is the kernel of that
  optimiser's linearised function-space dynamics, df = −J W Jᵀ ∂ℓ/∂f. Computed on the same
  machinery as the Jacobian of f(θ + √W ⊙ δ) at δ = 0 (exact for W = 0 entries).

  NaN policy: outside ``jit``, non-finite ``params`` or inputs are a ``ValueError`` naming
  them, and a kernel that comes out non-finite from finite ones names ``apply_fn`` (its
  outputs or derivatives are not finite on some points). Inside ``jit`` nothing is checked
  by value: NaN in gives NaN out.

  neural-tangents' implementations 1 and 2 stay available (``implementation=1|2``;
  host-side blocks, inputs ``(n, d)``, outputs ``(n, c)``, traced only); 3 is broken on
  current JAX.

  Args:
    apply_fn: ``apply_fn(params, x)``, a flax ``model.apply`` (with variables
      ``{'params': ...}``: the kernel is over ``variables['params']``), or an nnx Module
      (``params`` None), see :func:`trainable_fn`.
    params: the parameters (flax variables) passed to ``apply_fn``.
    x1: inputs ``(n1, ...)``.
    x2: inputs ``(n2, ...)``, or None for x1.
    full: return the full multi-output kernel ``(n1·c, n2·c)`` instead of ``(n1, n2)``.
    implementation: ``'auto'``, ``'jacobian'``, ``'jvp'``, 1 or 2 (see above).
    block_size: points per block; None picks it from ``memory_budget``.
    memory_budget: bytes for one block's Jacobians/tangent products (default 1 GiB).
    weights: optional pytree (the structure and shapes of the trainable parameters; for a
      flax linen ``model.apply`` also like the variables ``{'params': ...}``) of
      non-negative per-parameter weights W: the kernel becomes J W Jᵀ.

  Returns:
    ``(n1, n2)`` (or ``(n1·c, n2·c)`` with ``full=True``) array.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from mskjax.nets import FlaxMLP, MLPSpec
    >>> model = FlaxMLP(MLPSpec(depth=1, width=4, activation='linear', out_dim=2))
    >>> x = jnp.array([[1., 0.], [0., 1.], [1., 1.]])
    >>> variables = model.init(jax.random.PRNGKey(0), x)
    >>> K = empirical_ntk(model.apply, variables, x, block_size=2)
    >>> Kf = empirical_ntk(model.apply, variables, x, full=True)
    >>> K.shape, Kf.shape, bool(jnp.allclose(K, (Kf[::2, ::2] + Kf[1::2, 1::2]) / 2))
    ((3, 3), (6, 6), True)
  """
  if implementation == 3:
    raise ValueError("empirical_ntk: implementation=3 (structured derivatives) is broken on "
                     "current JAX (it relies on removed JAX internals); use 'auto', 'jvp', "
                     "'jacobian', 1 or 2.")
  _v.check_choice(implementation, "implementation", ("auto", "jacobian", "jvp", 1, 2))
  memory_budget = _v.check_int(memory_budget, "memory_budget", lo=1)
  block_size = _k.check_block_size(block_size)
  _v.check_finite_tree(params, "params")
  if implementation not in (1, 2):
    x1, x2 = _k.check_pair(x1, x2, "empirical_ntk")
    K = _empirical_own(apply_fn, params, x1, x2, bool(full), block_size, memory_budget,
                       implementation, weights)
    _v.check_finite_output(K, "empirical_ntk: the kernel", "apply_fn")
    return K
  if weights is not None:
    raise ValueError("empirical_ntk: weights= needs implementation 'auto', 'jacobian' or "
                     "'jvp' (neural-tangents' implementations have no parameter metric).")
  if full:
    raise ValueError("empirical_ntk: full=True needs implementation 'auto', 'jacobian' or "
                     "'jvp' (neural-tangents' implementations trace over outputs here).")
  x1, x2 = _k.check_pair(x1, x2, "empirical_ntk")
  out = jax.eval_shape(apply_fn, params, x1[:1])
  if not hasattr(out, "shape") or len(out.shape) != 2:
    raise ValueError("empirical_ntk: apply_fn(params, x) must return an array of shape "
                     f"(n, c); got {getattr(out, 'shape', type(out).__name__)}. Wrap it, e.g. "
                     "lambda p, x: f(p, x)[:, None].")
  pair, sym = _empirical_block_fns(apply_fn, int(implementation))
  pair_p = lambda a, b: pair(a, b, params)
  sym_p = lambda a: sym(a, params)
  n_max = max(x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0])
  if block_size is None:
    block_size = _empirical_block_edge(params, int(out.shape[1]), n_max, int(implementation),
                                       int(memory_budget))
    if block_size >= n_max:
      K = sym_p(x1) if x2 is None else pair_p(x1, x2)
      _v.check_finite_output(K, "empirical_ntk: the kernel", "apply_fn")
      return K
  K = _blocks.assemble_blocks(pair_p, sym_p, x1, x2, block_size)
  _v.check_finite_output(K, "empirical_ntk: the kernel", "apply_fn")
  return K



# ------------------------------------------------- Jacobian operators of a finite network
class _Call(NamedTuple):
  """Hashable ``call(p, rest, x)`` (a static argument of jitted functions: one compile per
  network, not per call)."""
  kind: str
  base: Any

  def __call__(self, p, rest, x):
    if self.kind == "plain":
      return self.base(p, x)
    if self.kind == "linen":
      return self.base({**rest, "params": p}, x)
    from flax import nnx
    return nnx.merge(self.base, p, rest)(x)


def _split(apply_fn, params):
  """(call, p, rest): the trainable parameters p and everything else held fixed."""
  # an nnx Module / a linen apply exists only once its flax module was imported: look them
  # up instead of importing (importing flax.nnx is a sizeable part of a cold msk_directions)
  nnx, nn = sys.modules.get("flax.nnx"), sys.modules.get("flax.linen")
  if nnx is not None and isinstance(apply_fn, nnx.Module):
    filt = nnx.Param if params is None else params
    graphdef, state, rest = nnx.split(apply_fn, filt, ...)
    return _Call("nnx", graphdef), nnx.as_pure(state), rest
  if not callable(apply_fn):
    raise TypeError(f"`apply_fn` must be callable apply_fn(params, x) (or an nnx.Module); got "
                    f"{type(apply_fn).__name__}.")
  owner = getattr(apply_fn, "__self__", None)
  if nn is not None and isinstance(owner, nn.Module) and hasattr(params, "keys") \
      and "params" in params:
    rest = {key: val for key, val in params.items() if key != "params"}
    return _Call("linen", apply_fn), params["params"], rest
  if params is None:
    raise TypeError("`params` is None; pass the parameters apply_fn(params, x) takes.")
  return _Call("plain", apply_fn), params, None


def trainable_fn(apply_fn, params=None):
  """``(f, p)`` with ``f(p, x) -> (n, ...)`` a function of the *trainable* parameters only.

  The parameter pytree an optimizer sees, for the three ways users hold a network:

  * ``apply_fn(params, x)`` with any pytree ``params``: returned unchanged;
  * flax linen ``model.apply`` with ``variables = {'params': ..., other collections}``:
    ``p = variables['params']`` and the other collections (e.g. ``batch_stats``) are
    held fixed;
  * a flax nnx ``Module`` (pass it as ``apply_fn``; ``params`` None or an nnx filter,
    default ``nnx.Param``): ``p = nnx.as_pure(nnx.state(model, nnx.Param))``, the
    pytree ``nnx.Optimizer`` passes to optax.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> model = nn.Dense(2); x = jnp.ones((3, 4))
    >>> variables = model.init(jax.random.PRNGKey(0), x)
    >>> f, p = trainable_fn(model.apply, variables)
    >>> sorted(p), f(p, x).shape
    (['bias', 'kernel'], (3, 2))
  """
  call, p, rest = _split(apply_fn, params)
  if call.kind == "plain":
    return call.base, p
  return (lambda q, x: call(q, rest, x)), p


class JacobianOperator(NamedTuple):
  """Products with the Jacobian ``J = ∂f(θ, X)/∂θ`` (n·c rows) without forming it.

  Attributes:
    jvp: ``T ↦ J T``: a parameter pytree with a leading axis m on every leaf →
      ``(n, c, m)``.
    vjp: ``V ↦ Jᵀ V``: ``(n, c, m)`` → parameter pytree, leaves ``(m, *leaf.shape)``.
    ntk_matvec: ``V ↦ J (Jᵀ V)`` on ``(n·c, m)`` arrays: the full multi-output empirical
      NTK (cross-output terms included, row index = point·c + output) times V.
    n: number of points; c: outputs per point (all output axes flattened).
    params: the (trainable) parameters, in the compute dtype.
    block_size: points per block.
  """
  jvp: Callable
  vjp: Callable
  ntk_matvec: Callable
  n: int
  c: int
  params: Any
  block_size: int


def _jaxprs_in_params(params):
  try:
    from jax.extend.core import jaxprs_in_params
  except ImportError:  # pragma: no cover
    return []
  return jaxprs_in_params(params)


def _activation_size(fn, params, x1):
  """Numbers in all intermediates of one forward pass on one point (a memory estimate)."""
  jaxpr = jax.make_jaxpr(fn)(params, x1)
  total = 0

  def walk(jx):
    nonlocal total
    for eqn in jx.eqns:
      for v in eqn.outvars:
        total += int(np.prod(getattr(v.aval, "shape", ()) or (1,)))
      for sub in _jaxprs_in_params(eqn.params):
        walk(getattr(sub, "jaxpr", sub))
  walk(jaxpr.jaxpr)
  return max(total, 1)


def _tree_size(tree):
  return sum(int(np.prod(np.shape(l))) for l in jax.tree.leaves(tree))


def _network_inputs(apply_fn, params, x, dtype, where):
  """(fn, params, x, dtype, n, c): the trainable function, parameters and inputs cast to
  the compute dtype, and the number of outputs per point."""
  fn, p = trainable_fn(apply_fn, params)
  x = _k.as_inputs(x, "x", where)
  dt = x.dtype if dtype is None else jnp.dtype(dtype)
  x = x.astype(dt)
  p = jax.tree.map(lambda a: jnp.asarray(a).astype(dt)
                   if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, p)
  out = jax.eval_shape(fn, p, jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype))
  if not hasattr(out, "shape") or len(out.shape) < 1 or out.shape[0] != 1:
    raise ValueError(f"{where}: apply_fn(params, x) must return an array with a leading axis "
                     f"of n points; got {getattr(out, 'shape', type(out).__name__)}.")
  return fn, p, x, dt, x.shape[0], int(np.prod(out.shape[1:]))


@functools.partial(jax.jit, static_argnames=("call", "c"))
def _jvp_block(call, c, T, p, rest, xa):
  """``J_block T`` for one block of points: ``(bs, c, m)``."""
  _, lin = jax.linearize(lambda q: call(q, rest, xa).reshape(xa.shape[0], c), p)
  return jax.vmap(lin, out_axes=-1)(T)


@functools.partial(jax.jit, static_argnames=("call", "c"))
def _vjp_block(call, c, acc, va, p, rest, xa):
  """``acc + J_blockᵀ va`` (leaves ``(m, *shape)``)."""
  _, pull = jax.vjp(lambda q: call(q, rest, xa).reshape(xa.shape[0], c), p)
  (g,) = jax.vmap(pull, in_axes=-1)(va.astype(xa.dtype))
  return jax.tree.map(jnp.add, acc, g)


@functools.partial(jax.jit, static_argnames=("call", "c"))
def _jac_block(call, c, p, rest, xa):
  """Per-point Jacobians of one block as ``(bs, c, #params)`` (ravel_pytree's layout)."""
  ja = point_jacobians(lambda q, x: call(q, rest, x), p, xa, c)
  return jnp.concatenate([l.reshape(xa.shape[0], c, -1) for l in jax.tree.leaves(ja)],
                         axis=-1)


def _blocked_inputs(apply_fn, params, x, dtype, where):
  """(call, p, rest, x, dt, n, c) with p and x in the compute dtype, for the per-block
  jitted functions above (``call`` hashable and static: one compile per network and block
  shape, each block called from a Python loop — never a ``lax`` loop, where XLA:CPU runs
  convolutions on a slow path, :mod:`mskjax._loops`)."""
  _, _, x, dt, n, c = _network_inputs(apply_fn, params, x, dtype, where)
  call, p, rest = _split(apply_fn, params)
  _v.check_float_params(p, where)
  _v.check_finite_tree(p, "params")
  p = jax.tree.map(lambda a: jnp.asarray(a).astype(dt), p)
  return call, p, rest, x, dt, n, c


def jacobian_operator(apply_fn: Callable, params, x, *, columns: int = 32,
                      block_size: Optional[int] = None,
                      memory_budget: int = _k.DEFAULT_MEMORY_BUDGET, dtype=None,
                      precompile: bool = False) -> JacobianOperator:
  r"""Jitted, blocked products with the network Jacobian and the full empirical NTK.

  ``J T`` is one JVP and ``Jᵀ V`` one VJP per block of points, vectorised over the m
  columns (``vmap``); each block is a jitted call from a Python loop (not a ``lax`` loop:
  XLA:CPU runs convolutions inside ``lax.map``/``lax.scan`` on a slow path), so memory is
  O(m·#params + block·m·A) (A: activations per point) and never O(n·#params).
  ``ntk_matvec`` applies the full (n·c)×(n·c) empirical NTK ``K = J Jᵀ`` (not the
  output-traced one) — what a matrix-free eigensolver needs. Non-finite ``params`` are a
  named ``ValueError``; a product ``J T`` that comes out non-finite names ``apply_fn`` (or
  ``T`` when the tangents are not finite); inside ``jit``, NaN propagates.

  Args:
    apply_fn, params: the network, as accepted by :func:`trainable_fn` (a plain
      ``apply_fn(params, x)``, a linen ``model.apply`` with variables, or an nnx Module).
    x: inputs ``(n, ...)`` of any per-point shape.
    columns: the typical m, used only to size blocks from the budget.
    block_size: points per block (default: from ``memory_budget``).
    memory_budget: bytes for one block's activations times ``columns``.
    dtype: compute dtype of the parameters and inputs (default: the inputs' float dtype;
      pass ``jnp.float64`` under ``jax.enable_x64`` for float64 products).
    precompile: compile the JVP and VJP blocks for m = ``columns`` columns (compute-dtype
      arguments) now, in two worker threads (XLA compiles release the GIL), while the
      caller goes on; the first ``jvp``/``vjp`` call waits for its block. Cuts a cold
      start's wall time by overlapping the two compilations with each other and with the
      caller's own setup.

  Returns:
    :class:`JacobianOperator`.

  Example:
    >>> import jax.numpy as jnp
    >>> X = jnp.array([[1., 0.], [0., 2.], [1., 1.]])
    >>> op = jacobian_operator(lambda w, x: x @ w, jnp.zeros(2), X, block_size=2)
    >>> op.ntk_matvec(jnp.eye(3)).tolist()   # J = X: the NTK is X Xᵀ
    [[1.0, 0.0, 1.0], [0.0, 4.0, 2.0], [1.0, 2.0, 2.0]]
  """
  call, p, rest, x, dt, n, c = _blocked_inputs(apply_fn, params, x, dtype,
                                                "jacobian_operator")
  fn = lambda q, xx: call(q, rest, xx)
  if block_size is None:
    x1 = jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype)   # abstract: no slice op
    per = _activation_size(fn, p, x1) * max(int(columns), 1) * jnp.dtype(dt).itemsize * 3
    block_size = _blocks.rows_for_budget(memory_budget, per_row=max(per, 1), n=n)
  block_size = _k.check_block_size(block_size, required=True)
  bs = min(block_size, n)
  nb = math.ceil(n / bs)
  xp = _blocks.pad_rows(x, nb * bs)
  blocks = [xp[i * bs:(i + 1) * bs] for i in range(nb)]
  ready = {}
  if precompile:
    mc = max(int(columns), 1)
    spec = lambda shape: jax.ShapeDtypeStruct(shape, dt)
    T0 = jax.tree.map(lambda a: spec((mc,) + a.shape), p)
    V0 = spec((bs, c, mc))
    ready["jvp"] = _loops.in_background(
        lambda: _jvp_block.lower(call, c, T0, p, rest, blocks[0]).compile())
    ready["vjp"] = _loops.in_background(
        lambda: _vjp_block.lower(call, c, T0, V0, p, rest, blocks[0]).compile())

  def wait(name):
    if name in ready:
      ready.pop(name).result()    # re-raises a failed compilation here

  def products(T):
    wait("jvp")
    return jnp.concatenate([_jvp_block(call, c, T, p, rest, xa) for xa in blocks],
                           axis=0)[:n]

  def jvp(T):
    out = products(T)
    _v.check_finite_output(out, "jacobian_operator: the product J T", "apply_fn", inputs=T,
                           inputs_name="T")
    return out

  def vjp(Vc):
    wait("vjp")
    m = Vc.shape[-1]
    # host arrays stay on the host until the jitted block (eager device pads and zeros
    # compile a small program per shape); device arrays are padded on the device
    xp_ = np if isinstance(Vc, np.ndarray) else jnp
    Vp = xp_.pad(Vc, ((0, nb * bs - n), (0, 0), (0, 0)))
    acc = jax.tree.map(lambda a: xp_.zeros((m,) + a.shape, a.dtype), p)
    for i, xa in enumerate(blocks):
      acc = _vjp_block(call, c, acc, Vp[i * bs:(i + 1) * bs], p, rest, xa)
    return acc

  def ntk_matvec(Vf):
    m = Vf.shape[-1]
    out = products(vjp(jnp.asarray(Vf).reshape(n, c, m))).reshape(n * c, m)
    _v.check_finite_output(out, "jacobian_operator: the product J Jᵀ V", "apply_fn",
                           inputs=Vf, inputs_name="V")
    return out

  return JacobianOperator(jvp, vjp, ntk_matvec, n, c, p, bs)


@functools.partial(jax.jit, static_argnames=("call",))
def _forward(call, p, rest, x):
  return call(p, rest, x)


def network_outputs(apply_fn: Callable, params, x, *, dtype=None) -> jax.Array:
  """``f(θ, x)`` for all points in one jitted call, compiled once per network and shapes
  (``jax.jit(fn)`` of a fresh closure would recompile on every call).

  Args:
    apply_fn, params: as in :func:`trainable_fn`.
    x: inputs ``(n, ...)``.
    dtype: compute dtype (default: the inputs' float dtype).

  Returns:
    The network's outputs ``(n, ...)`` in the compute dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> network_outputs(lambda w, x: x @ w, jnp.ones(2), jnp.array([[1., 2.]])).tolist()
    [3.0]
  """
  call, p, rest, x, _, _, _ = _blocked_inputs(apply_fn, params, x, dtype, "network_outputs")
  return _forward(call, p, rest, x)


def jacobian_matrix(apply_fn: Callable, params, x, *, block_size: Optional[int] = None,
                    memory_budget: int = _k.DEFAULT_MEMORY_BUDGET, dtype=None) -> np.ndarray:
  r"""The Jacobian ``J = ∂f(θ, X)/∂θ`` as an explicit ``(n·c, #params)`` host matrix.

  Row ``point·c + output`` (the row order of :func:`jacobian_operator` and
  ``empirical_ntk(..., full=True)``); columns are the trainable parameter leaves in
  ``jax.tree.leaves`` order, each flattened (C order), i.e. ``ravel_pytree``'s layout.
  Per-point Jacobians of a block of points (``vmap`` of ``jacrev``), each block one
  jitted call from a Python loop (no ``lax`` loop: XLA:CPU runs convolutions inside them
  on a slow path), copied into one host array. ``J Jᵀ`` is then the full empirical
  NTK — one GEMM, the fast route while ``n·c·#params`` numbers fit in memory.

  Args:
    apply_fn, params: as in :func:`trainable_fn`.
    x: inputs ``(n, ...)``.
    block_size: points per block (default: from ``memory_budget``).
    memory_budget: bytes for one block's per-point Jacobians and their temporaries
      (the returned matrix itself is ``n·c·#params·itemsize`` bytes on the host).
    dtype: compute dtype (default: the inputs' float dtype).

  Returns:
    numpy ``(n·c, #params)`` array in the compute dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> J = jacobian_matrix(lambda w, x: x @ w, jnp.zeros((2, 2)),
    ...                     jnp.array([[1., 2.]]))       # f = x W: ∂f_j/∂W_ij = x_i
    >>> J.tolist()
    [[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 2.0]]
  """
  call, p, rest, x, dt, n, c = _blocked_inputs(apply_fn, params, x, dtype, "jacobian_matrix")
  P = max(_tree_size(p), 1)
  if block_size is None:
    block_size = jacobian_block_size(p, c, n, memory_budget, jnp.dtype(dt).itemsize)
  bs = min(_k.check_block_size(block_size, required=True), n)
  nb = math.ceil(n / bs)
  xp = _blocks.pad_rows(x, nb * bs)
  J = np.empty((n * c, P), np.dtype(dt))
  for i in range(nb):
    lo, hi = i * bs, min((i + 1) * bs, n)
    Jb = np.asarray(_jac_block(call, c, p, rest, xp[i * bs:(i + 1) * bs]))
    J[lo * c:hi * c] = Jb[:hi - lo].reshape(-1, P)
  _v.check_finite_output(J, "jacobian_matrix: the Jacobian", "apply_fn")
  return J


def point_jacobians(fn: Callable, p, xa, c: int):
  r"""Per-point Jacobians ``∂f(θ, x_a)/∂θ`` of a block of points, as a pytree (jittable).

  ``vmap`` over the points of ``jacrev`` of the one-point network: one backward pass per
  point and output, batched; memory ``bs·c·#params`` numbers (size the block with
  :func:`jacobian_block_size`). The explicit Jacobian is the fast route for small models:
  after it, every product with ``J`` or ``Jᵀ`` is a GEMM.

  Args:
    fn: ``fn(p, x) -> (bs, ...)`` with c numbers per point.
    p: parameters (pytree of floating arrays).
    xa: ``(bs, ...)`` inputs.
    c: outputs per point.

  Returns:
    Pytree like ``p`` with leaves ``(bs, c, *leaf.shape)``.

  Example:
    >>> import jax.numpy as jnp
    >>> J = point_jacobians(lambda w, x: x @ w, jnp.zeros(2), jnp.array([[1., 2.]]), 1)
    >>> J.tolist()                                   # f = x·w: ∂f/∂w = x
    [[[1.0, 2.0]]]
  """
  single = lambda q, xi: fn(q, xi[None]).reshape(c)
  return jax.vmap(jax.jacrev(single), in_axes=(None, 0))(p, xa)


def jacobian_block_size(params, c: int, n: int, memory_budget: int, itemsize: int) -> int:
  r"""Points per block of per-point Jacobians that fit ``memory_budget`` bytes.

  .. math:: b = \min\big(n, \max(1, \lfloor \text{budget} / (3\,c\,P\,\text{itemsize})
     \rfloor)\big)

  with P the number of parameters (the block's Jacobians plus two temporaries of the same
  size). The rule of :func:`jacobian_matrix` and :func:`ntk_diagonal_blocks`; ``b == n``
  means the whole explicit Jacobian fits.

  Example:
    >>> import jax.numpy as jnp
    >>> jacobian_block_size({"w": jnp.zeros(1000)}, 1, 500, 1 << 20, 4)   # 2^20 / 12000
    87
  """
  P = max(_tree_size(params), 1)
  per = 3 * int(c) * P * int(itemsize)
  return _blocks.rows_for_budget(_v.check_int(memory_budget, "memory_budget", lo=1), per_row=per,
                           n=int(n))


def _jac_contract(ja, jb):
  """Σ_leaves ⟨J_a, J_b⟩ over parameters: (na, c, ...) × (nb, c, ...) → (na, c, nb, c)."""
  terms = [jnp.einsum("acp,bdp->acbd", a.reshape(a.shape[0], a.shape[1], -1),
                      b.reshape(b.shape[0], b.shape[1], -1))
           for a, b in zip(jax.tree.leaves(ja), jax.tree.leaves(jb))]
  return functools.reduce(jnp.add, terms)


def ntk_diagonal_blocks(apply_fn: Callable, params, x, *, block_size: Optional[int] = None,
                        memory_budget: int = _k.DEFAULT_MEMORY_BUDGET, dtype=None) -> jax.Array:
  """The c×c diagonal blocks ``J_x J_xᵀ`` of the full empirical NTK, one per point.

  Per-point Jacobians (``vmap`` of ``jacrev`` over a block of points, memory
  block·c·#params), each row pushed back through the point's JVP (``J_x (J_xᵀ e_j)``);
  a ``lax.map`` over blocks (a Python loop over the jitted block for convolutions on the
  CPU), the programs compiled once per network and block shape.

  Args:
    apply_fn, params: as in :func:`trainable_fn`.
    x: inputs ``(n, ...)``.
    block_size: points per block (default: from ``memory_budget``).
    memory_budget: bytes for one block of per-point Jacobians.
    dtype: compute dtype (default: the inputs' float dtype).

  Returns:
    ``(n, c, c)`` array.

  Example:
    >>> import jax.numpy as jnp
    >>> ntk_diagonal_blocks(lambda w, x: x @ w, jnp.zeros((2, 2)),
    ...                     jnp.array([[1., 2.]]))[0].tolist()   # ‖x‖² I_c
    [[5.0, 0.0], [0.0, 5.0]]
  """
  call, p, rest, x, dt, n, c = _blocked_inputs(apply_fn, params, x, dtype,
                                                "ntk_diagonal_blocks")
  if block_size is None:
    block_size = jacobian_block_size(p, c, n, memory_budget, jnp.dtype(dt).itemsize)
  bs = min(_k.check_block_size(block_size, required=True), n)
  nb = math.ceil(n / bs)
  bs = math.ceil(n / nb)      # the same number of blocks, the least padding
  concrete = all(_v.is_concrete(a) for a in jax.tree.leaves((p, x)))
  # blocks built on the host when concrete (eager device pads/reshapes compile per shape);
  # the jitted programs are module-level, keyed on the network (a second call reuses them)
  xp_ = np if concrete else jnp
  x = np.asarray(x) if concrete else x
  if nb * bs > n:
    x = xp_.concatenate([x, xp_.repeat(x[-1:], nb * bs - n, axis=0)])   # _blocks.pad_rows
  xb = x.reshape((nb, bs) + x.shape[1:])
  x1 = jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), dt)
  if concrete and _loops.python_loop_faster(lambda q, xx: call(q, rest, xx), p, x1):
    # convolutions on the CPU: a Python loop over the jitted block (mskjax._loops)
    out = np.concatenate([np.asarray(_diag_block(call, c, p, rest, xb[i])) for i in range(nb)])
    return jax.device_put(out[:n])
  return _diag_run(call, c, n, p, rest, xb)


def _diag_of(call, c, p, rest, xa):
  """``J_x J_xᵀ`` (bs, c, c) for the points of one block: the per-point Jacobian rows
  ``J_xᵀ e_j`` pushed back through ``J_x`` by one JVP each (c JVPs of one point cost less
  than contracting c×c inner products of #params-long rows)."""
  fn = lambda q, x: call(q, rest, x)
  ja = point_jacobians(fn, p, xa, c)                 # leaves (bs, c, *leaf shape)

  def one(xi, ji):
    _, lin = jax.linearize(lambda q: fn(q, xi[None]).reshape(c), p)
    return jax.vmap(lin)(ji)                         # row j: J_x J_xᵀ e_j (symmetric)
  return jax.vmap(one)(xa, ja)


@functools.partial(jax.jit, static_argnames=("call", "c"))
def _diag_block(call, c, p, rest, xa):
  return _diag_of(call, c, p, rest, xa)


@functools.partial(jax.jit, static_argnames=("call", "c", "n"))
def _diag_run(call, c, n, p, rest, xb):
  """The blocks of ``xb`` (nb, bs, ...) in a ``lax.map``, the first n points' blocks."""
  out = lax.map(lambda xa: _diag_of(call, c, p, rest, xa), xb)
  return out.reshape((-1, c, c))[:n]


def _ntk_block(fn, p, ja, xb, c, strategy, trace):
  """One kernel block: row-block Jacobians ``ja`` (leaves (bs1, c, ...)) against the points
  ``xb``: (bs1, bs2) traced or (bs1, c, bs2, c) full."""
  bs1, bs2 = jax.tree.leaves(ja)[0].shape[0], xb.shape[0]
  if strategy == "jvp":
    tang = jax.tree.map(lambda l: l.reshape((bs1 * c,) + l.shape[2:]), ja)
    _, lin = jax.linearize(lambda q: fn(q, xb).reshape(bs2, c), p)
    block = jax.vmap(lin)(tang).reshape(bs1, c, bs2, c)
  else:
    block = _jac_contract(ja, point_jacobians(fn, p, xb, c))
  return jnp.einsum("acbc->ab", block) / c if trace else block


@functools.partial(jax.jit, static_argnames=("call", "c", "strategy", "trace"))
def _ntk_run(call, p, rest, x1b, x2b, c, strategy, trace):
  """Kernel rows for blocks x1b (nb1, bs1, ...) against x2b (nb2, bs2, ...) (lax.map)."""
  fn = lambda q, x: call(q, rest, x)
  bs1 = x1b.shape[1]

  def rows(xa):
    ja = point_jacobians(fn, p, xa, c)                       # leaves (bs1, c, *shape)
    blocks = lax.map(lambda xb: _ntk_block(fn, p, ja, xb, c, strategy, trace), x2b)
    if trace:                                                 # (nb2, bs1, bs2)
      return jnp.moveaxis(blocks, 0, 1).reshape(bs1, -1)
    return jnp.moveaxis(blocks, 0, 2).reshape(bs1, c, -1, c)  # from (nb2, bs1, c, bs2, c)

  return lax.map(rows, x1b)


@functools.partial(jax.jit, static_argnames=("call", "c"))
def _row_jacobians(call, p, rest, xa, c):
  return point_jacobians(lambda q, x: call(q, rest, x), p, xa, c)


@functools.partial(jax.jit, static_argnames=("call", "c", "strategy", "trace"))
def _ntk_col(call, p, rest, ja, xb, c, strategy, trace):
  return _ntk_block(lambda q, x: call(q, rest, x), p, ja, xb, c, strategy, trace)


def _ntk_run_python(call, p, rest, x1b, x2b, c, strategy, trace):
  """:func:`_ntk_run` as a Python loop over jitted blocks (same blocks, same layout): for
  convolutional networks on the CPU, where XLA runs convolutions inside ``lax.map`` on a
  slow path (:mod:`mskjax._loops`)."""
  out = []
  for i in range(x1b.shape[0]):
    ja = _row_jacobians(call, p, rest, x1b[i], c)
    blocks = [_ntk_col(call, p, rest, ja, x2b[j], c, strategy, trace)
              for j in range(x2b.shape[0])]
    out.append(jnp.concatenate(blocks, axis=1 if trace else 2))
  return jnp.stack(out)


class _WeightedCall(NamedTuple):
  """``call`` reparametrised as δ ↦ f(θ + √W ⊙ δ) (``rest`` = (rest, θ, √W)): its
  Jacobian at δ = 0 is J diag(√W), so its empirical NTK is J W Jᵀ."""
  base: Any

  def __call__(self, d, rest, x):
    rest0, p0, sw = rest
    return self.base(jax.tree.map(lambda a, s, e: a + s * e, p0, sw, d), rest0, x)


def _check_weights(weights, p):
  """√W as a pytree like p (same structure and shapes), non-negative and finite."""
  want, got = jax.tree.structure(p), jax.tree.structure(weights)
  if want != got:
    raise ValueError(f"empirical_ntk: `weights` must have the structure of the trainable "
                     f"parameters {want}; got {got}.")
  out = []
  for a, w in zip(jax.tree.leaves(p), jax.tree.leaves(weights)):
    w = jnp.asarray(w, jnp.asarray(a).dtype)
    if w.shape != jnp.shape(a):
      raise ValueError(f"empirical_ntk: a `weights` leaf has shape {w.shape}; the parameter "
                       f"it weights has shape {jnp.shape(a)}.")
    if _v.is_concrete(w) and not bool(np.all(np.asarray(w) >= 0)):
      raise ValueError("empirical_ntk: `weights` must be finite and non-negative (a diagonal "
                       "metric W >= 0).")
    out.append(jnp.sqrt(w))
  return jax.tree.unflatten(want, out)


def _empirical_own(apply_fn, params, x1, x2, full, block_size, memory_budget, strategy,
                   weights=None):
  call, p, rest = _split(apply_fn, params)
  dt = x1.dtype
  p = jax.tree.map(lambda a: jnp.asarray(a).astype(dt)
                   if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, p)
  if weights is not None:
    if call.kind == "linen" and hasattr(weights, "keys") and "params" in weights \
        and jax.tree.structure(weights) != jax.tree.structure(p):
      weights = weights["params"]          # given like the variables: weight their 'params'
    call, rest, p = (_WeightedCall(call), (rest, p, _check_weights(weights, p)),
                     jax.tree.map(jnp.zeros_like, p))
  fn = lambda q, x: call(q, rest, x)
  out = jax.eval_shape(fn, p, x1[:1])
  if not hasattr(out, "shape") or len(out.shape) < 1 or out.shape[0] != 1:
    raise ValueError("empirical_ntk: apply_fn(params, x) must return an array with a leading "
                     f"axis of n points, shape (n,) or (n, c, ...); got "
                     f"{getattr(out, 'shape', type(out).__name__)}.")
  c = int(np.prod(out.shape[1:]))
  n1 = x1.shape[0]
  xb2 = x1 if x2 is None else x2
  n2 = xb2.shape[0]
  P = max(_tree_size(p), 1)
  if strategy == "auto":
    strategy = "jvp" if c >= 4 else "jacobian"   # the crossover: docs/results.md
  item = jnp.dtype(dt).itemsize
  if block_size is None:
    # per-point Jacobians of a block (b·c·P, ×2 blocks for 'jacobian') plus the block's
    # activations times the b·c tangents for 'jvp' (b²·c·A), ×2 for temporaries
    A = _activation_size(fn, p, x1[:1])
    per_row = (2 if strategy == "jacobian" else 1) * c * P * item * 2
    bsz = _blocks.rows_for_budget(memory_budget, per_row=per_row)
    if strategy == "jvp":
      bsz = min(bsz, _blocks.rows_for_budget(memory_budget, per_pair=2 * c * A * item))
    block_size = bsz
  bs1, bs2 = min(block_size, n1), min(block_size, n2)
  nb1, nb2 = math.ceil(n1 / bs1), math.ceil(n2 / bs2)
  x1b = _blocks.pad_rows(x1, nb1 * bs1).reshape((nb1, bs1) + x1.shape[1:])
  x2b = _blocks.pad_rows(xb2, nb2 * bs2).reshape((nb2, bs2) + xb2.shape[1:])
  concrete = all(_v.is_concrete(a) for a in jax.tree.leaves((p, rest, x1b, x2b)))
  run = (_ntk_run_python if concrete and _loops.python_loop_faster(fn, p, x1[:1])
         else _ntk_run)
  K = run(call, p, rest, x1b, x2b, c, strategy, not full)
  if full:
    K = K.reshape(nb1 * bs1, c, nb2 * bs2, c)[:n1, :, :n2, :]
    return K.reshape(n1 * c, n2 * c)
  return K.reshape(nb1 * bs1, nb2 * bs2)[:n1, :n2]
