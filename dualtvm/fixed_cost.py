"""Where a dual-module step's time goes between the ratios: its latency rows fitted to a fixed cost plus the big rows.

A decode step at insensitive ratio r reads the sensitive share s = 1 − r of the big rows and, whatever s is, runs
the little side (projection, little GEMV, mask, assembly, the VM's extra calls).  So one run's rows of one engine
should lie on a line, t(s) = ``fixed_ms`` + s · ``rows_ms``, where ``rows_ms`` is what streaming every row through
the masked GEMV would take (the dense step's time if it streams at the dense rate) and ``fixed_ms`` what every step
pays whatever s: the little side and, cold, the start of the big rows' stream (a step at ratio 1, which reads no big
row, times the little side alone: ``no_rows_ms``).
The byte bound of a row (``traffic.step_bytes``) counts the little side only by its bytes, ``fixed_bytes``; here it
is set beside its time at the dense step's rate (``fixed_bytes_ms``), and the fixed cost a speed-up goal leaves room
for at 50 % (``fixed_allowed_ms`` = dense / goal − rows / 2) is set beside the fitted one.  When a goal is missed
while the rows stream at the dense rate, this says by how much the little side is too slow, and whether its bytes
or its latency are to blame.  :func:`phase_costs` then splits a step by phase (Table 5's right half, measured in the
step, cold as the paper measures it): each phase's share of the dense step and how many times its bytes' time it takes.
Pure functions of the rows: nothing is measured here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .goals import LATENCY_GOALS, is_dual
from .traffic import PARTS

DENSE_ENGINE = "tvm-dense"
RUN_KEY = ("machine", "model", "weights_origin", "run_target", "cache")
"""The fields one benchmark run shares across its engines (``bench.LATENCY_KEY`` and the cache mode)."""


def run_key(row: dict) -> tuple:
    """The row's :data:`RUN_KEY` values: which run (and cache mode) it belongs to."""
    return tuple(row.get(f) for f in RUN_KEY)


MIN_RATIOS = 3  # a line through two points says nothing about how well a line fits
NO_ROWS = 1e-3  # a sensitive share below this reads no big row (a step at ratio 1)


@dataclass(frozen=True)
class FixedCostFit:
    """One engine of one run: t(s) = fixed_ms + s · rows_ms fitted by least squares over its ratios."""

    key: tuple  # RUN_KEY's values
    engine: str
    dense_ms: float
    fixed_ms: float
    rows_ms: float
    fixed_bytes_ms: float  # the little side's bytes (row list and pos included) at the dense step's rate
    max_residual_pct: float  # the largest |measured − fitted| of the rows, in % of the measured time
    ratios: int
    speedup_at_half: float | None  # the run's own paired speed-up at 50 %, where it timed 50 %
    goal: float | None  # issue #5's speed-up goal at 50 % for this model, if it has one
    no_rows_ms: float | None = None  # the step at ratio 1 (no big row read: the little side alone), where timed

    @property
    def big_start_ms(self) -> float | None:
        """What the fixed cost holds beyond the little side alone (where the run timed ratio 1): a per-step cost of
        reading any big rows at all, which the dense step pays too."""
        return None if self.no_rows_ms is None else self.fixed_ms - self.no_rows_ms

    @property
    def rows_vs_dense(self) -> float:
        """The masked GEMV's rate against the dense step's: 1.0 when the sensitive rows stream as fast as all rows."""
        return self.rows_ms / self.dense_ms

    @property
    def fixed_allowed_ms(self) -> float | None:
        """The fixed cost at which this run's rows would meet the goal at 50 % (negative: no fixed cost would)."""
        return None if self.goal is None else self.dense_ms / self.goal - self.rows_ms / 2

    @property
    def fitted_speedup_at_half(self) -> float:
        return self.dense_ms / (self.fixed_ms + self.rows_ms / 2)


def goal_at_half(row: dict) -> float | None:
    """Issue #5's speed-up goal over dense TVM at 50 % for the row's model (LSTM-1500 1.67×, GNMT layers 1.7×)."""
    probe = dict(row, engine="tvm-dual", insensitive_ratio=0.5)
    limits = [g.limit_of(probe) for g in LATENCY_GOALS if g.field == "speedup_vs_tvm_dense" and g.applies(probe)]
    return max(limits) if limits else None


def sensitive_share(row: dict) -> float:
    """The share of big rows the step read: from the masks it made (``measured_ratio``), else the asked ratio."""
    return 1.0 - row.get("measured_ratio", row["insensitive_ratio"])


