# bitmaps — `make demo` and `make test` on a fresh machine (Python, a C++ compiler, pip, npm).
# Every target is idempotent: stamps in .venv/ record what is done, so a second run is fast.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
TORCH_VERSION := 2.13.0
NATIVE_SOURCES := $(wildcard csrc/kernels/*.cpp csrc/kernels/*.h csrc/torch/*.cpp csrc/torch/*.h)

.PHONY: setup install assets test test-fast demo lint format bench cuda-check plugin clean help

help:
	@echo "make demo        set up, then run the whole pipeline on BERT-tiny + State of the Union"
	@echo "make test        set up, then run the test suite"
	@echo "make bench       kernel benchmarks (benchmarks/bench_kernels.py)"
	@echo "make cuda-check  compile the CUDA sources with nvcc alone (no torch, no GPU needed)"
	@echo "make plugin      build the TensorRT plugin (needs TensorRT: TensorRT_ROOT=...)"

$(VENV)/.stamp-venv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	touch $@

# torch first and pinned: a loose `torch` would pull several GB of CUDA wheels.
$(VENV)/.stamp-torch: $(VENV)/.stamp-venv
	$(PIP) install "torch==$(TORCH_VERSION)" setuptools wheel ninja
	touch $@

$(VENV)/.stamp-install: $(VENV)/.stamp-torch pyproject.toml setup.py $(NATIVE_SOURCES)
	$(PIP) install --no-build-isolation -e ".[test]"
	$(BIN)/python setup.py -q build_ext --inplace
	touch $@

install: $(VENV)/.stamp-install

assets: install
	$(BIN)/bitmaps assets fetch

setup: assets

test: setup
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/python -m bitmaps.demo

lint: install
	$(BIN)/ruff check bitmaps tests benchmarks
	$(BIN)/ruff format --check bitmaps tests benchmarks

format: install
	$(BIN)/ruff format bitmaps tests benchmarks
	$(BIN)/ruff check --fix bitmaps tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_kernels.py

clean:
	rm -rf build bitmaps/_C*.so *.egg-info
