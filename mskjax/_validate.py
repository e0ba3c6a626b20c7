"""Input checks shared by the public functions: clear errors that name the argument.

Checks run on concrete arrays only. Under ``jax.jit`` the inputs are tracers, their
values are unknown, and only static facts (shapes, dtypes) are checked, so the jitted
numerics never see Python control flow on traced values.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_concrete", "as_float_array", "check_finite", "check_square_symmetric",
    "check_k", "check_rows",
]


def is_concrete(x) -> bool:
  """True when ``x`` holds values (not a tracer inside ``jit``/``vmap``/``grad``)."""
  return not isinstance(x, jax.core.Tracer)


def as_float_array(x, name: str, *, ndim: int | tuple[int, ...] | None = None) -> jax.Array:
  """``x`` as a floating JAX array (float64 when x64 is enabled), with a named error."""
  if x is None:
    raise TypeError(f"`{name}` is None; pass an array.")
  if not hasattr(x, "shape"):
    try:
      x = np.asarray(x)
    except Exception as e:  # pragma: no cover
      raise TypeError(f"`{name}` must be array-like, got {type(x).__name__}.") from e
  if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
          or x.dtype == bool):
    raise TypeError(f"`{name}` must hold real numbers, got dtype {x.dtype}.")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  if ndim is not None:
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in allowed:
      raise ValueError(f"`{name}` must have {' or '.join(map(str, allowed))} dimensions, "
                       f"got shape {tuple(x.shape)}.")
  return x


def check_finite(x, name: str) -> None:
  """Raise ``ValueError`` if a concrete ``x`` has NaN or inf entries."""
  if is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
    bad = int(jnp.size(x) - jnp.sum(jnp.isfinite(x)))
    raise ValueError(f"`{name}` has {bad} NaN/inf entries; clean the input first.")


def check_square_symmetric(K, name: str = "K", *, rtol: float = 1e-5) -> jax.Array:
  """A square, finite, symmetric (to ``rtol`` relative to max|K|) floating matrix."""
  K = as_float_array(K, name, ndim=2)
  if K.shape[0] != K.shape[1]:
    raise ValueError(f"`{name}` must be a square (n, n) kernel matrix, got shape {K.shape}.")
  check_finite(K, name)
  if is_concrete(K) and K.shape[0] > 0:
    scale = float(jnp.max(jnp.abs(K)))
    asym = float(jnp.max(jnp.abs(K - K.T)))
    if asym > rtol * max(scale, np.finfo(np.float32).tiny):
      raise ValueError(
          f"`{name}` must be symmetric: max|{name} - {name}.T| = {asym:.3g} exceeds "
          f"{rtol:g} x max|{name}| = {rtol * scale:.3g}. Symmetrise it with "
          f"({name} + {name}.T) / 2 if the asymmetry is round-off.")
  return K


def check_k(k, n: int, name: str = "k") -> int:
  """``k`` must be a Python int with 1 <= k <= n - 1 (one eigenvalue stays untouched)."""
  if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
    raise TypeError(f"`{name}` must be a Python int (a static size), got {type(k).__name__}.")
  k = int(k)
  if not 1 <= k <= n - 1:
    raise ValueError(f"`{name}` must satisfy 1 <= {name} <= n - 1 = {n - 1} (the modifier "
                     f"needs eigenvalue {name}+1 as an anchor), got {name}={k}.")
  return k


def check_rows(x, n: int, name: str, other: str) -> None:
  """``x.shape[0]`` must equal ``n`` (the number of rows of ``other``)."""
  if x.shape[0] != n:
    raise ValueError(f"`{name}` has {x.shape[0]} rows but `{other}` has {n}; "
                     "they must describe the same points.")
