"""Step rules and tracking: what the MSK optimizers need to stay stable on real networks.

Three studies, each a ratio measured in one process (load cancels):

* ``tracking``: the lazy setting (one hidden ReLU layer of width 1024 in NTK scaling,
  first layer trained, 1024 points on the circle, target Σ_k sin(2πkθ) with
  k ∈ {0.2, 0.4, 0.8, 1.6}, θ ∈ [0, 2π) in radians, mean MSE, full batch, float32, 5000
  steps, flatten k = 10 at η = n/max g): plain GD, the function-space form ½rᵀSr, the
  fixed directions (:func:`mskjax.optim.msk_sgd`), and the tracking preconditioner
  (:func:`mskjax.optim.msk_sgd_tracking`) re-formed every step / every 10 steps / when the
  parameters moved by 1 %.
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


def _run(apply_fn, params, x, y, tx, steps, loss="mse", S=None):
  """Full-batch training; returns the train MSE (mean r²) after every step."""
  n = x.shape[0]

  def loss_fn(p):
    r = apply_fn(p, x) - y
    if S is None:
      return 0.5 * jnp.mean(r ** 2)
    return 0.5 * jnp.dot(r, jax.lax.stop_gradient(S) @ r) / n

  @jax.jit
  def run(p, st):
    def step(c, _):
      p, st = c
      g = jax.grad(loss_fn)(p)
      u, st = tx.update(g, st, p)
      p = optax.apply_updates(p, u)
      return (p, st), jnp.mean((apply_fn(p, x) - y) ** 2)
    return jax.lax.scan(step, (p, st), None, length=steps)

  t = time.perf_counter()
  (p, st), mse = run(params, tx.init(params))
  mse = np.asarray(mse)
  return mse, time.perf_counter() - t, st


def bench_tracking(quick=False, n=None, steps=None, only=None):
  steps = steps or (300 if quick else 5000)
  n = n or (256 if quick else 1024)
  x, y, params, apply_fn = lazy_problem(n=n, width=n)
  k = 10
  g = modifiers.flatten()
  t = time.perf_counter()
  d = optim.msk_directions(apply_fn, params, x, g, k, compute_beta=False)
  t_dirs = time.perf_counter() - t
  J = jax.jacrev(lambda p: apply_fn(p, x))(params)
  J = np.concatenate([np.asarray(l, np.float64).reshape(n, -1) for l in jax.tree.leaves(J)], 1)
  lam, V = np.linalg.eigh(J @ J.T)
  lam, V = lam[::-1], V[:, ::-1]
  gk = np.full(k, lam[k])
  S = np.eye(n) + (V[:, :k] * (gk / lam[:k] - 1)) @ V[:, :k].T
  eta = n / float(d.max_value)                    # 1/λ_max(K_g) for the mean loss
  eta_gd = n / lam[0]
  out = {"n": n, "width": n, "k": k, "steps": steps, "eta_msk": eta, "eta_gd": eta_gd,
         "lambda1": float(lam[0]), "lambda11": float(lam[k]), "directions_s": t_dirs}
  runs = {
      "gd (1/λ1)": (optax.sgd(eta_gd), None),
      "function-space ½rᵀSr": (optax.sgd(eta), jnp.asarray(S, jnp.float32)),
      "msk_sgd fixed": (optim.msk_sgd(eta, d), None),
      "tracking every=1": (optim.msk_sgd_tracking(eta, apply_fn, x, d), None),
      "tracking every=10": (optim.msk_sgd_tracking(eta, apply_fn, x, d, every=10), None),
      "tracking moved=1%": (optim.msk_sgd_tracking(eta, apply_fn, x, d, moved=0.01), None),
      "tracking RR every=1": (optim.msk_sgd_tracking(eta, apply_fn, x, d, rayleigh_ritz=True),
                              None),
      "tracking RR every=10": (optim.msk_sgd_tracking(eta, apply_fn, x, d, every=10,
                                                      rayleigh_ritz=True), None),
  }
  for name, (tx, S_) in runs.items():
    if only is not None and name not in only:
      continue
    mse, sec, st = _run(apply_fn, params, x, y, tx, steps, S=S_)
    bad = np.nonzero(~np.isfinite(mse))[0]
    rec = {"final_mse": float(mse[-1]), "mse@100": float(mse[min(99, steps - 1)]),
           "mse@1000": float(mse[min(999, steps - 1)]),
           "first_nan": int(bad[0]) if bad.size else None, "seconds": sec}
    reforms = [s.reforms for s in jax.tree.leaves(
        st, is_leaf=lambda s: isinstance(s, optim.ScaleByMSKTrackingState))
        if isinstance(s, optim.ScaleByMSKTrackingState)]
    if reforms:
      rec["reforms"] = int(reforms[0])
    out[name] = rec
    print(f"  {name:24s} final MSE {rec['final_mse']:.4g}  @100 {rec['mse@100']:.4g}  "
          f"@1000 {rec['mse@1000']:.4g}  first NaN {rec['first_nan']}  {sec:.1f}s"
          + (f"  reforms {rec['reforms']}" if reforms else ""), flush=True)
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
    res["tracking"] = bench_tracking(a.quick)
  if "steps" in parts:
    print("step rule vs grid")
    res["steps"] = bench_steps(a.quick)
  if "compose" in parts:
    print("composition with adam / momentum")
    res["compose"] = bench_compose(a.quick)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(res, f, indent=1, default=float)
  return res


if __name__ == "__main__":
  main()
