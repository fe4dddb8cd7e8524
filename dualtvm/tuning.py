"""MetaSchedule tuning of the kernels around their hand-written schedules.

Tasks are the row-dot kernels of a model (projection, little GEMV, masked and dense big
GEMVs); the element-wise and scan kernels have nothing to search.  The design space is
``schedules.design_space`` (sampled knobs), measured by a ``LocalRunner`` whose arguments are
*valid* (row lists are permutations, counts are half the rows — the default runner's random
int32 bits would index out of bounds), and the database is a JSON one under
``tuning_logs/<target-name>/`` that every run extends (resume = rerun).  After tuning each
kernel's best record is timed against the untuned default and the faster one is kept
(``summary.json``), so a tuned build is never slower than the default one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import types
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import REPO
from .kernels import LayerShape, layer_kernels
from .target import TargetSpec

log = logging.getLogger(__name__)

TUNABLE_PREFIXES = ("gemv", "masked_gemv", "little_gemv", "project")


def tuning_dir(target: TargetSpec, root: str | os.PathLike | None = None) -> Path:
    return Path(root) if root is not None else REPO / "tuning_logs" / target.name


@dataclass
class Task:
    name: str
    func: object  # PrimFunc
    shapes: dict

    def describe(self) -> dict:
        return {"kernel": self.name, "shapes": self.shapes}


def tasks_for(layers: list[LayerShape], dual_and_dense: bool = True) -> list[Task]:
    """Distinct tunable kernels of the given layer shapes (dual and dense builds)."""
    seen: dict[str, Task] = {}
    for s in layers:
        for dual in ((True, False) if dual_and_dense else (True,)):
            for name, f in layer_kernels(s, dual).items():
                if name.startswith(TUNABLE_PREFIXES) and name not in seen:
                    shapes = {name: "x".join(map(str, shape)) for name, _, shape in arg_specs(f)}
                    seen[name] = Task(name, f, shapes)
    return list(seen.values())


def arg_specs(func) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of each buffer argument of a PrimFunc."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    infos = ArgInfo.from_prim_func(func)
    return [(str(p.name), str(i.dtype), [int(v) for v in i.shape]) for p, i in zip(func.params, infos)]


def valid_arguments(device, args_info, alloc_repeat: int, sensitive_fraction: float = 0.5):
    """Runner arguments that a masked kernel can use: in-bounds row lists, ``count`` = that fraction of rows."""
    import tvm

    rng = np.random.default_rng(0)
    int_vectors = [int(info[2][0]) for info in args_info if info[1] == "int32" and list(info[2]) != [1]]
    n_rows = int_vectors[0] if int_vectors else 0
    n_sensitive = int(round(n_rows * sensitive_fraction))
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for _tag, dtype, shape in args_info:
            shape = [int(s) for s in shape]
            if dtype == "int32" and shape == [1]:
                arr = np.array([n_sensitive], np.int32)
            elif dtype == "int32":  # a real-looking row list: a random sorted subset of the rows, then padding
                arr = np.zeros(shape, np.int32)
                rows = np.sort(rng.choice(shape[0], n_sensitive, replace=False)).astype(np.int32)
                arr[: rows.size] = rows
            elif dtype == "int8":
                arr = rng.integers(-127, 128, size=shape, dtype=np.int8)
            else:
                arr = rng.standard_normal(shape).astype(dtype)
            args.append(tvm.runtime.tensor(arr, device))
        repeated.append(args)
    return repeated


def valid_arguments_remote(session, device, args_info, alloc_repeat: int):
    """``valid_arguments`` with the RPC runner's signature (arrays are copied to the remote device)."""
    return valid_arguments(device, args_info, alloc_repeat)


class TuningError(RuntimeError):
    """Tuning cannot start: no RPC server, unreachable tracker, a target this host cannot run."""


