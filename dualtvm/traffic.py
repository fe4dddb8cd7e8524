"""Figure 4's accounting: the bytes a layer's decode step reads and the operations it computes, dense and dual.

Dense: every fp32 row of the stacked gate matrix (n = gates × hidden rows of input + hidden columns) and its bias.
Dual-module (Algorithm 1): the sensitive fp32 rows and the bias, the little module (int8 P_x and P_h, W_LL at its
bits, fp32 row scales and biases), the mask's fp32 bounds and the int32 row list and pos vector it writes, per phase
in :func:`part_bytes`.  The little module predicts
4 × hidden outputs for both cells (LSTM: its four gates; GRU: r, z and the x and h halves of n).

Operations count a multiply and an add as two whatever the precision, as the paper's Figure 4 does, and only the
GEMVs (big rows, projection, little GEMV): biases, φ, the mask and the assembly are O(n), under 1 % of a step here.
"""
from __future__ import annotations

from .paper import FIGURE4

LITTLE_OUTPUTS_PER_HIDDEN = 4  # per hidden unit, LSTM and GRU alike (gates.GateLayout.little_outputs)


def little_bytes(hidden: int, input_size: int, k: int, little_bits: int = 8) -> int:
    """Bytes of the little module: int8 P_x (k × input) and P_h (k × hidden) with their fp32 row scales (2k), W_LL
    (4h × 2k at ``little_bits``), and its fp32 row scales and biases."""
    rows = LITTLE_OUTPUTS_PER_HIDDEN * hidden
    return k * (input_size + hidden) + 4 * 2 * k + rows * 2 * k * little_bits // 8 + rows * 4 * 2


def little_ops(hidden: int, input_size: int, k: int) -> int:
    """Operations of the little module: the projection (eq. 2, k × (input + hidden)) and the little GEMV (4h × 2k)."""
    return 2 * k * (input_size + hidden) + 2 * LITTLE_OUTPUTS_PER_HIDDEN * hidden * 2 * k


PARTS = ("projection", "little", "mask", "big", "assembly")
"""A dual-module step's phases (Table 5's right half: SRP, little, big, and the mask and assembly between them)."""


def part_bytes(hidden: int, input_size: int, gates: int, k: int, sensitive_fraction: float | None,
               little_bits: int = 8) -> dict[str, int]:
    """Bytes each phase of one step must read (:data:`PARTS`); ``sensitive_fraction`` None: the dense step (its big
    GEMV and the bias its assembly adds).  The projection reads P_x, P_h and their row scales; the little GEMV W_LL
    and its row scales and biases; the mask the bounds (lo, hi) of the n rows; the big GEMV the sensitive rows and
    the row list; the assembly the bias and the pos vector.  Values the step itself wrote (pre_LL, z) are not
    counted: they are in cache."""
    n = gates * hidden
    big = 4 * n * (input_size + hidden)
    if sensitive_fraction is None:
        return {"projection": 0, "little": 0, "mask": 0, "big": big, "assembly": 4 * n}
    rows = LITTLE_OUTPUTS_PER_HIDDEN * hidden
    little = little_bytes(hidden, input_size, k, little_bits)
    projection = k * (input_size + hidden) + 4 * 2 * k
    return {"projection": projection, "little": little - projection, "mask": 4 * n * 2,
            "big": int(big * sensitive_fraction) + 4 * n, "assembly": 4 * n * 2}


def layers_part_bytes(layers, k: int, sensitive_fraction: float | None, little_bits: int = 8) -> dict[str, int]:
    """:func:`part_bytes` summed over a stack's ``layers`` (each with ``hidden``, ``input_size`` and ``gates``, as a
    build's ``LayerShape``)."""
    per_layer = [part_bytes(s.hidden, s.input_size, s.gates, k, sensitive_fraction, little_bits) for s in layers]
    return {part: sum(b[part] for b in per_layer) for part in PARTS}


def step_bytes(hidden: int, input_size: int, gates: int, k: int, sensitive_fraction: float | None,
               little_bits: int = 8) -> int:
    """Bytes of weights (and index traffic) one step must read (:func:`part_bytes` summed); ``sensitive_fraction``
    None: the dense step.  Rows measured before session 45 counted the dual step without the mask's bounds (8n bytes,
    0.13 % of LSTM-1500's step at 50 %)."""
    return sum(part_bytes(hidden, input_size, gates, k, sensitive_fraction, little_bits).values())


def step_ops(hidden: int, input_size: int, gates: int, k: int, sensitive_fraction: float | None) -> int:
    """Operations of one step's GEMVs; ``sensitive_fraction`` None: the dense step."""
    big = 2 * gates * hidden * (input_size + hidden)
    if sensitive_fraction is None:
        return big
    return int(big * sensitive_fraction + little_ops(hidden, input_size, k))


