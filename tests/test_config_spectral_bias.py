"""mskjax/experiments/spectral_bias.py: its helpers do what the experiment's claims rest on.

The CI smoke run only checks that the config runs; these check that (a) the block-wise
reverse keeps the S¹ frequency pairs intact and mirrors the blocks and (b) the ``lax.scan`` training loop is ``mskjax.train.train`` with
``msk_sgd_jvp`` step for step. (The finite-width spectrum transfer it uses is the library's
``mskjax.msk.transfer_msk_spectrum``, tested in tests/test_msk_transfer.py.)
"""
import jax
import jax.numpy as jnp
import numpy as np

import mskjax
from mskjax import data, kernels, nets, function_space
from mskjax import train as T

from mskjax.experiments import spectral_bias as CFG


def _circle_kernel(n=32, b_std=0.1):
  net = nets.make_network(nets.MLPSpec(depth=1, width=64, b_std=b_std), antisymmetric=True)
  x, th = data.circle(n)
  return net, x, th, kernels.gram(net.kernel_fn, x)


def test_reverse_blocks_keeps_pairs_and_mirrors_the_blocks():
  ev = jnp.array([9.0, 5.0, 5.0, 2.0, 2.0, 1.0, 1.0, 0.5])
  g = mskjax.modifiers.reverse_blocks(mskjax.spectrum.eigenvalue_blocks(ev))
  assert g(ev, 7).tolist() == [1.0, 2.0, 2.0, 5.0, 5.0, 9.0, 9.0]
  # All blocks singletons: the same as modifiers.reverse().
  ev1 = jnp.array([4.0, 3.0, 2.0, 1.0])
  assert g.__name__.startswith("reverse_blocks")
  assert mskjax.modifiers.reverse_blocks(mskjax.spectrum.eigenvalue_blocks(ev1))(ev1, 3).tolist() == \
      mskjax.modifiers.reverse()(ev1, 3).tolist()
  # modifiers.reverse() splits the pairs (the reason for the block-wise version).
  assert mskjax.modifiers.reverse()(ev, 7).tolist() == [1.0, 1.0, 2.0, 2.0, 5.0, 5.0, 9.0]


def test_scan_trainer_is_train_with_msk_sgd():
  net, x, th, K = _circle_kernel()
  variables = nets.init_zero_output(net.model, jax.random.PRNGKey(0), x)
  apply_fn = lambda p, a: net.model.apply({"params": p}, a)
  y = 0.01 * (data.fourier_target(th, 2) + data.fourier_target(th, 4))
  spec = mskjax.msk_spectrum(K, mskjax.modifiers.flatten(), 5)
  eta = 0.5 / float(spec.max_value)
  steps = 6
  ours = CFG.make_trainer(apply_fn, x, y, steps)(variables["params"], eta, spec)
  ref = T.train(apply_fn, variables["params"], function_space.msk_sgd_jvp(eta, apply_fn, x, spec), x, y,
                steps=steps, record_steps=list(range(steps + 1)), progress=False)
  np.testing.assert_allclose(ours, ref.train_predictions, rtol=1e-10, atol=1e-14)
