#!/usr/bin/env python
"""Prune a trained LM's recurrent weights by magnitude with automated gradual pruning (Table 7's baseline).

    python scripts/prune_lm.py --checkpoint cache/ptb-lstm-750.best.pt --sparsity 0.8

Writes ``cache/<name>-sparse80.best.pt`` (a normal checkpoint: ``eval_lm.py`` takes it) and a row in
results/baselines.json with its valid/test PPL.  Then Table 7's dual-module column:

    python scripts/eval_lm.py --checkpoint cache/ptb-lstm-750-sparse80.best.pt --model-name ptb-lstm-750-sparse80 \\
        --parts ratios --ratios 0.5
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (  # noqa: E402
    HelpFormatter, add_baseline_options, add_data_dir_option, command_line, start_baseline_run)
from dualtvm.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402
from dualtvm.data import batchify, load_lm_corpus  # noqa: E402
from dualtvm.prune import PruneConfig, prune_finetune  # noqa: E402
from dualtvm.results import record_baseline  # noqa: E402
from dualtvm.train_lm import evaluate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a trained LM (scripts/train_lm.py)")
    p.add_argument("--sparsity", type=float, default=0.8,
                   help="final fraction of zero recurrent weights (0: fine-tune only, the dense control)")
    p.add_argument("--corpus", default="ptb", help="ptb or wikitext-2")
    add_data_dir_option(p)
    p.add_argument("--batches", type=int, default=PruneConfig.batches, help="fine-tuning batches")
    p.add_argument("--lr", type=float, default=PruneConfig.lr,
                   help="learning rate of the fine-tuning between pruning steps")
    add_baseline_options(p, "pruned checkpoint (default: beside --checkpoint, named by corpus and sparsity)",
                         device_note=None)
    a = p.parse_args(argv)
    if not 0.0 <= a.sparsity < 1.0:
        p.error(f"--sparsity must be in [0, 1), got {a.sparsity} (0 = the same fine-tuning without pruning: the control)")
    revision = start_baseline_run(a)
    payload = load_checkpoint(a.checkpoint)
    if payload["kind"] != "lm":
        p.error(f"{a.checkpoint} is a {payload['kind']} checkpoint, not a language model")
    model = model_from_checkpoint(payload)
    corpus = load_lm_corpus(a.corpus, a.data_dir)
    if payload["vocab"] != corpus.dictionary.idx2word:
        p.error(f"{a.checkpoint} was trained on another vocabulary than {a.corpus}")
    base = a.checkpoint.name.removesuffix(".best.pt").removesuffix(".pt")
    name = f"{base}-sparse{round(a.sparsity * 100)}"
    out = a.out or a.checkpoint.with_name(f"{name}.best.pt")
    cfg = PruneConfig(final_sparsity=a.sparsity, batches=a.batches, lr=a.lr)
    t0 = time.time()
    info = prune_finetune(model, corpus.train, cfg)
    wall = time.time() - t0
    extra = {k: payload[k] for k in ("vocab", "data_checksums", "seed", "train_config", "train_state") if k in payload}
    save_checkpoint(out, model, "lm", payload["config"], pruning={**asdict(cfg), **info, "from": str(a.checkpoint)},
                    **extra)
    valid, test = (math.exp(evaluate(model, batchify(d, 10))) for d in (corpus.valid, corpus.test))
    row = {"model": name, "pruned_from": base, "epochs": payload["train_state"]["epoch"], "sparsity": info["sparsity"],
           "finetune_batches": a.batches,
           "valid_ppl": round(valid, 2), "test_ppl": round(test, 2), "wall_s": round(wall, 1), "checkpoint": str(out),
           "command": command_line(__file__, argv)}
    record_baseline(a.results, row, revision)
    print(f"{name}: sparsity {info['sparsity']:.3f}, test PPL {test:.2f} (valid {valid:.2f}) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
