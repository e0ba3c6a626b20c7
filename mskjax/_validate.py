"""Input checks shared by the public functions: clear errors that name the argument.

Checks run on concrete arrays only. Under ``jax.jit`` the inputs are tracers, their
values are unknown, and only static facts (shapes, dtypes) are checked, so the jitted
numerics never see Python control flow on traced values.

**NaN policy (one for the whole package): reject at the boundary.** Every public function
checks its concrete array inputs for NaN/inf and raises ``ValueError`` naming the argument;
numerical preconditions (indefinite kernels, unstable steps at t = ∞, singular systems,
unconverged solvers) raise or warn instead of returning a wrong number. Inside ``jit`` the
values are unknown, so only shapes and dtypes are checked there and NaN inputs propagate
to NaN outputs (never to a finite wrong answer where the code can tell).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_concrete", "tracing", "check_bool", "as_float_array", "check_finite",
    "check_square_symmetric", "check_k", "check_rows", "ArgumentTypeError", "is_int",
    "check_choice", "check_int", "check_real", "check_indices", "check_same_shape",
    "finite_array", "check_kernel_fn", "PSD_RTOL", "psd_tolerance", "check_psd_eigenvalues",
    "as_points", "check_kernel_block", "check_operator", "check_eigenpair_residuals",
    "check_known_kwargs", "roundoff_floor", "check_float_params", "check_key", "check_finite_tree",
    "check_finite_output", "check_scalar", "check_learning_rate", "check_float_updates",
    "check_same_structure", "check_path", "check_numeric_tree",
    "SUBSAMPLE_ROWS_PER_DIRECTION", "check_subsample_supports_k", "check_solver_args",
    "check_loss_output", "check_state_matches", "NonFiniteOutputError",
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


_PROBE = np.float32(0.0)


def tracing() -> bool:
  """True when jnp operations on constants are staged out (inside ``jit``, ``eval_shape``,
  or a ``vmap``/``grad`` nested in ``jit``): host-side numerics must not run there.

  Detected with public API only: a ``lax`` op on a numpy constant returns a
  ``jax.core.Tracer`` exactly when it is staged. (Eager ``vmap``/``grad`` do not stage ops
  on constants, so this is False there and host numerics on concrete values are correct.)
  Host-side numerics (float64 upcasts, eager eigen-solves) run only when this is False; the
  value checks here use numpy, so they also work on closed-over constants inside a trace.
  """
  return isinstance(jax.lax.add(_PROBE, _PROBE), jax.core.Tracer)


def check_bool(x, name: str) -> bool:
  """``x`` as a Python bool (numpy bools accepted; ints, strings, arrays rejected).

  Example:
    >>> check_bool(True, "flow")
    True
    >>> check_bool(1, "flow")
    Traceback (most recent call last):
    ...
    mskjax._validate.ArgumentTypeError: `flow` must be True or False, got int 1.
  """
  if not isinstance(x, (bool, np.bool_)):
    raise ArgumentTypeError(f"`{name}` must be True or False, got {type(x).__name__} {x!r}.")
  return bool(x)


def check_finite(x, name: str) -> None:
  """Raise ``ValueError`` if a concrete ``x`` has NaN or inf entries (checked with numpy,
  so it works on constants inside ``jit`` too)."""
  if is_concrete(x):
    xp = _array_module()
    ok = xp.isfinite(xp.asarray(x))
    if not bool(ok.all()):
      raise ValueError(f"`{name}` has {int(ok.size - ok.sum())} NaN/inf entries; clean the "
                       "input first.")


def _array_module():
  """numpy inside a trace (jnp ops would be staged: a concrete check must not be), else
  jax.numpy (no host copy of a device array)."""
  return np if tracing() else jnp


def asymmetry(A) -> tuple[float, float]:
  """``(max|A − Aᵀ|, max|A|)`` of a concrete square array (numpy or jax).

  Compared as ``asym > rtol · scale``: relative at every scale (no absolute floor), so
  1e-300·[[1, 5], [0, 1]] is as asymmetric as [[1, 5], [0, 1]]; only an exactly zero
  matrix has scale 0.

  Example:
    >>> asymmetry(np.array([[1.0, 5.0], [0.0, 1.0]]))
    (5.0, 5.0)
  """
  xp = jnp if isinstance(A, jax.Array) else np
  return float(xp.max(xp.abs(A - A.T))), float(xp.max(xp.abs(A)))


def check_square_symmetric(K, name: str = "K", *, rtol: float = 1e-5) -> jax.Array:
  """A square, finite, symmetric (to ``rtol`` relative to max|K|) floating matrix.

  Example:
    >>> check_square_symmetric(1e-300 * np.array([[1.0, 5.0], [0.0, 1.0]]))
    Traceback (most recent call last):
    ...
    ValueError: `K` must be symmetric: max|K - K.T| = 5e-300 exceeds 1e-05 x max|K| = 5e-305. Symmetrise it with (K + K.T) / 2 if the asymmetry is round-off.
  """
  K = as_float_array(K, name, ndim=2)
  if K.shape[0] != K.shape[1]:
    raise ValueError(f"`{name}` must be a square (n, n) kernel matrix, got shape {K.shape}.")
  check_finite(K, name)
  if is_concrete(K) and K.shape[0] > 0:
    asym, scale = asymmetry(_array_module().asarray(K))
    if asym > rtol * scale:
      raise ValueError(
          f"`{name}` must be symmetric: max|{name} - {name}.T| = {asym:.3g} exceeds "
          f"{rtol:g} x max|{name}| = {rtol * scale:.3g}. Symmetrise it with "
          f"({name} + {name}.T) / 2 if the asymmetry is round-off.")
  return K


def check_k(k, n: int, name: str = "k") -> int:
  """``k`` must be a Python int with 1 <= k <= n - 1 (one eigenvalue stays untouched)."""
  if not is_int(k):
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


# ------------------------------------------------------------------ scalars and indices

class ArgumentTypeError(TypeError, ValueError):
  """A scalar argument of the wrong type (a float for an int, a bool, an array...).

  Subclasses both ``TypeError`` and ``ValueError``: either ``except`` catches it.
  """


def is_int(x) -> bool:
  """True for a Python or numpy integer that is not a bool (``True`` is an ``int`` in Python,
  never a valid count, size or index here).

  Example:
    >>> is_int(3), is_int(np.int64(3)), is_int(True), is_int(3.0)
    (True, True, False, False)
  """
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_choice(x, name: str, choices: tuple):
  """``x`` must be one of ``choices`` (compared by value; bools never match an int choice).

  Example:
    >>> check_choice("jvp", "implementation", ("auto", "jvp", 1))
    'jvp'
    >>> check_choice(True, "implementation", ("auto", "jvp", 1))
    Traceback (most recent call last):
    ...
    ValueError: `implementation` must be one of 'auto', 'jvp', 1; got True.
  """
  if isinstance(x, (bool, np.bool_)) and not any(isinstance(c, bool) for c in choices):
    ok = False
  else:
    try:
      ok = x in choices
    except Exception:   # e.g. an array: ambiguous truth value
      ok = False
  if not ok:
    raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {x!r}.")
  return x


def check_int(x, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
  """``x`` as a Python int (bools and floats rejected) with ``lo <= x <= hi``.

  Example:
    >>> check_int(3, "k", lo=1)
    3
    >>> check_int(0, "block_size", lo=1)
    Traceback (most recent call last):
    ...
    ValueError: `block_size` must be an int >= 1, got 0.
  """
  if hi is None:
    want = "" if lo is None else f" >= {lo}"
  elif lo is None:
    want = f" <= {hi}"
  else:
    want = f" with {lo} <= {name} <= {hi}"
  if not is_int(x):
    raise ArgumentTypeError(f"`{name}` must be an int{want}, got {type(x).__name__} {x!r}.")
  x = int(x)
  if (lo is not None and x < lo) or (hi is not None and x > hi):
    raise ValueError(f"`{name}` must be an int{want}, got {x}.")
  return x


def check_real(x, name: str, *, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, hi_open: bool = False, allow_inf: bool = False) -> float:
  """``x`` as a finite Python float (NaN always rejected) within the stated bounds.

  ``lo_open``/``hi_open`` make the bound strict. ``allow_inf`` admits ``±inf``.

  Example:
    >>> check_real(0.1, "tol", lo=0, lo_open=True)
    0.1
    >>> check_real(float("nan"), "tol", lo=0, lo_open=True)
    Traceback (most recent call last):
    ...
    ValueError: `tol` must be a real number > 0, got nan.
  """
  if isinstance(x, (bool, np.bool_, str, bytes)):
    raise ArgumentTypeError(f"`{name}` must be a real number, got {type(x).__name__} {x!r}.")
  if hasattr(x, "shape") and tuple(x.shape) != ():
    raise ArgumentTypeError(f"`{name}` must be a scalar, got shape {tuple(x.shape)}.")
  if isinstance(x, jax.core.Tracer):
    raise ArgumentTypeError(f"`{name}` must be a concrete number (a static hyper-parameter), got a "
                    "traced value; pass it outside jit.")
  try:
    v = float(x)
  except (TypeError, ValueError):
    raise ArgumentTypeError(f"`{name}` must be a real number, got {type(x).__name__} "
                            f"{x!r}.") from None
  parts = []
  if lo is not None:
    parts.append(f"{'>' if lo_open else '>='} {lo:g}")
  if hi is not None:
    parts.append(f"{'<' if hi_open else '<='} {hi:g}")
  want = "a real number" + (" " + " and ".join(parts) if parts else "")
  bad = (np.isnan(v) or (np.isinf(v) and not allow_inf)
         or (lo is not None and (v <= lo if lo_open else v < lo))
         or (hi is not None and (v >= hi if hi_open else v > hi)))
  if bad:
    raise ValueError(f"`{name}` must be {want}, got {v!r}.")
  return v


def check_indices(idx, n: int, name: str, *, ndim: int = 1) -> jax.Array:
  """Integer indices into ``n`` points: integer dtype, ``ndim`` dims, ``0 <= idx < n``.

  JAX clamps out-of-range gathers silently (``x[100]`` of 40 points reads point 39), so
  the bounds are checked here whenever the indices are concrete (negative indices are
  rejected too: they would silently count from the end).

  Example:
    >>> check_indices([0, 3], 4, "landmarks").tolist()
    [0, 3]
    >>> check_indices([0, 4], 4, "landmarks")
    Traceback (most recent call last):
    ...
    IndexError: `landmarks` holds index 4, outside 0..3 (n = 4 points).
  """
  if idx is None:
    raise TypeError(f"`{name}` is None; pass integer indices.")
  arr = idx if hasattr(idx, "dtype") else np.asarray(idx)
  if arr.size == 0 and not hasattr(idx, "dtype"):
    arr = np.asarray(idx, dtype=np.int32)
  if not jnp.issubdtype(arr.dtype, jnp.integer):
    raise TypeError(f"`{name}` must hold integer indices, got dtype {arr.dtype}.")
  if arr.ndim != ndim:
    raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {tuple(arr.shape)}.")
  if is_concrete(arr) and arr.size:
    a = np.asarray(arr)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= n:
      bad = lo if lo < 0 else hi
      raise IndexError(f"`{name}` holds index {bad}, outside 0..{n - 1} (n = {n} points).")
  return jnp.asarray(arr)


def check_same_shape(x, shape: tuple, name: str, what: str) -> None:
  """``x.shape`` must equal ``shape`` (``what`` says where that shape comes from)."""
  if tuple(x.shape) != tuple(shape):
    raise ValueError(f"`{name}` has shape {tuple(x.shape)}; it must have shape "
                     f"{tuple(shape)} ({what}).")


def finite_array(x, name: str, *, ndim: int | tuple[int, ...] | None = None) -> jax.Array:
  """:func:`as_float_array` followed by :func:`check_finite` (the NaN policy: reject)."""
  x = as_float_array(x, name, ndim=ndim)
  check_finite(x, name)
  return x


def check_kernel_fn(kernel_fn, get, n_extra: int = 0, name: str = "kernel_fn",
                    fix: str | None = None) -> None:
  """``kernel_fn`` must be callable as ``kernel_fn(x1, x2, get, *extra)`` (``get`` given)
  or ``kernel_fn(x1, x2, *extra)`` (``get=None``); checked on the signature, so a plain
  2-argument kernel with the default ``get='ntk'`` gets a named error, not a TypeError
  from deep inside a jitted call. ``fix`` replaces the suggested fix in that error.

  Example:
    >>> check_kernel_fn(lambda a, b: a @ b.T, "ntk")
    Traceback (most recent call last):
    ...
    TypeError: `kernel_fn` cannot be called as kernel_fn(x1, x2, get='ntk') (its signature is (a, b)); for a plain kernel(x1, x2) pass get=None.
  """
  import inspect
  if not callable(kernel_fn):
    raise TypeError(f"`{name}` must be callable, got {type(kernel_fn).__name__}.")
  if get not in (None, "ntk", "nngp"):
    raise ValueError(f"`get` must be 'ntk', 'nngp' or None, got {get!r}.")
  try:
    sig = inspect.signature(kernel_fn)
  except (TypeError, ValueError):   # no signature available (builtins): not checkable
    return
  args = (None, None) + ((get,) if get is not None else ()) + (None,) * n_extra
  try:
    sig.bind(*args)
  except TypeError:
    how = f"{name}(x1, x2" + (f", get={get!r}" if get is not None else "") + \
        ", *kernel_args" * bool(n_extra) + ")"
    fix = fix or ("for a plain kernel(x1, x2) pass get=None" if get is not None else
                  "pass get='ntk' or 'nngp' for a neural-tangents kernel_fn")
    raise TypeError(f"`{name}` cannot be called as {how} (its signature is {sig}); "
                    f"{fix}.") from None


# ------------------------------------------------------------------ spectra

PSD_RTOL = 1e-5
"""Negative eigenvalues down to ``-max(PSD_RTOL, 10·n·eps)·max|λ|`` are round-off of a PSD
matrix and are clamped to 0; anything more negative is an indefinite matrix (rejected)."""


def psd_tolerance(n: int, dtype) -> float:
  """Relative size (to max|λ|) of negative eigenvalues still treated as round-off.

  ``max(PSD_RTOL, 10·n·eps(dtype))``: the eigenvalues of a rounded PSD matrix are off by
  at most ~n·eps·‖K‖ (Weyl), and a kernel computed in float32 then cast to float64 keeps
  float32 round-off (~1e-7 relative), hence the floor.

  Example:
    >>> psd_tolerance(10, "float64")
    1e-05
  """
  return max(PSD_RTOL, 10.0 * n * float(np.finfo(np.dtype(dtype)).eps))


def check_psd_eigenvalues(w, n: int, dtype, name: str = "K", rtol: float | None = None
                          ) -> None:
  """Reject an indefinite matrix from its (concrete) eigenvalues ``w``.

  Raises ``ValueError`` when ``min(w) < -rtol · max|w|`` (default
  ``rtol = psd_tolerance(n, dtype)``).
  """
  if not is_concrete(w) or np.size(w) == 0:
    return
  w = np.asarray(w, dtype=np.float64)
  scale = float(np.max(np.abs(w)))
  tol = psd_tolerance(n, dtype) if rtol is None else rtol
  lo = float(np.min(w))
  if lo < -tol * scale:
    raise ValueError(
        f"`{name}` is not positive semi-definite: it has eigenvalue {lo:.4g} while "
        f"max|λ| = {scale:.4g} (round-off negatives down to -{tol:.2g}·max|λ| are clamped "
        f"to 0; this one is not round-off). A kernel Gram matrix must be PSD: check how "
        f"`{name}` was built (e.g. a kernel that is not positive definite, or mixed-up "
        "rows/columns).")


def as_points(x, name: str = "x", *, nonempty: bool = False) -> jax.Array:
  """``x`` as a float array of n points of any per-point shape, ``(n, d)`` or ``(n, ...)``
  (``(n, L, C)`` sequences, ``(n, H, W, C)`` images: neural-tangents' channels-last
  convention); finite when concrete. Blocking acts on the point axis only.

  Example:
    >>> as_points([[1.0, 2.0]]).shape
    (1, 2)
  """
  x = as_float_array(x, name)
  if x.ndim < 2:
    raise ValueError(f"`{name}` must have a leading axis of n points and at least one feature "
                     f"axis, shape (n, d) or (n, ...); got shape {tuple(x.shape)}. Reshape "
                     f"it, e.g. {name}[:, None] for scalar inputs.")
  if nonempty and x.shape[0] == 0:
    raise ValueError(f"`{name}` holds no points (shape {tuple(x.shape)}); pass at least one "
                     "point.")
  check_finite(x, name)
  return x


def check_kernel_block(B, shape: tuple, name: str = "kernel_fn", *, symmetric: bool = False,
                       rtol: float = PSD_RTOL, inputs: str = "x") -> None:
  """One evaluated kernel block ``B = k(a, b)``: shape ``(len(a), len(b))`` always; when
  concrete, finite and (``symmetric``, a diagonal block ``k(a, a)``) symmetric to ``rtol``
  relative to max|B|. The cheap checks of a whole kernel on its first block: a kernel
  returning the wrong shape would be broadcast into K, an asymmetric one makes cached
  (mirrored) and uncached products disagree.

  Example:
    >>> check_kernel_block(np.ones((3, 1)), (3, 3))
    Traceback (most recent call last):
    ...
    ValueError: `kernel_fn` returned a block of shape (3, 1) for 3 x 3 points; it must return the (n1, n2) = (3, 3) Gram matrix k(x1, x2) (for a neural-tangents kernel pass get='ntk' or 'nngp'; reduce any output axis).
  """
  got = tuple(getattr(B, "shape", ()))
  if got != tuple(shape):
    raise ValueError(f"`{name}` returned a block of shape {got} for {shape[0]} x {shape[1]} "
                     f"points; it must return the (n1, n2) = {tuple(shape)} Gram matrix "
                     "k(x1, x2) (for a neural-tangents kernel pass get='ntk' or 'nngp'; "
                     "reduce any output axis).")
  if not is_concrete(B) or tracing():
    return
  Bn = np.asarray(B, dtype=np.float64)
  if not np.isfinite(Bn).all():
    raise ValueError(f"`{name}` returned NaN/inf on `{inputs}` (on a block of its first "
                     "points): check the kernel's parameters and the inputs' scale.")
  if symmetric and Bn.size:
    asym, scale = asymmetry(Bn)
    if asym > rtol * scale:
      raise ValueError(
          f"`{name}` is not symmetric: on a diagonal block k(a, a), max|k(a, a) - "
          f"k(a, a).T| = {asym:.3g} exceeds {rtol:g} x max|k| = {rtol * scale:.3g}. A kernel "
          "must satisfy k(x, x') = k(x', x); symmetrise it, e.g. "
          "lambda a, b: 0.5 * (k(a, b) + k(b, a).T).")


def check_operator(op, name: str = "K") -> int:
  """A (possibly hand-built) kernel operator: ``n`` an int >= 1, a floating ``dtype``, a
  callable ``matmul``, and a held ``matrix`` / points ``x`` (when present) of that ``n``.
  Returns ``n``.

  Example:
    >>> import types
    >>> check_operator(types.SimpleNamespace(n=3, dtype=np.float64, matmul=len,
    ...                matrix=np.eye(2), x=None))
    Traceback (most recent call last):
    ...
    ValueError: `K.matrix` has shape (2, 2) but `K.n` = 3; build the operator with n = K.shape[0] (mskjax.kernels.matrix_operator(K) does).
  """
  n = check_int(getattr(op, "n", None), f"{name}.n", lo=1)
  try:
    floating = jnp.issubdtype(jnp.dtype(op.dtype), jnp.floating)
  except TypeError:
    floating = False
  if not floating:
    raise TypeError(f"`{name}.dtype` must be a floating dtype (the dtype of its products), got "
                    f"{getattr(op, 'dtype', None)!r}.")
  if not callable(getattr(op, "matmul", None)):
    raise TypeError(f"`{name}.matmul` must be callable, V -> K V.")
  M = getattr(op, "matrix", None)
  if M is not None and tuple(np.shape(M)) != (n, n):
    raise ValueError(f"`{name}.matrix` has shape {tuple(np.shape(M))} but `{name}.n` = {n}; "
                     f"build the operator with n = K.shape[0] (mskjax.kernels."
                     "matrix_operator(K) does).")
  x = getattr(op, "x", None)
  if x is not None and np.shape(x)[0] != n:
    raise ValueError(f"`{name}.x` holds {np.shape(x)[0]} points but `{name}.n` = {n}; they "
                     "must agree (mskjax.kernels.kernel_operator(kernel_fn, x) sets n).")
  return n


def check_eigenpair_residuals(K, values, vectors, name: str = "eigenpairs", *,
                              n_check: int = 3, rtol: float | None = None) -> None:
  """Cheap check that ``(values, vectors)`` are eigenpairs of the concrete matrix ``K``:
  ``‖K v_i − λ_i v_i‖ <= rtol · max(|λ₁|, max|K|)`` for the top ``n_check`` pairs
  (O(n_check · n²), against the O(n³) eigh they replace). The default ``rtol`` is
  ``psd_tolerance(n, dtype)`` of the pairs' dtype (round-off of an eigh in that precision).
  Skipped when anything is traced.

  Example:
    >>> K = np.diag([3.0, 2.0, 1.0])
    >>> check_eigenpair_residuals(K, np.array([3.0, 2.0, 1.0]), np.eye(3)[:, [1, 0, 2]])
    Traceback (most recent call last):
    ...
    ValueError: `eigenpairs` are not eigenpairs of this kernel matrix: ‖K v_1 − λ_1 v_1‖ = 1 exceeds 1e-05 x λ₁ = 3e-05. They were computed from a different K: recompute them with mskjax.eigh_desc(K) on the same K (or pass eigenpairs=None).
  """
  if not all(is_concrete(a) for a in (K, values, vectors)) or tracing():
    return
  vals = np.asarray(values, dtype=np.float64)
  if vals.size == 0:
    return
  m = min(int(n_check), vals.shape[0])
  V = np.asarray(vectors, dtype=np.float64)[:, :m]
  Kn = np.asarray(K, dtype=np.float64)
  tol = psd_tolerance(Kn.shape[0], np.asarray(vectors).dtype) if rtol is None else rtol
  scale = max(float(np.max(np.abs(vals))), float(np.max(np.abs(Kn))) if Kn.size else 0.0,
              np.finfo(float).tiny)
  res = np.linalg.norm(Kn @ V - V * vals[:m], axis=0)
  worst = int(np.argmax(res))
  if res[worst] > tol * scale:
    raise ValueError(
        f"`{name}` are not eigenpairs of this kernel matrix: ‖K v_{worst + 1} − "
        f"λ_{worst + 1} v_{worst + 1}‖ = {res[worst]:.3g} exceeds {tol:g} x λ₁ = "
        f"{tol * scale:.3g}. They were computed from a different K: recompute them with "
        "mskjax.eigh_desc(K) on the same K (or pass eigenpairs=None).")


def check_known_kwargs(kwargs: dict, allowed, where: str) -> None:
  """Reject keyword arguments outside ``allowed`` (a misspelt keyword must not be silently
  swallowed by ``**kwargs``).

  Example:
    >>> check_known_kwargs({"tie_rtl": 1e-6}, ("tie_rtol",), "predict_gd_mse")
    Traceback (most recent call last):
    ...
    TypeError: predict_gd_mse got unexpected keyword argument(s) ['tie_rtl']; accepted: tie_rtol (check the spelling).
  """
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise TypeError(f"{where} got unexpected keyword argument(s) {unknown}; accepted: "
                    f"{', '.join(sorted(allowed)) or 'none'} (check the spelling).")


def roundoff_floor(scale: float, n: int, dtype) -> float:
  """``n·eps(dtype)·scale``: values at or below it are round-off of a matrix of norm
  ``scale`` (the eigenvalues of a rank-r PSD matrix beyond r come out of a float64 eigh at
  ~1e-16·λ₁, far below n·eps·λ₁). Returns that floor.

  Example:
    >>> roundoff_floor(1.0, 10, "float64")
    2.220446049250313e-15
  """
  return n * float(np.finfo(np.dtype(dtype)).eps) * max(float(scale), np.finfo(float).tiny)


# ---------------------------------------------------------------- optimizer checks
# (shared by mskjax.optim and mskjax.tracking)
def check_orthonormal_directions(dirs, coef, where):
  """Named errors for hand-made directions whose P is not what the docs promise.

  P = I + Q C Qᵀ is positive definite for C > −1 only when the rows of Q are orthonormal.
  Where the directions are concrete, form the k×k Gram G = Q Qᵀ (k dot products of
  parameter size, float64) and require ‖G − I‖_max ≤ tol; and, independently of that,
  that P is positive definite: its eigenvalues off span(Q) are 1 and on span(Q) they are
  1 + eig(G^½ C G^½).
  """
  leaves = jax.tree.leaves(dirs)
  if not all(is_concrete(l) for l in leaves) or not is_concrete(coef):
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
  import optax       # only the optimizers need it
  check_float_updates(updates)
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




def check_momentum(momentum, where):
  if momentum is None or not is_concrete(momentum):
    return
  m = float(np.asarray(momentum))
  if not (np.isfinite(m) and 0.0 <= m < 1.0):
    raise ValueError(f"{where}: `momentum` must be in [0, 1) (≥ 1 makes the velocity grow "
                     f"without bound); got {m!r}.")




__all__ += ["check_orthonormal_directions", "check_update_shapes", "check_momentum"]


def check_float_params(p, where):
  """Every leaf of the trainable parameters must be floating (a Jacobian needs it).

  An integer leaf (a step counter kept in the parameter pytree) has no tangent space; a
  named error instead of a crash deep inside ``jax.vjp``.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(p):
    dt = jnp.asarray(leaf).dtype
    if not jnp.issubdtype(dt, jnp.floating):
      raise TypeError(f"{where}: parameter leaf {jax.tree_util.keystr(path)} has dtype {dt}; "
                      "every trainable parameter must be floating (the Jacobian is taken "
                      "against all of them). Keep counters and other integer state out of "
                      "`params` (for flax linen: in another variable collection than "
                      "'params'; for nnx: not an nnx.Param).")
