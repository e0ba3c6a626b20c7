"""The package's naming rule and its public API, read from the source (``ast``).

The rule: internals live in underscore modules (``mskjax._validate``, ``mskjax._loops``,
``mskjax._config``, ``mskjax._store``, ...) where they keep plain names; a module never
imports a ``_private`` name from another module. So:

* no module imports ``_name`` from another mskjax module or reads ``module._name`` of one
  (an underscore *module* itself is fine: ``from mskjax import _validate``);
* what one module uses of a *public* module is in that module's ``__all__`` (a helper
  shared across modules lives in an underscore module instead of hiding in a public one);
* a public module's ``__all__`` holds its own names (defined there or in an underscore
  module), never another public module's: one spelling per name;
* the flat API ``mskjax.__all__`` is curated: each name is its home module's public name,
  and no internal helper is public anywhere.

The scan covers the package, its experiment programs and the configs.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import mskjax

PKG = Path(mskjax.__file__).resolve().parent
ROOT = PKG.parent
SOURCES = sorted([*PKG.glob("*.py"), *(PKG / "experiments").glob("*.py"),
                  *(ROOT / "configs").glob("*.py")])
PUBLIC_MODULES = sorted(f"mskjax.{m.name}" for m in pkgutil.iter_modules(mskjax.__path__)
                        if not m.name.startswith("_"))

# Helpers that are internal by their job (row blocking, memory budgets, argument checks,
# solver choice, shared linear algebra): they must not sit in a public module's __all__.
INTERNAL = ("pad_rows", "rows_for_budget", "block_size_for_budget", "map_row_blocks",
            "DEFAULT_MEMORY_BUDGET", "jacobian_block_size", "check_float_params",
            "choose_method", "loss_hessian_sqrt", "orthonormal_columns", "output_hessian_sqrt")

# Violations left by this redesign step, each with the module home it moves to. An entry
# that no longer occurs fails test_pending_entries_still_occur: delete it then.
PENDING_NOT_IN_ALL = {
    # (using file, module.name) -> where the helper goes
    ("mskjax/directions.py", "mskjax.kernels.as_inputs"): "_blocks",
    ("mskjax/tangents.py", "mskjax.kernels.as_inputs"): "_blocks",
    ("mskjax/tangents.py", "mskjax.kernels.check_block_size"): "_blocks",
    ("mskjax/tangents.py", "mskjax.kernels.check_pair"): "_blocks",
    ("mskjax/optim.py", "mskjax.directions.apply_directions"): "directions.__all__ or _linalg",
    ("mskjax/optim.py", "mskjax.directions.check_directions"): "directions.__all__",
    ("mskjax/optim.py", "mskjax.directions.msk_coefficients"): "directions.__all__ or _linalg",
    ("mskjax/optim.py", "mskjax.directions.tree_dtype"): "_linalg",
    ("mskjax/tracking.py", "mskjax.directions.apply_directions"): "directions.__all__ or _linalg",
    ("mskjax/tracking.py", "mskjax.directions.check_directions"): "directions.__all__",
    ("mskjax/tracking.py", "mskjax.directions.msk_coefficients"): "directions.__all__ or _linalg",
    ("mskjax/tracking.py", "mskjax.directions.tree_dtype"): "_linalg",
    ("mskjax/steps.py", "mskjax.directions.check_directions"): "directions.__all__",
    ("mskjax/steps.py", "mskjax.directions.flat_rows"): "directions.__all__ (the record's helpers)",
}
PENDING_INTERNAL = {
    ("mskjax.kernels", "block_size_for_budget"),
    ("mskjax.kernels", "DEFAULT_MEMORY_BUDGET"), ("mskjax.tangents", "jacobian_block_size"),
    ("mskjax.directions", "loss_hessian_sqrt"),
}


def _rel(path: Path) -> str:
  return path.relative_to(ROOT).as_posix()


def _module_name(path: Path) -> str | None:
  if PKG not in path.parents:
    return None                                   # a config file
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(qual: str) -> bool:
  try:
    importlib.import_module(qual)
  except ImportError:
    return False
  return True


def _cross_module_names(path: Path):
  """``(module, name)`` for every name this file takes from another mskjax module."""
  me = _module_name(path)
  tree = ast.parse(path.read_text())
  alias: dict[str, str] = {}
  used: list[tuple[str, str]] = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "mskjax":
          alias[a.asname or "mskjax"] = a.name if a.asname else "mskjax"
    elif (isinstance(node, ast.ImportFrom) and node.level == 0
          and (node.module or "").split(".")[0] == "mskjax"):
      for a in node.names:
        qual = f"{node.module}.{a.name}"
        if _is_module(qual):
          alias[a.asname or a.name] = qual
        elif node.module != me:
          used.append((node.module, a.name))

  def resolve(n):
    if isinstance(n, ast.Name):
      return alias.get(n.id)
    if isinstance(n, ast.Attribute):
      base = resolve(n.value)
      if base and _is_module(f"{base}.{n.attr}"):
        return f"{base}.{n.attr}"
    return None

  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and not node.attr.startswith("__"):
      base = resolve(node.value)
      if base and base != me and not _is_module(f"{base}.{node.attr}"):
        used.append((base, node.attr))
  return sorted(set(used))


def _is_public(module: str) -> bool:
  return not any(part.startswith("_") for part in module.split("."))


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_private_name_crosses_a_module_boundary(path):
  bad = [f"{m}.{n}" for m, n in _cross_module_names(path) if n.startswith("_")]
  assert not bad, (f"{_rel(path)} uses private names of other modules: {bad}; a helper "
                   "shared across modules lives in an underscore module under a plain name")


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_names_taken_from_a_public_module_are_in_its_all(path):
  bad = []
  for m, n in _cross_module_names(path):
    if n.startswith("_") or not _is_public(m) or m == "mskjax.experiments":
      continue
    if n not in getattr(importlib.import_module(m), "__all__", ()) \
        and (_rel(path), f"{m}.{n}") not in PENDING_NOT_IN_ALL:
      bad.append(f"{m}.{n}")
  assert not bad, (f"{_rel(path)} uses {bad}, which their modules do not list in __all__: "
                   "a public name goes in __all__ (one spelling), an internal helper into "
                   "an underscore module (mskjax/_*.py)")


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_public_modules_list_only_their_own_names(module):
  mod = importlib.import_module(module)
  foreign = []
  for name in getattr(mod, "__all__", ()):
    obj = getattr(mod, name)
    home = getattr(obj, "__module__", None) if (inspect.isfunction(obj)
                                                or inspect.isclass(obj)) else None
    if home and home.startswith("mskjax.") and home != module and _is_public(home):
      foreign.append(f"{name} (from {home})")
  assert not foreign, f"{module}.__all__ re-exports other public modules' names: {foreign}"


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_internal_helpers_are_not_public(module):
  public = set(getattr(importlib.import_module(module), "__all__", ()))
  bad = sorted(n for n in public & set(INTERNAL) if (module, n) not in PENDING_INTERNAL)
  assert not bad, f"{module}.__all__ lists internal helpers {bad}: move them to an underscore module"


def test_pending_entries_still_occur():
  """The pending lists only shrink: an entry that was fixed must be deleted from them."""
  stale = [k for k in PENDING_NOT_IN_ALL
           if k[1].rsplit(".", 1) and (
               tuple(k[1].rsplit(".", 1)) not in _cross_module_names(ROOT / k[0])
               or k[1].rsplit(".", 1)[1] in getattr(
                   importlib.import_module(k[1].rsplit(".", 1)[0]), "__all__", ()))]
  stale += [k for k in PENDING_INTERNAL
            if k[1] not in getattr(importlib.import_module(k[0]), "__all__", ())]
  assert not stale, f"fixed, delete from the pending lists: {stale}"


def test_flat_api_is_curated_with_one_home_per_name():
  names = mskjax.__all__
  assert len(names) == len(set(names))
  assert len(names) <= 40, "the flat API is the user's main path; the rest stays in modules"
  for name in names:
    obj = getattr(mskjax, name)
    if inspect.ismodule(obj):
      assert obj is mskjax.modifiers, f"mskjax.__all__ lists the module {name}"
      continue
    home = importlib.import_module(obj.__module__)
    assert getattr(home, name) is obj and name in home.__all__, \
        f"mskjax.{name} is not the public name of its home module {obj.__module__}"
    assert name not in INTERNAL
