"""Process-wide glibc malloc thresholds for services that build large, short-lived buffers.

glibc serves allocations above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with
a fresh `mmap`, and returns the heap's free top to the kernel above its trim threshold. A service
that builds and frees megabyte-sized buffers many times a second, such as log_replay encoding
sample batches, then spends most of its time page-faulting fresh zeroed pages in. Fixed
thresholds keep those blocks in the heap for reuse. The cost is that memory freed at a peak
stays with the process up to the trim threshold.

Setting either threshold turns off glibc's dynamic adjustment, so both are set together.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20
"""glibc's upper bound for M_MMAP_THRESHOLD on 64-bit systems."""


def tune_malloc(mmap_threshold_bytes: int, trim_threshold_bytes: int) -> bool:
    """Sets glibc's mmap and trim thresholds; False (and a log line) where malloc is not glibc's.

    `mmap_threshold_bytes` must lie in [0, 32 MiB]; `trim_threshold_bytes` must be >= 0.
    """
    if not 0 <= mmap_threshold_bytes <= MMAP_THRESHOLD_MAX:
        raise ValueError(f"mmap threshold must lie in [0, {MMAP_THRESHOLD_MAX}], got {mmap_threshold_bytes}")
    if trim_threshold_bytes < 0:
        raise ValueError(f"trim threshold must be >= 0, got {trim_threshold_bytes}")
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("malloc thresholds left as they are: no glibc mallopt in this process")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes) == 1 and mallopt(_M_TRIM_THRESHOLD, trim_threshold_bytes) == 1
    if not ok:
        log.warning("mallopt refused mmap threshold %d / trim threshold %d", mmap_threshold_bytes, trim_threshold_bytes)
    return ok
