"""Process-wide setting of the C allocator for CPU training.

PyTorch's CPU tensors come straight from ``malloc`` and go back with ``free``: there is no caching allocator on
CPU. With glibc's defaults, blocks above its (adaptive) mmap threshold are fresh ``mmap`` pages, and free memory at
the top of the heap beyond its trim threshold is handed back to the kernel. Both thresholds adapt, and with some
allocation patterns they never settle: a training step that allocates and frees the same activations every
step then pays a page fault, the kernel zero-filling the page, for each 4 KiB it touches again (BENCHMARKS.md,
"Figures behind choices in the code"); patterns that settle by themselves are unaffected. Raising the thresholds
keeps that memory in the process between steps.

The setting is process-wide (it also speeds up any other library in the process) and keeps up to
``trim_threshold`` bytes of freed memory reserved; the command line applies it to every command. Other C
libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MiB = 1 << 20


def keep_freed_memory(
    mmap_threshold: int = 32 * MiB, trim_threshold: int = 256 * MiB, top_pad: int = 16 * MiB
) -> bool:
    """Serve blocks below ``mmap_threshold`` from the heap (32 MiB is glibc's largest allowed value), keep up to
    ``trim_threshold`` bytes of free heap before returning any to the kernel, and grow the heap ``top_pad`` bytes
    at a time. Returns whether glibc accepted all three (False on other C libraries, where nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no glibc (mallopt is a glibc extension)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad))
    return all(mallopt(param, value) == 1 for param, value in settings)
