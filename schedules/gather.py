"""The masked big GEMV written as a scheduled loop nest, with software prefetch of the next rows.

``kernels.masked_gemv`` defines ``yc[p] = W[rows[p]] · x for p < count``; the row-dot rule
schedules it, but its loads follow a compacted row list: every row is a new 12 KB stream that
the hardware prefetchers have to discover, and the masked GEMV reached only ~40 GB/s where the
dense one streams at ~60 (LSTM-1500, 2 threads).  No s_tir schedule primitive emits a
software prefetch, so this is the same schedule (row groups per thread, blocks of ``rows``
rows sharing each loaded x vector, ``lanes``-wide accumulators) written out as loops, with one
``llvm.prefetch`` per cache line of the rows ``prefetch`` blocks ahead.  Measured on
6000×3008 at 50 % rows: 0.87 ms (row-dot rule) → 0.66 ms (this, no prefetch) → 0.54 ms
(prefetch 1 block ahead into L2).  On a later 2-core AMD EPYC host more rows in flight paid: 16-row
blocks prefetched two blocks ahead (locality 3) against 8 rows one block ahead into L2, side by side
after a read sweep: 0.36 vs 0.49 ms at 50 % (30 %: 0.96 vs 1.14; 70 %: 0.29 vs 0.40), 3000×1536 0.13
vs 0.19, 4096×2048 0.24 vs 0.26, 2250×768 0.056 vs 0.063, 4096×3072 a tie; inside the LSTM-1500 step
(interleaved builds) the big part fell 15 % warm, 5 % cold.  ``tune``'s grid still picks per machine.
That kernel-alone default lost in the step: ``tune.py --in-step`` times whole decode steps under each knob
setting, and over its seven searches on three machines (Zen 4, Xeon, Zen 3; LSTM-1500, LSTM-750, GRU-750,
both GNMT layers) 4-row blocks without software prefetch took 0.83× the 16-row, two-ahead step's time on geometric
mean, and were never slower (``tune.py --in-step-ranking`` reads this from the committed logs; our reading, not measured: the hardware
prefetchers follow four row streams per thread unaided, and more streams or prefetches compete with them).
That was the default from session 40 to 46 (see ``split`` below for today's).  Non-temporal prefetch (locality 0,
``prefetchnta``), meant to keep the little module in L3 across steps, lost on that host in the step: big part +6 %
warm / +15 % cold, and the little GEMV no faster.
Nor did prefetching only the first 2–16 cache lines of each row of the next block (to start the hardware
prefetchers' streams early; session 41, Zen 3): alone, with the row list changing every call and no sweep, it
took 0.78–0.88× the time of the 4-row default, but in the LSTM-1500 step its best setting came out at 1.001×
(confirmation pass of an in-step search; 0.956× in the search pass): not kept.
``split`` (session 46): the row list's blocks are dealt to the threads in turn, so the two threads read neighbouring
rows at once; with ``"contiguous"`` each thread takes one share of the list and reads its own region of W, as a dense
GEMV's threads do (why that could pay, our reading, not measured: each core's prefetchers run on past a row's end
into rows the other thread reads).  In six in-step searches on a Zen 3 (both GNMT layers and LSTM-1500, each
on both targets) 8-row blocks split so took 0.958× the default step's time on geometric mean (search passes; worst
1.021×), and against 8 interleaved rows 0.93–1.00× in the five confirmation passes that timed both, but 0.89–1.07×
in the search passes: one pass's noise on this host is about that size.  Four of the six verdicts took it.  Session
47's Zen 4 decided the two GNMT layers for ``znver4`` and took it too (0.820×, 0.915×); over the eight searches with
the knob, two machines, 8 contiguous rows took 0.933× the step time of 4 interleaved rows on geometric mean (worst
1.021×, best 0.850×), ahead of 8 interleaved rows (0.958× over those searches and the five before the knob).  It is the
default since session 47: what a masked GEMV without a verdict (a user's own layer shape) builds.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from dualtvm.kernels import ROW_LIST_SLACK

from .rules import vector_lanes


SPLITS = ("interleave", "contiguous")


@dataclass(frozen=True)
class GatherKnobs:
    groups: int = 2  # parallel row groups (= threads)
    rows: int = 8  # rows per block (independent accumulators, concurrent streams)
    lanes: int = 16  # accumulator width; one prefetch per ``lanes`` floats (64 B at 16)
    prefetch: int = 0  # blocks ahead (0 = no prefetch)
    locality: int = 3  # llvm.prefetch locality: 3 = L1, 2 = L2, 1 = L3
    split: str = "contiguous"  # the row list over threads: one contiguous share each, or blocks dealt in turn

    @classmethod
    def for_target(cls, num_cores: int | None, features: "frozenset[str] | set[str]" = frozenset()) -> "GatherKnobs":
        """One vector register of lanes (``rules.vector_lanes``).  Session 49, Zen 4, ``broadwell`` code at 50 %,
        in the step (interleaved, 10–12 rounds), 8 lanes against 16: a GRU's masked pair 0.88× / 0.95× warm / cold
        (GRU-1500), 0.97× / 1.01× (GRU-750); LSTM masked GEMVs 0.95–1.05×, so the verdicts (16 lanes) stay."""
        return cls(groups=max(1, num_cores or 2), lanes=vector_lanes(features))

    @classmethod
    def from_record(cls, record: dict) -> "GatherKnobs":
        """Knobs as a tuning log stores them: verdicts written before session 46 have no ``split``, and theirs was
        the interleaved one (the default until session 47), not today's default."""
        return cls(**{"split": "interleave", **record})

    def space(self) -> list["GatherKnobs"]:
        """The small grid ``tune`` measures around these knobs."""
        return [GatherKnobs(self.groups, r, self.lanes, pf, loc, self.split)
                for r in (4, 8, 16) for pf, loc in ((0, 3), (1, 2), (2, 2), (1, 1), (1, 3), (2, 3))]


