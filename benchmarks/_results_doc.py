"""The one writer of a benchmark's generated part of ``docs/results.md``."""
from __future__ import annotations

import pathlib


def markers(name: str) -> tuple[str, str]:
  """The HTML comments that delimit benchmark ``name``'s generated block."""
  return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def write_block(doc: pathlib.Path, section: str, name: str, text: str) -> None:
  """Put ``text`` between ``name``'s markers in ``doc``: a rerun replaces only that block
  (the hand-written reading around it stays); if the markers are missing, append
  ``section`` (a ``## `` heading) with the block at the end."""
  begin, end = markers(name)
  doc.parent.mkdir(parents=True, exist_ok=True)
  old = doc.read_text() if doc.exists() else "# Results\n"
  block = f"{begin}\n{text.rstrip()}\n{end}"
  i, j = old.find(begin), old.find(end)
  if i >= 0 and j > i:
    new = old[:i] + block + old[j + len(end):]
  else:
    new = old.rstrip("\n") + f"\n\n{section}\n\n{block}\n"
  doc.write_text(new)
