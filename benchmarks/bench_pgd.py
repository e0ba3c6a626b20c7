"""PGD benchmarks: per-step cost of the MSK entry points, and wall time to a target loss.

Run:  python -m benchmarks.bench_pgd            (add --quick for a smoke run)

1. Per-step wall time of one jitted full-batch step (median over repeats, compile excluded):
   optax.sgd on ½‖r‖² (baseline), optax.sgd on msk_mse_loss (target <= 1.1x),
   msk_sgd_jvp on ½‖r‖² (one extra JVP + VJP; target <= 2.2x).
2. Wall time until the relative train residual ‖f(X) − Y‖/‖Y‖ < tol for PGD (optax.sgd on
   msk_mse_loss, flatten on the top k of the empirical NTK at init; the spectrum's cost is
   counted) vs optax.sgd and optax.adam, each at its best learning rate from a small grid.
   Steps run in jitted chunks of `chunk` steps (lax.scan); compile time is excluded.
"""
from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)  # the PGD tables were measured in float64
import jax.numpy as jnp  # noqa: E402
import numpy as np
import optax
from jax import lax

import mskjax
from mskjax import data, kernels, nets, optim


def _setup(task, width, b_std=0.1):
  if task.startswith("circle"):
    n = 64 if task == "circle" else int(task.split(":")[1])
    x, th = data.circle(n)
    y_of = lambda j: data.fourier_target(th, j)
    net = nets.make_network(nets.MLPSpec(depth=1, width=width, b_std=b_std), antisymmetric=True)
  else:
    ds = data.load_digits(labels="onehot")
    x, y = ds.x_train, ds.y_train
    y_of = lambda j: y
    net = nets.make_network(nets.MLPSpec(depth=1, width=width, b_std=b_std, out_dim=10),
                            antisymmetric=True)
  variables = nets.init_zero_output(net.model, jax.random.PRNGKey(0), x)
  apply_fn = lambda p, a: net.model.apply({"params": p}, a)
  return net, x, y_of, variables, apply_fn


