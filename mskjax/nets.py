"""Architecture specs -> the analytic kernel (neural-tangents) and a flax model of the same net.

One :class:`MLPSpec` describes a fully-connected network

  h_0 = x,   z_l = Dense_l(h_{l-1}),   h_l = phi(z_l)  (l = 1..depth),   f(x) = Dense_out(h_depth)

and is turned into

* :func:`stax_mlp` -- ``(init_fn, apply_fn, kernel_fn)`` from ``neural_tangents.stax``
  (``kernel_fn`` is the infinite-width NNGP/NTK);
* :class:`FlaxMLP` -- a ``flax.linen`` module computing *exactly* the same finite network
  (same parameterisation, same parameter shapes; :func:`params_from_stax` converts stax
  parameters into flax variables, and the outputs then agree to rounding).

Dense layer (fan-in ``N``), as neural-tangents defines it:

* ``'ntk'``:      W_ij ~ N(0, 1), b_i ~ N(0, 1),            z = (W_std/sqrt(N)) x W + b_std b
* ``'standard'``: W_ij ~ N(0, W_std^2/N), b_i ~ N(0, b_std^2), z = x W + b

Zero output at initialisation (DESIGN.md section 4): ``FlaxMLP(spec, antisymmetric=True)``
is f(x) = (g(theta_+, x) - g(theta_-, x)) / sqrt(2) with two independent copies of the
network g, and :func:`init_zero_output` initialises theta_- = theta_+. Why this variant
(the "antisymmetric initialisation" of Zhang et al., 2019) rather than pairing hidden
units inside one network: it works unchanged for any depth, activation and
parameterisation, f(theta_0, x) is 0 *exactly* (the two branches are the same floating
point computation), and the empirical NTK at initialisation,
(Theta_+ + Theta_-)/2 = Theta_+, is *exactly* the empirical NTK of one ordinarily
initialised network, so it has the same distribution and the same infinite-width limit
``kernel_fn``. The cost is twice the parameters. Only the NTK is preserved: the prior over
outputs (NNGP) of the antisymmetric network at init is degenerate (f_0 = 0), as intended.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mskjax._nt import stax

__all__ = [
    "ACTIVATIONS", "PARAMETERIZATIONS", "MLPSpec", "stax_mlp", "FlaxMLP", "Network",
    "make_network", "init_zero_output", "params_from_stax",
]

ACTIVATIONS = ("relu", "erf", "gelu", "linear")
"""Activations with an analytic neural-tangents kernel: ReLU, erf, exact (erf-based) GELU,
and identity ('linear', for deep linear networks)."""

PARAMETERIZATIONS = ("ntk", "standard")


def _check_int(value, name, minimum):
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"MLPSpec.{name} must be an int >= {minimum}; got {value!r} "
                    f"({type(value).__name__}).")
  if value < minimum:
    raise ValueError(f"MLPSpec.{name} must be >= {minimum}; got {value}.")


def _check_float(value, name, allow_zero):
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"MLPSpec.{name} must be a real number; got {value!r} "
                    f"({type(value).__name__}).")
  if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"MLPSpec.{name} must be finite and {bound}; got {value}.")


@dataclasses.dataclass(frozen=True)
class MLPSpec:
  """A fully-connected network: ``depth`` hidden layers of ``width`` units, then a readout.

  f(x) = Dense_out(phi(Dense_depth(... phi(Dense_1(x)) ...))), each Dense with weight scale
  ``W_std`` and bias scale ``b_std`` in the given ``parameterization`` (module docstring).

  Attributes:
    depth: number of hidden layers (>= 1).
    width: units per hidden layer (>= 1); ignored by the ``'ntk'`` analytic kernel.
    activation: one of :data:`ACTIVATIONS` ('relu', 'erf', 'gelu' (exact), 'linear').
    W_std: weight standard deviation sigma_W (> 0).
    b_std: bias standard deviation sigma_b; ``None`` or ``0`` means no bias parameters.
    parameterization: ``'ntk'`` or ``'standard'`` (as in neural-tangents).
    out_dim: number of outputs c (>= 1).
    init_scale: sigma multiplying every initial weight and bias of the flax model (default 1:
      the usual init). Small sigma gives the rich/silent-alignment regime. ``stax_mlp``'s
      analytic kernel describes init_scale = 1 (for a bias-free net the empirical NTK at
      init is sigma^(2 depth) times it).

  Example:
    >>> spec = MLPSpec(depth=2, width=512, activation='relu', b_std=0.1)
    >>> spec.has_bias, spec.out_dim
    (True, 1)
  """
  depth: int
  width: int
  activation: str = "relu"
  W_std: float = 1.0
  b_std: Optional[float] = 0.0
  parameterization: str = "ntk"
  out_dim: int = 1
  init_scale: float = 1.0

  def __post_init__(self):
    _check_int(self.depth, "depth", 1)
    _check_int(self.width, "width", 1)
    _check_int(self.out_dim, "out_dim", 1)
    if not isinstance(self.activation, str) or self.activation.lower() not in ACTIVATIONS:
      raise ValueError(f"MLPSpec.activation must be one of {ACTIVATIONS} (activations with an "
                       f"analytic neural-tangents kernel); got {self.activation!r}.")
    object.__setattr__(self, "activation", self.activation.lower())
    _check_float(self.W_std, "W_std", allow_zero=False)
    _check_float(self.init_scale, "init_scale", allow_zero=False)
    if self.b_std is not None:
      _check_float(self.b_std, "b_std", allow_zero=True)
    if (not isinstance(self.parameterization, str)
        or self.parameterization.lower() not in PARAMETERIZATIONS):
      raise ValueError(f"MLPSpec.parameterization must be one of {PARAMETERIZATIONS}; "
                       f"got {self.parameterization!r}.")
    object.__setattr__(self, "parameterization", self.parameterization.lower())

  @property
  def has_bias(self) -> bool:
    """True when the layers have bias parameters (``b_std`` not None and not 0)."""
    return self.b_std is not None and self.b_std != 0


def _stax_activation(name):
  if name == "relu":
    return stax.Relu()
  if name == "erf":
    return stax.Erf()
  if name == "gelu":
    return stax.Gelu(approximate=False)
  return stax.Identity()


def _flax_activation(name) -> Callable[[jax.Array], jax.Array]:
  if name == "relu":
    return jax.nn.relu
  if name == "erf":
    return jax.scipy.special.erf
  if name == "gelu":
    return lambda z: jax.nn.gelu(z, approximate=False)
  return lambda z: z


def _check_spec(spec, where):
  if not isinstance(spec, MLPSpec):
    raise TypeError(f"{where}: spec must be an MLPSpec, e.g. MLPSpec(depth=1, width=1024); "
                    f"got {type(spec).__name__}.")


def stax_mlp(spec: MLPSpec):
  """neural-tangents ``stax`` triple of the network ``spec`` describes.

  ``stax.serial(Dense(width), phi, ..., Dense(width), phi, Dense(out_dim))`` with every Dense
  using ``W_std``, ``b_std`` (``None`` when there is no bias) and ``parameterization``.
  ``kernel_fn(x1, x2, 'ntk')`` is the infinite-width NTK Theta(x1, x2) (output axis traced,
  i.e. the full kernel is Theta (x) I_c).

  Args:
    spec: an :class:`MLPSpec`.

  Returns:
    ``(init_fn, apply_fn, kernel_fn)``.

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> _, _, kernel_fn = stax_mlp(MLPSpec(depth=1, width=64))
    >>> x = jnp.array([[1., 0.], [0., 1.]])  # orthogonal: off-diagonal 1/(4 pi)
    >>> print(np.round(np.asarray(kernel_fn(x, None, 'ntk'), float), 4))
    [[0.5    0.0796]
     [0.0796 0.5   ]]
  """
  _check_spec(spec, "stax_mlp")
  b_std = spec.b_std if spec.has_bias else None

  def dense(n):
    return stax.Dense(n, W_std=spec.W_std, b_std=b_std, parameterization=spec.parameterization)

  layers = []
  for _ in range(spec.depth):
    layers += [dense(spec.width), _stax_activation(spec.activation)]
  layers.append(dense(spec.out_dim))
  return stax.serial(*layers)


def _default_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 iff jax_enable_x64


class _Dense(nn.Module):
  """One neural-tangents Dense layer (parameters 'kernel' (N, out) and optional 'bias')."""
  features: int
  W_std: float
  b_std: Optional[float]
  parameterization: str
  param_dtype: Any
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    w_init = nn.initializers.normal(stddev=self.init_scale)
    if self.parameterization == "standard":
      w_init = nn.initializers.normal(stddev=self.init_scale * self.W_std / math.sqrt(fan_in))
    kernel = self.param("kernel", w_init, (fan_in, self.features), self.param_dtype)
    y = x @ kernel
    if self.parameterization == "ntk":
      y = (self.W_std / math.sqrt(fan_in)) * y
    if self.b_std is not None:
      b_scale = 1.0 if self.parameterization == "ntk" else self.b_std
      bias = self.param("bias", nn.initializers.normal(stddev=self.init_scale * b_scale),
                        (self.features,),
                        self.param_dtype)
      y = y + (self.b_std * bias if self.parameterization == "ntk" else bias)
    return y


class FlaxMLP(nn.Module):
  """flax (linen) model of the network ``spec`` describes: same function as :func:`stax_mlp`.

  Plain: f(x) = g(theta, x) with layers named ``dense_0 .. dense_{depth}`` (each with a
  ``'kernel'`` of shape (fan_in, fan_out) and, if ``spec.has_bias``, a ``'bias'``).
  ``antisymmetric=True``: f(x) = (g(theta_+, x) - g(theta_-, x)) / sqrt(2) with sub-modules
  ``'pos'`` and ``'neg'``; initialise it with :func:`init_zero_output` to get f_0 = 0 (a plain
  ``model.init`` draws the two copies independently).

  Attributes:
    spec: an :class:`MLPSpec`.
    antisymmetric: use the two-copy zero-output form (module docstring).
    param_dtype: parameter dtype; ``None`` means float64 under ``jax_enable_x64``, else
      float32.

  Inputs x of shape (n, d); output (n, spec.out_dim).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = FlaxMLP(MLPSpec(depth=2, width=16, out_dim=3))
    >>> x = jnp.ones((5, 4))
    >>> variables = model.init(jax.random.PRNGKey(0), x)
    >>> model.apply(variables, x).shape
    (5, 3)
  """
  spec: MLPSpec
  antisymmetric: bool = False
  param_dtype: Any = None

  @nn.compact
  def __call__(self, x):
    spec = self.spec
    _check_spec(spec, "FlaxMLP")
    if x.ndim != 2:
      raise ValueError(f"FlaxMLP: x must be 2-D (n, d); got shape {x.shape}. "
                       "Use x.reshape(n, -1) (or x[:, None] for scalar inputs).")
    if self.antisymmetric:
      pos = FlaxMLP(spec, param_dtype=self.param_dtype, name="pos")(x)
      neg = FlaxMLP(spec, param_dtype=self.param_dtype, name="neg")(x)
      return (pos - neg) / math.sqrt(2.0)
    dtype = self.param_dtype or _default_dtype()
    b_std = spec.b_std if spec.has_bias else None
    act = _flax_activation(spec.activation)
    h = x.astype(jnp.promote_types(x.dtype, dtype))
    for i in range(spec.depth + 1):
      out = spec.out_dim if i == spec.depth else spec.width
      h = _Dense(out, spec.W_std, b_std, spec.parameterization, dtype, spec.init_scale,
                 name=f"dense_{i}")(h)
      if i < spec.depth:
        h = act(h)
    return h


class Network(NamedTuple):
  """A spec with its analytic kernel and its flax model.

  Attributes:
    spec: the :class:`MLPSpec`.
    kernel_fn: neural-tangents ``kernel_fn(x1, x2, get)`` (infinite width).
    model: the :class:`FlaxMLP` (finite width ``spec.width``).
  """
  spec: MLPSpec
  kernel_fn: Callable
  model: FlaxMLP


def make_network(spec: MLPSpec, *, antisymmetric: bool = False) -> Network:
  """Analytic kernel and flax model of one architecture.

  ``kernel_fn`` is the limit width -> infinity of the empirical NTK of ``model`` (for
  ``antisymmetric=True`` too: its NTK at init is that of one ordinary copy).

  Args:
    spec: an :class:`MLPSpec`.
    antisymmetric: build ``FlaxMLP(spec, antisymmetric=True)``; initialise it with
      :func:`init_zero_output` so that f(theta_0, .) = 0.

  Returns:
    ``Network(spec, kernel_fn, model)``.

  Example:
    >>> net = make_network(MLPSpec(depth=1, width=128, activation='erf'))
    >>> type(net.model).__name__, net.spec.activation
    ('FlaxMLP', 'erf')
  """
  _check_spec(spec, "make_network")
  _, _, kernel_fn = stax_mlp(spec)
  return Network(spec, kernel_fn, FlaxMLP(spec, antisymmetric=bool(antisymmetric)))


def init_zero_output(model: FlaxMLP, key: jax.Array, x_example: jax.Array):
  """Variables of an antisymmetric :class:`FlaxMLP` with f(theta_0, x) = 0 for every x.

  f(x) = (g(theta_+, x) - g(theta_-, x)) / sqrt(2) with theta_+ drawn as usual and
  theta_- = theta_+. Then f_0 = 0 exactly and the empirical NTK at init,
  (Theta_+ + Theta_-)/2 = Theta_+, is that of one ordinarily initialised network.

  Args:
    model: ``FlaxMLP(spec, antisymmetric=True)`` (e.g. ``make_network(spec,
      antisymmetric=True).model``).
    key: a JAX PRNG key.
    x_example: an input batch of shape (n, d) (only its shape and dtype are used).

  Returns:
    flax variables ``{'params': {'pos': p, 'neg': p}}``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = FlaxMLP(MLPSpec(depth=2, width=32), antisymmetric=True)
    >>> x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    >>> variables = init_zero_output(model, jax.random.PRNGKey(0), x)
    >>> print(jnp.abs(model.apply(variables, x)).max())
    0.0
  """
  if not isinstance(model, FlaxMLP):
    raise TypeError(f"init_zero_output: model must be a FlaxMLP; got {type(model).__name__}.")
  if not model.antisymmetric:
    raise ValueError("init_zero_output: model must be antisymmetric; build it with "
                     "FlaxMLP(spec, antisymmetric=True) or make_network(spec, "
                     "antisymmetric=True).")
  variables = model.init(key, x_example)
  params = dict(variables["params"])
  params["neg"] = params["pos"]
  return {**variables, "params": params}


def params_from_stax(spec: MLPSpec, stax_params) -> dict:
  """Flax variables for ``FlaxMLP(spec)`` holding the parameters of ``stax_mlp(spec)``.

  The stax ``Dense`` parameters (W of shape (fan_in, fan_out), b of shape (1, fan_out) or
  None) map to ``dense_i/kernel`` and ``dense_i/bias``; both models then compute the same
  function, so f_stax(theta, x) = f_flax(params_from_stax(spec, theta), x).

  Args:
    spec: the :class:`MLPSpec` both were built from.
    stax_params: the parameters returned by ``stax_mlp(spec)[0]``.

  Returns:
    ``{'params': {'dense_0': {...}, ...}}`` for a plain (not antisymmetric) ``FlaxMLP``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> spec = MLPSpec(depth=1, width=8, b_std=0.5)
    >>> init_fn, apply_fn, _ = stax_mlp(spec)
    >>> x = jnp.ones((2, 3))
    >>> _, theta = init_fn(jax.random.PRNGKey(0), x.shape)
    >>> v = params_from_stax(spec, theta)
    >>> bool(jnp.allclose(FlaxMLP(spec).apply(v, x), apply_fn(theta, x)))
    True
  """
  _check_spec(spec, "params_from_stax")
  dense = [p for p in stax_params if len(p) == 2]
  if len(dense) != spec.depth + 1 or len(stax_params) != 2 * spec.depth + 1:
    raise ValueError(f"params_from_stax: stax_params has {len(stax_params)} layers; expected "
                     f"{2 * spec.depth + 1} for depth={spec.depth}. Pass the params of "
                     "stax_mlp(spec)[0] for this spec.")
  out = {}
  for i, (w, b) in enumerate(dense):
    layer = {"kernel": jnp.asarray(w)}
    if spec.has_bias:
      if b is None:
        raise ValueError("params_from_stax: spec has a bias but stax_params has none.")
      layer["bias"] = jnp.asarray(b).reshape(-1)
    out[f"dense_{i}"] = layer
  return {"params": out}
