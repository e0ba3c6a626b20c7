"""Every committed run config still loads against today's config schema.

A run writes ``config.json`` (the resolved config that ran); the committed ones under
``experiments/NAME/`` (and its sub-runs ``experiments/NAME/*/config.json`` and variants such
as ``experiments/digits/linear/config.json``) document the committed results. They must stay loadable by the
config that reproduces them, ``configs/NAME.py``: every key must be a key of
``get_config()`` (a renamed key fails here, not silently at rerun time), every value must
have the type of the config's value (the types ``python -m mskjax.run`` accepts as
overrides), and the result must pass the runner's validation (``RANGES`` and
``validate(config)`` through :func:`mskjax._config.validate_config`).
"""
from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from mskjax import _config
from mskjax import run as R

ROOT = Path(__file__).resolve().parents[1]


def committed_run_configs() -> list[str]:
  try:
    out = subprocess.run(["git", "ls-files", "-z", "experiments"], cwd=ROOT,
                         capture_output=True, check=True)
    files = [p for p in out.stdout.decode().split("\0") if p]
  except (OSError, subprocess.CalledProcessError):
    files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "experiments").rglob("*.json")]
  return sorted(p for p in files
                if p.endswith(".json") and "config" in Path(p).name and p.count("/") >= 2)


def _check_value(key, value, default):
  """The runner's override types: bool, int, float (int accepted), str, tuples/lists."""
  def bad(why):
    return R.ConfigError(f"`{key}`: {why}; got {value!r}, the config's value is {default!r}.")
  if default is None:
    return value
  if isinstance(default, bool):
    if not isinstance(value, bool):
      raise bad("expected a bool")
    return value
  if isinstance(default, int):
    if isinstance(value, bool) or not isinstance(value, int):
      raise bad("expected an int")
    return value
  if isinstance(default, float):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise bad("expected a float")
    return float(value)
  if isinstance(default, str):
    if not isinstance(value, str):
      raise bad("expected a str")
    return value
  if isinstance(default, (tuple, list)):
    if not isinstance(value, list):
      raise bad("expected a list")
    if default:
      value = [_check_value(f"{key}[{i}]", v, default[min(i, len(default) - 1)])
               for i, v in enumerate(value)]
    return type(default)(value)
  raise bad(f"values of type {type(default).__name__} cannot be stored in config.json")


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_from_json(name: str, data: dict):
  """The ConfigDict of ``configs/NAME.py`` with the stored values, validated by the runner."""
  module = _config.load_config_module(ROOT / "configs" / f"{name}.py")
  config = R.load_config(ROOT / "configs" / f"{name}.py")
  valid = _config.flat_keys(config)   # the runner's own key list
  stored = _flatten(data)
  unknown = sorted(set(stored) - set(valid))
  if unknown:
    raise R.ConfigError(f"unknown key(s) {unknown} for configs/{name}.py; valid keys: "
                        f"{', '.join(sorted(valid))}")
  config = copy.deepcopy(config)
  for key, value in stored.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = _check_value(key, value, valid[key])
  if config.program != R.load_config(ROOT / "configs" / f"{name}.py").program:
    raise R.ConfigError(f"`program` is {config.program!r}, configs/{name}.py runs "
                        f"{R.load_config(ROOT / 'configs' / f'{name}.py').program!r}.")
  return _config.validate_config(config, module)


PATHS = committed_run_configs()


def test_there_are_committed_run_configs():
  assert len(PATHS) >= 10, PATHS


@pytest.mark.parametrize("path", PATHS)
def test_committed_config_loads_against_current_schema(path):
  name = Path(path).parts[1]
  assert (ROOT / "configs" / f"{name}.py").is_file(), (
      f"{path}: no configs/{name}.py reproduces this run")
  data = json.loads((ROOT / path).read_text())
  config = config_from_json(name, data)
  for key, value in _flatten(data).items():   # every stored value survives unchanged
    got = config
    for part in key.split("."):
      got = got[part]
    assert json.loads(json.dumps(got)) == value, (path, key)


def test_schema_check_rejects_unknown_keys_wrong_types_and_bad_ranges():
  good = json.loads((ROOT / "experiments" / "digits" / "config.json").read_text())
  config_from_json("digits", good)
  with pytest.raises(R.ConfigError, match="unknown key.*'renamed_key'"):
    config_from_json("digits", {**good, "renamed_key": True})
  with pytest.raises(R.ConfigError, match="`width`: expected an int"):
    config_from_json("digits", {**good, "width": "512"})
  with pytest.raises(R.ConfigError, match=r"`ks\[1\]`: expected an int"):
    config_from_json("digits", {**good, "ks": [10, 50.5]})
  with pytest.raises(R.ConfigError, match="`labels` must be one of"):
    config_from_json("digits", {**good, "labels": "softmax"})
  with pytest.raises(R.ConfigError, match="program"):
    config_from_json("digits", {**good, "program": "mnist1d"})
