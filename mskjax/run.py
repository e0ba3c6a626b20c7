"""Experiment runner: ``python -m mskjax.run configs/NAME.py[:ARG] key=value ...`` (or ``mskjax ...``).

A config file ``configs/NAME.py`` is declarative: it defines

* ``get_config(arg=None) -> ml_collections.ConfigDict`` — every value the experiment uses
  (the docstring holds the exact commands). ``arg`` selects a variant, resolved *inside*
  ``get_config`` (big_vision's ``runlocal`` pattern): ``"quick"`` is the < 60 s variant;
  a config parses its ``arg`` with :func:`parse_arg`. ``config.program`` names the
  experiment program, the module ``mskjax.experiments.<program>`` with ``run(config, ctx)``
  (``ctx`` is a :class:`RunContext`); a program never resizes anything itself;
* optionally ``RANGES`` and ``validate(config)`` (declarative checks, see below).

Every run writes ``runs/<name>/<tag>/`` (``name`` is the config file's stem, ``tag``
defaults to a timestamp): ``config.json`` (exactly the resolved config that ran),
``metrics.jsonl`` (appended and flushed as produced), ``results.csv`` and ``results.md``
(the table) and PNG plots. Rerunning with the same ``--tag`` resumes: units of work
already recorded in ``metrics.jsonl`` (see :meth:`RunContext.cached`) are read back
instead of recomputed, so an interrupted run loses nothing it finished; a rerun whose
resolved config differs from the stored ``config.json`` is refused.

**Guarantees.** One run at a time per directory: ``runs/<name>/<tag>/.lock`` holds the
owner's pid; a second run on the same tag is refused with a message, a lock left by a dead
process (also an unreaped zombie, ``State: Z``) is taken over. A tag is a relative name
inside ``--runs-dir`` (absolute paths and ``..`` are refused, :func:`check_tag`); a
damaged ``config.json`` on resume and a config path that is not a ``.py`` file stop with
a message. The config is validated before any work: override types, finite
floats, non-empty tuples, the ranges a config declares in a module-level ``RANGES`` dict
(``{"tol": {"gt": 0, "lt": 1}, "js": {"min_len": 1, "min": 1}}``; keys ``min``, ``max``,
``gt``, ``lt``, ``min_len``, ``choices``; tuple bounds apply to every element), its
optional ``validate(config)`` (raise ``ValueError`` for cross-key rules) and that
``program`` names a module of :mod:`mskjax.experiments`. ``metrics.jsonl``
is one JSON object per newline-terminated line: a last line without its newline (kill,
disk full) is detected, dropped and cut off on resume; every record carries a ``key``
(given, or a hash of its content), so a rerun never appends a record twice. Ctrl-C,
SIGTERM, a full disk or a read-only directory end with one line that says what happened
and the command that resumes.

Command line::

  python -m mskjax.run configs/quickstart.py                   # the full experiment
  python -m mskjax.run configs/quickstart.py:quick j=16 --tag demo   # quick variant + override
  python -m mskjax.run configs/quickstart.py:quick --help-config     # list keys and values

``quick=True`` among the overrides is kept as an alias of ``:quick`` (it selects the
variant before the other overrides are applied; ``quick=False`` selects nothing).
Overrides are type-checked against the resolved value: ``int``, ``float``, ``bool``
(true/false/1/0), ``str``, and tuples/lists as Python literals (``ks=(5,21)``); dotted
keys reach nested ConfigDicts. An unknown key or a bad value stops with a message that
lists the valid keys. In tests and notebooks, :func:`load_config` gives the resolved config
of a file and :func:`mskjax.experiments.get` its program.
"""
from __future__ import annotations

import argparse
import contextlib
import ast
import csv
import datetime as _dt
import errno
import hashlib
import importlib.util
import json
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["RunContext", "load_config", "load_config_module", "parse_arg", "split_config_arg",
           "apply_overrides", "validate_config", "RunLock", "RunLockedError", "main",
           "ConfigError", "check_tag"]


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
  return _get_config(load_config_module(path), path, arg)