def fit_run(dual_rows: list[dict], dense: dict) -> FixedCostFit:
    """The line through one engine's rows of one run (at least :data:`MIN_RATIOS` ratios that read big rows) and its
    dense row.  A row at ratio 1 reads none: it is not on the line (cold, it came out under it: the first big rows'
    start is part of the fixed cost) and is kept apart as ``no_rows_ms``."""
    no_rows = [r for r in dual_rows if sensitive_share(r) < NO_ROWS]
    dual_rows = [r for r in dual_rows if sensitive_share(r) >= NO_ROWS]
    if len(dual_rows) < MIN_RATIOS:
        raise ValueError(f"a fixed cost needs rows at {MIN_RATIOS} ratios or more, got {len(dual_rows)}")
    s = np.array([sensitive_share(r) for r in dual_rows])
    t = np.array([r["median_ms"] for r in dual_rows])
    (fixed, per_rows), *_ = np.linalg.lstsq(np.stack([np.ones_like(s), s], 1), t, rcond=None)
    residual = np.abs(t - (fixed + per_rows * s)) / t
    # bytes the step reads beyond s of the dense step's: little module, row list, pos, the bias of skipped rows
    fixed_bytes = np.median([r["bytes_per_step"] - sensitive_share(r) * dense["bytes_per_step"] for r in dual_rows])
    half = [r.get("speedup_vs_tvm_dense") for r in dual_rows if abs(r["insensitive_ratio"] - 0.5) < 1e-9]
    first = dual_rows[0]
    return FixedCostFit(
        key=run_key(first), engine=first["engine"], dense_ms=float(dense["median_ms"]),
        fixed_ms=float(fixed), rows_ms=float(per_rows),
        fixed_bytes_ms=float(fixed_bytes / dense["bytes_per_step"] * dense["median_ms"]),
        max_residual_pct=float(100 * residual.max()), ratios=len(dual_rows),
        speedup_at_half=half[0] if half else None, goal=goal_at_half(first),
        no_rows_ms=float(no_rows[0]["median_ms"]) if no_rows else None)


def fixed_cost_fits(rows: list[dict], engines: tuple[str, ...] | None = None) -> list[FixedCostFit]:
    """Every run's dual-module engines (``engines`` only, where given) fitted, in the rows' order; runs without a
    dense row or its byte count, and engines timed at fewer than :data:`MIN_RATIOS` ratios, are left out."""
    dense: dict[tuple, dict] = {}
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        key = run_key(r)
        if r["engine"] == DENSE_ENGINE:
            dense[key] = r
        elif is_dual(r) and "bytes_per_step" in r and (engines is None or r["engine"] in engines):
            runs.setdefault(key + (r["engine"],), []).append(r)
    return [fit_run(rs, dense[key[:-1]]) for key, rs in runs.items()
            if sum(sensitive_share(r) >= NO_ROWS for r in rs) >= MIN_RATIOS
            and "bytes_per_step" in dense.get(key[:-1], {})]


def goal_model(fit: FixedCostFit) -> bool:
    """A fit of a model issue #5 sets a speed-up goal for (LSTM-1500, the GNMT layers)."""
    return fit.goal is not None


def summary_lines(rows: list[dict]) -> list[str]:
    """One line per engine and cache of a run's rows: its fixed cost against its bytes' time and the goal's room."""
    lines = []
    for f in fixed_cost_fits(rows):
        room = "" if f.fixed_allowed_ms is None else f"; the goal at 50 % leaves {f.fixed_allowed_ms:.3f} ms"
        if f.no_rows_ms is not None:
            room += f"; the step reading no big row {f.no_rows_ms:.3f} ms"
        lines.append(f"{f.key[1]} {f.engine} {f.key[4]}: fixed {f.fixed_ms:.3f} ms (its bytes "
                     f"{f.fixed_bytes_ms:.3f} ms), rows at {f.rows_vs_dense:.2f}× the dense step's time{room}")
    return lines


@dataclass(frozen=True)
class PhaseCost:
    """One phase of a dual step (:data:`~dualtvm.traffic.PARTS`) in Table 5's normalisation: its time in % of its run's
    dense step, and its time over its bytes' time at the dense step's rate (the rate the fixed-cost fit uses)."""

    part: str
    ms: float
    bytes: int
    share_pct: float  # of the dense step's time
    bytes_ms: float  # its bytes at the dense step's rate

    @property
    def over_bytes(self) -> float | None:
        """How many times its bytes' time the phase takes; None for a phase that reads nothing counted."""
        return self.ms / self.bytes_ms if self.bytes_ms > 0 else None

    @property
    def label(self) -> str:
        """``share % (over_bytes×)``: how the tables and ``bench.py`` print a phase."""
        return f"{self.share_pct:.1f} %" + ("" if self.over_bytes is None else f" ({self.over_bytes:.1f}×)")


def phase_costs(dual: dict, dense: dict) -> list[PhaseCost]:
    """The phases of ``dual`` (a row with ``breakdown_ms`` and ``part_bytes``) against ``dense``, the dense row of
    its run and cache mode, as timed.  Projection, little GEMV, mask and assembly are their kernels' times inside the
    step (the breakdown's instrumented pass; a few µs of the instrument's own each); the big GEMV is the rest of the
    timed step, as in the paper's Table 5, whose parts sum to the step: the instrumented pass runs minutes before the
    timed ones and this host's streaming rate drifts between them by more than a small phase takes, so its own big
    GEMV (and dense step) would not be comparable with the timed steps.  The rest holds the VM's own work too.
    A phase far over its bytes' time is bound by latency (dependent reads, thread start, a serial scan), not bytes."""
    dense_ms = dense["median_ms"]
    rate = dense["bytes_per_step"] / dense_ms  # bytes per ms: the dense step's stream
    small = {p: dual["breakdown_ms"][p] for p in PARTS if p != "big"}
    ms = {**small, "big": dual["median_ms"] - sum(small.values())}
    return [PhaseCost(p, ms[p], dual["part_bytes"][p], 100 * ms[p] / dense_ms, dual["part_bytes"][p] / rate)
            for p in PARTS]


