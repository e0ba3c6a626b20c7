r"""Kernel diagnostics: alignment metrics and kernel regression (pure functions of kernels).

Silent alignment (Atanasov, Bordelon & Pehlevan, arXiv:2111.00034, ICLR 2022): from a
small initialisation the empirical NTK K_t first turns towards the task (its *direction*
K_t/‖K_t‖ aligns with the target and with the final kernel K_∞) while it is still small,
and only then grows; the trained network is then close to kernel regression with K_∞.

Metrics (pure, jittable; ``k`` arguments are static):

.. math::
  A(K, Y) = \frac{\langle K, YY^\top\rangle_F}{\|K\|_F\,\|YY^\top\|_F}
          \;\overset{c=1}{=}\; \frac{y^\top K y}{\|K\|_F\,\|y\|^2},\qquad
  \cos(K_1, K_2) = \frac{\langle K_1, K_2\rangle_F}{\|K_1\|_F\,\|K_2\|_F}.

``centered=True`` replaces K by HKH and Y by HY with H = I − 11ᵀ/n (centered kernel
alignment; ``kernel_cosine(.., centered=True)`` is CKA).

The recorder that computes these along training, :func:`mskjax.recorder.record_kernel_training`,
is an evaluation hook of the one training loop :func:`mskjax.train.fit`; the weighted
(optimiser-metric) empirical NTK is ``mskjax.tangents.empirical_ntk(..., weights=)``.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp

from mskjax import _validate as _v
from mskjax.spectrum import Eigenpairs

__all__ = [
    "kernel_alignment", "kernel_cosine", "eigenspace_overlap", "topk_overlap",
    "effective_rank", "target_energy", "relative_distance", "kernel_regression",
]


# ----------------------------------------------------------------------------- metrics

def _targets(y, n, name="y"):
  y = _v.finite_array(y, name, ndim=(1, 2))
  if y.ndim == 1:
    y = y[:, None]
  _v.check_rows(y, n, name, "K")
  return y


def _center_kernel(K):
  return K - K.mean(0, keepdims=True) - K.mean(1, keepdims=True) + K.mean()


def kernel_alignment(K, y, centered: bool = False) -> jax.Array:
  r"""Kernel-target alignment A(K, Y) = ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F).

  For one output this is the uncentered alignment of Atanasov et al.,
  A = yᵀKy / (‖K‖_F ‖y‖²). Multi-output convention: Y of shape (n, c) is compared with
  the kernel YYᵀ (cosine between K and YYᵀ, as in Cortes et al. 2012), so A ∈ [0, 1] for PSD
  K and A(YYᵀ, Y) = 1 for any c.

  Args:
    K: ``(n, n)`` symmetric kernel matrix.
    y: targets ``(n,)`` or ``(n, c)``.
    centered: use HKH and HY with H = I − 11ᵀ/n.

  Returns:
    Scalar alignment (NaN if K or Y is 0).

  Example:
    >>> import jax.numpy as jnp, mskjax.diagnostics as D
    >>> y = jnp.array([1.0, -1.0, 2.0])
    >>> float(D.kernel_alignment(jnp.outer(y, y), y))
    1.0
    >>> round(float(D.kernel_alignment(jnp.eye(3), y)), 4)  # 1/sqrt(n)
    0.5774
  """
  K = _v.check_square_symmetric(K, "K")
  y = _targets(y, K.shape[0])
  if centered:
    K = _center_kernel(K)
    y = y - y.mean(0, keepdims=True)
  num = jnp.sum(y * (K @ y))
  return num / (jnp.linalg.norm(K) * jnp.linalg.norm(y.T @ y))


def kernel_cosine(K1, K2, centered: bool = False) -> jax.Array:
  r"""Kernel-kernel alignment cos(K₁, K₂) = ⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F); CKA if centered.

  Args:
    K1, K2: ``(n, n)`` symmetric matrices on the same points.
    centered: compare HK₁H and HK₂H (centered kernel alignment, CKA).

  Returns:
    Scalar in [-1, 1] (in [0, 1] for PSD kernels); invariant to positive scaling.

  Example:
    >>> import jax.numpy as jnp, mskjax.diagnostics as D
    >>> K = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    >>> float(D.kernel_cosine(K, 5.0 * K))
    1.0
    >>> round(float(D.kernel_cosine(K, jnp.eye(2))), 4)  # 4 / (sqrt(10) sqrt(2))
    0.8944
  """
  K1 = _v.check_square_symmetric(K1, "K1")
  K2 = _v.check_square_symmetric(K2, "K2")
  if K1.shape != K2.shape:
    raise ValueError(f"`K1` and `K2` must have the same shape; got {K1.shape} and {K2.shape}.")
  if centered:
    K1, K2 = _center_kernel(K1), _center_kernel(K2)
  return jnp.sum(K1 * K2) / (jnp.linalg.norm(K1) * jnp.linalg.norm(K2))


def eigenspace_overlap(V1, V2) -> jax.Array:
  r"""Overlap of two subspaces given orthonormal bases: ‖V₁ᵀV₂‖_F² / min(k₁, k₂).

  Equals the mean squared cosine of the principal angles: 1 when one span contains the
  other, 0 when they are orthogonal, ≈ k/n for random k-dim subspaces of Rⁿ.

  Args:
    V1: ``(n, k1)`` orthonormal columns.
    V2: ``(n, k2)`` orthonormal columns.

  Returns:
    Scalar in [0, 1].

  Example:
    >>> import jax.numpy as jnp, mskjax.diagnostics as D
    >>> I = jnp.eye(4)
    >>> float(D.eigenspace_overlap(I[:, :2], I[:, 1:3]))
    0.5
  """
  V1 = _v.finite_array(V1, "V1", ndim=2)
  V2 = _v.finite_array(V2, "V2", ndim=2)
  _v.check_rows(V2, V1.shape[0], "V2", "V1")
  return jnp.sum((V1.T @ V2) ** 2) / min(V1.shape[1], V2.shape[1])


def _top_vectors(K, k):
  w, v = jnp.linalg.eigh(0.5 * (K + K.T))
  return v[:, ::-1][:, :k]


def topk_overlap(K1, K2, k: int) -> jax.Array:
  """Overlap (:func:`eigenspace_overlap`) of the top-k eigenspaces of two kernels.

  Example:
    >>> import jax.numpy as jnp, mskjax.diagnostics as D
    >>> float(D.topk_overlap(jnp.diag(jnp.array([3., 2., 1.])), jnp.diag(jnp.array([1., 2., 3.])), 1))
    0.0
  """
  K1 = _v.check_square_symmetric(K1, "K1")
  K2 = _v.check_square_symmetric(K2, "K2")
  if K1.shape != K2.shape:
    raise ValueError(f"`K1` and `K2` must have the same shape; got {K1.shape} and {K2.shape}.")
  k = _v.check_int(k, "k", lo=1, hi=K1.shape[0])
  return eigenspace_overlap(_top_vectors(K1, int(k)), _top_vectors(K2, int(k)))


def _eigenvalues(K_or_values, name):
  if isinstance(K_or_values, Eigenpairs):
    return jnp.maximum(_v.finite_array(K_or_values.values, f"{name}.values", ndim=1), 0.0)
  x = _v.finite_array(K_or_values, name, ndim=(1, 2))
  if x.ndim == 2:
    x = _v.check_square_symmetric(x, name)
    return jnp.maximum(jnp.linalg.eigvalsh(0.5 * (x + x.T)), 0.0)
  return jnp.maximum(x, 0.0)


def effective_rank(K, kind: str = "entropy") -> jax.Array:
  r"""Effective rank of a PSD kernel (or of its eigenvalues), with p_i = λ_i / Σ_j λ_j.

  * ``'entropy'`` (Roy & Vetterli 2007): exp(−Σ p_i ln p_i);
  * ``'participation'`` (participation ratio): (Σ λ_i)² / Σ λ_i².

  Both are 1 for a rank-one kernel and n for I_n.

  Args:
    K: ``(n, n)`` PSD matrix, a 1-D array of eigenvalues, or :class:`mskjax.Eigenpairs`.
    kind: ``'entropy'`` or ``'participation'``.

  Returns:
    Scalar in [1, n].

  Example:
    >>> import jax.numpy as jnp, mskjax.diagnostics as D
    >>> round(float(D.effective_rank(jnp.eye(5))), 6), float(D.effective_rank(jnp.eye(5), 'participation'))
    (5.0, 5.0)
  """
  if kind not in ("entropy", "participation"):
    raise ValueError(f"`kind` must be 'entropy' or 'participation', got {kind!r}.")
  w = _eigenvalues(K, "K")
  if kind == "participation":
    return jnp.sum(w) ** 2 / jnp.sum(w ** 2)
  p = w / jnp.sum(w)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def target_energy(K, y, k: int) -> jax.Array:
  r"""Fraction of the target's energy in the top-k eigenvectors: ‖V_kᵀ Y‖_F² / ‖Y‖_F².

  Args:
    K: ``(n, n)`` symmetric kernel or :class:`mskjax.Eigenpairs` (descending, ≥ k vectors).
    y: ``(n,)`` or ``(n, c)`` targets.
    k: number of top eigenvectors (static int ≥ 1).

  Returns:
    Scalar in [0, 1].

  Example:
    >>> import jax.numpy as jnp, mskjax.diagnostics as D
    >>> float(D.target_energy(jnp.diag(jnp.array([3., 2., 1.])), jnp.array([1., 0., 1.]), 1))
    0.5
  """
  k = _v.check_int(k, "k", lo=1)
  if isinstance(K, Eigenpairs):
    vecs = _v.finite_array(K.vectors, "K.vectors", ndim=2)
  else:
    K = _v.check_square_symmetric(K, "K")
    vecs = _top_vectors(K, min(int(k), K.shape[0]))
  if k > vecs.shape[1]:
    raise ValueError(f"`k`={k} exceeds the {vecs.shape[1]} eigenvectors available.")
  y = _targets(y, vecs.shape[0])
  vk = vecs[:, :int(k)]
  return jnp.sum((vk.T @ y) ** 2) / jnp.sum(y ** 2)


def relative_distance(a, b) -> jax.Array:
  """‖a − b‖_F / ‖b‖_F (e.g. a = kernel-regression, b = trained-network predictions).

  Example:
    >>> import jax.numpy as jnp, mskjax.diagnostics as D
    >>> float(D.relative_distance(jnp.array([3., 4.1]), jnp.array([3., 4.])))
    0.02
  """
  a = _v.finite_array(a, "a")
  b = _v.finite_array(b, "b")
  if a.shape != b.shape:
    raise ValueError(f"`a` and `b` must have the same shape; got {a.shape} and {b.shape}.")
  return jnp.linalg.norm(a - b) / jnp.linalg.norm(b)


def kernel_regression(K_train, K_test_train, y, *, f0_train=None, f0_test=None,
                      ridge: float = 1e-8) -> jax.Array:
  r"""Kernel (ridge) regression around an initial function f₀, with scale-relative ridge.

  .. math::
    f_K(x) = f_0(x) + K(x, X)\,(K + \delta I)^{-1}\,(Y - f_0(X)),\qquad
    \delta = \mathrm{ridge}\cdot \mathrm{tr}(K)/n.

  This is the t → ∞ limit of gradient flow on the MSE in the linearised model with a fixed
  kernel K started from f₀ (δ → 0), i.e. what the network would predict if K never moved.

  Args:
    K_train: ``(n, n)`` kernel on the training inputs X.
    K_test_train: ``(m, n)`` kernel between test points and X.
    y: ``(n,)`` or ``(n, c)`` training targets.
    f0_train, f0_test: network outputs at initialisation on X and on the test points
      (``(n, c)``, ``(m, c)``); None means 0.
    ridge: δ relative to the mean eigenvalue tr(K)/n (≥ 0; keeps rank-deficient K solvable).

  Returns:
    ``(m, c)`` predictions.

  Raises:
    ValueError: NaN/inf in any input, bad shapes, ``ridge < 0``, or a (numerically)
      singular ``K + δI`` — e.g. ``ridge=0`` on a rank-deficient K — where the solve would
      return inf/NaN or an unreliable answer (relative residual above 1e-6): pass ridge > 0.

  Example:
    >>> import jax.numpy as jnp, mskjax.diagnostics as D
    >>> K = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    >>> [round(v, 6) for v in D.kernel_regression(K, K, jnp.array([1.0, 0.0]), ridge=0.0).ravel().tolist()]
    [1.0, 0.0]
  """
  K_train = _v.check_square_symmetric(K_train, "K_train")
  n = K_train.shape[0]
  K_test_train = _v.finite_array(K_test_train, "K_test_train", ndim=2)
  if K_test_train.shape[1] != n:
    raise ValueError(f"`K_test_train` must have n = {n} columns (the training points); got "
                     f"shape {K_test_train.shape}.")
  y = _targets(y, n)
  f0_train = jnp.zeros_like(y) if f0_train is None else _v.finite_array(f0_train, "f0_train")
  f0_test = (jnp.zeros((K_test_train.shape[0], y.shape[1]), y.dtype) if f0_test is None
             else _v.finite_array(f0_test, "f0_test"))
  if f0_train.shape != y.shape:
    raise ValueError(f"`f0_train` must have the shape of y {y.shape}; got {f0_train.shape}.")
  if f0_test.shape != (K_test_train.shape[0], y.shape[1]):
    raise ValueError(f"`f0_test` must have shape {(K_test_train.shape[0], y.shape[1])}; got "
                     f"{f0_test.shape}.")
  ridge = _v.check_real(ridge, "ridge", lo=0)
  out, rel = _kernel_regression(K_train, K_test_train, y, f0_train, f0_test, ridge)
  if _v.is_concrete(rel) and not float(rel) <= KERNEL_REGRESSION_RTOL:
    raise ValueError(
        f"kernel_regression: K_train + δI is (numerically) singular with ridge={ridge:g}: the "
        f"solve's relative residual is {float(rel):.3g} (> {KERNEL_REGRESSION_RTOL:g}), so "
        "the answer would be inf/NaN or unreliable. Pass ridge > 0 (e.g. 1e-8, relative to "
        "tr(K)/n).")
  return out


KERNEL_REGRESSION_RTOL = 1e-6
"""Largest accepted ‖(K + δI)α − b‖ / (‖K + δI‖·‖α‖ + ‖b‖) of :func:`kernel_regression`."""


@jax.jit
def _kernel_regression(K, Kx, y, f0, f0x, ridge):
  n = K.shape[0]
  delta = ridge * jnp.trace(K) / n
  A = K + delta * jnp.eye(n, dtype=K.dtype)
  b = y - f0
  alpha = jnp.linalg.solve(A, b)
  rel = jnp.linalg.norm(A @ alpha - b) / (jnp.linalg.norm(A) * jnp.linalg.norm(alpha)
                                          + jnp.linalg.norm(b) + jnp.finfo(K.dtype).tiny)
  rel = jnp.where(jnp.all(jnp.isfinite(alpha)), rel, jnp.inf)
  return f0x + Kx @ alpha, rel
