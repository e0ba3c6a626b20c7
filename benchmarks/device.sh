#!/usr/bin/env bash
# One-command accelerator benchmark (NOT used by CI): float32 MNIST-1D comparison (MLP and
# CNN, b = 128 / 512 / full, tuned SGD+momentum / Adam / MSK-PGD), per-step costs and the
# top-k eigen-solver timing, printed as one table (see benchmarks/device.py).
#   benchmarks/device.sh                 # full run on the first accelerator jax sees
#   benchmarks/device.sh --quick         # smoke run (< 1 min on a CPU)
#   PY=.venv/bin/python benchmarks/device.sh --runs-dir /tmp/dev
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python}"
"$PY" -c "import jax; print('jax devices:', jax.devices())"
exec "$PY" -m benchmarks.device "$@"
