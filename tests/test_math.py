"""The paper's math: eqs. 2, 3, 4/7, 5, quantisation, dual-module cells and the artefact."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from dualtvm.artefact import ArtefactError, load_little, save_little
from dualtvm.construct import build_dual
from dualtvm.dual import DualModuleLayer
from dualtvm.little import BigLayer, LittleConfig, big_layers, fit_little
from dualtvm.projection import Projection, little_dim, reduced_dim
from dualtvm.quantize import max_rounding_error, quantize, quantize_activations
from dualtvm.thresholds import INF, GateCalibration, allocate_ratios, sensitive_mask


@pytest.mark.parametrize("eps,k", [(0.5, 417), (0.3, 966), (0.7, 266)])
def test_reduced_dim_matches_paper(eps, k):
    assert reduced_dim(4 * 1500, eps) == k


def test_reduced_dim_rejects_bad_eps():
    with pytest.raises(ValueError, match="epsilon"):
        reduced_dim(100, 1.5)


def test_little_dim_is_the_set_k_else_eq3():
    from dualtvm.registry import model_config

    assert little_dim(6000, 0.5) == 417 and little_dim(6000, 0.3, k=128) == 128
    assert model_config("lstm-1500").little_dim(0.7) == 266 and model_config("lstm-1500").little_dim(0.7, 64) == 64
    assert model_config("gru-750").little_dim(0.5) == reduced_dim(3 * 750)
    with pytest.raises(ValueError, match="k must be at least 1"):
        little_dim(6000, 0.5, k=0)


def test_projection_statistics():
    p = Projection.draw(400, 3000, seed=3)
    vals, counts = np.unique(p.codes, return_counts=True)
    assert set(vals) == {-1, 0, 1}
    frac = counts / p.codes.size
    assert abs(frac[0] - 1 / 6) < 0.005 and abs(frac[1] - 2 / 3) < 0.005 and abs(frac[2] - 1 / 6) < 0.005
    assert np.allclose(np.unique(p.dense()), [-1 / np.sqrt(3), 0, 1 / np.sqrt(3)])
    assert np.array_equal(Projection.draw(400, 3000, seed=3).codes, p.codes)  # reproducible from the seed
    # distances preserved up to the constant factor, within ε = 0.5 (eq. 3's guarantee) for these points
    x = torch.randn(30, 3000)
    px = p.apply(x)
    d_hi = torch.pdist(x) ** 2
    d_lo = torch.pdist(px) ** 2 / p.distance_scale()
    ratio = d_lo / d_hi
    assert ratio.min() > 0.5 and ratio.max() < 1.5 and abs(ratio.mean().item() - 1) < 0.05
    # CSR index lists reproduce P x without multiplications
    pos_ptr, pos_idx, neg_ptr, neg_idx = p.index_lists()
    v = x[0].numpy()
    manual = np.array([v[pos_idx[pos_ptr[i]:pos_ptr[i + 1]]].sum() - v[neg_idx[neg_ptr[i]:neg_ptr[i + 1]]].sum()
                       for i in range(400)]) * p.scale
    assert np.allclose(manual, px[0].numpy(), atol=1e-4)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_learned_projection_finds_the_low_rank_map_a_random_one_misses(rnn_type):
    """Big weights of rank r ≤ k on correlated inputs: the learned projection's little module is exact (up to
    int8 codes), eq. 2's at the same k is not; z has one scale per half (identity covariance before codes)."""
    torch.manual_seed(0)
    dx = dh = H = 32
    k, r = 8, 6
    n = (4 if rnn_type == "LSTM" else 3) * H
    mix_x, mix_h = torch.randn(dx, dx), torch.randn(dh, dh)  # correlated inputs

    def low_rank(d):
        return torch.randn(n, r) @ torch.randn(r, d) * 0.1

    layer = BigLayer(rnn_type, low_rank(dx), low_rank(dh), torch.randn(n) * 0.1, torch.zeros(n))
    samples = [(torch.randn(512, dx) @ mix_x, torch.randn(512, dh) @ mix_h) for _ in range(6)]
    mse = {}
    for kind in ("sparse", "learned"):
        little, _ = fit_little(layer, samples, LittleConfig(k=k, bits=32, projection=kind), samples[:2], progress=False)
        mse[kind] = max(little.fit_mse.values())
        assert little.proj_x.kind == little.proj_h.kind == kind
    assert mse["learned"] < 1e-3 * mse["sparse"], mse
    p = Projection.learned(layer.w_ih, torch.cov(samples[0][0].t()), k)
    assert p.codes.dtype == np.int8 and np.abs(p.codes).max() == 127 and not p.codes[r:].any()  # rows past the rank
    z = samples[0][0] @ torch.from_numpy(p.codes[:r].astype(np.float32)).t()
    spread = z.std(0)
    assert spread.max() < 1.5 * spread.min()  # whitened: every component on one scale (up to the codes' rounding)
    with pytest.raises(ValueError, match="defined for eq. 2's ternary projection"):
        p.distance_scale()
    with pytest.raises(ValueError, match="projection must be one of sparse, learned"):
        LittleConfig(projection="pca")


