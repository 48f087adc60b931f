"""Returning freed memory to the OS after the big, short-lived temporaries of a whole-model pass."""

from __future__ import annotations

import ctypes
import sys


def release_memory() -> None:
    """``malloc_trim(0)`` on glibc: without it freed numpy/torch temporaries stay in the heap's arenas."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
