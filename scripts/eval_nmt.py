#!/usr/bin/env python
"""Table 4 on Multi30k: BLEU vs insensitive ratio of the dual-module GNMT decoder, and decoding speed.

    python scripts/eval_nmt.py --checkpoint cache/multi30k-gnmt-256.best.pt --model-name multi30k-gnmt-256

quality: sacrebleu BLEU on test_2016_flickr, big model vs the PyTorch dual-module decoder at each ratio
(little modules fitted on train, thresholds calibrated on val), the references' teacher-forced perplexity
and the share of translations identical to the big model's.  speed: greedy batch-1 decoding of the
first --speed-sentences test sentences by the PyTorch model and the compiled dense and dual-module
decoders (decoder layers and output projection compiled), interleaved sentence by sentence; each dual
engine's speed-up over the dense one also per quarter of the run (``…_blocks``: the spread is the noise).
--output-ratio R adds engines "<dual engine>+out[-k<k>][-learned]" that also run the dual-module output projection
(dualtvm.output: the little module picks the logits that can win the argmax) at insensitive ratio R.
--fused-step compiles each compiled engine's whole decode step (dualtvm.gnmt_step; rows "decode_step": "fused").
--allocation loss adds engines "<dual engine>-loss-aware": each ratio spread over the decoder's layers and gates
by the loss-aware allocation (dualtvm.sensitivity).
--mask-rule contribution runs every dual engine with contribution-score masks (dualtvm.contribution; engines
"dual-contribution", "tvm-dual-contribution", …); --projection learned likewise (engines …-learned), and --k
(engines "dual-k<k>…").
Rows go to results/nmt-quality.json.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (  # noqa: E402
    HelpFormatter, add_data_dir_option, add_k_option, add_output_little_options, add_projection_option,
    add_target_option, choice_list, command_line, positive_int, ratio_list, unit_ratio)
from dualtvm.quantize import COMPILED_BITS  # noqa: E402
from dualtvm.thresholds import MASK_RULES  # noqa: E402 (no TVM behind it: threads are set before TVM is imported)

SPEED_BLOCKS = 4  # the speed rows also give each dual engine's ratio over the dense one in 4 consecutive parts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a train_nmt.py checkpoint")
    p.add_argument("--model-name", required=True, help="e.g. multi30k-gnmt-256")
    p.add_argument("--ratios", type=ratio_list, default="0.1,0.3,0.5,0.7,0.9",
                   help="comma-separated insensitive ratios of the quality part")
    p.add_argument("--beam", type=positive_int, default=1, help="beam width (1: greedy)")
    p.add_argument("--parts", type=choice_list(("quality", "speed"), what="parts"), default="quality,speed",
                   help="quality (Table 4) and/or speed (tokens/s)")
    p.add_argument("--speed-ratio", type=unit_ratio, default=0.5,
                   help="insensitive ratio of the speed part's dual-module decoders")
    p.add_argument("--speed-sentences", type=positive_int, default=300,
                   help="test sentences each backend translates in the speed part")
    p.add_argument("--little-bits", type=choice_list(COMPILED_BITS, int, "W_LL bits"), default="8",
                   help="W_LL precision(s) of the little modules, e.g. 8,4: engines dual/tvm-dual (INT8, the paper's) "
                        "and dual-int4/tvm-dual-int4")
    p.add_argument("--output-ratio", type=unit_ratio, default=None,
                   help="also run each dual engine with the dual-module output projection at this insensitive ratio "
                        "(e.g. 0.99): engines <engine>+out[-k<k>][-learned]")
    add_output_little_options(p)
    p.add_argument("--fused-step", action="store_true",
                   help="speed: the compiled engines run the whole decode step as one build (dualtvm.gnmt_step: two VM "
                        "calls per token) instead of compiled layers and projections in the PyTorch loop")
    p.add_argument("--allocation", choices=["loss"], default=None,
                   help="quality: also run each dual engine with per-layer, per-gate ratios from the loss-aware "
                        "allocation (dualtvm.sensitivity; gradients of the teacher-forced loss on validation "
                        "references): engines <engine>-loss-aware")
    p.add_argument("--allocation-batches", type=positive_int, default=5,
                   help="validation batches (of 100 references) whose loss gradients weigh the allocation")
    p.add_argument("--mask-rule", choices=MASK_RULES, default="activation",
                   help="what the decoder layers' masks test: activation (eq. 5) or contribution (beyond the paper: "
                        "dualtvm.contribution); engines of the contribution rule are named …-contribution")
    add_projection_option(p)  # engines of a learned projection are named …-learned
    add_k_option(p)
    add_target_option(p)
    p.add_argument("--threads", type=positive_int, default=None, help="TVM and PyTorch threads (default: all cores)")
    add_data_dir_option(p)
    p.add_argument("--build-dir", type=Path, default=None, help="where compiled decoders go (default: build/)")
    p.add_argument("--out", type=Path, default=Path("results/nmt-quality.json"), help="results file")
    a = p.parse_args(argv)
    parts, bits = a.parts, a.little_bits
    if not a.checkpoint.exists():
        p.error(f"checkpoint {a.checkpoint} not found: train one with scripts/train_nmt.py")
    threads = a.threads or os.cpu_count()
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    from dualtvm.bench import dual_engine
    from dualtvm.checkpoint import git_revision
    from dualtvm.data import load_multi30k
    from dualtvm.dual import measured_layer_ratio, reset_layer_stats, set_layer_ratios
    from dualtvm.nmt import (Backend, Translator, corpus_bleu, dual_output, reference_losses, reference_perplexity,
                             translate)
    from dualtvm.nmt_backends import decoder_backend, decoder_layers
    from dualtvm.nmt_speed import block_speedups, decode_speed
    from dualtvm.output import GATE, OutputConfig
    from dualtvm.results import update_rows
    from dualtvm.sensitivity import allocate, loss_gradients

    torch.set_num_threads(threads)
    revision = git_revision()  # of the code this run loaded: a commit made while it runs must not be named
    command = command_line(__file__, argv)
    tr = Translator.from_checkpoint(a.checkpoint)
    output_cfg = OutputConfig(k=a.output_k, projection=a.output_projection)
    corpus = load_multi30k(a.data_dir)
    src, refs = corpus.splits["test"]

    def save(row: dict) -> None:  # timings of another machine go beside this one's; quality is the same anywhere
        key = ("model", "part", "engine", "insensitive_ratio", "beam") + (
            ("machine", "decode_step") if row["part"] == "speed" else ())
        update_rows(a.out, "nmt-quality", {"model": a.model_name, **row, "big_epochs": tr.epochs, "command": command,
                                         "git": revision},
                    key=key,
                    command="bash scripts/reproduce_nmt.sh (each row also names its own command)")

    if "quality" in parts:
        base_hyps = translate(tr, src, a.beam, progress=True)
        base, sig = corpus_bleu(base_hyps, refs)
        base_ppl = reference_perplexity(tr, src, refs)
        save({"part": "quality", "engine": "torch", "insensitive_ratio": 0.0, "beam": a.beam, "bleu": round(base, 2),
              "base_bleu": round(base, 2), "delta_bleu": 0.0, "sacrebleu_signature": sig,
              "reference_ppl": round(base_ppl, 3), "same_as_big": 1.0})
        out = None
        if a.output_ratio is not None:
            out = dual_output(tr, corpus, a.checkpoint, output_cfg)
            out.set_insensitive_ratio(a.output_ratio)
        for b in bits:
            duals = decoder_layers(tr, corpus, "dual", a.checkpoint, little_bits=b, mask_rule=a.mask_rule,
                                   projection=a.projection, k=a.k)
            gradients = None
            if a.allocation == "loss":  # on validation references: the test set only scores
                gradients = loss_gradients([d.big for d in duals], reference_losses(
                    tr, *corpus.splits["valid"], max_batches=a.allocation_batches))
            name = dual_engine(b, "dual", a.mask_rule, a.projection, a.k)
            for r in a.ratios:
                engines = [(name, r, None)]
                if out is not None:
                    engines.append((name + "+out" + output_cfg.variant, r, out))
                if gradients is not None:
                    engines.append((name + "-loss-aware", allocate(duals, r, *gradients), None))
                for engine, setting, output in engines:
                    set_layer_ratios(duals, setting)
                    reset_layer_stats(duals + ([output] if output is not None else []))
                    hyps = translate(tr, src, a.beam, Backend(duals, output), progress=True)
                    score, sig = corpus_bleu(hyps, refs)
                    measured = measured_layer_ratio(duals)  # of the translations, before the teacher-forced pass
                    per_layer = [round(measured_layer_ratio([d]), 4) for d in duals]
                    row = {"part": "quality", "engine": engine, "insensitive_ratio": r, "beam": a.beam,
                           "measured_ratio": round(measured, 4), "measured_ratio_per_layer": per_layer}
                    if output is not None:
                        row.update(output_ratio=a.output_ratio, output_measured_ratio=round(output.stats.ratio(GATE), 4))
                    ppl = reference_perplexity(tr, src, refs, duals, output=output)
                    same = sum(h == g for h, g in zip(hyps, base_hyps)) / len(hyps)
                    print(f"{engine} ratio {r:.2f}: BLEU {score:.2f} (base {base:.2f}), reference PPL {ppl:.3f} "
                          f"(base {base_ppl:.3f}), {same:.1%} translations as the big model's, measured {measured:.3f}")
                    save({**row, "bleu": round(score, 2), "base_bleu": round(base, 2),
                          "delta_bleu": round(score - base, 2), "sacrebleu_signature": sig,
                          "reference_ppl": round(ppl, 3), "delta_reference_ppl_pct": round(100 * (ppl / base_ppl - 1), 3),
                          "same_as_big": round(same, 4)})
    if "speed" in parts:
        n = a.speed_sentences
        fused = {"fused_step": a.fused_step}
        backends = {"torch": None, "tvm-dense": decoder_backend(tr, corpus, "tvm-dense", a.checkpoint, a.target,
                                                               build_root=a.build_dir, **fused)}
        for b in bits:
            name = dual_engine(b, mask_rule=a.mask_rule, projection=a.projection, k=a.k)
            little = {"mask_rule": a.mask_rule, "projection": a.projection, "k": a.k}
            backends[name] = decoder_backend(tr, corpus, "tvm-dual", a.checkpoint, a.target, a.speed_ratio,
                                             a.build_dir, b, **little, **fused)
            if a.output_ratio is not None:
                backends[name + "+out" + output_cfg.variant] = decoder_backend(
                    tr, corpus, "tvm-dual", a.checkpoint, a.target, a.speed_ratio, a.build_dir, b, a.output_ratio,
                    **little, **fused, output_little=output_cfg)
        duals = [e for e in backends if e.startswith("tvm-dual")]
        for e in duals:
            reset_layer_stats(backends[e].mask_layers)
        res = decode_speed(tr, src[:n], backends)
        for engine, r in res.items():
            score, sig = corpus_bleu(r["hyps"], refs[:n])
            row = {"part": "speed", "engine": engine, "insensitive_ratio": a.speed_ratio if engine in duals else 0.0,
                   "beam": 1, "sentences": n, "tokens": r["tokens"], "tokens_per_s": round(r["tokens_per_s"], 1),
                   "decoder_tokens_per_s": round(r["decoder_tokens_per_s"], 1),
                   "encoder_ms_per_sentence": round(1e3 * r["encode_s"] / n, 3), "bleu": round(score, 2),
                   "sacrebleu_signature": sig, "threads": threads,
                   "target": a.target if engine.startswith("tvm") else None}
            if r["layer_ms_per_token"] is not None:
                row["decoder_layers_ms_per_token"] = round(r["layer_ms_per_token"], 4)
                row["decoder_layer_ms_per_token_each"] = [round(t, 4) for t in r["layer_ms_per_token_each"]]
            if a.fused_step:  # the run's compiled engines ran the fused step (its torch row is this run's baseline)
                row["decode_step"] = "fused"
            if engine in duals:
                row["measured_ratio"] = round(measured_layer_ratio(backends[engine].mask_layers), 4)
                row["measured_ratio_per_layer"] = [round(measured_layer_ratio([l]), 4)
                                                   for l in backends[engine].mask_layers]
                if "+out" in engine:
                    row.update(output_ratio=a.output_ratio,
                               output_measured_ratio=round(backends[engine].mask_output.stats.ratio(GATE), 4))
                for key, loop in (("speedup_vs_tvm_dense_blocks", False), ("decoder_speedup_vs_tvm_dense_blocks", True)):
                    row[key] = [round(x, 3) for x in block_speedups(res, engine, "tvm-dense", SPEED_BLOCKS, loop)]
                for other in ("tvm-dense", "torch"):
                    row[f"speedup_vs_{other.replace('-', '_')}"] = round(r["tokens_per_s"] / res[other]["tokens_per_s"], 3)
                    row[f"decoder_speedup_vs_{other.replace('-', '_')}"] = round(
                        r["decoder_tokens_per_s"] / res[other]["decoder_tokens_per_s"], 3)
                    if r["layer_ms_per_token"] and res[other]["layer_ms_per_token"]:
                        row[f"layer_speedup_vs_{other.replace('-', '_')}"] = round(
                            res[other]["layer_ms_per_token"] / r["layer_ms_per_token"], 3)
                        row[f"layer_speedup_vs_{other.replace('-', '_')}_each"] = [
                            round(o / t, 3) for o, t in zip(res[other]["layer_ms_per_token_each"],
                                                            r["layer_ms_per_token_each"])]
            layers = f", decoder layers {r['layer_ms_per_token']:.3f} ms/token" if r["layer_ms_per_token"] else ""
            print(f"{engine:10s} {r['tokens_per_s']:8.1f} tokens/s ({r['decoder_tokens_per_s']:.1f} in the decode loop)"
                  f"{layers}, BLEU {score:.2f} on {n} sentences")
            save(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