@dataclass(frozen=True)
class RPCTracker:
    """Where candidates are measured when tuning for a fleet: a TVM RPC tracker and a device key.

    Servers on the target boxes register with the tracker under ``key``
    (``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``); MetaSchedule's ``RPCRunner``
    measures on as many at once as are registered.  Kernels are compiled here for the target
    (cross-compiling when the target is another ISA) and linked on the server.
    """

    host: str
    port: int
    key: str
    session_timeout_s: int = 60

    @classmethod
    def parse(cls, address: str, key: str, session_timeout_s: int = 60) -> "RPCTracker":
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise TuningError(f"--rpc-tracker wants HOST:PORT, got {address!r}")
        if not key:
            raise TuningError("--rpc-key is required with --rpc-tracker (the key the RPC servers registered)")
        return cls(host, int(port), key, session_timeout_s)

    def config(self):
        from tvm.s_tir import meta_schedule as ms

        return ms.runner.RPCConfig(self.host, self.port, self.key, session_timeout_sec=self.session_timeout_s)

    def servers(self) -> int:
        """Free servers registered under the key; raises naming the tracker when there are none."""
        import socket

        try:  # a quick probe first: TVM's own connect retries for the whole session timeout
            socket.create_connection((self.host, self.port), timeout=5).close()
        except OSError as e:
            raise TuningError(f"cannot reach the RPC tracker at {self.host}:{self.port}: {e}; start one with "
                              f"python -m tvm.exec.rpc_tracker --host {self.host} --port {self.port}") from None
        try:
            n = self.config().count_num_servers(allow_missing=True)
        except (ValueError, OSError, RuntimeError) as e:
            raise TuningError(f"cannot reach the RPC tracker at {self.host}:{self.port}: {e}") from None
        if n == 0:
            raise TuningError(f"no RPC server registered under key {self.key!r} at {self.host}:{self.port}; check "
                              f"with python -m tvm.exec.query_rpc_tracker --host {self.host} --port {self.port}")
        return n

    def session(self):
        return self.config().connect_server()


def make_runner(rpc: RPCTracker | None, number: int = 3, repeat: int = 3):
    """A runner on valid arguments: local, or one worker per RPC server registered under the key."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=number, repeat=repeat)
    if rpc is None:
        return ms.runner.LocalRunner(f_alloc_argument=valid_arguments, evaluator_config=evaluator)
    return ms.runner.RPCRunner(rpc.config(), evaluator, f_alloc_argument=valid_arguments_remote,
                               max_workers=rpc.servers())


class DatabaseError(RuntimeError):
    """A tuning database file with a truncated or corrupted line."""


def check_database(path: Path, skip_bad: bool = False) -> int:
    """Validate the JSON-lines files of a database; returns the number of bad lines dropped.

    A run killed mid-write can leave a truncated last line; MetaSchedule would then fail with an
    obscure parse error.  Without ``skip_bad`` this raises naming the file and line; with it the
    bad lines are removed (the rest is kept, atomically rewritten).
    """
    dropped = 0
    for name in ("database_workload.json", "database_tuning_record.json"):
        f = path / name
        if not f.exists():
            continue
        good, bad, blank = [], 0, 0
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                blank += 1
                continue
            try:
                json.loads(line)
                good.append(line)
            except json.JSONDecodeError as e:
                if not skip_bad:
                    raise DatabaseError(f"{f}:{i}: corrupted tuning record ({e.msg}); rerun with --skip-bad-records "
                                        "to drop it and keep the rest") from None
                bad += 1
        if bad or blank:  # blank lines too: MetaSchedule segfaults on them
            _write_lines(f, good)
        dropped += bad
    return dropped


def _write_lines(path: Path, lines: list[str]) -> None:
    """Atomically rewrite a JSON-lines file.  No stray blank line when ``lines`` is empty: MetaSchedule's
    JSONDatabase segfaults reading a record file that holds only a newline."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def open_database(path: Path, skip_bad: bool = False):
    from tvm.s_tir import meta_schedule as ms

    path.mkdir(parents=True, exist_ok=True)
    dropped = check_database(path, skip_bad)
    if dropped:
        log.warning("dropped %d corrupted line(s) from the database in %s", dropped, path)
    return ms.database.JSONDatabase(str(path / "database_workload.json"), str(path / "database_tuning_record.json"),
                                    allow_missing=True)


def _mod(func):
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


@dataclass
class TuningLog:
    """A target's database and the tuned-vs-default verdicts of ``summary.json``."""

    database: object
    summary: dict


def schedule_fingerprint(log_: TuningLog | None, names) -> str:
    """sha256 of the log's verdicts (schedule used, loop-nest knobs) for the kernels ``names``: a build folder made
    under other verdicts (the log re-tuned since) is stale even when its weights match."""
    picked = {n: {k: v for k, v in (log_.summary.get(n, {}) if log_ is not None else {}).items()
                  if k in ("use", "trials") or k.endswith("_knobs")} for n in sorted(names)}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def best_from_database(log_: TuningLog | None, func, target: TargetSpec):
    """The tuned PrimFunc for ``func`` if the log has one that beat the default, else None."""
    if log_ is None:
        return None
    use = log_.summary.get(str(func.attrs["global_symbol"]), {}).get("use")
    if use in (None, "default"):  # no verdict: a record of the same workload under another name never beat anything
        return None
    from schedules import NEST_KINDS

    return nest_from_log(log_, func) if use in NEST_KINDS else metaschedule_best(log_, func, target)


