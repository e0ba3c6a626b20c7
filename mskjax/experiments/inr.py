"""Image fitting with a coordinate network (INR): optimisers against the spectral bias.

The experiment program of ``configs/inr.py`` (which documents the set-up); importable,
every piece a small function:

* data — :func:`load_image` (sklearn's bundled ``china.jpg`` / ``flower.jpg``, centre-cropped,
  resized, gray or RGB in [0, 1]), :func:`pixel_coords` (a ``[-1, 1]²`` grid, row-major),
  :func:`checkerboard_mask` (training pixels; the others are the held-out test pixels),
  :func:`fourier_features` (Tancik et al. 2020), :func:`psnr`;
* models — :class:`MLP` (ReLU), :class:`Siren`, :func:`make_model` (``'relu'``,
  ``'relu_ff'`` = Fourier features + ReLU MLP, ``'siren'``);
* methods — one function per method, ``method_<name>(setup, lr) -> Method`` (the optax
  transform, the loss it differentiates, the one-off cost in seconds), registered in
  :data:`METHODS`: ``adam``, ``sgd`` (momentum), ``gd``, ``muon`` (``optax.contrib.muon``),
  ``iga`` (:func:`mskjax.iga.iga_loss` + Adam), ``msk`` (``mskjax.msk_sgd``: P-preconditioned
  GD), ``msk_adam`` (``optax.chain(mskjax.scale_by_msk(d), optax.adam(lr))``). To add a
  method: write ``method_<name>`` and add it to :data:`METHODS` and the config's
  ``methods``/``grids``;
* :func:`learning_rates` — the grid of a method: ``grids[name]`` absolute steps, plus, for
  methods in :data:`RULE_METHODS`, factors ``rule_factors`` of the *measured* step
  ``mskjax.stable_learning_rate(d, loss_fn=, params=, batch=)`` (0.75/λ̂, λ̂ the top
  eigenvalue of P^½ ∇²L P^½ at initialisation by Lanczos; labels ``meas×f``);
* :func:`train` — a jitted step called from a Python loop, timed with
  ``block_until_ready`` (compilation and evaluations excluded), test/train PSNR every
  ``eval_every`` steps; a non-finite or exploding loss stops the run and marks it
  diverged (PSNR NaN), never an exception;
* :func:`at_time` — PSNR of a curve at a wall-time budget; :func:`time_to` — the first
  time a curve reaches a PSNR;
* :func:`run` — the comparison (``run(config, ctx)``, called by ``mskjax.run``).
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import mskjax
from mskjax import iga, modifiers, steps

IMAGES = ("china", "flower")
COLORS = ("gray", "rgb")
MODELS = ("relu", "relu_ff", "siren")
BASELINES = ("adam", "sgd", "gd", "muon")   # the methods whose best sets the target
LUMA = np.array([0.299, 0.587, 0.114])       # ITU-R BT.601


# ================================================================================ data
def load_image(name: str, size: int, color: str = "gray") -> np.ndarray:
  """sklearn's bundled sample image, centre-cropped to a square, resized to size×size.

  Returns float32 in [0, 1]: ``(size, size)`` for ``'gray'`` (BT.601 luma) or
  ``(size, size, 3)`` for ``'rgb'``. Offline (the JPEGs ship with scikit-learn).
  """
  from PIL import Image
  from sklearn.datasets import load_sample_image
  if name not in IMAGES:
    raise ValueError(f"`image` must be one of {IMAGES}; got {name!r}.")
  if color not in COLORS:
    raise ValueError(f"`color` must be one of {COLORS}; got {color!r}.")
  img = load_sample_image(f"{name}.jpg")               # (427, 640, 3) uint8
  h, w = img.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  im = Image.fromarray(img[top:top + s, left:left + s]).resize((int(size), int(size)),
                                                              Image.LANCZOS)
  a = np.asarray(im, np.float64) / 255.0
  if color == "gray":
    a = a @ LUMA
  return np.clip(a, 0.0, 1.0).astype(np.float32)


def pixel_coords(height: int, width: int) -> np.ndarray:
  """``(height·width, 2)`` pixel centres on a ``[-1, 1]²`` grid, row-major (y, x)."""
  ys, xs = np.linspace(-1, 1, height), np.linspace(-1, 1, width)
  return np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)


def checkerboard_mask(height: int, width: int) -> np.ndarray:
  """Training pixels: ``(i + j)`` even; the others (odd) are held out for test PSNR."""
  return np.add.outer(np.arange(height), np.arange(width)) % 2 == 0


def fourier_features(x, B):
  r"""Random Fourier features ``γ(x) = [cos 2πBx, sin 2πBx]`` (Tancik et al. 2020).

  Args:
    x: ``(n, d)`` coordinates.
    B: ``(m, d)`` frequencies (Tancik: entries N(0, σ²)).

  Returns:
    ``(n, 2m)``: the m cosines, then the m sines.
  """
  proj = 2 * np.pi * x @ jnp.asarray(B, x.dtype).T
  return jnp.concatenate([jnp.cos(proj), jnp.sin(proj)], axis=-1)


def fourier_matrix(m: int, sigma: float, seed: int, d: int = 2) -> np.ndarray:
  """B ~ N(0, σ²) of shape ``(m, d)``, seeded (float32)."""
  return (sigma * np.random.default_rng(seed).standard_normal((int(m), d))).astype(np.float32)


def psnr(pred, target, peak: float = 1.0):
  """``10 log10(peak² / mean((pred − target)²))`` in dB (no clipping)."""
  mse = jnp.mean((jnp.asarray(pred) - jnp.asarray(target)) ** 2)
  return 10.0 * jnp.log10(peak ** 2 / mse)


# ================================================================================ models
class MLP(nn.Module):
  """``depth`` hidden ``nn.Dense(width)`` layers with ReLU, then ``nn.Dense(out)``."""
  width: int = 256
  depth: int = 3
  out: int = 1

  @nn.compact
  def __call__(self, x):
    for _ in range(self.depth):
      x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(self.out)(x)


def _siren_init(scale):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class Siren(nn.Module):
  """SIREN (Sitzmann et al. 2020): sin(ω₀(Wx + b)) layers, their initialisation, linear out."""
  width: int = 256
  depth: int = 3
  out: int = 1
  omega0: float = 30.0

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    x = jnp.sin(self.omega0 * nn.Dense(self.width, kernel_init=_siren_init(1.0 / fan_in))(x))
    for _ in range(self.depth - 1):
      s = np.sqrt(6.0 / self.width) / self.omega0
      x = jnp.sin(self.omega0 * nn.Dense(self.width, kernel_init=_siren_init(s))(x))
    return nn.Dense(self.out, kernel_init=_siren_init(np.sqrt(6.0 / self.width) / self.omega0))(x)


def make_model(kind: str, *, width: int, depth: int, out: int) -> nn.Module:
  """``'relu'`` and ``'relu_ff'`` → :class:`MLP` (the input map differs), ``'siren'``."""
  if kind not in MODELS:
    raise ValueError(f"`models` entries must be in {MODELS}; got {kind!r}.")
  if kind == "siren":
    return Siren(width=width, depth=depth, out=out)
  return MLP(width=width, depth=depth, out=out)


def model_variants(models, ff_sigmas) -> list[tuple[str, str, float]]:
  """``[(label, kind, σ)]``: ``'relu_ff'`` becomes one model per σ (label ``relu_ff<σ>``)."""
  out = []
  for kind in models:
    if kind not in MODELS:
      raise ValueError(f"`models` entries must be in {MODELS}; got {kind!r}.")
    if kind == "relu_ff":
      out += [(f"relu_ff{float(sg):g}", kind, float(sg)) for sg in ff_sigmas]
    else:
      out.append((kind, kind, 0.0))
  return out


def model_inputs(kind: str, coords, *, ff_features: int, ff_sigma: float, seed: int):
  """The network's input: raw coordinates, or their Fourier features for ``'relu_ff'``."""
  x = jnp.asarray(coords, jnp.float32)
  if kind == "relu_ff":
    return fourier_features(x, fourier_matrix(ff_features, ff_sigma, seed))
  return x


