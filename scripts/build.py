#!/usr/bin/env python
"""Build a compiled dual-module decoder (and its dense counterpart) for a model and target.

    python scripts/build.py --target "llvm -mcpu=broadwell" --model lstm-1500 --out build/lstm-1500 --verify

Big weights come from --checkpoint (a train_lm.py checkpoint, one decoder layer of a train_nmt.py
checkpoint, or an nn.LSTM/GRU state_dict); without one, seeded random weights are used and the output
says so.  The little module is fitted on the model's own data when the checkpoint is a dualtvm model
(--corpus text through the LM's embedding; for a seq2seq, what --decoder-layer receives while the model
decodes Multi30k references), else on Gaussian inputs.  Tuned schedules are taken from
tuning_logs/<target-name>/ when they beat the default ones.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch and numpy only: TVM is imported after --threads sets its thread count
from dualtvm.cli import (  # noqa: E402
    HelpFormatter, add_data_dir_option, add_k_option, add_max_rows_option, add_projection_option, add_target_option,
    model_name, positive_int)
from dualtvm import BUILD_FIT_ROWS  # noqa: E402
from dualtvm.quantize import COMPILED_BITS  # noqa: E402
from dualtvm.thresholds import MASK_RULES, SIGMOID_TAILS, check_mask_rule  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_target_option(p)
    p.add_argument("--model", type=model_name, default="lstm-1500",
                   help="model shape (dualtvm.registry.MODELS); random weights of it unless --checkpoint")
    p.add_argument("--checkpoint", default=None,
                   help="trained weights: a train_lm.py LM, a train_nmt.py seq2seq (see --decoder-layer) or a saved "
                        "nn.LSTM/nn.GRU (module or state_dict)")
    p.add_argument("--out", default=None,
                   help="build folder (default build/<model>[-eps<ε>|-k<k>][-learned]-<target-name>[-w4][-contribution]: "
                        "each little-module variant its own, the one bench.py and tune.py --in-step use; "
                        "BuildConfig.default_out)")
    p.add_argument("--corpus", default="ptb", help="text an LM checkpoint's little module is fitted on")
    p.add_argument("--decoder-layer", type=int, default=0, help="which decoder layer of a train_nmt.py checkpoint")
    add_data_dir_option(p)
    p.add_argument("--eps", type=float, default=0.5, help="ε of eq. 3 (sets k)")
    add_k_option(p)
    p.add_argument("--little-bits", type=int, default=8, choices=COMPILED_BITS,
                   help="W_LL precision: INT8 (paper default) or INT4 (AVX2 integer path, half the little bytes)")
    p.add_argument("--sigmoid-tails", default="low", choices=SIGMOID_TAILS,
                   help="sigmoid gates' insensitive outputs: low (eq. 5) or both saturated ends (beyond the paper)")
    p.add_argument("--mask-rule", default="activation", choices=MASK_RULES,
                   help="what the mask tests: activation (eq. 5) or contribution (φ' times the gate output's multiplier "
                        "in the new state, beyond the paper: dualtvm.contribution)")
    add_projection_option(p)
    add_max_rows_option(p, BUILD_FIT_ROWS)
    p.add_argument("--tuning-logs", default=None, help="database folder (default tuning_logs/<target-name>)")
    p.add_argument("--no-tuned", action="store_true", help="use the default schedules even if a database exists")
    p.add_argument("--verify", action="store_true", help="check against the PyTorch reference (ratio 0 and 0.5)")
    p.add_argument("--steps", type=positive_int, default=100, help="decode steps to verify")
    p.add_argument("--threads", type=positive_int, default=None, help="TVM threads (default: all cores)")
    a = p.parse_args(argv)
    try:
        check_mask_rule(a.mask_rule, a.sigmoid_tails)
    except ValueError as e:
        p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads or os.cpu_count()))  # before tvm is imported
    from dualtvm.build import BuildConfig, build_model
    from dualtvm.target import TargetError, check_llvm_cpu, parse_target

    try:  # a mistyped target stops here, not after the little module's fit
        check_llvm_cpu(parse_target(a.target))
    except TargetError as e:
        p.error(str(e))
    report = build_model(BuildConfig(a.model, a.target, a.checkpoint, a.out, a.eps, a.tuning_logs, not a.no_tuned,
                                     a.verify, a.steps, a.threads, corpus=a.corpus, data_dir=a.data_dir,
                                     little_bits=a.little_bits, decoder_layer=a.decoder_layer,
                                     sigmoid_tails=a.sigmoid_tails, mask_rule=a.mask_rule,
                                     projection=a.projection, k=a.k, max_rows=a.max_rows))
    print(json.dumps(report, indent=2))
    return 0 if report.get("verified", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
