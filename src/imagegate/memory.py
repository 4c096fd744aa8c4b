"""glibc's malloc thresholds, set once per serving process, so request-sized buffers are reused.

A 1K answer passes about 4 MB through fresh buffers: aiohttp's body chunks, their join, the
decoded image. glibc gives memory back to the kernel when more than its trim threshold (twice a
dynamic mmap threshold, so about 4 MB here) is free at the top of the heap, which a request just
finished leaves. The next request then faults the same megabytes in again, zeroed page by page:
about 1,000 page faults per request (`perf stat -e page-faults` on `imagegate serve` under
bench/gateway_overhead.py, 1 client; 20 with these settings). On a VM each of those is also a
host fault, 2.5-3 us per 4 KiB page on the 2-core machine of the benches.

`keep_request_buffers` fixes the mmap threshold at MMAP_THRESHOLD_BYTES, so buffers up to it come
from the heap, and lets up to IMAGEGATE_MALLOC_KEEP_BYTES stay free at the heap's top for the
next request. Buffers above the threshold (a 4K image's 30 MB) are still mapped and unmapped on
their own, as glibc's default does once a first one is freed: they never stay, which keeps the
conversion budget's peak RSS where it was (bench/README.md measured larger thresholds raising it).
IMAGEGATE_MALLOC_KEEP_BYTES=0 leaves glibc's defaults; so does any other C library.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger("imagegate")

# mallopt's parameter numbers (glibc's malloc.h). Setting either also stops glibc's dynamic
# adjustment of both, which is the point: the values below then hold whatever is freed.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# A 2K image's base64 is about 8 MB; anything bigger is rare enough to be mapped per use.
MMAP_THRESHOLD_BYTES = 8 * 1024 * 1024
DEFAULT_KEEP_BYTES = 64 * 1024 * 1024


def keep_request_buffers(keep_bytes: int) -> bool:
    """Set the thresholds for this process; True when they were set (glibc, keep_bytes > 0)."""
    if keep_bytes <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a static or unusual build: keep the defaults
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt takes an int: the trim threshold is capped at 1 GiB (far above any sensible value).
    trim = min(max(keep_bytes, MMAP_THRESHOLD_BYTES), 1 << 30)
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, trim))
    if not ok:
        log.warning("mallopt refused the malloc thresholds; glibc's defaults stay")
    return ok
