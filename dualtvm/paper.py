"""What the paper reports (``../shared/paper/dual-module-inference.txt``): the numbers our results are set beside.

Data only (no torch, no TVM), so that renderers, goals and scripts can read them cheaply.
"""
from __future__ import annotations

import re

PPL = {  # Tables 2 and 3, PTB test: (base PPL, {insensitive ratio: PPL})
    "lstm-1500": (80.64, {0.1: 80.72, 0.3: 80.56, 0.5: 81.36, 0.7: 87.48, 0.9: 109.37}),
    "lstm-750": (84.32, {0.1: 84.42, 0.3: 84.43, 0.5: 84.29, 0.7: 84.89, 0.9: 88.44}),
    "gru-1500": (85.48, {0.1: 85.62, 0.3: 86.01, 0.5: 88.73, 0.7: 98.09, 0.9: 122.75}),
    "gru-750": (89.64, {0.1: 89.81, 0.3: 89.63, 0.5: 89.69, 0.7: 92.51, 0.9: 102.37}),
}
TABLE4_BLEU = {0.0: 24.32, 0.1: 24.33, 0.3: 24.18, 0.5: 23.73, 0.7: 21.92, 0.9: 11.77}  # GNMT En→De, by ratio
TABLE7_PPL = {0: (85.52, 86.21), 80: (86.42, 88.46), 90: (88.75, 90.96)}  # WikiText-2 LSTM-1500 by sparsity: w/o, w/
FIGURE4 = {"little_bytes_pct": 10.0, "little_ops_pct": 40.0}
"""Figure 4 on average over the paper's layers: the little module's storage and operations in % of the base
layer's (§3.6)."""
LSTM_1500_SPEEDUP_AT_HALF = 1.67  # Table 2: LSTM-1500 at 50 %, over the dense step
TABLE5_DENSE_MS = 1.477  # Table 5: the dense LSTM-1500 step (cold cache, Xeon E5-2698 v4)
TABLE5_TIME = {  # Table 5's right half, LSTM-1500 at 50 %, INT8: k -> (ε, step ms, SRP %, little %, big %)
    966: (0.3, 1.076, 8, 14, 44), 417: (0.5, 0.885, 4, 8, 47), 266: (0.7, 0.866, 3, 5, 46)}
"""Each part in % of the dense step's time; mask and assembly are not listed apart."""


def paper_model(name: str) -> str:
    """The paper's model a quality row's model name is: ``ptb-lstm-750`` → ``lstm-750``; a retraining
    (``ptb-lstm-1500-r2``) is the same paper model; one of the paper's names is itself."""
    name = re.sub(r"-r\d+$", "", name)
    return name if name in PPL else name.split("-", 1)[-1]


def paper_delta_pct(model: str, ratio: float) -> float | None:
    """The paper's test-PPL change (%) at ``ratio`` for a quality row's model (Tables 2/3), None where it has none."""
    base, at = PPL.get(paper_model(model), (None, {}))
    return None if base is None or ratio not in at else 100 * (at[ratio] / base - 1)
