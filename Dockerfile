# bitmaps with CUDA kernels and the TensorRT plugin, on NVIDIA's PyTorch container.
#
#   docker build -t bitmaps .
#   docker run --gpus all --rm bitmaps profile --shape bert-base --backend tensorrt
#
# Base: nvcr.io/nvidia/pytorch:25.01-py3 ships, per NVIDIA's 25.01 release matrix, a CUDA 12.8
# build of PyTorch 2.6 and TensorRT 10.8 (headers, libnvinfer and the Python bindings). CUDA 12.8
# compiles sm_90a (wgmma) code, and TensorRT >= 10.7 makes the ONNX parser prefer a registered
# plugin over the model's local fallback function, which the BinaryLinear nodes rely on.
# The image was not built where this file was written (no Docker engine there); see
# plugins/binaryLinearPlugin/README.md for what was verified where.
FROM nvcr.io/nvidia/pytorch:25.01-py3

WORKDIR /opt/bitmaps
COPY . .

# Fail early, with the versions in the log, if the base image lacks what the build needs.
RUN python -c "import tensorrt, torch; print('TensorRT', tensorrt.__version__, '| torch', torch.__version__, '| CUDA', torch.version.cuda); assert torch.version.cuda"

# The container's own torch stays: install bitmaps without letting pip replace it.
ENV TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0a"
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
 && pip install --no-cache-dir "transformers>=4.45" "tokenizers>=0.20" "safetensors>=0.4" \
      "click>=8.1" "rich>=13" "onnx>=1.16" "onnxruntime>=1.18" "onnxruntime-extensions>=0.12" \
      "matplotlib>=3.7" "pytest>=8" \
 && python setup.py build_ext --inplace \
 && python -c "import torch, bitmaps.ops as o; print(o.native_status()); assert torch._C._dispatch_has_kernel_for_dispatch_key('bitmaps::xnor_gemm', 'CUDA'), 'bitmaps._C was built without CUDA'"

# The TensorRT plugin, installed where bitmaps.runtime.tensorrt looks for it.
RUN make plugin \
 && install -m 0755 build/plugin/libbitmaps_trt_plugin.so /usr/local/lib/libbitmaps_trt_plugin.so
ENV BITMAPS_TRT_PLUGIN=/usr/local/lib/libbitmaps_trt_plugin.so

ENTRYPOINT ["bitmaps"]
CMD ["--help"]
