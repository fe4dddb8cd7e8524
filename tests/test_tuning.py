"""Tuning a fleet over TVM's RPC tracker, and tuning that survives SIGINT and SIGKILL."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dualtvm.tuning import RPCTracker, TuningError

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TVM_NUM_THREADS": "1"}
TUNE = [sys.executable, "scripts/tune.py", "--model", "tiny-lstm", "--trials", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def fleet():
    """A tracker and two RPC servers on 127.0.0.1, registered under key 'tiny'."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                               str(port), "--port-end", str(port + 1)], env=ENV, start_new_session=True)]
    tracker = RPCTracker("127.0.0.1", port, "tiny", session_timeout_s=30)
    try:
        wait_for(lambda: _reachable(port), 30, "the tracker")
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker",
                                           f"127.0.0.1:{port}", "--key", "tiny", "--host", "127.0.0.1",
                                           "--port", str(free_port()), "--port-end", "65000"], env=ENV,
                                          start_new_session=True))
        wait_for(lambda: _servers(tracker) == 2, 60, "two RPC servers to register")
        yield tracker
    finally:  # each serves from a PopenWorker child that outlives a terminated parent: end the whole group
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(10)


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _servers(tracker: RPCTracker) -> int:
    try:
        return tracker.servers()
    except TuningError:
        return 0


