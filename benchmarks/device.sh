#!/usr/bin/env bash
# One-command accelerator benchmark (NOT used by CI): float32 MNIST-1D comparison (MLP and
# CNN, b = 128 / 512 / full, tuned SGD+momentum / Adam / MSK-PGD), per-step costs and the
# top-k eigen-solver timing, printed as one table (see benchmarks/device.py); then
#   * train.fit (compiled / Python-dispatched / auto) against a hand-written Python loop of
#     the same jitted step, MLP and CNN at b = 32 / 128 / 512 / full, plus one CNN Jacobian
#     product against a training step (benchmarks/bench_loop.py) — is `loop='auto'` within
#     1.2x of the faster loop on this device?
#   * the analytic kernel evaluation and top-k end to end (benchmarks/bench_kernel_eval.py);
#   * the directions build (benchmarks/bench_directions.py), when present;
#   * infinite-width predictions at scale (benchmarks/bench_kernel_solve.py): the
#     matrix-free solver (t = inf to a 1e-3 residual, and early-stopped finite t) and
#     unpreconditioned CG at n = 100k MNIST-1D and n = 10^6 (ten jittered copies of the 100k
#     training sequences: a timing set), raw rows in
#     benchmarks/results/kernel_solve_device.jsonl (--quick: n = 1000 on the small set);
#   * steps to a target against the batch size (benchmarks/bench_batch_sweep.py): msk_sgd
#     against SGD-m / Adam tuned per batch size, b = 128 → full, seeds 0-2, rows in
#     benchmarks/results/batch_sweep_device.jsonl (resumable; --quick: its smoke run).
#   benchmarks/device.sh                 # full run on the first accelerator jax sees
#   benchmarks/device.sh --quick         # smoke run (minutes on a CPU)
#   PY=.venv/bin/python benchmarks/device.sh --runs-dir /tmp/dev
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python}"
QUICK=()
for a in "$@"; do [[ "$a" == "--quick" ]] && QUICK=(--quick); done
"$PY" -c "import jax; print('jax devices:', jax.devices())"
"$PY" -m benchmarks.device "$@"
echo; echo "## train.fit vs a Python loop (benchmarks/bench_loop.py)"
"$PY" -m benchmarks.bench_loop "${QUICK[@]}"
echo; echo "## analytic kernel evaluation (benchmarks/bench_kernel_eval.py)"
"$PY" -m benchmarks.bench_kernel_eval "${QUICK[@]}"
if [[ -f benchmarks/bench_directions.py ]]; then
  echo; echo "## directions build (benchmarks/bench_directions.py)"
  "$PY" -m benchmarks.bench_directions "${QUICK[@]}"
fi
echo; echo "## infinite-width predictions at scale (benchmarks/bench_kernel_solve.py)"
if [[ ${#QUICK[@]} -gt 0 ]]; then
  "$PY" -m benchmarks.bench_kernel_solve --quick --only solver_inf,solver_t,cg \
      --results-tag device --no-doc
else
  "$PY" -m benchmarks.bench_kernel_solve --only solver_inf,solver_t,cg --ns 100000,1000000 \
      --augment 10 --results-tag device --no-doc
fi
echo; echo "## steps to a target against the batch size (benchmarks/bench_batch_sweep.py)"
if [[ ${#QUICK[@]} -gt 0 ]]; then
  "$PY" -m benchmarks.bench_batch_sweep --quick
else
  "$PY" -m benchmarks.bench_batch_sweep --seeds 0,1,2 \
      --out benchmarks/results/batch_sweep_device.jsonl
fi
