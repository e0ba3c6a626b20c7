"""Quickstart: GD vs MSK-preconditioned GD on high-frequency targets on the circle.

Command::

  python -m mskjax.run configs/quickstart.py            # ~30 s on an idle 2-core CPU
  python -m mskjax.run configs/quickstart.py:quick   # < 60 s

The program (set-up, method, outputs) is ``mskjax/experiments/quickstart.py``; this file
only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "quickstart"       # mskjax/experiments/quickstart.py
  c.n = 64                 # training points on S¹ (equispaced)
  c.n_test = 256           # test points (uniform random angles)
  c.js = (4, 8, 16)        # target frequencies cos(jθ)
  c.k = 21                 # modified eigenvalues; b_std=0: frequencies 0,1,2,4,..,18 (odd j≥3 have λ=0)
  c.depth = 1              # hidden layers
  c.width = 4096           # finite network width
  c.b_std = 0.0
  c.tol = 0.1              # stop at ‖r_t‖ < tol ‖y‖
  c.max_steps = 4000
  c.train_network = True   # also train the finite network
  c.amplitude = 0.01       # finite network's target scale (keeps it in the linear regime)
  c.seed = 0
  if arg.quick:                # < 60 s: j <= 8, width 2048
    c.js = (4, 8)
    c.width = 2048
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"n": {"min": 8}, "js": {"min": 0}, "k": {"min": 1}, "width": {"min": 1},
          "depth": {"min": 1}, "tol": {"gt": 0, "lt": 1}, "max_steps": {"min": 1},
          "amplitude": {"gt": 0}, "n_test": {"min": 1}, "b_std": {"min": 0}}


def validate(c):
  if 2 * max(c.js) >= c.n:
    raise ValueError(f"js: every frequency j must be < n/2 = {c.n / 2:g} (Nyquist), got "
                     f"max {max(c.js)}.")
  if c.k >= c.n:
    raise ValueError(f"k must be < n = {c.n}, got {c.k}.")
