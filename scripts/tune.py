#!/usr/bin/env python
"""Tune the kernels of a model for a target with MetaSchedule (around the hand schedules).

    python scripts/tune.py --target "llvm -mcpu=broadwell"              # default model: lstm-1500
    python scripts/tune.py --target "llvm -mcpu=broadwell" --dry-run    # print target + tasks, tune nothing
    python scripts/tune.py --model gnmt-1024-2048 --trials 64
    python scripts/tune.py --target "llvm -mcpu=skylake-avx512" --rpc-tracker 10.0.0.5:9190 --rpc-key skx

Records go to tuning_logs/<target-name>/ (JSON database, extended by every run: rerunning
resumes; finished tasks are skipped unless --redo; a killed task gets only its remaining trials).
--recheck re-decides, from fresh side-by-side timings and without searching, which schedule each logged
kernel's build takes.
--in-step-ranking prints how each knob setting did in every in-step search the logs record.
--in-step decides the masked big GEMV's loop-nest knobs from whole decode steps instead of the kernel alone:
the model's build (made first if missing; real masks with --checkpoint) recompiled once per knob setting and
timed side by side, warm and cold, at --ratios (dualtvm.step_tuning):

    python scripts/tune.py --in-step --checkpoint cache/ptb-lstm-1500-r2.best.pt

With --rpc-tracker the candidates are measured on the RPC servers registered under --rpc-key
(one MetaSchedule runner worker per server), compiled here for the target.  The closing table gives each kernel's
latency with the default schedule and the tuned one; builds use whichever is faster — except the masked big GEMV,
whose kernel-alone winners lose inside the step: only --in-step moves it off its default.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (  # noqa: E402
    HelpFormatter, add_k_option, add_projection_option, add_target_option, model_name, positive_int, ratio_list)
from dualtvm.quantize import COMPILED_BITS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_target_option(p)
    p.add_argument("--model", type=model_name, default="lstm-1500", help="model config name (see dualtvm.registry.MODELS)")
    p.add_argument("--eps", type=float, default=0.5, help="ε of eq. 3 (sets k)")
    add_k_option(p)
    p.add_argument("--little-bits", type=int, default=8, choices=COMPILED_BITS, help="W_LL precision of the little GEMV")
    p.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per kernel")
    p.add_argument("--tasks", default=None, help="comma-separated substrings: tune only matching kernels")
    p.add_argument("--logs", default=None, help="database folder (default tuning_logs/<target-name>)")
    p.add_argument("--redo", action="store_true", help="tune tasks again even if already tuned")
    p.add_argument("--recheck", action="store_true",
                   help="no search: re-time each logged kernel's default, tuned record and loop-nest knobs side by "
                        "side and re-decide which the build uses")
    p.add_argument("--in-step", action="store_true",
                   help="decide the masked GEMV's knobs by timing whole decode steps of the model's build (no search)")
    p.add_argument("--checkpoint", default=None, help="--in-step: trained weights (real masks on their own data)")
    p.add_argument("--decoder-layer", type=int, default=0, help="--in-step: decoder layer of a train_nmt.py checkpoint")
    p.add_argument("--build", default=None,
                   help="--in-step: build folder: one already built (build.py, or compile_dual for your own RNN) is "
                        "timed as it is; else the model is built there (default bench's folder, build/<model>"
                        "[-eps<ε>|-k<k>][-learned]-<target-name>[-w4], remade if it does not hold these weights)")
    add_projection_option(p)  # the kernels are the same for both; --in-step's build (its masks) takes it
    p.add_argument("--ratios", type=ratio_list, default="0.3,0.5,0.7", help="--in-step: insensitive ratios timed")
    p.add_argument("--data-dir", default=None, help="--in-step: data root of the checkpoint's corpus")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="--in-step: timed steps per build, round, ratio and cache (default 40; cold: each after a sweep)")
    p.add_argument("--rounds", type=positive_int, default=None,
                   help="--in-step: interleaved rounds of the search pass (default 6)")
    p.add_argument("--confirm-rounds", type=positive_int, default=None,
                   help="--in-step: rounds of the confirmation pass, which decides (default 30): fewer decide faster "
                        "and less surely")
    p.add_argument("--in-step-ranking", action="store_true",
                   help="time nothing: print how each masked-GEMV knob setting did in every in-step search the "
                        "tuning logs record (all targets), relative to 4 interleaved rows (a setting every search "
                        "timed)")
    p.add_argument("--skip-bad-records", action="store_true", help="drop corrupted database lines instead of failing")
    p.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="measure on a fleet via TVM's RPC tracker")
    p.add_argument("--rpc-key", default=None, help="device key the RPC servers registered with")
    p.add_argument("--rpc-timeout", type=int, default=60, help="seconds per RPC session")
    p.add_argument("--dry-run", action="store_true", help="print the parsed target and the tasks, then exit")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="TVM threads of the measurements (default: all cores)")
    a = p.parse_args(argv)
    if a.in_step_ranking:
        return in_step_ranking(a.logs)
    if a.in_step and (a.recheck or a.rpc_tracker):
        p.error("--in-step times whole steps on this machine: it cannot be combined with --recheck or --rpc-tracker")
    if not a.in_step and (a.checkpoint or a.build):
        p.error("--checkpoint and --build are for --in-step (tune.py times kernels on generated arguments)")
    if not a.in_step and (a.steps or a.rounds or a.confirm_rounds):
        p.error("--steps, --rounds and --confirm-rounds time --in-step's whole steps")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads or os.cpu_count()))  # before tvm is imported

    from dualtvm.kernels import LayerShape
    from dualtvm.registry import model_config
    from dualtvm.target import TargetError, check_llvm_cpu, check_runs_on_host, parse_target
    from dualtvm.tuning import RPCTracker, TuningError, recheck, tasks_for, tune, tuning_dir

    try:
        target = parse_target(a.target).with_default_cores()
        check_llvm_cpu(target)
    except TargetError as e:
        p.error(str(e))
    mc = model_config(a.model)
    k = mc.little_dim(a.eps, a.k)
    layers = [LayerShape(mc.rnn_type, mc.hidden, d, k, a.little_bits).for_target(target)
              for d in mc.input_sizes()]
    tasks = tasks_for(layers)
    if a.tasks:
        wanted = a.tasks.split(",")
        tasks = [t for t in tasks if any(w in t.name for w in wanted)]
    print(json.dumps({"target": target.to_dict(), "target_name": target.name, "model": a.model,
                      "logs": str(tuning_dir(target, a.logs)), "tasks": [t.describe() for t in tasks]}, indent=2))
    if a.dry_run:
        return 0
    try:
        rpc = RPCTracker.parse(a.rpc_tracker, a.rpc_key, a.rpc_timeout) if a.rpc_tracker else None
        if rpc is not None:
            print(f"measuring on {rpc.servers()} RPC server(s) under key {rpc.key!r} at {rpc.host}:{rpc.port}")
    except TuningError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rpc is None and not check_runs_on_host(target):
        print(f"cannot measure {target.cli!r} on this host; tune on a machine of that ISA (or over RPC)",
              file=sys.stderr)
        return 2
    def interrupted(signum, frame):
        # MetaSchedule's C++ loop swallows KeyboardInterrupt raised in its Python callbacks, so
        # stop hard: every measured record is already appended to the database (crash-safe).
        sys.stderr.write(f"\ninterrupted: every record measured so far is in {tuning_dir(target, a.logs)}; "
                         "rerun the same command to resume\n")
        sys.stderr.flush()
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    if a.in_step:
        return in_step(a, target)
    if a.recheck:
        try:
            summary = recheck(tasks, target, a.logs, rpc)
        except TuningError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        summary = tune(tasks, target, a.trials, a.logs, a.redo, skip_bad=a.skip_bad_records, rpc=rpc)
    print(f"\n{'kernel (ms, caches flushed)':44s} {'default':>9s} {'tuned':>9s} {'loop nest':>10s}  used")
    for t in tasks:
        s = summary.get(t.name, {})
        tuned = "-" if s.get("tuned_ms") is None else f"{s['tuned_ms']:.4f}"
        nest = next((f"{v:.4f}" for key, v in s.items() if key.endswith("_ms") and key not in ("default_ms", "tuned_ms")), "-")
        print(f"{t.name:44s} {s.get('default_ms', float('nan')):9.4f} {tuned:>9s} {nest:>10s}  {s.get('use', '?')}")
    return 0


def in_step_ranking(logs: str | None) -> int:
    """``--in-step-ranking``: :func:`dualtvm.step_tuning.knob_ranking` of the logs' parent folder, as a table."""
    from dualtvm.step_tuning import RANKING_REFERENCE, knob_ranking

    rows = knob_ranking(Path(logs).parent if logs else None)
    if not rows:
        print("no in-step search is recorded in these tuning logs (tune.py --in-step records them)", file=sys.stderr)
        return 1
    print(f"step time relative to {RANKING_REFERENCE}'s (timed by every search) in each recorded in-step search "
          "(search pass):")
    width = max(len("knobs"), *(len(r["knobs"]) for r in rows))
    print(f"{'knobs':{width}s} {'searches':>8s} {'geomean':>8s} {'worst':>7s} {'best':>7s}")
    for r in rows:
        print(f"{r['knobs']:{width}s} {r['searches']:8d} {r['geomean']:7.3f}× {r['worst']:6.3f}× {r['best']:6.3f}×")
    return 0


