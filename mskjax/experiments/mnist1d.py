"""MNIST-1D: the MSK preconditioner (PGD) against tuned SGD+momentum, Adam and Muon.

The experiment program of ``configs/mnist1d.py`` (which documents the set-up; also run by
``benchmarks/device.sh``); importable, every piece a small function:

* :class:`MLP` (40 → 256 → 256 → 10, ReLU) and :class:`CNN` (three ``nn.Conv``, 32
  channels, kernel sizes 5, 3, 3, stride 2, 'SAME', ReLU; flatten 5·32 = 160 →
  ``nn.Dense(10)``), flax linen, standard parameterisation (the shared contract);
* the method registry :data:`METHODS` (name → :class:`Method`: a constructor
  ``make(lr, directions, options)`` of the optax transformation and whether the method pays
  the one-off directions build), and :func:`make_tx` on top of it;
* :func:`build_directions` — the top-k directions of the network at initialisation
  (``mskjax.msk_directions``; loss-aware, ``loss='softmax_cross_entropy'``, by default in
  ``configs/mnist1d.py``), timed: with the step measurement, the PGD methods' one-off cost;
* :func:`pgd_base_lr` — the step rule of the PGD grid (``absolute``: the grid is the
  learning rate; ``measured`` (default): factors of ``mskjax.stable_learning_rate`` from
  the measured curvature of the preconditioned loss on one batch of the training size;
  ``stable``: factors of the linearised critical-batch rule);
* :func:`train_run` — one training run, through :func:`mskjax.train.fit` (its ``loop='auto'``
  dispatches the jitted step from Python for the CNN: XLA:CPU runs convolutions inside
  ``lax`` loops many times slower);
* :func:`first_reach`, :func:`acc_at_time`, :func:`summarize` — the read-outs;
* :func:`run` — the comparison itself (``run(config, ctx)``, called by ``mskjax.run``).

Methods (:data:`METHODS`):

* ``sgd``      — ``optax.sgd(lr, momentum)``;
* ``adam``     — ``optax.adam(lr)``;
* ``muon``     — ``optax.contrib.muon(lr)``: momentum (β = 0.95, Nesterov) orthogonalised by
  five Newton–Schulz steps on every 2-D leaf (the ``nn.Dense`` kernels, the read-out
  included), scaled by √max(1, fan_out/fan_in). Leaves that are not matrices — the biases,
  and the 3-D ``nn.Conv`` kernels ``(width, in, out)`` unless told otherwise — go to the
  AdamW branch of the same transformation (Nesterov Adam — muon's ``nesterov=True`` — at
  the same lr, b1 = 0.9, b2 = 0.999, weight decay 0).
  With ``options.muon_conv='matrix'`` (the default here, as Muon is used on conv nets)
  conv kernels are orthogonalised too, as ``(width·in) × out`` matrices
  (``MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=2)``); ``'adam'`` keeps
  optax's default;
* ``pgd``      — ``mskjax.msk_sgd(lr, directions, momentum=momentum)`` (= ``optax.chain(
  mskjax.scale_by_msk(directions), optax.sgd(lr, momentum))``): the parameter-space
  preconditioner P = I + Σ_{i≤k}(g_i/λ_i − 1) q_i q_iᵀ
  (docs/theory.md#the-preconditioner-p-parameter-space) before the baseline's momentum SGD;
* ``pgd_m``    — the same ``mskjax.msk_sgd(lr, directions, momentum=momentum)`` with an
  absolute learning-rate grid, tuned like ``sgd``'s: P added to the tuned SGD-momentum
  baseline, with nothing else changed;
* ``pgd_adam`` — ``optax.chain(mskjax.scale_by_msk(directions), optax.adam(lr))``: P
  applied to the gradient Adam sees. Adam divides by the gradient's running RMS, so a step
  rule in units of the preconditioned gradient does not apply: its grid is always absolute.

Where the PGD methods meet the library (the places to change when its API grows):
:func:`build_directions` (``loss`` is passed to ``msk_directions`` when set) and
:func:`pgd_base_lr` (the step rules).
"""
from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import mskjax
from mskjax import modifiers
from mskjax import train as T

