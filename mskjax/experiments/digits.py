"""Digits: GD, tuned SGD-momentum, Adam and Muon vs MSK-preconditioned GD (flatten the top k).

Command::

  python -m mskjax.run configs/digits.py:quick     # < 60 s on a 2-core CPU
  python -m mskjax.run configs/digits.py              # full, ~4 min on an idle 2-core CPU
  python -m mskjax.run configs/digits.py target_scale=0.01 --tag linear  # near-linear regime

Set-up. sklearn's 8x8 digits (``mskjax.data.load_digits``: each image scaled to unit norm,
stratified 80/20 split); the first ``n_train`` training images and the whole test split
(360 images). Regression on one-hot labels (``labels``) times ``target_scale``, 10 outputs,
loss ½‖f(X) − Y‖² (no 1/n). Network: ``depth`` hidden ReLU layers of ``width`` units, NTK
parameterisation, biases (``b_std``), antisymmetric zero-output init (f₀ = 0). The analytic
NTK Gram matrix K on the training inputs gives λ₁ ≥ λ₂ ≥ … and the MSK spectrum
``flatten`` on the top k (g(λ_i) = λ_{k+1}, i ≤ k).

Methods (full batch, same initial parameters):

* **GD** — ``optax.sgd(η)`` on ½‖r‖², η = ``gd_factor``/λ₁;
* **SGD-m** — ``optax.sgd(lr, momentum=0.9)`` on ½‖r‖², lr = factor/λ₁, factor from
  ``sgdm_factors``;
* **Adam** — ``optax.adam(lr)``, lr from ``adam_lrs``;
* **Muon** — ``optax.contrib.muon(lr)``, lr from ``muon_lrs``;
* **PGD k** — ``optax.sgd(η)`` on ``mskjax.msk_mse_loss`` (½ rᵀ S r, same cost as GD),
  η = factor/λ_max(K_g) = factor/λ_{k+1}, factor from ``pgd_factors`` (1/λ_{k+1} is the
  linearized optimum but a finite network can be unstable there);
* **msk_sgd_jvp k** — ``mskjax.function_space.msk_sgd_jvp`` (parameter-space preconditioner, one extra JVP +
  VJP per step) on ½‖r‖² at the step chosen for PGD with the smallest k (``msk_sgd_jvp=True``).

Learning-rate choice: every grid value runs ``grid_steps`` steps; the one that reaches the
selection target ``tols[-1]`` in the fewest steps is kept (if none does: the lowest
residual at ``grid_steps``); the kept one then runs the full ``steps`` budget. The tuned
baselines' grids (SGD-m, Adam, Muon; ×≈3 apart) grow past an end while the best value is
at it (at most ``widen`` values per end, not past a diverged value), so that the best is
inside; ``lr_grid.csv`` lists every value tried.

Measured (``results.csv``, one row per method): steps to a relative train residual
‖f(X) − Y‖/‖Y‖ < tol for each tol in ``tols`` (measured, and predicted at infinite width
by ``mskjax.steps_to_tolerance`` for GD and PGD at the same η), wall time to reach it
(the one loop ``mskjax.train.fit``, chunks of ``chunk`` steps, compile time excluded and
reported in ``compile_s``; PGD's time includes building its spectrum, ``spectrum_s`` = analytic Gram
+ top-(k+1) eigh), test accuracy (argmax) and test MSE ((1/m)Σ‖f(x) − y‖²) at the step the
tolerance is first met and after the full budget; for GD/PGD also the infinite-width
prediction of the final test accuracy (``mskjax.predict_gd_mse``) and the kernel
regression limit t = ∞. ``spectrum.csv``: λ₁, λ_{k+1}, λ₁/λ_{k+1} (the largest speed-up
flatten can give) and the energy of Y in the top-k eigenvectors.

Plots: ``residuals.png`` (train residual vs step, log-log, and vs wall time, every method,
infinite-width predictions dashed), ``spectrum.png`` (NTK eigenvalues and the cumulative
target energy).
"""
import time

import numpy as np

from mskjax.experiments._grid import tune_grid


