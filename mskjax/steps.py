r"""Step rules for (preconditioned) gradient descent on real networks.

:func:`stable_learning_rate` -- the critical-batch step of Ma, Bassily & Belkin (2018) applied to
the MSK (see ``docs/theory.md``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mskjax import _validate as _v
from mskjax.directions import MSKDirections, check_directions

__all__ = ["stable_learning_rate"]


def stable_learning_rate(directions: Optional[MSKDirections] = None, batch_size: int = 1, *,
                         lambda_max=None, beta=None, n_points=None,
                         reduction: str = "mean") -> float:
  r"""Largest useful step of (preconditioned) minibatch SGD on a quadratic loss.

  Ma, Bassily & Belkin (2018), applied to the MSK ``K_g``: with the operator eigenvalue
  ``λ = λ_max(K_g)/N`` (N points the kernel was built on) and ``β = max_x λ_max(K_g(x, x))``
  (the largest per-point c×c block), the step for the batch-mean loss
  ``(1/b) Σ_{j∈B} ½‖f(x_j) − y_j‖²`` is

  .. math:: \eta^*(b) = \frac{b}{\beta + (b - 1)\,\lambda}.

  It grows linearly in b up to the critical batch size ``b* ≈ β/λ`` and saturates at
  the full-batch value ≈ 1/λ (= N/λ_max(K_g) for the mean loss) beyond. In expectation
  the error on the stiffest direction contracts for η < 2η*(b) (exactly so when all
  points have the same β), so η*(b) sits at half the mean-square divergence threshold;
  tests/test_precond_step.py measures the threshold. For a summed batch loss
  (``reduction='sum'``) the step is η*(b)/b. For cross-entropy the logit Hessian is at
  most ½·I (Gauss–Newton), so the same rule is conservative by up to 2×.

  Args:
    directions: :class:`MSKDirections` with ``beta`` and ``n_points`` (from
      :func:`msk_directions`); or None and give the three numbers below.
    batch_size: b ≥ 1.
    lambda_max: λ_max(K_g) of the Gram matrix (default ``directions.max_value``).
    beta: β (default ``directions.beta``).
    n_points: N, the size of that Gram matrix in points (default ``directions.n_points``).
    reduction: ``'mean'`` (loss averaged over the batch) or ``'sum'``.

  Returns:
    η*(b) as a Python float.

  Example:
    >>> from mskjax import optim
    >>> optim.stable_learning_rate(batch_size=1, lambda_max=100.0, beta=2.0, n_points=100)
    0.5
    >>> optim.stable_learning_rate(batch_size=100, lambda_max=100.0, beta=2.0, n_points=100)
    0.9900990099009901

  References:
    S. Ma, R. Bassily, M. Belkin, *The power of interpolation: understanding the
    effectiveness of SGD in modern over-parametrized learning*, ICML 2018.
  """
  batch_size = _v.check_int(batch_size, "batch_size", lo=1)
  if reduction not in ("mean", "sum"):
    raise ValueError(f"stable_learning_rate: `reduction` must be 'mean' or 'sum'; got "
                     f"{reduction!r}.")
  if directions is not None:
    check_directions(directions, "stable_learning_rate")
    lambda_max = directions.max_value if lambda_max is None else lambda_max
    beta = directions.beta if beta is None else beta
    n_points = directions.n_points if n_points is None else n_points
  for name, val in (("lambda_max", lambda_max), ("beta", beta), ("n_points", n_points)):
    if val is None:
      raise ValueError(f"stable_learning_rate: `{name}` is unknown; pass it or build the "
                       "directions with optim.msk_directions (which computes it).")
    if not _v.is_concrete(val):
      raise TypeError(f"stable_learning_rate: `{name}` must be concrete (call it outside jit).")
    if not np.isfinite(float(val)) or float(val) <= 0:
      raise ValueError(f"stable_learning_rate: `{name}` must be a positive finite number; "
                       f"got {float(val)!r}.")
  b = int(batch_size)
  lam = float(lambda_max) / float(n_points)
  eta = b / (float(beta) + (b - 1) * lam)
  return eta / b if reduction == "sum" else eta