def metaschedule_best(log_: TuningLog, func, target: TargetSpec):
    """The database's best MetaSchedule record for ``func``, whether or not it beat the default; else None (also
    where the log has no database: ``tune --in-step`` on a target never tuned writes only verdicts)."""
    if log_.database is None:
        return None
    sch = log_.database.query_schedule(_mod(func), target=target.to_tvm(), workload_name="main")
    if sch is None:
        return None
    return sch.mod["main"].with_attr("global_symbol", str(func.attrs["global_symbol"])).with_attr("tirx.is_scheduled", True)


def nest_from_log(log_: TuningLog, func):
    """``func``'s loop nest with the knobs its grid search chose (``<kind>_knobs`` in ``summary.json``), else None."""
    from schedules import loop_nest

    name = str(func.attrs["global_symbol"])
    nest = loop_nest(func)
    knobs = log_.summary.get(name, {}).get(f"{nest.kind}_knobs") if nest is not None else None
    if not knobs:
        return None
    from_record = getattr(nest.knobs, "from_record", None)  # a knob class whose defaults moved reads old records
    return nest.build(*nest.shape(func), from_record(knobs) if from_record else nest.knobs(**knobs), name)


def target_database(target: "str | TargetSpec", root: str | os.PathLike | None = None) -> TuningLog | None:
    """The tuning log of a target as users name it (at its default core count) under ``root`` (default: the
    committed one, ``tuning_logs/<target-name>/``), or None."""
    from .target import parse_target

    return load_database(parse_target(target).with_default_cores(), root)


def load_database(target: TargetSpec, root: str | os.PathLike | None = None) -> TuningLog | None:
    """The target's tuning log under ``root`` (default ``tuning_logs/``), or None where it has none.  A log of
    ``tune --in-step`` verdicts alone (a target never tuned by search) has a summary and no database."""
    d = tuning_dir(target, root)
    searched = (d / "database_tuning_record.json").exists()
    if not searched and not (d / "summary.json").exists():
        return None
    return TuningLog(open_database(d) if searched else None, read_summary(d / "summary.json"))


def read_summary(path: Path) -> dict:
    """The verdicts of a ``summary.json`` (empty if there is none), big GEMVs under their k-free names."""
    return k_free_names(json.loads(path.read_text())) if path.exists() else {}


OLD_BIG_NAME = re.compile(r"((?:masked_)?gemv(?:_[xh])?_(?:lstm|gru)_\d+_\d+)_k\d+")


def k_free_names(summary: dict) -> dict:
    """A summary with the big GEMVs' verdicts under their names since session 30 (no ``_k<k>``: they never
    depended on k); a log written before keeps working.  Where two ks of one shape both have a verdict, the first
    one's stands."""
    out = {}
    for name, verdict in summary.items():
        m = OLD_BIG_NAME.fullmatch(name)
        out.setdefault(m.group(1) if m else name, verdict)
    return out


FLUSH_BYTES = 64 << 20  # TVM's own flush on an RPC server (cache_flush_bytes): a copy of this many bytes
SWITCH_MARGIN = 0.05  # flushed timings vary ~5-20 % run to run on a shared machine
IN_STEP = "in-step"  # ``decided`` of a verdict chosen by timing whole steps (``step_tuning``): recheck keeps it
STEP_DECIDED = ("gather",)
"""Loop-nest kinds whose kernel-alone winners lose inside the step: the masked GEMV's (``tune.py --in-step-ranking``:
the knobs fastest alone, 16-row blocks prefetched two ahead, took 1.2× the default's step time on geometric mean over
the recorded in-step searches).  Searching and rechecking record their timings, but only ``tune.py --in-step`` moves
them off the default."""


def kept_off_the_default(func, decision: dict) -> dict:
    """``decide``'s fields for ``func``, except that a kernel of a :data:`STEP_DECIDED` kind keeps the default: the
    kernel-alone winner is recorded as ``alone_use``."""
    from schedules import loop_nest

    nest = loop_nest(func)
    if nest is None or nest.kind not in STEP_DECIDED or decision["use"] == "default":
        return decision
    log.info("%s: %s was faster alone, but kernel-alone timings of this kernel mislead inside the step: it keeps the "
             "default (tune.py --in-step decides it in the step)", func.attrs["global_symbol"], decision["use"])
    return {**decision, "use": "default", "alone_use": decision["use"]}


