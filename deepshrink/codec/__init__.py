"""Codec layer: symbol streams to bytes and back (rANS, canonical Huffman, packed) and the relative sparse index.

Pure numpy/numba; knows nothing of torch or models. May import only ``deepshrink.errors``.
"""


def warm_up() -> None:
    """Compile (or load from numba's disk cache) every decoder now, so that the first ``load`` is as fast as the next."""
    from ._jit import warm_up as _warm_up

    _warm_up()
