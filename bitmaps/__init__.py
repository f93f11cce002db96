"""bitmaps: make BERT 1-bit — distil a binarized student, export it with bit-packed weights,
run it through an XNOR-popcount GEMM, and measure what it costs and what it saves."""

__version__ = "0.1.0"
