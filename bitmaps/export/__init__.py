"""Export: bit packing (the layout of DESIGN.md), ONNX export with ``bitmaps::BinaryLinear`` nodes,
and verification of the exported file against PyTorch."""
