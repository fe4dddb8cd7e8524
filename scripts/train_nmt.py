#!/usr/bin/env python
"""Train the GNMT-like seq2seq on Multi30k En→De; resumable; prints and records BLEU (sacrebleu).

    python scripts/train_nmt.py --hidden 256 --epochs 10

Sized for a 2-core CPU: hidden 256, 2 encoder layers, 4 decoder layers (residual from layer 3),
batch 64.  The paper's GNMT is hidden 1024; --hidden 1024 builds it (90 M parameters, ~5 s a batch and
~40 min an epoch with 2 threads here; checkpoints every 10 min, so it resumes mid-epoch across sessions).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (  # noqa: E402
    HelpFormatter, add_baseline_options, add_data_dir_option, command_line, positive_int, start_baseline_run)
from dualtvm.checkpoint import checkpoint_and_name  # noqa: E402
from dualtvm.data import load_multi30k  # noqa: E402
from dualtvm.models import Seq2SeqConfig  # noqa: E402
from dualtvm.results import record_baseline  # noqa: E402
from dualtvm.nmt import bleu  # noqa: E402
from dualtvm.train_nmt import NMTTrainConfig, train_nmt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_dir_option(p)
    p.add_argument("--hidden", type=int, default=256, help="hidden units of encoder and decoder layers")
    p.add_argument("--epochs", type=positive_int, default=10,
                   help="training epochs (a rerun resumes from the checkpoint)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout on embeddings and between layers")
    p.add_argument("--batch-size", type=int, default=64, help="sentence pairs per batch")
    p.add_argument("--min-freq", type=int, default=2, help="words seen fewer times in training become <unk>")
    p.add_argument("--max-batches", type=int, default=None, help="cap per epoch (smoke runs)")
    p.add_argument("--bleu-limit", type=int, default=None, help="translate only the first N test sentences")
    add_baseline_options(p, "checkpoint path (default cache/multi30k-gnmt-<hidden>.pt); also names the baselines row",
                         ", BLEU is measured on the CPU")
    a = p.parse_args(argv)
    revision = start_baseline_run(a)
    corpus = load_multi30k(a.data_dir, a.min_freq)
    cfg = Seq2SeqConfig(len(corpus.src_vocab), len(corpus.tgt_vocab), a.hidden, dropout=a.dropout)
    ckpt, name = checkpoint_and_name(f"multi30k-gnmt-{a.hidden}", a.out)
    res = train_nmt(corpus, cfg, NMTTrainConfig(epochs=a.epochs, batch_size=a.batch_size, max_batches=a.max_batches,
                                                device=a.device), ckpt)
    score, sig, _ = bleu(res["model"], corpus, "test", limit=a.bleu_limit)
    val, _, _ = bleu(res["model"], corpus, "valid", limit=a.bleu_limit)
    row = {"model": name, "epochs": res["epochs"], "valid_bleu": round(val, 2), "test_bleu": round(score, 2),
           "sacrebleu_signature": sig, "wall_s": res["wall_s"], "checkpoint": str(ckpt.with_suffix(".best.pt")),
           "command": command_line(__file__, argv)}
    record_baseline(a.results, row, revision)
    print(f"{name}: test BLEU {score:.2f} ({sig})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
