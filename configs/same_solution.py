"""GD and MSK-preconditioned GD reach the same solution (finite and infinite width).

Command::

  python -m mskjax.run configs/same_solution.py              # full, ~15-25 min on a loaded 2-core CPU
  python -m mskjax.run configs/same_solution.py:quick     # < 60 s (S¹ only, width 1024)

The program (set-up, method, outputs) is ``mskjax/experiments/same_solution.py``; this file
only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "same_solution"       # mskjax/experiments/same_solution.py
  c.seed = 0
  c.b_std = 0.1
  c.width = 4096
  c.tasks = ("S1", "S2")
  c.n_test = 128
  # S¹
  c.s1_n = 64
  c.s1_freqs = (1, 2, 4)
  c.s1_k = 3                  # top-k modified: frequencies {0, 1}
  # S²
  c.s2_n = 100
  c.s2_degrees = (1, 2, 4)
  c.s2_k = 4                  # degrees {0, 1}
  # g families: flatten, powerP (g = λ^P), expR (exponential decay with rate R)
  c.modifiers = ("flatten", "power0.5", "exp0.5")
  c.msk_mse_loss = True       # also PGD-flatten through msk_mse_loss (½ rᵀSr)
  c.amp = 1.0                 # target amplitude
  c.conv_tol = 1e-3           # train for 1.5x the steps to reach this predicted residual
  c.min_steps = 200
  c.max_steps = 3000
  c.s2_max_steps = 20000      # GD on S² needs ~12k steps to converge (1500 was not enough)
  c.num_records = 40          # recorded steps (log-spaced) for the distance curves
  if arg.quick:                # < 60 s: S¹ only, width 1024, flatten only
    c.tasks = ("S1",)
    c.width = 1024
    c.modifiers = ("flatten",)
    c.msk_mse_loss = False
    c.max_steps = 500
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"width": {"min": 1}, "n_test": {"min": 1}, "s1_n": {"min": 8},
          "s1_freqs": {"min": 0}, "s1_k": {"min": 1}, "s2_n": {"min": 8},
          "s2_degrees": {"min": 0}, "s2_k": {"min": 1}, "amp": {"gt": 0},
          "conv_tol": {"gt": 0, "lt": 1}, "min_steps": {"min": 1}, "max_steps": {"min": 1},
          "s2_max_steps": {"min": 1}, "num_records": {"min": 2},
          "tasks": {"choices": ("S1", "S2")}}


def validate(c):
  if 2 * max(c.s1_freqs) >= c.s1_n:
    raise ValueError(f"s1_freqs: every frequency must be < s1_n/2 = {c.s1_n / 2:g}.")
  if c.s1_k >= c.s1_n or c.s2_k >= c.s2_n:
    raise ValueError("s1_k/s2_k must be smaller than the number of points s1_n/s2_n.")
  for name in c.modifiers:
    from mskjax import modifiers
    modifiers.from_name(name)                      # unknown names fail before any work
