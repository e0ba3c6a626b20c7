"""Experiment runner: ``python -m mskjax.run configs/NAME.py key=value ...`` (or ``mskjax ...``).

A config file is Python with

* ``get_config() -> ml_collections.ConfigDict`` — every knob with its default (the
  docstring holds the exact command), usually including ``quick`` (a < 60 s variant);
* ``run(config, ctx)`` — the experiment. ``ctx`` is a :class:`RunContext`.

Every run writes ``runs/<name>/<tag>/`` (``tag`` defaults to a timestamp):
``config.json``, ``metrics.jsonl`` (appended and flushed as produced), ``results.csv`` and
``results.md`` (the table) and PNG plots. Rerunning with the same ``--tag`` resumes: units
of work already recorded in ``metrics.jsonl`` (see :meth:`RunContext.cached`) are read back
instead of recomputed, so an interrupted run loses nothing it finished.

Command line::

  python -m mskjax.run configs/quickstart.py quick=True j=16 --tag demo
  python -m mskjax.run configs/quickstart.py --help-config     # list keys and defaults

Overrides are type-checked against the default: ``int``, ``float``, ``bool``
(true/false/1/0), ``str``, and tuples/lists as Python literals (``ks=(5,21)``); dotted
keys reach nested ConfigDicts. An unknown key or a bad value stops with a message that
lists the valid keys.
"""
from __future__ import annotations

import argparse
import ast
import csv
import datetime as _dt
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["RunContext", "load_config_module", "apply_overrides", "main", "ConfigError"]


class ConfigError(ValueError):
  """A bad config override (unknown key or a value of the wrong type)."""


def load_config_module(path: str | os.PathLike):
  """Import a config file by path; it must define ``get_config()`` and ``run(config, ctx)``."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {str(path)!r} not found; configs live in configs/ "
                            "(e.g. configs/quickstart.py).")
  spec = importlib.util.spec_from_file_location(f"mskjax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for attr in ("get_config", "run"):
    if not callable(getattr(module, attr, None)):
      raise ConfigError(f"config {str(path)!r} must define a function `{attr}`.")
  return module


def _flat_keys(cfg, prefix=""):
  out = {}
  for k, v in cfg.items():
    name = f"{prefix}{k}"
    if hasattr(v, "items") and hasattr(v, "to_dict"):
      out.update(_flat_keys(v, name + "."))
    else:
      out[name] = v
  return out


def _parse_value(key: str, text: str, default: Any) -> Any:
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
    mskjax.run.ConfigError: unknown config key `m`; valid keys: js, lr, n, quick
  """
  valid = _flat_keys(config)
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"override {item!r} is not of the form key=value; valid keys: "
                        f"{', '.join(sorted(valid))}")
    key, text = item.split("=", 1)
    key = key.strip()
    if key not in valid:
      raise ConfigError(f"unknown config key `{key}`; valid keys: {', '.join(sorted(valid))}")
    value = _parse_value(key, text, valid[key])
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    with config.unlocked() if hasattr(config, "unlocked") else _nullcontext():
      node[leaf] = value
  return config


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if hasattr(x, "tolist"):
    return _jsonable(x.tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x


class RunContext:
  """What a config's ``run(config, ctx)`` uses to write results.

  Attributes:
    out_dir: ``runs/<name>/<tag>/`` (created).
    config: the (overridden) ConfigDict.
    resumed: number of records found from an earlier, interrupted run with this tag.
  """

  def __init__(self, out_dir: Path, config, *, show_progress: bool = True):
    self.out_dir = Path(out_dir)
    self.out_dir.mkdir(parents=True, exist_ok=True)
    self.config = config
    self.show_progress = show_progress
    self._metrics_path = self.out_dir / "metrics.jsonl"
    self._records: dict[str, dict] = {}
    if self._metrics_path.exists():
      for line in self._metrics_path.read_text().splitlines():
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: drop it, it is recomputed
          continue
        if "key" in rec:
          self._records[rec["key"]] = rec
    self.resumed = len(self._records)
    self.tables: dict[str, list[dict]] = {}
    self.figures: list[Path] = []

  # -- results -------------------------------------------------------------------------
  def log_metrics(self, record: dict, key: str | None = None) -> dict:
    """Append one record to ``metrics.jsonl`` (flushed and fsynced at once).

    Arrays become lists; non-finite floats are stored *and returned* as the strings
    ``'nan'``, ``'inf'``, ``'-inf'`` (metrics.jsonl stays strict JSON), so a fresh and a
    resumed run see the same record — read such fields back with ``float(...)``.
    """
    rec = _jsonable(dict(record))
    if key is not None:
      rec["key"] = key
    rec.setdefault("time", time.time())
    with open(self._metrics_path, "a") as f:
      f.write(json.dumps(rec) + "\n")
      f.flush()
      os.fsync(f.fileno())
    if key is not None:
      self._records[key] = rec
    return rec

  def completed(self, key: str) -> dict | None:
    """The record stored under ``key`` by this or an interrupted earlier run, if any."""
    return self._records.get(key)

  def cached(self, key: str, compute: Callable[[], dict]) -> dict:
    """``compute()`` once per ``key``: a resumed run reads the stored record instead."""
    rec = self.completed(key)
    if rec is None:
      rec = self.log_metrics(compute(), key=key)
    return rec

  def write_table(self, rows: list[dict], name: str = "results",
                  columns: list[str] | None = None, floatfmt: str = ".4g") -> str:
    """Write ``<name>.csv`` and ``<name>.md``; returns the markdown table."""
    if not rows:
      raise ValueError("write_table: `rows` is empty.")
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    with open(self.out_dir / f"{name}.csv", "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
      w.writeheader()
      for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})

    def fmt(v):
      if isinstance(v, float):
        return format(v, floatfmt)
      return str(v)
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    (self.out_dir / f"{name}.md").write_text(text)
    self.tables[name] = rows
    return text

  def savefig(self, fig, name: str) -> Path:
    """Save a matplotlib figure as ``<name>.png`` in the run directory and close it."""
    import matplotlib.pyplot as plt
    path = self.out_dir / (name if name.endswith(".png") else f"{name}.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    self.figures.append(path)
    return path

  def progress(self, iterable, desc: str | None = None, total: int | None = None):
    """A tqdm progress bar on stderr (plain iteration when disabled)."""
    if not self.show_progress:
      return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr,
                dynamic_ncols=True)

  def print(self, *args):
    print(*args, flush=True)


