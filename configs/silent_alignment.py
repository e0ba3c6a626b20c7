"""Silent alignment (Atanasov, Bordelon & Pehlevan, arXiv:2111.00034, ICLR 2022).

Command::

  python -m mskjax.run configs/silent_alignment.py quick=True   # < 60 s on a 2-core CPU
  python -m mskjax.run configs/silent_alignment.py              # full, a few minutes

The empirical NTK K_t is recorded on the training set (mskjax.diagnostics
.record_kernel_training, full-batch GD with ½·mean squared error) and four claims are
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
    MSK-preconditioned GD (``mskjax.msk_sgd``) when that optimiser is available.

Plots: ``alignment_vs_sigma.png`` (A(K_t, y) and loss against steps for every σ),
``cos_vs_norm.png`` (cos(K_t, K_∞) against ‖K_t‖/‖K_∞‖, whitened vs anisotropic),
``regression_gap.png`` (digits: distance of kernel regression with K_t to the network).
"""
import math

import ml_collections
import numpy as np


def get_config():
  c = ml_collections.ConfigDict()
  c.quick = False
  c.seed = 0
  # (a, b, d): two-layer linear net on a whitened linear teacher
  c.n = 100                           # training points
  c.d = 40                            # input dimension
  c.rank = 30                         # rank r of the whitened inputs
  c.depth = 1                         # hidden layers (L = depth + 1 weight layers)
  c.width = 100
  c.sigmas = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
  c.lr = 0.25                         # GD step on ½ mean squared error
  c.steps = 600
  c.alphas = (0.0, 1.0, 2.0)          # (d) power-law exponents of the input covariance
  c.sigma_aniso = 1e-4
  c.steps_aniso = 6000
  # (c) digits
  c.digits_n_train = 400
  c.digits_n_test = 300
  c.digits_width = 256
  c.digits_depth = 1
  c.digits_sigma = 1e-2
  c.digits_lr = 0.5
  c.digits_steps = 4000
  c.digits_gammas = (0.0, 1.0)        # partial whitening exponents (0: whitened, 1: raw)
  c.ridge = 1e-6
  # (e)
  c.adam_lr = 2e-3
  c.adam_steps = 3000
  return c


def _quick(c):
  if not c.quick:
    return c
  q = ml_collections.ConfigDict(c.to_dict())
  q.n, q.width = 60, 50
  q.sigmas = (1e-2, 1e-4, 1e-6)
  q.steps = 400
  q.alphas = (0.0, 2.0)
  q.steps_aniso = 2000
  q.digits_n_train, q.digits_n_test, q.digits_width = 150, 100, 64
  q.digits_steps = 1500
  q.digits_gammas = (0.0,)
  q.adam_steps = 600
  return q


def _first_crossing(steps, values, level):
  """First step where `values` (sampled at `steps`) reaches `level`, linearly interpolated."""
  above = np.nonzero(values >= level)[0]
  if above.size == 0:
    return float("nan")
  i = above[0]
  if i == 0:
    return float(steps[0])
  t0, t1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
  return float(t0 + (level - v0) / (v1 - v0) * (t1 - t0))


def _at_norm_fraction(rec, frac=0.1):
  """(step, cos(K_t, K_T)) where ‖K_t‖ first reaches frac·‖K_T‖, interpolated in the records."""
  r = rec.norm / rec.norm[-1]
  t = _first_crossing(rec.steps, r, frac)
  if not np.isfinite(t):
    return t, float("nan")
  if r[0] >= frac:   # the kernel is already that large at init (large σ)
    return 0.0, float(rec.cos_final[0])
  return t, float(np.interp(t, rec.steps, rec.cos_final))


def _mse(f, y):
  import jax.numpy as jnp
  return 0.5 * jnp.mean((f - y) ** 2)


