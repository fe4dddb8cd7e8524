"""Hand-written schedules of dualtvm's kernels, written as MetaSchedule design spaces.

Each rule takes a ``tvm.s_tir.Schedule`` and either fixed knob values (the untuned default,
fast before any search) or none, in which case the knobs are *sampled instructions*
(``sample_perfect_tile``, ``sample_categorical``) that MetaSchedule's evolutionary search and
XGBoost cost model mutate — tuning happens around a good schedule, not from scratch.

The masked big GEMV also has a hand-written loop nest with software prefetch (``gather``), which
no schedule primitive can express; ``default_kernel`` picks it for masked GEMVs.
"""
from .gather import GatherKnobs, gather_gemv  # noqa: F401
from .rules import DEFAULT_KNOBS, Knobs, apply_default, design_space, schedule_kernel  # noqa: F401


def is_masked_gemv(func) -> bool:
    return [str(p.name) for p in func.params] == ["W", "x", "rows", "count", "yc"]


def weight_shape(func) -> tuple[int, int]:
    """(rows, reduction length) of a GEMV kernel's first argument."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    n, k = (int(v) for v in ArgInfo.from_prim_func(func)[0].shape)
    return n, k


def default_kernel(func, num_cores: int | None):
    """The untuned kernel for a target with ``num_cores`` threads: gather loop nest or rules."""
    if is_masked_gemv(func):
        n, k = weight_shape(func)
        return gather_gemv(n, k, GatherKnobs.for_target(num_cores), str(func.attrs["global_symbol"]))
    return apply_default(func, Knobs.for_target(num_cores))
