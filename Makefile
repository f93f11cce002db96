# bitmaps — `make demo` and `make test` on a fresh machine (Python, a C++ compiler, pip, npm).
# Every target is idempotent: stamps in .venv/ record what is done, so a second run is fast.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
TORCH_VERSION := 2.13.0
NATIVE_SOURCES := $(wildcard csrc/kernels/*.cpp csrc/kernels/*.h csrc/torch/*.cpp csrc/torch/*.h \
                    csrc/onnxruntime/*.cpp csrc/onnxruntime/*.h)

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

# --- the demo: BERT-tiny teacher → W1A1 student → ONNX → profile, on State of the Union text ---
# Every stage resumes or is skipped when its output is complete, so a second `make demo` is fast.
# The student recipe is the best row of the ablation in benchmarks/RESULTS.md (elastic activations,
# logits + MLM distillation, lr 3e-3); the step counts keep the demo under 15 minutes on 2 cores.
DEMO          ?= runs/demo
DEMO_TEACHER_STEPS ?= 300
DEMO_STUDENT_STEPS ?= 300
BITMAPS := $(BIN)/bitmaps
SOTU     = "$$($(BITMAPS) assets path sotu)"

demo: setup
	@mkdir -p $(DEMO)
	$(BITMAPS) train --stage teacher --teacher bert-tiny --data $(SOTU) -o $(DEMO)/teacher.pt \
	  --steps $(DEMO_TEACHER_STEPS) --batch-size 32 --lr 3e-4 --eval-every 100 --save-every 50 --resume
	$(BITMAPS) train --stage student --teacher $(DEMO)/teacher.pt --data $(SOTU) -o $(DEMO)/student.pt \
	  --steps $(DEMO_STUDENT_STEPS) --batch-size 32 --lr 3e-3 --act-quantizer elastic \
	  --set distill.lambda_hidden=0 --set distill.lambda_attn=0 \
	  --eval-every 100 --save-every 50 --resume
	$(MAKE) --no-print-directory $(DEMO)/student.onnx $(DEMO)/profile-tiny.json $(DEMO)/profile-bert-base.json
	$(BITMAPS) profile --show $(DEMO)/profile-tiny.json
	$(BITMAPS) profile --show $(DEMO)/profile-bert-base.json
	@echo "demo outputs in $(DEMO)/: checkpoints, student.onnx, profile-*.json and profile-*.png"

$(DEMO)/student.onnx: $(DEMO)/student.pt
	$(BITMAPS) export $< $@

$(DEMO)/profile-tiny.json: $(DEMO)/student.pt $(DEMO)/teacher.pt
	$(BITMAPS) profile --model $(DEMO)/student.pt --teacher $(DEMO)/teacher.pt --data $(SOTU) \
	  --backend all --batch 1,8 --seq 128 --eval-sequences 512 --json $@ --plot $(@:.json=.png)

$(DEMO)/profile-bert-base.json:
	$(BITMAPS) profile --shape bert-base --backend all --batch 1 --seq 128 \
	  --json $@ --plot $(@:.json=.png)

lint: install
	$(BIN)/ruff check bitmaps tests benchmarks
	$(BIN)/ruff format --check bitmaps tests benchmarks

format: install
	$(BIN)/ruff format bitmaps tests benchmarks
	$(BIN)/ruff check --fix bitmaps tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_kernels.py

# --- CUDA / TensorRT (no GPU needed to compile) --------------------------------------------
# cuda-check: every csrc/kernels/*.cu through nvcc alone for sm_80 and sm_90a, then the SASS must
# hold the b1 tensor-core instructions each path was written for. cuobjdump and nvdisasm: the CUDA
# toolkit's, else the PyPI wheels that `make install` puts into .venv (nvidia-cuda-cuobjdump/-nvdisasm).
NVCC ?= nvcc
CUDA_HOME ?= /usr/local/cuda
CUOBJDUMP ?= $(or $(shell command -v cuobjdump),$(lastword $(wildcard $(VENV)/lib/python3*/site-packages/nvidia/cu*/bin/cuobjdump)),cuobjdump)
NVDISASM_DIR := $(dir $(or $(shell command -v nvdisasm),$(lastword $(wildcard $(VENV)/lib/python3*/site-packages/nvidia/cu*/bin/nvdisasm))))
export NVDISASM_PATH := $(NVDISASM_DIR)
CUDA_CHECK_DIR := build/cuda-check
CUDA_GENCODE := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a

