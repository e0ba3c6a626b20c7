"""The one-off cost of ``msk_sgd`` at the optimizer table's MNIST-1D MLP b = 128 setting.

MLP 40-256-256-10 at initialisation, loss-aware directions (``msk_directions(...,
loss='softmax_cross_entropy')``, flatten, k = 30) on ``s`` random training points and the
measured step ``stable_learning_rate(d, 128, loss_fn=, params=, batch=)``, each timed
cold (first call in this process: compilation included) and warm (a second call on another
initialisation / batch of the same shapes: run time only). The step measurement is timed
both ways the library offers: ``stable_learning_rate`` (a Python loop over one jitted
Lanczos step) and the jitted ``curvature_estimator`` (the same steps inside a ``lax`` loop,
which ``stable_learning_rate`` used before), with the λ̂ they give.

Run: ``python -m benchmarks.bench_oneoff [--subsample 500,256]`` (one process per ``s``
would give each its own cold start; here the first ``s`` pays the compilation shared by
both, so read cold times of the first ``s`` only).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import numpy as np

import jax
import jax.numpy as jnp

from mskjax import data, steps

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _timed(f):
  t0 = time.perf_counter()
  out = f()
  jax.block_until_ready(out)
  return out, time.perf_counter() - t0


def main(argv=None):
  from mskjax.experiments import mnist1d as M
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--subsample", default="500,256", help="comma-separated s values")
  ap.add_argument("--quick", action="store_true", help="tiny setting (smoke run)")
  a = ap.parse_args(argv)
  subs = [int(v) for v in a.subsample.split(",") if v.strip()]
  k = 10 if a.quick else 30
  if a.quick:
    subs = [min(s, 100) for s in subs]
  up0 = os.popen("uptime").read().strip()
  print(up0, flush=True)
  ds = data.load_mnist1d(num_samples=1000 if a.quick else 5000)
  x = M.inputs("mlp", jnp.asarray(ds.x_train, jnp.float32))
  y = jnp.asarray(ds.y_train)
  lf = M.loss_fn("mlp")
  loss = lambda p, bt: lf(p, bt, None)
  rows = []
  for s in subs:
    r = dict(subsample=s)
    for tag, seed in (("cold", 0), ("warm", 1)):
      v = M.init_params("mlp", x, seed)
      d, r[f"directions_{tag}_s"] = M.build_directions(
          "mlp", v, x, k=k, subsample=s, seed=seed, loss="softmax_cross_entropy")
      r[f"lam1_{tag}"] = float(d.values[0])
      r[f"max_residual_{tag}"] = float(np.max(np.asarray(d.residuals)))
      bt = M.rule_batch(x, y, 128, seed)
      eta, r[f"rule_{tag}_s"] = _timed(lambda: steps.stable_learning_rate(
          d, 128, loss_fn=loss, params=v["params"], batch=bt))
      (_, lam), r[f"estimator_{tag}_s"] = _timed(
          lambda: steps.curvature_estimator(loss, d)(v["params"], bt))
      r[f"lam_rule_{tag}"], r[f"lam_estimator_{tag}"] = steps.SAFETY / eta, float(lam)
    print(json.dumps(r), flush=True)
    rows.append(r)
  up1 = os.popen("uptime").read().strip()
  print(up1)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%MZ")
  os.makedirs(RESULTS, exist_ok=True)
  out = os.path.join(RESULTS, f"oneoff_{'quick_' if a.quick else ''}{stamp}.json")
  with open(out, "w") as f:
    json.dump(dict(uptime_start=up0, uptime_end=up1, rows=rows), f, indent=1)
  print(f"wrote {out}")
  return rows


if __name__ == "__main__":
  main()
