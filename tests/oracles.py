"""Independent numpy oracles (never the code under test)."""
import numpy as np


def relu_ntk_unit_circle(u, xp=np):
  """A 2-layer ReLU NTK on unit vectors as a function of u = <x, x'> (arc-cosine kernels).

  Θ(u) = u κ₀(u) + κ₁(u), κ₀(u) = (π − arccos u)/π, κ₁(u) = (√(1−u²) + (π − arccos u) u)/π
  (Cho & Saul 2009; NTK of Jacot et al. 2018 for a bias-free two-layer ReLU net).
  """
  u = xp.clip(u, -1.0, 1.0)
  t = xp.arccos(u)
  k0 = (np.pi - t) / np.pi
  k1 = (xp.sqrt(xp.maximum(1.0 - u * u, 0.0)) + (np.pi - t) * u) / np.pi
  return u * k0 + k1


def circle_kernel_of_cos(c, xp=np):
  """Θ((1 + cos Δ)/2): the ReLU NTK above on inputs (cos θ, sin θ, 1)/√2 (a bias through an
  appended constant), so every frequency of S¹ has a positive, decreasing eigenvalue."""
  return relu_ntk_unit_circle((1.0 + c) / 2.0, xp)


def circle_kernel(theta1, theta2, xp=np):
  """The kernel above between angles (1-D arrays); ``xp=jax.numpy`` makes it jittable."""
  return circle_kernel_of_cos(xp.cos(theta1[:, None] - theta2[None, :]), xp)


def fourier_coefficients(kappa, n_grid=8192):
  """a_j with κ(cos φ) = Σ_j a_j e^{ijφ} (uniform measure dφ/2π), j = 0..n_grid/2, via FFT."""
  phi = 2 * np.pi * np.arange(n_grid) / n_grid
  a = np.fft.rfft(kappa(np.cos(phi))).real / n_grid
  return a


def matrix_power_residual(K_g, r0, eta, t):
  """(I − η K_g)^t r0 by explicit repeated multiplication."""
  A = np.eye(K_g.shape[0]) - eta * K_g
  return np.linalg.matrix_power(A, int(t)) @ r0


def mlp_kernel_diagonal(x, activation, depth, W_std, b_std, get="ntk"):
  """k(x_i, x_i) of a depth-``depth`` MLP in the NTK parameterisation, from the scalar
  recursion on the variance alone (the angle is 0 on the diagonal, so no arccos appears):
  q ← σ_W²‖x‖²/d + σ_b², Θ ← q; per hidden layer q, q̇ ← E[φ(u)²], E[φ'(u)²] for
  u ~ N(0, q), then q ← σ_W² q + σ_b², Θ ← q + σ_W² q̇ Θ.

  The Gaussian expectations are the textbook ones: ReLU q/2 and 1/2 (Cho & Saul 2009),
  erf (2/π) arcsin(2q/(1+2q)) and (4/π)/√(1+4q) (Williams 1997), linear q and 1.
  ``x`` is an (n, d) numpy array; returns the (n,) diagonal in float64.
  """
  x = np.asarray(x, np.float64)
  w2, b2 = float(W_std) ** 2, float(b_std or 0.0) ** 2
  q = w2 * np.einsum("ij,ij->i", x, x) / x.shape[1] + b2
  ntk = q.copy()
  for _ in range(depth):
    if activation == "relu":
      q, qdot = q / 2, np.full_like(q, 0.5)
    elif activation == "erf":
      q, qdot = (2 / np.pi) * np.arcsin(2 * q / (1 + 2 * q)), (4 / np.pi) / np.sqrt(1 + 4 * q)
    elif activation == "linear":
      qdot = np.ones_like(q)
    else:
      raise ValueError(activation)
    q = w2 * q + b2
    ntk = q + w2 * qdot * ntk
  return ntk if get == "ntk" else q
