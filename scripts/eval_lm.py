#!/usr/bin/env python
"""Dual-module LM quality on PTB (Tables 1, 2/3, 5, 6 quality columns; per-gate allocation).

    python scripts/eval_lm.py --checkpoint cache/ptb-lstm-750.best.pt --model-name ptb-lstm-750

Appends rows to results/lm-quality-ptb.json (keyed by model, experiment part and ratio); ``--results`` names another
file, whose stem is then the experiment's name.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dualtvm.checkpoint import git_revision, load_checkpoint, model_from_checkpoint  # noqa: E402
from dualtvm.cli import (  # noqa: E402
    HelpFormatter, add_data_dir_option, add_k_option, add_max_rows_option, add_projection_option, choice_list,
    command_line, positive_int_list, ratio_list)
from dualtvm.construct import calibrate  # noqa: E402
from dualtvm.data import batchify, load_lm_corpus  # noqa: E402
from dualtvm.dual import StackedRNN  # noqa: E402
from dualtvm.little import LittleConfig, big_layers, quality_variant, uniform_head  # noqa: E402
from dualtvm.paper import PPL as PAPER_PPL, paper_model  # noqa: E402
from dualtvm.quality import (ALLOCATION_COSTS, allocation, largest_ratio_within, ppl, setup,  # noqa: E402
                             validated_allocations)
from dualtvm.resilience import REGIONS, NoisyLSTMLayer  # noqa: E402
from dualtvm.results import update_rows  # noqa: E402
from dualtvm.quantize import SUPPORTED_BITS  # noqa: E402
from dualtvm.thresholds import MASK_RULES, SIGMOID_TAILS, check_mask_rule  # noqa: E402
from dualtvm.train_lm import evaluate  # noqa: E402

PRECISIONS = [(32, True)] + [(bits, per_row) for bits in (16, 8, 4, 2, 1) for per_row in (True, False)]
"""Table 6's W_LL precisions, each with per-row scales (the library's default) and one scale for the whole tensor."""


def precision_variant(bits: int, per_row: bool) -> str:
    """A precision row's variant: ``int8``, ``int8 per-tensor``, ``fp32``."""
    return "fp32" if bits == 32 else f"int{bits}" + ("" if per_row else " per-tensor")


