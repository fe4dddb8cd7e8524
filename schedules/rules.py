"""Schedule rules: row-dot reductions (every GEMV of the step) and element-wise epilogues.

Row-dot (a reduction ``y[i] = Σ_j A[r(i), j] · b[j]``, with or without a row predicate):
  rows split into (j, g) and ``g`` made the outer, parallel loop, so compacted row lists —
  whose sensitive rows are all at the front — are spread over threads round-robin;
  the reduction split into vector lanes and rfactor-ed (factor_axis=1 keeps lanes contiguous),
  the lane-sum reverse-computed under the row loop so the predicate ``p < count`` stays on
  the loads (compute_at would drop it), accumulators in registers.
Knobs: ``lanes`` (vector width of the reduction), ``groups`` (row interleave = parallel
chunks), ``unroll`` (auto-unroll step of the reduction loop).
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir

ROW_DOT_BLOCKS = ("dot", "dot_x", "dot_h")
ELEMENTWISE_BLOCKS = ("epilogue", "quant", "gate", "cell", "hidden", "rz", "concat", "concat_h")


@dataclass(frozen=True)
class Knobs:
    """One row group per thread (each thread streams its own part of the rows; groups = 8 instead, on a masked
    6000×3008 GEMV at 50 %: 1.43 ms against 1.02), ``rows``-row register blocks, ``lanes``-wide accumulators.

    12 rows in flight, one vector register of lanes each (:meth:`for_target`: 8 on AVX2, so 12 accumulators fit its 16
    ymm registers with x; 16 on AVX-512).  Session 49, Zen 4, the dense LSTM step (interleaved, 10–16 rounds) against
    the 8-row blocks of 16 lanes before: LSTM-750 (its 18 MB in L3) 0.88× warm, 0.975× cold on ``broadwell``,
    0.865× / 0.958× on ``znver4``; LSTM-1500 0.94–1.005×; the GNMT layer 0.96–0.97× on ``broadwell`` (2048 rows a
    thread, which 12 does not divide: :func:`row_dot` takes the largest block that does, 8).  Alone, 15 rows took
    as long as 12 and 20 longer (1.06–1.13× the 8-row time): what pays is more rows streaming, up to a point."""

    lanes: int = 16
    groups: int = 2
    rows: int = 12
    unroll: int = 0

    @classmethod
    def for_target(cls, num_cores: int | None, features: "frozenset[str] | set[str]" = frozenset()) -> "Knobs":
        return cls(lanes=vector_lanes(features), groups=max(1, num_cores or 2))


def vector_lanes(features: "frozenset[str] | set[str]") -> int:
    """fp32 lanes of one vector register, the default accumulator width of the GEMV rules and nests: 16 (zmm) where the
    target has AVX-512, else 8 (ymm).  At 16 lanes on AVX2 every accumulator takes two of its 16 registers, and 8-row
    blocks (a GRU pair's two sets of them even more) spill accumulators to the stack in the inner loop."""
    return 16 if "avx512f" in features else 8


DEFAULT_KNOBS = Knobs()
UNROLL_CHOICES = (0, 4, 16)
LANE_CHOICES = (8, 16, 32)  # reductions are padded to a multiple of 32 (kernels.PAD)


def _blocks(sch: s_tir.Schedule, names) -> list:
    out = []
    for name in names:
        try:
            out.append(sch.get_sblock(name))
        except Exception:  # noqa: BLE001 - the kernel does not have this block
            pass
    return out


def row_dot(sch: s_tir.Schedule, block, knobs: Knobs | None) -> None:
    """Schedule one row-dot reduction block; ``knobs=None`` samples them (design space).

    Rows p = (j · groups + g) · rows + r: thread-parallel ``g`` outermost, blocks of ``rows``
    contiguous rows sharing each loaded x vector (register blocking), lanes innermost.
    """
    p, k = sch.get_loops(block)
    if knobs is None:
        pj, pg, pr = sch.split(p, sch.sample_perfect_tile(p, n=3, max_innermost_factor=8))
        lanes = sch.sample_categorical(list(LANE_CHOICES), [0.25, 0.5, 0.25])
        ko, ki = sch.split(k, [None, lanes])
        unroll = sch.sample_categorical(list(UNROLL_CHOICES), [0.4, 0.3, 0.3])
    else:
        n_rows = int(sch.get(p).extent)
        groups = max(1, min(knobs.groups, n_rows))
        while n_rows % groups:
            groups -= 1
        rows = max(1, min(knobs.rows, n_rows // groups))
        while (n_rows // groups) % rows:
            rows -= 1
        pj, pg, pr = sch.split(p, [None, groups, rows])
        ko, ki = sch.split(k, [None, knobs.lanes])
        unroll = knobs.unroll
    sch.reorder(pg, pj, pr, ko, ki)
    rf = sch.rfactor(ki, factor_axis=1)
    pg, pj, pr, ko, ki = sch.get_loops(rf)
    sch.parallel(pg)
    sch.reorder(ko, pr)
    sch.reverse_compute_at(block, pj)
    sch.set_scope(rf, 0, "local")
    sch.vectorize(ki)
    sch.unroll(pr)
    sch.annotate(ko, "pragma_auto_unroll_max_step", unroll)
    sch.annotate(ko, "pragma_unroll_explicit", 1)
    sch.decompose_reduction(rf, ko)


def elementwise(sch: s_tir.Schedule, block, lanes: tuple[int, ...] = (8, 4)) -> None:
    """Vectorise a one-loop element-wise block by the widest of ``lanes`` that divides its extent (none: scalar).

    Half-width vectors for extents that are not whole ymm registers: a GRU-750's r, z gates (1500 rows)."""
    (i,) = sch.get_loops(block)
    extent = int(sch.get(i).extent)
    width = next((w for w in lanes if extent % w == 0 and extent >= w), None)
    if width is not None:
        _, vi = sch.split(i, [None, width])
        sch.vectorize(vi)


def schedule_kernel(sch: s_tir.Schedule, knobs: Knobs | None = DEFAULT_KNOBS) -> s_tir.Schedule:
    """Apply the rules to every block of a dualtvm kernel (any other block is left as is)."""
    for block in _blocks(sch, ROW_DOT_BLOCKS):
        row_dot(sch, block, knobs)
    for block in _blocks(sch, ELEMENTWISE_BLOCKS):
        elementwise(sch, block)
    return sch


def apply_default(func, knobs: Knobs = DEFAULT_KNOBS):
    """The untuned, hand-scheduled PrimFunc (marked scheduled so the default pipeline keeps it).

    Pass ``Knobs.for_target(num_cores, features)`` so row groups match the target's threads, lanes its vectors.
    """
    if not _has_sblocks(func):
        return func.with_attr("tirx.is_scheduled", True)
    sch = s_tir.Schedule(func)
    schedule_kernel(sch, knobs)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def has_design_space(func) -> bool:
    """Whether the rules sample anything for ``func`` (a row-dot block): else MetaSchedule has nothing to search."""
    return _has_sblocks(func) and bool(_blocks(s_tir.Schedule(func), ROW_DOT_BLOCKS))


def design_space(sch: s_tir.Schedule) -> s_tir.Schedule:
    """MetaSchedule ``ScheduleFn``: the same rules with sampled knobs."""
    return schedule_kernel(sch, knobs=None)


def _has_sblocks(func) -> bool:
    return "T.sblock(" in func.script() if hasattr(func, "script") else True
