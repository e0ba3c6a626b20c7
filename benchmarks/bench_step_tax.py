"""Per-step cost of the MSK optimizers in a user's own loop, against SGD-momentum, one process.

The loop is the README's, as a user writes it: a plain ``@jax.jit`` step
``(params, opt_state, batch) → (params, opt_state, loss)`` called from Python, no donation,
no flags. For each model (flax linen, float32) and batch size (b = 128 and the full
training set), every optimizer's step is compiled, then ``--rounds`` rounds of ``--steps``
steps run interleaved (each optimizer in turn, so the machine's load hits all of them
alike); the table gives the minimum ms/step over rounds and its ratio to
``optax.sgd(lr, momentum=0.9)`` measured in the same rounds.

Optimizers: ``sgd-m`` (the baseline), ``msk_sgd`` (momentum 0.9), ``msk+adam``
(``chain(scale_by_msk, adam)``) against ``adam``, ``tracking`` (``msk_sgd_tracking`` with
``every`` so large that it re-forms only at the first update: the cost *between*
re-formations) and ``state-held``: the previous layout of ``scale_by_msk`` (directions as
arrays in the optimizer state, which the step must return and so copies every step),
rebuilt here for the comparison. ``sgd-m donated`` / ``tracking donated``: the same two
with ``jax.jit(step, donate_argnums=(0, 1))`` (safe for the tracking state, which holds its
own copy of the directions). The per-step cost of P does not depend on the values of the
directions, so they are random orthonormal rows of the right shapes (k = ``--k``);
building real ones is the one-off, timed elsewhere.

``P alone``: ``precondition(d, g)`` jitted on its own, in the same rounds, and the bandwidth
it reaches reading the k directions twice (2·k·#params·4 bytes). At b = 128 also P alone in
other layouts (:func:`p_layouts`: k/4 directions, one flat (k, #params) matrix, bfloat16
storage) and the largest k at which ``msk_sgd`` would stay ≤ 1.2× SGD-m (P is linear in k).

Command::

  PYTHONPATH=. JAX_PLATFORMS=cpu python -m benchmarks.bench_step_tax [--quick]

Writes ``benchmarks/results/step_tax_<UTC>.json`` (every timing, the load average before
and after) and prints the markdown table.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn

from mskjax import directions as D
from mskjax import optim, tracking

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class MLP(nn.Module):
  widths: tuple

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for w in self.widths[:-1]:
      x = nn.relu(nn.Dense(w)(x))
    return nn.Dense(self.widths[-1])(x)


class CNN1D(nn.Module):
  channels: int = 32
  layers: int = 3
  out: int = 10

  @nn.compact
  def __call__(self, x):
    for _ in range(self.layers):
      x = nn.relu(nn.Conv(self.channels, (5,))(x))
    return nn.Dense(self.out)(x.reshape(x.shape[0], -1))


# name: (model, input shape of one point, n (the full batch), outputs, loss)
MODELS = {
    "digits MLP 64-256-256-10": (MLP((256, 256, 10)), (64,), 1797, "ce"),
    "MNIST-1D MLP 40-256-256-10": (MLP((256, 256, 10)), (40,), 4000, "ce"),
    "regression MLP 1-512-512-1": (MLP((512, 512, 1)), (1,), 1024, "mse"),
    "MNIST-1D CNN 3x32": (CNN1D(), (40, 1), 4000, "ce"),
    "INR MLP 2-256-256-256-3": (MLP((256, 256, 256, 3)), (2,), 4096, "mse"),
    "MNIST-1D MLP 40-512-512-512-10": (MLP((512, 512, 512, 10)), (40,), 4000, "ce"),
}


def random_directions(params, k, seed=0, s_points=None, c=None):
  """Orthonormal rows q_i (k × #params, float32) as an MSKDirections pytree, g/λ in (0, 1]."""
  leaves, treedef = jax.tree.flatten(params)
  sizes = [l.size for l in leaves]
  rng = np.random.default_rng(seed)
  Q, _ = np.linalg.qr(rng.standard_normal((sum(sizes), k)))
  Q = Q.T.astype(np.float32)
  out, o = [], 0
  for l, sz in zip(leaves, sizes):
    out.append(jnp.asarray(Q[:, o:o + sz].reshape((k,) + l.shape)))
    o += sz
  values = jnp.asarray(np.geomspace(100.0, 1.0, k), jnp.float32)
  vec = None
  if s_points is not None:
    V, _ = np.linalg.qr(rng.standard_normal((s_points * c, k)))
    vec = jnp.asarray(V, jnp.float32)
  return D.MSKDirections(jax.tree.unflatten(treedef, out), values,
                         jnp.full((k,), 1.0, jnp.float32), jnp.asarray(1.0, jnp.float32),
                         vectors=vec)


class _HeldState(NamedTuple):
  directions: Any
  coef: jax.Array


def state_held_scale_by_msk(d):
  """The previous layout: the directions are array leaves of the state the step returns."""
  coef = D.msk_coefficients(d.values, d.new_values, jnp.float32)

  def init(params):
    del params
    return _HeldState(jax.tree.map(lambda a: jnp.array(a, copy=True), d.directions), coef)

  def update(updates, state, params=None):
    del params
    return D.apply_directions(updates, state.directions, state.coef), state
  return optax.GradientTransformation(init, update)


def p_layouts(params, d, k):
  """P alone in other layouts, jitted (name → (fn, ms list)): the library's at k/4 (P is
  linear in k), one flat (k, #params) matrix (a ravel/unravel copy around two GEMVs) and
  the library's per-leaf layout with bfloat16 directions (half the bytes, float32
  accumulation)."""
  k4 = max(1, k // 4)
  d4 = random_directions(params, k4)
  coef = D.msk_coefficients(d.values, d.new_values, jnp.float32)
  Q = jnp.concatenate([q.reshape(k, -1) for q in jax.tree.leaves(d.directions)], 1)
  _, unravel = jax.flatten_util.ravel_pytree(params)

  def flat(g):
    v, _ = jax.flatten_util.ravel_pytree(g)
    return unravel(v + (coef * (Q @ v)) @ Q)
  bf = jax.tree.map(lambda q: q.astype(jnp.bfloat16), d.directions)

  def bf16(g):
    a = sum(jnp.tensordot(q, u.astype(jnp.bfloat16), axes=u.ndim,
                          preferred_element_type=jnp.float32)
            for q, u in zip(jax.tree.leaves(bf), jax.tree.leaves(g)))
    w = (coef * a).astype(jnp.bfloat16)
    return jax.tree.map(lambda u, q: u + jnp.tensordot(w, q, axes=1,
                                                       preferred_element_type=jnp.float32),
                        g, bf)
  out = {f"k = {k4}": jax.jit(lambda g: optim.precondition(d4, g)),
         "flat (k, P)": jax.jit(flat), "bfloat16": jax.jit(bf16)}
  g0 = jax.tree.map(jnp.ones_like, params)
  for fn in out.values():
    jax.block_until_ready(fn(g0))
  return {key: (fn, []) for key, fn in out.items()}


def make_step(model, loss_kind, tx, donate=False):
  def loss_fn(p, batch):
    xb, yb = batch
    f = model.apply({"params": p}, xb)
    if loss_kind == "ce":
      return optax.softmax_cross_entropy_with_integer_labels(f, yb).mean()
    return 0.5 * jnp.mean(jnp.sum((f - yb) ** 2, -1))

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  # the README's step, as written; ``donate``: the same step with its parameters and
  # optimizer state donated (XLA may then write the new state over the old)
  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def run_case(name, b, k, steps, rounds, log=print):
  model, shape, n, loss_kind = MODELS[name]
  rng = np.random.default_rng(0)
  bsz = n if b == "full" else b
  x = jnp.asarray(rng.standard_normal((bsz,) + shape), jnp.float32)
  c = model.widths[-1] if isinstance(model, MLP) else model.out
  y = (jnp.asarray(rng.integers(0, c, bsz)) if loss_kind == "ce"
       else jnp.asarray(rng.standard_normal((bsz, c)), jnp.float32))
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  n_params = sum(l.size for l in jax.tree.leaves(params))
  s = 64                                      # points the tracking directions are tied to
  d = random_directions(params, k, s_points=s, c=c)
  xs = x[:s] if bsz >= s else jnp.asarray(rng.standard_normal((s,) + shape), jnp.float32)
  apply = lambda p, xx: model.apply({"params": p}, xx)
  lr = 1e-3
  txs = {
      "sgd-m": optax.sgd(lr, momentum=0.9),
      "msk_sgd": optim.msk_sgd(lr, d, momentum=0.9),
      "state-held": optax.chain(state_held_scale_by_msk(d), optax.sgd(lr, momentum=0.9)),
      "adam": optax.adam(lr),
      "msk+adam": optax.chain(optim.scale_by_msk(d), optax.adam(lr)),
      "tracking": tracking.msk_sgd_tracking(lr, apply, xs, d, every=2 ** 30, momentum=0.9),
  }
  # the same tracking transform and baseline with donated arguments (safe: the tracking
  # state holds its own copy of the directions, never the caller's arrays)
  txs["sgd-m donated"] = txs["sgd-m"]
  txs["tracking donated"] = txs["tracking"]
  batch = (x, y)
  # P alone (``precondition`` on a gradient, jitted): its time and the bandwidth it reaches
  # reading the k stored directions twice (2·k·#params·4 bytes)
  grads = jax.tree.map(lambda a: jnp.ones_like(a), params)
  p_alone = jax.jit(lambda g: optim.precondition(d, g))
  jax.block_until_ready(p_alone(grads))
  products = {"P alone": (p_alone, []), **(p_layouts(params, d, k) if b == 128 else {})}
  runs = {}
  for key, tx in txs.items():
    step = make_step(model, loss_kind, tx, donate=key.endswith("donated"))
    st = tx.init(params)
    p = params                                # donation consumes the arrays passed in:
    if key.endswith("donated"):               # a copy, so that the other runs keep theirs
      p = jax.tree.map(lambda a: jnp.array(a, copy=True), params)
    t0 = time.perf_counter()
    p, st, l = step(p, st, batch)             # compile (+ the tracking re-formation at t = 0)
    jax.block_until_ready(p)
    runs[key] = dict(step=step, p=p, st=st, compile_s=time.perf_counter() - t0, ms=[])
  for _ in range(rounds):
    for key, r in runs.items():
      p, st = r["p"], r["st"]
      t0 = time.perf_counter()
      for _ in range(steps):
        p, st, l = r["step"](p, st, batch)
      jax.block_until_ready(p)
      r["ms"].append((time.perf_counter() - t0) / steps * 1e3)
      r["p"], r["st"] = p, st
    for fn, ms in products.values():
      t0 = time.perf_counter()
      for _ in range(steps):
        g = fn(grads)
      jax.block_until_ready(g)
      ms.append((time.perf_counter() - t0) / steps * 1e3)
  best = {key: min(r["ms"]) for key, r in runs.items()}
  best["P alone"] = min(products["P alone"][1])
  p_bytes = 2 * k * n_params * 4
  row = dict(model=name, b=b, n_params=int(n_params), k=k,
             ms={key: r["ms"] for key, r in runs.items()},
             compile_s={key: r["compile_s"] for key, r in runs.items()},
             best_ms=best,
             ratio={"msk_sgd": best["msk_sgd"] / best["sgd-m"],
                    "state-held": best["state-held"] / best["sgd-m"],
                    "tracking": best["tracking"] / best["sgd-m"],
                    "msk+adam / adam": best["msk+adam"] / best["adam"],
                    "msk+adam / sgd-m": best["msk+adam"] / best["sgd-m"],
                    "tracking donated": best["tracking donated"] / best["sgd-m donated"],
                    "P alone / sgd-m": best["P alone"] / best["sgd-m"]},
             p_bytes=p_bytes, p_gb_per_s=p_bytes / best["P alone"] / 1e6,
             p_layouts_ms={key: min(ms) for key, (_, ms) in products.items()
                           if key != "P alone"},
             # P is linear in k (memory-bound): the largest k with msk_sgd ≤ 1.2× sgd-m
             k_for_1_2=int(0.2 * best["sgd-m"] / (best["P alone"] / k)))
  log(f"{name} b={b}: " + " ".join(f"{kk}={v:.3f}" for kk, v in best.items())
      + " | " + " ".join(f"{kk}={v:.2f}x" for kk, v in row["ratio"].items()))
  return row


def markdown(rows):
  out = ["| model | #params | b | sgd-m ms | msk_sgd / sgd-m | msk+adam / adam | "
         "tracking / sgd-m | tracking / sgd-m, both donated | previous layout / sgd-m | "
         "P alone ms (GB/s) | 1 + P alone / sgd-m |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    q = r["ratio"]
    out.append(f"| {r['model']} | {r['n_params']:,} | {r['b']} | {r['best_ms']['sgd-m']:.2f} | "
               f"{q['msk_sgd']:.2f} | {q['msk+adam / adam']:.2f} | {q['tracking']:.2f} | "
               f"{q['tracking donated']:.2f} | {q['state-held']:.2f} | "
               f"{r['best_ms']['P alone']:.2f} ({r['p_gb_per_s']:.0f}) | "
               f"{1 + q['P alone / sgd-m']:.2f} |")
  k = rows[0]["k"] if rows else 0
  out += ["", f"| model | #params | sgd-m ms (b = 128) | P alone ms, k = {k} (GB/s) | P alone, "
          "k/4 | flat (k, P) matrix | bfloat16 directions | largest k with msk_sgd ≤ 1.2× "
          "sgd-m |",
          "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if not r.get("p_layouts_ms"):
      continue
    lay = r["p_layouts_ms"]
    k4 = next(key for key in lay if key.startswith("k = "))
    out.append(f"| {r['model']} | {r['n_params']:,} | {r['best_ms']['sgd-m']:.2f} | "
               f"{r['best_ms']['P alone']:.2f} ({r['p_gb_per_s']:.0f}) | {lay[k4]:.2f} ({k4}) | "
               f"{lay['flat (k, P)']:.2f} | {lay['bfloat16']:.2f} | {r['k_for_1_2']} |")
  return "\n".join(out)


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="two models, few steps (a smoke run)")
  ap.add_argument("--k", type=int, default=20)
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--rounds", type=int, default=None)
  ap.add_argument("--models", default=None, help="comma-separated subset of the model names")
  args = ap.parse_args(argv)
  names = list(MODELS)
  if args.models:
    names = [m for m in names if any(s.strip() in m for s in args.models.split(","))]
  if args.quick:
    names = names[:1] + names[2:3]
  steps = args.steps or (5 if args.quick else 10)      # per round at b = 128; a third of it
  rounds = args.rounds or (2 if args.quick else 3)     # at full batch
  load0 = os.getloadavg()
  date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
  rows = []
  path = RESULTS / f"step_tax_{date}.json"
  for name in names:
    for b in (128, "full"):
      rows.append(run_case(name, b, args.k, steps if b == 128 else max(1, steps // 3),
                           rounds))
      res = dict(date=date, machine=f"{os.cpu_count()}-core CPU", jax=jax.__version__,
                 load_before=load0, load_after=os.getloadavg(), steps=steps, rounds=rounds,
                 k=args.k, quick=args.quick, rows=rows)
      if not args.quick:                      # after every row: a cut-short run keeps its rows
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(res, indent=1))
  load1 = os.getloadavg()
  if not args.quick:
    print(f"wrote {path}")
  print(f"load average before {load0[0]:.1f}, after {load1[0]:.1f}; k = {args.k}; "
        f"{rounds} rounds × {steps} steps, minimum ms/step")
  print(markdown(rows))
  return res


if __name__ == "__main__":
  main()
