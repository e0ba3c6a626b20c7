"""Data: points on circles and spheres, Fourier / spherical-harmonic targets, digits, MNIST-1D.

All functions return ``jax.numpy`` arrays in the default float dtype (float64 under
``jax_enable_x64``). Targets are always 2-D (n, c), as the kernels and models expect.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mskjax import _validate

__all__ = ["Dataset", "circle", "sphere", "fourier_target", "zonal_harmonic_target",
           "load_digits", "load_mnist1d", "as_dataset", "Whitening", "fit_whitening", "apply_whitening",
           "whiten", "whitened_linear_teacher", "power_law_gaussian"]


def _float_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 iff jax_enable_x64


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
  n = _validate.check_int(n, "n", lo=1)
  dtype = _float_dtype()
  if equispaced:
    theta = 2 * jnp.pi * jnp.arange(n, dtype=dtype) / n
  else:
    if key is None:
      raise ValueError("circle: equispaced=False needs a PRNG key, e.g. "
                       "key=jax.random.PRNGKey(0).")
    theta = jax.random.uniform(_validate.check_key(key), (n,), dtype, 0.0, 2 * jnp.pi)
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
  n = _validate.check_int(n, "n", lo=1)
  d = _validate.check_int(d, "d", lo=2)
  if key is None:
    raise ValueError("sphere: key must be a PRNG key, e.g. jax.random.PRNGKey(0).")
  g = jax.random.normal(_validate.check_key(key), (n, d), _float_dtype())
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
  j = _validate.check_int(j, "j", lo=0)
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
  degree = _validate.check_int(degree, "degree", lo=0)
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
  test_fraction = _validate.check_real(test_fraction, "test_fraction", lo=0, hi=1, lo_open=True,
                                       hi_open=True)
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


def _default_cache_dir():
  import os
  from pathlib import Path
  env = os.environ.get("MSKJAX_CACHE")
  return Path(env) if env else Path.home() / ".cache" / "mskjax"


def _read_mnist1d_cache(path, num_samples: int):
  """The cached arrays, or None (with a ``UserWarning``) when the file is unreadable
  (truncated or corrupt zip, a missing array, wrong shapes or labels): it is then
  regenerated and rewritten, never used."""
  import warnings
  import zipfile
  keys = ("x", "y", "x_test", "y_test")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: np.asarray(f[k]) for k in keys}
    n_tr = arrays["x"].shape[0]
    ok = (arrays["x"].ndim == 2 and arrays["x_test"].ndim == 2
          and arrays["x"].shape[1] == arrays["x_test"].shape[1]
          and arrays["y"].shape == (n_tr,)
          and arrays["y_test"].shape == (arrays["x_test"].shape[0],)
          and n_tr + arrays["x_test"].shape[0] == num_samples
          and all(np.isfinite(arrays[k]).all() for k in ("x", "x_test"))
          and all(arrays[k].size == 0 or (arrays[k].min() >= 0 and arrays[k].max() <= 9)
                  for k in ("y", "y_test")))
    if not ok:
      raise ValueError("arrays of the wrong shape or labels outside 0..9")
  except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
    warnings.warn(f"load_mnist1d: the cache file {path} is unreadable or incomplete "
                  f"({type(e).__name__}: {e}); regenerating it (delete it, or pass "
                  "cache=False, to avoid this).", UserWarning, stacklevel=3)
    return None
  return arrays


def load_mnist1d(*, num_samples: int = 5000, seed: int = 42, labels: str = "int",
                 cache_dir=None, cache: bool = True) -> Dataset:
  """MNIST-1D (Greydanus & Kobak), generated offline by the ``mnist1d`` package.

  ``mnist1d.data.make_dataset(get_dataset_args())`` with ``num_samples`` and ``seed``
  overridden: 10 templates of digit-like 1-D signals, randomly padded, translated, scaled,
  sheared and noised, resampled to length 40 and standardised ((x − mean)/std over the
  whole set). The first 80 % of the (shuffled) samples are the training set: the
  standard set (``num_samples=5000``) has 4000 train / 1000 test sequences, 10 classes;
  ``num_samples=125000`` gives 100k / 25k. Nothing is downloaded (``get_dataset``'s
  download path is never called). Generation is slow (pure Python per sample), so the
  result is cached as ``mnist1d_n{num_samples}_seed{seed}.npz`` under ``cache_dir``
  (default ``$MSKJAX_CACHE`` or ``~/.cache/mskjax``). The package seeds Python's and
  numpy's global generators; their states are restored afterwards. Reference accuracies
  (the authors'): ``experiments/README.md``, section mnist1d; ours: ``docs/results.md``.

  Args:
    num_samples: total number of sequences (train + test), a multiple of 10, >= 10.
    seed: the generator's seed (42 = the published set).
    labels: ``'int'`` → y of shape (n,) int32 class indices (for
      ``optax.softmax_cross_entropy_with_integer_labels``); ``'onehot'`` → (n, 10) floats.
    cache_dir: directory of the cache file (created if needed).
    cache: read/write the cache; False always regenerates and writes nothing. A cache file
      that cannot be read back whole (truncated or corrupt zip, a missing array, wrong
      shapes or labels) is regenerated and rewritten, with a ``UserWarning``.

  Returns:
    ``Dataset(x_train, y_train, x_test, y_test)``, x of shape (n, 40) in the default float
    dtype (add a channel axis, ``x[..., None]``, for a 1-D CNN).

  Example:
    >>> ds = load_mnist1d()                                       # doctest: +SKIP
    >>> ds.x_train.shape, ds.y_train.shape, ds.x_test.shape       # doctest: +SKIP
    ((4000, 40), (4000,), (1000, 40))

  Reference: S. Greydanus and D. Kobak, *Scaling Down Deep Learning with MNIST-1D*,
  ICML 2024 (arXiv:2011.14439).
  """
  num_samples = _validate.check_int(num_samples, "num_samples", lo=10)
  if num_samples % 10:
    raise ValueError(f"load_mnist1d: num_samples must be a multiple of 10 (one share per "
                     f"class), >= 10; got {num_samples!r}.")
  seed = _validate.check_int(seed, "seed")
  _validate.check_choice(labels, "labels", ("int", "onehot"))
  cache_dir, cache = _validate.check_path(cache_dir, "cache_dir"), _validate.check_bool(cache, "cache")
  from pathlib import Path
  path = Path(cache_dir if cache_dir is not None else _default_cache_dir()) / \
      f"mnist1d_n{int(num_samples)}_seed{int(seed)}.npz"
  arrays = None
  if cache and path.exists():
    arrays = _read_mnist1d_cache(path, num_samples)
  if arrays is None:
    import random
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples, args.seed = int(num_samples), int(seed)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
      raw = make_dataset(args)
    finally:                       # make_dataset seeds the global generators
      random.setstate(py_state)
      np.random.set_state(np_state)
    arrays = {k: np.asarray(raw[k]) for k in ("x", "y", "x_test", "y_test")}
    if cache:
      path.parent.mkdir(parents=True, exist_ok=True)
      # one temporary per process (parallel test workers or runs may write the same set),
      # then an atomic rename: a killed run leaves no half-written cache
      tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
      np.savez(tmp, **arrays)
      tmp.replace(path)
  dtype = _float_dtype()
  ys = []
  for y in (arrays["y"], arrays["y_test"]):
    y = np.asarray(y, np.int32)
    ys.append(jnp.asarray(y) if labels == "int" else jnp.asarray(np.eye(10)[y], dtype))
  return Dataset(jnp.asarray(arrays["x"], dtype), ys[0], jnp.asarray(arrays["x_test"], dtype),
                 ys[1])


# ---------------------------------------------------------------------------------------
# Whitening, linear teachers and anisotropic Gaussians (kernel diagnostics / silent
# alignment, Atanasov, Bordelon & Pehlevan, arXiv:2111.00034).
# ---------------------------------------------------------------------------------------

class Whitening(NamedTuple):
  """A (partial) whitening map fitted on training inputs: z = (x - mean) @ matrix.

  Attributes:
    mean: (d,) training mean (zeros when fitted with ``center=False``).
    matrix: (d, d) map U_r diag(lambda_r^((gamma - 1)/2)) U_r^T on the kept eigenvectors.
    eigenvalues: (r,) kept covariance eigenvalues lambda_1 >= ... >= lambda_r > 0.
    gamma: the exponent: covariance eigenvalues lambda -> lambda^gamma.
  """
  mean: jax.Array
  matrix: jax.Array
  eigenvalues: jax.Array
  gamma: float


def fit_whitening(x, gamma: float = 0.0, *, center: bool = True,
                  rtol: float = 1e-10) -> Whitening:
  """Fits partial whitening on training inputs: covariance eigenvalues lambda -> lambda^gamma.

  C = (1/n) (x - mu)^T (x - mu) = U diag(lambda) U^T. The map z = (x - mu) U_r
  diag(lambda_r^((gamma-1)/2)) U_r^T gives (1/n) z^T z = U_r diag(lambda_r^gamma) U_r^T:
  gamma = 0 is exact whitening (covariance = projection on the data span), gamma = 1 keeps
  the spectrum, 0 < gamma < 1 partially flattens it. Rank deficiency: only the r
  eigenvalues > rtol * lambda_1 are kept (directions with no variance are projected out
  instead of divided by ~0), so the output stays in R^d and finite.

  Args:
    x: training inputs (n, d).
    gamma: spectral exponent (finite, >= 0).
    center: subtract the training mean first.
    rtol: relative threshold of the kept eigenvalues.

  Returns:
    :class:`Whitening`; apply it with :func:`apply_whitening` (train and test alike).

  Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((50, 3)) * [1., 10., 0.]
    >>> w = fit_whitening(x)
    >>> z = np.asarray(apply_whitening(w, x))
    >>> int(w.eigenvalues.shape[0]), np.round(z.T @ z / 50, 6) + 0.0
    (2, array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 0.]]))
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f"fit_whitening: x must be 2-D (n, d) and non-empty; got shape {x.shape}.")
  if not np.all(np.isfinite(x)):
    raise ValueError("fit_whitening: x contains NaN or inf.")
  gamma = _validate.check_real(gamma, "gamma", lo=0)
  mu = x.mean(0) if center else np.zeros(x.shape[1])
  xc = x - mu
  lam, U = np.linalg.eigh(xc.T @ xc / x.shape[0])
  lam, U = lam[::-1], U[:, ::-1]
  if lam[0] <= 0:
    raise ValueError("fit_whitening: x has zero variance (all rows equal).")
  keep = lam > rtol * lam[0]
  lam, U = lam[keep], U[:, keep]
  M = (U * lam ** ((gamma - 1.0) / 2.0)) @ U.T
  dtype = _float_dtype()
  return Whitening(jnp.asarray(mu, dtype), jnp.asarray(M, dtype), jnp.asarray(lam, dtype),
                   float(gamma))


