"""Scale benchmark: dense Gram + eigh vs mskjax's matrix-free top-k vs neural-tangents.

    python -m benchmarks.bench_scale                       # all sizes, 1 device
    python -m benchmarks.bench_scale --sizes 1000,2000 --methods topk
    python -m benchmarks.bench_scale --devices 8 --sizes 2000,5000,10000 --depths 2

Data: n points uniform on S^9 (d = 10); kernel: analytic NTK of a 2- or 3-layer ReLU MLP
(mskjax.nets.stax_mlp, b_std = 0.1); k = 100 eigenpairs (plus λ_{k+1}).

Cases (each in its own subprocess; peak memory = the child's ru_maxrss from os.wait4):

* ``dense``: blocked Gram (mskjax.kernels.gram) + dense eigh (mskjax.eigh_top, 'dense');
* ``topk``: mskjax.kernel_operator(cache=False) + eigh_top(method='krylov') (K never formed);
* ``topk_cached``: the same solver on ``kernel_operator(cache=True)``: K evaluated once
  (upper-triangle blocks, mirrored) and kept, every Krylov product a dense GEMM; the note
  records the Gram time, the kernel cost per unique entry and, for the limit, one GEMM
  pass ``K @ V`` (V with k + 21 columns) per entry of K;
* ``side``: the cached operator's K, then ``mskjax.eigh_top(op, k + 1, method='krylov')``
  and dense ``eigh_top(K, k + 1, method='dense')`` on that same K, back to back in one
  process (same machine state; the eigenvalue error is the solver's alone);
* ``nt``: neural-tangents' own path for a full prediction: kernel_fn Gram matrices
  (train and 100 test points) + nt.predict.gradient_descent_mse at t = 1000 (via mskjax._nt).

Rows are appended to a CSV as each case finishes; finished (method, n, depth, devices)
rows are skipped on rerun, so the benchmark is resumable. ``--summary`` prints the
Markdown table (with top-k vs dense eigenvalue errors and the log-log slopes of time vs n).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CSV = os.path.join(HERE, "results", "scale.csv")
FIELDS = ["method", "n", "depth", "devices", "k", "seconds", "peak_rss_mib", "status",
          "n_matvecs", "max_rel_residual", "block_size", "note", "gram_s", "solve_s",
          "dense_s", "max_rel_err", "kernel_ns", "lin_ns", "pass_ns", "products_s", "load"]
SIZES = [1000, 2000, 5000, 10000, 20000, 50000]


def _data(n, d=10, seed=0):
  import numpy as np
  x = np.random.default_rng(seed).standard_normal((n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _gemm_rates(x, K, k, bs):
  """ns per entry of (a) a plain GEMM with the same n × n output (linear kernel X Xᵀ in
  row blocks of bs) and (b) one K @ V pass with k + 21 columns (per entry of K)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  n = x.shape[0]
  xj = jnp.asarray(x)
  lin = jax.jit(lambda a, b: a @ b.T)
  jax.block_until_ready(lin(xj[:bs], xj))
  t = time.perf_counter()
  for i in range(0, n, bs):
    jax.block_until_ready(lin(xj[i:i + bs], xj))
  t_lin = time.perf_counter() - t
  out = {"lin_ns": 1e9 * t_lin / n ** 2}
  if K is not None:
    V = jnp.asarray(np.random.default_rng(0).standard_normal((n, k + 21)))
    mm = jax.jit(lambda K, V: K @ V)
    jax.block_until_ready(mm(K, V))
    t = time.perf_counter()
    jax.block_until_ready(mm(K, V))
    out["pass_s"] = time.perf_counter() - t
    out["pass_ns"] = 1e9 * out["pass_s"] / n ** 2
  return out


