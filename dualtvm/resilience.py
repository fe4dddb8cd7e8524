"""Table 1 (§2): random errors in the sensitive vs the insensitive region of each LSTM gate.

The motivation of the paper: Gaussian errors added to half of the pre-activations of every
gate hurt little when that half is the insensitive one (sigmoid outputs near 0, tanh outputs
near ±1 — eq. 5's complement), and much more when it is the sensitive half.  The regions are
split 50/50 per gate and step by activation magnitude; cosine similarities are between the
clean and the perturbed pre-activations (before the gate) and activations (after it), on the
perturbed model's own trajectory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .little import BigLayer

REGIONS = ("sensitive", "insensitive")


@dataclass
class CosineStats:
    """Running mean of per-row cosine similarity, per gate, before and after φ."""

    before: dict[str, list[float]] = field(default_factory=dict)
    after: dict[str, list[float]] = field(default_factory=dict)

    def add(self, gate: str, clean_pre, noisy_pre, clean_act, noisy_act) -> None:
        cos = nn.functional.cosine_similarity
        self.before.setdefault(gate, []).append(float(cos(clean_pre, noisy_pre, dim=-1).mean()))
        self.after.setdefault(gate, []).append(float(cos(clean_act, noisy_act, dim=-1).mean()))

    def means(self) -> dict[str, dict[str, float]]:
        mean = lambda v: round(sum(v) / max(len(v), 1), 4)  # noqa: E731
        return {"before": {g: mean(v) for g, v in self.before.items()},
                "after": {g: mean(v) for g, v in self.after.items()}}


def sensitive_half(act: torch.Tensor, activation: str) -> torch.Tensor:
    """Per row, the half of the units in the sensitive region (eq. 5 with a median threshold)."""
    score = act if activation == "sigmoid" else -act.abs()  # sigmoid: large outputs; tanh: the linear middle
    return score >= score.median(dim=-1, keepdim=True).values


class NoisyLSTMLayer(nn.Module):
    """One LSTM layer (``nn.LSTM`` call signature) with N(0, (σ·std(pre))²) errors in one region of every gate."""

    def __init__(self, big: BigLayer, region: str, relative_std: float = 0.45, seed: int = 0) -> None:
        super().__init__()
        if big.rnn_type != "LSTM":
            raise ValueError("the Table 1 study is defined for LSTM gates")
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
        self.big, self.region, self.relative_std = big, region, relative_std
        self.generator = torch.Generator().manual_seed(seed)
        self.stats = CosineStats()

    def step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        big, H = self.big, self.big.hidden
        pre = x @ big.w_ih.t() + big.b_ih + h @ big.w_hh.t() + big.b_hh
        acts = []
        for j, (gate, name) in enumerate(zip(big.layout.gates, big.layout.activations)):
            clean = pre[:, j * H : (j + 1) * H]
            phi = torch.sigmoid if name == "sigmoid" else torch.tanh
            clean_act = phi(clean)
            sensitive = sensitive_half(clean_act, name)
            where = sensitive if self.region == "sensitive" else ~sensitive
            noise = torch.randn(clean.shape, generator=self.generator) * self.relative_std * clean.std()
            noisy = clean + noise * where
            noisy_act = phi(noisy)
            self.stats.add(gate, clean, noisy, clean_act, noisy_act)
            acts.append(noisy_act)
        i, f, g, o = acts
        c = f * c + i * g
        return o * torch.tanh(c), c

    def forward(self, x: torch.Tensor, state=None):
        B, H = x.shape[1], self.big.hidden
        h, c = (s[0] for s in state) if state is not None else (x.new_zeros(B, H), x.new_zeros(B, H))
        outs = []
        for t in range(x.shape[0]):
            h, c = self.step(x[t], h, c)
            outs.append(h)
        return torch.stack(outs), (h.unsqueeze(0), c.unsqueeze(0))
