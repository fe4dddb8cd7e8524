"""Results files in the shared format (``results/<experiment>.json``): never typed by hand."""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterable

from .checkpoint import git_revision
from .target import cpuinfo_field, host_target

log = logging.getLogger(__name__)


def machine_description() -> str:
    """'<CPU model> (<host -mcpu>), <n> cores': a KVM guest names a Zen 3 and a Zen 4 both 'AMD EPYC', and rows
    keyed by machine must not replace another CPU's (rows written before session 39 carry no -mcpu)."""
    cpu = cpuinfo_field("model name") or platform.processor() or platform.machine()
    mcpu = host_target().mcpu
    return f"{cpu}{f' ({mcpu})' if mcpu else ''}, {os.cpu_count()} cores"


def busy_processes(interval_s: float = 0.5, threshold: float = 20.0, ignore: set[int] | None = None) -> list[str]:
    """Other processes using more than ``threshold`` % of a core over ``interval_s`` seconds.

    Timings on this 2-core machine are only comparable side by side; a background trainer or tuner
    turns a kernel's 0.09 ms into 0.25 ms and has made tuning keep the slower schedule.  ``ignore``
    defaults to this process and its children (MetaSchedule's builder workers, for example).
    """
    import psutil

    if ignore is None:
        me = psutil.Process()
        ignore = {me.pid} | {c.pid for c in me.children(recursive=True)}
    procs = [p for p in psutil.process_iter(["cmdline", "name"]) if p.pid not in ignore]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(interval_s)
    busy = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct > threshold:
            cmd = " ".join(p.info.get("cmdline") or []) or p.info.get("name") or "?"
            busy.append(f"pid {p.pid} ({cmd[:70]}) {pct:.0f}%")
    return busy


