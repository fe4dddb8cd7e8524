"""TensorIR definitions of the dual-module step's kernels (what is computed, not how).

Schedules live in ``schedules/``; numpy references in ``tests/test_kernels.py``.  Every
reduction length is padded to a multiple of :data:`PAD` with zero weights, so schedules
can split it into vector lanes without tails.  Kernels (Algorithm 1):

* ``project``        step 1: ternary P (int8) times x and h, then run-time INT8 quantisation
* ``little_gemv``    step 2: INT8 W_LL (per-row scales) times the quantised projection, + b_LL
* ``project_codes`` / ``little_gemv_int4`` / ``little_gemv_int8``: the same two steps on integer codes, for
  INT4 W_LL (Table 6) and, on x86 targets with AVX2 (``LayerShape.for_target``), INT8 W_LL: dot-product
  instructions take them exactly (``schedules/stream.py``)
* ``mask``           step 3: eq. 5 bands on y_LL (mapped through φ⁻¹), compacted list of sensitive rows;
  ``contribution_mask`` the same under the contribution rule (:mod:`dualtvm.contribution`)
* ``masked_gemv``    step 4: fp32 big rows listed by the mask, nothing else is read
* ``lstm_assemble`` / ``gru_assemble``  step 5: eq. 1 and the cell update (eq. 6 / GRU)
* ``gemv``, ``lstm_dense_cell``, ``gru_dense_cell``: the dense baseline, same toolchain
* ``band_mask`` / ``band_assemble``: steps 3 and 5 of the dual-module *output projection*
  (:mod:`dualtvm.output`; steps 1, 2 and 4 are the kernels above, ``output_kernels``)
* ``gate_counts``    sensitive rows per gate of a mask (the compiled GNMT step's running mask statistics)
* ``attention``      GNMT's Luong attention of one query over a sentence's memory (any length), so the compiled
  decode step (:mod:`dualtvm.gnmt_step`) is one call per token
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm.script import tirx as T

from .quantize import COMPILED_BITS

PAD = 32
LANES = 8  # fp32 lanes of an AVX2 register: cell updates and contribution scores go this many units at a time


def padded(n: int) -> int:
    return (n + PAD - 1) // PAD * PAD


def _named(func, name: str):
    return func.with_attr("global_symbol", name)


# ----------------------------------------------------------------------------- activations
def exp_poly(x):
    """exp(x) as Cephes' degree-6 polynomial on a range-reduced argument (topi's ``fast_exp``).

    ``T.exp`` becomes a scalar ``expf`` call per lane (LLVM has no vector libm here): 0.03 ms of
    an LSTM-1500 step's cell update.  This vectorises; relative error ~1e-7.  Let-bound, so x
    (often a gather) is computed once.
    """
    xv, nv, rv = (tvm.tirx.Var(name, "float32") for name in ("x", "n", "r"))
    p = T.float32(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * rv + T.float32(c)
    two_n = T.reinterpret("float32", T.shift_left(T.Cast("int32", nv) + 127, 23))
    body = tvm.tirx.Let(rv, xv - nv * T.float32(0.6931471805599453), (p * rv * rv + rv + T.float32(1)) * two_n)
    body = tvm.tirx.Let(nv, T.floor(xv * T.float32(1.44269504088896341) + T.float32(0.5)), body)
    return tvm.tirx.Let(xv, T.max(T.min(x, T.float32(88.3762626647950)), T.float32(-88.3762626647949)), body)


def in_hidden(j, hidden: int):
    """1.0 for j < hidden, else 0.0: zeroes the padding lanes of a state update.

    Not ``if_then_else``/``Select`` on j < hidden: the simplifier then drops the ``T.min(j, H − 1)``
    clamps of the loads inside (their value is unused past H), but a vectorised loop still performs
    those loads for every lane, and a gather through ``pos`` read out of bounds (a segfault).
    """
    return T.Cast("float32", j < hidden)


def sigmoid(x):
    return T.float32(1) / (T.float32(1) + exp_poly(-x))


def tanh(x):
    return T.float32(2) / (T.float32(1) + exp_poly(T.float32(-2) * x)) - T.float32(1)


# ----------------------------------------------------------------------------- GEMVs
def _row_dot(n: int, length: int, col0: int, block: str):
    """Macro: y[i] = W[i, col0 : col0 + length] · v for every row i (one reduction block named ``block``)."""

    @T.macro
    def dot(W, v, y):
        for i, j in T.grid(n, length):
            with T.sblock(block):
                vi, vj = T.axis.remap("SR", [i, j])
                with T.init():
                    y[vi] = T.float32(0)
                y[vi] = y[vi] + W[vi, col0 + vj] * v[vj]

    return dot


def _masked_row_dot(n: int, length: int, col0: int, block: str):
    """Macro: y[p] = W[rows[p], col0 : col0 + length] · v for p < count (one reduction block named ``block``)."""

    @T.macro
    def dot(W, v, rows, count, y):
        for p, j in T.grid(n, length):
            with T.sblock(block):
                vp, vj = T.axis.remap("SR", [p, j])
                T.where(p < count[0])
                with T.init():
                    y[vp] = T.float32(0)
                y[vp] = y[vp] + W[rows[vp], col0 + vj] * v[vj]

    return dot


def gemv(n: int, k: int, name: str = "gemv"):
    """Dense fp32 y = W x (W row-major, k padded)."""
    dot = _row_dot(n, k, 0, "dot")

    @T.prim_func(s_tir=True)
    def f(W: T.Buffer((n, k), "float32"), x: T.Buffer((k,), "float32"), y: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        dot(W, x, y)

    return _named(f, name)


def gemv_pair(n: int, k_x: int, k_h: int, name: str = "gemv_pair"):
    """A GRU's two dense GEMVs over one matrix W = [W_ih | W_hh] (row i: W_ih's row, then W_hh's, each padded):
    yx = W_ih x and yh = W_hh h, kept apart because the candidate gate weighs W_hh h by r.  Read as rows twice as long
    in one kernel (``schedules.pair``), they took 0.74–0.96× the time of two GEMVs (GRU-1500 and GRU-750 shapes,
    warm and cold, both targets; session 48)."""
    dot_x, dot_h = _row_dot(n, k_x, 0, "pair_x"), _row_dot(n, k_h, k_x, "pair_h")

    @T.prim_func(s_tir=True)
    def f(W: T.Buffer((n, k_x + k_h), "float32"), x: T.Buffer((k_x,), "float32"), h: T.Buffer((k_h,), "float32"),
          yx: T.Buffer((n,), "float32"), yh: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        dot_x(W, x, yx)
        dot_h(W, h, yh)

    return _named(f, name)


def masked_gemv(n: int, k: int, name: str = "masked_gemv"):
    """Step 4: yc[p] = W[rows[p]] · x for p < count — places past ``count`` are never read (a scheduled nest may
    read :data:`ROW_LIST_SLACK` of them, zeros)."""
    dot = _masked_row_dot(n, k, 0, "dot")

    @T.prim_func(s_tir=True)
    def f(W: T.Buffer((n, k), "float32"), x: T.Buffer((k,), "float32"), rows: T.Buffer((n,), "int32"),
          count: T.Buffer((1,), "int32"), yc: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        dot(W, x, rows, count, yc)

    return _named(f, name)


def masked_gemv_pair(n: int, k_x: int, k_h: int, name: str = "masked_gemv_pair"):
    """Step 4 of a GRU: :func:`masked_gemv` of W_ih with x and of W_hh with h over one row list, W = [W_ih | W_hh]
    as :func:`gemv_pair` reads it (the nest: ``schedules.gather.gather_pair_gemv``)."""
    dot_x, dot_h = _masked_row_dot(n, k_x, 0, "pair_x"), _masked_row_dot(n, k_h, k_x, "pair_h")

    @T.prim_func(s_tir=True)
    def f(W: T.Buffer((n, k_x + k_h), "float32"), x: T.Buffer((k_x,), "float32"), h: T.Buffer((k_h,), "float32"),
          rows: T.Buffer((n,), "int32"), count: T.Buffer((1,), "int32"), ycx: T.Buffer((n,), "float32"),
          ych: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        dot_x(W, x, rows, count, ycx)
        dot_h(W, h, rows, count, ych)

    return _named(f, name)


def little_gemv(n: int, k2: int, name: str = "little_gemv"):
    """Step 2 before φ: pre = scale_w[i] · Σ_j Wq[i, j] · z[j] + b[i], Wq INT8.

    z holds the dequantised INT8 projection; int8×int8 products and their sums stay below
    2²⁴, so fp32 lanes compute them exactly: a non-saturating path for AVX2 (no VNNI needed).
    """

    @T.prim_func(s_tir=True)
    def f(Wq: T.Buffer((n, k2), "int8"), z: T.Buffer((k2,), "float32"), scale: T.Buffer((n,), "float32"),
          bias: T.Buffer((n,), "float32"), pre: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        acc = T.sblock_alloc_buffer((n,), "float32")
        for i, j in T.grid(n, k2):
            with T.sblock("dot"):
                vi, vj = T.axis.remap("SR", [i, j])
                with T.init():
                    acc[vi] = T.float32(0)
                acc[vi] = acc[vi] + T.Cast("float32", Wq[vi, vj]) * z[vj]
        for i in range(n):
            with T.sblock("epilogue"):
                vi = T.axis.remap("S", [i])
                pre[vi] = acc[vi] * scale[vi] + bias[vi]

    return _named(f, name)


S3 = 0.5773502691896258  # the 1/√3 of eq. 2


def _projected(k: int, dx: int, dh: int):
    """Macro shared by ``project`` and ``project_codes``: zx = P_x x, zh = P_h h (P as int8 codes) and
    amax[half] = max |z ⊙ r|/√3, the run-time quantisation's per-half range, where r = ``Pr`` are the rows' scales
    (ones, or W_LL's equalised column norms: ``quantize.equalising_scale``); callers scale z by r as they quantise."""

    @T.macro
    def projected(Px, Ph, Pr, x, h, zx, zh, amax):
        for i, j in T.grid(k, dx):
            with T.sblock("dot_x"):
                vi, vj = T.axis.remap("SR", [i, j])
                with T.init():
                    zx[vi] = T.float32(0)
                zx[vi] = zx[vi] + T.Cast("float32", Px[vi, vj]) * x[vj]
        for i, j in T.grid(k, dh):
            with T.sblock("dot_h"):
                vi, vj = T.axis.remap("SR", [i, j])
                with T.init():
                    zh[vi] = T.float32(0)
                zh[vi] = zh[vi] + T.Cast("float32", Ph[vi, vj]) * h[vj]
        for s, i in T.grid(2, k):
            with T.sblock("amax"):
                vs, vi = T.axis.remap("SR", [s, i])
                with T.init():
                    amax[vs] = T.float32(1e-12)
                amax[vs] = T.max(amax[vs], T.abs(T.if_then_else(vs == 0, zx[vi] * Pr[vi], zh[vi] * Pr[k + vi]))
                                 * T.float32(S3))

    return projected


def project(k: int, dx: int, dh: int, act_bits: int = 8, name: str = "project"):
    """Step 1: z = [Q(r_x ⊙ P_x x); Q(r_h ⊙ P_h h)] with P int8 codes (× 1/√3; eq. 2's are ternary), r = ``Pr``
    the rows' scales (2k) and per-half INT8 scales.

    Output is the dequantised value (code × scale), length 2k padded to ``padded(2k)``.
    """
    k2 = padded(2 * k)
    qmax = float(2 ** (act_bits - 1) - 1)
    projected = _projected(k, dx, dh)

    @T.prim_func(s_tir=True)
    def f(Px: T.Buffer((k, dx), "int8"), Ph: T.Buffer((k, dh), "int8"), Pr: T.Buffer((2 * k,), "float32"),
          x: T.Buffer((dx,), "float32"), h: T.Buffer((dh,), "float32"), z: T.Buffer((k2,), "float32")):
        T.func_attr({"tirx.noalias": True})
        zx = T.sblock_alloc_buffer((k,), "float32")
        zh = T.sblock_alloc_buffer((k,), "float32")
        amax = T.sblock_alloc_buffer((2,), "float32")
        projected(Px, Ph, Pr, x, h, zx, zh, amax)
        for i in range(k2):
            with T.sblock("quant"):
                vi = T.axis.remap("S", [i])
                z[vi] = T.if_then_else(
                    vi < k, T.round(zx[T.min(vi, k - 1)] * Pr[T.min(vi, k - 1)] * T.float32(S3) * T.float32(qmax)
                                    / amax[0]) * amax[0] / T.float32(qmax),
                    T.if_then_else(vi < 2 * k,
                                   T.round(zh[T.max(T.min(vi - k, k - 1), 0)] * Pr[T.max(T.min(vi, 2 * k - 1), k)]
                                           * T.float32(S3) * T.float32(qmax) / amax[1])
                                   * amax[1] / T.float32(qmax), T.float32(0)))

    return _named(f, name)


# ----------------------------------------------------------------------------- INT4 little module
INT4_CHUNK = 64  # values per 32-byte chunk of a packed INT4 row


def int4_padded(k: int) -> int:
    """Each half (x, h) of an INT4 row is padded to whole chunks: its codes have their own scale."""
    return (k + INT4_CHUNK - 1) // INT4_CHUNK * INT4_CHUNK


def pack_int4(codes, k: int):
    """INT4 W_LL codes (n × 2k, in [−7, 7]; x columns then h columns) → the ``little_gemv_int4`` layout.

    Row i holds the x half then the h half, each ``int4_padded(k)`` values in 32-byte chunks;
    byte b of chunk c holds code[64c + b] + 8 in its low nibble and code[64c + 32 + b] + 8 in its
    high one.  Stored offset by 8 (unsigned 1…15, padding 8 = code 0) so that one unsigned×signed
    byte multiply (``pmaddubsw``) takes a nibble as it is: 15 × 127 × 2 < 2¹⁵ never saturates.
    """
    codes = np.asarray(codes)
    if codes.shape[1] != 2 * k or codes.min(initial=0) < -7 or codes.max(initial=0) > 7:
        raise ValueError(f"expected n × {2 * k} INT4 codes in [-7, 7], got shape {codes.shape}")
    n, kpad = codes.shape[0], int4_padded(k)
    u = np.full((n, 2, kpad), 8, np.uint8)
    u[:, 0, :k], u[:, 1, :k] = codes[:, :k] + 8, codes[:, k:] + 8
    u = u.reshape(n, 2, kpad // INT4_CHUNK, 2, INT4_CHUNK // 2)
    return (u[..., 0, :] | (u[..., 1, :] << 4)).reshape(n, kpad)


def pack_int8_codes(codes, k: int):
    """INT8 W_LL codes (n × 2k; x columns then h columns) → the ``little_gemv_int8`` layout: each half padded
    with zeros to ``int4_padded(k)``, the length of the half of ``project_codes`` it multiplies."""
    codes = np.asarray(codes)
    if codes.shape[1] != 2 * k:
        raise ValueError(f"expected n × {2 * k} INT8 codes, got shape {codes.shape}")
    out = np.zeros((codes.shape[0], 2, int4_padded(k)), np.int8)
    out[:, 0, :k], out[:, 1, :k] = codes[:, :k], codes[:, k:]
    return out.reshape(codes.shape[0], -1)


def project_codes(k: int, dx: int, dh: int, act_bits: int = 8, name: str = "project_codes"):
    """Step 1 for the INT4 little GEMV: the codes of ``project`` (x half, h half, each padded to
    ``int4_padded(k)``) and their two scales, so that step 2 runs on integers."""
    kp = int4_padded(k)
    qmax = float(2 ** (act_bits - 1) - 1)
    projected = _projected(k, dx, dh)

    @T.prim_func(s_tir=True)
    def f(Px: T.Buffer((k, dx), "int8"), Ph: T.Buffer((k, dh), "int8"), Pr: T.Buffer((2 * k,), "float32"),
          x: T.Buffer((dx,), "float32"), h: T.Buffer((dh,), "float32"), zq: T.Buffer((2 * kp,), "int8"),
          zs: T.Buffer((2,), "float32")):
        T.func_attr({"tirx.noalias": True})
        zx = T.sblock_alloc_buffer((k,), "float32")
        zh = T.sblock_alloc_buffer((k,), "float32")
        amax = T.sblock_alloc_buffer((2,), "float32")
        projected(Px, Ph, Pr, x, h, zx, zh, amax)
        for i in range(2 * kp):
            with T.sblock("quant"):
                vi = T.axis.remap("S", [i])
                zq[vi] = T.if_then_else(vi % kp < k, T.Cast("int8", T.round(
                    T.if_then_else(vi < kp, zx[T.min(vi % kp, k - 1)], zh[T.min(vi % kp, k - 1)])
                    * Pr[(vi // kp) * k + T.min(vi % kp, k - 1)] * T.float32(S3)
                    * T.float32(qmax) / amax[vi // kp])), T.int8(0))
        for s in range(2):
            with T.sblock("scales"):
                vs = T.axis.remap("S", [s])
                zs[vs] = amax[vs] / T.float32(qmax)

    return _named(f, name)


def _on_codes(n: int, kp: int, code):
    """Macro shared by the integer little GEMVs: acc[i, half] = Σ_j code(W, i, half, j) · zq[half·kp + j]
    exactly in int32, then pre = scale_w[i] · Σ_half s_half · acc[i, half] + b[i]."""

    @T.macro
    def on_codes(W, zq, zs, scale, bias, pre):
        acc = T.sblock_alloc_buffer((n, 2), "int32")
        for i, s, j in T.grid(n, 2, kp):
            with T.sblock("dot_codes"):  # not a row-dot rule block: the loop nests compute it
                vi, vs, vj = T.axis.remap("SSR", [i, s, j])
                with T.init():
                    acc[vi, vs] = 0
                acc[vi, vs] = acc[vi, vs] + code(W, vi, vs, vj) * T.Cast("int32", zq[vs * kp + vj])
        for i in range(n):
            with T.sblock("epilogue"):
                vi = T.axis.remap("S", [i])
                pre[vi] = scale[vi] * (zs[0] * T.Cast("float32", acc[vi, 0]) + zs[1] * T.Cast("float32", acc[vi, 1])) \
                    + bias[vi]

    return on_codes


def little_gemv_int4(n: int, kp: int, name: str = "little_gemv_int4"):
    """Step 2 on INT4 weights: pre = scale_w[i] · Σ_half s_half · Σ_j w[i, half, j] · zq[half, j] + b[i].

    W4 is :func:`pack_int4`'s layout (n × kp bytes: two halves of kp/2), zq the INT8 codes of
    :func:`project_codes`; the sums are exact in int32.  Half the bytes of INT8 weights: in a
    step the little GEMV streams its weights from DRAM, so bytes are its time.
    """
    hb = kp // 2

    def nibble(W4, i, s, j):  # code j of half s of row i: its byte's low or high nibble, stored +8
        return T.Cast("int32", T.bitwise_and(T.shift_right(W4[i, s * hb + j // 64 * 32 + j % 32],
                                                           T.Cast("uint8", j % 64 // 32 * 4)), T.uint8(15))) - 8

    on_codes = _on_codes(n, kp, nibble)

    @T.prim_func(s_tir=True)
    def f(W4: T.Buffer((n, kp), "uint8"), zq: T.Buffer((2 * kp,), "int8"), zs: T.Buffer((2,), "float32"),
          scale: T.Buffer((n,), "float32"), bias: T.Buffer((n,), "float32"), pre: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        on_codes(W4, zq, zs, scale, bias, pre)

    return _named(f, name)


def little_gemv_int8(n: int, kp2: int, name: str = "little_gemv_int8"):
    """Step 2 on INT8 weights and the INT8 codes of :func:`project_codes`, summed exactly in int32:
    pre = scale_w[i] · Σ_half s_half · Σ_j W8[i, half·kp + j] · zq[half·kp + j] + b[i]  (kp = kp2 / 2).

    The same numbers as ``little_gemv`` on the dequantised codes, computed on integers so that
    dot-product instructions (``vpdpbusd``, ``pmaddubsw``) take them.
    """
    kp = kp2 // 2
    on_codes = _on_codes(n, kp, lambda W8, i, s, j: T.Cast("int32", W8[i, s * kp + j]))

    @T.prim_func(s_tir=True)
    def f(W8: T.Buffer((n, kp2), "int8"), zq: T.Buffer((kp2,), "int8"), zs: T.Buffer((2,), "float32"),
          scale: T.Buffer((n,), "float32"), bias: T.Buffer((n,), "float32"), pre: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        on_codes(W8, zq, zs, scale, bias, pre)

    return _named(f, name)


# ----------------------------------------------------------------------------- mask (serial scan)
ROW_LIST_SLACK = 64  # places of a mask's row list past ``count`` that hold 0: a masked GEMV nest working in blocks
# of rows may read up to its block size − 1 of them (schedules/gather.py)


def _marks(units: int, test, offset: int = 0):
    """Macro of the mask kernels' first pass: ``pos[r] = 1`` where ``test(a, b, c, r, g)`` holds, else 0, for the
    ``units`` rows r = offset + g · units + j (j < units) of part ``g``; in whole vectors of :data:`LANES` rows, then
    a scalar tail.  Vectorised apart from the serial compaction (:func:`_compaction`), which then only reads these
    marks: the GRU candidate gate's σ per row ran in the serial scan (its mask took 38–42× its bytes' time inside
    GRU-750's step)."""
    whole = units // LANES * LANES

    @T.macro
    def mark(a, b, c, pos, g):
        for jo in range(whole // LANES):
            for ji in T.vectorized(LANES):
                pos[offset + g * units + jo * LANES + ji] = T.Cast(
                    "int32", test(a, b, c, offset + g * units + jo * LANES + ji, g))
        for j in range(units - whole):
            pos[offset + g * units + whole + j] = T.Cast("int32", test(a, b, c, offset + g * units + whole + j, g))

    return mark


def _compaction(n: int):
    """Macro of the mask kernels' second pass: the rows i < n that :func:`_marks` marked in ``pos`` compacted into
    ``rows``, ``pos[i]`` replaced by their places (−1 where unmarked), and ``count``; serial and branch-free: every row
    index is written, the count advances by the mark.  Only the :data:`ROW_LIST_SLACK` places past ``count`` are
    zeroed (the rest of ``rows`` is never read): zeroing all n − count took 2 of the 9 µs of LSTM-1500's mask alone
    on a Zen 3, as AVX2 masked stores, and inside its ``znver3`` step the mask fell from 1.4 to 0.5 % of the dense
    step's time without them."""

    @T.macro
    def compact(rows, pos, count):
        cnt = T.decl_buffer((1,), "int32", scope="local")
        cnt[0] = 0
        for i in range(n):
            sens: T.int32 = pos[i]
            rows[cnt[0]] = i
            pos[i] = T.if_then_else(sens == 1, cnt[0], -1)
            cnt[0] = cnt[0] + sens
        for i in range(ROW_LIST_SLACK):
            if cnt[0] + i < n:
                rows[cnt[0] + i] = 0
        count[0] = cnt[0]

    return compact


def _in_band(value, lo, hi, i):
    """lo[i] < value < hi[i], the value let-bound (a compound value written twice would define its lets twice)."""
    v = tvm.tirx.Var("v", "float32")
    return tvm.tirx.Let(v, value, tvm.tirx.all(v > lo[i], v < hi[i]))


def mask(hidden: int, rnn_type: str, name: str = "mask"):
    """Step 3: sensitive rows (lo < pre_LL < hi: eq. 5 on the pre-activation) compacted into ``rows``.

    φ is strictly increasing, so the bands are mapped through φ⁻¹ once when the thresholds are
    set (:meth:`Thresholds.pre_activation_bounds`) and the scan needs no exp/tanh; it is also
    branch-free (:func:`_compaction`): with data-dependent branches and φ per row it took 0.108 ms
    inside an LSTM-1500 step, this 0.010.  Split over two threads (each counts its half, then writes it at its
    offset) it was slower, timed alone on a Zen 3: 62 against 47 µs after a cache sweep, 27 against 16 without.
    ``pos[i]`` is row i's place in ``rows`` or −1.  For the GRU candidate gate the tested value is
    u = pre_n,x + r_LL · pre_n,h with r_LL = σ(pre_r) (the final r is not known before the big GEMV),
    as in the PyTorch reference; σ is :func:`sigmoid`'s inline polynomial, computed in the vectorised first pass
    (:func:`_marks`).
    """
    H = hidden
    n = (4 if rnn_type == "LSTM" else 3) * H
    nl = 4 * H
    compact = _compaction(n)
    banded = _marks(n if rnn_type == "LSTM" else 2 * H, lambda pre, lo, hi, i, g: _in_band(pre[i], lo, hi, i))
    if rnn_type == "LSTM":
        @T.macro
        def mark(pre, lo, hi, pos):
            banded(pre, lo, hi, pos, 0)
    else:
        candidate = _marks(H, lambda pre, lo, hi, i, g: _in_band(pre[i] + sigmoid(pre[i - 2 * H]) * pre[i + H], lo, hi, i),
                           offset=2 * H)

        @T.macro
        def mark(pre, lo, hi, pos):
            banded(pre, lo, hi, pos, 0)
            candidate(pre, lo, hi, pos, 0)

    @T.prim_func
    def f(pre: T.Buffer((nl,), "float32"), lo: T.Buffer((n,), "float32"), hi: T.Buffer((n,), "float32"),
          rows: T.Buffer((n,), "int32"), pos: T.Buffer((n,), "int32"), count: T.Buffer((1,), "int32")):
        T.func_attr({"tirx.noalias": True})
        mark(pre, lo, hi, pos)
        compact(rows, pos, count)

    return _named(f, name)


def contribution_mask(hidden: int, rnn_type: str, hp: int, name: str = "contribution_mask"):
    """Step 3 under the contribution rule (:mod:`dualtvm.contribution`, beyond eq. 5): each row's score
    φ'(y_LL) · |multiplier| against its band (lo, hi) = (θ, +∞), compacted like :func:`mask`.

    The scores need φ itself (four or five exp per hidden unit), so vectorised passes (``LANES`` units at a
    time, branch-free; lanes past ``hidden`` compute unused values, see ``at``) first store the little
    activations, then the scores, in (gates × hp) buffers, and the serial scan only compares.  Each pass is
    plain stores: a let-bound value inside a vectorised loop came out wrong (lane 0's value in every lane).
    It reads the state the scores weigh by: c(t−1) for an LSTM, h(t−1) for a GRU (``state``, hp long).
    """
    H = hidden
    G = 4 if rnn_type == "LSTM" else 3
    n = G * H
    compact = _compaction(n)
    mark = _marks(H, lambda score, lo, hi, i, g: _in_band(score[i + g * (hp - H)], lo, hi, i))  # gate g at g · hp

    def at(pre, last, j, u):
        """Gate j's unit u (u < hp): lanes past H read the next gate, gate 3's a zero-padded copy (``last``); a
        clamped load, in a vector pass a gather, only where a tiny H would read past pre's end."""
        if j == 3:
            return last[u]
        return pre[j * H + u] if j * H + hp <= 4 * H else pre[T.min(j * H + u, 4 * H - 1)]

    U = vector_units(H)

    @T.macro
    def copy_last(pre, last):
        """last = gate 3's pre-activations, zeros past H: a clamped load in the vector passes would be a gather."""
        for uo in range(U // LANES):
            for ui in T.vectorized(LANES):
                last[uo * LANES + ui] = pre[3 * H + uo * LANES + ui]
        for u in range(hp - U):
            last[U + u] = T.if_then_else(U + u < H, pre[T.min(3 * H + U + u, 4 * H - 1)], T.float32(0))

    def d(a):  # σ'(y) = a (1 − a) from a = σ(y)
        return a * (T.float32(1) - a)

    if rnn_type == "LSTM":
        @T.prim_func
        def f(pre: T.Buffer((4 * H,), "float32"), state: T.Buffer((hp,), "float32"), lo: T.Buffer((n,), "float32"),
              hi: T.Buffer((n,), "float32"), rows: T.Buffer((n,), "int32"), pos: T.Buffer((n,), "int32"),
              count: T.Buffer((1,), "int32")):
            T.func_attr({"tirx.noalias": True})
            a = T.decl_buffer((G * hp,), "float32")  # i, f, g, o
            last = T.decl_buffer((hp,), "float32")
            copy_last(pre, last)
            score = T.decl_buffer((G * hp,), "float32")
            for uo in range(hp // LANES):
                for ui in T.vectorized(LANES):
                    a[uo * LANES + ui] = sigmoid(at(pre, last, 0, uo * LANES + ui))
                    a[hp + uo * LANES + ui] = sigmoid(at(pre, last, 1, uo * LANES + ui))
                    a[2 * hp + uo * LANES + ui] = tanh(at(pre, last, 2, uo * LANES + ui))
                    a[3 * hp + uo * LANES + ui] = sigmoid(at(pre, last, 3, uo * LANES + ui))
            for uo in range(hp // LANES):
                for ui in T.vectorized(LANES):
                    score[uo * LANES + ui] = d(a[uo * LANES + ui]) * T.fabs(a[2 * hp + uo * LANES + ui])
                    score[hp + uo * LANES + ui] = d(a[hp + uo * LANES + ui]) * T.fabs(state[uo * LANES + ui])
                    score[2 * hp + uo * LANES + ui] = (
                        (T.float32(1) - a[2 * hp + uo * LANES + ui] * a[2 * hp + uo * LANES + ui]) * a[uo * LANES + ui])
                    score[3 * hp + uo * LANES + ui] = d(a[3 * hp + uo * LANES + ui]) * T.fabs(tanh(
                        a[hp + uo * LANES + ui] * state[uo * LANES + ui]
                        + a[uo * LANES + ui] * a[2 * hp + uo * LANES + ui]))
            for g in range(G):
                mark(score, lo, hi, pos, g)
            compact(rows, pos, count)
    else:
        @T.prim_func
        def f(pre: T.Buffer((4 * H,), "float32"), state: T.Buffer((hp,), "float32"), lo: T.Buffer((n,), "float32"),
              hi: T.Buffer((n,), "float32"), rows: T.Buffer((n,), "int32"), pos: T.Buffer((n,), "int32"),
              count: T.Buffer((1,), "int32")):
            T.func_attr({"tirx.noalias": True})
            a = T.decl_buffer((G * hp,), "float32")  # r, z, n (with r_LL)
            last = T.decl_buffer((hp,), "float32")
            copy_last(pre, last)
            score = T.decl_buffer((G * hp,), "float32")
            for uo in range(hp // LANES):
                for ui in T.vectorized(LANES):
                    a[uo * LANES + ui] = sigmoid(at(pre, last, 0, uo * LANES + ui))
                    a[hp + uo * LANES + ui] = sigmoid(at(pre, last, 1, uo * LANES + ui))
            for uo in range(hp // LANES):
                for ui in T.vectorized(LANES):
                    a[2 * hp + uo * LANES + ui] = tanh(at(pre, last, 2, uo * LANES + ui)
                                                       + a[uo * LANES + ui] * at(pre, last, 3, uo * LANES + ui))
            for uo in range(hp // LANES):
                for ui in T.vectorized(LANES):
                    # dn = (1 − n²)(1 − z): the candidate's weight in h' (score of n, factor of r's)
                    score[2 * hp + uo * LANES + ui] = ((T.float32(1) - a[2 * hp + uo * LANES + ui]
                                                        * a[2 * hp + uo * LANES + ui])
                                                       * (T.float32(1) - a[hp + uo * LANES + ui]))
                    score[hp + uo * LANES + ui] = d(a[hp + uo * LANES + ui]) * T.fabs(
                        state[uo * LANES + ui] - a[2 * hp + uo * LANES + ui])
            for uo in range(hp // LANES):
                for ui in T.vectorized(LANES):
                    score[uo * LANES + ui] = (d(a[uo * LANES + ui]) * score[2 * hp + uo * LANES + ui]
                                              * T.fabs(at(pre, last, 3, uo * LANES + ui)))
            for g in range(G):
                mark(score, lo, hi, pos, g)
            compact(rows, pos, count)
    return _named(f, name)


# ----------------------------------------------------------------------------- dual output projection
def band_mask(n: int, name: str = "band_mask"):
    """The output projection's step 3 (:mod:`dualtvm.output`): rows with y_LL ≥ max(y_LL) − θ compacted into
    ``rows``; serial and branch-free like :func:`mask` (θ = +inf marks every row)."""
    compact = _compaction(n)
    mark = _marks(n, lambda pre, top, theta, i, g: pre[i] >= top[0] - theta[0])

    @T.prim_func
    def f(pre: T.Buffer((n,), "float32"), theta: T.Buffer((1,), "float32"), rows: T.Buffer((n,), "int32"),
          pos: T.Buffer((n,), "int32"), count: T.Buffer((1,), "int32")):
        T.func_attr({"tirx.noalias": True})
        top = T.decl_buffer((1,), "float32", scope="local")
        top[0] = pre[0]
        for i in range(n):
            top[0] = T.max(top[0], pre[i])
        mark(pre, top, theta, pos, 0)
        compact(rows, pos, count)

    return _named(f, name)


def band_assemble(n: int, name: str = "band_assemble"):
    """Eq. 1 for the output projection: the big logit yc[pos[i]] + b[i] where row i is sensitive, else y_LL[i]."""

    @T.prim_func(s_tir=True)
    def f(pre: T.Buffer((n,), "float32"), yc: T.Buffer((n,), "float32"), pos: T.Buffer((n,), "int32"),
          bias: T.Buffer((n,), "float32"), out: T.Buffer((n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for i in range(n):
            with T.sblock("epilogue"):
                vi = T.axis.remap("S", [i])
                out[vi] = T.if_then_else(pos[vi] >= 0, yc[T.max(pos[vi], 0)] + bias[vi], pre[vi])

    return _named(f, name)


# ----------------------------------------------------------------------------- assembly + cells
def vector_units(hidden: int) -> int:
    """Hidden units a cell update computes in whole vectors with unclamped loads: H rounded down to :data:`LANES`.

    The rest of the padded state (< LANES units of H, then the padding) is a scalar tail whose loads are clamped to
    H − 1.  Clamping every load (``T.min(j, H − 1)``) in the vectorised loop made each of them a gather: LSTM-1500's
    assembly took 7.9 µs alone, 5.8 split so (H = 1024 is a whole number of vectors either way)."""
    return hidden // LANES * LANES


def lstm_assemble(hidden: int, hp: int, name: str = "lstm_assemble"):
    """Step 5 + eq. 6: gate = φ(yc[pos] + b) where sensitive else φ(pre_LL); c' = f c + i g; h' = o tanh c'."""
    H, U = hidden, vector_units(hidden)

    def cell(gate, c, j):
        return gate[j + H] * c[j] + gate[j] * gate[j + 2 * H]

    def hidden_state(gate, c_out, j):
        return gate[j + 3 * H] * tanh(c_out[j])

    @T.prim_func(s_tir=True)
    def f(pre: T.Buffer((4 * H,), "float32"), yc: T.Buffer((4 * H,), "float32"), pos: T.Buffer((4 * H,), "int32"),
          bias: T.Buffer((4 * H,), "float32"), c: T.Buffer((hp,), "float32"), h_out: T.Buffer((hp,), "float32"),
          c_out: T.Buffer((hp,), "float32")):
        T.func_attr({"tirx.noalias": True})
        gate = T.sblock_alloc_buffer((4 * H,), "float32")
        for i in range(4 * H):
            with T.sblock("gate"):
                vi = T.axis.remap("S", [i])
                # tanh(v) = 2σ(2v) − 1: one branch-free formula for all four gates (a = 2 on the g rows)
                gate[vi] = T.Select(vi // H == 2, T.float32(2), T.float32(1)) * sigmoid(
                    T.Select(vi // H == 2, T.float32(2), T.float32(1))
                    * T.Select(pos[vi] >= 0, yc[T.max(pos[vi], 0)] + bias[vi], pre[vi])) \
                    - T.Select(vi // H == 2, T.float32(1), T.float32(0))
        for j in range(U):
            with T.sblock("cell"):
                vj = T.axis.remap("S", [j])
                c_out[vj] = cell(gate, c, vj)
        for j in range(hp - U):
            with T.sblock("cell_tail"):
                vj = T.axis.remap("S", [j])
                c_out[U + vj] = in_hidden(U + vj, H) * cell(gate, c, T.min(U + vj, H - 1))
        for j in range(U):
            with T.sblock("hidden"):
                vj = T.axis.remap("S", [j])
                h_out[vj] = hidden_state(gate, c_out, vj)
        for j in range(hp - U):
            with T.sblock("hidden_tail"):
                vj = T.axis.remap("S", [j])
                h_out[U + vj] = in_hidden(U + vj, H) * hidden_state(gate, c_out, T.min(U + vj, H - 1))

    return _named(f, name)


def gru_assemble(hidden: int, hp: int, name: str = "gru_assemble"):
    """Step 5 for the GRU: r, z, n from big rows where sensitive, else from pre_LL; h' = (1 − z) n + z h."""
    H, U = hidden, vector_units(hidden)

    def hidden_state(pre, ycx, ych, pos, b_ih, b_hh, rz, h, j):
        return ((T.float32(1) - rz[j + H]) * tanh(T.Select(
            pos[j + 2 * H] >= 0,
            ycx[T.max(pos[j + 2 * H], 0)] + b_ih[j + 2 * H] + rz[j] * (ych[T.max(pos[j + 2 * H], 0)] + b_hh[j + 2 * H]),
            pre[j + 2 * H] + rz[j] * pre[j + 3 * H]))
            + rz[j + H] * h[j])

    @T.prim_func(s_tir=True)
    def f(pre: T.Buffer((4 * H,), "float32"), ycx: T.Buffer((3 * H,), "float32"),
          ych: T.Buffer((3 * H,), "float32"), pos: T.Buffer((3 * H,), "int32"), b_ih: T.Buffer((3 * H,), "float32"),
          b_hh: T.Buffer((3 * H,), "float32"), h: T.Buffer((hp,), "float32"), h_out: T.Buffer((hp,), "float32")):
        T.func_attr({"tirx.noalias": True})
        rz = T.sblock_alloc_buffer((2 * H,), "float32")
        for i in range(2 * H):
            with T.sblock("rz"):
                vi = T.axis.remap("S", [i])
                rz[vi] = sigmoid(T.Select(pos[vi] >= 0, ycx[T.max(pos[vi], 0)] + b_ih[vi]
                                          + ych[T.max(pos[vi], 0)] + b_hh[vi], pre[vi]))
        for j in range(U):
            with T.sblock("hidden"):
                vj = T.axis.remap("S", [j])
                h_out[vj] = hidden_state(pre, ycx, ych, pos, b_ih, b_hh, rz, h, vj)
        for j in range(hp - U):
            with T.sblock("hidden_tail"):
                vj = T.axis.remap("S", [j])
                h_out[U + vj] = in_hidden(U + vj, H) * hidden_state(pre, ycx, ych, pos, b_ih, b_hh, rz, h,
                                                                    T.min(U + vj, H - 1))

    return _named(f, name)


def lstm_dense_cell(hidden: int, hp: int, name: str = "lstm_dense_cell"):
    """Dense baseline cell (eq. 6) on y = W [x; h]."""
    H, U = hidden, vector_units(hidden)

    def cell(y, bias, c, j):
        return (sigmoid(y[j + H] + bias[j + H]) * c[j]
                + sigmoid(y[j] + bias[j]) * tanh(y[j + 2 * H] + bias[j + 2 * H]))

    def hidden_state(y, bias, c_out, j):
        return sigmoid(y[j + 3 * H] + bias[j + 3 * H]) * tanh(c_out[j])

    @T.prim_func(s_tir=True)
    def f(y: T.Buffer((4 * H,), "float32"), bias: T.Buffer((4 * H,), "float32"), c: T.Buffer((hp,), "float32"),
          h_out: T.Buffer((hp,), "float32"), c_out: T.Buffer((hp,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for j in range(U):
            with T.sblock("cell"):
                vj = T.axis.remap("S", [j])
                c_out[vj] = cell(y, bias, c, vj)
        for j in range(hp - U):
            with T.sblock("cell_tail"):
                vj = T.axis.remap("S", [j])
                c_out[U + vj] = in_hidden(U + vj, H) * cell(y, bias, c, T.min(U + vj, H - 1))
        for j in range(U):
            with T.sblock("hidden"):
                vj = T.axis.remap("S", [j])
                h_out[vj] = hidden_state(y, bias, c_out, vj)
        for j in range(hp - U):
            with T.sblock("hidden_tail"):
                vj = T.axis.remap("S", [j])
                h_out[U + vj] = in_hidden(U + vj, H) * hidden_state(y, bias, c_out, T.min(U + vj, H - 1))

    return _named(f, name)


def gru_dense_cell(hidden: int, hp: int, name: str = "gru_dense_cell"):
    """Dense baseline GRU cell on yx = W_ih x, yh = W_hh h."""
    H, U = hidden, vector_units(hidden)

    def hidden_state(yx, yh, b_ih, b_hh, h, j):
        def z():  # built twice: an activation's let-bound variables may be defined once in a PrimFunc
            return sigmoid(yx[j + H] + b_ih[j + H] + yh[j + H] + b_hh[j + H])

        r = sigmoid(yx[j] + b_ih[j] + yh[j] + b_hh[j])
        return (T.float32(1) - z()) * tanh(yx[j + 2 * H] + b_ih[j + 2 * H] + r * (yh[j + 2 * H] + b_hh[j + 2 * H])) \
            + z() * h[j]

    @T.prim_func(s_tir=True)
    def f(yx: T.Buffer((3 * H,), "float32"), yh: T.Buffer((3 * H,), "float32"), b_ih: T.Buffer((3 * H,), "float32"),
          b_hh: T.Buffer((3 * H,), "float32"), h: T.Buffer((hp,), "float32"), h_out: T.Buffer((hp,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for j in range(U):
            with T.sblock("hidden"):
                vj = T.axis.remap("S", [j])
                h_out[vj] = hidden_state(yx, yh, b_ih, b_hh, h, vj)
        for j in range(hp - U):
            with T.sblock("hidden_tail"):
                vj = T.axis.remap("S", [j])
                h_out[U + vj] = in_hidden(U + vj, H) * hidden_state(yx, yh, b_ih, b_hh, h, T.min(U + vj, H - 1))

    return _named(f, name)


def concat(a: int, b: int, name: str = "concat"):
    """[x; h] for the LSTM's single masked GEMV over [W_ih | W_hh]."""

    @T.prim_func(s_tir=True)
    def f(x: T.Buffer((a,), "float32"), h: T.Buffer((b,), "float32"), out: T.Buffer((a + b,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for i in range(a):  # two copies, not one loop choosing per element: its clamped loads were gathers (5×)
            with T.sblock("concat"):
                vi = T.axis.remap("S", [i])
                out[vi] = x[vi]
        for i in range(b):
            with T.sblock("concat_h"):
                vi = T.axis.remap("S", [i])
                out[a + vi] = h[vi]

    return _named(f, name)


def gate_counts(n: int, gates: int, name: str = "gate_counts"):
    """Sensitive rows (``pos`` ≥ 0) in each of the ``gates`` equal parts of a mask kernel's ``pos`` vector, int64:
    the compiled GNMT step adds them up in the graph, so its decode loop keeps one small running vector instead of
    every step's masks (a torch reduction over those cost more than the counting)."""
    from tvm import te

    rows = n // gates
    pos = te.placeholder((n,), "int32", name="pos")
    r = te.reduce_axis((0, rows), "r")
    counts = te.compute((gates,), lambda g: te.sum(te.if_then_else(pos[g * rows + r] >= 0, 1, 0).astype("int64"),
                                                    axis=r), name="count")
    return _named(te.create_prim_func([pos, counts]), name)


def attention(hidden: int, name: str = "attention"):
    """ctx = softmax(mem · q) · mem over the S rows of a sentence's memory (S symbolic: one kernel for every
    sentence length; padding rows are left out by the caller, which is what masking them to −∞ computes)."""
    from tvm import te, tirx

    S = tirx.Var("S", "int64")
    mem = te.placeholder((S, hidden), "float32", name="mem")
    q = te.placeholder((hidden,), "float32", name="q")
    k = te.reduce_axis((0, hidden), "k")
    score = te.compute((S,), lambda s: te.sum(mem[s, k] * q[k], axis=k), name="score")
    r = te.reduce_axis((0, S), "r")
    top = te.compute((1,), lambda _: te.max(score[r], axis=r), name="top")
    e = te.compute((S,), lambda s: te.exp(score[s] - top[0]), name="e")
    r2 = te.reduce_axis((0, S), "r2")
    den = te.compute((1,), lambda _: te.sum(e[r2], axis=r2), name="den")
    weight = te.compute((S,), lambda s: e[s] / den[0], name="weight")
    r3 = te.reduce_axis((0, S), "r3")
    ctx = te.compute((hidden,), lambda h: te.sum(weight[r3] * mem[r3, h], axis=r3), name="ctx")
    return _named(te.create_prim_func([mem, q, ctx]), name)


def split_halves(width: int, s: "OutputShape", name: str = "split_halves"):
    """A vector (``width`` ≥ ``s.cols``, zeros past ``cols``) in the dual output projection's input layout
    [low half, zeros, high half, zeros] (``s.cols_p``): what ``linear.split_layout`` does on the host."""
    lo, hi_n, half_p = s.split, s.cols - s.split, s.half_p

    @T.prim_func(s_tir=True)
    def f(x: T.Buffer((width,), "float32"), out: T.Buffer((2 * half_p,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for i in range(2 * half_p):
            with T.sblock("split"):
                vi = T.axis.remap("S", [i])
                out[vi] = T.if_then_else(vi < lo, x[T.min(vi, lo - 1)],
                                         T.if_then_else(half_p <= vi and vi < half_p + hi_n,
                                                        x[T.min(T.max(vi - half_p + lo, 0), width - 1)],
                                                        T.float32(0)))

    return _named(f, name)


class LittlePath:
    """What the compiled little module of a shape runs on (``k``, ``little_bits``, ``int8_codes`` fields):
    shared by :class:`LayerShape` and :class:`OutputShape`."""

    def __post_init__(self) -> None:
        if self.little_bits not in COMPILED_BITS:
            raise ValueError(f"the compiled little GEMV takes INT8 or INT4 weights, not INT{self.little_bits}")
        if self.int8_codes and self.little_bits != 8:
            raise ValueError("int8_codes is the INT8 little GEMV's integer path; INT4 always runs on codes")

    def for_target(self, target):
        """This shape with the little GEMV path ``target`` (a ``TargetSpec``) runs fastest: INT8 on integer codes
        where the target has AVX2 (``pmaddubsw``/``vpdpbusd`` nests): on dequantised floats the int8→fp32
        conversions make the little GEMV compute-bound (``bench.py --int8-float`` times both paths)."""
        return replace(self, int8_codes=self.little_bits == 8 and target.has_feature("avx2"))

    @property
    def codes(self) -> bool:
        """Whether the little GEMV runs on the projection's integer codes (INT4 always, INT8 where chosen)."""
        return self.little_bits == 4 or self.int8_codes

    @property
    def k2p(self) -> int:
        return padded(2 * self.k)

    @property
    def kp4(self) -> int:
        """Per-half padded length of the integer paths' codes (``int4_padded``)."""
        return int4_padded(self.k)

    @property
    def little_tag(self) -> str:
        """The projection's and little GEMV's tag: the shape's, k, and the path (their kernels differ with both)."""
        return f"{self.tag}_k{self.k}" + ("_w4" if self.little_bits == 4 else "_c8" if self.int8_codes else "")

    def check_target(self, target) -> None:
        """Refuse a target that cannot run this path: the integer little GEMVs need AVX2 (``pmaddubsw``)."""
        if self.codes and not target.has_feature("avx2"):
            raise ValueError(f"little GEMVs on integer codes (INT4, or INT8 with int8_codes) need AVX2 (pmaddubsw); "
                             f"target {target.cli!r} lacks it: use INT8 weights shaped with for_target")

    def little_weight_shape(self, rows: int) -> tuple:
        """(shape, dtype) of the packed W_LL of ``rows`` outputs (:func:`pack_little_weight`)."""
        return (((rows, self.kp4), "uint8") if self.little_bits == 4 else ((rows, 2 * self.kp4), "int8")
                if self.int8_codes else ((rows, self.k2p), "int8"))


@dataclass(frozen=True)
class LayerShape(LittlePath):
    """Shapes of one layer's kernels, all reductions padded."""

    rnn_type: str
    hidden: int
    input_size: int
    k: int
    little_bits: int = 8  # W_LL precision the compiled little GEMV takes: 8 or 4
    int8_codes: bool = False  # INT8 W_LL on the projection's integer codes (project_codes + little_gemv_int8)
    mask_rule: str = "activation"  # what the mask tests (thresholds.MASK_RULES): eq. 5's bands or contribution scores

    @property
    def gates(self) -> int:
        return 4 if self.rnn_type == "LSTM" else 3

    @property
    def n(self) -> int:
        return self.gates * self.hidden

    @property
    def dxp(self) -> int:
        return padded(self.input_size)

    @property
    def hp(self) -> int:
        return padded(self.hidden)

    @property
    def tag(self) -> str:
        """The big side's tag (GEMVs, mask, assembly): none of its kernels depends on k, so builds of one layer shape
        at any ε share their names — and their tuning verdicts.  The little kernels add k (``little_tag``)."""
        return f"{self.rnn_type.lower()}_{self.hidden}_{self.input_size}"



@dataclass(frozen=True)
class OutputShape(LittlePath):
    """Shapes of the dual output projection's kernels (:mod:`dualtvm.output`): ``rows`` logits from ``cols``
    inputs, split in two halves that play the layers' x and h; each half padded, so the compiled input is
    laid out [low half, zeros, high half, zeros] (``cols_p``)."""

    rows: int
    cols: int
    k: int
    little_bits: int = 8
    int8_codes: bool = False

    @property
    def split(self) -> int:
        return (self.cols + 1) // 2

    @property
    def half_p(self) -> int:
        return padded(self.split)

    @property
    def cols_p(self) -> int:
        return 2 * self.half_p

    @property
    def tag(self) -> str:
        return f"out_{self.rows}_{self.cols}"



def pack_little_weight(s: LittlePath, codes: np.ndarray) -> np.ndarray:
    """W_LL codes (rows × 2k, the x/low half's columns first) in the layout of ``s``'s little GEMV."""
    if s.little_bits == 4:
        return pack_int4(codes, s.k)
    if s.int8_codes:
        return pack_int8_codes(codes, s.k)
    out = np.zeros((codes.shape[0], s.k2p), np.int8)
    out[:, : codes.shape[1]] = codes
    return out


def little_kernels(s: LittlePath, dx: int, dh: int, rows: int, tag: str) -> dict[str, tvm.tirx.PrimFunc]:
    """Steps 1–2 (projection of the two inputs, little GEMV of ``rows`` outputs) on ``s``'s path."""
    if s.codes:
        return {f"project_{tag}": project_codes(s.k, dx, dh, name=f"project_{tag}"),
                f"little_gemv_{tag}": (little_gemv_int4(rows, s.kp4, f"little_gemv_{tag}") if s.little_bits == 4
                                       else little_gemv_int8(rows, 2 * s.kp4, f"little_gemv_{tag}"))}
    return {f"project_{tag}": project(s.k, dx, dh, name=f"project_{tag}"),
            f"little_gemv_{tag}": little_gemv(rows, s.k2p, f"little_gemv_{tag}")}


def output_kernels(s: OutputShape) -> dict[str, tvm.tirx.PrimFunc]:
    """Every PrimFunc the dual output projection calls (:func:`dualtvm.linear.build_dual_linear_ir`)."""
    t = s.tag
    return {**little_kernels(s, s.half_p, s.half_p, s.rows, s.little_tag),
            f"band_mask_{t}": band_mask(s.rows, f"band_mask_{t}"),
            f"masked_gemv_{t}": masked_gemv(s.rows, s.cols_p, f"masked_gemv_{t}"),
            f"band_assemble_{t}": band_assemble(s.rows, f"band_assemble_{t}")}


def layer_kernels(s: LayerShape, dual: bool = True) -> dict[str, tvm.tirx.PrimFunc]:
    """Every PrimFunc one layer's step calls, named ``<kind>_<tag>`` so layers of one shape share them."""
    t = s.tag
    ks: dict[str, tvm.tirx.PrimFunc] = {}
    if s.rnn_type == "LSTM":
        kb = s.dxp + s.hp
        ks[f"concat_{t}"] = concat(s.dxp, s.hp, f"concat_{t}")
        if dual:
            ks[f"masked_gemv_{t}"] = masked_gemv(s.n, kb, f"masked_gemv_{t}")
            ks[f"lstm_assemble_{t}"] = lstm_assemble(s.hidden, s.hp, f"lstm_assemble_{t}")
        else:
            ks[f"gemv_{t}"] = gemv(s.n, kb, f"gemv_{t}")
            ks[f"lstm_dense_cell_{t}"] = lstm_dense_cell(s.hidden, s.hp, f"lstm_dense_cell_{t}")
    else:
        if dual:
            ks[f"masked_gemv_pair_{t}"] = masked_gemv_pair(s.n, s.dxp, s.hp, f"masked_gemv_pair_{t}")
            ks[f"gru_assemble_{t}"] = gru_assemble(s.hidden, s.hp, f"gru_assemble_{t}")
        else:
            ks[f"gemv_pair_{t}"] = gemv_pair(s.n, s.dxp, s.hp, f"gemv_pair_{t}")
            ks[f"gru_dense_cell_{t}"] = gru_dense_cell(s.hidden, s.hp, f"gru_dense_cell_{t}")
    if dual:
        ks.update(little_kernels(s, s.dxp, s.hp, 4 * s.hidden, s.little_tag))
        ks[f"mask_{t}"] = (contribution_mask(s.hidden, s.rnn_type, s.hp, f"mask_{t}") if s.mask_rule == "contribution"
                           else mask(s.hidden, s.rnn_type, f"mask_{t}"))
    return ks
