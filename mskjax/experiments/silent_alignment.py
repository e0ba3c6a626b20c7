"""Silent alignment (Atanasov, Bordelon & Pehlevan, arXiv:2111.00034, ICLR 2022), and MSK-PGD.

Command::

  python -m mskjax.run configs/silent_alignment.py:quick     # < 60 s on a 2-core CPU
  python -m mskjax.run configs/silent_alignment.py --tag full   # full, ~10 min on 2 cores

Every expensive unit (one σ, one anisotropy α, one digits γ, Adam, each PGD variant) goes
through ``ctx.cached``: rerunning with the same ``--tag`` resumes and only recomputes what
is missing; the plots are rebuilt from the stored records.

The empirical NTK K_t is recorded on the training set (mskjax.train
.record_kernel_training, full-batch GD with ½·mean squared error) and five claims are
measured (``claim`` column of results.csv):

(a) two-layer linear net (bias-free, standard parameterisation, init scale σ) on exactly
    whitened data with a linear teacher: the alignment time t_align (A(K_t, y) 90 % of the
    way from A_0 to A_∞) does not depend on σ, while the loss time t_loss (loss halved) grows
    like ln(1/σ) (slope of a least-squares fit t_loss = a + b ln(1/σ) reported);
(b) cos(K_t, K_∞) at the moment ‖K_t‖_F = 10 % of ‖K_∞‖_F (interpolated between records);
(c) whitened digits (binary task, ReLU net, small init): kernel regression with the final
    NTK vs the initial NTK, distance to the trained network on test points
    ‖f_K − f_NN‖/‖f_NN‖ (f₀ = network at init, ridge 1e-6·tr K/n);
(d) anisotropic Gaussian inputs (power-law covariance k^-α) for the same linear net, and
    digits without whitening: the alignment is no longer silent (cos at 10 % norm drops,
    final alignment departs from the oracle L/√(L²−1+r), regression gap shrinks);
(e) beyond the paper: the Adam kernel K = J diag(η/(√v̂+ε)) Jᵀ for the linear net, and
    MSK-preconditioned GD (flatten the top-k eigenvalues) against plain GD on the whitened
    linear teacher at σ = ``pgd_sigma`` (same net, seed, step size and records as the
    σ row). Which spectrum PGD uses matters in the rich regime, because K_t grows by
    ~1/σ² during training, so four variants are run:

    * ``GD`` — the σ-sweep run itself;
    * ``PGD fixed K0`` — ``mskjax.function_space.msk_sgd_jvp`` with the spectrum of the *initial
      empirical* NTK K_0 (``mskjax.msk_spectrum(K_0, flatten, k)``), never refreshed. Its
      step P u = u + Jᵀ V diag((g/λ−1)/λ) Vᵀ J u equals Jᵀ S e only while K_t ≈ K_0;
      once K_t ≫ K_0 the correction is multiplied by ~‖K_t‖/‖K_0‖ and P turns indefinite
      (step of divergence reported; run with ``guard=False`` to show this failure mode —
      the default guard replaces such steps by the plain gradient);
    * ``PGD refresh`` — ``msk_sgd_jvp(..., refresh_every=pgd_refresh, g=flatten)``: the
      eigenpairs are recomputed from the current empirical NTK (exact PGD for
      ``pgd_refresh=1``);
    * ``S-loss fixed K0`` — ``optax.sgd`` on ``mskjax.msk_mse_loss`` (½ rᵀ S r / n) with
      S = I + V diag(g/λ − 1) Vᵀ from K_0: S depends on eigenvalue *ratios* only, so this
      form is scale-free and survives the growth of the kernel (its t_loss uses the plain
      MSE, recomputed along the same trajectory).

    The analytic NTK of this bias-free linear net is ∝ XXᵀ = n P_r, whose r non-zero
    eigenvalues are all equal on whitened data: flatten on it is the identity (S = I), so
    the empirical K_0 (O(1/√width) fluctuations) is the only non-trivial initial spectrum.

Plots: ``alignment_vs_sigma.png`` (A(K_t, y) and loss against steps for every σ),
``cos_vs_norm.png`` (cos(K_t, K_∞) against ‖K_t‖/‖K_∞‖, whitened vs anisotropic),
``regression_gap.png`` (digits: distance of kernel regression with K_t to the network),
``pgd_alignment.png`` (GD vs the PGD variants: A(K_t, y), loss and ‖K_t‖ against steps).
"""
import math

