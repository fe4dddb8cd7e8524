"""Dual-module LSTM/GRU layers (paper eq. 1, eq. 6, Algorithm 1) — the PyTorch reference.

A :class:`DualModuleLayer` is a drop-in for a single-layer ``nn.LSTM``/``nn.GRU`` (same
call signature, seq-first).  Each step: the little module predicts every gate (steps 1–2),
the mask marks sensitive rows (step 3: eq. 5, or the contribution score of
:mod:`dualtvm.contribution` — ``mask_inputs``), the big module's result replaces the little
one on those rows (steps 4–5, eq. 1).  The reference computes the big GEMV densely and
selects rows — the compiled decoder is what reads only the sensitive rows; its results are
verified against this module.  At insensitive ratio 0 the layer *is* the big layer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .contribution import contribution_scores
from .gates import SIGMOID
from .little import BigLayer, LittleModule
from .thresholds import INF, Thresholds, check_mask_rule, check_ratio, sensitive_mask

log = logging.getLogger(__name__)


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x) if name == SIGMOID else torch.tanh(x)


def little_activations(layer: BigLayer, pre_little: torch.Tensor) -> list[torch.Tensor]:
    """a_LL of every gate (step 2); the GRU candidate gate with r_LL, as the mask needs it before the big GEMV."""
    H = layer.hidden
    if layer.rnn_type == "GRU":
        r = torch.sigmoid(pre_little[..., :H])
        return [r, torch.sigmoid(pre_little[..., H : 2 * H]),
                torch.tanh(pre_little[..., 2 * H : 3 * H] + r * pre_little[..., 3 * H :])]
    return [_act(a, pre_little[..., j * H : (j + 1) * H]) for j, a in enumerate(layer.layout.activations)]


def mask_inputs(layer: BigLayer, rule: str, pre_little: torch.Tensor, h: torch.Tensor,
                c: torch.Tensor | None = None, a_little: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """What each gate's mask band tests (``thresholds.MASK_RULES``): a_LL (eq. 5; ``a_little`` when the caller
    has it already) or the contribution score."""
    check_mask_rule(rule)
    if rule == "contribution":
        return contribution_scores(layer.rnn_type, pre_little, h, c)
    return a_little if a_little is not None else little_activations(layer, pre_little)


@dataclass
class MaskStats:
    """Counts of insensitive rows per gate over the steps run since the last reset."""

    insensitive: dict = field(default_factory=dict)
    total: dict = field(default_factory=dict)

    def add(self, gate: str, mask: torch.Tensor) -> None:
        self.add_counts(gate, int((~mask).sum()), mask.numel())

    def add_counts(self, gate: str, insensitive: int, total: int) -> None:
        self.insensitive[gate] = self.insensitive.get(gate, 0) + insensitive
        self.total[gate] = self.total.get(gate, 0) + total

    def ratio(self, gate: str | None = None) -> float:
        if gate is not None:
            return self.insensitive[gate] / max(self.total[gate], 1)
        return sum(self.insensitive.values()) / max(sum(self.total.values()), 1)


def _map_state(state, fn):
    """``fn`` on an RNN state: one tensor (GRU) or an (h, c) pair (LSTM)."""
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


def run_steps(step, x: torch.Tensor, state, hidden: int, lstm: bool):
    """A single-layer cell run over x (T, B, d) with ``nn.LSTM``/``nn.GRU``'s call signature: state (1, B, H)
    (an (h, c) pair for LSTM; zeros when None) in and out; ``step(x_t, st)`` → (h, st) on (B, ·) tensors."""
    if state is None:
        z = x.new_zeros(1, x.shape[1], hidden)
        state = (z, z.clone()) if lstm else z
    st = _map_state(state, lambda s: s[0])
    outs = []
    for t in range(x.shape[0]):
        h, st = step(x[t], st)
        outs.append(h)
    return torch.stack(outs), _map_state(st, lambda s: s.unsqueeze(0))


class DualModuleLayer(nn.Module):
    """Big layer + little module + thresholds; forward(x (T, B, d_x), state) like ``nn.LSTM``."""

    def __init__(self, big: BigLayer, little: LittleModule) -> None:
        super().__init__()
        if little.big_hash != big.weight_hash():
            raise ValueError("little module was fitted to different big weights (hash mismatch)")
        self.big, self.little = big, little
        self.stats = MaskStats()
        self.set_bands(Thresholds({g: (-INF, INF) for g in big.layout.gates}))

    @property
    def rnn_type(self) -> str:
        return self.big.rnn_type

    def set_bands(self, thresholds: Thresholds) -> None:
        lo, hi = thresholds.row_bounds(self.big.layout.gates, self.big.hidden)
        self.thresholds = thresholds
        self.lo, self.hi = torch.from_numpy(lo), torch.from_numpy(hi)

    def set_insensitive_ratio(self, ratio: "float | dict[str, float]") -> None:
        """One ratio for every gate, or {gate: ratio}; thresholds come from the calibration."""
        gates = self.big.layout.gates
        ratios = ratio if isinstance(ratio, dict) else {g: ratio for g in gates}
        if not self.little.calibration and any(check_ratio(r) > 0 for r in ratios.values()):
            raise RuntimeError("little module is not calibrated: run calibrate() before asking for a ratio > 0")
        bands = {g: (self.little.calibration[g].band(ratios[g]) if check_ratio(ratios[g]) > 0 else (-INF, INF))
                 for g in gates}
        self.set_bands(Thresholds(bands))

    # ---------------------------------------------------------------- one step
    def step(self, x: torch.Tensor, state, record: bool = True):
        """One time step for a batch: returns (h', new_state, mask (B, n_gates·H))."""
        big, H = self.big, self.big.hidden
        gates = big.layout.gates
        h = state[0] if isinstance(state, tuple) else state
        c = state[1] if isinstance(state, tuple) else None
        pre_ll = self.little.preactivations(x, h)
        a_ll = little_activations(big, pre_ll)
        tested = mask_inputs(big, self.little.mask_rule, pre_ll, h, c, a_ll)
        masks = [sensitive_mask(v, self.lo[j * H : (j + 1) * H], self.hi[j * H : (j + 1) * H])
                 for j, v in enumerate(tested)]
        gi = x @ big.w_ih.t() + big.b_ih  # reference: dense, then select rows by the mask
        gh = h @ big.w_hh.t() + big.b_hh
        if self.rnn_type == "LSTM":
            acts = [torch.where(m, _act(big.layout.activations[j], gi[:, j * H : (j + 1) * H] + gh[:, j * H : (j + 1) * H]),
                                a_ll[j]) for j, m in enumerate(masks)]  # eq. 1
            i, f, g, o = acts
            c = f * c + i * g  # eq. 6
            h_new = o * torch.tanh(c)
            new_state = (h_new, c)
        else:
            m_r, m_z, m_n = masks
            r = torch.where(m_r, torch.sigmoid(gi[:, :H] + gh[:, :H]), a_ll[0])
            z = torch.where(m_z, torch.sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H]), a_ll[1])
            # the n mask tested r_LL (the final r needs the big GEMV, which needs the mask); the
            # little n value uses the final r — exactly what the compiled kernels do
            n_ll = torch.tanh(pre_ll[:, 2 * H : 3 * H] + r * pre_ll[:, 3 * H :])
            n = torch.where(m_n, torch.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :]), n_ll)
            h_new = (1 - z) * n + z * h
            new_state = h_new
        if record:
            for g, m in zip(gates, masks):
                self.stats.add(g, m)
        return h_new, new_state, torch.cat(masks, dim=-1)

    def forward(self, x: torch.Tensor, state=None):
        return run_steps(lambda x_t, st: self.step(x_t, st)[:2], x, state, self.big.hidden, self.rnn_type == "LSTM")

    def big_bytes_read_fraction(self) -> float:
        """Fraction of the big weight bytes a masked GEMV reads (= sensitive rows, both W_ih and W_hh)."""
        return 1.0 - self.stats.ratio()


