# `make test` and `make demo` each build (or refresh) the virtual environment from this
# project's own files, then run. Nothing needs to be installed by hand first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.retroplan-installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

# Without a GPU, pin the CPU-sized torch wheel (a plain `torch` on Linux pulls a multi-GB
# CUDA build). With a GPU, any torch>=2.4 (the package's own range) will do.
# Override either: `make test TORCH_SPEC='torch==2.5.1' PIP_TORCH_ARGS='--index-url ...'`.
HAVE_GPU   := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAVE_GPU),torch>=2.4,torch==2.13.0)
PIP_TORCH_ARGS ?=

.PHONY: test test-fast demo bench gpu-check lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(PIP_TORCH_ARGS)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Every test, the slow ones included (what CI runs), in TEST_PROCESSES pytest-xdist processes;
# a test file stays in one process (tests/conftest.py), so its module fixtures are built once.
TEST_PROCESSES ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" -n $(TEST_PROCESSES) --dist loadgroup

# The default, fast subset (a few minutes on 2 cores).
test-fast: $(STAMP)
	$(PY) -m pytest -q

# The quick path-star study: generate -> train each variant -> verified eval -> report.
demo: $(STAMP)
	$(VENV)/bin/retroplan run quick --out runs/quick

bench: $(STAMP)
	$(PY) benchmarks/bench_graphs.py
	$(PY) benchmarks/bench_countdown.py

# On one CUDA GPU (~10 min on an H100): trainer vs bare loop, MFU, KV-cache generation, and the
# path-star and Countdown studies scaled to fit -> benchmarks/gpu_check.json + gpu_check.md.
# Refuses without a GPU (`$(PY) benchmarks/gpu_check.py --allow-cpu` is a toy-sized smoke test).
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check retroplan tests benchmarks experiments

clean:
	rm -rf $(VENV) .numba_cache runs
