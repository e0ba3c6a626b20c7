r"""Kernel diagnostics: alignment metrics, a kernel recorder for training, kernel regression.

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

Recorder (:func:`record_kernel_training`): trains any flax/stax ``apply_fn`` with any optax
``GradientTransformation`` and loss, and at log-spaced steps (0 and the last step always)
computes the empirical NTK on a fixed probe set, storing scalars and the top-k
eigenpairs only (memory stated in its docstring).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from mskjax import _validate as V
from mskjax import train as _train
from mskjax.spectrum import Eigenpairs

__all__ = [
    "kernel_alignment", "kernel_cosine", "eigenspace_overlap", "topk_overlap",
    "effective_rank", "target_energy", "relative_distance", "kernel_regression",
    "weighted_empirical_ntk", "adam_kernel_weights", "log_spaced_steps", "KernelRecord",
    "record_kernel_training",
]


# ----------------------------------------------------------------------------- metrics

def _targets(y, n, name="y"):
  y = V.finite_array(y, name, ndim=(1, 2))
  if y.ndim == 1:
    y = y[:, None]
  V.check_rows(y, n, name, "K")
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
  K = V.check_square_symmetric(K, "K")
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
  K1 = V.check_square_symmetric(K1, "K1")
  K2 = V.check_square_symmetric(K2, "K2")
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
  V1 = V.finite_array(V1, "V1", ndim=2)
  V2 = V.finite_array(V2, "V2", ndim=2)
  V.check_rows(V2, V1.shape[0], "V2", "V1")
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
  K1 = V.check_square_symmetric(K1, "K1")
  K2 = V.check_square_symmetric(K2, "K2")
  if K1.shape != K2.shape:
    raise ValueError(f"`K1` and `K2` must have the same shape; got {K1.shape} and {K2.shape}.")
  k = V.check_int(k, "k", lo=1, hi=K1.shape[0])
  return eigenspace_overlap(_top_vectors(K1, int(k)), _top_vectors(K2, int(k)))


def _eigenvalues(K_or_values, name):
  if isinstance(K_or_values, Eigenpairs):
    return jnp.maximum(V.finite_array(K_or_values.values, f"{name}.values", ndim=1), 0.0)
  x = V.finite_array(K_or_values, name, ndim=(1, 2))
  if x.ndim == 2:
    x = V.check_square_symmetric(x, name)
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
  k = V.check_int(k, "k", lo=1)
  if isinstance(K, Eigenpairs):
    vecs = V.finite_array(K.vectors, "K.vectors", ndim=2)
  else:
    K = V.check_square_symmetric(K, "K")
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
  a = V.finite_array(a, "a")
  b = V.finite_array(b, "b")
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
  K_train = V.check_square_symmetric(K_train, "K_train")
  n = K_train.shape[0]
  K_test_train = V.finite_array(K_test_train, "K_test_train", ndim=2)
  if K_test_train.shape[1] != n:
    raise ValueError(f"`K_test_train` must have n = {n} columns (the training points); got "
                     f"shape {K_test_train.shape}.")
  y = _targets(y, n)
  f0_train = jnp.zeros_like(y) if f0_train is None else V.finite_array(f0_train, "f0_train")
  f0_test = (jnp.zeros((K_test_train.shape[0], y.shape[1]), y.dtype) if f0_test is None
             else V.finite_array(f0_test, "f0_test"))
  if f0_train.shape != y.shape:
    raise ValueError(f"`f0_train` must have the shape of y {y.shape}; got {f0_train.shape}.")
  if f0_test.shape != (K_test_train.shape[0], y.shape[1]):
    raise ValueError(f"`f0_test` must have shape {(K_test_train.shape[0], y.shape[1])}; got "
                     f"{f0_test.shape}.")
  ridge = V.check_real(ridge, "ridge", lo=0)
  out, rel = _kernel_regression(K_train, K_test_train, y, f0_train, f0_test, ridge)
  if V.is_concrete(rel) and not float(rel) <= KERNEL_REGRESSION_RTOL:
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


# ------------------------------------------------------------------ empirical NTK

def weighted_empirical_ntk(apply_fn: Callable, params, x1, x2=None, weights=None) -> jax.Array:
  r"""Empirical NTK with an optional diagonal parameter metric D: Θ_D = (1/c) Σ_k J_k D J_kᵀ.

  J_k = ∂f_k(θ, x)/∂θ. With ``weights=None`` (D = I) this is the usual empirical NTK traced
  over outputs (same convention as :func:`mskjax.kernels.empirical_ntk`). With D the
  per-parameter step sizes of a diagonal optimiser (Adam: η/(√v̂ + ε)), Θ_D is the kernel
  that drives the function in that optimiser's linearised dynamics, df = −Θ_D ∂ℓ/∂f.
  Pure and jittable (``apply_fn`` static); memory O(n₁ P) per output (P parameters), so
  use it on probe sets of hundreds of points.

  Args:
    apply_fn: ``apply_fn(params, x) -> (n, c)``.
    params: a parameter pytree.
    x1: ``(n1, d)`` inputs.
    x2: ``(n2, d)`` inputs or None (then x1).
    weights: pytree like ``params`` of non-negative per-parameter weights, or None.

  Returns:
    ``(n1, n2)`` kernel matrix.

  Example:
    >>> import jax.numpy as jnp, mskjax.diagnostics as D
    >>> f = lambda p, x: x @ p['w']          # linear model: Θ = x xᵀ
    >>> p = {'w': jnp.zeros((2, 1))}
    >>> x = jnp.array([[1., 0.], [1., 1.]])
    >>> D.weighted_empirical_ntk(f, p, x).tolist()
    [[1.0, 1.0], [1.0, 2.0]]
    >>> D.weighted_empirical_ntk(f, p, x, weights={'w': jnp.array([[0.], [2.]])}).tolist()
    [[0.0, 0.0], [0.0, 2.0]]
  """
  x1 = V.as_float_array(x1, "x1", ndim=2)
  x2 = None if x2 is None else V.as_float_array(x2, "x2", ndim=2)
  if x2 is not None and x2.shape[1] != x1.shape[1]:
    raise ValueError(f"`x1` and `x2` must have the same feature dimension; got {x1.shape} and "
                     f"{x2.shape}.")
  return _weighted_ntk(apply_fn, params, x1, x2, weights)


@functools.partial(jax.jit, static_argnums=0)
def _weighted_ntk(apply_fn, params, x1, x2, weights):
  flat, unravel = ravel_pytree(params)
  w = jnp.ones_like(flat) if weights is None else ravel_pytree(weights)[0].astype(flat.dtype)
  c = jax.eval_shape(apply_fn, params, x1[:1]).shape[-1]

  def per_output(k):
    jac = lambda x: jax.jacrev(lambda v: apply_fn(unravel(v), x)[:, k])(flat)
    j1 = jac(x1)
    j2 = j1 if x2 is None else jac(x2)
    return (j1 * w) @ j2.T

  if c == 1:
    return per_output(0)
  return jnp.mean(jax.lax.map(per_output, jnp.arange(c)), axis=0)


def adam_kernel_weights(learning_rate: float, *, b2: float = 0.999, eps: float = 1e-8
                        ) -> Callable:
  r"""Per-parameter step sizes of Adam, D = η / (√v̂ + ε), for :func:`record_kernel_training`.

  v̂ = ν / (1 − β₂^t) is read from the ``ScaleByAdamState`` inside the optax state; at
  t = 0 (no second-moment estimate yet) v̂ = g², the value Adam's first step uses. Momentum
  is ignored: Θ_D = J D Jᵀ is the kernel of the momentum-free (RMSProp-like) step.

  Args:
    learning_rate: η of the Adam optimiser being recorded.
    b2, eps: Adam's β₂ and ε (same as passed to ``optax.adam``).

  Returns:
    ``weights_fn(params, opt_state, grads) -> pytree`` of step sizes.

  Example:
    >>> import jax.numpy as jnp, optax, mskjax.diagnostics as D
    >>> p = {'w': jnp.ones(2)}
    >>> s = optax.adam(0.1).init(p)
    >>> D.adam_kernel_weights(0.1)(p, s, {'w': jnp.array([1.0, 2.0])})['w'].round(6).tolist()
    [0.1, 0.05]
  """
  def find(state):
    if isinstance(state, optax.ScaleByAdamState):
      return state
    if isinstance(state, (tuple, list)):
      for s in state:
        found = find(s)
        if found is not None:
          return found
    return None

  def weights_fn(params, opt_state, grads):
    st = find(opt_state)
    if st is None:
      raise ValueError("adam_kernel_weights: no optax ScaleByAdamState in opt_state; use it "
                       "with optax.adam / optax.scale_by_adam.")
    t = st.count
    bc = 1.0 - b2 ** jnp.maximum(t, 1).astype(jnp.result_type(float))
    return jax.tree_util.tree_map(
        lambda nu, g: learning_rate / (jnp.sqrt(jnp.where(t > 0, nu / bc, g ** 2)) + eps),
        st.nu, grads)

  return weights_fn


# ------------------------------------------------------------------------ recorder

def log_spaced_steps(num_steps: int, num: int) -> np.ndarray:
  """About ``num`` distinct integer steps, log-spaced in [1, num_steps], plus 0 and num_steps.

  Example:
    >>> log_spaced_steps(1000, 5).tolist()
    [0, 1, 6, 32, 178, 1000]
  """
  num_steps = V.check_int(num_steps, "num_steps", lo=1)
  num = V.check_int(num, "num", lo=1)
  s = np.round(np.geomspace(1, num_steps, int(num))).astype(int)
  return np.unique(np.concatenate([[0], s, [num_steps]]))


class KernelRecord(NamedTuple):
  """What :func:`record_kernel_training` stores; ``R`` records at ``steps``.

  Attributes:
    steps: ``(R,)`` recorded steps (0 and the last step included).
    loss_curve: ``(T+1,)`` training loss at every step 0..T.
    norm: ``(R,)`` ‖K_t‖_F on the probe set.
    trace: ``(R,)`` tr K_t.
    alignment: ``(R,)`` A(K_t, y_probe) (uncentered).
    alignment_centered: ``(R,)`` centered A(K_t, y_probe).
    cos_init: ``(R,)`` cos(K_t, K_0) (exact).
    cos_final: ``(R,)`` cos(K_t, K_T), from the stored top-k eigenpairs of K_t and the full
      K_T (exact when top_k = n; otherwise error ≤ ``cos_final_err``).
    cos_final_err: ``(R,)`` bound on the truncation error of ``cos_final``:
      ‖K_t − K_t^(k)‖_F / ‖K_t‖_F.
    overlap_final: ``(R,)`` top-``energy_k`` eigenspace overlap with K_T.
    eff_rank: ``(R,)`` entropy effective rank; ``eff_rank_pr``: participation ratio.
    energy: ``(R,)`` fraction of ‖y_probe‖² in the top-``energy_k`` eigenvectors.
    values: ``(R, k)`` top eigenvalues; ``vectors``: ``(R, n, k)`` eigenvectors.
    kr_test: ``(R, m, c)`` kernel-regression predictions at x_test with K_t (or None).
    kr_distance: ``(R,)`` ‖f_{K_t} − f_NN‖/‖f_NN‖ at x_test against the final network.
    f_test: ``(m, c)`` final network at x_test (or None); ``f0_test``: at init.
    params, opt_state: final parameters and optimiser state.
  """
  steps: np.ndarray
  loss_curve: np.ndarray
  norm: np.ndarray
  trace: np.ndarray
  alignment: np.ndarray
  alignment_centered: np.ndarray
  cos_init: np.ndarray
  cos_final: np.ndarray
  cos_final_err: np.ndarray
  overlap_final: np.ndarray
  eff_rank: np.ndarray
  eff_rank_pr: np.ndarray
  energy: np.ndarray
  values: np.ndarray
  vectors: np.ndarray
  kr_test: Optional[np.ndarray]
  kr_distance: Optional[np.ndarray]
  f_test: Optional[np.ndarray]
  f0_test: Optional[np.ndarray]
  params: Any
  opt_state: Any

  def scalars(self) -> list[dict]:
    """One dict of the scalar series per recorded step (for tables / metrics.jsonl)."""
    keys = ("norm", "trace", "alignment", "alignment_centered", "cos_init", "cos_final",
            "overlap_final", "eff_rank", "eff_rank_pr", "energy")
    rows = []
    for i, t in enumerate(self.steps):
      row = {"step": int(t), "loss": float(self.loss_curve[t])}
      row.update({k: float(getattr(self, k)[i]) for k in keys})
      if self.kr_distance is not None:
        row["kr_distance"] = float(self.kr_distance[i])
      rows.append(row)
    return rows


class _PredictionLoss(NamedTuple):   # fit's loss_fn(params, (x, y), idx); equal by fields
  apply_fn: Callable
  loss_fn: Callable

  def __call__(self, params, batch, idx):
    return self.loss_fn(self.apply_fn(params, batch[0]), batch[1])


@functools.partial(jax.jit, static_argnums=(0,))
def _probe_stats(k, K, K0, y):
  w, v = jnp.linalg.eigh(0.5 * (K + K.T))
  w, v = jnp.maximum(w[::-1], 0.0), v[:, ::-1]
  norm = jnp.linalg.norm(K)
  tail = jnp.sqrt(jnp.maximum(norm ** 2 - jnp.sum(w[:k] ** 2), 0.0)) / norm
  return dict(values=w[:k], vectors=v[:, :k], norm=norm, trace=jnp.trace(K),
              alignment=kernel_alignment(K, y), alignment_centered=kernel_alignment(K, y, True),
              cos_init=kernel_cosine(K, K0), eff_rank=effective_rank(w),
              eff_rank_pr=effective_rank(w, "participation"), cos_final_err=tail)


def record_kernel_training(apply_fn: Callable, params, optimizer: optax.GradientTransformation,
                           loss_fn: Callable, x, y, *, num_steps: int,
                           x_probe=None, y_probe=None, num_records: int = 30,
                           record_steps: Optional[Sequence[int]] = None,
                           top_k: Optional[int] = None, energy_k: int = 1, x_test=None,
                           ridge: float = 1e-8, kernel_weights_fn: Optional[Callable] = None,
                           progress: bool = False) -> KernelRecord:
  r"""Full-batch training with any optax transformation, recording the empirical NTK.

  Training runs in the one loop :func:`mskjax.train.fit`; the kernel records are its
  evaluation hook at the recorded steps.

  Each step: g = ∇_θ loss_fn(apply_fn(θ, X), Y); (u, s) = optimizer.update(g, s, θ);
  θ ← θ + u. At the recorded steps t (log-spaced, 0 and T = ``num_steps`` always included)
  the kernel K_t = Θ_t(X_probe, X_probe) is formed (with ``kernel_weights_fn``:
  Θ_D = J D Jᵀ, e.g. :func:`adam_kernel_weights`), reduced to scalars (norm, alignment,
  cos with K_0, effective ranks, target energy) and its top-k eigenpairs, then dropped.
  At the end cos(K_t, K_T) = Σ_i λ_i v_iᵀ K_T v_i / (‖K_t‖‖K_T‖) uses the stored eigenpairs.
  With ``x_test``, kernel regression (:func:`kernel_regression`, f₀ = network at step 0,
  training set X, Y) is evaluated with every recorded kernel and compared with the final
  network at ``x_test``.

  Memory (float64 numbers): R·(n·k + k + 12) + (T + 1) stored, plus R·m·c with x_test
  (R records, n probe points, k = top_k, m test points, c outputs); transient: 3 n×n
  Gram matrices (K_0, K_t, K_T), the (n+m)×n kernels for regression, and an n×P Jacobian
  per output (P parameters). Full K_t are never kept.

  Args:
    apply_fn: ``apply_fn(params, x) -> (n, c)`` (e.g. ``FlaxMLP.apply``).
    params: initial parameters.
    optimizer: any ``optax.GradientTransformation`` (sgd, adam, an MSK preconditioner, ...).
    loss_fn: ``loss_fn(predictions, targets) -> scalar``, e.g. ½·mean squared error.
    x, y: training inputs ``(n, d)`` and targets ``(n, c)``.
    num_steps: number of optimisation steps T (≥ 1).
    x_probe, y_probe: probe set for the kernel (default: x, y).
    num_records: about how many log-spaced records (ignored with ``record_steps``).
    record_steps: explicit steps to record (0 and T are added).
    top_k: eigenpairs stored per record (default all n: cos_final exact).
    energy_k: k for the target energy and the eigenspace overlap with K_T.
    x_test: optional test inputs for the kernel-regression comparison.
    ridge: scale-relative ridge of the regression (see :func:`kernel_regression`).
    kernel_weights_fn: optional ``(params, opt_state, grads) -> pytree`` diagonal metric.
    progress: show a progress bar (off by default).

  Returns:
    :class:`KernelRecord`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, mskjax.diagnostics as D
    >>> f = lambda p, x: x @ p['w']                      # linear model: NTK constant
    >>> x = jnp.eye(3); y = jnp.array([[1.], [2.], [3.]])
    >>> rec = D.record_kernel_training(f, {'w': jnp.zeros((3, 1))}, optax.sgd(0.5),
    ...     lambda f, y: 0.5 * jnp.mean((f - y) ** 2), x, y, num_steps=100, num_records=3)
    >>> rec.steps.tolist(), [round(c, 6) for c in rec.cos_final.tolist()]
    ([0, 1, 10, 100], [1.0, 1.0, 1.0, 1.0])
  """
  x = V.as_float_array(x, "x", ndim=2)
  y = V.as_float_array(y, "y", ndim=(1, 2))
  y = y[:, None] if y.ndim == 1 else y
  V.check_rows(y, x.shape[0], "y", "x")
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError("`optimizer` must be an optax.GradientTransformation (e.g. optax.sgd(0.1)); "
                    f"got {type(optimizer).__name__}.")
  if not callable(loss_fn):
    raise TypeError(f"`loss_fn` must be callable loss_fn(predictions, targets); got "
                    f"{type(loss_fn).__name__}.")
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
      or num_steps < 1:
    raise ValueError(f"`num_steps` must be an int >= 1, got {num_steps!r}.")
  T = int(num_steps)
  same_probe = x_probe is None
  xp = x if same_probe else V.as_float_array(x_probe, "x_probe", ndim=2)
  if y_probe is None:
    if not same_probe:
      raise ValueError("`y_probe` is required when `x_probe` is given.")
    yp = y
  else:
    yp = V.as_float_array(y_probe, "y_probe", ndim=(1, 2))
    yp = yp[:, None] if yp.ndim == 1 else yp
    V.check_rows(yp, xp.shape[0], "y_probe", "x_probe")
  n = xp.shape[0]
  k = n if top_k is None else int(top_k)
  if not 1 <= k <= n:
    raise ValueError(f"`top_k` must be in [1, n = {n}] or None, got {top_k!r}.")
  if isinstance(energy_k, bool) or not isinstance(energy_k, (int, np.integer)) \
      or not 1 <= energy_k <= k:
    raise ValueError(f"`energy_k` must be an int in [1, top_k = {k}], got {energy_k!r}.")
  if record_steps is None:
    steps = log_spaced_steps(T, num_records)
  else:
    steps = np.asarray(list(record_steps), dtype=int)
    if steps.ndim != 1 or np.any(steps < 0) or np.any(steps > T):
      raise ValueError(f"`record_steps` must be integers in [0, num_steps = {T}].")
    steps = np.unique(np.concatenate([[0], steps, [T]]))
  xt = None if x_test is None else V.as_float_array(x_test, "x_test", ndim=2)

  objective = lambda p: loss_fn(apply_fn(p, x), y)
  value_and_grad = jax.jit(jax.value_and_grad(objective))

  def kernel(p, s, a, b=None):
    w = None
    if kernel_weights_fn is not None:
      w = kernel_weights_fn(p, s, value_and_grad(p)[1])
    return _weighted_ntk(apply_fn, p, a, b, w)

  f0_train = apply_fn(params, x)
  f0_test = None if xt is None else apply_fn(params, xt)
  recs, kr, memo = [], [], {}

  def evaluate(state):            # the recorder is an evaluation hook of the one loop
    p, s = state.params, state.opt_state
    K = kernel(p, s, xp)
    if "K0" not in memo:
      memo["K0"] = K
    memo["K"] = K
    st = _probe_stats(k, K, memo["K0"], yp)
    st["energy"] = target_energy(Eigenpairs(st["values"], st["vectors"]), yp, int(energy_k))
    recs.append(jax.device_get(st))
    if xt is not None:
      Ktr = K if same_probe else kernel(p, s, x)
      kr.append(np.asarray(kernel_regression(Ktr, kernel(p, s, xt, x), y, f0_train=f0_train,
                                             f0_test=f0_test, ridge=ridge)))
    return {}

  res = _train.fit(_PredictionLoss(apply_fn, loss_fn), params, optimizer, (x, y), steps=T,
                   evaluate=evaluate, eval_steps=steps.tolist(), progress=bool(progress),
                   desc="record_kernel_training")
  p, s = res.state.params, res.state.opt_state
  K = memo["K"]
  losses = np.concatenate([res.records["loss"], [np.asarray(value_and_grad(p)[0])]])
  K_T = K
  stacked = {key: np.stack([np.asarray(r[key]) for r in recs]) for key in recs[0]}
  vals, vecs = stacked["values"], stacked["vectors"]
  nT = float(jnp.linalg.norm(K_T))
  K_T_np = np.asarray(K_T)
  cos_final = np.array([np.sum(vals[i] * np.einsum("ni,nm,mi->i", vecs[i], K_T_np, vecs[i]))
                        / (stacked["norm"][i] * nT) for i in range(len(steps))])
  vT = vecs[-1][:, :energy_k]
  overlap = np.array([float(np.sum((vecs[i][:, :energy_k].T @ vT) ** 2)) / energy_k
                      for i in range(len(steps))])
  f_test = kr_arr = kr_dist = None
  if xt is not None:
    f_test = np.asarray(apply_fn(p, xt))
    kr_arr = np.stack(kr)
    kr_dist = np.array([float(np.linalg.norm(a - f_test) / np.linalg.norm(f_test))
                        for a in kr_arr])
  return KernelRecord(
      steps=steps, loss_curve=np.asarray(losses), norm=stacked["norm"], trace=stacked["trace"],
      alignment=stacked["alignment"], alignment_centered=stacked["alignment_centered"],
      cos_init=stacked["cos_init"], cos_final=cos_final, cos_final_err=stacked["cos_final_err"],
      overlap_final=overlap, eff_rank=stacked["eff_rank"], eff_rank_pr=stacked["eff_rank_pr"],
      energy=stacked["energy"], values=vals, vectors=vecs, kr_test=kr_arr,
      kr_distance=kr_dist, f_test=f_test,
      f0_test=None if f0_test is None else np.asarray(f0_test), params=p, opt_state=s)
