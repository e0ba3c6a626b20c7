"""Finite width → infinite width: a network trained with ``msk_sgd_jvp`` vs the analytic MSK.

Command::

  python -m mskjax.run configs/width_sweep.py              # full, widths 256..16384, ~7 min
  python -m mskjax.run configs/width_sweep.py:quick     # < 60 s (widths 512, 1024, 2048)

The program (set-up, method, outputs) is ``mskjax/experiments/width_sweep.py``; this file
only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "width_sweep"       # mskjax/experiments/width_sweep.py
  c.n = 64                      # equispaced training points on S¹
  c.n_test = 40                 # random test angles
  c.js = (1, 2, 4)              # y = amp · Σ_j cos(jθ)
  c.amp = 1.0
  c.b_std = 0.0
  c.widths = (256, 512, 1024, 2048, 4096, 8192, 16384)
  c.seeds = 3                   # initialisations per width
  c.k = 3                       # PGD: flatten the top k (j = 0, 1)
  c.ts = (0, 1, 3, 10, 30, 100)  # recorded steps (max over these)
  c.test_seed = 3
  if arg.quick:                # < 60 s: widths 512, 1024, 2048, two seeds
    c.widths = (512, 1024, 2048)
    c.seeds = 2
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"n": {"min": 8}, "js": {"min": 0}, "k": {"min": 1}, "n_test": {"min": 1},
          "seeds": {"min": 1}, "ts": {"min": 0}, "widths": {"min": 1}, "amp": {"gt": 0}}


def validate(c):
  if 2 * max(c.js) >= c.n:
    raise ValueError(f"js: every frequency j must be < n/2 = {c.n / 2:g} (Nyquist).")
  if c.k >= c.n:
    raise ValueError(f"k must be < n = {c.n}, got {c.k}.")
