"""The issues' goals checked against the committed results rows: issue #5's latency goals against
``results/latency.json``, issue #3's quality goals against the PTB quality and allocation rows.

The results (docs/results.md) are a chronicle of runs on several machines; a reader who asks "is the paper's
1.67× met here?" or "does the LSTM lose at most 1 % at 50 %?" should not have to read them.  Each :class:`Goal`
names the rows it judges (model shape, engine or part, insensitive ratio) and the row value it compares with its
limit; :func:`goal_status` says, per goal, how many of those rows meet it and which rows are the worst and the
best.  ``scripts/render_results.py`` renders them (latency per machine).  Pure functions of the rows: nothing is
measured here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .paper import paper_delta_pct, paper_model
from .registry import MODELS

DUAL_PREFIX = "tvm-dual"
COMPARISON_ENGINES = ("tvm-dual-int8float",)
"""Dual-module engines timed only to compare with an older code path (``bench.py --int8-float``): not a
configuration a user would serve, so the goals do not judge them."""


def model_shape(label: str) -> str | None:
    """The registry shape a latency row's model label names (``lstm-1500-k128-learned`` → ``lstm-1500``), or None."""
    shapes = [m for m in MODELS if label == m or label.startswith(m + "-")]
    return max(shapes, key=len) if shapes else None


def is_dual(row: dict) -> bool:
    """A dual-module engine's row the goals judge (the comparison-only engines excluded)."""
    return row["engine"].startswith(DUAL_PREFIX) and row["engine"] not in COMPARISON_ENGINES


def _at(row: dict, *ratios: float) -> bool:
    return any(abs(row["insensitive_ratio"] - r) < 1e-9 for r in ratios)


def _lstm_1500(row: dict) -> bool:
    return model_shape(row["model"]) == "lstm-1500"


def _gnmt(row: dict) -> bool:
    return (model_shape(row["model"]) or "").startswith("gnmt-")


def _times(v: float) -> str:
    return f"{v:.2f}×"


def _percent_of(v: float) -> str:
    return f"{100 * v:.0f} %"


def _delta_pct(v: float) -> str:
    return f"{v:+.2f} %"


@dataclass(frozen=True)
class Goal:
    """One goal of an issue: rows where ``applies`` holds meet it when ``row[field]`` is at least ``limit`` (at most,
    with ``at_most``); ``limit`` is a number or a function of the row (None: the row has no limit, not judged)."""

    text: str
    field: str
    limit: float | Callable[[dict], float | None]
    applies: Callable[[dict], bool]
    show: Callable[[float], str] = _times
    at_most: bool = False

    def limit_of(self, row: dict) -> float | None:
        return self.limit(row) if callable(self.limit) else self.limit

    def judged(self, rows: list[dict]) -> list[dict]:
        """The rows this goal judges: those it applies to that carry its field and have a limit."""
        return [r for r in rows if self.applies(r) and r.get(self.field) is not None and self.limit_of(r) is not None]

    def shown(self, row: dict) -> str:
        """The row's value as the goal states it (× or %)."""
        return self.show(float(row[self.field]))

    def margin(self, row: dict) -> float:
        """How far the row is on the good side of its limit (negative: it misses the goal)."""
        value, limit = float(row[self.field]), self.limit_of(row)
        return limit - value if self.at_most else value - limit

    def meets(self, row: dict) -> bool:
        return self.margin(row) >= 0


LATENCY_GOALS: tuple[Goal, ...] = (
    Goal("dense TVM step ≥ best peer, every model", "speedup_vs_best_peer", 1.0,
         lambda r: r["engine"] == "tvm-dense"),
    Goal("dense TVM step, LSTM-1500 cold: ≥ 80 % of the measured read bandwidth", "fraction_of_read_bw", 0.8,
         lambda r: r["engine"] == "tvm-dense" and _lstm_1500(r) and r["cache"] == "cold", _percent_of),
    Goal("LSTM-1500 at 50 %: ≥ 1.67× over dense TVM", "speedup_vs_tvm_dense", 1.67,
         lambda r: is_dual(r) and _at(r, 0.5) and _lstm_1500(r)),
    Goal("LSTM-1500 at 50 %: ≥ 1.6× over the best peer", "speedup_vs_best_peer", 1.6,
         lambda r: is_dual(r) and _at(r, 0.5) and _lstm_1500(r)),
    Goal("GNMT layers at 50 %: ≥ 1.7× over dense TVM", "speedup_vs_tvm_dense", 1.7,
         lambda r: is_dual(r) and _at(r, 0.5) and _gnmt(r)),
    Goal("LSTM-1500 and GNMT layers at 90 %: ≥ 3.5× over dense TVM", "speedup_vs_tvm_dense", 3.5,
         lambda r: is_dual(r) and _at(r, 0.9) and (_lstm_1500(r) or _gnmt(r))),
    Goal("LSTM-1500 at 30–70 %: ≥ 90 % of the byte bound", "fraction_of_bound", 0.9,
         lambda r: is_dual(r) and _at(r, 0.3, 0.5, 0.7) and _lstm_1500(r), _percent_of),
)
"""Issue #5's goals (ratios measured side by side in one run, 2 threads, batch 1)."""


