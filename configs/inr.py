"""Image fitting (INR): Adam, SGD-momentum, Muon, IGA and the MSK preconditioner on a coordinate MLP.

Command::

  python -m mskjax.run configs/inr.py:quick     # < 60 s (CI)
  python -m mskjax.run configs/inr.py           # china 64² gray, ReLU and Fourier-feature MLP
  python -m mskjax.run configs/inr.py 'images=(("flower","rgb",128),)' 'models=("siren",)'

Set-up. A coordinate network f(θ, (y, x)) → pixel value fitted to one image
(``mskjax/experiments/inr.py``, the program this config runs): sklearn's bundled
``china.jpg``/``flower.jpg``, centre-cropped and resized to ``size``² (LANCZOS), gray (BT.601
luma) or RGB in [0, 1]; coordinates on a [-1, 1]² grid. The pixels with (i + j) even are the
training set, the others (a checkerboard) the held-out pixels of the *test PSNR*. Full batch,
float32, flax default initialisation (seed per run), loss ½·mean over pixels of Σ_c (f − y)²
(IGA: its own MSE-valued loss, ``mskjax.iga.iga_loss``).

Models (``models``): ``relu`` — MLP 2 → ``width`` ×``depth`` (ReLU) → c; ``relu_ff`` — the
same MLP on random Fourier features [cos 2πBx, sin 2πBx] with B ∈ R^{``ff_features``×2},
B_ij ~ N(0, ``ff_sigma``²) (Tancik et al. 2020; σ = 5 on [-1, 1]² is their σ = 10 on [0, 1]²);
``siren`` — SIREN (ω₀ = 30, its initialisation).

Methods (``methods``; one function each in the program), each at the step of its grid
(``grids``) with the best *final test PSNR on the first seed*, then run on every seed:

* ``adam`` — ``optax.adam(lr)``; ``sgd`` — ``optax.sgd(lr, momentum)``; ``gd`` — plain GD;
* ``muon`` — ``optax.contrib.muon(lr)`` (its Adam on the biases);
* ``iga`` — Inductive Gradient Adjustment (Shi et al., ICML 2025; ``mskjax.iga``): every step,
  the empirical NTK of the output-summed network on the max-error pixel of each of the
  ``iga_patch``² patches, its top ``iga_k`` eigenvalues flattened to λ_{k+1}, the residual
  mixed across patches position by position, then Adam (the reference recipe);
* ``msk`` — ``optim.msk_sgd(lr, d)``: GD preconditioned by P = I + Σ_{i≤k}(λ_{k+1}/λ_i − 1)
  q_i q_iᵀ with d = ``optim.msk_directions`` (flatten, top ``msk_k``, on ``msk_subsample``
  training pixels, at initialisation, fixed); its grid holds ``rule_factors`` × the step rule
  ``optim.stable_learning_rate(d, n)`` and the absolute steps of ``grids.msk``;
* ``msk_adam`` — ``optax.chain(optim.scale_by_msk(d), optax.adam(lr))``.

The directions' one-off cost (cold, compile included, per seed) is added to msk's wall time.
Measured: test PSNR after ``steps`` steps (equal steps) and at the *equal wall-time budget* —
the shortest total time (one-off + training) of any method's ``steps`` steps, so every method
has run at least that long; compilation and evaluations (every ``eval_every`` steps) are
excluded from the timings. A run whose loss becomes non-finite or grows 10⁴× is recorded as
diverged (NaN), never an error.

Outputs: ``results.md/csv`` (one row per setting × model × method: ``psnr`` mean ± std over
seeds, ``psnr_at_budget``, ms/step, one-off seconds), ``grid.md/csv`` (every grid run on the
first seed), ``curves.csv`` (test/train PSNR vs step and seconds per seed),
``psnr_<image>_<color>_<size>_<model>.png`` (PSNR vs steps and vs seconds, mean of seeds).
"""
import ml_collections

from mskjax.run import parse_arg


def get_config(arg=None):
  """Every value the program uses; ``arg="quick"``: the < 60 s variant (CI smoke run)."""
  arg = parse_arg(arg, quick=False)
  c = ml_collections.ConfigDict()
  c.program = "inr"                 # mskjax/experiments/inr.py
  c.images = (("china", "gray", 64),)           # (image, 'gray'|'rgb', size)
  c.models = ("relu", "relu_ff")                # 'relu', 'relu_ff', 'siren'
  c.width, c.depth = 256, 3                     # 2-256-256-256-c
  c.ff_features, c.ff_sigma = 256, 5.0
  c.methods = ("adam", "sgd", "gd", "muon", "iga", "msk", "msk_adam")
  # Two steps per method around the known good ones (Adam 1e-3: the reference INR recipe;
  # IGA 5e-3 in the reference), so the 2-core CPU run fits in about half an hour.
  c.grids = ml_collections.ConfigDict(dict(
      adam=(1e-3, 3e-3), sgd=(0.1, 0.3), gd=(0.3, 1.0), muon=(3e-3, 1e-2),
      iga=(3e-3, 1e-2), msk=(1.0,), msk_adam=(1e-3, 3e-3)))
  # msk: factors of the step rule optim.stable_learning_rate(d, n). On china 64² the rule
  # gives ≈ 66 and rule × 0.3 diverges (GD itself diverges at 1.0), hence small factors.
  c.rule_factors = (0.01, 0.03, 0.1)
  c.momentum = 0.9
  c.steps = 500
  c.eval_every = 50
  c.seeds = (0, 1, 2)
  # IGA: 8×8 patches (64 of 32 training pixels on 64²), k = 4 ≈ the reference's 25 of 384
  # patches scaled. 4×4 patches (256 sampled points) cost 1.3 s/step on 2 cores, 16× Adam.
  c.iga_patch = 8
  c.iga_k = 4
  c.msk_k = 32
  c.msk_subsample = 256                         # 0: all training pixels
  if arg.quick:
    c.images = (("china", "gray", 16),)
    c.models = ("relu",)
    c.width, c.depth = 32, 2
    c.grids = ml_collections.ConfigDict(dict(
        adam=(1e-2,), sgd=(0.1,), gd=(0.3,), muon=(1e-2,), iga=(1e-2,), msk=(0.3,),
        msk_adam=(1e-2,)))
    c.rule_factors = (0.1,)
    c.steps, c.eval_every = 40, 20
    c.seeds = (0,)
    c.iga_patch, c.iga_k = 4, 3
    c.msk_k, c.msk_subsample = 8, 64
  return c


# Valid ranges, checked by the runner before any work (mskjax.run.validate_config).
RANGES = {"width": {"min": 1}, "depth": {"min": 1}, "steps": {"min": 1},
          "eval_every": {"min": 1}, "iga_patch": {"min": 2}, "iga_k": {"min": 1},
          "msk_k": {"min": 1}, "msk_subsample": {"min": 0}, "momentum": {"min": 0, "lt": 1},
          "ff_features": {"min": 1}, "ff_sigma": {"gt": 0}, "rule_factors": {"gt": 0}}
