"""Quality of the dual-module LM (Tables 2/3, 5, 6): PPL vs insensitive ratio, ε, precision, allocation."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from .construct import as_single_layers, build_dual_layers
from .data import LMCorpus, batchify
from .dual import DualModuleRNN
from .little import LittleConfig
from .models import RNNLanguageModel
from .sensitivity import MEASURED_GRID, allocate, allocate_curves, frozen, loss_gradients, measured_curves
from .train_lm import evaluate, lm_segments

log = logging.getLogger(__name__)


@dataclass
class QualitySetup:
    model: RNNLanguageModel
    dual: DualModuleRNN
    fp32_weights: list[torch.Tensor]
    valid: torch.Tensor
    test: torch.Tensor
    valid_samples: list
    valid_gradients: tuple[list, list] | None = None  # (samples, ∂L/∂a) per layer: see loss_gradients
    measured_costs: dict | None = None  # {(layer, gate): ΔNLL per MEASURED_GRID ratio}: see sensitivity.measured_curves


def run_stream(model: RNNLanguageModel, data: torch.Tensor, bptt: int, core, max_batches: int | None):
    """Run the LM over a batchified stream with ``core`` as its recurrent module (recording hooks)."""
    model.eval()
    with torch.no_grad():
        for _ in lm_segments(model, data, bptt, core, max_batches):
            pass


def setup(model: RNNLanguageModel, corpus: LMCorpus, cfg: LittleConfig, max_rows: int = 200_000,
          bptt: int = 35) -> QualitySetup:
    """Fit little modules on the training stream, calibrate on validation (the big model's trajectory)."""
    layers, stacked = as_single_layers(model.rnn)
    train = batchify(corpus.train, 20)
    valid = batchify(corpus.valid, 10)
    test = batchify(corpus.test, 10)
    tb = max_rows // (20 * bptt) + 1
    duals, fp32 = build_dual_layers(layers, list(stacked.layers), lambda: run_stream(model, train, bptt, stacked, tb),
                                    lambda: run_stream(model, valid, bptt, stacked, None), cfg, max_rows * 4)
    from .construct import record

    valid_samples = record(list(stacked.layers), lambda: run_stream(model, valid, bptt, stacked, 60), None,
                           cells=cfg.mask_rule == "contribution")
    return QualitySetup(model, DualModuleRNN(duals), fp32, valid, test, valid_samples)


def ppl(q: QualitySetup, split: str = "test", ratio=None) -> tuple[float, float]:
    """(PPL, measured insensitive ratio) with the dual-module core at ``ratio`` (None: as set)."""
    if ratio is not None:
        q.dual.set_insensitive_ratio(ratio)
    q.dual.reset_stats()
    loss = evaluate(q.model, q.test if split == "test" else q.valid, rnn=q.dual)
    return math.exp(loss), q.dual.measured_ratio()


def lm_losses(model: RNNLanguageModel, data: torch.Tensor, bptt: int, max_batches: int):
    """``run_loss`` for :func:`sensitivity.loss_gradients`: the LM's summed cross-entropy per BPTT segment of
    ``data`` (state carried detached, parameters frozen while it runs)."""
    def run(core):
        model.eval()
        with frozen(model):
            for out, y in lm_segments(model, data, bptt, core, max_batches):
                yield torch.nn.functional.cross_entropy(out.view(-1, out.size(-1)), y, reduction="sum")
    return run


ALLOCATION_COSTS = ("loss", "activation", "measured")


def allocation(q: QualitySetup, target: float, grid: np.ndarray | None = None, cost: str = "loss",
               max_batches: int = 60) -> list[dict[str, float]]:
    """Per-gate (and per-layer) ratios with overall mean ``target`` at the least estimated cost.

    ``cost="loss"``: the diagonal-Fisher loss increase (``sensitivity``; one backward pass over
    ``max_batches`` validation segments, cached on ``q``); ``"activation"``: squared activation error;
    ``"measured"``: the validation loss increase measured one gate at a time over ``max_batches``
    segments (one evaluation per gate and ``MEASURED_GRID`` ratio, cached on ``q``; ``grid`` is ignored).
    """
    if cost not in ALLOCATION_COSTS:
        raise ValueError(f"cost must be one of {ALLOCATION_COSTS}, got {cost!r}")
    layers = list(q.dual.layers)
    if cost == "activation":
        return allocate(layers, target, q.valid_samples, None, grid)
    if cost == "measured":
        if q.measured_costs is None:
            def valid_loss(ratios: list[dict[str, float]]) -> float:
                q.dual.set_insensitive_ratio(ratios)
                return evaluate(q.model, q.valid, rnn=q.dual, max_batches=max_batches)

            q.measured_costs = measured_curves(layers, valid_loss)
        return allocate_curves(layers, q.measured_costs, MEASURED_GRID, target)
    if q.valid_gradients is None:
        q.valid_gradients = loss_gradients([layer.big for layer in layers], lm_losses(q.model, q.valid, 35, max_batches))
    return allocate(layers, target, *q.valid_gradients, grid)


def validated_allocations(q: QualitySetup, target: float, costs: tuple[str, ...] = ("loss", "activation"),
                          ) -> dict[str, tuple[list[dict[str, float]], float]]:
    """Each cost's allocation for ``target`` with its *validation* PPL, so that the validation set picks the cost.

    Neither estimate wins on every model: the loss-aware one did on the LSTM-1500 and the GNMT decoder, the
    activation error on the GRU (where the diagonal-Fisher cost kept the update gate z big and gave half of
    the candidate n to the little module, and lost).  Leaves the dual core at the last allocation.
    """
    out = {}
    for cost in costs:
        ratios = allocation(q, target, cost=cost)
        out[cost] = ratios, ppl(q, "valid", ratios)[0]
    return out


def largest_ratio_within(q: QualitySetup, base_valid_ppl: float, budget: float = 0.01, per_gate: bool = True,
                         lo: float = 0.3, hi: float = 0.95, iters: int = 6, cost: str = "loss") -> float:
    """Largest overall ratio whose *validation* PPL stays within ``budget`` of base (bisection in [lo, hi];
    in [0, lo] where ``lo`` itself is over budget — a bisection never tests its lower end; ``hi`` itself where it is
    within budget — nor its upper end: the answer is then "at least ``hi``")."""
    def within(ratio: float) -> bool:
        q.dual.set_insensitive_ratio(allocation(q, ratio, cost=cost) if per_gate else ratio)
        return ppl(q, "valid")[0] <= base_valid_ppl * (1 + budget)

    if within(hi):
        return hi
    if lo > 0 and not within(lo):
        lo, hi = 0.0, lo
    for _ in range(iters):
        mid = (lo + hi) / 2
        if within(mid):
            lo = mid
        else:
            hi = mid
    return lo
