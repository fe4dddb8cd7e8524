#!/usr/bin/env python
"""Each kernel of a model's layer alone: untuned default, MetaSchedule-tuned, loop-nest grid, numpy and PyTorch.

    python scripts/kernel_table.py --model lstm-1500 --little-bits 8,4     # -> results/kernels.json
    python scripts/kernel_table.py --model lstm-1500 --k 128               # rows of model lstm-1500-k128

Caches are flushed before every run (as inside a decode step); needs the machine to itself.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (  # noqa: E402
    HelpFormatter, add_k_option, add_target_option, command_line, model_name, positive_int)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_target_option(p)
    p.add_argument("--model", type=model_name, default="lstm-1500", help="model shape (dualtvm.registry.MODELS)")
    p.add_argument("--eps", type=float, default=0.5, help="ε of eq. 3 (sets k); other than 0.5, rows are <model>-eps<ε>")
    add_k_option(p)
    p.add_argument("--little-bits", default="8,4", help="little-module kernels to include: 8, 4 or 8,4")
    p.add_argument("--repeat", type=int, default=30, help="flushed runs per kernel (median)")
    p.add_argument("--threads", type=positive_int, default=None, help="TVM threads (default: all cores)")
    p.add_argument("--logs", default=None, help="tuning database folder (default tuning_logs/<target-name>)")
    p.add_argument("--out", default="results/kernels.json", help="results file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads or os.cpu_count()))  # before tvm is imported
    from dualtvm.kernel_table import kernel_table
    from dualtvm.kernels import LayerShape
    from dualtvm.little import size_suffix
    from dualtvm.registry import model_config
    from dualtvm.checkpoint import git_revision
    from dualtvm.results import merge_rows
    from dualtvm.target import check_runs_on_host, parse_target
    from dualtvm.tuning import load_database

    revision = git_revision()  # of the code this run loaded: a commit made while it runs must not be named
    target = parse_target(a.target).with_default_cores()
    if not check_runs_on_host(target):
        print(f"cannot time {target.cli!r} on this host", file=sys.stderr)
        return 2
    mc = model_config(a.model)
    shapes = [LayerShape(mc.rnn_type, mc.hidden, mc.input_size, mc.little_dim(a.eps, a.k), int(b)).for_target(target)
              for b in a.little_bits.split(",")]
    rows = [{"model": a.model + size_suffix(a.eps, a.k), "target": target.cli, **asdict(r), "git": revision}
            for r in kernel_table(shapes, target, load_database(target, a.logs), a.repeat)]
    command = command_line(__file__, argv)
    merge_rows(a.out, "kernels", rows, ("model", "target", "machine"), command)  # other machines' rows stay
    fmt = lambda v: f"{v:8.4f}" if v is not None else f"{'-':>8s}"  # noqa: E731
    print(f"{'kernel':40s} {'default':>8s} {'MS tuned':>8s} {'nest':>8s} {'numpy':>8s} {'torch':>8s}  used / numpy does")
    for r in rows:
        print(f"{r['kernel']:40s} {fmt(r['default_ms'])} {fmt(r['metaschedule_ms'])} {fmt(r['nest_ms'])} "
              f"{fmt(r['numpy_ms'])} {fmt(r['torch_ms'])}  {r['use']} / {r['reference']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
