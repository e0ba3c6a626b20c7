"""mskjax: Modified Spectrum Kernels for wide networks in JAX.

Build a Modified Spectrum Kernel (MSK) from an analytic NTK, predict what an infinitely
wide network trained with it does, and train a finite network with preconditioned GD
that follows the same dynamics. Reference: Geifman, Barzilai, Basri & Galun,
*Controlling the Inductive Bias of Wide Neural Networks by Modifying the Kernel's
Spectrum*, arXiv:2307.14531 (TMLR 2024).

Importing mskjax changes no JAX setting (in particular not ``jax_enable_x64``): a float32
training pipeline stays float32. Functions whose accuracy needs float64 (kernel
eigendecompositions, predictions near the stability edge) say so in their docstrings;
the experiment runner (``python -m mskjax.run``) enables float64 explicitly.
"""

from mskjax import modifiers
from mskjax import data, kernels, nets, tangents
from mskjax.nets import MLPSpec, Network, make_network, stax_mlp, FlaxMLP, init_zero_output
from mskjax.nets import CNNSpec, stax_cnn, FlaxCNN
from mskjax.tangents import empirical_ntk
from mskjax.kernels import (gram, kernel_matvec, KernelOperator, kernel_operator,
                            matrix_operator, DEFAULT_MEMORY_BUDGET, block_size_for_budget)
from mskjax.spectrum import (Eigenpairs, EighInfo, eigh_desc, eigh_top, randomized_eigh_top,
                             eigenvalue_blocks, round_k_to_block)
from mskjax.msk import (MSKSpectrum, msk_spectrum, msk_spectrum_from_eigenpairs, msk_gram,
                        preconditioner,
                        msk_gram_from_spectrum, preconditioner_from_spectrum,
                        apply_preconditioner, MSKKernel, msk_kernel_fn, transfer_msk_spectrum)
from mskjax.predict import (Predictions, gradient_descent_mse, predict_gd_mse, max_learning_rate,
                            steps_to_tolerance)
from mskjax import directions, steps, diagnostics, optim, train  # `mskjax.train.train` is the loop
from mskjax.directions import MSKDirections, msk_directions
from mskjax.steps import stable_learning_rate
from mskjax.optim import (ScaleByMSKState, scale_by_msk, msk_sgd, replace_directions,
                          scale_by_msk_tracking, msk_sgd_tracking, ScaleByMSKJvpState,
                          scale_by_msk_jvp, msk_sgd_jvp, msk_mse_loss, adam_kernel_weights)
from mskjax.train import TrainResult, mse_loss, fit, FitResult, LoopState
from mskjax import recorder
from mskjax.recorder import log_spaced_steps, KernelRecord, record_kernel_training
from mskjax.diagnostics import (kernel_alignment, kernel_cosine, eigenspace_overlap,
                                topk_overlap, effective_rank, target_energy, relative_distance,
                                kernel_regression)

__version__ = "0.1.0"

__all__ = [
    "modifiers", "data", "kernels", "tangents", "nets",
    "MLPSpec", "Network", "make_network", "stax_mlp", "FlaxMLP", "init_zero_output",
    "CNNSpec", "stax_cnn", "FlaxCNN",
    "gram", "empirical_ntk", "kernel_matvec", "KernelOperator", "kernel_operator",
    "matrix_operator", "DEFAULT_MEMORY_BUDGET", "block_size_for_budget",
    "Eigenpairs", "EighInfo", "eigh_desc", "eigh_top", "randomized_eigh_top", "eigenvalue_blocks",
    "round_k_to_block",
    "MSKSpectrum", "msk_spectrum", "msk_spectrum_from_eigenpairs", "msk_gram", "preconditioner", "msk_gram_from_spectrum",
    "preconditioner_from_spectrum", "apply_preconditioner", "MSKKernel", "msk_kernel_fn",
    "transfer_msk_spectrum",
    "Predictions", "gradient_descent_mse", "predict_gd_mse", "max_learning_rate",
    "steps_to_tolerance",
    "directions", "steps", "diagnostics", "optim", "train", "recorder",
    "MSKDirections", "ScaleByMSKState", "scale_by_msk", "msk_sgd", "msk_directions",
    "stable_learning_rate", "replace_directions", "scale_by_msk_tracking", "msk_sgd_tracking",
    "ScaleByMSKJvpState", "scale_by_msk_jvp", "msk_sgd_jvp", "msk_mse_loss",
    "adam_kernel_weights",
    "TrainResult", "mse_loss", "fit", "FitResult", "LoopState", "log_spaced_steps",
    "KernelRecord", "record_kernel_training",
    "kernel_alignment", "kernel_cosine", "eigenspace_overlap", "topk_overlap",
    "effective_rank", "target_energy", "relative_distance", "kernel_regression",
]
