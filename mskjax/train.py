r"""The one training loop: any optax transformation, any loss, full batch or minibatches.

:func:`fit` runs training in jitted chunks (a ``lax.while_loop`` of at most ``chunk`` steps,
compiled once per shape and reused across calls, the chunk length itself is a traced
argument) — or, for steps with convolutions on the CPU, where XLA runs them inside compiled
loops on a slow path, as a Python loop over the same jitted step (``loop='auto'``, bit-for-bit
the same run), records per-step values (the loss and anything the loss returns as ``aux``),
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
set (a loss that weights points by a Gram-matrix eigenbasis, such as
``msk_mse_loss``, needs them); nothing in a step is O(n) except the permutation drawn
once per epoch.

:func:`train` is the same loop for the common case ``apply_fn(params, x)`` with targets
``y``. Its losses (r = f(θ, X) − Y, summed over outputs, no 1/n — the convention of
:func:`mskjax.predict_gd_mse`, so step η here is step η there):

* ``'mse'``:      ½‖r‖²; on a batch B of b points, (n/b)·½‖r_B‖² (same scale as full batch);
* a callable ``loss_fn(predictions, targets, batch_indices) -> scalar`` (``batch_indices``
  is None for the full batch), e.g. ½ rᵀ S r with an MSK spectrum:
  ``lambda p, y, idx: msk_mse_loss(p, y, spectrum, batch_indices=idx)``.

The loop takes the loss and the transformation as callables and imports no optimizer.

Compilation: the chunk is jitted with the loss and the transformation as *static*
arguments, so the same loss function and the same ``tx`` object (and the same data shapes)
never recompile — across chunks, calls and resumptions. A new ``optax.sgd(lr)`` object is
a new transformation and compiles anew; to sweep hyper-parameters without recompiling,
pass ``tx`` as a factory ``tx(hparams) -> GradientTransformation`` together with a traced
``hparams`` pytree (or use ``optax.inject_hyperparams``).
"""
from __future__ import annotations

import functools
import inspect
import time
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax

from mskjax import _loops
from mskjax import _validate

__all__ = ["Sampler", "LoopState", "FitResult", "init_state", "fit", "TrainResult", "train",
           "mse_loss"]


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
    stopped: None, or why training ended early: ``'stop_below:KEY'``, ``'stop_above:KEY'``,
      ``'stop_eval'`` or ``'nonfinite:loss'`` (NaN policy in :func:`fit`).
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


_STATIC = ("loss_fn", "tx", "factory", "batch_size", "has_aux", "below_keys", "above_keys")


def _make_step(loss_fn, tx, factory, batch_size, has_aux, below_keys, above_keys):
  """``one(state, data, hparams, below, above) -> (state', record, stop)``: one update.

  The single definition of a step, used by both loop modes (the compiled chunk and the
  Python loop), so their records and states agree. ``stop`` is True when a threshold is
  crossed or the loss is not finite; a stopping step keeps the old state."""

  def sample(sampler):
    n = sampler.perm.shape[0]

    def new_epoch(s):
      key, sub = jax.random.split(s.key)
      perm = jax.random.permutation(sub, n).astype(jnp.int32)
      return Sampler(key, perm, jnp.zeros_like(s.cursor), s.epoch + 1)

    sampler = lax.cond(sampler.cursor >= n // batch_size, new_epoch, lambda s: s, sampler)
    idx = lax.dynamic_slice(sampler.perm, (sampler.cursor * batch_size,), (batch_size,))
    return idx, sampler._replace(cursor=sampler.cursor + 1)

  def one(st, data, hparams, below, above):
    transform = tx(hparams) if factory else tx
    if batch_size is None:
      batch, idx, sampler = data, None, st.sampler
    else:
      idx, sampler = sample(st.sampler)
      batch = jax.tree.map(lambda a: a[idx], data)
    out, grads = jax.value_and_grad(lambda p: loss_fn(p, batch, idx), has_aux=has_aux)(
        st.params)
    loss, aux = out if has_aux else (out, {})
    rec = {"loss": loss, **{k: v for k, v in aux.items() if v is not None}}
    stop = ~jnp.all(jnp.isfinite(loss))            # NaN policy: never update from a NaN loss
    for k in below_keys:
      stop = stop | (rec[k] < below[k])
    for k in above_keys:
      stop = stop | ~(rec[k] <= above[k])          # NaN counts as above
    updates, opt_state = transform.update(grads, st.opt_state, st.params)
    new = LoopState(optax.apply_updates(st.params, updates), opt_state, st.step + 1, sampler)
    new = jax.tree.map(lambda a, b: jnp.where(stop, a, b), st, new)  # a stop keeps the state
    return new, rec, stop

  return one


@functools.partial(jax.jit, static_argnames=_STATIC + ("chunk",))
def _run_chunk(state, data, hparams, num, below, above, *, loss_fn, tx, factory, batch_size,
               has_aux, chunk, below_keys, above_keys):
  """Compiled mode: at most ``chunk`` steps (``num`` traced) in one ``lax.while_loop``;
  per-step records in (chunk, ...) buffers."""
  one = _make_step(loss_fn, tx, factory, batch_size, has_aux, below_keys, above_keys)
  shapes = jax.eval_shape(lambda s: one(s, data, hparams, below, above)[1], state)
  bufs = {k: jnp.zeros((chunk,) + v.shape, v.dtype) for k, v in shapes.items()}

  def cond(c):
    i, _, _, stopped = c
    return (i < num) & ~stopped

  def body(c):
    i, st, bufs, _ = c
    st, rec, stop = one(st, data, hparams, below, above)
    bufs = {k: bufs[k].at[i].set(rec[k]) for k in bufs}
    return i + 1, st, bufs, stop

  i, state, bufs, stopped = lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), state, bufs, jnp.zeros((), bool)))
  return state, bufs, i, stopped


