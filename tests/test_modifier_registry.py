"""modifiers.from_name / register / reverse_blocks / geometric_mean against closed forms."""
import jax.numpy as jnp
import numpy as np
import pytest

from mskjax import modifiers

EV = np.array([16.0, 9.0, 4.0, 2.0, 1.0, 0.5])


@pytest.mark.parametrize("name, k, expected", [
    ("identity", 3, EV[:3]),
    ("flatten", 3, np.full(3, EV[3])),
    ("power0.5", 2, np.sqrt(EV[:2])),
    ("power2", 2, EV[:2] ** 2),
    ("scale0.3", 3, 0.3 * EV[:3]),
    ("exp0.5", 3, EV[3] * np.exp(0.5 * (4 - np.arange(1, 4)))),   # λ_{k+1} e^{r(k+1−i)}
    ("exp1e-1", 2, EV[2] * np.exp(0.1 * (3 - np.arange(1, 3)))),
    ("geomean", 3, np.sqrt(EV[:3] * EV[3])),
    ("relpow2", 3, EV[3] * (EV[:3] / EV[3]) ** 2),               # λ_{k+1} (λ_i/λ_{k+1})^p
    ("relpow0", 3, np.full(3, EV[3])),                            # p = 0: flatten
    ("relpow0.5", 2, np.sqrt(EV[:2] * EV[2])),                     # p = ½: geomean
    ("reverse", 3, EV[:3][::-1]),
])
def test_from_name_matches_closed_form(name, k, expected):
  got = np.asarray(modifiers.from_name(name)(jnp.asarray(EV), k))
  np.testing.assert_allclose(got, expected, rtol=1e-12)   # float64 closed forms: round-off only


@pytest.mark.parametrize("bad, err, match", [
    ("foo", ValueError, "unknown modifier name 'foo'; known:"),
    ("power", ValueError, "write it as power<number>"),
    ("flatten2", ValueError, "write it as flatten"),
    ("pow0.5", ValueError, "unknown modifier name"),
    (0.5, TypeError, "must be a string"),
])
def test_from_name_rejects_bad_names(bad, err, match):
  with pytest.raises(err, match=match):
    modifiers.from_name(bad)


def test_register_adds_a_family():
  modifiers.register("halfpower", lambda p: modifiers.power(p / 2), takes_number=True)
  got = np.asarray(modifiers.from_name("halfpower1")(jnp.asarray(EV), 2))
  np.testing.assert_allclose(got, np.sqrt(EV[:2]), rtol=1e-12)
  assert "halfpower<number>" in modifiers.names()
  with pytest.raises(ValueError, match="lower-case identifier"):
    modifiers.register("Bad Name", modifiers.flatten, takes_number=False)


def test_reverse_blocks_explicit_boundaries():
  ev = jnp.array([9.0, 5.2, 4.8, 2.1, 1.9, 1.0])          # blocks {0}, {1,2}, {3,4} (split)
  got = np.asarray(modifiers.reverse_blocks([0, 1, 3, 5])(ev, 5))
  np.testing.assert_allclose(got, [2.0, 5.0, 5.0, 9.0, 9.0], rtol=1e-12)
  with pytest.raises(ValueError, match="not at a block boundary"):
    modifiers.reverse_blocks([0, 1, 3, 5])(ev, 2)
  with pytest.raises(ValueError, match="starting with 0"):
    modifiers.reverse_blocks([1, 3])
