# Two commands on a fresh machine:  `make run`  (main job)  and  `make test`  (tests).
# Each creates .venv and installs everything on first use; nothing to do by hand.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# 2-core CI: let XLA use what is there, keep jax on the CPU.
export JAX_PLATFORMS ?= cpu

.PHONY: install run test test-slow smoke bench bench-quick bench-device clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	# neural-tangents without its TensorFlow/tf2jax requirements (see pyproject.toml).
	$(PY) -m pip install -q --no-deps -c constraints.txt neural-tangents==0.6.5
	$(PY) -c "import mskjax; print('mskjax installed; jax', __import__('jax').__version__)"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m mskjax.run configs/quickstart.py $(ARGS)

# Two workers: most of the suite's time is single-threaded XLA compilation (6.9 vs 11.3 min).
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q -n 2 $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q $(ARGS)

# Every config's quick variant (configs/NAME.py:quick, < 60 s each on 2 cores), into runs/smoke/.
smoke: $(STAMP)
	@set -e; for c in configs/*.py; do \
	  echo "-- $$c:quick"; start=$$(date +%s); \
	  $(PY) -m mskjax.run $$c:quick --runs-dir runs/smoke --no-progress; \
	  echo "-- $$c:quick: $$(( $$(date +%s) - start )) s wall"; \
	done

# Every benchmarks/bench_*.py (or BENCH="bench_loop bench_steps"); each one's tables go to
# the terminal and to benchmarks/results/NAME.md with the UTC time and the load. Full runs
# take hours on 2 cores; `make bench-quick` runs the --quick variant of those that have one.
BENCH ?= $(basename $(notdir $(wildcard benchmarks/bench_*.py)))
bench: $(STAMP)
	@mkdir -p benchmarks/results; for b in $(BENCH); do \
	  out=benchmarks/results/$${b}$(SUFFIX).md; echo "-- $$b $(ARGS) -> $$out"; \
	  { echo "<!-- python -m benchmarks.$$b $(ARGS); $$(date -u +%FT%TZ); $$(uptime) -->"; } > $$out; \
	  $(PY) -m benchmarks.$$b $(ARGS) 2>&1 | tee -a $$out; \
	  rc=$${PIPESTATUS[0]}; [ $$rc -eq 0 ] || { echo "$$b failed ($$rc)"; exit $$rc; }; \
	done

bench-quick: $(STAMP)
	@$(MAKE) --no-print-directory bench SUFFIX=_quick ARGS=--quick \
	  BENCH="$$(grep -l -- '--quick' benchmarks/bench_*.py | xargs -n1 basename | sed 's/\.py$$//' | tr '\n' ' ')"

# Accelerator run (not used by CI): MNIST-1D comparison + per-step + top-k timing, one table.
# JAX_PLATFORMS is left to jax here so that it picks the GPU/TPU.
bench-device: $(STAMP)
	JAX_PLATFORMS= PY=$(PY) benchmarks/device.sh $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