def _get_config(module, path, arg):
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


def _quick_alias(arg: str | None, overrides: list[str]):
  """``quick=True`` among the overrides -> the config argument ``quick`` (an alias of ``:quick``)."""
  rest = []
  for item in overrides:
    key, sep, text = item.partition("=")
    if key.strip() != "quick" or not sep:
      rest.append(item)
      continue
    if _parse_value("quick", text, False):
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
    mskjax.run.ConfigError: unknown config argument `fast` in 'fast'; valid: quick (e.g. configs/NAME.py:quick)
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
    out[key] = _parse_value(key, text, spec[key])
  return out


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
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
      node[leaf] = value
  return config


_RANGE_KEYS = {"min", "max", "gt", "lt", "min_len", "choices"}


def _check_range(key, value, rule):
  unknown = set(rule) - _RANGE_KEYS
  if unknown:
    raise ConfigError(f"RANGES[{key!r}] has unknown rule(s) {sorted(unknown)}; allowed: "
                      f"{sorted(_RANGE_KEYS)}.")
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
    mskjax.run.ConfigError: `tol` must be > 0, got -0.1.
  """
  flat = _flat_keys(config)
  get_default = getattr(module, "get_config", None)
  defaults = _flat_keys(get_default()) if callable(get_default) else {}
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
    _check_range(key, flat[key], rule)
  hook = getattr(module, "validate", None)
  if callable(hook):
    try:
      hook(config)
    except ConfigError:
      raise
    except (ValueError, TypeError) as e:
      raise ConfigError(str(e)) from None
  return config


class RunLockedError(RuntimeError):
  """Another live process holds the run directory."""


def _pid_alive(pid: int) -> bool:
  """True while process ``pid`` runs. A zombie (exited, not yet reaped by its parent:
  ``State: Z`` in ``/proc/PID/status``) still answers ``kill(pid, 0)`` but is dead."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by someone else
    pass
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("State:"):
          return line.split()[1:2] not in (["Z"], ["X"])
  except OSError:           # no /proc (macOS) or it vanished meanwhile
    pass
  return True