def run_case(method, n, depth, k, out_dir, memory_budget):
  """Runs one case in this process (the child); returns a dict of results."""
  import jax
  jax.config.update("jax_enable_x64", True)
  import numpy as np
  import mskjax
  from mskjax import kernels
  from mskjax.kernels import gram
  from mskjax.nets import MLPSpec, stax_mlp
  kernel_fn = stax_mlp(MLPSpec(depth=depth, width=8, b_std=0.1))[2]
  x = _data(n)
  row = {"load": "%.1f" % os.getloadavg()[0]}
  bs = kernels.block_size_for_budget(memory_budget, m=k + 21)
  tag = f"{n}_{depth}"
  t0 = time.perf_counter()
  if method == "dense":
    K = gram(kernel_fn, x, block_size=min(bs, n))
    top = mskjax.eigh_top(K, k + 1, method="dense")
    vals = np.asarray(top.values)
    row.update(block_size=min(bs, n))
  elif method in ("topk", "topk_cached", "side"):
    # side: the cached operator's K, then the Krylov solver and dense eigh on that same K,
    # back to back in this process (same machine state, same matrix: the error is the
    # solver's alone).
    cached = method != "topk"
    op = kernels.kernel_operator(kernel_fn, x, m=k + 21, memory_budget=memory_budget,
                                 cache=cached)
    jax.block_until_ready(op.matrix)
    t_gram = time.perf_counter() - t0
    t1 = time.perf_counter()
    top, info = mskjax.eigh_top(op, k + 1, method="krylov", return_info=True)
    vals = np.asarray(top.values)
    t_solve = time.perf_counter() - t1
    note = "" if info.converged else "not converged"
    row.update(n_matvecs=info.n_matvecs, block_size=op.block_size,
               max_rel_residual=float(np.max(np.asarray(info.residuals))) / vals[0],
               gram_s=round(t_gram, 2), solve_s=round(t_solve, 2))
    if cached:
      rates = _gemm_rates(x, op.matrix, k, op.block_size)
      row.update(kernel_ns=round(1e9 * t_gram / (n * (n + 1) / 2), 1),
                 lin_ns=round(rates["lin_ns"], 2), pass_ns=round(rates["pass_ns"], 2),
                 products_s=round(info.n_matvecs * rates["pass_s"], 2))
    if method == "side":
      t2 = time.perf_counter()
      dense = mskjax.eigh_top(op.matrix, k + 1, method="dense")
      dvals = np.asarray(dense.values)
      row["dense_s"] = round(time.perf_counter() - t2, 2)
      row["max_rel_err"] = float(np.max(np.abs(vals - dvals) / dvals))
      np.save(os.path.join(out_dir, f"dense_{tag}_values.npy"), dvals)
    row["note"] = note
  elif method == "nt":
    from mskjax._nt import nt_predict
    xt = _data(100, seed=1)
    y = np.sin(3 * x[:, :1]) + x[:, 1:2]
    K = gram(kernel_fn, x, block_size=min(bs, n))
    Kt = gram(kernel_fn, xt, x, block_size=min(bs, n))
    lr = 1.0 * n / float(np.max(np.asarray(K).sum(1)))  # < 2N/λ₁ (Gershgorin)
    predict_fn = nt_predict.gradient_descent_mse(K, y, learning_rate=lr)
    fx_train, fx_test = predict_fn(t=1000.0, fx_train_0=0.0, fx_test_0=0.0, k_test_train=Kt)
    vals = np.asarray(fx_test)
    row.update(block_size=min(bs, n))
  else:
    raise ValueError(method)
  jax.block_until_ready(vals)
  row["seconds"] = time.perf_counter() - t0
  row["load"] += "-%.1f" % os.getloadavg()[0]
  np.save(os.path.join(out_dir, f"{method}_{tag}_values.npy"), np.asarray(vals))
  return row


def _done(path):
  if not os.path.exists(path):
    return set()
  with open(path) as f:
    return {(r["method"], int(r["n"]), int(r["depth"]), int(r["devices"]))
            for r in csv.DictReader(f)}