cuda-check:
	@command -v $(NVCC) >/dev/null || { echo "cuda-check: nvcc not found (install the CUDA toolkit or pass NVCC=...)"; exit 2; }
	@mkdir -p $(CUDA_CHECK_DIR)
	@for f in csrc/kernels/*.cu; do \
	  echo "nvcc $$f (sm_80, sm_90a)"; \
	  $(NVCC) -std=c++17 -O3 -Icsrc --expt-relaxed-constexpr $(CUDA_GENCODE) -c $$f \
	    -o $(CUDA_CHECK_DIR)/$$(basename $$f .cu).o || exit 1; \
	done
	@if [ -n "$(TensorRT_ROOT)" ] && [ -f "$(TensorRT_ROOT)/include/NvInferRuntime.h" ]; then \
	  for f in plugins/binaryLinearPlugin/binaryLinearPlugin.cpp plugins/bitmapsPluginLibrary.cpp; do \
	    echo "g++ $$f (TensorRT headers in $(TensorRT_ROOT)/include)"; \
	    g++ -std=c++17 -Wall -Wextra -fsyntax-only -isystem "$(TensorRT_ROOT)/include" \
	      -isystem "$(CUDA_HOME)/include" -Icsrc -Iplugins $$f || exit 1; \
	  done; \
	else echo "plugin .cpp not compiled: set TensorRT_ROOT to a TensorRT 10/11 install (headers)"; fi
	@command -v $(CUOBJDUMP) >/dev/null || { echo "SASS not inspected: $(CUOBJDUMP) not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)"; exit 0; }; \
	sass() { $(CUOBJDUMP) --dump-sass --gpu-architecture $$2 $(CUDA_CHECK_DIR)/$$1.o | grep -c "$$3" || true; }; \
	status=0; \
	for check in "xnor_gemm_mma sm_80 BMMA.168256.XOR.POPC" "xnor_gemm_mma sm_90a BMMA.168256.AND.POPC" \
	             "xnor_gemm_wgmma sm_90a BGMMA.64x128x256.AND.POPC" "xnor_gemm_popc sm_80 POPC"; do \
	  set -- $$check; n=$$(sass $$1 $$2 $$3); \
	  if [ "$$n" -gt 0 ]; then echo "SASS $$1 $$2: $$n x $$3"; else echo "SASS $$1 $$2: no $$3"; status=1; fi; \
	done; exit $$status

# plugin: libbitmaps_trt_plugin.so with the plugin's own CMake project, where TensorRT is found.
PLUGIN_BUILD_DIR := build/plugin

plugin:
	@command -v cmake >/dev/null || { echo "plugin: cmake not found (apt-get install cmake)"; exit 2; }
	@mkdir -p $(PLUGIN_BUILD_DIR)
	@cmake -S plugins -B $(PLUGIN_BUILD_DIR) -DCMAKE_BUILD_TYPE=Release \
	    $(if $(TensorRT_ROOT),-DTensorRT_ROOT=$(TensorRT_ROOT)) > $(PLUGIN_BUILD_DIR)/configure.log 2>&1 \
	  || { msg=$$(grep -A4 "bitmaps:" $(PLUGIN_BUILD_DIR)/configure.log | tr -s ' \n' ' ' | sed 's/^ *//'); \
	       echo "plugin: $${msg:-cmake configure failed, see $(PLUGIN_BUILD_DIR)/configure.log}"; exit 2; }
	@cmake --build $(PLUGIN_BUILD_DIR) -j 2
	@echo "built $(PLUGIN_BUILD_DIR)/libbitmaps_trt_plugin.so"

clean:
	rm -rf build bitmaps/_C*.so bitmaps/libbitmaps_ort.so *.egg-info
