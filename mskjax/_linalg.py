r"""Shared linear algebra of the eigensolvers, the directions and the step rules: each once.

Internal (plain names, imported as ``from mskjax import _linalg``):

* PSD matrix functions: :func:`psd_power` (``U max(w, floor)^p Uᵀ``, batched) — the
  loss-Hessian square root ``H^½`` and the Löwdin factor ``G^{-1/2}``;
* orthonormalisation: :func:`row_gram` and :func:`lowdin` (symmetric, rows of a pytree),
  :func:`svqb` (columns, jittable), :func:`cholqr`, :func:`cholqr3` and
  :func:`orth_against` (shifted Cholesky-QR, block Gram–Schmidt; GEMMs only);
* :func:`rayleigh_ritz`: Ritz pairs of K on an orthonormal basis, with residuals;
* :func:`output_hessian` and :func:`loss_hessian_sqrt`: per-point output Hessians of a loss
  and their PSD square roots;
* :func:`lanczos_step`, :func:`lanczos` and :func:`tridiagonal_top`: Lanczos with full
  re-orthogonalisation (the same step jitted or on the host) and the top Ritz pair of the
  tridiagonal;
* :func:`flat_hvp`: the Hessian-vector product of a loss on a flat parameter vector.

Functions taking ``xp`` run on numpy (host, float64) or ``jax.numpy`` (traceable) arrays.

References:
  P.-O. Löwdin, J. Chem. Phys. 18 (1950) (symmetric orthonormalisation); A. Stathopoulos,
  K. Wu, SIAM J. Sci. Comput. 23 (2002) (SVQB); T. Fukaya et al., SIAM J. Sci. Comput. 42
  (2020) (shifted CholeskyQR3); C. Lanczos, J. Res. Nat. Bur. Standards 45 (1950).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__: list = []      # internal: no public names


def few_blas_threads(size):
  """One BLAS thread for host-side small dense algebra (QR, small eigh, Lanczos GEMVs).

  Multi-threaded OpenBLAS on tall-skinny QRs and GEMVs is much slower on a loaded machine
  than one thread. A local context (threadpoolctl, a scikit-learn dependency); nothing
  global changes. Problems of more than 2·10⁷ entries keep the default.
  """
  try:
    import threadpoolctl
  except ImportError:  # pragma: no cover
    return contextlib.nullcontext()
  if size > 20_000_000:
    return contextlib.nullcontext()
  return threadpoolctl.threadpool_limits(1, "blas")


def key_seed(key):
  """A host integer seed in [0, 2³¹−1) from a ``jax.random`` key (None: ``PRNGKey(0)``),
  read from the key's bits on the host: nothing is computed or compiled on the device.

  Example:
    >>> import jax
    >>> key_seed(jax.random.PRNGKey(3)) == key_seed(jax.random.PRNGKey(3)) != key_seed(None)
    True
  """
  if key is None:
    key = jax.random.PRNGKey(0)
  if jnp.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  bits = np.asarray(key)
  if not np.issubdtype(bits.dtype, np.integer) or bits.size == 0:
    raise TypeError(f"`key` must be a jax.random key (PRNGKey(seed) or jax.random.key(seed)); "
                    f"got {type(key).__name__} of dtype {bits.dtype}.")
  words = [int(b) for b in bits.astype(np.uint64).ravel()]
  return int(np.random.SeedSequence(words).generate_state(1)[0] % (2**31 - 1))


# ------------------------------------------------------------------ PSD matrix functions
def psd_power(G, power, floor=0.0, xp=np, rtol=0.0):
  r"""``U diag(max(w, floor, rtol·max w)^power) Uᵀ`` for symmetric ``G = U diag(w) Uᵀ``
  (batched over leading axes).

  ``G`` is symmetrised first; ``floor`` (absolute) and ``rtol`` (relative to the largest
  eigenvalue) keep negative powers finite. ``power=0.5, floor=0``: the PSD-clipped square
  root; ``power=-0.5``: the Löwdin factor.

  Example:
    >>> import numpy as np
    >>> psd_power(np.diag([4.0, -1.0]), 0.5).tolist()
    [[2.0, 0.0], [0.0, 0.0]]
  """
  G = 0.5 * (G + xp.swapaxes(G, -1, -2))
  w, U = xp.linalg.eigh(G)
  w = xp.maximum(w, floor)
  if rtol:
    w = xp.maximum(w, rtol * w.max(axis=-1, keepdims=True))
  return xp.einsum("...ij,...j,...kj->...ik", U, w ** power, U)


# ------------------------------------------------------------------ orthonormalisation
def row_gram(tree, k, xp=np):
  """The k×k Gram ``Q Qᵀ`` of a pytree whose leaves are ``(k, ...)`` rows (float64 on the
  host; the leaves' dtype with ``xp=jnp``)."""
  G = 0
  for leaf in jax.tree.leaves(tree):
    l2 = (np.asarray(leaf, np.float64) if xp is np else leaf).reshape(k, -1)
    G = G + l2 @ l2.T
  return G


def lowdin(tree, k, floor=None, xp=np):
  r"""Löwdin (symmetric) orthonormalisation of the k rows of a pytree: ``G^{-1/2} Q``.

  ``G = Q Qᵀ`` (:func:`row_gram`); of all orthonormal bases of span(Q) this one is the
  closest to Q. Eigenvalues of G below ``floor`` (default: the smallest normal number)
  are raised to it. Host (float64) with ``xp=np``, traceable with ``xp=jnp``.

  Example:
    >>> import numpy as np
    >>> Q = lowdin({'w': np.array([[2.0, 0.0], [1.0, 1.0]])}, 2)['w']
    >>> np.round(Q @ Q.T, 12).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  G = row_gram(tree, k, xp)
  if floor is None:
    floor = np.finfo(np.float64 if xp is np else G.dtype).tiny
  Ginv = psd_power(G, -0.5, floor, xp)
  if xp is np:
    return jax.tree.map(lambda l: np.tensordot(Ginv, np.asarray(l, np.float64), axes=1), tree)
  return jax.tree.map(lambda l: jnp.tensordot(Ginv.astype(l.dtype), l, axes=1), tree)


def svqb(Z, passes: int = 2):
  r"""An orthonormal basis of the column span of a tall ``Z`` (s × k, s ≥ k), jittable.

  SVQB: with column scaling ``D = diag(‖z_i‖)``, ``(Z D⁻¹)ᵀ(Z D⁻¹) = E Σ Eᵀ`` (k×k
  ``eigh``) and ``Z ← Z D⁻¹ E Σ^{-1/2}``, ``passes`` times (one pass leaves an
  orthogonality error ~ eps·cond²; the second removes it). Two s×k×k GEMMs per pass.
  Directions of ``Z`` below ``eps·‖Z‖`` are kept at that floor (not divided by zero).

  Example:
    >>> import jax.numpy as jnp
    >>> W = svqb(jnp.array([[3.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    >>> [[round(v, 6) + 0.0 for v in r] for r in (W.T @ W).tolist()]
    [[1.0, 0.0], [0.0, 1.0]]
  """
  for _ in range(passes):
    d = jnp.sqrt(jnp.sum(Z * Z, 0))
    Z = Z / jnp.maximum(d, jnp.finfo(Z.dtype).tiny)[None, :]
    e, E = jnp.linalg.eigh(Z.T @ Z)
    e = jnp.maximum(e, jnp.finfo(Z.dtype).eps * jnp.maximum(e[-1], jnp.finfo(Z.dtype).tiny))
    Z = Z @ (E / jnp.sqrt(e)[None, :])
  return Z


@jax.jit
def cholqr(w, shift):
  """One shifted Cholesky-QR pass: ``w R⁻¹`` with ``RᵀR = wᵀw + shift·tr(wᵀw)·I``.

  GEMM-based (faster than Householder QR on CPU for tall w); the shift keeps the Cholesky
  factorisation defined for ill-conditioned or rank-deficient w.
  """
  g = w.T @ w
  g = 0.5 * (g + g.T)
  s = shift * jnp.trace(g) + jnp.finfo(w.dtype).tiny
  r = jnp.linalg.cholesky(g + s * jnp.eye(g.shape[0], dtype=w.dtype))
  return jax.scipy.linalg.solve_triangular(r, w.T, lower=True).T


def _first_shift(w):
  rows, cols = w.shape
  return 11.0 * (rows * cols + cols * (cols + 1)) * jnp.finfo(w.dtype).eps


@jax.jit
def cholqr3(w):
  """Shifted CholeskyQR3: orthonormal columns to round-off, even for rank-deficient w.

  Example:
    >>> import jax.numpy as jnp
    >>> Q = cholqr3(jnp.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    >>> [[round(v, 5) + 0.0 for v in r] for r in (Q.T @ Q).tolist()]
    [[1.0, 0.0], [0.0, 1.0]]
  """
  eps = jnp.finfo(w.dtype).eps
  w = cholqr(w, _first_shift(w))
  w = cholqr(w, w.shape[1] * eps)
  return cholqr(w, w.shape[1] * eps)


@jax.jit
def project_out(q, w):
  """``w − q (qᵀ w)`` for orthonormal columns q."""
  return w - q @ (q.T @ w)


def orth_against(blocks, w):
  """Orthonormal columns spanning w minus its part in the span of the orthonormal ``blocks``.

  Block Gram–Schmidt against each earlier block, twice ("twice is enough"), shifted
  Cholesky-QR, one more sweep and two plain Cholesky-QR passes: orthonormal and orthogonal
  to the blocks to round-off even when w is (numerically) inside their span. Only GEMMs,
  and every jitted piece has the shape of one block (one compilation per solve).
  """
  eps = jnp.finfo(w.dtype).eps
  cols = w.shape[1]
  for _ in range(2):
    for q in blocks:
      w = project_out(q, w)
  w = cholqr(w, _first_shift(w))
  for q in blocks:
    w = project_out(q, w)
  w = cholqr(w, cols * eps)
  return cholqr(w, cols * eps)


# ------------------------------------------------------------------ Rayleigh–Ritz
@jax.jit
def _projected(B, KB):
  T = B.T @ KB
  return 0.5 * (T + T.T)


@jax.jit
def _ritz_pairs(B, KB, w, u):
  Y, KY = B @ u, KB @ u
  return Y, KY, jnp.linalg.norm(KY - Y * w, axis=0)


def rayleigh_ritz(B, KB, nk=None):
  r"""Top-``nk`` Ritz pairs of K on span(B) (B orthonormal, ``KB = K B``), descending.

  .. math:: B^\top K B = U \Theta U^\top,\quad X = B U,\quad r_i = \|K x_i - \theta_i x_i\|.

  The small eigenproblem runs in LAPACK on the host (``scipy.linalg.eigh``, MRRR, only
  the top nk pairs: on the clustered spectra of kernels XLA's CPU ``eigh`` is far slower).
  Host arrays (numpy) stay on the host; device arrays keep their dtype and the products
  run jitted.

  Returns:
    ``(θ, X, KX, r)``: ``(nk,)``, ``(n, nk)``, ``(n, nk)``, ``(nk,)``.

  Example:
    >>> import numpy as np
    >>> B = np.eye(3)[:, :2]; KB = np.diag([1.0, 3.0, 2.0]) @ B
    >>> th, X, KX, r = rayleigh_ritz(B, KB)
    >>> th.tolist(), r.tolist()
    ([3.0, 1.0], [0.0, 0.0])
  """
  import scipy.linalg
  host = isinstance(B, np.ndarray)
  with few_blas_threads(B.size) if host else contextlib.nullcontext():
    T = np.asarray(B.T @ KB if host else _projected(B, KB), np.float64)
    T = 0.5 * (T + T.T)
    m = T.shape[0]
    nk = m if nk is None else nk
    w, u = scipy.linalg.eigh(T, subset_by_index=(m - nk, m - 1), driver="evr")
    w, u = w[::-1].copy(), u[:, ::-1].copy()
    if host:
      X, KX = B @ u, KB @ u
      return w, X, KX, np.linalg.norm(KX - X * w, axis=0)
  w = jnp.asarray(w, B.dtype)
  X, KX, res = _ritz_pairs(B, KB, w, jnp.asarray(u, B.dtype))
  return w, X, KX, res


# ------------------------------------------------------------------ loss Hessians
LOSSES = ("mse", "softmax_cross_entropy")


def output_hessian(loss, outputs, targets=None, xp=jnp):
  r"""Per-point output Hessians ``H_i = ∂²ℓ(f_i, y_i)/∂f_i²`` at ``outputs`` ``(s, c)``.

  ``'softmax_cross_entropy'``: ``diag(p_i) − p_i p_iᵀ``, ``p_i = softmax(f_i)`` (no
  targets); a callable ``ℓ(f_i, y_i) -> scalar``: ``vmap(hessian(ℓ))`` (its raw output:
  ``(s, c, c)`` for a scalar loss; the caller checks). ``'mse'`` is the identity. In the
  outputs' dtype; ``xp=np`` for host outputs (a callable still goes through ``jax``).
  """
  F = outputs
  s, c = F.shape
  if isinstance(loss, str):
    if loss == "mse":
      return xp.broadcast_to(xp.eye(c, dtype=F.dtype), (s, c, c))
    z = xp.exp(F - F.max(axis=1, keepdims=True))
    pr = z / z.sum(axis=1, keepdims=True)
    return pr[:, :, None] * xp.eye(c, dtype=F.dtype) - pr[:, :, None] * pr[:, None, :]
  H = jax.vmap(jax.hessian(loss))(jnp.asarray(F), targets)
  return np.asarray(H, F.dtype) if xp is np else H.astype(F.dtype)


def loss_hessian_sqrt(loss, outputs, targets=None, xp=jnp):
  r"""Per-point ``H_i^½`` of the loss's output Hessian, PSD-clipped: ``(s, c, c)``.

  :func:`output_hessian` then a batched c×c eigh with negative eigenvalues clipped to 0
  (:func:`psd_power`). Traceable with ``xp=jnp`` (what the tracking transform needs at the
  current outputs); ``xp=np`` on host float64 outputs.

  Example:
    >>> import jax.numpy as jnp
    >>> Hh = loss_hessian_sqrt("softmax_cross_entropy", jnp.zeros((1, 2)))  # p = (½, ½)
    >>> [[round(v, 6) for v in r] for r in (Hh[0] @ Hh[0]).tolist()]
    [[0.25, -0.25], [-0.25, 0.25]]
  """
  s, c = outputs.shape
  H = output_hessian(loss, outputs, targets, xp).reshape(s, c, c)
  return psd_power(H, 0.5, 0.0, xp)


def weigh_rows(Hh, V, s, c):
  """``blockdiag(H_i^½) V`` for ``(s·c, m)`` V (V itself when ``Hh`` is None)."""
  if Hh is None:
    return V
  return np.einsum("pcd,pdm->pcm", Hh, V.reshape(s, c, -1)).reshape(s * c, -1)


# ------------------------------------------------------------------ Lanczos
def _put(a, i, x):
  if isinstance(a, np.ndarray):
    a[i] = x
    return a
  return a.at[i].set(x)


def lanczos_step(matvec, j, carry):
  """Lanczos step ``j`` on the carry ``(V, α, β)``: numpy (host) or jax (jittable, ``j``
  may be traced) arrays.

  ``V`` (iters+1, dim) holds the basis rows, row 0 the normalised start vector. Full
  re-orthogonalisation (twice) against the stored basis in the vector dtype; the top of
  the tridiagonal's spectrum converges to the top *positive* eigenvalue of a symmetric
  operator (plain power iteration converges to the largest |eigenvalue|, which for a
  loss Hessian away from a minimum can be a negative one).
  """
  V, alpha, beta = carry
  xp = np if isinstance(V, np.ndarray) else jnp
  w = xp.asarray(matvec(V[j]), V.dtype)
  a = xp.dot(w, V[j])
  w = w - V.T @ (V @ w)          # rows > j are zero
  w = w - V.T @ (V @ w)
  b = xp.linalg.norm(w)
  safe = xp.where(b > 0, b, 1.0)
  V = _put(V, j + 1, xp.where(b > 0, w / safe, 0.0))
  return V, _put(alpha, j, a), _put(beta, j, b)


def lanczos(matvec, v0, n):
  """``n`` Lanczos steps from the unit vector ``v0`` on the host (numpy, float64 basis):
  returns ``(α, β)`` (``(n,)`` each; ``β[-1]`` the norm left after the last step)."""
  v0 = np.asarray(v0, np.float64)
  V = np.zeros((n + 1, v0.shape[0]))
  V[0] = v0
  carry = (V, np.zeros(n), np.zeros(n))
  with few_blas_threads(V.size):   # GEMVs on (n+1, dim): one BLAS thread
    for j in range(n):
      carry = lanczos_step(matvec, j, carry)
  return carry[1], carry[2]


def lanczos_jit(matvec, v0, n):
  """The same ``n`` steps as :func:`lanczos` inside a jitted computation (``lax.fori_loop``,
  the basis in ``v0``'s dtype)."""
  V = jnp.zeros((n + 1, v0.shape[0]), v0.dtype).at[0].set(v0)
  carry = (V, jnp.zeros((n,), v0.dtype), jnp.zeros((n,), v0.dtype))
  _, alpha, beta = jax.lax.fori_loop(0, n, lambda j, c: lanczos_step(matvec, j, c), carry)
  return alpha, beta


def tridiagonal_top(alpha, beta):
  r"""Top Ritz value θ of the Lanczos tridiagonal ``T(α, β)`` and its residual.

  With full re-orthogonalisation the top Ritz pair ``(θ, y = V u)`` has
  ``‖A y − θ y‖ = β_n |u_n|`` (β_n the norm left after the last step). numpy or jax
  arrays (traceable).

  Example:
    >>> import numpy as np
    >>> th, r = tridiagonal_top(np.array([2.0, 2.0]), np.array([1.0, 0.0]))
    >>> float(th), float(r)
    (3.0, 0.0)
  """
  xp = np if isinstance(alpha, np.ndarray) else jnp
  T = xp.diag(alpha) + xp.diag(beta[:-1], 1) + xp.diag(beta[:-1], -1)
  w, U = xp.linalg.eigh(T)
  return w[-1], xp.abs(beta[-1] * U[-1, -1])


# ------------------------------------------------------------------ Hessian-vector product
def flat_hvp(loss_fn, params, batch, v):
  """``∇²L(params; batch) v`` for a flat vector ``v`` in ``ravel_pytree`` order (traceable):
  ``jax.jvp`` of ``jax.grad``, exact for any loss (the residual term included)."""
  flat, unravel = ravel_pytree(params)
  grad_flat = lambda w: ravel_pytree(jax.grad(loss_fn)(unravel(w), batch))[0]
  return jax.jvp(grad_flat, (flat,), (v,))[1]


def half_preconditioner(Q, ch):
  """``u ↦ P^½ u = u + Qᵀ (ch ⊙ Q u)`` on flat vectors (``Q`` (k, dim) directions as rows,
  ``ch = √(g/λ) − 1``; None: the identity). Two GEMVs; numpy or jax arrays."""
  if Q is None:
    return lambda u: u
  return lambda u: u + Q.T @ (ch * (Q @ u))


def eigenvalue_error(th, res, k1):
  """``min(r_i, r_i²/gap_i)`` for i < k1: a bound on ``|θ_i − λ|`` for the eigenvalue λ
  nearest to the Ritz value θ_i (Weyl; Kato–Temple with gap_i the distance to the other
  Ritz values)."""
  m = th.shape[0]
  gaps = np.array([np.min(np.abs(np.delete(th, i) - th[i])) if m > 1 else np.inf
                   for i in range(min(k1, m))])
  r = res[:k1]
  return np.minimum(r, r * r / np.maximum(gaps, np.finfo(float).tiny))


def lambda_max(mu, what: str) -> float:
  """The largest of the (modified) eigenvalues ``mu`` as a float; a named error when it is
  not positive (a zero kernel: no step size or iteration count exists). ``what`` names the
  kernel in the message, e.g. ``"`K_g`"``."""
  top = float(np.max(np.asarray(mu)))
  if not top > 0:
    raise ValueError(f"{what} is zero (λ_max = 0): gradient descent never moves, so there is "
                     "no step size or iteration count; check the kernel.")
  return top
