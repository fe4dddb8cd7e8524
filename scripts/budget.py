#!/usr/bin/env python
"""The smallest insensitive ratio whose decode step meets a latency budget, measured on this machine.

    python scripts/budget.py build/lstm-1500-llvm-broadwell --budget-ms 1.5

Times the build's dual-module step at each candidate ratio and its dense counterpart (when the build folder
has one), interleaved in one run, and prints the curve and the choice: the dense step if it meets
the budget (no quality loss), else the smallest ratio that does (quality at each ratio: Tables 2–4
of docs/results.md).  The state is fed back; the inputs are the held-out data of the checkpoint the build was made
from (the masks a service would see; Gaussian where the build has none), or ``--inputs``: 'gaussian' or your own
step inputs (a .npy array, steps × input size).
Exit status 1 when no ratio meets the budget.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (HelpFormatter, add_step_inputs_options, positive_float, positive_int,  # noqa: E402
                         ratio_list, step_inputs_or_exit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("build", help="a build folder written by scripts/build.py (holding dual/ and dense/), or its dual/")
    p.add_argument("--budget-ms", type=positive_float, required=True, help="latency budget of one decode step (median), ms")
    p.add_argument("--ratios", type=ratio_list, default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="candidate insensitive ratios")
    p.add_argument("--steps", type=positive_int, default=100, help="decode steps per round")
    p.add_argument("--rounds", type=positive_int, default=4, help="interleaved rounds (each ratio once per round)")
    p.add_argument("--cold", action="store_true",
                   help="cold weights: before every timed step sweep twice the last-level cache (at least 64 MB), "
                        "then step a copy of the build on its own weights (bench.measure)")
    add_step_inputs_options(p)
    p.add_argument("--threads", type=positive_int, default=None, help="TVM threads (default: all cores)")
    p.add_argument("--json", default=None, help="also write the measured curve and the choice here")
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be at least 2 (the first step of a round is a warm-up)")
    ratios = list(a.ratios)
    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads or os.cpu_count()))  # before tvm is imported
    from dualtvm.budget import latency_by_ratio, ratio_for_budget
    from dualtvm.manifest import BuildError
    from dualtvm.runtime import CompiledDecoder

    folder = Path(a.build)
    dual_dir = folder / "dual" if (folder / "dual").is_dir() else folder
    dense_dir = dual_dir.parent / "dense"
    try:
        dual = CompiledDecoder(dual_dir)
        dense = CompiledDecoder(dense_dir) if (dense_dir / "manifest.json").exists() else None
    except (BuildError, ValueError, OSError) as e:
        p.error(str(e))
    xs, source = step_inputs_or_exit(p, a, dual.manifest["model"], dual.spec.layers[0].input_size, a.steps)
    try:
        curve = latency_by_ratio(dual, ratios, xs, a.rounds, a.cold, dense)
    except ValueError as e:
        p.error(str(e))
    print(f"{dual_dir}: median ms per decode step over {len(xs) - 1} steps × {a.rounds} rounds, "
          f"{'cold weights' if a.cold else 'warm'} cache, steps of {source}")
    print(f"{'engine':10s} {'ratio':>6s} {'measured':>9s} {'median ms':>10s} {'IQR ms':>8s}")
    for c in curve:
        print(f"{c.engine:10s} {c.insensitive_ratio:6.2f} {c.measured_ratio:9.3f} {c.median_ms:10.3f} {c.iqr_ms:8.3f}")
    try:
        choice = ratio_for_budget(curve, a.budget_ms)
        status = 0
        if choice.engine == "tvm-dense":
            print(f"the dense step meets {a.budget_ms} ms ({choice.median_ms} ms): no quality need be given up")
        else:
            print(f"insensitive ratio {choice.insensitive_ratio} meets {a.budget_ms} ms ({choice.median_ms} ms): "
                  f"CompiledDecoder('{dual_dir}').set_insensitive_ratio({choice.insensitive_ratio})")
    except ValueError as e:
        choice, status = None, 1
        print(e, file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps({"build": str(dual_dir), "budget_ms": a.budget_ms, "cold": a.cold,
                                            "curve": [c.to_dict() for c in curve],
                                            "choice": choice.to_dict() if choice else None}, indent=2) + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