def existing_dual_build(path: str) -> Path | None:
    """The dual build already in ``--build`` (the folder ``build.py``/``compile_dual`` wrote, or its ``dual/``), else
    None.  It is timed as it is, never rebuilt over: it may be a user's own RNN, which no --model describes."""
    for folder in (Path(path) / "dual", Path(path)):
        if (folder / "manifest.json").exists():
            return folder
    return None


def in_step(a, target) -> int:
    """--in-step: the build of the model (made if needed), its masked GEMV's knobs decided inside the step."""
    from dualtvm.build import BuildConfig, build_model, built_from
    from dualtvm.manifest import BuildError
    from dualtvm.step_tuning import InStepConfig, decide_in_step, write_decisions
    from dualtvm.tuning import load_database

    build = BuildConfig(model=a.model, target=a.target, checkpoint=a.checkpoint, little_bits=a.little_bits, eps=a.eps,
                        k=a.k, decoder_layer=a.decoder_layer, data_dir=a.data_dir, tuning_logs=a.logs,
                        projection=a.projection)
    dual = existing_dual_build(a.build) if a.build else None
    if dual is None:  # bench's folder for the same model and variant (or an empty --build): made, or remade if stale
        folder = Path(a.build) if a.build else build.default_out(target)
        if not built_from(folder, build):
            build_model(replace(build, out=str(folder)))
        dual = folder / "dual"
    timing = {k: v for k, v in (("steps", a.steps), ("rounds", a.rounds), ("confirm_rounds", a.confirm_rounds)) if v}
    try:
        decisions = decide_in_step(dual, target, load_database(target, a.logs),
                                   InStepConfig(ratios=tuple(a.ratios), **timing), data_dir=a.data_dir)
    except (BuildError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = write_decisions(target, decisions, a.logs)
    for name, d in decisions.items():
        print(f"{name}: {d.get('gather_knobs', 'kept the current verdict')}")
        for label, rel in sorted(d["in_step"]["relative_time"].items(), key=lambda kv: kv[1]):
            print(f"  {label:24s} {rel:.3f}× the current step's time")
    own_logs = "" if a.logs is None else f" with database=tuning.target_database({a.target!r}, {a.logs!r})"
    print(f"verdicts written to {path}; rebuild (scripts/build.py, bench.py, compile_dual{own_logs}) to use them")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