def with_step_verdict(previous: dict, entry: dict) -> dict:
    """A kernel's new summary ``entry`` from a search, keeping the verdict of ``previous`` where that was decided
    inside the step (its ``use``, knobs and record): a search after ``tune.py --in-step`` must not undo it."""
    if previous.get("decided") != IN_STEP:
        return entry
    kept = ("use", "decided", "in_step", *(f"{kind}_knobs" for kind in STEP_DECIDED))
    return {**entry, **{k: v for k, v in previous.items() if k in kept}}


READ_SWEEP = "dualtvm.tuning.read_sweep"  # time_evaluator f_preproc of local flushed timings


def register_read_sweep(evict=None) -> str:
    """(Re-)register the TVM global function local flushed timings call before every run (``f_preproc``):
    ``evict``, by default a read of twice the last-level cache (``bench.Evictor(read_only=True)``; pass one to
    share its buffer between timings), after which the caches hold
    only clean lines of another stream, as inside a step where the kernels before this one read other
    weights.  TVM's ``cache_flush_bytes`` instead copies one 64 MB array into another just before the
    timer starts: the kernel then runs while the copy's dirty lines are written back (the dense
    6000×3008 GEMV took 1.4 ms that way against 0.87–0.98 ms after a read sweep on a 2-core AMD EPYC),
    and 64 MB does not cover an LLC of 105 MB (a 2-core Intel VM of this project's)."""
    import tvm

    from .bench import Evictor

    evict = evict if evict is not None else Evictor(read_only=True)
    tvm.register_global_func(READ_SWEEP, lambda *args: evict(), override=True)
    return READ_SWEEP


def time_kernel(func, target: TargetSpec, repeat: int = 30, rpc: RPCTracker | None = None,
                sensitive_fraction: float = 0.5, flush_cache: bool = False, evict=None) -> float:
    """Median ms of a built kernel on valid arguments, here or on an RPC server of the fleet.

    ``flush_cache``: evict the caches before every run, as inside a decode step where the big GEMV's
    stream evicts every other kernel's weights between two calls — here by a read sweep
    (:func:`register_read_sweep`; ``evict`` reuses a sweep buffer), on an RPC server by TVM's own 64 MB copy
    (it cannot call ours).
    """
    import tvm

    lib = tvm.tirx.build(_mod(func), target=target.to_tvm())
    info = [(None, dtype, shape) for _, dtype, shape in arg_specs(func)]
    if rpc is None:
        dev = tvm.cpu()
    else:  # same path as the RPCRunner: export, upload, link there
        from tvm.support.tar import tar

        session = rpc.session()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel." + tar.output_format)
            lib.export_library(path, fcompile=tar)
            session.upload(path)
        lib = session.load_module(os.path.basename(path))
        dev = session.cpu()
    args = valid_arguments(dev, info, 1, sensitive_fraction)[0]
    if rpc is None:  # on 2 MB pages, as a built step holds them (memory.py); numpy's large arrays get them too
        from .memory import weight_tensors

        args = list(weight_tensors({str(i): a.numpy() for i, a in enumerate(args)}, dev).values())
    if flush_cache and rpc is None:
        timer = lib.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=0,
                                   f_preproc=register_read_sweep(evict))
    else:
        timer = lib.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=0,
                                   cache_flush_bytes=FLUSH_BYTES if flush_cache else 0)
    return float(np.median(timer(*args).results) * 1e3)


def compare_kernels(candidates: dict, target: TargetSpec, rpc: RPCTracker | None = None, passes: int = 2,
                    repeat: int = 30, evict=None) -> dict:
    """Median ms of each candidate PrimFunc with the caches flushed (as inside a step, where the big
    GEMV's stream evicts every other kernel's weights), best of ``passes`` interleaved passes: on a
    shared machine noise only ever adds time, and one pass let it pick a worse schedule.  Every local
    timing sweeps with one buffer (``evict``, else one allocated here)."""
    if rpc is None and evict is None:
        from .bench import Evictor

        evict = Evictor(read_only=True)
    times: dict = {}
    for p in range(passes):
        for key in (list(candidates) if p % 2 == 0 else list(candidates)[::-1]):
            t = time_kernel(candidates[key], target, repeat, rpc=rpc, flush_cache=True, evict=evict)
            times[key] = min(times.get(key, float("inf")), t)
    return times


