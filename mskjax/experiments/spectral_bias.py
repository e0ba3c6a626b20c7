"""Spectral bias under a modified spectrum: which frequencies are learned first (S¹).

Command::

  python -m mskjax.run configs/spectral_bias.py              # full, ~4 min on a 2-core CPU
  python -m mskjax.run configs/spectral_bias.py:quick     # < 60 s (width 1024, 700 steps)

Set-up: n = 64 equispaced points of S¹, a 2-layer ReLU network (one hidden layer, NTK
parameterisation, b_std = 0.1, antisymmetric zero-output init) and the target
y = amp · Σ_j cos(jθ), j ∈ ``js`` (amp = 0.01 keeps the finite network in its linear
regime). Its analytic NTK on S¹ has the Fourier modes as eigenvectors, a pair per
frequency j ≥ 1; with b_std = 0.1 the descending order of the blocks is
j = 0, 1, 2, 4, 3, 6, 5, 8, 7, 10, … (odd j ≥ 3 get their eigenvalue from the bias only).
Plain GD learns cos(jθ) at rate η·λ(j), so low frequencies first (the spectral bias).

For each modifier g (``gs``):

* ``identity`` — plain GD;
* ``reverse`` — the top-k *blocks* of equal eigenvalues in reversed order (k = ``k_reverse``
  = 17 covers the blocks of j = 0..8). ``mskjax.modifiers.reverse()`` reverses the k
  eigenvalues one by one, g(λ_i) = λ_{k+1−i}; on S¹ the top block (j = 0) is a singleton and
  every other block a pair, so it hands the two members of each frequency pair two
  *different* values (the cos/sin split is then an arbitrary rotation from eigh) and breaks
  the rotation symmetry. The block-wise version here gives both members of a pair the value
  of the mirrored block (it equals ``modifiers.reverse()`` when all blocks are singletons);
  ``reverse_ranks`` is ``modifiers.reverse()`` itself, for comparison (not in quick);
* ``flatten`` — ``modifiers.flatten()`` on the top k = ``k_flatten`` = 5 (j = 0, 1, 2): they
  all get λ₆ = λ(j=4), so j = 1, 2, 4 are learned at one and the same rate, and the larger
  step η ∝ 1/λ₆ speeds up everything beyond.

The step is η = ``lr_factor`` / λ_max(K_g) for every g (a fraction below 1 so that the
fastest directions take a few steps rather than exactly one). Measured per frequency j:
the relative residual |⟨r_t, cos jθ⟩| / |⟨y, cos jθ⟩| of the train residual r_t = f_t(X) − y,

* infinite width: ``mskjax.predict_gd_mse`` (the analytic MSK, every step 0..``steps``);
* finite width (``width``): the network trained with ``mskjax.function_space.msk_sgd_jvp`` (full batch, loss
  ½‖r‖², predictions recorded at every step by the one loop ``mskjax.train.fit``).

**Finite-width spectrum.** The MSK preconditioner P u = u + Jᵀ V diag((g/λ − 1)/λ) Vᵀ J u
cancels the kernel along v_i only if λ_i is the *network's* eigenvalue. ``reverse``
divides the top eigenvalues by up to ~400 (g/λ = 1/230 on j = 1, 1/400 on j = 0), so a
2–3 % error of the analytic λ_i against the empirical NTK at init leaves an effective g/λ
several times too large:
with the analytic eigenpairs (``finite_spectrum=analytic``) the width-4096 network
crossed the threshold on j = 1 at step 52 instead of the predicted 516, learning the
frequencies in the order 8, 1, 6, 2, 4 (experiments/spectral_bias). So, by default
(``finite_spectrum='empirical'``), the finite network is preconditioned with the
eigenpairs of its own empirical NTK at initialisation (``tangents.empirical_ntk``), and each
empirical eigenvector receives the modified value g(λ) of the analytic eigenvector it
overlaps most (a one-to-one assignment of the top k, ``scipy.optimize.linear_sum_assignment``
on squared overlaps: g is defined on the analytic spectrum, whose near-ties such as
λ(j=3) ≈ λ(j=6) the finite-width eigenvalues do not resolve in the same order). The
infinite-width predictions are always analytic.

Outputs: ``results`` table — for every g and j the eigenvalue λ(j), the modified one μ(j)
(Rayleigh quotient of cos jθ with K_g) and the first step at which the residual of
frequency j falls below ``threshold`` (0.5), infinite vs finite width; ``order`` table —
the order in which the frequencies cross the threshold; ``frequency_residuals.png`` — a
panel per g, residual vs step (lines: infinite width, markers: finite width).
"""
import numpy as np

_COLORS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9")


def _modifier(name, block_starts):
  """The g of a ``gs`` entry (the config's RANGES choices name the four).

  ``identity`` and ``flatten`` are the registry's (:func:`mskjax.modifiers.from_name`);
  ``reverse_ranks`` is the registry's ``reverse`` (eigenvalue by eigenvalue). ``reverse``
  here is this experiment's block-wise reversal at the *analytic* block boundaries
  (:func:`mskjax.modifiers.reverse_blocks`): the empirical spectrum the network is
  preconditioned with splits the pairs, so the blocks cannot be found by a tolerance.
  """
  from mskjax import modifiers
  if name == "reverse":
    return modifiers.reverse_blocks(block_starts)
  return modifiers.from_name("reverse" if name == "reverse_ranks" else name)