@functools.partial(jax.jit, static_argnames=_STATIC)
def _run_step(state, halted, data, hparams, below, above, *, loss_fn, tx, factory,
              batch_size, has_aux, below_keys, above_keys):
  """Python mode: one step, a no-op once ``halted`` (so steps dispatched ahead of the host's
  stop check leave the state of the stopping step untouched)."""
  one = _make_step(loss_fn, tx, factory, batch_size, has_aux, below_keys, above_keys)
  new, rec, stop = one(state, data, hparams, below, above)
  new = jax.tree.map(lambda a, b: jnp.where(halted, a, b), state, new)
  return new, rec, halted | stop


_POLL = 8
"""Python mode: the host reads the stop flag every ``_POLL`` dispatched steps (reading it
every step would serialise dispatch and compute); at most ``_POLL - 1`` no-op steps run
after a stop."""


def _python_chunk(step, state, data, hparams, num, below, above, watch):
  """Python mode: ``num`` dispatches of the jitted step; same outputs as ``_run_chunk``."""
  halted = jnp.zeros((), bool)
  recs, flags = [], []
  for i in range(num):
    state, rec, halted = step(state, halted, data, hparams, below, above)
    recs.append(rec)
    flags.append(halted)
    if watch and ((i + 1) % _POLL == 0) and bool(halted):
      break
  flags = np.asarray(jax.device_get(flags)) if flags else np.zeros(0, bool)
  ran = int(np.argmax(flags)) + 1 if flags.any() else len(flags)
  bufs = {k: np.stack([np.asarray(r[k]) for r in jax.device_get(recs[:ran])])
          for k in (recs[0] if recs else {})}
  return state, bufs, ran, bool(flags.any())


def _avals(tree):
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((tuple(np.shape(a)), jnp.result_type(a)) for a in leaves)


def _unflatten_avals(spec):
  treedef, leaves = spec
  return treedef.unflatten([jax.ShapeDtypeStruct(s, d) for s, d in leaves])


@functools.lru_cache(maxsize=128)
def _step_info(static, state_spec, data_spec, hp_spec, on_cpu):
  """(record shapes, whether the step has a convolution) for one configuration: traced
  abstractly once per configuration and input shapes, so repeated ``fit`` calls never
  retrace the loss."""
  step = functools.partial(_run_step, **dict(zip(_STATIC, static + ((), ()))))
  st, d, hp = (_unflatten_avals(x) for x in (state_spec, data_spec, hp_spec))
  below = above = {}
  halted = jax.ShapeDtypeStruct((), bool)
  recs = jax.eval_shape(step, st, halted, d, hp, below, above)[1]
  conv = on_cpu and _loops.has_convolution(step, st, halted, d, hp, below, above)
  return {k: (v.shape, v.dtype) for k, v in recs.items()}, conv