def class_metrics(f, y):
  f, y = np.asarray(f), np.asarray(y)
  acc = float(np.mean(np.argmax(f, 1) == np.argmax(y, 1)))
  mse = float(np.mean(np.sum((f - y) ** 2, axis=1)))
  return acc, mse


def _log_indices(n, num=150):
  """Log-spaced unique integer indices in [0, n - 1] (always 0 and n - 1)."""
  idx = np.unique(np.concatenate([[0], np.geomspace(1, max(n - 1, 1), num).astype(int),
                                  [n - 1]]))
  return idx[idx < n]


def train_with_tols(apply_fn, params, x, y, x_test, y_test, loss_fn, tx, steps, chunk, tols,
                    desc, ctx):
  """Full-batch training in the one loop (``mskjax.train.fit``); residual of every step.

  The relative train residual of every step is the loss's per-step ``aux``; training stops
  inside the compiled loop at the first step below each tol in turn (the test metrics are
  evaluated on the parameters of that step, then training resumes from that state) and
  on divergence (residual > 1e3 or not finite). Returns a JSON-able dict: per-step
  relative residual (subsampled), cumulative training wall time at those steps, the step
  each tol is first met with the test metrics there, and the final test metrics.
  """
  import jax
  import jax.numpy as jnp
  from mskjax import train as T

  ynorm = float(jnp.linalg.norm(y))

  def loss(p, batch, idx):
    f = apply_fn(p, batch[0])
    return loss_fn(f, batch[1]), {"res": jnp.linalg.norm(f - batch[1]) / ynorm}

  predict = jax.jit(apply_fn)
  state, parts, elapsed, compile_s = None, [], 0.0, 0.0
  hits, diverged = {}, False
  for tol in list(tols) + [None]:          # None: the rest of the budget
    done = 0 if state is None else int(state.step)
    if done >= steps or diverged:
      break
    res = T.fit(loss, params if state is None else None, tx, (x, y), steps=steps - done,
                has_aux=True, state=state, chunk=chunk,
                stop_below={"res": 0.0 if tol is None else tol}, stop_above={"res": 1e3},
                progress=ctx.show_progress, desc=desc)
    state = res.state
    rec = dict(res.records)
    rec["time"] = rec["time"] + elapsed
    parts.append(rec)
    elapsed += res.train_s
    compile_s += res.compile_s
    if res.stopped == "stop_above:res":
      diverged = True
    elif res.stopped is not None:          # the parameters of the first step below tol
      hits[tol] = (int(state.step), class_metrics(predict(state.params, x_test), y_test))
  step_all = np.concatenate([r["step"] for r in parts])
  _, first = np.unique(step_all, return_index=True)   # a stopping step is run again next
  res_all = np.concatenate([r["res"] for r in parts])[first]
  times = np.concatenate([r["time"] for r in parts])[first]
  f_final = np.asarray(predict(state.params, x))
  final_res = float(np.linalg.norm(f_final - np.asarray(y)) / ynorm) if not diverged \
      else float("nan")
  rec = dict(compile_s=compile_s, train_s=elapsed, steps_run=int(len(res_all)),
             diverged=diverged, final_res=final_res, min_res=float(np.nanmin(res_all)))
  # time at "step t" = wall time of the t updates before it (step 0: 0 s)
  t_of = lambda t: 0.0 if t == 0 else float(times[t - 1])
  for tol in tols:
    if tol in hits:
      t, (acc, mse) = hits[tol]
      rec[f"steps@{tol}"], rec[f"time@{tol}"] = t, t_of(t)
      rec[f"acc@{tol}"], rec[f"mse@{tol}"] = acc, mse
    else:
      rec[f"steps@{tol}"] = None
  if not diverged:
    acc, mse = class_metrics(predict(state.params, x_test), y_test)
    rec["acc_final"], rec["mse_final"] = acc, mse
  idx = _log_indices(len(res_all))
  rec["curve_t"] = idx.tolist()
  rec["curve_res"] = [float(v) for v in res_all[idx]]
  rec["curve_time"] = [t_of(int(t)) for t in idx]
  return rec


