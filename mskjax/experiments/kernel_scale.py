"""Accuracy against n: what modifying the NTK's spectrum does to MNIST-1D test accuracy.

Command::

  python -m mskjax.run configs/kernel_scale.py --tag full
  python -m mskjax.run configs/kernel_scale.py:quick          # < 60 s (n = 500, 1000)

Set-up. MNIST-1D (``mskjax.data.load_mnist1d(num_samples=...)``): the first n training
sequences for each n in ``ns``, a validation split of ``n_val`` sequences from the *end* of
the training pool (never among the first max(ns)), ``n_test`` test sequences; one-hot
targets (10 outputs, f₀ = 0), accuracy = argmax. Kernel: the closed-form NTK of a depth-2
ReLU MLP (NTK parameterisation, ``b_std``), :func:`mskjax.kernels.mlp_kernel_fn`.

Method. Kernel gradient descent with the MSK K_g (g on the top ``k`` Gram eigenvalues, the
rest unchanged), η = 1/λ_max(K_g), predictions on validation and test points after t
steps for t in ``times`` and t = ∞ (the interpolant, the same for every g): through
``mskjax.gradient_descent_mse`` on the float64 Gram (exact eigendecomposition, one per n,
shared by every g) for n ≤ ``dense_max_n``; above it through the matrix-free
``mskjax.predict.kernel_gd_mse`` (no Gram, float32 kernel blocks, one kernel pass per
step: only t ≤ ``mf_max_t`` and t = ∞ are evaluated there).

Modifiers (``modifiers``, ``'NAME@k'`` items of :func:`mskjax.modifiers.from_spec`) chosen
to change the inductive bias, not the speed alone: ``relpow<p>`` is g(λ_i) = λ_{k+1}
(λ_i/λ_{k+1})^p (:func:`mskjax.modifiers.relative_power`): p = 0 flattens the top k
(EigenPro), p = ½ halves their log-gap to λ_{k+1}, p = 2 doubles it (a stronger spectral
bias: the top directions are learned relatively earlier and the tail later).

Stopping rules (both reported): **val** — the t of ``times`` ∪ {∞} with the best validation
accuracy (early stopping on a held-out split: the best point of each g's regularisation
path); **budget** — t = ``budget`` steps (a fixed number of kernel-GD steps, η = 1/λ_max(K_g)
each: what a fixed compute budget buys; flatten's larger step gets further along).

Outputs: ``results`` (per n and g: test accuracy at the val-best t, that t, at the budget,
at t = ∞), ``curves`` (test and validation accuracy at every t), ``accuracy_vs_n.png``.
"""
from __future__ import annotations

import math
import time

import numpy as np

_INF = float("inf")


def _data(config):
  from mskjax import data
  ds = data.load_mnist1d(num_samples=config.num_samples)
  x = np.asarray(ds.x_train, np.float64)
  y = np.asarray(ds.y_train)
  pool = x.shape[0]
  if max(config.ns) + config.n_val > pool:
    raise ValueError(f"ns/n_val: max(ns) + n_val = {max(config.ns) + config.n_val} exceeds "
                     f"the {pool} training sequences of num_samples = {config.num_samples}; "
                     "raise num_samples or lower ns/n_val.")
  if config.n_test > ds.x_test.shape[0]:
    raise ValueError(f"n_test = {config.n_test} exceeds the {ds.x_test.shape[0]} test "
                     f"sequences of num_samples = {config.num_samples}.")
  xv, yv = x[pool - config.n_val:], y[pool - config.n_val:]
  xt = np.asarray(ds.x_test[:config.n_test], np.float64)
  yt = np.asarray(ds.y_test[:config.n_test])
  return x, y, xv, yv, xt, yt


def _accuracies(pred, labels_v, labels_t, n_val):
  pred = np.asarray(pred)
  hit = np.argmax(pred, -1)
  return (float(np.mean(hit[:n_val] == labels_v)), float(np.mean(hit[n_val:] == labels_t)))


def _dense_setup(kernel_fn, x, x_eval, block):
  """(K, K_eval, eigenpairs) in float64: one Gram and one eigh per n, shared by every g."""
  import jax
  import jax.numpy as jnp
  import mskjax
  with jax.enable_x64(True):
    xj, xe = jnp.asarray(x, jnp.float64), jnp.asarray(x_eval, jnp.float64)
    K = mskjax.gram(kernel_fn, xj, block_size=block)
    Ke = mskjax.gram(kernel_fn, xe, xj, block_size=block)
    return K, Ke, mskjax.eigh_desc(K)


def _path_dense(kernel_fn, x, Y, x_eval, g, k, times, block, setup=None):
  """Eval predictions per t from the exact float64 eigendecomposition
  (``mskjax.gradient_descent_mse``, η = 1/λ_max(K_g))."""
  import jax
  import jax.numpy as jnp
  import mskjax
  K, Ke, eig = _dense_setup(kernel_fn, x, x_eval, block) if setup is None else setup
  with jax.enable_x64(True):
    kw = {} if g is None else {"tie_rtol": 0.0}
    predict_fn = mskjax.gradient_descent_mse(K, jnp.asarray(Y), g, k, eigenpairs=eig, **kw)
    # one call per t (scalar t): see mnist1d_kernels for why no t-array with a modifier
    return [np.asarray(predict_fn(jnp.asarray(t), K_test_train=Ke).test) for t in times]


