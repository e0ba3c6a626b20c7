"""The optimizer table's grid widening step (pure arithmetic; the table itself is smoke-run
by ``make bench-quick``)."""
import pytest

from benchmarks.bench_optimizer_table import grid_neighbour


@pytest.mark.parametrize("edge,inner,direction,expect", [
    (0.03, 0.1, -1, 0.01),     # 1-3-10 lattice, downwards
    (0.01, 0.03, -1, 0.003),
    (0.3, 0.1, +1, 1.0),       # upwards
    (3e-3, 1e-3, +1, 1e-2),
    (4.0, 2.0, +1, 8.0),       # factors of 2 of the rule keep their ratio
    (0.5, 1.0, -1, 0.25),
    (0.045, 0.03, +1, 0.0675), # a finer grid keeps its own ratio (1.5)
])
def test_grid_neighbour_continues_the_spacing(edge, inner, direction, expect):
  assert grid_neighbour(edge, inner, direction) == pytest.approx(expect, rel=1e-12)
