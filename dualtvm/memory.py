"""Weights on 2 MB pages: fewer TLB misses for the GEMVs that stream them every decode step.

A decode step reads tens of MB of weights once (LSTM-1500: 72 MB; the 1024-unit GNMT's four decoder
layers and output projection: ~230 MB a token), 4 KB page after 4 KB page: a TLB miss every 1024
floats, and the masked GEMV's scattered rows defeat the page walker's prefetch.  Linux gives
anonymous memory transparent huge pages where ``madvise(MADV_HUGEPAGE)`` asks for them (the default
THP mode is ``madvise``), so weights are copied into such a mapping and handed to TVM zero-copy
(DLPack).  Measured on a 1024×3072-input LSTM layer step, caches flushed, interleaved: dense 1.09×,
dual-module 1.04× faster.  Elsewhere (no ``MADV_HUGEPAGE``) it is a plain TVM tensor.
"""
from __future__ import annotations

import logging
import mmap

import numpy as np

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MIN_BYTES = HUGE_PAGE  # smaller arrays would waste most of a huge page


def huge_page_array(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` in an anonymous mapping advised for huge pages, 2 MB aligned (``a`` itself where the
    platform has no ``MADV_HUGEPAGE``)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return a
    mm = mmap.mmap(-1, a.nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except OSError as e:  # THP disabled ("never") or not supported
        log.debug("madvise(MADV_HUGEPAGE) refused: %s", e)
    raw = np.frombuffer(mm, np.uint8)
    start = (-raw.ctypes.data) % HUGE_PAGE
    out = raw[start: start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a  # first touch: the kernel backs the aligned 2 MB ranges with huge pages
    return out  # keeps the mapping alive (numpy base chain), as does the DLPack view TVM holds


def weight_tensor(a: np.ndarray, dev, huge_pages: bool = True):
    """A TVM tensor of ``a`` for the kernels to stream: on huge pages when large enough and asked for."""
    import tvm

    a = np.ascontiguousarray(a)
    if huge_pages and a.nbytes >= MIN_BYTES and hasattr(mmap, "MADV_HUGEPAGE"):
        return tvm.runtime.from_dlpack(huge_page_array(a))
    return tvm.runtime.tensor(a, dev)


def huge_page_bytes() -> int:
    """This process's anonymous memory on huge pages (``AnonHugePages`` of /proc/self/smaps_rollup), 0 if unknown."""
    try:
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
