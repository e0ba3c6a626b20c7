"""Refreshing the directions during training: cost against a cold build, and schedules.

Commands::

  python -m benchmarks.bench_refresh                  # both parts
  python -m benchmarks.bench_refresh --only cost      # refresh vs cold build
  python -m benchmarks.bench_refresh --only schedule  # accuracy vs steps and wall time
  python -m benchmarks.bench_refresh --quick          # a smoke run (small s, few steps)

**cost** — for each case (MNIST-1D MLP 40-256-256-10 at s = 256 and 500 points, k = 30;
the MNIST-1D 1-D CNN at s = 250, k = 20; ``loss='softmax_cross_entropy'``, flatten, no β,
the programs of ``mskjax/experiments/mnist1d.py``): the directions at init (first call:
compilation included; then once more, compiled), PGD training (``msk_sgd(4·η, d₀,
momentum=0)``, η the measured rule at init, b = 128, ``train.fit``; 1 × η for the CNN,
which diverged at 4 ×) and, after 200 and
after 1000 steps, in the same process with every program compiled:

* cold = ``msk_directions`` from scratch at the current parameters (default tol 1e-2);
* refresh = the same call with ``init_vectors=`` the directions in use (from init);
  each timed 3 times, the minimum reported (single timings on a loaded machine vary ±40 %);
* reference = a cold build at tol 1e-4 (max 60 products), against which the max relative
  error of λ₁..λ_{k+1} and next_value/λ_{k+1} are reported (the jacrev + eigh oracle
  checks the solver itself in ``tests/test_directions.py``; ``--oracle`` adds it here for
  the MLP at s ≤ 256);
* both with ``max_cycles`` = 1, 2, 3, 5 (accuracy against products; unconverged solves
  warn, recorded).

**schedule** — MLP, s = 500, k = 30, b = 128, 2000 steps, seed 0, PGD ``msk_sgd`` with
momentum 0 at 4 × the measured step (the optimizer table's grid): fixed directions from
init; refresh every R ∈ {250, 1000} steps (``optim.refresh_directions`` and the step
re-measured, ``steps.set_learning_rate`` into ``optax.inject_hyperparams``, no
recompilation; ``benchmarks.bench_mnist1d_scale.refresh_run``); tracking
``msk_sgd_tracking(..., moved=0.01)`` at the same step, stopped at a wall-time cap.

Raw numbers: ``benchmarks/results/refresh[_quick]_<UTC>.json``; markdown tables printed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
import warnings

import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results")
CYCLES = (1, 2, 3, 5)


def _uptime():
  try:
    return open("/proc/loadavg").read().split()[:3]
  except OSError:  # pragma: no cover
    return None


def _build(arch, v, x, k, s, **kw):
  """(directions, seconds, warning texts) of one msk_directions call (CE, flatten, no β)."""
  import jax
  import mskjax
  from mskjax import modifiers
  from mskjax.experiments import mnist1d as M
  t = time.perf_counter()
  with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    d = mskjax.msk_directions(M.model(arch).apply, v, x, modifiers.flatten(), int(k),
                              loss="softmax_cross_entropy", subsample=int(s),
                              key=jax.random.PRNGKey(0), compute_beta=False, **kw)
    jax.block_until_ready(d.directions)
  return d, time.perf_counter() - t, [str(a.message)[:200] for a in w
                                      if "did not converge" in str(a.message)]


def _top(d):
  return np.r_[np.asarray(d.values, np.float64), float(d.next_value)]


def _oracle(arch, v, x, idx):
  """λ₁..: explicit jacrev of the flattened outputs + H^½ + numpy eigh (float64 host)."""
  import jax
  from mskjax import directions as D
  from mskjax.experiments import mnist1d as M
  m = M.model(arch)
  xs = x[idx]
  s = xs.shape[0]
  jac = jax.jit(jax.jacrev(lambda p, xb: m.apply({"params": p}, xb).reshape(-1)))
  J = np.concatenate([np.concatenate([np.asarray(l, np.float64).reshape(len(b) * 10, -1)
                                      for l in jax.tree.leaves(jac(v["params"], xs[b]))],
                                     axis=1)
                      for b in np.array_split(np.arange(s), max(1, s // 32))], axis=0)
  Hh = D.loss_hessian_sqrt("softmax_cross_entropy",
                           np.asarray(m.apply(v, xs), np.float64))
  A = np.einsum("pcd,pdq->pcq", Hh, J.reshape(s, 10, -1)).reshape(s * 10, -1)
  return np.linalg.eigvalsh(A @ A.T)[::-1]


def _measured_step(arch, d, params, batch, factor):
  import mskjax
  from mskjax.experiments import mnist1d as M
  return factor * float(mskjax.stable_learning_rate(
      d, batch[0].shape[0], loss_fn=M.rule_loss_fn(arch), params=params, batch=batch))


#: factor × the measured step for the cost part's training (the CNN diverged at 4×)
FACTORS = {"mlp": 4.0, "cnn": 1.0}


def cost_case(arch, s, k, checkpoints, *, factor=None, oracle=False, repeat=3,
              cycles=CYCLES, log=print):
  """One case of the cost part (see the module docstring); a JSON-able dict."""
  import mskjax
  from mskjax import data as mdata
  from mskjax import train as T
  from mskjax.experiments import mnist1d as M
  factor = FACTORS[arch] if factor is None else factor
  ds = mdata.load_mnist1d()
  x = np.asarray(M.inputs(arch, ds.x_train), np.float32)
  y = np.asarray(ds.y_train)
  v0 = M.init_params(arch, x, 0)
  d0, first_s, _ = _build(arch, v0, x, k, s)
  _, init_s, _ = _build(arch, v0, x, k, s)
  batch = M.rule_batch(x, y, 128)
  eta = _measured_step(arch, d0, v0["params"], batch, factor)
  tx = mskjax.msk_sgd(eta, d0, momentum=0.0)
  out = dict(arch=arch, s=int(s), k=int(k), first_call_s=first_s, cold_init_s=init_s,
             lr=eta, factor=factor, at={})
  log(f"{arch} s={s} k={k}: first call {first_s:.2f} s, compiled {init_s:.2f} s, "
      f"η = {eta:.4g}")
  state, done = None, 0
  for ck in checkpoints:
    res = T.fit(M.loss_fn(arch), v0["params"] if state is None else None, tx, (x, y),
                steps=ck - done, batch_size=128, seed=0, state=state,
                stop_above={"loss": 50.0})
    if res.stopped is not None:
      raise RuntimeError(f"{arch}: training at {factor}× the measured step diverged "
                         f"({res.stopped}) before step {ck}; lower FACTORS[{arch!r}].")
    state, done = res.state, ck
    v = {"params": state.params}
    ref, ref_s, ref_w = _build(arch, v, x, k, s, tol=1e-4, max_cycles=60)
    lam = _top(ref)
    row = dict(train_loss=float(res.records["loss"][-1]), ref_s=ref_s,
               ref_warned=bool(ref_w), lambda_ref=lam.tolist(),
               lambda0=_top(d0).tolist())
    if oracle:
      t = time.perf_counter()
      lo = _oracle(arch, v, x, np.asarray(d0.indices))[:k + 1]
      row["oracle_s"] = time.perf_counter() - t
      row["ref_vs_oracle"] = float(np.max(np.abs(lam - lo) / lo))
    for name, kw in (("cold", {}), ("refresh", dict(init_vectors=d0))):
      for cyc in (None,) + tuple(cycles):
        extra = {} if cyc is None else dict(max_cycles=cyc)
        secs = []
        for _ in range(repeat if cyc is None else 1):    # the headline pair: min of repeats
          d, sec, w = _build(arch, v, x, k, s, **kw, **extra)
          secs.append(sec)
        top = _top(d)
        row[f"{name}{'' if cyc is None else cyc}"] = dict(
            s=min(secs), all_s=secs, err=float(np.max(np.abs(top - lam) / lam)),
            next_ratio=float(top[-1] / lam[-1]), warned=bool(w), warning=w[:1])
    out["at"][ck] = row
    c, r = row["cold"], row["refresh"]
    log(f"  after {ck} steps (loss {row['train_loss']:.3f}): cold {c['s']:.2f} s "
        f"(err {c['err']:.1e}), refresh {r['s']:.2f} s (err {r['err']:.1e}), ratio "
        f"{r['s'] / c['s']:.2f}; λ_(k+1) {lam[-1]:.4g} (init {row['lambda0'][-1]:.4g})"
        + (f"; ref vs oracle {row['ref_vs_oracle']:.1e}" if oracle else ""))
    for cyc in cycles:
      c, r = row[f"cold{cyc}"], row[f"refresh{cyc}"]
      log(f"    max_cycles={cyc}: cold {c['s']:.2f} s err {c['err']:.2e} next× "
          f"{c['next_ratio']:.3f} warn {c['warned']} | refresh {r['s']:.2f} s err "
          f"{r['err']:.2e} next× {r['next_ratio']:.3f} warn {r['warned']}")
  return out


def schedule(*, s=500, k=30, steps=2000, every=(250, 1000), factor=4.0, eval_every=100,
             tracking_cap_s=600.0, remeasure=True, tracking=True, log=print):
  """The schedule part (see the module docstring); a JSON-able dict."""
  import optax
  from mskjax import data as mdata
  from mskjax import optim, tracking
  from mskjax import train as T
  from mskjax.experiments import mnist1d as M
  from benchmarks import bench_mnist1d_scale as S
  arch = "mlp"
  ds = mdata.load_mnist1d()
  x, y = np.asarray(ds.x_train, np.float32), np.asarray(ds.y_train)
  xt, yt = np.asarray(ds.x_test, np.float32), np.asarray(ds.y_test)
  v0 = M.init_params(arch, x, 0)
  d0, build_s, _ = _build(arch, v0, x, k, s)
  batch = M.rule_batch(x, y, 128)
  t = time.perf_counter()
  eta = _measured_step(arch, d0, v0["params"], batch, factor)
  step_s = time.perf_counter() - t
  one_off = build_s + step_s
  log(f"schedule: d₀ {build_s:.2f} s, η = {factor:g} × measured = {eta:.4g} ({step_s:.2f} s)")
  tx = optax.inject_hyperparams(optim.msk_sgd)(learning_rate=eta, directions=d0,
                                               momentum=0.0)
  relearn = (lambda p, d: _measured_step(arch, d, p, batch, factor)) if remeasure else None
  runs = {}
  for R in (steps,) + tuple(every):
    name = "fixed" if R >= steps else f"R={R}" + ("" if remeasure else ", η kept")
    rr = S.refresh_run(arch, v0["params"], d0, x, y, xt, yt, lr=eta, batch_size=128,
                       steps=steps, every=R, eval_every=eval_every, k=k, subsample=s,
                       tx=tx, relearn=relearn)
    rr.pop("state")
    rr["one_off_s"] = one_off
    runs[name] = rr
    log(f"  {name}: final acc {rr['final_acc']:.3f}, diverged at {rr['diverged_at']}, "
        f"train {rr['train_s']:.1f} s, "
        f"refreshes {sum(rr['refresh_s']):.1f} s, re-measure {sum(rr['relearn_s']):.1f} s, "
        f"η's {[round(v, 4) for v in rr['learning_rates']]}")
  if not tracking:
    return dict(s=s, k=k, steps=steps, lr=eta, factor=factor, build_s=build_s,
                step_s=step_s, remeasure=remeasure, eval_every=eval_every, runs=runs)
  # tracking: re-forms the directions from the current Jacobian when the parameters moved
  xs = x[np.asarray(d0.indices)]
  apply = lambda p, xx: M.model(arch).apply({"params": p}, xx)
  ttx = tracking.msk_sgd_tracking(eta, apply, xs, d0, moved=0.01, loss="softmax_cross_entropy")
  ev = M.eval_fn(arch)
  st, rec, wall = None, dict(curve_step=[], curve_time=[], curve_acc=[]), 0.0
  t_start = time.perf_counter()
  compile_s = 0.0
  while (0 if st is None else int(st.step)) < steps:
    res = T.fit(M.loss_fn(arch), v0["params"] if st is None else None, ttx, (x, y),
                steps=eval_every, batch_size=128, seed=0, state=st,
                evaluate=lambda q: ev(q.params, xt, yt), eval_every=eval_every)
    st = res.state
    compile_s += res.compile_s
    for s_, t_, a_ in zip(res.history["step"], res.history["time"], res.history["acc"]):
      if rec["curve_step"] and int(s_) == rec["curve_step"][-1]:
        continue
      rec["curve_step"].append(int(s_))
      rec["curve_time"].append(float(t_) + wall)
      rec["curve_acc"].append(float(a_))
    wall += res.train_s
    if time.perf_counter() - t_start > tracking_cap_s:
      break
  rec.update(train_s=wall, compile_s=compile_s, steps_run=int(st.step),
             final_acc=rec["curve_acc"][-1], capped=int(st.step) < steps,
             refresh_s=[], relearn_s=[], learning_rates=[], one_off_s=one_off)
  runs["tracking"] = rec
  log(f"  tracking (moved=0.01): {rec['steps_run']} steps in {wall:.1f} s (compile "
      f"{compile_s:.1f} s), final acc {rec['final_acc']:.3f}")
  return dict(s=s, k=k, steps=steps, lr=eta, factor=factor, build_s=build_s, step_s=step_s,
              remeasure=remeasure, eval_every=eval_every, runs=runs)


def _converged_at(row, name):
  """The fewest products (max_cycles) of the sweep at which the solve did not warn."""
  ok = sorted(int(key[len(name):]) for key, v in row.items()
              if key.startswith(name) and key[len(name):].isdigit() and not v["warned"])
  return ok[0] if ok else "> sweep"


def _tables(out):
  lines = []
  if "cost" in out:
    lines += ["| case | after | cold s | refresh s | refresh / cold | err cold | err refresh "
              "| 1 product: err cold / refresh (next×) | 3 products: err cold / refresh "
              "| converged at (products): cold / refresh |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in out["cost"]:
      for ck, r in c["at"].items():
        lines.append(
            f"| {c['arch']} s={c['s']} k={c['k']} (first call {c['first_call_s']:.1f} s) | "
            f"{ck} | {r['cold']['s']:.2f} | {r['refresh']['s']:.2f} | "
            f"{r['refresh']['s'] / r['cold']['s']:.2f} | {r['cold']['err']:.1e} | "
            f"{r['refresh']['err']:.1e} | {r['cold1']['err']:.2f} "
            f"({r['cold1']['next_ratio']:.2f}) / {r['refresh1']['err']:.2f} "
            f"({r['refresh1']['next_ratio']:.2f}) | {r['cold3']['err']:.3f} / "
            f"{r['refresh3']['err']:.3f} | {_converged_at(r, 'cold')} / "
            f"{_converged_at(r, 'refresh')} |")
  if "schedule" in out:
    from benchmarks.bench_mnist1d_scale import acc_at_step
    sc = out["schedule"]
    ev = sc.get("eval_every", 100)       # marks on the evaluation grid of every run
    marks = [max(ev, sc["steps"] * q // 8 // ev * ev) for q in (1, 2, 4, 6, 8)]
    lines += ["", "| schedule | steps run | refresh s (total) | re-measure s | train s | "
              "total s (incl. one-off) | " + " | ".join(f"acc@{m}" for m in marks) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(marks)]
    for name, r in sc["runs"].items():
      tot = r["one_off_s"] + r["train_s"] + sum(r["refresh_s"]) + sum(r["relearn_s"])
      accs = " | ".join("—" if acc_at_step(r, m) is None or m > r["curve_step"][-1]
                        else f"{acc_at_step(r, m):.3f}" for m in marks)
      lines.append(f"| {name} | {r['curve_step'][-1]} | {sum(r['refresh_s']):.1f} | "
                   f"{sum(r['relearn_s']):.1f} | {r['train_s']:.1f} | {tot:.1f} | {accs} |")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="smoke run: small s, few steps")
  ap.add_argument("--only", default="cost,schedule", help="comma list: cost, schedule")
  ap.add_argument("--cases", default="mlp:256:30,mlp:500:30,cnn:250:20",
                  help="arch:s:k list of the cost part")
  ap.add_argument("--cycles", default="1,2,3,5",
                  help="max_cycles (products) of the cost part's accuracy sweep")
  ap.add_argument("--oracle", action="store_true",
                  help="cost part: also the jacrev + eigh oracle for MLP cases with s ≤ 256")
  ap.add_argument("--keep-step", action="store_true",
                  help="schedule: refresh the directions but keep the initial step")
  ap.add_argument("--no-tracking", action="store_true", help="schedule: skip tracking")
  ap.add_argument("--tracking-cap", type=float, default=600.0,
                  help="wall seconds after which the tracking run stops")
  args = ap.parse_args(argv)
  parts = [p for p in args.only.split(",") if p]
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  out = dict(utc=stamp, load_start=_uptime(), quick=bool(args.quick))
  t0 = time.perf_counter()
  if "cost" in parts:
    cases = [c.split(":") for c in args.cases.split(",")]
    if args.quick:
      cases = [("mlp", "64", "8"), ("cnn", "48", "6")]
    checkpoints = (20, 60) if args.quick else (200, 1000)
    cyc = tuple(int(c) for c in args.cycles.split(","))
    if 1 not in cyc or 3 not in cyc:
      raise SystemExit("--cycles must contain 1 and 3 (the table's columns)")
    out["cost"] = [cost_case(a, int(s), int(k), checkpoints, cycles=cyc,
                             oracle=args.oracle and a == "mlp" and int(s) <= 256)
                   for a, s, k in cases]
  if "schedule" in parts:
    out["schedule"] = (schedule(s=64, k=8, steps=120, every=(40,), eval_every=20,
                                tracking_cap_s=60.0) if args.quick
                       else schedule(tracking_cap_s=args.tracking_cap,
                                     remeasure=not args.keep_step,
                                     tracking=not args.no_tracking))
  out["load_end"] = _uptime()
  out["wall_s"] = time.perf_counter() - t0
  os.makedirs(RESULTS, exist_ok=True)
  path = os.path.join(RESULTS, f"refresh{'_quick' if args.quick else ''}_{stamp}.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=1, default=float)
  print(_tables(out))
  print(f"wall {out['wall_s']:.0f} s, load {out['load_start']} → {out['load_end']}; {path}")
  return out


if __name__ == "__main__":
  main()
