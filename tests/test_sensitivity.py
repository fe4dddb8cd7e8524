"""Loss-aware allocation: the gradient probe runs the big layer exactly and its ∂L/∂a are the loss's."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from dualtvm.construct import as_single_layers
from dualtvm.dual import DualModuleLayer, StackedRNN, error_curves
from dualtvm.little import LittleConfig, big_layers, fit_little
from dualtvm.construct import calibrate
from dualtvm.sensitivity import GateGradientProbe, allocate, allocate_curves, measured_curves


def _rnn(kind: str, d: int = 5, hidden: int = 6, layers: int = 1):
    torch.manual_seed(3)
    return getattr(nn, kind)(d, hidden, layers)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_probe_runs_the_big_layer(kind):
    rnn = _rnn(kind, layers=2)
    x = torch.randn(7, 3, 5)
    probes = StackedRNN([GateGradientProbe(l) for l in big_layers(rnn)], lstm=kind == "LSTM")
    with torch.no_grad():
        want, want_state = rnn(x)
    got, got_state = probes(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_state if kind == "LSTM" else (got_state,), want_state if kind == "LSTM" else (want_state,)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _reference_loss(layer, x, w, bump=None):
    """Σ w · h(t) over all steps of a plain LSTM or GRU loop (float64); ``bump`` = (t, gate index, row, amount)
    added to one gate activation of batch row 0: the finite-difference side of the gradient check."""
    H = layer.hidden
    h = torch.zeros(x.shape[1], H, dtype=torch.float64)
    c = torch.zeros_like(h)
    w_ih, w_hh, b_ih, b_hh = (t.double() for t in (layer.w_ih, layer.w_hh, layer.b_ih, layer.b_hh))
    loss = 0.0

    def bumped(acts, t):
        if bump is not None and bump[0] == t and acts[bump[1]] is not None:
            acts[bump[1]] = acts[bump[1]].clone()
            acts[bump[1]][0, bump[2]] += bump[3]
        return acts

    for t in range(x.shape[0]):
        gi, gh = x[t] @ w_ih.t() + b_ih, h @ w_hh.t() + b_hh
        if layer.rnn_type == "LSTM":
            pre = gi + gh
            i, f, g, o = bumped([torch.sigmoid(pre[:, :H]), torch.sigmoid(pre[:, H:2 * H]),
                                 torch.tanh(pre[:, 2 * H:3 * H]), torch.sigmoid(pre[:, 3 * H:])], t)
            c = f * c + i * g
            h = o * torch.tanh(c)
        else:  # r and z first; n (gate 2) is bumped after it is computed from the bumped r
            r, z = bumped([torch.sigmoid(gi[:, :H] + gh[:, :H]), torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H]), None], t)[:2]
            n = bumped([None, None, torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])], t)[2]
            h = (1 - z) * n + z * h
        loss = loss + (w[t] * h).sum()
    return loss


@pytest.mark.parametrize("kind, points", [
    ("LSTM", [(0, 1, "f", 2), (2, 0, "i", 0), (3, 2, "g", 5), (5, 3, "o", 1)]),
    ("GRU", [(0, 0, "r", 3), (2, 1, "z", 0), (4, 2, "n", 5), (1, 0, "r", 1)])])
def test_probe_gradients_match_finite_differences(kind, points):
    layer = big_layers(_rnn(kind))[0]
    x = torch.randn(6, 2, 5)
    w = torch.randn(6, 2, layer.hidden)
    probe = GateGradientProbe(layer)
    out, _ = probe(x)
    (w * out).sum().backward()
    probe.collect()
    (xs, hs, *cs), = probe.samples
    grads = probe.gradients[0]
    assert xs.shape == (12, 5) and hs.shape == (12, layer.hidden) and grads[points[0][2]].shape == (12, layer.hidden)
    assert len(cs) == (kind == "LSTM")  # c(t−1) rides along for an LSTM: its contribution masks need it
    eps = 1e-6
    for t, gi, g, row in points:
        fd = (_reference_loss(layer, x.double(), w.double(), (t, gi, row, eps))
              - _reference_loss(layer, x.double(), w.double(), (t, gi, row, -eps))) / (2 * eps)
        assert float(grads[g][t * 2, row]) == pytest.approx(float(fd), rel=1e-3, abs=1e-5), (t, g)


def test_probe_records_the_lstm_cell_state():
    """loss_gradients' LSTM samples are (x, h(t−1), c(t−1)), the cells SampleRecorder(cells=True) records: an
    LSTM with contribution masks can be allocated on them with loss gradients."""
    from dualtvm.little import previous_cells

    rnn = _rnn("LSTM")
    x, state = torch.randn(6, 2, 5), (torch.randn(1, 2, 6), torch.randn(1, 2, 6))
    probe = GateGradientProbe(big_layers(rnn)[0])
    out, _ = probe(x, state)
    out.sum().backward()
    probe.collect()
    (xs, hs, cs), = probe.samples
    with torch.no_grad():
        h_seq, _ = rnn(x, state)
    h_prev = torch.cat([state[0], h_seq[:-1]])
    torch.testing.assert_close(cs, previous_cells(rnn, x, h_prev, state[1][0]).reshape(12, 6), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cs[:2], state[1][0])  # step 0 holds the given c0


def test_loss_aware_allocation_of_lstm_contribution_masks():
    """The contribution rule's LSTM masks read c(t−1): with the probe's samples the loss-aware allocation runs
    (it used to fail late for want of the cell state) and hits the asked overall ratio."""
    from dualtvm.construct import record
    from dualtvm.sensitivity import frozen, loss_gradients

    rnn = _rnn("LSTM", hidden=8)
    layers = big_layers(rnn)
    torch.manual_seed(0)
    xs = torch.randn(10, 4, 5)
    samples = record([rnn], lambda: rnn(xs), None, cells=True)[0]
    little, _ = fit_little(layers[0], samples, LittleConfig(k=4), progress=False)
    calibrate(little, layers[0], samples, mask_rule="contribution")

    def run_loss(core):
        for seg in xs.split(5):
            out, _ = core(seg)
            yield (out ** 2).sum()

    with frozen(rnn):
        grad_samples, grads = loss_gradients(layers, run_loss)
    assert all(len(s) == 3 for s in grad_samples[0])
    alloc, = allocate([DualModuleLayer(layers[0], little)], 0.5, grad_samples, grads)
    assert np.mean(list(alloc.values())) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="cell state"):  # (x, h) samples of a user's own: still refused
        allocate([DualModuleLayer(layers[0], little)], 0.5, [[s[:2] for s in grad_samples[0]]], grads)


def test_collect_before_backward_is_an_error():
    probe = GateGradientProbe(big_layers(_rnn("GRU"))[0])
    probe(torch.randn(3, 2, 5))
    with pytest.raises(RuntimeError, match="backward"):
        probe.collect()


def test_loss_weighted_curves():
    rnn = _rnn("LSTM", hidden=8)
    layers, stacked = as_single_layers(rnn)
    torch.manual_seed(0)
    samples = [(torch.randn(40, 5), torch.randn(40, 8).tanh()) for _ in range(3)]
    little, _ = fit_little(layers[0], samples, LittleConfig(k=4), progress=False)
    calibrate(little, layers[0], samples)
    grid = np.linspace(0, 0.9, 10)
    plain = error_curves(layers[0], little, samples, grid)
    ones = [{g: torch.ones(40, 8) for g in "ifgo"} for _ in samples]
    torch.testing.assert_close(error_curves(layers[0], little, samples, grid, ones)["g"], plain["g"])
    only_f = [{g: torch.full((40, 8), 2.0 if g == "f" else 0.0) for g in "ifgo"} for _ in samples]
    weighted = error_curves(layers[0], little, samples, grid, only_f)
    np.testing.assert_allclose(weighted["f"], 4 * plain["f"])
    assert not weighted["i"].any() and weighted["f"][-1] > 0
    with pytest.raises(ValueError, match="gradient entries"):
        error_curves(layers[0], little, samples, grid, ones[:1])
    # the allocation spends the ratio where the loss does not care: all on f before any other gate
    dual = DualModuleLayer(layers[0], little)
    zero_f = [{g: torch.full((40, 8), 0.0 if g == "f" else 1.0) for g in "ifgo"} for _ in samples]
    alloc, = allocate([dual], 0.2, [samples], [zero_f], grid)
    assert alloc["f"] == pytest.approx(0.8) and sum(alloc.values()) == pytest.approx(0.8)
    assert allocate([dual], 0.2, [samples], None, grid)[0] != alloc  # activation error alone spreads it otherwise


def test_lm_loss_gradients_follow_the_validation_stream(tiny_corpus):
    from dualtvm.data import batchify, load_lm_corpus
    from dualtvm.models import LMConfig, RNNLanguageModel
    from dualtvm.quality import lm_losses
    from dualtvm.sensitivity import loss_gradients

    corpus = load_lm_corpus(str(tiny_corpus))
    torch.manual_seed(0)
    model = RNNLanguageModel(LMConfig("GRU", len(corpus.dictionary), 12, 2, 0.0, True))
    data = batchify(corpus.valid, 2)
    layers, _ = as_single_layers(model.rnn)
    samples, grads = loss_gradients(layers, lm_losses(model, data, 5, max_batches=3))
    assert len(samples) == len(grads) == 2 and len(samples[0]) == len(grads[0]) == 3
    assert samples[0][0][0].shape == (10, 12) and grads[1][2]["n"].shape == (10, 12)
    assert all(float(d[g].abs().sum()) > 0 for layer in grads for d in layer for g in "rzn")
    assert all(p.requires_grad for p in model.parameters())  # frozen only while probing
    # the first layer's recorded inputs are the embeddings of the stream, in order
    torch.testing.assert_close(samples[0][0][0], model.encoder(data[:5]).reshape(10, 12).detach())


def test_measured_curves_evaluate_one_gate_at_a_time():
    rnn = _rnn("GRU", hidden=8, layers=2)
    layers, _ = as_single_layers(rnn)
    duals = [SimpleNamespace(big=l) for l in layers]  # only the big layers' gates are read
    weight = {(0, "r"): 0.0, (0, "z"): 1.0, (0, "n"): 4.0, (1, "r"): 0.5, (1, "z"): 2.0, (1, "n"): 8.0}
    calls = []

    def loss_at(ratios):  # a known loss: Σ weight · ratio², plus a dip of gate (1, r) at 0.4 (not monotone)
        calls.append(ratios)
        dip = -0.5 if ratios[1]["r"] == 0.4 else 0.0
        return 3.0 + dip + sum(weight[(l, g)] * r ** 2 for l, layer in enumerate(ratios) for g, r in layer.items())

    grid = np.array([0.0, 0.2, 0.4, 0.6, 0.8])
    curves = measured_curves(duals, loss_at, grid, progress=False)
    assert len(calls) == 1 + 6 * 4  # the base, then one evaluation per gate and ratio
    assert all(sum(r > 0 for layer in c for r in layer.values()) == 1 for c in calls[1:])  # one gate at a time
    np.testing.assert_allclose(curves[(0, "n")], 4.0 * grid ** 2)
    np.testing.assert_allclose(curves[(1, "r")], [0, 0.02, 0.02, 0.18, 0.32])  # the dip clamped: non-decreasing
    assert not curves[(0, "r")].any()
    alloc = allocate_curves(duals, curves, grid, 0.3)  # the free gate first, the costly n's last
    assert alloc[0]["r"] == pytest.approx(0.8) and alloc[1]["n"] == 0.0 and alloc[0]["n"] <= alloc[0]["z"]
    assert np.mean([r for layer in alloc for r in layer.values()]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="start at ratio 0"):
        measured_curves(duals, loss_at, np.array([0.1, 0.5]), progress=False)
