"""The run directory: its lock and the result store of a run (internal to the runner).

Every run writes ``runs/<name>/<tag>/``: ``config.json`` (exactly the resolved config
that ran, written by :mod:`mskjax.run`), ``metrics.jsonl`` (appended and flushed as
produced, :meth:`RunContext.log_metrics`), ``results.csv`` and ``results.md`` (the table,
:meth:`RunContext.write_table`) and PNG plots (:meth:`RunContext.savefig`). Rerunning
with the same tag resumes: units of work already recorded in ``metrics.jsonl``
(:meth:`RunContext.cached`) are read back instead of recomputed.

**Guarantees.** One run at a time per directory: ``<dir>/.lock`` holds the owner's pid
(:class:`RunLock`); a second run on the same directory is refused with
:class:`RunLockedError`, a lock left by a dead process (also an unreaped zombie, ``State:
Z``) is taken over. ``metrics.jsonl`` is one JSON object per newline-terminated line: a
last line without its newline (kill, disk full) is detected, dropped and cut off on
resume; every record carries a ``key`` (given, or a hash of its content), so a rerun never
appends a record twice.

The public spelling of :class:`RunContext` (what a program's ``run(config, ctx)``
receives) is :class:`mskjax.run.RunContext`.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

__all__ = ["RunLockedError", "pid_alive", "RunLock", "jsonable", "RunContext", "strip_time",
           "content_key", "config_to_json"]


class RunLockedError(RuntimeError):
  """Another live process holds the run directory."""


def pid_alive(pid: int) -> bool:
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
        if pid is not None and (host != socket.gethostname() or pid_alive(pid)):
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



def jsonable(x):
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if hasattr(x, "tolist"):
    return jsonable(x.tolist())
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
        self._records[rec.get("key") or content_key(rec)] = rec

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
    rec = jsonable(dict(record))
    rec.pop("key", None)
    key = content_key(rec) if key is None else str(key)
    rec["key"] = key
    old = self._records.get(key)
    if old is not None and strip_time(old) == strip_time(rec):
      return old
    rec.setdefault("time", time.time())
    line = (json.dumps(rec) + "\n").encode()
    with open(self._metrics_path, "ab") as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
    self._records[key] = rec
    return rec

  @property
  def num_records(self) -> int:
    """Records stored so far (by this run and the interrupted runs it resumes)."""
    return len(self._records)

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


def strip_time(rec: dict) -> dict:
  return {k: v for k, v in rec.items() if k != "time"}


def content_key(rec: dict) -> str:
  body = json.dumps(strip_time({k: v for k, v in rec.items() if k != "key"}), sort_keys=True)
  return "auto:" + hashlib.sha1(body.encode()).hexdigest()[:16]


def config_to_json(config) -> dict:
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return jsonable(d)
