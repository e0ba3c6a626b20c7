"""Quickstart: GD vs MSK-preconditioned GD on high-frequency targets on the circle.

Command (the README's main job)::

  python -m mskjax.run configs/quickstart.py            # ~30 s on an idle 2-core CPU
  python -m mskjax.run configs/quickstart.py:quick   # < 60 s

Data: n equispaced points on S¹, targets cos(jθ). Network: 2-layer ReLU MLP in NTK
parameterisation. The analytic NTK gives K; the MSK flattens its top-k eigenvalues
(`modifiers.flatten()`, k at a block boundary of the S¹ spectrum). For each j the table
lists the iterations to reach a relative train residual < tol for GD and PGD, predicted
from the spectrum (infinite width) and measured on a finite network (width in the
table), and the relative test error where each method stops (PGD stops after 1-4 steps
with a smaller residual, hence its smaller error; trained to convergence both reach the
same solution — configs/same_solution.py). The finite network uses targets of amplitude
``amplitude`` and, for PGD, the fixed preconditioner ``mskjax.msk_sgd`` with the top-k
directions of its own empirical NTK at init (see ``_finite_network``).
"""
import functools

import numpy as np


def run(config, ctx):
  import jax
  import matplotlib.pyplot as plt

  import mskjax
  from mskjax import data, kernels, nets

  spec = nets.MLPSpec(depth=config.depth, width=config.width, activation="relu",
                      b_std=config.b_std)
  net = nets.make_network(spec, antisymmetric=True)
  x, theta = data.circle(config.n)
  x_test, theta_test = data.circle(config.n_test, equispaced=False,
                                   key=jax.random.PRNGKey(config.seed + 1))
  K = kernels.gram(net.kernel_fn, x)
  K_test = kernels.gram(net.kernel_fn, x_test, x)
  g = mskjax.modifiers.flatten()
  eig = mskjax.eigh_desc(K)   # the one diagonalisation of K, shared by every call below
  spectrum = mskjax.msk.msk_spectrum_from_eigenpairs(eig, g, config.k)
  lam = np.asarray(eig.values)
  eta_gd = mskjax.steps.kernel_step(lam[0])
  eta_pgd = mskjax.steps.kernel_step(spectrum)
  ctx.print(f"NTK spectrum: λ₁ = {lam[0]:.4g}, λ_(k+1) = {lam[config.k]:.4g}, "
            f"ratio = {lam[0] / lam[config.k]:.1f} (the largest possible speed-up)")

  finite = functools.cache(lambda: _finite_network(net, x, g, config))  # built on first use
  rows, curves = [], {}
  for j in ctx.progress(config.js, desc="targets"):
    y = data.fourier_target(theta, j)
    y_test = data.fourier_target(theta_test, j)
    # Both methods' curves span the GD iteration count, so the plot compares them.
    t_plot = min(mskjax.steps_to_tolerance(K, y, learning_rate=eta_gd, tol=config.tol,
                                           max_steps=config.max_steps, eigenpairs=eig),
                 config.max_steps)
    for method, gg, eta in (("GD", None, eta_gd), ("PGD-flatten", g, eta_pgd)):
      def compute():
        steps = mskjax.steps_to_tolerance(K, y, gg, config.k, learning_rate=eta, tol=config.tol,
                                          max_steps=config.max_steps, eigenpairs=eig)
        t_end = min(steps, config.max_steps)
        ts = np.unique(np.concatenate([np.linspace(0, t_plot, 60).astype(int), [t_end]]))
        pred = mskjax.predict_gd_mse(K, y, gg, config.k, ts, learning_rate=eta,
                                     K_test_train=K_test, eigenpairs=eig)
        at_end = int(np.searchsorted(ts, t_end))
        res = np.linalg.norm(np.asarray(pred.train) - np.asarray(y)[None], axis=(1, 2))
        res = res / np.linalg.norm(y)
        test_err = float(np.linalg.norm(pred.test[at_end] - y_test) / np.linalg.norm(y_test))
        rec = dict(j=j, method=method, eta=eta, predicted_steps=steps,
                   infinite_test_err=test_err, curve_t=ts.tolist(), curve_res=res.tolist())
        if config.train_network:
          rec.update(_train_network(finite(), x, y, x_test, y_test, gg, config, ctx))
        return rec
      rec = ctx.cached(f"j={j}/{method}", compute)
      curves[(j, method)] = rec
      row = {k: rec[k] for k in ("j", "method", "predicted_steps", "infinite_test_err")}
      if "network_steps" in rec:
        row.update(network_steps=rec["network_steps"], network_test_err=rec["network_test_err"],
                   width=config.width)
      rows.append(row)
  for j in config.js:
    gd, pgd = curves[(j, "GD")], curves[(j, "PGD-flatten")]
    ctx.log_metrics(dict(j=j, predicted_speedup=gd["predicted_steps"] / max(pgd["predicted_steps"], 1)))
  ctx.write_table(rows)

  fig, axes = plt.subplots(1, len(config.js), figsize=(4.4 * len(config.js), 3.6), squeeze=False,
                           layout="constrained")
  for ax, j in zip(axes[0], config.js):
    for method, color in (("GD", "C0"), ("PGD-flatten", "C3")):
      rec = curves[(j, method)]
      floor = 1e-4  # PGD can solve the modified directions in one step: keep the axis readable
      ax.semilogy(rec["curve_t"], np.maximum(rec["curve_res"], floor), color=color,
                  label=f"{method} (infinite width)")
      if "network_curve_t" in rec:
        ax.semilogy(rec["network_curve_t"], np.maximum(rec["network_curve_res"], floor), "o",
                    ms=3, color=color, alpha=0.6, label=f"{method} (width {config.width})")
    ax.axhline(config.tol, color="gray", lw=0.8, ls="--")
    ax.set(title=f"target cos({j}θ)", xlabel="iteration", ylabel="‖r_t‖ / ‖y‖",
           ylim=(floor / 2, 2))
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(f"GD vs MSK-PGD (flatten top k={config.k}), n={config.n} points on S¹")
  ctx.savefig(fig, "residuals")


