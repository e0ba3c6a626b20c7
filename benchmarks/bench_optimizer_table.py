"""The optimizer table: the MSK preconditioner against tuned SGD-momentum, Adam and Muon.

Command::

  python -m benchmarks.bench_optimizer_table                 # every row (48 min on 2 loaded cores)
  python -m benchmarks.bench_optimizer_table --quick         # smoke run (tiny budgets)
  python -m benchmarks.bench_optimizer_table --only mlp128,regression --seeds 3
  python -m benchmarks.bench_optimizer_table --steprule --only mlp128 [--safety 0.5]
  python -m benchmarks.bench_optimizer_table --steprule --only track --track-factor 2
  python -m benchmarks.bench_optimizer_table --steprule-table benchmarks/results/steprule_*.json

Each row is one setting, every method side by side in this process (float32, CPU):

* ``mlp128``, ``mlp512``, ``mlpfull`` — MNIST-1D MLP 40-256-256-10, b = 128 / 512 / full
  batch (4000 points); ``cnn128``, ``cnn512`` — the MNIST-1D 1-D CNN (three stride-2 convs
  of 32 channels). Models, loss, initialisation, directions, optimizers and training runs are
  those of the MNIST-1D program (``mskjax/experiments/mnist1d.py``: ``init_params``,
  ``build_directions``, ``pgd_base_lr``, ``make_tx``, ``train_run``, the latter through
  ``mskjax.train.fit`` with ``loop='auto'``: a Python loop of the jitted step for the CNN on
  the CPU). Metric: test accuracy (higher is better).
* ``mlp128_100k`` — the same MLP at b = 128 on 100,000 training / 25,000 test sequences
  (3000 steps), directions on the same s points: does the step advantage survive when data,
  not optimisation, limits accuracy?
* ``regression`` — standard-parameterised ReLU MLP 1-512-512-1, biases N(0, 1), 256 points
  of Σ sin(2πkx), k ∈ {1, 4, 16, 32}, mean MSE, full batch (``regression_problem`` of
  ``benchmarks/bench_steps.py``); directions: flatten k = 16 of J Jᵀ on all points. Metric:
  final train loss ½·mean r² (lower is better).
* ``digits`` — the README example: sklearn digits (1797 images), the README's own flax MLP
  64-256-256-10, minibatches of 128, cross-entropy on one-hot labels; directions: flatten
  k = 20 of the cross-entropy's Gauss–Newton kernel on 200 points. Metric: final train
  cross-entropy (lower is better).

Methods (the registry ``METHODS`` of the MNIST-1D program): ``sgd`` (momentum 0.9),
``adam``, ``muon`` (``optax.contrib.muon``), ``pgd`` (``msk_sgd(η, d,
momentum=0)``, η = factor × the measured rule ``stable_learning_rate(d, b, loss_fn=,
params=, batch=)`` at initialisation on one random batch of b points), ``pgd_m``
(``msk_sgd(lr, d, momentum=0.9)`` on SGD-momentum's own learning-rate grid: P added to the
tuned baseline) and ``pgd_adam``
(``chain(scale_by_msk(d), adam(lr))``). Each grid value runs on the first seed, and a grid
whose best value is at an end grows past it (``mskjax.experiments._grid.tune_grid``, at
most :data:`WIDEN` values per end; not past a diverged value); the best (final metric;
diverged runs last) runs on the other seeds. PGD's one-off cost = the cold
directions build (compilation included) + the step measurement of the row's first seed; it
is added to every seed's PGD wall time (later seeds reuse the compilations in this process,
which a user's fresh process would not; their own measured one-off is kept as
``one_off_measured_s``). Target of a row = the best baseline's (sgd / adam / muon) mean final metric;
time to target = training wall time (compilation and evaluations excluded) to the first
evaluation at the target + the one-off cost, mean over the seeds that reach it.

``--steprule``: the step-rule study instead (:func:`steprule_row`: ``pgd`` at factors of 2 of
the measured rule on every seed and λ̂'s spread over batches; ``track``: λ̂ over training and
re-estimation, :func:`steprule_track`; ``reuse``: the estimator's compilation,
:func:`steprule_reuse`), raw numbers in ``benchmarks/results/steprule_*.json``.

Raw numbers: ``benchmarks/results/optimizer_table_<UTC>.json``; a markdown table is printed.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import time

import numpy as np

import jax
import jax.numpy as jnp
import optax

from mskjax.experiments._grid import tune_grid

RESULTS = os.path.join(os.path.dirname(__file__), "results")

#: The rows: kind, architecture, batch size (None = full batch), steps, evaluate every,
#: headline seeds, and the grids (×≈3 for learning rates, factors of 2 of the rule for pgd).
MNIST_GRIDS = {
    "mlp128": dict(sgd=(0.03, 0.1, 0.3), adam=(3e-3, 1e-2, 3e-2), muon=(1e-2, 3e-2, 0.1),
                   pgd=(0.5, 1.0, 2.0, 4.0), pgd_adam=(3e-3, 1e-2)),
    "mlp512": dict(sgd=(0.1, 0.3, 1.0), adam=(1e-2, 3e-2, 0.1), muon=(3e-2, 0.1, 0.3),
                   pgd=(0.5, 1.0, 2.0, 4.0), pgd_adam=(3e-3, 1e-2)),
    "mlp128_100k": dict(sgd=(0.03, 0.1, 0.3), adam=(1e-3, 3e-3, 1e-2), muon=(1e-2, 3e-2, 0.1),
                        pgd=(0.5, 1.0, 2.0, 4.0), pgd_adam=(1e-3, 3e-3)),
    "mlpfull": dict(sgd=(0.3, 1.0, 3.0), adam=(3e-3, 1e-2, 3e-2), muon=(1e-2, 3e-2, 0.1),
                    pgd=(0.5, 1.0, 2.0, 4.0)),
    "cnn128": dict(sgd=(0.03, 0.1, 0.3), adam=(3e-3, 1e-2, 3e-2), muon=(1e-2, 3e-2, 0.1),
                   pgd=(0.5, 1.0, 2.0, 4.0)),
    "cnn512": dict(sgd=(0.1, 0.3, 1.0), adam=(3e-3, 1e-2, 3e-2), muon=(1e-2, 3e-2, 0.1),
                   pgd=(0.5, 1.0, 2.0, 4.0)),
}
ROWS = {
    "mlp128": dict(kind="mnist1d", arch="mlp", b=128, steps=2000, every=100, seeds=3),
    "mlp512": dict(kind="mnist1d", arch="mlp", b=512, steps=800, every=50, seeds=3),
    "mlpfull": dict(kind="mnist1d", arch="mlp", b=None, steps=200, every=10, seeds=3),
    # n = 100k (load_mnist1d(num_samples=125000): 100k train / 25k test; the first call
    # generates and caches the set, ~1 min): same model, directions on the same s points
    "mlp128_100k": dict(kind="mnist1d", arch="mlp", b=128, steps=3000, every=250, seeds=3,
                        num_samples=125000),
    "cnn128": dict(kind="mnist1d", arch="cnn", b=128, steps=1000, every=50, seeds=3),
    "cnn512": dict(kind="mnist1d", arch="cnn", b=512, steps=500, every=25, seeds=1),
    "regression": dict(kind="regression", b=None, steps=1000, every=50, seeds=1,
                       grids=dict(sgd=(3e-4, 1e-3, 3e-3), adam=(3e-4, 1e-3, 3e-3),
                                  muon=(1e-3, 3e-3, 1e-2), pgd=(0.25, 0.5, 1.0, 2.0))),
    "digits": dict(kind="digits", b=128, steps=300, every=20, seeds=3,
                   grids=dict(sgd=(0.1, 0.3, 1.0), adam=(3e-3, 1e-2, 3e-2),
                              muon=(3e-3, 1e-2, 3e-2), pgd=(0.5, 1.0, 2.0, 4.0),
                              pgd_adam=(1e-3, 3e-3))),
}
for _name, _g in MNIST_GRIDS.items():
  ROWS[_name]["grids"] = _g
for _spec in ROWS.values():           # P on top of the tuned baseline: SGD-m's own grid
  _spec["grids"]["pgd_m"] = _spec["grids"]["sgd"]
BASELINES = ("sgd", "adam", "muon")
#: msk_sgd without momentum: the measured rule is the step of preconditioned GD (with
#: heavy-ball momentum 0.9 the effective step is 10× larger).
PGD_MOMENTUM = 0.0
_DIRECTIONS = {}     # (setting, seed) -> (directions, build s): one build per process
MNIST_DIRECTIONS = dict(k=30, subsample=500, g="flatten", loss="softmax_cross_entropy")


# ------------------------------------------------------------------ settings
class Setting:
  """One row's problem: ``params(seed)``, ``directions(seed) -> (d, s)``,
  ``rule(d, seed) -> (η, s)``, ``train(params, tx, seed) -> record``; ``higher`` tells
  whether the metric (``record['curve_metric']``) is better when higher."""


def _timed(fn, *args, **kwargs):
  """``(fn(*args, **kwargs), wall seconds)``, the result's arrays ready (a one-off cost,
  cold: compilation included)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args, **kwargs))
  return out, time.perf_counter() - t0