def run(config, ctx):
  import jax
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import optax

  import mskjax  # noqa: F401  (float64)
  from mskjax import data as D
  from mskjax import diagnostics as diag
  from mskjax.nets import FlaxMLP, MLPSpec

  c = _quick(config)
  L = c.depth + 1
  rows = []
  key = jax.random.PRNGKey(c.seed)
  ds, _ = D.whitened_linear_teacher(c.n, c.d, c.rank, key=key)
  a_oracle = L / math.sqrt(L ** 2 - 1 + c.rank)

  def linear_net(sigma):
    return FlaxMLP(MLPSpec(depth=c.depth, width=c.width, activation="linear", b_std=None,
                           parameterization="standard", init_scale=sigma))

  def train_linear(x, y, sigma, steps, opt, every, weights_fn=None):
    model = linear_net(sigma)
    params = model.init(jax.random.PRNGKey(c.seed + 1), x)
    return diag.record_kernel_training(
        model.apply, params, opt, _mse, x, y, num_steps=steps,
        record_steps=range(0, steps + 1, every), kernel_weights_fn=weights_fn)

  # ---- (a), (b): sigma sweep on whitened data
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  recs = {}
  every = max(1, c.steps // 150)
  for sigma in ctx.progress(c.sigmas, "sigma sweep"):
    rec = train_linear(ds.x_train, ds.y_train, sigma, c.steps, optax.sgd(c.lr), every)
    recs[sigma] = rec
    a0, aT = rec.alignment[0], rec.alignment[-1]
    t_align = _first_crossing(rec.steps, rec.alignment, a0 + 0.9 * (aT - a0))
    loss = rec.loss_curve
    t_loss = float(np.argmax(loss <= 0.5 * loss[0])) if np.any(loss <= 0.5 * loss[0]) \
        else float("nan")
    t10, cos10 = _at_norm_fraction(rec, 0.1)
    row = dict(claim="a", setting=f"linear L={L} whitened r={c.rank}", sigma=sigma,
               t_align=round(t_align, 1), t_loss=t_loss, t_norm10=round(t10, 1),
               cos_at_norm10=round(cos10, 4), one_minus_cos10=float(f"{1 - cos10:.2e}"),
               A0=round(float(a0), 4), A_final=round(float(aT), 5),
               A_oracle=round(a_oracle, 5), final_loss=float(loss[-1]))
    rows.append(row)
    ctx.log_metrics({k: v for k, v in row.items()})
    axes[0].plot(rec.steps, rec.alignment, label=f"σ={sigma:g}")
    axes[1].semilogy(np.arange(loss.size), loss, label=f"σ={sigma:g}")
  t_max = min(c.steps, 2.5 * max(r["t_loss"] for r in rows if r["claim"] == "a"))
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

  sa = [r for r in rows if r["claim"] == "a"]
  lns = np.log([1 / r["sigma"] for r in sa])
  tl = np.array([r["t_loss"] for r in sa])
  ta = np.array([r["t_align"] for r in sa])
  slope, icpt = np.polyfit(lns, tl, 1)
  slope_a = np.polyfit(lns, ta, 1)[0]
  summary = dict(claim="a", setting="fit over sigma", sigma=float("nan"),
                 t_align=f"slope {slope_a:.2f}/ln(1/σ), spread {ta.min():.0f}-{ta.max():.0f}",
                 t_loss=f"slope {slope:.2f}/ln(1/σ)")
  rows.append(summary)
  ctx.log_metrics(dict(fit_t_loss_slope=float(slope), fit_t_align_slope=float(slope_a)))

  # b: the smallest sigma row is the representative one (already in the rows above)
  s_min = min(c.sigmas)
  cos_b = _at_norm_fraction(recs[s_min])[1]
  rows.append(dict(claim="b", setting=f"linear whitened σ={s_min:g}", sigma=s_min,
                   cos_at_norm10=round(cos_b, 4), one_minus_cos10=float(f"{1 - cos_b:.2e}")))

  # ---- (d): anisotropic inputs, same net
  fig2, ax2 = plt.subplots(figsize=(5.5, 4))
  for sigma in (s_min,):
    r = recs[sigma]
    ax2.plot(r.norm / r.norm[-1], r.cos_final, label=f"whitened, σ={sigma:g}")
  every_aniso = max(1, c.steps_aniso // 300)
  for alpha in ctx.progress(c.alphas, "anisotropy"):
    dsa, _ = D.power_law_gaussian(c.n, c.rank, alpha, key=jax.random.fold_in(key, 7))
    rec = train_linear(dsa.x_train, dsa.y_train, c.sigma_aniso, c.steps_aniso,
                       optax.sgd(c.lr / (1 + alpha)), every_aniso)
    t10, cos10 = _at_norm_fraction(rec, 0.1)
    row = dict(claim="d", setting=f"linear L={L} power-law α={alpha:g} (d={c.rank})",
               sigma=c.sigma_aniso, t_norm10=round(t10, 1), cos_at_norm10=round(cos10, 4),
               one_minus_cos10=float(f"{1 - cos10:.2e}"), A0=round(float(rec.alignment[0]), 4),
               A_final=round(float(rec.alignment[-1]), 5),
               A_oracle=round(a_oracle, 5), final_loss=float(rec.loss_curve[-1]))
    rows.append(row)
    ctx.log_metrics(row)
    ax2.plot(rec.norm / rec.norm[-1], rec.cos_final, label=f"power law α={alpha:g}")
  ax2.axvline(0.1, color="k", ls=":", lw=0.8)
  ax2.set(xscale="log", xlabel="‖K_t‖ / ‖K_∞‖", ylabel="cos(K_t, K_∞)",
          title="kernel direction vs kernel size")
  ax2.legend(fontsize=7)
  fig2.tight_layout()
  ctx.savefig(fig2, "cos_vs_norm")
  plt.close(fig2)

  # ---- (c) + (d): digits, whitened vs raw
  fig3, ax3 = plt.subplots(figsize=(5.5, 4))
  dig = D.load_digits(labels="onehot", test_fraction=0.3, seed=c.seed, normalize=False)
  xtr = np.asarray(dig.x_train)[:c.digits_n_train]
  xte = np.asarray(dig.x_test)[:c.digits_n_test]
  cls_tr = np.argmax(np.asarray(dig.y_train), 1)[:c.digits_n_train]
  ytr = np.where(cls_tr < 5, 1.0, -1.0)[:, None]       # binary task: digit < 5
  for gamma in ctx.progress(c.digits_gammas, "digits"):
    ztr, zte = D.whiten(xtr, xte, gamma)
    scale = np.sqrt(np.mean(np.sum(np.asarray(ztr) ** 2, 1)))
    ztr, zte = ztr / scale, zte / scale                 # mean squared input norm 1
    model = FlaxMLP(MLPSpec(depth=c.digits_depth, width=c.digits_width, activation="relu",
                            b_std=None, parameterization="standard",
                            init_scale=c.digits_sigma))
    params = model.init(jax.random.PRNGKey(c.seed + 2), ztr)
    rec = diag.record_kernel_training(model.apply, params, optax.sgd(c.digits_lr), _mse, ztr,
                                      ytr, num_steps=c.digits_steps, num_records=25,
                                      x_test=zte, ridge=c.ridge)
    d0, dT = float(rec.kr_distance[0]), float(rec.kr_distance[-1])
    t10, cos10 = _at_norm_fraction(rec, 0.1)
    row = dict(claim="c" if gamma == 0 else "d",
               setting=f"digits γ={gamma:g} ReLU depth={c.digits_depth} width={c.digits_width}",
               sigma=c.digits_sigma, cos_at_norm10=round(cos10, 4),
               one_minus_cos10=float(f"{1 - cos10:.2e}"), A0=round(float(rec.alignment[0]), 4),
               A_final=round(float(rec.alignment[-1]), 4),
               final_loss=float(rec.loss_curve[-1]), kr_dist_init=round(d0, 4),
               kr_dist_final=round(dT, 4), ratio=round(d0 / dT, 2))
    rows.append(row)
    ctx.log_metrics(row)
    ax3.semilogy(rec.steps, rec.kr_distance, marker="o", ms=3, label=f"γ={gamma:g}")
  ax3.set(xscale="symlog", xlabel="step t of the kernel K_t",
          ylabel="‖f_{K_t} − f_NN‖ / ‖f_NN‖ (test)", title="digits: regression with K_t")
  ax3.legend(fontsize=7)
  fig3.tight_layout()
  ctx.savefig(fig3, "regression_gap")
  plt.close(fig3)

  # ---- (e) beyond the paper: Adam kernel; MSK-PGD if available
  rec = train_linear(ds.x_train, ds.y_train, s_min, c.adam_steps, optax.adam(c.adam_lr),
                     max(1, c.adam_steps // 150), diag.adam_kernel_weights(c.adam_lr))
  t10, cos10 = _at_norm_fraction(rec, 0.1)
  row = dict(claim="e", setting=f"Adam kernel J diag(η/(√v̂+ε)) Jᵀ, linear whitened",
             sigma=s_min, t_norm10=round(t10, 1), cos_at_norm10=round(cos10, 4),
             A0=round(float(rec.alignment[0]), 4), A_final=round(float(rec.alignment[-1]), 5),
             A_oracle=round(a_oracle, 5), final_loss=float(rec.loss_curve[-1]))
  rows.append(row)
  ctx.log_metrics(row)
  if not hasattr(mskjax, "msk_sgd"):
    rows.append(dict(claim="e", setting="MSK-PGD (mskjax.msk_sgd not available: left)"))

  keys = list(dict.fromkeys(k for r in rows for k in r))
  rows = [{k: r.get(k, "") for k in keys} for r in rows]
  ctx.write_table(rows, name="results")
  return rows
