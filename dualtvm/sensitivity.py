"""Loss-aware gate sensitivity for the per-gate allocation (beyond the paper).

``thresholds.allocate_ratios`` needs, per gate, what taking the little result costs at each ratio.
Squared activation error weighs all gates alike, but the loss does not: an error in the forget
gate is scaled by c(t−1), one in the output gate by tanh(c), and every one by what the layers
above and the later steps do with h.  A second-order estimate of the loss increase with the
diagonal Fisher matrix standing in for the Hessian, ½ Σ_rows (∂L/∂a · Δa)², weighs each row's
error by the loss gradient at its activation.  The gradients come from one backward pass of the
model's own loss through :class:`GateGradientProbe` layers, which run the big layer step by
step and add a zero leaf δ to every gate activation: ∂L/∂δ = ∂L/∂a, through later steps too.
The estimate ignores the correlations of errors across rows and steps, and it can mislead: on the PTB
GRU-1500 it lost to the plain activation error (``quality.validated_allocations`` lets validation
data pick between the costs).  :func:`measured_curves` measures the cost instead: one held-out loss
evaluation per gate and ratio.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .dual import DualModuleLayer, StackedRNN, error_curves, run_steps
from .gates import SIGMOID
from .little import BigLayer
from .thresholds import allocate_ratios

log = logging.getLogger(__name__)


class GateGradientProbe(nn.Module):
    """A big layer as a drop-in single-layer ``nn.LSTM``/``nn.GRU`` (seq-first) that keeps, for every
    step it runs, (x(t), h(t−1)) — (x(t), h(t−1), c(t−1)) for an LSTM, whose contribution-score masks
    need the cell state — and a zero leaf per gate activation; after the caller's backward pass
    :meth:`collect` turns the leaves' gradients into ∂L/∂a samples."""

    def __init__(self, big: BigLayer) -> None:
        super().__init__()
        self.big = big
        self._pending: list[tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]] = []
        self.samples: list[tuple[torch.Tensor, ...]] = []
        self.gradients: list[dict[str, torch.Tensor]] = []

    def _step(self, x: torch.Tensor, state):
        big, H = self.big, self.big.hidden
        gates = big.layout.gates
        h = state[0] if isinstance(state, tuple) else state
        tgt = big.targets(x, h)
        deltas = {g: torch.zeros(x.shape[0], H, requires_grad=True) for g in gates}
        cells = (state[1].detach(),) if big.rnn_type == "LSTM" else ()
        self._pending.append(((x.detach(), h.detach()) + cells, deltas))
        if big.rnn_type == "LSTM":
            i, f, g, o = ((torch.sigmoid if act == SIGMOID else torch.tanh)(tgt[:, j * H:(j + 1) * H]) + deltas[name]
                          for j, (name, act) in enumerate(zip(gates, big.layout.activations)))
            c = f * state[1] + i * g  # eq. 6
            h_new = o * torch.tanh(c)
            return h_new, (h_new, c)
        r = torch.sigmoid(tgt[:, :H]) + deltas["r"]
        z = torch.sigmoid(tgt[:, H:2 * H]) + deltas["z"]
        n = torch.tanh(tgt[:, 2 * H:3 * H] + r * tgt[:, 3 * H:]) + deltas["n"]
        h_new = (1 - z) * n + z * h
        return h_new, h_new

    def forward(self, x: torch.Tensor, state=None):
        return run_steps(self._step, x, state, self.big.hidden, self.big.rnn_type == "LSTM")

    def collect(self) -> None:
        """Move the steps run since the last call into ``samples``/``gradients`` (one entry per forward
        call, rows = steps × batch, as ``SampleRecorder`` records them).  Call after backward."""
        if not self._pending:
            return
        steps, deltas = zip(*self._pending)
        self._pending = []
        missing = [g for g, d in deltas[0].items() if d.grad is None]
        if missing:
            raise RuntimeError(f"no gradient reached gate(s) {missing}: call collect() after the loss's backward()")
        self.samples.append(tuple(torch.cat(column) for column in zip(*steps)))
        self.gradients.append({g: torch.cat([d[g].grad for d in deltas]) for g in self.big.layout.gates})


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model``'s parameters stop requiring gradients inside the block: a probing pass then computes only
    the gradients that reach the probes' leaves, and leaves no ``.grad`` on the model."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)


