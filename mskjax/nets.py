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

Zero output at initialisation (docs/pitfalls.md#zero-output-at-initialisation): ``FlaxMLP(spec, antisymmetric=True)``
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

Convolutional networks: :class:`CNNSpec` (1-D or 2-D convolutions with stride and padding,
optional average pooling, a flatten or global-average readout, optional dense layers, then
the linear readout) -> :func:`stax_cnn` and :class:`FlaxCNN`, with the same converter
(:func:`params_from_stax`) and zero-output initialisation (:func:`init_zero_output`).
Inputs follow neural-tangents' channels-last convention: ``(n, L, C)`` sequences and
``(n, H, W, C)`` images. Conv layer (fan-in ``N = C_in * prod(filter_shape)``), exactly as
``neural_tangents.stax.Conv``:

* ``'ntk'``:      W ~ N(0, 1), b ~ N(0, 1),             z = (W_std/sqrt(N)) conv(x, W) + b_std b
* ``'standard'``: W ~ N(0, W_std^2/N), b ~ N(0, b_std^2), z = conv(x, W) + b

Reference: R. Novak et al., *Bayesian Deep Convolutional Networks with Many Channels are
Gaussian Processes*, ICLR 2019; S. Arora et al., *On Exact Computation with an Infinitely
Wide Neural Net* (CNTK), NeurIPS 2019.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mskjax import _validate
from mskjax._nt import stax

__all__ = [
    "ACTIVATIONS", "PARAMETERIZATIONS", "PADDINGS", "READOUTS", "MLPSpec", "stax_mlp",
    "FlaxMLP", "CNNSpec", "stax_cnn", "FlaxCNN", "Network", "make_network",
    "init_zero_output", "params_from_stax",
]

ACTIVATIONS = ("relu", "erf", "gelu", "linear")
"""Activations with an analytic neural-tangents kernel: ReLU, erf, exact (erf-based) GELU,
and identity ('linear', for deep linear networks)."""

PARAMETERIZATIONS = ("ntk", "standard")


def _check_int(value, name, minimum, cls="MLPSpec"):
  _validate.check_int(value, f"{cls}.{name}", lo=minimum)


def _check_float(value, name, allow_zero, cls="MLPSpec"):
  _validate.check_real(value, f"{cls}.{name}", lo=0, lo_open=not allow_zero)


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


def _check_spec(spec, where, cls=None):
  if cls is None:
    cls = MLPSpec
  if not isinstance(spec, cls):
    example = ("MLPSpec(depth=1, width=1024)" if cls is MLPSpec
               else "CNNSpec(channels=(256,), kernel_sizes=3)")
    raise TypeError(f"{where}: spec must be a {cls.__name__}, e.g. {example}; "
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


def _ntk_scale_and_bias(layer, y, fan_in):
  """The neural-tangents tail shared by :class:`_Dense` and :class:`_Conv`: the NTK
  parameterisation's W_std/√fan_in output scale and the optional bias (b_std·b with b ~ N(0, 1)
  for 'ntk'; b ~ N(0, b_std²) for 'standard'). Called inside the layer's compact method."""
  if layer.parameterization == "ntk":
    y = (layer.W_std / math.sqrt(fan_in)) * y
  if layer.b_std is not None:
    b_scale = 1.0 if layer.parameterization == "ntk" else layer.b_std
    bias = layer.param("bias", nn.initializers.normal(stddev=layer.init_scale * b_scale),
                       (layer.features,), layer.param_dtype)
    y = y + (layer.b_std * bias if layer.parameterization == "ntk" else bias)
  return y


def _antisymmetric(module, x):
  """f(x) = (g(θ₊, x) − g(θ₋, x)) / √2 with two copies 'pos' and 'neg' of ``module``."""
  copy = lambda name: type(module)(module.spec, param_dtype=module.param_dtype, name=name)
  return (copy("pos")(x) - copy("neg")(x)) / math.sqrt(2.0)


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
    return _ntk_scale_and_bias(self, x @ kernel, fan_in)


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
      return _antisymmetric(self, x)
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


PADDINGS = ("SAME", "VALID")
"""Convolution paddings with a flax twin: 'SAME' and 'VALID' (lax semantics, as in
neural-tangents)."""

READOUTS = ("flatten", "gap")
"""How the last convolutional feature map becomes a vector: 'flatten' (all positions and
channels, neural-tangents ``Flatten``) or 'gap' (global average over positions,
``GlobalAvgPool``)."""


def _as_tuple_per_layer(value, n_layers, spatial_dims, name, *, allow_none=False):
  """Per-layer spatial tuples from an int, a tuple of ints/tuples, or None."""
  if value is None:
    if allow_none:
      return (None,) * n_layers
    return ((1,) * spatial_dims,) * n_layers
  items = value if isinstance(value, (tuple, list)) else (value,) * n_layers
  if len(items) != n_layers:
    raise ValueError(f"CNNSpec.{name} must have one entry per conv layer ({n_layers}); got "
                     f"{value!r}.")
  out = []
  for item in items:
    if item is None and allow_none:
      out.append(None)
      continue
    t = tuple(item) if isinstance(item, (tuple, list)) else (item,) * spatial_dims
    if len(t) != spatial_dims or any(not _validate.is_int(s) or s < 1 for s in t):
      raise ValueError(f"CNNSpec.{name} entries must be positive ints or {spatial_dims}-tuples "
                       f"of positive ints (spatial_dims={spatial_dims}); got {item!r}.")
    out.append(None if allow_none and all(s == 1 for s in t) else t)
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class CNNSpec:
  """A convolutional network on sequences (1-D) or images (2-D), channels last.

  f(x) = Dense_out(Dense_m(...phi(Dense_1(R(B_L(...B_1(x)...))))...)) with conv blocks
  B_l(h) = Pool_l(phi(Conv_l(h))) (``channels[l]`` output channels, ``kernel_sizes[l]``,
  ``strides[l]``, ``padding``; Pool_l an optional non-overlapping average pooling), R the
  readout ('flatten' or 'gap'), ``dense`` hidden fully-connected layers and the linear output
  layer of ``out_dim`` units. Every Conv/Dense has weight scale ``W_std``, bias scale ``b_std``
  and the given ``parameterization`` (module docstring).

  Attributes:
    channels: output channels of each conv layer (tuple of ints >= 1; may be empty: then it is
      an MLP on the flattened input).
    kernel_sizes: filter shape per conv layer: an int (same for all layers and spatial axes),
      or a tuple with one int or ``spatial_dims``-tuple per layer.
    strides: stride per layer (same forms; default 1).
    padding: 'SAME' or 'VALID' (lax semantics, as neural-tangents).
    pool: average-pool window per layer (same forms; ``None`` or 1 for no pooling), applied
      after the activation with stride = window, 'VALID'. (Max pooling has no analytic kernel.)
    readout: 'flatten' or 'gap' (global average pooling).
    dense: widths of hidden dense layers after the readout (tuple, may be empty).
    activation: one of :data:`ACTIVATIONS`.
    W_std: weight standard deviation (> 0).
    b_std: bias standard deviation. ``None``: no bias parameters. A number >= 0: every layer
      has a bias; ``0`` is a trainable bias initialised at zero (flax's default), which adds 1
      per layer to the standard-parameterisation NTK. (``MLPSpec`` treats 0 as no bias.)
    parameterization: 'ntk' or 'standard'.
    out_dim: number of outputs c (>= 1).
    spatial_dims: 1 (inputs (n, L, C)) or 2 (inputs (n, H, W, C)).
    init_scale: sigma multiplying every initial weight and bias of the flax model.

  Example:
    >>> spec = CNNSpec(channels=(32, 32, 32), kernel_sizes=(5, 3, 3), strides=2, out_dim=10,
    ...                parameterization='standard', b_std=0.0)
    >>> spec.kernel_sizes, spec.strides[0], spec.has_bias
    (((5,), (3,), (3,)), (2,), True)
  """
  channels: tuple
  kernel_sizes: Any = 3
  strides: Any = None
  padding: str = "SAME"
  pool: Any = None
  readout: str = "flatten"
  dense: tuple = ()
  activation: str = "relu"
  W_std: float = 1.0
  b_std: Optional[float] = None
  parameterization: str = "ntk"
  out_dim: int = 1
  spatial_dims: int = 1
  init_scale: float = 1.0

  def __post_init__(self):
    if not _validate.is_int(self.spatial_dims) or self.spatial_dims not in (1, 2):
      raise ValueError(f"CNNSpec.spatial_dims must be 1 (sequences (n, L, C)) or 2 (images "
                       f"(n, H, W, C)); got {self.spatial_dims!r}.")
    for field in ("channels", "dense"):
      val = getattr(self, field)
      val = (val,) if _validate.is_int(val) else val
      if not isinstance(val, (tuple, list)):
        raise TypeError(f"CNNSpec.{field} must be a tuple of ints >= 1; got {val!r}.")
      for c in val:
        _check_int(c, field, 1, "CNNSpec")
      object.__setattr__(self, field, tuple(int(c) for c in val))
    n = len(self.channels)
    sd = self.spatial_dims
    object.__setattr__(self, "kernel_sizes",
                       _as_tuple_per_layer(self.kernel_sizes, n, sd, "kernel_sizes"))
    object.__setattr__(self, "strides", _as_tuple_per_layer(self.strides, n, sd, "strides"))
    object.__setattr__(self, "pool",
                       _as_tuple_per_layer(self.pool, n, sd, "pool", allow_none=True))
    if not isinstance(self.padding, str) or self.padding.upper() not in PADDINGS:
      raise ValueError(f"CNNSpec.padding must be one of {PADDINGS}; got {self.padding!r}.")
    object.__setattr__(self, "padding", self.padding.upper())
    if not isinstance(self.readout, str) or self.readout.lower() not in READOUTS:
      raise ValueError(f"CNNSpec.readout must be one of {READOUTS}; got {self.readout!r}.")
    object.__setattr__(self, "readout", self.readout.lower())
    _check_int(self.out_dim, "out_dim", 1, "CNNSpec")
    if not isinstance(self.activation, str) or self.activation.lower() not in ACTIVATIONS:
      raise ValueError(f"CNNSpec.activation must be one of {ACTIVATIONS} (activations with an "
                       f"analytic neural-tangents kernel); got {self.activation!r}.")
    object.__setattr__(self, "activation", self.activation.lower())
    _check_float(self.W_std, "W_std", allow_zero=False, cls="CNNSpec")
    _check_float(self.init_scale, "init_scale", allow_zero=False, cls="CNNSpec")
    if self.b_std is not None:
      _check_float(self.b_std, "b_std", allow_zero=True, cls="CNNSpec")
    if (not isinstance(self.parameterization, str)
        or self.parameterization.lower() not in PARAMETERIZATIONS):
      raise ValueError(f"CNNSpec.parameterization must be one of {PARAMETERIZATIONS}; "
                       f"got {self.parameterization!r}.")
    object.__setattr__(self, "parameterization", self.parameterization.lower())

  @property
  def has_bias(self) -> bool:
    """True when the layers have bias parameters (``b_std`` is not None)."""
    return self.b_std is not None

  def output_spatial_shape(self, spatial_shape) -> tuple:
    """Spatial shape of the last feature map for an input of spatial shape ``spatial_shape``.

    Raises a ``ValueError`` naming the layer when a 'VALID' convolution or a pooling window
    does not fit (instead of an error deep inside XLA).

    Example:
      >>> CNNSpec(channels=(32, 32, 32), kernel_sizes=(5, 3, 3), strides=2).output_spatial_shape((40,))
      (5,)
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != self.spatial_dims:
      raise ValueError(f"CNNSpec with spatial_dims={self.spatial_dims} needs inputs of shape "
                       f"(n, {'L' if self.spatial_dims == 1 else 'H, W'}, C); got spatial "
                       f"shape {shape}.")
    for i, (ks, st, pl) in enumerate(zip(self.kernel_sizes, self.strides, self.pool)):
      if self.padding == "SAME":
        new = tuple(-(-s // t) for s, t in zip(shape, st))
      else:
        if any(k > s for k, s in zip(ks, shape)):
          raise ValueError(f"CNNSpec: conv layer {i} with kernel {ks} and padding 'VALID' does "
                           f"not fit its input of spatial shape {shape}; use padding='SAME', "
                           "smaller kernels or larger inputs.")
        new = tuple((s - k) // t + 1 for s, k, t in zip(shape, ks, st))
      if pl is not None:
        if any(p > s for p, s in zip(pl, new)):
          raise ValueError(f"CNNSpec: pool window {pl} of layer {i} is larger than its input "
                           f"of spatial shape {new}; use a smaller pool window.")
        new = tuple(s // p for s, p in zip(new, pl))
      shape = new
    return shape


def _check_cnn_input_shape(spec, shape, where, name="x"):
  if len(shape) != spec.spatial_dims + 2:
    want = "(n, L, C)" if spec.spatial_dims == 1 else "(n, H, W, C)"
    fixes = []
    if len(shape) == spec.spatial_dims + 1:
      fixes.append("add a channel axis with x[..., None] for single-channel data")
    if len(shape) in (3, 4):
      fixes.append(f"use CNNSpec(spatial_dims={len(shape) - 2}) for "
                   f"{'sequences (n, L, C)' if len(shape) == 3 else 'images (n, H, W, C)'}")
    fix = " or ".join(fixes) or "reshape the inputs"
    raise ValueError(f"{where}: {name} must have shape {want} for spatial_dims="
                     f"{spec.spatial_dims} (channels last, as neural-tangents); got shape "
                     f"{tuple(shape)}: {fix}.")
  try:
    spec.output_spatial_shape(shape[1:-1])
  except ValueError as e:
    raise ValueError(f"{where}: {name} of shape {tuple(shape)}: {e}") from None


def _checked_stax(spec, init_fn, apply_fn, kernel_fn):
  """The stax triple with the input shapes checked against ``spec`` first (static shapes
  only, so jit/vmap over the functions are unaffected): a 'VALID' kernel or a pool window
  larger than its input, a missing channel axis or 2-D inputs for a 1-D spec raise a named
  ``ValueError`` instead of a ZeroDivisionError or broadcast error inside neural-tangents."""
  import functools

  def check(x, name, where):
    if isinstance(x, (np.ndarray, jax.Array)):
      _check_cnn_input_shape(spec, tuple(x.shape), where, name)

  @functools.wraps(init_fn)
  def init(rng, input_shape):
    _check_cnn_input_shape(spec, tuple(input_shape), "stax_cnn init_fn", "input_shape")
    return init_fn(rng, input_shape)

  @functools.wraps(apply_fn)
  def apply(params, inputs, **kwargs):
    check(inputs, "inputs", "stax_cnn apply_fn")
    return apply_fn(params, inputs, **kwargs)

  @functools.wraps(kernel_fn)
  def kernel(x1_or_kernel, x2=None, get=None, **kwargs):
    check(x1_or_kernel, "x1", "stax_cnn kernel_fn")
    check(x2, "x2", "stax_cnn kernel_fn")
    return kernel_fn(x1_or_kernel, x2, get, **kwargs)

  return init, apply, kernel


def stax_cnn(spec: CNNSpec):
  """neural-tangents ``stax`` triple of the convolutional network ``spec`` describes.

  ``stax.serial(Conv, phi, [AvgPool], ..., Flatten | GlobalAvgPool, [Dense, phi, ...],
  Dense(out_dim))`` with channels-last dimension numbers (``'NAC'`` for 1-D, ``'NABC'`` for
  2-D inputs; neural-tangents' default), ``W_std``, ``b_std`` and ``parameterization`` on
  every Conv/Dense. ``kernel_fn(x1, x2, 'ntk')`` is the infinite-channel NTK (output axis
  traced). With 'flatten' the kernel only needs the spatial diagonal of the covariance
  (O(positions) per entry); 'gap' needs all pairs of positions (O(positions²) per entry).

  Args:
    spec: a :class:`CNNSpec`.

  Returns:
    ``(init_fn, apply_fn, kernel_fn)``; each checks its input shape against ``spec`` first
    (``(n, L, C)`` / ``(n, H, W, C)``, every 'VALID' kernel and pool window fitting), with
    a ``ValueError`` naming the argument and the fix.

  Example:
    >>> import jax.numpy as jnp
    >>> _, _, kernel_fn = stax_cnn(CNNSpec(channels=(8,), kernel_sizes=3, readout='gap'))
    >>> x = jnp.ones((2, 6, 1))
    >>> kernel_fn(x, None, 'ntk').shape
    (2, 2)
  """
  _check_spec(spec, "stax_cnn", CNNSpec)
  act = _stax_activation(spec.activation)
  layers = []
  for ch, ks, st, pl in zip(spec.channels, spec.kernel_sizes, spec.strides, spec.pool):
    layers += [stax.Conv(ch, ks, st, spec.padding, W_std=spec.W_std, b_std=spec.b_std,
                         parameterization=spec.parameterization), act]
    if pl is not None:
      layers.append(stax.AvgPool(pl, pl, "VALID"))
  layers.append(stax.Flatten() if spec.readout == "flatten" else stax.GlobalAvgPool())

  def dense(n):
    return stax.Dense(n, W_std=spec.W_std, b_std=spec.b_std,
                      parameterization=spec.parameterization)

  for w in spec.dense:
    layers += [dense(w), act]
  layers.append(dense(spec.out_dim))
  return _checked_stax(spec, *stax.serial(*layers))


def _conv_dimension_numbers(spatial_dims):
  sp = "AB"[:spatial_dims]   # neural-tangents' default letters, channels last
  return ("N" + sp + "C", sp + "IO", "N" + sp + "C")


class _Conv(nn.Module):
  """One neural-tangents Conv layer ('kernel' (*filter, C_in, C_out), optional 'bias')."""
  features: int
  kernel_size: tuple
  strides: tuple
  padding: str
  W_std: float
  b_std: Optional[float]
  parameterization: str
  param_dtype: Any
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1] * math.prod(self.kernel_size)
    w_std = self.init_scale * (self.W_std / math.sqrt(fan_in)
                               if self.parameterization == "standard" else 1.0)
    kernel = self.param("kernel", nn.initializers.normal(stddev=w_std),
                        tuple(self.kernel_size) + (x.shape[-1], self.features),
                        self.param_dtype)
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), self.strides, self.padding,
        dimension_numbers=_conv_dimension_numbers(len(self.kernel_size)))
    return _ntk_scale_and_bias(self, y, fan_in)


def _avg_pool(x, window):
  """Non-overlapping average pooling, 'VALID' (neural-tangents AvgPool, stride = window)."""
  dims = (1,) + tuple(window) + (1,)
  s = jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, dims, dims, "VALID")
  return s / math.prod(window)


class FlaxCNN(nn.Module):
  """flax (linen) model of the network ``spec`` describes: same function as :func:`stax_cnn`.

  Layers ``conv_0 .. conv_{L-1}`` (``'kernel'`` of shape (*filter, C_in, C_out), ``'bias'``
  (C_out,) when ``spec.has_bias``), then ``dense_0 .. dense_{m}`` (the last is the output).
  ``antisymmetric=True``: f(x) = (g(theta_+, x) - g(theta_-, x)) / sqrt(2) with sub-modules
  ``'pos'`` and ``'neg'``; :func:`init_zero_output` makes f_0 = 0 (module docstring).

  Attributes:
    spec: a :class:`CNNSpec`.
    antisymmetric: use the two-copy zero-output form.
    param_dtype: parameter dtype; ``None`` means float64 under ``jax_enable_x64``, else
      float32.

  Inputs x of shape (n, L, C) (``spatial_dims=1``) or (n, H, W, C); output (n, out_dim).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = FlaxCNN(CNNSpec(channels=(4, 4), kernel_sizes=(3, 3), spatial_dims=2,
    ...                         pool=(2, None), readout='gap', out_dim=3))
    >>> x = jnp.ones((5, 8, 8, 1))
    >>> model.apply(model.init(jax.random.PRNGKey(0), x), x).shape
    (5, 3)
  """
  spec: CNNSpec
  antisymmetric: bool = False
  param_dtype: Any = None

  @nn.compact
  def __call__(self, x):
    spec = self.spec
    _check_spec(spec, "FlaxCNN", CNNSpec)
    _check_cnn_input_shape(spec, x.shape, "FlaxCNN")
    if self.antisymmetric:
      return _antisymmetric(self, x)
    dtype = self.param_dtype or _default_dtype()
    act = _flax_activation(spec.activation)
    h = x.astype(jnp.promote_types(x.dtype, dtype))
    for i, (ch, ks, st, pl) in enumerate(zip(spec.channels, spec.kernel_sizes, spec.strides,
                                             spec.pool)):
      h = _Conv(ch, ks, st, spec.padding, spec.W_std, spec.b_std, spec.parameterization,
                dtype, spec.init_scale, name=f"conv_{i}")(h)
      h = act(h)
      if pl is not None:
        h = _avg_pool(h, pl)
    if spec.readout == "flatten":
      h = h.reshape(h.shape[0], -1)
    else:
      h = jnp.mean(h, axis=tuple(range(1, h.ndim - 1)))
    widths = spec.dense + (spec.out_dim,)
    for i, w in enumerate(widths):
      h = _Dense(w, spec.W_std, spec.b_std, spec.parameterization, dtype, spec.init_scale,
                 name=f"dense_{i}")(h)
      if i < len(widths) - 1:
        h = act(h)
    return h


class Network(NamedTuple):
  """A spec with its analytic kernel and its flax model.

  Attributes:
    spec: the :class:`MLPSpec` or :class:`CNNSpec`.
    kernel_fn: neural-tangents ``kernel_fn(x1, x2, get)`` (infinite width).
    model: the :class:`FlaxMLP` or :class:`FlaxCNN` (finite width / channels).
  """
  spec: Any
  kernel_fn: Callable
  model: nn.Module


def make_network(spec, *, antisymmetric: bool = False) -> Network:
  """Analytic kernel and flax model of one architecture (:class:`MLPSpec` or :class:`CNNSpec`).

  ``kernel_fn`` is the limit width -> infinity of the empirical NTK of ``model`` (for
  ``antisymmetric=True`` too: its NTK at init is that of one ordinary copy).

  Args:
    spec: an :class:`MLPSpec` or a :class:`CNNSpec`.
    antisymmetric: build the model with ``antisymmetric=True``; initialise it with
      :func:`init_zero_output` so that f(theta_0, .) = 0.

  Returns:
    ``Network(spec, kernel_fn, model)``.

  Example:
    >>> net = make_network(MLPSpec(depth=1, width=128, activation='erf'))
    >>> type(net.model).__name__, net.spec.activation
    ('FlaxMLP', 'erf')
    >>> type(make_network(CNNSpec(channels=(64,))).model).__name__
    'FlaxCNN'
  """
  if isinstance(spec, CNNSpec):
    _, _, kernel_fn = stax_cnn(spec)
    return Network(spec, kernel_fn, FlaxCNN(spec, antisymmetric=bool(antisymmetric)))
  if not isinstance(spec, MLPSpec):
    raise TypeError("make_network: spec must be an MLPSpec or a CNNSpec, e.g. "
                    f"MLPSpec(depth=1, width=1024); got {type(spec).__name__}.")
  from mskjax.kernels import mlp_kernel_fn   # closed form (one GEMM + elementwise) if any
  kernel_fn = mlp_kernel_fn(spec, fallback=stax_mlp(spec)[2])
  return Network(spec, kernel_fn, FlaxMLP(spec, antisymmetric=bool(antisymmetric)))


def init_zero_output(model, key: jax.Array, x_example: jax.Array):
  """Variables of an antisymmetric :class:`FlaxMLP` / :class:`FlaxCNN` with f(theta_0, x) = 0.

  f(x) = (g(theta_+, x) - g(theta_-, x)) / sqrt(2) with theta_+ drawn as usual and
  theta_- = theta_+. Then f_0 = 0 exactly and the empirical NTK at init,
  (Theta_+ + Theta_-)/2 = Theta_+, is that of one ordinarily initialised network.

  Args:
    model: ``FlaxMLP(spec, antisymmetric=True)`` or ``FlaxCNN(spec, antisymmetric=True)``
      (e.g. ``make_network(spec, antisymmetric=True).model``).
    key: a JAX PRNG key.
    x_example: an input batch (only its shape and dtype are used).

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
  if not isinstance(model, (FlaxMLP, FlaxCNN)):
    raise TypeError("init_zero_output: model must be a FlaxMLP or FlaxCNN; got "
                    f"{type(model).__name__}.")
  if not model.antisymmetric:
    cls = type(model).__name__
    raise ValueError(f"init_zero_output: model must be antisymmetric; build it with "
                     f"{cls}(spec, antisymmetric=True) or make_network(spec, "
                     "antisymmetric=True).")
  variables = model.init(_validate.check_key(key), x_example)
  params = dict(variables["params"])
  params["neg"] = params["pos"]
  return {**variables, "params": params}


def params_from_stax(spec, stax_params) -> dict:
  """Flax variables for ``FlaxMLP(spec)`` / ``FlaxCNN(spec)`` holding stax parameters.

  MLP: the stax ``Dense`` parameters (W of shape (fan_in, fan_out), b of shape (1, fan_out) or
  None) map to ``dense_i/kernel`` and ``dense_i/bias``. CNN: the stax ``Conv`` parameters
  (W of shape (*filter, C_in, C_out), b of shape (1, ..., 1, C_out)) map to ``conv_i``, then
  the Dense layers to ``dense_i``. Both models then compute the same function,
  f_stax(theta, x) = f_flax(params_from_stax(spec, theta), x).

  Args:
    spec: the :class:`MLPSpec` or :class:`CNNSpec` both were built from.
    stax_params: the parameters returned by ``stax_mlp(spec)[0]`` / ``stax_cnn(spec)[0]``.

  Returns:
    ``{'params': {...}}`` for a plain (not antisymmetric) model.

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
  if isinstance(spec, CNNSpec):
    return _cnn_params_from_stax(spec, stax_params)
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


def _cnn_params_from_stax(spec, stax_params):
  weighted = [p for p in stax_params if len(p) == 2]
  n_conv, n_dense = len(spec.channels), len(spec.dense) + 1
  n_layers = (2 * n_conv + sum(p is not None for p in spec.pool) + 1 + 2 * len(spec.dense)
              + 1)
  if len(weighted) != n_conv + n_dense or len(stax_params) != n_layers:
    raise ValueError(f"params_from_stax: stax_params has {len(stax_params)} layers; expected "
                     f"{n_layers} for this CNNSpec. Pass the params of stax_cnn(spec)[0].")
  out = {}
  for i, (w, b) in enumerate(weighted):
    name = f"conv_{i}" if i < n_conv else f"dense_{i - n_conv}"
    expected = (spec.kernel_sizes[i] if i < n_conv else ())
    if i < n_conv and tuple(np.shape(w)[:-2]) != tuple(expected):
      raise ValueError(f"params_from_stax: {name} kernel has shape {np.shape(w)}; expected "
                       f"filter {expected}. Pass the params of stax_cnn(spec)[0].")
    layer = {"kernel": jnp.asarray(w)}
    if spec.has_bias:
      if b is None:
        raise ValueError("params_from_stax: spec has a bias but stax_params has none.")
      layer["bias"] = jnp.asarray(b).reshape(-1)
    out[name] = layer
  return {"params": out}
