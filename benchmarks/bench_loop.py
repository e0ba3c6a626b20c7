"""``train.fit`` against a Python loop over the same jitted step (MLP and 1-D CNN, float32).

Run:  python -m benchmarks.bench_loop [--quick] [--steps N]

For each network and batch size b (32, 128, 512, full batch on MNIST-1D-shaped data:
n = 4000 inputs of shape (40, 1)), in one process (so machine load cancels in the ratios):

* ``ref_ms``:      ms/step of a Python loop calling one jitted SGD step (gather the batch,
  value_and_grad, optax update) — the baseline a user would write by hand;
* ``compiled_ms``: ``fit(..., loop='compiled')`` (chunks of ``lax.while_loop``);
* ``python_ms``:   ``fit(..., loop='python')`` (the jitted step dispatched from Python);
* ``auto_ms``:     ``fit(..., loop='auto')`` and the mode it chose;
* ``auto/best``:   auto_ms / min(ref_ms, compiled_ms) — the target is <= 1.2.

All timings exclude compilation (a warm-up call first) and take the minimum over
``--repeat`` interleaved rounds. The compiled CNN runs 20 steps (b < 512) or 2 (seconds each), the CNN at full batch 5.
Last row: one CNN Jacobian product (:func:`products`) against one training step.
"""
from __future__ import annotations

import argparse
import os
import time


import jax
import jax.numpy as jnp
import numpy as np
import optax


def _mlp_init(key, widths=(40, 256, 256, 10)):
  ps = []
  for a, b in zip(widths[:-1], widths[1:]):
    key, k = jax.random.split(key)
    ps.append((jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a), jnp.zeros(b)))
  return ps


def _mlp_apply(ps, x):
  h = x.reshape(x.shape[0], -1)
  for w, b in ps[:-1]:
    h = jax.nn.relu(h @ w + b)
  w, b = ps[-1]
  return h @ w + b


def _cnn_init(key, channels=32, kernel=5, layers=3, length=40, out=10):
  ps, cin = [], 1
  for _ in range(layers):
    key, k = jax.random.split(key)
    ps.append((jax.random.normal(k, (kernel, cin, channels), jnp.float32)
               / np.sqrt(kernel * cin), jnp.zeros(channels)))
    cin = channels
  key, k = jax.random.split(key)
  ps.append((jax.random.normal(k, (length * channels, out), jnp.float32)
             / np.sqrt(length * channels), jnp.zeros(out)))
  return ps


def _cnn_apply(ps, x):
  h = x
  for w, b in ps[:-1]:
    h = jax.lax.conv_general_dilated(h, w, (1,), "SAME", dimension_numbers=("NWC", "WIO",
                                                                            "NWC"))
    h = jax.nn.relu(h + b)
  w, b = ps[-1]
  return h.reshape(h.shape[0], -1) @ w + b


NETS = {"mlp": (_mlp_init, _mlp_apply), "cnn": (_cnn_init, _cnn_apply)}


class _Loss:
  """Softmax cross-entropy of a network (hashable by the apply function)."""

  def __init__(self, apply):
    self.apply = apply

  def __call__(self, p, batch, idx):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(self.apply(p, x), y).mean()

  def __hash__(self):
    return hash(self.apply)

  def __eq__(self, other):
    return isinstance(other, _Loss) and other.apply is self.apply


def _ref_loop(loss, params, tx, data, b, steps):
  """ms/step of the hand-written loop: one jitted step per Python iteration."""
  n = data[0].shape[0]

  @jax.jit
  def step(p, s, idx):
    batch = jax.tree.map(lambda a: a[idx], data)
    g = jax.grad(loss)(p, batch, idx)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  rng = np.random.default_rng(0)
  idxs = [jnp.asarray(rng.permutation(n)[:b] if b < n else np.arange(n), jnp.int32)
          for _ in range(steps)]
  p, s = params, tx.init(params)
  jax.block_until_ready(step(p, s, idxs[0]))          # compile
  t0 = time.perf_counter()
  for idx in idxs:
    p, s = step(p, s, idx)
  jax.block_until_ready(p)
  return 1e3 * (time.perf_counter() - t0) / steps


def _fit_ms(loss, params, tx, data, b, steps, loop):
  from mskjax import train
  bs = None if b >= data[0].shape[0] else b
  train.fit(loss, params, tx, data, steps=1, batch_size=bs, loop=loop, chunk=100)  # compile
  r = train.fit(loss, params, tx, data, steps=steps, batch_size=bs, loop=loop, chunk=100)
  return 1e3 * r.train_s / steps


