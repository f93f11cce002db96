"""The core layer: what every other layer of bitmaps stands on, and which imports nothing of theirs.

It holds the bit layout (:mod:`bitmaps.core.packing`, the Python mirror of csrc/kernels/bit_layout.h),
the ``bitmaps::`` PyTorch op definitions (:mod:`bitmaps.core.ops`: schema, fake kernel, reference),
and the packed inference modules that export and runtime share. See docs/ARCHITECTURE.md.
"""