# ================================================================================ methods
class Setup(NamedTuple):
  """Everything a method may need for one (image, model, seed)."""
  apply_fn: Callable          # model.apply
  variables: dict             # {'params': ...}
  x: jax.Array                # (n, d) training inputs
  y: jax.Array                # (n, c) training targets
  groups: np.ndarray          # (P, m) IGA patches of the training points
  config: object              # the ConfigDict
  directions: Callable        # () -> (MSKDirections, seconds): built once per setup
  measured: Callable = None   # () -> (η, seconds): measured P-preconditioned step, once


class Method(NamedTuple):
  tx: optax.GradientTransformation
  loss: Callable              # loss(params, x, y) -> scalar, differentiated each step
  one_off_s: float = 0.0      # e.g. building the MSK directions


def mse_half(apply_fn):
  """``½ mean_points Σ_c (f − y)²``: the loss of the step rule (``stable_learning_rate``)."""
  def loss(params, x, y):
    r = apply_fn({"params": params}, x) - y
    return 0.5 * jnp.mean(jnp.sum(r ** 2, axis=-1))
  return loss


def method_adam(setup: Setup, lr: float) -> Method:
  return Method(optax.adam(lr), mse_half(setup.apply_fn))


def method_sgd(setup: Setup, lr: float) -> Method:
  return Method(optax.sgd(lr, momentum=setup.config.momentum), mse_half(setup.apply_fn))


