"""The little side's GEMVs (INT8 little GEMV, ternary projection) as streaming loop nests with prefetch.

Inside a decode step the big GEMV streams tens of MB between two calls of the little GEMV, so
its INT8 weights (5.2 MB for LSTM-1500) come from DRAM every step.  Timed alone (weights in
L3) the MetaSchedule-tuned row-dot rule takes 0.116 ms; called in sequence inside the step it
took 0.27 ms.  This nest gives each thread one contiguous slice of rows (one forward stream
for the hardware prefetchers), blocks of ``rows`` rows sharing each loaded z vector, and one
``llvm.prefetch`` per cache line of the block ``prefetch`` blocks ahead: 0.12 ms in the same
in-step measurement (LSTM-1500, 2 threads, 50 % ratio), bit-identical results.  The projection
(int8 P_x, P_h, 1.25 MB) is the same nest run twice in one parallel region, then the rows' scales and the
run-time quantisation (serial passes over 2k values).

INT4 weights (``little_gemv_int4_nest``) run on integers: each packed byte gives two unsigned
nibbles, ``pmaddubsw`` multiplies them with the INT8 projection codes into exact int16 pairs
(15 × 127 × 2 < 2^15: no saturation, unlike an INT8 weight offset to u8) and ``pmaddwd`` widens them to int32
lanes; both are AVX2, so Broadwell has them.  LSTM-1500 alone: 0.045 ms vs 0.110 ms (INT8 nest).
Targets with AVX-512 VNNI do both in one ``vpdpbusd`` (u8 × s8 → s32, the nibbles are the u8).

INT8 weights run on the same integer nest (``little_gemv_int8_nest``, exact, VNNI or AVX2) by moving
z's sign onto the weight (|z| × sign(z)·w); it is the decode step's INT8 path on AVX2 targets
(``LayerShape.for_target``).  The float nest converts every int8 weight to fp32 before its FMA and is
compute-bound: 0.088 ms for the 1024×3072-input layer's 4096 × 800 weights held in cache, where the
integer nest takes 0.057 ms (it streams 12 % more bytes: each half padded to 64 codes).  Inside that
layer's step (weights from DRAM after the big GEMV, 2 threads, interleaved) projection + little GEMV
took 0.159 ms on floats and 0.116 ms on codes, with Broadwell (AVX2) or VNNI code alike; INT4 halves the
bytes again.
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
    vnni: bool = False  # integer little GEMVs only: vpdpbusd (AVX-512 VNNI) instead of pmaddubsw + pmaddwd

    @classmethod
    def for_target(cls, num_cores: int | None, features: "frozenset[str] | set[str]" = frozenset()) -> "StreamKnobs":
        return cls(groups=max(1, num_cores or 2), vnni={"avx512_vnni", "avx512vl"} <= set(features))

    def space(self) -> list["StreamKnobs"]:
        """The small grid ``tune`` measures (cache flushed, as inside a step) around these knobs."""
        return [StreamKnobs(self.groups, r, lanes, pf, self.locality, self.vnni)
                for r in (2, 4) for lanes in (8, 16) for pf in (0, 2, 4)]


def _prefetch_ahead(n: int, d: int, knobs: StreamKnobs):
    """Macro: one ``llvm.prefetch`` per cache line of thread ``g``'s block ``j + prefetch`` of an n × d byte matrix."""
    G, R, PF, LOC = knobs.groups, knobs.rows, knobs.prefetch, knobs.locality
    per = (n + G - 1) // G

    @T.macro
    def prefetch_ahead(flat, g, j):
        if PF > 0:
            for q in range((R * d + 63) // 64):
                T.evaluate(T.call_llvm_intrin(
                    "void", "llvm.prefetch.p0", T.address_of(flat[T.min((g * per + (j + PF) * R) * d + q * 64, n * d - 1)]),
                    T.int32(0), T.int32(LOC), T.int32(1)))

    return prefetch_ahead


def _rows_dot(n: int, d: int, knobs: StreamKnobs):
    """Macro: thread ``g``'s contiguous slice of the n × d int8 matrix P times v into out[off + row]."""
    G, R, L = knobs.groups, knobs.rows, knobs.lanes
    if d % L:
        raise ValueError(f"reduction length {d} is not a multiple of lanes={L} (kernels pad to 32)")
    per = (n + G - 1) // G  # rows per slice
    blocks = (per + R - 1) // R
    prefetch_ahead = _prefetch_ahead(n, d, knobs)

    @T.macro
    def rows_dot(P, flat, v, out, off, g):
        acc = T.alloc_buffer((R, L), "float32", scope="local")
        for j in range(blocks):
            prefetch_ahead(flat, g, j)
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


def _dot_u8s8(acc, pairs, V: int, vnni: bool):
    """acc (int32 × V/4) + Σ over (u8 × V, s8 × V) ``pairs`` of the byte products, four per int32 lane.

    VNNI: one ``vpdpbusd`` per pair.  AVX2: ``pmaddubsw`` per pair (u8 × s8 → int16 pairs, which
    *saturate* above 2^15 — callers keep |u| · |s| · 2 · len(pairs) below it), summed in int16, then one
    ``pmaddwd`` by ones widens to int32.
    """
    A = V // 4
    if vnni:  # AVX512-VL forms; this LLVM takes byte-vector operands
        for u, w in pairs:
            acc = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(f"llvm.x86.avx512.vpdpbusd.{8 * V}"), acc, u, w,
                                          dtype=f"int32x{A}")
        return acc
    ub_sw, wd = (("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd") if V == 32 else
                 ("llvm.x86.ssse3.pmadd.ub.sw.128", "llvm.x86.sse2.pmadd.wd"))
    words = None
    for u, w in pairs:
        prod = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(ub_sw), u, w, dtype=f"int16x{V // 2}")
        words = prod if words is None else words + prod
    return acc + T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(wd), words, T.broadcast(T.int16(1), V // 2),
                                         dtype=f"int32x{A}")


