import shutil

import pytest
import torch

from dualtvm.data import (DataError, Vocab, batchify, bucketed_batches, detokenize, get_batch, load_lm_corpus,
                          load_multi30k, pad_batch, tokenize_sentence, verify_checksums)


def test_lm_loader_synthetic(tiny_corpus):
    c = load_lm_corpus(str(tiny_corpus))
    assert "<eos>" in c.dictionary.word2idx
    # every line ends with <eos>: 60 lines of 14 words + eos
    assert len(c.train) == 60 * 15
    data = batchify(c.train, 4)
    assert data.shape == (len(c.train) // 4, 4)
    x, y = get_batch(data, 0, 5)
    assert x.shape == (5, 4) and torch.equal(y, data[1:6].reshape(-1))


def test_batchify_too_short():
    with pytest.raises(DataError, match="too short"):
        batchify(torch.arange(3), 4)


def test_real_ptb(data_dir):
    c = load_lm_corpus("ptb", data_dir)
    assert len(c.dictionary) == 10000
    assert (len(c.train), len(c.valid), len(c.test)) == (929589, 73760, 82430)
    assert set(c.checksums) == {"train.txt", "valid.txt", "test.txt"}


def test_checksum_failure_names_file(data_dir, tmp_path):
    dst = tmp_path / "ptb"
    shutil.copytree(data_dir / "ptb", dst)
    with open(dst / "valid.txt", "a") as f:
        f.write("tampered\n")
    with pytest.raises(DataError, match=r"corrupt data file: .*valid\.txt"):
        verify_checksums(dst)
    (dst / "test.txt").unlink()
    with pytest.raises(DataError, match=r"missing data file: .*test\.txt"):
        verify_checksums(dst, ["test.txt"])


def test_missing_corpus_folder(tmp_path):
    with pytest.raises(DataError, match="corpus folder not found"):
        load_lm_corpus("ptb", tmp_path)


def test_multi30k(data_dir):
    c = load_multi30k(data_dir, min_freq=2)
    src, tgt = c.splits["train"]
    assert len(src) == len(tgt) == 29000
    assert len(c.splits["test"][0]) == 1000
    assert c.src_vocab.itos[:4] == list(Vocab.SPECIALS)
    ids = c.tgt_vocab.encode(tokenize_sentence(tgt[0]))
    assert c.tgt_vocab.decode(ids + [3, 5]) == [c.tgt_vocab.itos[i] for i in ids]


def test_tokenize_detokenize_and_batches():
    toks = tokenize_sentence("Zwei Männer, im Freien.")
    assert toks == ["zwei", "männer", ",", "im", "freien", "."]
    assert detokenize(toks) == "zwei männer, im freien."
    pairs = [([1] * n, [2] * n) for n in (5, 1, 3, 9, 2, 4)]
    batches = bucketed_batches(pairs, 2, shuffle=False)
    assert [sorted(len(pairs[i][0]) for i in b) for b in batches] == [[1, 2], [3, 4], [5, 9]]
    assert pad_batch([[1, 2, 3], [4]]).tolist() == [[1, 4], [2, 0], [3, 0]]