# ------------------------------------------------------------------ keys, pytrees, paths
# (issue 30: the held-out sweep's classes, each checked by one property test in
# tests/test_validation_classes.py)

@functools.lru_cache(maxsize=None)
def _default_key_shape() -> tuple:
  """Shape of a raw key of the default PRNG implementation ((2,) for threefry), by abstract
  evaluation (nothing computed or compiled)."""
  return tuple(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape)


def check_key(key, name: str = "key", *, optional: bool = False):
  """``key`` must be one JAX PRNG key: a typed key (``jax.random.key(seed)``, shape ``()``)
  or a raw ``uint32`` key (``jax.random.PRNGKey(seed)``, the default implementation's
  shape). A plain integer, a float/int array, a batch of keys or a key of another shape is
  a named :class:`ArgumentTypeError` (both a ``TypeError`` and a ``ValueError``); JAX would
  otherwise read the bits of whatever it is given, or fail deep inside. ``optional=True``
  admits None. Static facts only: works on tracers.

  Example:
    >>> check_key(3)
    Traceback (most recent call last):
    ...
    mskjax._validate.ArgumentTypeError: `key` must be a JAX PRNG key, jax.random.key(seed) or jax.random.PRNGKey(seed); got int 3. Wrap the seed: jax.random.key(3).
  """
  fix = "jax.random.key(seed) or jax.random.PRNGKey(seed)"
  if key is None:
    if optional:
      return None
    raise ArgumentTypeError(f"`{name}` is None; pass a JAX PRNG key, {fix}.")
  if isinstance(key, (bool, np.bool_)) or is_int(key) or isinstance(key, (float, str, bytes)):
    hint = f" Wrap the seed: jax.random.key({key!r})." if is_int(key) else ""
    raise ArgumentTypeError(f"`{name}` must be a JAX PRNG key, {fix}; got "
                            f"{type(key).__name__} {key!r}.{hint}")
  dtype = getattr(key, "dtype", None)
  if dtype is None:
    raise ArgumentTypeError(f"`{name}` must be a JAX PRNG key, {fix}; got "
                            f"{type(key).__name__}.")
  shape = tuple(getattr(key, "shape", ()))
  if jnp.issubdtype(dtype, jax.dtypes.prng_key):
    if shape != ():
      raise ArgumentTypeError(f"`{name}` must be one key, shape (); got a batch of keys of "
                              f"shape {shape} (pass one of them, e.g. {name}[0]).")
    return key
  want = _default_key_shape()
  if np.dtype(dtype) != np.uint32 or shape != want:
    raise ArgumentTypeError(f"`{name}` must be a JAX PRNG key, {fix} (a raw key is uint32 of "
                            f"shape {want}); got an array of dtype {np.dtype(dtype)} and shape "
                            f"{shape}.")
  return key


