"""Codec layer: symbol streams to bytes and back (rANS, canonical Huffman, packed) and the relative sparse index.

Pure numpy/numba; knows nothing of torch or models. May import only ``deepshrink.errors``.
"""
