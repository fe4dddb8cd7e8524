"""The little side's GEMVs (INT8 little GEMV, ternary projection) as streaming loop nests with prefetch.

Inside a decode step the big GEMV streams tens of MB between two calls of the little GEMV, so
its INT8 weights (5.2 MB for LSTM-1500) come from DRAM every step.  Timed alone (weights in
L3) the MetaSchedule-tuned row-dot rule takes 0.116 ms; called in sequence inside the step it
took 0.27 ms.  This nest gives each thread one contiguous slice of rows (one forward stream
for the hardware prefetchers), blocks of ``rows`` rows sharing each loaded z vector, and one
``llvm.prefetch`` per cache line of the block ``prefetch`` blocks ahead: 0.12 ms in the same
in-step measurement (LSTM-1500, 2 threads, 50 % ratio), bit-identical results.  The projection
(int8 P_x, P_h, 1.25 MB) is the same nest run twice in one parallel region, then the
run-time quantisation (a serial pass over 2k values).
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T


@dataclass(frozen=True)
class StreamKnobs:
    groups: int = 2  # parallel contiguous row slices (= threads)
    rows: int = 4  # rows per block (independent accumulators)
    lanes: int = 16  # accumulator width
    prefetch: int = 2  # blocks ahead (0 = no prefetch)
    locality: int = 2  # llvm.prefetch locality: 3 = L1, 2 = L2, 1 = L3

    @classmethod
    def for_target(cls, num_cores: int | None) -> "StreamKnobs":
        return cls(groups=max(1, num_cores or 2))

    def space(self) -> list["StreamKnobs"]:
        """The small grid ``tune`` measures (cache flushed, as inside a step) around these knobs."""
        return [StreamKnobs(self.groups, r, lanes, pf, self.locality)
                for r in (2, 4) for lanes in (8, 16) for pf in (0, 2, 4)]


def _rows_dot(n: int, d: int, knobs: StreamKnobs):
    """Macro: thread ``g``'s contiguous slice of the n × d int8 matrix P times v into out[off + row]."""
    G, R, L, PF, LOC = knobs.groups, knobs.rows, knobs.lanes, knobs.prefetch, knobs.locality
    if d % L:
        raise ValueError(f"reduction length {d} is not a multiple of lanes={L} (kernels pad to 32)")
    per = (n + G - 1) // G  # rows per slice
    blocks = (per + R - 1) // R

    @T.macro
    def rows_dot(P, flat, v, out, off, g):
        acc = T.alloc_buffer((R, L), "float32", scope="local")
        for j in range(blocks):
            if PF > 0:  # one prefetch per cache line of the block PF blocks ahead
                for q in range((R * d + 63) // 64):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.prefetch.p0", T.address_of(flat[T.min((g * per + (j + PF) * R) * d + q * 64, n * d - 1)]),
                        T.int32(0), T.int32(LOC), T.int32(1)))
            for r in T.unroll(R):
                for l in T.vectorized(L):
                    acc[r, l] = T.float32(0)
            for ko in range(d // L):
                for r in T.unroll(R):
                    for l in T.vectorized(L):
                        acc[r, l] = acc[r, l] + T.Cast("float32", P[T.min(g * per + j * R + r, n - 1), ko * L + l]) \
                            * v[ko * L + l]
            for r in range(R):
                if j * R + r < per and g * per + j * R + r < n:
                    out[off + g * per + j * R + r] = T.float32(0)
                    for l in range(L):
                        out[off + g * per + j * R + r] = out[off + g * per + j * R + r] + acc[r, l]

    return rows_dot


def little_gemv_nest(n: int, k: int, knobs: StreamKnobs = StreamKnobs(), name: str = "little_gemv"):
    """Scheduled PrimFunc with ``kernels.little_gemv``'s signature and results."""
    G = knobs.groups
    per = (n + G - 1) // G
    rows_dot = _rows_dot(n, k, knobs)

    @T.prim_func
    def f(Wq: T.Buffer((n, k), "int8"), z: T.Buffer((k,), "float32"), scale: T.Buffer((n,), "float32"),
          bias: T.Buffer((n,), "float32"), pre: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        flat = T.decl_buffer((n * k,), "int8", data=Wq.data)
        for g in T.parallel(G):
            rows_dot(Wq, flat, z, pre, 0, g)
            for i in range(per):
                if g * per + i < n:
                    pre[g * per + i] = pre[g * per + i] * scale[g * per + i] + bias[g * per + i]

    return f.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)


def project_nest(k: int, dx: int, dh: int, knobs: StreamKnobs = StreamKnobs(), name: str = "project",
                 act_bits: int = 8):
    """Scheduled PrimFunc with ``kernels.project``'s signature and results (same ``act_bits``)."""
    k2 = (2 * k + 31) // 32 * 32  # kernels.padded(2k)
    qmax = float(2 ** (act_bits - 1) - 1)
    s3 = 0.5773502691896258  # the 1/√3 of eq. 2
    dot_x, dot_h = _rows_dot(k, dx, knobs), _rows_dot(k, dh, knobs)

    @T.prim_func
    def f(Px: T.Buffer((k, dx), "int8"), Ph: T.Buffer((k, dh), "int8"), x: T.Buffer((dx,), "float32"),
          h: T.Buffer((dh,), "float32"), z: T.Buffer((k2,), "float32")):
        T.func_attr({"tirx.noalias": True})
        flat_x = T.decl_buffer((k * dx,), "int8", data=Px.data)
        flat_h = T.decl_buffer((k * dh,), "int8", data=Ph.data)
        raw = T.alloc_buffer((2 * k,), "float32")
        for g in T.parallel(knobs.groups):
            dot_x(Px, flat_x, x, raw, 0, g)
            dot_h(Ph, flat_h, h, raw, k, g)
        amax = T.alloc_buffer((2,), "float32", scope="local")
        for half in range(2):
            amax[half] = T.float32(1e-12)
            for i in range(k):
                amax[half] = T.max(amax[half], T.abs(raw[half * k + i]) * T.float32(s3))
        for i in range(k2):
            z[i] = T.if_then_else(
                i < 2 * k, T.round(raw[T.min(i, 2 * k - 1)] * T.float32(s3) * T.float32(qmax) / amax[T.min(i // k, 1)])
                * amax[T.min(i // k, 1)] / T.float32(qmax), T.float32(0))

    return f.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)
