r"""Spectrum modifiers ``g``: functions that choose new values for the top-k eigenvalues.

**Contract.** A modifier is a callable ``g(evals, k) -> new`` where ``evals`` holds the
descending eigenvalues of the Gram matrix ``K`` (length ``>= k + 1``; ``evals[k]`` is
λ_{k+1}, the first one left unchanged) and ``new`` is a length-``k`` array of strictly
positive values that replace λ₁..λ_k. It must be jittable (``k`` is a static Python int)
— any such callable is accepted by :func:`mskjax.msk_gram` and friends, e.g.
``lambda evals, k: jnp.sqrt(evals[:k] * evals[k])``.

All modifiers act on Gram-matrix eigenvalues λ_i of ``K`` (which grow with n); the
operator eigenvalues of the kernel are ≈ λ_i / n. Conversions are never implicit.

Families (λ_i = ``evals[i-1]``, i = 1..k):

=====================  ====================================================
``identity()``         g(λ_i) = λ_i                       (plain kernel / GD)
``flatten()``          g(λ_i) = λ_{k+1}       (EigenPro-like: the speed-up)
``power(p, scale)``    g(λ_i) = scale · λ_i^p
``exponential(rate)``  g(λ_i) = λ_{k+1} · exp(rate · (k + 1 − i))
``scale(c)``           g(λ_i) = c · λ_i
``values(v)``          g(λ_i) = v_i                  (explicit target values)
``reverse(blocks)``    g(λ_i) = λ_{k+1−i}       (reverse the top-k ordering)
``reverse_blocks(s)``  reverse the blocks starting at the indices ``s`` as units
``geometric_mean()``   g(λ_i) = √(λ_i λ_{k+1})        (halve the log-gap to λ_{k+1})
``relative_power(p)``  g(λ_i) = λ_{k+1} (λ_i/λ_{k+1})^p    (p < 1 flattens, p > 1 sharpens)
=====================  ====================================================

By name (configs, command lines): :func:`from_name` parses ``"flatten"``, ``"power0.5"``,
``"exp0.5"``, ``"scale0.3"``, ``"geomean"``, ``"relpow2"``, ``"reverse"``, ``"identity"``;
:func:`register`
adds a family.

Example:
  >>> import jax.numpy as jnp
  >>> from mskjax import modifiers
  >>> ev = jnp.array([8.0, 4.0, 2.0, 1.0])
  >>> modifiers.flatten()(ev, 2).tolist(), modifiers.power(0.5)(ev, 2).tolist()
  ([2.0, 2.0], [2.828..., 2.0])
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mskjax import _validate as _v

__all__ = ["Modifier", "identity", "flatten", "power", "exponential", "scale", "values",
           "reverse", "reverse_blocks", "geometric_mean", "relative_power", "apply_modifier", "from_name",
           "from_spec", "register", "names"]

Modifier = Callable[[jax.Array, int], jax.Array]


def _named(fn, name):
  fn.__name__ = fn.__qualname__ = name
  return fn


def identity() -> Modifier:
  """g(λ_i) = λ_i: the kernel is unchanged (plain gradient descent).

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> modifiers.identity()(jnp.array([3.0, 2.0, 1.0]), 2).tolist()
    [3.0, 2.0]
  """
  return _named(lambda evals, k: evals[:k], "identity()")


def flatten() -> Modifier:
  """g(λ_i) = λ_{k+1} for i ≤ k: the top-k become the first untouched eigenvalue.

  This is the EigenPro-like choice: the largest eigenvalue of K_g is λ_{k+1}, so the
  stable step grows from 2/λ₁ to 2/λ_{k+1} and directions beyond k are learned
  λ₁/λ_{k+1} times faster.

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> modifiers.flatten()(jnp.array([3.0, 2.0, 1.0]), 2).tolist()
    [1.0, 1.0]
  """
  return _named(lambda evals, k: jnp.full((k,), evals[k], dtype=evals.dtype), "flatten()")


def power(p: float, scale: float = 1.0) -> Modifier:
  """g(λ_i) = scale · λ_i^p (p < 1 compresses the top of the spectrum).

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> modifiers.power(2.0, scale=0.5)(jnp.array([4.0, 2.0, 1.0]), 2).tolist()
    [8.0, 2.0]
  """
  p = _v.check_real(p, "p (modifiers.power)")
  scale = _v.check_real(scale, "scale (modifiers.power)", lo=0, lo_open=True)
  return _named(lambda evals, k: scale * evals[:k] ** p, f"power({p}, scale={scale})")


def exponential(rate: float) -> Modifier:
  """g(λ_i) = λ_{k+1} · exp(rate · (k + 1 − i)): exponential decay anchored at λ_{k+1}.

  ``rate > 0`` gives an exponentially decaying top-k spectrum that joins the untouched
  tail continuously; ``rate < 0`` makes the top-k *increase* with i (reversed bias).

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> [round(v, 4) for v in modifiers.exponential(jnp.log(2.0))(jnp.array([9.0, 5.0, 1.0]), 2).tolist()]
    [4.0, 2.0]
  """
  if _v.is_concrete(rate):            # a traced rate (vmap over rates) stays traced
    rate = _v.check_real(rate, "rate (modifiers.exponential)")

  def g(evals, k):
    steps = jnp.arange(k, 0, -1, dtype=evals.dtype)  # k+1-i for i = 1..k
    return evals[k] * jnp.exp(rate * steps)
  return _named(g, f"exponential({rate})")


def scale(c: float) -> Modifier:
  """g(λ_i) = c · λ_i (c > 0).

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> modifiers.scale(0.5)(jnp.array([4.0, 2.0, 1.0]), 2).tolist()
    [2.0, 1.0]
  """
  c = _v.check_real(c, "c (modifiers.scale)", lo=0, lo_open=True)
  return _named(lambda evals, k: c * evals[:k], f"scale({c})")


def values(v) -> Modifier:
  """g(λ_i) = v_i: explicit new values for the top-k (length must equal k, all > 0).

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> modifiers.values([5.0, 0.1])(jnp.array([4.0, 2.0, 1.0]), 2).tolist()
    [5.0, 0.1]
  """
  try:
    if v is None or isinstance(v, (str, bytes)):
      raise TypeError
    v = np.asarray(v, dtype=np.float64)
  except (TypeError, ValueError):
    raise _v.ArgumentTypeError(f"values(v): `v` must be a 1-D array of k finite positive "
                               f"numbers, got {type(v).__name__} {v!r}.") from None
  if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)) or np.any(v <= 0):
    raise ValueError(f"values(v): `v` must be a 1-D array of k >= 1 finite positive numbers, "
                     f"got {v}.")

  def g(evals, k):
    if k != v.shape[0]:
      raise ValueError(f"values(v) holds {v.shape[0]} values but k={k}; pass exactly k values.")
    return jnp.asarray(v, dtype=evals.dtype)
  return _named(g, f"values({v.tolist()})")


def reverse(blocks: bool = False, rtol: float = 1e-6) -> Modifier:
  """g(λ_i) = λ_{k+1−i}: the top-k eigenvalues in reversed order (reverses the bias).

  With ``blocks=True`` the *blocks* of equal eigenvalues (consecutive λ's within ``rtol``
  relative to λ₁: the 2 per frequency on S¹, the 2l+1 per degree on S²) are reversed as
  units: every position of block b takes the mean of block B−1−b (B blocks in the top k).
  Eigenvalue-by-eigenvalue reversal gives the two members of an S¹ pair different values
  and so breaks the rotation symmetry; the block form does not. Jittable (block ids are
  computed with a cumulative sum, not Python control flow); k should sit on a block
  boundary (:func:`mskjax.spectrum.round_k_to_block`).

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> modifiers.reverse()(jnp.array([4.0, 2.0, 1.0]), 2).tolist()
    [2.0, 4.0]
    >>> ev = jnp.array([9.0, 5.0, 5.0, 2.0, 2.0, 1.0])
    >>> modifiers.reverse()(ev, 5).tolist(), modifiers.reverse(blocks=True)(ev, 5).tolist()
    ([2.0, 2.0, 5.0, 5.0, 9.0], [2.0, 5.0, 5.0, 9.0, 9.0])
  """
  if not _v.check_bool(blocks, "blocks (modifiers.reverse)"):
    return _named(lambda evals, k: evals[:k][::-1], "reverse()")
  rtol = _v.check_real(rtol, "rtol (modifiers.reverse)", lo=0)

  def g(evals, k):
    top = evals[:k]
    gap = jnp.abs(jnp.diff(top)) > rtol * jnp.abs(evals[0])
    block = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(gap).astype(jnp.int32)])
    n_blocks = block[-1] + 1
    sums = jax.ops.segment_sum(top, block, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones_like(top), block, num_segments=k)
    means = sums / jnp.maximum(counts, 1.0)
    return means[n_blocks - 1 - block]

  return _named(g, f"reverse(blocks=True, rtol={rtol:g})")


def reverse_blocks(block_starts) -> Modifier:
  """Reverse the blocks that start at the given indices, each block as a unit.

  ``block_starts`` are the (0-based) indices where blocks of the spectrum begin, e.g. the
  *analytic* degree boundaries 0, 1, 3, 5, … on S¹ — useful when the spectrum passed to
  ``g`` is an empirical one whose pairs are split by finite width (so equal-value blocks
  cannot be found by a tolerance, as :func:`reverse` with ``blocks=True`` does). Every
  position of block b takes the mean of block B−1−b (B blocks in the top k); k must be a
  block boundary. Jittable (the boundaries are static).

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> ev = jnp.array([9.0, 5.2, 4.8, 2.0, 1.0])
    >>> modifiers.reverse_blocks([0, 1, 3])(ev, 3).tolist()
    [5.0, 9.0, 9.0]
  """
  raw = np.asarray(block_starts if block_starts is not None else [], dtype=object).reshape(-1)
  if not all(_v.is_int(s) for s in raw):
    raise _v.ArgumentTypeError(f"reverse_blocks: `block_starts` must be integer indices "
                               f"(0, then the first index of each block), got "
                               f"{block_starts!r}.")
  starts = sorted({int(s) for s in raw})
  if not starts or starts[0] != 0:
    raise ValueError(f"reverse_blocks: `block_starts` must be non-negative indices starting "
                     f"with 0; got {block_starts!r}.")

  def g(evals, k):
    if k not in starts and k != evals.shape[0]:
      raise ValueError(f"reverse_blocks: k={k} is not at a block boundary "
                       f"{[s for s in starts if s <= k + 10]}; round k to a boundary.")
    bounds = [s for s in starts if s < k] + [k]
    blocks = list(zip(bounds[:-1], bounds[1:]))
    means = [jnp.mean(evals[a:b]) for a, b in blocks]
    out = []
    for i, (a, b) in enumerate(blocks):
      out += [means[len(blocks) - 1 - i]] * (b - a)
    return jnp.stack(out)

  return _named(g, f"reverse_blocks({starts[:6]}{'...' if len(starts) > 6 else ''})")


def geometric_mean() -> Modifier:
  """g(λ_i) = √(λ_i · λ_{k+1}): halves the log-distance of each top eigenvalue to λ_{k+1}.

  1-homogeneous (like flatten and scale), so it acts the same on Gram (≈ n·μ) and operator
  eigenvalues.

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> modifiers.geometric_mean()(jnp.array([16.0, 4.0, 1.0]), 2).tolist()
    [4.0, 2.0]
  """
  return _named(lambda evals, k: jnp.sqrt(evals[:k] * evals[k]), "geometric_mean()")


def relative_power(p: float) -> Modifier:
  """g(λ_i) = λ_{k+1} · (λ_i / λ_{k+1})^p: a power law of the top k anchored at λ_{k+1}.

  Scales each top eigenvalue's log-distance to λ_{k+1} by p, so the modified spectrum joins
  the untouched tail continuously: p = 0 is :func:`flatten`, p = ½ :func:`geometric_mean`,
  p = 1 the identity; p > 1 *raises* the top of the spectrum (a stronger spectral bias: the
  top directions are learned relatively earlier), 0 < p < 1 lowers it. 1-homogeneous, so it
  acts the same on Gram (≈ n·μ) and operator eigenvalues.

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> modifiers.relative_power(2.0)(jnp.array([16.0, 4.0, 2.0]), 2).tolist()
    [128.0, 8.0]
  """
  p = _v.check_real(p, "p (modifiers.relative_power)")
  return _named(lambda evals, k: evals[k] * (evals[:k] / evals[k]) ** p,
                f"relative_power({p})")


_REGISTRY: dict = {}


def register(name: str, factory: Callable[..., Modifier], *, takes_number: bool) -> None:
  """Make ``from_name`` know a family: ``name`` alone, or ``name<number>`` if ``takes_number``.

  Example:
    >>> from mskjax import modifiers
    >>> modifiers.register("half", lambda: modifiers.scale(0.5), takes_number=False)
    >>> modifiers.from_name("half").__name__
    'scale(0.5)'
  """
  if not isinstance(name, str) or not name.isidentifier() or not name.islower():
    raise ValueError(f"register: `name` must be a lower-case identifier; got {name!r}.")
  if not callable(factory):
    raise TypeError(f"register: `factory` must be callable; got {type(factory).__name__}.")
  _REGISTRY[name] = (factory, bool(takes_number))


def names() -> list[str]:
  """The registered family names (``from_name`` accepts ``name`` or ``name<number>``)."""
  return sorted(f"{n}<number>" if num else n for n, (_, num) in _REGISTRY.items())


def from_name(name: str) -> Modifier:
  """A modifier from its name: ``"flatten"``, ``"power0.5"``, ``"exp0.5"``, ``"scale0.3"``, …

  One parser for configs and command lines: a registered family name, followed by its
  number for the families that take one (``power<p>``, ``exp<rate>``, ``scale<c>``).

  Args:
    name: e.g. ``"identity"``, ``"flatten"``, ``"geomean"``, ``"reverse"``, ``"power0.5"``,
      ``"exp1e-1"``, ``"scale2"``.

  Returns:
    The modifier callable.

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> modifiers.from_name("power0.5")(jnp.array([16.0, 4.0, 1.0]), 2).tolist()
    [4.0, 2.0]
  """
  import re
  if not isinstance(name, str):
    raise TypeError(f"from_name: `name` must be a string such as 'flatten' or 'power0.5'; got "
                    f"{type(name).__name__}.")
  m = re.fullmatch(r"([a-z_]+?)([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?", name.strip())
  if m is None or m.group(1) not in _REGISTRY:
    raise ValueError(f"unknown modifier name {name!r}; known: {', '.join(names())}.")
  factory, takes_number = _REGISTRY[m.group(1)]
  if takes_number != (m.group(2) is not None):
    form = f"{m.group(1)}<number>, e.g. {m.group(1)}0.5" if takes_number else m.group(1)
    raise ValueError(f"modifier name {name!r}: write it as {form}.")
  return factory(float(m.group(2))) if takes_number else factory()


def from_spec(item: str):
  """``(g, k)`` of a config item ``'NAME@k'`` (g = :func:`from_name` (NAME) on the top k), or
  ``(None, None)`` for ``'none'`` (the unmodified kernel).

  The one parser of "modifier on the top k" strings in configs and command lines.

  Args:
    item: ``'none'`` or ``'NAME@k'`` with k ≥ 1, e.g. ``'flatten@10'``, ``'geomean@100'``,
      ``'power0.5@20'``.

  Returns:
    ``(modifier, k)``; ``(None, None)`` for ``'none'``.

  Raises:
    ValueError: naming the item, the expected form and the known modifier names.

  Example:
    >>> g, k = from_spec("flatten@10"); k
    10
    >>> from_spec("none")
    (None, None)
  """
  if item == "none":
    return None, None
  name, sep, k_text = str(item).partition("@")
  if not sep or not k_text.strip().isdigit() or int(k_text) < 1:
    raise ValueError(f"modifier spec {item!r} must be 'none' or 'NAME@k' with k >= 1 (e.g. "
                     f"'flatten@10', 'geomean@100'); NAME is one of {', '.join(names())}.")
  try:
    g = from_name(name)
  except ValueError as e:
    raise ValueError(f"modifier spec {item!r}: {e}") from None
  return g, int(k_text)


for _n, _f, _num in (("identity", identity, False), ("flatten", flatten, False),
                     ("geomean", geometric_mean, False), ("reverse", reverse, False),
                     ("power", power, True), ("exp", exponential, True),
                     ("relpow", relative_power, True),
                     ("scale", scale, True)):
  register(_n, _f, takes_number=_num)


def apply_modifier(g: Modifier, evals, k: int) -> jax.Array:
  """``g(evals, k)`` with its contract checked: shape ``(k,)``, finite, strictly positive.

  Values are checked when concrete (outside ``jit``); shapes always.

  Example:
    >>> import jax.numpy as jnp; from mskjax import modifiers
    >>> modifiers.apply_modifier(modifiers.flatten(), jnp.array([3.0, 2.0, 1.0]), 1).tolist()
    [2.0]
  """
  if not callable(g):
    raise TypeError(f"`g` must be a modifier callable g(evals, k), got {type(g).__name__}; "
                    "see mskjax.modifiers (e.g. modifiers.flatten()).")
  k = _v.check_k(k, evals.shape[0])
  name = getattr(g, "__name__", repr(g))
  out = g(evals, k)
  try:
    new = jnp.asarray(out)
  except (TypeError, ValueError):
    raise TypeError(f"modifier `g` ({name}) returned {type(out).__name__} {out!r}; it must "
                    f"return the k={k} new top eigenvalues as an array of shape ({k},).") from None
  if not (jnp.issubdtype(new.dtype, jnp.floating) or jnp.issubdtype(new.dtype, jnp.integer)):
    raise TypeError(f"modifier `g` ({name}) returned dtype {new.dtype}; it must return k={k} "
                    "real numbers.")
  if new.shape != (k,):
    raise ValueError(f"modifier `g` ({name}) returned shape {tuple(new.shape)}; it must return "
                     f"the k={k} new top eigenvalues, shape ({k},).")
  new = new.astype(evals.dtype)
  if _v.is_concrete(new) and not _v.tracing():
    vals = np.asarray(new)
    if not np.isfinite(vals).all():
      raise ValueError(f"modifier `g` ({name}) returned NaN/inf values {vals} for the top-k "
                       f"eigenvalues {np.asarray(evals[:k])} (k={k}); `g` must return k finite "
                       "values: guard its divisions and logs (λ may be 0 beyond the rank of K).")
    if not (vals > 0).all():
      raise ValueError(f"modifier `g` ({name}) must return strictly positive eigenvalues; got "
                       f"min {float(vals.min()):.3g} (k={k}). The MSK must stay positive "
                       "definite on the top-k eigenspace (S = I + V(g/λ − 1)Vᵀ must be SPD): "
                       "make `g` return values > 0 (e.g. modifiers.flatten(), or clip with "
                       "jnp.maximum), or lower `k` if g anchors at a λ_(k+1) that is 0.")
  return new
