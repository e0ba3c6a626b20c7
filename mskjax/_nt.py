"""The one place that imports ``neural_tangents``: a compatibility layer for current JAX.

neural-tangents 0.6.5 (its last release) was written against jax 0.4.x. On current JAX
it fails to import for four reasons, each patched here before the import:

1. ``from jax.core import Jaxpr, JaxprEqn, Literal, Var, Primitive, ...`` — these names
   moved to :mod:`jax.extend.core`. We re-export them on :mod:`jax.core` (only the names
   that are missing; nothing existing is overwritten).
2. ``from jax.util import safe_map, safe_zip`` — ``jax.util`` is gone. We register a tiny
   ``jax.util`` module with strict (length-checked) ``map``/``zip``.
3. ``jax.interpreters.ad.zeros_like_p`` is gone; an inert placeholder primitive keeps
   neural-tangents' rule table importable (it is only a dictionary key there).
4. ``neural_tangents.experimental`` imports TensorFlow through ``jax2tf``. mskjax installs
   neural-tangents *without* TensorFlow, so that subpackage is replaced by an empty stub.

What works after the patch (checked against jax 0.4.23 to ~1e-4 in float32, and by
``tests/test_nt_compat.py`` against a closed-form arc-cosine kernel in float64): analytic
``stax`` kernels, ``nt.predict``, ``nt.batch`` and ``empirical_ntk_fn`` with
``implementation=1`` or ``2``. What stays broken: ``implementation=3`` (structured
derivatives use removed JAX internals) and ``predict.max_learning_rate`` (use
:func:`mskjax.steps.max_learning_rate` instead).

Tested JAX range: see ``pyproject.toml`` (``jax>=0.4.23,<0.11``).
"""
from __future__ import annotations

import sys
import types

import jax
import jax.core

__all__ = ["nt", "stax", "nt_predict", "empirical_ntk_fn", "NT_VERSION"]

_MOVED_TO_EXTEND_CORE = ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive", "ClosedJaxpr")


def _patch_jax_core() -> None:
  try:
    import jax.extend.core as extend_core
  except ImportError:  # jax < 0.4.26 still has everything on jax.core
    return
  for name in _MOVED_TO_EXTEND_CORE:
    if not hasattr(jax.core, name) and hasattr(extend_core, name):
      setattr(jax.core, name, getattr(extend_core, name))


def _strict_map(f, *args):
  n = len(args[0])
  for a in args[1:]:
    if len(a) != n:
      raise ValueError(f"safe_map: length mismatch {[len(a) for a in args]}")
  return list(map(f, *args))


def _strict_zip(*args):
  n = len(args[0])
  for a in args[1:]:
    if len(a) != n:
      raise ValueError(f"safe_zip: length mismatch {[len(a) for a in args]}")
  return list(zip(*args))


def _patch_jax_util() -> None:
  try:
    import jax.util as util  # noqa: F401  (jax <= 0.5 still ships it)
    if hasattr(util, "safe_map") and hasattr(util, "safe_zip"):
      return
  except ImportError:
    util = types.ModuleType("jax.util")
    sys.modules["jax.util"] = util
    jax.util = util
  util.safe_map = _strict_map
  util.safe_zip = _strict_zip


def _patch_jax_interpreters() -> None:
  """``jax.interpreters.ad.zeros_like_p`` was removed; neural-tangents only uses it as a
  dictionary key of its (implementation=3) structure rules, so an inert primitive will do."""
  from jax.interpreters import ad
  try:
    ad.zeros_like_p
  except AttributeError:
    from jax.extend.core import Primitive
    ad.zeros_like_p = Primitive("zeros_like")


def _stub_experimental() -> None:
  """``neural_tangents.experimental`` needs TensorFlow; replace it by an empty module."""
  name = "neural_tangents.experimental"
  if name not in sys.modules:
    stub = types.ModuleType(name)
    stub.__doc__ = ("Stubbed by mskjax: neural-tangents' TensorFlow tools are not "
                    "installed (mskjax installs neural-tangents without TensorFlow).")
    sys.modules[name] = stub


_patch_jax_core()
_patch_jax_util()
_patch_jax_interpreters()
_stub_experimental()

try:
  import neural_tangents as nt  # noqa: E402
  from neural_tangents import stax  # noqa: E402
except Exception as e:  # pragma: no cover - only on an untested JAX
  raise ImportError(
      f"mskjax could not import neural_tangents on jax {jax.__version__}: {e!r}. "
      "mskjax is tested with neural-tangents 0.6.5 on the JAX range pinned in "
      "pyproject.toml; install a JAX in that range (pip install 'jax>=0.4.23,<0.11')."
  ) from e

nt_predict = nt.predict
empirical_ntk_fn = nt.empirical_ntk_fn
NT_VERSION = getattr(nt, "__version__", "0.6.5")
