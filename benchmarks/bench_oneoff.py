"""The one-off cost of ``msk_sgd`` at the optimizer table's MNIST-1D MLP b = 128 setting.

MLP 40-256-256-10 at initialisation, loss-aware directions (``msk_directions(...,
loss='softmax_cross_entropy')``, flatten, k = 30, ``compute_beta=False`` as the table) on
``s`` random training points and the measured step ``stable_learning_rate(d, 128,
loss_fn=, params=, batch=)``, each timed cold (first call in this process: compilation
included) and warm (a second call on another initialisation / batch of the same shapes:
run time only), with every XLA compilation of each phase and its seconds (``jax_log_compiles``;
compilations in worker threads overlap, so their seconds can sum to more than the phase).
The step is also measured by the jitted ``curvature_estimator`` (a ``lax`` loop over the
same Lanczos steps), whose λ̂ the one-off path must reproduce.

Run: ``python -m benchmarks.bench_oneoff [--subsample 256,500] [--quick]
[--compilation-cache DIR]`` (one process per ``s`` would give each its own cold start;
here the first ``s`` pays the compilation shared by both, so read cold times of the first
``s`` only). ``--compilation-cache DIR`` turns on JAX's persistent compilation cache in
this process (a global setting a user may choose; the library never sets it): run twice,
the second run's cold start reads its programs from DIR.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import os
import re
import time

import numpy as np

import jax
import jax.numpy as jnp

from mskjax import data, steps

RESULTS = os.path.join(os.path.dirname(__file__), "results")


class _Compiles(logging.Handler):
  """Collects ``Finished XLA compilation of jit(NAME) in S sec`` (jax_log_compiles)."""

  def __init__(self):
    super().__init__()
    self.seen = []

  def emit(self, record):
    m = re.search(r"Finished XLA compilation of jit\((.*)\) in ([0-9.e-]+) sec",
                  record.getMessage())
    if m:
      self.seen.append((m.group(1), float(m.group(2))))

  def since(self, n0):
    out = collections.OrderedDict()
    for name, sec in self.seen[n0:]:
      out[name] = round(out.get(name, 0.0) + sec, 3)
    return out


def _timed(f, log=None, into=None, key=None):
  n0 = len(log.seen) if log is not None else 0
  t0 = time.perf_counter()
  out = f()
  jax.block_until_ready(out)
  dt = time.perf_counter() - t0
  if log is not None:
    into[key] = log.since(n0)
  return out, dt


def main(argv=None):
  from mskjax.experiments import mnist1d as M
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--subsample", default="256,500", help="comma-separated s values")
  ap.add_argument("--quick", action="store_true", help="tiny setting (smoke run)")
  ap.add_argument("--compilation-cache", default=None,
                  help="directory of JAX's persistent compilation cache (off by default)")
  ap.add_argument("--no-compile-log", action="store_true",
                  help="do not list the compilations (jax_log_compiles off)")
  a = ap.parse_args(argv)
  subs = [int(v) for v in a.subsample.split(",") if v.strip()]
  k = 10 if a.quick else 30
  if a.quick:
    subs = [min(s, 100) for s in subs]
  if a.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", a.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  log = None
  if not a.no_compile_log:
    jax.config.update("jax_log_compiles", True)
    log = _Compiles()
    lg = logging.getLogger("jax")
    lg.addHandler(log)
    lg.propagate = False          # collected here, not printed
  up0 = os.popen("uptime").read().strip()
  print(up0, flush=True)
  ds = data.load_mnist1d(num_samples=1000 if a.quick else 5000)
  x = M.inputs("mlp", jnp.asarray(ds.x_train, jnp.float32))
  y = jnp.asarray(ds.y_train)
  loss = M.rule_loss_fn("mlp")
  rows = []
  for s in subs:
    r = dict(subsample=s, compiles={})
    for tag, seed in (("cold", 0), ("warm", 1)):
      v = M.init_params("mlp", x, seed)
      bt = jax.block_until_ready(M.rule_batch(x, y, 128, seed))
      d, r[f"directions_{tag}_s"] = _timed(lambda: M.build_directions(
          "mlp", v, x, k=k, subsample=s, seed=seed, loss="softmax_cross_entropy")[0],
          log, r["compiles"], f"directions_{tag}")
      r[f"lam1_{tag}"] = float(d.values[0])
      r[f"max_residual_{tag}"] = float(np.max(np.asarray(d.residuals)))
      eta, r[f"rule_{tag}_s"] = _timed(lambda: steps.stable_learning_rate(
          d, 128, loss_fn=loss, params=v["params"], batch=bt), log, r["compiles"],
          f"rule_{tag}")
      r[f"one_off_{tag}_s"] = r[f"directions_{tag}_s"] + r[f"rule_{tag}_s"]
      (_, lam), r[f"estimator_{tag}_s"] = _timed(
          lambda: steps.curvature_estimator(loss, d)(v["params"], bt))
      r[f"lam_rule_{tag}"], r[f"lam_estimator_{tag}"] = steps.SAFETY / eta, float(lam)
      r[f"lam_rel_diff_{tag}"] = abs(r[f"lam_rule_{tag}"] / float(lam) - 1.0)
    print(json.dumps(r), flush=True)
    rows.append(r)
  up1 = os.popen("uptime").read().strip()
  print(up1)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%MZ")
  os.makedirs(RESULTS, exist_ok=True)
  out = os.path.join(RESULTS, f"oneoff_{'quick_' if a.quick else ''}{stamp}.json")
  with open(out, "w") as f:
    json.dump(dict(uptime_start=up0, uptime_end=up1, rows=rows,
                   compilation_cache=a.compilation_cache), f, indent=1)
  print(f"wrote {out}")
  return rows


if __name__ == "__main__":
  main()
