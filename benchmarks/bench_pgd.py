"""PGD benchmarks: per-step cost of the MSK entry points, and wall time to a target loss.

Run:  python -m benchmarks.bench_pgd            (add --quick for a smoke run)

1. Per-step wall time of full-batch training in the one loop (train.fit, `steps` steps per
   compiled chunk, median over repeats, compile excluded):
   optax.sgd on ½‖r‖² (baseline), optax.sgd on msk_mse_loss (target <= 1.1x),
   msk_sgd_jvp on ½‖r‖² (one extra JVP + VJP; target <= 2.2x).
2. Wall time until the relative train residual ‖f(X) − Y‖/‖Y‖ < tol for PGD (optax.sgd on
   msk_mse_loss, flatten on the top k of the empirical NTK at init; the spectrum's cost is
   counted) vs optax.sgd and optax.adam, each at its best learning rate from a small grid.
   Steps run in the one loop (mskjax.train.fit, chunks of `chunk` steps, early stop at the
   first step below tol inside the compiled loop); compile time is excluded.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mskjax
from mskjax import data, kernels, tangents, nets, function_space
from mskjax import train as T


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
  """name -> (loss_fn for train.fit, tx)."""
  mse = lambda p, b, idx: 0.5 * jnp.sum((apply_fn(p, b[0]) - b[1]) ** 2)
  msk = lambda p, b, idx: function_space.msk_mse_loss(apply_fn(p, b[0]), b[1], spec)
  return {
      "sgd(mse)": (mse, optax.sgd(lr)),
      "sgd(msk_mse_loss)": (msk, optax.sgd(lr)),
      "msk_sgd_jvp(mse)": (mse, function_space.msk_sgd_jvp(lr, apply_fn, x, spec)),
  }


def per_step(task, width, k, steps=50, repeats=5):
  """Median over repeats of (training time of `steps` full-batch steps in train.fit)/steps."""
  net, x, y_of, variables, apply_fn = _setup(task, width)
  y = y_of(8)
  K = kernels.gram(net.kernel_fn, x, block_size=512)
  spec = mskjax.msk_spectrum(K, mskjax.modifiers.flatten(), k)
  params = variables["params"]
  out = {}
  for name, (loss, tx) in _step_fns(apply_fn, x, y, spec, 1e-6).items():
    res = T.fit(loss, params, tx, (x, y), steps=1, chunk=steps)   # compiles
    times = []
    for _ in range(repeats):
      res = T.fit(loss, None, tx, (x, y), steps=steps, chunk=steps, state=res.state)
      times.append(res.train_s / steps)
    out[name] = float(np.median(times))
  return dict(task=task, n=int(x.shape[0]), width=width, params=_n_params(params), k=k,
              **out)


def _time_to_tol(apply_fn, params, x, y, loss, tx, tol, max_steps, chunk):
  """Wall time and steps until ‖f(X) − Y‖/‖Y‖ < tol, through the one loop (train.fit).

  The residual of every step is the loss's aux; fit stops inside the compiled loop at the
  first step below tol (or on divergence) and reports its training time with the
  compilation excluded. Returns (None, None) when tol is not reached in max_steps.
  """
  ynorm = float(jnp.linalg.norm(y))

  def objective(p, batch, idx):
    f = apply_fn(p, batch[0])
    return loss(p), {"res": jnp.linalg.norm(f - batch[1]) / ynorm}

  res = T.fit(objective, params, tx, (x, y), steps=max_steps, has_aux=True, chunk=chunk,
              stop_below={"res": tol}, stop_above={"res": 1e30})
  if res.stopped != "stop_below:res":
    return None, None
  return res.train_s, int(res.state.step)


def time_to_target(task, j, width, k, tol, max_steps, chunk, grids, empirical=True):
  net, x, y_of, variables, apply_fn = _setup(task, width)
  y = y_of(j)
  params = variables["params"]
  mse = lambda p: 0.5 * jnp.sum((apply_fn(p, x) - y) ** 2)
  for _ in range(2):  # the second pass is timed: compilation excluded, as for training
    t0 = time.perf_counter()
    if empirical:     # empirical NTK at init (n x n x P work; only for small n)
      K0 = tangents.empirical_ntk(net.model.apply, variables, x, block_size=512)
    else:             # analytic NTK (the empirical one of a 10-output net is too big here)
      K0 = kernels.gram(net.kernel_fn, x, block_size=512)
    spec = mskjax.msk_spectrum(K0, mskjax.modifiers.flatten(), k)
    jax.block_until_ready(spec.vectors)
    setup = time.perf_counter() - t0
  lam1 = float(jnp.linalg.eigvalsh(K0)[-1])
  msk = lambda p: function_space.msk_mse_loss(apply_fn(p, x), y, spec)
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
  # The PGD tables were measured in float64: the program (not the import) turns it on.
  jax.config.update("jax_enable_x64", True)
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
  print("\n### Per-step wall time (ms), full-batch steps in the one loop (train.fit)")
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