class StackedRNN(nn.Module):
    """Single-layer RNN modules run in sequence, called like a multi-layer ``nn.LSTM``/``nn.GRU``: input
    (T, B, d), (B, T, d) with ``batch_first``, or unbatched (T, d) with state (layers, H); the layers
    themselves always run seq-first on batches."""

    def __init__(self, layers: list[nn.Module], lstm: bool, batch_first: bool = False) -> None:
        super().__init__()
        if not layers:
            raise ValueError("need at least one layer")
        self.layers = nn.ModuleList(layers)
        self.lstm = lstm
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor, state=None):
        if x.dim() not in (2, 3):
            raise ValueError(f"expected input of 3 dims ({'B, T' if self.batch_first else 'T, B'}, features) or 2 "
                             f"(T, features: unbatched), got shape {tuple(x.shape)}")
        if x.dim() == 2:  # unbatched, as nn.LSTM: a batch of one, state (layers, H) <-> (layers, 1, H)
            state = None if state is None else _map_state(state, lambda s: s.unsqueeze(1))
            out, state = self._seq_first(x.unsqueeze(1), state)
            return out.squeeze(1), _map_state(state, lambda s: s.squeeze(1))
        if self.batch_first:
            out, state = self._seq_first(x.transpose(0, 1), state)
            return out.transpose(0, 1), state
        return self._seq_first(x, state)

    def _seq_first(self, x: torch.Tensor, state):
        outs_h, outs_c = [], []
        for i, layer in enumerate(self.layers):
            st = None
            if state is not None:
                st = (state[0][i : i + 1], state[1][i : i + 1]) if self.lstm else state[i : i + 1]
            x, st = layer(x, st)
            outs_h.append(st[0] if self.lstm else st)
            if self.lstm:
                outs_c.append(st[1])
        return x, ((torch.cat(outs_h), torch.cat(outs_c)) if self.lstm else torch.cat(outs_h))