import numpy as np


def first_crossing(steps, values, level):
  """First step where `values` (sampled at `steps`) reaches `level`, linearly interpolated."""
  steps, values = np.asarray(steps, float), np.asarray(values, float)
  above = np.nonzero(values >= level)[0]
  if above.size == 0:
    return float("nan")
  i = above[0]
  if i == 0:
    return float(steps[0])
  t0, t1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
  return float(t0 + (level - v0) / (v1 - v0) * (t1 - t0))


def at_norm_fraction(steps, norm, cos_final, frac=0.1):
  """(step, cos(K_t, K_T)) where ‖K_t‖ first reaches frac·‖K_T‖, interpolated in the records."""
  steps, norm, cos_final = (np.asarray(a, float) for a in (steps, norm, cos_final))
  r = norm / norm[-1]
  t = first_crossing(steps, r, frac)
  if not np.isfinite(t):
    return t, float("nan")
  if r[0] >= frac:   # the kernel is already that large at init (large σ)
    return 0.0, float(cos_final[0])
  return t, float(np.interp(t, steps, cos_final))


def t_half(loss):
  """First step where the loss is at most half its initial value (NaN if never)."""
  loss = np.asarray(loss, float)
  hit = np.nonzero(loss <= 0.5 * loss[0])[0]
  return float(hit[0]) if hit.size else float("nan")


def float_array(x):
  """A stored list back to a float array (the runner writes non-finite floats as strings)."""
  return np.asarray([float(v) for v in x], dtype=float)


def _f(x):
  return float(x)   # also parses the runner's "nan" / "inf" strings


def _mse(f, y):
  import jax.numpy as jnp
  return 0.5 * jnp.mean((f - y) ** 2)


def _curves(rec, loss=True):
  """JSON-able curves of a KernelRecord (plots and tables are rebuilt from these)."""
  out = dict(steps=rec.steps.tolist(), alignment=rec.alignment.tolist(),
             norm=rec.norm.tolist(), cos_final=rec.cos_final.tolist())
  if loss:
    out["loss"] = rec.loss_curve.tolist()
  return out