def _path_matrix_free(kernel_fn, x, Y, x_eval, g, k, times, config):
  """Eval predictions per t from the matrix-free solver (K never formed; one kernel pass
  per step, so only t <= ``mf_max_t`` and t = ∞ are evaluated, the others are NaN)."""
  import jax.numpy as jnp
  from mskjax import predict
  predict_fn = predict.kernel_gd_mse(kernel_fn, np.asarray(x, np.float32),
                                     np.asarray(Y, np.float32), g, k,
                                     method="matrix_free", rtol=config.rtol,
                                     kernel_dtype=jnp.float32)
  xe = np.asarray(x_eval, np.float32)
  out = []
  for t in times:              # increasing t: the solver continues from its last iterate
    if math.isinf(t) or t <= config.mf_max_t:
      out.append(np.asarray(predict_fn(jnp.inf if math.isinf(t) else int(t), x_test=xe).test))
    else:
      out.append(None)
  return out


def run(config, ctx):
  import mskjax
  from mskjax import kernels, nets

  kernel_fn = kernels.mlp_kernel_fn(nets.MLPSpec(depth=config.depth, width=8,
                                                 b_std=config.b_std))
  x, y, xv, yv, xt, yt = _data(config)
  x_eval = np.concatenate([xv, xt])
  times = tuple(int(t) for t in config.times) + (_INF,)
  if config.budget not in config.times:
    raise ValueError(f"budget = {config.budget} must be one of times = {config.times}.")
  ctx.print(f"MNIST-1D: ns {tuple(config.ns)}, {config.n_val} validation, {config.n_test} "
            f"test; modifiers {tuple(config.modifiers)}; t in {config.times} and inf")

  rows, curves = [], []
  for n in config.ns:
    Y = np.eye(10)[y[:n]]
    setup = {}                 # the dense Gram/eigh of this n, built by the first g needing it
    for item in config.modifiers:
      g, k = mskjax.modifiers.from_spec(item)
      dense = n <= config.dense_max_n

      def compute():
        t0 = time.perf_counter()
        if dense:
          if not setup:
            setup["s"] = _dense_setup(kernel_fn, x[:n], x_eval, config.block_size)
            setup["seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
          preds = _path_dense(kernel_fn, x[:n], Y, x_eval, g, k, times, config.block_size,
                              setup["s"])
        else:
          preds = _path_matrix_free(kernel_fn, x[:n], Y, x_eval, g, k, times, config)
        acc = [(float("nan"),) * 2 if p is None else _accuracies(p, yv, yt, config.n_val)
               for p in preds]
        return dict(n=n, modifier=item, path="dense" if dense else "matrix_free",
                    val_acc=[a[0] for a in acc], test_acc=[a[1] for a in acc],
                    seconds=time.perf_counter() - t0, setup_s=setup.pop("seconds", 0.0))

      rec = ctx.cached(f"n={n}/{item}/{'dense' if dense else 'mf'}", compute)
      val = np.asarray([float(v) for v in rec["val_acc"]])
      test = np.asarray([float(v) for v in rec["test_acc"]])
      best = int(np.nanargmax(val))              # first (smallest) t at the best val acc
      ib = times.index(config.budget)
      rows.append(dict(n=n, modifier=item, path=rec["path"],
                       t_val="inf" if math.isinf(times[best]) else int(times[best]),
                       test_acc_val_t=float(test[best]), test_acc_budget=float(test[ib]),
                       test_acc_inf=float(test[-1]), seconds=float(rec["seconds"])))
      for t, a_v, a_t in zip(times, val, test):
        curves.append(dict(n=n, modifier=item, t="inf" if math.isinf(t) else int(t),
                           val_acc=float(a_v), test_acc=float(a_t)))
      ctx.print(f"n={n} {item}: test acc {rows[-1]['test_acc_val_t']:.4f} at val-best t = "
                f"{rows[-1]['t_val']}, {rows[-1]['test_acc_budget']:.4f} at t = "
                f"{config.budget}, {rows[-1]['test_acc_inf']:.4f} at t = inf "
                f"({rec['seconds']:.1f} s)")
  ctx.write_table(rows)
  ctx.write_table(curves, name="curves")
  _plot(ctx, rows, curves, config)


def _plot(ctx, rows, curves, config):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
  for item in config.modifiers:
    r = [row for row in rows if row["modifier"] == item]
    ns = [row["n"] for row in r]
    axes[0].plot(ns, [row["test_acc_val_t"] for row in r], "o-", label=item)
    axes[1].plot(ns, [row["test_acc_budget"] for row in r], "o-", label=item)
  inf = [row for row in rows if row["modifier"] == config.modifiers[0]]
  for ax in axes[:2]:
    ax.plot([row["n"] for row in inf], [row["test_acc_inf"] for row in inf], "k--",
            label="t = ∞ (every g)")
    ax.set_xscale("log")
    ax.set_xlabel("n (training points)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
  axes[0].set_title("early stopped at the validation-best t")
  axes[1].set_title(f"fixed budget: t = {config.budget} steps of 1/λ_max(K_g)")
  n_last = max(config.ns)
  for item in config.modifiers:
    c = [p for p in curves if p["n"] == n_last and p["modifier"] == item and p["t"] != "inf"]
    axes[2].plot([p["t"] for p in c], [p["test_acc"] for p in c], ".-", label=item)
  axes[2].set_xscale("log")
  axes[2].set_xlabel("t (steps of η = 1/λ_max(K_g))")
  axes[2].set_ylabel("test accuracy")
  axes[2].set_title(f"n = {n_last}: test accuracy along the path")
  axes[2].legend(fontsize=8)
  ctx.savefig(fig, "accuracy_vs_n")
