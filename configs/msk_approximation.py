"""Nyström MSK vs the exact Mercer MSK on the circle S¹, as the number of points grows.

Command::

  python -m mskjax.run configs/msk_approximation.py
  python -m mskjax.run configs/msk_approximation.py:quick     # < 60 s

The program (set-up, method, outputs) is ``mskjax/experiments/msk_approximation.py``; this file
only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "msk_approximation"       # mskjax/experiments/msk_approximation.py
  c.ns = (32, 64, 128, 256, 512, 1024, 2048)
  c.m = 3                    # modified frequencies 0..m  ->  k = 2m + 1
  c.modifiers = ("flatten", "scale0.3", "geomean")
  c.seeds = 3
  c.grid = 64                # evaluation grid on S¹
  c.b_std = 1.0              # bias: Fourier coefficients then decrease with frequency
  if arg.quick:                # < 60 s: n <= 256, one seed
    c.ns = (32, 64, 128, 256)
    c.seeds = 1
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"ns": {"min": 8}, "m": {"min": 0}, "seeds": {"min": 1}, "grid": {"min": 4},
          "b_std": {"min": 0}}


def validate(c):
  if 2 * c.m + 1 >= min(c.ns):
    raise ValueError(f"m: k = 2m+1 = {2 * c.m + 1} must be < the smallest n = {min(c.ns)}.")
  from mskjax import modifiers
  for name in c.modifiers:
    modifiers.from_name(name)        # an unknown name fails here, listing the known names
