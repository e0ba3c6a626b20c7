"""Config files: loading, ``key=value`` overrides, validation (internal to the runner).

A config file ``configs/NAME.py`` is declarative: it defines

* ``get_config(arg=None) -> ml_collections.ConfigDict`` — every value the experiment uses
  (the docstring holds the exact commands). ``arg`` selects a variant, resolved *inside*
  ``get_config`` (big_vision's ``runlocal`` pattern): ``"quick"`` is the < 60 s variant;
  a config parses its ``arg`` with :func:`parse_arg` (``from mskjax._config import
  parse_arg``: configs need nothing else of mskjax, so they sit below the runner).
  ``config.program`` names the experiment program, the module
  ``mskjax.experiments.<program>`` with ``run(config, ctx)``; a program never resizes
  anything itself;
* optionally ``RANGES`` and ``validate(config)`` (declarative checks, :func:`validate_config`).

Overrides (``key=value``) are type-checked against the resolved value: ``int``, ``float``,
``bool`` (true/false/1/0), ``str``, and tuples/lists as Python literals (``ks=(5,21)``);
dotted keys reach nested ConfigDicts. An unknown key or a bad value raises
:class:`ConfigError` with a message that lists the valid keys. ``quick=True`` among the
overrides is an alias of ``:quick`` (:func:`quick_alias`).

The config is validated before any work: finite floats, non-empty tuples, the ranges a
config declares in a module-level ``RANGES`` dict (``{"tol": {"gt": 0, "lt": 1}, "js":
{"min_len": 1, "min": 1}}``; keys ``min``, ``max``, ``gt``, ``lt``, ``min_len``,
``choices``; tuple bounds apply to every element) and its optional ``validate(config)``
(raise ``ValueError`` for cross-key rules). A run tag is checked by :func:`check_tag`.

The public spellings are :func:`mskjax.run.load_config` and :class:`mskjax.run.ConfigError`;
the runner (:mod:`mskjax.run`) is the only other user of this module.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["ConfigError", "split_config_arg", "load_config_module", "load_config",
           "resolve_config", "quick_alias", "parse_arg", "flat_keys", "parse_value",
           "apply_overrides", "RANGE_KEYS", "check_range", "validate_config", "check_tag"]


class ConfigError(ValueError):
  """A bad config override (unknown key or a value of the wrong type)."""


def split_config_arg(spec: str | os.PathLike) -> tuple[Path, str | None]:
  """``'configs/NAME.py:ARG'`` -> ``(Path('configs/NAME.py'), 'ARG')`` (big_vision style).

  Example:
    >>> split_config_arg('configs/quickstart.py:quick')
    (PosixPath('configs/quickstart.py'), 'quick')
    >>> split_config_arg('configs/quickstart.py')
    (PosixPath('configs/quickstart.py'), None)
  """
  text = os.fspath(spec)
  path, sep, arg = text.rpartition(":") if ".py:" in text else (text, "", "")
  return Path(path), (arg if sep else None)


def load_config_module(path: str | os.PathLike):
  """Import a config file by path; it must define ``get_config(arg=None)``."""
  path = Path(path)
  if not path.is_file() and not path.is_absolute():   # configs/NAME.py from any directory
    in_checkout = Path(__file__).resolve().parents[1] / path
    path = in_checkout if in_checkout.is_file() else path
  if not path.is_file():
    raise FileNotFoundError(f"config file {str(path)!r} not found; configs live in configs/ "
                            "(e.g. configs/quickstart.py).")
  if path.suffix != ".py":
    raise ConfigError(f"config file {str(path)!r} is not a Python file: pass a configs/NAME.py "
                      "file that defines get_config(arg=None) (e.g. configs/quickstart.py; a "
                      "run's config.json is a record, not a config).")
  spec = importlib.util.spec_from_file_location(f"mskjax_config_{path.stem}", path)
  if spec is None or spec.loader is None:   # pragma: no cover - .py files always load
    raise ConfigError(f"config file {str(path)!r} cannot be imported as a Python module.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config {str(path)!r} must define a function `get_config`.")
  return module


def load_config(path: str | os.PathLike, arg: str | None = None):
  """The resolved ConfigDict of a config file: ``get_config(arg)`` of ``path``.

  ``path`` may carry the argument itself (``'configs/NAME.py:quick'``); ``arg`` then must
  be None. This is what the runner runs (before command-line overrides) and what it
  writes to ``config.json``; tests load configs this way.

  Example:
    >>> c = load_config('configs/quickstart.py:quick')
    >>> c.program, c.width
    ('quickstart', 2048)
  """
  path, path_arg = split_config_arg(path)
  if path_arg is not None and arg is not None:
    raise ConfigError(f"config argument given twice: {path_arg!r} in the path and "
                      f"arg={arg!r}; pass one.")
  arg = path_arg if arg is None else arg
  return resolve_config(load_config_module(path), path, arg)


def resolve_config(module, path, arg):
  try:
    config = module.get_config(arg) if arg is not None else module.get_config()
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(f"{path}:{arg}: {e}") from None
  if not isinstance(config.get("program", None), str):
    raise ConfigError(f"config {str(path)!r}: get_config() must set `program`, the name of "
                      "its experiment program in mskjax/experiments/ (e.g. c.program = "
                      "'quickstart').")
  return config


def quick_alias(arg: str | None, overrides: list[str]):
  """``quick=True`` among the overrides -> the config argument ``quick`` (an alias of ``:quick``)."""
  rest = []
  for item in overrides:
    key, sep, text = item.partition("=")
    if key.strip() != "quick" or not sep:
      rest.append(item)
      continue
    if parse_value("quick", text, False):
      items = [a.strip() for a in (arg or "").split(",") if a.strip()]
      arg = ",".join(items + ([] if "quick" in items else ["quick"]))
  return arg, rest


def parse_arg(arg: str | None, **spec):
  """Parse a config argument (``'quick'`` or ``'quick,n=3'``) against defaults ``spec``.

  Comma-separated ``key=value`` items, a bare ``key`` meaning ``key=True`` (big_vision's
  ``config_dict.parse_arg``); values are typed by the defaults. A config's
  ``get_config(arg)`` starts with ``arg = parse_arg(arg, quick=False)``.

  Example:
    >>> parse_arg('quick', quick=False).quick
    True
    >>> parse_arg(None, quick=False).quick
    False
    >>> parse_arg('fast', quick=False)
    Traceback (most recent call last):
    ...
    mskjax._config.ConfigError: unknown config argument `fast` in 'fast'; valid: quick (e.g. configs/NAME.py:quick)
  """
  import ml_collections
  out = ml_collections.ConfigDict(dict(spec))
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, _, text = item.partition("=") if "=" in item else (item, "", "True")
    key = key.strip()
    if key not in spec:
      raise ConfigError(f"unknown config argument `{key}` in {arg!r}; valid: "
                        f"{', '.join(sorted(spec))} (e.g. configs/NAME.py:quick)")
    out[key] = parse_value(key, text, spec[key])
  return out


def flat_keys(cfg, prefix=""):
  out = {}
  for k, v in cfg.items():
    name = f"{prefix}{k}"
    if hasattr(v, "items") and hasattr(v, "to_dict"):
      out.update(flat_keys(v, name + "."))
    else:
      out[name] = v
  return out


def parse_value(key: str, text: str, default: Any) -> Any:
  def bad(why):
    return ConfigError(f"bad value for `{key}`: {text!r} ({why}); default is {default!r} "
                       f"of type {type(default).__name__}.")
  if isinstance(default, bool):
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise bad("expected true/false")
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise bad("expected an int") from None
  if isinstance(default, float):
    try:
      value = float(text)
    except ValueError:
      raise bad("expected a float") from None
    if not math.isfinite(value):
      raise bad("expected a finite float")
    return value
  if isinstance(default, str) or default is None:
    return text
  if isinstance(default, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise bad("expected a Python literal list/tuple such as (4,8,16)") from None
    if isinstance(value, (int, float)):
      value = (value,)
    if not isinstance(value, (tuple, list)):
      raise bad("expected a list/tuple")
    if default and any(not isinstance(v, type(default[0])) and not (
        isinstance(default[0], float) and isinstance(v, int)) for v in value):
      raise bad(f"elements must be {type(default[0]).__name__}")
    return type(default)(value)
  raise bad("this key cannot be overridden from the command line")


def apply_overrides(config, overrides: Iterable[str]):
  """Apply ``key=value`` strings to a ConfigDict with type checks (returns the config).

  Example:
    >>> import ml_collections
    >>> c = ml_collections.ConfigDict({'n': 64, 'lr': 0.5, 'quick': False, 'js': (4, 8)})
    >>> apply_overrides(c, ['n=32', 'quick=true', 'js=(4,16)']).js
    (4, 16)
    >>> apply_overrides(c, ['m=1'])
    Traceback (most recent call last):
    ...
    mskjax._config.ConfigError: unknown config key `m`; valid keys: js, lr, n, quick
  """
  valid = flat_keys(config)
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"override {item!r} is not of the form key=value; valid keys: "
                        f"{', '.join(sorted(valid))}")
    key, text = item.split("=", 1)
    key = key.strip()
    if key not in valid:
      raise ConfigError(f"unknown config key `{key}`; valid keys: {', '.join(sorted(valid))}")
    value = parse_value(key, text, valid[key])
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
      node[leaf] = value
  return config


RANGE_KEYS = {"min", "max", "gt", "lt", "min_len", "choices"}


def check_range(key, value, rule):
  unknown = set(rule) - RANGE_KEYS
  if unknown:
    raise ConfigError(f"RANGES[{key!r}] has unknown rule(s) {sorted(unknown)}; allowed: "
                      f"{sorted(RANGE_KEYS)}.")
  items = list(value) if isinstance(value, (tuple, list)) else [value]
  if isinstance(value, (tuple, list)) and "min_len" in rule and len(value) < rule["min_len"]:
    raise ConfigError(f"`{key}` must hold at least {rule['min_len']} element(s), got "
                      f"{value!r}.")
  for v in items:
    if "choices" in rule and v not in rule["choices"]:
      raise ConfigError(f"`{key}` must be one of {list(rule['choices'])}, got {v!r}.")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
      for op, ok, text in (("min", lambda a, b: a >= b, ">="), ("max", lambda a, b: a <= b, "<="),
                           ("gt", lambda a, b: a > b, ">"), ("lt", lambda a, b: a < b, "<")):
        if op in rule and not ok(v, rule[op]):
          raise ConfigError(f"`{key}` must be {text} {rule[op]!r}, got {value!r}.")


def validate_config(config, module=None):
  """Check a (overridden) config before any work; raise :class:`ConfigError` with the key.

  Generic rules: every float is finite, a tuple/list whose default was non-empty stays
  non-empty. Then the module's ``RANGES`` (see the module docstring) and its optional
  ``validate(config)`` (a ``ValueError`` there becomes a ``ConfigError``).

  Example:
    >>> import ml_collections, types
    >>> c = ml_collections.ConfigDict({'tol': -0.1, 'js': (1, 2)})
    >>> validate_config(c, types.SimpleNamespace(RANGES={'tol': {'gt': 0}}))
    Traceback (most recent call last):
    ...
    mskjax._config.ConfigError: `tol` must be > 0, got -0.1.
  """
  flat = flat_keys(config)
  get_default = getattr(module, "get_config", None)
  defaults = flat_keys(get_default()) if callable(get_default) else {}
  for key, v in flat.items():
    if isinstance(v, float) and not math.isfinite(v):
      raise ConfigError(f"`{key}` must be a finite number, got {v!r}.")
    d = defaults.get(key)
    if isinstance(v, (tuple, list)) and len(v) == 0 and not (
        isinstance(d, (tuple, list)) and len(d) == 0):     # empty only where the default is
      raise ConfigError(f"`{key}` must not be empty (pass at least one value, e.g. "
                        f"{key}=(1,)).")
  ranges = getattr(module, "RANGES", None) or {}
  for key, rule in ranges.items():
    if key not in flat:
      raise ConfigError(f"RANGES names `{key}`, which is not a config key.")
    check_range(key, flat[key], rule)
  hook = getattr(module, "validate", None)
  if callable(hook):
    try:
      hook(config)
    except ConfigError:
      raise
    except (ValueError, TypeError) as e:
      raise ConfigError(str(e)) from None
  return config


def check_tag(tag: str, runs_dir: str | os.PathLike = "runs") -> str:
  """A run tag is a relative name inside ``runs_dir/<name>/``: not empty, not absolute, no
  ``.``/``..`` component (``--tag /abs/path`` or ``../x`` would write outside ``--runs-dir``).

  Example:
    >>> check_tag("demo")
    'demo'
    >>> check_tag("../x")
    Traceback (most recent call last):
    ...
    mskjax._config.ConfigError: --tag '../x' would write outside --runs-dir runs: a tag is a plain name such as 'demo' or 'sweep/a' (no absolute path, no '.' or '..'); use --runs-dir to choose where runs go.
  """
  text = str(tag)
  parts = Path(text).parts
  bad = (not text.strip() or Path(text).is_absolute() or text.startswith("~")
         or any(p in (".", "..") for p in text.replace("\\", "/").split("/")) or not parts)
  if bad:
    raise ConfigError(f"--tag {text!r} would write outside --runs-dir {os.fspath(runs_dir)}: a "
                      "tag is a plain name such as 'demo' or 'sweep/a' (no absolute path, no "
                      "'.' or '..'); use --runs-dir to choose where runs go.")
  return text