def _check_loss_arity(loss_fn):
  try:
    sig = inspect.signature(loss_fn)
  except (TypeError, ValueError):      # builtins and C callables: nothing to check up front
    return
  try:
    sig.bind(None, None, None)
  except TypeError:
    raise TypeError("`loss_fn` must accept three positional arguments loss_fn(params, batch, "
                    f"indices) (indices is None for the full batch); its signature is "
                    f"{getattr(loss_fn, '__name__', type(loss_fn).__name__)}{sig}. Wrap it, "
                    "e.g. lambda p, batch, idx: my_loss(p, batch).") from None


def _check_data_finite(data):
  for path, leaf in jax.tree_util.tree_leaves_with_path(data):
    if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      _validate.check_finite(leaf, "data" + jax.tree_util.keystr(path))


def _thresholds(name, spec):
  if spec is None:
    return (), {}
  if not isinstance(spec, Mapping):
    raise TypeError(f"`{name}` must be a dict {{record key: threshold}} or None; got "
                    f"{type(spec).__name__}.")
  keys = tuple(sorted(spec))
  out = {}
  for k in keys:
    v = _validate.check_scalar(spec[k], f"{name}[{k!r}]", finite=False)
    if np.isnan(v):
      raise ValueError(f"`{name}[{k!r}]` is NaN: a NaN threshold never triggers; pass a number "
                       "(or drop the key).")
    out[k] = jnp.asarray(v)
  return keys, out


def fit(loss_fn: Callable, params, tx, data, *, steps: int,
        batch_size: Optional[int] = None, seed: int = 0, has_aux: bool = False,
        hparams=None, state: Optional[LoopState] = None,
        evaluate: Optional[Callable[[LoopState], dict]] = None,
        eval_every: Optional[int] = None, eval_steps: Optional[Sequence[int]] = None,
        stop_below: Optional[Mapping[str, float]] = None,
        stop_above: Optional[Mapping[str, float]] = None,
        stop_eval: Optional[Callable[[dict], bool]] = None,
        chunk: int = 100, loop: str = "auto", progress: bool = False,
        desc: str = "train") -> FitResult:
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
      call is traced, so evaluation points never recompile); in the Python loop, most
      steps between two reads of the records.
    loop: ``'compiled'`` runs each chunk as one ``lax.while_loop`` (no per-step dispatch:
      fastest for MLPs and on accelerators); ``'python'`` calls the jitted step from a
      Python loop (XLA:CPU runs convolutions inside compiled loops on a slow path);
      ``'auto'`` (default) picks ``'python'`` iff the arrays live on the CPU and the step
      contains a convolution (the rule of :mod:`mskjax._loops`; ``benchmarks/bench_loop.py``
      measures both modes).
      Both modes run the same step function: same records, stops and resumable states
      (bit for bit on the CPU, tested).
    progress: show a tqdm progress bar (off by default; the runner turns it on).
    desc: progress bar label.

  Returns:
    :class:`FitResult`.

  NaN policy: non-finite floating ``data``, a NaN threshold, a ``stop_below``/``stop_above``
  key that is not a record, and a ``loss_fn`` that does not take ``(params, batch,
  indices)`` are rejected up front with an error naming the argument. A loss that becomes
  NaN/inf during training stops the run at that step, exactly like ``stop_above``: its
  update is not applied, ``state`` is the last finite one, ``records`` keep every step run
  (the last one holds the non-finite loss), ``stopped = 'nonfinite:loss'`` and a
  ``RuntimeWarning`` says so (a user threshold that fires on the same step is reported
  instead). The check is part of every step, in both loop modes.

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
  _check_loss_arity(loss_fn)
  steps = _check_int("steps", steps, 0)
  chunk = _check_int("chunk", chunk, 1)
  _validate.check_numeric_tree(data, "data")
  data = jax.tree.map(jnp.asarray, data)
  n = _num_points(data)
  _check_data_finite(data)
  batch_size = _check_int("batch_size", batch_size, 1, n, none_ok=True)
  state = _start_state(params, state, tx, n, batch_size, seed, hparams)
  below_keys, below = _thresholds("stop_below", stop_below)
  above_keys, above = _thresholds("stop_above", stop_above)
  eval_every, sched = _eval_schedule(eval_every, eval_steps)
  if stop_eval is not None and evaluate is None:
    raise ValueError("`stop_eval` needs an `evaluate` hook.")

  hp = hparams if factory else None
  static = (loss_fn, tx, factory, batch_size, has_aux, below_keys, above_keys)
  cpu = _loops.on_cpu(state, data)
  try:
    rec_shapes, conv = _step_info(static[:5], _avals(state), _avals(data), _avals(hp), cpu)
  except Exception:   # name `has_aux`/`loss_fn` if the loss's output is the cause
    _validate.check_loss_output(loss_fn, state.params, data, has_aux)
    raise
  known = sorted(rec_shapes)
  for name, keys in (("stop_below", below_keys), ("stop_above", above_keys)):
    for k in keys:
      if k not in rec_shapes:
        raise ValueError(f"`{name}` key {k!r} is not a per-step record; the records of this "
                         f"loss are {known} ('loss' plus the aux dict with has_aux=True).")
  loop = _validate.check_choice(loop, "loop", _loops.LOOP_MODES)
  mode = ("python" if conv else "compiled") if loop == "auto" else loop

  start = int(state.step)
  end = start + steps
  call, compile_s = _chunk_runner(mode, dict(zip(_STATIC, static)), chunk, state, data, hp,
                                  below, above)

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
      state, rec, ran, hit = call(state, num)
      dt = time.perf_counter() - t1
      rec["step"] = np.arange(t, t + ran)
      rec["time"] = train_s + dt * np.arange(1, ran + 1) / max(ran, 1)
      records.append(rec)
      train_s += dt
      t += ran if not hit else ran - 1              # a stopping step does not update
      if bar is not None:
        bar.update(ran)
        bar.set_postfix(loss=f"{float(rec['loss'][-1]):.4g}" if ran else "")
      if hit:
        stopped = _stop_reason(rec, t, below_keys, below, above_keys, above)
      due = stopped is not None or t in sched or t == end or (
          eval_every is not None and t % eval_every == 0)
      if evaluate is not None and due and not (history and history[-1]["step"] == t):
        m = do_eval(state, t)
        if stopped is None and stop_eval is not None and stop_eval(m):
          stopped = "stop_eval"
  finally:
    if bar is not None:
      bar.close()
  return FitResult(state, _stack_records(records, rec_shapes), _stack_history(history),
                   stopped, compile_s, train_s, eval_s)


