"""Every kernel against numpy on small shapes, built with the default (hand) schedules."""
import numpy as np
import pytest
import tvm

from dualtvm import kernels as K
from schedules import Knobs, apply_default

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "broadwell"})
pytestmark = pytest.mark.slow


def run(func, *arrays, outs, knobs=Knobs(), fill=0):
    lib = tvm.tirx.build(tvm.IRModule({"main": apply_default(func, knobs).with_attr("global_symbol", "main")}), target=TARGET)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays] + [tvm.runtime.tensor(np.full(s, fill, d), dev) for s, d in outs]
    lib["main"](*args)
    return [a.numpy() for a in args[len(arrays):]]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("n", [96, 80])  # 80: 40 rows a thread, which 12-row blocks do not divide
@pytest.mark.parametrize("knobs", [Knobs(), Knobs(8, 2, 12), Knobs(8, 4, 1, 0), Knobs(32, 2, 8, 4)])
def test_dense_gemv(rng, knobs, n):
    W = rng.standard_normal((n, 64)).astype(np.float32)
    x = rng.standard_normal(64).astype(np.float32)
    (y,) = run(K.gemv(n, 64), W, x, outs=[((n,), "float32")], knobs=knobs)
    np.testing.assert_allclose(y, W @ x, rtol=1e-5, atol=1e-4)


def test_row_dot_knobs_take_one_vector_register_of_lanes():
    """12 accumulators of one register each: 8 lanes (ymm) where the target has no AVX-512, 16 (zmm) where it has."""
    from dualtvm.target import parse_target

    avx2, avx512 = (Knobs.for_target(2, parse_target(f"llvm -mcpu={c}").required_features())
                    for c in ("broadwell", "znver4"))
    assert (avx2.lanes, avx2.rows, avx2.groups) == (8, 12, 2)
    assert (avx512.lanes, avx512.rows) == (16, 12)
    assert Knobs.for_target(None).groups == 2 and Knobs.for_target(4).groups == 4


@pytest.mark.parametrize("density", [0.0, 1.0, 0.5, 0.07])
def test_masked_gemv_reads_listed_rows(rng, density):
    n, k = 96, 64
    W = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    idx = np.flatnonzero(rng.random(n) < density).astype(np.int32)
    rows = np.zeros(n, np.int32)
    rows[: len(idx)] = idx
    sentinel = np.full(n, 12345.0, np.float32)
    lib = tvm.tirx.build(tvm.IRModule({"main": apply_default(K.masked_gemv(n, k)).with_attr("global_symbol", "main")}),
                    target=TARGET)
    dev = tvm.cpu()
    yc = tvm.runtime.tensor(sentinel, dev)
    lib["main"](tvm.runtime.tensor(W, dev), tvm.runtime.tensor(x, dev), tvm.runtime.tensor(rows, dev),
                tvm.runtime.tensor(np.array([len(idx)], np.int32), dev), yc)
    np.testing.assert_allclose(yc.numpy()[: len(idx)], W[idx] @ x, rtol=1e-5, atol=1e-4)


def test_little_gemv_int8(rng):
    n, k2 = 64, 96
    Wq = rng.integers(-127, 128, (n, k2), dtype=np.int8)  # full range: no saturation allowed
    z = (rng.integers(-127, 128, k2) * 0.01).astype(np.float32)
    scale = rng.random(n).astype(np.float32) * 0.01
    bias = rng.standard_normal(n).astype(np.float32)
    (pre,) = run(K.little_gemv(n, k2), Wq, z, scale, bias, outs=[((n,), "float32")])
    np.testing.assert_allclose(pre, scale * (Wq.astype(np.float64) @ z) + bias, rtol=1e-5, atol=1e-4)


