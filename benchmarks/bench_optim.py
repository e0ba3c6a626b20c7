"""Optimizer benchmarks: per-step cost of msk_sgd vs optax.sgd, and the cost of the directions.

Run:  python -m benchmarks.bench_optim            (--quick for a smoke run)

1. Per-step wall time of one jitted minibatch step (cross-entropy on a batch of b points,
   float32, compile excluded, median over repeats): ``optax.sgd`` (baseline) vs
   ``optim.msk_sgd`` with k directions, for the MNIST-1D MLP (40-256-256-10) and CNN
   (3 × Conv 32, k = 5/3/3, stride 2, Dense 10) of the shared contract, against k and b.
   Variants of P: ``tree`` (the library: one tensordot per leaf and pass), ``flat`` (one
   (k, P) matrix, ravel/unravel of the update: a fused-GEMV prototype), ``bf16`` (the
   library with directions stored in bfloat16, half the memory traffic).
2. ``msk_directions`` (matrix-free, float64) vs forming the full empirical NTK
   (``empirical_ntk(full=True)``) and ``numpy.linalg.eigh``: time and eigenvalue error.
3. ``empirical_ntk`` (traced, 'jacobian' and 'jvp') vs a plain ``jacrev`` + ``einsum`` and
   neural-tangents' implementation 1.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

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


def _time_interleaved(cases, repeats, inner):
  """Median seconds per call of each (fn, args), measured round-robin (the machine's
  load drifts; interleaving puts baseline and variants under the same load)."""
  for fn, args in cases:
    jax.block_until_ready(fn(*args))
  ts = [[] for _ in cases]
  for _ in range(repeats):
    for j, (fn, args) in enumerate(cases):
      t = time.perf_counter()
      for _ in range(inner):
        out = fn(*args)
      jax.block_until_ready(out)
      ts[j].append((time.perf_counter() - t) / inner)
  return [float(np.median(t)) for t in ts]


def _random_dirs(params, k, key, dtype=None):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  dirs = [jax.random.normal(kk, (k,) + l.shape, jnp.float32) for kk, l in zip(keys, leaves)]
  # orthonormal rows (scale_by_msk rejects non-orthonormal directions): QR of the stacked rows
  flat = np.concatenate([np.asarray(d, np.float64).reshape(k, -1) for d in dirs], 1)
  q = np.linalg.qr(flat.T)[0].T
  cuts = np.cumsum([d[0].size for d in dirs])[:-1]
  dirs = [jnp.asarray(b.reshape(d.shape), dtype or l.dtype)
          for b, d, l in zip(np.split(q, cuts, 1), dirs, leaves)]
  return optim.MSKDirections(jax.tree.unflatten(tree, dirs), jnp.linspace(10.0, 2.0, k),
                             jnp.ones(k), jnp.asarray(1.0))


def _flat_msk(d):
  """Prototype: directions as one (k, P) matrix; P u = u + Qᵀ (c ⊙ Q u)."""
  Q = jnp.concatenate([l.reshape(l.shape[0], -1) for l in jax.tree.leaves(d.directions)], 1)
  coef = d.new_values / d.values - 1.0

  def init(params):
    return (Q, coef)

  def update(u, state, params=None):
    Q, coef = state
    flat, unravel = jax.flatten_util.ravel_pytree(u)
    return unravel(flat + (coef * (Q @ flat)) @ Q), state
  return optax.GradientTransformation(init, update)


def bench_steps(models, ks, bs, repeats, inner):
  rows = []
  for name in models:
    model, shape = _model(name)
    x = jax.random.normal(jax.random.PRNGKey(0), (max(bs),) + shape, jnp.float32)
    y = jax.nn.one_hot(jnp.arange(max(bs)) % 10, 10)
    params = model.init(jax.random.PRNGKey(1), x[:2])["params"]
    P = sum(l.size for l in jax.tree.leaves(params))

    def make(tx):
      @jax.jit
      def step(p, s, xb, yb):
        g = jax.grad(lambda q: optax.softmax_cross_entropy(
            model.apply({"params": q}, xb), yb).mean())(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
      return step

    for b in bs:
      xb, yb = x[:b], y[:b]
      base = optax.sgd(0.01)
      base_case = (make(base), (params, base.init(params), xb, yb))
      for k in ks:
        d = _random_dirs(params, k, jax.random.PRNGKey(2))
        res = {}
        variants = [("tree", optim.msk_sgd(0.01, d))]
        if k == 20:   # the prototypes, at the reference k only
          variants += [("flat", optax.chain(_flat_msk(d), optax.sgd(0.01))),
                       ("bf16", optim.msk_sgd(0.01, _random_dirs(params, k,
                                                                 jax.random.PRNGKey(2),
                                                                 jnp.bfloat16)))]
        times = _time_interleaved([base_case] + [(make(tx), (params, tx.init(params), xb, yb))
                                                 for _, tx in variants], repeats, inner)
        t_sgd = times[0]
        res = {var: t for (var, _), t in zip(variants, times[1:])}
        rows.append((name, P, b, k, t_sgd, res))
        print(f"{name:4s} P={P} b={b:4d} k={k:3d} sgd {1e3 * t_sgd:7.3f} ms | " +
              " ".join(f"{v} {1e3 * t:7.3f} ms ({t / t_sgd:4.2f}x)" for v, t in res.items()),
              flush=True)
  return rows


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
  ap.add_argument("--only", default="steps,directions,empirical")
  a = ap.parse_args()
  only = a.only.split(",")
  print("jax", jax.__version__, "devices", jax.devices(), "x64", jax.config.jax_enable_x64)
  if "steps" in only:
    if a.quick:
      bench_steps(["mlp"], [20], [128], 3, 5)
    else:
      bench_steps(["mlp", "cnn"], [5, 20, 50], [128, 512, 1024], 7, 10)
  if "directions" in only:
    bench_directions(60 if a.quick else 200, 20)
  if "empirical" in only:
    bench_empirical(64 if a.quick else 128, ["mlp", "cnn"], 2 if a.quick else 3)


if __name__ == "__main__":
  main()
