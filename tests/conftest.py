from __future__ import annotations

import os
from pathlib import Path

import pytest

from dualtvm.data import default_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    if not (d / "ptb" / "train.txt").exists():
        pytest.skip(f"real corpora not found under {d} (set DUALTVM_DATA)")
    return d


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    words = "the cat sat on the mat . a dog ran to the cat .".split()
    for split, n in (("train", 60), ("valid", 10), ("test", 10)):
        lines = [" ".join(words[(i % 5):] + words[: (i % 5)]) for i in range(n)]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def dying_after(n: int, step, calls: list):
    """``step`` that records each call in ``calls`` and raises KeyboardInterrupt on call ``n + 1`` (a killed
    training run)."""

    def dying(*args, **kwargs):
        if len(calls) == n:
            raise KeyboardInterrupt
        calls.append(1)
        return step(*args, **kwargs)

    return dying


SRC = ["a dog runs .", "a cat sleeps .", "two men walk .", "a dog sleeps ."]
TGT = ["ein hund rennt .", "eine katze schläft .", "zwei männer gehen .", "ein hund schläft ."]


@pytest.fixture(scope="session")
def tiny_seq2seq(tmp_path_factory):
    """A tiny seq2seq (hidden 32, 4 decoder layers, residual from 3) trained on four sentence pairs:
    (model, corpus, best checkpoint)."""
    from dualtvm.data import ParallelCorpus, Vocab, tokenize_sentence
    from dualtvm.models import Seq2SeqConfig
    from dualtvm.train_nmt import NMTTrainConfig, train_nmt

    src, tgt = SRC * 4, TGT * 4
    sv = Vocab.build([tokenize_sentence(s) for s in src], 1)
    tv = Vocab.build([tokenize_sentence(t) for t in tgt], 1)
    corpus = ParallelCorpus(sv, tv, {"train": (src, tgt), "valid": (SRC, TGT), "test": (SRC, TGT)})
    cfg = Seq2SeqConfig(len(sv), len(tv), hidden=32, enc_layers=2, dec_layers=4, dropout=0.0)
    ckpt = tmp_path_factory.mktemp("nmt") / "s.pt"
    res = train_nmt(corpus, cfg, NMTTrainConfig(epochs=60, lr=1e-2, batch_size=8), ckpt, progress=False)
    return res["model"].eval(), corpus, ckpt.with_suffix(".best.pt")


@pytest.fixture(scope="session")
def tiny_multi30k(tmp_path_factory) -> tuple[Path, Path]:
    """A Multi30k-shaped folder of four sentence pairs (SHA256SUMS included) and a seq2seq (hidden 32,
    4 decoder layers, residual from 3) trained on it: (data folder, best checkpoint)."""
    import hashlib

    from dualtvm.data import load_multi30k
    from dualtvm.models import Seq2SeqConfig
    from dualtvm.train_nmt import NMTTrainConfig, train_nmt

    root = tmp_path_factory.mktemp("m30k")
    data = root / "data"
    data.mkdir()
    for stem, n in (("train", 6), ("val", 1), ("test_2016_flickr", 1)):
        (data / f"{stem}.en").write_text("\n".join(SRC * n) + "\n")
        (data / f"{stem}.de").write_text("\n".join(TGT * n) + "\n")
    (data / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                                             for p in sorted(data.iterdir())))
    corpus = load_multi30k(data)
    cfg = Seq2SeqConfig(len(corpus.src_vocab), len(corpus.tgt_vocab), hidden=32, enc_layers=2, dec_layers=4,
                        dropout=0.0)
    train_nmt(corpus, cfg, NMTTrainConfig(epochs=10, lr=1e-2, batch_size=8), root / "s.pt", progress=False)
    return data, root / "s.best.pt"


os.environ.setdefault("TVM_NUM_THREADS", "2")
