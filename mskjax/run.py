"""Experiment runner: ``python -m mskjax.run configs/NAME.py[:ARG] key=value ...`` (or ``mskjax ...``).

A config file ``configs/NAME.py`` defines ``get_config(arg=None)`` (every value the
experiment uses; ``arg`` selects a variant such as ``quick``, the < 60 s one) and names its
experiment program in ``config.program`` (the module ``mskjax.experiments.<program>``
with ``run(config, ctx)``; ``ctx`` is a :class:`RunContext`). The config format, the
overrides and the validation rules are described in :mod:`mskjax._config`; the run
directory, its lock and the result store in :mod:`mskjax._store`.

Every run writes ``runs/<name>/<tag>/`` (``name`` is the config file's stem, ``tag``
defaults to a timestamp): ``config.json`` (exactly the resolved config that ran),
``metrics.jsonl``, ``results.csv``/``results.md`` and PNG plots. Rerunning with the same
``--tag`` resumes: finished units are read back instead of recomputed; a rerun whose
resolved config differs from the stored ``config.json`` is refused, and so is a damaged
``config.json``. A tag is a relative name inside ``--runs-dir`` (absolute paths and ``..``
are refused). The config is validated and its program found before any work. Ctrl-C,
SIGTERM, a full disk or a read-only directory end with one line that says what happened
and the command that resumes.

Command line::

  python -m mskjax.run configs/quickstart.py                   # the full experiment
  python -m mskjax.run configs/quickstart.py:quick j=16 --tag demo   # quick variant + override
  python -m mskjax.run configs/quickstart.py:quick --help-config     # list keys and values

``quick=True`` among the overrides is kept as an alias of ``:quick`` (it selects the
variant before the other overrides are applied; ``quick=False`` selects nothing).
An unknown key or a bad value stops with a message that lists the valid keys. In tests and
notebooks, :func:`load_config` gives the resolved config of a file and
:func:`mskjax.experiments.get` its program.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

from mskjax._config import (ConfigError, apply_overrides, check_tag, flat_keys,
                            load_config, load_config_module, quick_alias, resolve_config,
                            split_config_arg, validate_config)
from mskjax._store import RunContext, RunLock, RunLockedError, config_to_json

__all__ = ["main", "load_config", "RunContext", "ConfigError"]


def _parser() -> argparse.ArgumentParser:
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
  return parser


def _prepare(args):
  """``(path, config, program)``: the config resolved, overridden and validated and its
  program found, before any work; ``(path, config, None)`` for ``--help-config``.
  Raises :class:`ConfigError` or ``FileNotFoundError``."""
  path, config_arg = split_config_arg(args.config)
  config_arg, overrides = quick_alias(config_arg, list(args.overrides))
  module = load_config_module(path)
  config = resolve_config(module, path, config_arg)
  if args.help_config:
    return path, config, None
  apply_overrides(config, overrides)
  validate_config(config, module)
  from mskjax import experiments
  try:
    program = experiments.get(config.program)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if args.tag is not None:
    check_tag(args.tag, args.runs_dir)
  return path, config, program


def _stored_config_error(cfg_path: Path, cfg_json: dict, out_dir: Path) -> str | None:
  """Why a resumed run may not go on: its ``config.json`` is damaged or differs."""
  if not cfg_path.exists():
    return None
  try:
    old = json.loads(cfg_path.read_text())
    if not isinstance(old, dict):
      raise ValueError(f"it holds a JSON {type(old).__name__}, not an object")
  except (ValueError, UnicodeDecodeError) as e:
    return (f"{cfg_path} is damaged ({type(e).__name__}: {e}), so this run cannot be checked "
            "against the config it was started with. Restore it, or delete it to resume "
            f"{out_dir} with the current config, or use another --tag.")
  if old != cfg_json:
    diff = sorted(k for k in set(old) | set(cfg_json) if old.get(k) != cfg_json.get(k))
    return (f"{out_dir} holds a run with a different config (keys {diff}); use another "
            "--tag to start a new run.")
  return None


def _open_run(config, name: str, out_dir: Path, lock: RunLock,
              show_progress: bool) -> RunContext | None:
  """Under the held ``lock``: check a stored ``config.json`` against this config, open the
  result store and write ``config.json``. None (after the error line) when the stored
  config is damaged or differs."""
  if lock.took_over is not None:
    print(f"note: took over a stale lock of dead process {lock.took_over} in {out_dir}",
          flush=True)
  cfg_json = config_to_json(config)
  cfg_path = out_dir / "config.json"
  why = _stored_config_error(cfg_path, cfg_json, out_dir)
  if why is not None:
    print(f"mskjax.run: error: {why}", file=sys.stderr)
    return None
  ctx = RunContext(out_dir, config, show_progress=show_progress)
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
  return ctx


def _execute(program, config, ctx: RunContext, out_dir: Path):
  """Run the program, then print its tables and plots."""
  t0 = time.time()
  program.run(config, ctx)
  for table in ctx.tables:
    print(f"\n{table} ({out_dir / (table + '.csv')}):\n")
    print((out_dir / f"{table}.md").read_text())
  for fig in ctx.figures:
    print(f"plot: {fig}")
  print(f"done in {time.time() - t0:.1f} s: {out_dir}", flush=True)


def _os_error_message(e: OSError, out_dir: Path, resume: str) -> str | None:
  """The one line for a full disk or an unwritable directory (None: not one of those)."""
  if e.errno == errno.ENOSPC:
    why, fix = "the disk is full", "free some space, then resume with: " + resume
  elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    why = f"cannot write there ({os.strerror(e.errno)})"
    fix = "pass a writable --runs-dir (or fix the permissions), then run: " + resume
  else:
    return None
  return (f"mskjax.run: error: {why}: {getattr(e, 'filename', None) or out_dir}; finished "
          f"records are kept in metrics.jsonl. {fix}")


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point (see the module docstring)."""
  os.environ.setdefault("MPLBACKEND", "Agg")
  args = _parser().parse_args(argv)
  # Experiments claim float64 accuracy: the runner (not the library import) turns it on.
  import jax
  jax.config.update("jax_enable_x64", True)

  try:
    path, config, program = _prepare(args)
  except (ConfigError, FileNotFoundError) as e:
    print(f"mskjax.run: error: {e}", file=sys.stderr)
    return 2
  if args.help_config:
    for k, v in sorted(flat_keys(config).items()):
      print(f"{k} = {v!r}")
    return 0

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
    ctx = _open_run(config, name, out_dir, lock, not args.no_progress)
    if ctx is None:
      return 2
    _execute(program, config, ctx, out_dir)
    return 0
  except RunLockedError as e:
    print(f"mskjax.run: error: {e}", file=sys.stderr)
    return 3
  except KeyboardInterrupt:
    saved = ctx.num_records if ctx is not None else 0
    print(f"\nmskjax.run: interrupted; {saved} finished record(s) are saved in {out_dir}. "
          f"Resume with: {resume}", file=sys.stderr)
    return 130
  except OSError as e:
    message = _os_error_message(e, out_dir, resume)
    if message is None:
      raise
    print(message, file=sys.stderr)
    return 1
  finally:
    lock.release()
    if old_term is not None:
      signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
  sys.exit(main())
