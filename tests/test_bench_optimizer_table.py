"""The optimizer table's grid widening step (pure arithmetic; the table itself is smoke-run
by ``make bench-quick``)."""
import pytest

from mskjax.experiments._grid import grid_neighbour


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


def test_table_merges_result_files_a_later_row_replacing_the_same_row(tmp_path, capsys):
  """``--table``: the doc's tables from several runs; a rerun of one row replaces it (rows
  in the schema of a committed result file)."""
  import copy
  import json
  from pathlib import Path

  from benchmarks.bench_optimizer_table import main

  raw = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
  rows = json.loads((raw / "optimizer_table_20261207T0655Z.json").read_text())["rows"][:2]
  again = copy.deepcopy(rows[1])
  again["target"] = rows[1]["target"] * 0.5
  a, b = tmp_path / "a.json", tmp_path / "b.json"
  a.write_text(json.dumps({"rows": rows}))
  b.write_text(json.dumps({"rows": [again]}))
  merged = main(["--table", str(a), str(b)])
  assert [r["row"] for r in merged] == [rows[0]["row"], rows[1]["row"]]
  assert merged[1]["target"] == again["target"] and merged[0] == rows[0]
  out = capsys.readouterr().out
  assert f"target test acc {again['target']:.4g}" in out        # the rerun's row is printed
  assert f"target test acc {rows[1]['target']:.4g}" not in out   # the replaced one is not
