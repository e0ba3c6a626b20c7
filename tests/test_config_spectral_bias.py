"""configs/spectral_bias.py: its helpers do what the experiment's claims rest on.

The CI smoke run only checks that the config runs; these check that (a) the block-wise
reverse keeps the S¹ frequency pairs intact and mirrors the blocks, (b) the finite-width
spectrum transfer reproduces the analytic MSK exactly when the network's kernel *is* the
analytic one, and (c) the ``lax.scan`` training loop is ``mskjax.train.train`` with
``msk_sgd_jvp`` step for step.
"""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import mskjax
from mskjax import data, kernels, nets, optim
from mskjax import run as runner
from mskjax import train as T

CFG = runner.load_config_module(Path(__file__).resolve().parents[1] / "configs" /
                                "spectral_bias.py")


def _circle_kernel(n=32, b_std=0.1):
  net = nets.make_network(nets.MLPSpec(depth=1, width=64, b_std=b_std), antisymmetric=True)
  x, th = data.circle(n)
  return net, x, th, kernels.gram(net.kernel_fn, x)


def test_reverse_blocks_keeps_pairs_and_mirrors_the_blocks():
  ev = jnp.array([9.0, 5.0, 5.0, 2.0, 2.0, 1.0, 1.0, 0.5])
  g = mskjax.modifiers.reverse_blocks(mskjax.eigenvalue_blocks(ev))
  assert g(ev, 7).tolist() == [1.0, 2.0, 2.0, 5.0, 5.0, 9.0, 9.0]
  # All blocks singletons: the same as modifiers.reverse().
  ev1 = jnp.array([4.0, 3.0, 2.0, 1.0])
  assert g.__name__.startswith("reverse_blocks")
  assert mskjax.modifiers.reverse_blocks(mskjax.eigenvalue_blocks(ev1))(ev1, 3).tolist() == \
      mskjax.modifiers.reverse()(ev1, 3).tolist()
  # modifiers.reverse() splits the pairs (the reason for the block-wise version).
  assert mskjax.modifiers.reverse()(ev, 7).tolist() == [1.0, 1.0, 2.0, 2.0, 5.0, 5.0, 9.0]


def test_finite_spectrum_transfer_is_exact_on_the_analytic_kernel():
  _, _, th, K = _circle_kernel()
  lam = np.asarray(mskjax.eigh_desc(K).values)
  g = mskjax.modifiers.reverse_blocks(mskjax.eigenvalue_blocks(lam))
  k = 9
  spec_a = mskjax.msk_spectrum(K, g, k)
  spec_f, overlap = CFG.finite_spectrum(K, spec_a, k + 4)      # padded: g/λ = 1 beyond k
  assert overlap > 1 - 1e-9
  Kg = np.asarray(mskjax.msk_gram_from_spectrum(K, spec_a))
  np.testing.assert_allclose(np.asarray(mskjax.msk_gram_from_spectrum(K, spec_f)), Kg,
                             atol=1e-10 * lam[0])
  # Blocks j = 0 | 1 | 2 | 4 | 3 (b_std = 0.1): frequency 1, the second block, now carries
  # the value of the second-to-last block, λ(j=4), and frequency 3 the largest, λ(j=0).
  for j, target in ((1, lam[5]), (3, lam[0])):
    c = np.cos(j * np.asarray(th))
    np.testing.assert_allclose(c @ Kg @ c / (c @ c), target, rtol=1e-7)
  spec_id, _ = CFG.finite_spectrum(K, None, k)                 # identity: S = I
  np.testing.assert_array_equal(np.asarray(spec_id.new_values), np.asarray(spec_id.values))


def test_scan_trainer_is_train_with_msk_sgd():
  net, x, th, K = _circle_kernel()
  variables = nets.init_zero_output(net.model, jax.random.PRNGKey(0), x)
  apply_fn = lambda p, a: net.model.apply({"params": p}, a)
  y = 0.01 * (data.fourier_target(th, 2) + data.fourier_target(th, 4))
  spec = mskjax.msk_spectrum(K, mskjax.modifiers.flatten(), 5)
  eta = 0.5 / float(spec.max_value)
  steps = 6
  ours = CFG.make_trainer(apply_fn, x, y, steps)(variables["params"], eta, spec)
  ref = T.train(apply_fn, variables["params"], optim.msk_sgd_jvp(eta, apply_fn, x, spec), x, y,
                steps=steps, record_steps=list(range(steps + 1)), progress=False)
  np.testing.assert_allclose(ours, ref.train_predictions, rtol=1e-10, atol=1e-14)
