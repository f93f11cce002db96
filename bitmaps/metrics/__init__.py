"""The metrics layer: masked-LM cross entropy, top-1 accuracy and MRR on masked tokens (and the
model wrapper that scores only those), used by training, evaluation and profiling alike. Imports
only :mod:`bitmaps.core` and :mod:`bitmaps.data`. See docs/ARCHITECTURE.md.
"""
