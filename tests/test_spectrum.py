import jax.numpy as jnp
import numpy as np
import pytest

import mskjax
from mskjax import modifiers
from conftest import random_psd


@pytest.mark.parametrize("n,k", [(10, 1), (40, 7), (60, 59)])
def test_eigh_top_dense_matches_numpy(n, k):
  K = random_psd(n, seed=n)
  top = mskjax.eigh_top(K, k, method="dense")
  w = np.sort(np.linalg.eigvalsh(K))[::-1][:k]
  # float64 eigh: agreement to ~1e-12 relative to λ₁.
  np.testing.assert_allclose(top.values, w, atol=1e-12 * w[0])
  np.testing.assert_allclose(K @ top.vectors, top.vectors * top.values, atol=1e-10)
  np.testing.assert_allclose(top.vectors.T @ top.vectors, np.eye(k), atol=1e-10)


@pytest.mark.parametrize("decay", [1.0, 2.0])
@pytest.mark.parametrize("k", [5, 20])
def test_randomized_matches_dense(decay, k):
  K = random_psd(300, seed=k, decay=decay)
  dense = mskjax.eigh_top(K, k, method="dense")
  rand = mskjax.eigh_top(K, k, method="randomized", n_iter=60, oversample=30)
  # The gap λ_k/λ_{k+31} ≥ (k+31)/k per power iteration pair drives errors to round-off.
  np.testing.assert_allclose(rand.values, dense.values, rtol=1e-8)
  overlap = np.abs(np.sum(np.asarray(rand.vectors) * np.asarray(dense.vectors), axis=0))
  np.testing.assert_allclose(overlap, 1.0, atol=1e-6)


def test_clamps_negative_roundoff():
  K = random_psd(20, rank=5) - 1e-14 * np.eye(20)
  assert float(jnp.min(mskjax.eigh_desc(K).values)) == 0.0


@pytest.mark.parametrize("bad,match", [
    (np.ones((3, 4)), "square"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), "NaN"),
    (np.array([[1.0, 2.0], [0.0, 1.0]]), "symmetric"),
    (np.ones(3), "dimensions"),
])
def test_eigh_top_bad_matrix(bad, match):
  with pytest.raises(ValueError, match=match):
    mskjax.eigh_top(bad, 1)


@pytest.mark.parametrize("k", [0, 11, 2.5, True])
def test_eigh_top_bad_k(k):
  with pytest.raises(ValueError, match="`k`"):
    mskjax.eigh_top(np.eye(10), k)


def test_blocks_and_rounding():
  w = [5.0, 3.0, 3.0, 1.0, 1.0, 1.0, 0.5]
  assert mskjax.eigenvalue_blocks(w) == [0, 1, 3, 6]
  assert [mskjax.round_k_to_block(w, k) for k in (1, 2, 3, 4, 6)] == [1, 3, 3, 6, 6]


EV = jnp.array([16.0, 8.0, 4.0, 2.0, 1.0])


@pytest.mark.parametrize("g,k,expected", [
    (modifiers.identity(), 3, [16.0, 8.0, 4.0]),
    (modifiers.flatten(), 3, [2.0, 2.0, 2.0]),
    (modifiers.power(0.5, scale=2.0), 2, [8.0, 2 * np.sqrt(8.0)]),
    (modifiers.exponential(np.log(3.0)), 2, [4.0 * 9.0, 4.0 * 3.0]),  # λ_3 = 4
    (modifiers.scale(0.25), 2, [4.0, 2.0]),
    (modifiers.values([1.0, 2.0]), 2, [1.0, 2.0]),
    (modifiers.reverse(), 3, [4.0, 8.0, 16.0]),
    (modifiers.reverse(blocks=True), 3, [4.0, 8.0, 16.0]),   # singleton blocks: same
    (lambda ev, k: jnp.sqrt(ev[:k] * ev[k]), 2, [np.sqrt(64.0), np.sqrt(32.0)]),
])
def test_modifier_families(g, k, expected):
  # Closed forms of each family, written out by hand.
  np.testing.assert_allclose(modifiers.apply_modifier(g, EV, k), expected, rtol=1e-12)


@pytest.mark.parametrize("g,match", [
    (lambda ev, k: ev[:k] - 10.0, "strictly positive"),
    (lambda ev, k: ev[: k + 1], "shape"),
    (lambda ev, k: ev[:k] * jnp.nan, "NaN"),
    ("flatten", "callable"),
])
def test_modifier_contract_errors(g, match):
  with pytest.raises((ValueError, TypeError), match=match):
    modifiers.apply_modifier(g, EV, 2)


def test_modifier_constructor_errors():
  with pytest.raises(ValueError, match="scale"):
    modifiers.scale(-1.0)
  with pytest.raises(ValueError, match="positive"):
    modifiers.values([1.0, -2.0])
  with pytest.raises(ValueError, match="exactly k"):
    modifiers.apply_modifier(modifiers.values([1.0, 2.0]), EV, 3)


@pytest.mark.parametrize("mult", [(1, 2, 2, 2), (1, 3, 5, 7), (2, 1, 3)])
def test_reverse_blocks_on_sphere_like_multiplicities(mult):
  # Blocks of sizes `mult` with values 2^-b (S¹: 1, 2, 2, ...; S²: 2l+1). Block b must take
  # the value of block B-1-b at each of its own positions (written out by hand).
  vals = [2.0 ** -b for b in range(len(mult))]
  ev = jnp.array(sum(([v] * m for v, m in zip(vals, mult)), []) + [1e-3])
  k = sum(mult)
  expected = sum(([vals[len(mult) - 1 - b]] * m for b, m in enumerate(mult)), [])
  np.testing.assert_allclose(modifiers.reverse(blocks=True)(ev, k), expected, rtol=1e-12)
  # Tiny splits inside a block (round-off) are averaged away; eigenvalue-wise reverse keeps them.
  noisy = ev * (1 + 1e-9 * (jnp.arange(ev.shape[0]) % 2))
  np.testing.assert_allclose(modifiers.reverse(blocks=True)(noisy, k), expected, rtol=1e-8)
  with pytest.raises(ValueError, match="rtol"):
    modifiers.reverse(blocks=True, rtol=-1.0)


def test_modifiers_are_jittable():
  import jax
  for g in (modifiers.flatten(), modifiers.power(0.5), modifiers.exponential(0.3),
            modifiers.reverse(), modifiers.reverse(blocks=True), modifiers.scale(2.0)):
    out = jax.jit(lambda ev: g(ev, 3))(EV)
    np.testing.assert_allclose(out, g(EV, 3), rtol=1e-12)
