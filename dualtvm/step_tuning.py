"""The masked big GEMV's loop-nest knobs decided inside the decode step, on real masks.

``tune`` picks every loop nest's knobs from the kernel timed alone after a cache sweep.  For the
masked GEMV that picked 16-row blocks prefetched two blocks ahead (session 22's host), which the
searches here later beat (:func:`knob_ranking`; the default is now 8-row blocks without prefetch, each thread a
contiguous share of the row list: ``schedules/gather.py``).  Alone, the
kernel has the memory system to itself; in the step it runs right after the little GEMV, with both
threads' row streams competing for the hardware prefetchers, and how many streams to keep in flight
(and whether software prefetch helps them) is a property of that mix, not of the kernel.  So the
candidates here are whole steps: the build's spec compiled once per knob setting (every other
kernel as the log decides), timed side by side with :func:`bench.measure` at a few insensitive
ratios, warm and cold.  On a shared host the neighbours' load drifts from second to second: each
setting is compared with the current step round by round (paired): three runs on the LSTM-1500 step
then all put a no-prefetch 4- or 8-row setting first (0.93–0.97× the step before), where pooled
medians had picked three different settings in four runs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .target import TargetSpec
from .tuning import IN_STEP, SWITCH_MARGIN, TuningLog, read_summary, tuning_dir, write_summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InStepConfig:
    """How the steps are timed (``bench.measure``'s steps and rounds) and at which ratios and caches."""

    ratios: tuple[float, ...] = (0.3, 0.5, 0.7)  # where the masked GEMV's share of the step matters
    caches: tuple[str, ...] = ("warm", "cold")
    steps: int = 40  # timed steps per engine and round (cold: each after a sweep)
    rounds: int = 6  # interleaved rounds of the search pass
    confirm_rounds: int = 30  # ... of the confirmation pass, which decides
    finalists: int = 3  # the search's fastest steps re-timed beside the current one


def gather_grid(num_cores: int | None, features: "frozenset[str] | set[str]" = frozenset()) -> list:
    """Candidate knobs: rows in flight per thread × software prefetch (none, 1 or 2 blocks ahead), the row list
    dealt to the threads block by block; and without prefetch, each thread a contiguous share of it (``split``:
    ``schedules/gather.py`` has what the searches made of it).  All of 16 lanes, as every search before session 49
    timed; on a target whose vector register holds fewer (``features`` without AVX-512: ``rules.vector_lanes``)
    also 8 and 12 rows without prefetch at its width, either split."""
    from schedules import GatherKnobs
    from schedules.gather import SPLITS
    from schedules.rules import vector_lanes

    g, lanes = max(1, num_cores or 2), vector_lanes(features)
    grid = ([GatherKnobs(g, rows, 16, pf, loc, "interleave") for rows in (4, 8, 16) for pf, loc in ((0, 3), (1, 2), (2, 3))]
            + [GatherKnobs(g, rows, 16, 0, 3, "contiguous") for rows in (4, 8)])
    return grid + ([GatherKnobs(g, rows, lanes, 0, 3, split) for rows in (8, 12) for split in SPLITS]
                   if lanes < 16 else [])


def masked_kernels(spec) -> list[str]:
    """Names of the masked big GEMVs of a dual-module step."""
    from .kernels import layer_kernels

    return sorted({n for s in spec.layers for n in layer_kernels(s, True) if n.startswith("masked_gemv")})


def with_knobs(log_: TuningLog | None, names: list[str], knobs) -> TuningLog:
    """A copy of ``log_`` whose verdict for each of ``names`` is the gather nest with ``knobs``."""
    summary = json.loads(json.dumps(log_.summary)) if log_ is not None else {}
    for n in names:
        summary[n] = {**summary.get(n, {}), "use": "gather", "gather_knobs": asdict(knobs)}
    return TuningLog(log_.database if log_ is not None else None, summary)


def compile_variant(current, log_: TuningLog, out: str | os.PathLike):
    """``current``'s (a loaded :class:`~dualtvm.runtime.CompiledDecoder`) dual step recompiled under ``log_``'s
    verdicts into ``out`` (its weights, little module and manifest copied: no refit); returns the loaded variant."""
    from .decoder import compile_decoder, write_libraries
    from .runtime import CompiledDecoder

    shutil.copytree(current.build_dir, out, dirs_exist_ok=True)
    write_libraries(compile_decoder(current.spec, current.target, log_), out)
    return CompiledDecoder(out)


def decide_in_step(build_dir: str | os.PathLike, target: TargetSpec, log_: TuningLog | None,
                   cfg: InStepConfig = InStepConfig(), grid: list | None = None, data_dir: str | None = None,
                   progress: bool = True) -> dict:
    """Time the build's step under every knob setting of ``grid`` (default :func:`gather_grid`) beside
    the step as built in ``build_dir`` ("current"); returns {masked kernel: summary entry update}.

    A search pass times them all; the ``cfg.finalists`` fastest and the current step are then timed
    again in a fresh, longer pass, which decides (on a shared machine two passes of the same 9 steps
    ranked them differently; only the fresh pass is free of the search's winner's curse).
    The current verdict stays unless a finalist's geometric-mean step time over ratios × caches is
    lower by more than ``tuning.SWITCH_MARGIN``.
    """
    from tqdm.auto import tqdm

    from .inputs import build_stream
    from .results import machine_description, short_machine, warn_if_busy
    from .runtime import CompiledDecoder

    current = CompiledDecoder(Path(build_dir))
    names = masked_kernels(current.spec)
    if not names:
        raise ValueError(f"{build_dir} is not a dual-module build: no masked GEMV to decide")
    grid = grid if grid is not None else gather_grid(target.num_cores, target.required_features())
    model = current.manifest["model"]
    xs, source = build_stream(model, current.spec.layers[0].input_size, cfg.steps, data_dir)
    warn_if_busy("in-step tuning")
    with tempfile.TemporaryDirectory(prefix="dualtvm-in-step-") as tmp:
        decs = {"current": current}
        for i, kn in enumerate(tqdm(grid, desc="compiling steps", disable=not progress)):
            decs[knob_label(kn)] = compile_variant(current, with_knobs(log_, names, kn), Path(tmp) / str(i))
        search = _relative_times(decs, xs, cfg, cfg.rounds, "search pass", progress)
        finalists = sorted((k for k in search if k != "current"), key=search.get)[: cfg.finalists]
        rel = _relative_times({k: decs[k] for k in ("current", *finalists)}, xs, cfg, cfg.confirm_rounds,
                              "confirmation pass", progress)
    # decide on the times as recorded (3 digits), so that the record says exactly what decided
    rel, search = ({k: round(v, 3) for k, v in times.items()} for times in (rel, search))
    best = min(finalists, key=rel.get)
    switch = rel[best] < 1 - SWITCH_MARGIN
    log.info("in-step (%s, ratios %s, %s): best %s at %.3f× the current step's time%s", source, list(cfg.ratios),
             "/".join(cfg.caches), best, rel[best], "" if switch else ": kept the current verdict")
    record = {"decided": IN_STEP, "in_step": {
        "model": model.get("name", "own RNN (compile_dual)"),  # compile_dual's builds name no registry model
        "inputs": source, "machine": short_machine(machine_description()),
        "ratios": list(cfg.ratios), "caches": list(cfg.caches),
        "relative_time": rel,  # the confirmation pass: what decided
        "search_relative_time": search}}
    if switch:
        record.update({"use": "gather", "gather_knobs": asdict(next(kn for kn in grid if knob_label(kn) == best))})
    return {n: record for n in names}


def _relative_times(decs: dict, xs: list[np.ndarray], cfg: InStepConfig, rounds: int, desc: str,
                    progress: bool) -> dict[str, float]:
    """Each step's time relative to ``decs["current"]``'s: per ratio and cache one interleaved
    :func:`bench.measure`; in every round each step's median over the current step's median of the same round
    (the neighbours' load drifts over seconds, a round takes one or two), the median of those over the
    rounds, then the geometric mean over ratios × caches."""
    from tqdm.auto import tqdm

    from .bench import Evictor, decoder_engine, measure, paired_speedup, per_round_medians

    logs: dict[str, list[float]] = {k: [] for k in decs}
    evict = Evictor() if "cold" in cfg.caches else None
    twins = {k: d.twin() for k, d in decs.items()} if evict is not None else {}  # one weight copy each, all ratios
    for ratio in tqdm(cfg.ratios, desc=desc, disable=not progress):
        for d in (*decs.values(), *twins.values()):
            d.set_insensitive_ratio(ratio)
        for cache in cfg.caches:
            cold = cache == "cold"
            engines = [decoder_engine(label, ratio, d, xs, twins[label] if cold else None) for label, d in decs.items()]
            per_round = per_round_medians(measure(engines, cfg.steps, rounds, evict if cold else False), rounds)
            for label in decs:
                logs[label].append(-math.log(paired_speedup(per_round, label, "current")[0]))
    return {k: math.exp(np.mean(v)) for k, v in logs.items()}


RANKING_REFERENCE = "rows4-pf0-loc3"  # timed by every recorded search: 4 interleaved rows, the default of sessions 40-46


def knob_ranking(logs_root: str | os.PathLike | None = None, reference: str = RANKING_REFERENCE) -> list[dict]:
    """How each masked-GEMV knob setting did in every in-step search recorded in the tuning logs under
    ``logs_root`` (default ``tuning_logs/``: every target's ``summary.json``): per setting, its step time relative
    to ``reference``'s (default :data:`RANKING_REFERENCE`, a setting every search timed, so that every search counts
    whatever the default knobs are now) in each search's search pass, as the geometric mean, worst and best over the
    searches that timed both, fastest first.  Kernels decided by one search (a GRU's two masked GEMVs) count once."""
    from .tuning import REPO

    ratios: dict[str, list[float]] = {}
    for path in sorted(Path(logs_root or REPO / "tuning_logs").glob("*/summary.json")):
        searches = {json.dumps(e["in_step"], sort_keys=True): e["in_step"] for e in read_summary(path).values()
                    if "in_step" in e}
        for record in searches.values():
            times = record["search_relative_time"]
            if reference not in times:
                continue
            for label, t in times.items():
                if label != "current":
                    ratios.setdefault(label, []).append(math.log(t / times[reference]))
    rows = [{"knobs": label, "searches": len(v), "geomean": math.exp(np.mean(v)), "worst": math.exp(max(v)),
             "best": math.exp(min(v))} for label, v in ratios.items()]
    return sorted(rows, key=lambda r: r["geomean"])


def knob_label(knobs) -> str:
    """A knob setting's name in an in-step record."""
    split = "" if knobs.split == "interleave" else f"-{knobs.split}"  # the labels of searches before the knob stand
    lanes = "" if knobs.lanes == 16 else f"-lanes{knobs.lanes}"  # ... and before 8 lanes were searched
    return f"rows{knobs.rows}-pf{knobs.prefetch}-loc{knobs.locality}{split}{lanes}"


def write_decisions(target: TargetSpec, decisions: dict, root: str | os.PathLike | None = None) -> Path:
    """Merge :func:`decide_in_step`'s entries into the target's ``summary.json``; the kernel-alone
    timings of a switched kernel's old nest knobs are dropped (they were for other knobs)."""
    path = tuning_dir(target, root) / "summary.json"
    summary = read_summary(path)
    for name, update in decisions.items():
        entry = summary.get(name, {})
        if "gather_knobs" in update:
            entry.pop("gather_ms", None)
        summary[name] = {**entry, **update}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_summary(path, summary)
    return path
