"""Analytic MLP kernel evaluation: neural-tangents' kernel_fn vs the closed form, and top-k
end to end.

Run:  python -m benchmarks.bench_kernel_eval [--quick] [--n N] [--topk-n N [N ...]] [--k K]

Kernels: NTK of depth-2 and depth-3 ReLU MLPs (``MLPSpec(depth, b_std=0.1)``, the kernel of
``benchmarks/bench_scale.py``), n points on S^9. In one process (load cancels in the
ratios):

1. ns per entry of one jitted ``k(X, X)`` block (``--n`` points), float64 and float32:
   neural-tangents' ``stax_mlp(spec)[2]`` vs ``kernels.mlp_kernel_fn(spec)`` vs a plain
   ``X Xᵀ`` GEMM (the floor); best of ``--repeat`` interleaved calls, both wall clock and
   process CPU time (all threads; on a shared machine the CPU time is the load-independent
   figure, the wall clock what a user waits);
2. end to end at each ``--topk-n`` (float64, depth 2, top ``--k``): the closed-form Gram
   (``kernel_operator(cache=True)``) + ``eigh_top(op, k, method='krylov')`` against the
   same Gram + dense ``eigh`` (``eigh_top(K, k, method='dense')``, LAPACK on all of K).
   ``--no-dense N`` skips the dense eigh at sizes >= N (the ratio is then extrapolated
   from the measured dense times by a fitted power law, and marked so).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time


def _data(n, d=10, seed=0):
  import numpy as np
  x = np.random.default_rng(seed).standard_normal((n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _timed(f, *a):
  t0, c0 = time.perf_counter(), time.process_time()
  out = f(*a)
  import jax
  jax.block_until_ready(out)
  return time.perf_counter() - t0, time.process_time() - c0, out


def entry_costs(n, repeat=5, depths=(2, 3)):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from mskjax import kernels
  from mskjax.nets import MLPSpec, stax_mlp
  rows = []
  for dtype in (jnp.float64, jnp.float32):
    x = jnp.asarray(_data(n), dtype)
    fns = {"gemm": jax.jit(lambda a, b: a @ b.T)}
    for depth in depths:
      spec = MLPSpec(depth=depth, width=8, b_std=0.1)
      fns[f"nt_d{depth}"] = jax.jit(lambda a, b, f=stax_mlp(spec)[2]: f(a, b, "ntk"))
      fns[f"closed_d{depth}"] = jax.jit(lambda a, b, f=kernels.mlp_kernel_fn(spec):
                                        f(a, b, "ntk"))
    wall = {k: float("inf") for k in fns}
    cpu = dict(wall)
    for f in fns.values():
      f(x, x).block_until_ready()         # compile
    for _ in range(repeat):
      for k, f in fns.items():            # interleaved: load drifts hit all alike
        w, c, _ = _timed(f, x, x)
        wall[k] = min(wall[k], 1e9 * w / (n * n))
        cpu[k] = min(cpu[k], 1e9 * c / (n * n))
    for depth in depths:
      # accuracy: closed form vs neural-tangents on k(X, None), scale-relative
      spec = MLPSpec(depth=depth, width=8, b_std=0.1)
      a = np.asarray(stax_mlp(spec)[2](x, None, "ntk"), np.float64)
      b = np.asarray(kernels.mlp_kernel_fn(spec)(x, None, "ntk"), np.float64)
      diff = abs(a - b)
      diag = float(np.diag(diff).max() / abs(a).max())
      np.fill_diagonal(diff, 0.0)   # neural-tangents' own diagonal carries ~1e-8 rounding
      rows.append(dict(dtype=jnp.dtype(dtype).name, n=n, depth=depth,
                       nt_wall_ns=wall[f"nt_d{depth}"], nt_cpu_ns=cpu[f"nt_d{depth}"],
                       closed_wall_ns=wall[f"closed_d{depth}"],
                       closed_cpu_ns=cpu[f"closed_d{depth}"],
                       gemm_wall_ns=wall["gemm"], gemm_cpu_ns=cpu["gemm"],
                       max_rel_diff_vs_nt=float(diff.max() / abs(a).max()),
                       max_rel_diff_vs_nt_diagonal=diag))
  return rows


def end_to_end(n, k, dense=True, block_size=2048):
  """Seconds for the closed-form Gram (cached operator, compiled before timing), the Krylov
  top-k solver on it, and (``dense``) LAPACK ``eigh`` on the same K; float64."""
  import gc
  import jax
  import numpy as np
  import mskjax
  from mskjax import kernels
  from mskjax.nets import MLPSpec
  kf = kernels.mlp_kernel_fn(MLPSpec(depth=2, width=8, b_std=0.1))
  x = jax.numpy.asarray(_data(n))
  build = lambda: kernels.kernel_operator(kf, x, cache=True, m=k + 21, block_size=block_size)
  jax.block_until_ready(build().matrix)                      # compile every block shape
  gc.collect()
  out = {"n": n, "k": k, "block_size": block_size}
  out["gram_s"], out["gram_cpu_s"], op = _timed(build)
  # first call: the solver's compilation is part of what a user waits for
  out["solver_s"], out["solver_cpu_s"], (top, info) = _timed(
      lambda: mskjax.eigh_top(op, k, method="krylov", return_info=True))
  out["matvecs"], out["cycles"], out["converged"] = info.n_matvecs, info.iterations, info.converged
  vals = np.asarray(top.values)
  if dense:
    out["dense_eigh_s"], out["dense_eigh_cpu_s"], ref = _timed(
        lambda: mskjax.eigh_top(op.matrix, k, method="dense"))
    ref = np.asarray(ref.values)
    out["max_rel_eig_err"] = float(np.max(np.abs(vals - ref) / ref))
    out["end_to_end_x"] = (out["gram_s"] + out["dense_eigh_s"]) / (out["gram_s"] +
                                                                   out["solver_s"])
  return out


def extrapolate(rows):
  """Fills ``dense_eigh_s`` of rows without it from a power law ``t = a n^p`` fitted to the
  measured rows (needs two), marking them ``extrapolated``."""
  import numpy as np
  have = [r for r in rows if "dense_eigh_s" in r and "extrapolated" not in r]
  if len(have) < 2:
    return rows
  p, loga = np.polyfit(np.log([r["n"] for r in have]),
                       np.log([r["dense_eigh_s"] for r in have]), 1)
  for r in rows:
    if "dense_eigh_s" not in r:
      r["dense_eigh_s"] = float(math.exp(loga) * r["n"] ** p)
      r["dense_exponent"] = float(p)
      r["extrapolated"] = True
      r["end_to_end_x"] = (r["gram_s"] + r["dense_eigh_s"]) / (r["gram_s"] + r["solver_s"])
  return rows


def main(argv=None):
  import jax
  jax.config.update("jax_enable_x64", True)
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true",
                  help="n = 1000 entry costs, end to end at n = 2000 only")
  ap.add_argument("--n", type=int, default=None, help="points for the entry cost")
  ap.add_argument("--topk-n", type=int, nargs="*", default=None,
                  help="sizes for the end-to-end run (default 5000 10000 20000)")
  ap.add_argument("--k", type=int, default=50, help="eigenpairs (default 50)")
  ap.add_argument("--no-dense", type=int, default=15000,
                  help="skip the dense eigh at n >= this (extrapolated instead)")
  ap.add_argument("--repeat", type=int, default=5)
  ap.add_argument("--skip-entry", action="store_true", help="end-to-end part only")
  ap.add_argument("--out", default=None, help="JSON file for the raw rows")
  args = ap.parse_args(argv)
  print("devices:", jax.devices(), "| load:", os.getloadavg(), flush=True)
  n = args.n or (1000 if args.quick else 2000)
  rows = [] if args.skip_entry else entry_costs(n, args.repeat)
  for r in rows:
    print(f"entry cost {r['dtype']} n={n} depth {r['depth']} (ns/entry, wall / cpu): "
          f"neural-tangents {r['nt_wall_ns']:.1f} / {r['nt_cpu_ns']:.1f}, closed form "
          f"{r['closed_wall_ns']:.1f} / {r['closed_cpu_ns']:.1f}, X Xᵀ GEMM "
          f"{r['gemm_wall_ns']:.2f} / {r['gemm_cpu_ns']:.2f}; max rel diff vs nt "
          f"{r['max_rel_diff_vs_nt']:.1e} off the diagonal, "
          f"{r['max_rel_diff_vs_nt_diagonal']:.1e} on it", flush=True)
  sizes = args.topk_n if args.topk_n is not None else ([2000] if args.quick else
                                                       [5000, 10000, 20000])
  e2e = []
  for tn in sizes:
    e = end_to_end(tn, args.k, dense=tn < args.no_dense)
    e2e.append(e)
    print(f"top-{args.k} n={tn}: Gram {e['gram_s']:.2f} s, Krylov {e['solver_s']:.2f} s "
          f"({e['matvecs']} block products, {e['cycles']} cycles)"
          + (f", dense eigh {e['dense_eigh_s']:.2f} s -> {e['end_to_end_x']:.2f}x, max rel "
             f"eig err {e['max_rel_eig_err']:.1e}" if "dense_eigh_s" in e else
             ", dense eigh skipped") + f" | load {os.getloadavg()}", flush=True)
  extrapolate(e2e)
  for e in e2e:
    if e.get("extrapolated"):
      print(f"top-{args.k} n={e['n']}: dense eigh EXTRAPOLATED (t ~ n^{e['dense_exponent']:.2f}"
            f") {e['dense_eigh_s']:.0f} s -> {e['end_to_end_x']:.1f}x", flush=True)
  print("load after:", os.getloadavg())
  rows += e2e
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
