"""The project's own documentation is self-contained and its anchors resolve.

* No tracked file outside ``docs/`` cites a design or brief document that is not part of
  the repository (``DESIGN.md``, ``BRIEF.md``, or the short form ``DESIGN §``): the
  mathematics users need lives in ``docs/theory.md`` and ``docs/pitfalls.md``.
* Every ``docs/NAME.md#anchor`` cited anywhere in the repository names an existing file
  and a heading of it (GitHub's slug rule), and the relative ``NAME.md#anchor`` links
  inside ``docs/`` resolve the same way.
"""
from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FORBIDDEN = re.compile(r"DESIGN\.md|BRIEF\.md|DESIGN\s*§")
CITATION = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)#([^\s)\]`'\",;]+)")
LOCAL_LINK = re.compile(r"\]\(([A-Za-z0-9_.-]+\.md)#([^\s)]+)\)")
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()


def tracked_files() -> list[str]:
  try:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout (git ls-files failed)")
  return [p for p in out.stdout.decode().split("\0") if p]


def read_text(rel: str) -> str | None:
  path = ROOT / rel
  if not path.is_file():                 # deleted in the working tree, not yet committed
    return None
  data = path.read_bytes()
  if b"\0" in data[:4096]:               # binary (png, ...)
    return None
  return data.decode("utf-8", errors="replace")


def github_slug(heading: str) -> str:
  """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces -> '-'.

  >>> github_slug("MSK anywhere (Nystrom extension)")
  'msk-anywhere-nystrom-extension'
  >>> github_slug("Convolutions inside lax loops on XLA:CPU")
  'convolutions-inside-lax-loops-on-xlacpu'
  """
  text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
  kept = [ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN"]
  return "".join(kept).replace(" ", "-")


def anchors(md: Path) -> set[str]:
  """Every heading anchor of a markdown file (duplicates get -1, -2, ... as on GitHub)."""
  seen: dict[str, int] = {}
  out = set()
  in_code = False
  for line in md.read_text(encoding="utf-8").splitlines():
    if line.lstrip().startswith("```"):
      in_code = not in_code
      continue
    m = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
    if m:
      slug = github_slug(m.group(1))
      n = seen.get(slug, 0)
      seen[slug] = n + 1
      out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def test_slug_rule_examples():
  # Independent examples of GitHub's rule (what github.com renders for these headings).
  assert github_slug("The preconditioner P (parameter space)") == \
      "the-preconditioner-p-parameter-space"
  assert github_slug("Function space is stable, parameter space is not") == \
      "function-space-is-stable-parameter-space-is-not"
  assert github_slug("Loss curvature: the Gauss-Newton kernel") == \
      "loss-curvature-the-gauss-newton-kernel"
  assert github_slug("Minibatch `S_B`") == "minibatch-s_b"


def test_no_citation_of_documents_outside_the_repository():
  offenders = []
  for rel in tracked_files():
    if rel.startswith("docs/") or rel == THIS_FILE:
      continue
    text = read_text(rel)
    if text is None:
      continue
    for i, line in enumerate(text.splitlines(), 1):
      if FORBIDDEN.search(line):
        offenders.append(f"{rel}:{i}: {line.strip()[:100]}")
  assert not offenders, (
      "these lines cite a document that is not in the repository; cite the section of "
      "docs/theory.md or docs/pitfalls.md instead (docs/NAME.md#anchor):\n"
      + "\n".join(offenders))


def test_docs_pages_exist():
  for name in ("theory.md", "pitfalls.md"):
    assert (DOCS / name).is_file(), f"docs/{name} is missing"
    assert anchors(DOCS / name), f"docs/{name} has no headings"


def test_every_docs_anchor_cited_in_the_repository_exists():
  cache: dict[str, set[str] | None] = {}
  broken = []
  for rel in tracked_files():
    if rel == THIS_FILE:
      continue
    text = read_text(rel)
    if text is None:
      continue
    found = [(m.group(1), m.group(2)) for m in CITATION.finditer(text)]
    if rel.startswith("docs/") and rel.endswith(".md"):
      found += [(m.group(1), m.group(2)) for m in LOCAL_LINK.finditer(text)]
    for name, anchor in found:
      anchor = anchor.rstrip(".:")
      if name not in cache:
        cache[name] = anchors(DOCS / name) if (DOCS / name).is_file() else None
      if cache[name] is None:
        broken.append(f"{rel}: docs/{name} does not exist")
      elif anchor not in cache[name]:
        broken.append(f"{rel}: docs/{name}#{anchor} is not a heading of docs/{name} "
                      f"(headings: {', '.join(sorted(cache[name]))})")
  assert not broken, "broken documentation anchors:\n" + "\n".join(broken)


MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_markdown_link_resolves():
  """Every relative ``[text](path#anchor)`` in a tracked .md file (outside code) names an
  existing file, and an existing heading when it carries an anchor into a .md file."""
  cache: dict[Path, set[str]] = {}
  broken = []
  for rel in tracked_files():
    if not rel.endswith(".md") or read_text(rel) is None:
      continue
    md = ROOT / rel
    in_code = False
    for i, line in enumerate(read_text(rel).splitlines(), 1):
      if line.lstrip().startswith("```"):
        in_code = not in_code
        continue
      if in_code:
        continue
      for m in MD_LINK.finditer(re.sub(r"`[^`]*`", "", line)):
        target = m.group(1)
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target):      # http:, https:, mailto:
          continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
          broken.append(f"{rel}:{i}: {target} (no such file)")
        elif anchor and dest.suffix == ".md":
          if dest not in cache:
            cache[dest] = anchors(dest)
          if anchor not in cache[dest]:
            broken.append(f"{rel}:{i}: {target} (no heading with that anchor)")
  assert not broken, "broken relative links in the markdown files:\n" + "\n".join(broken)


def test_results_index_lists_every_kept_raw_file_and_only_those():
  """benchmarks/results/INDEX.md maps each kept raw file to the table it backs: a rerun that
  replaces a table must also replace its files and rows (no orphan, no dangling row)."""
  d = ROOT / "benchmarks" / "results"
  tracked = subprocess.run(["git", "ls-files", "benchmarks/results"], cwd=ROOT,
                           capture_output=True, text=True)
  if tracked.returncode != 0 or not tracked.stdout.strip():
    pytest.skip("not a git checkout")
  files = {Path(p).name for p in tracked.stdout.split()} - {"INDEX.md"}
  listed = set(re.findall(r"^\| `([^`]+)` \|", (d / "INDEX.md").read_text(), re.M))
  assert not files - listed, f"raw files missing from INDEX.md: {sorted(files - listed)}"
  assert not listed - files, f"INDEX.md rows without a file: {sorted(listed - files)}"
