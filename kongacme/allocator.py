"""
glibc's allocator, tuned for a proxy's large short-lived buffers.

A download is relayed in reads of up to 256 KiB, each becoming a bytes
object, records of the same size and their copies, freed a moment later.
With glibc's defaults, whether such a buffer comes from ``mmap`` or the
heap, and whether the heap's top is given back to the kernel after it is
freed, moves with the sizes seen so far (the thresholds are dynamic): a
daemon then relays bulk bytes in one of two modes, one of them about a
third slower per CPU-second, spending it on page faults (seen on
pyOpenSSL sessions, whose reads make the larger copies: bench/RESULTS.md,
"The compiled steady state", and ``bench/bulk_faults.py --cold``). Fixing both thresholds keeps every
such buffer on the heap and the heap's top in place up to
:data:`TRIM_THRESHOLD`: the slow mode is gone, for at most that much memory
kept free at the heap's top.

An operator's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
(glibc's environment variables) are left as they are; another C library
is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Mapping

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Buffers up to this size come from the heap, not ``mmap``.
MMAP_THRESHOLD = 1 << 20

#: Free memory at the heap's top kept (not given back to the kernel) up to this.
TRIM_THRESHOLD = 4 << 20

_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _glibc() -> Any:
    """The C library, if it is glibc (it has ``gnu_get_libc_version``); else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def tune_allocator(environ: Mapping[str, str] = os.environ, libc: Any = None) -> bool:
    """
    Fix glibc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`,
    :data:`TRIM_THRESHOLD`) for this process and those it forks; False when
    nothing was changed (not glibc, or the operator set either threshold).
    """
    if any(name in environ for name in _ENVIRONMENT):
        return False
    libc = libc if libc is not None else _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
