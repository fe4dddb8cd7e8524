#!/usr/bin/env python
"""Train a baseline ("big") word-level LSTM/GRU LM on PTB or WikiText-2; resumable.

    python scripts/train_lm.py --corpus ptb --rnn LSTM --hidden 750 --epochs 6
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (  # noqa: E402
    HelpFormatter, add_baseline_options, add_data_dir_option, command_line, positive_int, start_baseline_run)
from dualtvm.checkpoint import checkpoint_and_name  # noqa: E402
from dualtvm.data import load_lm_corpus  # noqa: E402
from dualtvm.models import LMConfig  # noqa: E402
from dualtvm.results import record_baseline  # noqa: E402
from dualtvm.train_lm import LMTrainConfig, train_lm  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--corpus", default="ptb", help="ptb, wikitext-2, or a folder with train/valid/test.txt")
    add_data_dir_option(p)
    p.add_argument("--rnn", default="LSTM", choices=["LSTM", "GRU"], help="recurrent cell")
    p.add_argument("--hidden", type=int, default=750, help="hidden units (and embedding size)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout on embeddings and RNN outputs")
    p.add_argument("--epochs", type=positive_int, default=6,
                   help="training epochs (a rerun resumes from the checkpoint)")
    p.add_argument("--lr", type=float, default=20.0,
                   help="SGD learning rate, divided by 4 when validation loss stops improving")
    p.add_argument("--batch-size", type=int, default=20, help="parallel streams of the batchified corpus")
    p.add_argument("--seed", type=int, default=1111, help="seed of initialisation and dropout")
    add_baseline_options(p, "checkpoint path (default cache/<corpus>-<rnn>-<hidden>.pt); also names the baselines row")
    a = p.parse_args(argv)
    revision = start_baseline_run(a)
    corpus = load_lm_corpus(a.corpus, a.data_dir)
    ckpt, name = checkpoint_and_name(f"{Path(a.corpus).name}-{a.rnn.lower()}-{a.hidden}", a.out)
    cfg = LMConfig(a.rnn, len(corpus.dictionary), a.hidden, 1, a.dropout, True)
    train_cfg = LMTrainConfig(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, seed=a.seed, device=a.device)
    res = train_lm(corpus, cfg, train_cfg, ckpt)
    row = {"model": name, "epochs": res["epochs"], "train_ppl": round(res["train_ppl"], 2),
           "valid_ppl": round(res["valid_ppl"], 2), "test_ppl": round(res["test_ppl"], 2), "wall_s": res["wall_s"],
           "checkpoint": str(ckpt.with_suffix(".best.pt")),
           "command": command_line(__file__, argv)}
    record_baseline(a.results, row, revision)
    print(f"{name}: test PPL {res['test_ppl']:.2f} (valid {res['valid_ppl']:.2f}, {res['epochs']} epochs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
