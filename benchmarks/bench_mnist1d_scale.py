"""MNIST-1D at n = 100k: the subsampled MSK preconditioner against tuned SGD and Adam.

Run::

  python -m benchmarks.bench_mnist1d_scale            # the full run (26 min on 2 shared cores)
  python -m benchmarks.bench_mnist1d_scale --quick    # smoke run (< 60 s, 4000 points)

Set-up. ``mskjax.data.load_mnist1d(num_samples=125000)``: 100k training / 25k test
sequences (the generator's first 80 % are the training set; generating them costs ~5 ms
per sample once, then the set is cached). float32 training through the one loop
``mskjax.train.fit`` (minibatches of b from its shuffling iterator, mean softmax
cross-entropy), the MNIST-1D MLP (40-256-256-10) of ``mskjax/experiments/mnist1d.py``, flax
default initialisation; every method starts from the same parameters.

Methods (each over a small learning-rate grid, best by final test accuracy):

* ``sgd``  — ``optax.sgd(lr, momentum=0.9)``;
* ``adam`` — ``optax.adam(lr)``;
* ``pgd``  — ``optim.msk_sgd(lr, directions, momentum=0.9)``: P = I + Σ_{i≤k}(g_i/λ_i − 1)
  q_i q_iᵀ with g = flatten on the top k eigenpairs of the full (s·10)×(s·10) empirical
  NTK at initialisation on s ≪ n random training points (``optim.msk_directions(...,
  subsample=s)``, matrix-free, float32 Jacobian products, float64 solver). The cold build
  time of the directions (compilation included) is added to PGD's wall times.

Measured:

1. directions: build time and peak memory (``ru_maxrss`` before/after; the process peak)
   for each s of ``--subsamples``, λ₁, λ_k, λ_{k+1}, β and the step rule
   ``optim.stable_learning_rate`` at each b;
2. per-step cost of ``msk_sgd`` and ``adam`` relative to ``optax.sgd`` (same model, batch
   size and loss, in this process; median over round-robin repeated chunks of ``fit``);
3. test accuracy at equal steps (the budget), the steps and wall time to the reference
   accuracy and to the best baseline's final accuracy, and at equal wall time: the best
   SGD and Adam learning rates rerun for as many steps as fit in PGD's total wall time
   (its directions included) at their own measured per-step cost;
4. refresh schedule: PGD at its best learning rate with the directions rebuilt every R
   steps (``optim.refresh_directions``: ``msk_directions`` at the current parameters on
   the same subsample, warm-started, swapped into the optimizer state: no recompilation)
   against never; accuracy vs steps and the refresh cost.

Writes ``benchmarks/results/mnist1d_scale[_quick]_*.csv`` and ``..._curves.json`` and
prints markdown tables.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mskjax.experiments import mnist1d as B
from mskjax import data, modifiers, optim
from mskjax import steps as steps_mod
from mskjax import train as T

RESULTS = Path(__file__).resolve().parent / "results"


def maxrss_mib() -> float:
  """Peak resident memory of this process so far (Linux ``ru_maxrss`` is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return float(line.split()[1]) / 1024.0
  except OSError:
    pass
  return float("nan")


def loadavg() -> str:
  """The 1/5/15-minute load averages (the machine is shared: read timings against them)."""
  try:
    return "%.2f/%.2f/%.2f" % os.getloadavg()
  except OSError:
    return "n/a"


eval_fn = B.eval_fn   # jitted test accuracy and loss of the architecture


def build_directions(arch, variables, x, *, k, subsample, seed=0, g="flatten"):
  """Cold ``optim.msk_directions`` (compilation included) with time and memory."""
  gfn = {"flatten": modifiers.flatten()}[g]
  rss0, peak0 = current_rss_mib(), maxrss_mib()
  t0 = time.perf_counter()
  d = optim.msk_directions(B.model(arch).apply, variables, x, gfn, int(k),
                           subsample=subsample, key=jax.random.PRNGKey(seed), float64=False,
                           compute_beta=True)
  jax.block_until_ready(d.directions)
  secs = time.perf_counter() - t0
  return d, dict(arch=arch, k=int(k), subsample=int(d.n_points), build_s=secs,
                 rss_before_mib=rss0, peak_before_mib=peak0, peak_after_mib=maxrss_mib(),
                 lam1=float(d.values[0]), lam_k=float(d.values[-1]),
                 lam_k1=float(d.next_value), beta=float(d.beta),
                 max_residual=float(np.max(d.residuals)))


def per_step_overhead(arch, params, directions, x, y, *, batch_size, lrs, chunk, repeats):
  """Median seconds per step of sgd, msk_sgd and adam, measured round-robin in fit."""
  loss = B.loss_fn(arch)
  txs = {"sgd": B.make_tx("sgd", lrs["sgd"]),
         "pgd": optim.msk_sgd(lrs["pgd"], directions, momentum=0.9),
         "adam": B.make_tx("adam", lrs["adam"])}
  states = {}
  for name, tx in txs.items():     # compile (and one warm chunk) per method
    res = T.fit(loss, params, tx, (x, y), steps=chunk, batch_size=batch_size, chunk=chunk)
    states[name] = res.state
  times = {name: [] for name in txs}
  for _ in range(repeats):
    for name, tx in txs.items():
      res = T.fit(loss, None, tx, (x, y), steps=chunk, batch_size=batch_size, chunk=chunk,
                  state=states[name])
      states[name] = res.state
      times[name].append(res.train_s / chunk)
  return {name: float(np.median(v)) for name, v in times.items()}


def acc_at_step(rec, step):
  """Test accuracy of the last evaluation at or before ``step``."""
  best = None
  for s, a in zip(rec["curve_step"], rec["curve_acc"]):
    if s <= step:
      best = a
  return best


def refresh_run(arch, params, directions, x, y, x_test, y_test, *, lr, batch_size, steps,
                every, eval_every, k, subsample, seed=0, rebuild=None, tx=None, relearn=None):
  """PGD with the directions rebuilt every ``every`` steps from the current parameters.

  Runs ``fit`` in segments of ``every`` steps, resuming from the loop state; between
  segments ``optim.refresh_directions`` rebuilds the directions at the current parameters
  (same points, warm-started from the ones in use, the loss they were built for) and swaps
  them in. ``relearn(params, directions) -> η`` (optional) re-measures the step, put in
  with ``steps.set_learning_rate`` (``tx`` built with ``optax.inject_hyperparams``). Times
  of the refreshes (and re-measurements) are reported separately and added to the curve's
  wall times. ``rebuild(params) -> MSKDirections`` replaces the solve (tests); ``tx`` the
  optimizer (default ``optim.msk_sgd(lr, directions, momentum=0.9)``). Returns the record
  dict (with the final loop ``state``).
  """
  loss = B.loss_fn(arch)
  ev = eval_fn(arch)
  tx = optim.msk_sgd(lr, directions, momentum=0.9) if tx is None else tx
  gfn = modifiers.flatten()
  state, t_off, refresh_s, refreshes = None, 0.0, [], 0
  relearn_s, lrs, values, current, diverged = [], [], [], directions, None
  curve_step, curve_time, curve_acc = [], [], []
  train_s = 0.0
  done = 0
  while done < steps:
    seg = min(every, steps - done)
    res = T.fit(loss, params if state is None else None, tx, (x, y), steps=seg,
                batch_size=batch_size, seed=seed, state=state,
                evaluate=lambda st: ev(st.params, x_test, y_test), eval_every=eval_every,
                stop_above={"loss": 50.0})
    state = res.state
    h = res.history
    for s_, t_, a_ in zip(h["step"], h["time"], h["acc"]):
      if curve_step and int(s_) == curve_step[-1]:
        continue
      curve_step.append(int(s_))
      curve_time.append(float(t_) + t_off)
      curve_acc.append(float(a_))
    train_s += res.train_s
    t_off += res.train_s
    done += seg
    if res.stopped is not None:        # diverged (loss above 50 or not finite): stop here
      diverged = int(state.step)
      break
    if done < steps:
      t0 = time.perf_counter()
      if rebuild is None:
        loss_name = "mse" if current.hessian_sqrt is None else "softmax_cross_entropy"
        ost, current = optim.refresh_directions(
            state.opt_state, B.model(arch).apply, {"params": state.params}, x, current, gfn,
            loss=loss_name, key=jax.random.PRNGKey(seed + done))
      else:
        current = rebuild(state.params)
        ost = optim.replace_directions(state.opt_state, current)
      jax.block_until_ready(current.directions)
      refresh_s.append(time.perf_counter() - t0)
      if relearn is not None:
        t1 = time.perf_counter()
        lrs.append(float(relearn(state.params, current)))
        ost = steps_mod.set_learning_rate(ost, lrs[-1])
        relearn_s.append(time.perf_counter() - t1)
      state = state._replace(opt_state=ost)
      values.append([float(current.values[0]), float(current.next_value)])
      t_off += time.perf_counter() - t0
      refreshes += 1
  return dict(every=every, refreshes=refreshes, refresh_s=refresh_s, relearn_s=relearn_s,
              diverged_at=diverged,
              learning_rates=lrs, lambda1_next=values, train_s=train_s,
              final_acc=curve_acc[-1], max_acc=max(curve_acc), curve_step=curve_step,
              curve_time=curve_time, curve_acc=curve_acc, state=state)


def _fmt(v, nd=3):
  if v is None:
    return "—"
  if isinstance(v, float):
    return f"{v:.{nd}g}" if abs(v) < 1e4 else f"{v:.0f}"
  return str(v)


def print_table(rows, cols, title):
  print(f"\n### {title}\n")
  print("| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  for r in rows:
    print("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")


def write_csv(rows, path):
  cols = list(dict.fromkeys(c for r in rows for c in r))
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    for r in rows:
      w.writerow({c: r.get(c) for c in cols})


def settings(quick: bool, args):
  if quick:
    # the standard 4000-point set, one lr per method, no equal-wall-time reruns
    return dict(num_samples=5000, archs=("mlp",), batches=(128,), steps={128: 150},
                eval_every=25, k=10, subsamples=(100,), grids=dict(sgd=(0.1,), adam=(3e-3,),
                                                                  pgd=(0.1,)),
                refresh=(75,), repeats=3, chunk=20, equal_time=False)
  grids = dict(sgd=(0.03, 0.1, 0.3), adam=(1e-3, 3e-3, 1e-2), pgd=(0.1, 0.3, 1.0))
  for part in filter(None, args.lrs.split(";")):      # e.g. "sgd=0.1,0.3;pgd=0.1"
    name, vals = part.split("=")
    if name not in grids:
      raise ValueError(f"--lrs: method must be one of {sorted(grids)}; got {name!r}.")
    grids[name] = tuple(float(v) for v in vals.split(","))
  batches = tuple(int(b) for b in args.batches.split(","))
  if not set(batches) <= {128, 512}:
    raise ValueError(f"--batches: 128 and/or 512 (their step budgets are --steps128/512); "
                     f"got {args.batches!r}.")
  return dict(num_samples=args.num_samples, archs=tuple(args.archs.split(",")),
              batches=batches, steps={128: args.steps128, 512: args.steps512},
              eval_every=args.eval_every, k=args.k,
              subsamples=tuple(int(s) for s in args.subsamples.split(",")),
              grids=grids,
              refresh=tuple(int(r) for r in args.refresh.split(",") if r),
              repeats=7, chunk=50, equal_time=not args.no_equal_time)


def steps_only(S, args, tag):
  """Part 2 alone, with more repeats (a re-measurement on a calmer machine)."""
  ds = data.load_mnist1d(num_samples=S["num_samples"])
  x_raw = jnp.asarray(ds.x_train, jnp.float32)
  rows = []
  for arch in S["archs"]:
    x = B.inputs(arch, x_raw)
    variables = B.init_params(arch, x, args.seed)
    d, _ = build_directions(arch, variables, x, k=S["k"], subsample=100, seed=args.seed)
    for b in S["batches"]:
      mid = {m: S["grids"][m][len(S["grids"][m]) // 2] for m in S["grids"]}
      l0 = loadavg()
      ps = per_step_overhead(arch, variables["params"], d, x, ds.y_train, batch_size=b,
                             lrs=mid, chunk=S["chunk"], repeats=args.repeats)
      rows.append(dict(arch=arch, batch=b, k=S["k"], sgd_ms=1e3 * ps["sgd"],
                       msk_sgd_ms=1e3 * ps["pgd"], adam_ms=1e3 * ps["adam"],
                       msk_sgd_over_sgd=ps["pgd"] / ps["sgd"],
                       adam_over_sgd=ps["adam"] / ps["sgd"], load=f"{l0} -> {loadavg()}"))
      print(rows[-1], flush=True)
  print_table(rows, list(rows[0]), f"Per-step cost (median of {args.repeats} round-robin "
              f"chunks of {S['chunk']} steps, n = {x_raw.shape[0]})")
  write_csv(rows, RESULTS / f"{tag}_per_step_only.csv")
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="smoke run on 4000 points (< 60 s)")
  ap.add_argument("--num-samples", type=int, default=125000, help="train + test (80/20)")
  ap.add_argument("--archs", default="mlp", help="comma list of mlp,cnn")
  ap.add_argument("--k", type=int, default=30)
  ap.add_argument("--subsamples", default="1000,2000",
                  help="s values whose build is measured; training uses the first")
  ap.add_argument("--steps128", type=int, default=3000)
  ap.add_argument("--steps512", type=int, default=1500)
  ap.add_argument("--eval-every", type=int, default=250)
  ap.add_argument("--refresh", default="500,1500", help="R values (steps) of part 4, b = 128")
  ap.add_argument("--batches", default="128,512", help="comma list (128 and/or 512)")
  ap.add_argument("--lrs", default="", help="override lr grids, e.g. 'sgd=0.1;adam=0.003'")
  ap.add_argument("--no-equal-time", action="store_true",
                  help="skip the equal-wall-time reruns of the best baselines")
  ap.add_argument("--tag", default="", help="suffix of the result files")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--only", choices=["all", "steps"], default="all",
                  help="'steps': only the per-step cost (directions of the same k and shapes "
                       "on 100 points: the step's cost does not depend on their values), "
                       "--repeats round-robin chunks")
  ap.add_argument("--repeats", type=int, default=15, help="chunks per method for --only steps")
  args = ap.parse_args(argv)
  S = settings(args.quick, args)
  tag = ("mnist1d_scale_quick" if args.quick else "mnist1d_scale") + args.tag
  if args.only == "steps":
    return steps_only(S, args, tag)
  RESULTS.mkdir(parents=True, exist_ok=True)
  t_start = time.perf_counter()
  loads = [loadavg()]
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, float32 training, "
        f"load average at start {loads[0]}", flush=True)

  t0 = time.perf_counter()
  ds = data.load_mnist1d(num_samples=S["num_samples"])
  x_raw = jnp.asarray(ds.x_train, jnp.float32)
  xt_raw = jnp.asarray(ds.x_test, jnp.float32)
  y, y_test = ds.y_train, ds.y_test
  n = int(x_raw.shape[0])
  print(f"MNIST-1D: {n} train / {xt_raw.shape[0]} test (load {time.perf_counter() - t0:.1f} s,"
        f" peak RSS {maxrss_mib():.0f} MiB)", flush=True)

  dir_rows, step_rows, run_rows, eq_rows, goal_rows, ref_rows = [], [], [], [], [], []
  curves = {}
  for arch in S["archs"]:
    x, x_test = B.inputs(arch, x_raw), B.inputs(arch, xt_raw)
    variables = B.init_params(arch, x, args.seed)
    params = variables["params"]
    dirs = None
    for s in S["subsamples"]:
      d, row = build_directions(arch, variables, x, k=S["k"], subsample=min(s, n),
                                seed=args.seed)
      for b in S["batches"]:
        row[f"eta_star_b{b}"] = steps_mod.critical_batch_learning_rate(d, b)
      row["n"] = n
      dir_rows.append(row)
      dirs = dirs or (d, row)
      print(f"{arch}: directions k={S['k']} s={row['subsample']}: {row['build_s']:.1f} s, "
            f"peak RSS {row['peak_before_mib']:.0f} -> {row['peak_after_mib']:.0f} MiB, "
            f"λ₁/λ_k+1 = {row['lam1'] / row['lam_k1']:.1f}, load {loadavg()}", flush=True)
    d, drow = dirs
    one_off = drow["build_s"]
    loads.append(loadavg())

    for b in S["batches"]:
      mid = {m: S["grids"][m][len(S["grids"][m]) // 2] for m in S["grids"]}
      ps = per_step_overhead(arch, params, d, x, y, batch_size=b, lrs=mid, chunk=S["chunk"],
                             repeats=S["repeats"])
      step_rows.append(dict(arch=arch, batch=b, sgd_ms=1e3 * ps["sgd"],
                            msk_sgd_ms=1e3 * ps["pgd"], adam_ms=1e3 * ps["adam"],
                            msk_sgd_over_sgd=ps["pgd"] / ps["sgd"],
                            adam_over_sgd=ps["adam"] / ps["sgd"], load=loadavg()))
      print(f"{arch} b={b}: per step sgd {1e3 * ps['sgd']:.2f} ms, msk_sgd "
            f"{1e3 * ps['pgd']:.2f} ms ({ps['pgd'] / ps['sgd']:.2f}x), adam "
            f"{1e3 * ps['adam']:.2f} ms, load {loadavg()}", flush=True)

      steps = S["steps"][b]
      recs, best = {}, {}
      for method in ("sgd", "adam", "pgd"):
        cands = []
        for lr in S["grids"][method]:
          tx = (optim.msk_sgd(lr, d, momentum=0.9) if method == "pgd"
                else B.make_tx(method, lr))
          rec = B.train_run(arch, params, tx, x, y, x_test, y_test, batch_size=b,
                            steps=steps, eval_every=S["eval_every"], seed=args.seed)
          recs[(method, lr)] = rec
          curves[f"{arch}/b={b}/{method}/lr={lr:g}"] = rec
          run_rows.append(dict(arch=arch, batch=b, method=method, lr=lr, steps=rec["steps_run"],
                               final_acc=rec["final_acc"], max_acc=rec["max_acc"],
                               per_step_ms=rec["per_step_ms"], train_s=rec["train_s"],
                               diverged=rec["diverged"]))
          print(f"  {arch} b={b} {method} lr={lr:g}: final acc {rec['final_acc']:.4f} "
                f"(max {rec['max_acc']:.4f}), {rec['train_s']:.1f} s", flush=True)
          cands.append((-1.0 if rec["diverged"] else rec["final_acc"], rec["max_acc"], lr))
        best[method] = max(cands)[2]
      loads.append(loadavg())
      get = lambda m: recs[(m, best[m])]
      pgd = get("pgd")
      t_pgd_total = one_off + pgd["train_s"]
      base_final = max(get("sgd")["final_acc"], get("adam")["final_acc"])
      ref = B.REFERENCE_ACCURACY[arch]
      row_goal = dict(arch=arch, batch=b, steps=steps, ref_acc=ref, target_acc=base_final)
      t_to = {}
      for m in ("sgd", "adam", "pgd"):
        off = one_off if m == "pgd" else 0.0
        st_ref, t_ref = B.first_reach(get(m), ref, off)
        st_tg, t_tg = B.first_reach(get(m), base_final, off)
        t_to[m] = t_tg
        eq = dict(arch=arch, batch=b, method=m, lr=best[m], steps=steps,
                  acc_equal_steps=get(m)["final_acc"], steps_to_ref=st_ref, s_to_ref=t_ref,
                  steps_to_target=st_tg, s_to_target=t_tg,
                  total_s=get(m)["train_s"] + off)
        eq_rows.append(eq)
      # equal wall time: the best baselines for as many steps as fit in PGD's total time
      if S["equal_time"]:
        for m in ("sgd", "adam"):
          per = get(m)["per_step_ms"] / 1e3
          n_eq = max(int(t_pgd_total / per), 1)
          n_eq = int(np.ceil(n_eq / S["eval_every"]) * S["eval_every"])
          rec_eq = B.train_run(arch, params, B.make_tx(m, best[m]), x, y, x_test, y_test,
                               batch_size=b, steps=n_eq, eval_every=S["eval_every"],
                               seed=args.seed)
          curves[f"{arch}/b={b}/{m}/lr={best[m]:g}/equal_time"] = rec_eq
          acc_t = B.acc_at_time(rec_eq, t_pgd_total)
          for r in eq_rows:
            if (r["arch"], r["batch"], r["method"]) == (arch, b, m):
              r["equal_time_steps"] = n_eq
              r["acc_equal_time"] = acc_t
              r["equal_time_run_s"] = rec_eq["train_s"]
          print(f"  {arch} b={b} {m} at PGD's wall time {t_pgd_total:.1f} s: {n_eq} steps "
                f"planned, acc at that time {_fmt(acc_t, 4)} (ran {rec_eq['train_s']:.1f} s)",
                flush=True)
        for r in eq_rows:
          if (r["arch"], r["batch"], r["method"]) == (arch, b, "pgd"):
            r["acc_equal_time"] = pgd["final_acc"]
            r["equal_time_steps"] = steps
      base_t = [t_to[m] for m in ("sgd", "adam") if t_to[m] is not None]
      tb = min(base_t) if base_t else None
      speed = tb / t_to["pgd"] if (tb is not None and t_to["pgd"]) else None
      speed_train = None
      st_p, t_p = B.first_reach(pgd, base_final, 0.0)
      if tb is not None and t_p:
        speed_train = tb / t_p
      acc_ok = pgd["final_acc"] >= base_final - 0.01
      row_goal.update(best_baseline_s=tb, pgd_s=t_to["pgd"], speedup=speed,
                      speedup_without_directions=speed_train, pgd_final_acc=pgd["final_acc"],
                      acc_ok=acc_ok, goal_met=bool(speed is not None and speed >= 3 and acc_ok))
      goal_rows.append(row_goal)

      if b == S["batches"][0] and S["refresh"]:
        never = dict(every="never", refreshes=0, refresh_s=[], train_s=pgd["train_s"],
                     final_acc=pgd["final_acc"], max_acc=pgd["max_acc"],
                     curve_step=pgd["curve_step"], curve_time=pgd["curve_time"],
                     curve_acc=pgd["curve_acc"])
        rruns = [never]
        for R in S["refresh"]:
          rr = refresh_run(arch, params, d, x, y, x_test, y_test, lr=best["pgd"],
                           batch_size=b, steps=steps, every=R, eval_every=S["eval_every"],
                           k=S["k"], subsample=drow["subsample"], seed=args.seed)
          rr.pop("state")
          curves[f"{arch}/b={b}/pgd/lr={best['pgd']:g}/refresh={R}"] = rr
          rruns.append(rr)
          print(f"  refresh every {R}: {rr['refreshes']} refreshes, "
                f"{sum(rr['refresh_s']):.1f} s, final acc {rr['final_acc']:.4f}", flush=True)
        marks = sorted({s_ for s_ in pgd["curve_step"]
                        if s_ % max(steps // 4, 1) == 0 and s_ > 0} | {steps})
        for rr in rruns:
          row = dict(arch=arch, batch=b, lr=best["pgd"], every=rr["every"],
                     refreshes=rr["refreshes"], refresh_total_s=sum(rr["refresh_s"]),
                     refresh_mean_s=(float(np.mean(rr["refresh_s"])) if rr["refresh_s"]
                                     else None),
                     train_s=rr["train_s"],
                     total_s=rr["train_s"] + sum(rr["refresh_s"]) + one_off)
          for m_ in marks:
            row[f"acc@{m_}"] = acc_at_step(rr, m_)
          row["max_acc"] = rr["max_acc"]
          ref_rows.append(row)
      loads.append(loadavg())

  wall = time.perf_counter() - t_start
  print(f"\nMNIST-1D n = {n} train, {xt_raw.shape[0]} test; k = {S['k']}, g = flatten; "
        f"PGD trained with s = {S['subsamples'][0]}; momentum 0.9 for sgd/pgd; total wall "
        f"{wall:.0f} s; load averages (1/5/15 min) during the run: {' ; '.join(loads)}")
  print_table(dir_rows, ["arch", "n", "k", "subsample", "build_s", "rss_before_mib",
                         "peak_before_mib", "peak_after_mib", "lam1", "lam_k", "lam_k1", "beta",
                         "max_residual"] + [f"eta_star_b{b}" for b in S["batches"]],
              "Directions (cold msk_directions, float32 products, compile included)")
  print_table(step_rows, ["arch", "batch", "sgd_ms", "msk_sgd_ms", "adam_ms",
                          "msk_sgd_over_sgd", "adam_over_sgd", "load"],
              f"Per-step cost (median of {S['repeats']} round-robin chunks of {S['chunk']} steps)")
  print_table(run_rows, ["arch", "batch", "method", "lr", "steps", "final_acc", "max_acc",
                         "per_step_ms", "train_s", "diverged"], "Every run (grid)")
  print_table(eq_rows, ["arch", "batch", "method", "lr", "steps", "acc_equal_steps",
                        "equal_time_steps", "acc_equal_time", "steps_to_ref", "s_to_ref",
                        "steps_to_target", "s_to_target", "total_s"],
              "Best lr per method: equal steps, equal wall time (PGD's total, directions "
              "included), time to reference / best-baseline accuracy")
  print_table(goal_rows, ["arch", "batch", "steps", "ref_acc", "target_acc", "best_baseline_s",
                          "pgd_s", "speedup", "speedup_without_directions", "pgd_final_acc",
                          "acc_ok", "goal_met"],
              "Goal: >= 3x less wall time than the best baseline to its final accuracy")
  if ref_rows:
    cols = list(dict.fromkeys(c for r in ref_rows for c in r))
    print_table(ref_rows, cols, "Refresh schedule (PGD best lr, b = first batch size)")
  for name, rows in (("directions", dir_rows), ("per_step", step_rows), ("grid", run_rows),
                     ("best", eq_rows), ("goal", goal_rows), ("refresh", ref_rows)):
    if rows:
      write_csv(rows, RESULTS / f"{tag}_{name}.csv")
  with open(RESULTS / f"{tag}_curves.json", "w") as f:
    json.dump(dict(loads=loads, wall_s=wall, settings={k: str(v) for k, v in S.items()},
                   curves=curves), f)
  print(f"\nwrote {RESULTS}/{tag}_*.csv and _curves.json")
  return dict(directions=dir_rows, per_step=step_rows, grid=run_rows, best=eq_rows,
              goal=goal_rows, refresh=ref_rows)


if __name__ == "__main__":
  main()