def method_gd(setup: Setup, lr: float) -> Method:
  return Method(optax.sgd(lr), mse_half(setup.apply_fn))


def method_muon(setup: Setup, lr: float) -> Method:
  # Muon on the 2-D kernels; its built-in Adam (same lr) on biases.
  return Method(optax.contrib.muon(lr), mse_half(setup.apply_fn))


def method_iga(setup: Setup, lr: float) -> Method:
  c = setup.config
  groups = setup.groups

  def loss(params, x, y):
    return iga.iga_loss(setup.apply_fn, {"params": params}, x, y, groups, c.iga_k,
                        sample=c.get("iga_sample", "max_error"))
  return Method(optax.adam(lr), loss)


def method_msk(setup: Setup, lr: float) -> Method:
  # One-off: the directions and the measured step its grid is built on (learning_rates).
  d, secs = setup.directions()
  secs += setup.measured()[1] if setup.measured is not None else 0.0
  return Method(mskjax.msk_sgd(lr, d), mse_half(setup.apply_fn), secs)


def method_msk_adam(setup: Setup, lr: float) -> Method:
  d, secs = setup.directions()
  return Method(optax.chain(mskjax.scale_by_msk(d), optax.adam(lr)), mse_half(setup.apply_fn),
                secs)


METHODS = {"adam": method_adam, "sgd": method_sgd, "gd": method_gd, "muon": method_muon,
           "iga": method_iga, "msk": method_msk, "msk_adam": method_msk_adam}
# Methods whose grid also holds factors of the measured step (measure_step).
RULE_METHODS = ("msk",)


def build_directions(setup_apply, variables, x, *, k: int, subsample: Optional[int], seed: int):
  """``mskjax.msk_directions`` (flatten, top k) at initialisation, timed cold (compile included).

  Returns ``(MSKDirections, seconds)``.
  """
  t0 = time.perf_counter()
  d = mskjax.msk_directions(setup_apply, variables, x, modifiers.flatten(), int(k),
                           subsample=subsample, key=jax.random.PRNGKey(seed))
  jax.block_until_ready(d.directions)
  return d, time.perf_counter() - t0


def measure_step(apply_fn, directions, params, x, y):
  """The measured step of P-preconditioned full-batch GD at ``params``, timed cold.

  ``mskjax.stable_learning_rate(d, loss_fn=½·MSE, params=, batch=(x, y))``: 0.75/λ̂ with λ̂
  the top positive eigenvalue of ``P^½ ∇²L P^½`` (Lanczos on exact Hessian-vector
  products, compilation included in the seconds). Returns ``(η, seconds)``.
  """
  loss = mse_half(apply_fn)
  t0 = time.perf_counter()
  eta = mskjax.stable_learning_rate(directions, loss_fn=lambda p, b: loss(p, *b),
                                   params=params, batch=(x, y))
  return float(eta), time.perf_counter() - t0


