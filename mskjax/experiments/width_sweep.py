"""Finite width → infinite width: a network trained with ``msk_sgd_jvp`` vs the analytic MSK.

Command::

  python -m mskjax.run configs/width_sweep.py              # full, widths 256..16384, ~7 min
  python -m mskjax.run configs/width_sweep.py:quick     # < 60 s (widths 512, 1024, 2048)

Set-up (that of ``_rel_errors`` in tests/test_train.py): n = 64 equispaced points of S¹,
40 random test angles, target y = Σ_{j ∈ js} cos(jθ) (amplitude ``amp``), a bias-free
2-layer ReLU network (NTK parameterisation, antisymmetric zero-output init, f₀ = 0).
The analytic NTK Gram matrix K (and k(x_test, X)) gives the infinite-width predictions
``mskjax.predict_gd_mse`` at the recorded steps ``ts``. Two methods:

* GD — g = identity, η = 1/λ₁;
* PGD — ``modifiers.flatten()`` on the top k = 3 (frequencies 0 and 1 flattened to λ₄ =
  λ(j=2)), η = 1/λ₄, preconditioner from the *analytic* eigenpairs (computed once).

The finite network is trained full-batch with ``mskjax.function_space.msk_sgd_jvp(η, apply_fn, X, spectrum)``
on ½‖f(X) − y‖² (GD: the same optimiser with g/λ = 1, i.e. the identity preconditioner) in
the one loop ``mskjax.train.fit`` (every step recorded). For every width and seed
(the seed draws the initialisation) the table reports the relative distances

  train: max_t ‖f_t(X) − f_t^∞(X)‖ / ‖y‖,   test: max_t ‖f_t(X*) − f_t^∞(X*)‖ / ‖y*‖

over t ∈ ``ts``, averaged over the seeds (mean ± std), and, as their cause, the distance of
the empirical NTK at initialisation to the analytic one, ‖Θ̂₀ − Θ‖₂ / ‖Θ‖₂ (operator norm
on the training set; the Frobenius-norm ratio too). ``slopes`` table: least-squares slope of log(mean error) against
log(width) (and the range of the slopes fitted to each seed separately) (the expected rate is −1/2: Θ̂₀ − Θ is a mean over width-many random features).
Plot ``width_sweep.png``: the errors against width on log-log axes with a reference line
∝ width^(−1/2).
"""
import numpy as np


def make_trainer(apply_fn, x, y, x_test, steps):
  """``train(params, eta, spectrum) -> (train, test) predictions at steps 0..steps``.

  Full-batch ``mskjax.function_space.msk_sgd_jvp`` on ½‖f(X) − y‖² through the one loop
  :func:`mskjax.train.fit` (one compilation per width: η and the spectrum are traced
  ``hparams``; the predictions on train + test points are recorded at every step).
  """
  import jax
  import jax.numpy as jnp
  from mskjax import function_space
  from mskjax import train as T
  from mskjax.msk import MSKSpectrum
  n = x.shape[0]
  x_eval = jnp.concatenate([x, x_test])

  def loss(p, batch, idx):
    r = apply_fn(p, batch[0]) - batch[1]
    return 0.5 * jnp.sum(r * r), {"f": apply_fn(p, x_eval)}

  # Full-batch msk_sgd_jvp: the paper-faithful exact PGD (Jᵀ S r) whose width → ∞ limit is
  # the analytic MSK prediction measured here (docs/theory.md#preconditioned-gradient-descent-pgd);
  # minibatch / real training uses mskjax.msk_directions + mskjax.msk_sgd instead.
  tx = lambda h: function_space.msk_sgd_jvp(h[0], apply_fn, x, MSKSpectrum(*h[1]))
  predict = jax.jit(lambda p: apply_fn(p, x_eval))

  def train(params, eta, spectrum):
    res = T.fit(loss, params, tx, (x, y), steps=steps, has_aux=True, chunk=max(steps, 1),
                hparams=(jnp.asarray(eta), tuple(spectrum)),
                evaluate=lambda st: {"f": predict(st.params)})
    out = np.concatenate([res.records["f"], res.history["f"][-1:]])
    return out[:, :n], out[:, n:]
  return train