def check_finite_tree(tree, name: str) -> None:
  """Every concrete floating leaf of the pytree ``tree`` is finite, else a ``ValueError``
  naming the leaf (``params['Dense_0']['kernel']``). Tracers (inside ``jit``) are skipped;
  the check runs on the host in numpy (O(size), no compilation).

  Example:
    >>> check_finite_tree({'w': np.array([1.0, np.nan])}, "params")
    Traceback (most recent call last):
    ...
    ValueError: `params['w']` has 1 NaN or inf entries; a network with non-finite parameters has non-finite outputs and kernels. Check where the parameters came from (a diverged training run?).
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if not hasattr(leaf, "dtype") or not is_concrete(leaf):
      continue
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      continue
    a = np.asarray(leaf)
    ok = np.isfinite(a)
    if not ok.all():
      raise ValueError(f"`{name}{jax.tree_util.keystr(path)}` has {int(ok.size - ok.sum())} "
                       "NaN or inf entries; a network with non-finite parameters has non-finite "
                       "outputs and kernels. Check where the parameters came from (a "
                       "diverged training run?).")


class NonFiniteOutputError(ValueError):
  """A result computed from finite inputs is not finite (raised by
  :func:`check_finite_output`); a ``ValueError``, distinct so that a caller for which a
  diverged computation is a result (the kernel recorder during a diverging run) can tell it
  from an argument error."""


def check_finite_output(out, what: str, culprit: str, *, inputs=None,
                        inputs_name: str = "") -> None:
  """A concrete result ``out`` computed from finite inputs must be finite; else a
  ``ValueError`` saying which rows are not and naming ``culprit`` (the argument that made
  them, e.g. ``apply_fn``). Skipped inside a trace (the policy there: NaN propagates). With
  ``inputs`` (a pytree the result was computed from), a non-finite input is named instead
  (``inputs_name``); it is looked at only when the result is not finite.

  Example:
    >>> check_finite_output(np.array([[1.0, np.nan], [np.nan, np.nan]]), "the empirical NTK",
    ...                     "apply_fn")
    Traceback (most recent call last):
    ...
    mskjax._validate.NonFiniteOutputError: the empirical NTK has NaN/inf entries (first in row 0 of 2) although its inputs are finite: `apply_fn` produces non-finite outputs or derivatives on some points (e.g. a sqrt/log at 0, an overflow); fix the network or drop those points.
  """
  if not is_concrete(out) or tracing():
    return
  a = np.asarray(out)
  if a.dtype.kind not in "fc":
    return
  ok = np.isfinite(a)
  if not ok.all():
    if inputs is not None:
      for path, leaf in jax.tree_util.tree_leaves_with_path(inputs):
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
          raise NonFiniteOutputError(
              f"{what} has NaN/inf entries because `{inputs_name}"
              f"{jax.tree_util.keystr(path)}` has "
              f"{int(arr.size - np.isfinite(arr).sum())} such entries; "
              f"if `{inputs_name}` came from another product with the same network (e.g. "
              f"Jᵀ V of a finite V), `{culprit}` is not finite on some points (e.g. a "
              "sqrt/log at 0, an overflow): fix the network or drop those points.")
    bad = np.nonzero(~ok.reshape(ok.shape[0], -1).all(axis=1))[0] if a.ndim else [0]
    raise NonFiniteOutputError(f"{what} has NaN/inf entries (first in row {int(bad[0])} of "
                     f"{a.shape[0] if a.ndim else 1}) although its inputs are finite: "
                     f"`{culprit}` produces non-finite outputs or derivatives on some points "
                     "(e.g. a sqrt/log at 0, an overflow); fix the network or drop those "
                     "points.")


def check_scalar(x, name: str, *, positive: bool = False, finite: bool = True) -> float:
  """``x`` as a finite Python float from a number or a 0-d / size-1 real array (a numeric
  string, a bool, an array of several values are named errors). ``positive``: > 0.

  Example:
    >>> check_scalar(np.ones(2), "lambda_max")
    Traceback (most recent call last):
    ...
    mskjax._validate.ArgumentTypeError: `lambda_max` must be one number; got an array of shape (2,).
  """
  if isinstance(x, (str, bytes, bool, np.bool_)) or x is None:
    raise ArgumentTypeError(f"`{name}` must be a number; got {type(x).__name__} {x!r}.")
  if isinstance(x, jax.core.Tracer):
    raise ArgumentTypeError(f"`{name}` must be concrete (call this outside jit).")
  a = np.asarray(x)
  if a.dtype.kind not in "iuf":
    raise ArgumentTypeError(f"`{name}` must be a real number; got {type(x).__name__} of dtype "
                            f"{a.dtype}.")
  if a.size != 1:
    raise ArgumentTypeError(f"`{name}` must be one number; got an array of shape {a.shape}.")
  v = float(a.reshape(()))
  if (finite and not np.isfinite(v)) or (positive and v <= 0):
    raise ValueError(f"`{name}` must be a {'positive ' if positive else ''}finite number; got "
                     f"{v!r}.")
  return v


def check_learning_rate(lr, where: str | None = None, name: str = "learning_rate"):
  """A step size: a schedule (callable), a traced value (inside ``jit``), or one finite
  real number ≥ 0 (int/float or a 0-d real array); None, strings, bools, arrays of several
  values, complex and negative/NaN values are named errors (prefixed with ``where``, the
  calling function, when given). Returns ``lr`` unchanged.

  Example:
    >>> check_learning_rate("0.1")
    Traceback (most recent call last):
    ...
    mskjax._validate.ArgumentTypeError: `learning_rate` must be a number >= 0 or an optax schedule; got str '0.1'.
  """
  pre = f"{where}: " if where else ""
  if lr is None:
    raise ValueError(f"{pre}`{name}` is None; optax.sgd(None) returns the gradient itself, which "
                     "`params + update` would follow uphill (gradient ascent). Pass a "
                     "positive step, e.g. steps.stable_learning_rate(...).")
  if callable(lr) or isinstance(lr, jax.core.Tracer):
    return lr
  if isinstance(lr, (str, bytes, bool, np.bool_)) or not hasattr(np.asarray(lr), "dtype") \
     or np.asarray(lr).dtype.kind not in "iuf":
    raise ArgumentTypeError(f"{pre}`{name}` must be a number >= 0 or an optax schedule; got "
                            f"{type(lr).__name__} {lr!r}.")
  a = np.asarray(lr)
  if a.ndim != 0:
    raise ValueError(f"{pre}`{name}` must be a scalar; got shape {a.shape}.")
  if not np.isfinite(float(a)) or float(a) < 0:
    raise ValueError(f"{pre}`{name}` must be a finite number ≥ 0 (a negative step is gradient "
                     f"ascent); got {float(a)!r}.")
  return lr


def check_float_updates(updates, name: str = "updates") -> None:
  """Every array leaf of ``updates`` (gradients) is floating: an integer or bool leaf cannot
  be preconditioned (its dtype would be kept, truncating the update). Static: works in jit.

  Example:
    >>> check_float_updates({'w': np.zeros(2, np.int32)})
    Traceback (most recent call last):
    ...
    TypeError: `updates['w']` has dtype int32; updates (gradients) must be floating arrays, e.g. jax.grad of a float loss with float parameters.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(updates):
    dt = getattr(leaf, "dtype", None)
    if dt is not None and not jnp.issubdtype(dt, jnp.inexact):
      raise TypeError(f"`{name}{jax.tree_util.keystr(path)}` has dtype {np.dtype(dt)}; updates "
                      "(gradients) must be floating arrays, e.g. jax.grad of a float loss with "
                      "float parameters.")


