# bitmaps with CUDA kernels and the TensorRT plugin, on NVIDIA's PyTorch container.
#
#   docker build -t bitmaps .
#   docker run --gpus all --rm bitmaps profile --shape bert-base --backend tensorrt
#
# Base: nvcr.io/nvidia/pytorch:25.01-py3 ships, per NVIDIA's 25.01 release matrix, a CUDA 12.8
# build of PyTorch 2.6 and TensorRT 10.8 (headers, libnvinfer and the Python bindings). CUDA 12.8
# compiles sm_90a (wgmma) code. TensorRT >= 10.7's ONNX parser maps each BinaryLinear node onto the
# registered plugin (`bitmaps build-engine` loads it). The model-local function of the same name is
# no TensorRT fallback: in a portable export it uses BitwiseAnd, which the ONNX-TensorRT parser
# does not support, so without the plugin (or on TensorRT 10.0-10.6, whose parser imports a local
# function before looking for a plugin) the parse fails. Export with `--target tensorrt` for
# TensorRT. The image was not built where this file was written (no Docker engine there); see
# plugins/binaryLinearPlugin/README.md for what was verified where.
#
# Jetson (Orin, sm_87; aarch64, L4T), same steps on NVIDIA's L4T image instead of this base:
#   FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0      # JetPack 6.1: CUDA 12.6, TensorRT 10.3 (JetPack's)
#   then a CUDA build of torch for JetPack 6 (NVIDIA's Jetson wheels; pip's torch has no CUDA on
#   aarch64), TORCH_CUDA_ARCH_LIST="8.7", and `make plugin` (the CMake default on aarch64 is
#   80;87;90a; TensorRT comes from JetPack in /usr/include/aarch64-linux-gnu and
#   /usr/lib/aarch64-linux-gnu, where plugins/CMakeLists.txt looks). JetPack 6's TensorRT 10.3 is
#   older than 10.7: its parser imports a model-local function before a plugin, so export with
#   `--target tensorrt`. Xavier (sm_72) needs JetPack 5 (CUDA 11.4, TensorRT 8.5): the plugin needs
#   TensorRT 10 (IPluginV3), so on Xavier bitmaps runs through PyTorch or ONNX Runtime only, on the
#   __popc path (CUDA 13 has no sm_72 either). Neither Jetson build was run here.
FROM nvcr.io/nvidia/pytorch:25.01-py3

WORKDIR /opt/bitmaps
COPY . .

# Fail early, with the versions in the log, if the base image lacks what the build needs.
RUN python -c "import tensorrt, torch; print('TensorRT', tensorrt.__version__, '| torch', torch.__version__, '| CUDA', torch.version.cuda); assert torch.version.cuda"

# ONNX Runtime's C API headers for libbitmaps_ort.so (the native BinaryLinear op; no ONNX Runtime
# library is linked): the include/ folder of ONNX Runtime's release archive, which the Ubuntu base
# has no package for. setup.py builds the library against $ORT_INCLUDE; a library built from 1.21
# headers loads into any later ONNX Runtime.
ARG ORT_VERSION=1.21.0
RUN curl -fsSL "https://github.com/microsoft/onnxruntime/releases/download/v${ORT_VERSION}/onnxruntime-linux-x64-${ORT_VERSION}.tgz" \
      | tar -xz -C /opt "onnxruntime-linux-x64-${ORT_VERSION}/include"
ENV ORT_INCLUDE=/opt/onnxruntime-linux-x64-${ORT_VERSION}/include

# The container's own torch stays: install bitmaps without letting pip replace it.
# BITMAPS_REQUIRE_CUDA=1: a failed CUDA build fails the image instead of leaving CPU kernels only.
ENV TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0a" BITMAPS_REQUIRE_CUDA=1
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
 && pip install --no-cache-dir "transformers>=4.45" "tokenizers>=0.20" "safetensors>=0.4" \
      "click>=8.2" "rich>=13" "onnx>=1.16" "onnxruntime>=1.18" "onnxscript>=0.5" \
      "matplotlib>=3.7" "pytest>=8" \
 && python setup.py build_ext --inplace \
 && python -c "import torch, bitmaps.core.ops as o; print(o.native_status()); assert torch._C._dispatch_has_kernel_for_dispatch_key('bitmaps::xnor_gemm', 'CUDA'), 'bitmaps._C was built without CUDA'" \
 && bitmaps ort-library

# The TensorRT plugin, installed where bitmaps.runtime.tensorrt looks for it.
RUN make plugin \
 && install -m 0755 build/plugin/libbitmaps_trt_plugin.so /usr/local/lib/libbitmaps_trt_plugin.so
ENV BITMAPS_TRT_PLUGIN=/usr/local/lib/libbitmaps_trt_plugin.so

ENTRYPOINT ["bitmaps"]
CMD ["--help"]
