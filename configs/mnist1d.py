"""MNIST-1D: PGD (the MSK preconditioner) against tuned SGD+momentum, Adam and Muon, MLP and CNN.

Command::

  python -m mskjax.run configs/mnist1d.py:quick        # < 60 s (CI smoke run)
  python -m mskjax.run configs/mnist1d.py              # the comparison (hours on 2 cores)
  python -m mskjax.run configs/mnist1d.py 'settings=(("mlp",128,3000,100),)'  # one setting
  python -m mskjax.run configs/mnist1d.py pgd_step=absolute   # PGD grid = learning rates

Set-up. MNIST-1D (``mskjax.data.load_mnist1d``: 4000 train / 1000 test sequences of length
40, 10 classes, generated offline), float32. The two architectures of the shared contract
(``mskjax/experiments/mnist1d.py``, the program this config runs: MLP 40 → 256 → 256 → 10;
1-D CNN with three stride-2 convs of 32 channels and a linear read-out), flax default
initialisation, mean softmax cross-entropy, minibatches of b points from
``mskjax.train.fit``'s shuffling iterator (b = 0 means full batch). Each seed of ``seeds``
fixes the initialisation, the batch order and the directions' subsample; every method of a
seed starts from the same parameters.

Methods (``methods``; the registry ``METHODS`` of the program, whose docstring says what
each does — Muon's treatment of biases and conv kernels included): ``sgd``
(``optax.sgd(lr, momentum)``), ``adam``, ``muon`` (``optax.contrib.muon``), ``pgd``
(``mskjax.msk_sgd(lr, directions, momentum=momentum)``), ``pgd_m`` (the same optimiser on
the absolute grid ``pgd_m_lrs``, tuned like ``sgd``'s: P added to the tuned baseline; not in
the default ``methods``) and ``pgd_adam`` (``optax.chain(mskjax.scale_by_msk(directions),
optax.adam(lr))``). The directions: g = ``g`` on the top
``k`` eigenvalues of the full (n·10)×(n·10) empirical NTK at initialisation
(``mskjax.msk_directions``) on ``subsample`` random training points, fixed during training.
``directions_loss`` (default ``'softmax_cross_entropy'``: the loss's Gauss–Newton kernel
H^½ J Jᵀ H^½, the recommended directions for cross-entropy; '' = the plain NTK J Jᵀ) is
passed on to ``msk_directions(..., loss=...)``. Their cold build time (compilation
included), plus the step measurement of ``pgd_step='measured'``, is the PGD methods'
one-off cost, added to their wall times.

Steps. Each method runs every value of its grid ``<method>_lrs`` on the ``tune_seeds``;
the value with the best mean final test accuracy (diverged runs score −1) then runs on
every seed of ``seeds``. ``pgd_step``: ``'measured'`` (default; ``pgd_factors`` multiply
``mskjax.stable_learning_rate(directions, b, loss_fn=, params=, batch=)`` = 0.75/λ̂ of the
preconditioned cross-entropy Hessian at initialisation on one random batch of b points,
per seed), ``'absolute'`` (``pgd_lrs`` are learning rates) or ``'stable'``
(``pgd_factors`` multiply the linearised critical-batch rule
``mskjax.steps.critical_batch_learning_rate(directions, b)``); ``pgd_adam`` is always absolute (Adam's
step does not scale with the gradient).

Training loop (``loop``): ``'fit'`` (``mskjax.train.fit``), ``'python'`` (one jitted step
called from Python, the same batches) or ``'auto'`` (python for the CNN — XLA:CPU runs
convolutions inside ``lax`` loops many times slower — fit for the MLP).

Measured per (architecture, batch size, method), mean ± std (ddof 1) over ``seeds``: final
test accuracy; steps and wall time to the target (the best baseline's mean final accuracy,
the best of sgd / adam / muon) and to the reference accuracy (68 % MLP, 94 % CNN; Greydanus &
Kobak), with the number of seeds that reach it; per-step cost; one-off, training and total
seconds at equal steps; test accuracy at equal wall time (the shortest mean total time of a
baseline: what each method has when the cheapest baseline run is done).
Wall time = training time (compilation and evaluations excluded) + the one-off cost; test
accuracy is evaluated every ``eval_every`` steps (a time to target is that of the first
evaluation reaching it).

Outputs: ``results.md/csv`` (best step per method), ``grid.md/csv`` (every run of the
tuning), ``summary.md/csv`` (per setting: target, fastest method to it, accuracy at equal
time, and per PGD method ``goal_<method>``: True when it reaches the target in
≥ ``goal_speedup``× less wall time than the fastest baseline with a final accuracy at most
``acc_tolerance`` below the target), ``directions.md/csv`` (per architecture and seed: λ₁,
λ_k, λ_{k+1}, residuals, cost), ``accuracy_<arch>_b<b>.png`` (test accuracy vs steps and
vs wall time, all methods).
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "mnist1d"       # mskjax/experiments/mnist1d.py
  # (architecture, batch size (0 = full batch), steps, evaluate every) per setting.
  # Budgets for the 2-core CPU: the MLP runs 3000 / 1000 / 200 steps (96 / 128 / 200
  # epochs); the CNN 3000 steps at b = 128 and 1500 at b = 512 (96 / 192 epochs: PGD reached
  # 94 % at step 250 of 400 at b = 512 in an earlier one-seed run, tuned SGD 0.91 at 400).
  # benchmarks/device.sh runs longer budgets and the CNN at full batch.
  c.settings = (("mlp", 128, 3000, 100), ("mlp", 512, 1000, 50), ("mlp", 0, 200, 10),
                ("cnn", 128, 3000, 100), ("cnn", 512, 1500, 50))
  c.methods = ("sgd", "adam", "muon", "pgd", "pgd_adam")
  c.seeds = (0, 1, 2)         # initialisation, batch order and directions' subsample
  c.tune_seeds = (0,)         # the seeds each grid value runs on (best mean final accuracy)
  c.seed = 0                  # added to every seed above (seed=3: seeds 3, 4, 5)
  c.sgd_lrs = (0.03, 0.1, 0.3, 1.0)
  c.adam_lrs = (1e-3, 3e-3, 1e-2, 3e-2)
  c.muon_lrs = (3e-3, 1e-2, 3e-2, 0.1)
  c.pgd_lrs = (0.03, 0.1, 0.3, 1.0)
  c.pgd_adam_lrs = (3e-4, 1e-3, 3e-3, 1e-2)
  c.pgd_m_lrs = c.sgd_lrs     # pgd_m (when listed in methods): SGD-momentum's own grid
  # "measured" (recommended): the pgd grid is pgd_factors × SAFETY/λ̂ = 0.75/λ̂ (measured
  # curvature); "absolute": pgd_lrs; "stable": pgd_factors × the linearised critical-batch
  # rule. The factors are the steps 0.25, 0.5, 1, 2 /λ̂ of the earlier grid (0.5–4 × the
  # 0.5/λ̂ rule of then): 2/λ̂ was the best MLP step without momentum, 4/λ̂ diverged
  # (docs/results.md#the-measured-step-rule-against-a-factor-2-grid).
  c.pgd_step = "measured"
  c.pgd_factors = (0.33, 0.67, 1.33, 2.67)
  c.momentum = 0.9            # sgd, pgd and pgd_m
  c.muon_conv = "matrix"      # muon on conv kernels as (width·in) × out matrices, or "adam"
  c.loop = "auto"             # "fit", "python" or "auto" (python for the CNN)
  # Flattened eigenvalues of the empirical NTK (n·10 outputs). Its spectrum comes in groups
  # of ~10 (the analytic kernel is K ⊗ I_10): k = 30 flattens the top three groups.
  c.k = 30
  c.subsample = 500           # points the directions are computed on
  c.g = "flatten"             # any mskjax.modifiers.from_name name (checked by validate)
  # msk_directions(..., loss=...): the cross-entropy's Gauss–Newton kernel (recommended);
  # '' = the plain NTK J Jᵀ.
  c.directions_loss = "softmax_cross_entropy"
  c.num_samples = 5000        # 4000 train / 1000 test
  # The goal of the preconditioner (summary.md, goal_<method>): a PGD method reaches the target
  # in >= goal_speedup x less wall time than the fastest baseline, final accuracy within
  # acc_tolerance of the target.
  c.goal_speedup = 3.0
  c.acc_tolerance = 0.01
  if arg.quick:
    # < 60 s: MLP, one seed, one step per method, small directions.
    c.settings = (("mlp", 128, 100, 25),)
    c.seeds = c.tune_seeds = (0,)
    c.sgd_lrs, c.adam_lrs, c.muon_lrs = (0.1,), (3e-3,), (1e-2,)
    c.pgd_lrs, c.pgd_adam_lrs, c.pgd_factors = (0.3,), (1e-3,), (1.0,)
    c.k, c.subsample, c.num_samples = 10, 100, 1000
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"num_samples": {"min": 100}, "k": {"min": 1}, "subsample": {"min": 2},
          "momentum": {"min": 0, "lt": 1}, "sgd_lrs": {"gt": 0}, "adam_lrs": {"gt": 0},
          "muon_lrs": {"gt": 0}, "pgd_lrs": {"gt": 0}, "pgd_adam_lrs": {"gt": 0},
          "pgd_m_lrs": {"gt": 0}, "pgd_factors": {"gt": 0}, "seeds": {"min": 0}, "tune_seeds": {"min": 0},
          "seed": {"min": 0}, "goal_speedup": {"gt": 0}, "acc_tolerance": {"min": 0},
          "pgd_step": {"choices": ("absolute", "stable", "measured")},
          "directions_loss": {"choices": ("", "mse", "softmax_cross_entropy")},
          "muon_conv": {"choices": ("matrix", "adam")},
          "loop": {"choices": ("fit", "python", "auto")},
          "methods": {"choices": ("sgd", "adam", "muon", "pgd", "pgd_m", "pgd_adam"),
                      "min_len": 1}}


def validate(c):
  from mskjax import modifiers
  modifiers.from_name(c.g)   # an unknown name fails here, listing the known names
  for setting in c.settings:
    if len(setting) != 4 or setting[0] not in ("mlp", "cnn"):
      raise ValueError(f"settings: each entry is (arch in 'mlp'/'cnn', batch size, steps, "
                       f"evaluate every); got {setting!r}.")
  if len(set(c.methods)) != len(c.methods):
    raise ValueError(f"methods: each method once; got {tuple(c.methods)!r}.")
  if not set(c.tune_seeds) <= set(c.seeds):
    raise ValueError(f"tune_seeds {tuple(c.tune_seeds)!r} must be a subset of seeds "
                     f"{tuple(c.seeds)!r} (the tuning runs are reused as those seeds' runs).")
