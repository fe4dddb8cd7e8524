"""Dual-module output projection: the little module picks the logits that can win (beyond the paper).

The paper's little module serves *activated* GEMVs, whose outputs tolerate error where φ saturates.
A decoder's output projection (vocabulary × hidden: 32 MB at 7882 × 1024, as many bytes as a GNMT
decoder layer's) feeds an argmax (greedy search) or a softmax (beam search) instead, and there a logit
far below the largest one is just as insensitive: it cannot win the argmax and its softmax weight is
negligible.  So the same construction applies, with the analogue of eq. 5 for the argmax:

* little module (eqs. 2, 7): ``y_LL = W_LL [Q(P_lo x_lo); Q(P_hi x_hi)] + b_LL`` — ternary projections of the
  two halves of the input (the layers' [x; h] split, so the compiled kernels are the layers' own), W_LL
  fitted by least squares to the big logits over the training data and quantised;
* mask: a logit is *sensitive* where ``y_LL ≥ max(y_LL) − θ``; θ is calibrated on validation data to a
  target insensitive ratio (the run-time knob, as for the gates);
* eq. 1: sensitive logits are the big ones (only those rows of W are read), the rest keep y_LL.

A ranking needs less precision than eq. 3's distance guarantee: k = 64 per half kept every greedy
argmax of the 256- and 1024-unit GNMT decoders on Multi30k validation at 99.5 % insensitive (eq. 3 asks
430 for 7882 rows), hence the default ``k = 128``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .dual import MaskStats
from .little import (arrays_hash, design_matrix, equalised, learned_pair, least_squares, project_pair, size_suffix,
                     variant_suffix)
from .projection import Projection, check_kind
from .quantize import COMPILED_BITS, QuantizedTensor, quantize
from .thresholds import INF, QUANTILE_LEVELS, check_ratio

log = logging.getLogger(__name__)

GATE = "logits"  # the mask statistics' name for the output projection's rows


@dataclass
class OutputConfig:
    """How to build the little module of an output projection."""

    k: int = 128  # projected dims per half of the input (see the module docstring)
    bits: int = 8  # W_LL precision: 8 (default) or 4, the compiled little GEMVs'
    act_bits: int = 8  # run-time precision of the projected input
    seed: int = 0
    ridge: float = 1e-6
    projection: str = "sparse"  # eq. 2's random projection, or "learned" (little.learned_pair: fewer k for the ranking)

    def __post_init__(self) -> None:
        check_kind(self.projection)

    @property
    def variant(self) -> str:
        """What this output little module's artefact and engines are suffixed with: ``-k<k>`` for another k than
        the default's, then :func:`~dualtvm.little.variant_suffix` (``-w4``, ``-learned``)."""
        return (size_suffix(k=None if self.k == OutputConfig.k else self.k)
                + variant_suffix(self.bits, projection=self.projection))


def linear_hash(linear: nn.Linear) -> str:
    """sha256 of an ``nn.Linear``'s fp32 weight and bias (zeros when it has none)."""
    from .linear import weight_hash

    w = linear.weight.detach().to(torch.float32).numpy()
    b = linear.bias.detach().to(torch.float32).numpy() if linear.bias is not None else np.zeros(w.shape[0], np.float32)
    return weight_hash(w, b)


@dataclass
class OutputLittle:
    """Projection, quantised W_LL / b_LL and the gap calibration of one output projection."""

    rows: int  # vocabulary size
    cols: int  # input width
    proj_lo: Projection  # k × split
    proj_hi: Projection  # k × (cols − split)
    weight: QuantizedTensor  # (rows, 2k)
    bias: torch.Tensor  # (rows,)
    act_bits: int
    big_hash: str
    gap_quantiles: np.ndarray | None = None  # of max(y_LL) − y_LL over calibration steps
    fit_seconds: float = 0.0

    @property
    def k(self) -> int:
        return self.proj_lo.shape[0]

    @property
    def split(self) -> int:
        """Input columns [0, split) form the low half, [split, cols) the high one."""
        return self.proj_lo.shape[1]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Step 1: [Q(P_lo x_lo); Q(P_hi x_hi)], each half quantised with its own scale."""
        return project_pair(self.proj_lo, self.proj_hi, x[..., : self.split], x[..., self.split :], self.act_bits)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Step 2: y_LL = W_LL z + b_LL for every row."""
        return self.project(x) @ self.weight.dequantized_t() + self.bias

    def theta(self, ratio: float) -> float:
        """The margin θ that leaves ``ratio`` of the calibration logits insensitive (0 → every row sensitive)."""
        ratio = check_ratio(ratio)
        if ratio <= 0.0:
            return INF
        if self.gap_quantiles is None:
            raise RuntimeError("output little module is not calibrated: run calibrate_output() first")
        return float(np.interp(1.0 - ratio, np.linspace(0, 1, len(self.gap_quantiles)), self.gap_quantiles))

    def param_bytes(self) -> int:
        return self.weight.nbytes() + 4 * self.bias.numel()

    def content_hash(self) -> str:
        """sha256 of everything a compiled build holds of this module (a build is reused only for it)."""
        return arrays_hash(self.proj_lo.codes, self.proj_hi.codes, self.proj_lo.row_scales(), self.proj_hi.row_scales(),
                           self.weight.codes.numpy(), self.weight.scale.numpy(),
                           self.bias.numpy(), self.gap_quantiles if self.gap_quantiles is not None else np.zeros(0))