def check_same_structure(new, old, name: str, other: str) -> None:
  """``new`` must have the pytree structure and leaf shapes of ``old`` (``other`` says what
  ``old`` is); a named ``ValueError`` showing the first differing leaf otherwise.

  Example:
    >>> check_same_structure({'w': np.zeros(2)}, {'w': np.zeros(3)}, "directions",
    ...                      "the ones in the state")
    Traceback (most recent call last):
    ...
    ValueError: `directions['w']` has shape (2,) but the ones in the state have (3,) there; build it for the same parameters.
  """
  sn, so = jax.tree.structure(new), jax.tree.structure(old)
  if sn != so:
    kn = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(new)]
    ko = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(old)]
    raise ValueError(f"`{name}` has another pytree structure than {other}: leaves {kn[:4]}"
                     f"{'...' if len(kn) > 4 else ''} vs {ko[:4]}{'...' if len(ko) > 4 else ''};"
                     " build it for the same parameters.")
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(new), jax.tree.leaves(old)):
    if tuple(np.shape(a)) != tuple(np.shape(b)):
      raise ValueError(f"`{name}{jax.tree_util.keystr(path)}` has shape {tuple(np.shape(a))} "
                       f"but {other} have {tuple(np.shape(b))} there; build it for the same "
                       "parameters.")


