"""The S² degree order that configs/sphere_speedup.py builds its k from (its quick smoke run
covers S¹ only)."""
import numpy as np

from mskjax import kernels, nets


def test_degree_order_of_the_relu_ntk_on_s2():
  kf = nets.make_network(nets.MLPSpec(depth=1, width=8, b_std=0.1)).kernel_fn
  mu = kernels.sphere_mercer_eigenvalues(kf, 3, 8)
  order = np.argsort(-mu)
  assert order[:5].tolist() == [0, 1, 2, 4, 3]        # -> k = 4, 9, 18, 25 in the config