@pytest.mark.parametrize("method", ["lstsq", "sgd"])
def test_regression_recovers_known_linear_map(method):
    """If the big pre-activations are exactly linear in [P_x x; P_h h], the fit finds that map."""
    torch.manual_seed(0)
    dx, dh, H, k = 24, 16, 16, 12
    px, ph = Projection.draw(k, dx, 0), Projection.draw(k, dh, 1)
    true_w = torch.randn(4 * H, 2 * k) * 0.3
    true_b = torch.randn(4 * H) * 0.1
    # big weights chosen so that W x = W_LL P x exactly
    w_ih = true_w[:, :k] @ torch.from_numpy(px.dense())
    w_hh = true_w[:, k:] @ torch.from_numpy(ph.dense())
    layer = BigLayer("LSTM", w_ih, w_hh, true_b, torch.zeros(4 * H))
    samples = [(torch.randn(256, dx), torch.randn(256, dh)) for _ in range(8)]
    cfg = LittleConfig(k=k, bits=32, seed=0, method=method, sgd_epochs=30, sgd_lr=0.02, sgd_batch=64)
    little, w = fit_little(layer, samples, cfg, samples[:2], progress=False)
    tol = 1e-3 if method == "lstsq" else 3e-2
    assert torch.allclose(w, true_w, atol=tol), (w - true_w).abs().max()
    assert torch.allclose(little.bias, true_b, atol=tol)
    assert max(little.fit_mse.values()) < tol


@pytest.mark.parametrize("bits", [16, 8, 4])
@pytest.mark.parametrize("per_row", [True, False])
def test_quantisation_error_bound(bits, per_row):
    w = torch.randn(64, 48) * torch.linspace(0.01, 3, 64)[:, None]
    q = quantize(w, bits, per_row)
    err = (q.dequantize() - w).abs()
    inside = w.abs() <= q.scale * (2 ** (bits - 1) - 1)  # all of w at 8 bits and more; at 4, scales are searched
    assert (err <= max_rounding_error(q) + 1e-6)[inside].all() and (inside.all() or bits <= 4)
    assert q.codes.abs().max() <= 2 ** (bits - 1) - 1
    assert q.nbytes() == 64 * 48 * bits // 8 + q.scale.numel() * 4


@pytest.mark.parametrize("per_row", [True, False])
def test_int4_scale_is_no_worse_than_max_abs(per_row):
    """At 4 bits the scale is searched among fractions of max|w| / 7 (max-abs itself included): never a larger squared
    error than max-abs, and smaller on heavy-tailed rows, where a few large weights set max-abs's step."""
    w = torch.randn(64, 256) ** 3 * torch.linspace(0.5, 2, 64)[:, None]  # heavy tails
    q4 = quantize(w, 4, per_row)
    max_abs = (w.abs().amax(dim=1, keepdim=True) if per_row else w.abs().amax()) / 7
    naive = torch.clamp(torch.round(w / max_abs), -7, 7) * max_abs
    mse = lambda d: (d - w).pow(2).mean()  # noqa: E731
    assert mse(q4.dequantize()) < 0.9 * mse(naive) and q4.codes.abs().max() <= 7