def run(config, ctx):
  import time

  import jax
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import optax

  import mskjax  # noqa: F401  (float64)
  from mskjax import data as D
  from mskjax.nets import FlaxMLP, MLPSpec

  c = config
  L = c.depth + 1
  rows = []
  key = jax.random.PRNGKey(c.seed)
  ds, _ = D.whitened_linear_teacher(c.n, c.d, c.rank, key=key)
  a_oracle = L / math.sqrt(L ** 2 - 1 + c.rank)
  every = max(1, c.steps // c.num_records)
  sweep_records = range(0, c.steps + 1, every)

  # One linear model for every σ: its weights are N(0, σ²/fan_in), i.e. exactly σ times
  # those of init_scale=1 with the same key, so the σ runs share one apply_fn (and its
  # compiled kernels) and differ only in their initial parameters.
  linear_model = FlaxMLP(MLPSpec(depth=c.depth, width=c.width, activation="linear",
                                 b_std=None, parameterization="standard", init_scale=1.0))
  linear_init = jax.jit(linear_model.init)

  def linear_params(x, sigma):
    p = linear_init(jax.random.PRNGKey(c.seed + 1), x)
    return jax.tree_util.tree_map(lambda a: sigma * a, p)

  def train_linear(x, y, sigma, steps, opt, record_steps, weights_fn=None, loss_fn=_mse):
    return mskjax.recorder.record_kernel_training(
        linear_model.apply, linear_params(x, sigma), opt, loss_fn, x, y, num_steps=steps,
        record_steps=record_steps, kernel_weights_fn=weights_fn)

  def timed(compute):
    def wrapped():
      t0, c0 = time.time(), time.process_time()
      out = compute()
      out["seconds"] = round(time.time() - t0, 2)           # wall
      out["cpu_seconds"] = round(time.process_time() - c0, 2)
      return out
    return wrapped

  # ---- (a), (b): sigma sweep on whitened data
  def sigma_unit(sigma):
    rec = train_linear(ds.x_train, ds.y_train, sigma, c.steps, optax.sgd(c.lr), sweep_records)
    a0, aT = rec.alignment[0], rec.alignment[-1]
    t10, cos10 = at_norm_fraction(rec.steps, rec.norm, rec.cos_final, 0.1)
    row = dict(claim="a", setting=f"linear L={L} whitened r={c.rank}", sigma=sigma,
               t_align=round(first_crossing(rec.steps, rec.alignment, a0 + 0.9 * (aT - a0)), 1),
               t_loss=t_half(rec.loss_curve), t_norm10=round(t10, 1),
               cos_at_norm10=round(cos10, 4), one_minus_cos10=float(f"{1 - cos10:.2e}"),
               A0=round(float(a0), 4), A_final=round(float(aT), 5),
               A_oracle=round(a_oracle, 5), final_loss=float(rec.loss_curve[-1]))
    return dict(row=row, **_curves(rec))

  sweep = {}
  for sigma in ctx.progress(c.sigmas, "sigma sweep"):
    sweep[sigma] = ctx.cached(f"a/sigma={sigma:g}", timed(lambda: sigma_unit(sigma)))
    rows.append(sweep[sigma]["row"])

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for sigma, rec in sweep.items():
    loss = float_array(rec["loss"])
    axes[0].plot(float_array(rec["steps"]), float_array(rec["alignment"]), label=f"σ={sigma:g}")
    axes[1].semilogy(np.arange(loss.size), loss, label=f"σ={sigma:g}")
  t_max = min(c.steps, 2.5 * np.nanmax([_f(r["row"]["t_loss"]) for r in sweep.values()]))
  for ax in axes:
    ax.set_xlim(0, t_max)
  axes[0].axhline(a_oracle, color="k", ls="--", lw=0.8, label="L/√(L²−1+r)")
  axes[0].set(xlabel="step", ylabel="A(K_t, y)", title="kernel-target alignment")
  axes[1].set(xlabel="step", ylabel="train loss", title="loss")
  axes[0].legend(fontsize=7)
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  ctx.savefig(fig, "alignment_vs_sigma")
  plt.close(fig)

  sa = [r["row"] for r in sweep.values()]
  lns = np.log([1 / r["sigma"] for r in sa])
  tl = np.array([_f(r["t_loss"]) for r in sa])
  ta = np.array([_f(r["t_align"]) for r in sa])
  slope, _ = np.polyfit(lns, tl, 1)
  slope_a = np.polyfit(lns, ta, 1)[0]
  rows.append(dict(claim="a", setting="fit over sigma", sigma=float("nan"),
                   t_align=f"slope {slope_a:.2f}/ln(1/σ), spread {ta.min():.0f}-{ta.max():.0f}",
                   t_loss=f"slope {slope:.2f}/ln(1/σ)"))

  # b: the smallest sigma row is the representative one (already in the rows above)
  s_min = min(c.sigmas)
  rb = sweep[s_min]
  cos_b = at_norm_fraction(rb["steps"], rb["norm"], rb["cos_final"])[1]
  rows.append(dict(claim="b", setting=f"linear whitened σ={s_min:g}", sigma=s_min,
                   cos_at_norm10=round(cos_b, 4), one_minus_cos10=float(f"{1 - cos_b:.2e}")))

  # ---- (d): anisotropic inputs, same net
  every_aniso = max(1, c.steps_aniso // c.aniso_records)

  def aniso_unit(alpha):
    dsa, _ = D.power_law_gaussian(c.n, c.rank, alpha, key=jax.random.fold_in(key, 7))
    rec = train_linear(dsa.x_train, dsa.y_train, c.sigma_aniso, c.steps_aniso,
                       optax.sgd(c.lr / (1 + alpha)), range(0, c.steps_aniso + 1, every_aniso))
    t10, cos10 = at_norm_fraction(rec.steps, rec.norm, rec.cos_final, 0.1)
    row = dict(claim="d", setting=f"linear L={L} power-law α={alpha:g} (d={c.rank})",
               sigma=c.sigma_aniso, t_norm10=round(t10, 1), cos_at_norm10=round(cos10, 4),
               one_minus_cos10=float(f"{1 - cos10:.2e}"), A0=round(float(rec.alignment[0]), 4),
               A_final=round(float(rec.alignment[-1]), 5),
               A_oracle=round(a_oracle, 5), final_loss=float(rec.loss_curve[-1]))
    return dict(row=row, **_curves(rec, loss=False))

  aniso = {}
  for alpha in ctx.progress(c.alphas, "anisotropy"):
    aniso[alpha] = ctx.cached(f"d/alpha={alpha:g}", timed(lambda: aniso_unit(alpha)))
    rows.append(aniso[alpha]["row"])

  fig2, ax2 = plt.subplots(figsize=(5.5, 4))
  ax2.plot(float_array(rb["norm"]) / _f(rb["norm"][-1]), float_array(rb["cos_final"]),
           label=f"whitened, σ={s_min:g}")
  for alpha, rec in aniso.items():
    ax2.plot(float_array(rec["norm"]) / _f(rec["norm"][-1]), float_array(rec["cos_final"]),
             label=f"power law α={alpha:g}")
  ax2.axvline(0.1, color="k", ls=":", lw=0.8)
  ax2.set(xscale="log", xlabel="‖K_t‖ / ‖K_∞‖", ylabel="cos(K_t, K_∞)",
          title="kernel direction vs kernel size")
  ax2.legend(fontsize=7)
  fig2.tight_layout()
  ctx.savefig(fig2, "cos_vs_norm")
  plt.close(fig2)

  # ---- (c) + (d): digits, whitened vs raw
  def digits_unit(gamma):
    dig = D.load_digits(labels="onehot", test_fraction=0.3, seed=c.seed, normalize=False)
    xtr = np.asarray(dig.x_train)[:c.digits_n_train]
    xte = np.asarray(dig.x_test)[:c.digits_n_test]
    cls_tr = np.argmax(np.asarray(dig.y_train), 1)[:c.digits_n_train]
    ytr = np.where(cls_tr < 5, 1.0, -1.0)[:, None]       # binary task: digit < 5
    ztr, zte = D.whiten(xtr, xte, gamma)
    scale = np.sqrt(np.mean(np.sum(np.asarray(ztr) ** 2, 1)))
    ztr, zte = ztr / scale, zte / scale                 # mean squared input norm 1
    model = FlaxMLP(MLPSpec(depth=c.digits_depth, width=c.digits_width, activation="relu",
                            b_std=None, parameterization="standard",
                            init_scale=c.digits_sigma))
    params = jax.jit(model.init)(jax.random.PRNGKey(c.seed + 2), ztr)
    rec = mskjax.recorder.record_kernel_training(model.apply, params, optax.sgd(c.digits_lr), _mse, ztr,
                                      ytr, num_steps=c.digits_steps,
                                      num_records=c.digits_records, x_test=zte, ridge=c.ridge)
    d0, dT = float(rec.kr_distance[0]), float(rec.kr_distance[-1])
    _, cos10 = at_norm_fraction(rec.steps, rec.norm, rec.cos_final, 0.1)
    row = dict(claim="c" if gamma == 0 else "d",
               setting=f"digits γ={gamma:g} ReLU depth={c.digits_depth} width={c.digits_width}",
               sigma=c.digits_sigma, cos_at_norm10=round(cos10, 4),
               one_minus_cos10=float(f"{1 - cos10:.2e}"), A0=round(float(rec.alignment[0]), 4),
               A_final=round(float(rec.alignment[-1]), 4),
               final_loss=float(rec.loss_curve[-1]), kr_dist_init=round(d0, 4),
               kr_dist_final=round(dT, 4), ratio=round(d0 / dT, 2))
    return dict(row=row, steps=rec.steps.tolist(), kr_distance=rec.kr_distance.tolist())

  fig3, ax3 = plt.subplots(figsize=(5.5, 4))
  for gamma in ctx.progress(c.digits_gammas, "digits"):
    rec = ctx.cached(f"c/digits_gamma={gamma:g}", timed(lambda: digits_unit(gamma)))
    rows.append(rec["row"])
    ax3.semilogy(float_array(rec["steps"]), float_array(rec["kr_distance"]), marker="o", ms=3,
                 label=f"γ={gamma:g}")
  ax3.set(xscale="symlog", xlabel="step t of the kernel K_t",
          ylabel="‖f_{K_t} − f_NN‖ / ‖f_NN‖ (test)", title="digits: regression with K_t")
  ax3.legend(fontsize=7)
  fig3.tight_layout()
  ctx.savefig(fig3, "regression_gap")
  plt.close(fig3)

  # ---- (e) beyond the paper: Adam kernel
  def adam_unit():
    rec = train_linear(ds.x_train, ds.y_train, s_min, c.adam_steps, optax.adam(c.adam_lr),
                       range(0, c.adam_steps + 1, max(1, c.adam_steps // c.adam_records)),
                       mskjax.function_space.adam_kernel_weights(c.adam_lr))
    t10, cos10 = at_norm_fraction(rec.steps, rec.norm, rec.cos_final, 0.1)
    row = dict(claim="e", setting="Adam kernel J diag(η/(√v̂+ε)) Jᵀ, linear whitened",
               sigma=s_min, t_loss=t_half(rec.loss_curve), t_norm10=round(t10, 1),
               cos_at_norm10=round(cos10, 4), A0=round(float(rec.alignment[0]), 4),
               A_final=round(float(rec.alignment[-1]), 5), A_oracle=round(a_oracle, 5),
               final_loss=float(rec.loss_curve[-1]))
    return dict(row=row)

  rows.append(ctx.cached("e/adam", timed(adam_unit))["row"])

  # ---- (e) MSK-PGD vs GD on the whitened linear teacher
  rows_e, pgd_curves = _pgd(c, ctx, ds, sweep, linear_model, linear_params, sweep_records,
                            a_oracle, timed)
  rows += rows_e
  fig4, axes4 = plt.subplots(1, 3, figsize=(15, 4))
  for label, rec in pgd_curves:
    steps = float_array(rec["steps"])
    loss = float_array(rec["loss"])
    ls = "-" if label == "GD" else ("--" if "refresh" in label else
                                    (":" if "fixed" in label and "PGD" in label else "-."))
    axes4[0].plot(steps, float_array(rec["alignment"]), ls=ls, label=label)
    axes4[1].semilogy(np.arange(loss.size), loss, ls=ls, label=label)
    axes4[2].semilogy(steps, float_array(rec["norm"]), ls=ls, label=label)
  t_e = [_f(r["t_loss"]) for r in rows_e if np.isfinite(_f(r["t_loss"]))]
  axes4[0].set_xlim(0, min(c.steps, 3 * max(t_e)))   # the alignment happens early
  axes4[0].axhline(a_oracle, color="k", ls="--", lw=0.8, label="L/√(L²−1+r)")
  axes4[0].set(xlabel="step", ylabel="A(K_t, y)", ylim=(0, 1),
               title=f"alignment, GD vs MSK-PGD (σ={c.pgd_sigma:g})")
  axes4[1].set(xlabel="step", ylabel="½ mean (f − y)²", ylim=(1e-30, 1e6), title="loss")
  axes4[2].set(xlabel="step", ylabel="‖K_t‖_F", title="kernel size")
  axes4[0].legend(fontsize=7)
  fig4.tight_layout()
  ctx.savefig(fig4, "pgd_alignment")
  plt.close(fig4)

  keys = list(dict.fromkeys(k for r in rows for k in r))
  rows = [{k: r.get(k, "") for k in keys} for r in rows]
  ctx.write_table(rows, name="results")
  return rows


def _pgd(c, ctx, ds, sweep, model, linear_params, sweep_records, a_oracle, timed):
  """Claim (e): GD vs MSK-PGD (flatten, top k) on the whitened linear teacher."""
  import optax

  import mskjax
  from mskjax import modifiers as M
  from mskjax import function_space

  if c.pgd_sigma not in sweep:
    raise ValueError(f"pgd_sigma={c.pgd_sigma:g} must be one of sigmas={tuple(c.sigmas)} (the "
                     "GD baseline is the σ-sweep run).")
  x, y, n = ds.x_train, ds.y_train, ds.x_train.shape[0]
  params = linear_params(x, c.pgd_sigma)
  flat = M.flatten()
  memo = {}

  def spectrum(k):
    """flatten on the top k of the initial empirical NTK K_0 (computed only when needed)."""
    if "K0" not in memo:
      memo["K0"] = mskjax.tangents.empirical_ntk(model.apply, params, x)
    return mskjax.msk_spectrum(memo["K0"], flat, k)

  def ratio(k):
    spec = spectrum(k)
    return float(spec.values[0] / spec.next_value)

  def mse_curve(loss_fn, tx):
    """Plain ½·MSE along the trajectory of `tx` on `loss_fn` (every step, the one loop)."""
    from mskjax import train as T

    def loss(p, batch, idx):
      f = model.apply(p, batch[0])
      return loss_fn(f, batch[1]), {"mse": _mse(f, batch[1])}
    res = T.fit(loss, params, tx, (x, y), steps=c.steps, has_aux=True)
    return np.concatenate([res.records["mse"],
                           [float(_mse(model.apply(res.state.params, x), y))]])

  def summary(rec_curves, loss, variant, k, extra):
    steps, al = float_array(rec_curves["steps"]), float_array(rec_curves["alignment"])
    norm, cosf = float_array(rec_curves["norm"]), float_array(rec_curves["cos_final"])
    loss = float_array(loss)
    bad = np.nonzero(~np.isfinite(loss) | (loss > c.pgd_diverge_factor * loss[0]))[0]
    div = float(bad[0]) if bad.size else float("nan")
    a0, aT = al[0], al[-1]
    if bad.size:
      t_align = t10 = cos10 = float("nan")
    else:
      t_align = first_crossing(steps, al, a0 + 0.9 * (aT - a0))
      t10, cos10 = at_norm_fraction(steps, norm, cosf, 0.1)
    return dict(claim="e", setting=f"{variant} (linear whitened r={c.rank})"
                + ("" if k is None else f", flatten k={k}"), sigma=c.pgd_sigma,
                t_align=round(t_align, 1), t_loss=t_half(loss), t_norm10=round(t10, 1),
                cos_at_norm10=round(cos10, 4),
                one_minus_cos10=float(f"{1 - cos10:.2e}") if np.isfinite(cos10) else cos10,
                A0=round(float(a0), 4), A_final=round(float(aT), 5),
                A_oracle=round(a_oracle, 5), final_loss=float(loss[-1]), diverged_at=div,
                **extra)

  gd = sweep[c.pgd_sigma]
  rows = [summary(gd, gd["loss"], "GD", None, {})]
  curves = [("GD", gd)]
  for k in c.pgd_ks:
    # msk_sgd_jvp on purpose: these rows study the data-dependent form itself (its failure
    # with a stale K₀ spectrum and its exact refreshed variant), full batch
    # (docs/pitfalls.md#a-stored-spectrum-and-a-moving-kernel); real training uses
    # mskjax.msk_directions + mskjax.msk_sgd.
    def fixed_unit():
      # guard=False: this row documents the failure mode of the unguarded stale map (the
      # default guard would pass the indefinite steps through as plain gradients).
      tx = function_space.msk_sgd_jvp(c.lr, model.apply, x, spectrum(k), guard=False)
      rec = mskjax.recorder.record_kernel_training(model.apply, params, tx, _mse, x, y,
                                        num_steps=c.steps, record_steps=sweep_records)
      return dict(_curves(rec), lam1_over_lamk1=ratio(k))

    def refresh_unit():
      tx = function_space.msk_sgd_jvp(c.lr, model.apply, x, spectrum(k), refresh_every=c.pgd_refresh,
                         g=flat)
      rec = mskjax.recorder.record_kernel_training(model.apply, params, tx, _mse, x, y,
                                        num_steps=c.steps, record_steps=sweep_records)
      return dict(_curves(rec), lam1_over_lamk1=ratio(k))

    def sloss_unit():
      spec = spectrum(k)
      loss_fn = lambda f, t: function_space.msk_mse_loss(f, t, spec) / n   # ½ rᵀ S r / n
      rec = mskjax.recorder.record_kernel_training(model.apply, params, optax.sgd(c.lr), loss_fn, x, y,
                                        num_steps=c.steps, record_steps=sweep_records)
      out = _curves(rec)
      out["s_loss"] = out.pop("loss")
      out["loss"] = mse_curve(loss_fn, optax.sgd(c.lr)).tolist()   # plain MSE, same path
      out["lam1_over_lamk1"] = ratio(k)
      return out

    for variant, unit in (("PGD fixed K0", fixed_unit),
                          (f"PGD refresh every {c.pgd_refresh}", refresh_unit),
                          ("S-loss fixed K0", sloss_unit)):
      rec = ctx.cached(f"e/{variant}/k={k}", timed(unit))
      lam_ratio = rec["lam1_over_lamk1"] if "lam1_over_lamk1" in rec else ratio(k)
      rows.append(summary(rec, rec["loss"], variant, k,
                          dict(lam1_over_lamk1=round(_f(lam_ratio), 3))))
      curves.append((f"{variant}, k={k}", rec))
  return rows, curves