PARTS = ("ratios", "allocation", "search", "eps", "k", "precision", "resilience")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train_lm.py checkpoint")
    p.add_argument("--model-name", required=True, help="e.g. ptb-lstm-750")
    p.add_argument("--corpus", default="ptb", help="ptb or wikitext-2")
    add_data_dir_option(p)
    p.add_argument("--ratios", type=ratio_list, default="0.1,0.3,0.5,0.7,0.9",
                   help="comma-separated insensitive ratios evaluated")
    p.add_argument("--parts", type=choice_list(PARTS, what="parts"), default=",".join(PARTS),
                   help="which tables: ratios (2/3), allocation (per-gate, beyond the paper), search (largest ratio "
                        "within +1 %% PPL, per-gate and uniform), eps (5), k (beyond eq. 3: k set directly), "
                        "precision (6), resilience (1)")
    p.add_argument("--noise", type=float, default=0.45, help="Table 1: error std relative to the pre-activation std")
    p.add_argument("--allocation-costs", type=choice_list(ALLOCATION_COSTS, what="allocation costs"),
                   default="loss,activation",
                   help="per-gate allocation costs (allocation, search parts): loss (diagonal-Fisher loss increase, "
                        "dualtvm.sensitivity), activation (squared activation error) and/or measured (valid loss, one "
                        "gate at a time: one evaluation per gate and grid ratio)")
    p.add_argument("--little-bits", type=int, default=8, choices=SUPPORTED_BITS,
                   help="W_LL precision of the little module (Table 6; the compiled engines run 8 and 4)")
    p.add_argument("--sigmoid-tails", default="low", choices=SIGMOID_TAILS,
                   help="sigmoid gates' insensitive outputs: low (eq. 5: near 0) or both (near 0 and near 1, beyond the "
                        "paper); rows of 'both' carry the suffix ' sigmoid-both' in their variant")
    p.add_argument("--mask-rule", default="activation", choices=MASK_RULES,
                   help="what the mask tests: activation (eq. 5 on a_LL) or contribution (φ' times the gate output's "
                        "multiplier in the new state, beyond the paper: dualtvm.contribution); rows of 'contribution' "
                        "carry the suffix ' contribution' in their variant")
    add_max_rows_option(p, 200_000)
    add_projection_option(p)
    add_k_option(p)
    p.add_argument("--eps-values", type=choice_list((0.3, 0.6, 0.7, 0.8, 0.9), float, "ε values"), default="0.3,0.7",
                   help="part eps: the ε of eq. 3 evaluated beside 0.5")
    p.add_argument("--k-values", type=positive_int_list, default="64,128,256",
                   help="part k: projected dims set directly, evaluated at 50 %% beside eq. 3's k (which ε says "
                        "nothing about for a learned projection)")
    p.add_argument("--results", default="results/lm-quality-ptb.json",
                   help="results file (one row per model, part, ratio and variant: a rerun replaces its rows)")
    a = p.parse_args(argv)
    try:
        check_mask_rule(a.mask_rule, a.sigmoid_tails)
    except ValueError as e:
        p.error(str(e))
    costs, parts = a.allocation_costs, list(a.parts)
    if a.k is not None and {"eps", "k"} & set(parts):
        p.error("--k sets k for every part; parts eps and k vary k themselves: name the others with --parts")
    if not Path(a.checkpoint).exists():
        p.error(f"checkpoint {a.checkpoint} not found: train one with scripts/train_lm.py")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    payload = load_checkpoint(a.checkpoint)
    model = model_from_checkpoint(payload).eval()
    corpus = load_lm_corpus(a.corpus, a.data_dir)
    if payload["vocab"] != corpus.dictionary.idx2word:
        raise SystemExit(f"{a.checkpoint} was trained on another vocabulary than {a.corpus}")
    if "resilience" in parts and not isinstance(model.rnn, torch.nn.LSTM):  # Table 1 is defined on LSTM gates
        if a.parts != PARTS:  # asked for, not the default's every part
            p.error("part 'resilience' (Table 1) is defined for LSTM gates; this checkpoint is a GRU")
        parts.remove("resilience")
    command = command_line(__file__, argv)
    revision = git_revision()  # of the code this run loaded: a commit made while it runs must not be named
    test = batchify(corpus.test, 10)
    base = math.exp(evaluate(model, test))
    little_cfg = LittleConfig(bits=a.little_bits, sigmoid_tails=a.sigmoid_tails, mask_rule=a.mask_rule,
                              projection=a.projection, k=a.k)
    q = setup(model, corpus, little_cfg, a.max_rows) if set(parts) - {"resilience"} else None
    paper_key = paper_model(a.model_name)
    epochs = payload["train_state"]["epoch"]

    def record(part: str, ratio: float, value: float, measured: float, **extra) -> None:
        extra["variant"] = quality_variant(part, extra["variant"], little_cfg)
        row = {"model": a.model_name, "part": part, "insensitive_ratio": ratio, "measured_ratio": round(measured, 4),
               "ppl": round(value, 3), "base_ppl": round(base, 3), "delta_ppl_pct": round(100 * (value / base - 1), 3),
               "big_epochs": epochs, **extra}
        pb, pr = PAPER_PPL.get(paper_key, (None, {}))
        if part == "uniform" and (ratio == 0 and pb or a.little_bits == 8 and a.sigmoid_tails == "low"
                                                  and a.mask_rule == "activation" and a.projection == "sparse" and a.k is None
                                                  and ratio in pr):
            # the paper's are INT8 on eq. 5
            row["paper_ppl"], row["paper_base_ppl"] = pr.get(ratio, pb), pb
        row["command"], row["git"] = command, revision
        update_rows(a.results, Path(a.results).stem, row, key=("model", "part", "insensitive_ratio", "variant"),
                    command="bash scripts/reproduce_lm_quality.sh (each row also names its own command)")
        print(row)

    record("uniform", 0.0, base, 0.0, variant="base")
    if "resilience" in parts:
        layers = big_layers(model.rnn)
        for region in REGIONS:
            noisy = [NoisyLSTMLayer(l, region, a.noise, seed=i) for i, l in enumerate(layers)]
            value = math.exp(evaluate(model, test, rnn=StackedRNN(noisy, lstm=True)))
            cos = noisy[0].stats.means()
            record("resilience", 0.5, value, 0.0, variant=f"errors in the {region} half", relative_std=a.noise,
                   cos_before=cos["before"], cos_after=cos["after"])
    if "ratios" in parts:
        for r in a.ratios:
            v, m = ppl(q, "test", r)
            record("uniform", r, v, m, variant=uniform_head(little_cfg), little_mse=_fit_mse(q))
    variants = {"activation": ("greedy-allocation", "per-gate, chosen on valid"),  # names of the first rows
                "loss": ("loss-aware-allocation", "per-gate loss-aware, chosen on valid"),
                "measured": ("measured-allocation", "per-gate measured, chosen on valid")}
    base_valid = ppl(q, "valid", 0.0)[0] if {"allocation", "search"} & set(parts) else None
    if "allocation" in parts:
        for r in (0.5, 0.6, 0.7):
            found = validated_allocations(q, r, costs)
            pick = min(found, key=lambda c: found[c][1])  # the cost the validation set picks
            for cost, (ratios, valid_ppl) in found.items():
                q.dual.set_insensitive_ratio(ratios)
                v, m = ppl(q, "test")
                record("per-gate", r, v, m, variant=variants[cost][0], gate_ratios=_rounded(q.dual.gate_ratios()),
                       valid_delta_ppl_pct=round(100 * (valid_ppl / base_valid - 1), 3), valid_pick=cost == pick)
    if "search" in parts:
        for cost in costs:
            best = largest_ratio_within(q, base_valid, 0.01, per_gate=True, cost=cost)
            q.dual.set_insensitive_ratio(allocation(q, best, cost=cost))
            v, m = ppl(q, "test")
            record("largest-within-1pct", round(best, 4), v, m, variant=variants[cost][1],
                   gate_ratios=_rounded(q.dual.gate_ratios()))
        best_u = largest_ratio_within(q, base_valid, 0.01, per_gate=False)
        v, m = ppl(q, "test", best_u)
        record("largest-within-1pct", round(best_u, 4), v, m, variant="uniform, chosen on valid")
    if "precision" in parts:
        fitted = [layer.little for layer in q.dual.layers]
        for bits, per_row in PRECISIONS:
            for i, (layer, w) in enumerate(zip(q.dual.layers, q.fp32_weights)):
                layer.little = fitted[i].requantize(bits, per_row, fp32_weight=w)
                # another precision moves a_LL: thresholds calibrated again, so every row is at the asked ratio
                calibrate(layer.little, layer.big, q.valid_samples[i], sigmoid_tails=a.sigmoid_tails,
                          mask_rule=a.mask_rule)
            v, m = ppl(q, "test", 0.5)
            from dualtvm.little import little_mse

            mse = float(np.mean([np.mean(list(little_mse(l.little, l.big, q.valid_samples[i][:20]).values()))
                                 for i, l in enumerate(q.dual.layers)]))
            size = sum(l.little.param_bytes() for l in q.dual.layers) / 1e6
            record("precision", 0.5, v, m, variant=precision_variant(bits, per_row), mse=round(mse, 5),
                   little_param_mb=round(size, 3), big_param_mb=round(sum(l.big.weight_bytes() for l in q.dual.layers) / 1e6, 2))
        for layer, little in zip(q.dual.layers, fitted):
            layer.little = little
    if "eps" in parts:
        for eps in a.eps_values:
            qe = setup(model, corpus, replace(little_cfg, eps=eps), a.max_rows)
            v, m = ppl(qe, "test", 0.5)
            record("eps", 0.5, v, m, variant=f"eps{eps}", k=qe.dual.layers[0].little.k, little_mse=_fit_mse(qe))
        record("eps", 0.5, *ppl(q, "test", 0.5), variant="eps0.5", k=q.dual.layers[0].little.k, little_mse=_fit_mse(q))
    if "k" in parts:
        eq3_k = q.dual.layers[0].little.k
        for k in sorted(set(a.k_values) | {eq3_k}):
            qk = q if k == eq3_k else setup(model, corpus, replace(little_cfg, k=k), a.max_rows)
            v, m = ppl(qk, "test", 0.5)
            record("k", 0.5, v, m, variant=f"k{k}", k=k, eq3=k == eq3_k, little_mse=_fit_mse(qk),
                   little_param_mb=round(sum(l.little.param_bytes() for l in qk.dual.layers) / 1e6, 4))
    return 0


def _fit_mse(q) -> list[dict[str, float]]:
    """Each layer's little-module MSE per gate on validation (what eq. 7 minimises), as a row records it."""
    return [{g: round(v, 5) for g, v in layer.little.fit_mse.items()} for layer in q.dual.layers]


def _rounded(gate_ratios: list[dict[str, float]]) -> list[dict[str, float]]:
    """Measured insensitive ratio per gate and layer, as a row records it."""
    return [{g: round(v, 4) for g, v in layer.items()} for layer in gate_ratios]


if __name__ == "__main__":
    raise SystemExit(main())
