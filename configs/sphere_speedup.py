"""Polynomial speed-up of MSK-preconditioned GD on the sphere (S¹ and S²).

Command::

  python -m mskjax.run configs/sphere_speedup.py              # full, ~15 min on a 2-core CPU
  python -m mskjax.run configs/sphere_speedup.py:quick     # < 60 s (S¹ only, small js)

The program (set-up, method, outputs) is ``mskjax/experiments/sphere_speedup.py``; this file
only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "sphere_speedup"       # mskjax/experiments/sphere_speedup.py
  c.seed = 0
  c.b_std = 0.1
  c.width = 4096             # finite network width
  c.amp = 0.01               # target amplitude (linear regime of the network)
  c.tol = 0.1                # stop at ‖r_t‖ < tol ‖y‖
  # S¹
  c.s1_n = 64
  c.s1_js = (1, 2, 3, 4, 6, 8, 12, 16)   # j <= n/4: far from aliasing (Nyquist n/2)
  c.s1_ks = (5, 11, 21)
  c.s1_network = True
  # S²
  c.s2_n = 400
  c.s2_js = (1, 2, 3, 4, 5, 6, 7, 8, 10)
  c.s2_blocks = (2, 3, 4, 5)     # number of leading degree blocks flattened -> k
  c.s2_network = True
  c.s2_network_js = (2, 4)  # S² network rows (a subset: n=400 steps are slow on 2 cores)
  c.fit_jmin = 4              # slopes are fitted over j >= fit_jmin (asymptotic regime)
  c.network_budget = 2.0     # train for budget × predicted steps (+10) before giving up
  c.max_steps = 20000        # cap on any single network run
  c.s2 = True                # the S² part
  if arg.quick:                # < 60 s: S¹ only, j in (4, 8), k = 11, width 1024
    c.s1_js = (4, 8)
    c.s1_ks = (11,)
    c.width = 1024
    c.s2 = False
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"tol": {"gt": 0, "lt": 1}, "s1_n": {"min": 8}, "s1_js": {"min": 1},
          "s1_ks": {"min": 1}, "width": {"min": 1}, "amp": {"gt": 0}, "s2_n": {"min": 8},
          "s2_js": {"min": 1}, "s2_blocks": {"min": 1}, "max_steps": {"min": 1}}


def validate(c):
  if 2 * max(c.s1_js) >= c.s1_n:
    raise ValueError(f"s1_js: every frequency j must be < s1_n/2 = {c.s1_n / 2:g} (Nyquist), "
                     f"got max {max(c.s1_js)}.")
  if max(c.s1_ks) >= c.s1_n:
    raise ValueError(f"s1_ks: every k must be < s1_n = {c.s1_n}, got max {max(c.s1_ks)}.")
