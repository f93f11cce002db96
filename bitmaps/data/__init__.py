"""The data layer: registry assets (models and text), text files → documents → packed token
sequences, masking, held-out splits and the disk cache. Used by training and by profiling alike, so
it sits below both; it imports only :mod:`bitmaps.core`. See docs/ARCHITECTURE.md.
"""
