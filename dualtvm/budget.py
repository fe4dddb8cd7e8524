"""The insensitive ratio that meets a latency budget, measured on the machine that will serve.

The ratio is a run-time knob that trades quality for speed: every point of it given up costs
quality (Tables 2–4), so a service with a per-token budget wants the *smallest* ratio whose step
meets it.  Step latency depends on the CPU, its memory system and what else runs there, so it
is measured here, not predicted: one compiled dual build at every candidate ratio (and its dense
counterpart, which meets a budget without any quality loss), interleaved in one run with
:func:`dualtvm.bench.measure` so that the ratios are compared side by side.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .bench import Engine, decoder_engine, measure, measured_insensitive_ratio, summarize
from .runtime import CompiledDecoder, sequence_runner


@dataclass(frozen=True)
class RatioLatency:
    engine: str  # "tvm-dense" or "tvm-dual"
    insensitive_ratio: float  # asked (thresholds from the build's calibration)
    measured_ratio: float  # fraction of outputs the little module served on these inputs
    median_ms: float
    iqr_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def latency_by_ratio(dual: CompiledDecoder, ratios: list[float], xs: list[np.ndarray], rounds: int = 4,
                     cold: bool = False, dense: CompiledDecoder | None = None) -> list[RatioLatency]:
    """Median step latency of ``dual`` at each insensitive ratio (and of ``dense``), decoding ``xs``.

    Every ratio is one engine of the same interleaved run; the thresholds are set before each of
    its rounds, outside the timed steps.  ``xs``: step inputs in order (real ones give real masks).
    """
    if not dual.spec.dual:
        raise ValueError("latency_by_ratio needs a dual-module build (its dense counterpart goes in `dense`)")
    if len(xs) < 2:
        raise ValueError("need at least 2 step inputs (the first step of a round is a warm-up)")
    if not ratios or any(not 0.0 <= r <= 1.0 for r in ratios) or len(set(ratios)) != len(ratios):
        raise ValueError(f"insensitive ratios must be distinct and lie in [0, 1], got {ratios}")
    engines, measured = [], {}
    runner = sequence_runner(dual, xs)
    for r in ratios:
        dual.set_insensitive_ratio(r)
        measured[r] = measured_insensitive_ratio(dual, runner, len(xs))
    # one decoder (and, cold, one twin: see bench.measure) for every ratio: the engines run one at a time
    twin = dual.twin() if cold else None
    shared = decoder_engine("tvm-dual", 0.0, dual, xs, twin)
    for r in ratios:
        def prepare_at(r: float = r) -> None:
            for dec in (dual, twin) if twin is not None else (dual,):
                dec.set_insensitive_ratio(r)
            shared.prepare()

        engines.append(Engine(f"tvm-dual@{r}", r, prepare_at, shared.step, shared.twin))
    if dense is not None:
        engines.append(decoder_engine("tvm-dense", 0.0, dense, xs, dense.twin() if cold else None))
    times = measure(engines, len(xs), rounds, cold)
    out = []
    for e in engines:
        med, iqr = summarize(times[e.name])
        dense_row = e.name == "tvm-dense"
        out.append(RatioLatency("tvm-dense" if dense_row else "tvm-dual", e.ratio, 0.0 if dense_row else measured[e.ratio],
                                round(med, 4), round(iqr, 4)))
    return out


def ratio_for_budget(curve: list[RatioLatency], budget_ms: float) -> RatioLatency:
    """The row that meets ``budget_ms`` (median step) giving up the least quality.

    That is the dense step when it is fast enough (no quality loss), else the smallest insensitive
    ratio that is; a ``ValueError`` names the fastest row when none meets the budget.
    """
    if budget_ms <= 0:
        raise ValueError(f"the latency budget must be positive, got {budget_ms} ms")
    if not curve:
        raise ValueError("no measured rows to choose from")
    meeting = [c for c in curve if c.median_ms <= budget_ms]
    if not meeting:
        fastest = min(curve, key=lambda c: c.median_ms)
        raise ValueError(f"no measured ratio meets {budget_ms} ms per step: the fastest is {fastest.engine} at ratio "
                         f"{fastest.insensitive_ratio} ({fastest.median_ms} ms); measure higher ratios, use more "
                         f"threads, or a larger budget")
    return min(meeting, key=lambda c: (c.engine != "tvm-dense", c.insensitive_ratio))
