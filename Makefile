# bitmaps — `make demo` and `make test` on a fresh machine (Python, a C++ compiler, pip, npm).
# Every target is idempotent: stamps in .venv/ record what is done, so a second run is fast.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
TORCH_VERSION := 2.13.0
NATIVE_SOURCES := $(wildcard csrc/kernels/*.cpp csrc/kernels/*.h csrc/torch/*.cpp csrc/torch/*.h \
                    csrc/onnxruntime/*.cpp csrc/onnxruntime/*.h)

.PHONY: FORCE setup install assets test test-fast demo lint format bench cuda-check plugin clean help \
        gpu-check gpu-check-deps \
        arm-tools kernel-harness kernel-harness-aarch64 neon-asm cross-check-aarch64 \
        cross-check-aarch64-torch cross-check-aarch64-ort

help:
	@echo "make demo        set up, then run the whole pipeline on BERT-tiny + State of the Union"
	@echo "make test        set up, then run the test suite"
	@echo "make bench       kernel benchmarks (benchmarks/bench_kernels.py)"
	@echo "make cuda-check  compile the CUDA sources with nvcc alone (no torch, no GPU needed)"
	@echo "make plugin      build the TensorRT plugin (needs TensorRT: TensorRT_ROOT=...)"
	@echo "make gpu-check   on an NVIDIA GPU with a CUDA torch: build, GPU tests, sanitizer, benchmarks"
	@echo "make kernel-harness          torch-free CPU kernel checks, every path this CPU runs"
	@echo "make kernel-harness-aarch64  the same, cross-built for aarch64, NEON + scalar under qemu"
	@echo "make cross-check-aarch64     bitmaps._C CPU sources and libbitmaps_ort.so built for aarch64"

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

setup: assets arm-tools

# Two pytest workers, one test file each at a time (module fixtures stay in one process): much of
# the suite is single-threaded Python (ONNX export tracing, subprocesses). Intel Xeon, 2 cores:
# 707 s with two workers while a training job held one core; 810 s serially on a quieter machine.
# TEST_WORKERS=1 runs serially.
TEST_WORKERS ?= 2
PARALLEL_TESTS = $(filter-out 0 1,$(TEST_WORKERS))
PYTEST_PARALLEL = $(if $(PARALLEL_TESTS),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
# Two workers on two cores, each with torch's two OpenMP threads: threads that spin while they
# wait (OpenMP's default) take the core the other worker needs. PASSIVE makes them sleep: on the
# Zen 1 EPYC, test_train.py + test_classify.py on two workers took 142-165 s, 88 s with it (twice
# each, 2026-12-05). Only the wait changes, not the thread count. OMP_WAIT_POLICY=... overrides.
TEST_ENV = $(if $(PARALLEL_TESTS),OMP_WAIT_POLICY=$(or $(OMP_WAIT_POLICY),PASSIVE))

# --durations: CI's log names the slowest tests, so the suite's time can be kept in check.
test: setup
	$(TEST_ENV) $(BIN)/python -m pytest -q $(PYTEST_PARALLEL) --durations=25

test-fast: install
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_PARALLEL)

# --- the demo: BERT-tiny teacher → W1A1 student → ONNX → profile, on State of the Union text ---
# Every stage resumes or is skipped when its output is complete, so a second `make demo` is fast.
# The student recipe is from the ablation in benchmarks/RESULTS.md (elastic activations, logits +
# MLM distillation, lr 3e-3, no dropout in the student) at the recipe table's budget (300 steps of
# batch 16); these step counts and the profiles' timing options keep the demo under 15 minutes on
# 2 cores. benchmarks/RESULTS.md has the longer runs (2000 steps of batch 32: retention 0.866).
DEMO          ?= runs/demo
DEMO_TEACHER_STEPS ?= 250
DEMO_STUDENT_STEPS ?= 300
# each profile measurement: at least 0.5 s of warm-up and 1 s (or 10 calls) of timed calls. The CPU
# profiles compare binary with what a CPU user would pick instead (FP32, ONNX Runtime INT8); FP16
# has no fast CPU kernels (`bitmaps profile --models fp32,fp16,int8,binary` adds it).
DEMO_TIMING = --warmup-time 0.5 --min-time 1 --repeats 10
# Spam vs ham (SpamAssassin, mail bodies): teacher fine-tune, binary student, export, profile with
# held-out accuracy and macro-F1 in ONNX Runtime. Sequences of 64 tokens and these step counts keep
# this part near 3 minutes on 2 cores (benchmarks/RESULTS.md has longer runs at 128 tokens).
DEMO_SPAM_TEACHER_STEPS ?= 150
DEMO_SPAM_STUDENT_STEPS ?= 150
SPAM      = "$$($(BITMAPS) assets path spam-assassin)"
SPAM_OPTS = --task classify --data $(SPAM) --set data.seq_len=64 --batch-size 32 \
	  --eval-every 0 --eval-sequences 10000 --save-every 50 --resume
BITMAPS := $(BIN)/bitmaps
SOTU     = "$$($(BITMAPS) assets path sotu)"

demo: setup
	@mkdir -p $(DEMO)
	$(BITMAPS) train --stage teacher --teacher bert-tiny --data $(SOTU) -o $(DEMO)/teacher.pt \
	  --steps $(DEMO_TEACHER_STEPS) --batch-size 32 --lr 3e-4 --eval-every 150 --save-every 50 --resume
	$(BITMAPS) train --stage student --teacher $(DEMO)/teacher.pt --data $(SOTU) -o $(DEMO)/student.pt \
	  --steps $(DEMO_STUDENT_STEPS) --batch-size 16 --lr 3e-3 --act-quantizer elastic \
	  --set distill.lambda_hidden=0 --set distill.lambda_attn=0 --set train.dropout=0 \
	  --eval-every 150 --save-every 50 --resume
	$(BITMAPS) train --stage teacher --teacher bert-tiny -o $(DEMO)/spam-teacher.pt $(SPAM_OPTS) \
	  --steps $(DEMO_SPAM_TEACHER_STEPS) --lr 5e-4
	$(BITMAPS) train --stage student --teacher $(DEMO)/spam-teacher.pt -o $(DEMO)/spam-student.pt \
	  $(SPAM_OPTS) --steps $(DEMO_SPAM_STUDENT_STEPS) --lr 3e-3 --act-quantizer elastic \
	  --set distill.lambda_attn=0
	$(MAKE) --no-print-directory $(DEMO)/student.onnx $(DEMO)/profile-tiny.json \
	  $(DEMO)/spam-student.onnx $(DEMO)/profile-spam.json $(DEMO)/profile-bert-base.json
	@# the results, on every run (a second `make demo` measures nothing and still shows them)
	@for f in profile-tiny profile-spam profile-bert-base; do \
	  echo; echo "== $(DEMO)/$$f.json (bitmaps profile --show $(DEMO)/$$f.json)"; \
	  $(BITMAPS) profile --show $(DEMO)/$$f.json || exit 1; done
	@echo; echo "demo outputs in $(DEMO)/: checkpoints, student.onnx, profile-*.json and profile-*.png"

$(DEMO)/student.onnx: $(DEMO)/student.pt
	$(BITMAPS) export $< $@

$(DEMO)/spam-student.onnx: $(DEMO)/spam-student.pt
	$(BITMAPS) export $< $@

# --seq 64 and --set-free defaults: the held-out split is the training one (seeded by document id).
$(DEMO)/profile-spam.json: $(DEMO)/spam-student.pt $(DEMO)/spam-teacher.pt
	$(BITMAPS) profile --model $(DEMO)/spam-student.pt --teacher $(DEMO)/spam-teacher.pt \
	  --data $(SPAM) --backend onnxruntime --models fp32,int8,binary --batch 1 --seq 64 $(DEMO_TIMING) \
	  --json $@ --plot $(@:.json=.png)

$(DEMO)/profile-tiny.json: $(DEMO)/student.pt $(DEMO)/teacher.pt
	$(BITMAPS) profile --model $(DEMO)/student.pt --teacher $(DEMO)/teacher.pt --data $(SOTU) \
	  --backend all --models fp32,int8,binary --batch 1,8 --seq 128 --eval-sequences 512 $(DEMO_TIMING) \
	  --json $@ --plot $(@:.json=.png)

# BERT-base shapes (random weights): the CPU user's choices (FP32, ONNX Runtime INT8) vs binary,
# in ONNX Runtime; benchmarks/RESULTS.md has both backends at batch 1 and 8.
$(DEMO)/profile-bert-base.json:
	$(BITMAPS) profile --shape bert-base --backend onnxruntime --models fp32,int8,binary \
	  --batch 1 --seq 128 $(DEMO_TIMING) --json $@ --plot $(@:.json=.png)

lint: install
	$(BIN)/ruff check bitmaps tests benchmarks
	$(BIN)/ruff format --check bitmaps tests benchmarks

format: install
	$(BIN)/ruff format bitmaps tests benchmarks
	$(BIN)/ruff check --fix bitmaps tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_kernels.py

# --- Arm (aarch64) from any host: the torch-free kernel harness, natively and under emulation -------
# kernel-harness: csrc/tests/kernel_harness.cpp over the CPU kernels, on every path this CPU runs,
# built at -O3 like bitmaps._C and libbitmaps_ort.so (what ships is what is tested).
# kernel-harness-aarch64: the same program cross-built and run by qemu-aarch64 as a CPU with the
# dot-product extension (-cpu max: NEON via UDOT) and one without (cortex-a53: CNT + UADALP), each
# on the neon and the scalar path. neon-asm: the disassembly of the NEON GEMM and int8 attention
# kernels (the inner-loop instruction mix, checked by tests/test_kernel_harness.py). cross-check-aarch64: bitmaps._C's CPU
# sources compiled for aarch64 (torch's headers from the venv) and libbitmaps_ort.so built for it.
# arm-tools (part of setup, best effort, never fails): Debian's g++-aarch64-linux-gnu + qemu-user.
AARCH64_CXX     ?= aarch64-linux-gnu-g++
AARCH64_OBJDUMP ?= aarch64-linux-gnu-objdump
QEMU_AARCH64    ?= qemu-aarch64
AARCH64_SYSROOT ?= /usr/aarch64-linux-gnu
ARM_PACKAGES    := g++-aarch64-linux-gnu qemu-user
HARNESS_DIR     := build/kernel-harness
HARNESS_FLAGS   := -std=c++17 -O3 -Wall -Wextra -ffp-contract=off -Icsrc
CROSS_DIR       := build/cross-aarch64
# The flags setup.py / BuildExtension give bitmaps._C (torch 2.13's headers need C++20).
CROSS_TORCH_FLAGS := -std=c++20 -O2 -fPIC -fvisibility=hidden -ffp-contract=off -fopenmp -Icsrc \
                     -DBITMAPS_TORCH_EXTENSION -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C
CROSS_TORCH_INCLUDES = $(shell $(BIN)/python -c 'import sysconfig; from torch.utils.cpp_extension \
  import include_paths; print(" ".join("-isystem " + p for p in include_paths() + \
  [sysconfig.get_paths()["include"]]))')
NEED_AARCH64_CXX = @command -v $(AARCH64_CXX) >/dev/null || { echo "$@: $(AARCH64_CXX) not found \
  (Debian: apt-get install g++-aarch64-linux-gnu; make arm-tools does it as root)"; exit 2; }

arm-tools:
	@missing=""; command -v $(AARCH64_CXX) >/dev/null || missing=" g++-aarch64-linux-gnu"; \
	command -v $(QEMU_AARCH64) >/dev/null || missing="$$missing qemu-user"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "arm-tools: not installing$$missing (needs root and apt-get); the aarch64 tests will skip"; \
	  exit 0; fi; \
	echo "arm-tools: apt-get install$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	{ apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && \
	    apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1; }; } || \
	  echo "arm-tools: apt-get install$$missing failed; the aarch64 tests will skip"

# The harness links csrc/kernels' objects as csrc/onnxruntime/build.py --kernel-objects compiles
# them for libbitmaps_ort.so (cached in build/ort/kernels-<compiler and flags>/, rebuilt when a
# source or header is newer): the kernels are compiled once per compiler, not once per program.
# The python that runs build.py needs nothing but the standard library.
HOST_PYTHON  := $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
KERNEL_OBJS  = $(HOST_PYTHON) csrc/onnxruntime/build.py --kernel-objects

$(HARNESS_DIR)/kernel_harness.o: csrc/tests/kernel_harness.cpp $(wildcard csrc/kernels/*.h)
	@mkdir -p $(@D)
	$(CXX) $(HARNESS_FLAGS) -c $< -o $@

$(HARNESS_DIR)/kernel_harness_aarch64.o: csrc/tests/kernel_harness.cpp $(wildcard csrc/kernels/*.h)
	$(NEED_AARCH64_CXX)
	@mkdir -p $(@D)
	$(AARCH64_CXX) $(HARNESS_FLAGS) -c $< -o $@

$(HARNESS_DIR)/kernel_harness: $(HARNESS_DIR)/kernel_harness.o FORCE
	@objs=$$(CXX=$(CXX) $(KERNEL_OBJS)) || exit 2; $(CXX) -pthread $< $$objs -o $@

$(HARNESS_DIR)/kernel_harness_aarch64: $(HARNESS_DIR)/kernel_harness_aarch64.o FORCE
	@objs=$$(CXX=$(AARCH64_CXX) $(KERNEL_OBJS)) || exit 2; $(AARCH64_CXX) -pthread $< $$objs -o $@

FORCE:

kernel-harness: $(HARNESS_DIR)/kernel_harness
	$<

# The NEON path on a CPU with the dot-product extension (-cpu max: UDOT) and on one without
# (cortex-a53: CNT + UADALP); the scalar path once (it is the same code on either CPU).
kernel-harness-aarch64: $(HARNESS_DIR)/kernel_harness_aarch64
	@command -v $(QEMU_AARCH64) >/dev/null || { echo "$@: $(QEMU_AARCH64) not found \
	  (Debian: apt-get install qemu-user; make arm-tools does it as root)"; exit 2; }
	@for run in "max neon" "max scalar" "cortex-a53 neon"; do set -- $$run; \
	  echo "$(QEMU_AARCH64) -cpu $$1 $< --path $$2"; \
	  $(QEMU_AARCH64) -cpu $$1 -L $(AARCH64_SYSROOT) $< --path $$2 || exit 1; \
	done

NEON_ASM := cpu_kernels_neon cpu_attention_int8_neon

neon-asm:
	$(NEED_AARCH64_CXX)
	@mkdir -p $(CROSS_DIR)
	@objs=$$(CXX=$(AARCH64_CXX) $(KERNEL_OBJS)) || exit 2; \
	for name in $(NEON_ASM); do \
	  obj=$$(echo "$$objs" | tr ' ' '\n' | grep "/$$name\.o$$") || exit 2; \
	  echo "$(AARCH64_OBJDUMP) -d $$obj"; \
	  $(AARCH64_OBJDUMP) -d --no-show-raw-insn -C $$obj > $(CROSS_DIR)/$$name.dis || exit 2; \
	  echo "disassembly in $(CROSS_DIR)/$$name.dis"; \
	done

cross-check-aarch64: cross-check-aarch64-torch cross-check-aarch64-ort

# bitmaps._C's adapters (csrc/torch) compiled for aarch64 against torch's headers; its kernels
# checked with the same flags (-fsyntax-only: their aarch64 objects are the harness's and the ORT
# library's, compiled by csrc/onnxruntime/build.py).
cross-check-aarch64-torch:
	$(NEED_AARCH64_CXX)
	@mkdir -p $(CROSS_DIR)/torch
	@inc="$(CROSS_TORCH_INCLUDES)"; [ -n "$$inc" ] || { echo "$@: torch not importable from $(BIN)/python"; exit 2; }; \
	for f in csrc/kernels/*.cpp; do \
	  echo "$(AARCH64_CXX) -fsyntax-only $$f"; \
	  $(AARCH64_CXX) $(CROSS_TORCH_FLAGS) $$inc -fsyntax-only $$f || exit 1; \
	done; \
	for f in csrc/torch/*.cpp; do \
	  obj=$(CROSS_DIR)/torch/$$(basename $$(dirname $$f))_$$(basename $$f .cpp).o; \
	  echo "$(AARCH64_CXX) -c $$f"; \
	  $(AARCH64_CXX) $(CROSS_TORCH_FLAGS) $$inc -c $$f -o $$obj || exit 1; \
	done

cross-check-aarch64-ort:
	$(NEED_AARCH64_CXX)
	@if [ -f csrc/onnxruntime/build.py ]; then \
	  echo "CXX=$(AARCH64_CXX) csrc/onnxruntime/build.py --out $(CROSS_DIR)/libbitmaps_ort.so"; \
	  CXX=$(AARCH64_CXX) $(BIN)/python csrc/onnxruntime/build.py --out $(CROSS_DIR)/libbitmaps_ort.so; \
	else echo "no csrc/onnxruntime/build.py: libbitmaps_ort.so not cross-built"; fi

# --- CUDA / TensorRT (no GPU needed to compile) --------------------------------------------
# cuda-check: every csrc/kernels/*.cu through nvcc alone for sm_80, sm_87 (Jetson Orin), sm_90a and,
# where this nvcc still has it, sm_72 (Jetson Xavier; CUDA 13 dropped compute_72, so JetPack 5's
# CUDA 11.4 builds it), then the SASS must hold the b1 tensor-core instructions each path was
# written for. cuobjdump and nvdisasm: the CUDA
# toolkit's, else the PyPI wheels that `make install` puts into .venv (nvidia-cuda-cuobjdump/-nvdisasm).
NVCC ?= nvcc
CUDA_HOME ?= /usr/local/cuda
CUOBJDUMP ?= $(or $(shell command -v cuobjdump),$(lastword $(wildcard $(VENV)/lib/python3*/site-packages/nvidia/cu*/bin/cuobjdump)),cuobjdump)
NVDISASM_DIR := $(dir $(or $(shell command -v nvdisasm),$(lastword $(wildcard $(VENV)/lib/python3*/site-packages/nvidia/cu*/bin/nvdisasm))))
export NVDISASM_PATH := $(NVDISASM_DIR)
CUDA_CHECK_DIR := build/cuda-check
CUDA_ARCHS := 80 87 90a $(if $(filter compute_72,$(shell $(NVCC) --list-gpu-arch 2>/dev/null)),72)
CUDA_GENCODE := $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a))

