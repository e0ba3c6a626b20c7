"""Infinite-width predictions at scale: MNIST-1D kernel regression, every method side by side.

Run::

  python -m benchmarks.bench_kernel_solve                 # full sweep (resumable, ~1 h)
  python -m benchmarks.bench_kernel_solve --quick         # smoke run (< 2 min, n = 1000)
  python -m benchmarks.bench_kernel_solve --only solver_inf,cho_solve --ns 10000,100000
  python -m benchmarks.bench_kernel_solve --table         # print/write the table only

Task. ``mskjax.data.load_mnist1d(num_samples=125000)``: the first n of the 100k training
sequences, the 25k test sequences (``--quick``: the standard 5000-sample set, n = 1000,
1000 test points); targets one-hot (10 outputs, f₀ = 0), accuracy = argmax. Kernel: the
closed-form NTK of a depth-2 ReLU MLP (``kernels.mlp_kernel_fn(MLPSpec(depth=2,
b_std=0.1))``, NTK parameterisation); the CNN row uses the analytic kernel of the 1-D CNN
of ``mskjax/experiments/mnist1d_kernels.py`` (``nets.stax_cnn``, NTK parameterisation).

Methods (every (method, n) runs in its own subprocess, so wall time is cold — imports and
data loading excluded, kernel evaluation, compilation and set-up included — and peak
memory is that method's alone: ``ru_maxrss`` of the child from ``os.wait4``):

* ``solver_auto`` — ``mskjax.predict.kernel_gd_mse(kernel_fn, X, Y, rtol=1e-3)`` at t = ∞
  with its defaults (``method='auto'``: dense Cholesky where K fits the memory budget,
  matrix-free above) and float32 kernel blocks: what a user gets;
* ``solver_inf`` — the same with ``method='matrix_free'`` at every n: CG preconditioned by
  a rank-``precond_rank`` Nyström approximation from ``n_landmarks`` points, K never formed;
* ``solver_t`` — the same builder at finite t: MSK kernel GD with g = flatten on the top
  k = ``n_landmarks``/16 eigenpairs of the Nyström estimate (EigenPro's iteration,
  ``eigensolver='nystrom'``), test accuracy at a grid of t: where it settles;
* ``solver_noprec`` — ``kernel_gd_mse(precond_rank=0)``: the solver's own CG, same symmetric
  operator, no preconditioner (the iteration count the preconditioner saves);
* ``dense_mskjax`` — ``mskjax.gradient_descent_mse`` on the float64 Gram (full ``eigh``);
* ``nt`` — neural-tangents ``predict.gradient_descent_mse_ensemble`` with its own stax
  kernel (``nt.batch``), t = ∞ (its Cholesky path), float64;
* ``cho_solve`` — ``scipy.linalg.cho_factor``/``cho_solve`` on the float64 Gram;
* ``cg`` — unpreconditioned ``jax.scipy.sparse.linalg.cg`` on a matrix-free float32
  operator (``kernels.kernel_operator(cache=False, symmetric=False)``: jax's CG traces its
  operator, so the plain product, n² entries per pass), all 10 outputs sharing each product,
  to rtol 1e-3 or a bounded number of iterations (then the residual reached is reported);
* ``kernel_gd`` — plain kernel GD α ← α + η (Y − K α), η = 1/λ_max (power iteration), the
  same operator, a bounded number of iterations (accuracy along the way);
* ``nystrom`` — scikit-learn ``Nystroem(kernel='precomputed')`` features from m random
  landmarks (kernel blocks from the same kernel function) + ``Ridge``: the approximate
  method users pick. (m, α) tuned on a grid on a 10 % validation split of the n training
  points (the chosen pair is reported, and whether it lies inside the grid); the final
  model is refitted on all n; tuning time is reported separately from the fit.
* ``solver_cnn`` — ``kernel_gd_mse(method='auto')`` with the CNN kernel at ``--cnn-n``.

Columns: test accuracy, wall s (the method in the child, cold), process wall s, CPU s
(user + system of the child: the machine is shared, read wall times against the load),
peak RSS MiB, iterations, final relative residual ‖Y − K α‖_F / ‖Y‖_F, load (1-min average
before → after the child). Raw rows: ``benchmarks/results/kernel_solve.jsonl`` (quick:
``kernel_solve_quick.jsonl``), one JSON object per (method, n), appended as each finishes;
a rerun skips the (method, n) rows already there *with the same settings* (rows of other
settings are kept in the file and ignored; ``--redo`` recomputes). The table replaces the
section "Infinite-width predictions at scale" at the end of ``docs/results.md``
(``--no-doc`` leaves the document alone).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import _results_doc

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "results.md"
SECTION = "## Infinite-width predictions at scale"

METHODS = ("solver_auto", "solver_inf", "solver_t", "cho_solve", "dense_mskjax", "nt",
           "solver_noprec", "cg", "kernel_gd", "nystrom", "solver_cnn")
SOLVER_METHODS = ("solver_auto", "solver_inf", "solver_t", "solver_noprec", "solver_cnn")


def settings(args) -> dict:
  """Everything a row's numbers depend on (stored with every row; reruns never mix)."""
  if args.quick:
    s = dict(num_samples=5000, ns=(1000,), n_test=1000, cnn_n=500, cnn_test=500,
             max_n=dict(dense_mskjax=1000, nt=1000, cho_solve=1000),
             cg_max_iter=300, cg_max_iter_large=300, gd_iters=30, solver_ts=(1, 3, 10, 30),
             nystrom_ms=(100, 200, 400), nystrom_alphas=(1e-7, 1e-5, 1e-3, 1e-1),
             precond_rank=200, n_landmarks=400)
  else:
    s = dict(num_samples=125000, ns=(2000, 5000, 10000, 20000, 50000, 100000), n_test=25000,
             cnn_n=args.cnn_n, cnn_test=args.cnn_test,
             max_n=dict(dense_mskjax=args.dense_max_n, nt=10000, cho_solve=20000,
                        cg=20000, solver_noprec=50000, kernel_gd=20000,
                        solver_t=100000),
             cg_max_iter=args.cg_max_iter, cg_max_iter_large=args.cg_max_iter_large,
             gd_iters=args.gd_iters,
             solver_ts=(1, 2, 5, 10, 20, 50),
             nystrom_ms=(1000, 2000, 4000, 8000),
             nystrom_alphas=(1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
             precond_rank=args.precond_rank, n_landmarks=args.n_landmarks)
  s.update(rtol=1e-3, depth=2, b_std=0.1, seed=0)
  if args.augment > 1:
    s.update(augment=args.augment, aug_noise=0.1)
  return s


def settings_key(s: dict) -> str:
  """A hash of the settings a row's numbers depend on (not of which rows are planned)."""
  s = {k: v for k, v in s.items() if k not in ("ns", "max_n")}
  return hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------
# The child: one (method, n) in this process.
# ---------------------------------------------------------------------------------------

def _peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _mlp_kernel(s):
  from mskjax import kernels, nets
  return kernels.mlp_kernel_fn(nets.MLPSpec(depth=s["depth"], width=8, b_std=s["b_std"]))


def _cnn_spec():
  from mskjax import nets
  return nets.CNNSpec(channels=(32, 32, 32), kernel_sizes=(5, 3, 3), strides=2,
                      padding="SAME", readout="flatten", out_dim=10, b_std=0.0,
                      parameterization="ntk")


def _load(s, n, n_test, float64):
  import numpy as np
  from mskjax import data
  ds = data.load_mnist1d(num_samples=s["num_samples"])
  dt = np.float64 if float64 else np.float32
  x, y = np.asarray(ds.x_train), np.asarray(ds.y_train)
  reps = int(s.get("augment", 1))
  if reps > 1:     # R jittered copies of the training pool: a large-n timing set (--augment)
    rng = np.random.default_rng(s["seed"])
    x = np.concatenate([x] + [x + s["aug_noise"] * rng.standard_normal(x.shape)
                              for _ in range(reps - 1)])
    y = np.tile(y, reps)
  if n > x.shape[0]:
    raise ValueError(f"n = {n} > {x.shape[0]} training points (num_samples "
                     f"{s['num_samples']}, augment {reps}).")
  x, y = np.asarray(x[:n], dt), y[:n]
  xt = np.asarray(ds.x_test[:n_test], dt)
  yt = np.asarray(ds.y_test[:n_test])
  return x, np.eye(10, dtype=dt)[y], y, xt, yt


def _acc(pred, labels) -> float:
  import numpy as np
  return float(np.mean(np.argmax(np.asarray(pred), -1) == np.asarray(labels)))


def _rel_res(op_or_K, alpha, Y) -> float:
  import numpy as np
  R = np.asarray(Y, np.float64) - np.asarray(op_or_K @ alpha, np.float64)
  return float(np.linalg.norm(R) / np.linalg.norm(np.asarray(Y, np.float64)))


def _test_kernel_product(kernel_fn, xt, x, alpha, block=2000):
  """k(x_test, X) α in row blocks of the test set (K_test never held whole)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from mskjax import kernels
  f = jax.jit(lambda a, c, v: kernel_fn(a, c, "ntk") @ v)
  out = []
  for i in range(0, xt.shape[0], block):
    rows = xt[i:i + block]
    pad = block - rows.shape[0]
    rows_p = np.concatenate([rows, np.repeat(rows[-1:], pad, 0)]) if pad else rows
    # columns in blocks too (b x n temporaries), summed
    acc = 0.0
    cb = 8192
    for j in range(0, x.shape[0], cb):
      acc = acc + f(jnp.asarray(rows_p), jnp.asarray(x[j:j + cb]), jnp.asarray(alpha[j:j + cb]))
    out.append(np.asarray(acc)[:rows.shape[0]])
  del kernels
  return np.concatenate(out)


SNAPSHOT_ITERATIONS = frozenset((1, 2, 3, 5, 8, 10, 12, 15, 18, 20, 25, 30, 35, 40, 50, 60,
                                 80, 100, 150, 200))
SETTLED = 0.002
"""Test accuracy counts as settled from the first snapshot after which it stays within this
of the final accuracy (50 of 25k test points)."""


def _accuracy_along_solve(kernel_fn, x, xt, yt, snaps, final_acc) -> dict:
  """Test accuracy of the CG iterates kept at SNAPSHOT_ITERATIONS: one pass over
  k(x_test, X) for all of them (their columns side by side), float32 blocks as the solve."""
  import jax.numpy as jnp
  import numpy as np
  from mskjax import kernels
  its = sorted(snaps)
  A = np.concatenate([snaps[i][0] for i in its], axis=1)
  t = time.perf_counter()
  op = kernels.kernel_operator(kernel_fn, jnp.asarray(x), cache=False,
                               block_dtype=jnp.float32)
  P = np.asarray(op.cross(jnp.asarray(xt), jnp.asarray(A)))
  c = snaps[its[0]][0].shape[1]
  accs = [_acc(P[:, c * j:c * (j + 1)], yt) for j in range(len(its))]
  curve = [dict(iteration=i, s=round(snaps[i][1], 2), residual=snaps[i][2], test_acc=a)
           for i, a in zip(its, accs)]
  settled = None
  for j in range(len(curve)):
    if all(abs(cv["test_acc"] - final_acc) <= SETTLED for cv in curve[j:]):
      settled = curve[j]
      break
  return dict(curve=curve, curve_eval_s=time.perf_counter() - t,
              settled_iteration=None if settled is None else settled["iteration"],
              settled_s=None if settled is None else settled["s"])


def run_worker(method: str, n: int, s: dict) -> dict:
  """One (method, n): returns the row (accuracy, timings, iterations, residual, ...)."""
  import numpy as np
  float64 = method in ("cho_solve", "dense_mskjax", "nt")
  import jax
  if float64:     # this process only (a benchmark child): the dense baselines in float64
    jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import mskjax
  from mskjax import kernels

  n_test = s["cnn_test"] if method == "solver_cnn" else s["n_test"]
  x, Y, y, xt, yt = _load(s, n, n_test, float64)
  row = dict(n_test=int(xt.shape[0]), device=str(jax.devices()[0].device_kind),
             backend=jax.default_backend())
  kf = _mlp_kernel(s)
  t0 = time.perf_counter()

  if method in SOLVER_METHODS:
    from mskjax import predict
    x32, Y32 = np.asarray(x, np.float32), np.asarray(Y, np.float32)
    kw = dict(rtol=s["rtol"], kernel_dtype=jnp.float32)
    if method == "solver_cnn":
      from mskjax import nets
      kf = nets.stax_cnn(_cnn_spec())[2]
      x32, xt = x32[..., None], xt[..., None]
      kw.update(method="auto")
    elif method == "solver_auto":
      kw.update(method="auto")
    else:
      kw.update(method="matrix_free", precond_rank=s["precond_rank"],
                n_landmarks=min(s["n_landmarks"], n))
    g, k = None, None
    if method == "solver_noprec":
      kw.update(precond_rank=0,
                max_iter=int(s["cg_max_iter"] if n < 50000 else s["cg_max_iter_large"]))
      row["max_iter"] = kw["max_iter"]
    if method == "solver_t":
      # EigenPro's iteration: flatten on the top k of a Nyström estimate, η = 1/λ̂_{k+1}
      # k well below the landmarks: with k = 200 of 400 landmarks (n = 1000) the estimated
      # step 1/λ̂_{k+1} was too large and the iteration diverged; k = s/16 did not
      g, k = mskjax.modifiers.flatten(), max(1, min(s["n_landmarks"] // 16, n // 4))
      kw.update(eigensolver="nystrom")
      row["k"] = k
    if method in ("solver_inf", "solver_noprec", "solver_auto") and n >= 50000:
      # long solves checkpoint their CG state: a killed row resumes where it stopped (its
      # wall time then counts only this process; `resumed` says so)
      ck = RESULTS / f".ckpt_{method}_{n}_{s['_key']}.npz"
      row["resumed"] = ck.exists()
      kw.update(checkpoint=str(ck))
    snaps = {}
    if method in ("solver_inf", "solver_noprec", "solver_auto"):
      # the CG iterate at a few iterations (test accuracy along the solve, computed after it
      # in one pass over k(x_test, X)), and a progress line per iteration
      def on_iteration(p):
        if p.iteration in SNAPSHOT_ITERATIONS:
          snaps[p.iteration] = (p.solution.copy(), time.perf_counter() - t0, p.residual)
        print(f"  {method} n={n} iteration {p.iteration}: residual {p.residual:.3g}, "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
      kw.update(progress=on_iteration)
    predict_fn = predict.kernel_gd_mse(kf, x32, Y32, g, k, **kw)
    if method == "solver_t":
      curve = []
      for t in s["solver_ts"]:            # increasing t: each call continues the iteration
        p = predict_fn(int(t), x_test=xt)
        jax.block_until_ready(p.test)
        curve.append(dict(t=int(t), test_acc=_acc(p.test, yt), train_acc=_acc(p.train, y),
                          train_res=float(np.linalg.norm(Y - np.asarray(p.train, np.float64))
                                          / np.linalg.norm(Y)),
                          s=time.perf_counter() - t0))
        print(f"  solver_t n={n} t={t}: test acc {curve[-1]['test_acc']:.4f}, train res "
              f"{curve[-1]['train_res']:.3g}, {curve[-1]['s']:.1f} s", file=sys.stderr,
              flush=True)
      row["curve"] = curve
      best = max(curve, key=lambda c: c["test_acc"])
      row.update(test_acc=curve[-1]["test_acc"], best_t=best["t"], best_acc=best["test_acc"],
                 iterations=curve[-1]["t"], rel_residual=curve[-1]["train_res"])
    else:
      p = predict_fn(jnp.inf, x_test=xt)
      jax.block_until_ready(p.test)
      info = predict_fn.info
      row.update(test_acc=_acc(p.test, yt), train_acc=_acc(p.train, y),
                 rel_residual=float(np.linalg.norm(Y - np.asarray(p.train, np.float64))
                                    / np.linalg.norm(Y)),
                 iterations=int(info.iterations), converged=bool(info.converged),
                 solver_residual=(None if info.residuals is None
                                  else float(np.max(info.residuals))))
      if info.history is not None:
        row["history"] = np.asarray(info.history, float).max(axis=1).tolist()
      if snaps:
        row.update(_accuracy_along_solve(kf, x32, xt, yt, snaps, row["test_acc"]))
    info = predict_fn.info
    row.update(path=info.method, solver=info.solver, preconditioner=info.preconditioner,
               eigensolver=info.eigensolver, learning_rate=info.learning_rate,
               setup_s=float(info.setup_seconds), solve_s=float(info.solve_seconds),
               gd_steps=int(info.gd_steps))

  elif method in ("cho_solve", "dense_mskjax"):
    import scipy.linalg
    K = mskjax.gram(kf, x, block_size=min(n, 2000))
    jax.block_until_ready(K)
    row["gram_s"] = time.perf_counter() - t0
    if method == "cho_solve":
      Kn = np.asarray(K)
      del K
      c = scipy.linalg.cho_factor(Kn, lower=True, check_finite=False, overwrite_a=False)
      alpha = scipy.linalg.cho_solve(c, Y, check_finite=False)
      row.update(rel_residual=_rel_res(Kn, alpha, Y))
      del c, Kn
      pred = _test_kernel_product(kf, xt, x, alpha)     # k(x_test, X) α in blocks
    else:
      Kt = mskjax.gram(kf, xt, x, block_size=min(n, 2000))
      predict_fn = mskjax.gradient_descent_mse(K, Y)
      p = predict_fn(jnp.inf, K_test_train=Kt)
      pred = np.asarray(p.test)
      row.update(rel_residual=float(np.linalg.norm(Y - np.asarray(p.train))
                                    / np.linalg.norm(Y)))
    row.update(test_acc=_acc(pred, yt))

  elif method == "nt":
    from mskjax import nets
    from mskjax._nt import nt
    kf_nt = nets.stax_mlp(nets.MLPSpec(depth=s["depth"], width=8, b_std=s["b_std"]))[2]
    kf_b = nt.batch(kf_nt, batch_size=min(n, 1000))
    predict_fn = nt.predict.gradient_descent_mse_ensemble(kf_b, x, Y)
    pred = predict_fn(t=None, x_test=xt, get="ntk")
    row.update(test_acc=_acc(pred, yt))

  elif method in ("cg", "kernel_gd"):
    # cg: jax's CG traces its operator: the plain (jittable) product, all n² entries per
    # pass; kernel_gd: a Python loop, the solver's symmetric product (half the entries)
    op = kernels.kernel_operator(kf, jnp.asarray(x), m=10, cache=False,
                                 symmetric=method == "kernel_gd")
    Yj = jnp.asarray(Y)
    count = [0]

    def matvec(v):
      out = op.matmul(v)
      jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
      return out

    if method == "cg":
      maxiter = int(s["cg_max_iter"] if n < 50000 else s["cg_max_iter_large"])
      alpha, _ = jax.scipy.sparse.linalg.cg(matvec, Yj, tol=s["rtol"], maxiter=maxiter)
      alpha = np.asarray(alpha)
      row.update(iterations=count[0], max_iter=maxiter)
    else:
      # λ_max by 30 power iterations (a lower bound: η = 1/λ̂ is then just above 1/λ_max,
      # well inside the stable 2/λ_max)
      v = jnp.asarray(np.random.default_rng(0).standard_normal(n), jnp.float32)
      for _ in range(30):
        w = op @ v
        lam = float(jnp.linalg.norm(w) / jnp.linalg.norm(v))
        v = w / jnp.linalg.norm(w)
      eta = 1.0 / lam
      row.update(lambda_max=lam, eta=eta, setup_s=time.perf_counter() - t0)
      alpha = jnp.zeros_like(Yj)
      R = Yj
      curve = []
      marks = sorted({1, 2, 5, 10, 20, 50, 100, 200, 500, 1000} & set(range(1, s["gd_iters"]))
                     | {int(s["gd_iters"])})
      step = jax.jit(lambda a, r: a + eta * r)
      for it in range(1, int(s["gd_iters"]) + 1):
        alpha = step(alpha, R)
        R = Yj - op @ alpha
        if it in marks:
          te = _test_kernel_product(kf, xt, x, np.asarray(alpha))
          curve.append(dict(t=it, test_acc=_acc(te, yt),
                            train_res=float(jnp.linalg.norm(R) / jnp.linalg.norm(Yj)),
                            s=time.perf_counter() - t0))
          print(f"  kernel_gd n={n} t={it}: test acc {curve[-1]['test_acc']:.4f}, train res "
                f"{curve[-1]['train_res']:.3g}, {curve[-1]['s']:.1f} s", file=sys.stderr,
                flush=True)
      row.update(curve=curve, iterations=int(s["gd_iters"]))
      alpha = np.asarray(alpha)
    pred = _test_kernel_product(kf, xt, x, alpha)
    row.update(test_acc=_acc(pred, yt), rel_residual=_rel_res(op, jnp.asarray(alpha), Yj))

  elif method == "nystrom":
    row.update(_nystrom(kf, x, Y, y, xt, yt, s, t0))
  else:
    raise ValueError(f"unknown method {method!r}; one of {METHODS}")
  row["wall_s"] = time.perf_counter() - t0
  row["peak_rss_mib_self"] = _peak_mib()
  return row


def _nystrom(kf, x, Y, y, xt, yt, s, t0):
  """Nyström features (scikit-learn, precomputed kernel blocks) + ridge; tuned on a split."""
  import numpy as np
  import jax.numpy as jnp
  from sklearn.kernel_approximation import Nystroem
  from sklearn.linear_model import Ridge
  import mskjax

  n = x.shape[0]
  rng = np.random.default_rng(s["seed"])
  # m <= n/2 and the (n, m) float64 features within 3.5 GB (the solver's memory scale)
  ms = [m for m in s["nystrom_ms"] if m <= n // 2 and n * m * 8 <= 3.5e9]
  lm_idx = rng.permutation(n)[:max(ms)]             # landmarks: nested random subsets
  L = x[lm_idx]

  def gram(a, b):
    return np.asarray(mskjax.gram(kf, jnp.asarray(a), jnp.asarray(b), block_size=2000),
                      np.float64)

  def features(K_mm, K_xm):
    ny = Nystroem(kernel="precomputed", n_components=K_mm.shape[0], random_state=0)
    ny.fit(K_mm)
    return ny.transform(K_xm)

  # --- tuning: 90/10 split of (up to 20k of) the n training points; the ridge path of each
  # m from one eigendecomposition of ΦᵀΦ (the same estimator as Ridge, every α at once) ----
  t_tune = time.perf_counter()
  sub = rng.permutation(n)[:min(n, 20000)]
  nv = max(len(sub) // 10, 1)
  va, tr = sub[:nv], sub[nv:]
  K_LL = gram(L, L)
  K_sL = gram(x[sub], L)
  pos = {int(i): j for j, i in enumerate(sub)}
  grid = []
  for m in ms:
    Phi = features(K_LL[:m, :m], K_sL[:, :m])
    P_tr, P_va = Phi[[pos[int(i)] for i in tr]], Phi[[pos[int(i)] for i in va]]
    # Ridge(fit_intercept=True) in closed form: centre features and targets on the split
    p_mean, y_mean = P_tr.mean(0), Y[tr].mean(0)
    P_c = P_tr - p_mean
    mu, V = np.linalg.eigh(P_c.T @ P_c)
    b = V.T @ (P_c.T @ (Y[tr] - y_mean))
    for a in s["nystrom_alphas"]:
      w = V @ (b / (mu + a * len(sub))[:, None])   # as Ridge(alpha=a·n) before
      grid.append(dict(m=m, alpha=a, val_acc=_acc((P_va - p_mean) @ w + y_mean, y[va])))
  best = max(grid, key=lambda r: (r["val_acc"], -r["m"]))
  tune_s = time.perf_counter() - t_tune
  inside = dict(m_inside=best["m"] not in (min(ms), max(ms)) or len(ms) == 1,
                alpha_inside=best["alpha"] not in (min(s["nystrom_alphas"]),
                                                   max(s["nystrom_alphas"])))
  # --- the final fit with the chosen (m, α), timed on its own ----------------------------
  t_fit = time.perf_counter()
  m = best["m"]
  K_xm = gram(x, L[:m])
  K_mm = gram(L[:m], L[:m])
  ny = Nystroem(kernel="precomputed", n_components=m, random_state=0).fit(K_mm)
  r = Ridge(alpha=best["alpha"] * n, solver="cholesky").fit(ny.transform(K_xm), Y)
  del K_xm
  K_tm = gram(xt, L[:m])
  pred = r.predict(ny.transform(K_tm))
  fit_s = time.perf_counter() - t_fit
  print(f"  nystrom n={n}: best m={m} alpha={best['alpha']:g}·n (val acc "
        f"{best['val_acc']:.4f}), test acc {_acc(pred, yt):.4f}", file=sys.stderr, flush=True)
  return dict(test_acc=_acc(pred, yt), m=m, alpha=best["alpha"], tune_s=tune_s, fit_s=fit_s,
              grid=grid, **inside)


# ---------------------------------------------------------------------------------------
# The parent: one subprocess per (method, n), rows appended as they finish.
# ---------------------------------------------------------------------------------------

def _load1() -> float:
  try:
    return os.getloadavg()[0]
  except OSError:
    return float("nan")


def run_child(method, n, s, timeout) -> dict:
  """Runs one (method, n) in a fresh interpreter; adds wall/CPU/peak memory from wait4."""
  spec = json.dumps(dict(method=method, n=n, settings=dict(s, _key=settings_key(s))))
  out_path = RESULTS / f".kernel_solve_child_{os.getpid()}.json"
  if out_path.exists():
    out_path.unlink()
  cmd = [sys.executable, "-m", "benchmarks.bench_kernel_solve", "--worker", spec,
         "--worker-out", str(out_path)]
  load0 = _load1()
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT)
  status, ru, timed_out = None, None, False
  deadline = None if not timeout else time.monotonic() + timeout
  while True:
    pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
    if pid:
      break
    if deadline is not None and time.monotonic() > deadline:
      proc.kill()
      _, status, ru = os.wait4(proc.pid, 0)
      timed_out = True
      break
    time.sleep(0.2)
  proc.returncode = os.waitstatus_to_exitcode(status)
  wall = time.perf_counter() - t0
  row = dict(method=method, n=n, load_start=round(load0, 2), load_end=round(_load1(), 2),
             process_wall_s=wall, cpu_s=ru.ru_utime + ru.ru_stime,
             peak_rss_mib=ru.ru_maxrss / 1024.0, rc=proc.returncode)
  if timed_out:
    row["status"] = f"timeout after {timeout} s"
  elif proc.returncode != 0 or not out_path.exists():
    row["status"] = f"failed (rc {proc.returncode})"
  else:
    row.update(json.loads(out_path.read_text()))
    row["status"] = "ok"
    out_path.unlink()
  return row


def read_rows(path: Path, key: str) -> list[dict]:
  rows = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        continue                      # a line cut by a kill: that row is recomputed
      if r.get("settings_key") == key:
        rows.append(r)
  return rows


def plan(s, only) -> list[tuple[str, int]]:
  todo = []
  for n in s["ns"]:
    for m in METHODS:
      if m == "solver_cnn" or (only and m not in only):
        continue
      if n > s["max_n"].get(m, 10 ** 9):
        continue
      todo.append((m, n))
  if not only or "solver_cnn" in only:
    todo.append(("solver_cnn", s["cnn_n"]))
  # cheapest first: a long sweep has its small rows early
  return sorted(todo, key=lambda mn: (mn[1], METHODS.index(mn[0])))


def _f(v, nd=3):
  if v is None or v == "":
    return "—"
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, float):
    if v != v:
      return "—"
    return f"{v:.{nd}g}" if abs(v) < 1e4 else f"{v:.0f}"
  return str(v)


def table(rows: list[dict]) -> str:
  cols = ["n", "method", "test_acc", "wall_s", "process_wall_s", "cpu_s", "peak_rss_mib",
          "iterations", "rel_residual", "load", "note"]
  out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in sorted(rows, key=lambda r: (r["method"] == "solver_cnn", r["n"],
                                       METHODS.index(r["method"]))):
    note = r.get("status", "")
    if note == "ok":
      note = ""
      if r["method"] == "nystrom":
        note = (f"m={r['m']}, α={r['alpha']:g}·n (grid: m "
                f"{'inside' if r.get('m_inside') else 'at edge'}, α "
                f"{'inside' if r.get('alpha_inside') else 'at edge'}); tune "
                f"{r['tune_s']:.0f} s + fit {r['fit_s']:.0f} s")
      elif r["method"] in ("solver_t", "kernel_gd") and r.get("curve"):
        c = r["curve"]
        note = "acc@t: " + ", ".join(f"{p['t']}:{p['test_acc']:.3f}" for p in c)
      elif r["method"] == "cg" and r.get("iterations", 0) >= r.get("max_iter", 1 << 30):
        note = f"stopped at max_iter {r['max_iter']}"
      elif r["method"] == "solver_cnn":
        note = f"CNN kernel, {r.get('n_test')} test points"
      if r["method"] in SOLVER_METHODS and "setup_s" in r:
        note = (note + "; " if note else "") + (
            f"{r.get('path')}/{r.get('solver')}, set-up {r['setup_s']:.0f} s, calls "
            f"{r['solve_s']:.0f} s" + (f", {r['preconditioner']}"
                                      if r.get("path") == "matrix_free" else "")
            + (", resumed" if r.get("resumed") else "")
            + (f", test acc. settled (±{SETTLED}) at iteration {r['settled_iteration']}, "
               f"{r['settled_s']:.0f} s" if r.get("settled_s") is not None else "")
            + ("" if r.get("converged", True) or r["method"] == "solver_t"
               else ", not converged"))
      if "gram_s" in r:
        note = (note + "; " if note else "") + f"Gram {r['gram_s']:.0f} s"
    vals = dict(r, load=f"{r['load_start']:.1f}→{r['load_end']:.1f}", note=note)
    out.append("| " + " | ".join(_f(vals.get(c), 4 if c == "test_acc" else 3)
                                  for c in cols) + " |")
  return "\n".join(out) + "\n"




def write_doc(text: str):
  """Replace this benchmark's block of docs/results.md (appended with its section if
  missing)."""
  _results_doc.write_block(DOC, SECTION, "bench_kernel_solve", text)


def doc_section(rows, s, args, path) -> str:
  loads = [r["load_start"] for r in rows] + [r["load_end"] for r in rows]
  dates = sorted(r.get("date", "") for r in rows if r.get("date"))
  cmd = "python -m benchmarks.bench_kernel_solve" + (" --quick" if args.quick else "")
  return (f"Command: `{cmd}` (rows resumable; one subprocess per (method, n)). Dates (UTC): "
          f"{dates[0] if dates else '?'} – {dates[-1] if dates else '?'}. Machine: "
          f"{platform.machine()} CPU, {os.cpu_count()} cores, shared (1-minute load "
          f"{min(loads):.1f}–{max(loads):.1f} over the rows; read wall times against it, "
          f"CPU s are less sensitive). Raw rows: `benchmarks/results/{path.name}` (settings "
          f"key `{settings_key(s)}`). MNIST-1D, first n of 100k training sequences, "
          f"{s['n_test']} test sequences, closed-form depth-2 ReLU MLP NTK, 10 one-hot "
          "outputs; t = ∞ rows to a 1e-3 relative residual. wall s: the method in its own "
          "fresh process (kernel evaluation, compilation and set-up included; imports and "
          "data loading excluded: process wall s has them); peak RSS of that process. "
          "Solver notes: path/solver, set-up s (kernel and preconditioner build), calls s "
          "(the predict_fn calls; the matrix-free preconditioner is built lazily inside the "
          "first call, so its time is in both). Key rows on a quieter machine: `python -m "
          "benchmarks.bench_kernel_solve --only solver_auto,solver_inf,cho_solve "
          "--ns 10000,100000 --redo`.\n\n"
          + table(rows))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="smoke run (< 2 min)")
  ap.add_argument("--only", default="", help=f"comma list of methods among {METHODS}")
  ap.add_argument("--ns", default="", help="comma list of n (default: the settings' n's)")
  ap.add_argument("--redo", action="store_true", help="recompute rows already recorded")
  ap.add_argument("--table", action="store_true", help="only print/write the table")
  ap.add_argument("--no-doc", action="store_true", help="leave docs/results.md alone")
  ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per child")
  ap.add_argument("--dense-max-n", type=int, default=10000)
  ap.add_argument("--cg-max-iter", type=int, default=3000, help="CG iterations, n < 50k")
  ap.add_argument("--cg-max-iter-large", type=int, default=100, help="CG iterations, n >= 50k")
  ap.add_argument("--gd-iters", type=int, default=100)
  ap.add_argument("--precond-rank", type=int, default=1000)
  ap.add_argument("--n-landmarks", type=int, default=4000)
  ap.add_argument("--cnn-n", type=int, default=10000)
  ap.add_argument("--cnn-test", type=int, default=5000)
  ap.add_argument("--augment", type=int, default=1,
                  help="R > 1: the training pool is R jittered copies (noise 0.1) of the 100k "
                       "sequences, for timings at n > 100k (accuracy then means little)")
  ap.add_argument("--results-tag", default="",
                  help="suffix of the raw file (e.g. 'device': kernel_solve_device.jsonl)")
  ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)

  if args.worker:
    spec = json.loads(args.worker)
    row = run_worker(spec["method"], int(spec["n"]), spec["settings"])
    Path(args.worker_out).write_text(json.dumps(row))
    return 0

  s = settings(args)
  if args.ns:
    s = dict(s, ns=tuple(int(v) for v in args.ns.split(",")))
  key = settings_key(s)
  RESULTS.mkdir(parents=True, exist_ok=True)
  tag = ("_quick" if args.quick else "") + (f"_{args.results_tag}" if args.results_tag else "")
  path = RESULTS / f"kernel_solve{tag}.jsonl"
  only = tuple(m for m in args.only.split(",") if m)
  for m in only:
    if m not in METHODS:
      raise SystemExit(f"--only: unknown method {m!r}; choose from {METHODS}")
  done = {(r["method"], r["n"]) for r in read_rows(path, key)}
  if not args.table:
    print(f"settings {key}: {json.dumps(s)}", flush=True)
    for method, n in plan(s, only):
      if (method, n) in done and not args.redo:
        continue
      print(f"-- {method} n={n} (load {_load1():.2f})", flush=True)
      row = run_child(method, n, s, args.timeout)
      row.update(settings_key=key, date=_dt.datetime.now(_dt.timezone.utc)
                 .strftime("%Y-%m-%d %H:%MZ"), machine=f"{platform.machine()} CPU, {os.cpu_count()} cores")
      with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
      print(f"   {row['status']}: acc {_f(row.get('test_acc'), 4)}, wall "
            f"{_f(row.get('wall_s'))} s, cpu {row['cpu_s']:.1f} s, peak "
            f"{row['peak_rss_mib']:.0f} MiB, iters {_f(row.get('iterations'))}, res "
            f"{_f(row.get('rel_residual'))}", flush=True)
  # later rows of the same (method, n) win (a --redo)
  latest = {}
  for r in read_rows(path, key):
    latest[(r["method"], r["n"])] = r
  rows = list(latest.values())
  if not rows:
    print("no rows yet")
    return 0
  print("\n" + table(rows))
  if not args.no_doc and not args.quick:
    write_doc(doc_section(rows, s, args, path))
    print(f"wrote the section '{SECTION[3:]}' of {DOC.relative_to(ROOT)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