def warn_if_busy(what: str) -> list[str]:
    """Log a warning naming the processes that would disturb the timings of ``what``; returns them."""
    busy = busy_processes()
    if busy:
        log.warning("%s: other processes are using the CPU, timings will be noisy (pause them, or compare only "
                    "side-by-side ratios): %s", what, "; ".join(busy))
    return busy


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("tvm", "torch", "numpy", "onnxruntime", "openvino"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional peers
            pass
    return out


def short_machine(machine: str) -> str:
    """'Intel(R) Xeon(R) Processor, 2 cores' → 'Intel Xeon, 2 cores': for table headings and plot titles."""
    for noise in ("(R)", "(TM)", " Processor", " CPU"):
        machine = machine.replace(noise, "")
    return " ".join(machine.split())


def latest_machine(rows: list[dict[str, Any]]) -> str | None:
    """The machine of the latest run: the last row's (runs append their rows), None without rows or a name."""
    return rows[-1].get("machine") if rows else None


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a results file, each naming its ``machine`` and ``git`` revision (rows written before rows
    carried them take their file's): sessions land on different machines, and timings of two must not replace
    each other; the file's revision is its latest run's."""
    path = Path(path)
    return doc_rows(json.loads(path.read_text())) if path.exists() else []


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """A results document with its rows whole (:func:`doc_rows`): what every reader of a results file works on."""
    doc = json.loads(Path(path).read_text())
    return {**{k: v for k, v in doc.items() if k != "runs"}, "rows": doc_rows(doc)}


def doc_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`read_rows` of a results document already read: each row with the fields of its run (``runs``) put
    back, as :func:`write_results` was given it."""
    runs = doc.get("runs", [])
    rows = [{**runs[r["run"]], **{k: v for k, v in r.items() if k != "run"}} if "run" in r else r
            for r in doc["rows"]]
    return [{**r, "machine": r.get("machine", doc.get("machine")), "git": r.get("git", doc.get("git"))}
            for r in rows]


def _runs_table(rows: list[dict[str, Any]], run_fields: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """``rows`` without their ``run_fields``, each naming by index (``run``) the entry of the returned runs table
    that holds them: one entry per distinct set of those fields, in the order rows first use it."""
    runs: dict[str, int] = {}
    table, slim = [], []
    for r in rows:
        shared = {k: r[k] for k in run_fields if k in r}
        index = runs.setdefault(json.dumps(shared, sort_keys=True), len(runs))
        if index == len(table):
            table.append(shared)
        slim.append({"run": index, **{k: v for k, v in r.items() if k not in shared}})
    return table, slim


def _dumps(doc: dict[str, Any]) -> str:
    """The document as JSON, one line per row and per run: a rerun's diff shows the rows it replaced (indented,
    a latency row with its nested fields took ~50 lines)."""
    def block(key: str, value: Any) -> str:
        if key in ("runs", "rows") and value:
            return f"  {json.dumps(key)}: [\n" + ",\n".join(f"    {json.dumps(v)}" for v in value) + "\n  ]"
        return f"  {json.dumps(key)}: " + json.dumps(value, indent=2).replace("\n", "\n  ")

    return "{\n" + ",\n".join(block(k, v) for k, v in doc.items()) + "\n}\n"


def write_results(path: str | os.PathLike, experiment: str, rows: list[dict[str, Any]], command: str,
                  run_fields: Iterable[str] = (), **extra: Any) -> Path:
    """Write ``results/<experiment>.json``; its ``machine`` lists the rows' machines where rows name theirs.

    ``run_fields`` — what one run gives all its rows (command, revision, machine, weights) — are stored once per
    run in the file's ``runs`` table, rows naming theirs by index: repeated in every latency row they were ~40 %
    of a file over 2 MB.  :func:`doc_rows` (and :func:`read_rows`, :func:`load_results`) put them back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    machines = list(dict.fromkeys(r["machine"] for r in rows if r.get("machine")))
    doc = {"experiment": experiment, "command": command, "git": git_revision(),
           "machine": "; ".join(machines) if machines else machine_description(), "versions": versions(), **extra}
    run_fields = tuple(run_fields)
    if run_fields:
        doc["runs"], rows = _runs_table(rows, run_fields)
    doc["rows"] = rows
    tmp = path.with_suffix(".tmp")
    tmp.write_text(_dumps(doc))
    os.replace(tmp, path)
    return path


def update_rows(path: str | os.PathLike, experiment: str, row: dict[str, Any], key: Iterable[str],
                command: str) -> Path:
    """Replace the row with the same ``key`` fields (or append): lets independent runs share one file."""
    return merge_rows(path, experiment, [row], key, command)


def record_baseline(path: str | os.PathLike, row: dict[str, Any], revision: str) -> Path:
    """A trained (or pruned) model's row in the baselines file, replacing the row of the same ``model``; ``revision``
    is the code's at the run's start (a long run must not name a commit made while it ran)."""
    return update_rows(path, "baselines", {**row, "git": revision}, key=("model",), command="see each row's command")


def merge_rows(path: str | os.PathLike, experiment: str, rows: list[dict[str, Any]], key: Iterable[str],
               command: str, run_fields: Iterable[str] = (), **extra: Any) -> Path:
    """Write ``rows`` into a results file, replacing the old rows that match one of them on every ``key`` field.

    Rows are stamped with this ``machine`` and ``git`` revision unless they carry their own (a long run names
    the revision it started from, not a commit made while it ran); put ``"machine"`` in ``key`` for timings, so
    that a run on another machine adds its rows beside the first one's instead of replacing them.
    ``run_fields``: as :func:`write_results`.
    Runs writing the same file at once (two evaluations in the background) take turns on a lock file, so
    neither drops the other's rows between its read and its write.
    """
    import fcntl

    path = Path(path)
    key = tuple(key)
    here = {"machine": machine_description(), "git": git_revision()}
    rows = [{**r, **{k: r.get(k) or v for k, v in here.items()}} for r in rows]
    new = {tuple(r.get(k) for k in key) for r in rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        kept = [r for r in read_rows(path) if tuple(r.get(k) for k in key) not in new]
        return write_results(path, experiment, kept + rows, command, run_fields, **extra)
