"""Per-step cost of every INR method in ONE process, interleaved (so the machine's load cancels).

The experiment (``configs/inr.py``) times each run on its own, minutes apart, on a shared
CPU whose load changes; its equal-wall-time read-out inherits that noise. This measures the
ratios that matter here: each method's compiled full-batch step (same image, network,
directions and batch as the experiment), ``rounds`` rounds of ``steps`` steps per method in
turn, median ms/step per method and its ratio to Adam's. The one-off directions solve is
timed once (cold, compilation included).

Command::

  PYTHONPATH=. JAX_PLATFORMS=cpu python -m benchmarks.bench_inr_step            # china 64², ReLU
  PYTHONPATH=. JAX_PLATFORMS=cpu python -m benchmarks.bench_inr_step --model relu_ff
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mskjax import iga
from mskjax.experiments import inr as E
from mskjax.run import load_config


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="relu")
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--rounds", type=int, default=3)
  args = ap.parse_args(argv)
  c = load_config("configs/inr.py")
  H = W = args.size
  img = E.load_image("china", H)
  mask = E.checkerboard_mask(H, W)
  tr = np.flatnonzero(mask.ravel())
  xin = E.model_inputs(args.model, E.pixel_coords(H, W), ff_features=c.ff_features,
                       ff_sigma=c.ff_sigmas[-1], seed=0)
  x, y = xin[tr], jnp.asarray(img.reshape(-1, 1)[tr])
  model = E.make_model(args.model, width=c.width, depth=c.depth, out=1)
  v = jax.jit(model.init)(jax.random.PRNGKey(0), x[:2])
  groups = iga.patch_groups(H, W, c.iga_patch, mask=mask)
  cache = {}

  def directions():
    if "d" not in cache:
      cache["d"] = E.build_directions(model.apply, v, x, k=c.msk_k,
                                      subsample=c.msk_subsample or None, seed=0)
    return cache["d"]

  def measured():
    if "eta" not in cache:
      cache["eta"] = E.measure_step(model.apply, directions()[0], v["params"], x, y)
    return cache["eta"]

  setup = E.Setup(model.apply, v, x, y, groups, c, directions, measured)
  steps = {}
  for name in c.methods:
    m = E.METHODS[name](setup, E.learning_rates(setup, name)[0][1])   # cost: lr-free

    def make(m=m):
      @jax.jit
      def step(p, s, x, y):
        val, g = jax.value_and_grad(m.loss)(p, x, y)
        u, s = m.tx.update(g, s, p)
        return optax.apply_updates(p, u), s, val
      p, s = v["params"], m.tx.init(v["params"])
      return step.lower(p, s, x, y).compile(), [p, s]
    steps[name] = make()
  times = {name: [] for name in steps}
  for _ in range(args.rounds):
    for name, (fn, st) in steps.items():
      p, s = st
      t0 = time.perf_counter()
      for _ in range(args.steps):
        p, s, _ = fn(p, s, x, y)
      jax.block_until_ready(p)
      times[name].append((time.perf_counter() - t0) / args.steps)
  med = {n: float(np.median(t)) for n, t in times.items()}
  print(f"load average {os.getloadavg()[0]:.1f}; china {H}² gray, {args.model}, "
        f"{len(tr)} training pixels; directions (cold) {directions()[1]:.1f} s")
  print("| method | ms/step | × adam |\n|---|---|---|")
  for n in steps:
    print(f"| {n} | {1e3 * med[n]:.1f} | {med[n] / med['adam']:.2f} |")


if __name__ == "__main__":
  main()