def _block_macros(n: int, knobs: GatherKnobs):
    """(blocks per thread, first, limit, zero, accumulate, write): the pieces of a masked GEMV nest over ``n`` places.

    ``first(g, j, share)`` is the list place of thread g's block j's first row (interleaved, block j·G + g of the
    list; contiguous, the j-th block of thread g's share, a whole number of blocks, so the shares do not overlap),
    ``limit(g, share, count)`` the end of thread g's places.  The macros zero a block's accumulators, add the
    columns ``col0`` … ``col0 + length`` of its rows times ``v`` into them (prefetching the rows ``prefetch``
    blocks ahead), and write their sums to the block's places."""
    G, R, L, PF, LOC = knobs.groups, knobs.rows, knobs.lanes, knobs.prefetch, knobs.locality
    if knobs.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {knobs.split!r}")
    if R - 1 > ROW_LIST_SLACK:
        raise ValueError(f"blocks of {R} rows read past the {ROW_LIST_SLACK} zeroed places after a row list's count")
    contiguous = knobs.split == "contiguous"

    def first(g, j, share):
        return g * share + j * R if contiguous else (j * G + g) * R

    def limit(g, share, count):
        return T.min((g + 1) * share, count) if contiguous else count

    @T.macro
    def zero(acc):
        for r in T.unroll(R):
            for l in T.vectorized(L):
                acc[r, l] = T.float32(0)

    @T.macro
    def accumulate(acc, W, v, rows, count, col0, length, g, j, share):
        for ko in range(length // L):
            if PF > 0:
                if first(g, j + PF, share) < limit(g, share, count[0]):
                    for r in T.unroll(R):
                        T.evaluate(T.call_llvm_intrin(
                            "void", "llvm.prefetch.p0",
                            T.address_of(W[rows[T.min(first(g, j + PF, share) + r, n - 1)], col0 + ko * L]),
                            T.int32(0), T.int32(LOC), T.int32(1)))
            for r in T.unroll(R):
                for l in T.vectorized(L):
                    acc[r, l] = acc[r, l] + W[rows[T.min(first(g, j, share) + r, n - 1)], col0 + ko * L + l] * v[ko * L + l]

    @T.macro
    def write(acc, yc, count, g, j, share):
        for r in range(R):
            if first(g, j, share) + r < limit(g, share, count[0]):
                yc[first(g, j, share) + r] = T.float32(0)
                for l in range(L):
                    yc[first(g, j, share) + r] = yc[first(g, j, share) + r] + acc[r, l]

    return (n + G * R - 1) // (G * R), first, limit, zero, accumulate, write  # a partial last block: clamped rows


def gather_gemv(n: int, k: int, knobs: GatherKnobs = GatherKnobs(), name: str = "masked_gemv"):
    """Scheduled PrimFunc with ``kernels.masked_gemv``'s signature; a block of ``rows`` places starting before
    ``count`` is read whole, up to ``rows`` − 1 places past it (the mask zeroes ``ROW_LIST_SLACK`` of them)."""
    G, R, L = knobs.groups, knobs.rows, knobs.lanes
    if k % L:
        raise ValueError(f"reduction length {k} is not a multiple of lanes={L} (kernels pad to 32)")
    blocks, first, limit, zero, accumulate, write = _block_macros(n, knobs)

    @T.prim_func
    def f(W: T.Buffer((n, k), "float32"), x: T.Buffer((k,), "float32"), rows: T.Buffer((n,), "int32"),
          count: T.Buffer((1,), "int32"), yc: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for g in T.parallel(G):
            acc = T.alloc_buffer((R, L), "float32", scope="local")
            share: T.int32 = (count[0] + G * R - 1) // (G * R) * R
            for j in range(blocks):
                if first(g, j, share) < limit(g, share, count[0]):
                    zero(acc)
                    accumulate(acc, W, x, rows, count, 0, k, g, j, share)
                    write(acc, yc, count, g, j, share)

    return f.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)


def gather_pair_gemv(n: int, kx: int, kh: int, knobs: GatherKnobs = GatherKnobs(), name: str = "masked_gemv_pair"):
    """Scheduled PrimFunc with ``kernels.masked_gemv_pair``'s signature: :func:`gather_gemv`'s nest over the rows of
    [W_ih | W_hh], W_ih's part of each into one set of accumulators (ycx) and W_hh's into another (ych): a GRU's two
    masked GEMVs in one pass over rows twice as long (``schedules.pair`` has the dense one).  Alone at 50 % rows
    (8 contiguous rows, session 48's Zen 4, both targets, warm and after a read sweep) it took 0.65–0.97× the time of
    the two masked GEMVs over the halves, GRU-1500's and GRU-750's shapes.  Two reduction loops, not one with a test
    of which half a column is in: that one took 1.09–1.67× warm."""
    G, R, L = knobs.groups, knobs.rows, knobs.lanes
    if kx % L or kh % L:
        raise ValueError(f"reduction lengths {kx}, {kh} are not multiples of lanes={L} (kernels pad to 32)")
    blocks, first, limit, zero, accumulate, write = _block_macros(n, knobs)

    @T.prim_func
    def f(W: T.Buffer((n, kx + kh), "float32"), x: T.Buffer((kx,), "float32"), h: T.Buffer((kh,), "float32"),
          rows: T.Buffer((n,), "int32"), count: T.Buffer((1,), "int32"), ycx: T.Buffer((n,), "float32"),
          ych: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for g in T.parallel(G):
            ax = T.alloc_buffer((R, L), "float32", scope="local")
            ah = T.alloc_buffer((R, L), "float32", scope="local")
            share: T.int32 = (count[0] + G * R - 1) // (G * R) * R
            for j in range(blocks):
                if first(g, j, share) < limit(g, share, count[0]):
                    zero(ax)
                    zero(ah)
                    accumulate(ax, W, x, rows, count, 0, kx, g, j, share)
                    accumulate(ah, W, h, rows, count, kx, kh, g, j, share)
                    write(ax, ycx, count, g, j, share)
                    write(ah, ych, count, g, j, share)

    return f.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)
