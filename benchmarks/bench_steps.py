"""Step rules and tracking: what the MSK optimizers need to stay stable on real networks.

Three studies, each a ratio measured in one process (load cancels):

* ``tracking``: the lazy setting (one hidden ReLU layer of width 1024 in NTK scaling,
  first layer trained, 1024 points on the circle, target Σ_k sin(2πkθ) with
  k ∈ {0.2, 0.4, 0.8, 1.6}, θ in radians, mean MSE, full batch, float32, 5000 steps,
  flatten k = 10 at η = n/max g), in two variants of :func:`lazy_problem`: ``iga``
  (default; IGA-INR's experiment 1 as its code builds it: θ with the endpoint, b = 0 at
  init inside the 1/√2, a = ±1) and ``earlier`` (this project's earlier tables: b, a ~
  N(0, 1), b outside the 1/√2, θ ∈ [0, 2π)). Plain GD, the function-space form ½rᵀSr, the
  fixed directions (:func:`mskjax.optim.msk_sgd`), and the tracking preconditioner
  (:func:`mskjax.tracking.msk_sgd_tracking`), Löwdin ("tracking ...") and Rayleigh–Ritz
  ("tracking RR ..."), re-formed every step / every 10 steps / when the parameters moved
  by 1 % or 0.3 %; tuned Adam; for ``iga`` also IGA-INR's own optimiser (SGD lr 0.1 on the
  mean MSE, with and without its S). Records the time each method needs to reach tuned
  Adam's final (5000-step) train MSE and MSE 0.01, one-off costs included, over 3 seeds,
  with the per-step costs re-measured interleaved (the machine's load drifts), and the
  same rules on the network linearised at init (numpy).
* ``ablation``: ½rᵀSr in the ``iga`` setting with one choice of the ``earlier`` one at a
  time (:func:`bench_lazy_ablation`).
* ``steps``: :func:`mskjax.steps.stable_learning_rate` from the measured curvature vs a
  grid of factors of 2 around it (MNIST-1D MLP b = 128 and 512, the regression MLP).
* ``compose``: ``chain(scale_by_msk, adam)`` and ``chain(scale_by_msk, sgd momentum)``
  against tuned Adam / SGD-momentum on MNIST-1D MLP b = 128.

Run: ``python -m benchmarks.bench_steps [--quick] [--only tracking,ablation,steps,compose]
[--variant iga|earlier] [--seeds 0,1,2]``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import jax
import jax.numpy as jnp
import optax

from mskjax import function_space, modifiers, optim, tracking, steps as steps_mod
from mskjax.msk import MSKSpectrum


# ------------------------------------------------------------------ the lazy setting
LAZY_VARIANTS = ("earlier", "iga")


def lazy_problem(n=1024, width=1024, seed=0, variant="earlier", *, endpoint=None,
                 bias_std=None, readout=None, bias_inside=None):
  """The lazy one-layer problem: ``(x, y, params, apply_fn)``, W and b trained, a fixed.

  ``variant="earlier"``: the setting of this project's earlier tables — θ ∈ [0, 2π) without
  the endpoint, W, b, a ~ N(0, 1), f = aᵀ relu(W x/√2 + b)/√m (bias not scaled).
  ``variant="iga"``: IGA-INR's experiment 1 as its code builds it
  (``simple_function_approximation/experiment1/exp.py``, ``SimpleNN`` and
  ``AroraDataset``): θ = linspace(0, 2π, n) *with* the endpoint (θ = 0 and 2π are the
  same input x = (1, 0) with targets 0 and Σ sin(4π²k)), W ~ N(0, 1), b = 0 at init,
  a ∈ {−1, +1} uniform, f = aᵀ relu((W x + b)/√2)/√m (bias inside the 1/√2).
  Both: target Σ_k sin(2πkθ), k ∈ {0.2, 0.4, 0.8, 1.6} (θ in radians, so not periodic
  on the circle), NTK scaling, m = ``width``.

  The keywords override one choice of the variant (for the ablation,
  :func:`bench_lazy_ablation`): ``endpoint`` (bool), ``bias_std`` (b ~ N(0, bias_std²)),
  ``readout`` ("gaussian" or "rademacher"), ``bias_inside`` (b inside the 1/√2).
  """
  if variant not in LAZY_VARIANTS:
    raise ValueError(f"`variant` must be one of {LAZY_VARIANTS}; got {variant!r}.")
  iga = variant == "iga"
  endpoint = iga if endpoint is None else bool(endpoint)
  bias_std = (0.0 if iga else 1.0) if bias_std is None else float(bias_std)
  readout = ("rademacher" if iga else "gaussian") if readout is None else readout
  bias_inside = iga if bias_inside is None else bool(bias_inside)
  if readout not in ("gaussian", "rademacher"):
    raise ValueError(f"`readout` must be 'gaussian' or 'rademacher'; got {readout!r}.")
  theta = jnp.linspace(0.0, 2 * np.pi, n, endpoint=endpoint)
  x = jnp.stack([jnp.cos(theta), jnp.sin(theta)], 1)
  y = sum(jnp.sin(2 * np.pi * f * theta) for f in (0.2, 0.4, 0.8, 1.6))
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = {"W": jax.random.normal(k1, (2, width)),
            "b": bias_std * jax.random.normal(k2, (width,))}
  a = (jax.random.rademacher(k3, (width,), dtype=jnp.float32) if readout == "rademacher"
       else jax.random.normal(k3, (width,)))
  b_scale = 1 / np.sqrt(2.0) if bias_inside else 1.0

  def apply_fn(p, xx):   # NTK scaling; the output layer a is fixed
    return jax.nn.relu(xx @ p["W"] / np.sqrt(2.0) + p["b"] * b_scale) @ a / np.sqrt(width)
  return x, y, params, apply_fn


def _run(apply_fn, params, x, y, tx, steps, spectrum=None, return_params=False):
  """Full-batch training in one compiled ``lax.scan`` (no convolutions here, so the scan
  costs what a Python loop of the jitted step costs).

  Returns ``(mse, seconds, compile_seconds, state)``: ``mse[t]`` the train MSE (mean r²)
  after t steps, t = 0..steps (recorded from the loss evaluation the step does anyway);
  ``seconds`` the execution time of the compiled run, compilation excluded.
  ``spectrum``: train on the function-space form ½rᵀSr / n (``function_space.msk_mse_loss``).
  ``return_params``: append the final parameters to the returned tuple.
  """
  n = x.shape[0]

  def loss_fn(p):
    r = apply_fn(p, x) - y
    mse = jnp.mean(r ** 2)
    if spectrum is None:
      return 0.5 * mse, mse
    return function_space.msk_mse_loss(r, jnp.zeros_like(r), spectrum) / n, mse

  def run(p, st):
    def step(c, _):
      p, st = c
      (_, mse), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
      u, st = tx.update(g, st, p)
      return (optax.apply_updates(p, u), st), mse
    (p, st), mse = jax.lax.scan(step, (p, st), None, length=steps)
    return jnp.append(mse, jnp.mean((apply_fn(p, x) - y) ** 2)), st, p

  st0 = tx.init(params)
  t = time.perf_counter()
  compiled = jax.jit(run).lower(params, st0).compile()
  t_compile = time.perf_counter() - t
  t = time.perf_counter()
  mse, st, p = compiled(params, st0)
  mse = np.asarray(mse)
  if return_params:
    return mse, time.perf_counter() - t, t_compile, st, p
  return mse, time.perf_counter() - t, t_compile, st


def _time_to(mse, target, per_step, one_off):
  """Wall seconds until the train MSE first reaches ``target`` (one-off costs included),
  and the step; None if never."""
  hit = np.nonzero(np.isfinite(mse) & (mse <= target))[0]
  if not hit.size:
    return None, None
  return one_off + int(hit[0]) * per_step, int(hit[0])


ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
ADAM_GRID_IGA = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
MSE_GOAL = 0.01     # the target: train MSE ≤ 0.01 within 5000 steps
# the rows repeated over seeds; tracking every step (~15x a GD step here) only at seed 0
HEADLINE = ("gd (1/λ1)", "adam", "function-space ½rᵀSr", "tracking RR moved=1%",
            "tracking RR build-coef moved=1%")
# the faithful (variant="iga") setting: seed 0 runs all of these, later seeds the headline
IGA_ROWS = ("gd (1/λ1)", "adam", "function-space ½rᵀSr", "msk_sgd fixed",
            "tracking RR build-coef every=1", "tracking RR build-coef moved=1%",
            "IGA-INR code: GD lr=0.1", "IGA-INR code: S(K₀) lr=0.1")
IGA_HEADLINE = ("gd (1/λ1)", "adam", "function-space ½rᵀSr", "tracking RR build-coef moved=1%")


def linearised_mse(K, r0, rates, ts):
  """Train MSE of the network linearised at init (the lazy limit of this very network):
  r_t = V (1 − ρ)^t Vᵀ r₀ with K = V diag(λ) Vᵀ the empirical NTK at init and ρ_i the
  per-mode rate of the rule (numpy float64; an independent check of what laziness would
  give). ``rates``: callable λ (descending) → ρ."""
  lam, V = np.linalg.eigh(np.asarray(K, np.float64))
  lam, V = lam[::-1], V[:, ::-1]
  c = V.T @ np.asarray(r0, np.float64)
  rho = rates(lam)
  return {int(t): float(np.mean((c * (1.0 - rho) ** t) ** 2)) for t in ts}


def bench_tracking(quick=False, n=None, steps=None, only=None, seed=0, adam_lrs=ADAM_GRID,
                   variant="earlier"):
  """The lazy setting (``variant``: see :func:`lazy_problem`); every method from the same
  init in one process.

  Methods: GD at η = n/λ₁, Adam (best of ``adam_lrs`` by final train MSE), the
  function-space form ½rᵀSr (``function_space.msk_mse_loss`` + ``optax.sgd``), fixed directions
  (``optim.msk_sgd``) and the tracking preconditioner (``tracking.msk_sgd_tracking``:
  Rayleigh–Ritz every step, or when the parameters moved by 1 % / 0.3 %; the Löwdin
  variants under their old labels). One-off costs: the directions' build (shared by the
  preconditioned methods; for the function-space form it is its spectrum) and, for GD,
  a top-1 solve for λ₁. Time to Adam's final MSE = one-off + steps to reach it × the
  measured seconds per step of that run; likewise the time to ``MSE_GOAL``.
  "IGA-INR code: ..." rows: that code's own optimiser (``optim.SGD(lr=0.1)`` on the mean
  MSE, i.e. η = 0.2 on ½·mean; with the adjustment, S from the empirical NTK at init with
  its top-10 eigenvalues raised to λ₁ — ``xuhao 0, replace_start 0, replace_end 10``).
  ``out["linearised"]``: the same rules on the network linearised at init (numpy).
  """
  steps = steps or (300 if quick else 5000)
  n = n or (256 if quick else 1024)
  x, y, params, apply_fn = lazy_problem(n=n, width=n, seed=seed, variant=variant)
  k = 10
  g = modifiers.flatten()
  t = time.perf_counter()
  d = optim.msk_directions(apply_fn, params, x, g, k, compute_beta=False)
  jax.block_until_ready(d.directions)
  t_dirs = time.perf_counter() - t
  t = time.perf_counter()
  d1 = optim.msk_directions(apply_fn, params, x, g, 1, compute_beta=False)
  lam1 = float(d1.values[0])
  t_lam = time.perf_counter() - t
  spec = MSKSpectrum(d.values, d.vectors, d.new_values, d.next_value)
  eta = n / float(d.max_value)                    # 1/λ_max(K_g) for the mean loss
  eta_gd = n / lam1
  out = {"n": n, "width": n, "k": k, "steps": steps, "seed": seed, "variant": variant,
         "eta_msk": eta, "eta_gd": eta_gd, "lambda1": lam1, "lambda11": float(d.next_value),
         "directions_s": t_dirs, "lambda1_s": t_lam,
         "uptime": os.popen("uptime").read().strip()}
  jac = jax.jacrev(apply_fn)(params, x)
  jac = np.concatenate([np.asarray(v, np.float64).reshape(n, -1)
                        for v in jax.tree.leaves(jac)], 1)
  r0 = np.asarray(apply_fn(params, x) - y, np.float64)
  ts = tuple(t_ for t_ in (100, 1000) if t_ < steps) + (steps,)
  out["linearised"] = {
      "gd (1/λ1)": linearised_mse(jac @ jac.T, r0, lambda l: l / l[0], ts),
      "function-space ½rᵀSr": linearised_mse(
          jac @ jac.T, r0, lambda l: np.where(np.arange(l.size) < k, 1.0, l / l[k]), ts),
      "IGA-INR code: GD lr=0.1": linearised_mse(jac @ jac.T, r0, lambda l: 0.2 * l / n, ts),
      "IGA-INR code: S(K₀) lr=0.1": linearised_mse(
          jac @ jac.T, r0, lambda l: 0.2 * np.where(np.arange(l.size) < k, l[0], l) / n, ts)}
  print("  linearised at init (numpy): " + "; ".join(
      f"{m_} " + " / ".join(f"{v:.3g}" for v in r_.values())
      for m_, r_ in out["linearised"].items()), flush=True)
  spec_up = MSKSpectrum(d.values, d.vectors, jnp.full_like(d.values, d.values[0]),
                        d.next_value)
  one_off = {"gd (1/λ1)": t_lam}
  ritz = {"coefficients": "ritz"}     # the labels without "build-coef": Ritz-value coefficients
  runs = {"gd (1/λ1)": (optax.sgd(eta_gd), None),
          "IGA-INR code: GD lr=0.1": (optax.sgd(0.2), None),
          "IGA-INR code: S(K₀) lr=0.1": (optax.sgd(0.2), spec_up)}
  for lr in adam_lrs:
    runs[f"adam lr={lr:g}"] = (optax.adam(lr), None)
  runs.update({
      "function-space ½rᵀSr": (optax.sgd(eta), spec),
      "msk_sgd fixed": (optim.msk_sgd(eta, d), None),
      "tracking RR every=1": (tracking.msk_sgd_tracking(eta, apply_fn, x, d, **ritz), None),
      "tracking RR moved=1%": (tracking.msk_sgd_tracking(eta, apply_fn, x, d, moved=0.01, **ritz),
                               None),
      "tracking RR moved=0.3%": (tracking.msk_sgd_tracking(eta, apply_fn, x, d, moved=0.003,
                                                        **ritz), None),
      "tracking RR every=10": (tracking.msk_sgd_tracking(eta, apply_fn, x, d, every=10, **ritz),
                               None),
      "tracking RR build-coef every=1": (tracking.msk_sgd_tracking(
          eta, apply_fn, x, d, coefficients="build"), None),
      "tracking RR build-coef moved=1%": (tracking.msk_sgd_tracking(
          eta, apply_fn, x, d, moved=0.01, coefficients="build"), None),
      "tracking every=1": (tracking.msk_sgd_tracking(eta, apply_fn, x, d, rayleigh_ritz=False),
                           None),
      "tracking every=10": (tracking.msk_sgd_tracking(eta, apply_fn, x, d, every=10,
                                                   rayleigh_ritz=False), None),
      "tracking moved=1%": (tracking.msk_sgd_tracking(eta, apply_fn, x, d, moved=0.01,
                                                   rayleigh_ritz=False), None),
  })
  for name in runs:
    if not name.startswith(("gd", "adam", "IGA-INR code: GD")):
      one_off[name] = t_dirs
  for name, (tx, spec_) in runs.items():
    base = "adam" if name.startswith("adam") else name
    if (only is None and name.startswith("IGA-INR")) or (
        only is not None and base not in only and name not in only):
      continue
    mse, sec, t_comp, st = _run(apply_fn, params, x, y, tx, steps, spectrum=spec_)
    bad = np.nonzero(~np.isfinite(mse))[0]
    at = lambda t_: float(mse[min(t_, steps)])
    rec = {"final_mse": float(mse[-1]), "mse@100": at(100), "mse@1000": at(1000),
           "mse@5000": at(5000),
           "first_nan": int(bad[0]) if bad.size else None, "seconds": sec,
           "per_step_s": sec / steps, "compile_s": t_comp, "one_off_s": one_off.get(name, 0.0),
           "curve_every10": [float(v) for v in mse[::10]]}
    reforms = [s_.reforms for s_ in jax.tree.leaves(
        st, is_leaf=lambda s_: isinstance(s_, tracking.ScaleByMSKTrackingState))
        if isinstance(s_, tracking.ScaleByMSKTrackingState)]
    if reforms:
      rec["reforms"] = int(reforms[0])
    rec["_mse"] = mse
    out[name] = rec
    print(f"  {name:24s} MSE @100 {rec['mse@100']:.4g}  @1000 {rec['mse@1000']:.4g}  "
          f"final {rec['final_mse']:.4g}  first NaN {rec['first_nan']}  {sec:.1f}s "
          f"({1e3 * sec / steps:.2f} ms/step)"
          + (f"  reforms {rec['reforms']}" if reforms else ""), flush=True)
  adam = {k_: v for k_, v in out.items() if k_.startswith("adam lr=")}
  if adam:
    best = min(adam, key=lambda k_: adam[k_]["final_mse"]
               if np.isfinite(adam[k_]["final_mse"]) else np.inf)
    out["adam"] = dict(adam[best], lr=float(best.split("=")[1]))
    target = out["adam"]["final_mse"]
    t_adam = out["adam"]["seconds"]
    out["target_mse"] = target
    for name, rec in out.items():
      if not isinstance(rec, dict) or "_mse" not in rec:
        continue
      sec_to, step_to = _time_to(rec["_mse"], target, rec["per_step_s"], rec["one_off_s"])
      rec["time_to_adam_final_s"] = sec_to
      rec["steps_to_adam_final"] = step_to
      rec["adam_time_over_this"] = (t_adam / sec_to) if sec_to else None
      sec_g, step_g = _time_to(rec["_mse"], MSE_GOAL, rec["per_step_s"], rec["one_off_s"])
      rec["time_to_goal_s"], rec["steps_to_goal"] = sec_g, step_g
    print(f"  target (Adam lr={out['adam']['lr']:g}, final) MSE {target:.4g} in {t_adam:.1f}s")
    for name, rec in out.items():
      if isinstance(rec, dict) and "_mse" in rec and not name.startswith("adam lr="):
        print(f"    {name:24s} reaches it at step {rec['steps_to_adam_final']}, "
              f"{rec['time_to_adam_final_s']} s (one-off {rec['one_off_s']:.1f}s); "
              f"MSE {MSE_GOAL:g} at step {rec['steps_to_goal']}, {rec['time_to_goal_s']} s",
              flush=True)
  for rec in out.values():
    if isinstance(rec, dict):
      rec.pop("_mse", None)
  return out


ABLATION = {   # the faithful setting with one choice of the earlier setting, and back
    "iga (faithful)": dict(variant="iga"),
    "iga, endpoint=False": dict(variant="iga", endpoint=False),
    "iga, b ~ N(0,1)": dict(variant="iga", bias_std=1.0),
    "iga, a ~ N(0,1)": dict(variant="iga", readout="gaussian"),
    "iga, b outside 1/√2": dict(variant="iga", bias_inside=False),
    "iga, b ~ N(0,1) outside 1/√2": dict(variant="iga", bias_std=1.0, bias_inside=False),
    "earlier": dict(variant="earlier"),
}


def bench_lazy_ablation(n=1024, steps=5000, seed=0, cases=None):
  """Which difference between the earlier setting and IGA-INR's experiment 1 costs the
  function-space form ½rᵀSr (flatten k = 10, η = n/max g) its 0.01: one run per case from
  the same seed, with the linearised-at-init prediction of the same rule (numpy), how far
  the parameters moved (‖θ_T − θ₀‖/‖θ₀‖, W alone and W, b together) and how far the
  empirical NTK moved (‖K_T − K₀‖_F/‖K₀‖_F)."""
  out = {"uptime": os.popen("uptime").read().strip(), "n": n, "steps": steps, "seed": seed}
  for name in (cases or ABLATION):
    x, y, params, apply_fn = lazy_problem(n=n, width=n, seed=seed, **ABLATION[name])
    d = optim.msk_directions(apply_fn, params, x, modifiers.flatten(), 10, compute_beta=False)
    spec = MSKSpectrum(d.values, d.vectors, d.new_values, d.next_value)
    mse, *_, p_t = _run(apply_fn, params, x, y, optax.sgd(n / float(d.max_value)), steps,
                        spectrum=spec, return_params=True)

    def ntk(p_):
      jac = jax.jacrev(apply_fn)(p_, x)
      jac = np.concatenate([np.asarray(v, np.float64).reshape(n, -1)
                            for v in jax.tree.leaves(jac)], 1)
      return jac @ jac.T
    k0 = ntk(params)
    lin = linearised_mse(k0, np.asarray(apply_fn(params, x) - y, np.float64),
                         lambda l: np.where(np.arange(l.size) < 10, 1.0, l / l[10]), (steps,))
    flat = lambda p_: np.concatenate([np.ravel(np.asarray(v, np.float64))
                                      for v in jax.tree.leaves(p_)])
    moved = float(np.linalg.norm(flat(p_t) - flat(params)) / np.linalg.norm(flat(params)))
    moved_w = float(np.linalg.norm(np.asarray(p_t["W"] - params["W"]))
                    / np.linalg.norm(np.asarray(params["W"])))
    k_moved = float(np.linalg.norm(ntk(p_t) - k0) / np.linalg.norm(k0))
    out[name] = {"lambda1": float(d.values[0]), "lambda11": float(d.next_value),
                 "mse@0": float(mse[0]), "mse@100": float(mse[min(100, steps)]),
                 "mse@1000": float(mse[min(1000, steps)]), "final_mse": float(mse[-1]),
                 "linearised_final": lin[steps], "params_moved": moved, "W_moved": moved_w,
                 "ntk_moved": k_moved}
    print(f"  {name:30s} λ1 {out[name]['lambda1']:.4g} λ11 {out[name]['lambda11']:.4g} "
          f"MSE @0 {mse[0]:.3g} @100 {out[name]['mse@100']:.4g} @1000 "
          f"{out[name]['mse@1000']:.4g} final {mse[-1]:.4g} (linearised {lin[steps]:.3g}); "
          f"moved θ {moved:.3g}, W {moved_w:.3g}, NTK {k_moved:.3g}", flush=True)
  out["uptime_end"] = os.popen("uptime").read().strip()
  return out


def bench_tracking_timing(n=1024, seed=0, steps=100, rounds=3, adam_lr=0.3, variant="earlier"):
  """Per-step seconds of each method, interleaved (round-robin over methods, ``rounds``
  times, median), and the one-off builds the same way: on a shared machine whose load
  drifts during a long benchmark, the long runs' own timings are biased by when each ran;
  interleaving puts every method under the same load."""
  x, y, params, apply_fn = lazy_problem(n=n, width=n, seed=seed, variant=variant)
  g = modifiers.flatten()
  d = optim.msk_directions(apply_fn, params, x, g, 10, compute_beta=False)
  spec = MSKSpectrum(d.values, d.vectors, d.new_values, d.next_value)
  eta = n / float(d.max_value)
  meths = {"gd (1/λ1)": (optax.sgd(n / float(d.values[0])), None),
           "adam": (optax.adam(adam_lr), None),
           "function-space ½rᵀSr": (optax.sgd(eta), spec),
           "msk_sgd fixed": (optim.msk_sgd(eta, d), None),
           "tracking RR every=1": (tracking.msk_sgd_tracking(eta, apply_fn, x, d), None),
           "tracking RR moved=1%": (tracking.msk_sgd_tracking(eta, apply_fn, x, d, moved=0.01),
                                    None)}   # the cost does not depend on `coefficients`
  builds = {"directions_s": lambda: optim.msk_directions(apply_fn, params, x, g, 10,
                                                         compute_beta=False).directions,
            "lambda1_s": lambda: optim.msk_directions(apply_fn, params, x, g, 1,
                                                      compute_beta=False).values}
  times = {m: [] for m in list(meths) + list(builds)}
  for r in range(rounds):
    for m, (tx, sp) in meths.items():
      times[m].append(_run(apply_fn, params, x, y, tx, steps, spectrum=sp)[1] / steps)
    for m, fn in builds.items():
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[m].append(time.perf_counter() - t)
  out = {m: float(np.median(v)) for m, v in times.items()}
  out["raw"] = times
  out["uptime"] = os.popen("uptime").read().strip()
  base = out["gd (1/λ1)"]
  for m in meths:
    print(f"  {m:24s} {1e3 * out[m]:.2f} ms/step  ({out[m] / base:.1f}x GD)", flush=True)
  for m in builds:
    print(f"  {m:24s} {out[m]:.2f} s", flush=True)
  return out


def bench_tracking_seeds(seeds=(0, 1, 2), n=1024, steps=5000, out_prefix=None,
                         variant="iga", timing=True):
  """Seed 0: every method of the table (Adam's whole grid); further seeds (network init):
  the headline rows, Adam at seed 0's best lr; then the interleaved per-step timing
  (:func:`bench_tracking_timing`). Writes one json per seed + timing.

  ``variant="iga"`` (IGA-INR's experiment 1, :func:`lazy_problem`): rows ``IGA_ROWS`` /
  ``IGA_HEADLINE``, Adam grid ``ADAM_GRID_IGA``; ``variant="earlier"``: the rows and grid
  of the earlier tables."""
  res = {}
  lr = None
  iga = variant == "iga"
  for seed in seeds:
    print(f"seed {seed} variant {variant}  ({os.popen('uptime').read().strip()})", flush=True)
    if seed == seeds[0]:
      only = IGA_ROWS if iga else (
          "gd (1/λ1)", "adam", "function-space ½rᵀSr", "msk_sgd fixed",
          "tracking RR every=1", "tracking RR moved=1%", "tracking RR moved=0.3%",
          "tracking RR build-coef every=1", "tracking RR build-coef moved=1%")
      r = bench_tracking(n=n, steps=steps, seed=seed, only=only, variant=variant,
                         adam_lrs=ADAM_GRID_IGA if iga else ADAM_GRID)
      lr = r["adam"]["lr"]
    else:
      r = bench_tracking(n=n, steps=steps, seed=seed, only=IGA_HEADLINE if iga else HEADLINE,
                         adam_lrs=(lr,), variant=variant)
    r["uptime_end"] = os.popen("uptime").read().strip()
    res[seed] = r
    if out_prefix:
      with open(f"{out_prefix}_seed{seed}.json", "w") as fh:
        json.dump(r, fh, indent=1, default=float)
  if timing:
    res["timing"] = bench_tracking_timing(n=n, seed=seeds[0], adam_lr=lr, variant=variant)
    if out_prefix:
      with open(f"{out_prefix}_timing.json", "w") as fh:
        json.dump(res["timing"], fh, indent=1, default=float)
  return res


# ------------------------------------------------------------------ step rule vs grid
def _mlp(sizes, key, b_std=0.0):
  """Standard-parameterised ReLU MLP: W ~ N(0, 1/fan_in), biases N(0, b_std²)."""
  ps = []
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    k1, k2, key = jax.random.split(key, 3)
    ps.append({"W": jax.random.normal(k1, (a, b)) / np.sqrt(a),
               "b": b_std * jax.random.normal(k2, (b,))})

  def apply_fn(p, x):
    for i, l in enumerate(p):
      x = x @ l["W"] + l["b"]
      if i < len(p) - 1:
        x = jax.nn.relu(x)
    return x
  return ps, apply_fn


def regression_problem(n=256):
  x = jnp.linspace(0.0, 1.0, n)[:, None]
  y = sum(jnp.sin(2 * np.pi * f * x) for f in (1, 4, 16, 32))
  params, f = _mlp([1, 512, 512, 1], jax.random.PRNGKey(0), b_std=1.0)
  loss = lambda p, b: 0.5 * jnp.mean((f(p, b[0]) - b[1]) ** 2)
  return f, params, (x, y), loss, "mse"


def mnist1d_problem():
  from mskjax import data as _data
  ds = _data.load_mnist1d()
  params, f = _mlp([40, 256, 256, 10], jax.random.PRNGKey(0))
  loss = lambda p, b: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(f(p, b[0]),
                                                                               b[1]))
  return f, params, (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)), loss, "ce"


def _train(loss, params, data, tx, steps, b, seed=0, reestimate=None):
  """SGD loop (jitted step, minibatches of a fixed random order); returns the final
  full-train loss (inf on divergence) and the loss curve every 10 steps."""
  n = data[0].shape[0]

  @jax.jit
  def step(p, st, idx):
    batch = jax.tree.map(lambda a: a[idx], data)
    g = jax.grad(loss)(p, batch)
    u, st = tx.update(g, st, p)
    return optax.apply_updates(p, u), st

  full = jax.jit(lambda p: loss(p, data))
  rng = np.random.default_rng(seed)
  st = tx.init(params)
  p = params
  curve = []
  for t in range(steps):
    idx = rng.choice(n, b, replace=False) if b < n else np.arange(n)
    if reestimate is not None and t > 0 and t % reestimate[0] == 0:
      st = steps_mod.set_learning_rate(st, reestimate[1](p, jax.tree.map(lambda a: a[idx],
                                                                         data)))
    p, st = step(p, st, idx)
    if t % 10 == 9 or t == steps - 1:
      L = float(full(p))
      curve.append(L)
      if not np.isfinite(L) or L > 1e6:
        return float("inf"), curve
  return float(full(p)), curve


def bench_steps(quick=False):
  steps = 100 if quick else 300
  factors = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0] if not quick else [0.5, 1.0, 2.0]
  out = {}
  # k = 16: at k = 32 λ₃₂ (0.57) is below the float32 round-off floor of this Gram matrix (2.8)
  # and msk_directions refuses it (the earlier tables used k = 32).
  cases = [("regression MLP full batch", regression_problem, None, 16, None),
           ("MNIST-1D MLP b=128", mnist1d_problem, 128, 20, 256),
           ("MNIST-1D MLP b=512", mnist1d_problem, 512, 20, 256)]
  if quick:
    cases = cases[:2]
  for name, make, b, k, sub in cases:
    f, params, data, loss, kind = make()
    n = data[0].shape[0]
    bb = b or n
    t = time.perf_counter()
    d = optim.msk_directions(f, params, data[0], modifiers.flatten(), k, subsample=sub,
                             compute_beta=False, max_cycles=3)
    t_dirs = time.perf_counter() - t
    rng = np.random.default_rng(1)
    idx = rng.choice(n, bb, replace=False) if bb < n else np.arange(n)
    batch = jax.tree.map(lambda a: a[idx], data)
    rec = {"directions_s": t_dirs}
    for meth, dd in (("sgd", None), ("msk", d)):
      t = time.perf_counter()
      eta = steps_mod.stable_learning_rate(dd, loss_fn=loss, params=params, batch=batch)
      t_rule = time.perf_counter() - t
      res = {}
      for fac in factors:
        tx = optax.sgd(fac * eta) if dd is None else optim.msk_sgd(fac * eta, dd)
        res[fac] = _train(loss, params, data, tx, steps, bb)[0]
      finite = {k_: v for k_, v in res.items() if np.isfinite(v)}
      best = min(finite, key=finite.get) if finite else None
      rec[meth] = {"eta_rule": eta, "rule_s": t_rule, "final_loss": res, "best_factor": best,
                   "rule_diverged": not np.isfinite(res[1.0])}
      print(f"  {name:26s} {meth}: rule η={eta:.4g} ({t_rule:.1f}s)  best factor {best}  "
            + "  ".join(f"{k_}:{v:.4g}" for k_, v in res.items()), flush=True)
    out[name] = rec
  return out


def bench_reestimate(steps=600, every=100):
  """Regression MLP, MSK: η fixed at the rule at init vs re-estimated every 100 steps."""
  f, params, data, loss, _ = regression_problem()
  d = optim.msk_directions(f, params, data[0], modifiers.flatten(), 16, compute_beta=False,
                           max_cycles=3)
  est = steps_mod.curvature_estimator(loss, d)
  eta0 = float(est(params, data)[0])
  out = {}
  for name, re in (("fixed", None), (f"every {every}", (every, lambda p, b: est(p, b)[0]))):
    tx = optax.inject_hyperparams(optim.msk_sgd)(learning_rate=eta0, directions=d)
    L, curve = _train(loss, params, data, tx, steps, data[0].shape[0], reestimate=re)
    out[name] = {"final_loss": L, "curve": curve[::10]}
    print(f"  re-estimation {name}: final loss {L:.4g}", flush=True)
  return out


# ------------------------------------------------------------------ composition
def bench_compose(quick=False, steps=300, b=128):
  """chain(scale_by_msk(d), adam / sgd-momentum) vs tuned adam / sgd-momentum, MNIST-1D MLP."""
  from mskjax import data as _data
  ds = _data.load_mnist1d()
  f, params, data, loss, _ = mnist1d_problem()
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  acc = jax.jit(lambda p: jnp.mean(jnp.argmax(f(p, xt), 1) == yt))
  t = time.perf_counter()
  d = optim.msk_directions(f, params, data[0], modifiers.flatten(), 20, subsample=256,
                           compute_beta=False, max_cycles=3)
  t_dirs = time.perf_counter() - t
  steps = 60 if quick else steps
  grids = {"adam": [1e-3, 3e-3, 1e-2], "sgd-momentum": [0.03, 0.1, 0.3]}
  if not quick:
    grids = {"adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2], "sgd-momentum": [0.01, 0.03, 0.1, 0.3, 1.0]}
  make = {"adam": lambda lr: optax.adam(lr), "sgd-momentum": lambda lr: optax.sgd(lr, 0.9)}
  out = {"directions_s": t_dirs, "steps": steps, "b": b}
  for base, grid in grids.items():
    for pre in (False, True):
      name = ("msk+" if pre else "") + base
      runs = {}
      for lr in grid:
        tx = make[base](lr)
        if pre:
          tx = optax.chain(optim.scale_by_msk(d), tx)
        t = time.perf_counter()
        L, curve = _train(loss, params, data, tx, steps, b)
        sec = time.perf_counter() - t
        runs[lr] = {"train_loss": L, "seconds": sec}
      best = min(runs, key=lambda k_: runs[k_]["train_loss"])
      out[name] = {"runs": runs, "best_lr": best, "best_train_loss": runs[best]["train_loss"]}
      print(f"  {name:18s} best lr {best:g}: train loss {runs[best]['train_loss']:.4g}  "
            + "  ".join(f"{k_:g}:{v['train_loss']:.3g}" for k_, v in runs.items()), flush=True)
  # equal wall time: the baselines get the directions' build time as extra steps
  for base in grids:
    per_step = out[base]["runs"][out[base]["best_lr"]]["seconds"] / steps
    extra = int(t_dirs / max(per_step, 1e-9))
    tx = make[base](out[base]["best_lr"])
    L, _ = _train(loss, params, data, tx, steps + extra, b)
    out[base]["equal_time_steps"] = steps + extra
    out[base]["equal_time_train_loss"] = L
    print(f"  {base:18s} at equal wall time ({steps + extra} steps): train loss {L:.4g}",
          flush=True)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--only", default="tracking,ablation,steps,compose")
  ap.add_argument("--out", default=None)
  ap.add_argument("--variant", default="iga", choices=LAZY_VARIANTS,
                  help="tracking: the lazy problem (iga = IGA-INR's experiment 1 as its "
                       "code builds it; earlier = this project's earlier tables)")
  ap.add_argument("--seeds", default="0,1,2", help="tracking: network-init seeds")
  a = ap.parse_args(argv)
  res = {"uptime": os.popen("uptime").read().strip()}
  print(res["uptime"])
  parts = a.only.split(",")
  if "tracking" in parts:
    print("tracking (lazy one-layer network)")
    if a.quick:
      rows = (IGA_ROWS if a.variant == "iga" else HEADLINE + ("msk_sgd fixed",))
      res["tracking"] = bench_tracking(True, only=rows + ("tracking RR moved=1%",),
                                       variant=a.variant, adam_lrs=(0.01, 0.1))
    else:
      os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
      name = "tracking_iga_n1024" if a.variant == "iga" else "tracking_n1024"
      res["tracking"] = bench_tracking_seeds(
          seeds=tuple(int(v) for v in a.seeds.split(",")), variant=a.variant,
          out_prefix=os.path.join(os.path.dirname(__file__), "results", name))
  if "ablation" in parts:
    print("lazy setting: earlier vs IGA-INR's experiment 1, one choice at a time (½rᵀSr)")
    res["ablation"] = bench_lazy_ablation(
        n=256 if a.quick else 1024, steps=300 if a.quick else 5000,
        cases=("iga (faithful)", "earlier") if a.quick else None)
    if not a.quick:
      os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
      with open(os.path.join(os.path.dirname(__file__), "results",
                             "tracking_ablation_n1024.json"), "w") as fh:
        json.dump(res["ablation"], fh, indent=1, default=float)
  if "steps" in parts:
    print("step rule vs grid")
    res["steps"] = bench_steps(a.quick)
    if not a.quick:
      res["reestimate"] = bench_reestimate()
  if "compose" in parts:
    print("composition with adam / momentum")
    res["compose"] = bench_compose(a.quick)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(res, f, indent=1, default=float)
  return res


if __name__ == "__main__":
  main()