def decide(finalists: dict, target: TargetSpec, rpc: RPCTracker | None = None, passes: int = 3) -> dict:
    """``summary.json`` fields for one kernel: the finalists ("default", MetaSchedule's "tuned", a loop
    nest's grid winner under its kind) timed again side by side, and the one the build takes.

    The finalists are re-timed in fresh interleaved passes, not judged on the search's own timings: the
    fastest of a dozen noisy measurements is biased low (the winner's curse), and a grid winner once
    replaced a default it was 30 % slower than.  A finalist replaces the default only when faster by
    more than the timing noise.
    """
    ms_ = {k: round(v, 4) for k, v in compare_kernels(finalists, target, rpc, passes).items()}  # decided on what
    use = min(ms_, key=ms_.get)  # the summary records, so a reader can check the choice from the file
    if use != "default" and ms_[use] >= ms_["default"] * (1 - SWITCH_MARGIN):
        use = "default"
    return {"tuned_ms": None, **{f"{k}_ms": v for k, v in ms_.items()}, "use": use, "cache": "flushed",
            "measured_on": "local" if rpc is None else f"rpc {rpc.key}@{rpc.host}:{rpc.port}"}


def recheck(tasks: list[Task], target: TargetSpec, root: str | os.PathLike | None = None,
            rpc: RPCTracker | None = None, progress: bool = True) -> dict:
    """Re-decide each tuned kernel's ``use`` from fresh side-by-side timings of its default, its best
    MetaSchedule record and its loop nest's recorded knobs (no search): for a log tuned on a noisier
    day, or before the confirmation pass existed."""
    from schedules import default_kernel, loop_nest
    from tqdm.auto import tqdm

    d = tuning_dir(target, root)
    log_ = load_database(target, root)
    if log_ is None:
        raise TuningError(f"no tuning database in {d}: nothing to recheck")
    if rpc is None:
        from .results import warn_if_busy

        warn_if_busy("recheck")
    in_step = [t.name for t in tasks if log_.summary.get(t.name, {}).get("decided") == IN_STEP]
    if in_step:
        log.info("kept (decided inside the step; tune.py --in-step re-decides): %s", ", ".join(in_step))
    for task in tqdm([t for t in tasks if t.name in log_.summary and t.name not in in_step], desc="rechecking",
                     disable=not progress):
        finalists = {"default": default_kernel(task.func, target.num_cores, target.required_features())}
        tuned = metaschedule_best(log_, task.func, target)
        if tuned is not None:
            finalists["tuned"] = tuned
        nest = nest_from_log(log_, task.func)
        if nest is not None:
            finalists[loop_nest(task.func).kind] = nest
        before = log_.summary[task.name].get("use")
        log_.summary[task.name].pop("alone_use", None)
        log_.summary[task.name].update(kept_off_the_default(task.func, decide(finalists, target, rpc)))
        log.info("%s: %s -> %s (%s)", task.name, before, log_.summary[task.name]["use"],
                 ", ".join(f"{k} {v} ms" for k, v in log_.summary[task.name].items() if k.endswith("_ms") and v))
    write_summary(d / "summary.json", log_.summary)
    return log_.summary


