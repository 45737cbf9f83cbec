"""Process-wide glibc malloc thresholds for services that build large, short-lived buffers.

glibc serves allocations above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with
a fresh `mmap`, and returns the heap's free top to the kernel above its trim threshold. A service
that builds and frees megabyte-sized buffers many times a second, such as log_replay encoding
sample batches, then spends most of its time page-faulting fresh zeroed pages in. Fixed
thresholds keep those blocks in the heap for reuse. The cost is that memory freed at a peak
stays with the process up to the trim threshold.

Setting either threshold turns off glibc's dynamic adjustment, so both are set together.

glibc also gives threads that contend for malloc arenas of their own (up to 8 per core), each
keeping its own free memory. Capping the number of arenas keeps a service's footprint close to
what it holds, for services whose threads allocate a lot but rarely at the same instant.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_MAX = 32 << 20
"""glibc's upper bound for M_MMAP_THRESHOLD on 64-bit systems."""


def tune_malloc(mmap_threshold_bytes: int, trim_threshold_bytes: int, arena_max: int = 0) -> bool:
    """Sets glibc's mmap and trim thresholds (mmap_threshold_bytes 0: leaves both as they are) and
    its arena cap (arena_max 0: leaves it); False (and a log line) where malloc is not glibc's.

    `mmap_threshold_bytes` must lie in [0, 32 MiB]; `trim_threshold_bytes` and `arena_max` >= 0.
    """
    if not 0 <= mmap_threshold_bytes <= MMAP_THRESHOLD_MAX:
        raise ValueError(f"mmap threshold must lie in [0, {MMAP_THRESHOLD_MAX}], got {mmap_threshold_bytes}")
    if trim_threshold_bytes < 0:
        raise ValueError(f"trim threshold must be >= 0, got {trim_threshold_bytes}")
    if arena_max < 0:
        raise ValueError(f"arena cap must be >= 0, got {arena_max}")
    settings = ([(_M_MMAP_THRESHOLD, mmap_threshold_bytes), (_M_TRIM_THRESHOLD, trim_threshold_bytes)]
                if mmap_threshold_bytes else []) + ([(_M_ARENA_MAX, arena_max)] if arena_max else [])
    if not settings:
        return True
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("malloc settings left as they are: no glibc mallopt in this process")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    refused = [(param, value) for param, value in settings if mallopt(param, value) != 1]
    if refused:
        log.warning("mallopt refused %s", ", ".join(f"parameter {p} = {v}" for p, v in refused))
    return not refused