def apply_whitening(w: Whitening, x) -> jax.Array:
  """Applies a fitted :class:`Whitening` to inputs of shape (m, d): (x - mean) @ matrix.

  Example:
    >>> import numpy as np
    >>> w = fit_whitening(np.array([[0., 0.], [2., 4.]]))
    >>> np.asarray(apply_whitening(w, [[1., 2.], [3., 6.]])).round(4).tolist()
    [[0.0, 0.0], [0.8944, 1.7889]]
  """
  if not isinstance(w, Whitening):
    raise TypeError(f"apply_whitening: w must be a Whitening (from fit_whitening); got "
                    f"{type(w).__name__}.")
  x = jnp.asarray(x, _float_dtype())
  if x.ndim != 2 or x.shape[1] != w.mean.shape[0]:
    raise ValueError(f"apply_whitening: x must have shape (m, {w.mean.shape[0]}); got "
                     f"{x.shape}.")
  return (x - w.mean) @ w.matrix


def whiten(x_train, x_test=None, gamma: float = 0.0, **kwargs):
  """Fit partial whitening on ``x_train`` and apply it to both sets; ``(z_train, z_test)``.

  Example:
    >>> import numpy as np
    >>> z, _ = whiten(np.random.default_rng(1).standard_normal((40, 2)) * [1., 5.])
    >>> np.round(np.asarray(z).T @ np.asarray(z) / 40, 6).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  w = fit_whitening(x_train, gamma, **kwargs)
  z_test = None if x_test is None else apply_whitening(w, x_test)
  return apply_whitening(w, x_train), z_test


def whitened_linear_teacher(n: int, d: int, rank: Optional[int] = None, *, key,
                            n_test: int = 0):
  """Exactly whitened inputs of rank r and a linear teacher y = X beta.

  X = sqrt(n) Q R^T with Q (n, r) and R (d, r) random orthonormal columns, so
  (1/n) X^T X = R R^T exactly (the projection on an r-dim subspace: all r nonzero covariance
  eigenvalues are 1) and X X^T = n Q Q^T. beta = R u with u uniform on S^(r-1) (unit norm,
  inside the data span), so ||y||^2 = n. Test inputs (if any) are Gaussian N(0, R R^T).

  Args:
    n: training points (>= rank).
    d: input dimension.
    rank: r (default min(n, d)).
    key: PRNG key.
    n_test: number of test points (0: none).

  Returns:
    ``(Dataset, beta)``; y of shape (n, 1), beta of shape (d,).

  Example:
    >>> import jax, numpy as np
    >>> ds, beta = whitened_linear_teacher(20, 8, 5, key=jax.random.PRNGKey(0))
    >>> x = np.asarray(ds.x_train)
    >>> int(np.linalg.matrix_rank(x)), round(float(np.sum(np.asarray(ds.y_train) ** 2)), 6)
    (5, 20.0)
  """
  n = _validate.check_int(n, "n", lo=1)
  d = _validate.check_int(d, "d", lo=1)
  r = min(n, d) if rank is None else _validate.check_int(rank, "rank", lo=1)
  if r > min(n, d):
    raise ValueError(f"whitened_linear_teacher: rank must be <= min(n, d) = {min(n, d)}; "
                     f"got {r}.")
  n_test = _validate.check_int(n_test, "n_test", lo=0)
  if key is None:
    raise ValueError("whitened_linear_teacher: key must be a PRNG key.")
  k1, k2, k3, k4 = jax.random.split(_validate.check_key(key), 4)
  dtype = _float_dtype()
  Q, _ = jnp.linalg.qr(jax.random.normal(k1, (n, r), dtype))
  R, _ = jnp.linalg.qr(jax.random.normal(k2, (d, r), dtype))
  u = jax.random.normal(k3, (r,), dtype)
  beta = R @ (u / jnp.linalg.norm(u))
  x = math.sqrt(n) * Q @ R.T
  x_test = y_test = None
  if n_test:
    x_test = jax.random.normal(k4, (n_test, r), dtype) @ R.T
    y_test = (x_test @ beta)[:, None]
  return Dataset(x, (x @ beta)[:, None], x_test, y_test), beta


def power_law_gaussian(n: int, d: int, alpha: float, *, key, n_test: int = 0):
  """Anisotropic Gaussian inputs with a power-law spectrum and a linear teacher.

  x ~ N(0, diag(lambda)), lambda_k = k^(-alpha) / c (k = 1..d) normalised so sum lambda_k = d
  (E||x||^2 = d for every alpha; alpha = 0 is isotropic). Teacher y = x beta with beta
  uniform on S^(d-1).

  Args:
    n: training points; d: dimension; alpha: spectral decay (>= 0).
    key: PRNG key.
    n_test: number of test points.

  Returns:
    ``(Dataset, beta)``.

  Example:
    >>> import jax
    >>> ds, beta = power_law_gaussian(10, 4, 1.0, key=jax.random.PRNGKey(0), n_test=3)
    >>> ds.x_train.shape, ds.y_train.shape, ds.x_test.shape
    ((10, 4), (10, 1), (3, 4))
  """
  n = _validate.check_int(n, "n", lo=1)
  d = _validate.check_int(d, "d", lo=1)
  n_test = _validate.check_int(n_test, "n_test", lo=0)
  alpha = _validate.check_real(alpha, "alpha", lo=0)
  if key is None:
    raise ValueError("power_law_gaussian: key must be a PRNG key.")
  dtype = _float_dtype()
  lam = jnp.arange(1, d + 1, dtype=dtype) ** (-float(alpha))
  lam = lam * d / jnp.sum(lam)
  k1, k2, k3 = jax.random.split(_validate.check_key(key), 3)
  beta = jax.random.normal(k3, (d,), dtype)
  beta = beta / jnp.linalg.norm(beta)
  x = jax.random.normal(k1, (n, d), dtype) * jnp.sqrt(lam)
  x_test = y_test = None
  if n_test:
    x_test = jax.random.normal(k2, (n_test, d), dtype) * jnp.sqrt(lam)
    y_test = (x_test @ beta)[:, None]
  return Dataset(x, (x @ beta)[:, None], x_test, y_test), beta