ARCHS = ("mlp", "cnn")
REFERENCE_ACCURACY = {"mlp": 0.68, "cnn": 0.94}   # Greydanus & Kobak, standard set
STEP_RULES = ("absolute", "stable", "measured")


class MLP(nn.Module):
  """40 → 256 → 256 → 10, ReLU, ``nn.Dense`` (standard parameterisation)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(256)(x))
    x = nn.relu(nn.Dense(256)(x))
    return nn.Dense(10)(x)


class CNN(nn.Module):
  """Input (n, 40, 1); Conv(32, k) stride 2 'SAME' + ReLU for k = 5, 3, 3; flatten → Dense(10)."""

  @nn.compact
  def __call__(self, x):
    for ks in (5, 3, 3):
      x = nn.relu(nn.Conv(32, (ks,), strides=2, padding="SAME")(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


@functools.lru_cache(maxsize=None)
def model(arch: str) -> nn.Module:
  if arch not in ARCHS:
    raise ValueError(f"`arch` must be one of {ARCHS}; got {arch!r}.")
  return MLP() if arch == "mlp" else CNN()


def inputs(arch: str, x):
  """(n, 40) sequences → the model's input: as is (MLP) or with a channel axis (CNN)."""
  return x if arch == "mlp" else x[..., None]


