"""GD and MSK-preconditioned GD reach the same solution (finite and infinite width).

Command::

  python -m mskjax.run configs/same_solution.py              # full, ~15-25 min on a loaded 2-core CPU
  python -m mskjax.run configs/same_solution.py:quick     # < 60 s (S¹ only, width 1024)

Claim (Geifman et al., arXiv:2307.14531, §4): PGD changes the speed at which each
eigendirection is learned but not the end point. As t → ∞ both GD and PGD interpolate
the training data with the kernel-regression solution f_∞(x) = k(x, X) K⁻¹ Y (f₀ = 0),
for every modifier g (K S (K S)⁻¹ = I).

Set-up. 2-layer ReLU network, NTK parameterisation, b_std = 0.1 (every frequency has a
positive NTK eigenvalue), antisymmetric zero-output init, width ``width``.

* task ``S1``: n = 64 equispaced points on the circle, y = Σ_j cos(jθ) over ``s1_freqs``,
  test points on an offset grid of ``n_test`` angles (none is a training point);
* task ``S2``: n = ``s2_n`` random points on S², y = Σ_l zonal harmonic of degree l over
  ``s2_degrees``, ``n_test`` random test points.

Methods (each trained to convergence: 1.5 × the analytic ``steps_to_tolerance`` at
tol = ``conv_tol`` on the empirical NTK, at least ``min_steps``, capped at ``max_steps``
(``s2_max_steps`` for S²)): GD (``optax.sgd``, η = 1/λ_max of the
empirical NTK at init) and PGD for each g in ``modifiers`` with ``msk_sgd_tracking``, plus flatten
with ``msk_mse_loss`` (the loss ½ rᵀ S r). PGD's directions and η = 1/λ_max(K_g) come
from the empirical NTK at initialisation (as in tests/test_train.py; the analytic
eigenpairs are unstable for steps η ≫ 1/λ₁ at testable widths).

Table ``results.csv`` (one row per task and method):

* ``train_residual``: ‖f(X) − Y‖/‖Y‖ at the end;
* ``rel_diff_to_GD``: ‖f_PGD − f_GD‖/‖f_GD‖ on the test points (both at the end);
* ``finite_width_err``: ‖f − f_∞‖/‖f_∞‖ on the test points, f_∞ = kernel regression with
  the analytic NTK = ``predict_gd_mse(K, Y, None, None, t=jnp.inf)``;
* ``inf_width_diff``: the infinite-width statement, ‖f_∞^g − f_∞‖/‖f_∞‖ with
  f_∞^g = ``predict_gd_mse(K, Y, g, k, t=jnp.inf)`` (for GD: f_∞ against a direct
  ``np.linalg.solve`` of K α = Y) — round-off, ~1e-12.

Plots: ``predictions_s1.png`` (test predictions along the circle: GD, every PGD, f_∞ and
the target) and ``distance_over_training.png`` (‖f_t − f_GD(T)‖/‖f_GD(T)‖ and
‖f_t − f_∞‖/‖f_∞‖ on the test points against the step, per method and task).
"""
import numpy as np


