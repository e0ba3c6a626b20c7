"""Importing mskjax (and every submodule) changes no JAX setting (docs/pitfalls.md#global-state).

Checked in a fresh interpreter: conftest enables float64 for the test process itself.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CODE = """
import jax
before = {k: repr(v) for k, v in jax.config.values.items()}
import mskjax
from mskjax import (data, diagnostics, kernels, modifiers, msk, nets, optim, predict,
                    run, spectrum, train)
from mskjax import experiments
programs = [experiments.get(name) for name in experiments.names()]   # every program module
after = {k: repr(v) for k, v in jax.config.values.items()}
changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
print("changed", changed)
print("x64", jax.config.jax_enable_x64, jax.numpy.ones(1).dtype)
"""


def test_import_changes_no_jax_setting():
  env = dict(os.environ)
  env.pop("JAX_ENABLE_X64", None)
  out = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = dict(l.split(" ", 1) for l in out.stdout.strip().splitlines())
  assert lines["changed"] == "[]", lines["changed"]
  assert lines["x64"] == "False float32"
