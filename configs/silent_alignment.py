"""Silent alignment (Atanasov, Bordelon & Pehlevan, arXiv:2111.00034, ICLR 2022), and MSK-PGD.

Command::

  python -m mskjax.run configs/silent_alignment.py:quick     # < 60 s on a 2-core CPU
  python -m mskjax.run configs/silent_alignment.py --tag full   # full, ~10 min on 2 cores

The program (set-up, method, outputs) is ``mskjax/experiments/silent_alignment.py``; this file
only configures it: ``config.json`` of a run is exactly this config, resolved.
"""
import ml_collections

from mskjax._config import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "silent_alignment"       # mskjax/experiments/silent_alignment.py
  c.seed = 0
  # (a, b, d): two-layer linear net on a whitened linear teacher
  c.n = 100                           # training points
  c.d = 40                            # input dimension
  c.rank = 30                         # rank r of the whitened inputs
  c.depth = 1                         # hidden layers (L = depth + 1 weight layers)
  c.width = 100
  c.sigmas = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
  c.lr = 0.25                         # GD step on ½ mean squared error
  c.steps = 600
  c.num_records = 150                 # kernel records per σ run (evenly spaced)
  c.alphas = (0.0, 1.0, 2.0)          # (d) power-law exponents of the input covariance
  c.sigma_aniso = 1e-4
  c.steps_aniso = 6000
  c.aniso_records = 300
  # (c) digits
  c.digits_n_train = 400
  c.digits_n_test = 300
  c.digits_width = 256
  c.digits_depth = 1
  c.digits_sigma = 1e-2
  c.digits_lr = 0.5
  c.digits_steps = 4000
  c.digits_records = 25
  c.digits_gammas = (0.0, 1.0)        # partial whitening exponents (0: whitened, 1: raw)
  c.ridge = 1e-6
  # (e) Adam
  c.adam_lr = 2e-3
  c.adam_steps = 3000
  c.adam_records = 150
  # (e) MSK-PGD vs GD (whitened linear teacher, flatten on the top k)
  c.pgd_sigma = 1e-4                  # must be one of `sigmas` (the GD run is reused)
  c.pgd_ks = (5, 29)                  # k < rank (K_0 has rank r)
  c.pgd_refresh = 1                   # refresh_every of the refreshed PGD (1: exact PGD)
  c.pgd_diverge_factor = 1e3          # "diverged": loss > factor * initial loss, or NaN
  if arg.quick:                # < 60 s
    c.n, c.d, c.rank, c.width = 40, 20, 20, 40   # d = rank: power-law inputs share shapes
    c.sigmas = (1e-2, 1e-4, 1e-6)
    c.steps = 150
    c.num_records = 50
    c.alphas = (2.0,)
    c.steps_aniso = 600
    c.aniso_records = 40
    c.digits_n_train, c.digits_n_test, c.digits_width = 80, 50, 32
    c.digits_steps = 600
    c.digits_records = 8
    c.digits_gammas = (0.0,)
    c.adam_steps = 300
    c.adam_records = 30
    c.pgd_ks = (5,)
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"n": {"min": 4}, "d": {"min": 1}, "rank": {"min": 1}, "width": {"min": 1},
          "depth": {"min": 1}, "steps": {"min": 1}, "lr": {"gt": 0}, "sigmas": {"gt": 0},
          "num_records": {"min": 2}, "adam_lr": {"gt": 0}, "ridge": {"min": 0},
          "pgd_ks": {"min": 1}, "pgd_sigma": {"gt": 0}, "digits_n_train": {"min": 8},
          "digits_n_test": {"min": 1}, "digits_lr": {"gt": 0}, "digits_sigma": {"gt": 0}}


def validate(c):
  if c.rank > c.d:
    raise ValueError(f"rank must be <= d = {c.d}, got {c.rank}.")