def break_even_ratio(hidden: int, input_size: int, gates: int, k: int, little_bits: int = 8) -> float:
    """The insensitive ratio below which a dual-module step reads more bytes than the dense one (:func:`step_bytes`):
    the little module, row list and pos vector are paid for only by the big rows the mask skips."""
    rows = 4 * gates * hidden * (input_size + hidden)
    extra = step_bytes(hidden, input_size, gates, k, 0.0, little_bits) - step_bytes(hidden, input_size, gates, k, None) + rows
    return extra / rows


def traffic_row(model: str, eps: float = 0.5, k: int | None = None, little_bits: int = 8,
                ratios: tuple[float, ...] = (0.5,)) -> dict:
    """Figure 4's bars for a registry ``model`` (its layers summed): bytes (MB) and operations (millions) of the dense
    step and of the little module (k where set, else eq. 3's at ``eps``; W_LL at ``little_bits``), the little module's
    share of each in %, its break-even ratio, and the dual step's share of the dense step's bytes and operations at
    each insensitive ratio of ``ratios``."""
    from .gates import layout
    from .registry import model_config

    mc = model_config(model)
    kk, gates = mc.little_dim(eps, k), layout(mc.rnn_type).n_gates
    layers = [(mc.hidden, d) for d in mc.input_sizes()]

    def total(f) -> int:
        return sum(f(h, d) for h, d in layers)

    base_b = total(lambda h, d: step_bytes(h, d, gates, kk, None))
    base_o = total(lambda h, d: step_ops(h, d, gates, kk, None))
    lit_b = total(lambda h, d: little_bytes(h, d, kk, little_bits))
    lit_o = total(lambda h, d: little_ops(h, d, kk))
    return {
        "model": model, "little_module": f"k = {k}" if k else f"eq. 3's k (ε = {eps:g})", "k": kk,
        "little_bits": little_bits,
        "base_mb": round(base_b / 1e6, 3), "little_mb": round(lit_b / 1e6, 3),
        "little_bytes_pct": round(100 * lit_b / base_b, 2),
        "base_mops": round(base_o / 1e6, 3), "little_mops": round(lit_o / 1e6, 3),
        "little_ops_pct": round(100 * lit_o / base_o, 2),
        "break_even_ratio": round(max(break_even_ratio(h, d, gates, kk, little_bits) for h, d in layers), 4),
        "dual_bytes_pct": {f"{r:g}": round(100 * total(lambda h, d: step_bytes(h, d, gates, kk, 1 - r, little_bits))
                                           / base_b, 2) for r in ratios},
        "dual_ops_pct": {f"{r:g}": round(100 * total(lambda h, d: step_ops(h, d, gates, kk, 1 - r)) / base_o, 2)
                         for r in ratios},
    }


def plot_traffic(rows: list[dict], path: str) -> None:
    """Figure 4 as bars: per model, MB read and millions of operations per step of the dense layer and of each little
    module variant of ``rows`` (log scale), each little bar labelled with its share of the layer, the paper's average
    shares in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys((r["little_module"], r["little_bits"]) for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    panels = (("MB read per step", "base_mb", "little_mb", "little_bytes_pct"),
              ("million operations per step", "base_mops", "little_mops", "little_ops_pct"))
    for ax, (unit, base_key, little_key, pct_key) in zip(axes, panels):
        by_bits = base_key == "base_mb"  # operations do not depend on W_LL's bits: one bar per k there
        shown = variants if by_bits else list(dict.fromkeys((v, 8) for v, _ in variants))
        width = 0.8 / (1 + len(shown))
        x = np.arange(len(models))
        base = [next(r[base_key] for r in rows if r["model"] == m) for m in models]
        ax.bar(x, base, width, label="dense layer (fp32)", color="k")
        for j, (variant, bits) in enumerate(shown, start=1):
            pick = [next((r for r in rows if r["model"] == m and r["little_module"] == variant
                          and (r["little_bits"] == bits or not by_bits)), None) for m in models]
            vals = [p[little_key] if p else 0 for p in pick]
            bars = ax.bar(x + j * width, vals, width, label=f"little module, {variant}" + (f", INT{bits}" if by_bits else ""))
            for b, p in zip(bars, pick):
                if p:
                    ax.annotate(f"{p[pct_key]:.0f}%", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                                va="bottom", fontsize=6)
        ax.set_xticks(x + width * len(shown) / 2, models, fontsize=8, rotation=15)
        ax.set_yscale("log")
        ax.set_ylabel(unit)
        paper = FIGURE4[pct_key]
        ax.set_title(f"{unit} (paper's Figure 4: little module ≈ {paper:.0f} % of the layer on average)", fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