def test_tune_through_rpc_tracker(fleet, tmp_path):
    logs = tmp_path / "logs"
    res = subprocess.run(TUNE + ["--tasks", "masked_gemv", "--logs", str(logs), "--rpc-tracker",
                                 f"127.0.0.1:{fleet.port}", "--rpc-key", "tiny"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "measuring on 2 RPC server(s) under key 'tiny'" in res.stdout
    records = [json.loads(line) for line in (logs / "database_tuning_record.json").read_text().splitlines()]
    assert records and all(r[1][1] and min(r[1][1]) < 1.0 for r in records)  # real run times, not failures
    (entry,) = json.loads((logs / "summary.json").read_text()).values()
    assert entry["measured_on"] == f"rpc tiny@127.0.0.1:{fleet.port}" and entry["default_ms"] > 0


def test_rpc_errors_name_the_tracker(fleet):
    with pytest.raises(TuningError, match="no RPC server registered under key 'other'"):
        RPCTracker("127.0.0.1", fleet.port, "other").servers()
    nobody = free_port()
    with pytest.raises(TuningError, match=f"cannot reach the RPC tracker at 127.0.0.1:{nobody}"):
        RPCTracker("127.0.0.1", nobody, "tiny").servers()
    with pytest.raises(TuningError, match="--rpc-tracker wants HOST:PORT, got 'localhost'"):
        RPCTracker.parse("localhost", "tiny")


def _records(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _run_until_new_record(cmd: list[str], records: Path, sig: int) -> tuple[list[str], subprocess.CompletedProcess]:
    """Start tuning, send ``sig`` as soon as a new record is on disk; returns the records seen then."""
    start = len(_records(records))
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(_records(records)) > start or proc.poll() is not None, 600, "a tuning record")
    seen = _records(records)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return seen, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_killed_tuning_resumes_without_losing_or_redoing(tmp_path):
    logs = tmp_path / "logs"
    records = logs / "database_tuning_record.json"
    # two kernels with MetaSchedule design spaces (on broadwell the INT8 little GEMV is a loop-nest grid only)
    cmd = TUNE + ["--tasks", "masked_gemv,project", "--logs", str(logs)]

    seen_int, interrupted = _run_until_new_record(cmd, records, signal.SIGINT)
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    assert f"interrupted: every record measured so far is in {logs}" in interrupted.stderr
    seen_kill, killed = _run_until_new_record(cmd, records, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL

    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    final = _records(records)
    assert set(seen_int) <= set(seen_kill) <= set(final), "a record written before a kill was lost"
    per_kernel = Counter(json.loads(line)[0] for line in final)
    assert len(per_kernel) == 2 and all(n <= 2 for n in per_kernel.values()), f"trials were redone: {per_kernel}"
    summary = json.loads((logs / "summary.json").read_text())
    assert len(summary) == 2 and all(s["trials"] == 2 for s in summary.values())


def test_flushed_timings_read_a_sweep_before_every_run(monkeypatch):
    """Locally a flushed timing reads a sweep (clean lines, as in a step) before every run, through
    time_evaluator's f_preproc — not TVM's 64 MB copy, whose write-backs slowed the kernel it timed."""
    from dualtvm import bench
    from dualtvm.kernels import gemv
    from dualtvm.target import parse_target
    from dualtvm.tuning import compare_kernels, time_kernel
    from schedules import default_kernel

    sweeps, buffers = [], []

    class Counting(bench.Evictor):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            buffers.append(self)

        def __call__(self) -> None:
            sweeps.append(self.read_only)
            super().__call__()

    monkeypatch.setattr(bench, "Evictor", Counting)
    monkeypatch.setattr(bench, "evict_bytes", lambda llc_bytes=None: 1 << 20)
    f = default_kernel(gemv(64, 64), 1)
    target = parse_target("llvm -mcpu=broadwell -num-cores 1")
    assert time_kernel(f, target, repeat=5, flush_cache=True) > 0
    assert sweeps == [True] * 5
    sweeps.clear()
    assert time_kernel(f, target, repeat=5) > 0 and sweeps == []  # warm: no sweep
    buffers.clear()
    compare_kernels({"a": f, "b": f}, target, passes=2, repeat=3)
    assert len(sweeps) == 2 * 2 * 3 and len(buffers) == 1  # every run swept, by one shared buffer


def test_kernel_table_rows_for_every_kernel():
    """Issue #4's table: every kernel of an LSTM layer's two steps, timed, with a numpy/torch reference;
    INT8 and INT4 shapes share their big kernels, which get one row."""
    from dualtvm.kernel_table import kernel_table
    from dualtvm.kernels import LayerShape, layer_kernels
    from dualtvm.target import parse_target

    s8, s4 = LayerShape("LSTM", 48, 48, 40, 8), LayerShape("LSTM", 48, 48, 40, 4)
    rows = kernel_table([s8, s4], parse_target("llvm -mcpu=broadwell -num-cores 2"), None, repeat=2)
    names = [n for s in (s8, s4) for dual in (True, False) for n in layer_kernels(s, dual)]
    assert [r.kernel for r in rows] == list(dict.fromkeys(names))
    assert len(rows) < len(names) and any(r.kernel.endswith("_w4") for r in rows)
    for r in rows:
        assert r.default_ms > 0 and r.metaschedule_ms is None and r.nest_ms is None and r.use == "no log"
        assert (r.numpy_ms is None) == r.kernel.startswith("concat") and (r.torch_ms is None) == (r.numpy_ms is None)


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory):
    """tiny-lstm's masked GEMV tuned (2 trials + the gather grid) into a fresh database."""
    logs = tmp_path_factory.mktemp("tiny-log") / "logs"
    tuned = subprocess.run(TUNE + ["--tasks", "masked_gemv", "--logs", str(logs)], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    return logs


def test_kernel_table_times_every_candidate_of_a_tuning_log(tiny_log):
    """With a tuning log: the MetaSchedule record and the loop nest's grid choice are timed whether or not kept."""
    from dualtvm.kernel_table import kernel_table
    from dualtvm.kernels import LayerShape
    from dualtvm.registry import model_config
    from dualtvm.target import parse_target
    from dualtvm.tuning import load_database

    logs = tiny_log
    target = parse_target("llvm -mcpu=broadwell -num-cores 2")
    mc = model_config("tiny-lstm")
    shape = LayerShape(mc.rnn_type, mc.hidden, mc.input_size, mc.little_dim(0.5))
    rows = {r.kernel.split("_")[0] + "_" + r.kernel.split("_")[1]: r
            for r in kernel_table([shape], target, load_database(target, str(logs)), repeat=2)}
    (name, entry), = json.loads((logs / "summary.json").read_text()).items()
    masked = rows["masked_gemv"]
    assert masked.kernel == name and masked.use == entry["use"]
    assert masked.metaschedule_ms > 0 and masked.nest_ms > 0  # both candidates re-timed beside the default
    assert rows["little_gemv"].metaschedule_ms is None and rows["little_gemv"].use == "default"  # not tuned


def test_int4_little_gemv_is_tuned_as_a_loop_nest_grid(tmp_path):
    """The INT4 little GEMV has no MetaSchedule design space (intrinsics): tune.py times its loop-nest grid,
    records no trials, keeps the result on a rerun, and build.py then uses it."""
    logs = tmp_path / "logs"
    cmd = TUNE + ["--little-bits", "4", "--tasks", "little_gemv", "--logs", str(logs)]
    first = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "no design space" in first.stderr
    (name, entry), = json.loads((logs / "summary.json").read_text()).items()
    assert name.endswith("_w4") and entry["trials"] == 0 and entry["tuned_ms"] is None
    assert entry["stream-int4_ms"] > 0 and set(entry["stream-int4_knobs"]) >= {"groups", "rows", "lanes", "vnni"}
    again = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already tuned" in again.stderr
    from dualtvm.build import BuildConfig, build_model

    r = build_model(BuildConfig(model="tiny-lstm", out=str(tmp_path / "b"), tuning_logs=str(logs), verify=True, steps=5,
                                little_bits=4))
    assert r["verified"] is True and r["little_bits"] == 4


def test_big_gemv_verdicts_hold_at_every_k_and_no_verdict_builds_the_default(tiny_log):
    """The big GEMVs never depend on k: a build at another ε finds their verdicts (logs written before session 30
    name them with _k<k> and still load); a kernel without a verdict is not given the database's record of the same
    workload (it had lost to the loop nest: session 30's first eps-0.9 build ran its masked GEMV on it)."""
    from dualtvm.kernels import LayerShape, layer_kernels
    from dualtvm.target import parse_target
    from dualtvm.tuning import TuningLog, best_from_database, k_free_names, load_database

    names = [set(layer_kernels(LayerShape("LSTM", 48, 48, k))) for k in (16, 32)]
    shared = names[0] & names[1]
    assert {"masked_gemv_lstm_48_48", "concat_lstm_48_48", "mask_lstm_48_48"} <= shared
    assert not any(n.startswith(("project", "little_gemv")) for n in shared)  # these differ with k
    old = {"masked_gemv_lstm_48_48_k16": {"use": "gather"}, "gemv_x_gru_8_8_k9": {"use": "default"},
           "project_lstm_48_48_k16": {"use": "stream-project"}}
    assert k_free_names(old) == {"masked_gemv_lstm_48_48": {"use": "gather"}, "gemv_x_gru_8_8": {"use": "default"},
                                 "project_lstm_48_48_k16": {"use": "stream-project"}}
    target = parse_target("llvm -mcpu=broadwell -num-cores 2")
    log_ = load_database(target, tiny_log)
    (name, verdict), = log_.summary.items()
    assert "_k" not in name
    func = layer_kernels(LayerShape("LSTM", 48, 48, 16))[name]
    assert best_from_database(TuningLog(log_.database, {}), func, target) is None  # the record alone: default
    tuned = best_from_database(TuningLog(log_.database, {name: {**verdict, "use": "tuned"}}), func, target)
    assert tuned is not None and tuned.attrs["global_symbol"] == name


def test_recheck_redecides_from_side_by_side_timings(tiny_log, tmp_path):
    """--recheck searches nothing: it re-times the logged candidates and takes the default unless one beats it
    by more than the noise margin (a stale 'use' is overwritten); for the masked GEMV, whose kernel-alone winners
    lose inside the step, that winner is only recorded (``alone_use``) and the default stays."""
    from dualtvm.tuning import SWITCH_MARGIN

    summary_file = tiny_log / "summary.json"
    summary = json.loads(summary_file.read_text())
    (name, entry), = summary.items()
    records = (tiny_log / "database_tuning_record.json").read_text()
    summary[name]["use"] = "tuned" if entry["use"] != "tuned" else "default"  # a stale decision
    summary_file.write_text(json.dumps(summary))
    done = subprocess.run(TUNE + ["--tasks", "masked_gemv", "--logs", str(tiny_log), "--recheck"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (after,) = json.loads(summary_file.read_text()).values()
    assert (tiny_log / "database_tuning_record.json").read_text() == records  # no search, no new records
    timed = {k[:-3]: v for k, v in after.items() if k.endswith("_ms") and v is not None}
    assert {"default", "tuned", "gather"} <= set(timed)
    best = min(timed, key=timed.get)
    expected = best if timed[best] < timed["default"] * (1 - SWITCH_MARGIN) else "default"
    assert after.get("alone_use", "default") == expected and after["use"] == "default"
    empty = subprocess.run(TUNE + ["--logs", str(tmp_path / "none"), "--recheck"], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert empty.returncode == 2 and "nothing to recheck" in empty.stderr


def test_in_step_decides_the_masked_gemv_from_whole_steps(tiny_log, tmp_path):
    """--in-step: the model's build (made here) recompiled once per knob setting and timed as whole steps; the verdict
    switches only past the noise margin, records the step times, and a later --recheck (kernel alone) keeps it."""
    from schedules import GatherKnobs

    from dualtvm.step_tuning import gather_grid, knob_label
    from dualtvm.target import parse_target
    from dualtvm.tuning import IN_STEP, SWITCH_MARGIN

    summary_file = tiny_log / "summary.json"
    (before,) = json.loads(summary_file.read_text()).values()
    run = subprocess.run(TUNE + ["--tasks", "masked_gemv", "--logs", str(tiny_log), "--in-step", "--ratios", "0.5",
                                 "--build", str(tmp_path / "build"), "--steps", "10", "--rounds", "2",
                                 "--confirm-rounds", "4"],  # the decision's machinery, not a sure decision
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "build" / "dual" / "decoder.so").exists()
    (name, entry), = json.loads(summary_file.read_text()).items()
    assert entry["decided"] == IN_STEP and entry["in_step"]["ratios"] == [0.5]
    rel = entry["in_step"]["relative_time"]
    assert rel["current"] == 1.0 and len(rel) == 4  # the step as built + the search's 3 fastest, timed again
    search = entry["in_step"]["search_relative_time"]
    avx2 = parse_target("llvm -mcpu=broadwell").required_features()  # the log's target: 8-lane settings too
    assert len(search) == len(gather_grid(2, avx2)) + 1 and set(rel) <= set(search)  # + every knob setting
    best = min((k for k in rel if k != "current"), key=rel.get)
    if rel[best] < 1 - SWITCH_MARGIN:
        knobs = entry["gather_knobs"]
        assert entry["use"] == "gather" and best == knob_label(GatherKnobs(**knobs))
        assert "gather_ms" not in entry  # the kernel-alone time of the knobs it replaced
    else:  # within the margin: the verdict the build had stays
        assert (entry["use"], entry.get("gather_knobs")) == (before["use"], before.get("gather_knobs"))
    again = subprocess.run(TUNE + ["--tasks", "masked_gemv", "--logs", str(tiny_log), "--recheck"], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(summary_file.read_text())[name] == entry


def test_in_step_verdicts_merge_into_the_summary(tmp_path):
    """write_decisions: a switch replaces use and knobs and drops the replaced knobs' kernel-alone time; a kept verdict
    only adds the step timings; with_knobs leaves the log it copies untouched."""
    from schedules import GatherKnobs
    from dualtvm.step_tuning import with_knobs, write_decisions
    from dualtvm.target import parse_target
    from dualtvm.tuning import TuningLog

    target = parse_target("llvm -mcpu=broadwell -num-cores 2")
    old = {"use": "default", "gather_knobs": {"rows": 16}, "gather_ms": 0.5, "default_ms": 0.4}
    (tmp_path / "summary.json").write_text(json.dumps({"masked_gemv_a": old, "masked_gemv_b": old, "other": {"use": "x"}}))
    timing = {"decided": "in-step", "in_step": {"relative_time": {"current": 1.0}}}
    switched = {**timing, "use": "gather", "gather_knobs": {"rows": 4}}
    write_decisions(target, {"masked_gemv_a": switched, "masked_gemv_b": timing}, tmp_path)
    after = json.loads((tmp_path / "summary.json").read_text())
    assert after["masked_gemv_a"] == {"use": "gather", "gather_knobs": {"rows": 4}, "default_ms": 0.4, **timing}
    assert after["masked_gemv_b"] == {**old, **timing} and after["other"] == {"use": "x"}
    log_ = TuningLog(None, after)
    copy = with_knobs(log_, ["masked_gemv_b"], GatherKnobs(2, 8, 16, 0, 3))
    assert copy.summary["masked_gemv_b"]["gather_knobs"]["rows"] == 8 and copy.summary["masked_gemv_b"]["use"] == "gather"
    assert log_.summary["masked_gemv_b"]["gather_knobs"] == {"rows": 16}  # the original is not modified
    # a target never tuned: with_knobs(None, ...) gives verdicts without a database, and the kernels it has no
    # verdict for build with their defaults (session 27: the first --in-step on znver4 failed here)
    from dualtvm.kernels import gemv
    from dualtvm.tuning import best_from_database

    fresh = with_knobs(None, ["masked_gemv_b"], GatherKnobs(2, 8, 16, 0, 3))
    assert fresh.database is None and best_from_database(fresh, gemv(64, 64, "gemv_x"), target) is None
    # ... and its verdicts, written, are what a build then loads (a summary without a database was ignored before)
    from dualtvm.kernels import masked_gemv
    from dualtvm.tuning import load_database

    other = parse_target("llvm -mcpu=znver4 -num-cores 2")
    write_decisions(other, {"masked_gemv_c": {**switched, "gather_knobs": {"rows": 8, "prefetch": 2}}}, tmp_path)
    loaded = load_database(other, tmp_path)
    assert loaded.database is None and loaded.summary["masked_gemv_c"]["use"] == "gather"
    nest = best_from_database(loaded, masked_gemv(64, 64, "masked_gemv_c"), other)
    assert nest is not None and "llvm.prefetch" in nest.script()  # prefetch, as the verdict says (default: none)


def test_searches_keep_the_masked_gemv_on_the_default_and_in_step_verdicts_as_they_are():
    """A search's kernel-alone winner moves a little GEMV off its default but not a masked GEMV (it is recorded as
    ``alone_use``); and a search after ``tune.py --in-step`` keeps that verdict (it used to overwrite it)."""
    from dualtvm.kernels import little_gemv_int8, masked_gemv
    from dualtvm.tuning import IN_STEP, kept_off_the_default, with_step_verdict

    faster_alone = {"default_ms": 1.0, "gather_ms": 0.5, "use": "gather"}
    assert kept_off_the_default(masked_gemv(64, 64, "m"), faster_alone) == {**faster_alone, "use": "default",
                                                                             "alone_use": "gather"}
    little = {"default_ms": 1.0, "stream-int8_ms": 0.5, "use": "stream-int8"}
    assert kept_off_the_default(little_gemv_int8(64, 128, "l"), little) == little
    in_step = {"use": "gather", "gather_knobs": {"rows": 8}, "decided": IN_STEP, "in_step": {"model": "m"},
               "default_ms": 2.0}
    searched = {"use": "default", "gather_knobs": {"rows": 16}, "default_ms": 1.0, "trials": 2}
    assert with_step_verdict(in_step, searched) == {**in_step, "default_ms": 1.0, "trials": 2}
    assert with_step_verdict({"use": "tuned"}, searched) == searched


def test_knob_ranking_compares_every_recorded_search_with_the_reference(tmp_path, capsys):
    """``knob_ranking`` reads every target's in-step searches (one record shared by a GRU's two kernels counts once)
    and gives each setting's step time relative to the reference setting's (4 interleaved rows, which every search
    timed); ``tune.py --in-step-ranking`` prints it."""
    from dualtvm.step_tuning import knob_ranking

    def search(times):
        return {"use": "gather", "in_step": {"model": "m", "search_relative_time": {"current": 1.0, **times}}}

    one = search({"rows4-pf0-loc3": 0.8, "rows16-pf2-loc3": 1.0})
    (tmp_path / "llvm-a").mkdir()
    (tmp_path / "llvm-a" / "summary.json").write_text(json.dumps({"masked_gemv_x": one, "masked_gemv_h": one,
                                                                  "project": {"use": "default"}}))
    (tmp_path / "llvm-b").mkdir()
    (tmp_path / "llvm-b" / "summary.json").write_text(json.dumps({
        "masked_gemv": search({"rows4-pf0-loc3": 0.5, "rows16-pf2-loc3": 2.0}),
        "masked_gemv_old": search({"rows16-pf2-loc3": 1.0})}))  # a search without the reference setting: skipped
    rows = {r["knobs"]: r for r in knob_ranking(tmp_path)}
    assert rows["rows4-pf0-loc3"] == {"knobs": "rows4-pf0-loc3", "searches": 2, "geomean": 1.0, "worst": 1.0,
                                      "best": 1.0}
    slow = rows["rows16-pf2-loc3"]
    assert slow["searches"] == 2 and slow["worst"] == pytest.approx(4.0)
    assert slow["geomean"] == pytest.approx((1.25 * 4) ** 0.5)
    assert list(rows)[0] == "rows4-pf0-loc3"  # fastest first
    sys.path.insert(0, str(REPO / "scripts"))
    import tune

    assert tune.main(["--in-step-ranking", "--logs", str(tmp_path / "llvm-a")]) == 0
    assert "rows16-pf2-loc3" in capsys.readouterr().out
    assert tune.main(["--in-step-ranking", "--logs", str(tmp_path / "nothing" / "llvm-a")]) == 1


def test_knob_labels_keep_the_names_of_earlier_searches():
    """A setting's label names its split only when it is not the interleaved one, so the records of searches made
    before the knob (every committed log before session 46) still rank against the same reference setting."""
    from schedules import GatherKnobs, gather_gemv

    from dualtvm.step_tuning import RANKING_REFERENCE, gather_grid, knob_label

    assert knob_label(GatherKnobs(rows=4, split="interleave")) == RANKING_REFERENCE == "rows4-pf0-loc3"
    assert knob_label(GatherKnobs()) == "rows8-pf0-loc3-contiguous"  # the default since session 47
    assert knob_label(GatherKnobs(2, 8, 16, 0, 3, "contiguous")) == "rows8-pf0-loc3-contiguous"
    labels = [knob_label(k) for k in gather_grid(2, {"avx512f"})]
    assert len(set(labels)) == len(labels) and {knob_label(GatherKnobs()), RANKING_REFERENCE} <= set(labels)
    avx2 = [knob_label(k) for k in gather_grid(2, {"avx2", "fma"})]  # the same settings, and 8-lane ones named so
    assert avx2[: len(labels)] == labels and len(set(avx2)) == len(avx2) == len(labels) + 4
    assert "rows12-pf0-loc3-contiguous-lanes8" in avx2
    with pytest.raises(ValueError, match="split"):
        gather_gemv(8, 32, GatherKnobs(split="round-robin"))
    # a verdict written before the knob has no split: a build reads it as the interleaved nest it was decided as,
    # not as today's default
    import tvm

    from dualtvm.kernels import masked_gemv
    from dualtvm.tuning import TuningLog, nest_from_log

    legacy = {"groups": 2, "rows": 8, "lanes": 16, "prefetch": 0, "locality": 3}
    built = nest_from_log(TuningLog(None, {"masked_gemv_t": {"use": "gather", "gather_knobs": legacy}}),
                          masked_gemv(64, 32, "masked_gemv_t"))
    tvm.ir.assert_structural_equal(built, gather_gemv(64, 32, GatherKnobs(**legacy, split="interleave"), "masked_gemv_t"))
    with pytest.raises(ValueError):
        tvm.ir.assert_structural_equal(built, gather_gemv(64, 32, GatherKnobs(**legacy), "masked_gemv_t"))
    with pytest.raises(ValueError, match="zeroed places"):  # a block would read past what the mask zeroes
        gather_gemv(128, 32, GatherKnobs(rows=66))


def test_k_and_projection_reach_the_tuned_kernels_and_bench_s_build_folder(tmp_path):
    """tune.py takes --k as build.py and bench.py do (session 32: a k = 128 build's little kernels had no verdicts,
    and tune.py could not name them); --in-step looks in the folder bench.py builds, learned projection included."""
    done = subprocess.run(TUNE + ["--k", "5", "--eps", "0.3", "--projection", "learned", "--dry-run"], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    kernels = {t["kernel"] for t in json.loads(done.stdout)["tasks"]}
    little = {n for n in kernels if n.startswith(("project", "little_gemv"))}
    assert little and all(re.search(r"_k5(_|$)", n) for n in little)  # not eq. 3's k at ε = 0.3
    from dualtvm.build import BuildConfig
    from dualtvm.target import parse_target

    target = parse_target("llvm -mcpu=broadwell")
    build = BuildConfig(model="lstm-1500", k=128, projection="learned", little_bits=4, mask_rule="contribution")
    assert build.label == "lstm-1500-k128-learned"  # bench's row name
    assert build.default_out(target, tmp_path) == tmp_path / "lstm-1500-k128-learned-llvm-broadwell-w4-contribution"
    assert BuildConfig(eps=0.9).default_out(target).name == "lstm-1500-eps0.9-llvm-broadwell"


def test_tuning_leaves_the_tensor_intrinsics_module_as_it_found_it():
    """While tune_tir runs, a stand-in answers TuneContext's import of every backend's tensorize intrinsics (40 s
    here); afterwards sys.modules holds what it held before, so a later real import still loads the real module."""
    import importlib

    from dualtvm.tuning import tensor_intrinsics_unregistered

    name = "tvm.s_tir.tensor_intrin"
    before = sys.modules.get(name)
    with tensor_intrinsics_unregistered():
        inside = importlib.import_module(name)
        assert (inside is before) if before is not None else not hasattr(inside, "x86")  # the stand-in is empty
    assert sys.modules.get(name) is before