@functools.lru_cache(maxsize=None)
def loss_fn(arch: str):
  """Mean softmax cross-entropy ``loss(params, (x, y), idx)`` for train.fit (one object per
  architecture, so every run of an architecture shares the compiled chunk)."""
  m = model(arch)

  def loss(params, batch, idx):
    logits = m.apply({"params": params}, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
  return loss


@functools.lru_cache(maxsize=None)
def rule_loss_fn(arch: str):
  """``loss(params, (x, y))`` for the measured step rule (one object per architecture, so
  repeated measurements — seeds — reuse the compiled Lanczos step)."""
  lf = loss_fn(arch)
  return lambda p, bt: lf(p, bt, None)


@functools.lru_cache(maxsize=None)
def eval_fn(arch: str):
  """Jitted ``(params, x, y) -> {'acc', 'test_loss'}`` of the architecture."""
  m = model(arch)

  @jax.jit
  def ev(params, x, y):
    logits = m.apply({"params": params}, x)
    return {"acc": jnp.mean(jnp.argmax(logits, -1) == y),
            "test_loss": optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()}
  return ev


@functools.lru_cache(maxsize=None)
def _init_fn(arch: str):
  return jax.jit(model(arch).init)        # one compilation per architecture


def init_params(arch: str, x, seed: int = 0):
  """Flax initialisation of the architecture (float32 parameters)."""
  return _init_fn(arch)(jax.random.PRNGKey(seed), x[:2])


# ------------------------------------------------------------------------------ directions

def build_directions(arch: str, variables, x, *, k: int, subsample: Optional[int],
                     g: str = "flatten", seed: int = 0, loss: str = "",
                     compute_beta: bool = False):
  """``mskjax.msk_directions`` at initialisation, timed (cold: compilation included).

  Args:
    arch, variables, x: the architecture, its flax variables and the training inputs.
    k, subsample, g, seed: top-k directions on ``subsample`` random points (None: all),
      modifier ``g`` by name (``mskjax.modifiers.from_name``), seed of the subsample.
    loss: '' for the directions of the plain empirical NTK J Jᵀ; otherwise passed on as
      ``msk_directions(..., loss=loss)`` (loss-aware directions, e.g.
      ``'softmax_cross_entropy'``, where the library offers them).
    compute_beta: also compute β (needed by the ``'stable'`` step rule).

  Returns:
    ``(MSKDirections, seconds)``.
  """
  gfn = modifiers.from_name(g)     # any registered name ("flatten", "power0.5", ...)
  extra = {"loss": loss} if loss else {}
  t0 = time.perf_counter()
  d = mskjax.msk_directions(model(arch).apply, variables, x, gfn, int(k),
                            subsample=subsample, key=jax.random.PRNGKey(seed),
                            compute_beta=bool(compute_beta), **extra)
  jax.block_until_ready(d.directions)
  return d, time.perf_counter() - t0


def pgd_base_lr(rule: str, directions, batch_size: int, *, arch: Optional[str] = None,
                params=None, batch=None) -> float:
  """The unit of the ``pgd`` grid: learning rate = grid value × this.

  * ``'absolute'``: 1 (the grid is the learning rate);
  * ``'measured'`` (recommended): ``mskjax.stable_learning_rate(directions, b,
    loss_fn=, params=, batch=)`` — SAFETY/λ̂ = 0.75/λ̂, λ̂ the top eigenvalue of the P-preconditioned
    cross-entropy Hessian measured by Lanczos at ``params`` on ``batch`` (one batch of the
    training size; needs ``arch``, ``params``, ``batch``);
  * ``'stable'``: ``mskjax.steps.critical_batch_learning_rate(directions, batch_size)`` — the
    critical-batch step of the linearised MSK for the quadratic loss (the directions need
    β: :func:`build_directions` with ``compute_beta=True``); far too small for
    cross-entropy (docs/pitfalls.md#linearised-step-rules-on-real-networks).

  Args:
    rule: one of :data:`STEP_RULES`.
    directions: the run's :class:`mskjax.MSKDirections`.
    batch_size: b (the number of training points for full batch).
    arch, params, batch: the architecture, its parameters (``variables['params']``) and
      an ``(x, y)`` batch (``'measured'`` only).
  """
  if rule == "absolute":
    return 1.0
  if rule == "stable":
    return float(mskjax.steps.critical_batch_learning_rate(directions, int(batch_size)))
  if rule == "measured":
    if arch is None or params is None or batch is None:
      raise ValueError("pgd_base_lr: the 'measured' rule needs `arch`, `params` and `batch` "
                       "(where to measure the curvature).")
    return float(mskjax.stable_learning_rate(
        directions, int(batch_size), loss_fn=rule_loss_fn(arch), params=params, batch=batch))
  raise ValueError(f"`pgd_step` must be one of {STEP_RULES}; got {rule!r}.")


def rule_batch(x, y, batch_size: int, seed: int = 0):
  """The batch the ``'measured'`` rule measures on: ``batch_size`` random training points
  (all of them for full batch)."""
  n = x.shape[0]
  if int(batch_size) >= n:
    return x, y
  idx = np.sort(np.random.default_rng(seed).choice(n, int(batch_size), replace=False))
  return x[idx], y[idx]


# ------------------------------------------------------------------------------ methods

class Options(NamedTuple):
  """Hyper-parameters every method may read besides its learning rate."""
  momentum: float = 0.9        # sgd, pgd, pgd_m
  muon_conv: str = "matrix"    # muon: 'matrix' or 'adam' for 3-D conv kernels


class Method(NamedTuple):
  """One entry of :data:`METHODS`.

  Attributes:
    make: ``make(lr, directions, options) -> optax.GradientTransformation``.
    uses_directions: True when the method needs :func:`build_directions` (its one-off
      cost, added to its wall times).
    step_rule: True when its grid may be factors of :func:`pgd_base_lr`'s rule.
  """
  make: Callable[..., optax.GradientTransformation]
  uses_directions: bool = False
  step_rule: bool = False


def _need(directions, name):
  if directions is None:
    raise ValueError(f"method {name!r} needs `directions` (from build_directions).")
  return directions


def _sgd(lr, directions, o: Options):
  return optax.sgd(lr, momentum=o.momentum)


def _adam(lr, directions, o: Options):
  return optax.adam(lr)


def muon_dimensions(params, conv: str = "matrix"):
  """Muon's per-leaf dimension numbers: 2-D leaves as ``(in, out)`` matrices; 3-D conv
  kernels ``(width, in, out)`` as ``(width·in) × out`` matrices when ``conv='matrix'``,
  else (and every other leaf, e.g. biases) None = the AdamW branch."""
  if conv not in ("matrix", "adam"):
    raise ValueError(f"`muon_conv` must be 'matrix' or 'adam'; got {conv!r}.")
  md = optax.contrib.MuonDimensionNumbers

  def dims(a):
    if a.ndim == 2:
      return md(0, 1)
    if a.ndim == 3 and conv == "matrix":
      return md((0, 1), 2)
    return None
  return jax.tree.map(dims, params)


def _muon(lr, directions, o: Options):
  if o.muon_conv not in ("matrix", "adam"):
    raise ValueError(f"`muon_conv` must be 'matrix' or 'adam'; got {o.muon_conv!r}.")
  return optax.contrib.muon(
      lr, muon_weight_dimension_numbers=lambda p: muon_dimensions(p, o.muon_conv))


def _pgd(lr, directions, o: Options):
  return mskjax.msk_sgd(lr, _need(directions, "pgd"), momentum=o.momentum)


def _pgd_m(lr, directions, o: Options):
  return mskjax.msk_sgd(lr, _need(directions, "pgd_m"), momentum=o.momentum)


def _pgd_adam(lr, directions, o: Options):
  return optax.chain(mskjax.scale_by_msk(_need(directions, "pgd_adam")), optax.adam(lr))


METHODS = {
    "sgd": Method(_sgd),
    "adam": Method(_adam),
    "muon": Method(_muon),
    "pgd": Method(_pgd, uses_directions=True, step_rule=True),
    "pgd_m": Method(_pgd_m, uses_directions=True),
    "pgd_adam": Method(_pgd_adam, uses_directions=True),
}
BASELINES = ("sgd", "adam", "muon")   # the methods that need no directions


def make_tx(method: str, lr: float, *, momentum: float = 0.9, directions=None,
            muon_conv: str = "matrix") -> optax.GradientTransformation:
  """The optimiser of a registered method (see the module docstring)."""
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {tuple(METHODS)}; got {method!r}.")
  return METHODS[method].make(float(lr), directions, Options(momentum, muon_conv))


def one_off_s(method: str, directions_s: float) -> float:
  """A method's one-off cost in seconds: the directions build for the PGD methods, else 0."""
  return float(directions_s) if METHODS[method].uses_directions else 0.0


# ------------------------------------------------------------------------------ training

#: config ``loop`` → :func:`mskjax.train.fit`'s ``loop`` (fit chooses a Python loop of the
#: jitted step for convolutions on the CPU with ``'auto'``; the others force a mode).
FIT_LOOP = {"fit": "compiled", "python": "python", "auto": "auto"}


def train_run(arch: str, params, tx, x, y, x_test, y_test, *, batch_size: Optional[int],
              steps: int, eval_every: int, seed: int = 0, progress: bool = False,
              desc: str = "train", loop: str = "fit", hparams=None) -> dict:
  """One run through :func:`mskjax.train.fit`; a JSON-able dict of its curve and costs.

  ``loop``: ``'fit'`` (fit's compiled loop), ``'python'`` (fit dispatching its jitted step
  from Python) or ``'auto'`` (fit's rule: Python for convolutions on the CPU, where XLA runs
  them inside ``lax`` loops many times slower). Diverged runs (cross-entropy above 50 or
  not finite) stop at once. Training wall time excludes compilation and evaluations.
  ``tx`` may be a factory ``tx(hparams)`` with traced ``hparams`` (``train.fit``): one
  compilation serves every learning rate of a grid.
  """
  if loop not in FIT_LOOP:
    raise ValueError(f"`loop` must be one of {tuple(FIT_LOOP)}; got {loop!r}.")
  ev = eval_fn(arch)
  res = T.fit(loss_fn(arch), params, tx, (x, y), steps=steps, batch_size=batch_size,
              seed=seed, evaluate=lambda st: ev(st.params, x_test, y_test),
              eval_every=eval_every, stop_above={"loss": 50.0}, progress=progress,
              desc=desc, loop=FIT_LOOP[loop], hparams=hparams)
  h = res.history
  ran, diverged = int(res.state.step), res.stopped is not None
  losses = res.records["loss"]
  train_s, compile_s, eval_s = res.train_s, res.compile_s, res.eval_s
  acc = [float(a) for a in h["acc"]]
  return dict(
      loop=loop, diverged=bool(diverged), steps_run=ran,
      final_acc=acc[-1], max_acc=max(acc), final_test_loss=float(h["test_loss"][-1]),
      final_train_loss=float(losses[-1]) if len(losses) else None,
      per_step_ms=1e3 * train_s / max(ran, 1), train_s=train_s,
      compile_s=compile_s, eval_s=eval_s,
      curve_step=[int(s) for s in h["step"]], curve_time=[float(t) for t in h["time"]],
      curve_acc=acc, curve_test_loss=[float(v) for v in h["test_loss"]])


# ------------------------------------------------------------------------------ read-outs

def first_reach(rec: dict, target: float, offset_s: float = 0.0, *, key: str = "curve_acc",
                higher: bool = True):
  """(steps, wall seconds + offset) of the first evaluation whose ``rec[key]`` reaches the
  target (>= for ``higher``, <= otherwise; NaN never does), or (None, None)."""
  for s, t, a in zip(rec["curve_step"], rec["curve_time"], rec[key]):
    if (a >= target - 1e-12) if higher else (a <= target + 1e-12):
      return int(s), float(t) + offset_s
  return None, None


def acc_at_time(rec: dict, seconds: float, offset_s: float = 0.0, *, key: str = "curve_acc"):
  """``rec[key]`` (test accuracy by default) of the last evaluation at or before ``seconds``
  of wall time (training time + ``offset_s``); None when the one-off cost alone exceeds
  ``seconds``."""
  if offset_s > seconds:
    return None
  acc = None
  for t, a in zip(rec["curve_time"], rec[key]):
    if t + offset_s <= seconds + 1e-12:
      acc = float(a)
  return acc


def mean_std(values):
  """(mean, sample std (ddof 1; 0 for one value), count) over the values that are not
  None; (None, None, 0) when none is."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if v.size == 0:
    return None, None, 0
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def summarize(runs: dict, *, ref: float, baselines=BASELINES):
  """Per-method rows of one setting from its best-step runs over the seeds.

  Args:
    runs: ``{method: [record, ...]}`` (one per seed), each record a :func:`train_run`
      dict plus ``one_off_s`` and ``lr``/``grid_value``.
    ref: the reference accuracy of the architecture.
    baselines: the methods whose best mean final accuracy is the target.

  Returns:
    ``(rows, info)``: a row per method (means ± std over seeds: final accuracy, steps and
    wall seconds — one-off included — to the target and to ``ref``, reached counts,
    per-step ms, one-off and training seconds, total seconds at equal steps, accuracy at
    equal wall time: the shortest mean total time of a baseline) and ``info`` (target, best
    baseline, equal time).
  """
  finals = {m: mean_std([r["final_acc"] for r in rs])[0] for m, rs in runs.items()}
  base = [m for m in runs if m in baselines] or list(runs)
  best_base = max(base, key=lambda m: finals[m])
  target = finals[best_base]
  total = {m: mean_std([r["train_s"] + r["one_off_s"] for r in rs])[0]
           for m, rs in runs.items()}
  t_equal = min(total[m] for m in base)
  rows = []
  for m, rs in runs.items():
    row = dict(method=m, seeds=len(rs), lr=rs[0]["lr"], grid_value=rs[0]["grid_value"])
    row["final_acc"], row["final_acc_std"], _ = mean_std([r["final_acc"] for r in rs])
    for name, tgt in (("target", target), ("ref", ref)):
      hits = [first_reach(r, tgt, r["one_off_s"]) for r in rs]
      row[f"steps_to_{name}"], row[f"steps_to_{name}_std"], cnt = mean_std(
          [h[0] for h in hits])
      row[f"wall_s_to_{name}"], row[f"wall_s_to_{name}_std"], _ = mean_std(
          [h[1] for h in hits])
      row[f"reached_{name}"] = f"{cnt}/{len(rs)}"
    row["target_acc"] = target
    row["per_step_ms"] = mean_std([r["per_step_ms"] for r in rs])[0]
    row["one_off_s"] = mean_std([r["one_off_s"] for r in rs])[0]
    row["train_s"] = mean_std([r["train_s"] for r in rs])[0]
    row["total_s"] = total[m]
    row["acc_at_equal_time"], row["acc_at_equal_time_std"], cnt = mean_std(
        [acc_at_time(r, t_equal, r["one_off_s"]) for r in rs])
    row["equal_time_s"] = t_equal
    row["diverged"] = sum(bool(r["diverged"]) for r in rs)
    rows.append(row)
  return rows, dict(target_acc=target, best_baseline=best_base, equal_time_s=t_equal)


# ------------------------------------------------------------------------------ the program

def _bname(bs) -> str:
  return "full" if int(bs) == 0 else str(int(bs))


def grid(config, method: str):
  """The step grid of a method: ``<method>_lrs`` (for ``pgd`` with ``pgd_step='stable'``:
  ``pgd_factors``)."""
  if method == "pgd" and config.pgd_step != "absolute":
    return tuple(config.pgd_factors)
  return tuple(getattr(config, f"{method}_lrs"))


def run(config, ctx):
  import matplotlib.pyplot as plt

  from mskjax import data

  s = config
  ds = data.load_mnist1d(num_samples=s.num_samples)
  x_raw = jnp.asarray(ds.x_train, jnp.float32)
  xt_raw = jnp.asarray(ds.x_test, jnp.float32)
  y, y_test = jnp.asarray(ds.y_train), jnp.asarray(ds.y_test)
  n = x_raw.shape[0]
  seeds = tuple(int(s.seed) + int(v) for v in s.seeds)
  tune = tuple(int(s.seed) + int(v) for v in s.tune_seeds)
  methods = tuple(s.methods)
  ctx.print(f"mnist1d: n_train={n}, n_test={xt_raw.shape[0]}, float32, backend "
            f"{jax.default_backend()}, seeds {seeds} (steps tuned on {tune}), "
            f"methods {methods}, pgd step rule {s.pgd_step!r}")
  opts = Options(float(s.momentum), s.muon_conv)
  archs = list(dict.fromkeys(a for a, *_ in s.settings))
  arch_inputs = {a: (inputs(a, x_raw), inputs(a, xt_raw)) for a in archs}
  variables = {}
  dirs = {}
  sub = s.subsample if s.subsample < n else None
  dkey = f"k={s.k}/s={s.subsample}/g={s.g}/loss={s.directions_loss or 'ntk'}"

  def init(arch, seed):
    if (arch, seed) not in variables:
      variables[arch, seed] = init_params(arch, arch_inputs[arch][0], seed)
    return variables[arch, seed]

  def directions(arch, seed):
    """The MSKDirections of (arch, seed) (built on first use in this process) and its row."""
    if (arch, seed) not in dirs:
      d, secs = build_directions(arch, init(arch, seed), arch_inputs[arch][0], k=s.k,
                                 subsample=sub, g=s.g, seed=seed, loss=s.directions_loss,
                                 compute_beta=s.pgd_step == "stable")
      row = dict(arch=arch, seed=seed, k=s.k, subsample=int(d.n_points),
                 lam1=float(d.values[0]), lam_k=float(d.values[-1]),
                 lam_k1=float(d.next_value), lam1_over_lamk1=float(d.values[0] / d.next_value),
                 max_residual=float(np.max(d.residuals)) if d.residuals is not None else None,
                 directions_s=secs)
      dirs[arch, seed] = (d, row)
      ctx.print(f"{arch} seed {seed}: directions k={s.k} on {row['subsample']} points in "
                f"{secs:.1f} s, λ₁/λ_(k+1) = {row['lam1_over_lamk1']:.1f}")
    return dirs[arch, seed]

  def directions_row(arch, seed):
    """Cost and spectrum (a stored record on a resumed run: no recomputation)."""
    return ctx.cached(f"{arch}/seed={seed}/directions/{dkey}",
                      lambda: dict(kind="directions", **directions(arch, seed)[1]))

  rules = {}

  def base_lr(rule, arch, seed, bsz):
    """(unit of the pgd grid, seconds to measure it) of (arch, seed, batch size), once."""
    if (rule, arch, seed, bsz) not in rules:
      t0 = time.perf_counter()
      unit = pgd_base_lr(rule, directions(arch, seed)[0], bsz, arch=arch,
                         params=init(arch, seed)["params"],
                         batch=rule_batch(arch_inputs[arch][0], y, bsz, seed))
      rules[rule, arch, seed, bsz] = (unit, time.perf_counter() - t0)
    return rules[rule, arch, seed, bsz]

  def one(arch, bs, steps, every, method, value, seed):
    """One run (cached by key): method at grid value on seed."""
    b = None if int(bs) == 0 else int(bs)
    rule = s.pgd_step if METHODS[method].step_rule else "absolute"
    key = f"{arch}/b={_bname(bs)}/{method}/{rule}={value:g}/seed={seed}" + (
        f"/{dkey}" if METHODS[method].uses_directions else "")

    def compute():
      d, dsec, unit = None, 0.0, 1.0
      if METHODS[method].uses_directions:
        d = directions(arch, seed)[0]
        dsec = float(directions_row(arch, seed)["directions_s"])
      if rule != "absolute":
        unit, rsec = base_lr(rule, arch, seed, b or n)
        dsec += rsec if rule == "measured" else 0.0
      lr = value * unit
      tx = make_tx(method, lr, momentum=opts.momentum, directions=d,
                   muon_conv=opts.muon_conv)
      x, x_test = arch_inputs[arch]
      rec = train_run(arch, init(arch, seed)["params"], tx, x, y, x_test, y_test,
                      batch_size=b, steps=int(steps), eval_every=int(every), seed=seed,
                      progress=ctx.show_progress, desc=key, loop=s.loop)
      ctx.print(f"  {key}: final acc {rec['final_acc']:.3f}, {rec['per_step_ms']:.2f} "
                f"ms/step ({rec['loop']})" + (" (diverged)" if rec["diverged"] else ""))
      return dict(rec, arch=arch, batch=_bname(bs), method=method, step_rule=rule,
                  grid_value=float(value), lr=float(lr), seed=seed,
                  one_off_s=one_off_s(method, dsec))
    return ctx.cached(key, compute)

  grid_rows, results, goal_rows, per_setting = [], [], [], []
  for arch, bs, steps, every in s.settings:
    bname = _bname(bs)
    best_runs = {}
    for method in methods:
      scored = []
      for value in grid(s, method):
        recs = [one(arch, bs, steps, every, method, value, seed) for seed in tune]
        grid_rows += [dict(arch=arch, batch=bname, method=method, step_rule=r["step_rule"],
                           grid_value=value, lr=r["lr"], seed=r["seed"], steps=r["steps_run"],
                           final_acc=r["final_acc"], max_acc=r["max_acc"],
                           final_test_loss=r["final_test_loss"], per_step_ms=r["per_step_ms"],
                           loop=r["loop"], diverged=r["diverged"]) for r in recs]
        score = np.mean([-1.0 if r["diverged"] else r["final_acc"] for r in recs])
        scored.append((score, np.mean([r["max_acc"] for r in recs]), value))
      value = max(scored)[2]
      best_runs[method] = [one(arch, bs, steps, every, method, value, seed) for seed in seeds]
    rows, info = summarize(best_runs, ref=REFERENCE_ACCURACY[arch])
    for r in rows:
      r.update(arch=arch, batch=bname, steps_budget=int(steps))
    results += rows
    per_setting.append((arch, bname, best_runs, info))
    reach = [r for r in rows if r["reached_target"] == f"{len(seeds)}/{len(seeds)}"]
    fastest = min(reach, key=lambda r: r["wall_s_to_target"]) if reach else None
    by = {r["method"]: r for r in rows}
    row = dict(
        arch=arch, batch=bname, target_acc=info["target_acc"],
        best_baseline=info["best_baseline"],
        best_baseline_s=by[info["best_baseline"]]["wall_s_to_target"],
        fastest=fastest["method"] if fastest else "none",
        fastest_s=fastest["wall_s_to_target"] if fastest else None,
        speedup=(by[info["best_baseline"]]["wall_s_to_target"] / fastest["wall_s_to_target"]
                 if fastest else None),
        equal_time_s=info["equal_time_s"],
        best_at_equal_time=max(rows, key=lambda r: r["acc_at_equal_time"] or -1)["method"])
    # The goal: a PGD method reaches the target on every seed, >= goal_speedup x faster than
    # the fastest baseline that does (if any), within acc_tolerance of it at the end.
    reached = {r["method"] for r in reach}
    base_s = [by[m]["wall_s_to_target"] for m in reached if m in BASELINES]
    for m in by:
      if METHODS[m].uses_directions:
        t = by[m]["wall_s_to_target"] if m in reached else None
        row[f"goal_{m}"] = None if not set(by) & set(BASELINES) else bool(   # no baseline
            t is not None and by[m]["final_acc"] >= info["target_acc"] - s.acc_tolerance
            and (not base_s or min(base_s) >= s.goal_speedup * t))
    goal_rows.append(row)
  ctx.write_table(grid_rows, name="grid")
  dir_keys = sorted({(a, sd) for a, b, br, _ in per_setting for m, rs in br.items()
                     if METHODS[m].uses_directions for sd in seeds})
  if dir_keys:
    ctx.write_table([directions_row(a, sd) for a, sd in dir_keys], name="directions",
                    columns=["arch", "seed", "k", "subsample", "lam1", "lam_k", "lam_k1",
                             "lam1_over_lamk1", "max_residual", "directions_s"])
  cols = ["arch", "batch", "method", "lr", "grid_value", "seeds", "steps_budget",
          "final_acc", "final_acc_std", "target_acc", "reached_target", "steps_to_target",
          "wall_s_to_target", "wall_s_to_target_std", "reached_ref", "steps_to_ref",
          "wall_s_to_ref", "per_step_ms", "one_off_s", "train_s", "total_s",
          "acc_at_equal_time", "acc_at_equal_time_std", "equal_time_s", "diverged"]
  ctx.write_table(results, columns=cols)
  ctx.write_table(goal_rows, name="summary")
  ctx.log_metrics(dict(kind="summary", rows=goal_rows))

  # ---- plots: per setting, mean ± std over seeds of every method at its best step ----------
  for arch, bname, best_runs, info in per_setting:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for i, (m, rs) in enumerate(best_runs.items()):
      L = min(len(r["curve_acc"]) for r in rs)
      acc = np.asarray([r["curve_acc"][:L] for r in rs])
      stp = np.asarray(rs[0]["curve_step"][:L])
      sec = np.mean([np.asarray(r["curve_time"][:L]) + r["one_off_s"] for r in rs], 0)
      mu, sd = acc.mean(0), acc.std(0)
      lab = f"{m} lr={rs[0]['lr']:.3g}"
      for ax, xs in ((axes[0], stp), (axes[1], sec)):
        ax.plot(xs, mu, color=f"C{i}", label=lab)
        ax.fill_between(xs, mu - sd, mu + sd, color=f"C{i}", alpha=0.2, lw=0)
    for ax in axes:
      ax.axhline(REFERENCE_ACCURACY[arch], color="gray", ls=":", lw=0.8)
      ax.axhline(info["target_acc"], color="k", ls="--", lw=0.6)
      ax.set_ylabel("test accuracy")
    axes[0].set(xlabel="step", title=f"{arch}, b = {bname}")
    axes[1].set(xlabel="wall time [s] (training + one-off directions)",
                title=f"mean ± std over {len(seeds)} seed(s)")
    axes[0].legend(fontsize=7)
    ctx.savefig(fig, f"accuracy_{arch}_b{bname}")
  return results
