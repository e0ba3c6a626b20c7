"""Steps to a target against the batch size: msk_sgd (PGD) against tuned SGD-momentum and Adam.

Command::

  python -m benchmarks.bench_batch_sweep                  # seed 0, every batch size (resumable)
  python -m benchmarks.bench_batch_sweep --seeds 0,1,2    # seeds 1-2 rerun seed 0's best lr
  python -m benchmarks.bench_batch_sweep --doc            # rows → table in docs/results.md
  python -m benchmarks.bench_batch_sweep --quick          # smoke run (< 1 min, own file)

The question (EigenPro's argument, Ma & Belkin 2017): preconditioning flattens the top of
the spectrum, so the largest stable step grows and the critical batch size — the batch
beyond which a larger batch no longer buys proportionally fewer steps — should grow with it.
Does PGD's steps-vs-batch curve bend later than tuned SGD-momentum's and Adam's?

Set-up (float32, CPU or whatever ``jax`` sees). MNIST-1D, the standard 4000 training / 1000
test sequences (``mskjax.data.load_mnist1d(num_samples=5000)``), the MNIST-1D MLP
40-256-256-10 of ``mskjax/experiments/mnist1d.py`` (``init_params``, ``loss_fn``,
``build_directions``, ``pgd_base_lr``, ``rule_batch``: the pieces of the optimizer table),
mean softmax cross-entropy, one training loop: ``mskjax.train.fit`` (its shuffling
minibatch iterator; ``loop='auto'``), every method from the same initialisation per seed.
Batch sizes 128, 256, 512, 1024, 2048 and full batch (4096 > n = 4000 is full batch).

Methods:

* ``sgd``  — ``optax.sgd(lr, momentum=0.9)``; ``adam`` — ``optax.adam(lr)``: lr tuned per
  batch size on the 1-3-10 grid (factors of ≈3), widened at an edge until the best is
  inside (at most :data:`MAX_WIDEN` widenings per side; the table marks a grid edge hit);
  "best" = fewest steps to the accuracy target, then to the loss target, then final
  accuracy (full-batch baselines first by final accuracy: they define the targets);
* ``pgd``  — the README recipe: ``msk_directions(..., loss='softmax_cross_entropy')``
  (k = 30 flatten directions on 500 random training points, at initialisation) →
  ``steps.stable_learning_rate(d, b, loss_fn=, params=, batch=)`` measured on one random
  batch of b points → ``msk_sgd(η, d)`` (no momentum), at η = 1× and 2× the rule; no grid.
  Its one-off (cold directions build + the rule measurement at that b) is added to its wall
  times;
* ``pgd_m`` — the same directions in ``msk_sgd(lr, d, momentum=0.9)``, lr tuned per batch
  size exactly like ``sgd`` (P in front of the tuned baseline: the fair test of whether P
  moves the baseline's curve); one-off = the directions build.

Targets (:func:`targets`): from seed 0's full-batch baselines — the lower of the tuned
baselines' final test accuracies minus :data:`ACC_MARGIN` (reachable by every baseline at
full batch, under each one's ceiling), and the best baseline's train cross-entropy (on all
4000 points) at the evaluation where it first reached that accuracy (the full-batch runs fit the training
set to CE ≈ 1e-4 by their last step, which no small-batch run reaches in the budget).
Budget: 1000 steps per run (full-batch test accuracy plateaus by step ≈ 150). Evaluations at log-spaced steps (ratio
:data:`EVAL_RATIO`: steps to target are resolved to ≈ 6 %); a run stops once both targets
are reached (full-batch baselines run the whole budget: they define the targets).

Rows: ``benchmarks/results/batch_sweep.jsonl`` (``--quick``: ``batch_sweep_quick.jsonl``),
one json line per (method, batch size, grid value, seed) as it finishes, with its curves,
per-step ms, one-off and the 1-minute load before and after; a rerun skips the rows it
finds (resumable). ``--doc`` writes the table between this benchmark's markers in
``docs/results.md``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks import _results_doc

RESULTS = Path(__file__).resolve().parent / "results"
DOC = Path(__file__).resolve().parent.parent / "docs" / "results.md"
SECTION = "## Steps to a target against the batch size"

BATCHES = (128, 256, 512, 1024, 2048, 4096, None)     # None = full batch
BASELINES = ("sgd", "adam")
TUNED = BASELINES + ("pgd_m",)        # the methods whose lr is tuned per batch size
PGD_FACTORS = (1.0, 2.0)
#: Grid start (lattice index, see :func:`lattice`) of each baseline: sgd 0.1 at b = 128
#: rising ≈ √b (snapped), adam 0.01 everywhere (the optimizer table's best values).
START = {"sgd": lambda b, n: -2 + (1 if (b or n) >= 512 else 0) + (1 if (b or n) >= 4000 else 0),
         "adam": lambda b, n: -4}
START["pgd_m"] = START["sgd"]
MAX_WIDEN = 3
ACC_MARGIN = 0.02
EVAL_RATIO = 1.06
FULL = dict(num_samples=5000, k=30, subsample=500, steps=1000, batches=BATCHES)
QUICK = dict(num_samples=1000, k=8, subsample=64, steps=40, batches=(64, None))


def lattice(j: int) -> float:
  """The 1-3-10 learning-rate lattice: j = 0 → 1, 1 → 3, -1 → 0.3, -2 → 0.1, ..."""
  return float(10.0 ** (j // 2) * (3.0 if j % 2 else 1.0))


def eval_steps(steps: int, ratio: float = EVAL_RATIO):
  """Log-spaced evaluation steps 1, 2, ..., ≈ ratio× apart, and the last step."""
  out, s = [], 1.0
  while s < steps:
    out.append(int(round(s)))
    s = max(s * ratio, s + 1)
  return sorted(set(out) | {steps})


def loadavg() -> float:
  return float(os.getloadavg()[0])


def first_reach(row, key, target, higher):
  """Steps and training seconds at the first evaluation reaching the target, or (None, None)."""
  for s, t, v in zip(row["curve_step"], row["curve_time"], row[key]):
    if v is not None and np.isfinite(v) and (v >= target if higher else v <= target):
      return int(s), float(t)
  return None, None


# ------------------------------------------------------------------------------ targets
def targets(rows, seed=0):
  """``{'acc', 'loss', 'source', ...}`` from the full-batch baseline rows of ``seed`` (None
  when there are none yet). Each baseline's best final test accuracy over its grid; acc
  target = the lower of them − ACC_MARGIN (every baseline reaches it at full batch, with a
  margin under each one's ceiling: test accuracy near a method's ceiling is decided by
  single evaluations); loss target = the train cross-entropy of the best run (highest
  final accuracy) at its first evaluation at the acc target."""
  full = [r for r in rows if r["full"] and r["method"] in BASELINES and r["seed"] == seed
          and not r["diverged"]]
  if not full:
    return None
  tuned = {m: max((r for r in full if r["method"] == m), key=lambda r: r["final_acc"])
           for m in {r["method"] for r in full}}
  best = max(tuned.values(), key=lambda r: r["final_acc"])
  low = min(tuned.values(), key=lambda r: r["final_acc"])
  acc = round(low["final_acc"] - ACC_MARGIN, 4)
  s, _ = first_reach(best, "curve_acc", acc, True)
  loss = best["curve_train_loss"][best["curve_step"].index(s)]
  return dict(acc=acc, loss=float(loss), loss_step=s,
              source=f"{best['method']} lr {best['lr']:g}", best_final_acc=best["final_acc"],
              best_final_loss=best["final_train_loss"],
              low=f"{low['method']} lr {low['lr']:g}", low_final_acc=low["final_acc"])


def score(row, tg):
  """Sort key of a run for tuning (larger is better)."""
  if row["diverged"]:
    return (-2, 0, 0, 0)
  if tg is None:
    return (0, 0, 0, row["final_acc"])
  sa, _ = first_reach(row, "curve_acc", tg["acc"], True)
  sl, _ = first_reach(row, "curve_train_loss", tg["loss"], False)
  big = 10 ** 9
  return (1 if sa is not None else 0, -(sa or big), -(sl or big), row["final_acc"])


def best_row(rows, tg, key=None):
  """The run with the best ``score`` (or the fewest steps to one target when ``key`` is
  'acc' or 'loss')."""
  if key is None:
    return max(rows, key=lambda r: score(r, tg))
  k, hi = ("curve_acc", True) if key == "acc" else ("curve_train_loss", False)
  ok = [(first_reach(r, k, tg[key], hi)[0], r) for r in rows if not r["diverged"]]
  ok = [(s, r) for s, r in ok if s is not None]
  return min(ok, key=lambda t: (t[0], -t[1]["final_acc"]))[1] if ok else None


# ------------------------------------------------------------------------------ the sweep
class Sweep:
  """The problem, the directions per seed and the runs (rows appended to ``path``)."""

  def __init__(self, quick=False, path=None, log=print):
    import jax
    import jax.numpy as jnp
    from mskjax import data
    from mskjax.experiments import mnist1d as M
    from mskjax import train
    self.jax, self.jnp, self.M, self.train, self.log = jax, jnp, M, train, log
    self.cfg = dict(QUICK if quick else FULL)
    self.quick = quick
    ds = data.load_mnist1d(num_samples=self.cfg["num_samples"])
    self.x = jnp.asarray(ds.x_train, jnp.float32)
    self.y = jnp.asarray(ds.y_train)
    self.xt = jnp.asarray(ds.x_test, jnp.float32)
    self.yt = jnp.asarray(ds.y_test)
    self.n = int(self.x.shape[0])
    self.path = Path(path or RESULTS / f"batch_sweep{'_quick' if quick else ''}.jsonl")
    self.key = dict(n=self.n, k=self.cfg["k"], subsample=self.cfg["subsample"],
                    steps=self.cfg["steps"], arch="mlp")
    if quick and path is None and self.path.exists():
      self.path.unlink()                     # a smoke run starts from nothing
    self.rows = self._read()
    self._dirs, self._rule, self._params = {}, {}, {}
    loss = M.loss_fn("mlp")
    model = M.model("mlp")
    x, y, xt, yt = self.x, self.y, self.xt, self.yt
    optax = __import__("optax")

    @jax.jit
    def ev(p):
      tr = optax.softmax_cross_entropy_with_integer_labels(
          model.apply({"params": p}, x), y).mean()
      logits = model.apply({"params": p}, xt)
      return {"acc": jnp.mean(jnp.argmax(logits, -1) == yt), "train_loss": tr}
    self.ev, self.loss = ev, loss
    import mskjax
    self.factories = {
        "sgd": lambda lr: optax.sgd(lr, momentum=0.9),
        "adam": lambda lr: optax.adam(lr),
        "pgd": {},     # per seed: lambda lr: mskjax.msk_sgd(lr, d) (README recipe)
        "pgd_m": {},   # per seed: lambda lr: mskjax.msk_sgd(lr, d, momentum=0.9)
    }
    self.mskjax = mskjax

  # -------------------------------------------------------------- rows
  def _read(self):
    if not self.path.exists():
      return []
    out = []
    for line in self.path.read_text().splitlines():
      if line.strip():
        r = json.loads(line)
        if all(r.get(k) == v for k, v in self.key.items()):
          out.append(r)
    return out

  def find(self, method, b, value, seed):
    for r in self.rows:
      if (r["method"], r["batch"], r["seed"]) == (method, b, seed) and \
          abs(r["value"] - value) <= 1e-9 * abs(value):
        return r
    return None

  def bsize(self, b):
    """The batch size run (None = full batch; b ≥ n is full batch too)."""
    return None if b is None or b >= self.n else int(b)

  # -------------------------------------------------------------- PGD pieces
  def params(self, seed):
    if seed not in self._params:
      self._params[seed] = self.M.init_params("mlp", self.x, seed)["params"]
    return self._params[seed]

  def directions(self, seed):
    if seed not in self._dirs:
      M = self.M
      d, sec = M.build_directions("mlp", {"params": self.params(seed)}, self.x,
                                  k=self.cfg["k"], subsample=self.cfg["subsample"], seed=seed,
                                  loss="softmax_cross_entropy")
      self._dirs[seed] = (d, sec)
      self.factories["pgd"][seed] = lambda lr, d=d: self.mskjax.msk_sgd(lr, d)
      self.factories["pgd_m"][seed] = lambda lr, d=d: self.mskjax.msk_sgd(lr, d, momentum=0.9)
      self.log(f"  seed {seed}: directions {sec:.1f} s (cold), λ₁ = {float(d.values[0]):.4g}")
    return self._dirs[seed]

  def rule(self, b, seed):
    bb = self.bsize(b) or self.n
    if (bb, seed) not in self._rule:
      d, _ = self.directions(seed)
      t0 = time.perf_counter()
      eta = self.M.pgd_base_lr("measured", d, bb, arch="mlp", params=self.params(seed),
                               batch=self.M.rule_batch(self.x, self.y, bb, seed))
      self._rule[(bb, seed)] = (float(eta), time.perf_counter() - t0)
      self.log(f"  b = {bb} seed {seed}: rule η = {eta:.4g} "
               f"({self._rule[(bb, seed)][1]:.1f} s)")
    return self._rule[(bb, seed)]

  # -------------------------------------------------------------- one run
  def run(self, method, b, value, seed, tg=None):
    """One run (or its stored row). ``value``: the lr (baselines) or the factor of the rule
    (pgd). Stops once both targets are reached when ``tg`` is given."""
    bb = self.bsize(b)
    label = bb or self.n
    old = self.find(method, label, value, seed)
    if old is not None:
      return old
    jnp = self.jnp
    one_off, extra = 0.0, {}
    if method == "pgd":
      d, dsec = self.directions(seed)
      eta, rsec = self.rule(b, seed)
      lr, tx = value * eta, self.factories["pgd"][seed]
      one_off = dsec + rsec
      extra = dict(eta_rule=eta, directions_s=dsec, rule_s=rsec)
    elif method == "pgd_m":
      d, dsec = self.directions(seed)
      lr, tx, one_off = value, self.factories["pgd_m"][seed], dsec
      extra = dict(directions_s=dsec)
    else:
      lr, tx = value, self.factories[method]
    stop = None
    if tg is not None:
      stop = lambda m: bool(m["acc"] >= tg["acc"] and m["train_loss"] <= tg["loss"])
    load0 = loadavg()
    steps = self.cfg["steps"]
    res = self.train.fit(self.loss, self.params(seed), tx, (self.x, self.y), steps=steps,
                       batch_size=bb, seed=seed, hparams=jnp.asarray(lr, jnp.float32),
                       evaluate=lambda st: self.ev(st.params), eval_steps=eval_steps(steps),
                       stop_above={"loss": 50.0}, stop_eval=stop, loop="auto")
    h = res.history
    ran = int(res.state.step)
    acc = [float(v) for v in h["acc"]]
    tl = [float(v) for v in h["train_loss"]]
    row = dict(self.key, method=method, batch=label, full=bb is None, value=float(value),
               lr=float(lr), seed=int(seed), diverged=res.stopped not in (None, "stop_eval"),
               stopped=None if res.stopped is None else str(res.stopped),
               stop_targets=tg, steps_run=ran, per_step_ms=1e3 * res.train_s / max(ran, 1),
               train_s=res.train_s, compile_s=res.compile_s, eval_s=res.eval_s,
               one_off_s=one_off, curve_step=[int(s) for s in h["step"]],
               curve_time=[float(t) for t in h["time"]], curve_acc=acc,
               curve_train_loss=tl, final_acc=acc[-1], final_train_loss=tl[-1],
               load_start=load0, load_end=loadavg(), backend=self.jax.default_backend(),
               utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%MZ"),
               **extra)
    self.rows.append(row)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    what = f"×{value:g} (lr {lr:.4g})" if method == "pgd" else f"lr {lr:g}"
    self.log(f"  {method:5s} b = {label:5d} seed {seed} {what}: acc {acc[-1]:.4f}, train CE "
             f"{tl[-1]:.4g} at step {ran}, {row['per_step_ms']:.2f} ms/step, load "
             f"{load0:.1f}" + (" DIVERGED" if row["diverged"] else "")
             + (" (stopped at target)" if row["stopped"] and not row["diverged"] else ""))
    return row

  # -------------------------------------------------------------- tuning
  def tune(self, method, b, seed, tg):
    """Run the baseline's grid at b, widened at an edge (≤ MAX_WIDEN per side) until the
    best run (:func:`score`, and each target's fastest) is inside. Returns its rows."""
    j0 = START[method](self.bsize(b), self.n)
    js = [j0 - 1, j0, j0 + 1] if not self.quick else [j0]
    lo, hi = min(js), max(js)
    rows = {j: self.run(method, b, lattice(j), seed, tg) for j in js}
    if self.quick:
      return list(rows.values())
    for _ in range(2 * MAX_WIDEN):
      picks = [best_row(list(rows.values()), tg)]
      if tg is not None:
        picks += [best_row(list(rows.values()), tg, k) for k in ("acc", "loss")]
      idx = {j for j, r in rows.items() for p in picks if p is r}
      grow = []
      if lo in idx and lo > j0 - 1 - MAX_WIDEN:
        grow.append(lo - 1)
      if hi in idx and hi < j0 + 1 + MAX_WIDEN and not rows[hi]["diverged"]:
        grow.append(hi + 1)
      if not grow:
        break
      for j in grow:
        rows[j] = self.run(method, b, lattice(j), seed, tg)
      lo, hi = min(rows), max(rows)
    return list(rows.values())

  def sweep(self, seeds=(0,)):
    batches = [b for b in self.cfg["batches"]]
    seen, order = set(), []
    for b in batches:                      # 4096 ≥ n is full batch: run once
      if self.bsize(b) not in seen:
        seen.add(self.bsize(b))
        order.append(b)
    full = [b for b in order if self.bsize(b) is None]
    rest = [b for b in order if self.bsize(b) is not None][::-1]
    s0 = seeds[0]
    self.log(f"== batch sweep: n = {self.n}, steps {self.cfg['steps']}, batches "
             f"{[self.bsize(b) or 'full' for b in order]}, seeds {list(seeds)}, load "
             f"{loadavg():.2f}")
    for m in BASELINES:                      # full-batch baselines define the targets
      self.tune(m, None, s0, None)
    tg = targets(self.rows, s0)
    self.log(f"  targets: {tg}")
    for b in full + rest:
      for m in TUNED:
        self.tune(m, b, s0, tg)
      for f in PGD_FACTORS:
        self.run("pgd", b, f, s0, tg)
    for sd in seeds[1:]:                      # other seeds: seed 0's best values only
      for b in full + rest:
        for m in TUNED:
          rs = [r for r in self.rows if r["method"] == m and r["batch"] == (self.bsize(b) or
                self.n) and r["seed"] == s0]
          vals = {best_row(rs, tg)["value"]}
          for k in ("acc", "loss"):
            br = best_row(rs, tg, k)
            if br is not None:
              vals.add(br["value"])
          for v in sorted(vals):
            self.run(m, b, v, sd, tg)
        for f in PGD_FACTORS:
          self.run("pgd", b, f, sd, tg)
    return self.rows


# ------------------------------------------------------------------------------ read-out
def _fmt(v, f="{:.0f}"):
  return "–" if v is None else f.format(v)


def summary(rows, seed0=0):
  """Per (method label, batch): the tuned value on seed 0 for each target and steps/wall
  seconds to it (mean over the seeds that ran it and reached), plus the grid-edge flag."""
  tg = targets(rows, seed0)
  if tg is None:
    return tg, {}
  out = {}
  for key, (ck, hi) in (("acc", ("curve_acc", True)), ("loss", ("curve_train_loss", False))):
    for b in sorted({r["batch"] for r in rows}):
      for m in TUNED + tuple(f"pgd×{f:g}" for f in PGD_FACTORS):
        if m.startswith("pgd×"):
          f = float(m[4:])
          cand = [r for r in rows if r["method"] == "pgd" and r["batch"] == b
                  and r["value"] == f and r["seed"] == seed0]
        else:
          cand = [r for r in rows if r["method"] == m and r["batch"] == b
                  and r["seed"] == seed0]
        if not cand:
          continue
        br = best_row(cand, tg, key)
        grid = sorted(r["value"] for r in cand)
        if br is None:
          out[(key, m, b)] = dict(reached=f"0/{len(cand) if m.startswith('pgd×') else 1}",
                                  value=None, grid=grid, edge=False, steps=None, wall=None,
                                  per_step_ms=float(np.median([r["per_step_ms"]
                                                               for r in cand])))
          continue
        v = br["value"]
        seeds = [r for r in rows if r["method"] == br["method"] and r["batch"] == b
                 and abs(r["value"] - v) <= 1e-9 * v]
        hits = [first_reach(r, ck, tg[key], hi) for r in seeds]
        ok = [(s, t + r["one_off_s"], r) for (s, t), r in zip(hits, seeds) if s is not None]
        edge = (not m.startswith("pgd×")) and len(grid) > 1 and v in (grid[0], grid[-1])
        out[(key, m, b)] = dict(
            reached=f"{len(ok)}/{len(seeds)}", value=v, lr=br["lr"], grid=grid, edge=edge,
            steps=float(np.mean([s for s, _, _ in ok])) if ok else None,
            steps_all=[s for s, _, _ in ok],
            wall=float(np.mean([t for _, t, _ in ok])) if ok else None,
            one_off=float(np.mean([r["one_off_s"] for r in seeds])),
            per_step_ms=float(np.mean([r["per_step_ms"] for r in seeds])))
  return tg, out


def critical_batch(points):
  """Least-squares fit of S(b) = S_min·(1 + B_crit/b) (McCandlish et al. 2018) to
  (b, steps) points: S linear in 1/b, S_min the intercept, B_crit = slope / S_min."""
  pts = [(b, s) for b, s in points if s is not None]
  if len(pts) < 3:
    return None, None
  a = np.array([[1.0, 1.0 / b] for b, _ in pts])
  coef, *_ = np.linalg.lstsq(a, np.array([s for _, s in pts], float), rcond=None)
  smin, slope = coef
  return float(smin), (float(slope / smin) if smin > 0 else float("inf"))


def markdown(rows, seed0=0):
  tg, S = summary(rows, seed0)
  if tg is None:
    return "(no full-batch baseline rows yet)"
  methods = TUNED + tuple(f"pgd×{f:g}" for f in PGD_FACTORS)
  batches = sorted({b for (_, _, b) in S})
  lines = []
  for key, name in (("acc", f"test accuracy ≥ {tg['acc']:.4g}"),
                    ("loss", f"train cross-entropy ≤ {tg['loss']:.3g}")):
    lines += [f"**Target: {name}.** Steps to target (mean over the seeds that reached "
              "it; reached/ran) · wall s to target, one-off included (PGD) · tuned value "
              "(lr; ×rule for PGD; `edge` = best at the widened grid's edge)", "",
              "| b | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for b in batches:
      cells = []
      for m in methods:
        c = S.get((key, m, b))
        if c is None:
          cells.append("")
        elif c["steps"] is None:
          cells.append(f"not reached ({c['reached']})")
        else:
          v = (f"×{c['value']:g} = {c['lr']:.3g}" if m.startswith("pgd×")
               else f"{c['value']:g}{' edge' if c['edge'] else ''}")
          cells.append(f"{c['steps']:.0f} ({c['reached']}) · {c['wall']:.1f} s · {v}")
      lines.append(f"| {b} | " + " | ".join(cells) + " |")
    fits = []
    for m in methods:
      pts = [(b, S[(key, m, b)]["steps"]) for b in batches if (key, m, b) in S]
      smin, bc = critical_batch(pts)
      fits.append("–" if smin is None else f"S_min {smin:.0f}, B_crit {bc:.0f}")
    ratios = []
    for m in methods:
      lo, hi = S.get((key, m, batches[0]), {}), S.get((key, m, batches[-1]), {})
      ok = lo.get("steps") and hi.get("steps")
      ratios.append(f"{lo['steps'] / hi['steps']:.1f}×" if ok else "–")
    lines += [f"| fit S(b) = S_min(1 + B_crit/b) | " + " | ".join(fits) + " |",
              f"| steps at b = {batches[0]} ÷ at b = {batches[-1]} (perfect scaling: "
              f"{batches[-1] / batches[0]:.0f}×) | " + " | ".join(ratios) + " |", ""]
  per = ["| b | " + " | ".join(f"{m} ms/step" for m in methods) + " |",
         "|---|" + "---|" * len(methods)]
  for b in batches:
    per.append(f"| {b} | " + " | ".join(
        _fmt(S.get(("acc", m, b), {}).get("per_step_ms"), "{:.2f}") for m in methods) + " |")
  loads = [r["load_start"] for r in rows] + [r["load_end"] for r in rows]
  seeds = sorted({r["seed"] for r in rows})
  lines += per + ["", f"Targets from seed {seed0}'s full-batch baselines: accuracy = the lower "
                      f"final ({tg['low']}: {tg['low_final_acc']:.4f}) − {ACC_MARGIN}; train CE "
                      f"= the best run's ({tg['source']}, final accuracy "
                      f"{tg['best_final_acc']:.4f}) when it first reached that accuracy, at "
                      f"step {tg['loss_step']}. Seeds {seeds}; "
                      f"{len(rows)} runs; 1-min load {min(loads):.1f}–{max(loads):.1f}; "
                      f"rows {rows[0]['utc']} – {rows[-1]['utc']} UTC."]
  return "\n".join(lines)


def write_doc(text: str):
  """Replace this benchmark's block of docs/results.md (appended with its section if
  missing)."""
  _results_doc.write_block(DOC, SECTION, "bench_batch_sweep", text)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="smoke run (< 1 min, own rows file)")
  ap.add_argument("--seeds", default="0", help="comma-separated seeds (first: tuning seed)")
  ap.add_argument("--out", default=None, help="rows file (jsonl; default benchmarks/results/)")
  ap.add_argument("--doc", action="store_true",
                  help="only write the table of the stored rows into docs/results.md")
  a = ap.parse_args(argv)
  try:
    seeds = tuple(int(s) for s in a.seeds.split(",") if s.strip())
  except ValueError:
    raise SystemExit(f"--seeds: expected comma-separated integers, e.g. 0,1,2; got {a.seeds!r}.")
  if not seeds:
    raise SystemExit("--seeds: give at least one seed, e.g. --seeds 0.")
  sw = Sweep(quick=a.quick, path=a.out, log=lambda s: print(s, flush=True))
  if not a.doc:
    sw.sweep(seeds)
  text = markdown(sw.rows, seeds[0])
  print(text)
  if a.doc:
    if a.quick:
      raise SystemExit("--doc with --quick: the smoke rows never go into docs/results.md.")
    write_doc(text)
    print(f"wrote the table into {DOC}")
  return sw.rows


if __name__ == "__main__":
  main()