def _config_to_json(config) -> dict:
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return _jsonable(d)


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point (see the module docstring)."""
  os.environ.setdefault("MPLBACKEND", "Agg")
  parser = argparse.ArgumentParser(
      prog="mskjax", description="Run an mskjax experiment config.",
      epilog="example: python -m mskjax.run configs/quickstart.py quick=True --tag demo")
  parser.add_argument("config", help="path to a config file, e.g. configs/quickstart.py")
  parser.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
  parser.add_argument("--tag", default=None, help="run directory name (default: timestamp); "
                      "reuse a tag to resume an interrupted run")
  parser.add_argument("--runs-dir", default="runs", help="where run directories go")
  parser.add_argument("--help-config", action="store_true", help="list keys and defaults")
  parser.add_argument("--no-progress", action="store_true", help="disable progress bars")
  args = parser.parse_args(argv)
  # Experiments claim float64 accuracy: the runner (not the library import) turns it on.
  import jax
  jax.config.update("jax_enable_x64", True)

  try:
    module = load_config_module(args.config)
    config = module.get_config()
    if args.help_config:
      for k, v in sorted(_flat_keys(config).items()):
        print(f"{k} = {v!r}")
      return 0
    apply_overrides(config, args.overrides)
  except (ConfigError, FileNotFoundError) as e:
    print(f"mskjax.run: error: {e}", file=sys.stderr)
    return 2

  name = Path(args.config).stem
  tag = args.tag or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
  out_dir = Path(args.runs_dir) / name / tag
  cfg_json = _config_to_json(config)
  cfg_path = out_dir / "config.json"
  if cfg_path.exists():
    old = json.loads(cfg_path.read_text())
    if old != cfg_json:
      diff = sorted(k for k in set(old) | set(cfg_json) if old.get(k) != cfg_json.get(k))
      print(f"mskjax.run: error: {out_dir} holds a run with a different config (keys "
            f"{diff}); use another --tag to start a new run.", file=sys.stderr)
      return 2
  ctx = RunContext(out_dir, config, show_progress=not args.no_progress)
  cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
  if ctx.resumed:
    print(f"resuming {out_dir}: {ctx.resumed} finished records reused", flush=True)
  else:
    print(f"running {name} -> {out_dir}", flush=True)
  t0 = time.time()
  module.run(config, ctx)
  for table, rows in ctx.tables.items():
    print(f"\n{table} ({out_dir / (table + '.csv')}):\n")
    print((out_dir / f"{table}.md").read_text())
  for fig in ctx.figures:
    print(f"plot: {fig}")
  print(f"done in {time.time() - t0:.1f} s: {out_dir}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
