"""Krylov solver vs LAPACK top-k (scipy evr) vs jnp.linalg.eigh on the same cached K, one process.

    python -m benchmarks.bench_scale_lapack 8000

Same setup as ``bench_scale`` (n points on S⁹, 2-layer ReLU NTK, float64, k = 100 plus
λ₁₀₁); prints the load average, the three times and the LAPACK-vs-XLA eigenvalue error.
"""
import os
import sys
import time


def main(n: int):
  import jax
  jax.config.update("jax_enable_x64", True)
  import numpy as np
  import scipy.linalg as sl
  import mskjax
  from benchmarks.bench_scale import _data
  from mskjax.nets import MLPSpec, stax_mlp
  kf = stax_mlp(MLPSpec(depth=2, width=8, b_std=0.1))[2]
  op = mskjax.kernel_operator(kf, _data(n), cache=True, memory_budget=8 << 30)
  K = np.asarray(op.matrix)
  print("load", os.getloadavg()[0])
  t = time.perf_counter()
  mskjax.eigh_top(op, 101, method="krylov")
  print("krylov", time.perf_counter() - t)
  t = time.perf_counter()
  w = sl.eigh(K, subset_by_index=(n - 101, n - 1), driver="evr")[0]
  print("scipy evr subset", time.perf_counter() - t)
  t = time.perf_counter()
  d = mskjax.eigh_top(op.matrix, 101, method="dense")
  print("xla dense", time.perf_counter() - t)
  print("err scipy vs xla", np.max(np.abs(w[::-1] - np.asarray(d.values)) / np.asarray(d.values)),
        "load", os.getloadavg()[0])


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 4000)
