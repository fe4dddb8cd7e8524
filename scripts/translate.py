#!/usr/bin/env python
"""Translate with the GNMT-like model: big PyTorch, dual-module PyTorch, or the compiled TVM decoder.

    python scripts/translate.py --split test --backend torch                      # BLEU of the big model
    python scripts/translate.py --split test --backend dual --ratio 0.5 --beam 4
    python scripts/translate.py --split test --backend tvm-dual --ratio 0.5 --limit 200
    python scripts/translate.py --split test --backend tvm-dual --ratio 0.5 --output-ratio 0.99   # + dual output projection
    echo "a man is riding a bike ." | python scripts/translate.py --backend tvm-dense
    python scripts/translate.py --split test --backend tvm-dual --output-ratio 0.99 --fused-step   # one compiled step

Backends: ``torch`` (big model), ``dual`` (PyTorch dual-module reference), ``tvm-dense`` /
``tvm-dual`` (decoder LSTM layers run by the compiled step, the output and attention-query projections by
a compiled GEMV; embeddings and the rest of attention stay in PyTorch, on one thread inside the decode loop).  Little modules are fitted on Multi30k train and calibrated on val once, then
cached next to the checkpoint; compiled layers are built once under ``build/``.  ``--fused-step`` compiles
the whole decode step instead (``dualtvm.gnmt_step``: two VM calls per token, PyTorch only for the attention).
Without --split, sentences are read from --input or stdin and translations written to stdout.
With --split, BLEU (sacrebleu, detokenised, signature printed) is computed against the references.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (  # noqa: E402
    HelpFormatter, add_data_dir_option, add_k_option, add_output_little_options, add_projection_option, positive_int,
    unit_ratio)
from dualtvm.quantize import COMPILED_BITS  # noqa: E402
from dualtvm.thresholds import MASK_RULES  # noqa: E402 (no TVM behind it: threads are set before TVM is imported)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None, help="train_nmt.py checkpoint (default cache/multi30k-gnmt-256.best.pt)")
    p.add_argument("--backend", choices=("torch", "dual", "tvm-dense", "tvm-dual"), default="torch",
                   help="decoder: PyTorch big (torch) or dual-module (dual), compiled dense (tvm-dense) or "
                        "dual-module (tvm-dual)")
    p.add_argument("--ratio", type=unit_ratio, default=0.5, help="insensitive ratio (dual backends)")
    p.add_argument("--beam", type=positive_int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--output-ratio", type=unit_ratio, default=None,
                   help="dual backends: also run the dual-module output projection at this insensitive ratio "
                        "(dualtvm.output; e.g. 0.99)")
    add_output_little_options(p)
    p.add_argument("--little-bits", type=int, choices=COMPILED_BITS, default=8,
                   help="W_LL precision of the little modules (dual backends): 8, the paper's, or 4")
    p.add_argument("--mask-rule", choices=MASK_RULES, default="activation",
                   help="what the dual backends' masks test: activation (eq. 5) or contribution (dualtvm.contribution)")
    add_projection_option(p)
    add_k_option(p)
    p.add_argument("--fused-step", action="store_true",
                   help="tvm backends: compile the whole decode step as one build (two VM calls per token)")
    p.add_argument("--split", choices=("valid", "test"), default=None, help="translate a Multi30k split and score it")
    p.add_argument("--limit", type=int, default=None, help="first N sentences only")
    p.add_argument("--input", type=Path, default=None, help="file of source sentences (default stdin)")
    p.add_argument("--output", type=Path, default=None, help="write translations here")
    add_data_dir_option(p)
    p.add_argument("--target", default="llvm -mcpu=broadwell", help="target of the compiled layers")
    p.add_argument("--build-dir", type=Path, default=None, help="where compiled decoders go (default: build/)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="TVM and PyTorch threads (default: all cores for TVM, PyTorch's own)")
    a = p.parse_args(argv)
    if a.output_ratio is not None and not a.backend.endswith("dual"):
        p.error(f"--output-ratio needs a dual backend, got {a.output_ratio} with {a.backend}")
    if a.fused_step and not a.backend.startswith("tvm-"):
        p.error(f"--fused-step compiles the decode step: it needs a tvm backend, not {a.backend}")
    if a.beam < 1:
        p.error(f"--beam must be ≥ 1, got {a.beam}")
    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads or os.cpu_count()))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    import torch

    from dualtvm.checkpoint import cache_dir
    from dualtvm.data import load_multi30k
    from dualtvm.nmt import Translator, corpus_bleu, translate
    from dualtvm.nmt_backends import decoder_backend
    from dualtvm.output import OutputConfig

    if a.threads:
        torch.set_num_threads(a.threads)
    ckpt = a.checkpoint or cache_dir() / "multi30k-gnmt-256.best.pt"
    if not ckpt.exists():
        p.error(f"checkpoint {ckpt} not found: train one with scripts/train_nmt.py or pass --checkpoint")
    tr = Translator.from_checkpoint(ckpt)
    corpus = load_multi30k(a.data_dir) if a.split or a.backend != "torch" else None
    backend = decoder_backend(tr, corpus, a.backend, ckpt, a.target, a.ratio, a.build_dir, a.little_bits,
                              a.output_ratio, a.fused_step, a.mask_rule, a.projection, a.k,
                              OutputConfig(k=a.output_k, projection=a.output_projection))

    if a.split:
        src, refs = corpus.splits[a.split]
        src, refs = src[: a.limit], refs[: a.limit]
    else:
        text = a.input.read_text() if a.input else sys.stdin.read()
        src, refs = [line.strip() for line in text.splitlines() if line.strip()][: a.limit], None
    t0 = time.perf_counter()
    hyps = translate(tr, src, a.beam, backend, batch_size=1 if a.backend.startswith("tvm") else 100, progress=True)
    wall = time.perf_counter() - t0
    if a.output:
        a.output.write_text("\n".join(hyps) + "\n")
    elif not a.split:
        print("\n".join(hyps))
    print(f"{len(src)} sentences in {wall:.1f}s with backend {a.backend}"
          + (f" at insensitive ratio {a.ratio}" if "dual" in a.backend else ""), file=sys.stderr)
    if refs is not None:
        score, sig = corpus_bleu(hyps, refs)
        print(f"BLEU {score:.2f} ({sig})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
