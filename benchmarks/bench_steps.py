"""Step rules and tracking: what the MSK optimizers need to stay stable on real networks.

Three studies, each a ratio measured in one process (load cancels):

* ``tracking``: the lazy setting (one hidden ReLU layer of width 1024 in NTK scaling,
  first layer trained, 1024 points on the circle, target Σ_k sin(2πkθ) with
  k ∈ {0.2, 0.4, 0.8, 1.6}, θ ∈ [0, 2π) in radians, mean MSE, full batch, float32, 5000
  steps, flatten k = 10 at η = n/max g): plain GD, the function-space form ½rᵀSr, the
  fixed directions (:func:`mskjax.optim.msk_sgd`), and the tracking preconditioner
  (:func:`mskjax.optim.msk_sgd_tracking`), Löwdin ("tracking ...") and Rayleigh–Ritz
  ("tracking RR ..."), re-formed every step / every 10 steps / when the parameters moved
  by 1 % or 0.3 %; and tuned Adam. Records the time each method needs to reach tuned
  Adam's final (5000-step) train MSE, one-off costs included, over 3 seeds, with the
  per-step costs re-measured interleaved (the machine's load drifts during the runs).
* ``steps``: :func:`mskjax.steps.stable_learning_rate` from the measured curvature vs a
  grid of factors of 2 around it (MNIST-1D MLP b = 128 and 512, the regression MLP).
* ``compose``: ``chain(scale_by_msk, adam)`` and ``chain(scale_by_msk, sgd momentum)``
  against tuned Adam / SGD-momentum on MNIST-1D MLP b = 128.

Run: ``python -m benchmarks.bench_steps [--quick] [--only tracking,steps,compose]``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import jax
import jax.numpy as jnp
import optax

from mskjax import modifiers, optim, steps as steps_mod
from mskjax.msk import MSKSpectrum


# ------------------------------------------------------------------ the lazy setting
def lazy_problem(n=1024, width=1024, seed=0):
  theta = jnp.linspace(0.0, 2 * np.pi, n, endpoint=False)
  x = jnp.stack([jnp.cos(theta), jnp.sin(theta)], 1)
  y = sum(jnp.sin(2 * np.pi * f * theta) for f in (0.2, 0.4, 0.8, 1.6))
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = {"W": jax.random.normal(k1, (2, width)), "b": jax.random.normal(k2, (width,))}
  a = jax.random.normal(k3, (width,))

  def apply_fn(p, xx):   # NTK scaling; the output layer a is fixed
    return jax.nn.relu(xx @ p["W"] / np.sqrt(2.0) + p["b"]) @ a / np.sqrt(width)
  return x, y, params, apply_fn


def _run(apply_fn, params, x, y, tx, steps, spectrum=None):
  """Full-batch training in one compiled ``lax.scan`` (no convolutions here, so the scan
  costs what a Python loop of the jitted step costs).

  Returns ``(mse, seconds, compile_seconds, state)``: ``mse[t]`` the train MSE (mean r²)
  after t steps, t = 0..steps (recorded from the loss evaluation the step does anyway);
  ``seconds`` the execution time of the compiled run, compilation excluded.
  ``spectrum``: train on the function-space form ½rᵀSr / n (``optim.msk_mse_loss``).
  """
  n = x.shape[0]

  def loss_fn(p):
    r = apply_fn(p, x) - y
    mse = jnp.mean(r ** 2)
    if spectrum is None:
      return 0.5 * mse, mse
    return optim.msk_mse_loss(r, jnp.zeros_like(r), spectrum) / n, mse

  def run(p, st):
    def step(c, _):
      p, st = c
      (_, mse), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
      u, st = tx.update(g, st, p)
      return (optax.apply_updates(p, u), st), mse
    (p, st), mse = jax.lax.scan(step, (p, st), None, length=steps)
    return jnp.append(mse, jnp.mean((apply_fn(p, x) - y) ** 2)), st

  st0 = tx.init(params)
  t = time.perf_counter()
  compiled = jax.jit(run).lower(params, st0).compile()
  t_compile = time.perf_counter() - t
  t = time.perf_counter()
  mse, st = compiled(params, st0)
  mse = np.asarray(mse)
  return mse, time.perf_counter() - t, t_compile, st


def _time_to(mse, target, per_step, one_off):
  """Wall seconds until the train MSE first reaches ``target`` (one-off costs included),
  and the step; None if never."""
  hit = np.nonzero(np.isfinite(mse) & (mse <= target))[0]
  if not hit.size:
    return None, None
  return one_off + int(hit[0]) * per_step, int(hit[0])


ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
# the rows repeated over seeds; tracking every step (~15x a GD step here) only at seed 0
HEADLINE = ("gd (1/λ1)", "adam", "function-space ½rᵀSr", "tracking RR moved=1%",
            "tracking RR build-coef moved=1%")


def bench_tracking(quick=False, n=None, steps=None, only=None, seed=0, adam_lrs=ADAM_GRID):
  """The lazy setting; every method from the same init in one process.

  Methods: GD at η = n/λ₁, Adam (best of ``adam_lrs`` by final train MSE), the
  function-space form ½rᵀSr (``optim.msk_mse_loss`` + ``optax.sgd``), fixed directions
  (``optim.msk_sgd``) and the tracking preconditioner (``optim.msk_sgd_tracking``:
  Rayleigh–Ritz every step, or when the parameters moved by 1 % / 0.3 %; the Löwdin
  variants under their old labels). One-off costs: the directions' build (shared by the
  preconditioned methods; for the function-space form it is its spectrum) and, for GD,
  a top-1 solve for λ₁. Time to Adam's final MSE = one-off + steps to reach it × the
  measured seconds per step of that run.
  """
  steps = steps or (300 if quick else 5000)
  n = n or (256 if quick else 1024)
  x, y, params, apply_fn = lazy_problem(n=n, width=n, seed=seed)
  k = 10
  g = modifiers.flatten()
  t = time.perf_counter()
  d = optim.msk_directions(apply_fn, params, x, g, k, compute_beta=False)
  jax.block_until_ready(d.directions)
  t_dirs = time.perf_counter() - t
  t = time.perf_counter()
  d1 = optim.msk_directions(apply_fn, params, x, g, 1, compute_beta=False)
  lam1 = float(d1.values[0])
  t_lam = time.perf_counter() - t
  spec = MSKSpectrum(d.values, d.vectors, d.new_values, d.next_value)
  eta = n / float(d.max_value)                    # 1/λ_max(K_g) for the mean loss
  eta_gd = n / lam1
  out = {"n": n, "width": n, "k": k, "steps": steps, "seed": seed, "eta_msk": eta,
         "eta_gd": eta_gd, "lambda1": lam1, "lambda11": float(d.next_value),
         "directions_s": t_dirs, "lambda1_s": t_lam}
  one_off = {"gd (1/λ1)": t_lam}
  ritz = {"coefficients": "ritz"}     # the labels without "build-coef": Ritz-value coefficients
  runs = {"gd (1/λ1)": (optax.sgd(eta_gd), None)}
  for lr in adam_lrs:
    runs[f"adam lr={lr:g}"] = (optax.adam(lr), None)
  runs.update({
      "function-space ½rᵀSr": (optax.sgd(eta), spec),
      "msk_sgd fixed": (optim.msk_sgd(eta, d), None),
      "tracking RR every=1": (optim.msk_sgd_tracking(eta, apply_fn, x, d, **ritz), None),
      "tracking RR moved=1%": (optim.msk_sgd_tracking(eta, apply_fn, x, d, moved=0.01, **ritz),
                               None),
      "tracking RR moved=0.3%": (optim.msk_sgd_tracking(eta, apply_fn, x, d, moved=0.003,
                                                        **ritz), None),
      "tracking RR every=10": (optim.msk_sgd_tracking(eta, apply_fn, x, d, every=10, **ritz),
                               None),
      "tracking RR build-coef every=1": (optim.msk_sgd_tracking(
          eta, apply_fn, x, d, coefficients="build"), None),
      "tracking RR build-coef moved=1%": (optim.msk_sgd_tracking(
          eta, apply_fn, x, d, moved=0.01, coefficients="build"), None),
      "tracking every=1": (optim.msk_sgd_tracking(eta, apply_fn, x, d, rayleigh_ritz=False),
                           None),
      "tracking every=10": (optim.msk_sgd_tracking(eta, apply_fn, x, d, every=10,
                                                   rayleigh_ritz=False), None),
      "tracking moved=1%": (optim.msk_sgd_tracking(eta, apply_fn, x, d, moved=0.01,
                                                   rayleigh_ritz=False), None),
  })
  for name in runs:
    if not name.startswith(("gd", "adam")):
      one_off[name] = t_dirs
  for name, (tx, spec_) in runs.items():
    base = "adam" if name.startswith("adam") else name
    if only is not None and base not in only and name not in only:
      continue
    mse, sec, t_comp, st = _run(apply_fn, params, x, y, tx, steps, spectrum=spec_)
    bad = np.nonzero(~np.isfinite(mse))[0]
    at = lambda t_: float(mse[min(t_, steps)])
    rec = {"final_mse": float(mse[-1]), "mse@100": at(100), "mse@1000": at(1000),
           "first_nan": int(bad[0]) if bad.size else None, "seconds": sec,
           "per_step_s": sec / steps, "compile_s": t_comp, "one_off_s": one_off.get(name, 0.0),
           "curve_every10": [float(v) for v in mse[::10]]}
    reforms = [s_.reforms for s_ in jax.tree.leaves(
        st, is_leaf=lambda s_: isinstance(s_, optim.ScaleByMSKTrackingState))
        if isinstance(s_, optim.ScaleByMSKTrackingState)]
    if reforms:
      rec["reforms"] = int(reforms[0])
    rec["_mse"] = mse
    out[name] = rec
    print(f"  {name:24s} MSE @100 {rec['mse@100']:.4g}  @1000 {rec['mse@1000']:.4g}  "
          f"final {rec['final_mse']:.4g}  first NaN {rec['first_nan']}  {sec:.1f}s "
          f"({1e3 * sec / steps:.2f} ms/step)"
          + (f"  reforms {rec['reforms']}" if reforms else ""), flush=True)
  adam = {k_: v for k_, v in out.items() if k_.startswith("adam lr=")}
  if adam:
    best = min(adam, key=lambda k_: adam[k_]["final_mse"]
               if np.isfinite(adam[k_]["final_mse"]) else np.inf)
    out["adam"] = dict(adam[best], lr=float(best.split("=")[1]))
    target = out["adam"]["final_mse"]
    t_adam = out["adam"]["seconds"]
    out["target_mse"] = target
    for name, rec in out.items():
      if not isinstance(rec, dict) or "_mse" not in rec:
        continue
      sec_to, step_to = _time_to(rec["_mse"], target, rec["per_step_s"], rec["one_off_s"])
      rec["time_to_adam_final_s"] = sec_to
      rec["steps_to_adam_final"] = step_to
      rec["adam_time_over_this"] = (t_adam / sec_to) if sec_to else None
    print(f"  target (Adam lr={out['adam']['lr']:g}, final) MSE {target:.4g} in {t_adam:.1f}s")
    for name, rec in out.items():
      if isinstance(rec, dict) and "_mse" in rec and not name.startswith("adam lr="):
        print(f"    {name:24s} reaches it at step {rec['steps_to_adam_final']}, "
              f"{rec['time_to_adam_final_s']} s (one-off {rec['one_off_s']:.1f}s)", flush=True)
  for rec in out.values():
    if isinstance(rec, dict):
      rec.pop("_mse", None)
  return out


def bench_tracking_timing(n=1024, seed=0, steps=100, rounds=3, adam_lr=0.3):
  """Per-step seconds of each method, interleaved (round-robin over methods, ``rounds``
  times, median), and the one-off builds the same way: on a shared machine whose load
  drifts during a long benchmark, the long runs' own timings are biased by when each ran;
  interleaving puts every method under the same load."""
  x, y, params, apply_fn = lazy_problem(n=n, width=n, seed=seed)
  g = modifiers.flatten()
  d = optim.msk_directions(apply_fn, params, x, g, 10, compute_beta=False)
  spec = MSKSpectrum(d.values, d.vectors, d.new_values, d.next_value)
  eta = n / float(d.max_value)
  meths = {"gd (1/λ1)": (optax.sgd(n / float(d.values[0])), None),
           "adam": (optax.adam(adam_lr), None),
           "function-space ½rᵀSr": (optax.sgd(eta), spec),
           "msk_sgd fixed": (optim.msk_sgd(eta, d), None),
           "tracking RR every=1": (optim.msk_sgd_tracking(eta, apply_fn, x, d), None),
           "tracking RR moved=1%": (optim.msk_sgd_tracking(eta, apply_fn, x, d, moved=0.01),
                                    None)}   # the cost does not depend on `coefficients`
  builds = {"directions_s": lambda: optim.msk_directions(apply_fn, params, x, g, 10,
                                                         compute_beta=False).directions,
            "lambda1_s": lambda: optim.msk_directions(apply_fn, params, x, g, 1,
                                                      compute_beta=False).values}
  times = {m: [] for m in list(meths) + list(builds)}
  for r in range(rounds):
    for m, (tx, sp) in meths.items():
      times[m].append(_run(apply_fn, params, x, y, tx, steps, spectrum=sp)[1] / steps)
    for m, fn in builds.items():
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[m].append(time.perf_counter() - t)
  out = {m: float(np.median(v)) for m, v in times.items()}
  out["raw"] = times
  out["uptime"] = os.popen("uptime").read().strip()
  base = out["gd (1/λ1)"]
  for m in meths:
    print(f"  {m:24s} {1e3 * out[m]:.2f} ms/step  ({out[m] / base:.1f}x GD)", flush=True)
  for m in builds:
    print(f"  {m:24s} {out[m]:.2f} s", flush=True)
  return out


def bench_tracking_seeds(seeds=(0, 1, 2), n=1024, steps=5000, out_prefix=None):
  """Seed 0: every method of the issue's table (Adam's grid included); further seeds
  (network init): the headline rows, Adam at seed 0's best lr; then the interleaved
  per-step timing (:func:`bench_tracking_timing`). Writes one json per seed + timing."""
  res = {}
  lr = None
  for seed in seeds:
    print(f"seed {seed}  ({os.popen('uptime').read().strip()})", flush=True)
    if seed == seeds[0]:
      only = ("gd (1/λ1)", "adam", "function-space ½rᵀSr", "msk_sgd fixed",
              "tracking RR every=1", "tracking RR moved=1%", "tracking RR moved=0.3%",
              "tracking RR build-coef every=1", "tracking RR build-coef moved=1%")
      r = bench_tracking(n=n, steps=steps, seed=seed, only=only)
      lr = r["adam"]["lr"]
    else:
      r = bench_tracking(n=n, steps=steps, seed=seed, only=HEADLINE, adam_lrs=(lr,))
    r["uptime_end"] = os.popen("uptime").read().strip()
    res[seed] = r
    if out_prefix:
      with open(f"{out_prefix}_seed{seed}.json", "w") as fh:
        json.dump(r, fh, indent=1, default=float)
  res["timing"] = bench_tracking_timing(n=n, seed=seeds[0], adam_lr=lr)
  if out_prefix:
    with open(f"{out_prefix}_timing.json", "w") as fh:
      json.dump(res["timing"], fh, indent=1, default=float)
  return res


# ------------------------------------------------------------------ step rule vs grid
def _mlp(sizes, key, b_std=0.0):
  """Standard-parameterised ReLU MLP: W ~ N(0, 1/fan_in), biases N(0, b_std²)."""
  ps = []
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    k1, k2, key = jax.random.split(key, 3)
    ps.append({"W": jax.random.normal(k1, (a, b)) / np.sqrt(a),
               "b": b_std * jax.random.normal(k2, (b,))})

  def apply_fn(p, x):
    for i, l in enumerate(p):
      x = x @ l["W"] + l["b"]
      if i < len(p) - 1:
        x = jax.nn.relu(x)
    return x
  return ps, apply_fn


def regression_problem(n=256):
  x = jnp.linspace(0.0, 1.0, n)[:, None]
  y = sum(jnp.sin(2 * np.pi * f * x) for f in (1, 4, 16, 32))
  params, f = _mlp([1, 512, 512, 1], jax.random.PRNGKey(0), b_std=1.0)
  loss = lambda p, b: 0.5 * jnp.mean((f(p, b[0]) - b[1]) ** 2)
  return f, params, (x, y), loss, "mse"


def mnist1d_problem():
  from mskjax import data as _data
  ds = _data.load_mnist1d()
  params, f = _mlp([40, 256, 256, 10], jax.random.PRNGKey(0))
  loss = lambda p, b: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(f(p, b[0]),
                                                                               b[1]))
  return f, params, (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)), loss, "ce"


def _train(loss, params, data, tx, steps, b, seed=0, reestimate=None):
  """SGD loop (jitted step, minibatches of a fixed random order); returns the final
  full-train loss (inf on divergence) and the loss curve every 10 steps."""
  n = data[0].shape[0]

  @jax.jit
  def step(p, st, idx):
    batch = jax.tree.map(lambda a: a[idx], data)
    g = jax.grad(loss)(p, batch)
    u, st = tx.update(g, st, p)
    return optax.apply_updates(p, u), st

  full = jax.jit(lambda p: loss(p, data))
  rng = np.random.default_rng(seed)
  st = tx.init(params)
  p = params
  curve = []
  for t in range(steps):
    idx = rng.choice(n, b, replace=False) if b < n else np.arange(n)
    if reestimate is not None and t > 0 and t % reestimate[0] == 0:
      st = steps_mod.set_learning_rate(st, reestimate[1](p, jax.tree.map(lambda a: a[idx],
                                                                         data)))
    p, st = step(p, st, idx)
    if t % 10 == 9 or t == steps - 1:
      L = float(full(p))
      curve.append(L)
      if not np.isfinite(L) or L > 1e6:
        return float("inf"), curve
  return float(full(p)), curve


def bench_steps(quick=False):
  steps = 100 if quick else 300
  factors = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0] if not quick else [0.5, 1.0, 2.0]
  out = {}
  # k = 16: at k = 32 λ₃₂ (0.57) is below the float32 round-off floor of this Gram matrix (2.8)
  # and msk_directions refuses it (the earlier tables used k = 32).
  cases = [("regression MLP full batch", regression_problem, None, 16, None),
           ("MNIST-1D MLP b=128", mnist1d_problem, 128, 20, 256),
           ("MNIST-1D MLP b=512", mnist1d_problem, 512, 20, 256)]
  if quick:
    cases = cases[:2]
  for name, make, b, k, sub in cases:
    f, params, data, loss, kind = make()
    n = data[0].shape[0]
    bb = b or n
    t = time.perf_counter()
    d = optim.msk_directions(f, params, data[0], modifiers.flatten(), k, subsample=sub,
                             compute_beta=False, max_cycles=3)
    t_dirs = time.perf_counter() - t
    rng = np.random.default_rng(1)
    idx = rng.choice(n, bb, replace=False) if bb < n else np.arange(n)
    batch = jax.tree.map(lambda a: a[idx], data)
    rec = {"directions_s": t_dirs}
    for meth, dd in (("sgd", None), ("msk", d)):
      t = time.perf_counter()
      eta = steps_mod.stable_learning_rate(dd, loss_fn=loss, params=params, batch=batch)
      t_rule = time.perf_counter() - t
      res = {}
      for fac in factors:
        tx = optax.sgd(fac * eta) if dd is None else optim.msk_sgd(fac * eta, dd)
        res[fac] = _train(loss, params, data, tx, steps, bb)[0]
      finite = {k_: v for k_, v in res.items() if np.isfinite(v)}
      best = min(finite, key=finite.get) if finite else None
      rec[meth] = {"eta_rule": eta, "rule_s": t_rule, "final_loss": res, "best_factor": best,
                   "rule_diverged": not np.isfinite(res[1.0])}
      print(f"  {name:26s} {meth}: rule η={eta:.4g} ({t_rule:.1f}s)  best factor {best}  "
            + "  ".join(f"{k_}:{v:.4g}" for k_, v in res.items()), flush=True)
    out[name] = rec
  return out


def bench_reestimate(steps=600, every=100):
  """Regression MLP, MSK: η fixed at the rule at init vs re-estimated every 100 steps."""
  f, params, data, loss, _ = regression_problem()
  d = optim.msk_directions(f, params, data[0], modifiers.flatten(), 16, compute_beta=False,
                           max_cycles=3)
  est = steps_mod.curvature_estimator(loss, d)
  eta0 = float(est(params, data)[0])
  out = {}
  for name, re in (("fixed", None), (f"every {every}", (every, lambda p, b: est(p, b)[0]))):
    tx = optax.inject_hyperparams(optim.msk_sgd)(learning_rate=eta0, directions=d)
    L, curve = _train(loss, params, data, tx, steps, data[0].shape[0], reestimate=re)
    out[name] = {"final_loss": L, "curve": curve[::10]}
    print(f"  re-estimation {name}: final loss {L:.4g}", flush=True)
  return out


# ------------------------------------------------------------------ composition
def bench_compose(quick=False, steps=300, b=128):
  """chain(scale_by_msk(d), adam / sgd-momentum) vs tuned adam / sgd-momentum, MNIST-1D MLP."""
  from mskjax import data as _data
  ds = _data.load_mnist1d()
  f, params, data, loss, _ = mnist1d_problem()
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  acc = jax.jit(lambda p: jnp.mean(jnp.argmax(f(p, xt), 1) == yt))
  t = time.perf_counter()
  d = optim.msk_directions(f, params, data[0], modifiers.flatten(), 20, subsample=256,
                           compute_beta=False, max_cycles=3)
  t_dirs = time.perf_counter() - t
  steps = 60 if quick else steps
  grids = {"adam": [1e-3, 3e-3, 1e-2], "sgd-momentum": [0.03, 0.1, 0.3]}
  if not quick:
    grids = {"adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2], "sgd-momentum": [0.01, 0.03, 0.1, 0.3, 1.0]}
  make = {"adam": lambda lr: optax.adam(lr), "sgd-momentum": lambda lr: optax.sgd(lr, 0.9)}
  out = {"directions_s": t_dirs, "steps": steps, "b": b}
  for base, grid in grids.items():
    for pre in (False, True):
      name = ("msk+" if pre else "") + base
      runs = {}
      for lr in grid:
        tx = make[base](lr)
        if pre:
          tx = optax.chain(optim.scale_by_msk(d), tx)
        t = time.perf_counter()
        L, curve = _train(loss, params, data, tx, steps, b)
        sec = time.perf_counter() - t
        runs[lr] = {"train_loss": L, "seconds": sec}
      best = min(runs, key=lambda k_: runs[k_]["train_loss"])
      out[name] = {"runs": runs, "best_lr": best, "best_train_loss": runs[best]["train_loss"]}
      print(f"  {name:18s} best lr {best:g}: train loss {runs[best]['train_loss']:.4g}  "
            + "  ".join(f"{k_:g}:{v['train_loss']:.3g}" for k_, v in runs.items()), flush=True)
  # equal wall time: the baselines get the directions' build time as extra steps
  for base in grids:
    per_step = out[base]["runs"][out[base]["best_lr"]]["seconds"] / steps
    extra = int(t_dirs / max(per_step, 1e-9))
    tx = make[base](out[base]["best_lr"])
    L, _ = _train(loss, params, data, tx, steps + extra, b)
    out[base]["equal_time_steps"] = steps + extra
    out[base]["equal_time_train_loss"] = L
    print(f"  {base:18s} at equal wall time ({steps + extra} steps): train loss {L:.4g}",
          flush=True)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--only", default="tracking,steps,compose")
  ap.add_argument("--out", default=None)
  a = ap.parse_args(argv)
  res = {"uptime": os.popen("uptime").read().strip()}
  print(res["uptime"])
  parts = a.only.split(",")
  if "tracking" in parts:
    print("tracking (lazy one-layer network)")
    if a.quick:
      res["tracking"] = bench_tracking(True, only=HEADLINE + ("msk_sgd fixed",
                                                             "tracking RR moved=1%"))
    else:
      os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
      res["tracking"] = bench_tracking_seeds(out_prefix=os.path.join(
          os.path.dirname(__file__), "results", "tracking_n1024"))
  if "steps" in parts:
    print("step rule vs grid")
    res["steps"] = bench_steps(a.quick)
    if not a.quick:
      res["reestimate"] = bench_reestimate()
  if "compose" in parts:
    print("composition with adam / momentum")
    res["compose"] = bench_compose(a.quick)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(res, f, indent=1, default=float)
  return res


if __name__ == "__main__":
  main()
