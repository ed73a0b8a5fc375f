"""glibc's malloc hands every freed block above its mmap threshold (at most 32 MiB by default)
back to the kernel, so a training step or a large inference batch that allocates the same big
activations again gets fresh zero-filled pages every time. On a CPU that kernel work can cost
as much as the computation: here GLASS's training spent as much system time as user time,
and Lite0 at batch 32 ran 3× slower than with the blocks kept. `retain_freed_memory` raises
glibc's thresholds so such blocks stay in the heap and are reused; the process keeps its peak
memory instead of returning it between batches. Every detector on a CPU applies it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

OPT_OUT = "ANOMAP_MALLOC_TUNING"  # "0" leaves glibc's defaults alone
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h
THRESHOLD = 1 << 30  # bytes


@functools.cache
def retain_freed_memory() -> bool:
    """Once per process, on Linux with glibc: keep freed blocks up to 1 GiB for reuse.
    Skipped when `ANOMAP_MALLOC_TUNING=0` or when the environment already sets glibc's malloc
    variables (the caller chose its own). Returns whether the settings were changed."""
    if sys.platform != "linux" or os.environ.get(OPT_OUT) == "0":
        return False
    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD)
    )
