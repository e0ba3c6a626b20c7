r"""The one training loop: any optax transformation, any loss, full batch or minibatches.

:func:`fit` runs training in jitted chunks (a ``lax.while_loop`` of at most ``chunk`` steps,
compiled once per shape and reused across calls, the chunk length itself is a traced
argument), records per-step values (the loss and anything the loss returns as ``aux``),
calls evaluation hooks at chosen steps between chunks (test accuracy, test loss, kernel
snapshots, ...), stops early on a per-step value (inside the compiled loop, at the exact
step) or on an evaluated metric, and resumes from its returned :class:`LoopState` (params,
optimiser state, step and the position of the minibatch iterator): training T₁ steps and
then T₂ more from the returned state gives the same parameters, bit for bit, as T₁ + T₂
steps at once.

Minibatches come from a seeded shuffling iterator that lives in the state: each epoch is a
fresh ``jax.random.permutation`` of the n training points cut into ``n // batch_size``
batches of exactly ``batch_size`` points (the remainder of an epoch is dropped, so every
step has the same shape). The loss receives the batch and its indices into the training
set (:func:`mskjax.optim.msk_mse_loss` needs them); nothing in a step is O(n) except the
permutation drawn once per epoch.

:func:`train` is the same loop for the common case ``apply_fn(params, x)`` with targets
``y`` and a named loss. Losses there (r = f(θ, X) − Y, summed over outputs, no 1/n — the
convention of :func:`mskjax.predict_gd_mse`, so step η here is step η there):

* ``'mse'``:      ½‖r‖²; on a batch B of b points, (n/b)·½‖r_B‖² (same scale as full batch);
* ``'msk_mse'``:  ½ rᵀ S r (needs ``spectrum``); on a batch the consistent form of
  :func:`mskjax.optim.msk_mse_loss` (module docstring of :mod:`mskjax.optim`);
* a callable ``loss_fn(predictions, targets, batch_indices) -> scalar`` (``batch_indices``
  is None for the full batch).

Compilation: the chunk is jitted with the loss and the transformation as *static*
arguments, so the same loss function and the same ``tx`` object (and the same data shapes)
never recompile — across chunks, calls and resumptions. A new ``optax.sgd(lr)`` object is
a new transformation and compiles anew; to sweep hyper-parameters without recompiling,
pass ``tx`` as a factory ``tx(hparams) -> GradientTransformation`` together with a traced
``hparams`` pytree (or use ``optax.inject_hyperparams``).
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax

from mskjax import _validate
from mskjax import diagnostics as _diagnostics
from mskjax import kernels as _kernels
from mskjax import optim as _optim
from mskjax.msk import MSKSpectrum
from mskjax.spectrum import Eigenpairs as _Eigenpairs

__all__ = ["Sampler", "LoopState", "FitResult", "init_state", "fit", "TrainResult", "train",
           "mse_loss", "log_spaced_steps", "KernelRecord", "record_kernel_training"]


class Sampler(NamedTuple):
  """Position of the shuffling minibatch iterator (part of :class:`LoopState`).

  Attributes:
    key: PRNG key (``uint32[2]``) from which the next epoch's permutation is drawn.
    perm: ``(n,)`` int32 permutation of the current epoch.
    cursor: int32, index of the next batch in ``perm`` (``n // b`` = epoch exhausted).
    epoch: int32, number of permutations drawn so far.
  """
  key: jax.Array
  perm: jax.Array
  cursor: jax.Array
  epoch: jax.Array


class LoopState(NamedTuple):
  """Everything :func:`fit` needs to continue: pass it back as ``state=`` to resume.

  Attributes:
    params: parameters (any pytree).
    opt_state: the optax state.
    step: int32 number of updates done.
    sampler: :class:`Sampler` for minibatches, None for full batch.
  """
  params: Any
  opt_state: Any
  step: jax.Array
  sampler: Optional[Sampler]


class FitResult(NamedTuple):
  """Outputs of :func:`fit`.

  Attributes:
    state: the final :class:`LoopState` (resume from it).
    records: dict of per-step numpy arrays over the steps run by this call: ``'step'``
      (t = number of updates before it), ``'loss'`` (the loss at the parameters of step t,
      on that step's batch), every ``aux`` entry of the loss, and ``'time'`` (cumulative
      training wall time at the end of step t, linear within a chunk).
    history: dict of numpy arrays over the evaluations: ``'step'``, ``'time'`` (training
      wall time spent before it, evaluations and compilation excluded) and every key the
      ``evaluate`` hook returned (stacked).
    stopped: None, or why training ended early: ``'stop_below:KEY'``, ``'stop_above:KEY'``
      or ``'stop_eval'``.
    compile_s: seconds spent compiling (0 when the chunk was already compiled).
    train_s: training wall time of this call (compilation and evaluations excluded).
    eval_s: wall time of the evaluation hooks.
  """
  state: LoopState
  records: dict
  history: dict
  stopped: Optional[str]
  compile_s: float
  train_s: float
  eval_s: float


def _is_transformation(tx):
  return hasattr(tx, "init") and hasattr(tx, "update")


def _num_points(data):
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError("`data` must be a pytree of arrays with a leading axis of n points "
                     "(e.g. (x, y)); got no arrays.")
  ns = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
  if len(ns) != 1 or None in ns:
    raise ValueError("every array in `data` must have the same leading axis (n points); got "
                     f"shapes {[tuple(np.shape(a)) for a in leaves]}.")
  return int(ns.pop())


def _check_int(name, v, lo, hi=None, none_ok=False):
  if v is None and none_ok:
    return None
  return _validate.check_int(v, name, lo=lo, hi=hi)


def init_state(params, tx, n: int, *, batch_size: Optional[int] = None, seed: int = 0,
               hparams=None) -> LoopState:
  """A fresh :class:`LoopState`: ``tx.init(params)``, step 0, a seeded iterator over n points.

  Args:
    params: initial parameters.
    tx: optax transformation, or a factory ``tx(hparams)`` (then ``hparams`` is required).
    n: number of training points.
    batch_size: None for full batch, else the minibatch size (``1 <= b <= n``).
    seed: seed of the minibatch permutations.
    hparams: traced hyper-parameters of a ``tx`` factory.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> st = init_state(jnp.zeros(2), optax.sgd(0.1), 10, batch_size=4)
    >>> int(st.step), int(st.sampler.cursor), st.sampler.perm.shape
    (0, 2, (10,))
  """
  n = _check_int("n", n, 1)
  batch_size = _check_int("batch_size", batch_size, 1, n, none_ok=True)
  transform = tx if _is_transformation(tx) else tx(hparams)
  sampler = None
  if batch_size is not None:
    # cursor = n // b: the epoch is exhausted, so the first step draws a permutation.
    sampler = Sampler(jax.random.PRNGKey(int(seed)), jnp.arange(n, dtype=jnp.int32),
                      jnp.asarray(n // batch_size, jnp.int32), jnp.zeros((), jnp.int32))
  return LoopState(params, transform.init(params), jnp.zeros((), jnp.int32), sampler)


@functools.partial(jax.jit, static_argnames=("loss_fn", "tx", "factory", "batch_size",
                                             "has_aux", "chunk", "below_keys", "above_keys"))
def _run_chunk(state, data, hparams, num, below, above, *, loss_fn, tx, factory, batch_size,
               has_aux, chunk, below_keys, above_keys):
  """At most ``chunk`` steps (``num`` traced); per-step records in (chunk, ...) buffers."""
  transform = tx(hparams) if factory else tx

  def sample(sampler):
    n = sampler.perm.shape[0]

    def new_epoch(s):
      key, sub = jax.random.split(s.key)
      perm = jax.random.permutation(sub, n).astype(jnp.int32)
      return Sampler(key, perm, jnp.zeros_like(s.cursor), s.epoch + 1)

    sampler = lax.cond(sampler.cursor >= n // batch_size, new_epoch, lambda s: s, sampler)
    idx = lax.dynamic_slice(sampler.perm, (sampler.cursor * batch_size,), (batch_size,))
    return idx, sampler._replace(cursor=sampler.cursor + 1)

  def one(st):
    if batch_size is None:
      batch, idx, sampler = data, None, st.sampler
    else:
      idx, sampler = sample(st.sampler)
      batch = jax.tree.map(lambda a: a[idx], data)
    out, grads = jax.value_and_grad(lambda p: loss_fn(p, batch, idx), has_aux=has_aux)(
        st.params)
    loss, aux = out if has_aux else (out, {})
    rec = {"loss": loss, **{k: v for k, v in aux.items() if v is not None}}
    stop = jnp.zeros((), bool)
    for k in below_keys:
      stop = stop | (rec[k] < below[k])
    for k in above_keys:
      stop = stop | ~(rec[k] <= above[k])          # NaN counts as above
    updates, opt_state = transform.update(grads, st.opt_state, st.params)
    new = LoopState(optax.apply_updates(st.params, updates), opt_state, st.step + 1, sampler)
    if below_keys or above_keys:                   # a stopping step keeps the old state
      new = jax.tree.map(lambda a, b: jnp.where(stop, a, b), st, new)
    return new, rec, stop

  shapes = jax.eval_shape(lambda s: one(s)[1], state)
  bufs = {k: jnp.zeros((chunk,) + v.shape, v.dtype) for k, v in shapes.items()}

  def cond(c):
    i, _, _, stopped = c
    return (i < num) & ~stopped

  def body(c):
    i, st, bufs, _ = c
    st, rec, stop = one(st)
    bufs = {k: bufs[k].at[i].set(rec[k]) for k in bufs}
    return i + 1, st, bufs, stop

  i, state, bufs, stopped = lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), state, bufs, jnp.zeros((), bool)))
  return state, bufs, i, stopped


def _thresholds(name, spec):
  if spec is None:
    return (), {}
  if not isinstance(spec, Mapping):
    raise TypeError(f"`{name}` must be a dict {{record key: threshold}} or None; got "
                    f"{type(spec).__name__}.")
  keys = tuple(sorted(spec))
  return keys, {k: jnp.asarray(float(spec[k])) for k in keys}


def fit(loss_fn: Callable, params, tx, data, *, steps: int,
        batch_size: Optional[int] = None, seed: int = 0, has_aux: bool = False,
        hparams=None, state: Optional[LoopState] = None,
        evaluate: Optional[Callable[[LoopState], dict]] = None,
        eval_every: Optional[int] = None, eval_steps: Optional[Sequence[int]] = None,
        stop_below: Optional[Mapping[str, float]] = None,
        stop_above: Optional[Mapping[str, float]] = None,
        stop_eval: Optional[Callable[[dict], bool]] = None,
        chunk: int = 100, progress: bool = False, desc: str = "train") -> FitResult:
  r"""Train for ``steps`` updates: ``θ ← θ + u``, ``(u, s) = tx.update(∇_θ L_B(θ), s, θ)``.

  L_B(θ) = ``loss_fn(θ, batch, indices)``: with ``batch_size=None`` the batch is ``data``
  and ``indices`` is None; otherwise ``batch`` is ``data`` restricted (on every leaf's
  leading axis) to the ``indices`` (``(b,)`` int32) drawn by the shuffling iterator.
  ``optax.sgd(η)`` with ``loss_fn = ½‖f(θ, X) − Y‖²`` is plain GD, the setting of
  :func:`mskjax.predict_gd_mse`.

  Args:
    loss_fn: ``loss_fn(params, batch, indices) -> scalar``, or ``-> (scalar, aux)`` with
      ``has_aux=True`` where ``aux`` is a dict of arrays recorded at every step (e.g. the
      train residual, or the predictions). Keep the same function object across calls:
      it is a static argument of the compiled chunk.
    params: initial parameters (None when resuming from ``state``).
    tx: an optax ``GradientTransformation`` (receives ``params`` in ``update``), or a
      factory ``tx(hparams) -> GradientTransformation``.
    data: pytree of arrays with a leading axis of n points, e.g. ``(x, y)``.
    steps: number of updates to run in this call (>= 0).
    batch_size: None (full batch) or the minibatch size ``1 <= b <= n``.
    seed: seed of the minibatch permutations (ignored when resuming: the state has it).
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    hparams: pytree of traced hyper-parameters for a ``tx`` factory (a new value does not
      recompile).
    state: a :class:`LoopState` returned by an earlier call, to resume from.
    evaluate: hook ``evaluate(state) -> dict`` (host side; jit what it computes), called
      at step 0 of a fresh run, at every step in ``eval_steps`` or multiple of
      ``eval_every``, when training stops early, and at the last step of the call.
    eval_every, eval_steps: the evaluation schedule (absolute step numbers).
    stop_below: ``{key: threshold}``: stop at the first step whose record ``key`` ('loss'
      or an ``aux`` key) is below the threshold. The state returned is that of this step
      (its update is not applied), so ``records[key][-1] < threshold``. Checked inside the
      compiled loop (thresholds are traced: new values do not recompile).
    stop_above: same, stop when the record is above the threshold or not finite
      (divergence).
    stop_eval: ``stop_eval(metrics) -> bool`` on each evaluation's dict: stop when True.
    chunk: most steps per compiled call (a static buffer size; the number of steps of a
      call is traced, so evaluation points never recompile).
    progress: show a tqdm progress bar (off by default; the runner turns it on).
    desc: progress bar label.

  Returns:
    :class:`FitResult`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> loss = lambda w, b, idx: 0.5 * jnp.sum((b[0] @ w - b[1]) ** 2)
    >>> data = (jnp.eye(2), jnp.array([1.0, 2.0]))
    >>> res = fit(loss, jnp.zeros(2), optax.sgd(0.5), data, steps=2,
    ...           evaluate=lambda s: {'w': s.params}, eval_every=1)
    >>> res.records['loss'].tolist(), res.history['w'].tolist()
    ([2.5, 0.625], [[0.0, 0.0], [0.5, 1.0], [0.75, 1.5]])
    >>> more = fit(loss, None, optax.sgd(0.5), data, steps=1, state=res.state)  # resume
    >>> int(more.state.step), more.state.params.tolist()
    (3, [0.875, 1.75])

  Reference: the loop shape of ``optax``'s examples and ``flax.training``; minibatch
  step-size scaling: Ma, Bassily & Belkin, *The Power of Interpolation*, ICML 2018.
  """
  if not callable(loss_fn):
    raise TypeError(f"`loss_fn` must be callable loss_fn(params, batch, indices); got "
                    f"{type(loss_fn).__name__}.")
  factory = not _is_transformation(tx)
  if factory and not callable(tx):
    raise TypeError("`tx` must be an optax GradientTransformation or a factory "
                    f"tx(hparams) -> GradientTransformation; got {type(tx).__name__}.")
  if factory and hparams is None:
    raise ValueError("`tx` is a factory tx(hparams): pass `hparams` (or pass an optax "
                     "GradientTransformation as `tx`).")
  steps = _check_int("steps", steps, 0)
  chunk = _check_int("chunk", chunk, 1)
  data = jax.tree.map(jnp.asarray, data)
  n = _num_points(data)
  batch_size = _check_int("batch_size", batch_size, 1, n, none_ok=True)
  if state is None:
    if params is None:
      raise ValueError("pass `params` (a fresh run) or `state` (to resume); got neither.")
    state = init_state(params, tx, n, batch_size=batch_size, seed=seed, hparams=hparams)
  else:
    if not isinstance(state, LoopState):
      raise TypeError(f"`state` must be a LoopState from an earlier fit; got "
                      f"{type(state).__name__}.")
    if params is not None:
      raise ValueError("pass either `params` (a fresh run) or `state` (to resume), not both.")
    if (state.sampler is None) != (batch_size is None) or (
        state.sampler is not None and state.sampler.perm.shape[0] != n):
      raise ValueError("`state` was made for a different `batch_size` or data size; resume "
                       "with the batch_size and data of the run that produced it.")
  below_keys, below = _thresholds("stop_below", stop_below)
  above_keys, above = _thresholds("stop_above", stop_above)
  sched = set()
  if eval_every is not None:
    eval_every = _check_int("eval_every", eval_every, 1)
  if eval_steps is not None:
    es = np.asarray(list(eval_steps), dtype=np.float64)
    if es.ndim != 1 or np.any(es != np.round(es)) or np.any(es < 0):
      raise ValueError(f"`eval_steps` must be non-negative integers; got {list(eval_steps)}.")
    sched = set(int(v) for v in es)
  if stop_eval is not None and evaluate is None:
    raise ValueError("`stop_eval` needs an `evaluate` hook.")

  start = int(state.step)
  end = start + steps
  call = functools.partial(
      _run_chunk, loss_fn=loss_fn, tx=tx, factory=factory, batch_size=batch_size,
      has_aux=has_aux, chunk=chunk, below_keys=below_keys, above_keys=above_keys)
  hp = hparams if factory else None
  t0 = time.perf_counter()
  jax.block_until_ready(call(state, data, hp, jnp.zeros((), jnp.int32), below, above))
  compile_s = time.perf_counter() - t0   # a zero-step call: compilation (or a cache hit)

  history, records = [], []
  train_s = eval_s = 0.0
  stopped = None

  def do_eval(st, t):
    nonlocal eval_s
    t1 = time.perf_counter()
    m = jax.device_get(evaluate(st))
    eval_s += time.perf_counter() - t1
    history.append({"step": t, "time": train_s, **m})
    return m

  def next_eval(t):
    cands = [v for v in sched if v > t]
    if eval_every is not None:
      cands.append((t // eval_every + 1) * eval_every)
    return min(cands) if cands else end

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, desc=desc, leave=False)
  try:
    if evaluate is not None and start == 0:
      m = do_eval(state, 0)
      if stop_eval is not None and stop_eval(m):
        stopped = "stop_eval"
    t = start
    while t < end and stopped is None:
      num = min(t + chunk, end, next_eval(t)) - t
      t1 = time.perf_counter()
      state, bufs, ran, hit = call(state, data, hp, jnp.asarray(num, jnp.int32), below, above)
      bufs = jax.device_get(bufs)                   # waits for the chunk
      dt = time.perf_counter() - t1
      ran = int(ran)
      rec = {k: v[:ran] for k, v in bufs.items()}
      rec["step"] = np.arange(t, t + ran)
      rec["time"] = train_s + dt * np.arange(1, ran + 1) / max(ran, 1)
      records.append(rec)
      train_s += dt
      t += ran if not bool(hit) else ran - 1        # a stopping step does not update
      if bar is not None:
        bar.update(ran)
        bar.set_postfix(loss=f"{float(rec['loss'][-1]):.4g}" if ran else "")
      if bool(hit):
        last = {k: rec[k][-1] for k in below_keys + above_keys}
        stopped = next((f"stop_below:{k}" for k in below_keys if last[k] < below[k]),
                       None) or next(f"stop_above:{k}" for k in above_keys
                                     if not last[k] <= above[k])
      due = stopped is not None or t in sched or t == end or (
          eval_every is not None and t % eval_every == 0)
      if evaluate is not None and due and not (history and history[-1]["step"] == t):
        m = do_eval(state, t)
        if stopped is None and stop_eval is not None and stop_eval(m):
          stopped = "stop_eval"
  finally:
    if bar is not None:
      bar.close()
  if records:
    rec_out = {k: np.concatenate([r[k] for r in records]) for k in records[0]}
  else:
    shapes = jax.eval_shape(lambda: call(state, data, hp, jnp.zeros((), jnp.int32), below,
                                         above)[1])
    rec_out = {k: np.zeros((0,) + v.shape[1:], v.dtype) for k, v in shapes.items()}
    rec_out["step"] = np.zeros((0,), np.int64)
    rec_out["time"] = np.zeros((0,))
  hist_out = {}
  if history:
    hist_out = {k: np.stack([np.asarray(h[k]) for h in history]) for k in history[0]}
  return FitResult(state, rec_out, hist_out, stopped, compile_s, train_s, eval_s)


# ------------------------------------------------------------------ apply_fn + targets

class TrainResult(NamedTuple):
  """Outputs of :func:`train`.

  Attributes:
    state: the final :class:`LoopState` (``.params``, ``.opt_state``, ``.step``).
    loss: ``(steps,)`` numpy array, the loss evaluated at the parameters *before* each
      update (``loss[t]`` is the loss after t updates; for minibatches, of that batch).
    record_steps: ``(R,)`` numpy int array of the steps at which predictions were recorded
      (step t = after t updates; 0 = initialisation).
    train_predictions: ``(R, n, c)`` (or ``(R, n)``) outputs on ``x_train``.
    test_predictions: ``(R, m, ...)`` outputs on ``x_test``, or None without ``x_test``.
    fit: the :class:`FitResult` of the loop (timings, stop reason).
  """
  state: LoopState
  loss: np.ndarray
  record_steps: np.ndarray
  train_predictions: np.ndarray
  test_predictions: Optional[np.ndarray]
  fit: Optional[FitResult] = None


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


class _MSE(NamedTuple):       # hashable by value: the same n reuses the compiled chunk
  n: int

  def __call__(self, p, y, idx):
    return mse_loss(p, y, idx, n=self.n)


class _ModelLoss(NamedTuple):  # loss_fn(params, (x, y), idx) for fit, equal by its fields
  apply_fn: Callable
  loss: Callable

  def __call__(self, params, batch, idx):
    return self.loss(self.apply_fn(params, batch[0]), batch[1], idx)


def _resolve_loss(loss, spectrum, n):
  if callable(loss):
    return loss
  if loss == "mse":
    return _MSE(n)
  if loss == "msk_mse":
    if not isinstance(spectrum, MSKSpectrum):
      raise ValueError("loss='msk_mse' needs `spectrum` (an mskjax.MSKSpectrum of the training "
                       f"Gram matrix); got {type(spectrum).__name__}.")
    return lambda p, y, idx: _optim.msk_mse_loss(p, y, spectrum, batch_indices=idx)
  raise ValueError(f"`loss` must be 'mse', 'msk_mse' or a callable loss_fn(predictions, "
                   f"targets, batch_indices); got {loss!r}.")


def _check_record_steps(steps, record_steps):
  rec = np.asarray(record_steps if record_steps is not None else [], dtype=np.float64)
  if rec.ndim != 1:
    raise ValueError(f"`record_steps` must be a 1-D sequence of ints; got shape {rec.shape}.")
  if rec.size and (np.any(rec != np.round(rec)) or rec.min() < 0 or rec.max() > steps):
    raise ValueError(f"`record_steps` must be integers in [0, steps={steps}]; got "
                     f"{np.asarray(record_steps).tolist()}.")
  return np.unique(rec.astype(np.int64))


def train(apply_fn: Callable, params, tx, x_train, y_train, *,
          steps: int, loss: Union[str, Callable] = "mse",
          spectrum: Optional[MSKSpectrum] = None, batch_size: Optional[int] = None,
          seed: int = 0, record_steps: Optional[Sequence[int]] = None, x_test=None,
          progress: bool = False, desc: str = "train",
          stop_below: Optional[float] = None, chunk: int = 100) -> TrainResult:
  r""":func:`fit` for a model ``apply_fn(params, x)``, targets ``y`` and a named loss.

  Each update is ``θ ← θ + tx.update(∇_θ L, opt_state, θ)`` (``tx`` receives ``params``, as
  :func:`mskjax.optim.scale_by_msk_jvp` needs). With ``loss='mse'`` and ``optax.sgd(η)`` it
  is GD on ½‖r‖², the setting of :func:`mskjax.predict_gd_mse` (same η and t).

  Args:
    apply_fn: ``apply_fn(params, x) -> (n,)`` or ``(n, c)`` (for flax:
      ``lambda p, x: model.apply({'params': p}, x)``).
    params: initial parameters (any pytree).
    tx: any optax transformation (``GradientTransformation`` or ``...ExtraArgs``).
    x_train: ``(n, ...)`` training inputs.
    y_train: targets with the shape of ``apply_fn(params, x_train)``.
    steps: number of updates.
    loss: ``'mse'``, ``'msk_mse'`` or a callable (module docstring).
    spectrum: :class:`mskjax.MSKSpectrum`, required for ``loss='msk_mse'``.
    batch_size: points per step, ``1 <= batch_size <= n``; None for full batch.
    seed: seed of the minibatch permutations.
    record_steps: steps (0..steps) after which to record predictions.
    x_test: optional test inputs, predictions recorded at the same steps.
    progress: show a tqdm progress bar (off by default).
    desc: progress bar label.
    stop_below: optional early stop: training ends at the first step t whose loss
      (``loss[t]``, the loss after t updates) is below this value; the returned ``loss``
      then has length t + 1, the state has had t updates and ``record_steps`` keeps only
      the steps reached (checked inside the compiled loop).
    chunk: most steps per compiled call of the loop.

  Returns:
    :class:`TrainResult`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> X = jnp.eye(2); Y = jnp.array([1.0, 2.0])
    >>> res = train(lambda w, x: x @ w, jnp.zeros(2), optax.sgd(0.5), X, Y, steps=2,
    ...             record_steps=[0, 2])
    >>> res.loss.tolist(), res.train_predictions[-1].tolist()
    ([2.5, 0.625], [0.75, 1.5])
  """
  if not callable(apply_fn):
    raise TypeError(f"`apply_fn` must be callable apply_fn(params, x); got "
                    f"{type(apply_fn).__name__}.")
  if not _is_transformation(tx):
    raise TypeError(f"`tx` must be an optax GradientTransformation; got {type(tx).__name__}.")
  steps = _check_int("steps", steps, 0)
  rec = _check_record_steps(steps, record_steps)
  x_train = jnp.asarray(x_train)
  y_train = jnp.asarray(y_train)
  for arr, name in ((x_train, "x_train"), (y_train, "y_train")):
    _validate.check_finite(arr, name)    # NaN policy: reject at the boundary
  n = x_train.shape[0]
  out_shape = jax.eval_shape(apply_fn, params, x_train).shape
  if tuple(y_train.shape) != tuple(out_shape):
    raise ValueError(f"`y_train` has shape {tuple(y_train.shape)} but apply_fn(params, "
                     f"x_train) has shape {tuple(out_shape)}; they must match.")
  batch_size = _check_int("batch_size", batch_size, 1, n, none_ok=True)
  if x_test is not None:
    x_test = jnp.asarray(x_test)
    _validate.check_finite(x_test, "x_test")
    if x_test.shape[1:] != x_train.shape[1:]:
      raise ValueError(f"`x_test` has shape {tuple(x_test.shape)}; its feature shape must match "
                       f"`x_train` {tuple(x_train.shape)}.")
  loss_fn = _ModelLoss(apply_fn, _resolve_loss(loss, spectrum, n))
  stop = None
  if stop_below is not None:
    stop_below = float(stop_below)
    if not np.isfinite(stop_below) or stop_below <= 0:
      raise ValueError(f"`stop_below` must be a positive finite loss value or None; got "
                       f"{stop_below!r}.")
    stop = {"loss": stop_below}
  predict = _jit_apply(apply_fn)

  def evaluate(st):
    out = {"train": predict(st.params, x_train)}
    if x_test is not None:
      out["test"] = predict(st.params, x_test)
    return out

  res = fit(loss_fn, params, tx, (x_train, y_train), steps=steps, batch_size=batch_size,
            seed=seed, evaluate=evaluate if rec.size else None, eval_steps=rec.tolist(),
            stop_below=stop, chunk=chunk, progress=progress, desc=desc)
  h = res.history
  keep = np.isin(h["step"], rec) if h else np.zeros(0, bool)
  rec = h["step"][keep].astype(np.int64) if h else rec[:0]
  empty = (0,) + tuple(out_shape)
  train_p = h["train"][keep] if h else np.zeros(empty)
  test_p = None
  if x_test is not None:
    test_p = h["test"][keep] if h else np.zeros((0, x_test.shape[0]) + tuple(out_shape[1:]))
  return TrainResult(res.state, res.records["loss"], rec, train_p, test_p, res)


@functools.lru_cache(maxsize=64)
def _jit_apply(apply_fn):
  return jax.jit(apply_fn)


# ------------------------------------------------- kernel recorder (an evaluation hook of fit)

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
  Θ_D = J D Jᵀ, e.g. :func:`mskjax.optim.adam_kernel_weights`), reduced to scalars (norm, alignment,
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
    >>> rec = mskjax.train.record_kernel_training(f, {'w': jnp.zeros((3, 1))}, optax.sgd(0.5),
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
  xp = x if same_probe else _validate.as_float_array(x_probe, "x_probe", ndim=2)
  if y_probe is None:
    if not same_probe:
      raise ValueError("`y_probe` is required when `x_probe` is given.")
    yp = y
  else:
    yp = _validate.as_float_array(y_probe, "y_probe", ndim=(1, 2))
    yp = yp[:, None] if yp.ndim == 1 else yp
    _validate.check_rows(yp, xp.shape[0], "y_probe", "x_probe")
  n = xp.shape[0]
  k = n if top_k is None else _validate.check_int(top_k, "top_k", lo=1, hi=n)
  energy_k = _validate.check_int(energy_k, "energy_k", lo=1, hi=k)
  if record_steps is None:
    steps = log_spaced_steps(T, num_records)
  else:
    steps = np.asarray(list(record_steps), dtype=int)
    if steps.ndim != 1 or np.any(steps < 0) or np.any(steps > T):
      raise ValueError(f"`record_steps` must be integers in [0, num_steps = {T}].")
    steps = np.unique(np.concatenate([[0], steps, [T]]))
  xt = None if x_test is None else _validate.as_float_array(x_test, "x_test", ndim=2)

  objective = lambda p: loss_fn(apply_fn(p, x), y)
  value_and_grad = jax.jit(jax.value_and_grad(objective))

  def kernel(p, s, a, b=None):
    w = None
    if kernel_weights_fn is not None:
      w = kernel_weights_fn(p, s, value_and_grad(p)[1])
    return _kernels.empirical_ntk(apply_fn, p, a, b, weights=w)

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

  res = fit(_PredictionLoss(apply_fn, loss_fn), params, optimizer, (x, y), steps=T,
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