def _slope(widths, values):
  lw, lv = np.log(np.asarray(widths, float)), np.log(np.asarray(values, float))
  return float(np.polyfit(lw, lv, 1)[0])


def run(config, ctx):
  import jax
  import jax.numpy as jnp
  import matplotlib.pyplot as plt

  import mskjax
  from mskjax import data, kernels, tangents, nets

  q = config
  ts = np.asarray(sorted(set(int(t) for t in config.ts)))
  steps = int(ts.max())
  x, theta = data.circle(config.n)
  xt, thetat = data.circle(config.n_test, equispaced=False,
                           key=jax.random.PRNGKey(config.test_seed))
  y = config.amp * sum(data.fourier_target(theta, j) for j in config.js)
  yt = config.amp * sum(data.fourier_target(thetat, j) for j in config.js)
  ny, nyt = float(jnp.linalg.norm(y)), float(jnp.linalg.norm(yt))

  # The analytic NTK does not depend on the width: one K, one spectrum, one prediction.
  kernel_fn = nets.make_network(nets.MLPSpec(depth=1, width=1, b_std=config.b_std),
                                antisymmetric=True).kernel_fn
  K, Kt = kernels.gram(kernel_fn, x), kernels.gram(kernel_fn, xt, x)
  lam = np.asarray(mskjax.eigh_desc(K).values)
  spec_pgd = mskjax.msk_spectrum(K, mskjax.modifiers.flatten(), config.k)
  # GD through the same optimiser: g/λ = 1 on the same eigenvectors (identity preconditioner).
  spec_gd = spec_pgd._replace(new_values=spec_pgd.values)
  methods = {
      "GD": (None, None, mskjax.steps.kernel_step(lam[0]), spec_gd),
      "PGD-flatten": (mskjax.modifiers.flatten(), config.k, mskjax.steps.kernel_step(spec_pgd),
                      spec_pgd),
  }
  preds_inf = {}
  for name, (g, k, eta, _) in methods.items():
    p = mskjax.predict_gd_mse(K, y, g, k, jnp.asarray(ts), learning_rate=eta, K_test_train=Kt)
    preds_inf[name] = (np.asarray(p.train), np.asarray(p.test))
  ctx.print(f"GD η = 1/λ₁ = {methods['GD'][2]:.4g}; PGD η = 1/λ₄ = "
            f"{methods['PGD-flatten'][2]:.4g} (k={config.k}, speed-up ×{lam[0] / lam[config.k]:.2f})")

  units = [(w, s) for w in q["widths"] for s in range(q["seeds"])]
  trainers = {}
  recs = {}
  for width, seed in ctx.progress(units, desc="width × seed"):
    def compute():
      if width not in trainers:   # one network object (and compilation) per width
        trainers.clear()
        net = nets.make_network(nets.MLPSpec(depth=1, width=width, b_std=config.b_std),
                                antisymmetric=True)
        apply_fn = lambda p, a: net.model.apply({"params": p}, a)
        init = jax.jit(lambda key: nets.init_zero_output(net.model, key, x))
        trainers[width] = (net, init, make_trainer(apply_fn, x, y, xt, steps))
      net, init, trainer = trainers[width]
      variables = init(jax.random.PRNGKey(seed))
      K0 = np.asarray(tangents.empirical_ntk(net.model.apply, variables, x))
      out = dict(width=width, seed=seed,
                 ntk_rel_err=float(np.linalg.norm(K0 - np.asarray(K), 2) / lam[0]),
                 ntk_rel_err_fro=float(np.linalg.norm(K0 - np.asarray(K)) / np.linalg.norm(K)))
      for name, (_, _, eta, spec) in methods.items():
        tr, te = trainer(variables["params"], eta, spec)
        inf_tr, inf_te = preds_inf[name]
        e_tr = max(np.linalg.norm(tr[t] - inf_tr[i]) for i, t in enumerate(ts)) / ny
        e_te = max(np.linalg.norm(te[t] - inf_te[i]) for i, t in enumerate(ts)) / nyt
        out[f"{name}/train"] = float(e_tr)
        out[f"{name}/test"] = float(e_te)
        out[f"{name}/final_train_res"] = float(np.linalg.norm(tr[steps] - np.asarray(y)) / ny)
      return out
    recs[(width, seed)] = ctx.cached(f"width={width}/seed={seed}", compute)

  widths = q["widths"]
  series = {"ntk_rel_err": "‖Θ̂₀−Θ‖₂/‖Θ‖₂", "ntk_rel_err_fro": "‖Θ̂₀−Θ‖_F/‖Θ‖_F"}
  for name in methods:
    series[f"{name}/train"] = f"{name} train"
    series[f"{name}/test"] = f"{name} test"
  stats = {key: (np.array([np.mean([recs[(w, s)][key] for s in range(q["seeds"])])
                           for w in widths]),
                 np.array([np.std([recs[(w, s)][key] for s in range(q["seeds"])])
                           for w in widths])) for key in series}
  rows = []
  for i, w in enumerate(widths):
    for name in methods:
      rows.append({"width": w, "method": name, "seeds": q["seeds"],
                   "train_err": stats[f"{name}/train"][0][i],
                   "train_std": stats[f"{name}/train"][1][i],
                   "test_err": stats[f"{name}/test"][0][i],
                   "test_std": stats[f"{name}/test"][1][i],
                   "ntk_rel_err": stats["ntk_rel_err"][0][i],
                   "ntk_std": stats["ntk_rel_err"][1][i],
                   "ntk_rel_err_fro": stats["ntk_rel_err_fro"][0][i]})
  ctx.write_table(rows)
  def seed_slopes(key):  # the slope fitted to each initialisation separately
    return [_slope(widths, [recs[(w, s)][key] for w in widths]) for s in range(q["seeds"])]
  slope_rows = [{"quantity": label, "slope": _slope(widths, stats[key][0]),
                 "seed_min": min(seed_slopes(key)), "seed_max": max(seed_slopes(key)),
                 f"at_{widths[0]}": stats[key][0][0], f"at_{widths[-1]}": stats[key][0][-1],
                 "ratio": stats[key][0][0] / stats[key][0][-1],
                 "ratio_if_-1/2": float(np.sqrt(widths[-1] / widths[0]))}
                for key, label in series.items()]
  ctx.write_table(slope_rows, name="slopes")
  ctx.log_metrics({"slopes": {r["quantity"]: r["slope"] for r in slope_rows}})

  fig, ax = plt.subplots(figsize=(6.2, 4.4), layout="constrained")
  styles = {"ntk_rel_err": ("k", "s", "-"), "ntk_rel_err_fro": ("0.45", "s", ":"), "GD/train": ("C0", "o", "-"),
            "GD/test": ("C0", "o", ":"), "PGD-flatten/train": ("C3", "^", "-"),
            "PGD-flatten/test": ("C3", "^", ":")}
  for key, label in series.items():
    col, mk, ls = styles[key]
    m, s = stats[key]
    ax.errorbar(widths, m, yerr=s, color=col, marker=mk, ls=ls, ms=4, capsize=2,
                label=f"{label} (slope {_slope(widths, m):+.2f})")
  w = np.asarray(widths, float)
  ref = stats["ntk_rel_err"][0][0] * 1.6 * np.sqrt(w[0] / w)
  ax.plot(w, ref, color="gray", lw=1, ls="--", label="∝ width$^{-1/2}$")
  ax.set(xscale="log", yscale="log", xlabel="width",
         ylabel="relative distance to infinite width",
         title=f"msk_sgd_jvp vs analytic MSK, n={config.n} on S¹ (max over t ≤ {steps}, "
               f"{q['seeds']} seeds)")
  ax.set_xticks(widths, [str(v) for v in widths], fontsize=7)
  ax.legend(fontsize=7)
  ctx.savefig(fig, "width_sweep")
