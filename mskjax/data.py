"""Data: points on circles and spheres, Fourier / spherical-harmonic targets, digits.

All functions return ``jax.numpy`` arrays in the default float dtype (float64 under
``jax_enable_x64``). Targets are always 2-D (n, c), as the kernels and models expect.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Dataset", "circle", "sphere", "fourier_target", "zonal_harmonic_target",
           "load_digits", "as_dataset"]


def _float_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 iff jax_enable_x64


def _check_count(n, name, where, minimum=1):
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
    raise ValueError(f"{where}: {name} must be an int >= {minimum}; got {n!r}.")
  return int(n)


class Dataset(NamedTuple):
  """Train/test arrays: x of shape (n, d), y of shape (n, c); the test pair may be None."""
  x_train: jax.Array
  y_train: jax.Array
  x_test: Optional[jax.Array]
  y_test: Optional[jax.Array]


def circle(n: int, *, equispaced: bool = True, key: Optional[jax.Array] = None):
  """Points x = (cos theta, sin theta) on the unit circle S^1.

  ``equispaced=True``: theta_i = 2 pi i / n, i = 0..n-1 (the grid on which the circular
  kernel's eigenvectors are exactly the Fourier modes); otherwise theta_i ~ U[0, 2 pi) i.i.d.

  Args:
    n: number of points (>= 1).
    equispaced: grid (default) or random angles.
    key: PRNG key, required when ``equispaced=False``.

  Returns:
    ``(x, theta)`` of shapes (n, 2) and (n,).

  Example:
    >>> import numpy as np
    >>> x, theta = circle(4)
    >>> print(np.round(np.asarray(x, float), 3) + 0.0)
    [[ 1.  0.]
     [ 0.  1.]
     [-1.  0.]
     [ 0. -1.]]
  """
  n = _check_count(n, "n", "circle")
  dtype = _float_dtype()
  if equispaced:
    theta = 2 * jnp.pi * jnp.arange(n, dtype=dtype) / n
  else:
    if key is None:
      raise ValueError("circle: equispaced=False needs a PRNG key, e.g. "
                       "key=jax.random.PRNGKey(0).")
    theta = jax.random.uniform(key, (n,), dtype, 0.0, 2 * jnp.pi)
  return jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=1), theta


def sphere(n: int, d: int, key: jax.Array) -> jax.Array:
  """n points i.i.d. uniform on the unit sphere S^{d-1} in R^d: x = g / ||g||, g ~ N(0, I_d).

  Args:
    n: number of points (>= 1).
    d: ambient dimension (>= 2).
    key: a JAX PRNG key.

  Returns:
    (n, d) array with unit-norm rows.

  Example:
    >>> import jax, numpy as np
    >>> x = sphere(5, 3, jax.random.PRNGKey(0))
    >>> x.shape, bool(np.allclose(np.linalg.norm(np.asarray(x), axis=1), 1.0, atol=1e-6))
    ((5, 3), True)
  """
  n = _check_count(n, "n", "sphere")
  d = _check_count(d, "d", "sphere", minimum=2)
  if key is None:
    raise ValueError("sphere: key must be a PRNG key, e.g. jax.random.PRNGKey(0).")
  g = jax.random.normal(key, (n, d), _float_dtype())
  return g / jnp.linalg.norm(g, axis=1, keepdims=True)


def fourier_target(theta, j: int) -> jax.Array:
  """Fourier mode y = cos(j theta) on the circle, as a column.

  Args:
    theta: angles of shape (n,) (e.g. from :func:`circle`).
    j: frequency (int >= 0).

  Returns:
    (n, 1) array.

  Example:
    >>> import numpy as np
    >>> _, theta = circle(4)
    >>> print(np.round(np.asarray(fourier_target(theta, 2), float).ravel(), 3) + 0.0)
    [ 1. -1.  1. -1.]
  """
  j = _check_count(j, "j", "fourier_target", minimum=0)
  theta = jnp.asarray(theta, _float_dtype())
  if theta.ndim != 1:
    raise ValueError(f"fourier_target: theta must be 1-D (n,); got shape {theta.shape}.")
  return jnp.cos(j * theta)[:, None]


def _legendre(t, degree):
  """P_degree(t) by the three-term recurrence (k+1) P_{k+1} = (2k+1) t P_k - k P_{k-1}."""
  p_prev, p = jnp.ones_like(t), t
  if degree == 0:
    return p_prev
  for k in range(1, degree):
    p_prev, p = p, ((2 * k + 1) * t * p - k * p_prev) / (k + 1)
  return p


def zonal_harmonic_target(x, degree: int, axis=None) -> jax.Array:
  """Normalised zonal spherical harmonic of degree j on S^2: y = sqrt(2j+1) P_j(<x, e>).

  P_j is the Legendre polynomial and e a fixed unit vector. The factor sqrt(2j+1) gives
  unit mean square under the uniform (probability) measure on S^2 (<x, e> is then uniform on
  [-1, 1] and int_{-1}^{1} P_j^2 dt / 2 = 1/(2j+1)); different degrees are orthogonal.

  Args:
    x: points on S^2, shape (n, 3), rows of unit norm.
    degree: j (int >= 0).
    axis: e, a length-3 vector (normalised here); None means e = (0, 0, 1).

  Returns:
    (n, 1) array.

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> x = jnp.array([[0., 0., 1.], [1., 0., 0.]])
    >>> print(np.round(np.asarray(zonal_harmonic_target(x, 2), float).ravel(), 4))
    [ 2.2361 -1.118 ]
  """
  degree = _check_count(degree, "degree", "zonal_harmonic_target", minimum=0)
  dtype = _float_dtype()
  x = jnp.asarray(x, dtype)
  if x.ndim != 2 or x.shape[1] != 3:
    raise ValueError(f"zonal_harmonic_target: x must have shape (n, 3) (points on S^2); got "
                     f"{x.shape}.")
  norms = jnp.linalg.norm(x, axis=1)
  if not bool(jnp.all(jnp.abs(norms - 1) < 1e-4)):
    raise ValueError("zonal_harmonic_target: rows of x must have unit norm; normalise with "
                     "x / jnp.linalg.norm(x, axis=1, keepdims=True).")
  e = jnp.array([0.0, 0.0, 1.0], dtype) if axis is None else jnp.asarray(axis, dtype)
  if e.shape != (3,) or not bool(jnp.all(jnp.isfinite(e))) or float(jnp.linalg.norm(e)) == 0:
    raise ValueError(f"zonal_harmonic_target: axis must be a finite non-zero vector of length "
                     f"3; got {axis!r}.")
  t = jnp.clip(x @ (e / jnp.linalg.norm(e)), -1.0, 1.0)
  return (math.sqrt(2 * degree + 1) * _legendre(t, degree))[:, None]


def _validated(x, y, xname, yname, where):
  dtype = _float_dtype()
  x, y = np.asarray(x), np.asarray(y)
  for arr, name in ((x, xname), (y, yname)):
    if not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
      raise TypeError(f"{where}: {name} must be numeric; got dtype {arr.dtype}.")
  if x.ndim != 2:
    raise ValueError(f"{where}: {xname} must be 2-D (n, d); got shape {x.shape}. Reshape it, "
                     f"e.g. {xname}.reshape(n, -1) or {xname}[:, None].")
  if y.ndim == 1:
    y = y[:, None]
  if y.ndim != 2:
    raise ValueError(f"{where}: {yname} must be 1-D (n,) or 2-D (n, c); got shape {y.shape}.")
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"{where}: {xname} and {yname} must have the same number of rows; got "
                     f"{x.shape[0]} and {y.shape[0]}.")
  if x.shape[0] == 0:
    raise ValueError(f"{where}: {xname} is empty.")
  for arr, name in ((x, xname), (y, yname)):
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"{where}: {name} contains NaN or inf; remove or impute those rows.")
  return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def as_dataset(x_train, y_train, x_test=None, y_test=None) -> Dataset:
  """Validates user arrays into a :class:`Dataset` (x: (n, d); y: (n,) -> (n, 1), or (n, c)).

  Checks: x 2-D, y 1-D or 2-D, matching n, finite values, equal feature and output dims
  between train and test. ``x_test`` and ``y_test`` must be given together or not at all.

  Args:
    x_train, y_train: training inputs and targets.
    x_test, y_test: optional test inputs and targets.

  Returns:
    ``Dataset(x_train, y_train, x_test, y_test)`` (test fields None when not given).

  Example:
    >>> ds = as_dataset([[0., 1.], [1., 0.], [1., 1.]], [1., -1., 0.])
    >>> ds.x_train.shape, ds.y_train.shape, ds.x_test
    ((3, 2), (3, 1), None)
  """
  x_train, y_train = _validated(x_train, y_train, "x_train", "y_train", "as_dataset")
  if (x_test is None) != (y_test is None):
    raise ValueError("as_dataset: give both x_test and y_test, or neither.")
  if x_test is None:
    return Dataset(x_train, y_train, None, None)
  x_test, y_test = _validated(x_test, y_test, "x_test", "y_test", "as_dataset")
  if x_test.shape[1] != x_train.shape[1]:
    raise ValueError(f"as_dataset: x_test has {x_test.shape[1]} features but x_train has "
                     f"{x_train.shape[1]}.")
  if y_test.shape[1] != y_train.shape[1]:
    raise ValueError(f"as_dataset: y_test has {y_test.shape[1]} outputs but y_train has "
                     f"{y_train.shape[1]}.")
  return Dataset(x_train, y_train, x_test, y_test)


def load_digits(*, labels: str = "onehot", test_fraction: float = 0.2, seed: int = 0,
                normalize: bool = True, x=None, y=None) -> Dataset:
  """sklearn's 8x8 digits (1797 images, 10 classes; ships with scikit-learn, no download).

  Inputs: flattened images (n, 64); with ``normalize=True`` each image is scaled to unit
  Euclidean norm, x <- x / ||x|| (points on S^63, the setting of dot-product kernels).
  Labels: ``'onehot'`` -> y_ik = 1[class_i = k] in {0, 1}; ``'pm1'`` -> 2 y - 1 in {-1, +1}.
  The split is stratified by class (``sklearn.model_selection.train_test_split``).

  Args:
    labels: ``'onehot'`` or ``'pm1'``.
    test_fraction: fraction of the points in the test set, in (0, 1).
    seed: seed of the split.
    normalize: scale every input to unit norm.
    x, y: optional user data to process the same way instead of sklearn's digits:
      x of shape (n, d), y integer class labels of shape (n,).

  Returns:
    ``Dataset(x_train, y_train, x_test, y_test)`` with y of shape (n, n_classes).

  Example:
    >>> ds = load_digits(labels='pm1')
    >>> ds.x_train.shape, ds.y_train.shape, ds.x_test.shape
    ((1437, 64), (1437, 10), (360, 64))
  """
  from sklearn.datasets import load_digits as _sk_load_digits
  from sklearn.model_selection import train_test_split

  if labels not in ("onehot", "pm1"):
    raise ValueError(f"load_digits: labels must be 'onehot' or 'pm1'; got {labels!r}.")
  if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
      or not 0 < test_fraction < 1:
    raise ValueError(f"load_digits: test_fraction must be in (0, 1); got {test_fraction!r}.")
  if (x is None) != (y is None):
    raise ValueError("load_digits: give both x and y (user data), or neither (sklearn digits).")
  if x is None:
    bunch = _sk_load_digits()
    x, y = bunch.data, bunch.target
  x = np.asarray(x, np.float64)
  y = np.asarray(y)
  if x.ndim != 2:
    raise ValueError(f"load_digits: x must be 2-D (n, d); got shape {x.shape}.")
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise ValueError(f"load_digits: y must be 1-D integer labels of length n = {x.shape[0]}; "
                     f"got shape {y.shape}.")
  if not np.issubdtype(y.dtype, np.integer):
    raise TypeError(f"load_digits: y must hold integer class labels; got dtype {y.dtype}.")
  if not np.all(np.isfinite(x)):
    raise ValueError("load_digits: x contains NaN or inf.")
  if normalize:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
      raise ValueError("load_digits: normalize=True needs non-zero rows of x.")
    x = x / norms
  classes, idx = np.unique(y, return_inverse=True)
  onehot = np.eye(len(classes))[idx]
  if labels == "pm1":
    onehot = 2 * onehot - 1
  x_tr, x_te, y_tr, y_te = train_test_split(x, onehot, test_size=test_fraction,
                                            random_state=seed, stratify=idx)
  return as_dataset(x_tr, y_tr, x_te, y_te)