def measure(net, b, steps, repeat=3, n=4000, compiled_steps=None):
  """One row: ms/step of each loop; ``repeat`` interleaved rounds (ref, compiled, python,
  auto, ref, ...), the minimum of each (the least-disturbed run on a shared machine)."""
  from mskjax import _loops, train
  init, apply = NETS[net]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, 40, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
  params = init(jax.random.PRNGKey(0))
  tx = optax.sgd(0.01, momentum=0.9)
  loss = _Loss(apply)
  cs = compiled_steps or steps
  out = {"net": net, "b": b if b < n else f"full ({n})", "steps": steps, "compiled_steps": cs}
  fns = (("ref_ms", lambda: _ref_loop(loss, params, tx, (x, y), b, steps)),
         ("compiled_ms", lambda: _fit_ms(loss, params, tx, (x, y), b, cs, "compiled")),
         ("python_ms", lambda: _fit_ms(loss, params, tx, (x, y), b, steps, "python")),
         ("auto_ms", lambda: _fit_ms(loss, params, tx, (x, y), b, steps, "auto")))
  times = {name: [] for name, _ in fns}
  for _ in range(repeat):
    for name, f in fns:
      times[name].append(f())
  for name in times:
    out[name] = float(np.min(times[name]))
  st = train.init_state(params, tx, n, batch_size=None if b >= n else b)
  conv = _loops.has_convolution(lambda p: loss(p, (x[:2], y[:2]), None), params)
  out["auto_mode"] = "python" if (conv and _loops.on_cpu(st)) else "compiled"
  out["auto/best"] = out["auto_ms"] / min(out["ref_ms"], out["compiled_ms"])
  return out


def products(n=50, m=31, repeat=5):
  """ms of one CNN Jacobian product (``tangents.jacobian_operator``: ``J T``, ``Jᵀ V`` and
  the empirical-NTK product ``J Jᵀ V``, n points × m columns; blocks are jitted calls from a
  Python loop) and one empirical NTK Gram (``tangents.empirical_ntk``, n points), against
  one jitted training step (b = 128, the same hand-written step as ``ref_ms``); best of
  ``repeat`` after a warm-up call."""
  from mskjax import tangents
  init, apply = NETS["cnn"]
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((n, 40, 1)), jnp.float32)
  params = init(jax.random.PRNGKey(0))
  op = tangents.jacobian_operator(apply, params, x, columns=m)
  T = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal((m,) + a.shape), a.dtype), params)
  V = jnp.asarray(rng.standard_normal((n * 10, m)), jnp.float32)

  def best(f):
    jax.block_until_ready(f())
    t = []
    for _ in range(repeat):
      t0 = time.perf_counter()
      jax.block_until_ready(f())
      t.append(time.perf_counter() - t0)
    return 1e3 * min(t)

  out = {"n": n, "m": m, "block_size": op.block_size if hasattr(op, "block_size") else None}
  out["jvp_ms"] = best(lambda: op.jvp(T))
  out["vjp_ms"] = best(lambda: op.vjp(V.reshape(n, 10, m)))
  out["ntk_matvec_ms"] = best(lambda: op.ntk_matvec(V))
  out["empirical_ntk_ms"] = best(lambda: tangents.empirical_ntk(apply, params, x))
  xt = jnp.asarray(rng.standard_normal((4000, 40, 1)), jnp.float32)
  yt = jnp.asarray(rng.integers(0, 10, 4000), jnp.int32)
  out["train_step_ms"] = _ref_loop(_Loss(apply), params, optax.sgd(0.01, momentum=0.9),
                                   (xt, yt), 128, 20)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="few steps, one repeat")
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--nets", default="mlp,cnn")
  ap.add_argument("--batches", default=None,
                  help="batch sizes (4000 = full batch; default 32,128,512,4000, --quick "
                       "32,128,512: the compiled CNN at full batch is ~80 s/step on a CPU)")
  ap.add_argument("--repeat", type=int, default=None)
  ap.add_argument("--out", default=None, help="JSON file for the raw rows")
  ap.add_argument("--no-products", action="store_true",
                  help="skip the CNN Jacobian-product row")
  args = ap.parse_args(argv)
  print("devices:", jax.devices(), "| load:", os.getloadavg())
  rows = []
  for net in args.nets.split(","):
    batches = args.batches or ("32,128,512" if args.quick else "32,128,512,4000")
    for b in (int(v) for v in batches.split(",")):
      steps = args.steps or ((20 if b >= 4000 else 60) if args.quick else
                             (40 if b >= 4000 else 200))
      cs = None
      if net == "cnn":   # the compiled CNN: 0.1-40 s/step on 2 busy cores; few steps
        cs = 2 if b >= 512 else (5 if args.quick else 20)
        if b >= 4000:
          steps = min(steps, 5)
      rows.append(measure(net, b, steps, repeat=args.repeat or (1 if args.quick else 3),
                          compiled_steps=cs))
      r = rows[-1]
      print(f"{r['net']:4s} b={str(r['b']):11s} ref {r['ref_ms']:8.2f}  compiled "
            f"{r['compiled_ms']:8.2f}  python {r['python_ms']:8.2f}  auto {r['auto_ms']:8.2f}"
            f" ({r['auto_mode']})  auto/best {r['auto/best']:.2f}  [ms/step, {r['steps']} "
            f"steps, compiled {r['compiled_steps']}] load {os.getloadavg()[0]:.1f}", flush=True)
  if not args.no_products:
    r = products(n=20 if args.quick else 50)
    rows.append(r)
    print(f"CNN Jacobian products, n={r['n']} points x m={r['m']} columns (block "
          f"{r['block_size']}): J T {r['jvp_ms']:.1f} ms, J^T V {r['vjp_ms']:.1f} ms, J J^T V "
          f"{r['ntk_matvec_ms']:.1f} ms, empirical NTK Gram {r['empirical_ntk_ms']:.1f} ms; "
          f"one training step (b=128) {r['train_step_ms']:.2f} ms", flush=True)
  print("load after:", os.getloadavg())
  if args.out:
    import json
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
