"""A GRU's two dense GEMVs (``kernels.gemv_pair``) as one loop nest over the concatenated rows [W_ih | W_hh].

The row-dot rule schedules each reduction block apart: two parallel loops, each streaming rows half as long.  Here
each thread reads whole rows of W, W_ih's part then W_hh's, into two sets of ``lanes``-wide accumulators for blocks
of ``rows`` rows; with ``split="contiguous"`` each thread takes one contiguous share of the rows, as a dense GEMV's
threads stream their own region.  Alone, against the two GEMVs the build made before (row-dot rule, 8 rows, 16
lanes), after a read sweep and warm (2 threads, session 48's Zen 4, ``broadwell`` and ``znver4`` code; contiguous
split): GRU-1500's 4500 × (1504 + 1504) took 0.78–0.88× their time, GRU-750's 2250 × (768 + 768) 0.74–0.96×; one
row-dot GEMV over the same rows (were the candidate gate's halves not needed apart) 0.84–0.89× and 0.83–1.01×.
Longer rows are fewer streams for the prefetchers to find, and one kernel is one parallel launch.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from .gather import SPLITS
from .rules import vector_lanes


@dataclass(frozen=True)
class PairKnobs:
    groups: int = 2  # threads
    rows: int = 12  # rows per block (independent accumulators, concurrent streams)
    lanes: int = 16  # accumulator width
    split: str = "contiguous"  # rows over threads: one contiguous share each, or blocks dealt in turn

    @classmethod
    def for_target(cls, num_cores: int | None, features: "frozenset[str] | set[str]" = frozenset()) -> "PairKnobs":
        """12 rows, one vector register of lanes (``rules.vector_lanes``), as the row-dot rule.  Session 49, Zen 4, the
        dense GRU step (interleaved, 10–12 rounds) against 8 rows of 16 lanes: ``broadwell`` code 0.86× warm,
        0.93–0.96× cold (GRU-750), 0.89–0.95× warm, 0.93–1.00× cold (GRU-1500), 8 rows of 8 lanes in between;
        ``znver4`` (16 lanes either way) 0.96× / 1.06× (GRU-750), 0.92× / 1.03× (GRU-1500): even, on geometric mean."""
        return cls(groups=max(1, num_cores or 2), lanes=vector_lanes(features))

    def space(self) -> list["PairKnobs"]:
        """The small grid ``tune`` measures around these knobs."""
        return [PairKnobs(self.groups, r, self.lanes, split) for r in (4, 8, 16) for split in SPLITS]


def pair_shape(func) -> tuple[int, int, int]:
    """(rows, W_ih's columns, W_hh's columns) of a ``gemv_pair`` or ``masked_gemv_pair`` kernel."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    W, _, h = ArgInfo.from_prim_func(func)[:3]
    n, k = (int(v) for v in W.shape)
    kh = int(h.shape[0])
    return n, k - kh, kh


def pair_gemv(n: int, kx: int, kh: int, knobs: PairKnobs = PairKnobs(), name: str = "gemv_pair"):
    """Scheduled PrimFunc with ``kernels.gemv_pair``'s signature (``kx`` and ``kh`` multiples of ``lanes``); a partial
    last block reads its missing rows as the last row's and writes none of them."""
    G, R, L = knobs.groups, knobs.rows, knobs.lanes
    if knobs.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {knobs.split!r}")
    if kx % L or kh % L:
        raise ValueError(f"reduction lengths {kx}, {kh} are not multiples of lanes={L} (kernels pad to 32)")
    contiguous = knobs.split == "contiguous"
    per = ((n + R - 1) // R + G - 1) // G  # blocks per thread

    def first(g, j):
        """Row of thread g's block j: the j-th block of its share, or block j·G + g dealt in turn."""
        return (g * per + j) * R if contiguous else (j * G + g) * R

    @T.prim_func
    def f(W: T.Buffer((n, kx + kh), "float32"), x: T.Buffer((kx,), "float32"), h: T.Buffer((kh,), "float32"),
          yx: T.Buffer((n,), "float32"), yh: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for g in T.parallel(G):
            ax = T.alloc_buffer((R, L), "float32", scope="local")
            ah = T.alloc_buffer((R, L), "float32", scope="local")
            for j in range(per):
                if first(g, j) < n:
                    for r in T.unroll(R):
                        for l in T.vectorized(L):
                            ax[r, l] = T.float32(0)
                            ah[r, l] = T.float32(0)
                    for ko in range(kx // L):
                        for r in T.unroll(R):
                            for l in T.vectorized(L):
                                ax[r, l] = ax[r, l] + W[T.min(first(g, j) + r, n - 1), ko * L + l] * x[ko * L + l]
                    for ko in range(kh // L):
                        for r in T.unroll(R):
                            for l in T.vectorized(L):
                                ah[r, l] = ah[r, l] + W[T.min(first(g, j) + r, n - 1), kx + ko * L + l] * h[ko * L + l]
                    for r in range(R):
                        if first(g, j) + r < n:
                            yx[first(g, j) + r] = T.float32(0)
                            yh[first(g, j) + r] = T.float32(0)
                            for l in range(L):
                                yx[first(g, j) + r] = yx[first(g, j) + r] + ax[r, l]
                                yh[first(g, j) + r] = yh[first(g, j) + r] + ah[r, l]

    return f.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)