def check_path(p, name: str, *, optional: bool = True):
  """A filesystem path: ``str`` or ``os.PathLike`` (None when ``optional``).

  Example:
    >>> check_path(123, "cache_dir")
    Traceback (most recent call last):
    ...
    mskjax._validate.ArgumentTypeError: `cache_dir` must be a directory path (str or pathlib.Path) or None; got int 123.
  """
  import os
  if p is None and optional:
    return None
  if not isinstance(p, (str, os.PathLike)) or (isinstance(p, str) and not p):
    raise ArgumentTypeError(f"`{name}` must be a directory path (str or pathlib.Path)"
                            f"{' or None' if optional else ''}; got {type(p).__name__} {p!r}.")
  return p


def check_numeric_tree(tree, name: str) -> None:
  """Every array leaf of ``tree`` holds numbers (bool/int/float/complex): a string or
  object leaf is a named ``TypeError`` (JAX would fail on it deep inside a jitted step).

  Example:
    >>> check_numeric_tree((np.zeros(2), np.array(['a', 'b'])), "data")
    Traceback (most recent call last):
    ...
    TypeError: `data[1]` holds <U1 values; every leaf must be a numeric array.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if isinstance(leaf, (str, bytes)):
      raise TypeError(f"`{name}{jax.tree_util.keystr(path)}` is a string; every leaf must be a "
                      "numeric array.")
    dt = getattr(leaf, "dtype", None)
    if dt is None:
      dt = np.asarray(leaf).dtype
    if np.dtype(dt).kind not in "biufc" and not jnp.issubdtype(dt, jax.dtypes.prng_key):
      raise TypeError(f"`{name}{jax.tree_util.keystr(path)}` holds {np.dtype(dt)} values; every "
                      "leaf must be a numeric array.")


SUBSAMPLE_ROWS_PER_DIRECTION = 10
"""A subsample of s points with c outputs supports k directions when s·c ≥ this × (k+1)
(see :func:`check_subsample_supports_k`)."""


def check_subsample_supports_k(subsample, s: int, n: int, c: int, k: int,
                               where: str = "msk_directions") -> None:
  """Warn (``UserWarning`` naming ``subsample`` and ``k``) when a subsample of s of the n
  points is too small for k directions: s·c < ``SUBSAMPLE_ROWS_PER_DIRECTION``·(k+1).

  The eigenvalues of the s-point kernel are computed to the solver's tolerance, but as
  estimates of the n-point spectrum (times s/n) they carry a sampling error that grows
  from λ₁ to λ_{k+1} and shrinks only like 1/√s; below that ratio the top k+1 are off by
  tens of percent to several-fold (docs/results.md, "How large a subsample").

  Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...   warnings.simplefilter("always")
    ...   check_subsample_supports_k(6, 6, 200, 1, 5)
    >>> "`subsample`" in str(w[0].message)
    True
  """
  import warnings
  if subsample is None or s >= n or s * c >= SUBSAMPLE_ROWS_PER_DIRECTION * (k + 1):
    return
  need = -(-SUBSAMPLE_ROWS_PER_DIRECTION * (k + 1) // c)
  warnings.warn(
      f"{where}: `subsample`={s} points ({s * c} kernel rows with c={c} outputs) is too few "
      f"for k={k} directions: the values are eigenvalues of the kernel on these {s} points, "
      f"but as estimates of the spectrum on all {n} points (times s/n) λ₁..λ_(k+1) are off by "
      f"tens of percent to several-fold below s·c = {SUBSAMPLE_ROWS_PER_DIRECTION}·(k+1). "
      f"Use subsample >= {min(need, n)} (or None: all points), or lower `k`.", stacklevel=3)


def check_solver_args(*, key=None, oversample=0, n_iter=1, depth=0, max_cycles=1) -> None:
  """The shared options of the iterative eigensolvers, checked whichever method runs (an
  option the chosen method does not use must still be of its documented type): ``key`` a
  PRNG key or None, ``oversample``/``depth`` ints ≥ 0, ``n_iter``/``max_cycles`` ints ≥ 1.

  Example:
    >>> check_solver_args(max_cycles=None)
    Traceback (most recent call last):
    ...
    mskjax._validate.ArgumentTypeError: `max_cycles` must be an int >= 1, got NoneType None.
  """
  check_key(key, "key", optional=True)
  for name, val, lo in (("oversample", oversample, 0), ("n_iter", n_iter, 1),
                        ("depth", depth, 0), ("max_cycles", max_cycles, 1)):
    check_int(val, name, lo=lo)


def check_loss_output(loss_fn, params, batch, has_aux) -> None:
  """``loss_fn(params, batch, None)`` must return a scalar (``has_aux=False``) or a pair
  ``(scalar, dict)`` (``has_aux=True``), checked by abstract evaluation (nothing runs); a
  named error instead of JAX's from inside ``value_and_grad``. A loss that fails to trace
  here is left to the caller's own call (its error is the loss's own).

  Example:
    >>> check_loss_output(lambda p, b, i: (p * b).sum(), np.ones(2), np.ones(2), True)
    Traceback (most recent call last):
    ...
    ValueError: `has_aux=True` but `loss_fn` returns one array of shape (), not a pair (loss, aux): pass has_aux=False, or return (loss, {name: value}).
  """
  has_aux = check_bool(has_aux, "has_aux")
  try:
    out = jax.eval_shape(lambda p: loss_fn(p, batch, None), params)
  except Exception:   # noqa: BLE001 -- the real call reports the loss's own error
    return
  pair = isinstance(out, (tuple, list)) and len(out) == 2
  if has_aux and not pair:
    what = (f"one array of shape {tuple(out.shape)}" if hasattr(out, "shape")
            else f"{type(out).__name__}")
    raise ValueError(f"`has_aux=True` but `loss_fn` returns {what}, not a pair (loss, aux): "
                     "pass has_aux=False, or return (loss, {name: value}).")
  loss = out[0] if has_aux else out
  if not has_aux and pair:
    raise ValueError("`loss_fn` returns a pair; if it is (loss, aux) pass has_aux=True.")
  if not hasattr(loss, "shape") or tuple(loss.shape) != ():
    raise ValueError(f"`loss_fn` must return a scalar loss{' (first of the pair)' * has_aux}; "
                     f"got {getattr(loss, 'shape', type(loss).__name__)}.")
  if has_aux and not isinstance(out[1], dict):
    raise ValueError(f"with `has_aux=True`, `loss_fn`'s aux must be a dict {{name: value}}; "
                     f"got {type(out[1]).__name__}.")


def check_state_matches(tx, where: str):
  """``tx`` with an ``update`` that first checks the momentum (``trace``) of the optimizer
  state against the updates' pytree structure and leaf shapes (static: fine in ``jit``),
  naming ``state``: a state made by ``init`` on other parameters fails with JAX's tree
  errors otherwise. Returns an ``optax.GradientTransformation`` with the same state.
  """
  import optax

  def update_fn(updates, state, params=None):
    for path, sub in jax.tree_util.tree_leaves_with_path(
        state, is_leaf=lambda s: isinstance(s, optax.TraceState)):
      if isinstance(sub, optax.TraceState):
        check_same_structure(sub.trace, updates, f"state{jax.tree_util.keystr(path)}.trace",
                             f"the updates (made by {where}'s init on other parameters? "
                             "call init with the parameters whose gradients you pass)")
    return tx.update(updates, state, params)

  return optax.GradientTransformation(tx.init, update_fn)
