"""The minibatch step rule optim.stable_learning_rate against measured SGD behaviour.

Linear models f(w, x) = x·w, where J = X is exact, so the linearized theory is the model:
the divergence threshold is measured by bisection on real SGD runs, and the full-batch
prediction r ← (I − (η/n) K_g)^{n/b} r per epoch is an explicit matrix power (numpy).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mskjax import modifiers, optim
from mskjax.steps import critical_batch_learning_rate


@functools.partial(jax.jit, static_argnames=("b", "epochs"))
def _sgd_run(X, Y, eta, seed, dirs, b, epochs):
  n, d = X.shape
  steps = n // b

  def epoch(w, key):
    perm = jax.random.permutation(key, n)[: steps * b].reshape(steps, b)

    def step(w, idx):
      g = X[idx].T @ (X[idx] @ w - Y[idx]) / b
      if dirs is not None:
        g = optim.precondition(dirs, g)
      return w - eta * g, None
    w, _ = jax.lax.scan(step, w, perm)
    return w, 0.5 * jnp.mean((X @ w - Y) ** 2)
  keys = jax.random.split(jax.random.PRNGKey(seed), epochs)
  return jax.lax.scan(epoch, jnp.zeros(d), keys)[1]


def _sgd_losses(X, Y, eta, b, epochs, seed, dirs=None):
  """Minibatch SGD (batches of a random permutation per epoch) on the batch-mean loss
  (1/b) Σ_B ½(x_j·w − y_j)², optionally preconditioned by P (optim.precondition, the map
  of optim.msk_sgd); returns the full-data loss ½·mean(r²) after every epoch. One
  compilation per (shape, b, epochs): η and the seed are traced."""
  return np.asarray(_sgd_run(jnp.asarray(X), jnp.asarray(Y), jnp.asarray(eta), seed, dirs,
                             b=b, epochs=epochs))


def _sphere_data(n=512, d=32, radius=3.0, seed=0):
  """Anisotropic directions on a sphere: every point has ‖x‖² = β (the rule's β)."""
  rng = np.random.default_rng(seed)
  Z = rng.standard_normal((n, d)) / np.sqrt(np.arange(1, d + 1))
  X = Z / np.linalg.norm(Z, axis=1, keepdims=True) * radius
  return X, X @ rng.standard_normal(d)


@pytest.mark.parametrize("b", [pytest.param(4, marks=pytest.mark.slow), 32,
                               pytest.param(256, marks=pytest.mark.slow)])
def test_rule_against_measured_divergence_threshold(b):
  X, Y = _sphere_data()
  n = X.shape[0]
  lam = np.linalg.eigvalsh(X @ X.T)[-1]
  eta = critical_batch_learning_rate(batch_size=b, lambda_max=lam, beta=9.0, n_points=n)
  diverged = lambda f: not (np.isfinite(L := _sgd_losses(X, Y, f * eta, b, 40, 0))[-1]
                            and L[-1] < 1e-3 * L[0])
  assert not diverged(1.0)          # at the rule: converges
  assert diverged(3.2)              # well above: diverges
  # Measured threshold (bisection on the factor): the mean-square analysis puts it at
  # 2η*(b) when ‖x‖² ≡ β; single trajectories survive a little longer (measured
  # 2.06-2.65 for these b).
  lo, hi = 1.0, 3.2
  for _ in range(6):
    mid = 0.5 * (lo + hi)
    lo, hi = (lo, mid) if diverged(mid) else (mid, hi)
  assert 1.8 <= lo <= 3.0, lo


def test_full_batch_step_diverges_at_small_batch():
  """The full-batch stable step 1.9/λ_op converges at b = n but diverges at b = 4."""
  X, Y = _sphere_data()
  n = X.shape[0]
  lam_op = np.linalg.eigvalsh(X @ X.T)[-1] / n
  L = _sgd_losses(X, Y, 1.9 / lam_op, n, 100, 0)
  assert L[-1] < 1e-3 * L[0]
  L = _sgd_losses(X, Y, 1.9 / lam_op, 4, 40, 0)
  assert not (np.isfinite(L[-1]) and L[-1] < L[0])


def _stiff_data(ratio, n=1024, d=48, k=8, seed=0):
  """Gram spectrum with λ₁/λ_{k+1} = ratio (log-spaced top k+1), then ~1/i."""
  rng = np.random.default_rng(seed)
  s2 = np.concatenate([ratio ** (1 - np.arange(k + 1) / k), 1.0 / np.arange(2, d - k + 1)])
  Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  X = rng.standard_normal((n, d)) * np.sqrt(s2) @ Q.T / np.sqrt(n) * 10
  return X, X @ rng.standard_normal(d)


@pytest.mark.parametrize("ratio", [pytest.param(1e2, marks=pytest.mark.slow), 1e5])
def test_preconditioned_minibatch_follows_full_batch_prediction(ratio):
  k, epochs = 8, 30
  X, Y = _stiff_data(ratio, k=k)
  n = X.shape[0]
  d = optim.msk_directions(lambda w, x: x @ w, jnp.zeros(X.shape[1]), X,
                           modifiers.flatten(), k, tol=1e-10, max_cycles=20)
  # the solver finds the designed ratio (float64, exact Gram spectrum)
  np.testing.assert_allclose(float(d.values[0] / d.next_value), ratio, rtol=0.2)
  lam, U = np.linalg.eigh(X @ X.T)
  lam, U = lam[::-1], U[:, ::-1]
  lam_g = np.concatenate([np.full(k, lam[k]), lam[k:]])     # flatten, explicit
  c0 = U.T @ (-Y)
  L0 = 0.5 * np.mean(Y ** 2)
  for b in (32, 128, 512):
    eta = critical_batch_learning_rate(d, b)
    L = _sgd_losses(X, Y, eta, b, epochs, 1, dirs=d)
    steps = n // b
    # full-batch prediction per epoch: r_e = U (1 − η g(λ)/n)^{e·n/b} Uᵀ r₀
    Lp = np.array([0.5 * np.sum(((1 - eta * lam_g / n) ** (steps * e) * c0) ** 2) / n
                   for e in range(1, epochs + 1)])
    assert np.all(np.isfinite(L)) and np.all(np.diff(np.log(L)) < 0.5)   # never diverges
    # Per epoch, SGD's loss E‖r‖² sits above the mean dynamics ‖E r‖² by the gradient
    # noise. Measured (n = 1024, seed 1): ratio 1e2 within 0.81-1.63× of the prediction at
    # every epoch; ratio 1e5 2.7-85× above it (the stiff part of r₀ decays only at the
    # flattened rate and feeds noise into every mode), while both fall by 4-16 decades.
    tol_hi = 2.0 if ratio <= 1e2 else 200.0
    assert np.all(L <= tol_hi * Lp) and np.all(L >= 0.3 * Lp), (b, (L / Lp).min(),
                                                                  (L / Lp).max())
    assert L[-1] < 1e-3 * L0
