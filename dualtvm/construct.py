"""From a trained big RNN to a calibrated dual-module RNN: record, fit (eq. 7), calibrate (eq. 5).

This is the user-facing entry point: ``build_dual(rnn, run_train, run_valid)`` takes a
trained ``nn.LSTM``/``nn.GRU`` (or single-layer modules wired in any way, e.g. a GNMT
decoder stack) and two callables that run the model over training and validation data.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .dual import DualModuleLayer, DualModuleRNN, StackedRNN, mask_inputs
from .little import BigLayer, LittleConfig, LittleModule, SampleRecorder, big_layers, fit_little, single_layers
from .thresholds import GateCalibration

log = logging.getLogger(__name__)

RunFn = Callable[[nn.Module], None]


def as_single_layers(rnn: nn.Module) -> tuple[list[BigLayer], nn.Module]:
    """Big layers and an equivalent :class:`StackedRNN` of single-layer modules to hook."""
    layers = big_layers(rnn)
    return layers, StackedRNN(list(single_layers(rnn)), lstm=isinstance(rnn, nn.LSTM), batch_first=rnn.batch_first)


def record(modules: list[nn.Module], run: Callable[[], None], max_rows: int | None, cells: bool = False) -> list[list]:
    """(x, h) samples per module while ``run`` runs; (x, h, c) for LSTM modules with ``cells``."""
    with SampleRecorder(modules, max_rows, cells) as rec, torch.no_grad():
        run()
    return rec.samples


def calibrate(little: LittleModule, layer: BigLayer, samples, symmetric: bool = True, sigmoid_tails: str = "low",
              mask_rule: str = "activation") -> None:
    """Quantiles per gate, on validation samples (the big model's trajectory), of what the mask tests: a_LL
    (``mask_rule="activation"``; ``sigmoid_tails``: eq. 5's rule for sigmoid gates, "low", or both saturated
    ends, "both") or the contribution score ("contribution", which needs (x, h, c) samples for an LSTM);
    see :mod:`dualtvm.thresholds`."""
    tested: dict[str, list[torch.Tensor]] = {g: [] for g in layer.layout.gates}
    with torch.no_grad():
        for sample in samples:
            x, h = sample[:2]
            values = mask_inputs(layer, mask_rule, little.preactivations(x, h), h, *sample[2:])
            for g, v in zip(layer.layout.gates, values):
                tested[g].append(v.reshape(-1))
    little.calibration = {g: GateCalibration.fit(torch.cat(v), layer.layout.activation(g), symmetric, sigmoid_tails,
                                                 mask_rule) for g, v in tested.items()}


RECORD_BUDGET_BYTES = 4e9  # recorded (x, h) rows of all layers together: a 4-layer GNMT-1024 at 200k rows needs 10 GB


def build_dual_layers(layers: list[BigLayer], modules: list[nn.Module], run_train: Callable[[], None],
                      run_valid: Callable[[], None], cfg: LittleConfig | None = None,
                      max_rows: int = 200_000, progress: bool = True,
                      record_budget_bytes: float = RECORD_BUDGET_BYTES,
                      ) -> tuple[list[DualModuleLayer], list[torch.Tensor]]:
    """Fit and calibrate one little module per big layer; ``modules[i]`` runs ``layers[i]``.

    ``max_rows`` (samples × steps per layer) is lowered so that the recorded fp32 rows of all layers
    fit ``record_budget_bytes``.  Returns the dual layers and each little module's fp32 weight (for
    requantisation studies).
    """
    cfg = cfg or LittleConfig()
    row_bytes = 4 * sum(l.input_size + l.hidden for l in layers)
    if max_rows * row_bytes > record_budget_bytes:
        max_rows = int(record_budget_bytes // row_bytes)
        log.info("recording at most %d rows per layer (%.1f GB of samples)", max_rows, record_budget_bytes / 1e9)
    train = record(modules, run_train, max_rows)
    valid = record(modules, run_valid, max_rows // 4, cells=cfg.mask_rule == "contribution")
    duals, fp32 = [], []
    for i, layer in enumerate(tqdm(layers, desc="little modules", disable=not progress or len(layers) == 1)):
        if not train[i]:
            raise RuntimeError(f"layer {i} never ran during run_train: nothing to fit")
        little, w = fit_little(layer, train[i], LittleConfig(**{**cfg.__dict__, "seed": cfg.seed + 2 * i}),
                               valid[i], progress)
        calibrate(little, layer, valid[i], sigmoid_tails=cfg.sigmoid_tails, mask_rule=cfg.mask_rule)
        duals.append(DualModuleLayer(layer, little))
        fp32.append(w)
    return duals, fp32


def build_dual(rnn: nn.Module, run_train: RunFn, run_valid: RunFn, cfg: LittleConfig | None = None,
               max_rows: int = 200_000, progress: bool = True) -> DualModuleRNN:
    """Dual-module version of a user's trained ``nn.LSTM``/``nn.GRU``.

    ``run_train(core)`` / ``run_valid(core)`` must run ``core`` — a stand-in with the RNN's call
    signature, ``batch_first`` and unbatched inputs included — over the data (e.g.
    ``lambda core: model(tokens, hidden, rnn=core)``); the result is called the same way.
    """
    layers, stacked = as_single_layers(rnn)
    duals, _ = build_dual_layers(layers, list(stacked.layers), lambda: run_train(stacked),
                                 lambda: run_valid(stacked), cfg, max_rows, progress)
    return DualModuleRNN(duals, batch_first=rnn.batch_first)
