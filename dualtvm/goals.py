"""Issue #5's latency goals checked against the rows of ``results/latency.json``.

The README's latency section is a chronicle of runs on several machines; a reader who asks "is the paper's
1.67× met here?" should not have to read it.  Each :class:`Goal` names the rows it judges (model shape, engine,
insensitive ratio) and the row value it compares with its threshold; :func:`goal_status` says, per goal, how
many of those rows meet it and which rows are the worst and the best.  ``scripts/render_results.py`` renders
this per machine.  Pure functions of the rows: nothing is measured here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .registry import MODELS

DUAL_PREFIX = "tvm-dual"
COMPARISON_ENGINES = ("tvm-dual-int8float",)
"""Dual-module engines timed only to compare with an older code path (``bench.py --int8-float``): not a
configuration a user would serve, so the goals do not judge them."""


def model_shape(label: str) -> str | None:
    """The registry shape a row's model label names (``lstm-1500-k128-learned`` → ``lstm-1500``), or None."""
    shapes = [m for m in MODELS if label == m or label.startswith(m + "-")]
    return max(shapes, key=len) if shapes else None


def is_dual(row: dict) -> bool:
    """A dual-module engine's row the goals judge (the comparison-only engines excluded)."""
    return row["engine"].startswith(DUAL_PREFIX) and row["engine"] not in COMPARISON_ENGINES


def _lstm_1500(row: dict) -> bool:
    return model_shape(row["model"]) == "lstm-1500"


def _gnmt(row: dict) -> bool:
    return (model_shape(row["model"]) or "").startswith("gnmt-")


def _at(ratios: tuple[float, ...]) -> Callable[[dict], bool]:
    return lambda row: is_dual(row) and any(abs(row["insensitive_ratio"] - r) < 1e-9 for r in ratios)


@dataclass(frozen=True)
class Goal:
    """One goal of issue #5: rows where ``applies`` holds meet it when ``row[field] >= threshold``."""

    text: str
    field: str
    threshold: float
    applies: Callable[[dict], bool]
    unit: str = "×"

    def judged(self, rows: list[dict]) -> list[dict]:
        """The rows this goal judges (those that carry its field)."""
        return [r for r in rows if self.applies(r) and r.get(self.field) is not None]


GOALS: tuple[Goal, ...] = (
    Goal("dense TVM step ≥ best peer, every model", "speedup_vs_best_peer", 1.0,
         lambda r: r["engine"] == "tvm-dense"),
    Goal("dense TVM step, LSTM-1500 cold: ≥ 80 % of the measured read bandwidth", "fraction_of_read_bw", 0.8,
         lambda r: r["engine"] == "tvm-dense" and _lstm_1500(r) and r["cache"] == "cold", unit=""),
    Goal("LSTM-1500 at 50 %: ≥ 1.67× over dense TVM", "speedup_vs_tvm_dense", 1.67,
         lambda r: _at((0.5,))(r) and _lstm_1500(r)),
    Goal("LSTM-1500 at 50 %: ≥ 1.6× over the best peer", "speedup_vs_best_peer", 1.6,
         lambda r: _at((0.5,))(r) and _lstm_1500(r)),
    Goal("GNMT layers at 50 %: ≥ 1.7× over dense TVM", "speedup_vs_tvm_dense", 1.7,
         lambda r: _at((0.5,))(r) and _gnmt(r)),
    Goal("LSTM-1500 and GNMT layers at 90 %: ≥ 3.5× over dense TVM", "speedup_vs_tvm_dense", 3.5,
         lambda r: _at((0.9,))(r) and (_lstm_1500(r) or _gnmt(r))),
    Goal("LSTM-1500 at 30–70 %: ≥ 90 % of the byte bound", "fraction_of_bound", 0.9,
         lambda r: _at((0.3, 0.5, 0.7))(r) and _lstm_1500(r), unit=""),
)


@dataclass(frozen=True)
class GoalStatus:
    """How one goal stands on a set of rows: the judged rows' values, met where ≥ the threshold."""

    goal: Goal
    values: tuple[tuple[dict, float], ...]

    @property
    def met(self) -> int:
        return sum(v >= self.goal.threshold for _, v in self.values)

    @property
    def worst(self) -> tuple[dict, float] | None:
        return min(self.values, key=lambda rv: rv[1], default=None)

    @property
    def best(self) -> tuple[dict, float] | None:
        return max(self.values, key=lambda rv: rv[1], default=None)


def goal_status(rows: list[dict], goals: tuple[Goal, ...] = GOALS) -> list[GoalStatus]:
    """Each goal against ``rows`` (one machine's, as compared side by side: speed-ups are within-run ratios)."""
    return [GoalStatus(g, tuple((r, float(r[g.field])) for r in g.judged(rows))) for g in goals]
