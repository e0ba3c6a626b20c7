"""mskjax: Modified Spectrum Kernels for wide networks in JAX.

Build a Modified Spectrum Kernel (MSK) from an analytic NTK, predict what an infinitely
wide network trained with it does, and train a finite network with preconditioned GD
that follows the same dynamics. Reference: Geifman, Barzilai, Basri & Galun,
*Controlling the Inductive Bias of Wide Neural Networks by Modifying the Kernel's
Spectrum*, arXiv:2307.14531 (TMLR 2024).

The top level is the user's main path, one spelling per name: a network and its kernel,
the spectrum and the MSK, infinite-width predictions, the directions, the step rule, the
optimizers, the loop and its diagnostics, plus :mod:`mskjax.modifiers` (the spectral
modifiers g those functions take). Everything else is in its module, one per stage of
the pipeline: ``nets → kernels → tangents → spectrum/modifiers → msk → predict/directions
→ steps → optim/tracking → train → recorder/diagnostics → run`` (README, "Architecture");
the function-space form of the preconditioner is the reference module
:mod:`mskjax.function_space`.
Shared internals live in underscore modules (``mskjax._validate``, ``mskjax._config``,
...) and are not part of the API.

Importing mskjax changes no JAX setting (in particular not ``jax_enable_x64``): a float32
training pipeline stays float32. Functions whose accuracy needs float64 (kernel
eigendecompositions, predictions near the stability edge) say so in their docstrings;
the experiment runner (``python -m mskjax.run``) enables float64 explicitly.
"""

from mskjax import modifiers
from mskjax import data, kernels, tangents, nets, spectrum, msk, predict
from mskjax import directions, steps, optim, tracking, function_space, iga, train, recorder
from mskjax import diagnostics
from mskjax.nets import MLPSpec, CNNSpec, make_network, init_zero_output
from mskjax.kernels import gram, kernel_operator
from mskjax.tangents import empirical_ntk
from mskjax.spectrum import Eigenpairs, eigh_desc, eigh_top
from mskjax.msk import MSKSpectrum, msk_spectrum, msk_gram, preconditioner, msk_kernel_fn
from mskjax.predict import (gradient_descent_mse, predict_gd_mse, steps_to_tolerance,
                            kernel_gd_mse)
from mskjax.directions import MSKDirections, msk_directions
from mskjax.steps import stable_learning_rate
from mskjax.optim import scale_by_msk, msk_sgd, replace_directions, refresh_directions
from mskjax.tracking import scale_by_msk_tracking, msk_sgd_tracking
from mskjax.function_space import msk_mse_loss
from mskjax.train import fit
from mskjax.recorder import record_kernel_training
from mskjax.diagnostics import kernel_alignment, kernel_cosine

__version__ = "0.1.0"

__all__ = [
    # the spectral modifiers g (modifiers.flatten(), modifiers.power(...), ...)
    "modifiers",
    # a network and its kernel
    "MLPSpec", "CNNSpec", "make_network", "init_zero_output",
    "gram", "kernel_operator", "empirical_ntk",
    # spectrum and the MSK
    "Eigenpairs", "eigh_desc", "eigh_top",
    "MSKSpectrum", "msk_spectrum", "msk_gram", "preconditioner", "msk_kernel_fn",
    # infinite-width predictions (from K; from the kernel function, K never formed at scale)
    "gradient_descent_mse", "predict_gd_mse", "steps_to_tolerance", "kernel_gd_mse",
    # directions and the step rule
    "MSKDirections", "msk_directions", "stable_learning_rate",
    # optimizers: fixed P, tracking, and the MSK loss ½ rᵀ S r
    "scale_by_msk", "msk_sgd", "scale_by_msk_tracking", "msk_sgd_tracking",
    "replace_directions", "refresh_directions", "msk_mse_loss",
    # the loop and its diagnostics
    "fit", "record_kernel_training", "kernel_alignment", "kernel_cosine",
]