def band_mask(little_logits: torch.Tensor, theta: float) -> torch.Tensor:
    """The argmax analogue of eq. 5: True (sensitive) where y_LL ≥ max(y_LL) − θ, per row of a (B, V) batch."""
    return little_logits >= little_logits.amax(dim=-1, keepdim=True) - theta


def fit_output_little(linear: nn.Linear, inputs: Iterable[torch.Tensor], cfg: OutputConfig | None = None
                      ) -> OutputLittle:
    """Fit W_LL, b_LL to ``linear``'s outputs over batches of its inputs (eq. 7 by least squares), then quantise."""
    cfg = cfg or OutputConfig()
    if cfg.bits not in COMPILED_BITS:
        raise ValueError(f"output little module bits must be 8 or 4 (the compiled little GEMVs), got {cfg.bits}")
    t0 = time.time()
    rows, cols = linear.weight.shape
    if cols < 2:
        raise ValueError(f"the output projection needs at least 2 input columns to split, got {cols}")
    split = (cols + 1) // 2
    w_big = linear.weight.detach().to(torch.float32)
    b_big = linear.bias.detach().to(torch.float32) if linear.bias is not None else torch.zeros(rows)
    if cfg.projection == "learned":  # P is learned from the inputs before the fit reads them again
        inputs = [x.detach().to(torch.float32).reshape(-1, cols) for x in inputs]
        p_lo, p_hi = learned_pair(w_big[:, :split], w_big[:, split:], ((x[:, :split], x[:, split:]) for x in inputs),
                                  cfg.k)
    else:
        p_lo, p_hi = Projection.draw(cfg.k, split, cfg.seed), Projection.draw(cfg.k, cols - split, cfg.seed + 1)

    def pairs():
        for x in inputs:
            x = x.detach().to(torch.float32).reshape(-1, cols)
            yield design_matrix(p_lo, p_hi, x[:, :split], x[:, split:]), x @ w_big.t() + b_big

    w, b = least_squares(pairs(), 2 * cfg.k + 1, rows, cfg.ridge)
    p_lo, p_hi, w = equalised(p_lo, p_hi, w, cfg.bits)
    little = OutputLittle(rows, cols, p_lo, p_hi, quantize(w, cfg.bits, per_row=True), b, cfg.act_bits,
                          linear_hash(linear))
    little.fit_seconds = time.time() - t0
    log.info("output little module %d x %d: k=%d per half (%s projection), %.1fs", rows, cols, cfg.k, cfg.projection,
             little.fit_seconds)
    return little


def calibrate_output(little: OutputLittle, inputs: Iterable[torch.Tensor], max_values: int = 4_000_000) -> None:
    """Record the quantiles of max(y_LL) − y_LL over calibration inputs: any ratio then maps to θ."""
    gaps = []
    with torch.no_grad():
        for x in inputs:
            y = little.logits(x.detach().to(torch.float32).reshape(-1, little.cols))
            gaps.append((y.amax(dim=-1, keepdim=True) - y).reshape(-1))
    v = torch.cat(gaps).double()
    if v.numel() > max_values:
        v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:max_values]]
    little.gap_quantiles = torch.quantile(v, torch.linspace(0, 1, QUANTILE_LEVELS, dtype=torch.float64)).numpy()


class DualOutput(nn.Module):
    """An ``nn.Linear`` output projection run as big + little module (the PyTorch reference).

    Like :class:`~dualtvm.dual.DualModuleLayer` it computes the big GEMV densely and selects rows by
    the mask; the compiled one (:func:`dualtvm.linear.build_dual_linear`) reads only the sensitive rows.
    """

    def __init__(self, linear: nn.Linear, little: OutputLittle) -> None:
        super().__init__()
        if little.big_hash != linear_hash(linear):
            raise ValueError("output little module was fitted to a different output projection (hash mismatch)")
        self.linear, self.little = linear, little
        self.stats = MaskStats()
        self.theta = INF

    def set_insensitive_ratio(self, ratio: float) -> None:
        self.theta = self.little.theta(ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y_ll = self.little.logits(x.detach().to(torch.float32))
        mask = band_mask(y_ll, self.theta)
        self.stats.add(GATE, mask)
        return torch.where(mask, self.linear(x), y_ll)  # eq. 1