def _times3(edge, inner, direction):
  """The tuned baselines' grids grow ×3 past an end (0.03 → 0.09): the spacing the
  committed ``lr_grid`` files were run with."""
  return float(f"{edge * 3.0 ** direction:.6g}")


def run(config, ctx):
  import jax
  import jax.numpy as jnp
  import matplotlib.pyplot as plt
  import optax

  import mskjax
  from mskjax import data, kernels, nets, function_space

  s = config
  tols = tuple(float(t) for t in s.tols)
  sel_tol = tols[-1]
  ds = data.load_digits(labels=s.labels, seed=s.seed)
  x = jnp.asarray(ds.x_train[:s.n_train])
  y = s.target_scale * jnp.asarray(ds.y_train[:s.n_train])
  x_test = jnp.asarray(ds.x_test)
  y_test = s.target_scale * jnp.asarray(ds.y_test)
  spec = nets.MLPSpec(depth=s.depth, width=s.width, activation="relu", b_std=s.b_std,
                      out_dim=y.shape[1])
  net = nets.make_network(spec, antisymmetric=True)
  variables = nets.init_zero_output(net.model, jax.random.PRNGKey(s.seed), x)
  params = variables["params"]
  apply_fn = lambda p, a: net.model.apply({"params": p}, a)
  ctx.print(f"digits: n_train={x.shape[0]}, n_test={x_test.shape[0]}, depth={s.depth}, "
            f"width={s.width}, params={sum(a.size for a in jax.tree.leaves(params))}")

  # ---- analytic NTK, its spectrum (timed: part of PGD's cost) ------------------------
  g = mskjax.modifiers.flatten()

  def build(k):
    K = kernels.gram(net.kernel_fn, x)
    sp = mskjax.msk_spectrum(K, g, k)
    jax.block_until_ready(sp.vectors)
    return K, sp

  spectra, spec_time = {}, {}
  for k in s.ks:
    t0 = time.perf_counter()
    build(k)                                  # first call: includes tracing/compilation
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    K, spectra[k] = build(k)
    spec_time[k] = (time.perf_counter() - t0, cold)
  K = kernels.gram(net.kernel_fn, x)
  K_test = kernels.gram(net.kernel_fn, x_test, x)
  lam, U = np.linalg.eigh(np.asarray(K))
  lam, U = lam[::-1], U[:, ::-1]
  c2 = np.sum((U.T @ np.asarray(y)) ** 2, axis=1)
  energy = np.cumsum(c2) / np.sum(c2)
  lam1 = float(lam[0])
  spec_rows = []
  for k in s.ks:
    spec_rows.append(dict(k=k, lam1=lam1, lam_k1=float(lam[k]), max_speedup=lam1 / lam[k],
                          energy_top_k=float(energy[k - 1]), spectrum_s=spec_time[k][0],
                          spectrum_cold_s=spec_time[k][1]))
    ctx.print(f"k={k}: λ₁={lam1:.4g}, λ_(k+1)={lam[k]:.4g}, λ₁/λ_(k+1)={lam1 / lam[k]:.1f}, "
              f"energy of Y in top k={energy[k - 1]:.3f}, spectrum {spec_time[k][0]:.2f} s")
  ctx.log_metrics(dict(kind="spectrum", rows=spec_rows, energy_top1=float(energy[0])))
  ctx.write_table(spec_rows, name="spectrum")

  # ---- methods ------------------------------------------------------------------------
  mse = lambda f, yy: 0.5 * jnp.sum((f - yy) ** 2)
  methods = {}   # name -> (loss, make_tx(lr), lr grid, g, k, spectrum seconds)
  methods["GD"] = (mse, optax.sgd, [s.gd_factor / lam1], None, None, 0.0)
  methods["SGD-m"] = (mse, lambda lr: optax.sgd(lr, momentum=0.9),
                      [fr / lam1 for fr in s.sgdm_factors], None, None, 0.0)
  methods["Adam"] = (mse, optax.adam, list(s.adam_lrs), None, None, 0.0)
  methods["Muon"] = (mse, optax.contrib.muon, list(s.muon_lrs), None, None, 0.0)
  tuned = ("SGD-m", "Adam", "Muon")     # grids widened until the best is inside
  for k in s.ks:
    sp = spectra[k]
    methods[f"PGD k={k}"] = (
        lambda f, yy, sp=sp: function_space.msk_mse_loss(f, yy, sp), optax.sgd,
        [fr / float(sp.max_value) for fr in s.pgd_factors], g, k, spec_time[k][0])

  def train_rec(name, loss, make_tx, lr, steps):
    return train_with_tols(apply_fn, params, x, y, x_test, y_test, lambda f, yy: loss(f, yy), make_tx(lr),
                  steps, s.chunk, tols, f"{name} lr={lr:.3g}", ctx)

  def score(rec):
    st = rec.get(f"steps@{sel_tol}")
    return (0, st) if st is not None else (1, rec["min_res"] if np.isfinite(
        rec["min_res"]) else np.inf)

  grid_rows, best = [], {}
  for name, (loss, make_tx, lrs, gg, k, _) in methods.items():
    if len(lrs) == 1:
      best[name] = lrs[0]
      continue

    def try_lr(lr, name=name, loss=loss, make_tx=make_tx):
      rec = ctx.cached(f"grid/{name}/lr={lr:.6g}",
                       lambda: train_rec(name, loss, make_tx, lr, s.grid_steps))
      grid_rows.append({"method": name, "lr": lr, "grid_steps": s.grid_steps,
                        **{f"steps@{t}": rec.get(f"steps@{t}") for t in tols},
                        "res@grid_end": rec["final_res"], "diverged": rec["diverged"]})
      return score(rec), rec["diverged"]
    best[name] = tune_grid(try_lr, lrs, s.widen if name in tuned else 0, _times3,
                           log=ctx.print, name=name)
  if grid_rows:
    ctx.write_table(grid_rows, name="lr_grid")
  if s.msk_sgd_jvp:
    # Kept as run for the committed results: the older data-dependent form with the
    # *analytic* spectrum, which diverges here
    # (docs/pitfalls.md#a-stored-spectrum-and-a-moving-kernel). The recommended path is
    # mskjax.msk_directions + mskjax.msk_sgd (mskjax/experiments/mnist1d.py); adding it
    # here would be a new arm with new results, not a rename.
    k0 = min(s.ks)
    methods[f"msk_sgd_jvp k={k0}"] = (mse, lambda lr, sp=spectra[k0]: function_space.msk_sgd_jvp(
        lr, apply_fn, x, sp), None, g, k0, spec_time[k0][0])
    best[f"msk_sgd_jvp k={k0}"] = best[f"PGD k={k0}"]

  ts_pred = np.unique(np.concatenate([[0], np.geomspace(1, s.steps, 80).astype(int)]))
  rows, curves = [], {}
  for name, (loss, make_tx, _, gg, k, spec_s) in methods.items():
    lr = best[name]
    rec = ctx.cached(f"full/{name}/lr={lr:.6g}",
                     lambda: train_rec(name, loss, make_tx, lr, s.steps))
    row = dict(method=name, lr=lr, width=s.width)
    pred = None
    if name not in tuned:
      def compute_pred():
        out = {}
        for t in tols:
          out[f"pred@{t}"] = mskjax.steps_to_tolerance(K, y, gg, k, learning_rate=lr, tol=t,
                                                       max_steps=10 ** 7)
        p = mskjax.predict_gd_mse(K, y, gg, k, jnp.asarray(ts_pred), learning_rate=lr,
                                  K_test_train=K_test)
        out["pred_curve_res"] = (np.linalg.norm(np.asarray(p.train) - np.asarray(y)[None],
                                                axis=(1, 2)) / np.linalg.norm(y)).tolist()
        out["pred_acc_final"], out["pred_mse_final"] = class_metrics(p.test[-1], y_test)
        return out
      pred = ctx.cached(f"pred/{name}/lr={lr:.6g}", compute_pred)
    for t in tols:
      st = rec.get(f"steps@{t}")
      row[f"steps@{t}"] = st if st is not None else f"> {rec['steps_run']} (not reached)"
      if pred is not None:
        row[f"pred@{t}"] = pred[f"pred@{t}"]
      if st is not None:
        row[f"wall_s@{t}"] = rec[f"time@{t}"] + spec_s
    row["spectrum_s"] = spec_s
    row["compile_s"] = rec["compile_s"]
    row[f"test_acc@{sel_tol}"] = rec.get(f"acc@{sel_tol}", "")
    row[f"test_mse@{sel_tol}"] = rec.get(f"mse@{sel_tol}", "")
    row["final_res"] = rec["final_res"]
    row["test_acc_final"] = rec.get("acc_final", "diverged")
    row["test_mse_final"] = rec.get("mse_final", "")
    if pred is not None:
      row["pred_test_acc_final"] = pred["pred_acc_final"]
      row["pred_test_mse_final"] = pred["pred_mse_final"]
    rows.append(row)
    curves[name] = (rec, pred, spec_s)
  # the common limit of GD and PGD (kernel regression, t = ∞)
  p_inf = mskjax.predict_gd_mse(K, y, None, None, jnp.inf, K_test_train=K_test)
  acc_inf, mse_inf = class_metrics(p_inf.test, y_test)
  rows.append(dict(method="kernel regression (t=∞)", pred_test_acc_final=acc_inf,
                   pred_test_mse_final=mse_inf))
  ctx.log_metrics(dict(kind="kernel_regression", acc=acc_inf, mse=mse_inf))
  cols = ["method", "lr", "width"]
  for t in tols:
    cols += [f"steps@{t}", f"pred@{t}", f"wall_s@{t}"]
  cols += ["spectrum_s", "compile_s", f"test_acc@{sel_tol}", f"test_mse@{sel_tol}",
           "final_res", "test_acc_final", "test_mse_final", "pred_test_acc_final",
           "pred_test_mse_final"]
  ctx.write_table(rows, columns=cols)

  # ---- plots ----------------------------------------------------------------------------
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
  for i, (name, (rec, pred, spec_s)) in enumerate(curves.items()):
    color = f"C{i}"
    t = np.asarray(rec["curve_t"])
    r = np.array([float(v) for v in rec["curve_res"]])   # 'nan'/'inf' stored as strings
    r = np.where(np.isfinite(r), r, np.nan)
    axes[0].loglog(t + 1, r, color=color, label=f"{name} (η={best[name]:.3g})")
    axes[1].loglog(np.asarray(rec["curve_time"]) + spec_s + 1e-3, r, color=color, label=name)
    if pred is not None and not name.startswith("msk_sgd_jvp"):
      axes[0].loglog(ts_pred + 1, pred["pred_curve_res"], "--", color=color, lw=1, alpha=0.8)
  for ax in axes:
    for tol in tols:
      ax.axhline(tol, color="gray", lw=0.8, ls=":")
    ax.set_ylabel("‖f(X) − Y‖ / ‖Y‖")
    ax.set_ylim(1e-3, 10)       # diverging runs leave the axis at the top
  axes[0].set(xlabel="step + 1", title="train residual (dashed: infinite width)")
  axes[1].set(xlabel="wall time [s] (PGD: + spectrum time)", title="vs wall time")
  axes[0].legend(fontsize=7)
  fig.suptitle(f"digits, n={x.shape[0]}, width {s.width}, depth {s.depth}, "
               f"Y scale {s.target_scale}")
  ctx.savefig(fig, "residuals")

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
  ii = np.arange(1, len(lam) + 1)
  axes[0].loglog(ii, np.maximum(lam, 1e-12), ".", ms=3)
  axes[1].semilogx(ii, energy)
  for k in s.ks:
    for ax in axes:
      ax.axvline(k + 1, color="C3", lw=0.8, ls="--")
  axes[0].set(xlabel="i", ylabel="λ_i", title="analytic NTK eigenvalues (dashed: k+1)")
  axes[1].set(xlabel="i", ylabel="energy of Y in top i", title="cumulative target energy")
  ctx.savefig(fig, "spectrum")