def mnist1d_setting(arch, b, steps, every, quick, num_samples=5000):
  from mskjax import data
  from mskjax.experiments import mnist1d as M
  ds = data.load_mnist1d(num_samples=1000 if quick else num_samples)
  x = M.inputs(arch, jnp.asarray(ds.x_train, jnp.float32))
  xt = M.inputs(arch, jnp.asarray(ds.x_test, jnp.float32))
  y, yt = jnp.asarray(ds.y_train), jnp.asarray(ds.y_test)
  n = x.shape[0]
  dopt = dict(MNIST_DIRECTIONS, **(dict(k=10, subsample=100) if quick else {}))
  s = Setting()
  s.name, s.metric, s.higher, s.n = f"MNIST-1D {arch.upper()}", "test acc", True, n
  s.params = functools.lru_cache(None)(lambda seed: M.init_params(arch, x, seed)["params"])

  def directions(seed):
    d, sec = M.build_directions(arch, M.init_params(arch, x, seed), x, k=dopt["k"],
                                subsample=dopt["subsample"], g=dopt["g"], seed=seed,
                                loss=dopt["loss"])
    return d, sec
  s.directions = directions

  s.rule_loss, s.rule_b, s.xy = M.rule_loss_fn(arch), b or n, (x, y, xt, yt)
  s.rule_batch = lambda j: M.rule_batch(x, y, b or n, j)

  def rule(d, seed):
    return _timed(M.pgd_base_lr, "measured", d, b or n, arch=arch, params=s.params(seed),
                  batch=M.rule_batch(x, y, b or n, seed))
  s.rule = rule

  def train(params, tx, seed, hparams=None):
    rec = M.train_run(arch, params, tx, x, y, xt, yt, batch_size=b, steps=steps,
                      eval_every=every, seed=seed, loop="auto", hparams=hparams)
    rec["curve_metric"] = rec["curve_acc"]
    rec["final_metric"] = rec["final_acc"]
    return rec
  s.train = train
  s.directions_desc = (f"k = {dopt['k']} flatten, s = {dopt['subsample']} points, "
                       f"loss = {dopt['loss']}")
  return s