def phase_pairs(rows: list[dict], engines: tuple[str, ...], ratio: float = 0.5) -> list[tuple[dict, dict]]:
    """(dual row, dense row of its run and cache) for ``engines``' rows at ``ratio`` that carry a breakdown and
    each phase's bytes (rows since session 45), in the rows' order."""
    dense = {run_key(r): r for r in rows if r["engine"] == DENSE_ENGINE and "part_bytes" in r and "breakdown_ms" in r}
    return [(r, dense[run_key(r)]) for r in rows
            if r["engine"] in engines and abs(r["insensitive_ratio"] - ratio) < 1e-9 and "part_bytes" in r
            and "breakdown_ms" in r and run_key(r) in dense]


def phase_lines(rows: list[dict], ratio: float = 0.5) -> list[str]:
    """One line per dual engine and cache of a run's rows at ``ratio``: each phase's share of the dense step and, in
    brackets, its time over its bytes' time (:func:`phase_costs`)."""
    engines = tuple(dict.fromkeys(r["engine"] for r in rows if is_dual(r)))
    return [f"{d['model']} {d['engine']} {d['cache']} at {ratio:g}: "
            + ", ".join(f"{c.part} {c.label}" for c in phase_costs(d, dense))
            for d, dense in phase_pairs(rows, engines, ratio)]


def plot_latest_machine(rows: list[dict], path: str, engine: str = "tvm-dual") -> bool:
    """:func:`plot_fits` of ``engine``'s runs of the models with a goal, timed on the machine of the last row (the
    latest run's; other machines' rows stay in the README's table of fits); False, and nothing written, where none."""
    from .results import latest_machine

    machine = latest_machine(rows)
    mine = [r for r in rows if r.get("machine") == machine]
    fits = [f for f in fixed_cost_fits(mine, (engine,)) if goal_model(f)]
    if fits:
        plot_fits(mine, fits, path)
    return bool(fits)


def plot_fits(rows: list[dict], fits: list[FixedCostFit], path: str) -> None:
    """One panel per run (model, weights, target; warm and cold together): the dual step's ms against the share of
    big rows it read, the fitted line, the line its bytes allow (fixed bytes at the dense step's rate plus the rows
    at it), the dense step, and where the 50 % goal puts the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .bench import save_figure  # bench imports this module

    panels: dict[tuple, list[FixedCostFit]] = {}
    for f in fits:
        panels.setdefault((f.key[1], f.key[2], f.key[3]), []).append(f)
    cols = min(3, len(panels)) or 1
    nrows = (len(panels) + cols - 1) // cols or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4 * nrows), squeeze=False)
    s = np.linspace(0.0, 1.0, 11)
    for ax, ((model, weights, target), group) in zip(axes.flat, panels.items()):
        for f, color in zip(group, ("tab:blue", "tab:red", "tab:green", "tab:purple")):
            mine = [r for r in rows if run_key(r) == f.key and r["engine"] == f.engine]
            ax.plot([sensitive_share(r) for r in mine], [r["median_ms"] for r in mine], "o", color=color)
            ax.plot(s, f.fixed_ms + s * f.rows_ms, "-", color=color,
                    label=f"{f.key[4]}: fixed {f.fixed_ms:.3f} + s · {f.rows_ms:.3f} ms")
            ax.plot(s, f.fixed_bytes_ms + s * f.dense_ms, ":", color=color,
                    label=f"{f.key[4]}: bytes' time, fixed {f.fixed_bytes_ms:.3f} ms")
            ax.plot([1.0], [f.dense_ms], "s", color=color, mfc="none")
            if f.goal is not None:
                ax.plot([0.5], [f.dense_ms / f.goal], "*", color=color, ms=11,
                        label=f"{f.key[4]}: {f.goal:g}× at 50 % (dense ÷ goal)")
        ax.set_title(f"{model} ({weights}, {str(target).removeprefix('llvm -mcpu=')})", fontsize=9)
        ax.set_xlabel("share of big rows read, s = 1 − insensitive ratio")
        ax.set_ylabel("ms per step")
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, None)
        ax.legend(fontsize=6.5, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    engines = ", ".join(dict.fromkeys(f.engine for f in fits))
    machines = ", ".join(dict.fromkeys(str(f.key[0]) for f in fits))
    fig.suptitle(f"{engines} on {machines}: measured (dots), fitted line, the bytes' line (dotted), dense step "
                 "(square)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
