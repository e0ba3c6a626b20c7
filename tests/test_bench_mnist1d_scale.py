"""The MNIST-1D scale benchmark's refresh loop and curve readers (cheap: a few seconds)."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench_mnist1d_scale as S
from mskjax.experiments import mnist1d as B
from mskjax import optim
from mskjax import train as T


def _problem(n=64):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, 40)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
  params = B.init_params("mlp", x, 0)["params"]
  return x, y, params


def _random_directions(params, k, seed):
  """k orthonormal parameter-space directions (QR of a Gaussian, float32 leaves)."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((flat.size, k)))
  leaves = [unravel(jnp.asarray(q[:, i], jnp.float32)) for i in range(k)]
  dirs = jax.tree.map(lambda *l: jnp.stack(l), *leaves)
  vals = jnp.linspace(8.0, 2.0, k)
  return optim.MSKDirections(dirs, vals, jnp.full((k,), 1.0), jnp.asarray(1.0))


@pytest.fixture(scope="module")
def setup():
  x, y, params = _problem()
  d = _random_directions(params, 3, 0)
  # one optimizer object for every fit below: one compiled loop (tx is a static argument)
  return x, y, params, d, optim.msk_sgd(0.05, d, momentum=0.9)


def test_refresh_run_matches_one_uninterrupted_fit(setup):
  """Refreshing with unchanged directions changes nothing: the segmented run (resume +
  replace_directions) ends at the parameters of one plain fit of all steps."""
  x, y, params, d, tx = setup
  rr = S.refresh_run("mlp", params, d, x, y, x, y, lr=0.05, batch_size=16, steps=12, every=5,
                     eval_every=4, k=3, subsample=None, rebuild=lambda p: d, tx=tx)
  assert rr["refreshes"] == 2 and len(rr["refresh_s"]) == 2
  assert rr["curve_step"] == [0, 4, 5, 8, 10, 12]
  ref = T.fit(B.loss_fn("mlp"), params, tx, (x, y), steps=12, batch_size=16, seed=0)
  for a, b in zip(jax.tree.leaves(rr["state"].params), jax.tree.leaves(ref.state.params)):
    # float32, same ops in the same order except the chunk boundaries: round-off only
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_refresh_run_uses_the_new_directions(setup):
  """After a refresh the steps follow the new P: different from never refreshing."""
  x, y, params, d, tx = setup
  d2 = _random_directions(params, 3, 1)._replace(values=jnp.full((3,), 50.0))  # g/λ = 1/50
  rr = S.refresh_run("mlp", params, d, x, y, x, y, lr=0.05, batch_size=16, steps=8, every=4,
                     eval_every=4, k=3, subsample=None, rebuild=lambda p: d2, tx=tx)
  st = T.fit(B.loss_fn("mlp"), params, tx, (x, y), steps=4, batch_size=16, seed=0).state
  st = st._replace(opt_state=optim.replace_directions(st.opt_state, d2))
  ref = T.fit(B.loss_fn("mlp"), None, tx, (x, y), steps=4, batch_size=16, state=st)
  never = T.fit(B.loss_fn("mlp"), params, tx, (x, y), steps=8, batch_size=16, seed=0)
  got, want, old = (np.concatenate([np.ravel(l) for l in jax.tree.leaves(p)])
                    for p in (rr["state"].params, ref.state.params, never.state.params))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(got - old)) > 1e-4


@pytest.mark.parametrize("t,expect", [(0.5, None), (1.0, 0.2), (2.5, 0.5), (9.0, 0.7)])
def test_acc_at_time(t, expect):
  # the benchmark reads equal-time accuracy with the MNIST-1D program's read-out
  rec = dict(curve_step=[0, 10, 20], curve_time=[1.0, 2.0, 3.0], curve_acc=[0.2, 0.5, 0.7])
  assert B.acc_at_time(rec, t) == expect
  assert B.acc_at_time(rec, t + 1.0, 1.0) == expect
  assert S.acc_at_step(rec, 15) == 0.5