def loss_gradients(layers: list[BigLayer], run_loss: Callable[[nn.Module], Iterable[torch.Tensor]],
                   batch_first: bool = False) -> tuple[list[list], list[list]]:
    """Per layer: (x, h) samples — (x, h, c) for an LSTM — of the big model's trajectory and ∂L/∂a per gate
    for their rows.

    ``run_loss(core)`` runs the caller's model with ``core`` (a stack of probes, called like a multi-layer
    ``nn.LSTM``/``nn.GRU``; ``batch_first`` as the caller's) in place of its recurrent layers and yields one loss
    per segment; each is back-propagated before the next segment runs (carry the state across segments
    detached, as in truncated BPTT).  Freeze the model's own parameters around it (:func:`frozen`), or they collect
    gradients too.
    """
    if not layers:
        raise ValueError("need at least one layer")
    probes = [GateGradientProbe(layer) for layer in layers]
    core = StackedRNN(probes, lstm=layers[0].rnn_type == "LSTM", batch_first=batch_first)
    with torch.enable_grad():
        for loss in run_loss(core):
            loss.backward()
            for probe in probes:
                probe.collect()
    return [p.samples for p in probes], [p.gradients for p in probes]


def allocate(layers: list[DualModuleLayer], target: float, samples: list[list], gradients: list[list] | None = None,
             grid: np.ndarray | None = None) -> list[dict[str, float]]:
    """Per layer {gate: insensitive ratio} with overall mean ``target`` at the least estimated cost.

    With ``gradients`` (from :func:`loss_gradients`) the cost is the diagonal-Fisher loss increase, without
    them the squared activation error; ``samples`` are per-layer (x, h) samples of the same rows ((x, h, c) for an
    LSTM with contribution-score masks: :func:`loss_gradients` records them).
    """
    grid = np.linspace(0, 0.98, 50) if grid is None else grid
    curves = {}
    for l, layer in enumerate(layers):
        c = error_curves(layer.big, layer.little, samples[l], grid, None if gradients is None else gradients[l])
        curves.update({(l, g): v for g, v in c.items()})
    return allocate_curves(layers, curves, grid, target)


def allocate_curves(layers: list[DualModuleLayer], curves: dict[tuple[int, str], np.ndarray], grid: np.ndarray,
                    target: float) -> list[dict[str, float]]:
    """Per layer {gate: ratio} with overall mean ``target`` from per-(layer, gate) cost curves over ``grid``."""
    sizes = {(l, g): layer.big.hidden for l, layer in enumerate(layers) for g in layer.big.layout.gates}
    alloc = allocate_ratios(curves, sizes, target, grid)
    return [{g: alloc[(l, g)] for g in layer.big.layout.gates} for l, layer in enumerate(layers)]


MEASURED_GRID = np.array([0.0, 0.2, 0.4, 0.55, 0.7, 0.8, 0.9, 0.98])


def measured_curves(layers: list[DualModuleLayer], loss_at: Callable[[list[dict[str, float]]], float],
                    grid: np.ndarray = MEASURED_GRID, progress: bool = True) -> dict[tuple[int, str], np.ndarray]:
    """Per (layer, gate): the *measured* loss increase with only that gate taking the little result, at each
    ratio of ``grid`` (``grid[0]`` must be 0).

    No estimate: ``loss_at(per-layer {gate: ratio})`` runs the dual model on held-out data, once per gate and
    grid point.  It settles what the two estimates guess at (correlated errors across rows and steps, what
    the layers above do with them), at the price of assuming the gates' losses add up.  Each curve is made
    non-decreasing from 0 (a gate that happens to lower the loss is taken as free, not as a gain).
    """
    if len(grid) < 2 or grid[0] != 0:
        raise ValueError(f"grid must start at ratio 0 and have another point, got {list(grid)}")
    keys = [(l, g) for l, layer in enumerate(layers) for g in layer.big.layout.gates]
    zero = [{g: 0.0 for g in layer.big.layout.gates} for layer in layers]
    base = loss_at(zero)
    curves = {}
    with tqdm(total=len(keys) * (len(grid) - 1), desc="measured gate costs", disable=not progress) as bar:
        for l, g in keys:
            losses = [base]
            for r in grid[1:]:
                ratios = [dict(layer_ratios) for layer_ratios in zero]
                ratios[l][g] = float(r)
                losses.append(loss_at(ratios))
                bar.update()
            curves[(l, g)] = np.maximum.accumulate(np.maximum(np.array(losses) - base, 0.0))
            log.info("measured cost of layer %d gate %s: %s", l, g, np.round(curves[(l, g)], 5).tolist())
    return curves
