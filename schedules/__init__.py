"""Hand-written schedules of dualtvm's kernels, written as MetaSchedule design spaces.

Each rule takes a ``tvm.s_tir.Schedule`` and either fixed knob values (the untuned default,
fast before any search) or none, in which case the knobs are *sampled instructions*
(``sample_perfect_tile``, ``sample_categorical``) that MetaSchedule's evolutionary search and
XGBoost cost model mutate — tuning happens around a good schedule, not from scratch.
"""
from .rules import DEFAULT_KNOBS, Knobs, apply_default, design_space, schedule_kernel  # noqa: F401
