"""Hand-written schedules of dualtvm's kernels, written as MetaSchedule design spaces.

Each rule takes a ``tvm.s_tir.Schedule`` and either fixed knob values (the untuned default,
fast before any search) or none, in which case the knobs are *sampled instructions*
(``sample_perfect_tile``, ``sample_categorical``) that MetaSchedule's evolutionary search and
XGBoost cost model mutate — tuning happens around a good schedule, not from scratch.

The masked big GEMV, the INT8/INT4 little GEMVs and the projections also have hand-written loop
nests with software prefetch (``gather``, ``stream``), which no schedule primitive can express
(the INT4 one calls AVX2 intrinsics); ``default_kernel`` picks them for those kernels, the
attention nest (``attention``: a symbolic sentence length) for GNMT's attention, and ``pair`` for a
GRU's two dense GEMVs (one pass over their concatenated rows, which the rules schedule as two).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .attention import AttentionKnobs, attention_nest  # noqa: F401
from .gather import GatherKnobs, gather_gemv, gather_pair_gemv  # noqa: F401
from .pair import PairKnobs, pair_gemv, pair_shape  # noqa: F401
from .rules import DEFAULT_KNOBS, Knobs, apply_default, design_space, has_design_space, schedule_kernel  # noqa: F401
from .stream import (StreamKnobs, little_gemv_int4_nest, little_gemv_int8_nest, little_gemv_nest,  # noqa: F401
                     project_codes_nest, project_nest)


def query_shape(func) -> tuple[int]:
    """(hidden,) of an attention kernel (its query's length; the memory's length is symbolic)."""
    return (int(func.params[1].shape[0]),)


def weight_shape(func) -> tuple[int, int]:
    """(rows, reduction length) of a GEMV kernel's first argument."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    n, k = (int(v) for v in ArgInfo.from_prim_func(func)[0].shape)
    return n, k


def projection_shape(func) -> tuple[int, int, int]:
    """(k, d_x, d_h) of a projection kernel."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    (k, dx), (_, dh) = ([int(v) for v in a.shape] for a in ArgInfo.from_prim_func(func)[:2])
    return k, dx, dh


@dataclass(frozen=True)
class LoopNest:
    """A hand-written loop nest for one kind of kernel; ``kind`` is its ``use`` value in ``summary.json``."""

    kind: str
    params: tuple[str, ...]  # parameter names of the kernel definition it computes (``dualtvm.kernels``)
    knobs: type
    build: Callable  # (*shape, knobs, name) -> scheduled PrimFunc
    shape: Callable  # kernel definition -> the shape arguments of ``build``


NESTS = (
    LoopNest("gather", ("W", "x", "rows", "count", "yc"), GatherKnobs, gather_gemv, weight_shape),  # masked GEMV
    LoopNest("gather", ("W", "x", "h", "rows", "count", "ycx", "ych"), GatherKnobs, gather_pair_gemv,
             pair_shape),  # a GRU's two masked GEMVs: the same knobs, verdicts and in-step search
    LoopNest("pair", ("W", "x", "h", "yx", "yh"), PairKnobs, pair_gemv, pair_shape),  # a GRU's two dense GEMVs
    LoopNest("stream", ("Wq", "z", "scale", "bias", "pre"), StreamKnobs, little_gemv_nest, weight_shape),
    LoopNest("stream-project", ("Px", "Ph", "Pr", "x", "h", "z"), StreamKnobs, project_nest, projection_shape),
    LoopNest("stream-int4", ("W4", "zq", "zs", "scale", "bias", "pre"), StreamKnobs, little_gemv_int4_nest, weight_shape),
    LoopNest("stream-int8", ("W8", "zq", "zs", "scale", "bias", "pre"), StreamKnobs, little_gemv_int8_nest, weight_shape),
    LoopNest("stream-project-codes", ("Px", "Ph", "Pr", "x", "h", "zq", "zs"), StreamKnobs, project_codes_nest,
             projection_shape),
    LoopNest("attention", ("mem", "q", "ctx"), AttentionKnobs, attention_nest, query_shape))
NEST_KINDS = frozenset(n.kind for n in NESTS)
"""The ``use`` values of ``summary.json`` that name a loop nest (a kind may compute kernels of several signatures)."""


def loop_nest(func) -> LoopNest | None:
    """The loop nest that computes ``func`` (a masked GEMV, a GRU's pair of GEMVs, a little GEMV, a projection,
    attention), else None."""
    params = tuple(str(p.name) for p in func.params)
    return next((n for n in NESTS if n.params == params), None)


def default_kernel(func, num_cores: int | None, features: "frozenset[str] | set[str]" = frozenset()):
    """The untuned kernel for a target with ``num_cores`` threads and CPU ``features``: a loop nest or the rules."""
    nest = loop_nest(func)
    if nest is not None:
        return nest.build(*nest.shape(func), nest.knobs.for_target(num_cores, features), str(func.attrs["global_symbol"]))
    return apply_default(func, Knobs.for_target(num_cores, features))