def test_little_gemv_int8_on_codes(rng):
    """The integer INT8 little GEMV (codes of project_codes, halves padded like INT4's) equals exact sums."""
    n, k = 48, 70
    kp = K.int4_padded(k)
    W8 = np.zeros((n, 2 * kp), np.int8)
    W8[:, :k], W8[:, kp:kp + k] = rng.integers(-127, 128, (n, k)), rng.integers(-127, 128, (n, k))
    zq = np.zeros(2 * kp, np.int8)
    zq[:k], zq[kp:kp + k] = rng.integers(-127, 128, k), rng.integers(-127, 128, k)
    zs = np.array([0.02, 0.03], np.float32)
    scale, bias = rng.random(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    (pre,) = run(K.little_gemv_int8(n, 2 * kp), W8, zq, zs, scale, bias, outs=[((n,), "float32")])
    exact = zs[0] * (W8[:, :kp].astype(np.int64) @ zq[:kp]) + zs[1] * (W8[:, kp:].astype(np.int64) @ zq[kp:])
    np.testing.assert_allclose(pre, scale * exact + bias, rtol=1e-5, atol=1e-4)


def test_little_gemv_int4_and_its_packing(rng):
    n, k = 40, 70
    kp = K.int4_padded(k)
    codes = rng.integers(-7, 8, (n, 2 * k))
    W4 = K.pack_int4(codes, k)
    assert W4.shape == (n, kp) and W4.dtype == np.uint8
    chunks = W4.reshape(n, 2, kp // 64, 32)  # [row, half, chunk, byte]: low nibbles values 0-31, high 32-63
    halves = np.concatenate([chunks & 15, chunks >> 4], axis=3).reshape(n, 2, kp).astype(int) - 8
    assert (halves[:, 0, :k] == codes[:, :k]).all() and (halves[:, 1, :k] == codes[:, k:]).all()
    assert not halves[:, :, k:].any()
    zq = np.zeros(2 * kp, np.int8)
    zq[:k], zq[kp:kp + k] = rng.integers(-127, 128, k), rng.integers(-127, 128, k)
    zs = np.array([0.02, 0.03], np.float32)
    scale, bias = rng.random(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    (pre,) = run(K.little_gemv_int4(n, kp), W4, zq, zs, scale, bias, outs=[((n,), "float32")])
    exact = zs[0] * (codes[:, :k] @ zq[:k].astype(np.int64)) + zs[1] * (codes[:, k:] @ zq[kp:kp + k].astype(np.int64))
    np.testing.assert_allclose(pre, scale * exact + bias, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="INT4 codes"):
        K.pack_int4(codes * 2, k)


def test_project_codes_are_project_before_dequantisation(rng):
    k, dx, dh = 20, 32, 64
    kp = K.int4_padded(k)
    args = [rng.integers(-1, 2, (k, dx), dtype=np.int8), rng.integers(-1, 2, (k, dh), dtype=np.int8),
            rng.uniform(0.05, 1, 2 * k).astype(np.float32),
            rng.standard_normal(dx).astype(np.float32), rng.standard_normal(dh).astype(np.float32)]
    zq, zs = run(K.project_codes(k, dx, dh), *args, outs=[((2 * kp,), "int8"), ((2,), "float32")])
    (z,) = run(K.project(k, dx, dh), *args, outs=[((K.padded(2 * k),), "float32")])
    np.testing.assert_allclose(np.concatenate([zq[:k] * zs[0], zq[kp:kp + k] * zs[1]]), z[:2 * k], rtol=1e-5, atol=1e-6)
    assert not zq[k:kp].any() and not zq[kp + k:].any()


@pytest.mark.parametrize("row_scales", [False, True])
def test_projection_and_quantisation(rng, row_scales):
    """Each half quantised with its own scale, after each row's scale (ones, or W_LL's equalised column norms)."""
    k, dx, dh = 20, 32, 64
    Px = rng.integers(-1, 2, (k, dx), dtype=np.int8)
    Ph = rng.integers(-1, 2, (k, dh), dtype=np.int8)
    r = rng.uniform(0.05, 1, 2 * k).astype(np.float32) if row_scales else np.ones(2 * k, np.float32)
    x, h = rng.standard_normal(dx).astype(np.float32), rng.standard_normal(dh).astype(np.float32)
    (z,) = run(K.project(k, dx, dh), Px, Ph, r, x, h, outs=[((K.padded(2 * k),), "float32")])
    for part, P, v, rr in ((z[:k], Px, x, r[:k]), (z[k:2 * k], Ph, h, r[k:])):
        proj = (P @ v) / np.sqrt(3) * rr
        s = np.abs(proj).max() / 127
        np.testing.assert_allclose(part, np.round(proj / s) * s, rtol=1e-5, atol=1e-5)
    assert not z[2 * k:].any()


@pytest.mark.parametrize("H", [16, 13])  # 13: each gate's marks end in a scalar tail (K._marks)
@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_mask_eq5_and_compaction(rng, rnn_type, H):
    """Bands set on the activation, mapped through φ⁻¹: the kernel's test on y_LL is eq. 5 on φ(y_LL)."""
    from dualtvm.gates import layout
    from dualtvm.thresholds import Thresholds

    n = (4 if rnn_type == "LSTM" else 3) * H
    pre = rng.standard_normal(4 * H).astype(np.float32) * 2
    lay = layout(rnn_type)
    bands = {g: ((-0.6, 0.6) if lay.activation(g) == "tanh" else (0.5, np.inf)) for g in lay.gates}
    bands[lay.gates[0]] = (0.3, 0.9)  # an upper bound below 1 on a sigmoid gate too
    th = Thresholds(bands)
    lo_a, hi_a = th.row_bounds(lay.gates, H)
    lo, hi = th.pre_activation_bounds(lay, H)
    rows, pos, count = run(K.mask(H, rnn_type), pre, lo, hi, outs=[((n,), "int32"), ((n,), "int32"), ((1,), "int32")])
    a = sigmoid(pre[:n]).astype(np.float32)
    if rnn_type == "LSTM":
        a[2 * H:3 * H] = np.tanh(pre[2 * H:3 * H])
    else:
        a[2 * H:3 * H] = np.tanh(pre[2 * H:3 * H] + sigmoid(pre[:H]) * pre[3 * H:])
    sensitive = (a > lo_a) & (a < hi_a)
    assert 0 < sensitive.sum() < n
    assert count[0] == sensitive.sum()
    assert np.array_equal(rows[: count[0]], np.flatnonzero(sensitive)) and not rows[count[0]:].any()
    assert np.array_equal(pos >= 0, sensitive) and np.array_equal(rows[pos[sensitive]], np.flatnonzero(sensitive))


@pytest.mark.parametrize("sensitive_rows", [0, 5, 390, 400])
def test_mask_zeroes_the_slack_past_count(sensitive_rows):
    """The row list's ``ROW_LIST_SLACK`` places past the count hold 0 whatever the buffer held (a masked GEMV
    nest reads up to a block of them), clamped at the list's end; the rest of the list is not the mask's to write."""
    H = 100
    n = 4 * H
    pre = np.zeros(4 * H, np.float32)
    lo, hi = np.full(n, np.inf, np.float32), np.full(n, np.inf, np.float32)
    lo[:sensitive_rows] = -np.inf
    rows, pos, count = run(K.mask(H, "LSTM"), pre, lo, hi, outs=[((n,), "int32"), ((n,), "int32"), ((1,), "int32")],
                           fill=-7)
    assert count[0] == sensitive_rows and np.array_equal(rows[:sensitive_rows], np.arange(sensitive_rows))
    assert not rows[sensitive_rows:sensitive_rows + K.ROW_LIST_SLACK].any()
    assert (rows[sensitive_rows + K.ROW_LIST_SLACK:] == -7).all()
    assert np.array_equal(pos, np.where(np.arange(n) < sensitive_rows, np.arange(n), -1))


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
@pytest.mark.parametrize("H", [16, 21])
def test_contribution_mask_scores_and_compaction(rng, rnn_type, H):
    """The contribution rule's kernel: scores from y_LL and the weighing state (c for LSTM, h for GRU) against
    per-gate (θ, +∞), the same compaction; a hidden size off the lane width leaves the padding lanes unused."""
    import torch

    from dualtvm.contribution import contribution_scores

    n, hp = (4 if rnn_type == "LSTM" else 3) * H, K.padded(H)
    pre = rng.standard_normal(4 * H).astype(np.float32) * 2
    state = np.zeros(hp, np.float32)
    state[:H] = rng.standard_normal(H)
    h = torch.from_numpy(state[:H])[None]
    scores = contribution_scores(rnn_type, torch.from_numpy(pre)[None], h, h if rnn_type == "LSTM" else None)
    middle = [np.sort(s.numpy().ravel())[H // 2 - 1 : H // 2 + 1] for s in scores]
    theta = [float(m.mean()) for m in middle]  # between two scores: no row sits on θ (the kernel's exp is a polynomial)
    lo = np.repeat(np.array(theta, np.float32), H)
    hi = np.full(n, np.inf, np.float32)
    rows, pos, count = run(K.contribution_mask(H, rnn_type, hp), pre, state, lo, hi,
                           outs=[((n,), "int32"), ((n,), "int32"), ((1,), "int32")])
    sensitive = np.concatenate([s[0].numpy() > t for s, t in zip(scores, theta)])
    assert 0 < sensitive.sum() < n and count[0] == sensitive.sum()
    assert np.array_equal(rows[: count[0]], np.flatnonzero(sensitive)) and not rows[count[0]:].any()
    assert np.array_equal(pos >= 0, sensitive)


def test_pre_activation_bounds_ends():
    """Ratio 0 / 1 bands and bands at the ends of φ's range map to ±∞ (all rows / no row)."""
    from dualtvm.gates import LSTM
    from dualtvm.thresholds import Thresholds, inverse_activation

    assert inverse_activation(0.0, "sigmoid") == -np.inf and inverse_activation(1.0, "sigmoid") == np.inf
    assert inverse_activation(-1.0, "tanh") == -np.inf and inverse_activation(2.0, "tanh") == np.inf
    assert np.isclose(sigmoid(inverse_activation(0.8, "sigmoid")), 0.8)
    assert np.isclose(np.tanh(inverse_activation(-0.3, "tanh")), -0.3)
    lo, hi = Thresholds({g: (-np.inf, np.inf) for g in LSTM.gates}).pre_activation_bounds(LSTM, 2)
    assert np.all(lo == -np.inf) and np.all(hi == np.inf)


def _sensitive_rows(rng, n):
    """A random half of n rows as a mask kernel lists them: ``pos`` (place or −1) and their indices."""
    sens = rng.random(n) < 0.5
    rows = np.flatnonzero(sens)
    pos = np.full(n, -1, np.int32)
    pos[rows] = np.arange(len(rows))
    return sens, rows, pos


# H = 8: whole vectors, then padding; 13: a partial vector in the scalar tail; 32: no tail (K.vector_units)
@pytest.mark.parametrize("H", [8, 13, 32])
def test_lstm_assemble_and_dense_cell(rng, H):
    hp = K.padded(H)
    pre_ll = rng.standard_normal(4 * H).astype(np.float32)
    y = rng.standard_normal(4 * H).astype(np.float32)
    bias = rng.standard_normal(4 * H).astype(np.float32)
    c = np.zeros(hp, np.float32)
    c[:H] = rng.standard_normal(H)
    sens, rows, pos = _sensitive_rows(rng, 4 * H)
    yc = np.zeros(4 * H, np.float32)
    yc[: len(rows)] = y[rows]
    h_out, c_out = run(K.lstm_assemble(H, hp), pre_ll, yc, pos, bias, c, outs=[((hp,), "float32")] * 2, fill=7)
    big = sigmoid(y + bias)
    big[2 * H:3 * H] = np.tanh(y[2 * H:3 * H] + bias[2 * H:3 * H])
    a_ll = sigmoid(pre_ll)
    a_ll[2 * H:3 * H] = np.tanh(pre_ll[2 * H:3 * H])
    g = np.where(sens, big, a_ll)
    c_ref = g[H:2 * H] * c[:H] + g[:H] * g[2 * H:3 * H]
    np.testing.assert_allclose(c_out[:H], c_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_out[:H], g[3 * H:] * np.tanh(c_ref), rtol=1e-5, atol=1e-6)
    assert not h_out[H:].any() and not c_out[H:].any()  # padding stays zero
    h_d, c_d = run(K.lstm_dense_cell(H, hp), y, bias, c, outs=[((hp,), "float32")] * 2, fill=7)
    c_dense = big[H:2 * H] * c[:H] + big[:H] * big[2 * H:3 * H]
    np.testing.assert_allclose(c_d[:H], c_dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_d[:H], big[3 * H:] * np.tanh(c_dense), rtol=1e-5, atol=1e-6)
    assert not h_d[H:].any() and not c_d[H:].any()


@pytest.mark.parametrize("H", [8, 13, 32])
def test_gru_assemble_and_dense_cell(rng, H):
    """r, z, n from the big rows where sensitive (n's from both halves: W_in x + b_in + r (W_hn h + b_hn)), else from
    the little pre-activations (n: pre_n,x + r · pre_n,h); h' = (1 − z) n + z h; the padding stays zero."""
    hp = K.padded(H)
    pre_ll, yx, yh, b_ih, b_hh = (rng.standard_normal(m).astype(np.float32) for m in (4 * H, 3 * H, 3 * H, 3 * H, 3 * H))
    h = np.zeros(hp, np.float32)
    h[:H] = rng.standard_normal(H)
    sens, rows, pos = _sensitive_rows(rng, 3 * H)
    ycx, ych = np.zeros(3 * H, np.float32), np.zeros(3 * H, np.float32)
    ycx[: len(rows)], ych[: len(rows)] = yx[rows], yh[rows]
    (h_out,) = run(K.gru_assemble(H, hp), pre_ll, ycx, ych, pos, b_ih, b_hh, h, outs=[((hp,), "float32")], fill=7)
    rz = np.where(sens[:2 * H], sigmoid(yx[:2 * H] + b_ih[:2 * H] + yh[:2 * H] + b_hh[:2 * H]), sigmoid(pre_ll[:2 * H]))
    r, z = rz[:H], rz[H:]
    n = np.where(sens[2 * H:], np.tanh(yx[2 * H:] + b_ih[2 * H:] + r * (yh[2 * H:] + b_hh[2 * H:])),
                 np.tanh(pre_ll[2 * H:3 * H] + r * pre_ll[3 * H:]))
    np.testing.assert_allclose(h_out[:H], (1 - z) * n + z * h[:H], rtol=1e-5, atol=1e-6)
    assert not h_out[H:].any()
    (h_d,) = run(K.gru_dense_cell(H, hp), yx, yh, b_ih, b_hh, h, outs=[((hp,), "float32")], fill=7)
    r, z = (sigmoid(yx[g * H:(g + 1) * H] + b_ih[g * H:(g + 1) * H] + yh[g * H:(g + 1) * H] + b_hh[g * H:(g + 1) * H])
            for g in range(2))
    n = np.tanh(yx[2 * H:] + b_ih[2 * H:] + r * (yh[2 * H:] + b_hh[2 * H:]))
    np.testing.assert_allclose(h_d[:H], (1 - z) * n + z * h[:H], rtol=1e-5, atol=1e-6)
    assert not h_d[H:].any()


def test_concat(rng):
    x, h = rng.standard_normal(64).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    (out,) = run(K.concat(64, 32), x, h, outs=[((96,), "float32")], fill=7)
    np.testing.assert_array_equal(out, np.concatenate([x, h]))


def test_vectorised_activations_match_numpy():
    """exp_poly / sigmoid / tanh (the cells' φ, polynomial so they vectorise) over the whole float range."""
    from tvm.script import tirx as T

    n = 4096
    x = np.concatenate([np.linspace(-30, 30, n - 8), [-1e4, -100.0, -88.0, -1e-6, 0.0, 1e-6, 88.0, 1e4]]).astype(np.float32)

    @T.prim_func(s_tir=True)
    def f(a: T.Buffer((n,), "float32"), e: T.Buffer((n,), "float32"), s: T.Buffer((n,), "float32"),
          t: T.Buffer((n,), "float32")):
        for i in T.vectorized(n):
            with T.sblock("act"):
                vi = T.axis.remap("S", [i])
                e[vi] = K.exp_poly(T.min(a[vi], T.float32(80)))
                s[vi] = K.sigmoid(a[vi])
                t[vi] = K.tanh(a[vi])

    lib = tvm.tirx.build(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=TARGET)
    outs = [tvm.runtime.tensor(np.zeros(n, np.float32), tvm.cpu()) for _ in range(3)]
    lib["main"](tvm.runtime.tensor(x, tvm.cpu()), *outs)
    e, s, t = (o.numpy().astype(np.float64) for o in outs)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(e, np.exp(np.minimum(xd, 80)), rtol=3e-7, atol=1e-37)  # flushes below e^-87
    np.testing.assert_allclose(s, 0.5 * (1 + np.tanh(xd / 2)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(t, np.tanh(xd), atol=2e-7)
    assert np.isfinite(s).all() and np.isfinite(t).all()


def test_attention_over_sentences_of_any_length(rng):
    """One build (the memory's length is symbolic) attends like numpy's softmax(mem · q) · mem, the hand nest and
    the definition alike, with scores large enough to overflow exp without the max shift."""
    from schedules import attention_nest

    H = 64
    built = {name: tvm.tirx.build(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=TARGET)
             for name, f in (("definition", apply_default(K.attention(H))), ("nest", attention_nest(H)))}
    for S in (1, 5, 37):
        mem = rng.standard_normal((S, H)).astype(np.float32)
        q = (rng.standard_normal(H) * 3).astype(np.float32)  # scores ~ ±50
        score = mem.astype(np.float64) @ q
        p = np.exp(score - score.max())
        expect = (p / p.sum()) @ mem
        for name, lib in built.items():
            ctx = tvm.runtime.tensor(np.zeros(H, np.float32), tvm.cpu())
            lib["main"](tvm.runtime.tensor(mem, tvm.cpu()), tvm.runtime.tensor(q, tvm.cpu()), ctx)
            np.testing.assert_allclose(ctx.numpy(), expect, rtol=1e-4, atol=1e-5, err_msg=f"{name}, S={S}")


def test_gate_counts(rng):
    pos = np.where(rng.random(4 * 24) < 0.3, rng.integers(0, 96, 4 * 24), -1).astype(np.int32)
    (counts,) = run(K.gate_counts(96, 4), pos, outs=[((4,), "int64")])
    np.testing.assert_array_equal(counts, (pos.reshape(4, 24) >= 0).sum(1))
