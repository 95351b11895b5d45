# Two commands for a fresh clone:  `make demo`  and  `make test`.
# Both create a local virtual environment (.venv) on first use.
#
# TORCH_SPEC picks the PyTorch build installed before fusioncli. The default pins the release
# this project is tested with; on a CUDA machine pick your own, e.g.
#   make TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cu124' demo

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: help setup demo lint test test-numeric-isa bench clean

help:
	@echo "make demo   - set up .venv and run the whole pipeline on small synthetic data"
	@echo "make test   - set up .venv, run the quality gates (ruff, mypy) and the test suite"
	@echo "make lint   - the quality gates alone"
	@echo "make test-numeric-isa - the numeric tests again, on AVX2 kernels only"
	@echo "make bench  - run the benchmark scripts (prints figures)"
	@echo "make clean  - remove .venv and the .fusioncli work folder"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Installed marker: reinstall when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,ray]"
	@touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/fusioncli demo

# Quality gates (configured in pyproject.toml): lint, format check, types.
lint: setup
	$(BIN)/ruff check fusioncli benchmarks
	$(BIN)/ruff format --check fusioncli benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# The numeric tests again with PyTorch's (ATen's) and oneDNN's kernel dispatch overridden to
# AVX2: kernels for another instruction set sum in another order, so a bound that holds with
# one instruction set's kernels only now fails on every machine, not just on AVX2-only CPUs.
# (Convolutions run in oneDNN, which ATEN_CPU_CAPABILITY alone does not reach.)
test-numeric-isa: setup
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -m numeric

bench: setup
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .fusioncli
