"""Where a compiled ``lax`` loop is slower than a Python loop over the same jitted body.

XLA:CPU executes convolutions inside ``lax.while_loop`` / ``lax.scan`` / ``lax.map`` bodies
on a slow path: a 1-D CNN training step runs many times slower as the body of a
``while_loop`` than as a jitted function called from Python; a loop of dense GEMMs and
elementwise ops does not (there the compiled loop wins: it saves the per-step dispatch). Accelerators (GPU/TPU) run convolutions inside loops at full speed.

The rule every blocked loop of mskjax uses (:func:`python_loop_faster`): loop on the host
(Python) iff the computation runs on the CPU **and** its jaxpr contains a convolution;
otherwise keep the compiled loop. ``benchmarks/bench_loop.py`` measures both halves of
the rule.

The module also holds :func:`in_background`, the one way mskjax runs host work in a
worker thread (compilations overlapped with the caller's work).
"""
from __future__ import annotations

import concurrent.futures
from typing import Any

import jax

__all__ = ["LOOP_MODES", "has_convolution", "python_loop_faster", "on_cpu", "in_background"]

LOOP_MODES = ("auto", "compiled", "python")

_SLOW_IN_LOOPS = frozenset({"conv_general_dilated"})


def _sub_jaxprs(params):
  try:
    from jax.extend.core import jaxprs_in_params
  except ImportError:  # pragma: no cover
    return []
  return jaxprs_in_params(params)


def _walk(jaxpr) -> bool:
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in _SLOW_IN_LOOPS:
      return True
    for sub in _sub_jaxprs(eqn.params):
      if _walk(getattr(sub, "jaxpr", sub)):
        return True
  return False


def has_convolution(fn, *args, **kwargs) -> bool:
  """Whether ``fn(*args, **kwargs)`` (traced abstractly, nothing is computed) contains a
  ``conv_general_dilated``, including inside ``jit``, ``vmap``, ``grad`` and control flow.

  Example:
    >>> import jax.numpy as jnp
    >>> has_convolution(lambda x: x @ x.T, jnp.ones((2, 2)))
    False
    >>> conv = lambda x: jax.lax.conv(x, jnp.ones((1, 1, 3)), (1,), 'SAME')
    >>> has_convolution(conv, jnp.ones((1, 1, 8)))
    True
  """
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  return _walk(closed.jaxpr)


def on_cpu(*trees: Any) -> bool:
  """Whether the arrays in ``trees`` (or, without committed arrays, the default backend)
  live on the CPU."""
  for tree in trees:
    for leaf in jax.tree.leaves(tree):
      devs = getattr(leaf, "devices", None)
      if callable(devs):
        try:
          return all(d.platform == "cpu" for d in devs())
        except Exception:  # a tracer: fall back to the default backend
          break
  return jax.default_backend() == "cpu"


def python_loop_faster(fn, *args, **kwargs) -> bool:
  """The rule: a Python loop over jitted ``fn`` beats a ``lax`` loop of it iff the arrays
  live on the CPU and ``fn`` contains a convolution (module docstring)."""
  return on_cpu(args, kwargs) and has_convolution(fn, *args, **kwargs)


def in_background(fn, *args):
  """Start ``fn(*args)`` in a worker thread under the caller's ``jax_enable_x64`` setting
  (``jax.enable_x64`` is a per-thread context: a bare thread would compute in float32);
  returns its ``concurrent.futures.Future`` (``.result()`` re-raises its error). XLA
  compilations release the GIL, so a compilation there overlaps the caller's work.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> with jax.enable_x64(True):
    ...   in_background(lambda: jnp.zeros(1).dtype).result()   # the default float
    dtype('float64')
  """
  x64 = bool(jax.config.jax_enable_x64)

  def run():
    with jax.enable_x64(x64):
      return fn(*args)
  pool = concurrent.futures.ThreadPoolExecutor(1)
  try:
    return pool.submit(run)
  finally:
    pool.shutdown(wait=False)     # the thread ends with fn
