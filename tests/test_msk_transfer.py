"""mskjax.msk.transfer_msk_spectrum: another kernel's modification carried to K's eigenpairs.

Oracles: the MSK Gram of the source spectrum itself (the transfer onto the same kernel must
reproduce it) and the Rayleigh quotients of the S¹ Fourier modes (closed-form eigenvectors).
"""
import numpy as np
import pytest

import mskjax
from mskjax import data, kernels, nets


def _circle_kernel(n=32, b_std=0.1):
  net = nets.make_network(nets.MLPSpec(depth=1, width=64, b_std=b_std), antisymmetric=True)
  x, th = data.circle(n)
  return net, x, th, kernels.gram(net.kernel_fn, x)


def test_finite_spectrum_transfer_is_exact_on_the_analytic_kernel():
  _, _, th, K = _circle_kernel()
  lam = np.asarray(mskjax.eigh_desc(K).values)
  g = mskjax.modifiers.reverse_blocks(mskjax.spectrum.eigenvalue_blocks(lam))
  k = 9
  spec_a = mskjax.msk_spectrum(K, g, k)
  spec_f, overlap = mskjax.msk.transfer_msk_spectrum(K, spec_a, k + 4)      # padded: g/λ = 1 beyond k
  assert overlap > 1 - 1e-9
  Kg = np.asarray(mskjax.msk.msk_gram_from_spectrum(K, spec_a))
  np.testing.assert_allclose(np.asarray(mskjax.msk.msk_gram_from_spectrum(K, spec_f)), Kg,
                             atol=1e-10 * lam[0])
  # Blocks j = 0 | 1 | 2 | 4 | 3 (b_std = 0.1): frequency 1, the second block, now carries
  # the value of the second-to-last block, λ(j=4), and frequency 3 the largest, λ(j=0).
  for j, target in ((1, lam[5]), (3, lam[0])):
    c = np.cos(j * np.asarray(th))
    np.testing.assert_allclose(c @ Kg @ c / (c @ c), target, rtol=1e-7)
  spec_id, _ = mskjax.msk.transfer_msk_spectrum(K, None, k)                 # identity: S = I
  np.testing.assert_array_equal(np.asarray(spec_id.new_values), np.asarray(spec_id.values))


def test_transfer_assigns_by_eigenvector_not_by_rank():
  # K's eigenvalue order differs from the source's: the modified value follows the vector.
  src = mskjax.msk_spectrum(np.diag([4.0, 2.0, 1.0, 0.5]), mskjax.modifiers.flatten(), 1)
  spec, overlap = mskjax.msk.transfer_msk_spectrum(np.diag([1.0, 5.0, 3.0, 0.5]), src, 2)
  # K's top eigenvector is e2 (λ 5), then e3 (λ 3); the source modified e1, which is not kept
  # among them: its value 2.0 goes to the best-overlapping kept vector (overlap 0).
  assert spec.values.tolist() == [5.0, 3.0] and float(spec.next_value) == 1.0
  assert overlap == 0.0   # flags the unfaithful transfer
  src2 = mskjax.msk_spectrum(np.diag([1.0, 4.0, 2.0, 0.5]), mskjax.modifiers.flatten(), 1)
  spec2, overlap2 = mskjax.msk.transfer_msk_spectrum(np.diag([1.0, 5.0, 3.0, 0.5]), src2, 2)
  assert spec2.new_values.tolist() == [2.0, 3.0] and overlap2 == 1.0


def test_transfer_rejects_bad_k_and_mismatched_source():
  src = mskjax.msk_spectrum(np.diag([4.0, 3.0, 2.0, 1.0]), mskjax.modifiers.flatten(), 2)
  with pytest.raises(ValueError, match="`k` must be >= source.k = 2"):
    mskjax.msk.transfer_msk_spectrum(np.diag([4.0, 3.0, 2.0, 1.0]), src, 1)
  with pytest.raises(ValueError, match="`source.vectors` has 4 rows"):
    mskjax.msk.transfer_msk_spectrum(np.eye(3), src, 2)
  with pytest.raises(ValueError, match="`k` must satisfy"):
    mskjax.msk.transfer_msk_spectrum(np.diag([4.0, 3.0, 2.0, 1.0]), None, 4)