def _n_params(params):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def _step_fns(apply_fn, x, y, spec, lr):
  mse = lambda p: 0.5 * jnp.sum((apply_fn(p, x) - y) ** 2)
  msk = lambda p: optim.msk_mse_loss(apply_fn(p, x), y, spec)

  def make(loss, tx):
    @jax.jit
    def step(p, s):
      g = jax.grad(loss)(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s
    return step, tx

  return {
      "sgd(mse)": make(mse, optax.sgd(lr)),
      "sgd(msk_mse_loss)": make(msk, optax.sgd(lr)),
      "msk_sgd_jvp(mse)": make(mse, optim.msk_sgd_jvp(lr, apply_fn, x, spec)),
  }


def per_step(task, width, k, steps=50, repeats=5):
  net, x, y_of, variables, apply_fn = _setup(task, width)
  y = y_of(8)
  K = kernels.gram(net.kernel_fn, x, block_size=512)
  spec = mskjax.msk_spectrum(K, mskjax.modifiers.flatten(), k)
  params = variables["params"]
  out = {}
  for name, (step, tx) in _step_fns(apply_fn, x, y, spec, 1e-6).items():
    p, s = params, tx.init(params)
    p, s = step(p, s)
    jax.block_until_ready(p)
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      for _ in range(steps):
        p, s = step(p, s)
      jax.block_until_ready(p)
      times.append((time.perf_counter() - t0) / steps)
    out[name] = float(np.median(times))
  return dict(task=task, n=int(x.shape[0]), width=width, params=_n_params(params), k=k,
              **out)


def _time_to_tol(apply_fn, params, x, y, loss, tx, tol, max_steps, chunk):
  ynorm = float(jnp.linalg.norm(y))

  def body(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    res = jnp.linalg.norm(apply_fn(p, x) - y) / ynorm
    return (p, s), res

  run = jax.jit(lambda c: lax.scan(body, c, None, length=chunk))
  carry = (params, tx.init(params))
  run.lower(carry).compile()  # compile excluded from the timing
  run(carry)                   # warm the cache path
  t0 = time.perf_counter()
  done = 0
  while done < max_steps:
    carry, res = run(carry)
    res = np.asarray(res)
    if not np.all(np.isfinite(res)):
      return None, None
    hit = np.nonzero(res < tol)[0]
    if hit.size:
      return time.perf_counter() - t0, done + int(hit[0]) + 1
    done += chunk
  return None, None


def time_to_target(task, j, width, k, tol, max_steps, chunk, grids, empirical=True):
  net, x, y_of, variables, apply_fn = _setup(task, width)
  y = y_of(j)
  params = variables["params"]
  mse = lambda p: 0.5 * jnp.sum((apply_fn(p, x) - y) ** 2)
  for _ in range(2):  # the second pass is timed: compilation excluded, as for training
    t0 = time.perf_counter()
    if empirical:     # empirical NTK at init (n x n x P work; only for small n)
      K0 = kernels.empirical_ntk(net.model.apply, variables, x, block_size=512)
    else:             # analytic NTK (the empirical one of a 10-output net is too big here)
      K0 = kernels.gram(net.kernel_fn, x, block_size=512)
    spec = mskjax.msk_spectrum(K0, mskjax.modifiers.flatten(), k)
    jax.block_until_ready(spec.vectors)
    setup = time.perf_counter() - t0
  lam1 = float(jnp.linalg.eigvalsh(K0)[-1])
  msk = lambda p: optim.msk_mse_loss(apply_fn(p, x), y, spec)
  methods = {
      "pgd": (msk, lambda lr: optax.sgd(lr), [c / float(spec.max_value) for c in grids["pgd"]]),
      "sgd": (mse, lambda lr: optax.sgd(lr), [c / lam1 for c in grids["sgd"]]),
      "adam": (mse, lambda lr: optax.adam(lr), list(grids["adam"])),
  }
  rows = []
  for name, (loss, make_tx, lrs) in methods.items():
    best = None
    for lr in lrs:
      t, steps = _time_to_tol(apply_fn, params, x, y, loss, make_tx(lr), tol, max_steps, chunk)
      if t is not None:
        t = t + (setup if name == "pgd" else 0.0)
        if best is None or t < best[0]:
          best = (t, steps, lr)
    rows.append(dict(task=task, j=j, method=name, time_s=None if best is None else best[0],
                     steps=None if best is None else best[1],
                     lr=None if best is None else best[2]))
  return rows, setup


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="small smoke run")
  ap.add_argument("--only", choices=["step", "circle", "digits"], default=None,
                  help="run one part only")
  ap.add_argument("--digits-tol", type=float, default=0.3,
                  help="relative train residual target on digits (0.1 is not reached in "
                       "a few thousand steps by any method at width 512)")
  ap.add_argument("--digits-steps", type=int, default=3000, help="step budget on digits")
  args = ap.parse_args(argv)
  want = lambda part: args.only in (None, part)
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"devices {jax.devices()}, float64={jax.config.jax_enable_x64}")
  print("\n### Per-step wall time (ms), one jitted full-batch step")
  configs = [("circle:256", 4096, 21), ("digits", 1024, 50)]
  if args.quick:
    configs = [("circle:64", 512, 21)]
  print("| task | n | width | params | k | sgd(mse) | sgd(msk_mse_loss) | msk_sgd_jvp(mse) "
        "| ratio msk_mse/mse | ratio msk_sgd_jvp/sgd |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for task, width, k in (configs if want("step") else []):
    r = per_step(task, width, k, steps=10 if args.quick else 50)
    print(f"| {task} | {r['n']} | {width} | {r['params']} | {k} | {1e3 * r['sgd(mse)']:.3f} "
          f"| {1e3 * r['sgd(msk_mse_loss)']:.3f} | {1e3 * r['msk_sgd_jvp(mse)']:.3f} "
          f"| {r['sgd(msk_mse_loss)'] / r['sgd(mse)']:.2f} "
          f"| {r['msk_sgd_jvp(mse)'] / r['sgd(mse)']:.2f} |", flush=True)

  print("\n### Wall time to relative train residual < tol (best lr per method)")
  grids = dict(pgd=[1.0, 0.5, 0.25, 0.1], sgd=[1.0, 1.8], adam=[1e-3, 3e-3, 1e-2])
  small = dict(pgd=[1.0, 0.25], sgd=[1.0], adam=[1e-3, 1e-2])
  tasks = [("circle", 8, 4096, 21, 0.1, 6000, 50, grids, True),
           ("circle", 16, 4096, 21, 0.1, 12000, 100, grids, True),
           ("digits", 0, 512, 10, args.digits_tol, args.digits_steps, 50, small, False)]
  tasks = [t for t in tasks if want(t[0])]
  if args.quick:
    tasks = [("circle", 8, 512, 21, 0.1, 300, 50, grids, True)]
  print("| task | j | method | best lr | steps | wall s | speed-up of PGD vs this |")
  print("|---|---|---|---|---|---|---|")
  for task, j, width, k, tol, max_steps, chunk, grid, emp in tasks:
    rows, setup = time_to_target(task, j, width, k, tol, max_steps, chunk, grid, emp)
    pgd_t = rows[0]["time_s"]
    for r in rows:
      sp = "" if (r["time_s"] is None or pgd_t is None or r["method"] == "pgd") \
          else f"{r['time_s'] / pgd_t:.1f}x"
      ts = "not reached" if r["time_s"] is None else f"{r['time_s']:.3f}"
      lr = "" if r["lr"] is None else f"{r['lr']:.3g}"
      print(f"| {task} (width {width}, tol {tol}) | {j} | {r['method']} | {lr} | "
            f"{r['steps'] if r['steps'] is not None else f'>{max_steps}'} | {ts} | {sp} |",
            flush=True)
    what = "empirical NTK at init" if emp else "analytic NTK"
    print(f"(PGD time includes {setup:.2f} s for the {what} + eigh, k={k})", flush=True)


if __name__ == "__main__":
  main()
