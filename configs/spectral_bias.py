"""Spectral bias under a modified spectrum: which frequencies are learned first (S¹).

Command::

  python -m mskjax.run configs/spectral_bias.py              # full, ~4 min on a 2-core CPU
  python -m mskjax.run configs/spectral_bias.py:quick     # < 60 s (width 1024, 700 steps)

The program (set-up, method, outputs) is ``mskjax/experiments/spectral_bias.py``; this file
only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "spectral_bias"       # mskjax/experiments/spectral_bias.py
  c.n = 64                      # equispaced training points on S¹
  c.js = (1, 2, 4, 6, 8)        # target frequencies, y = amp · Σ_j cos(jθ)
  c.amp = 0.01                  # target amplitude (linear regime of the finite network)
  c.b_std = 0.1                 # bias std (b_std = 0 makes odd j >= 3 eigenvalues zero)
  c.width = 4096                # finite network width (quick: 1024)
  c.gs = ("identity", "reverse", "flatten", "reverse_ranks")
  c.k_reverse = 17              # blocks j = 0, 1, 2, 4, 3, 6, 5, 8, 7 (reverse, reverse_ranks)
  c.k_flatten = 5               # blocks j = 0, 1, 2 flattened to λ₆ = λ(j=4)
  c.lr_factor = 0.4           # η = lr_factor / λ_max(K_g)
  c.steps = 2000                # training steps (quick: 700)
  c.threshold = 0.5             # "learned" once the frequency's relative residual < this
  c.finite_spectrum = "empirical"  # 'empirical' (NTK at init) or 'analytic' eigenpairs
  c.train_network = True
  c.seed = 0
  if arg.quick:                # < 60 s: width 1024, 700 steps, no reverse_ranks
    c.width = 1024
    c.steps = 700
    c.gs = ("identity", "reverse", "flatten")
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"n": {"min": 8}, "js": {"min": 0}, "k_flatten": {"min": 1},
          "k_reverse": {"min": 1}, "width": {"min": 1}, "steps": {"min": 1},
          "lr_factor": {"gt": 0, "lt": 2}, "threshold": {"gt": 0, "lt": 1}, "amp": {"gt": 0},
          "gs": {"choices": ("identity", "reverse", "flatten", "reverse_ranks")},
          "finite_spectrum": {"choices": ("empirical", "analytic")}}


def validate(c):
  if 2 * max(c.js) >= c.n:
    raise ValueError(f"js: every frequency j must be < n/2 = {c.n / 2:g} (Nyquist), got "
                     f"max {max(c.js)}.")
  if max(c.k_flatten, c.k_reverse) >= c.n:
    raise ValueError(f"k_flatten/k_reverse must be < n = {c.n}.")
