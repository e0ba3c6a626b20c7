"""MNIST-1D: the MSK preconditioner (PGD) against tuned SGD+momentum and Adam.

The experiment program of ``configs/mnist1d.py`` (which documents the set-up; also run by
``benchmarks/device.sh``); importable, every piece a small function:

* :class:`MLP` (40 → 256 → 256 → 10, ReLU) and :class:`CNN` (three ``nn.Conv``, 32
  channels, kernel sizes 5, 3, 3, stride 2, 'SAME', ReLU; flatten 5·32 = 160 →
  ``nn.Dense(10)``), flax linen, standard parameterisation (the shared contract);
* :func:`make_tx` — ``optax.sgd(lr, momentum)``, ``optax.adam(lr)`` or
  ``mskjax.msk_sgd(lr, directions, momentum=momentum)`` (PGD: the data-free preconditioner
  P = I + Σ_{i≤k}(g_i/λ_i − 1) q_i q_iᵀ, docs/theory.md#the-preconditioner-p-parameter-space,
  followed by the same momentum SGD as the baseline — the recommended minibatch path);
* :func:`build_directions` — the top-k directions of the empirical NTK of the network at
  initialisation (``mskjax.msk_directions`` on s ≤ n training points, g by name through
  ``mskjax.modifiers.from_name``), timed: the preconditioner's one-off cost;
* :func:`train_run` — one training run through the one loop :func:`mskjax.train.fit`
  (mean softmax cross-entropy, minibatches of b points from the seeded shuffling iterator,
  test accuracy and loss every ``eval_every`` steps, training wall time with the
  compilation and the evaluations excluded);
* :func:`first_reach` — steps and wall time to a test accuracy from a run's curve;
* :func:`run` — the comparison itself (``run(config, ctx)``, called by ``mskjax.run``).
"""
from __future__ import annotations

import functools
import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import mskjax
from mskjax import modifiers
from mskjax import train as T

ARCHS = ("mlp", "cnn")
METHODS = ("sgd", "adam", "pgd")
REFERENCE_ACCURACY = {"mlp": 0.68, "cnn": 0.94}   # Greydanus & Kobak, standard set


class MLP(nn.Module):
  """40 → 256 → 256 → 10, ReLU, ``nn.Dense`` (standard parameterisation)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(256)(x))
    x = nn.relu(nn.Dense(256)(x))
    return nn.Dense(10)(x)


class CNN(nn.Module):
  """Input (n, 40, 1); Conv(32, k) stride 2 'SAME' + ReLU for k = 5, 3, 3; flatten → Dense(10)."""

  @nn.compact
  def __call__(self, x):
    for ks in (5, 3, 3):
      x = nn.relu(nn.Conv(32, (ks,), strides=2, padding="SAME")(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


@functools.lru_cache(maxsize=None)
def model(arch: str) -> nn.Module:
  if arch not in ARCHS:
    raise ValueError(f"`arch` must be one of {ARCHS}; got {arch!r}.")
  return MLP() if arch == "mlp" else CNN()


def inputs(arch: str, x):
  """(n, 40) sequences → the model's input: as is (MLP) or with a channel axis (CNN)."""
  return x if arch == "mlp" else x[..., None]


