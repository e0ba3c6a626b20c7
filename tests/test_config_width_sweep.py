"""mskjax/experiments/width_sweep.py (the program of configs/width_sweep.py): its scan loop
is ``mskjax.train.train`` step for step.

The sweep's GD runs go through ``msk_sgd_jvp`` with g/λ = 1 (one compiled loop per width for
both methods); this checks that this is plain GD (``optax.sgd``) on train *and* test points,
which the CI smoke run cannot see.
"""
import jax
import numpy as np
import optax

import mskjax
from mskjax import data, kernels, nets
from mskjax import train as T

from mskjax.experiments import width_sweep as CFG


def test_gd_through_msk_sgd_with_unit_ratio_is_plain_gd():
  net = nets.make_network(nets.MLPSpec(depth=1, width=64), antisymmetric=True)
  x, th = data.circle(24)
  xt, _ = data.circle(7, equispaced=False, key=jax.random.PRNGKey(1))
  y = data.fourier_target(th, 1) + data.fourier_target(th, 2)
  variables = nets.init_zero_output(net.model, jax.random.PRNGKey(0), x)
  apply_fn = lambda p, a: net.model.apply({"params": p}, a)
  K = kernels.gram(net.kernel_fn, x)
  spec = mskjax.msk_spectrum(K, mskjax.modifiers.flatten(), 3)
  spec_gd = spec._replace(new_values=spec.values)
  eta, steps = 0.05, 5
  tr, te = CFG.make_trainer(apply_fn, x, y, xt, steps)(variables["params"], eta, spec_gd)
  ref = T.train(apply_fn, variables["params"], optax.sgd(eta), x, y, steps=steps,
                record_steps=list(range(steps + 1)), x_test=xt, progress=False)
  np.testing.assert_allclose(tr, ref.train_predictions, rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(te, ref.test_predictions, rtol=1e-10, atol=1e-13)