def check_tag(tag: str, runs_dir: str | os.PathLike = "runs") -> str:
  """A run tag is a relative name inside ``runs_dir/<name>/``: not empty, not absolute, no
  ``.``/``..`` component (``--tag /abs/path`` or ``../x`` would write outside ``--runs-dir``).

  Example:
    >>> check_tag("demo")
    'demo'
    >>> check_tag("../x")
    Traceback (most recent call last):
    ...
    mskjax.run.ConfigError: --tag '../x' would write outside --runs-dir runs: a tag is a plain name such as 'demo' or 'sweep/a' (no absolute path, no '.' or '..'); use --runs-dir to choose where runs go.
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


class RunLock:
  """Exclusive lock on a run directory: ``<dir>/.lock`` created with O_EXCL, holding
  ``pid host``. A lock whose pid is dead on this host is stale and is taken over; a live
  one raises :class:`RunLockedError`. Use as a context manager.
  """

  def __init__(self, out_dir: Path):
    self.path = Path(out_dir) / ".lock"
    self.held = False
    self.took_over: int | None = None

  def acquire(self):
    self.path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        try:
          pid_s, host = (self.path.read_text().split() + ["", ""])[:2]
          pid = int(pid_s)
        except (OSError, ValueError):
          pid, host = None, ""
        if pid is not None and (host != socket.gethostname() or _pid_alive(pid)):
          raise RunLockedError(
              f"{self.path.parent} is in use by another run (pid {pid} on {host}); wait for "
              "it to finish or use another --tag.") from None
        try:   # stale (dead pid or unreadable): take it over
          self.path.unlink()
        except FileNotFoundError:
          pass
        self.took_over = pid
        continue
      with os.fdopen(fd, "w") as f:
        f.write(me)
      self.held = True
      return self
    raise RunLockedError(f"could not take the lock {self.path}; another run keeps taking it.")

  def release(self):
    if self.held:
      try:
        if self.path.read_text().split()[:1] == [str(os.getpid())]:
          self.path.unlink()
      except OSError:
        pass
      self.held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
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
  """What an experiment program's ``run(config, ctx)`` uses to write results.

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
    self.dropped_lines = 0
    if self._metrics_path.exists():
      self._load_metrics()
    self.resumed = len(self._records)
    self.tables: dict[str, list[dict]] = {}
    self.figures: list[Path] = []

  def _load_metrics(self):
    """Read metrics.jsonl; a torn last line (no newline) is dropped and cut off the file."""
    data = self._metrics_path.read_bytes()
    end = len(data)
    if data and not data.endswith(b"\n"):
      end = data.rfind(b"\n") + 1           # keep complete lines only
      self.dropped_lines += 1
      with open(self._metrics_path, "r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    for line in data[:end].decode("utf-8", errors="replace").splitlines():
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:   # a damaged complete line: dropped, its unit recomputed
        self.dropped_lines += 1
        continue
      if isinstance(rec, dict):
        self._records[rec.get("key") or _content_key(rec)] = rec

  # -- results -------------------------------------------------------------------------
  def log_metrics(self, record: dict, key: str | None = None) -> dict:
    """Append one record to ``metrics.jsonl`` (one write of a whole line, then fsync).

    Every record is keyed: ``key`` when given, else ``'auto:'`` + a hash of its content
    (without ``time``). A record whose key is already stored with the same content is not
    written again (reruns never duplicate); a changed one is appended and the later line
    wins on reading. Arrays become lists; non-finite floats are stored *and returned* as
    the strings ``'nan'``, ``'inf'``, ``'-inf'`` (metrics.jsonl stays strict JSON), so a
    fresh and a resumed run see the same record — read such fields back with ``float(...)``.
    """
    rec = _jsonable(dict(record))
    rec.pop("key", None)
    key = _content_key(rec) if key is None else str(key)
    rec["key"] = key
    old = self._records.get(key)
    if old is not None and _strip_time(old) == _strip_time(rec):
      return old
    rec.setdefault("time", time.time())
    line = (json.dumps(rec) + "\n").encode()
    with open(self._metrics_path, "ab") as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
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


def _strip_time(rec: dict) -> dict:
  return {k: v for k, v in rec.items() if k != "time"}


def _content_key(rec: dict) -> str:
  body = json.dumps(_strip_time({k: v for k, v in rec.items() if k != "key"}), sort_keys=True)
  return "auto:" + hashlib.sha1(body.encode()).hexdigest()[:16]


def _config_to_json(config) -> dict:
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return _jsonable(d)


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point (see the module docstring)."""
  os.environ.setdefault("MPLBACKEND", "Agg")
  parser = argparse.ArgumentParser(
      prog="mskjax", description="Run an mskjax experiment config.",
      epilog="example: python -m mskjax.run configs/quickstart.py:quick --tag demo "
             "(quick=True is an alias of :quick)")
  parser.add_argument("config", help="path to a config file with an optional argument, e.g. "
                      "configs/quickstart.py or configs/quickstart.py:quick")
  parser.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
  parser.add_argument("--tag", default=None, help="run directory name (default: timestamp); "
                      "reuse a tag to resume an interrupted run")
  parser.add_argument("--runs-dir", default="runs", help="where run directories go")
  parser.add_argument("--help-config", action="store_true", help="list keys and values")
  parser.add_argument("--no-progress", action="store_true", help="disable progress bars")
  args = parser.parse_args(argv)
  # Experiments claim float64 accuracy: the runner (not the library import) turns it on.
  import jax
  jax.config.update("jax_enable_x64", True)

  try:
    path, config_arg = split_config_arg(args.config)
    config_arg, overrides = _quick_alias(config_arg, list(args.overrides))
    module = load_config_module(path)
    config = _get_config(module, path, config_arg)
    if args.help_config:
      for k, v in sorted(_flat_keys(config).items()):
        print(f"{k} = {v!r}")
      return 0
    apply_overrides(config, overrides)
    validate_config(config, module)
    from mskjax import experiments
    try:
      program = experiments.get(config.program)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    if args.tag is not None:
      check_tag(args.tag, args.runs_dir)
  except (ConfigError, FileNotFoundError) as e:
    print(f"mskjax.run: error: {e}", file=sys.stderr)
    return 2

  name = path.stem
  tag = args.tag or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
  out_dir = Path(args.runs_dir) / name / tag
  resume = ("python -m mskjax.run " + " ".join([args.config, *args.overrides])
            + f" --tag {tag}" + (f" --runs-dir {args.runs_dir}" if args.runs_dir != "runs" else ""))
  lock = RunLock(out_dir)
  old_term = signal.getsignal(signal.SIGTERM)

  def _term(signum, frame):
    raise KeyboardInterrupt

  try:
    signal.signal(signal.SIGTERM, _term)
  except ValueError:   # not the main thread
    old_term = None
  ctx = None
  try:
    lock.acquire()
    if lock.took_over is not None:
      print(f"note: took over a stale lock of dead process {lock.took_over} in {out_dir}",
            flush=True)
    cfg_json = _config_to_json(config)
    cfg_path = out_dir / "config.json"
    if cfg_path.exists():
      try:
        old = json.loads(cfg_path.read_text())
        if not isinstance(old, dict):
          raise ValueError(f"it holds a JSON {type(old).__name__}, not an object")
      except (ValueError, UnicodeDecodeError) as e:
        print(f"mskjax.run: error: {cfg_path} is damaged ({type(e).__name__}: {e}), so this "
              "run cannot be checked against the config it was started with. Restore it, or "
              f"delete it to resume {out_dir} with the current config, or use another --tag.",
              file=sys.stderr)
        return 2
      if old != cfg_json:
        diff = sorted(k for k in set(old) | set(cfg_json) if old.get(k) != cfg_json.get(k))
        print(f"mskjax.run: error: {out_dir} holds a run with a different config (keys "
              f"{diff}); use another --tag to start a new run.", file=sys.stderr)
        return 2
    ctx = RunContext(out_dir, config, show_progress=not args.no_progress)
    if ctx.dropped_lines:
      print(f"note: dropped {ctx.dropped_lines} incomplete line(s) of "
            f"{out_dir / 'metrics.jsonl'} (an interrupted write); those units are recomputed",
            flush=True)
    tmp = cfg_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, cfg_path)
    if ctx.resumed:
      print(f"resuming {out_dir}: {ctx.resumed} finished records reused", flush=True)
    else:
      print(f"running {name} -> {out_dir}", flush=True)
    t0 = time.time()
    program.run(config, ctx)
    for table, rows in ctx.tables.items():
      print(f"\n{table} ({out_dir / (table + '.csv')}):\n")
      print((out_dir / f"{table}.md").read_text())
    for fig in ctx.figures:
      print(f"plot: {fig}")
    print(f"done in {time.time() - t0:.1f} s: {out_dir}", flush=True)
    return 0
  except RunLockedError as e:
    print(f"mskjax.run: error: {e}", file=sys.stderr)
    return 3
  except KeyboardInterrupt:
    saved = len(ctx._records) if ctx is not None else 0
    print(f"\nmskjax.run: interrupted; {saved} finished record(s) are saved in {out_dir}. "
          f"Resume with: {resume}", file=sys.stderr)
    return 130
  except OSError as e:
    if e.errno == errno.ENOSPC:
      why = "the disk is full"
      fix = "free some space, then resume with: " + resume
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
      why = f"cannot write there ({os.strerror(e.errno)})"
      fix = ("pass a writable --runs-dir (or fix the permissions), then run: " + resume)
    else:
      raise
    print(f"mskjax.run: error: {why}: {getattr(e, 'filename', None) or out_dir}; finished "
          f"records are kept in metrics.jsonl. {fix}", file=sys.stderr)
    return 1
  finally:
    lock.release()
    if old_term is not None:
      signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
  sys.exit(main())
