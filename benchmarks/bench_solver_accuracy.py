"""Accuracy and loop costs of the large-n prediction path (``mskjax.predict.kernel_gd_mse``).

    python -m benchmarks.bench_solver_accuracy               # n = 2000, writes the JSON below
    python -m benchmarks.bench_solver_accuracy --n 3000 --out /tmp/acc.json

Data: MNIST-1D (``load_mnist1d(num_samples=125000)``, the first n training and 2000 test
points, one-hot targets, 10 outputs); kernel: the closed-form NTK of a depth-2 ReLU MLP
(``kernels.mlp_kernel_fn``). Oracle: K in float64 (``kernels.gram``), scipy solves, the dense
closed form (``gradient_descent_mse``). All rows come from one process.

* ``t_inf``: matrix-free CG with float64 and float32 kernel blocks at several ``rtol``:
  iterations, CG's own residual and the *true* relative residual ``max_j ‖Y_j − K α_j‖/‖Y_j‖``
  (float64 dense K), test predictions against the Cholesky solution's, test accuracy;
* ``finite_t``: the MSK dynamics (g = flatten, k = 50) at t = 10, 100, 300 with exact
  (Krylov) and Nyström eigenpairs against the dense closed form: relative difference of
  the train and test predictions and test accuracy;
* ``products``: one ``K V`` (V with 10 columns) by the symmetric product vs the plain one,
  same operator settings, alternated 3 times;
* ``cg_loop``: per-iteration cost of the CG host loop (``_solve.pcg``) vs
  ``jax.scipy.sparse.linalg.cg`` on a diagonal operator (the loop's own overhead).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

import mskjax
from mskjax import _solve, kernels, modifiers
from mskjax.predict import gradient_descent_mse, kernel_gd_mse

OUT = os.path.join(os.path.dirname(__file__), "results", "solver_accuracy.json")


def _acc(pred, y):
  return float(np.mean(np.argmax(np.asarray(pred), -1) == np.argmax(y, -1)))


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=2000)
  ap.add_argument("--out", default=OUT)
  args = ap.parse_args(argv)
  jax.config.update("jax_enable_x64", True)
  n = args.n
  ds = mskjax.data.load_mnist1d(num_samples=125000, labels="onehot")
  x, y = np.asarray(ds.x_train[:n], np.float64), np.asarray(ds.y_train[:n], np.float64)
  xt, yt = np.asarray(ds.x_test[:2000], np.float64), np.asarray(ds.y_test[:2000], np.float64)
  kf = kernels.mlp_kernel_fn(mskjax.MLPSpec(depth=2, width=8))
  K = np.asarray(kernels.gram(kf, x, block_size=1024), np.float64)
  Kt = np.asarray(kernels.gram(kf, xt, x, block_size=1024), np.float64)
  a_chol = scipy.linalg.cho_solve(scipy.linalg.cho_factor(K, lower=True), y)
  out = dict(command=f"python -m benchmarks.bench_solver_accuracy --n {n}",
             date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             load=os.getloadavg(), n=n, cholesky_test_acc=_acc(Kt @ a_chol, yt),
             cond_K=float(np.linalg.cond(K)), t_inf=[], finite_t=[])
  ynorm = np.linalg.norm(y, axis=0)
  for kd in ("float64", "float32"):
    for rtol in (1e-3, 1e-6, 1e-9):
      f = kernel_gd_mse(kf, x, y, method="matrix_free", kernel_dtype=getattr(jnp, kd),
                        rtol=rtol, max_iter=400, precond_rank=min(500, n // 4))
      p = f(jnp.inf, x_test=xt)
      alpha = f.coefficients(jnp.inf)
      test = np.asarray(p.test)
      true_res = float(np.max(np.linalg.norm(y - K @ alpha, axis=0) / ynorm))
      out["t_inf"].append(dict(kernel_dtype=kd, rtol=rtol, iterations=f.info.iterations,
                               cg_residual=float(np.max(f.info.residuals)),
                               true_residual=true_res,
                               test_rel_diff_vs_cholesky=float(
                                   np.linalg.norm(test - Kt @ a_chol) / np.linalg.norm(Kt @ a_chol)),
                               test_acc=_acc(test, yt)))
      print(out["t_inf"][-1], flush=True)
  g, k = modifiers.flatten(), 50
  ts = jnp.array([10, 100, 300])
  dense = gradient_descent_mse(jnp.asarray(K), jnp.asarray(y), g, k)(ts, K_test_train=jnp.asarray(Kt))
  for solver, kw in (("krylov", {}), ("nystrom", dict(n_landmarks=min(n, 1000)))):
    f = kernel_gd_mse(kf, x, y, g, k, method="matrix_free", eigensolver=solver, **kw)
    p = f(ts, x_test=xt)
    for i, t in enumerate(np.asarray(ts)):
      dtr, dte = np.asarray(dense.train[i]), np.asarray(dense.test[i])
      out["finite_t"].append(dict(
          eigensolver=solver, t=int(t), eig_residual=f.info.eig_residual,
          learning_rate=f.info.learning_rate,
          train_rel_diff=float(np.linalg.norm(np.asarray(p.train[i]) - dtr) / np.linalg.norm(dtr)),
          test_rel_diff=float(np.linalg.norm(np.asarray(p.test[i]) - dte) / np.linalg.norm(dte)),
          test_acc=_acc(p.test[i], yt), dense_test_acc=_acc(dte, yt)))
      print(out["finite_t"][-1], flush=True)
  # products: symmetric vs plain, same block size, float32 blocks
  v = np.random.default_rng(0).standard_normal((n, 10))
  ops = {s: kernels.kernel_operator(kf, x, cache=False, m=10, symmetric=s,
                                    block_dtype=jnp.float32, block_size=512)
         for s in (True, False)}
  times = {True: [], False: []}
  for s, o in ops.items():
    o @ v
  for _ in range(3):
    for s, o in ops.items():
      t0 = time.perf_counter(); o @ v; times[s].append(time.perf_counter() - t0)
  out["products"] = dict(block_size=ops[True].block_size, symmetric_s=min(times[True]),
                         plain_s=min(times[False]),
                         ratio=min(times[True]) / min(times[False]), load=os.getloadavg())
  print(out["products"], flush=True)
  # CG loop overhead
  nn, c, iters = 20000, 10, 50
  d = jnp.asarray(np.geomspace(1.0, 1e6, nn))
  B = np.random.default_rng(1).standard_normal((nn, c))
  mv = jax.jit(lambda w: d[:, None] * w)
  cg = jax.jit(lambda b: jax.scipy.sparse.linalg.cg(lambda w: d[:, None] * w, b, tol=1e-30,
                                                    maxiter=iters)[0])
  jax.block_until_ready(cg(jnp.asarray(B)))
  t0 = time.perf_counter(); jax.block_until_ready(cg(jnp.asarray(B)))
  tj = (time.perf_counter() - t0) / iters
  _solve.pcg(lambda w: np.asarray(mv(w)), B, rtol=1e-15, max_iter=2)
  t0 = time.perf_counter()
  _, info = _solve.pcg(lambda w: np.asarray(mv(w)), B, rtol=1e-15, max_iter=iters)
  tp = (time.perf_counter() - t0) / info.iterations
  out["cg_loop"] = dict(n=nn, c=c, jax_cg_ms=tj * 1e3, pcg_ms=tp * 1e3,
                        overhead_ms=(tp - tj) * 1e3, load=os.getloadavg())
  print(out["cg_loop"], flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as fh:
    json.dump(out, fh, indent=1)


if __name__ == "__main__":
  main()
