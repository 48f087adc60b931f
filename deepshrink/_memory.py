"""Returning freed memory to the OS after the big, short-lived temporaries of a whole-model pass."""

from __future__ import annotations

import ctypes
import sys

# Below this many weights a whole-model pass leaves too little freed memory to be worth a trim.
TRIM_ABOVE = 1 << 24


def release_memory(weights: int) -> None:
    """``malloc_trim(0)`` on glibc after a pass over ``weights`` weights, when that is a large model.

    Without it freed numpy/torch temporaries stay in the heap's arenas (measured: VGG-16's peak RSS).
    Small models skip it: it changes process state that the caller may not expect, for nothing.
    """
    if weights <= TRIM_ABOVE or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
