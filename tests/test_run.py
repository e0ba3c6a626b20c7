"""The experiment runner: overrides, errors, outputs, and resume after a kill."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ml_collections
import pytest

from mskjax import run as runner

ROOT = Path(__file__).resolve().parents[1]

TOY_CONFIG = textwrap.dedent('''
    """Toy config: `units` pieces of deterministic work, each sleeping `sleep` seconds."""
    import time
    import ml_collections

    def get_config():
      c = ml_collections.ConfigDict()
      c.quick = False
      c.units = 6
      c.sleep = 0.0
      c.scale = 1.5
      c.name = "toy"
      c.ks = (1, 2)
      return c

    def run(config, ctx):
      rows = []
      for i in ctx.progress(range(config.units), desc="units"):
        def compute():
          time.sleep(config.sleep)
          return dict(i=i, value=config.scale * i * i + sum(config.ks))
        rows.append(ctx.cached(f"unit={i}", compute))
      ctx.write_table([dict(i=r["i"], value=r["value"]) for r in rows])
    ''')


@pytest.fixture
def toy(tmp_path):
  path = tmp_path / "toy.py"
  path.write_text(TOY_CONFIG)
  return path


def _cli(args, cwd, timeout=120):
  env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
  return subprocess.run([sys.executable, "-m", "mskjax.run", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("override,expected", [
    ("units=3", 3), ("scale=2", 2.0), ("quick=true", True), ("quick=0", False),
    ("ks=(4,5,6)", (4, 5, 6)), ("name=abc", "abc"),
])
def test_override_types(toy, override, expected):
  cfg = runner.load_config_module(toy).get_config()
  key = override.split("=")[0]
  assert runner.apply_overrides(cfg, [override])[key] == expected


@pytest.mark.parametrize("override,match", [
    ("unit=3", "unknown config key `unit`; valid keys: ks, name, quick, scale, sleep, units"),
    ("units=3.5", "bad value for `units`"),
    ("quick=maybe", "true/false"),
    ("scale=nan", "finite"),
    ("ks=[1.5]", "elements must be int"),
    ("units", "key=value"),
])
def test_override_errors(toy, override, match):
  cfg = runner.load_config_module(toy).get_config()
  with pytest.raises(runner.ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")):
    runner.apply_overrides(cfg, [override])


def test_cli_writes_outputs_and_rejects_bad_keys(toy, tmp_path):
  out = _cli([str(toy), "units=3", "--tag", "a", "--runs-dir", str(tmp_path / "runs"),
              "--no-progress"], cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  run_dir = tmp_path / "runs" / "toy" / "a"
  assert json.loads((run_dir / "config.json").read_text())["units"] == 3
  assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
  assert "| i | value |" in out.stdout and (run_dir / "results.csv").exists()
  bad = _cli([str(toy), "unitz=3", "--runs-dir", str(tmp_path / "runs")], cwd=tmp_path)
  assert bad.returncode == 2 and "valid keys" in bad.stderr
  # Same tag, different config: refuse instead of mixing results.
  clash = _cli([str(toy), "units=4", "--tag", "a", "--runs-dir", str(tmp_path / "runs")],
               cwd=tmp_path)
  assert clash.returncode == 2 and "different config" in clash.stderr


def test_resume_after_kill_matches_uninterrupted_run(toy, tmp_path):
  runs = tmp_path / "runs"
  env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
  cmd = [sys.executable, "-m", "mskjax.run", str(toy), "sleep=0.4", "--runs-dir", str(runs),
         "--no-progress"]
  proc = subprocess.Popen(cmd + ["--tag", "killed"], cwd=tmp_path, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = runs / "toy" / "killed" / "metrics.jsonl"
  deadline = time.time() + 60
  while time.time() < deadline and (not metrics.exists() or
                                    len(metrics.read_text().splitlines()) < 2):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done_before = len(metrics.read_text().splitlines())
  assert 2 <= done_before < 6, "the kill should land mid-way"
  resumed = _cli(cmd[3:] + ["--tag", "killed"], cwd=tmp_path)
  assert resumed.returncode == 0 and "resuming" in resumed.stdout
  full = _cli(cmd[3:] + ["--tag", "full"], cwd=tmp_path)
  assert full.returncode == 0
  read = lambda tag: list(csv.reader(open(runs / "toy" / tag / "results.csv")))
  assert read("killed") == read("full")
  # Nothing finished before the kill was recomputed: 6 unit records, no duplicates.
  keys = [json.loads(l)["key"] for l in metrics.read_text().splitlines()]
  assert sorted(keys) == sorted(set(keys)) and len(keys) == 6
