"""Learning-rate grids that grow past an end holding the best value (shared by the programs
and the benchmarks that tune baselines: "the best inside its grid")."""
from __future__ import annotations

import numpy as np


def grid_neighbour(edge: float, inner: float, direction: int) -> float:
  """The next grid value past ``edge`` (``direction`` −1: below, +1: above), continuing the
  grid's spacing: the 1-3-10 lattice where the two end values are ≈3 apart (0.03 → 0.01,
  0.3 → 1), else the same ratio (factors of 2 of the rule: 4 → 8), 3 significant digits.

  >>> grid_neighbour(0.03, 0.01, +1), grid_neighbour(4.0, 2.0, +1)
  (0.1, 8.0)
  """
  ratio = max(edge, inner) / min(edge, inner)
  if 2.5 <= ratio <= 3.5:
    e = np.floor(np.log10(edge) + 1e-9)
    lead = edge / 10 ** e                     # 1 or 3 on the lattice
    if direction < 0:
      v = (1.0 if lead > 2 else 0.3) * 10 ** e
    else:
      v = (10.0 if lead > 2 else 3.0) * 10 ** e
  else:
    v = edge * ratio ** direction
  return float(f"{v:.3g}")


def tune_grid(try_lr, grid, widen, neighbour=grid_neighbour, log=print, name=""):
  """The best value of a learning-rate grid, the grid grown past an end that holds the best.

  Every value of ``grid`` is tried; while the best (lowest score; the smallest value on
  ties) is the smallest or the largest value tried, the next value past it,
  ``neighbour(edge, inner, ±1)``, is tried, at most ``widen`` per end, and never above a
  value that diverged.

  Args:
    try_lr: ``lr -> (score, diverged)``; scores compare with ``<`` (lower is better).
    grid: the starting values.
    widen: most values added past each end (0: the grid as given).
    neighbour: ``(edge, inner, direction) -> next value`` (default :func:`grid_neighbour`).
    log: progress printer.
    name: the method, for the log.

  Returns:
    The best value tried.

  >>> tune_grid(lambda lr: (abs(lr - 0.9), False), (0.01, 0.03), 3, log=lambda s: None)
  1.0
  """
  recs = {float(lr): try_lr(float(lr)) for lr in grid}
  added = {-1: 0, 1: 0}
  while True:
    vs = sorted(recs)
    top = min(vs, key=lambda v: recs[v][0])
    if len(vs) < 2:
      return top
    if top == vs[0] and added[-1] < widen:
      side, nxt = -1, neighbour(vs[0], vs[1], -1)
    elif top == vs[-1] and added[1] < widen and not recs[top][1]:
      side, nxt = 1, neighbour(vs[-1], vs[-2], +1)
    else:
      return top
    added[side] += 1
    log(f"{name}: best lr {top:.3g} at the grid's {'low' if side < 0 else 'high'} end: "
        f"trying {nxt:g}")
    recs[nxt] = try_lr(nxt)