# Helpers over any list of layers with ``set_insensitive_ratio`` and ``stats`` (PyTorch dual-module
# layers, or compiled ones standing in for them, as in a GNMT decoder).
def set_layer_ratios(layers: list[nn.Module], ratio: "float | list") -> None:
    """A float for all, or one entry (float or {gate: ratio}) per layer."""
    per_layer = ratio if isinstance(ratio, (list, tuple)) else [ratio] * len(layers)
    if len(per_layer) != len(layers):
        raise ValueError(f"got {len(per_layer)} per-layer ratios for {len(layers)} layers")
    for layer, r in zip(layers, per_layer):
        layer.set_insensitive_ratio(r)


def reset_layer_stats(layers: list[nn.Module]) -> None:
    for layer in layers:
        layer.stats = MaskStats()


def measured_layer_ratio(layers: list[nn.Module]) -> float:
    """Insensitive outputs over all outputs, summed over the layers' mask statistics."""
    ins = sum(sum(l.stats.insensitive.values()) for l in layers)
    tot = sum(sum(l.stats.total.values()) for l in layers)
    return ins / max(tot, 1)


class DualModuleRNN(StackedRNN):
    """Stack of dual-module layers with the call signature of a multi-layer ``nn.LSTM``/``nn.GRU``."""

    def __init__(self, layers: list[DualModuleLayer], batch_first: bool = False) -> None:
        super().__init__(layers, lstm=bool(layers) and layers[0].rnn_type == "LSTM", batch_first=batch_first)

    @property
    def rnn_type(self) -> str:
        return self.layers[0].rnn_type

    def set_insensitive_ratio(self, ratio: "float | list") -> None:
        """A float for all, or one entry (float or {gate: ratio}) per layer."""
        set_layer_ratios(list(self.layers), ratio)

    def reset_stats(self) -> None:
        reset_layer_stats(list(self.layers))

    def measured_ratio(self) -> float:
        return measured_layer_ratio(list(self.layers))

    def gate_ratios(self) -> list[dict[str, float]]:
        return [{g: l.stats.ratio(g) for g in l.stats.total} for l in self.layers]


def error_curves(layer: BigLayer, little: LittleModule, samples, grid: np.ndarray,
                 gradients: list[dict[str, torch.Tensor]] | None = None) -> dict[str, np.ndarray]:
    """Per gate: the cost of taking the little result at each ratio of ``grid``, per row.

    Without ``gradients``: mean squared activation error.  With ``gradients[i][g]`` = ∂L/∂a for the
    rows of ``samples[i]`` (``sensitivity.GateGradientProbe``): the diagonal-Fisher estimate of the
    loss increase, mean of (∂L/∂a · Δa)².
    """
    from .thresholds import GateCalibration

    if gradients is not None and len(gradients) != len(samples):
        raise ValueError(f"{len(gradients)} gradient entries for {len(samples)} samples")
    sums = {g: np.zeros(len(grid)) for g in layer.layout.gates}
    count = 0
    with torch.no_grad():
        for s, sample in enumerate(samples):
            x, h = sample[:2]
            pre_ll = little.preactivations(x, h)
            # the GRU candidate's little value with r_LL, as the mask has it; the big one with the big r
            a_ll, a_big = little_activations(layer, pre_ll), little_activations(layer, layer.targets(x, h))
            tested = mask_inputs(layer, little.mask_rule, pre_ll, h, *sample[2:3], a_little=a_ll)
            for j, g in enumerate(layer.layout.gates):
                cal: GateCalibration = little.calibration[g]
                err = (a_ll[j] - a_big[j]) ** 2
                if gradients is not None:
                    err = err * gradients[s][g] ** 2
                for i, r in enumerate(grid):
                    lo, hi = cal.band(float(r))
                    sums[g][i] += float((err * (~sensitive_mask(tested[j], lo, hi))).sum())
            count += x.shape[0] * layer.hidden
    return {g: v / max(count, 1) for g, v in sums.items()}
