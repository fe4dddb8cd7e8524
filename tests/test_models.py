import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import dying_after
from dualtvm.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from dualtvm.data import load_lm_corpus
from dualtvm.models import LMConfig, ModelError, RNNLanguageModel, Seq2Seq, Seq2SeqConfig, rnn_from_state_dict
from dualtvm.train_lm import LMTrainConfig, train_lm


@pytest.mark.parametrize("rnn", ["LSTM", "GRU"])
def test_tiny_lm_loss_falls_and_resumes(tiny_corpus, tmp_path, rnn):
    corpus = load_lm_corpus(str(tiny_corpus))
    cfg = LMConfig(rnn, len(corpus.dictionary), 32, 1, 0.0, True)
    ckpt = tmp_path / "m.pt"
    res = train_lm(corpus, cfg, LMTrainConfig(epochs=3, lr=5.0, bptt=8, batch_size=4, eval_batch_size=2), ckpt,
                   progress=False)
    hist = [h["train_ppl"] for h in res["history"]]
    assert hist[-1] < hist[0] * 0.5, hist
    assert res["test_ppl"] < len(corpus.dictionary)
    # resume: a longer run continues from epoch 3 rather than starting again
    res2 = train_lm(corpus, cfg, LMTrainConfig(epochs=4, lr=5.0, bptt=8, batch_size=4, eval_batch_size=2), ckpt,
                    progress=False)
    assert [h["epoch"] for h in res2["history"]] == [1, 2, 3, 4]
    payload = load_checkpoint(ckpt)
    assert payload["vocab"] == corpus.dictionary.idx2word and payload["seed"] == 1111 and "git" in payload


