"""Optimizer benchmarks: the cost of the directions and of ``empirical_ntk``.

Run:  python -m benchmarks.bench_optim            (--quick for a smoke run)

1. ``msk_directions`` (matrix-free, float64) vs forming the full empirical NTK
   (``empirical_ntk(full=True)``) and ``numpy.linalg.eigh``: time and eigenvalue error.
2. ``empirical_ntk`` (traced, 'jacobian' and 'jvp') vs a plain ``jacrev`` + ``einsum`` and
   neural-tangents' implementation 1.

The per-step cost of ``msk_sgd`` against SGD-momentum (and against k and the layout of the
directions) is ``benchmarks/bench_step_tax.py``.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mskjax.experiments.mnist1d import CNN, MLP   # the shared contract's architectures
from mskjax import tangents, modifiers, optim
from mskjax._nt import empirical_ntk_fn


def _model(name):
  return (MLP(), (40,)) if name == "mlp" else (CNN(), (40, 1))


def _time(fn, args, repeats, inner):
  out = fn(*args)
  jax.block_until_ready(out)
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(inner):
      out = fn(*args)
    jax.block_until_ready(out)
    ts.append((time.perf_counter() - t) / inner)
  return float(np.median(ts))


def bench_directions(n, k):
  model, shape = _model("mlp")
  x = jax.random.normal(jax.random.PRNGKey(0), (n,) + shape, jnp.float32)
  v = model.init(jax.random.PRNGKey(1), x[:2])
  t = time.perf_counter()
  d = optim.msk_directions(model.apply, v, x, modifiers.flatten(), k, compute_beta=False)
  t_dirs = time.perf_counter() - t
  with jax.enable_x64(True):
    v64 = jax.tree.map(lambda a: a.astype(jnp.float64), v)
    t = time.perf_counter()
    K = np.asarray(tangents.empirical_ntk(model.apply, v64, x.astype(jnp.float64), full=True))
    t_ntk = time.perf_counter() - t
    t = time.perf_counter()
    lam = np.linalg.eigvalsh(K)[::-1]
    t_eigh = time.perf_counter() - t
  err = np.max(np.abs(np.asarray(d.values, np.float64) - lam[:k]) / lam[0])
  print(f"directions n={n} c=10 (N={n * 10}) k={k}: msk_directions {t_dirs:.1f} s "
        f"(max residual {float(d.residuals.max()):.1e} λ₁, max |Δλ|/λ₁ = {err:.1e}); "
        f"full empirical NTK {t_ntk:.1f} s + eigh {t_eigh:.1f} s", flush=True)
  return t_dirs, t_ntk, t_eigh, float(d.residuals.max()), err


def bench_empirical(n, models, repeats):
  out = []
  for name in models:
    model, shape = _model(name)
    x = jax.random.normal(jax.random.PRNGKey(0), (n,) + shape, jnp.float32)
    v = model.init(jax.random.PRNGKey(1), x[:2])

    @jax.jit
    def plain(v, x):
      J = jax.jacrev(lambda q: model.apply(q, x))(v)
      J = jnp.concatenate([l.reshape(n, 10, -1) for l in jax.tree.leaves(J)], -1)
      return jnp.einsum("ikp,jkp->ij", J, J) / 10

    res = {"jacrev+einsum": _time(plain, (v, x), repeats, 1)}
    for impl in ("jacobian", "jvp"):
      res[impl] = _time(lambda v, x: tangents.empirical_ntk(model.apply, v, x,
                                                           implementation=impl),
                        (v, x), repeats, 1)
    if name == "mlp":
      nt = jax.jit(empirical_ntk_fn(model.apply, trace_axes=(-1,), implementation=1))
      res["nt-1"] = _time(lambda v, x: nt(x, None, v), (v, x), repeats, 1)
    base = res["jacrev+einsum"]
    print(f"empirical_ntk {name} n={n}: " + " ".join(
        f"{kk} {t:.3f} s ({t / base:.2f}x)" for kk, t in res.items()), flush=True)
    out.append((name, res))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--only", default="directions,empirical")
  a = ap.parse_args()
  only = a.only.split(",")
  print("jax", jax.__version__, "devices", jax.devices(), "x64", jax.config.jax_enable_x64)
  if "directions" in only:
    bench_directions(60 if a.quick else 200, 20)
  if "empirical" in only:
    bench_empirical(64 if a.quick else 128, ["mlp", "cnn"], 2 if a.quick else 3)


if __name__ == "__main__":
  main()