def learning_rates(setup: Setup, name: str) -> list[tuple[str, float]]:
  """``[(label, lr)]``: absolute steps of ``grids[name]``, and for :data:`RULE_METHODS` the
  factors ``rule_factors`` of the measured step (:func:`measure_step`, labels ``meas×f``)."""
  c = setup.config
  out = [(f"{lr:g}", float(lr)) for lr in c.grids[name]]
  if name in RULE_METHODS:
    eta, _ = setup.measured()
    out = [(f"meas×{f:g}", float(f) * eta) for f in c.rule_factors] + out
  return out


# ================================================================================ training
def train(method: Method, apply_fn: Callable, params, x, y, x_test, y_test, *, steps: int,
          eval_every: int, blowup: float = 1e4) -> dict:
  """Full-batch training: a jitted step from a Python loop; a JSON-able record.

  Wall time counts the steps only (compilation before the loop, evaluations excluded);
  ``curve_time`` starts at ``method.one_off_s``. The run stops as diverged when the loss is
  not finite or exceeds ``blowup`` × its initial value (PSNRs then NaN).
  """
  tx, loss = method.tx, method.loss

  @jax.jit
  def step(p, s, x, y):
    val, g = jax.value_and_grad(loss)(p, x, y)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, val

  @jax.jit
  def evaluate(p):
    return (psnr(apply_fn({"params": p}, x_test), y_test),
            psnr(apply_fn({"params": p}, x), y))

  state = tx.init(params)
  t0 = time.perf_counter()
  step_c = step.lower(params, state, x, y).compile()
  compile_s = time.perf_counter() - t0
  te, tr = (float(v) for v in evaluate(params))
  curve = dict(step=[0], time=[method.one_off_s], psnr=[te], train_psnr=[tr])
  l0 = float(jax.jit(loss)(params, x, y))
  diverged, elapsed, ran = False, 0.0, 0
  p = params
  t0 = time.perf_counter()
  for t in range(1, int(steps) + 1):
    p, state, val = step_c(p, state, x, y)
    ran = t
    if t % int(eval_every) == 0 or t == int(steps):
      jax.block_until_ready(p)
      elapsed += time.perf_counter() - t0
      v = float(val)
      if not np.isfinite(v) or v > blowup * max(l0, 1e-12):
        diverged = True
        break
      te, tr = (float(a) for a in evaluate(p))
      if not (np.isfinite(te) and np.isfinite(tr)):
        diverged = True
        break
      curve["step"].append(t)
      curve["time"].append(method.one_off_s + elapsed)
      curve["psnr"].append(te)
      curve["train_psnr"].append(tr)
      t0 = time.perf_counter()
  nan = float("nan")
  return dict(diverged=diverged, steps_run=ran,
              psnr=nan if diverged else curve["psnr"][-1],
              train_psnr=nan if diverged else curve["train_psnr"][-1],
              train_s=elapsed, s_per_step=elapsed / max(ran, 1), compile_s=compile_s,
              one_off_s=method.one_off_s, curve_step=curve["step"], curve_time=curve["time"],
              curve_psnr=curve["psnr"], curve_train_psnr=curve["train_psnr"])


def at_time(rec: dict, budget_s: float) -> float:
  """Test PSNR at the last evaluation with ``curve_time ≤ budget_s`` (NaN if diverged; the
  initial PSNR when even the one-off cost exceeds the budget)."""
  if rec["diverged"]:
    return float("nan")
  best = rec["curve_psnr"][0]
  for t, v in zip(rec["curve_time"], rec["curve_psnr"]):
    if t <= budget_s + 1e-9:
      best = v
  return float(best)


def time_to(rec: dict, target: float) -> float:
  """Wall time (one-off included) of the first evaluation with test PSNR ≥ ``target``; NaN if
  never (or diverged)."""
  if rec["diverged"]:
    return float("nan")
  for t, v in zip(rec["curve_time"], rec["curve_psnr"]):
    if v >= target:
      return float(t)
  return float("nan")