def test_lm_training_resumes_mid_epoch(tiny_corpus, tmp_path, monkeypatch):
    """A run killed mid-epoch continues from its last mid-epoch checkpoint, not from the epoch's start."""
    import dualtvm.train_lm as train_mod

    corpus = load_lm_corpus(str(tiny_corpus))
    cfg = LMConfig("LSTM", len(corpus.dictionary), 16, 1, 0.0, True)
    tc = LMTrainConfig(epochs=1, lr=5.0, bptt=8, batch_size=4, eval_batch_size=2, save_every_s=0.0)
    ckpt = tmp_path / "m.pt"
    steps = []
    real_step = train_mod.sgd_step
    monkeypatch.setattr(train_mod, "sgd_step", dying_after(3, real_step, steps))
    with pytest.raises(KeyboardInterrupt):
        train_lm(corpus, cfg, tc, ckpt, progress=False)
    assert load_checkpoint(ckpt)["train_state"]["batch"] == 3  # saved after each of 3 batches; died in the 4th
    monkeypatch.setattr(train_mod, "sgd_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    res = train_lm(corpus, cfg, tc, ckpt, progress=False)
    n_batches = len(range(0, corpus.train.numel() // 4 - 1, 8))
    assert len(steps) == 3 + n_batches - 3 and res["epochs"] == 1
    assert load_checkpoint(ckpt)["train_state"]["batch"] == 0


def test_training_device_is_checked_before_training(tiny_corpus, tmp_path):
    """--device names where the big model trains; one this machine lacks is a clear error before any work."""
    import argparse

    from dualtvm.checkpoint import device_arg, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert device_arg("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown device 'gpu0'"):
        device_arg("gpu0")  # the scripts' --device type: argparse turns this into a usage error
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="only cpu and cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            resolve_device("cuda")
        corpus = load_lm_corpus(str(tiny_corpus))
        cfg = LMConfig("LSTM", len(corpus.dictionary), 8, 1, 0.0, True)
        with pytest.raises(ValueError, match="sees no CUDA device"):
            train_lm(corpus, cfg, LMTrainConfig(epochs=1, device="cuda"), tmp_path / "m.pt", progress=False)
        assert not (tmp_path / "m.pt").exists()


def test_checkpoint_round_trip_and_shape_error(tmp_path):
    cfg = LMConfig("GRU", 50, 16, 2, 0.1, True)
    m = RNNLanguageModel(cfg)
    save_checkpoint(tmp_path / "a.pt", m, "lm", cfg.__dict__)
    m2 = model_from_checkpoint(load_checkpoint(tmp_path / "a.pt"))
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    payload = load_checkpoint(tmp_path / "a.pt")
    payload["config"]["hidden"] = 24
    with pytest.raises(ModelError, match="has shape .* but the config"):
        model_from_checkpoint(payload)


def test_user_state_dict_becomes_rnn():
    gru = nn.GRU(10, 20, 2)
    rebuilt = rnn_from_state_dict(gru.state_dict())
    assert isinstance(rebuilt, nn.GRU) and rebuilt.num_layers == 2
    x = torch.randn(3, 2, 10)
    assert torch.allclose(gru(x)[0], rebuilt(x)[0])
    with pytest.raises(ModelError, match="those of an GRU, not an LSTM"):
        rnn_from_state_dict(gru.state_dict(), "LSTM")
    with pytest.raises(ModelError, match="no 'weight_ih_l"):
        rnn_from_state_dict({"foo": torch.zeros(1)})


def test_seq2seq_shapes_and_residual_inputs():
    cfg = Seq2SeqConfig(src_vocab=30, tgt_vocab=40, hidden=16, enc_layers=2, dec_layers=4)
    m = Seq2Seq(cfg)
    src = torch.randint(1, 30, (7, 3))
    tgt = torch.randint(1, 40, (5, 3))
    assert m(src, tgt).shape == (5, 3, 40)
    assert [m.decoder.residual(i) for i in range(4)] == [False, False, True, True]
    assert all(l.input_size == 2 * cfg.hidden for l in m.decoder.layers)
    assert not math.isnan(m(src, tgt).sum().item())


def test_seq2seq_memory_does_not_depend_on_the_batch_padding():
    """A sentence's encoder memory (and so its translation) is the same alone or padded in a batch: the backward
    direction must start at the sentence's end, not at its padding (unpacked, it did: BLEU fell 3 points)."""
    torch.manual_seed(0)
    m = Seq2Seq(Seq2SeqConfig(src_vocab=20, tgt_vocab=20, hidden=16, enc_layers=2, dec_layers=2, dropout=0.0)).eval()
    long, short = [3, 4, 5, 6, 7], [8, 9, 2]
    with torch.no_grad():
        mem, pad = m.encode(torch.tensor([long, short + [0, 0]]).t())
        alone_long, _ = m.encode(torch.tensor([long]).t())
        alone_short, _ = m.encode(torch.tensor([short]).t())
        torch.testing.assert_close(mem[:, 0], alone_long[:, 0])
        torch.testing.assert_close(mem[:3, 1], alone_short[:, 0])
        assert pad[:, 1].tolist() == [False] * 3 + [True] * 2 and not mem[3:, 1].any()
        # teacher-forced logits of the short sentence: the same alone and in the padded batch
        tgt = torch.tensor([[1, 2, 3], [1, 4, 5]]).t()
        batched = m(torch.tensor([long, short + [0, 0]]).t(), tgt)[:, 1]
        torch.testing.assert_close(batched, m(torch.tensor([short]).t(), tgt[:, 1:])[:, 0])


def test_resume_with_other_config_is_refused(tiny_corpus, tmp_path):
    corpus = load_lm_corpus(str(tiny_corpus))
    ckpt = tmp_path / "m.pt"
    tc = LMTrainConfig(epochs=1, lr=5.0, bptt=8, batch_size=4, eval_batch_size=2)
    train_lm(corpus, LMConfig("LSTM", len(corpus.dictionary), 16, 1, 0.0, True), tc, ckpt, progress=False)
    with pytest.raises(ModelError, match="was trained with config"):
        train_lm(corpus, LMConfig("LSTM", len(corpus.dictionary), 24, 1, 0.0, True), tc, ckpt, progress=False)


def test_a_second_training_of_a_recipe_keeps_the_first_ones_row(tmp_path, monkeypatch):
    """--out names the baselines row after the checkpoint: cache/ptb-gru-750-r2.pt is row ptb-gru-750-r2, so the
    row of ptb-gru-750 (whose checkpoint the committed results came from) survives; without --out, the recipe."""
    from dualtvm.checkpoint import checkpoint_and_name

    monkeypatch.setenv("DUALTVM_CACHE", str(tmp_path))
    assert checkpoint_and_name("ptb-gru-750", None) == (tmp_path / "ptb-gru-750.pt", "ptb-gru-750")
    second = checkpoint_and_name("ptb-gru-750", "cache/ptb-gru-750-r2.pt")
    assert second == (Path("cache/ptb-gru-750-r2.pt"), "ptb-gru-750-r2")
    assert checkpoint_and_name("multi30k-gnmt-256", tmp_path / "mine.best.pt")[1] == "mine"


def test_training_scripts_record_their_baseline_rows(tiny_corpus, tmp_path):
    """train_lm.py, then prune_lm.py on its checkpoint: each writes its row into the baselines file, with the command
    that made it (pasteable: quoted) and the code's revision; a rerun replaces its own row, the other stays."""
    import json
    import shlex
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    results, out = tmp_path / "baselines.json", tmp_path / "tiny lm.pt"
    train = ["scripts/train_lm.py", "--corpus", str(tiny_corpus), "--hidden", "16", "--epochs", "1", "--batch-size", "4",
             "--out", str(out), "--results", str(results)]
    prune = ["scripts/prune_lm.py", "--checkpoint", str(out.with_suffix(".best.pt")), "--corpus", str(tiny_corpus),
             "--sparsity", "0.5", "--batches", "2", "--results", str(results)]
    for cmd in (train, prune, train):
        done = subprocess.run([sys.executable, *cmd], cwd=repo, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(results.read_text())["rows"]
    assert [r["model"] for r in rows] == ["tiny lm-sparse50", "tiny lm"]  # the rerun's row replaced the first one
    trained = rows[1]
    assert trained["command"] == "python " + shlex.join(train) and shlex.split(trained["command"])[1:] == train
    assert trained["epochs"] == 1 and trained["git"] and trained["test_ppl"] > 0
    assert rows[0]["pruned_from"] == "tiny lm" and rows[0]["sparsity"] == pytest.approx(0.5, abs=0.05)
