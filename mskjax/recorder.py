r"""Kernel recorder: the empirical NTK and its diagnostics along training (a hook of the loop).

:func:`record_kernel_training` trains with :func:`mskjax.train.fit` and, at chosen steps
(:func:`log_spaced_steps`), evaluates the empirical NTK on a probe set and the metrics of
:mod:`mskjax.diagnostics` (alignment, kernel-kernel cosine, eigenspace overlap, ...).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mskjax import _validate
from mskjax import diagnostics as _diagnostics
from mskjax import tangents as _tangents
from mskjax.spectrum import Eigenpairs as _Eigenpairs
from mskjax import train as _train

__all__ = ["log_spaced_steps", "KernelRecord", "record_kernel_training"]


def log_spaced_steps(num_steps: int, num: int) -> np.ndarray:
  """About ``num`` distinct integer steps, log-spaced in [1, num_steps], plus 0 and num_steps.

  Example:
    >>> log_spaced_steps(1000, 5).tolist()
    [0, 1, 6, 32, 178, 1000]
  """
  num_steps = _validate.check_int(num_steps, "num_steps", lo=1)
  num = _validate.check_int(num, "num", lo=1)
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


class _PredictionLoss(NamedTuple):   # loss_fn(predictions, targets) as fit's loss
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
  D = _diagnostics
  return dict(values=w[:k], vectors=v[:, :k], norm=norm, trace=jnp.trace(K),
              alignment=D.kernel_alignment(K, y), alignment_centered=D.kernel_alignment(K, y, True),
              cos_init=D.kernel_cosine(K, K0), eff_rank=D.effective_rank(w),
              eff_rank_pr=D.effective_rank(w, "participation"), cos_final_err=tail)


def _probe_set(x, y, x_probe, y_probe):
  """``(x_probe, y_probe)`` checked, defaulting to the training set ``(x, y)``."""
  xp = x if x_probe is None else _validate.as_float_array(x_probe, "x_probe", ndim=2)
  if y_probe is None:
    if x_probe is not None:
      raise ValueError("`y_probe` is required when `x_probe` is given.")
    return xp, y
  yp = _validate.as_float_array(y_probe, "y_probe", ndim=(1, 2))
  yp = yp[:, None] if yp.ndim == 1 else yp
  _validate.check_rows(yp, xp.shape[0], "y_probe", "x_probe")
  return xp, yp


def _record_steps(T, record_steps, num_records):
  """The recorded steps: log-spaced, or the given ones with 0 and T added."""
  if record_steps is None:
    return log_spaced_steps(T, num_records)
  steps = np.asarray(list(record_steps), dtype=int)
  if steps.ndim != 1 or np.any(steps < 0) or np.any(steps > T):
    raise ValueError(f"`record_steps` must be integers in [0, num_steps = {T}].")
  return np.unique(np.concatenate([[0], steps, [T]]))


def _against_final(stacked, K_T, energy_k):
  """Per record: the cosine of its kernel with the final kernel ``K_T`` (from its
  eigenpairs) and the overlap of its top-``energy_k`` eigenspace with the final one."""
  vals, vecs = stacked["values"], stacked["vectors"]
  nT = float(jnp.linalg.norm(K_T))
  K_T_np = np.asarray(K_T)
  cos_final = np.array([np.sum(vals[i] * np.einsum("ni,nm,mi->i", vecs[i], K_T_np, vecs[i]))
                        / (stacked["norm"][i] * nT) for i in range(len(vals))])
  vT = vecs[-1][:, :energy_k]
  overlap = np.array([float(np.sum((vecs[i][:, :energy_k].T @ vT) ** 2)) / energy_k
                      for i in range(len(vals))])
  return cos_final, overlap


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
  Θ_D = J D Jᵀ, e.g. :func:`mskjax.function_space.adam_kernel_weights`), reduced to scalars (norm, alignment,
  cos with K_0, effective ranks, target energy) and its top-k eigenpairs, then dropped.
  At the end cos(K_t, K_T) = Σ_i λ_i v_iᵀ K_T v_i / (‖K_t‖‖K_T‖) uses the stored eigenpairs.
  With ``x_test``, kernel regression (:func:`mskjax.diagnostics.kernel_regression`, f₀ = network at step 0,
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
    ridge: scale-relative ridge of the regression (see :func:`mskjax.diagnostics.kernel_regression`).
    kernel_weights_fn: optional ``(params, opt_state, grads) -> pytree`` diagonal metric.
    progress: show a progress bar (off by default).

  Returns:
    :class:`KernelRecord`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, mskjax
    >>> f = lambda p, x: x @ p['w']                      # linear model: NTK constant
    >>> x = jnp.eye(3); y = jnp.array([[1.], [2.], [3.]])
    >>> rec = mskjax.recorder.record_kernel_training(f, {'w': jnp.zeros((3, 1))}, optax.sgd(0.5),
    ...     lambda f, y: 0.5 * jnp.mean((f - y) ** 2), x, y, num_steps=100, num_records=3)
    >>> rec.steps.tolist(), [round(c, 6) for c in rec.cos_final.tolist()]
    ([0, 1, 10, 100], [1.0, 1.0, 1.0, 1.0])
  """
  x = _validate.as_float_array(x, "x", ndim=2)
  y = _validate.as_float_array(y, "y", ndim=(1, 2))
  y = y[:, None] if y.ndim == 1 else y
  _validate.check_rows(y, x.shape[0], "y", "x")
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError("`optimizer` must be an optax.GradientTransformation (e.g. optax.sgd(0.1)); "
                    f"got {type(optimizer).__name__}.")
  if not callable(loss_fn):
    raise TypeError(f"`loss_fn` must be callable loss_fn(predictions, targets); got "
                    f"{type(loss_fn).__name__}.")
  T = _validate.check_int(num_steps, "num_steps", lo=1)
  same_probe = x_probe is None
  xp, yp = _probe_set(x, y, x_probe, y_probe)
  n = xp.shape[0]
  k = n if top_k is None else _validate.check_int(top_k, "top_k", lo=1, hi=n)
  energy_k = _validate.check_int(energy_k, "energy_k", lo=1, hi=k)
  steps = _record_steps(T, record_steps, num_records)
  xt = None if x_test is None else _validate.as_float_array(x_test, "x_test", ndim=2)

  objective = lambda p: loss_fn(apply_fn(p, x), y)
  value_and_grad = jax.jit(jax.value_and_grad(objective))

  def kernel(p, s, a, b=None):
    w = None
    if kernel_weights_fn is not None:
      w = kernel_weights_fn(p, s, value_and_grad(p)[1])
    shape = (a.shape[0], (a if b is None else b).shape[0])
    if not all(np.all(np.isfinite(np.asarray(l))) for l in jax.tree.leaves(p)):
      return jnp.full(shape, jnp.nan)          # diverged training: recorded as NaN below
    try:
      return _tangents.empirical_ntk(apply_fn, p, a, b, weights=w)
    except _validate.NonFiniteOutputError:     # overflowing parameters: likewise a result
      return jnp.full(shape, jnp.nan)

  f0_train = apply_fn(params, x)
  f0_test = None if xt is None else apply_fn(params, xt)
  recs, kr, memo = [], [], {}

  def evaluate(state):            # the recorder is an evaluation hook of the one loop
    p, s = state.params, state.opt_state
    K = kernel(p, s, xp)
    if "K0" not in memo:
      memo["K0"] = K
    memo["K"] = K
    if recs and not np.all(np.isfinite(np.asarray(K))):
      # Diverged training: the record keeps its shapes and says NaN (the metrics refuse
      # non-finite kernels by design; a divergent run is a result, not an input error).
      recs.append(jax.tree_util.tree_map(lambda a: np.full(np.shape(a), np.nan), recs[-1]))
      if xt is not None:
        kr.append(np.full(np.shape(kr[-1]), np.nan))
      return {}
    st = _probe_stats(k, K, memo["K0"], yp)
    st["energy"] = _diagnostics.target_energy(_Eigenpairs(st["values"], st["vectors"]), yp,
                                              int(energy_k))
    recs.append(jax.device_get(st))
    if xt is not None:
      Ktr = K if same_probe else kernel(p, s, x)
      kr.append(np.asarray(_diagnostics.kernel_regression(
          Ktr, kernel(p, s, xt, x), y, f0_train=f0_train, f0_test=f0_test, ridge=ridge)))
    return {}

  res = _train.fit(_PredictionLoss(apply_fn, loss_fn), params, optimizer, (x, y), steps=T,
                   evaluate=evaluate, eval_steps=steps.tolist(), progress=bool(progress),
                   desc="record_kernel_training")
  p, s = res.state.params, res.state.opt_state
  K = memo["K"]
  ran = len(res.records["loss"])
  if ran < T:
    # fit stopped the run at a non-finite loss (its NaN policy): the evaluations it never
    # reached say NaN, as a diverged kernel does above (same shapes, a result, not an error).
    while len(recs) < len(steps):
      recs.append(jax.tree_util.tree_map(lambda a: np.full(np.shape(a), np.nan), recs[-1]))
      if xt is not None:
        kr.append(np.full(np.shape(kr[-1]), np.nan))
    losses = np.concatenate([res.records["loss"], np.full(T + 1 - ran, np.nan)])
  else:
    losses = np.concatenate([res.records["loss"], [np.asarray(value_and_grad(p)[0])]])
  stacked = {key: np.stack([np.asarray(r[key]) for r in recs]) for key in recs[0]}
  vals, vecs = stacked["values"], stacked["vectors"]
  cos_final, overlap = _against_final(stacked, K, energy_k)
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
