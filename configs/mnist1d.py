"""MNIST-1D: PGD (the MSK preconditioner) against tuned SGD+momentum and Adam, MLP and CNN.

Command::

  python -m mskjax.run configs/mnist1d.py quick=True   # < 60 s (CI)
  python -m mskjax.run configs/mnist1d.py              # the comparison (minutes on 2 cores)
  python -m mskjax.run configs/mnist1d.py 'settings=(("cnn",0,200,10),)'   # one setting

Set-up. MNIST-1D (``mskjax.data.load_mnist1d``: 4000 train / 1000 test sequences of length
40, 10 classes, generated offline), float32. The two architectures of the shared contract
(``benchmarks/mnist1d.py``: MLP 40 → 256 → 256 → 10; 1-D CNN with three stride-2 convs of
32 channels and a linear read-out), flax default initialisation (seed ``seed``), mean
softmax cross-entropy, minibatches of b points from ``mskjax.train.fit``'s shuffling
iterator (b = 0 means full batch). Every method starts from the same parameters.

Methods, each at every learning rate of its grid (the best one by final test accuracy is
reported; the grids are ``sgd_lrs``, ``adam_lrs``, ``pgd_lrs``):

* ``sgd``  — ``optax.sgd(lr, momentum)``;
* ``adam`` — ``optax.adam(lr)``;
* ``pgd``  — ``optax.chain(optim.scale_by_msk(directions), optax.sgd(lr, momentum))``:
  P = I + Σ_{i≤k} (g(λ_i)/λ_i − 1) q_i q_iᵀ with g = ``flatten`` on the top ``k``
  eigenvalues of the full (n·10)×(n·10) empirical NTK of the network at initialisation,
  computed matrix-free (``optim.msk_directions``) on ``subsample`` random training points.
  Directions are fixed (no refresh). Its one-off cost (``directions_s``, cold, compilation
  included) is added to its wall times.

Measured per (architecture, batch size, method): final test accuracy, the steps and
training wall time (compilation and evaluations excluded) to reach the reference accuracy
(68 % MLP, 94 % CNN; Greydanus & Kobak) and the best baseline's final accuracy (the higher
of tuned SGD's and Adam's), per-step cost, and whether PGD meets the goal: ≥
``goal_speedup``× less wall time than the best baseline to that accuracy with a final
accuracy no more than ``acc_tolerance`` below it. Test accuracy is evaluated every
``eval_every`` steps (the time to a target is that of the first evaluation reaching it).

Outputs: ``results.md/csv`` (best lr per method), ``grid.md/csv`` (every run),
``goal.md/csv`` (verdict per setting), ``directions.md/csv`` (λ₁, λ_k, λ_{k+1}, β,
residuals, cost), ``accuracy_<arch>.png`` (test accuracy vs steps and vs wall time).
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.quick = False
  # (architecture, batch size (0 = full batch), steps, evaluate every) per setting.
  # The 2-core CPU default; benchmarks/device.sh runs longer budgets and the CNN at b = 512
  # and full batch.
  c.settings = (("mlp", 128, 3000, 100), ("mlp", 512, 1000, 50), ("mlp", 0, 200, 10),
                ("cnn", 128, 400, 50))
  c.sgd_lrs = (0.03, 0.1, 0.3, 1.0)
  c.adam_lrs = (1e-3, 3e-3, 1e-2, 3e-2)
  c.pgd_lrs = (0.1, 0.3, 1.0)
  c.momentum = 0.9
  # Flattened eigenvalues of the empirical NTK (n·10 outputs). Its spectrum comes in groups
  # of ~10 (the analytic kernel is K ⊗ I_10): k = 30 flattens the top three groups.
  c.k = 30
  c.subsample = 500         # points the directions are computed on
  c.g = "flatten"
  c.num_samples = 5000      # 4000 train / 1000 test
  c.goal_speedup = 3.0
  c.acc_tolerance = 0.01    # "no loss of accuracy": within 1 point of the best baseline
  c.seed = 0
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"num_samples": {"min": 100}, "k": {"min": 1}, "subsample": {"min": 2},
          "momentum": {"min": 0, "lt": 1}, "sgd_lrs": {"gt": 0}, "adam_lrs": {"gt": 0},
          "pgd_lrs": {"gt": 0}, "goal_speedup": {"gt": 0}, "acc_tolerance": {"min": 0}}


def _settings(c):
  s = ml_collections.ConfigDict(c.to_dict())
  if c.quick:
    # MLP only: the CNN's top-k solve alone takes about a minute on 2 shared cores.
    s.settings = (("mlp", 128, 150, 25),)
    s.sgd_lrs, s.adam_lrs, s.pgd_lrs = c.sgd_lrs[1:2], c.adam_lrs[1:2], c.pgd_lrs[1:2]
    s.k, s.subsample, s.num_samples = 10, 100, 1000
  return s


def _lr_grid(s, method):
  return {"sgd": s.sgd_lrs, "adam": s.adam_lrs, "pgd": s.pgd_lrs}[method]


def run(config, ctx):
  import jax
  import jax.numpy as jnp
  import matplotlib.pyplot as plt
  import numpy as np

  from benchmarks import mnist1d as B
  from mskjax import data

  s = _settings(config)
  ds = data.load_mnist1d(num_samples=s.num_samples)
  x_raw = jnp.asarray(ds.x_train, jnp.float32)
  xt_raw = jnp.asarray(ds.x_test, jnp.float32)
  y, y_test = ds.y_train, ds.y_test
  n = x_raw.shape[0]
  ctx.print(f"mnist1d: n_train={n}, n_test={xt_raw.shape[0]}, float32, "
            f"backend {jax.default_backend()}")

  archs = list(dict.fromkeys(a for a, *_ in s.settings))
  inputs = {a: (B.inputs(a, x_raw), B.inputs(a, xt_raw)) for a in archs}
  variables = {a: B.init_params(a, inputs[a][0], s.seed) for a in archs}
  dirs = {}

  def directions(arch):
    """The MSKDirections of `arch` (built on first use in this process)."""
    if arch not in dirs:
      d, secs = B.build_directions(arch, variables[arch], inputs[arch][0], k=s.k,
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
    x, x_test = inputs[arch]
    b = None if int(bs) == 0 else int(bs)
    bname = "full" if b is None else str(b)
    for method in B.METHODS:
      cands = []
      for lr in _lr_grid(s, method):
        key = f"{arch}/b={bname}/{method}/lr={lr:g}"

        def compute(method=method, lr=lr):
          d = directions(arch)[0] if method == "pgd" else None
          if method == "pgd":
            directions_row(arch)
          tx = B.make_tx(method, lr, momentum=s.momentum, directions=d)
          return B.train_run(arch, variables[arch]["params"], tx, x, y, x_test, y_test,
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
    ref = B.REFERENCE_ACCURACY[arch]
    get = lambda m: recs[f"{arch}/b={bname}/{m}/lr={best[(arch, bname, m)]:g}"]
    base_final = max(get("sgd")["final_acc"], get("adam")["final_acc"])
    setting_rows = {}
    for method in B.METHODS:
      rec = get(method)
      off = one_off[arch] if method == "pgd" else 0.0
      st_ref, t_ref = B.first_reach(rec, ref, off)
      st_base, t_base = B.first_reach(rec, base_final, off)
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
                          reached_ref=",".join(m for m in B.METHODS
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
      for i, method in enumerate(B.METHODS):
        lr = best[(arch, bname, method)]
        rec = recs[f"{arch}/b={bname}/{method}/lr={lr:g}"]
        off = one_off[arch] if method == "pgd" else 0.0
        label = f"{method} lr={lr:g}"
        axes[0, j].plot(rec["curve_step"], rec["curve_acc"], color=f"C{i}", label=label)
        axes[1, j].plot(np.asarray(rec["curve_time"]) + off, rec["curve_acc"], color=f"C{i}",
                        label=label)
      for ax in axes[:, j]:
        ax.axhline(B.REFERENCE_ACCURACY[arch], color="gray", ls=":", lw=0.8)
        ax.set_ylabel("test accuracy")
      axes[0, j].set(xlabel="step", title=f"{arch}, b = {bname}")
      axes[1, j].set(xlabel="training wall time [s] (PGD: + directions)")
      axes[0, j].legend(fontsize=7)
    fig.suptitle(f"MNIST-1D {arch} (dotted: reference {B.REFERENCE_ACCURACY[arch]:.0%})")
    ctx.savefig(fig, f"accuracy_{arch}")
  return rows
