"""Shared test set-up: CPU, float64 (exactness claims need it), small helpers."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def random_psd(n, rank=None, seed=0, decay=1.0):
  """A random symmetric PSD matrix with eigenvalues i^-decay (numpy, float64)."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  w = np.arange(1, n + 1, dtype=float) ** -decay
  if rank is not None:
    w[rank:] = 0.0
  return (q * w) @ q.T


@pytest.fixture
def rng():
  return np.random.default_rng(0)
