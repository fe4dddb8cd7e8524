"""Each kernel of one layer timed alone beside numpy and PyTorch doing the same work.

For every kernel of a layer's dense and dual-module steps: the untuned default schedule, the
tuning log's best MetaSchedule record and its loop nest's grid choice (both timed whether or not
``tune.py`` kept them: ``use`` says which the build takes), numpy and torch on the same shapes.
Caches are flushed (twice the last-level cache read) before every run of every engine, as inside a
decode step, where the big GEMV's stream evicts everything else between two calls.
numpy and torch have no int8/int4 GEMV or ternary projection: they get the fp32 matrices (what a
user of them would store), so their rows show what the quantised kernels save.  References cover
the LSTM kernels (the paper's Table 5 shape); other kernels get none.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .kernels import LayerShape, layer_kernels
from .results import warn_if_busy
from .target import TargetSpec
from .bench import Evictor
from .tuning import TuningLog, compare_kernels, metaschedule_best, nest_from_log


@dataclass
class KernelRow:
    kernel: str
    default_ms: float  # untuned: the default schedule (rules or loop nest with its default knobs)
    metaschedule_ms: float | None  # the database's best MetaSchedule record, kept or not
    nest_ms: float | None  # the loop nest with the knobs its grid search chose, kept or not
    use: str  # what the build takes: default / tuned (MetaSchedule) / a loop nest's kind
    numpy_ms: float | None
    torch_ms: float | None
    reference: str  # what numpy/torch compute


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def same_work(kind: str, s: LayerShape, sensitive_fraction: float = 0.5) -> tuple[Callable, Callable, str] | None:
    """(numpy fn, torch fn, description) doing kernel ``kind``'s work on ``s``'s shapes, or None."""
    import torch

    rng = np.random.default_rng(0)
    n, kb = s.n, s.dxp + s.hp
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    if kind in ("gemv", "masked_gemv"):
        W, x = f32(n, kb), f32(kb)
        rows = np.sort(rng.choice(n, int(n * sensitive_fraction), replace=False)) if kind == "masked_gemv" else None
        Wt, xt = torch.from_numpy(W), torch.from_numpy(x)
        if rows is None:
            return (lambda: W @ x), (lambda: torch.mv(Wt, xt)), "fp32 W x"
        rt = torch.from_numpy(rows)
        return (lambda: W[rows] @ x), (lambda: torch.mv(Wt.index_select(0, rt), xt)), \
            f"fp32 rows W[idx] x, {sensitive_fraction:.0%} of rows"
    if kind == "little_gemv":
        Wl, z, b = f32(4 * s.hidden, 2 * s.k), f32(2 * s.k), f32(4 * s.hidden)
        Wt, zt, bt = (torch.from_numpy(v) for v in (Wl, z, b))
        return (lambda: Wl @ z + b), (lambda: torch.addmv(bt, Wt, zt)), "fp32 W_LL z + b"
    if kind == "project":
        pairs = [(f32(s.k, s.input_size), f32(s.input_size)), (f32(s.k, s.hidden), f32(s.hidden))]
        tpairs = [(torch.from_numpy(p), torch.from_numpy(v)) for p, v in pairs]

        def np_project():
            return [np.round(z / (np.abs(z).max() / 127)) for z in (p @ v for p, v in pairs)]

        def torch_project():
            return [torch.round(z / (z.abs().max() / 127)) for z in (p @ v for p, v in tpairs)]

        return np_project, torch_project, "fp32 P x, P h, then INT8 codes per half"
    if kind == "mask":
        pre, lo, hi = f32(4 * s.hidden), np.full(n, -0.5, np.float32), np.full(n, 0.5, np.float32)
        pt, lt, ht = (torch.from_numpy(v) for v in (pre[:n], lo, hi))
        return (lambda: np.flatnonzero((pre[:n] > lo) & (pre[:n] < hi))), \
            (lambda: torch.nonzero((pt > lt) & (pt < ht))), "band test + row list (flatnonzero)"
    if kind in ("lstm_assemble", "lstm_dense_cell"):
        H = s.hidden
        y, c = f32(4 * H), f32(H)
        yt, ct = torch.from_numpy(y), torch.from_numpy(c)

        def np_cell():
            i, f, g, o = np.split(y, 4)
            c2 = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            return _sigmoid(o) * np.tanh(c2), c2

        def torch_cell():
            i, f, g, o = yt.chunk(4)
            c2 = torch.sigmoid(f) * ct + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c2), c2

        return np_cell, torch_cell, "LSTM cell update (eq. 6) on 4H pre-activations"
    return None


def _time_python(fn: Callable, repeat: int, evict: Evictor) -> float:
    times = []
    for _ in range(repeat):
        evict()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def kernel_table(shapes: Sequence[LayerShape], target: TargetSpec, log: TuningLog | None,
                 repeat: int = 30, passes: int = 3) -> list[KernelRow]:
    """One row per distinct kernel of the shapes' dual-module and dense steps: each candidate schedule's
    median of ``repeat`` flushed runs, best of ``passes`` passes interleaved with the other candidates.

    Shapes that differ only in ``little_bits`` share their big kernels: each is timed once.
    """
    import torch

    from schedules import default_kernel

    rows, seen = [], set()
    features = target.required_features()
    evict = Evictor(read_only=True)  # one sweep buffer for every timing here, TVM kernels and numpy/torch alike
    torch.set_num_threads(target.num_cores or 1)
    warn_if_busy("kernel table")
    for s, dual in ((s, dual) for s in shapes for dual in (True, False)):
        for name, func in layer_kernels(s, dual).items():
            if name in seen:
                continue
            seen.add(name)
            kind = name.split(f"_{s.tag}")[0]
            candidates = {"default": default_kernel(func, target.num_cores, features)}
            if log is not None:
                candidates.update({k: f for k, f in (("tuned", metaschedule_best(log, func, target)),
                                                     ("nest", nest_from_log(log, func))) if f is not None})
            timed = compare_kernels(candidates, target, passes=passes, repeat=repeat, evict=evict)
            ms = {k: round(v, 4) for k, v in timed.items()}
            use = (log.summary.get(name, {}).get("use", "default") if log is not None else "no log")
            ref = same_work(kind, s)
            rows.append(KernelRow(name, ms["default"], ms.get("tuned"), ms.get("nest"), use,
                                  round(_time_python(ref[0], repeat, evict), 4) if ref else None,
                                  round(_time_python(ref[1], repeat, evict), 4) if ref else None, ref[2] if ref else ""))
    return rows
