r"""A flax training loop for any optax transformation, full batch or minibatch.

One jitted step (compiled once) updates a ``flax.training.train_state.TrainState``; the
loop logs the loss of every step, shows a tqdm progress bar (``progress=False`` turns it
off) and records train/test predictions after the requested numbers of steps.

Losses (r = f(θ, X) − Y, summed over outputs, no 1/n — the convention of
:func:`mskjax.predict_gd_mse`, so step η here is step η there):

* ``'mse'``:      ½‖r‖²; on a batch B of b points, (n/b)·½‖r_B‖² (same scale as full batch);
* ``'msk_mse'``:  ½ rᵀ S r (needs ``spectrum``); on a batch the consistent form of
  :func:`mskjax.optim.msk_mse_loss` (module docstring of :mod:`mskjax.optim`);
* a callable ``loss_fn(predictions, targets, batch_indices) -> scalar`` (``batch_indices``
  is None for the full batch).

Minibatches: each epoch is a fresh permutation of the n training points (numpy, seeded),
cut into ``n // batch_size`` batches of exactly ``batch_size`` points (the remainder is
dropped, so every step has the same shape). A step costs O(batch_size) network
evaluations plus O(batch_size·k) for ``'msk_mse'``; nothing in a step is O(n).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax
from flax.training import train_state

from mskjax import optim as _optim
from mskjax.msk import MSKSpectrum

__all__ = ["TrainResult", "train", "mse_loss", "msk_sgd_trajectory"]


class TrainResult(NamedTuple):
  """Outputs of :func:`train`.

  Attributes:
    state: the final ``flax.training.train_state.TrainState`` (``.params``,
      ``.opt_state``, ``.step``).
    loss: ``(steps,)`` numpy array, the loss evaluated at the parameters *before* each
      update (``loss[t]`` is the loss after t updates; for minibatches, of that batch).
    record_steps: ``(R,)`` numpy int array of the steps at which predictions were recorded
      (step t = after t updates; 0 = initialisation).
    train_predictions: ``(R, n, c)`` (or ``(R, n)``) outputs on ``x_train``.
    test_predictions: ``(R, m, ...)`` outputs on ``x_test``, or None without ``x_test``.
  """
  state: train_state.TrainState
  loss: np.ndarray
  record_steps: np.ndarray
  train_predictions: np.ndarray
  test_predictions: Optional[np.ndarray]


def mse_loss(predictions, targets, batch_indices=None, *, n: Optional[int] = None):
  """½‖r‖², or (n/b)·½‖r_B‖² for a batch of b of the n training points.

  Example:
    >>> import jax.numpy as jnp
    >>> float(mse_loss(jnp.ones(2), jnp.zeros(2))), float(mse_loss(jnp.ones(2), jnp.zeros(2), jnp.arange(2), n=4))
    (1.0, 2.0)
  """
  r = predictions - targets
  scale = 1.0 if batch_indices is None else n / r.shape[0]
  return scale * 0.5 * jnp.sum(r * r)


def _resolve_loss(loss, spectrum, n):
  if callable(loss):
    return loss
  if loss == "mse":
    return lambda p, y, idx: mse_loss(p, y, idx, n=n)
  if loss == "msk_mse":
    if not isinstance(spectrum, MSKSpectrum):
      raise ValueError("loss='msk_mse' needs `spectrum` (an mskjax.MSKSpectrum of the training "
                       f"Gram matrix); got {type(spectrum).__name__}.")
    return lambda p, y, idx: _optim.msk_mse_loss(p, y, spectrum, batch_indices=idx)
  raise ValueError(f"`loss` must be 'mse', 'msk_mse' or a callable loss_fn(predictions, "
                   f"targets, batch_indices); got {loss!r}.")


def _check_steps(steps, record_steps):
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"`steps` must be a non-negative int; got {steps!r}.")
  rec = np.asarray(record_steps if record_steps is not None else [], dtype=np.float64)
  if rec.ndim != 1:
    raise ValueError(f"`record_steps` must be a 1-D sequence of ints; got shape {rec.shape}.")
  if rec.size and (np.any(rec != np.round(rec)) or rec.min() < 0 or rec.max() > steps):
    raise ValueError(f"`record_steps` must be integers in [0, steps={steps}]; got "
                     f"{np.asarray(record_steps).tolist()}.")
  return int(steps), np.unique(rec.astype(np.int64))


def train(apply_fn: Callable, params, tx: optax.GradientTransformation, x_train, y_train, *,
          steps: int, loss: Union[str, Callable] = "mse",
          spectrum: Optional[MSKSpectrum] = None, batch_size: Optional[int] = None,
          seed: int = 0, record_steps: Optional[Sequence[int]] = None, x_test=None,
          progress: bool = True, desc: str = "train",
          stop_below: Optional[float] = None) -> TrainResult:
  r"""Train ``params`` with ``tx`` for ``steps`` updates (full batch or minibatch).

  Each update is ``θ ← θ + tx.update(∇_θ L, opt_state, θ)`` on a flax ``TrainState``
  (``tx`` receives ``params``, as :func:`mskjax.optim.scale_by_msk_jvp` needs). With ``loss='mse'`` and ``optax.sgd(η)`` it is
  GD on ½‖r‖², the setting of :func:`mskjax.predict_gd_mse` (same η and t).

  Args:
    apply_fn: ``apply_fn(params, x) -> (n,)`` or ``(n, c)`` (for flax:
      ``lambda p, x: model.apply({'params': p}, x)``).
    params: initial parameters (any pytree).
    tx: any optax transformation (``GradientTransformation`` or ``...ExtraArgs``).
    x_train: ``(n, d)`` training inputs.
    y_train: targets with the shape of ``apply_fn(params, x_train)``.
    steps: number of updates.
    loss: ``'mse'``, ``'msk_mse'`` or a callable (module docstring).
    spectrum: :class:`mskjax.MSKSpectrum`, required for ``loss='msk_mse'``.
    batch_size: points per step, ``1 <= batch_size <= n``; None for full batch.
    seed: seed of the minibatch permutations.
    record_steps: steps (0..steps) after which to record predictions.
    x_test: optional test inputs, predictions recorded at the same steps.
    progress: show a tqdm progress bar.
    desc: progress bar label.
    stop_below: optional early stop: training ends at the first step t whose loss
      (``loss[t]``, the loss after t updates) is below this value; the returned ``loss``
      then has length t + 1 and ``record_steps`` keeps only the steps actually reached
      (the state has had t + 1 updates). Checking costs one host sync per step.

  Returns:
    :class:`TrainResult`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> X = jnp.eye(2); Y = jnp.array([1.0, 2.0])
    >>> res = train(lambda w, x: x @ w, jnp.zeros(2), optax.sgd(0.5), X, Y, steps=2,
    ...             record_steps=[0, 2], progress=False)
    >>> res.loss.tolist(), res.train_predictions[-1].tolist()
    ([2.5, 0.625], [0.75, 1.5])
  """
  if not callable(apply_fn):
    raise TypeError(f"`apply_fn` must be callable apply_fn(params, x); got "
                    f"{type(apply_fn).__name__}.")
  if not (hasattr(tx, "init") and hasattr(tx, "update")):
    raise TypeError(f"`tx` must be an optax GradientTransformation; got {type(tx).__name__}.")
  steps, rec = _check_steps(steps, record_steps)
  x_train = jnp.asarray(x_train)
  y_train = jnp.asarray(y_train)
  n = x_train.shape[0]
  out_shape = jax.eval_shape(apply_fn, params, x_train).shape
  if tuple(y_train.shape) != tuple(out_shape):
    raise ValueError(f"`y_train` has shape {tuple(y_train.shape)} but apply_fn(params, "
                     f"x_train) has shape {tuple(out_shape)}; they must match.")
  if batch_size is not None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
        or not 1 <= batch_size <= n:
      raise ValueError(f"`batch_size` must be an int in [1, n={n}] or None; got {batch_size!r}.")
    batch_size = int(batch_size)
  if x_test is not None:
    x_test = jnp.asarray(x_test)
    if x_test.shape[1:] != x_train.shape[1:]:
      raise ValueError(f"`x_test` has shape {tuple(x_test.shape)}; its feature shape must match "
                       f"`x_train` {tuple(x_train.shape)}.")
  loss_fn = _resolve_loss(loss, spectrum, n)
  if stop_below is not None:
    stop_below = float(stop_below)
    if not np.isfinite(stop_below) or stop_below <= 0:
      raise ValueError(f"`stop_below` must be a positive finite loss value or None; got "
                       f"{stop_below!r}.")

  state = train_state.TrainState.create(apply_fn=apply_fn, params=params, tx=tx)

  def objective(p, idx):
    if idx is None:
      return loss_fn(apply_fn(p, x_train), y_train, None)
    return loss_fn(apply_fn(p, x_train[idx]), y_train[idx], idx)

  def apply(st, grads):
    # TrainState.apply_gradients without its dict-only OVERWRITE_WITH_GRADIENT hook, so any
    # params pytree (a bare array too) works; tx.update receives params.
    updates, opt_state = st.tx.update(grads, st.opt_state, st.params)
    return st.replace(step=st.step + 1, params=optax.apply_updates(st.params, updates),
                      opt_state=opt_state)

  @jax.jit
  def full_step(st):
    val, grads = jax.value_and_grad(objective)(st.params, None)
    return apply(st, grads), val

  @jax.jit
  def batch_step(st, idx):
    val, grads = jax.value_and_grad(objective)(st.params, idx)
    return apply(st, grads), val

  predict = jax.jit(apply_fn)

  train_rec, test_rec = [], []

  def record(p):
    train_rec.append(np.asarray(predict(p, x_train)))
    if x_test is not None:
      test_rec.append(np.asarray(predict(p, x_test)))

  rng = np.random.default_rng(seed)
  batches, cursor = None, 0
  losses = []
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, desc=desc, leave=False)
  rec_set = set(rec.tolist())
  try:
    for t in range(steps):
      if t in rec_set:
        record(state.params)
      if batch_size is None:
        state, val = full_step(state)
      else:
        if batches is None or cursor == len(batches):
          perm = rng.permutation(n)
          batches = perm[:(n // batch_size) * batch_size].reshape(-1, batch_size)
          cursor = 0
        state, val = batch_step(state, jnp.asarray(batches[cursor]))
        cursor += 1
      losses.append(val)
      if bar is not None:
        bar.update(1)
        if t % 50 == 0 or t == steps - 1:
          bar.set_postfix(loss=f"{float(val):.4g}")
      if stop_below is not None and float(val) < stop_below:
        rec = rec[rec <= t]
        break
    else:
      if steps in rec_set:
        record(state.params)
  finally:
    if bar is not None:
      bar.close()
  loss_arr = np.asarray(jnp.stack(losses)) if losses else np.zeros((0,))
  empty = (0,) + tuple(out_shape)
  train_p = np.stack(train_rec) if train_rec else np.zeros(empty)
  test_p = None
  if x_test is not None:
    test_p = np.stack(test_rec) if test_rec else np.zeros((0, x_test.shape[0]) + tuple(out_shape[1:]))
  return TrainResult(state, loss_arr, rec, train_p, test_p)


def msk_sgd_trajectory(apply_fn: Callable, x_train, y_train, steps: int, *, x_eval=None):
  r"""A jitted ``run(params, learning_rate, spectrum) -> predictions after 0..steps updates``.

  Full-batch :func:`mskjax.optim.msk_sgd_jvp` on ½‖f(X) − Y‖² — the update of :func:`train`
  with ``tx = msk_sgd_jvp(η, apply_fn, x_train, spectrum)`` — run inside one ``lax.scan``, so
  recording every step costs nothing extra and ``η`` and the spectrum are *traced*
  arguments: sweeping learning rates, modifiers or seeds does not recompile (one
  compilation per shape). A spectrum with ``new_values = values`` is plain GD
  (S = I). Use :func:`train` for other optimisers, losses or minibatches.

  Args:
    apply_fn: ``apply_fn(params, x) -> (n,)`` or ``(n, c)``.
    x_train: ``(n, d)`` training inputs.
    y_train: targets with the shape of ``apply_fn(params, x_train)``.
    steps: number of updates (>= 0).
    x_eval: inputs on which predictions are returned (default ``x_train``); e.g.
      ``concatenate([x_train, x_test])``.

  Returns:
    ``run(params, learning_rate, spectrum)`` → ``(steps + 1, m, ...)`` array: row t is
    ``apply_fn(params_t, x_eval)`` after t updates.

  Example:
    >>> import jax.numpy as jnp, mskjax
    >>> X = jnp.diag(jnp.array([2.0, 1.0])); Y = jnp.array([1.0, 2.0])
    >>> f = lambda w, x: x @ w                    # NTK = X Xᵀ = diag(4, 1)
    >>> spec = mskjax.msk_spectrum(X @ X.T, mskjax.modifiers.scale(0.5), 1)  # S = diag(.5, 1)
    >>> run = msk_sgd_trajectory(f, X, Y, 2)      # f ← f − η K S r, K S = diag(2, 1)
    >>> run(jnp.zeros(2), 0.25, spec).tolist()
    [[0.0, 0.0], [0.5, 0.5], [0.75, 0.875]]
  """
  if not callable(apply_fn):
    raise TypeError(f"`apply_fn` must be callable apply_fn(params, x); got "
                    f"{type(apply_fn).__name__}.")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"`steps` must be a non-negative int; got {steps!r}.")
  x_train = jnp.asarray(x_train)
  y_train = jnp.asarray(y_train)
  x_eval = x_train if x_eval is None else jnp.asarray(x_eval)

  def loss(p):
    r = apply_fn(p, x_train) - y_train
    return 0.5 * jnp.sum(r * r)

  @jax.jit
  def run(params, learning_rate, spectrum: MSKSpectrum):
    tx = _optim.msk_sgd_jvp(learning_rate, apply_fn, x_train, MSKSpectrum(*spectrum))

    def step(carry, _):
      p, s = carry
      updates, s = tx.update(jax.grad(loss)(p), s, p)
      p = optax.apply_updates(p, updates)
      return (p, s), apply_fn(p, x_eval)

    _, preds = lax.scan(step, (params, tx.init(params)), None, length=int(steps))
    return jnp.concatenate([apply_fn(params, x_eval)[None], preds])

  return run