def _fit_record(loss3, params, tx, data, b, steps, every, seed, evaluate, key, hparams=None):
  """One run through mskjax.train.fit (loop='auto') with the evaluation ``key`` as metric."""
  from mskjax import train as T
  res = T.fit(loss3, params, tx, data, steps=steps, batch_size=b, seed=seed,
              evaluate=evaluate, eval_every=every, stop_above={"loss": 1e6}, loop="auto",
              hparams=hparams)
  h = res.history
  ran = int(res.state.step)
  metric = [float(v) for v in h[key]]
  return dict(diverged=res.stopped is not None, steps_run=ran,
              per_step_ms=1e3 * res.train_s / max(ran, 1), train_s=res.train_s,
              compile_s=res.compile_s, eval_s=res.eval_s,
              curve_step=[int(v) for v in h["step"]], curve_time=[float(v) for v in h["time"]],
              curve_metric=metric, final_metric=metric[-1],
              **{k: float(np.asarray(v)[-1]) for k, v in h.items()
                 if k not in ("step", "time", key)})


def regression_setting(b, steps, every, quick):
  from benchmarks.bench_steps import regression_problem
  from mskjax import modifiers, optim, steps as S
  f, params0, data, loss, _ = regression_problem()
  n = data[0].shape[0]
  # k = 16: in float32 the kernel's numerical rank on these points is < 32 (λ₃₂ = 0.57 is
  # below msk_directions' round-off floor 2.8 at λ₁ = 1.5e5), so k = 32 is refused.
  k = 8 if quick else 16
  s = Setting()
  s.name, s.metric, s.higher, s.n = "regression MLP 1-512-512-1", "train MSE", False, n
  s.params = lambda seed: params0          # the bench_steps problem has one initialisation
  loss3 = lambda p, bt, idx: loss(p, bt)
  full = jax.jit(lambda p: loss(p, data))

  def directions(seed):
    return _timed(optim.msk_directions, f, params0, data[0], modifiers.flatten(), k,
                  compute_beta=False, key=jax.random.PRNGKey(seed))
  s.directions = directions

  s.rule_loss, s.rule_b = loss, n
  s.rule_batch = lambda j: data                # full batch: one batch only

  def rule(d, seed):
    return _timed(S.stable_learning_rate, d, n, loss_fn=loss, params=params0, batch=data)
  s.rule = rule
  s.train = lambda params, tx, seed, hparams=None: _fit_record(
      loss3, params, tx, data, b, steps, every, seed,
      lambda st: {"train_loss": full(st.params)}, "train_loss", hparams)
  s.directions_desc = f"k = {k} flatten, all {n} points, loss = mse"
  return s


def digits_setting(b, steps, every, quick):
  import flax.linen as nn
  from sklearn.datasets import load_digits

  from mskjax import modifiers, optim, steps as S

  X, labels = load_digits(return_X_y=True)
  X, Y = jnp.asarray(X / 16.0, jnp.float32), jax.nn.one_hot(labels, 10)
  lab = jnp.asarray(labels)
  n = X.shape[0]

  class MLP(nn.Module):                         # the README example's own model
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(nn.relu(nn.Dense(256)(nn.relu(nn.Dense(256)(x)))))

  model = MLP()
  loss = lambda p, bt: optax.softmax_cross_entropy(model.apply({"params": p}, bt[0]),
                                                   bt[1]).mean()
  loss3 = lambda p, bt, idx: loss(p, bt)

  @jax.jit
  def ev(p):
    logits = model.apply({"params": p}, X)
    return {"train_loss": optax.softmax_cross_entropy(logits, Y).mean(),
            "train_acc": jnp.mean(jnp.argmax(logits, 1) == lab)}

  init = jax.jit(model.init)
  k, sub = (10, 100) if quick else (20, 200)
  s = Setting()
  s.name, s.metric, s.higher, s.n = "digits MLP 64-256-256-10 (README)", "train CE", False, n
  s.params = functools.lru_cache(None)(
      lambda seed: init(jax.random.PRNGKey(seed), X[:1])["params"])

  def directions(seed):
    return _timed(optim.msk_directions, model.apply, {"params": s.params(seed)}, X,
                  modifiers.flatten(), k, subsample=sub, loss="softmax_cross_entropy",
                  key=jax.random.PRNGKey(seed))
  s.directions = directions

  def rule_batch(j):
    idx = np.sort(np.random.default_rng(j).choice(n, b, replace=False))
    return X[idx], Y[idx]
  s.rule_loss, s.rule_b, s.rule_batch = loss, b, rule_batch

  def rule(d, seed):
    return _timed(S.stable_learning_rate, d, b, loss_fn=loss, params=s.params(seed),
                  batch=rule_batch(seed))
  s.rule = rule
  s.train = lambda params, tx, seed, hparams=None: _fit_record(
      loss3, params, tx, (X, Y), b, steps, every, seed, lambda st: ev(st.params),
      "train_loss", hparams)
  s.directions_desc = f"k = {k} flatten, s = {sub} points, loss = softmax_cross_entropy"
  return s


# ------------------------------------------------------------------ read-outs
def _ms(v):
  v = [x for x in v if x is not None and np.isfinite(x)]
  if not v:
    return None, None
  return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _score(rec, higher):
  m = rec["final_metric"]
  if rec["diverged"] or not np.isfinite(m):
    return -np.inf
  return m if higher else -m


def make_setting(spec, steps, every, quick):
  """The row's :class:`Setting` (its problem at this step budget)."""
  kind = spec["kind"]
  if kind == "mnist1d":
    return mnist1d_setting(spec["arch"], spec["b"], steps, every, quick,
                           spec.get("num_samples", 5000))
  if kind == "regression":
    return regression_setting(spec["b"], steps, every, quick)
  return digits_setting(spec["b"], steps, every, quick)


# ------------------------------------------------------------------ one row
#: Most values added past each end of a grid when its best value is at that end.
WIDEN = 2