def _hadd(a, b, A: int):
    """``phaddd``: pairwise sums of the int32 lanes of a and b (per 128-bit lane: a's pairs, then b's)."""
    name = "llvm.x86.avx2.phadd.d" if A == 8 else "llvm.x86.ssse3.phadd.d.128"
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), a, b, dtype=f"int32x{A}")


def _little_gemv_codes_nest(n: int, kp: int, bits: int, knobs: StreamKnobs, name: str):
    """The little GEMV on integers: INT4 (packed, +8 offset) or INT8 weights times the INT8 codes of
    ``project_codes`` (two halves of ``kp`` codes, each with its scale), exact int32 sums per half.

    INT8 × INT8 is made unsigned × signed without saturation by moving z's sign onto the weight:
    |z| (≤ 127, u8) × sign(z)·w (``psignb``, |·| ≤ 127): 2 · 127 · 127 < 2^15 for ``pmaddubsw``.

    Each block's 2·R int32 accumulators are summed two rows at a time by a ``phaddd`` tree (four
    vectors → one int32×4 of the two rows' half sums) instead of 2·A scalar extract-and-adds per row.
    LSTM-1500's k = 128 little GEMV alone (2 threads, Broadwell code, weights in cache): INT8 23.9 →
    20.6 µs, INT4 21.5 → 14.7 µs; from DRAM it is the stream that sets the time (79 vs 81, 62 vs 58 µs),
    and inside the decode step the difference stayed within the noise (±1 %).
    """
    G, R = knobs.groups, knobs.rows
    V = 2 * knobs.lanes  # bytes per load
    if V not in (16, 32):
        raise ValueError(f"lanes must be 8 or 16 for the integer little GEMV, got {knobs.lanes}")
    psign = "llvm.x86.avx2.psign.b" if V == 32 else "llvm.x86.ssse3.psign.b.128"
    A = V // 4  # int32 accumulator lanes
    row_bytes = kp if bits == 4 else 2 * kp  # INT4: two codes a byte
    hb = row_bytes // 2  # bytes per half row
    loads = hb // V
    offset = 8 if bits == 4 else 0  # INT4 nibbles are stored +8: Σ codes per half removes it
    per = (n + G - 1) // G
    blocks = (per + R - 1) // R
    Re = R + R % 2  # rows reduced in pairs
    prefetch_ahead = _prefetch_ahead(n, row_bytes, knobs)
    wtype = "uint8" if bits == 4 else "int8"

    @T.prim_func
    def f(W: T.Buffer((n, row_bytes), wtype), zq: T.Buffer((2 * kp,), "int8"), zs: T.Buffer((2,), "float32"),
          scale: T.Buffer((n,), "float32"), bias: T.Buffer((n,), "float32"), pre: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        flat = T.decl_buffer((n * row_bytes,), wtype, data=W.data)
        for g in T.parallel(G):
            zsum = T.alloc_buffer((2,), "int32", scope="local")
            zabs = T.alloc_buffer((2 * kp,), "uint8", scope="local")  # INT8: |z| as the unsigned operand
            for s in range(2):
                zsum[s] = 0
                if bits == 4:
                    for j in range(kp):
                        zsum[s] = zsum[s] + T.Cast("int32", zq[s * kp + j])
                else:
                    for j in range(kp):
                        zabs[s * kp + j] = T.Cast("uint8", T.abs(zq[s * kp + j]))
            acc = T.alloc_buffer((Re * 2 * A,), "int32", scope="local")  # Re ≥ R: a padded row stays 0
            sums = T.alloc_buffer((2 * Re,), "int32", scope="local")
            wide = T.alloc_buffer((A,), "int32", scope="local")
            for j in range(blocks):
                prefetch_ahead(flat, g, j)
                for r in T.unroll(2 * Re):
                    acc[T.ramp(r * A, 1, A)] = T.broadcast(T.int32(0), A)
                for s in range(2):
                    for c in range(loads):
                        for r in T.unroll(R):
                            wb = W.vload([T.min(g * per + j * R + r, n - 1), s * hb + c * V], f"{wtype}x{V}")
                            if bits == 4:  # bytes [cV, cV + V) of the half: chunk cV // 32, offset cV % 32
                                base = s * kp + c * V // 32 * 64 + c * V % 32
                                acc[T.ramp((r * 2 + s) * A, 1, A)] = _dot_u8s8(
                                    acc[T.ramp((r * 2 + s) * A, 1, A)],
                                    [(T.bitwise_and(wb, T.broadcast(T.uint8(15), V)), zq.vload([base], f"int8x{V}")),
                                     (T.bitwise_and(T.shift_right(wb, T.broadcast(T.uint8(4), V)),
                                                    T.broadcast(T.uint8(15), V)), zq.vload([base + 32], f"int8x{V}"))],
                                    V, knobs.vnni)
                            else:
                                acc[T.ramp((r * 2 + s) * A, 1, A)] = _dot_u8s8(
                                    acc[T.ramp((r * 2 + s) * A, 1, A)],
                                    [(zabs.vload([s * kp + c * V], f"uint8x{V}"), T.call_llvm_pure_intrin(
                                        T.llvm_lookup_intrinsic_id(psign), wb, zq.vload([s * kp + c * V], f"int8x{V}"),
                                        dtype=f"int8x{V}"))],
                                    V, knobs.vnni)
                for q in T.unroll(Re // 2):  # rows 2q, 2q + 1: sums[4q:4q + 4] = their (half 0, half 1) sums
                    quad = _hadd(_hadd(acc[T.ramp(4 * q * A, 1, A)], acc[T.ramp((4 * q + 1) * A, 1, A)], A),
                                 _hadd(acc[T.ramp((4 * q + 2) * A, 1, A)], acc[T.ramp((4 * q + 3) * A, 1, A)], A), A)
                    if A == 8:  # the two 128-bit lanes hold the low and high halves of each sum
                        wide[T.ramp(0, 1, A)] = quad
                        sums[T.ramp(4 * q, 1, 4)] = wide[T.ramp(0, 1, 4)] + wide[T.ramp(4, 1, 4)]
                    else:
                        sums[T.ramp(4 * q, 1, 4)] = quad
                for r in range(R):
                    if j * R + r < per and g * per + j * R + r < n:
                        pre[g * per + j * R + r] = scale[g * per + j * R + r] * (
                            zs[0] * T.Cast("float32", sums[2 * r] - offset * zsum[0])
                            + zs[1] * T.Cast("float32", sums[2 * r + 1] - offset * zsum[1])) + bias[g * per + j * R + r]

    return f.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)


def little_gemv_int4_nest(n: int, kp: int, knobs: StreamKnobs = StreamKnobs(), name: str = "little_gemv_int4"):
    """Scheduled PrimFunc with the signature and results of ``kernels.little_gemv_int4`` (x86 AVX2; VNNI
    where ``knobs.vnni``).  ``lanes`` sets the load width: 16 gives 32-byte (ymm) loads, 8 gives 16-byte ones."""
    return _little_gemv_codes_nest(n, kp, 4, knobs, name)


def little_gemv_int8_nest(n: int, kp2: int, knobs: StreamKnobs = StreamKnobs(), name: str = "little_gemv_int8"):
    """Scheduled PrimFunc with the signature and results of ``kernels.little_gemv_int8`` (x86 AVX2; VNNI
    where ``knobs.vnni``); ``kp2`` is the weight row length (two halves of ``int4_padded(k)``)."""
    return _little_gemv_codes_nest(n, kp2 // 2, 8, knobs, name)


S3 = 0.5773502691896258  # the 1/√3 of eq. 2


def _projected(k: int, dx: int, dh: int, knobs: StreamKnobs):
    """Macro shared by both projection nests: raw = [P_x x; P_h h] ⊙ Pr (rows streamed in parallel slices, then
    each scaled by its row scale) and amax[half] = max |raw|/√3, the run-time quantisation's per-half range."""
    dot_x, dot_h = _rows_dot(k, dx, knobs), _rows_dot(k, dh, knobs)

    @T.macro
    def projected(Px, Ph, Pr, x, h, raw, amax):
        flat_x = T.decl_buffer((k * dx,), "int8", data=Px.data)
        flat_h = T.decl_buffer((k * dh,), "int8", data=Ph.data)
        for g in T.parallel(knobs.groups):
            dot_x(Px, flat_x, x, raw, 0, g)
            dot_h(Ph, flat_h, h, raw, k, g)
        for i in range(2 * k):
            raw[i] = raw[i] * Pr[i]
        for half in range(2):
            amax[half] = T.float32(1e-12)
            for i in range(k):
                amax[half] = T.max(amax[half], T.abs(raw[half * k + i]) * T.float32(S3))

    return projected


def project_nest(k: int, dx: int, dh: int, knobs: StreamKnobs = StreamKnobs(), name: str = "project",
                 act_bits: int = 8):
    """Scheduled PrimFunc with ``kernels.project``'s signature and results (same ``act_bits``)."""
    k2 = (2 * k + 31) // 32 * 32  # kernels.padded(2k)
    qmax = float(2 ** (act_bits - 1) - 1)
    projected = _projected(k, dx, dh, knobs)

    @T.prim_func
    def f(Px: T.Buffer((k, dx), "int8"), Ph: T.Buffer((k, dh), "int8"), Pr: T.Buffer((2 * k,), "float32"),
          x: T.Buffer((dx,), "float32"), h: T.Buffer((dh,), "float32"), z: T.Buffer((k2,), "float32")):
        T.func_attr({"tirx.noalias": True})
        raw = T.alloc_buffer((2 * k,), "float32")
        amax = T.alloc_buffer((2,), "float32", scope="local")
        projected(Px, Ph, Pr, x, h, raw, amax)
        for i in range(k2):
            z[i] = T.if_then_else(
                i < 2 * k, T.round(raw[T.min(i, 2 * k - 1)] * T.float32(S3) * T.float32(qmax) / amax[T.min(i // k, 1)])
                * amax[T.min(i // k, 1)] / T.float32(qmax), T.float32(0))

    return f.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)


def project_codes_nest(k: int, dx: int, dh: int, knobs: StreamKnobs = StreamKnobs(), name: str = "project_codes",
                       act_bits: int = 8):
    """Scheduled PrimFunc with the signature and results of ``kernels.project_codes``: the dot products
    of ``project_nest``, then INT8 codes per half (each padded to whole 64-value chunks) and the scales."""
    kp = (k + 63) // 64 * 64  # kernels.int4_padded(k)
    qmax = float(2 ** (act_bits - 1) - 1)
    projected = _projected(k, dx, dh, knobs)

    @T.prim_func
    def f(Px: T.Buffer((k, dx), "int8"), Ph: T.Buffer((k, dh), "int8"), Pr: T.Buffer((2 * k,), "float32"),
          x: T.Buffer((dx,), "float32"), h: T.Buffer((dh,), "float32"), zq: T.Buffer((2 * kp,), "int8"),
          zs: T.Buffer((2,), "float32")):
        T.func_attr({"tirx.noalias": True})
        raw = T.alloc_buffer((2 * k,), "float32")
        amax = T.alloc_buffer((2,), "float32", scope="local")
        projected(Px, Ph, Pr, x, h, raw, amax)
        for half in range(2):
            for i in range(kp):
                zq[half * kp + i] = T.if_then_else(i < k, T.Cast("int8", T.round(
                    raw[half * k + T.min(i, k - 1)] * T.float32(S3) * T.float32(qmax) / amax[half])), T.int8(0))
            zs[half] = amax[half] / T.float32(qmax)

    return f.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)
