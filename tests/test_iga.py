"""mskjax.iga (Inductive Gradient Adjustment) against an independent numpy computation.

Oracle: the full Jacobian of a tiny network from ``jax.jacrev`` (one call, then numpy),
the summed-output kernel, ``numpy.linalg.eigh``, S and the patch-wise lift written out with
loops, and the gradient ``(2/N) Jᵀ r'`` as a numpy matrix product — compared with
``jax.grad`` of :func:`mskjax.iga.iga_loss`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mskjax import iga, modifiers


def _net(c):
  def f(p, x):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    out = h @ p["w2"]
    return out[:, 0] if c == 0 else out
  return f


def _params(c, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {"w1": jax.random.normal(k1, (2, 6), jnp.float64),
          "b1": 0.1 * jax.random.normal(k2, (6,), jnp.float64),
          "w2": jax.random.normal(k3, (6, max(c, 1)), jnp.float64) / 3}


def _numpy_iga_grad(f, p, x, y, groups, k, c, sample="max_error"):
  """(2/N) Jᵀ r' computed without mskjax.iga (``'max_error_sum'``: the reference code's
  ``a[:, max_indices]`` — row i sums patch i's points at every patch's max-error position)."""
  leaves, tree = jax.tree.flatten(p)
  jac = jax.jacrev(lambda q: f(q, x))(p)                     # leaves (n, [c,] *shape)
  n = x.shape[0]
  cc = max(c, 1)
  J = np.concatenate([np.asarray(jac[key]).reshape(n, cc, -1) for key in sorted(p)], -1)
  r = (np.asarray(f(p, x)) - np.asarray(y)).reshape(n, cc)
  P, m = groups.shape
  pos = [int(np.argmax(np.abs(r[groups[i]]).sum(1))) for i in range(P)]
  if sample == "max_error_sum":
    Jh = np.stack([sum(J[groups[i, pos[j]]].sum(0) for j in range(P)) for i in range(P)])
    Jh = Jh / np.sqrt(cc)
  else:
    rep = [groups[i, pos[i]] for i in range(P)]
    Jh = J[rep].sum(1) / np.sqrt(cc)                         # (P, D) rows of h = Σ f_c / √c
  K = Jh @ Jh.T
  w, V = np.linalg.eigh(K)
  w, V = w[::-1], V[:, ::-1]
  S = np.eye(P)
  for i in range(k):
    S += (w[k] / w[i] - 1.0) * np.outer(V[:, i], V[:, i])  # flatten: λ_i → λ_{k+1}
  ra = r.copy()
  for i in range(P):
    for s in range(m):
      ra[groups[i, s]] = sum(S[i, j] * r[groups[j, s]] for j in range(P))
  N = r.size
  g = (2.0 / N) * np.einsum("ncd,nc->d", J, ra)
  sizes = [int(np.prod(p[key].shape)) for key in sorted(p)]
  parts = np.split(g, np.cumsum(sizes)[:-1])
  return {key: part.reshape(p[key].shape) for key, part in zip(sorted(p), parts)}, S


@pytest.mark.parametrize("c,mask,patch,k,sample", [
    (0, False, 2, 1, "max_error"),      # scalar output, all 16 pixels, 4 patches of 4
    (3, True, 2, 2, "max_error"),       # RGB, checkerboard training pixels, 4 patches of 2
    (3, True, 2, 2, "max_error_sum"),   # the reference code's kernel rows
])
def test_iga_gradient_matches_numpy(c, mask, patch, k, sample):
  with jax.enable_x64(True):
    side = 4 if patch == 2 else 8
    coords = np.stack(np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side),
                                  indexing="ij"), -1).reshape(-1, 2)
    m = (np.add.outer(np.arange(side), np.arange(side)) % 2 == 0) if mask else None
    keep = np.ones(side * side, bool) if m is None else m.reshape(-1)
    x = jnp.asarray(coords[keep])
    rng = np.random.default_rng(1)
    y = jnp.asarray(rng.standard_normal((x.shape[0], c)) if c else rng.standard_normal(x.shape[0]))
    groups = iga.patch_groups(side, side, patch, mask=m)
    f, p = _net(c), _params(c)
    got = jax.grad(lambda q: iga.iga_loss(f, q, x, y, groups, k, sample=sample))(p)
    want, S = _numpy_iga_grad(f, p, x, y, groups, k, c, sample)
    for key in p:   # float64 throughout; eigh vs numpy eigh: agree to ~1e-10 relative
      np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-8,
                                 atol=1e-10 * np.abs(want[key]).max())
    # the value is the plain MSE
    mse = float(jnp.mean((f(p, x) - y) ** 2))
    assert float(iga.iga_loss(f, p, x, y, groups, k)) == pytest.approx(mse, rel=1e-12)
    # S is not the identity here (the test can fail): the top eigenvalues were flattened
    assert np.abs(S - np.eye(S.shape[0])).max() > 1e-3
    if sample == "max_error_sum":   # the two kernels differ here, so the oracle tells them apart
      other, _ = _numpy_iga_grad(f, p, x, y, groups, k, c)
      assert max(np.abs(other[key] - want[key]).max() for key in p) > 1e-6


def test_adjustment_matrix_eigenvalues_are_flattened():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    K = A @ A.T
    S = np.asarray(iga.adjustment_matrix(jnp.asarray(K), 2))
    w, V = np.linalg.eigh(K)
    w, V = w[::-1], V[:, ::-1]
    # S v_i = (λ_3/λ_i) v_i for i ≤ 2, v_i otherwise (rtol: float64 eigh)
    want = np.r_[w[2] / w[:2], np.ones(4)]
    np.testing.assert_allclose(np.diag(V.T @ S @ V), want, rtol=1e-10)
    # another modifier: power(0.5) → S v_i = √λ_i/λ_i
    S2 = np.asarray(iga.adjustment_matrix(jnp.asarray(K), 2, modifiers.power(0.5)))
    np.testing.assert_allclose(np.diag(V.T @ S2 @ V)[:2], w[:2] ** -0.5, rtol=1e-10)


def test_patch_groups_layout_and_errors():
  g = iga.patch_groups(4, 6, 2)
  assert g.shape == (6, 4)
  assert sorted(g.ravel().tolist()) == list(range(24))           # disjoint and covering
  assert g[1].tolist() == [2, 3, 8, 9]                           # second patch, row-major
  mask = np.add.outer(np.arange(4), np.arange(4)) % 2 == 0
  gm = iga.patch_groups(4, 4, 2, mask=mask)
  assert gm.shape == (4, 2) and sorted(gm.ravel().tolist()) == list(range(8))
  with pytest.raises(ValueError, match="patch_size"):
    iga.patch_groups(5, 4, 2)
  with pytest.raises(ValueError, match="even `patch_size`"):
    iga.patch_groups(6, 6, 3, mask=np.add.outer(np.arange(6), np.arange(6)) % 2 == 0)
  with pytest.raises(ValueError, match="k"):
    iga.adjustment_matrix(jnp.eye(3), 3)
  with pytest.raises(ValueError, match="sample"):
    iga.representatives(jnp.zeros(4), g[:, :1] % 4, sample="random")
