"""mskjax.nets: specs, stax/flax agreement, empirical -> analytic NTK, zero-output init."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mskjax.data import sphere
from mskjax.kernels import gram
from mskjax.tangents import empirical_ntk
from mskjax.nets import (CNNSpec, FlaxCNN, FlaxMLP, MLPSpec, Network, init_zero_output,
                         make_network, params_from_stax, stax_cnn, stax_mlp)


@pytest.fixture(scope="module")
def x20():
  return sphere(20, 3, jax.random.PRNGKey(42))


def _rel_fro(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("depth, out_dim, activation, parameterization, b_std", [
    (1, 1, "relu", "ntk", 0.0),
    (2, 3, "erf", "ntk", 0.1),
    (3, 2, "gelu", "standard", 0.5),
    (2, 1, "linear", "standard", None),
])
def test_flax_matches_stax_forward(depth, out_dim, activation, parameterization, b_std):
  spec = MLPSpec(depth=depth, width=16, activation=activation, W_std=1.3, b_std=b_std,
                 parameterization=parameterization, out_dim=out_dim)
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
  init_fn, apply_fn, _ = stax_mlp(spec)
  _, theta = init_fn(jax.random.PRNGKey(0), x.shape)
  model = FlaxMLP(spec)
  out = model.apply(params_from_stax(spec, theta), x)
  assert out.shape == (6, out_dim) and out.dtype == jnp.float64
  np.testing.assert_allclose(out, apply_fn(theta, x), rtol=1e-12, atol=1e-12)
  # The flax init has the same parameter tree as the converted stax params.
  flax_shapes = jax.tree.map(jnp.shape, model.init(jax.random.PRNGKey(2), x))
  assert flax_shapes == jax.tree.map(jnp.shape, params_from_stax(spec, theta))


@pytest.mark.parametrize("parameterization, w_scale", [("ntk", 1.0), ("standard", 2.0 / 16)])
def test_flax_init_distribution(parameterization, w_scale):
  # 'ntk': W ~ N(0, 1); 'standard': W ~ N(0, W_std^2 / fan_in) with W_std = 2, fan_in = 256.
  spec = MLPSpec(depth=2, width=256, W_std=2.0, b_std=0.5, parameterization=parameterization)
  v = FlaxMLP(spec).init(jax.random.PRNGKey(0), jnp.ones((1, 256)))["params"]
  w = np.asarray(v["dense_1"]["kernel"])
  assert abs(w.std() / w_scale - 1) < 0.02 and abs(w.mean()) < 0.01 * w_scale
  b = np.asarray(v["dense_1"]["bias"])
  b_scale = 1.0 if parameterization == "ntk" else 0.5
  assert abs(b.std() / b_scale - 1) < 0.2


def test_output_shapes_and_no_bias_params():
  x = jnp.ones((5, 7))
  for spec in (MLPSpec(depth=1, width=8), MLPSpec(depth=3, width=8, b_std=None, out_dim=4)):
    for antisymmetric in (False, True):
      model = FlaxMLP(spec, antisymmetric=antisymmetric)
      v = model.init(jax.random.PRNGKey(0), x)
      assert model.apply(v, x).shape == (5, spec.out_dim)
      names = {"/".join(str(getattr(k, "key", k)) for k in path)
               for path, _ in jax.tree_util.tree_leaves_with_path(v)}
      assert not any("bias" in n for n in names)  # b_std 0 / None: no bias at all
      assert len(names) == (2 if antisymmetric else 1) * (spec.depth + 1)
  with pytest.raises(ValueError, match="2-D"):
    FlaxMLP(MLPSpec(depth=1, width=8)).init(jax.random.PRNGKey(0), jnp.ones(3))


def test_empirical_ntk_converges_to_analytic(x20):
  """Relative Frobenius error ||Theta_hat - Theta|| / ||Theta|| ~ 1/sqrt(width), mean of 4
  seeds (measured: ~0.115, 0.052, 0.028 for widths 256, 1024, 4096)."""
  errs = []
  for width in (256, 1024, 4096):
    net = make_network(MLPSpec(depth=1, width=width, activation="relu", W_std=1.5, b_std=0.1))
    k = gram(net.kernel_fn, x20)
    errs.append(np.mean([
        _rel_fro(empirical_ntk(net.model.apply, net.model.init(jax.random.PRNGKey(s), x20), x20),
                 k) for s in range(4)]))
  assert errs[0] > errs[1] > errs[2], errs
  assert errs[2] < 0.5 * errs[0] and errs[2] < 0.06, errs


def test_standard_parameterization_empirical_ntk(x20):
  # In standard parameterisation the analytic NTK depends on the width; at width 4096 the
  # empirical NTK of the flax model is close to it (measured ~0.04).
  net = make_network(MLPSpec(depth=1, width=4096, activation="gelu", W_std=1.5, b_std=0.1,
                             parameterization="standard"))
  k = gram(net.kernel_fn, x20)
  errs = [_rel_fro(empirical_ntk(net.model.apply, net.model.init(jax.random.PRNGKey(s), x20),
                                 x20), k) for s in range(2)]
  assert np.mean(errs) < 0.1, errs


def test_zero_output_init(x20):
  spec = MLPSpec(depth=2, width=512, activation="erf", W_std=1.2, b_std=0.3)
  net = make_network(spec, antisymmetric=True)
  v = init_zero_output(net.model, jax.random.PRNGKey(0), x20[:2])
  x_new = 3.0 * jax.random.normal(jax.random.PRNGKey(7), (50, 3))
  np.testing.assert_array_equal(net.model.apply(v, x_new), 0.0)
  np.testing.assert_array_equal(jax.jit(net.model.apply)(v, x_new), 0.0)
  # Its NTK at init equals that of one ordinary copy (exactly), hence approaches kernel_fn.
  k_anti = empirical_ntk(net.model.apply, v, x20)
  plain = FlaxMLP(spec)
  k_plain = empirical_ntk(plain.apply, {"params": v["params"]["pos"]}, x20)
  np.testing.assert_allclose(k_anti, k_plain, rtol=1e-12, atol=1e-12)
  assert _rel_fro(k_anti, gram(net.kernel_fn, x20)) < 0.1
  # And it is trainable: the gradient of a loss is not zero.
  g = jax.grad(lambda p: jnp.sum((net.model.apply(p, x20) - 1.0) ** 2))(v)
  assert float(jnp.linalg.norm(g["params"]["pos"]["dense_0"]["kernel"])) > 0


def test_zero_output_init_errors():
  with pytest.raises(ValueError, match="antisymmetric=True"):
    init_zero_output(FlaxMLP(MLPSpec(depth=1, width=4)), jax.random.PRNGKey(0), jnp.ones((1, 2)))
  with pytest.raises(TypeError, match="FlaxMLP"):
    init_zero_output(object(), jax.random.PRNGKey(0), jnp.ones((1, 2)))


def test_make_network():
  net = make_network(MLPSpec(depth=1, width=4))
  assert isinstance(net, Network) and callable(net.kernel_fn) and not net.model.antisymmetric
  with pytest.raises(TypeError, match="MLPSpec or a CNNSpec"):
    make_network({"depth": 1})
  cnn = make_network(CNNSpec(channels=(4,)), antisymmetric=True)
  assert isinstance(cnn.model, FlaxCNN) and cnn.model.antisymmetric
  with pytest.raises(TypeError, match="CNNSpec"):
    stax_cnn(MLPSpec(depth=1, width=4))
  with pytest.raises(TypeError, match="FlaxMLP or FlaxCNN"):
    init_zero_output(object(), jax.random.PRNGKey(0), jnp.ones((1, 2)))


def test_cnn_without_conv_layers_is_the_mlp():
  # CNNSpec(channels=()) flattens the input and applies dense layers: with b_std=None it is
  # exactly MLPSpec(b_std=None) (same parameters, same function, same analytic kernel).
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 3, 1))
  cnn = CNNSpec(channels=(), dense=(16, 16), W_std=1.3, activation="erf", out_dim=2)
  mlp = MLPSpec(depth=2, width=16, W_std=1.3, activation="erf", b_std=None, out_dim=2)
  v = FlaxMLP(mlp).init(jax.random.PRNGKey(1), x[..., 0])
  np.testing.assert_allclose(FlaxCNN(cnn).apply(v, x), FlaxMLP(mlp).apply(v, x[..., 0]),
                             rtol=1e-13)
  np.testing.assert_allclose(stax_cnn(cnn)[2](x, None, "ntk"),
                             stax_mlp(mlp)[2](x[..., 0], None, "ntk"), rtol=1e-12)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(depth=0, width=8), ValueError, "depth"),
    (dict(depth=1.0, width=8), TypeError, "depth"),
    (dict(depth=True, width=8), TypeError, "depth"),
    (dict(depth=1, width=0), ValueError, "width"),
    (dict(depth=1, width=8, activation="tanh"), ValueError, "activation"),
    (dict(depth=1, width=8, activation=None), ValueError, "activation"),
    (dict(depth=1, width=8, W_std=0.0), ValueError, "W_std"),
    (dict(depth=1, width=8, W_std=float("nan")), ValueError, "W_std"),
    (dict(depth=1, width=8, W_std="1"), TypeError, "W_std"),
    (dict(depth=1, width=8, b_std=-0.1), ValueError, "b_std"),
    (dict(depth=1, width=8, b_std=float("inf")), ValueError, "b_std"),
    (dict(depth=1, width=8, parameterization="mup"), ValueError, "parameterization"),
    (dict(depth=1, width=8, out_dim=0), ValueError, "out_dim"),
])
def test_spec_validation(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    MLPSpec(**kwargs)


def test_spec_normalises_and_is_hashable():
  spec = MLPSpec(depth=1, width=8, activation="ReLU", parameterization="NTK", b_std=None)
  assert spec.activation == "relu" and spec.parameterization == "ntk" and not spec.has_bias
  assert hash(spec) == hash(MLPSpec(depth=1, width=8, b_std=None))
  assert not MLPSpec(depth=1, width=8, b_std=0).has_bias
