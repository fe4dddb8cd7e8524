"""Gate layouts of PyTorch's LSTM and GRU, in the paper's vocabulary.

A big layer's gates are rows of ``W_ih`` (n × d_x) and ``W_hh`` (n × d_h), in PyTorch's
order.  The *mask* has one bit per gate row (n = 4h for LSTM, 3h for GRU).  The little
module predicts one pre-activation per mask row, except for the GRU candidate gate
``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`` whose x- and h-parts it predicts
separately (r multiplies only the second), so the GRU little module has 4h outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

SIGMOID, TANH = "sigmoid", "tanh"


@dataclass(frozen=True)
class GateLayout:
    rnn_type: str
    gates: tuple[str, ...]  # mask blocks, each of ``hidden`` rows, in PyTorch order
    activations: tuple[str, ...]

    @property
    def n_gates(self) -> int:
        return len(self.gates)

    def little_outputs(self, hidden: int) -> int:
        """Rows of W_LL: one per mask row, plus h more for the GRU's split candidate gate."""
        return (self.n_gates + (self.rnn_type == "GRU")) * hidden

    def activation(self, gate: str) -> str:
        return self.activations[self.gates.index(gate)]


LSTM = GateLayout("LSTM", ("i", "f", "g", "o"), (SIGMOID, SIGMOID, TANH, SIGMOID))
GRU = GateLayout("GRU", ("r", "z", "n"), (SIGMOID, SIGMOID, TANH))
LAYOUTS = {"LSTM": LSTM, "GRU": GRU}


def layout(rnn_type: str) -> GateLayout:
    try:
        return LAYOUTS[rnn_type]
    except KeyError:
        raise ValueError(f"rnn_type must be one of {sorted(LAYOUTS)}, got {rnn_type!r}") from None
