"""Modifier names in configs go through the one registry (mskjax.modifiers.from_name) and an
unknown name is a named error at config validation time, before any work."""
import numpy as np
import pytest

from mskjax import _config
from mskjax import run as R
from mskjax import modifiers

# (config, override with a misspelt modifier name)
BAD = [("mnist1d", "g=flaten"),
       ("mnist1d_kernels", "modifiers=('none','flaten@10')"),
       ("same_solution", "modifiers=('flaten',)"),
       ("msk_approximation", "modifiers=('flaten',)")]


def _validated(name, overrides):
  module = _config.load_config_module(f"configs/{name}.py")
  config = R.load_config(f"configs/{name}.py:quick")
  _config.apply_overrides(config, overrides)
  return _config.validate_config(config, module)


@pytest.mark.parametrize("name,override", BAD)
def test_unknown_modifier_name_fails_at_validation_listing_known_names(name, override):
  with pytest.raises(R.ConfigError, match=r"unknown modifier name 'flaten'; known: .*flatten"):
    _validated(name, [override])


def test_spectral_bias_names_are_its_declared_choices():
  with pytest.raises(R.ConfigError, match="must be one of"):
    _validated("spectral_bias", ["gs=('flaten',)"])


@pytest.mark.parametrize("name,override", [
    ("mnist1d", "g=power0.5"), ("mnist1d_kernels", "modifiers=('none','exp0.5@10')"),
    ("same_solution", "modifiers=('scale0.3',)"), ("msk_approximation", "modifiers=('power2',)")])
def test_any_registered_name_is_accepted(name, override):
  _validated(name, [override])


def test_mnist1d_kernels_items_name_a_registered_modifier_and_k():
  lam = np.array([16.0, 9.0, 4.0, 1.0, 0.25])
  g, k = modifiers.from_spec("geomean@3")
  assert k == 3
  # geomean: g(λ_i) = √(λ_i λ_{k+1}) — the committed run's λ_{k+1}(λ/λ_{k+1})^½ (numpy oracle)
  np.testing.assert_allclose(np.asarray(g(lam, k)), np.sqrt(lam[:3] * lam[3]), rtol=1e-12)
  g, k = modifiers.from_spec("flatten@2")
  np.testing.assert_allclose(np.asarray(g(lam, k)), [4.0, 4.0])
  assert modifiers.from_spec("none") == (None, None)
  for bad in ("flatten10", "flatten@0", "flatten@", "@10"):
    with pytest.raises(ValueError, match="NAME@k|unknown modifier"):
      modifiers.from_spec(bad)
  with pytest.raises(R.ConfigError, match="k must be < n_train"):
    _validated("mnist1d_kernels", ["modifiers=('flatten@500',)"])
