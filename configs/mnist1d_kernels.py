"""MNIST-1D at infinite width: the analytic NTK of the benchmark's MLP and 1-D CNN.

Command::

  python -m mskjax.run configs/mnist1d_kernels.py --tag full
  python -m mskjax.run configs/mnist1d_kernels.py:quick     # < 60 s (n = 500)

The program (set-up, method, outputs) is ``mskjax/experiments/mnist1d_kernels.py``; this file
only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "mnist1d_kernels"       # mskjax/experiments/mnist1d_kernels.py
  c.n_train = 4000              # all of MNIST-1D's training set
  c.n_test = 1000
  c.nets = ("mlp", "cnn")
  c.parameterizations = ("standard", "ntk")
  c.times = (10, 100, 1000, 10000)   # GD steps (η = 1/λ_max(K_g)); t = ∞ is always added
  # "none" or "NAME@k": a mskjax.modifiers.from_name name on the top k Gram eigenvalues
  # (geomean: g(λ) = √(λ·λ_{k+1})).
  c.modifiers = ("none", "flatten@10", "flatten@100", "geomean@100")
  c.block_size = 500             # rows/cols per analytic kernel block
  c.cost_block = 256             # block edge for the per-entry cost measurement
  c.memory_gib = 16.0            # memory assumed for the dense-path extrapolation
  c.seed = 0
  c.cost_gap = True              # also time the CNN's 'gap' readout (cost table)
  if arg.quick:                # < 60 s: n = 500 / 500, standard only, two modifiers
    c.n_train, c.n_test = 500, 500
    c.parameterizations = ("standard",)
    c.modifiers = ("none", "flatten@10")
    c.cost_block = 128
    c.cost_gap = False
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"n_train": {"min": 8}, "n_test": {"min": 1}, "block_size": {"min": 1},
          "cost_block": {"min": 1}, "times": {"gt": 0}, "memory_gib": {"gt": 0},
          "nets": {"choices": ("mlp", "cnn")},
          "parameterizations": {"choices": ("standard", "ntk")}}


def validate(c):
  from mskjax.modifiers import from_spec
  for item in c.modifiers:
    _, k = from_spec(item)          # unknown names fail here, listing the known ones
    if k is not None and k >= c.n_train:
      raise ValueError(f"modifiers: {item!r}: k must be < n_train = {c.n_train}.")