def make_trainer(apply_fn, x, y, steps):
  """``train(params, eta, spectrum) -> predictions at steps 0..steps`` (one compilation).

  Full-batch ``mskjax.function_space.msk_sgd_jvp`` on ½‖f(X) − y‖² through the one loop
  :func:`mskjax.train.fit` (η and the spectrum are its traced ``hparams``, so the sweep
  compiles once; the predictions of every step are the loss's per-step ``aux``). With
  new_values = values the preconditioner is the identity (plain GD).
  """
  import jax
  import jax.numpy as jnp
  from mskjax import function_space
  from mskjax import train as T
  from mskjax.msk import MSKSpectrum

  def loss(p, batch, idx):
    f = apply_fn(p, batch[0])
    return 0.5 * jnp.sum((f - batch[1]) ** 2), {"f": f}

  # Full-batch msk_sgd_jvp with the network's own empirical spectrum at init (by default):
  # the paper-faithful exact PGD for this finite = infinite width comparison
  # (docs/theory.md#analytic-or-empirical-eigenpairs); minibatch / real training uses
  # mskjax.msk_directions + mskjax.msk_sgd instead.
  tx = lambda h: function_space.msk_sgd_jvp(h[0], apply_fn, x, MSKSpectrum(*h[1]))
  predict = jax.jit(lambda p: apply_fn(p, x))

  def train(params, eta, spectrum):
    res = T.fit(loss, params, tx, (x, y), steps=steps, has_aux=True, chunk=max(steps, 1),
                hparams=(jnp.asarray(eta), tuple(spectrum)),
                evaluate=lambda st: {"f": predict(st.params)})
    return np.concatenate([res.records["f"], res.history["f"][-1:]])
  return train


def _freq_residuals(preds, y, C):
  """|⟨r_t, cos jθ⟩| / |⟨y, cos jθ⟩| for predictions of shape (T, n[, 1]); (T, len(js))."""
  preds = np.asarray(preds).reshape(len(preds), -1)
  yv = np.asarray(y).reshape(-1)
  return np.abs((preds - yv[None]) @ C.T) / np.abs(yv @ C.T)[None]


def _first_below(curve, threshold):
  hit = np.nonzero(curve < threshold)[0]
  return int(hit[0]) if hit.size else None


def _plot_steps(steps, num=70):
  return np.unique(np.concatenate([[0], np.geomspace(1, steps, num).astype(int)]))