def _rel(a, b):
  a, b = np.asarray(a, float), np.asarray(b, float)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run(config, ctx):
  import jax
  import jax.numpy as jnp
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import optax

  import mskjax
  from mskjax import data, kernels, tangents, nets
  from mskjax import train as T

  s = config
  net = nets.make_network(nets.MLPSpec(depth=1, width=s["width"], b_std=config.b_std),
                          antisymmetric=True)
  apply_fn = lambda p, a: net.model.apply({"params": p}, a)  # noqa: E731
  rows, curves, s1_plot = [], {}, None

  for task in s["tasks"]:
    if task == "S1":
      x, th = data.circle(config.s1_n)
      th_t = 2 * np.pi * (np.arange(config.n_test) + 0.5) / config.n_test
      x_t = jnp.stack([jnp.cos(th_t), jnp.sin(th_t)], 1)
      y = config.amp * sum(data.fourier_target(th, j) for j in config.s1_freqs)
      y_t = config.amp * sum(data.fourier_target(jnp.asarray(th_t), j) for j in config.s1_freqs)
      k = config.s1_k
    elif task == "S2":
      x = data.sphere(config.s2_n, 3, jax.random.PRNGKey(config.seed + 1))
      x_t = data.sphere(config.n_test, 3, jax.random.PRNGKey(config.seed + 2))
      y = config.amp * sum(data.zonal_harmonic_target(x, l) for l in config.s2_degrees)
      y_t = config.amp * sum(data.zonal_harmonic_target(x_t, l) for l in config.s2_degrees)
      k = config.s2_k
    else:
      raise ValueError(f"unknown task {task!r}: use S1 or S2")
    K = kernels.gram(net.kernel_fn, x)
    Kt = kernels.gram(net.kernel_fn, x_t, x)
    k = mskjax.spectrum.round_k_to_block(np.asarray(mskjax.eigh_desc(K).values), k, rtol=1e-6)
    f_inf = np.asarray(mskjax.predict_gd_mse(K, y, None, None, jnp.inf, K_test_train=Kt).test)
    f_solve = np.asarray(Kt) @ np.linalg.solve(np.asarray(K), np.asarray(y))
    variables = nets.init_zero_output(net.model, jax.random.PRNGKey(config.seed), x)
    K0 = tangents.empirical_ntk(net.model.apply, variables, x, implementation=1, block_size=100)
    ctx.print(f"{task}: n={x.shape[0]}, k={k}, ‖K̂₀ − K‖₂/λ₁ = "
              f"{float(jnp.linalg.norm(K0 - K, 2) / jnp.linalg.eigvalsh(K)[-1]):.3g} "
              f"(width {s['width']})")

    methods = [("GD", None, "mse")]
    methods += [(f"PGD-{m}", m, "tracking") for m in s["modifiers"]]
    if s["msk_mse_loss"] and "flatten" in s["modifiers"]:
      methods.append(("PGD-flatten (msk_mse_loss)", "flatten", "msk_mse"))

    for name, gname, how in ctx.progress(methods, desc=f"{task} methods"):
      g = None if gname is None else mskjax.modifiers.from_name(gname)

      def compute():
        if g is None:
          eta = mskjax.steps.kernel_step(jnp.linalg.eigvalsh(K0)[-1])
          tx, loss, spec0 = optax.sgd(eta), "mse", None
        else:
          spec0 = mskjax.msk_spectrum(K0, g, k)
          eta = mskjax.steps.kernel_step(spec0)
          if how == "tracking":
            # The tracking preconditioner (full batch, re-formed at every step) from the
            # exact top-k directions of the network's own empirical NTK at init: P_t Jᵀ r
            # follows Jᵀ S r while J moves (docs/theory.md#the-preconditioner-p-parameter-space),
            # the form for full-batch MSE at the large steps MSK allows.
            d0 = mskjax.msk_directions(net.model.apply, variables, x, g, k,
                                       method="dense", tol=1e-6)
            tx, loss = mskjax.msk_sgd_tracking(eta, apply_fn, x, d0), "mse"
          else:
            tx = optax.sgd(eta)
            loss = lambda f, t, idx, sp=spec0: mskjax.msk_mse_loss(f, t, sp, batch_indices=idx)
        pred = mskjax.steps_to_tolerance(K0, y, g, k if g is not None else None,
                                         learning_rate=eta, tol=config.conv_tol,
                                         max_steps=10 * s["max_steps"])
        cap = s["max_steps"] if task == "S1" else s["s2_max_steps"]
        steps = int(np.clip(1.5 * pred, config.min_steps, cap))
        rec = np.unique(np.concatenate([[0], np.geomspace(1, steps, config.num_records)
                                        .astype(int), [steps]]))
        res = T.train(apply_fn, variables["params"], tx, x, y, steps=steps, loss=loss,
                      record_steps=rec, x_test=x_t, progress=False)
        f_inf_g = np.asarray(mskjax.predict_gd_mse(K, y, g, k if g is not None else None,
                                                   jnp.inf, K_test_train=Kt).test)
        return dict(eta=eta, steps=steps, predicted_steps_to_conv_tol=int(pred),
                    train_residual=_rel(res.train_predictions[-1], y),
                    record_steps=res.record_steps.tolist(),
                    test_predictions=np.asarray(res.test_predictions)[..., 0].tolist(),
                    inf_width_diff=_rel(f_inf_g, f_solve if g is None else f_inf))
      curves[(task, name)] = ctx.cached(f"{task}/{name}", compute)

    f_gd = np.asarray(curves[(task, "GD")]["test_predictions"])[-1]
    for name, gname, how in methods:
      r = curves[(task, name)]
      f_end = np.asarray(r["test_predictions"])[-1]
      rows.append(dict(task=task, method=name, k="" if gname is None else k,
                       width=s["width"], eta=r["eta"], steps=r["steps"],
                       train_residual=r["train_residual"],
                       rel_diff_to_GD=_rel(f_end, f_gd) if gname else 0.0,
                       finite_width_err=_rel(f_end, f_inf[:, 0]),
                       inf_width_diff=r["inf_width_diff"]))
    curves[(task, "f_inf")] = f_inf[:, 0]
    if task == "S1":
      s1_plot = (th_t, np.asarray(y_t)[:, 0], methods)
    ctx.log_metrics(dict(task=task, k=k, f_inf_norm=float(np.linalg.norm(f_inf)),
                         f_inf_vs_solve=_rel(f_inf, f_solve)))

  ctx.write_table(rows, columns=["task", "method", "k", "width", "eta", "steps",
                                 "train_residual", "rel_diff_to_GD", "finite_width_err",
                                 "inf_width_diff"])

  # ----------------------------------------------------------------- plots
  if s1_plot is not None:
    th_t, y_t, methods = s1_plot
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True, layout="constrained",
                             gridspec_kw=dict(height_ratios=(2, 1)))
    f_inf = curves[("S1", "f_inf")]
    axes[0].plot(th_t, y_t, color="0.6", lw=3, label="target")
    axes[0].plot(th_t, f_inf, "k-", lw=1.5, label="f_∞ (kernel regression)")
    f_gd = np.asarray(curves[("S1", "GD")]["test_predictions"])[-1]
    for i, (name, _, _) in enumerate(methods):
      f = np.asarray(curves[("S1", name)]["test_predictions"])[-1]
      axes[0].plot(th_t, f, "--" if name != "GD" else ":", color=f"C{i}", lw=1.2,
                   label=f"{name} (width {s['width']})")
      if name != "GD":
        axes[1].plot(th_t, f - f_gd, color=f"C{i}", lw=1, label=f"{name} − GD")
    axes[1].plot(th_t, f_gd - f_inf, "k:", lw=1.2, label="GD − f_∞ (finite width)")
    axes[0].set(ylabel="f(θ) on test angles", title="S¹: final test predictions")
    axes[1].set(xlabel="θ", ylabel="difference")
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].legend(fontsize=7, ncol=2)
    ctx.savefig(fig, "predictions_s1")

  tasks = s["tasks"]
  fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7), squeeze=False,
                           layout="constrained")
  for col, task in enumerate(tasks):
    f_inf = curves[(task, "f_inf")]
    f_gd = np.asarray(curves[(task, "GD")]["test_predictions"])[-1]
    names = [n for (t, n) in curves if t == task and n != "f_inf"]
    for i, name in enumerate(names):
      r = curves[(task, name)]
      st = np.asarray(r["record_steps"])
      P = np.asarray(r["test_predictions"])
      d_gd = np.linalg.norm(P - f_gd[None], axis=1) / np.linalg.norm(f_gd)
      d_inf = np.linalg.norm(P - f_inf[None], axis=1) / np.linalg.norm(f_inf)
      sel = st > 0
      sel_gd = sel & (st < st[-1]) if name == "GD" else sel   # GD's own end point: 0
      axes[0, col].loglog(st[sel_gd], d_gd[sel_gd], color=f"C{i}", label=name)
      axes[1, col].loglog(st[sel], d_inf[sel], color=f"C{i}", label=name)
    axes[0, col].set(title=f"{task}: distance to the final GD network",
                     ylabel="‖f_t − f_GD(T)‖ / ‖f_GD(T)‖ (test)")
    axes[1, col].set(title=f"{task}: distance to f_∞ (kernel regression)", xlabel="step t",
                     ylabel="‖f_t − f_∞‖ / ‖f_∞‖ (test)")
    for ax in axes[:, col]:
      ax.grid(True, which="both", alpha=0.3)
    axes[0, col].legend(fontsize=7)
  ctx.savefig(fig, "distance_over_training")
  return rows