@functools.lru_cache(maxsize=None)
def loss_fn(arch: str):
  """Mean softmax cross-entropy ``loss(params, (x, y), idx)`` for train.fit (one object per
  architecture, so every run of an architecture shares the compiled chunk)."""
  m = model(arch)

  def loss(params, batch, idx):
    logits = m.apply({"params": params}, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
  return loss


@functools.lru_cache(maxsize=None)
def eval_fn(arch: str):
  """Jitted ``(params, x, y) -> {'acc', 'test_loss'}`` of the architecture."""
  m = model(arch)

  @jax.jit
  def ev(params, x, y):
    logits = m.apply({"params": params}, x)
    return {"acc": jnp.mean(jnp.argmax(logits, -1) == y),
            "test_loss": optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()}
  return ev


def init_params(arch: str, x, seed: int = 0):
  """Flax initialisation of the architecture (float32 parameters)."""
  return jax.jit(model(arch).init)(jax.random.PRNGKey(seed), x[:2])


def build_directions(arch: str, variables, x, *, k: int, subsample: Optional[int],
                     g: str = "flatten", seed: int = 0):
  """``mskjax.msk_directions`` at initialisation, timed (cold: compilation included).

  Returns ``(MSKDirections, seconds)``.
  """
  gfn = modifiers.from_name(g)     # any registered name ("flatten", "power0.5", ...)
  t0 = time.perf_counter()
  d = mskjax.msk_directions(model(arch).apply, variables, x, gfn, int(k),
                            subsample=subsample, key=jax.random.PRNGKey(seed),
                            compute_beta=False)   # fixed lr grids: β (step rule) not needed
  jax.block_until_ready(d.directions)
  return d, time.perf_counter() - t0


def make_tx(method: str, lr: float, *, momentum: float = 0.9, directions=None):
  """The optimiser of a method (see the module docstring)."""
  if method == "sgd":
    return optax.sgd(lr, momentum=momentum)
  if method == "adam":
    return optax.adam(lr)
  if method == "pgd":
    if directions is None:
      raise ValueError("method 'pgd' needs `directions` (from build_directions).")
    return mskjax.msk_sgd(lr, directions, momentum=momentum)
  raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")


def train_run(arch: str, params, tx, x, y, x_test, y_test, *, batch_size: Optional[int],
              steps: int, eval_every: int, seed: int = 0, progress: bool = False,
              desc: str = "train") -> dict:
  """One run in :func:`mskjax.train.fit`; a JSON-able dict of its curve and costs.

  Diverged runs (cross-entropy above 50 or not finite) stop at once (``diverged``).
  """
  ev = eval_fn(arch)
  res = T.fit(loss_fn(arch), params, tx, (x, y), steps=steps, batch_size=batch_size,
              seed=seed, evaluate=lambda st: ev(st.params, x_test, y_test),
              eval_every=eval_every, stop_above={"loss": 50.0}, progress=progress, desc=desc)
  h = res.history
  ran = int(res.state.step)
  acc = [float(a) for a in h["acc"]]
  return dict(
      diverged=res.stopped is not None, steps_run=ran,
      final_acc=acc[-1], max_acc=max(acc), final_test_loss=float(h["test_loss"][-1]),
      final_train_loss=float(res.records["loss"][-1]) if len(res.records["loss"]) else None,
      per_step_ms=1e3 * res.train_s / max(ran, 1), train_s=res.train_s,
      compile_s=res.compile_s, eval_s=res.eval_s,
      curve_step=[int(s) for s in h["step"]], curve_time=[float(t) for t in h["time"]],
      curve_acc=acc, curve_test_loss=[float(v) for v in h["test_loss"]])


def first_reach(rec: dict, target: float, offset_s: float = 0.0):
  """(steps, wall seconds + offset) of the first evaluation with accuracy >= target, or
  (None, None)."""
  for s, t, a in zip(rec["curve_step"], rec["curve_time"], rec["curve_acc"]):
    if a >= target - 1e-12:
      return int(s), float(t) + offset_s
  return None, None


def _lr_grid(s, method):
  return {"sgd": s.sgd_lrs, "adam": s.adam_lrs, "pgd": s.pgd_lrs}[method]


def run(config, ctx):
  import jax
  import jax.numpy as jnp
  import matplotlib.pyplot as plt
  import numpy as np

  from mskjax import data

  s = config
  ds = data.load_mnist1d(num_samples=s.num_samples)
  x_raw = jnp.asarray(ds.x_train, jnp.float32)
  xt_raw = jnp.asarray(ds.x_test, jnp.float32)
  y, y_test = ds.y_train, ds.y_test
  n = x_raw.shape[0]
  ctx.print(f"mnist1d: n_train={n}, n_test={xt_raw.shape[0]}, float32, "
            f"backend {jax.default_backend()}")

  archs = list(dict.fromkeys(a for a, *_ in s.settings))
  arch_inputs = {a: (inputs(a, x_raw), inputs(a, xt_raw)) for a in archs}
  variables = {a: init_params(a, arch_inputs[a][0], s.seed) for a in archs}
  dirs = {}

  def directions(arch):
    """The MSKDirections of `arch` (built on first use in this process)."""
    if arch not in dirs:
      d, secs = build_directions(arch, variables[arch], arch_inputs[arch][0], k=s.k,
                                   subsample=s.subsample if s.subsample < n else None,
                                   g=s.g, seed=s.seed)
      row = dict(arch=arch, k=s.k, subsample=int(d.n_points), lam1=float(d.values[0]),
                 lam_k=float(d.values[-1]), lam_k1=float(d.next_value),
                 lam1_over_lamk1=float(d.values[0] / d.next_value),
                 max_residual=float(np.max(d.residuals)), directions_s=secs)
      dirs[arch] = (d, row)
      ctx.print(f"{arch}: directions k={s.k} on {row['subsample']} points in {secs:.1f} s, "
                f"λ₁/λ_(k+1) = {row['lam1_over_lamk1']:.1f}")
    return dirs[arch]

  def directions_row(arch):
    """Its cost and spectrum (a stored record on a resumed run: no recomputation)."""
    return ctx.cached(f"{arch}/directions/k={s.k}/s={s.subsample}",
                      lambda: dict(kind="directions", **directions(arch)[1]))

  grid_rows, best, recs = [], {}, {}
  for arch, bs, steps, every in s.settings:
    x, x_test = arch_inputs[arch]
    b = None if int(bs) == 0 else int(bs)
    bname = "full" if b is None else str(b)
    for method in METHODS:
      cands = []
      for lr in _lr_grid(s, method):
        key = f"{arch}/b={bname}/{method}/lr={lr:g}"

        def compute(method=method, lr=lr):
          d = directions(arch)[0] if method == "pgd" else None
          if method == "pgd":
            directions_row(arch)
          tx = make_tx(method, lr, momentum=s.momentum, directions=d)
          return train_run(arch, variables[arch]["params"], tx, x, y, x_test, y_test,
                             batch_size=b, steps=int(steps), eval_every=int(every),
                             seed=s.seed, progress=ctx.show_progress, desc=key)
        rec = ctx.cached(key, compute)
        recs[key] = rec
        grid_rows.append(dict(arch=arch, batch=bname, method=method, lr=lr,
                              steps=rec["steps_run"], final_acc=rec["final_acc"],
                              max_acc=rec["max_acc"], final_test_loss=rec["final_test_loss"],
                              per_step_ms=rec["per_step_ms"], diverged=rec["diverged"]))
        score = -1.0 if rec["diverged"] else rec["final_acc"]
        cands.append((score, rec["max_acc"], lr))
      best[(arch, bname, method)] = max(cands)[2]
  ctx.write_table(grid_rows, name="grid")
  dir_rows = [directions_row(arch) for arch in archs]
  ctx.write_table(dir_rows, name="directions",
                  columns=["arch", "k", "subsample", "lam1", "lam_k", "lam_k1",
                           "lam1_over_lamk1", "max_residual", "directions_s"])
  one_off = {r["arch"]: float(r["directions_s"]) for r in dir_rows}

  rows, goal_rows = [], []
  for arch, bs, steps, every in s.settings:
    bname = "full" if int(bs) == 0 else str(int(bs))
    ref = REFERENCE_ACCURACY[arch]
    get = lambda m: recs[f"{arch}/b={bname}/{m}/lr={best[(arch, bname, m)]:g}"]
    base_final = max(get("sgd")["final_acc"], get("adam")["final_acc"])
    setting_rows = {}
    for method in METHODS:
      rec = get(method)
      off = one_off[arch] if method == "pgd" else 0.0
      st_ref, t_ref = first_reach(rec, ref, off)
      st_base, t_base = first_reach(rec, base_final, off)
      row = dict(arch=arch, batch=bname, method=method, lr=best[(arch, bname, method)],
                 steps_budget=int(steps), final_acc=rec["final_acc"], max_acc=rec["max_acc"],
                 steps_to_ref=st_ref, wall_s_to_ref=t_ref, target_acc=base_final,
                 steps_to_target=st_base, wall_s_to_target=t_base,
                 per_step_ms=rec["per_step_ms"], one_off_s=off,
                 train_s=rec["train_s"] + off)
      setting_rows[method] = row
      rows.append(row)
    pgd = setting_rows["pgd"]
    base_times = [setting_rows[m]["wall_s_to_target"] for m in ("sgd", "adam")
                  if setting_rows[m]["wall_s_to_target"] is not None]
    t_base = min(base_times) if base_times else None
    t_pgd = pgd["wall_s_to_target"]
    speedup = (t_base / t_pgd) if (t_base is not None and t_pgd) else None
    acc_ok = pgd["final_acc"] >= base_final - s.acc_tolerance
    met = bool(speedup is not None and speedup >= s.goal_speedup and acc_ok)
    goal_rows.append(dict(arch=arch, batch=bname, target_acc=base_final,
                          best_baseline_s=t_base, pgd_s=t_pgd, speedup=speedup,
                          pgd_final_acc=pgd["final_acc"], acc_ok=acc_ok, goal_met=met,
                          ref_acc=ref,
                          reached_ref=",".join(m for m in METHODS
                                               if setting_rows[m]["steps_to_ref"] is not None)
                          or "none"))
  cols = ["arch", "batch", "method", "lr", "steps_budget", "final_acc", "max_acc",
          "steps_to_ref", "wall_s_to_ref", "target_acc", "steps_to_target",
          "wall_s_to_target", "per_step_ms", "one_off_s", "train_s"]
  ctx.write_table(rows, columns=cols)
  ctx.write_table(goal_rows, name="goal")
  ctx.log_metrics(dict(kind="goal", rows=goal_rows))

  # ---- plots: best-lr curve of every method, one column per batch size --------------------
  for arch in archs:
    sets = [(bs, steps) for a, bs, steps, _ in s.settings if a == arch]
    fig, axes = plt.subplots(2, len(sets), figsize=(4.2 * len(sets), 6.5), squeeze=False,
                             layout="constrained")
    for j, (bs, _) in enumerate(sets):
      bname = "full" if int(bs) == 0 else str(int(bs))
      for i, method in enumerate(METHODS):
        lr = best[(arch, bname, method)]
        rec = recs[f"{arch}/b={bname}/{method}/lr={lr:g}"]
        off = one_off[arch] if method == "pgd" else 0.0
        label = f"{method} lr={lr:g}"
        axes[0, j].plot(rec["curve_step"], rec["curve_acc"], color=f"C{i}", label=label)
        axes[1, j].plot(np.asarray(rec["curve_time"]) + off, rec["curve_acc"], color=f"C{i}",
                        label=label)
      for ax in axes[:, j]:
        ax.axhline(REFERENCE_ACCURACY[arch], color="gray", ls=":", lw=0.8)
        ax.set_ylabel("test accuracy")
      axes[0, j].set(xlabel="step", title=f"{arch}, b = {bname}")
      axes[1, j].set(xlabel="training wall time [s] (PGD: + directions)")
      axes[0, j].legend(fontsize=7)
    fig.suptitle(f"MNIST-1D {arch} (dotted: reference {REFERENCE_ACCURACY[arch]:.0%})")
    ctx.savefig(fig, f"accuracy_{arch}")
  return rows
