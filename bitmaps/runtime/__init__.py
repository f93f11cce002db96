"""Runtime: backends (torch, onnxruntime, tensorrt), engine build and profiling."""
