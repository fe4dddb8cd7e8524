"""Weights on 2 MB pages: fewer TLB misses for the GEMVs that stream them every decode step.

A decode step reads tens of MB of weights once (LSTM-1500: 72 MB; the 1024-unit GNMT's four decoder
layers and output projection: ~230 MB a token), 4 KB page after 4 KB page: a TLB miss every 1024
floats, and the masked GEMV's scattered rows defeat the page walker's prefetch.  Linux gives
anonymous memory transparent huge pages where ``madvise(MADV_HUGEPAGE)`` asks for them (the default
THP mode is ``madvise``), so weights are copied into such a mapping and handed to TVM zero-copy
(DLPack).  Measured on a 1024×3072-input LSTM layer step, caches flushed, interleaved: dense 1.09×,
dual-module 1.04× faster.  Elsewhere (no ``MADV_HUGEPAGE``) it is a plain TVM tensor.

Every array of a decoder goes there, small ones too (:func:`weight_tensors` packs them into one mapping):
with the cache cold, each 4 KB page a kernel touches costs a page walk whose own lines come from DRAM
(nested paging in a VM makes that several µs), and the 1.25 MB ternary projection of LSTM-1500 on 4 KB
pages took 0.57 ms in a cold step instead of 0.08 ms on huge pages.
"""
from __future__ import annotations

import logging
import mmap

import numpy as np

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MIN_BYTES = HUGE_PAGE  # less would waste most of a huge page
PAGE = 4096


def huge_page_arena(nbytes: int) -> "np.ndarray | None":
    """``nbytes`` of zeroed uint8 in an anonymous mapping advised for huge pages, 2 MB aligned and covering whole
    2 MB pages (so its tail is huge too); None where the platform has no ``MADV_HUGEPAGE``."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    whole = -(-max(nbytes, 1) // HUGE_PAGE) * HUGE_PAGE
    mm = mmap.mmap(-1, whole + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except OSError as e:  # THP disabled ("never") or not supported
        log.debug("madvise(MADV_HUGEPAGE) refused: %s", e)
    raw = np.frombuffer(mm, np.uint8)
    start = (-raw.ctypes.data) % HUGE_PAGE
    return raw[start: start + nbytes]  # keeps the mapping alive (numpy base chain), as do views of it


def weight_tensors(arrays: "dict[str, np.ndarray]", dev, huge_pages: bool = True) -> dict:
    """TVM tensors of ``arrays`` for the kernels, all in one :func:`huge_page_arena` (each at a 4 KB boundary)
    when together they fill a huge page and it is asked for; else plain TVM tensors.  Update one in place
    (``tensor.copyfrom``) to keep it there."""
    import tvm

    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    offsets, total = {}, 0
    for k, v in arrays.items():
        offsets[k] = total
        total += -(-v.nbytes // PAGE) * PAGE
    arena = huge_page_arena(total) if huge_pages and total >= MIN_BYTES else None
    if arena is None:
        return {k: tvm.runtime.tensor(v, dev) for k, v in arrays.items()}
    out = {}
    for k, v in arrays.items():
        view = arena[offsets[k]: offsets[k] + v.nbytes].view(v.dtype).reshape(v.shape)
        view[...] = v  # first touch, in address order
        out[k] = tvm.runtime.from_dlpack(view)
    return out


def huge_page_bytes() -> int:
    """This process's anonymous memory on huge pages (``AnonHugePages`` of /proc/self/smaps_rollup), 0 if unknown."""
    try:
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
