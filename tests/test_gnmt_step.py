"""The whole GNMT decode step compiled (dualtvm.gnmt_step): the same logits, states and translations as PyTorch."""
from __future__ import annotations

import json

import pytest
import torch

from dualtvm.dual import measured_layer_ratio, reset_layer_stats, set_layer_ratios
from dualtvm.little import LittleConfig
from dualtvm.models import Seq2Seq
from dualtvm.nmt import Backend, Translator, build_dual_decoder, dual_output, translate
from dualtvm.output import GATE

from conftest import SRC

TARGET = "llvm -mcpu=broadwell"


@pytest.fixture(scope="module")
def tiny(tiny_seq2seq):
    """The tiny GNMT (hidden 32: the dual output projection's halves are padded, 16 → 32), its dual-module layers
    and output little module."""
    model, corpus, ckpt = tiny_seq2seq
    tr = Translator(model, corpus.src_vocab, corpus.tgt_vocab)
    duals = build_dual_decoder(model, corpus, LittleConfig(k=24), max_rows=5000, batch_size=8, progress=False)
    return tr, corpus, duals, dual_output(tr, corpus, ckpt)


def _first_steps(tr, step, n=3):
    """(PyTorch, compiled) logits and states of the first ``n`` greedy steps on one sentence."""
    model = tr.model
    with torch.no_grad():
        mem, pad = model.encode(torch.tensor([tr.encode_source(SRC[1])]).t())
        ref_state = got_state = model.init_state(1)
        tok = torch.tensor([tr.tgt_vocab.stoi["<s>"]])
        out = []
        for _ in range(n):
            ref, ref_state = model.decode_step(tok, ref_state, mem, pad)
            got, got_state = step(tok, got_state, mem, pad)
            out.append((ref, ref_state, got, got_state))
            tok = ref.argmax(-1)
    return out


@pytest.mark.slow
def test_fused_step_equals_pytorch_dense_and_dual_at_ratio_zero(tiny, tmp_path):
    from dualtvm.gnmt_step import CompiledStep, build_step, built_for

    tr, corpus, duals, out = tiny
    reference = translate(tr, SRC)
    dense = CompiledStep(build_step(tr.model, TARGET, tmp_path / "dense"))
    for ref, ref_state, got, got_state in _first_steps(tr, dense):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_state[1], ref_state[1], atol=1e-5, rtol=1e-5)  # attention context
        for (h, c), (h2, c2) in zip(got_state[0], ref_state[0]):
            torch.testing.assert_close(h, h2, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(c, c2, atol=1e-5, rtol=1e-5)
    assert translate(tr, SRC, backend=Backend(step=dense, torch_threads=1)) == reference  # a padded batch of 4
    with torch.no_grad():
        mem, pad = tr.model.encode(torch.tensor([tr.encode_source(SRC[0])]).t())
        with pytest.raises(ValueError, match="all padding"):
            dense(torch.tensor([1]), tr.model.init_state(1), mem, torch.ones_like(pad))
    dual = CompiledStep(build_step(tr.model, TARGET, tmp_path / "dual", duals, out.little))
    for ref, _, got, _ in _first_steps(tr, dual):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert translate(tr, SRC, backend=Backend(step=dual)) == reference
    assert translate(tr, SRC[:2], beam=3, backend=Backend(step=dual)) == reference[:2]
    # a build is reused only for its weights and little modules
    assert built_for(tmp_path / "dual", tr.model, duals, out.little)
    assert not built_for(tmp_path / "dual", tr.model, duals, None) and not built_for(tmp_path / "dense", tr.model, duals, None)
    other = Seq2Seq(tr.model.cfg)
    assert not built_for(tmp_path / "dense", other, None, None)
    # … and the tuning log's verdicts it was scheduled under: a re-tuned kernel makes it stale
    from dualtvm.gnmt_step import StepSpec, step_kernels
    from dualtvm.tuning import TuningLog

    spec = StepSpec.from_json(json.loads((tmp_path / "dense" / "manifest.json").read_text())["spec"])
    gemv = next(n for n in step_kernels(spec) if n.startswith("gemv_lstm"))
    retuned = TuningLog(None, {gemv: {"use": "tuned", "trials": 64}})
    assert built_for(tmp_path / "dense", tr.model, None, None, TuningLog(None, {}))
    assert not built_for(tmp_path / "dense", tr.model, None, None, retuned)


@pytest.mark.slow
def test_fused_step_masks_like_the_pytorch_reference_at_a_ratio(tiny, tmp_path):
    """At 50 % layers / 90 % output the fused step marks the same rows as the PyTorch dual-module decoder
    (same mask statistics per layer and for the output, same translations)."""
    from dualtvm.gnmt_step import CompiledStep, build_step

    tr, corpus, duals, out = tiny
    step = CompiledStep(build_step(tr.model, TARGET, tmp_path / "dual", duals, out.little))
    step.set_insensitive_ratio(0.5)
    step.set_output_ratio(0.9)
    set_layer_ratios(duals, 0.5)
    out.set_insensitive_ratio(0.9)
    for sentences in (SRC, SRC[1:3]):  # the second round after a reset counts only its own steps
        reset_layer_stats(step.layers + [step.output] + duals + [out])
        got = translate(tr, sentences, backend=Backend(step=step))
        assert got == translate(tr, sentences, backend=Backend(duals, out))
        for compiled, reference in zip(step.layers, duals):
            assert compiled.stats.total == reference.stats.total  # the same number of steps and rows per gate
            for gate in compiled.gates:
                assert compiled.stats.ratio(gate) == pytest.approx(reference.stats.ratio(gate), abs=0.01), gate
        assert 0.3 < measured_layer_ratio(step.layers) < 0.7
        assert step.output.stats.total == out.stats.total
        assert step.output.stats.ratio(GATE) == pytest.approx(out.stats.ratio(GATE), abs=0.01)
    assert Backend(step=step).mask_layers == step.layers and Backend(step=step).mask_output is step.output
    with pytest.raises(ValueError, match="only be reset"):
        step.layers[0].stats = duals[0].stats  # counts of its own: not a reset


def test_fused_step_refuses_what_it_cannot_build():
    from dualtvm.gnmt_step import StepSpec
    from dualtvm.kernels import LayerShape

    layers = [LayerShape("LSTM", 40, 80, 8)] * 2
    with pytest.raises(ValueError, match="multiple of 32, not 40"):
        StepSpec(40, 10, layers, [False, False], dual=False)
    with pytest.raises(ValueError, match=r"LSTM\(64 → 32\)"):
        StepSpec(32, 10, [LayerShape("LSTM", 32, 32, 8)] * 2, [False, False], dual=False)