def run_row(name, spec, *, quick=False, seeds=None, log=print):
  from mskjax.experiments import mnist1d as M
  steps, every = spec["steps"], spec["every"]
  if quick:
    steps, every = max(steps // 30, 10), max(every // 10, 5)
  st = make_setting(spec, steps, every, quick)
  nseeds = int(seeds or spec["seeds"]) if not quick else 1
  seed_list = list(range(nseeds))
  grids = {m: (g[len(g) // 2:len(g) // 2 + 1] if quick else tuple(g))
           for m, g in spec["grids"].items()}
  t_row = time.perf_counter()
  log(f"== {name}: {st.name}, b = {spec['b'] or 'full'}, {steps} steps, seeds {seed_list}, "
      f"uptime: {os.popen('uptime').read().strip()}")
  dirs, factories = {}, {}

  def factory(method, d):
    """``tx(lr)`` of a method (its learning rate traced: one compilation per method and
    directions, not per grid value)."""
    key = (method, id(d))
    if key not in factories:
      opts = M.Options(PGD_MOMENTUM if method == "pgd" else 0.9, "matrix")
      make = M.METHODS[method].make
      factories[key] = lambda lr: make(lr, d, opts)
    return factories[key]

  cold = {}

  def pgd_parts(seed):
    if seed not in dirs:
      ck = (st.name, st.n, seed, quick)    # the MLP rows share the directions at init
      if ck not in _DIRECTIONS:
        _DIRECTIONS[ck] = st.directions(seed)
      d, dsec = _DIRECTIONS[ck]           # each row still pays the build time
      eta, rsec = st.rule(d, seed)
      dirs[seed] = (d, dsec, eta, rsec)
      # the first seed's one-off is cold (its programs compile here); later seeds reuse the
      # compilations, which a user's fresh process would not: every seed is charged this one
      cold.setdefault("s", dsec + rsec)
      log(f"  seed {seed}: directions {dsec:.1f} s ({st.directions_desc}), "
          f"λ₁ = {float(d.values[0]):.4g}, rule η = {eta:.4g} ({rsec:.1f} s)")
    return dirs[seed]

  def one(method, value, seed):
    meth = M.METHODS[method]
    d, off, unit = None, 0.0, 1.0
    if meth.uses_directions:
      d, dsec, eta, rsec = pgd_parts(seed)
      off = cold["s"]
      if meth.step_rule:
        unit = eta
    lr = value * unit
    rec = st.train(st.params(seed), factory(method, d), seed,
                   hparams=jnp.asarray(lr, jnp.float32))
    rec.update(method=method, grid_value=float(value), lr=float(lr), seed=seed, one_off_s=off,
               one_off_measured_s=(dirs[seed][1] + dirs[seed][3]) if d is not None else 0.0)
    log(f"  {method:8s} {'×' if meth.step_rule else 'lr '}{value:<7g} seed {seed}: "
        f"{st.metric} {rec['final_metric']:.4g}, {rec['per_step_ms']:.2f} ms/step"
        + (" DIVERGED" if rec["diverged"] else ""))
    return rec

  methods = list(grids)
  grid_runs, best = {}, {}
  for m in methods:
    by_value = {}

    def try_value(v, m=m, by_value=by_value):
      by_value[v] = one(m, v, seed_list[0])
      return -_score(by_value[v], st.higher), by_value[v]["diverged"]
    # widen at an edge until the best is inside (not in a quick run)
    tune_grid(try_value, grids[m], 0 if quick else WIDEN, log=lambda s: log("  " + s),
              name=m)
    grids[m] = tuple(sorted(by_value))
    recs = [by_value[v] for v in grids[m]]
    grid_runs[m] = [dict(grid_value=r["grid_value"], lr=r["lr"], final=r["final_metric"],
                         diverged=r["diverged"]) for r in recs]
    i = int(np.argmax([_score(r, st.higher) for r in recs]))
    best[m] = [recs[i]] + [one(m, grids[m][i], sd) for sd in seed_list[1:]]

  # ---- read-outs
  finals = {m: _ms([r["final_metric"] for r in rs])[0] for m, rs in best.items()}
  bases = [m for m in methods if m in BASELINES and finals[m] is not None]
  pick = max if st.higher else min
  best_base = pick(bases, key=lambda m: finals[m])
  target = finals[best_base]
  rows = []
  for m, rs in best.items():
    hits = [M.first_reach(r, target, r["one_off_s"], key="curve_metric", higher=st.higher)
            for r in rs]
    hits = [None if h[0] is None else (h[1], h[0]) for h in hits]    # (seconds, steps)
    g = grids[m]
    i = g.index(rs[0]["grid_value"])
    row = dict(method=m, seeds=len(rs), best_value=rs[0]["grid_value"], lr=rs[0]["lr"],
               grid=list(g), at_grid_edge=len(g) > 1 and i in (0, len(g) - 1),
               final=finals[m], final_std=_ms([r["final_metric"] for r in rs])[1],
               reached=f"{sum(h is not None for h in hits)}/{len(rs)}",
               wall_s_to_target=_ms([h[0] if h else None for h in hits])[0],
               wall_s_to_target_std=_ms([h[0] if h else None for h in hits])[1],
               steps_to_target=_ms([h[1] if h else None for h in hits])[0],
               per_step_ms=_ms([r["per_step_ms"] for r in rs])[0],
               train_s=_ms([r["train_s"] for r in rs])[0],
               one_off_s=_ms([r["one_off_s"] for r in rs])[0],
               diverged=sum(bool(r["diverged"]) for r in rs),
               loop=rs[0].get("loop"))
    if M.METHODS[m].uses_directions:
      row["directions_s"] = dirs[seed_list[0]][1]        # cold: what every seed is charged
      row["rule_s"] = dirs[seed_list[0]][3]
      row["directions_reused_s"] = _ms([dirs[sd][1] for sd in seed_list[1:]])[0]
      row["rule_reused_s"] = _ms([dirs[sd][3] for sd in seed_list[1:]])[0]
      row["eta_rule"] = _ms([dirs[sd][2] for sd in seed_list])[0]
    rows.append(row)
  by = {r["method"]: r for r in rows}
  reach_base = [by[m] for m in bases if by[m]["reached"] == f"{nseeds}/{nseeds}"]
  fastest = min(reach_base, key=lambda r: r["wall_s_to_target"]) if reach_base else None
  t_base_total = by[best_base]["train_s"]
  for r in rows:
    rs = best[r["method"]]
    r["metric_at_best_baseline_time"] = _ms(
        [M.acc_at_time(x, t_base_total, x["one_off_s"], key="curve_metric") for x in rs])[0]
    if fastest and r["wall_s_to_target"] and r["reached"] == f"{nseeds}/{nseeds}":
      r["speedup_vs_fastest_baseline"] = fastest["wall_s_to_target"] / r["wall_s_to_target"]
      tr = r["wall_s_to_target"] - r["one_off_s"]
      r["speedup_training_only"] = fastest["wall_s_to_target"] / tr if tr > 0 else None
    r["per_step_vs_sgd"] = r["per_step_ms"] / by["sgd"]["per_step_ms"]
  out = dict(row=name, setting=st.name, metric=st.metric, higher_is_better=st.higher,
             batch=spec["b"] or "full", n=st.n, steps=steps, eval_every=every, seeds=seed_list,
             target=target, best_baseline=best_base,
             fastest_baseline=fastest["method"] if fastest else None,
             directions=st.directions_desc, methods=rows, grid=grid_runs,
             row_s=time.perf_counter() - t_row,
             uptime_end=os.popen("uptime").read().strip())
  log(f"  row {name}: {out['row_s']:.0f} s; target {target:.4g} ({best_base})")
  return out


# ------------------------------------------------------------------ the step rule
#: Factors of the measured rule tried on every seed (``--steprule``); the grid grows by ×2
#: past its top while the top factor is stable, up to :data:`STEPRULE_MAX`.
STEPRULE_FACTORS = (0.5, 1.0, 2.0, 4.0, 8.0)
STEPRULE_MAX = 32.0


def _lam(st, d, seed, batch, safety=1.0):
  """λ̂ at the seed's θ₀ on ``batch``: 1/η of the rule at safety 1 (same Lanczos)."""
  from mskjax import steps as S
  return 1.0 / S.stable_learning_rate(d, st.rule_b, loss_fn=st.rule_loss,
                                      params=st.params(seed), batch=batch, safety=safety)


def steprule_row(name, spec, *, quick=False, seeds=None, n_batches=8, safety=None,
                 factors=None, steps=None, first_seed=0, log=print):
  """``pgd`` (``msk_sgd``, no momentum) at every factor of :data:`STEPRULE_FACTORS` × the
  measured rule on EVERY seed (no tuning on seed 0 only), plus λ̂ at θ₀ on ``n_batches``
  other random batches of the training size (its spread: how much the one batch the rule
  measures on decides the step). ``safety``: the rule is safety/λ̂ (default the library's
  :data:`mskjax.steps.SAFETY`). ``factors``, ``steps``: another grid (not grown) or
  budget; seeds ``first_seed, first_seed + 1, ...``."""
  from mskjax import steps as S
  from mskjax.experiments import mnist1d as M
  steps, every = steps or spec["steps"], spec["every"]
  if quick:
    steps, every = max(steps // 30, 10), max(every // 10, 5)
  st = make_setting(spec, steps, every, quick)
  nseeds = int(seeds or spec["seeds"]) if not quick else 1
  t_row = time.perf_counter()
  up = os.popen("uptime").read().strip()
  safety = float(S.SAFETY if safety is None else safety)
  log(f"== steprule {name}: {st.name}, b = {spec['b'] or 'full'}, {steps} steps, "
      f"{nseeds} seeds, rule = {safety:g}/λ̂, uptime: {up}")
  per_seed = []
  for seed in range(first_seed, first_seed + nseeds):
    d, dsec = st.directions(seed)
    eta, rsec = st.rule(d, seed)
    lam = S.SAFETY / eta
    eta = safety / lam
    full = spec["b"] is None
    lams = [] if full else [_lam(st, d, seed, st.rule_batch(1000 + j))
                            for j in range(2 if quick else n_batches)]
    log(f"  seed {seed}: directions {dsec:.1f} s, rule η = {eta:.4g} (λ̂ = {lam:.4g}, "
        f"{rsec:.1f} s); λ̂ on {len(lams)} other batches: "
        + (f"min {min(lams):.4g} median {np.median(lams):.4g} max {max(lams):.4g}"
           if lams else "– (full batch)"))
    opts = M.Options(PGD_MOMENTUM, "matrix")
    tx = lambda lr, d=d: M.METHODS["pgd"].make(lr, d, opts)
    grow = factors is None
    factors, runs, i = list((1.0,) if quick else factors or STEPRULE_FACTORS), [], 0
    while i < len(factors):
      f = factors[i]
      rec = st.train(st.params(seed), tx, seed, hparams=jnp.asarray(f * eta, jnp.float32))
      runs.append(dict(factor=f, lr=f * eta, final=rec["final_metric"],
                       diverged=bool(rec["diverged"]), steps_run=rec["steps_run"],
                       per_step_ms=rec["per_step_ms"],
                       curve_step=rec["curve_step"], curve_metric=rec["curve_metric"]))
      log(f"    ×{f:<5g} lr {f * eta:.4g}: {st.metric} {rec['final_metric']:.4g}"
          + (f" DIVERGED at step {rec['steps_run']}" if rec["diverged"] else ""))
      if (grow and i == len(factors) - 1 and not rec["diverged"] and 2 * f <= STEPRULE_MAX
          and not quick):
        factors.append(2 * f)
      i += 1
    per_seed.append(dict(seed=seed, eta_rule=eta, lam_rule=lam, rule_s=rsec,
                         directions_s=dsec, lam_batches=lams, runs=runs))
  out = dict(row=name, setting=st.name, metric=st.metric, higher_is_better=st.higher,
             batch=spec["b"] or "full", steps=steps, safety=safety, seeds=per_seed,
             uptime_start=up, uptime_end=os.popen("uptime").read().strip(),
             row_s=time.perf_counter() - t_row)
  log(f"  row {name}: {out['row_s']:.0f} s; {out['uptime_end']}")
  return out


def steprule_track(spec, *, seed=0, segment=250, factor=2.0, quick=False, log=print):
  """MNIST-1D MLP: how λ̂ evolves over training, and what re-estimating the step buys.

  Two runs of ``optax.inject_hyperparams(msk_sgd)`` (no momentum) in segments of
  ``segment`` steps through ``train.fit`` (resumed from its state: no recompilation):
  ``fixed`` at ``factor`` × the rule at θ₀ throughout; ``reestimated``: after every
  segment η ← factor × SAFETY/λ̂_t (``curvature_estimator`` on a fresh random batch of the
  training size, ``steps.set_learning_rate``). After each segment: test accuracy, λ̂ on the
  rule's own batch (the one measured at θ₀) and on a fresh batch, the estimator's seconds.
  """
  import mskjax
  from mskjax import steps as S, train as T
  from mskjax.experiments import mnist1d as M
  steps = spec["steps"] if not quick else 2 * segment
  b = spec["b"]
  st = make_setting(spec, steps, segment, quick)
  x, y, xt, yt = st.xy
  d, _ = st.directions(seed)
  eta0, _ = st.rule(d, seed)
  t0 = time.perf_counter()
  est = S.curvature_estimator(st.rule_loss, d)
  first = est(st.params(seed), st.rule_batch(seed))
  jax.block_until_ready(first)
  est_cold = time.perf_counter() - t0
  ev = M.eval_fn(spec["arch"])
  loss = M.loss_fn(spec["arch"])
  out = dict(setting=st.name, batch=b, steps=steps, segment=segment, factor=factor,
             safety=S.SAFETY, eta_rule=eta0, estimator_cold_s=est_cold,
             uptime_start=os.popen("uptime").read().strip(), runs={})
  log(f"== steprule track: {st.name}, b = {b}, {steps} steps, factor {factor}, rule η "
      f"{eta0:.4g}, estimator first call {est_cold:.1f} s")
  for mode in ("fixed", "reestimated"):
    tx = optax.inject_hyperparams(mskjax.msk_sgd)(learning_rate=factor * eta0, directions=d,
                                                  momentum=PGD_MOMENTUM)
    state, rows, lr, est_s, train_s = None, [], factor * eta0, 0.0, 0.0
    rng = np.random.default_rng(10_000 + seed)
    for k in range(steps // segment):
      res = T.fit(loss, st.params(seed) if state is None else None, tx, (x, y),
                  steps=segment, batch_size=b, seed=seed, state=state,
                  evaluate=lambda s_: ev(s_.params, xt, yt), eval_every=segment,
                  stop_above={"loss": 50.0}, loop="auto")
      state, train_s = res.state, train_s + res.train_s
      acc = float(res.history["acc"][-1])
      p = state.params
      t1 = time.perf_counter()
      lam_fresh = float(est(p, st.rule_batch(int(rng.integers(1 << 30))))[1])
      est_s += time.perf_counter() - t1
      lam_own = float(est(p, st.rule_batch(seed))[1])
      rows.append(dict(step=int(state.step), lr=lr, acc=acc, lam_fresh=lam_fresh,
                       lam_rule_batch=lam_own, diverged=res.stopped is not None))
      log(f"  {mode:11s} step {int(state.step):5d}: lr {lr:.4g} acc {acc:.4f} λ̂ fresh "
          f"{lam_fresh:.4g}, rule batch {lam_own:.4g}"
          + (" DIVERGED" if res.stopped is not None else ""))
      if res.stopped is not None:
        break
      if mode == "reestimated":
        lr = factor * S.SAFETY / lam_fresh
        state = state._replace(opt_state=S.set_learning_rate(state.opt_state, lr))
    out["runs"][mode] = dict(curve=rows, train_s=train_s, estimate_s=est_s,
                             final_acc=rows[-1]["acc"])
  out["uptime_end"] = os.popen("uptime").read().strip()
  return out


def steprule_markdown(rows):
  """Settings × steps in units of 1/λ̂₀ (λ̂₀ each seed's rule measurement): the final metric
  per seed (``div@t`` = stopped as diverged at step t), the best step of each seed, then per
  setting the step with the best mean over its seeds among those stable on every seed.
  Rows of the same setting (runs at another ``--safety``) are merged seed by seed."""
  merged = {}
  for row in rows:
    m = merged.setdefault(row["row"], dict(row, seeds={}))
    for sd in row["seeds"]:
      t = m["seeds"].setdefault(sd["seed"], dict(sd, steps={}))
      for r in sd["runs"]:
        t["steps"][round(r["factor"] * row["safety"], 6)] = r
  cells = sorted({c for m in merged.values() for t in m["seeds"].values() for c in t["steps"]})
  lines = ["| setting (metric) | seed | λ̂₀ (other batches: min–max) | "
           + " | ".join(f"{c:g}/λ̂₀" for c in cells) + " | best |",
           "|---|---|---|" + "---|" * (len(cells) + 1)]
  ok = lambda r: r is not None and not r["diverged"] and np.isfinite(r["final"])
  cell = lambda r: ("" if r is None else f"div@{r['steps_run']}" if r["diverged"]
                    else f"{r['final']:.4g}")
  pick = lambda m: max if m["higher_is_better"] else min
  for m in merged.values():
    for t in m["seeds"].values():
      good = [c for c in t["steps"] if ok(t["steps"][c])]
      best = pick(m)(good, key=lambda c: t["steps"][c]["final"]) if good else None
      lb = t["lam_batches"]
      spread = (f"{t['lam_rule']:.3g} ({min(lb):.3g}–{max(lb):.3g})" if lb
                else f"{t['lam_rule']:.3g} (full batch)")
      lines.append(f"| {m['row']} b = {m['batch']} ({m['metric']}) | {t['seed']} | {spread} | "
                   + " | ".join(cell(t["steps"].get(c)) for c in cells)
                   + f" | {'–' if best is None else format(best, 'g') + '/λ̂₀'} |")
    common = [c for c in cells if all(ok(t["steps"].get(c)) for t in m["seeds"].values())]
    if common and len(m["seeds"]) > 1:
      mean = {c: float(np.mean([t["steps"][c]["final"] for t in m["seeds"].values()]))
              for c in common}
      b = pick(m)(common, key=lambda c: mean[c])
      lines.append(f"| {m['row']}: best on every seed | mean | | "
                   + " | ".join(f"{mean[c]:.4g}" if c in mean else "" for c in cells)
                   + f" | {b:g}/λ̂₀ |")
  return "\n".join(lines)


def steprule_reuse(spec, log=print):
  """Seconds of a ``curvature_estimator``'s construction + first call, and of its next call:
  a first estimator, then a second one with the same loss and new directions (seed 1) and
  another safety (reuses the first's compilation if the estimator caches it)."""
  from mskjax import steps as S
  st = make_setting(spec, 10, 10, False)
  p, b = st.params(0), st.rule_batch(0)
  out = dict(uptime_start=os.popen("uptime").read().strip())
  for name, seed, kw in (("first", 0, {}), ("second", 1, dict(safety=1.0))):
    d, _ = st.directions(seed)
    t = time.perf_counter()
    est = S.curvature_estimator(st.rule_loss, d, **kw)
    jax.block_until_ready(est(p, b))
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(est(p, b))
    out[name] = dict(first_call_s=t1, next_call_s=time.perf_counter() - t)
    log(f"  {name} estimator: construction + first call {t1:.2f} s, next call "
        f"{out[name]['next_call_s']:.2f} s")
  return out


def steprule_main(a, names, out_path, meta):
  results = dict(meta, rows=[])
  for nm in names:
    if nm == "reuse":
      results["reuse"] = steprule_reuse(ROWS["mlp128"], log=lambda s: print(s, flush=True))
    elif nm == "track":
      results["track"] = steprule_track(ROWS["mlp128"], quick=a.quick,
                                        factor=a.track_factor,
                                        log=lambda s: print(s, flush=True))
    else:
      results["rows"].append(steprule_row(nm, ROWS[nm], quick=a.quick, seeds=a.seeds,
                                          safety=a.safety, steps=a.steps,
                                          first_seed=a.first_seed,
                                          factors=a.factors and tuple(
                                              float(v) for v in a.factors.split(",")),
                                          log=lambda s: print(s, flush=True)))
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
      json.dump(results, f, indent=1, default=float)
  if results["rows"]:
    print(steprule_markdown(results["rows"]))
  print(f"wrote {out_path}")
  return results


# ------------------------------------------------------------------ table
def _f(v, fmt="{:.3g}"):
  return "–" if v is None else fmt.format(v)


def markdown(results):
  lines = ["| setting | method | step: best (grid) | η rule → best | final (mean ± std) | "
           "to target: wall s (reached) | steps | one-off s | ms/step (×sgd) | speed-up |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for res in results:
    head = (f"{res['row']} (b = {res['batch']}, {res['steps']} st, {len(res['seeds'])} seed"
            f"{'s' if len(res['seeds']) > 1 else ''}; target {res['metric']} "
            f"{res['target']:.4g} = {res['best_baseline']})")
    for r in res["methods"]:
      step = (f"×{r['best_value']:g} of rule" if "eta_rule" in r and r["method"] == "pgd"
              else f"{r['lr']:g}") + (" (edge)" if r["at_grid_edge"] else "")
      rule = (f"{r['eta_rule']:.3g} → {r['lr']:.3g}" if r["method"] == "pgd" else "")
      lines.append(
          f"| {head} | {r['method']} | {step} | {rule} | {_f(r['final'], '{:.4g}')} ± "
          f"{_f(r['final_std'], '{:.2g}')} | {_f(r['wall_s_to_target'], '{:.1f}')} "
          f"({r['reached']}) | {_f(r['steps_to_target'], '{:.0f}')} | "
          f"{_f(r['one_off_s'], '{:.1f}')} | {_f(r['per_step_ms'], '{:.2f}')} "
          f"({r['per_step_vs_sgd']:.2f}) | {_f(r.get('speedup_vs_fastest_baseline'), '{:.2f}')} |")
      head = ""
  return "\n".join(lines)


def markdown_goal(results):
  """Per row: the fastest baseline to the target against each PGD method, and where PGD's
  time goes (one-off build + measurement, per-step cost)."""
  lines = ["| setting | target | fastest baseline: s to target | method | s to target "
           "(one-off incl.) | speed-up | speed-up on training alone | directions s | "
           "rule s | per step ×sgd | metric at the best baseline's run time |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for res in results:
    by = {r["method"]: r for r in res["methods"]}
    fb = res["fastest_baseline"]
    base = (f"{fb} {by[fb]['wall_s_to_target']:.1f}" if fb else "none reaches it on "
            "every seed")
    for m in ("pgd", "pgd_m", "pgd_adam"):
      if m not in by:
        continue
      r = by[m]
      lines.append(
          f"| {res['row']} | {res['metric']} {res['target']:.4g} ({res['best_baseline']}) | "
          f"{base} | {m} | {_f(r['wall_s_to_target'], '{:.1f}')} ({r['reached']}) | "
          f"{_f(r.get('speedup_vs_fastest_baseline'), '{:.2f}')} | "
          f"{_f(r.get('speedup_training_only'), '{:.2f}')} | {_f(r.get('directions_s'), '{:.1f}')}"
          f" | {_f(r.get('rule_s'), '{:.1f}')} | {r['per_step_vs_sgd']:.2f} | "
          f"{_f(r['metric_at_best_baseline_time'], '{:.4g}')} |")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke run)")
  ap.add_argument("--only", default=",".join(ROWS), help=f"rows among {','.join(ROWS)}")
  ap.add_argument("--seeds", type=int, default=None,
                  help="seeds per row (default: 3 for the MLP and digits rows, 1 otherwise)")
  ap.add_argument("--subsample", type=int, default=None,
                  help=f"points of the MNIST-1D rows' directions (default "
                       f"{MNIST_DIRECTIONS['subsample']})")
  ap.add_argument("--out", default=None, help="json path (default benchmarks/results/...)")
  ap.add_argument("--grid", action="append", default=[], metavar="METHOD=V1,V2,...",
                  help="replace a method's grid in every selected row (lr, or factors of the "
                       "rule for pgd); repeatable, e.g. --grid muon=0.02,0.03,0.05")
  ap.add_argument("--steprule", action="store_true",
                  help="the step-rule study instead: pgd at factors 0.5..8(..32) of the "
                       "measured rule on every seed, λ̂'s spread over batches; row 'track' "
                       "= λ̂ over training and re-estimation (MLP b = 128)")
  ap.add_argument("--safety", type=float, default=None,
                  help="--steprule: the rule tried is SAFETY/λ̂ (default mskjax.steps.SAFETY)")
  ap.add_argument("--factors", default=None,
                  help="--steprule: comma-separated factors of the rule (default 0.5..8, grown)")
  ap.add_argument("--steps", type=int, default=None, help="--steprule: another step budget")
  ap.add_argument("--first-seed", type=int, default=0, help="--steprule: first seed")
  ap.add_argument("--steprule-table", nargs="+", default=None, metavar="JSON",
                  help="print the merged step-rule table of these --steprule result files")
  ap.add_argument("--table", nargs="+", default=None, metavar="JSON",
                  help="print both tables of these result files merged (a row of a later "
                       "file replaces the same row of an earlier one: a rerun of one row)")
  ap.add_argument("--track-factor", type=float, default=2.0,
                  help="--steprule track: the factor of the rule both runs train at")
  a = ap.parse_args(argv)
  if a.subsample is not None:
    if a.subsample < 1:
      raise SystemExit(f"--subsample: must be ≥ 1; got {a.subsample}.")
    MNIST_DIRECTIONS["subsample"] = int(a.subsample)
  if a.table:
    merged = {}
    for f in a.table:
      for r in json.load(open(f))["rows"]:
        merged[r["row"]] = r
    rows = list(merged.values())
    print(markdown(rows))
    print()
    print(markdown_goal(rows))
    return rows
  if a.steprule_table:
    rows = [r for f in a.steprule_table for r in json.load(open(f))["rows"]]
    print(steprule_markdown(rows))
    return rows
  names = [r.strip() for r in a.only.split(",") if r.strip()]
  for spec in a.grid:
    meth, _, vals = spec.partition("=")
    try:
      values = tuple(float(v) for v in vals.split(",") if v.strip())
    except ValueError:
      values = ()
    if not values:
      raise SystemExit(f"--grid: expected METHOD=V1,V2,... (numbers); got {spec!r}.")
    for nm in names:
      if nm in ROWS:
        if meth not in ROWS[nm]["grids"]:
          raise SystemExit(f"--grid: row {nm} has no method {meth!r}; its methods: "
                           f"{sorted(ROWS[nm]['grids'])}.")
        ROWS[nm]["grids"] = dict(ROWS[nm]["grids"], **{meth: values})
  bad = [r for r in names if r not in ROWS and not (a.steprule and r in ("track", "reuse"))]
  if bad:
    raise SystemExit(f"--only: unknown row(s) {bad}; choose from {list(ROWS)}.")
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%MZ")
  out_path = a.out or os.path.join(
      RESULTS, f"optimizer_table_{'quick_' if a.quick else ''}{stamp}.json")
  meta = dict(command="python -m benchmarks.bench_optimizer_table "
              + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
              utc=stamp, uptime_start=os.popen("uptime").read().strip(),
              backend=jax.default_backend(), jax=jax.__version__)
  print(meta["uptime_start"], flush=True)
  if a.steprule:
    tag = ("" if a.safety is None else f"safety{a.safety:g}_") + (
        "" if a.steps is None else f"steps{a.steps}_") + (
        "" if not a.first_seed else f"from{a.first_seed}_")
    path = a.out or os.path.join(RESULTS, f"steprule_{'quick_' if a.quick else ''}{tag}"
                                 f"{'_'.join(names)}_{stamp}.json")
    return steprule_main(a, names, path, meta)
  results = []
  for nm in names:
    try:
      results.append(run_row(nm, ROWS[nm], quick=a.quick, seeds=a.seeds,
                             log=lambda s: print(s, flush=True)))
    except Exception as e:                    # one failing row does not lose the others
      print(f"row {nm} FAILED: {type(e).__name__}: {e}", flush=True)
      meta.setdefault("failed", {})[nm] = f"{type(e).__name__}: {e}"
      continue
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:            # after every row: a partial run keeps its rows
      json.dump(dict(meta, rows=results), f, indent=1, default=float)
  meta["uptime_end"] = os.popen("uptime").read().strip()
  with open(out_path, "w") as f:
    json.dump(dict(meta, rows=results), f, indent=1, default=float)
  print(markdown(results))
  print()
  print(markdown_goal(results))
  print(f"wrote {out_path}; {meta['uptime_end']}")
  return dict(meta, rows=results)


if __name__ == "__main__":
  main()