# ================================================================================ run
def summarize(recs: dict, methods, seeds, best: dict, setting: str, model: str) -> tuple:
  """Per-seed rows, per-method summary rows and the equal-time budget of one (setting, model).

  ``recs[(method, label, seed)]`` are :func:`train` records; ``best[method]`` the chosen label
  (None: every grid step diverged). The *target* is the best baseline's (:data:`BASELINES`)
  mean final test PSNR; ``time_to_target_s`` is when a run first reaches it (one-off
  included; mean over the seeds, NaN unless every seed reaches it) and
  ``speedup_vs_fastest`` the *fastest* baseline's time to that target (among the baselines
  that reach it on every seed: ``fastest_baseline``) over the run's (≥ 3: the goal).
  """
  chosen = {m: [recs[(m, best[m], s)] for s in seeds] for m in methods if best[m] is not None}
  budget = min(r["one_off_s"] + r["train_s"] for rs in chosen.values() for r in rs)
  base = [m for m in chosen if m in BASELINES]
  if base:
    mean = lambda m: np.mean([r["psnr"] for r in chosen[m]])     # NaN if a seed diverged
    bm = max(base, key=lambda m: mean(m) if np.isfinite(mean(m)) else -np.inf)
    target = float(np.mean([r["psnr"] for r in chosen[bm]]))
  else:
    bm, target = None, float("nan")
  seed_rows, rows = [], []
  for m in methods:
    if best[m] is None:
      rows.append(dict(setting=setting, model=model, method=m, lr="all diverged",
                       psnr=float("nan")))
      continue
    rs = chosen[m]
    tt = [time_to(r, target) for r in rs]
    for s, r, t in zip(seeds, rs, tt):
      seed_rows.append(dict(
          setting=setting, model=model, method=m, lr=best[m], lr_value=r["lr"], seed=s,
          psnr=r["psnr"], train_psnr=r["train_psnr"], time_budget_s=budget,
          psnr_at_budget=at_time(r, budget), ms_per_step=1e3 * r["s_per_step"],
          one_off_s=r["one_off_s"], total_s=r["one_off_s"] + r["train_s"],
          target_psnr=target, time_to_target_s=t, diverged=bool(r["diverged"])))
    ps = np.array([r["psnr"] for r in rs])
    pt = np.array([at_time(r, budget) for r in rs])
    reached = [t for t in tt if np.isfinite(t)]
    t_mean = float(np.mean(tt)) if len(reached) == len(tt) else float("nan")
    rows.append(dict(
        setting=setting, model=model, method=m, lr=best[m], lr_value=rs[0]["lr"],
        psnr=float(np.mean(ps)), psnr_std=float(np.std(ps)),
        train_psnr=float(np.mean([r["train_psnr"] for r in rs])),
        time_budget_s=budget, psnr_at_budget=float(np.mean(pt)),
        psnr_at_budget_std=float(np.std(pt)),
        ms_per_step=1e3 * float(np.mean([r["s_per_step"] for r in rs])),
        one_off_s=float(np.mean([r["one_off_s"] for r in rs])),
        total_s=float(np.mean([r["one_off_s"] + r["train_s"] for r in rs])),
        best_baseline=bm, target_psnr=target, seeds_reaching_target=len(reached),
        time_to_target_s=t_mean, diverged_seeds=int(sum(r["diverged"] for r in rs))))
  speedups_vs_fastest(rows)
  return seed_rows, rows, budget, chosen, target


def speedups_vs_fastest(rows: list) -> list:
  """Add ``fastest_baseline`` and ``speedup_vs_fastest`` (that baseline's mean time to the
  target ÷ the row's; NaN when either does not reach it on every seed) to the summary rows
  of one (setting, model), in place."""
  reach = [r for r in rows if r["method"] in BASELINES
           and np.isfinite(r.get("time_to_target_s", float("nan")))]
  fast = min(reach, key=lambda r: r["time_to_target_s"]) if reach else None
  for r in rows:
    t = r.get("time_to_target_s", float("nan"))
    r["fastest_baseline"] = fast["method"] if fast else None
    r["speedup_vs_fastest"] = (fast["time_to_target_s"] / t if fast and np.isfinite(t)
                               else float("nan"))
  return rows