cuda-check:
	@command -v $(NVCC) >/dev/null || { echo "cuda-check: nvcc not found (install the CUDA toolkit or pass NVCC=...)"; exit 2; }
	@mkdir -p $(CUDA_CHECK_DIR)
	@for f in csrc/kernels/*.cu; do \
	  echo "nvcc $$f (sm_ $(CUDA_ARCHS))"; \
	  $(NVCC) -std=c++17 -O3 -Icsrc --expt-relaxed-constexpr $(CUDA_GENCODE) -c $$f \
	    -o $(CUDA_CHECK_DIR)/$$(basename $$f .cu).o || exit 1; \
	done
	@if [ -n "$(TensorRT_ROOT)" ] && [ -f "$(TensorRT_ROOT)/include/NvInferRuntime.h" ]; then \
	  for f in plugins/binaryLinearPlugin/binaryLinearPlugin.cpp plugins/bitmapsPluginLibrary.cpp; do \
	    echo "g++ $$f (TensorRT headers in $(TensorRT_ROOT)/include)"; \
	    g++ -std=c++17 -Wall -Wextra -Werror -fsyntax-only -isystem "$(TensorRT_ROOT)/include" \
	      -isystem "$(CUDA_HOME)/include" -Icsrc -Iplugins $$f || exit 1; \
	  done; \
	else echo "plugin .cpp not compiled: set TensorRT_ROOT to a TensorRT 10/11 install (headers)"; fi
	@command -v $(CUOBJDUMP) >/dev/null || { echo "SASS not inspected: $(CUOBJDUMP) not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)"; exit 0; }; \
	sass() { $(CUOBJDUMP) --dump-sass --gpu-architecture $$2 $(CUDA_CHECK_DIR)/$$1.o | grep -c "$$3" || true; }; \
	status=0; \
	for check in "xnor_gemm_mma sm_80 BMMA.168256.XOR.POPC" "xnor_gemm_mma sm_87 BMMA.168256.XOR.POPC" \
	             "xnor_gemm_mma sm_90a BMMA.168256.AND.POPC" \
	             "xnor_gemm_wgmma sm_90a BGMMA.64x128x256.AND.POPC" "xnor_gemm_popc sm_80 POPC"; do \
	  set -- $$check; n=$$(sass $$1 $$2 $$3); \
	  if [ "$$n" -gt 0 ]; then echo "SASS $$1 $$2: $$n x $$3"; else echo "SASS $$1 $$2: no $$3"; status=1; fi; \
	done; exit $$status

# gpu-check: benchmarks/gpu_check.py with the system python (a CUDA torch; no venv, no installs),
# report in runs/gpu-check/ (and $GPU_CHECK_OUT). Exits 2 with one line where there is no GPU.
# gpu-check-deps: pytest and ninja into build/gpu-pydeps, for a GPU machine that lacks them and
# has no network (bring the folder along; gpu_check.py uses it when present).
GPU_PYTHON ?= python3

gpu-check:
	@$(GPU_PYTHON) benchmarks/gpu_check.py

gpu-check-deps:
	$(PIP) install --target build/gpu-pydeps --upgrade pytest ninja

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
