"""Exponential speed-up of MSK-preconditioned GD for smooth activations (S¹ and S²).

Command::

  python -m mskjax.run configs/exponential_speedup.py              # full, ~3 min on 2 cores
  python -m mskjax.run configs/exponential_speedup.py:quick     # < 60 s

The program (set-up, method, outputs) is ``mskjax/experiments/exponential_speedup.py``; this file
only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "exponential_speedup"       # mskjax/experiments/exponential_speedup.py
  c.seed = 0
  c.b_std = 0.1
  c.activations = ("relu", "erf", "gelu")
  c.tol = 0.1
  c.max_steps = 10 ** 12     # predicted counts are closed forms: huge counts are cheap
  # S¹
  c.s1_n = 128
  c.s1_js = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
  c.s1_k = 17
  # S²
  c.s2 = True
  c.s2_n = 400
  c.s2_js = (1, 2, 3, 4, 5, 6, 7, 8)
  c.s2_blocks = 4
  c.fit_jmin = 2
  # finite networks (S¹ only, where GD's predicted count allows)
  c.network = True
  c.width = 2048
  c.amp = 0.01               # target amplitude (linear regime)
  c.network_max_steps = 3000
  if arg.quick:                # < 60 s: relu and erf, j <= 6, S¹ only, width 256
    c.activations = ("relu", "erf")
    c.s1_js = (1, 2, 3, 4, 5, 6)
    c.s2 = False
    c.width = 256
    c.network_max_steps = 300
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"tol": {"gt": 0, "lt": 1}, "max_steps": {"min": 1}, "s1_n": {"min": 8},
          "s1_js": {"min": 1}, "s1_k": {"min": 1}, "s2_n": {"min": 8}, "s2_js": {"min": 1},
          "s2_blocks": {"min": 1}, "fit_jmin": {"min": 1}, "width": {"min": 1},
          "amp": {"gt": 0}, "network_max_steps": {"min": 1},
          "activations": {"choices": ("relu", "erf", "gelu", "linear")}}


def validate(c):
  if 2 * max(c.s1_js) >= c.s1_n:
    raise ValueError(f"s1_js: every frequency j must be < s1_n/2 = {c.s1_n / 2:g} (Nyquist), "
                     f"got max {max(c.s1_js)}.")
  if c.s1_k >= c.s1_n:
    raise ValueError(f"s1_k must be < s1_n = {c.s1_n}, got {c.s1_k}.")
