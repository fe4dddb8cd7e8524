"""GNMT's attention (``kernels.attention``) as one serial loop nest: a sentence's memory is small.

Per token the decode step attends once over S × hidden floats (S ≈ 10–40 on Multi30k, 40–160 KB at
hidden 1024): a few microseconds on one core, less than waking a second thread would cost.  Scores are
row dots with ``lanes`` accumulators, the context a scaled-row sum with the hidden axis in vector lanes;
the S softmax weights go to a workspace buffer (S is known only at run time).
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T


@dataclass(frozen=True)
class AttentionKnobs:
    """The nest's one knob; serial whatever the target's cores (see the module docstring)."""

    lanes: int = 16  # accumulator / vector width (hidden is a multiple of 32)

    @classmethod
    def for_target(cls, num_cores: int | None = None,
                   features: "frozenset[str] | set[str]" = frozenset()) -> "AttentionKnobs":
        return cls()


def attention_nest(hidden: int, knobs: AttentionKnobs = AttentionKnobs(), name: str = "attention"):
    """Scheduled PrimFunc with ``kernels.attention``'s signature and results."""
    L = knobs.lanes
    if hidden % L:
        raise ValueError(f"hidden {hidden} is not a multiple of lanes={L}")
    KO = hidden // L

    @T.prim_func
    def f(mem_handle: T.handle, q: T.Buffer((hidden,), "float32"), ctx: T.Buffer((hidden,), "float32")):
        T.func_attr({"tirx.noalias": True})
        S = T.int64()
        mem = T.match_buffer(mem_handle, (S, hidden), "float32")
        weight = T.alloc_buffer((S,), "float32")
        acc = T.alloc_buffer((L,), "float32", scope="local")
        top_den = T.alloc_buffer((2,), "float32", scope="local")  # max score, softmax denominator
        top_den[0] = T.float32(-3.4028234663852886e38)
        for s in range(S):
            for l in T.vectorized(L):
                acc[l] = T.float32(0)
            for ko in range(KO):
                for l in T.vectorized(L):
                    acc[l] = acc[l] + mem[s, ko * L + l] * q[ko * L + l]
            weight[s] = T.float32(0)
            for l in range(L):
                weight[s] = weight[s] + acc[l]
            top_den[0] = T.max(top_den[0], weight[s])
        top_den[1] = T.float32(0)
        for s in range(S):
            weight[s] = T.exp(weight[s] - top_den[0])
            top_den[1] = top_den[1] + weight[s]
        for s in range(S):
            weight[s] = weight[s] / top_den[1]
        for h in T.vectorized(hidden):
            ctx[h] = T.float32(0)
        for s in range(S):
            for ko in range(KO):
                for l in T.vectorized(L):
                    ctx[ko * L + l] = ctx[ko * L + l] + weight[s] * mem[s, ko * L + l]

    return f.with_attr("global_symbol", name).with_attr("tirx.is_scheduled", True)
