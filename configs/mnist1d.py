"""MNIST-1D: PGD (the MSK preconditioner) against tuned SGD+momentum and Adam, MLP and CNN.

Command::

  python -m mskjax.run configs/mnist1d.py:quick        # < 60 s (CI)
  python -m mskjax.run configs/mnist1d.py              # the comparison (minutes on 2 cores)
  python -m mskjax.run configs/mnist1d.py 'settings=(("cnn",0,200,10),)'   # one setting

Set-up. MNIST-1D (``mskjax.data.load_mnist1d``: 4000 train / 1000 test sequences of length
40, 10 classes, generated offline), float32. The two architectures of the shared contract
(``mskjax/experiments/mnist1d.py``, the program this config runs: MLP 40 → 256 → 256 → 10;
1-D CNN with three stride-2 convs of 32 channels and a linear read-out), flax default initialisation (seed ``seed``), mean
softmax cross-entropy, minibatches of b points from ``mskjax.train.fit``'s shuffling
iterator (b = 0 means full batch). Every method starts from the same parameters.

Methods, each at every learning rate of its grid (the best one by final test accuracy is
reported; the grids are ``sgd_lrs``, ``adam_lrs``, ``pgd_lrs``):

* ``sgd``  — ``optax.sgd(lr, momentum)``;
* ``adam`` — ``optax.adam(lr)``;
* ``pgd``  — ``mskjax.msk_sgd(lr, directions, momentum=momentum)`` (= ``optax.chain(
  scale_by_msk(directions), optax.sgd(lr, momentum))``):
  P = I + Σ_{i≤k} (g(λ_i)/λ_i − 1) q_i q_iᵀ with g = ``flatten`` on the top ``k``
  eigenvalues of the full (n·10)×(n·10) empirical NTK of the network at initialisation,
  computed matrix-free (``mskjax.msk_directions``) on ``subsample`` random training points.
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

from mskjax.run import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "mnist1d"       # mskjax/experiments/mnist1d.py
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
  c.g = "flatten"           # any mskjax.modifiers.from_name name (checked by validate)
  c.num_samples = 5000      # 4000 train / 1000 test
  c.goal_speedup = 3.0
  c.acc_tolerance = 0.01    # "no loss of accuracy": within 1 point of the best baseline
  c.seed = 0
  if arg.quick:
    # < 60 s. MLP only: the CNN's top-k solve alone takes about a minute on 2 shared cores.
    c.settings = (("mlp", 128, 150, 25),)
    c.sgd_lrs, c.adam_lrs, c.pgd_lrs = (0.1,), (3e-3,), (0.3,)
    c.k, c.subsample, c.num_samples = 10, 100, 1000
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"num_samples": {"min": 100}, "k": {"min": 1}, "subsample": {"min": 2},
          "momentum": {"min": 0, "lt": 1}, "sgd_lrs": {"gt": 0}, "adam_lrs": {"gt": 0},
          "pgd_lrs": {"gt": 0}, "goal_speedup": {"gt": 0}, "acc_tolerance": {"min": 0}}


def validate(c):
  from mskjax import modifiers
  modifiers.from_name(c.g)   # an unknown name fails here, listing the known names
  for setting in c.settings:
    if len(setting) != 4 or setting[0] not in ("mlp", "cnn"):
      raise ValueError(f"settings: each entry is (arch in 'mlp'/'cnn', batch size, steps, "
                       f"evaluate every); got {setting!r}.")
