"""Digits: GD, tuned SGD-momentum, Adam and Muon vs MSK-preconditioned GD (flatten the top k).

Command::

  python -m mskjax.run configs/digits.py:quick     # < 60 s on a 2-core CPU
  python -m mskjax.run configs/digits.py              # full, ~10 min on a loaded 2-core CPU
  python -m mskjax.run configs/digits.py target_scale=0.01 --tag linear  # near-linear regime

The program (set-up, method, outputs) is ``mskjax/experiments/digits.py``; this file
only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "digits"       # mskjax/experiments/digits.py
  c.n_train = 500            # first n_train images of the stratified training split
  c.labels = "onehot"        # 'onehot' or 'pm1'
  c.target_scale = 1.0       # Y <- target_scale * labels (0.01: near-linear regime)
  c.depth = 1                # hidden layers (1 = the 2-layer net)
  c.width = 512
  c.b_std = 0.1
  c.ks = (10, 50)            # flattened eigenvalues for PGD
  c.tols = (0.5, 0.3)        # relative train residual targets (the last one selects lrs)
  c.steps = 3000             # full budget (every method)
  c.grid_steps = 300         # budget of the learning-rate grid runs
  c.chunk = 100              # steps per compiled chunk of mskjax.train.fit
  c.gd_factor = 1.0            # GD step gd_factor / λ₁ (a factor of the 1/λ rule)
  c.pgd_factors = (1.0, 0.5, 0.25)   # PGD steps factor / λ_{k+1}
  c.sgdm_factors = (0.3, 1.0, 3.0)   # SGD-momentum (0.9) steps factor / λ₁
  c.adam_lrs = (3e-3, 1e-2, 3e-2)
  c.muon_lrs = (1e-2, 3e-2, 0.1)    # optax.contrib.muon
  c.widen = 3                # tuned grids grow ≤ widen values past an end holding the best
  c.msk_sgd_jvp = True           # also run mskjax.function_space.msk_sgd_jvp for the smallest k
  c.seed = 0
  if arg.quick:                # < 60 s: one value per grid (no grid runs)
    c.n_train, c.width = 200, 256
    c.ks = (10,)
    c.steps, c.grid_steps, c.chunk = 400, 100, 50
    c.pgd_factors = (0.5,)
    c.adam_lrs = (1e-2,)
    c.sgdm_factors = (1.0,)
    c.muon_lrs = (1e-2,)
    c.msk_sgd_jvp = False
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"n_train": {"min": 16}, "width": {"min": 1}, "depth": {"min": 1},
          "ks": {"min": 1}, "steps": {"min": 1}, "grid_steps": {"min": 1}, "chunk": {"min": 1},
          "tols": {"gt": 0, "lt": 1}, "pgd_factors": {"gt": 0}, "gd_factor": {"gt": 0},
          "adam_lrs": {"gt": 0}, "sgdm_factors": {"gt": 0}, "muon_lrs": {"gt": 0},
          "widen": {"min": 0}, "target_scale": {"gt": 0},
          "labels": {"choices": ("onehot", "pm1")}}


def validate(c):
  if max(c.ks) >= c.n_train:
    raise ValueError(f"ks: every k must be < n_train = {c.n_train}.")