def _start_state(params, state, tx, n, batch_size, seed, hparams) -> LoopState:
  """A fresh state from ``params``, or the checked ``state`` of an earlier fit."""
  if state is None:
    if params is None:
      raise ValueError("pass `params` (a fresh run) or `state` (to resume); got neither.")
    return init_state(params, tx, n, batch_size=batch_size, seed=seed, hparams=hparams)
  if not isinstance(state, LoopState):
    raise TypeError(f"`state` must be a LoopState from an earlier fit; got "
                    f"{type(state).__name__}.")
  if params is not None:
    raise ValueError("pass either `params` (a fresh run) or `state` (to resume), not both.")
  if (state.sampler is None) != (batch_size is None) or (
      state.sampler is not None and state.sampler.perm.shape[0] != n):
    raise ValueError("`state` was made for a different `batch_size` or data size; resume "
                     "with the batch_size and data of the run that produced it.")
  return state


def _eval_schedule(eval_every, eval_steps):
  """``(eval_every, set of eval steps)``, checked."""
  sched = set()
  if eval_every is not None:
    eval_every = _check_int("eval_every", eval_every, 1)
  if eval_steps is not None:
    es = np.asarray(list(eval_steps), dtype=np.float64)
    if es.ndim != 1 or np.any(es != np.round(es)) or np.any(es < 0):
      raise ValueError(f"`eval_steps` must be non-negative integers; got {list(eval_steps)}.")
    sched = set(int(v) for v in es)
  return eval_every, sched


def _chunk_runner(mode, kw, chunk, state, data, hp, below, above):
  """``(call, compile_s)``: ``call(state, num) -> (state, records, ran, hit)`` runs ``num``
  steps as one compiled chunk or as a Python loop over the jitted step, compiled here."""
  if mode == "compiled":
    chunk_fn = functools.partial(_run_chunk, chunk=chunk, **kw)

    def call(st, num):
      st, bufs, ran, hit = chunk_fn(st, data, hp, jnp.asarray(num, jnp.int32), below, above)
      bufs = jax.device_get(bufs)                   # waits for the chunk
      ran = int(ran)
      return st, {k: v[:ran] for k, v in bufs.items()}, ran, bool(hit)
  else:
    step_fn = functools.partial(_run_step, **kw)
    watch = True                                    # the NaN check may always stop

    def call(st, num):
      return _python_chunk(step_fn, st, data, hp, num, below, above, watch)

  t0 = time.perf_counter()
  if mode == "compiled":   # a zero-step call: compilation (or a cache hit)
    jax.block_until_ready(chunk_fn(state, data, hp, jnp.zeros((), jnp.int32), below, above))
  else:                    # the step run once with halted=True: compiles, changes nothing
    jax.block_until_ready(step_fn(state, jnp.ones((), bool), data, hp, below, above))
  return call, time.perf_counter() - t0


