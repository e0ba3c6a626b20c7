"""Analytic MLP kernel evaluation: neural-tangents' kernel_fn vs the closed form, and top-k
end to end.

Run:  python -m benchmarks.bench_kernel_eval [--quick] [--n N] [--topk-n N]

Kernel: NTK of a depth-2 ReLU MLP (``MLPSpec(depth=2, b_std=0.1)``, the kernel of
``benchmarks/bench_scale.py``), n points on S^9, float64. In one process (load cancels in
the ratios):

1. ns per entry of one jitted ``k(X, X)`` block (``--n`` points): neural-tangents'
   ``stax_mlp(spec)[2]`` vs ``kernels.mlp_kernel_fn(spec)`` vs a plain ``X Xᵀ`` GEMM (the
   floor); best of ``--repeat`` calls;
2. end to end at ``--topk-n`` points, k = 100: ``kernel_operator(cache=True)`` (the cached
   Gram) + ``eigh_top(op, 101, method='krylov')`` for each kernel, against the dense
   baseline (the same Gram + ``eigh_top(K, 101, method='dense')``).
"""
from __future__ import annotations

import argparse
import os
import time



def _data(n, d=10, seed=0):
  import numpy as np
  x = np.random.default_rng(seed).standard_normal((n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def entry_costs(n, repeat=5):
  import jax
  import jax.numpy as jnp
  from mskjax import kernels
  from mskjax.nets import MLPSpec, stax_mlp
  spec = MLPSpec(depth=2, width=8, b_std=0.1)
  x = jnp.asarray(_data(n))
  fns = {"nt": jax.jit(lambda a, b, f=stax_mlp(spec)[2]: f(a, b, "ntk")),
         "closed": jax.jit(lambda a, b, f=kernels.mlp_kernel_fn(spec): f(a, b, "ntk")),
         "gemm": jax.jit(lambda a, b: a @ b.T)}
  best = {k: float("inf") for k in fns}
  for _ in range(repeat):
    for k, f in fns.items():              # interleaved: load drifts hit all three alike
      f(x, x).block_until_ready()
      t0 = time.perf_counter()
      f(x, x).block_until_ready()
      best[k] = min(best[k], 1e9 * (time.perf_counter() - t0) / (n * n))
  # accuracy on k(X, None) (exact zero angles on the diagonal; k(X, X) from two copies has
  # ~1e-8 rounding there in both implementations)
  a = jax.device_get(stax_mlp(spec)[2](x, None, "ntk"))
  b = jax.device_get(kernels.mlp_kernel_fn(spec)(x, None, "ntk"))
  err = float(abs(a - b).max() / abs(a).max())
  return dict(n=n, nt_ns=best["nt"], closed_ns=best["closed"], gemm_ns=best["gemm"],
              nt_over_closed=best["nt"] / best["closed"], max_rel_diff=err)


def end_to_end(n, k=100):
  import jax
  import numpy as np
  import mskjax
  from mskjax import kernels
  from mskjax.nets import MLPSpec, stax_mlp
  spec = MLPSpec(depth=2, width=8, b_std=0.1)
  x = jax.numpy.asarray(_data(n))
  out = {"n": n}
  budget = 4 * n * n * 8
  for name, kf in (("nt", stax_mlp(spec)[2]), ("closed", kernels.mlp_kernel_fn(spec))):
    kernels.kernel_operator(kf, x[:256], cache=True)          # compile the blocks
    t0 = time.perf_counter()
    op = kernels.kernel_operator(kf, x, cache=True, m=k + 21, memory_budget=budget)
    jax.block_until_ready(op.matrix)
    out[f"{name}_gram_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    top = mskjax.eigh_top(op, k + 1, method="krylov")
    vals = np.asarray(top.values)
    out[f"{name}_solver_s"] = time.perf_counter() - t1
    K = op.matrix
  t2 = time.perf_counter()
  dense = np.asarray(mskjax.eigh_top(K, k + 1, method="dense").values)
  out["dense_eigh_s"] = time.perf_counter() - t2
  out["max_rel_eig_err"] = float(np.max(np.abs(vals - dense) / dense))
  for name in ("nt", "closed"):
    g, s = out[f"{name}_gram_s"], out[f"{name}_solver_s"]
    out[f"{name}_end_to_end_x"] = (g + out["dense_eigh_s"]) / (g + s)
  return out


def main(argv=None):
  import jax
  jax.config.update("jax_enable_x64", True)
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="n = 1000, no end-to-end run")
  ap.add_argument("--n", type=int, default=None, help="points for the entry cost")
  ap.add_argument("--topk-n", type=int, default=None, help="points for the end-to-end run")
  ap.add_argument("--repeat", type=int, default=5)
  args = ap.parse_args(argv)
  print("devices:", jax.devices(), "| load:", os.getloadavg(), flush=True)
  n = args.n or (1000 if args.quick else 3000)
  r = entry_costs(n, args.repeat)
  print(f"entry cost n={n}: neural-tangents {r['nt_ns']:.1f} ns, closed form "
        f"{r['closed_ns']:.1f} ns, X Xᵀ GEMM {r['gemm_ns']:.2f} ns per entry "
        f"(nt/closed {r['nt_over_closed']:.2f}x, max rel diff {r['max_rel_diff']:.1e})",
        flush=True)
  rows = [r]
  tn = args.topk_n if args.topk_n is not None else (0 if args.quick else 5000)
  if tn:
    e = end_to_end(tn)
    print(f"top-100 end to end n={tn}: Gram nt {e['nt_gram_s']:.2f} s / closed "
          f"{e['closed_gram_s']:.2f} s; Krylov solver {e['closed_solver_s']:.2f} s; dense "
          f"eigh {e['dense_eigh_s']:.2f} s; (Gram + eigh) / (Gram + solver): nt "
          f"{e['nt_end_to_end_x']:.2f}x, closed {e['closed_end_to_end_x']:.2f}x; "
          f"max rel eigenvalue err {e['max_rel_eig_err']:.1e}", flush=True)
    rows.append(e)
  print("load after:", os.getloadavg())
  return rows


if __name__ == "__main__":
  main()