def run(config, ctx):
  import matplotlib.pyplot as plt

  c = config
  for name in c.methods:
    if name not in METHODS:
      raise ValueError(f"`methods`: unknown method {name!r}; one of {tuple(METHODS)}.")
  variants = model_variants(c.models, c.ff_sigmas)
  ctx.print(f"inr: backend {jax.default_backend()}, float32 training")
  grid_rows, seed_rows, summary_rows, curve_rows = [], [], [], []
  for image, color, size in c.images:
    img = load_image(image, int(size), color)
    H = W = int(size)
    ch = 1 if color == "gray" else 3
    mask = checkerboard_mask(H, W)
    pix = img.reshape(H * W, ch)
    coords = pixel_coords(H, W)
    tr_idx, te_idx = np.flatnonzero(mask.ravel()), np.flatnonzero(~mask.ravel())
    groups = iga.patch_groups(H, W, int(c.iga_patch), mask=mask)
    y = jnp.asarray(pix[tr_idx])
    y_test = jnp.asarray(pix[te_idx])
    setting_tag = f"{image}/{color}/{size}"
    ctx.print(f"{setting_tag}: {len(tr_idx)} train / {len(te_idx)} test pixels, "
              f"IGA {groups.shape[0]} patches of {groups.shape[1]}")
    for label, kind, sigma in variants:
      model = make_model(kind, width=c.width, depth=c.depth, out=ch)
      recs = {}
      for seed in c.seeds:
        xin = model_inputs(kind, coords, ff_features=c.ff_features, ff_sigma=sigma, seed=seed)
        x, x_test = xin[tr_idx], xin[te_idx]
        variables = jax.jit(model.init)(jax.random.PRNGKey(seed), x[:2])
        cache = {}

        def directions(variables=variables, x=x, seed=seed, label=label):
          if "d" not in cache:
            d, secs = build_directions(model.apply, variables, x, k=c.msk_k,
                                       subsample=c.msk_subsample or None, seed=seed)
            rule = steps.critical_batch_learning_rate(d, batch_size=int(x.shape[0]))
            key = f"{setting_tag}/{label}/seed={seed}/directions"
            row = ctx.cached(key, lambda: dict(
                kind="directions", setting=setting_tag, model=label, seed=seed, k=c.msk_k,
                subsample=int(d.n_points), lam1=float(d.values[0]),
                lam_k1=float(d.next_value), beta=float(d.beta), rule_lr=rule,
                directions_s=secs))
            cache["d"] = (d, float(row["directions_s"]))
            ctx.print(f"  {label} seed {seed}: directions k={c.msk_k} on {int(d.n_points)} "
                      f"points in {secs:.1f} s, λ₁/λ_(k+1) = "
                      f"{float(d.values[0] / d.next_value):.1f}, linearised rule step "
                      f"{rule:.3g}")
          return cache["d"]

        def measured(variables=variables, x=x, seed=seed, label=label):
          if "eta" not in cache:
            d, _ = directions()
            key = f"{setting_tag}/{label}/seed={seed}/measured_step"
            row = ctx.cached(key, lambda: dict(zip(
                ("eta", "measure_s"), measure_step(model.apply, d, variables["params"], x, y)),
                kind="measured_step"))
            cache["eta"] = (float(row["eta"]), float(row["measure_s"]))
            ctx.print(f"  {label} seed {seed}: measured P-preconditioned step "
                      f"{cache['eta'][0]:.3g} ({cache['eta'][1]:.1f} s)")
          return cache["eta"]

        setup = Setup(model.apply, variables, x, y, groups, c, directions, measured)

        def one(name, lab, lr, seed=seed, setup=setup, x=x, x_test=x_test,
                variables=variables):
          key = f"{setting_tag}/{label}/{name}/lr={lab}/seed={seed}"

          def compute():
            m = METHODS[name](setup, lr)
            rec = train(m, model.apply, variables["params"], x, y, x_test, y_test, steps=c.steps,
                        eval_every=c.eval_every)
            return dict(rec, lr=lr, label=lab)
          rec = ctx.cached(key, compute)
          for f in ("psnr", "train_psnr"):
            rec[f] = float(rec[f])
          ctx.print(f"  {label} {name:9s} lr={lab:10s} seed {seed}: "
                    + ("diverged" if rec["diverged"] else
                       f"test {rec['psnr']:.2f} dB, train {rec['train_psnr']:.2f} dB")
                    + f", {1e3 * rec['s_per_step']:.1f} ms/step, one-off "
                    f"{rec['one_off_s']:.1f} s")
          return rec

        if seed == c.seeds[0]:        # the grid on the first seed picks each method's step
          for name in c.methods:
            for lab, lr in learning_rates(setup, name):
              rec = one(name, lab, lr)
              recs[(name, lab, seed)] = rec
              grid_rows.append(dict(setting=setting_tag, model=label, method=name, lr=lab,
                                    lr_value=lr, psnr=rec["psnr"],
                                    train_psnr=rec["train_psnr"], diverged=rec["diverged"],
                                    s_per_step=rec["s_per_step"]))
          best = {}
          for name in c.methods:
            cands = [(r["psnr"], k[1]) for k, r in recs.items()
                     if k[0] == name and not r["diverged"]]
            best[name] = max(cands)[1] if cands else None
        else:
          for name in c.methods:
            if best[name] is None:
              continue
            lr = dict(learning_rates(setup, name))[best[name]]
            recs[(name, best[name], seed)] = one(name, best[name], lr)

      # ---- per seed, summary at equal steps, equal wall time and time to target -------
      srows, rows, budget, chosen, target = summarize(recs, c.methods, c.seeds, best,
                                                      setting_tag, label)
      seed_rows += srows
      summary_rows += rows
      for name, rs in chosen.items():
        for s, r in zip(c.seeds, rs):
          for st, t, v, vt in zip(r["curve_step"], r["curve_time"], r["curve_psnr"],
                                  r["curve_train_psnr"]):
            curve_rows.append(dict(setting=setting_tag, model=label, method=name,
                                   lr=best[name], seed=s, step=st, time_s=t, psnr=v,
                                   train_psnr=vt))
      # ---- plots -------------------------------------------------------------------
      fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
      for i, name in enumerate(c.methods):
        if best[name] is None:
          continue
        rs = chosen[name]
        L = min(len(r["curve_psnr"]) for r in rs)
        stp = np.asarray(rs[0]["curve_step"][:L])
        ps = np.mean([r["curve_psnr"][:L] for r in rs], 0)
        ts = np.mean([r["curve_time"][:L] for r in rs], 0)
        lab = f"{name} ({best[name]})"
        axes[0].plot(stp, ps, color=f"C{i}", label=lab)
        axes[1].plot(ts, ps, color=f"C{i}", label=lab)
      for ax in axes:
        if np.isfinite(target):
          ax.axhline(target, color="k", ls="--", lw=0.6)
      axes[1].axvline(budget, color="gray", ls=":", lw=0.8)
      axes[0].set(xlabel="step", ylabel="test PSNR [dB]",
                  title=f"{setting_tag}, {label}: mean of {len(c.seeds)} seeds")
      axes[1].set(xlabel="wall time [s] (one-off costs included)", ylabel="test PSNR [dB]",
                  title=f"dashed: best baseline's final; dotted: equal time {budget:.1f} s")
      axes[0].legend(fontsize=7)
      ctx.savefig(fig, f"psnr_{image}_{color}_{size}_{label}")
  ctx.write_table(grid_rows, name="grid")
  ctx.write_table(curve_rows, name="curves")
  ctx.write_table(summary_rows, name="summary", columns=[
      "setting", "model", "method", "lr", "lr_value", "psnr", "psnr_std", "train_psnr",
      "time_budget_s", "psnr_at_budget", "psnr_at_budget_std", "ms_per_step", "one_off_s",
      "total_s", "best_baseline", "target_psnr", "seeds_reaching_target", "time_to_target_s",
      "fastest_baseline", "speedup_vs_fastest", "diverged_seeds"])
  ctx.write_table(seed_rows, name="results", columns=[
      "setting", "model", "method", "lr", "lr_value", "seed", "psnr", "train_psnr",
      "time_budget_s", "psnr_at_budget", "ms_per_step", "one_off_s", "total_s",
      "target_psnr", "time_to_target_s", "diverged"])
  return summary_rows