def test_int4_columns_equalised_onto_the_projection(tmp_path):
    """At 4 bits W_LL's column norms move into the projections' row scales (quantize.equalising_scale): the fp32
    product is unchanged, the INT4 little module's error falls where columns differ in size (a learned projection's
    whitened z), INT8 is left as it was, and a requantisation and the artefact carry the scales."""
    from dualtvm.artefact import load_little, save_little
    from dualtvm.little import LittleModule, equalised, little_mse

    torch.manual_seed(0)
    dx, dh, H, k = 48, 16, 16, 16
    px, ph = Projection.draw(k, dx, 0), Projection.draw(k, dh, 1)
    true_w = torch.randn(4 * H, 2 * k) * torch.logspace(0, -1.5, 2 * k)  # columns falling ~30×, as on LSTM-1500
    layer = BigLayer("LSTM", true_w[:, :k] @ torch.from_numpy(px.dense()), true_w[:, k:] @ torch.from_numpy(ph.dense()),
                     torch.zeros(4 * H), torch.zeros(4 * H))
    a, b = torch.randn(5, dx), torch.randn(5, dh)
    ea, eb, ew = equalised(px, ph, true_w, 4)
    with pytest.raises(ValueError, match="rows of one scale"):
        ea.distance_scale()  # eq. 2's distance guarantee is for unscaled rows
    torch.testing.assert_close(torch.cat([ea.apply(a), eb.apply(b)], -1) @ ew.t(),
                               torch.cat([px.apply(a), ph.apply(b)], -1) @ true_w.t(), rtol=1e-5, atol=1e-5)
    assert all(got is given for got, given in zip(equalised(px, ph, true_w, 8), (px, ph, true_w)))  # INT8: as it was
    samples = [(torch.randn(256, dx), torch.randn(256, dh)) for _ in range(4)]
    little, w = fit_little(layer, samples, LittleConfig(k=k, bits=4, seed=0), progress=False)
    assert max(little.proj_x.row_scale.max(), little.proj_h.row_scale.max()) == 1.0
    plain = LittleModule(**{**little.__dict__, "proj_x": px, "proj_h": ph, "weight": quantize(w, 4)})
    mse = lambda m: sum(little_mse(m, layer, samples[:2]).values())  # noqa: E731
    assert mse(little) < 0.9 * mse(plain)  # 0.80 here; 0.45 on LSTM-1500's learned k = 128 module
    int8 = little.requantize(8)
    assert int8.proj_x.row_scale is None and int8.proj_h.row_scale is None
    back = int8.requantize(4, fp32_weight=w)
    np.testing.assert_allclose(back.proj_h.row_scale, little.proj_h.row_scale, rtol=1e-5)
    assert mse(back) < 0.9 * mse(plain)
    loaded = load_little(save_little(tmp_path / "little.npz", [little]))[0][0]
    np.testing.assert_array_equal(loaded.proj_x.row_scale, little.proj_x.row_scale)
    assert loaded.content_hash() == little.content_hash() != plain.content_hash()


@pytest.mark.parametrize("per_row", [True, False])
def test_int2_scale_is_clipped_to_the_least_error(per_row):
    """At 2 bits ({-1, 0, 1}·scale) the max-abs scale rounds most Gaussian weights to 0; the searched scale
    must beat it, and beat INT1 (sign × mean|w|), as the paper's Table 6 MSE ranks them."""
    w = torch.randn(64, 256) * torch.linspace(0.5, 2, 64)[:, None]
    q2 = quantize(w, 2, per_row)
    max_abs = (w.abs().amax(dim=1, keepdim=True) if per_row else w.abs().amax())
    naive = torch.clamp(torch.round(w / max_abs), -1, 1) * max_abs
    mse = lambda d: (d - w).pow(2).mean()  # noqa: E731
    assert mse(q2.dequantize()) < 0.7 * mse(naive)
    assert mse(q2.dequantize()) < mse(quantize(w, 1, per_row).dequantize())
    assert q2.codes.abs().max() <= 1 and q2.nbytes() == 64 * 256 * 2 // 8 + q2.scale.numel() * 4


def test_per_row_beats_per_tensor_on_uneven_rows():
    w = torch.randn(64, 48) * torch.logspace(-2, 0.5, 64)[:, None]
    e_row = (quantize(w, 4, True).dequantize() - w).pow(2).mean()
    e_tensor = (quantize(w, 4, False).dequantize() - w).pow(2).mean()
    assert e_row < e_tensor