def _lm_at_half(row: dict, rnn: str) -> bool:
    """A PTB quality row of an unpruned ``rnn`` model at 50 %, one ratio for all gates or allocated per gate."""
    return (row["part"] in ("uniform", "per-gate") and _at(row, 0.5) and "-sparse" not in row["model"]
            and paper_model(row["model"]).startswith(rnn + "-"))


QUALITY_GOALS: tuple[Goal, ...] = (
    Goal("LSTM at 50 %: test PPL at most +1 % over base", "delta_ppl_pct", 1.0,
         lambda r: _lm_at_half(r, "lstm"), _delta_pct, at_most=True),
    Goal("GRU at 50 %: test PPL no worse than the paper's relative loss ("
         + ", ".join(f"{m.upper()} {_delta_pct(paper_delta_pct(m, 0.5))}" for m in ("gru-750", "gru-1500")) + ")",
         "delta_ppl_pct", lambda r: paper_delta_pct(r["model"], 0.5), lambda r: _lm_at_half(r, "gru"), _delta_pct,
         at_most=True),
    Goal("largest overall ratio within +1 % PPL (chosen on valid): ≥ 60 %", "insensitive_ratio", 0.6,
         lambda r: r["part"] == "largest-within-1pct" and "-sparse" not in r["model"], _percent_of),
)
"""Issue #3's goals (PTB test PPL; the paper: LSTM-1500 +0.9 % at 50 %)."""


@dataclass(frozen=True)
class GoalStatus:
    """How one goal stands on a set of rows: the rows it judges, each meeting it or not."""

    goal: Goal
    rows: tuple[dict, ...]

    @property
    def met(self) -> int:
        return sum(self.goal.meets(r) for r in self.rows)

    def _ordered(self) -> list[dict]:  # worst first: by the margin to the row's own limit
        return sorted(self.rows, key=self.goal.margin)

    @property
    def worst(self) -> dict | None:
        return self._ordered()[0] if self.rows else None

    @property
    def best(self) -> dict | None:
        return self._ordered()[-1] if self.rows else None


def goal_status(rows: list[dict], goals: tuple[Goal, ...] = LATENCY_GOALS) -> list[GoalStatus]:
    """Each goal against ``rows`` (latency: one machine's, compared side by side: speed-ups are within-run ratios)."""
    return [GoalStatus(g, tuple(g.judged(rows))) for g in goals]


PAPER_METHOD_VARIANTS = ("eps0.5-int8", "uniform, chosen on valid")
"""The quality rows' variants made as the paper makes its little module and mask — eq. 2's random projection at
ε = 0.5, eq. 5's mask, INT8 W_LL, one ratio for every gate (at 50 %; and the search for the largest such ratio):
every other variant uses an option beyond the paper (learned projection, its own k, contribution masks, per-gate
allocation, other bit widths)."""


def is_paper_method(row: dict) -> bool:
    """Whether a quality row was made with the paper's own method (:data:`PAPER_METHOD_VARIANTS`)."""
    return row.get("variant") in PAPER_METHOD_VARIANTS


def goal_status_by_model(rows: list[dict], goal: Goal) -> dict[str, GoalStatus]:
    """``goal`` against each model's rows apart (a model name is one training), in the rows' order: which
    configurations meet the goal for that training, where :func:`goal_status` pools every training's rows."""
    by_model: dict[str, list[dict]] = {}
    for r in goal.judged(rows):
        by_model.setdefault(r["model"], []).append(r)
    return {m: GoalStatus(goal, tuple(rs)) for m, rs in by_model.items()}


def summary_lines(rows: list[dict], goals: tuple[Goal, ...] = LATENCY_GOALS) -> list[str]:
    """One line per goal that judges any of ``rows`` (a run's): how many meet it, the worst and the best value."""
    lines = []
    for st in goal_status(rows, goals):
        if st.rows:
            lines.append(f"{st.goal.text}: {st.met} of {len(st.rows)} rows (worst {st.goal.shown(st.worst)}, "
                         f"best {st.goal.shown(st.best)})")
    return lines