def _append(path, row):
  new = not os.path.exists(path)
  fields = FIELDS
  if not new:   # an older CSV keeps its own columns (new fields are dropped, not misaligned)
    with open(path) as f:
      fields = next(csv.reader(f), FIELDS)
  with open(path, "a", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    if new:
      w.writeheader()
    w.writerow({k: row.get(k, "") for k in fields})


def _spawn(method, n, depth, k, devices, out_dir, memory_budget, timeout):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  env.setdefault("JAX_PLATFORMS", "cpu")
  cmd = [sys.executable, "-m", "benchmarks.bench_scale", "--child",
         json.dumps(dict(method=method, n=n, depth=depth, k=k, out_dir=out_dir,
                         memory_budget=memory_budget))]
  res_path = os.path.join(out_dir, f".child_{method}_{n}_{depth}_{devices}.json")
  env["BENCH_SCALE_RESULT"] = res_path
  if os.path.exists(res_path):
    os.remove(res_path)
  proc = subprocess.Popen(cmd, env=env, cwd=os.path.dirname(HERE))
  t0, status = time.time(), "ok"
  while True:
    pid, wstatus, ru = os.wait4(proc.pid, os.WNOHANG)
    if pid:
      break
    if time.time() - t0 > timeout:
      proc.kill()
      pid, wstatus, ru = os.wait4(proc.pid, 0)
      status = f"timeout>{timeout}s"
      break
    time.sleep(0.5)
  row = dict(method=method, n=n, depth=depth, devices=devices, k=k,
             peak_rss_mib=round(ru.ru_maxrss / 1024.0, 1))  # Linux: KiB
  if status == "ok" and os.path.exists(res_path):
    with open(res_path) as f:
      row.update(json.load(f))
  elif status == "ok":
    status = f"failed (exit {os.waitstatus_to_exitcode(wstatus)})"
  row["status"] = status
  return row


def summary(path, out_dir):
  import numpy as np
  with open(path) as f:
    rows = list(csv.DictReader(f))
  lines = ["| method | depth | devices | n | time (s) | peak RSS (MiB) | matvecs | max ‖Kv−λv‖/λ₁ "
           "| max rel. err vs dense (top-k) | status | note |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  rows.sort(key=lambda r: (r["method"], int(r["depth"]), int(r["devices"]), int(r["n"])))
  for r in rows:
    err = ""
    if r["method"].startswith("topk") and r["status"] == "ok":
      a = os.path.join(out_dir, f"{r['method']}_{r['n']}_{r['depth']}_values.npy")
      b = os.path.join(out_dir, f"dense_{r['n']}_{r['depth']}_values.npy")
      if os.path.exists(a) and os.path.exists(b):
        va, vb = np.load(a)[:-1], np.load(b)[:-1]
        err = f"{np.max(np.abs(va - vb) / vb):.1e}"
    t = f"{float(r['seconds']):.1f}" if r["seconds"] else "-"
    res = f"{float(r['max_rel_residual']):.1e}" if r["max_rel_residual"] else ""
    lines.append(f"| {r['method']} | {r['depth']} | {r['devices']} | {r['n']} | {t} | "
                 f"{r['peak_rss_mib']} | {r['n_matvecs']} | {res} | {err} | {r['status']} | "
                 f"{r.get('note') or ''} |")
  lines.append("")
  groups = {}
  for r in rows:
    if r["status"] == "ok":
      groups.setdefault((r["method"], r["depth"], r["devices"]), []).append(
          (int(r["n"]), float(r["seconds"])))
  for (m, dep, dev), pts in sorted(groups.items()):
    pts = [p for p in sorted(pts) if p[0] >= 2000] or sorted(pts)
    if len(pts) >= 2:
      s = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0]
      lines.append(f"- log-log slope of time vs n, {m}, depth {dep}, {dev} device(s), "
                   f"n = {pts[0][0]}..{pts[-1][0]}: **{s:.2f}**")
  return "\n".join(lines)


def side_summary(path):
  """Markdown table of the ``side`` / ``topk_cached`` rows: Krylov solver vs dense eigh on
  the same cached K, the kernel and GEMM costs per entry, and dense extrapolated to the
  top-k sizes with the measured log-log slope of the dense eigh times (and with n³)."""
  import numpy as np
  with open(path) as f:
    rows = [r for r in csv.DictReader(f) if r["method"] in ("side", "topk_cached")
            and r["status"] == "ok" and r.get("solve_s")]
  rows.sort(key=lambda r: int(r["n"]))
  dense = [(int(r["n"]), float(r["dense_s"])) for r in rows if r.get("dense_s")]
  slope = None
  if len(dense) >= 2:
    slope = float(np.polyfit(np.log([d[0] for d in dense]), np.log([d[1] for d in dense]), 1)[0])
  lines = ["| n | Gram s | Krylov solver s (products s) | dense eigh s | eigh / solver | "
           "(Gram + eigh) / (Gram + solver) | max rel. eigenvalue err | max ‖Kv−λv‖/λ₁ | "
           "peak RSS MiB | kernel ns/entry | X Xᵀ GEMM ns/entry | K@V pass ns/entry | load |",
           "|" + "---|" * 13]
  for r in rows:
    n, g, sv = int(r["n"]), float(r["gram_s"]), float(r["solve_s"])
    if r.get("dense_s"):
      d, how, err = float(r["dense_s"]), "", f"{float(r['max_rel_err']):.1e}"
    elif dense and slope is not None:
      n0, d0 = dense[-1]
      d, how, err = d0 * (n / n0) ** slope, "≈", "—"
      d3 = d0 * (n / n0) ** 3
    else:
      continue
    ratio = f"{how}{d / sv:.1f}×"
    e2e = f"{how}{(g + d) / (g + sv):.1f}×"
    ds = f"{d:.1f}" if not how else f"≈ {d:.0f} (n³: {d3:.0f})"
    if how:
      ratio += f" (n³: {d3 / sv:.0f}×)"
      e2e += f" (n³: {(g + d3) / (g + sv):.0f}×)"
    lines.append(f"| {n} | {g:.1f} | {sv:.1f} ({r.get('products_s') or '-'}) | {ds} | {ratio} | "
                 f"{e2e} | {err} | {float(r['max_rel_residual']):.1e} | {r['peak_rss_mib']} | "
                 f"{r.get('kernel_ns')} | {r.get('lin_ns')} | {r.get('pass_ns')} | "
                 f"{r.get('load')} |")
  if slope is not None:
    lines += ["", f"- dense eigh time vs n, log-log slope over n = {dense[0][0]}..{dense[-1][0]}: "
              f"**{slope:.2f}** (extrapolations marked ≈ use it; n³ in brackets)"]
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default=",".join(map(str, SIZES)))
  p.add_argument("--max-n", type=int, default=None)
  p.add_argument("--depths", default="2,3")
  p.add_argument("--methods", default="dense,topk,nt")
  p.add_argument("--max-dense-n", type=int, default=5000,
                 help="largest n for the dense and nt cases (O(n³) eigh)")
  p.add_argument("--k", type=int, default=100)
  p.add_argument("--devices", type=int, default=1)
  p.add_argument("--memory-budget", type=int, default=1 << 30)
  p.add_argument("--timeout", type=float, default=1800.0)
  p.add_argument("--csv", default=DEFAULT_CSV)
  p.add_argument("--summary", action="store_true", help="print the table and exit")
  p.add_argument("--side-summary", action="store_true",
                 help="print the solver-vs-dense table of the side/topk_cached rows and exit")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.child is not None:
    spec = json.loads(a.child)
    row = run_case(**spec)
    with open(os.environ["BENCH_SCALE_RESULT"], "w") as f:
      json.dump(row, f)
    return
  out_dir = os.path.dirname(os.path.abspath(a.csv))
  os.makedirs(out_dir, exist_ok=True)
  if a.summary:
    print(summary(a.csv, out_dir))
    return
  if a.side_summary:
    print(side_summary(a.csv))
    return
  sizes = [int(s) for s in a.sizes.split(",") if s]
  if a.max_n:
    sizes = [s for s in sizes if s <= a.max_n]
  done = _done(a.csv)
  for depth in [int(s) for s in a.depths.split(",")]:
    for method in a.methods.split(","):
      for n in sizes:
        if method in ("dense", "nt") and n > a.max_dense_n:
          continue
        if (method, n, depth, a.devices) in done:
          print(f"skip {method} n={n} depth={depth} devices={a.devices} (in CSV)", flush=True)
          continue
        row = _spawn(method, n, depth, a.k, a.devices, out_dir, a.memory_budget, a.timeout)
        _append(a.csv, row)
        print(json.dumps(row), flush=True)
  print(summary(a.csv, out_dir))


if __name__ == "__main__":
  main()