def write_summary(path: Path, summary: dict) -> None:
    """Atomically: a kill mid-write leaves the previous file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)


def records_for(db, func) -> int:
    """Measured records the database already holds for a kernel (what a killed run left)."""
    mod = _mod(func)
    return len(db.get_top_k(db.commit_workload(mod), 1 << 30)) if db.has_workload(mod) else 0


def tune(tasks: list[Task], target: TargetSpec, trials_per_task: int, root: str | os.PathLike | None = None,
         redo: bool = False, progress: bool = True, skip_bad: bool = False, rpc: RPCTracker | None = None) -> dict:
    """Tune each task with MetaSchedule + XGBoost, then keep the faster of tuned and default (for the masked GEMV the
    default stays: :func:`kept_off_the_default`; a verdict decided in the step stays: :func:`with_step_verdict`).

    Crash-safe: MetaSchedule appends each record as it is measured and ``summary.json`` is
    rewritten after every task, so a killed run loses at most the candidate in flight; a rerun
    skips finished tasks (unless ``redo``) and gives a half-done task only its remaining trials.
    """
    from schedules import default_kernel, design_space, has_design_space, loop_nest
    from tqdm.auto import tqdm
    from tvm.s_tir import meta_schedule as ms

    d = tuning_dir(target, root)
    db = open_database(d, skip_bad)
    summary_file = d / "summary.json"
    summary = read_summary(summary_file)
    tgt = target.to_tvm()
    runner = make_runner(rpc)
    if rpc is None:  # the candidates run here
        from .results import warn_if_busy

        warn_if_busy("tuning")
    for task in tqdm(tasks, desc="tuning", disable=not progress):
        done = summary.get(task.name, {}).get("trials", 0)
        if (done >= trials_per_task or (task.name in summary and not has_design_space(task.func))) and not redo:
            log.info("%s already tuned (%d trials); --redo to tune again", task.name, done)
            continue
        left = trials_per_task if redo else trials_per_task - (done or records_for(db, task.func))
        searchable = has_design_space(task.func)
        if not searchable:
            log.info("%s: no design space (intrinsics in a loop nest); timing the loop nest's grid only", task.name)
        if left > 0 and searchable:
            with tensor_intrinsics_unregistered():
                ms.tune_tir(
                    _mod(task.func), tgt, work_dir=str(d / "work"), max_trials_global=left,
                    num_trials_per_iter=min(16, left),
                    space=ms.space_generator.ScheduleFn(design_space, sch_rules=[], postprocs=[],
                                                        mutator_probs={ms.mutator.MutateTileSize(): 1.0}),
                    builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=120, f_build=build_candidate),
                    runner=runner,
                    database=db, cost_model="xgb", strategy="evolutionary", task_scheduler="round-robin",
                    num_tuning_cores=max(1, (target.num_cores or os.cpu_count() or 1)), seed=0)
        elif searchable and not redo:
            log.info("%s: the database already holds its %d trials (interrupted run)", task.name, trials_per_task)
        finalists = {"default": default_kernel(task.func, target.num_cores, target.required_features())}
        tuned = metaschedule_best(TuningLog(db, summary), task.func, target)
        if tuned is not None:
            finalists["tuned"] = tuned
        entry = {"shapes": task.shapes,
                 "trials": (done + trials_per_task if redo else trials_per_task) if searchable else 0}
        nest = loop_nest(task.func)
        if nest is not None:  # the loop nest's knob grid; its winner joins MetaSchedule's best as a finalist
            shape = nest.shape(task.func)
            grid = {kn: nest.build(*shape, kn) for kn in nest.knobs.for_target(target.num_cores, target.required_features()).space()}
            grid_ms = compare_kernels(grid, target, rpc)
            best = min(grid_ms, key=grid_ms.get)
            finalists[nest.kind] = grid[best]
            entry[f"{nest.kind}_knobs"] = asdict(best)
        decision = kept_off_the_default(task.func, decide(finalists, target, rpc))
        summary[task.name] = with_step_verdict(summary.get(task.name, {}), {**entry, **decision})
        write_summary(summary_file, summary)  # after every task, atomically: a kill loses nothing done
    prune_records(d)
    return summary


@contextmanager
def tensor_intrinsics_unregistered():
    """While MetaSchedule tunes, a stand-in answers ``TuneContext``'s ``import tvm.s_tir.tensor_intrin``.

    That import (its cost: ``build_candidate``) serves the schedule rules that tensorize; our design spaces pass
    none (``sch_rules=[]``) and tensorize nothing. A real import before or after is untouched: the stand-in is used
    only when the module is not loaded yet, and removed.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    stand_in = sys.modules[name] = types.ModuleType(name)
    try:
        yield
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]


def build_candidate(mod, target, _params=None):
    """MetaSchedule's ``default_build`` without its ``import tvm.s_tir.tensor_intrin``.

    That import registers every backend's tensorize intrinsics (44 s on an AMD EPYC, CUDA's 28 s of it) and the
    builder pays it in a fresh worker for every batch of candidates; our design spaces tensorize nothing.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def prune_records(d: Path, keep: int = 4) -> int:
    """Keep the ``keep`` fastest records per workload (what builds and later searches need); returns lines kept."""
    path = d / "database_tuning_record.json"
    if not path.exists():
        return 0
    by_workload: dict[int, list[tuple[float, str]]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        secs = rec[1][1] or [float("inf")]
        by_workload.setdefault(rec[0], []).append((sum(secs) / len(secs), line))
    kept = [line for recs in by_workload.values() for _, line in sorted(recs, key=lambda r: r[0])[:keep]]
    _write_lines(path, kept)
    return len(kept)
