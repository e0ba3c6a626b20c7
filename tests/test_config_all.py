"""Every config in configs/ is declarative (issue 12): ``get_config(arg)`` resolves its
quick variant itself, names an existing experiment program, passes its own validation in
both variants, and no program reads a ``quick`` flag (sizes come from the config only)."""
import re
from pathlib import Path

import pytest

from mskjax import experiments
from mskjax import _config
from mskjax import run as runner

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.py"))


def test_every_program_has_a_config():
  assert CONFIGS, "no configs found"
  programs = {runner.load_config(ROOT / "configs" / c).program for c in CONFIGS}
  assert programs == set(experiments.names())


@pytest.mark.parametrize("name", CONFIGS)
def test_config_resolves_quick_inside_and_names_its_program(name):
  path = ROOT / "configs" / name
  full, quick = runner.load_config(path), runner.load_config(f"{path}:quick")
  assert runner.load_config(path, "quick").to_dict() == quick.to_dict()
  assert quick.to_dict() != full.to_dict(), "the quick variant changes nothing"
  assert set(quick.keys()) == set(full.keys()), "both variants have the same keys"
  assert "quick" not in full, "`quick` is an argument of get_config, not a config value"
  assert full.program == quick.program
  assert callable(experiments.get(full.program).run)
  module = _config.load_config_module(path)
  assert not callable(getattr(module, "run", None)), "a config only configures"
  for cfg in (full, quick):
    _config.validate_config(cfg, module)


@pytest.mark.parametrize("program", experiments.names())
def test_programs_never_read_a_quick_flag(program):
  src = (ROOT / "mskjax" / "experiments" / f"{program}.py").read_text()
  code = "\n".join(l.split("#")[0] for l in src.splitlines())
  assert not re.search(r"""\.quick\b|\[["']quick["']\]|getattr\([^)]*["']quick["']""", code)


def test_help_config_prints_the_resolved_quick_values(capsys):
  assert runner.main(["configs/quickstart.py:quick", "--help-config"]) == 0
  out = capsys.readouterr().out
  want = runner.load_config("configs/quickstart.py:quick")
  assert f"width = {want.width!r}" in out and f"js = {want.js!r}" in out
