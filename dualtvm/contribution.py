"""Contribution scores: a mask rule beyond eq. 5 that weighs saturation by what a gate's output is multiplied by.

Eq. 5 asks only whether φ is saturated at the little module's prediction (φ' small: an error
in y barely moves a).  But a gate's output enters the new state multiplied by another value,
and an error there is harmless when that value is small, saturated or not.  To first order,
with Δa ≈ φ'(y) Δy:

  LSTM (eq. 6)  Δc = g·Δi + c_prev·Δf + i·Δg,   Δh = tanh(c)·Δo + …
  GRU           Δh' = (1 − z)·Δn + (h − n)·Δz,   Δn = (1 − n²)·(W_hn h + b_hn)·Δr

so each row's *contribution score* is φ'(y) times the magnitude of its multiplier, both taken
from the little module's predictions (and the exactly known h, c_prev):

  LSTM  i: σ'·|g|   f: σ'·|c_prev|   g: tanh'·i   o: σ'·|tanh(ĉ)|,  ĉ = f·c_prev + i·g
  GRU   r: σ'·(1 − n²)·|u_h|·(1 − z)   z: σ'·|h − n|   n: (1 − n²)·(1 − z)

(u_h the little module's W_hn h + b_hn).  A row is sensitive where its score exceeds the gate's
threshold; calibrating that threshold to a ratio works as for eq. 5 (:mod:`dualtvm.thresholds`).
A GRU unit whose update gate keeps the old state (z ≈ 1) needs no candidate n at all: eq. 5
cannot see that, this rule can.
"""
from __future__ import annotations

import torch


def contribution_scores(rnn_type: str, pre_little: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None
                        ) -> list[torch.Tensor]:
    """One (B, H) score per gate, in the layout's order, from the little pre-activations (B, 4H) of step 2,
    the previous hidden state h and, for an LSTM, the previous cell state c."""
    H = h.shape[-1]
    blocks = [pre_little[..., j * H : (j + 1) * H] for j in range(4)]
    if rnn_type == "LSTM":
        if c is None:
            raise ValueError("an LSTM's contribution scores need the previous cell state c: pass (x, h, c) samples "
                             "(record(…, cells=True), or loss_gradients' samples)")
        i, f, o = (torch.sigmoid(blocks[j]) for j in (0, 1, 3))
        g = torch.tanh(blocks[2])
        c_new = f * c + i * g
        return [i * (1 - i) * g.abs(), f * (1 - f) * c.abs(), (1 - g * g) * i, o * (1 - o) * torch.tanh(c_new).abs()]
    if rnn_type != "GRU":
        raise ValueError(f"rnn_type must be LSTM or GRU, got {rnn_type!r}")
    r, z = torch.sigmoid(blocks[0]), torch.sigmoid(blocks[1])
    n = torch.tanh(blocks[2] + r * blocks[3])
    dn = (1 - n * n) * (1 - z)
    return [r * (1 - r) * dn * blocks[3].abs(), z * (1 - z) * (h - n).abs(), dn]