def _finite_network(net, x, g, config):
  """The finite network's set-up, built once per run (lazily: a resumed run may skip it).

  Zero-output (antisymmetric) init, and the network's own empirical NTK K₀ at init: GD
  steps at η = 1/λ₁(K₀); PGD uses the top-k parameter-space directions of K₀
  (``mskjax.msk_directions``) and the MSK spectrum of K₀ for its step (flatten at k = 21
  steps at η = 1/λ₂₂, stable only if the preconditioner matches the network's kernel to
  ≪ λ₂₂; the analytic one is off by O(1/√width)).
  """
  import jax

  import mskjax
  from mskjax import tangents, nets

  variables = nets.init_zero_output(net.model, jax.random.PRNGKey(config.seed), x)
  K0 = tangents.empirical_ntk(net.model.apply, variables, x)
  spec0 = mskjax.msk_spectrum(K0, g, config.k)
  directions = mskjax.msk_directions(net.model.apply, variables, x, g, config.k,
                                     method="dense")
  return dict(params=variables["params"], directions=directions,
              apply_fn=lambda p, a: net.model.apply({"params": p}, a),
              eta_gd=mskjax.steps.kernel_step(mskjax.eigh_top(K0, 1).values[0]),
              spec_pgd=spec0, eta_pgd=mskjax.steps.kernel_step(spec0))


def _train_network(finite, x, y, x_test, y_test, g, config, ctx):
  """Train the finite network (width ``config.width``) with optax.sgd (GD) or msk_sgd (PGD).

  Same set-up as the infinite-width rows, with the two measured finite-width caveats of
  tests/test_train.py: targets are scaled by ``config.amplitude`` (residual ratios, hence
  iteration counts, are scale-free in the linearized model; a small amplitude keeps the
  width-``width`` network linear), and both methods step with the network's own empirical
  NTK at init (:func:`_finite_network`).
  """
  import numpy as np
  import optax

  import mskjax
  from mskjax import train as T

  apply_fn = finite["apply_fn"]
  if g is None:
    eta = finite["eta_gd"]
    tx = optax.sgd(eta)
  else:
    eta = finite["eta_pgd"]
    # The fixed preconditioner P of the network's own empirical NTK at init: with its
    # exact top-k directions P Jᵀ r = Jᵀ S r, the paper's PGD
    # (docs/theory.md#the-preconditioner-p-parameter-space); the small target amplitude
    # keeps the weights, hence J, near their initial values, so P stays exact.
    tx = mskjax.msk_sgd(eta, finite["directions"])
  amp = config.amplitude
  y_s, yt_s = amp * y, amp * y_test
  # Stop at ‖r‖ < tol‖y‖, i.e. loss ½‖r‖² < ½ tol²‖y‖².
  res = T.train(apply_fn, finite["params"], tx, x, y_s, steps=config.max_steps,
                progress=ctx.show_progress, desc="GD" if g is None else "PGD",
                stop_below=0.5 * (config.tol * float(np.linalg.norm(y_s))) ** 2)
  rel = np.sqrt(2.0 * res.loss) / float(np.linalg.norm(y_s))
  hit = np.nonzero(rel < config.tol)[0]
  steps = int(hit[0]) if hit.size else None
  test_err = float(np.linalg.norm(np.asarray(apply_fn(res.state.params, x_test)) - yt_s)
                   / np.linalg.norm(yt_s))
  idx = np.unique(np.linspace(0, len(rel) - 1, 40).astype(int))
  return dict(network_steps=steps, network_test_err=test_err, network_eta=eta,
              network_curve_t=idx.tolist(), network_curve_res=rel[idx].tolist())
