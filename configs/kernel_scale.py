"""Accuracy against n: what modifying the NTK's spectrum does to MNIST-1D test accuracy.

Command::

  python -m mskjax.run configs/kernel_scale.py --tag full
  python -m mskjax.run configs/kernel_scale.py:quick          # < 60 s (n = 500, 1000)

The program (set-up, method, stopping rules, outputs) is ``mskjax/experiments/kernel_scale.py``;
this file only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "kernel_scale"       # mskjax/experiments/kernel_scale.py
  c.num_samples = 125000           # MNIST-1D generator size: 100k training pool, 25k test
  c.ns = (1000, 2000, 4000, 8000)
  c.n_val = 2000                   # validation split: the last n_val of the training pool
  c.n_test = 5000
  c.depth = 2                      # depth-2 ReLU MLP NTK (NTK parameterisation)
  c.b_std = 0.1
  # "none" or "NAME@k" (mskjax.modifiers.from_spec); relpow<p>: λ_{k+1} (λ_i/λ_{k+1})^p
  c.modifiers = ("none", "relpow0@100", "relpow0.5@100", "relpow2@100")
  c.times = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 100000, 1000000)  # GD steps; + inf
  c.budget = 100                   # the fixed-budget stopping rule (one of `times`)
  c.dense_max_n = 10000            # exact float64 eigh up to here, matrix-free above
  c.rtol = 1e-3                    # matrix-free solver tolerance (t = ∞)
  c.mf_max_t = 300                 # matrix-free path: largest finite t evaluated (1 pass/step)
  c.block_size = 2000              # rows/cols per analytic kernel block (dense path)
  if arg.quick:                    # < 60 s: the standard 5000-sample set, dense only
    c.num_samples = 5000
    c.ns = (500, 1000)
    c.n_val = 500
    c.n_test = 500
    c.modifiers = ("none", "relpow0@20", "relpow2@20")
    c.times = (1, 10, 100, 1000, 10000)
    c.dense_max_n = 1000
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"num_samples": {"min": 10}, "ns": {"min_len": 1, "min": 2}, "n_val": {"min": 1},
          "n_test": {"min": 1}, "depth": {"min": 1}, "b_std": {"min": 0},
          "times": {"min_len": 1, "min": 1}, "budget": {"min": 1}, "dense_max_n": {"min": 1},
          "rtol": {"gt": 0, "lt": 1}, "block_size": {"min": 1}, "mf_max_t": {"min": 1}}


def validate(c):
  from mskjax.modifiers import from_spec
  if c.budget not in c.times:
    raise ValueError(f"budget = {c.budget} must be one of times = {tuple(c.times)}.")
  if max(c.ns) + c.n_val > 0.8 * c.num_samples:
    raise ValueError(f"ns/n_val: max(ns) + n_val = {max(c.ns) + c.n_val} exceeds the "
                     f"training pool (80 % of num_samples = {c.num_samples}).")
  if c.n_test > 0.2 * c.num_samples:
    raise ValueError(f"n_test = {c.n_test} exceeds the test set (20 % of num_samples).")
  for item in c.modifiers:
    _, k = from_spec(item)          # unknown names fail here, listing the known ones
    if k is not None and k >= min(c.ns):
      raise ValueError(f"modifiers: {item!r}: k must be < min(ns) = {min(c.ns)}.")
