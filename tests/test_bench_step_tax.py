"""The per-step benchmark's alternative layouts of P compute the library's P (the timings it
compares are of the same map)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench_step_tax as B
from mskjax import optim


def _flat(t):
  return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(t)])


@pytest.mark.parametrize("k", [4, 8])
def test_p_layouts_compute_the_same_map(k):
  model = B.MLP((16, 8, 3))
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 5)))["params"]
  d = B.random_directions(params, k)
  g = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(a.size), a.shape), params)
  ref = _flat(optim.precondition(d, g))
  lay = B.p_layouts(params, d, k)
  assert set(lay) == {f"k = {max(1, k // 4)}", "flat (k, P)", "bfloat16"}
  # float32 sums over ≤ 300 terms: ~1e-6 relative
  np.testing.assert_allclose(_flat(lay["flat (k, P)"][0](g)), ref, rtol=1e-5, atol=1e-5)
  # bfloat16 storage and inputs (8 significant bits): ≈ 2⁻⁸ relative per entry
  np.testing.assert_allclose(_flat(lay["bfloat16"][0](g)), ref, rtol=0, atol=3e-2 * np.abs(ref).max())
  # the k/4 map is a different P: it differs from the k one (the directions beyond k/4 act)
  assert not np.allclose(_flat(lay[f"k = {max(1, k // 4)}"][0](g)), ref, atol=1e-3)