def run(config, ctx):
  import jax
  import jax.numpy as jnp
  import matplotlib.pyplot as plt

  import mskjax
  from mskjax import data, kernels, tangents, nets

  q = config
  js = tuple(int(j) for j in config.js)
  width, steps = q["width"], q["steps"]
  if config.finite_spectrum not in ("empirical", "analytic"):
    raise ValueError("finite_spectrum must be 'empirical' or 'analytic'")
  spec = nets.MLPSpec(depth=1, width=width, activation="relu", b_std=config.b_std)
  net = nets.make_network(spec, antisymmetric=True)
  x, theta = data.circle(config.n)
  y = config.amp * sum(data.fourier_target(theta, j) for j in js)
  C = np.stack([np.cos(j * np.asarray(theta)) for j in js])       # (len(js), n)
  K = kernels.gram(net.kernel_fn, x)
  lam = np.asarray(mskjax.eigh_desc(K).values)
  starts = mskjax.spectrum.eigenvalue_blocks(lam)
  freq_of = [int(np.argmax(np.abs(np.fft.rfft(v)))) for v in
             np.asarray(mskjax.eigh_desc(K).vectors).T[:max(config.k_reverse,
                                                           config.k_flatten) + 2]]
  blocks_txt = ", ".join(f"j={freq_of[s]}:{lam[s]:.4g}" for s in starts[:9])
  ctx.print(f"analytic NTK blocks (descending): {blocks_txt}, ...")
  lam_j = {j: float(C[i] @ np.asarray(K) @ C[i] / (C[i] @ C[i])) for i, j in enumerate(js)}

  variables = jax.jit(lambda key: nets.init_zero_output(net.model, key, x))(
      jax.random.PRNGKey(config.seed))
  params = variables["params"]
  apply_fn = lambda p, a: net.model.apply({"params": p}, a)
  K0 = None
  k_pad = max(config.k_reverse, config.k_flatten)
  trainer = make_trainer(apply_fn, x, y, steps)
  if config.train_network:
    def entk():
      K0 = np.asarray(tangents.empirical_ntk(net.model.apply, variables, x))
      return dict(K0=K0.tolist(),
                  rel_err_op=float(np.linalg.norm(K0 - np.asarray(K), 2) / lam[0]))
    rec = ctx.cached(f"width={width}/empirical_ntk", entk)
    K0 = jnp.asarray(rec["K0"])
    ctx.print(f"width {width}: ‖Θ̂₀ − Θ‖₂/‖Θ‖₂ = {rec['rel_err_op']:.3%}")

  ts_plot = _plot_steps(steps)
  rows, order_rows, curves = [], [], {}
  for name in ctx.progress(q["gs"], desc="modifiers"):
    g = _modifier(name, starts)
    k = None if name == "identity" else (config.k_flatten if name == "flatten"
                                         else config.k_reverse)

    def compute():
      if k is None:
        mu_max, Kg = float(lam[0]), np.asarray(K)
      else:
        spec_a = mskjax.msk_spectrum(K, g, k)
        mu_max = float(spec_a.max_value)
        Kg = np.asarray(mskjax.msk.msk_gram_from_spectrum(K, spec_a))
      eta = config.lr_factor / mu_max
      mu_j = [float(C[i] @ Kg @ C[i] / (C[i] @ C[i])) for i in range(len(js))]
      pred = mskjax.predict_gd_mse(K, y, g if k else None, k, jnp.arange(steps + 1),
                                   learning_rate=eta)
      inf = _freq_residuals(pred.train, y, C)
      out = dict(g=name, k=k or 0, eta=eta, mu_j=mu_j,
                 inf_steps=[_first_below(inf[:, i], config.threshold) for i in range(len(js))],
                 inf_curve=inf[ts_plot].tolist(), inf_final=inf[-1].tolist())
      if config.train_network:
        K_net = K0 if config.finite_spectrum == "empirical" else K
        spec_f, overlap = mskjax.msk.transfer_msk_spectrum(K_net, spec_a if k else None, k_pad)
        preds = trainer(params, eta, spec_f)
        fin = _freq_residuals(preds, y, C)
        gap = np.linalg.norm(preds.reshape(steps + 1, -1) - np.asarray(pred.train).reshape(
            steps + 1, -1), axis=1).max() / float(jnp.linalg.norm(y))
        out.update(fin_steps=[_first_below(fin[:, i], config.threshold)
                              for i in range(len(js))],
                   fin_curve=fin[ts_plot].tolist(), fin_final=fin[-1].tolist(),
                   assign_overlap=overlap, max_rel_gap=float(gap))
      return out

    rec = ctx.cached(f"width={width}/g={name}/spectrum={config.finite_spectrum}", compute)
    curves[name] = rec
    for i, j in enumerate(js):
      row = dict(g=name, k=rec["k"], eta=rec["eta"], j=j, lam_j=lam_j[j], mu_j=rec["mu_j"][i],
                 steps_infinite=rec["inf_steps"][i])
      if "fin_steps" in rec:
        row.update(steps_finite=rec["fin_steps"][i], width=width)
      rows.append(row)

    def order(steps_list):
      pairs = sorted((s if s is not None else np.inf, j) for s, j in zip(steps_list, js))
      txt, prev = "", None
      for s, j in pairs:
        txt += ("" if prev is None else (" = " if s == prev else " < ")) + str(j)
        prev = s
      return txt
    orow = dict(g=name, k=rec["k"], order_infinite=order(rec["inf_steps"]))
    if "fin_steps" in rec:
      orow.update(order_finite=order(rec["fin_steps"]),
                  max_rel_gap=rec["max_rel_gap"], assign_overlap=rec["assign_overlap"])
    order_rows.append(orow)
  ctx.write_table(rows)
  ctx.write_table(order_rows, name="order")

  gs = q["gs"]
  fig, axes = plt.subplots(1, len(gs), figsize=(4.3 * len(gs), 3.7), squeeze=False,
                           sharey=True, layout="constrained")
  t = ts_plot.astype(float)
  for ax, name in zip(axes[0], gs):
    rec = curves[name]
    inf = np.asarray(rec["inf_curve"])
    for i, j in enumerate(js):
      col = _COLORS[i % len(_COLORS)]
      ax.plot(t[1:], inf[1:, i], color=col, lw=1.6, label=f"j={j}")
      if "fin_curve" in rec:
        fin = np.asarray(rec["fin_curve"])
        ax.plot(t[1::3], fin[1::3, i], "o", ms=3.2, color=col, alpha=0.75, mfc="none")
    ax.axhline(config.threshold, color="gray", lw=0.8, ls="--")
    title = {"identity": "identity (GD)", "reverse": f"reverse blocks (k={rec['k']})",
             "reverse_ranks": f"modifiers.reverse (k={rec['k']})",
             "flatten": f"flatten (k={rec['k']})"}[name]
    ax.set(xscale="log", title=title, xlabel="step t", ylim=(-0.02, 1.1))
  axes[0, 0].set_ylabel("|⟨r_t, cos jθ⟩| / |⟨y, cos jθ⟩|")
  axes[0, 0].legend(fontsize=7, title="lines: infinite\nmarkers: " + (
      f"width {width}" if config.train_network else "(none)"), title_fontsize=7)
  fig.suptitle(f"Per-frequency residual, n={config.n} points on S¹, 2-layer ReLU "
               f"(b_std={config.b_std}), η = {config.lr_factor}/λ_max(K_g)")
  ctx.savefig(fig, "frequency_residuals")
