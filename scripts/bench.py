#!/usr/bin/env python
"""Per-step latency of the compiled dual-module decoder vs dense TVM, PyTorch and ONNX Runtime.

    python scripts/bench.py --models lstm-1500,lstm-750 --threads 2

Writes results/latency.json (shared results format), results/latency.md, results/latency.png (ms per step) and
results/latency-speedup.png (speed-ups with their quartiles, the byte bound and, where measured, the test ΔPPL).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (  # noqa: E402
    HelpFormatter, add_k_option, add_max_rows_option, add_projection_option, add_target_option, choice_list,
    command_line, model_names, positive_int, ratio_list)
from dualtvm import BUILD_FIT_ROWS  # noqa: E402
from dualtvm.quantize import COMPILED_BITS  # noqa: E402


def latency_markdown(rows: list[dict], bw: dict[str, float], threads: int) -> str:
    from dualtvm.bench import markdown_table

    commands = "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows if r.get("command")))
    return (f"Made by {commands}\n\nThis run's read bandwidth: STREAM-like on {threads} threads (PyTorch sum over 1 GB "
            f"on 2 MB pages; the reference of column 'of read bw') {bw['read_gbps']:.1f} GB/s; numpy sum, 1 thread "
            f"{bw['stream_gbps']:.1f} GB/s; batch-1 PyTorch GEMV over 1 GB {bw['gemv_gbps']:.1f} GB/s\n\n"
            + markdown_table(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--models", type=model_names, default="lstm-1500",
                   help="comma-separated model shapes (dualtvm.registry.MODELS)")
    add_target_option(p)
    p.add_argument("--ratios", type=ratio_list, default="0.1,0.3,0.5,0.7,0.9",
                   help="comma-separated insensitive ratios timed")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count(), help="threads of TVM and of every peer")
    p.add_argument("--steps", type=positive_int, default=60, help="steps per round in warm mode")
    p.add_argument("--rounds", type=positive_int, default=5,
                   help="interleaved rounds (engines alternate order); medians and quartiles over all timed steps")
    p.add_argument("--caches", type=choice_list(("warm", "cold"), what="caches"), default="warm,cold",
                   help="cold: before every timed step a sweep of twice the last-level cache (at least 64 MB), "
                        "then the engine's copy on its own weights steps untimed: weights cold, code warm")
    p.add_argument("--cold-steps", type=positive_int, default=20, help="steps per round in cold mode (each waits for a sweep)")
    p.add_argument("--checkpoint", default=None,
                   help="trained weights: a train_lm.py LM, a train_nmt.py seq2seq (see --decoder-layer) or a state_dict; "
                        "dualtvm checkpoints also give the real inputs (hence masks) the steps decode")
    p.add_argument("--decoder-layer", type=int, default=0, help="which decoder layer of a train_nmt.py checkpoint")
    p.add_argument("--little-bits", type=choice_list(COMPILED_BITS, int, "W_LL bits"), default="8",
                   help="W_LL precisions to time side by side: 8, 4 or 8,4 (INT4: tvm-dual-int4)")
    p.add_argument("--int8-float", action="store_true",
                   help="also time the INT8 little module on floats (engine tvm-dual-int8float) beside tvm-dual, which "
                        "runs it on integer codes where the target has AVX2")
    p.add_argument("--contribution", action="store_true",
                   help="also time each --little-bits module with contribution-score masks (engines "
                        "tvm-dual-contribution, tvm-dual-int4-contribution; beyond eq. 5: dualtvm.contribution)")
    p.add_argument("--eps", type=float, default=0.5, help="ε of eq. 3 (sets k); other than 0.5, rows are <model>-eps<ε>")
    add_k_option(p)
    add_projection_option(p)
    add_max_rows_option(p, BUILD_FIT_ROWS)
    p.add_argument("--out", default="results/latency",
                   help="path stem of the outputs: .json (rows merged by model, target, machine), .md, .png, "
                        "-speedup.png")
    p.add_argument("--reuse-builds", action="store_true", help="do not rebuild existing build folders")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ["TVM_NUM_THREADS"] = str(a.threads)  # before tvm is imported
    from dualtvm.bench import (LATENCY_KEY, LATENCY_RUN_FIELDS, BenchConfig, bench_model, gemv_bandwidth,
                               markdown_table, read_bandwidth, stream_bandwidth, write_plots)
    from dualtvm.checkpoint import git_revision
    from dualtvm.results import merge_rows, read_rows
    from dualtvm.target import TargetError, check_llvm_cpu, parse_target

    try:
        target = parse_target(a.target)
        check_llvm_cpu(target)
        run_target = target.cli  # "host" is recorded as the -mcpu it stands for
    except TargetError as e:
        p.error(str(e))
    cfg = BenchConfig(a.models, run_target, a.ratios, a.steps,
                      a.cold_steps, a.rounds, a.threads, a.caches, checkpoint=a.checkpoint, decoder_layer=a.decoder_layer,
                      reuse_builds=a.reuse_builds, little_bits=a.little_bits, eps=a.eps, k=a.k,
                      int8_float=a.int8_float, contribution=a.contribution, projection=a.projection,
                      max_rows=a.max_rows)
    revision = git_revision()  # of the code this run loaded: a commit made while it runs must not be named
    bw = {"stream_gbps": round(stream_bandwidth(), 1), "gemv_gbps": round(gemv_bandwidth(a.threads), 1),
          "read_gbps": round(read_bandwidth(a.threads), 1)}
    rows = []
    for m in cfg.models:
        r, _ = bench_model(m, cfg)
        rows += r
    command = command_line(__file__, argv)
    for r in rows:
        r.update(bw)
        if "achieved_gbps" in r:  # TVM rows: the share of the read bandwidth their bytes per step stream at
            r["fraction_of_read_bw"] = round(r["achieved_gbps"] / bw["read_gbps"], 3)
        r["run_target"] = run_target  # the TVM target of the run (peers' rows were measured beside it)
        r["command"], r["git"] = command, revision
    out = Path(a.out)
    merge_rows(out.with_suffix(".json"), "latency", rows, LATENCY_KEY,
               "bash scripts/reproduce_latency.sh (each row also names its own command)", LATENCY_RUN_FIELDS, **bw)
    all_rows = read_rows(out.with_suffix(".json"))
    out.with_suffix(".md").write_text(latency_markdown(all_rows, bw, a.threads))
    write_plots(all_rows, out)
    print(markdown_table(rows))
    from dualtvm import fixed_cost, goals

    for title, lines in (
            ("issue #5's goals in this run (the README's goals tables: every row, per machine):",
             goals.summary_lines(rows)),
            ("the little side's fixed cost in this run (each engine's times fitted to fixed + s · rows; the README's "
             "fixed-cost table):", fixed_cost.summary_lines(rows)),
            ("where a step's time goes at 50 % (each phase in % of the dense step, in brackets over its bytes' time at "
             "the dense rate; the big GEMV the rest of the timed step; the README's phase table):",
             fixed_cost.phase_lines(rows))):
        if lines:
            print(title, *lines, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
