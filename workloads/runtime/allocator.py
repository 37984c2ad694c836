"""Fixed glibc malloc thresholds for the job's process (CPU training, bench, evaluation).

glibc starts with a 128 KiB mmap threshold that rises only when a larger mmapped chunk is freed (up to 32 MiB),
and trims the heap top whenever more than twice that is free. A training step allocates and frees activation
tensors of a few MiB: served from mmap (or from a heap that was just trimmed) each one faults its pages in
again on every step. How often that happens depends on what ran before — dataset loading, an evaluation
pass with other tensor sizes — so the same step ran 5-20 % slower after the first evaluation of a run, and a
bench that had not allocated the same way mispredicted training. Setting both thresholds with mallopt keeps
freed memory in the heap for reuse, whatever ran before: the same step costs the same time throughout a run
and in the bench (benchmarks/malloc_tuning.py measures the difference).
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling for this setting on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 * 2**30  # keep up to 1 GiB of freed heap for reuse: a training process reuses it every step

ENV_SWITCH = "FASTROBUST_TUNE_MALLOC"  # "0": leave glibc's defaults (to compare, see benchmarks/malloc_tuning.py)

_applied: dict[str, Any] | None = None


def tune_malloc() -> dict[str, Any] | None:
    """Fix glibc's mmap and trim thresholds for this process (idempotent); returns what was set (recorded in
    env.json), or None where the C library is not glibc (macOS, musl) or refuses a setting."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get(ENV_SWITCH, "1") == "0" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    # mallopt returns 1 on success; either setting also turns glibc's dynamic threshold adjustment off
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return None
    _applied = {"mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
    return _applied


def applied() -> dict[str, Any] | None:
    """What tune_malloc set in this process, None if it did not run or could not."""
    return _applied