def _stop_reason(rec, t, below_keys, below, above_keys, above) -> str:
  """Why the chunk that just ran stopped at step ``t`` (warns for a non-finite loss)."""
  last = {k: rec[k][-1] for k in ("loss",) + below_keys + above_keys}
  stopped = (next((f"stop_below:{k}" for k in below_keys if last[k] < below[k]), None)
             or next((f"stop_above:{k}" for k in above_keys
                      if not last[k] <= above[k]), None) or "nonfinite:loss")
  if stopped == "nonfinite:loss":
    warnings.warn(f"fit: the loss at step {t} is {last['loss']}; training stopped "
                  "there (that update is not applied, FitResult.stopped = "
                  "'nonfinite:loss', the records keep every finished step).",
                  RuntimeWarning, stacklevel=3)
  return stopped


def _stack_records(records, rec_shapes) -> dict:
  if records:
    return {k: np.concatenate([r[k] for r in records]) for k in records[0]}
  out = {k: np.zeros((0,) + tuple(shp), dt) for k, (shp, dt) in rec_shapes.items()}
  out["step"] = np.zeros((0,), np.int64)
  out["time"] = np.zeros((0,))
  return out


def _stack_history(history) -> dict:
  if not history:
    return {}
  return {k: np.stack([np.asarray(h[k]) for h in history]) for k in history[0]}


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


def _resolve_loss(loss, n):
  if callable(loss):
    return loss
  if loss == "mse":
    return _MSE(n)
  raise ValueError(f"`loss` must be 'mse' or a callable loss_fn(predictions, targets, "
                   "batch_indices); for the MSK loss ½ rᵀ S r pass loss=lambda p, y, idx: "
                   "msk_mse_loss(p, y, spectrum, batch_indices=idx) with the MSK spectrum "
                   f"of the training Gram matrix; got {loss!r}.")


def _check_record_steps(steps, record_steps):
  rec = np.asarray(record_steps if record_steps is not None else [], dtype=np.float64)
  if rec.ndim != 1:
    raise ValueError(f"`record_steps` must be a 1-D sequence of ints; got shape {rec.shape}.")
  if rec.size and (np.any(rec != np.round(rec)) or rec.min() < 0 or rec.max() > steps):
    raise ValueError(f"`record_steps` must be integers in [0, steps={steps}]; got "
                     f"{np.asarray(record_steps).tolist()}.")
  return np.unique(rec.astype(np.int64))


def train(apply_fn: Callable, params, tx, x_train, y_train, *,
          steps: int, loss: Union[str, Callable] = "mse", batch_size: Optional[int] = None,
          seed: int = 0, record_steps: Optional[Sequence[int]] = None, x_test=None,
          progress: bool = False, desc: str = "train",
          stop_below: Optional[float] = None, chunk: int = 100) -> TrainResult:
  r""":func:`fit` for a model ``apply_fn(params, x)``, targets ``y`` and a named loss.

  Each update is ``θ ← θ + tx.update(∇_θ L, opt_state, θ)`` (``tx`` receives ``params``, as
  function-space transformations need). With ``loss='mse'`` and ``optax.sgd(η)`` it
  is GD on ½‖r‖², the setting of :func:`mskjax.predict_gd_mse` (same η and t).

  Args:
    apply_fn: ``apply_fn(params, x) -> (n,)`` or ``(n, c)`` (for flax:
      ``lambda p, x: model.apply({'params': p}, x)``).
    params: initial parameters (any pytree).
    tx: any optax transformation (``GradientTransformation`` or ``...ExtraArgs``).
    x_train: ``(n, ...)`` training inputs.
    y_train: targets with the shape of ``apply_fn(params, x_train)``.
    steps: number of updates.
    loss: ``'mse'`` or a callable ``loss_fn(predictions, targets, batch_indices)``
      (module docstring).
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
  loss_fn = _ModelLoss(apply_fn, _resolve_loss(loss, n))
  stop = None
  if stop_below is not None:
    stop_below = _validate.check_scalar(stop_below, "stop_below", finite=False)
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