def test_int1_and_fp32_and_activations():
    w = torch.randn(8, 8)
    assert torch.equal(quantize(w, 32).dequantize(), w)
    q1 = quantize(w, 1)
    assert torch.equal(q1.dequantize().sign(), torch.where(w >= 0, 1.0, -1.0))
    x = torch.randn(3, 100)
    qa = quantize_activations(x, 8)
    assert qa.codes.dtype == torch.int8 and qa.scale.shape == (3, 1)
    assert ((qa.dequantize() - x).abs() <= qa.scale / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize(w, 3)


def test_mask_semantics_eq5_by_hand():
    a_sig = torch.tensor([0.05, 0.2, 0.31, 0.9])
    assert sensitive_mask(a_sig, 0.3, INF).tolist() == [False, False, True, True]  # sigmoid: y > θ
    a_tanh = torch.tensor([-0.99, -0.5, 0.0, 0.5, 0.97])
    assert sensitive_mask(a_tanh, -0.9, 0.9).tolist() == [False, True, True, True, False]  # θ⁻ < y < θ⁺
    assert sensitive_mask(a_tanh, -0.4, 0.9).tolist() == [False, False, True, True, False]  # asymmetric allowed
    assert sensitive_mask(a_tanh, -INF, INF).all()  # ratio 0


def test_calibration_hits_ratio_on_held_out_data():
    gen = torch.Generator().manual_seed(0)
    calib, held_out = torch.randn(50_000, generator=gen) * 3, torch.randn(50_000, generator=gen) * 3
    for act, fn in (("sigmoid", torch.sigmoid), ("tanh", torch.tanh)):
        cal = GateCalibration.fit(fn(calib), act)
        for r in (0.1, 0.3, 0.5, 0.7, 0.9):
            lo, hi = cal.band(r)
            measured = 1 - sensitive_mask(fn(held_out), lo, hi).float().mean().item()
            assert abs(measured - r) < 0.02, (act, r, measured)
        assert cal.band(0.0) == (-INF, INF)
        with pytest.raises(ValueError, match=r"insensitive ratio must lie in \[0, 1\]"):
            cal.band(1.2)


def test_sigmoid_both_tails_band():
    """tails="both": the rows nearest σ's midpoint stay sensitive, both saturated ends go to the little module;
    the band hits the ratio on held-out data, and is the bound test the compiled mask already runs."""
    gen = torch.Generator().manual_seed(1)
    calib, held_out = torch.sigmoid(torch.randn(50_000, generator=gen) * 3), torch.sigmoid(torch.randn(50_000, generator=gen) * 3)
    cal = GateCalibration.fit(calib, "sigmoid", tails="both")
    lo, hi = cal.band(0.5)
    assert 0 < lo < 0.5 < hi < 1 and abs((lo + hi) / 2 - 0.5) < 1e-9
    a = torch.tensor([0.01, lo - 1e-3, 0.5, hi + 1e-3, 0.999])
    assert sensitive_mask(a, lo, hi).tolist() == [False, False, True, False, False]
    for r in (0.1, 0.5, 0.9):
        lo, hi = cal.band(r)
        assert abs(1 - sensitive_mask(held_out, lo, hi).float().mean().item() - r) < 0.02
    assert cal.band(0.0) == (-INF, INF) and not sensitive_mask(held_out, *cal.band(1.0)).any()
    low = GateCalibration.fit(calib, "sigmoid")  # eq. 5: only the low end
    assert low.band(0.5)[1] == INF and sensitive_mask(torch.tensor([0.999]), *low.band(0.5)).all()
    with pytest.raises(ValueError, match="sigmoid tails must be one of"):
        GateCalibration.fit(calib, "sigmoid", tails="high")


def test_contribution_scores_by_hand():
    """φ'(y_LL) times the gate output's multiplier in the new state (dualtvm.contribution)."""
    from dualtvm.contribution import contribution_scores

    H = 3
    h = torch.tensor([[0.5, -0.2, 0.0]])
    c = torch.tensor([[2.0, 0.0, -1.0]])
    i, f, g, o = contribution_scores("LSTM", torch.zeros(1, 4 * H), h, c)  # i = f = o = ½, g = 0
    assert torch.equal(i, torch.zeros(1, H))  # g = 0: an error in i does not reach c
    assert torch.allclose(f, 0.25 * c.abs()) and torch.allclose(g, torch.full((1, H), 0.5))
    assert torch.allclose(o, 0.25 * torch.tanh(0.5 * c).abs())  # ĉ = f·c + i·g = c / 2
    pre = torch.zeros(1, 4 * H)
    pre[0, H : 2 * H] = torch.tensor([20.0, 0.0, -20.0])  # z ≈ 1, ½, ≈ 0
    pre[0, 3 * H :] = 2.0  # u_h
    r, z, n = contribution_scores("GRU", pre, h)  # r = ½, n = tanh(0 + ½·2)
    t = torch.tanh(torch.tensor(1.0))
    assert n[0, 0] < 1e-8 and r[0, 0] < 1e-8  # z ≈ 1 keeps h: the candidate does not matter
    assert torch.allclose(n[0, 1:], (1 - t * t) * torch.tensor([0.5, 1.0]), atol=1e-6)
    assert torch.allclose(r[0, 2], 0.25 * (1 - t * t) * 2.0, atol=1e-6)
    assert torch.allclose(z[0, 1], 0.25 * (h[0, 1] - t).abs()) and z[0, 0] < 1e-8
    with pytest.raises(ValueError, match="previous cell state"):
        contribution_scores("LSTM", torch.zeros(1, 4 * H), h)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_contribution_rule_masks_and_ratios(rnn_type):
    """rule="contribution": the band (θ, +∞) on the score hits the ratio on held-out steps, the layer's masks are
    exactly score > θ, and an LSTM cannot be calibrated without its cell states."""
    from dualtvm.construct import calibrate, record
    from dualtvm.contribution import contribution_scores
    from dualtvm.little import single_layers

    rnn, dual = _tiny_dual(rnn_type, layers=1)
    layer, little = dual.layers[0].big, dual.layers[0].little
    module = single_layers(rnn)[0]
    xs = [torch.randn(16, 4, 12, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    samples = record([module], lambda: [module(x) for x in xs], None, cells=True)[0]
    assert all(len(s) == (3 if rnn_type == "LSTM" else 2) for s in samples)
    if rnn_type == "LSTM":
        with pytest.raises(ValueError, match=r"\(x, h, c\) samples"):
            calibrate(little, layer, [s[:2] for s in samples], mask_rule="contribution")
    calibrate(little, layer, samples, mask_rule="contribution")
    assert little.mask_rule == "contribution"
    lo, hi = little.calibration[layer.layout.gates[0]].band(0.4)
    assert hi == INF and lo > 0
    x = torch.randn(40, 4, 12)
    dual.set_insensitive_ratio(0.5)
    dual.reset_stats()
    dual(x)
    assert abs(dual.measured_ratio() - 0.5) < 0.1
    state = (torch.randn(4, 24), torch.randn(4, 24)) if rnn_type == "LSTM" else torch.randn(4, 24)
    h = state[0] if rnn_type == "LSTM" else state
    _, _, mask = dual.layers[0].step(x[0], state, record=False)
    scores = contribution_scores(rnn_type, little.preactivations(x[0], h), h, state[1] if rnn_type == "LSTM" else None)
    expect = torch.cat([s > little.calibration[g].band(0.5)[0] for g, s in zip(layer.layout.gates, scores)], -1)
    assert torch.equal(mask, expect)
    with pytest.raises(ValueError, match="mask rule must be one of"):
        GateCalibration.fit(torch.rand(100), "sigmoid", rule="score")


def test_recorded_cells_are_the_lstm_cell_states():
    """SampleRecorder(cells=True) recomputes c(t−1), which nn.LSTM keeps to itself, exactly."""
    from dualtvm.construct import record

    torch.manual_seed(3)
    lstm = nn.LSTM(5, 7)
    x = torch.randn(6, 2, 5)
    h0, c0 = torch.randn(1, 2, 7), torch.randn(1, 2, 7)
    (x_rec, h_rec, c_rec), = record([lstm], lambda: lstm(x, (h0, c0)), None, cells=True)[0]
    state, cells = (h0, c0), []
    for t in range(6):
        cells.append(state[1][0])
        _, state = lstm(x[t : t + 1], state)
    assert torch.allclose(c_rec, torch.cat(cells), atol=1e-6) and h_rec.shape == (12, 7)


def test_allocation_prefers_cheap_gates():
    grid = np.linspace(0, 1, 11)
    curves = {"a": grid ** 2 * 10, "b": grid ** 2}  # b is ten times less sensitive
    alloc = allocate_ratios(curves, {"a": 100, "b": 100}, 0.5, grid)
    assert alloc["b"] > alloc["a"]
    assert abs((alloc["a"] + alloc["b"]) / 2 - 0.5) < 1e-6


def _tiny_dual(rnn_type, layers=2, seed=0, projection="sparse"):
    torch.manual_seed(seed)
    rnn = getattr(nn, rnn_type)(12, 24, layers)
    xs = [torch.randn(16, 4, 12) for _ in range(10)]

    def run(core, data):
        for x in data:
            core(x)

    return rnn, build_dual(rnn, lambda c: run(c, xs[:8]), lambda c: run(c, xs[8:]),
                           LittleConfig(eps=0.5, k=16, projection=projection), progress=False)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_ratio_zero_equals_big_model(rnn_type):
    rnn, dual = _tiny_dual(rnn_type)
    x = torch.randn(9, 3, 12)
    ref, ref_state = rnn(x)
    out, state = dual(x)
    assert torch.allclose(ref, out, atol=1e-5)
    for a, b in zip(ref_state if rnn_type == "LSTM" else [ref_state], state if rnn_type == "LSTM" else [state]):
        assert torch.allclose(a, b, atol=1e-5)
    assert dual.measured_ratio() == 0.0


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_batch_first_and_unbatched_rnns_are_served_like_nn_rnn(rnn_type):
    """A user's batch_first RNN: fitted on batch-first segments, called like it — batched, unbatched, with a state."""
    torch.manual_seed(0)
    rnn = getattr(nn, rnn_type)(12, 24, 2, batch_first=True)
    xs = [torch.randn(4, 16, 12) for _ in range(10)]  # (B, T, d)
    seen = []

    def run(core, data):
        for x in data:
            out, _ = core(x)
            seen.append(out.shape)

    dual = build_dual(rnn, lambda c: run(c, xs[:8]), lambda c: run(c, xs[8:]), LittleConfig(k=16), progress=False)
    assert seen and all(s == (4, 16, 24) for s in seen)  # the stand-in answered batch-first
    x = torch.randn(3, 9, 12)
    state0 = tuple(torch.randn(2, 3, 24) for _ in range(2 if rnn_type == "LSTM" else 1))
    first = tuple(s[:, 0] for s in state0)  # the unbatched state of sequence 0
    for args in ((x,), (x, state0), (x[0],), (x[0], first)):
        if len(args) == 2 and rnn_type == "GRU":
            args = (args[0], args[1][0])
        ref, ref_state = rnn(*args)
        out, state = dual(*args)
        assert out.shape == ref.shape and torch.allclose(ref, out, atol=1e-5)
        pairs = zip(ref_state, state) if rnn_type == "LSTM" else [(ref_state, state)]
        for a, b in pairs:
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    dual.set_insensitive_ratio(0.5)
    dual.reset_stats()
    dual(x)
    assert abs(dual.measured_ratio() - 0.5) < 0.15
    with pytest.raises(ValueError, match=r"expected input of 3 dims \(B, T, features\)"):
        dual(torch.randn(12))


@pytest.mark.parametrize("kwargs, needle", [({"bidirectional": True}, "bidirectional RNNs are not supported"),
                                            ({"proj_size": 8}, "proj_size=8 are not supported")])
def test_unsupported_rnns_are_refused_by_name(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        big_layers(nn.LSTM(12, 24, **kwargs))


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_dual_module_ratios_and_error(rnn_type):
    rnn, dual = _tiny_dual(rnn_type)
    x = torch.randn(30, 4, 12)
    ref, _ = rnn(x)
    errs = []
    for r in (0.3, 0.6, 0.9):
        dual.set_insensitive_ratio(r)
        dual.reset_stats()
        out, _ = dual(x)
        assert abs(dual.measured_ratio() - r) < 0.1
        errs.append((out - ref).abs().mean().item())
    assert errs[0] < errs[-1]  # more little outputs, more error
    assert dual.layers[0].big_bytes_read_fraction() == pytest.approx(1 - dual.layers[0].stats.ratio())
    with pytest.raises(ValueError, match=r"insensitive ratio must lie in \[0, 1\]"):
        dual.set_insensitive_ratio(-0.1)


def test_variant_names_are_distinct_and_the_papers_is_bare():
    from dualtvm.little import variant_suffix
    variants = [(b, rule, codes, proj) for b in (8, 4, 2) for rule in ("activation", "contribution")
                for codes in (None, False) for proj in ("sparse", "learned")]
    names = {variant_suffix(*v) for v in variants}
    assert len(names) == len(variants) and variant_suffix() == ""  # no two variants share a build folder
    assert variant_suffix(4, "contribution") == "-w4-contribution" == LittleConfig(bits=4, mask_rule="contribution").variant
    assert LittleConfig(projection="learned", mask_rule="contribution").variant == "-contribution-learned"


def test_k_set_directly_overrides_eps_and_names_itself():
    from dualtvm.little import size_suffix
    torch.manual_seed(0)
    layer = BigLayer("GRU", torch.randn(12, 5), torch.randn(12, 4), torch.randn(12), torch.randn(12))
    samples = [(torch.randn(40, 5), torch.randn(40, 4))]
    little, _ = fit_little(layer, samples, LittleConfig(eps=0.3, k=3), progress=False)
    assert little.k == 3 == little.proj_h.shape[0]  # not eq. 3's k at ε = 0.3
    assert (size_suffix(), size_suffix(0.9), size_suffix(0.9, 128), size_suffix(k=64)) == ("", "-eps0.9", "-k128", "-k64")
    with pytest.raises(ValueError, match="k must be a positive number of projected dims, got 0"):
        LittleConfig(k=0)


@pytest.mark.parametrize("projection", ["sparse", "learned"])
def test_artefact_round_trip_and_hash_check(tmp_path, projection):
    rnn, dual = _tiny_dual("LSTM", projection=projection)
    littles = [l.little for l in dual.layers]
    path = save_little(tmp_path / "little.npz", littles, {"model": "tiny"})
    loaded, cfg = load_little(path, big_layers(rnn))
    assert cfg == {"model": "tiny"}
    for a, b in zip(littles, loaded):
        assert torch.equal(a.weight.codes, b.weight.codes) and np.array_equal(a.proj_x.codes, b.proj_x.codes)
        assert b.proj_x.kind == b.proj_h.kind == projection
        assert a.calibration["g"].band(0.5) == b.calibration["g"].band(0.5)
    x, h = torch.randn(2, 12), torch.randn(2, 24)
    assert torch.allclose(littles[0].preactivations(x, h), loaded[0].preactivations(x, h))
    other = nn.LSTM(12, 24, 2)
    with pytest.raises(ArtefactError, match="was fitted to big weights .* refit"):
        load_little(path, big_layers(other))
    with pytest.raises(ValueError, match="hash mismatch"):
        DualModuleLayer(big_layers(other)[0], loaded[0])
    (tmp_path / "junk.npz").write_bytes(b"nope")
    with pytest.raises(ArtefactError, match="not a dualtvm little-module artefact"):
        load_little(tmp_path / "junk.npz")


def test_artefact_keeps_the_mask_rule_and_reads_older_versions(tmp_path):
    """Both-tails and contribution calibrations survive the file; a version-1 file (before "tails") reads as eq. 5's
    rule, a version-2 file (before "rule") as masks on a_LL, files before row scales without them; an unknown version
    is refused."""
    import json

    from dualtvm.construct import calibrate

    rnn, dual = _tiny_dual("GRU", layers=1)
    little, layer = dual.layers[0].little, dual.layers[0].big
    samples = [(torch.randn(8, 12), torch.randn(8, 24)) for _ in range(4)]
    calibrate(little, layer, samples, mask_rule="contribution")
    loaded = load_little(save_little(tmp_path / "contribution.npz", [little]))[0][0]
    assert loaded.mask_rule == "contribution" and loaded.calibration["n"].band(0.3) == little.calibration["n"].band(0.3)
    calibrate(little, layer, samples, sigmoid_tails="both")
    path = save_little(tmp_path / "little.npz", [little])
    loaded = load_little(path)[0][0]
    assert {g: c.tails for g, c in loaded.calibration.items()} == {"r": "both", "z": "both", "n": "low"}
    assert loaded.mask_rule == "activation" and loaded.calibration["z"].band(0.4) == little.calibration["z"].band(0.4)
    z = dict(np.load(path))
    for version, ok in ((1, True), (2, True), (3, True), (6, False)):
        meta = json.loads(bytes(z["meta"]).decode())
        meta["version"] = version
        meta["layers"][0].pop("projection")  # versions 1–3: eq. 2's projection
        for c in meta["layers"][0]["calibration"].values():
            if version < 3:
                c.pop("rule")
            if version == 1:
                c.pop("tails")
        arrays = {k: v for k, v in z.items() if not k.endswith("_row_scale")}  # versions 1–4: no row scales
        np.savez(tmp_path / f"v{version}.npz", **{**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
        if ok:
            old = load_little(tmp_path / f"v{version}.npz")[0][0]
            assert old.mask_rule == "activation" and old.proj_x.kind == old.proj_h.kind == "sparse"
            assert old.calibration["z"].tails == ("low" if version == 1 else "both")
        else:
            with pytest.raises(ArtefactError, match="artefact version 6"):
                load_little(tmp_path / f"v{version}.npz")


def test_table1_errors_hurt_less_in_the_insensitive_half():
    """Zero error reproduces nn.LSTM; equal errors in the insensitive half leave activations closer (Table 1)."""
    from dualtvm.resilience import NoisyLSTMLayer

    torch.manual_seed(0)
    rnn = nn.LSTM(32, 64)
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(4)  # saturating gates, as trained ones are
    x = torch.randn(20, 3, 32)
    (big,) = big_layers(rnn)
    out, (h, c) = NoisyLSTMLayer(big, "sensitive", relative_std=0.0)(x)
    ref, (rh, rc) = rnn(x)
    torch.testing.assert_close(out, ref.detach(), atol=1e-5, rtol=1e-5)
    after = {}
    for region in ("sensitive", "insensitive"):
        layer = NoisyLSTMLayer(big, region, relative_std=0.45, seed=1)
        layer(x)
        cos = layer.stats.means()
        assert all(0.8 < v < 1.0 for v in cos["before"].values())
        after[region] = cos["after"]
    assert all(after["insensitive"][g] > after["sensitive"][g] for g in "ifgo"), after
    with pytest.raises(ValueError, match="region must be one of"):
        NoisyLSTMLayer(big, "middle")


def test_recording_is_capped_to_the_memory_budget(monkeypatch):
    """The rows recorded for the fit shrink so that all layers' fp32 (x, h) rows fit the budget."""
    import dualtvm.construct as construct

    asked = []
    real_record = construct.record
    monkeypatch.setattr(construct, "record",
                        lambda mods, run, max_rows, cells=False: asked.append(max_rows)
                        or real_record(mods, run, max_rows, cells))
    rnn = nn.LSTM(12, 24, 2)
    xs = [torch.randn(16, 4, 12) for _ in range(10)]

    def run(core, data):
        for x in data:
            core(x)

    row_bytes = 4 * (12 + 24 + 24 + 24)  # layer 0: x 12 + h 24; layer 1: x 24 + h 24
    construct.build_dual(rnn, lambda c: run(c, xs[:8]), lambda c: run(c, xs[8:]), LittleConfig(k=16),
                         max_rows=10_000, progress=False)
    assert asked[0] == 10_000
    asked.clear()
    layers, stacked = construct.as_single_layers(rnn)
    construct.build_dual_layers(layers, list(stacked.layers), lambda: run(stacked, xs[:8]),
                                lambda: run(stacked, xs[8:]),
                                LittleConfig(k=16), max_rows=10_000, progress=False, record_budget_bytes=40 * row_bytes)
    assert asked == [40, 10]  # train, then valid (a quarter)
