"""Uniform symmetric quantisation of the little module (paper §3.2, Table 6).

Weights are quantised once (per-row scales by default: every output row of W_LL gets its
own scale, which costs n floats and keeps rows of small magnitude precise; one scale per tensor lost more below
INT8 in Table 6's ``per-tensor`` rows: +0.73 against +0.60 % PPL at INT4 on LSTM-750, the same at INT8); the projected
inputs are quantised at run time with one scale per vector (per-tensor, dynamic).  Scales are
max|w| / qmax at 8 bits and more; at 4 and 2 bits they are searched for the least squared error (a coarse grid
spent on the few largest weights rounds the many small ones away: on the learned k = 128 little module of LSTM-1500,
INT4 at 50 % lost +2.74 % PPL with max-abs scales and +1.72 % with searched ones).  At those grids W_LL's columns
are also equalised first (:func:`equalising_scale`): their norms move onto the projected inputs, which the run-time
INT8 quantisation resolves finely, so the coarse per-row grid spends its codes on columns of one size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SUPPORTED_BITS = (32, 16, 8, 4, 2, 1)
COMPILED_BITS = (8, 4)  # W_LL precisions the compiled little GEMVs run (Table 6's others: PyTorch only)
CLIP_SEARCH_BITS = 4  # at 4 bits and fewer the max-abs grid rounds most weights to few codes (INT2: {-1, 0, 1}·max|w|)


def qmax(bits: int) -> int:
    """Largest code of a symmetric signed b-bit grid (INT1 is sign only: ±1)."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


@dataclass
class QuantizedTensor:
    codes: torch.Tensor  # integer codes (int8/int16/int32 storage), or the fp32 values when bits == 32
    scale: torch.Tensor  # (rows, 1) per-row or () per-tensor
    bits: int

    def dequantize(self) -> torch.Tensor:
        return self.codes.to(torch.float32) * self.scale

    def dequantized_t(self) -> torch.Tensor:
        """``dequantize().t()``, contiguous, computed once: the little modules' matmul operand (eq. 4)."""
        cached = self.__dict__.get("_dequantized_t")
        if cached is None:
            cached = self.__dict__["_dequantized_t"] = self.dequantize().t().contiguous()
        return cached

    def nbytes(self) -> int:
        """Storage as Table 6 counts it: codes at ``bits`` each, plus fp32 scales."""
        return self.codes.numel() * self.bits // 8 + self.scale.numel() * 4


def _storage_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.float32


def quantize(w: torch.Tensor, bits: int = 8, per_row: bool = True) -> QuantizedTensor:
    """Round-to-nearest onto a symmetric grid; INT1 uses sign × mean|w| (binary weights)."""
    w = w.detach().to(torch.float32)
    if bits == 32:
        return QuantizedTensor(w.clone(), torch.ones(()), 32)
    dims = 1 if per_row else None
    if bits == 1:
        mag = w.abs().mean(dim=dims, keepdim=per_row) if per_row else w.abs().mean()
        codes = torch.where(w >= 0, 1, -1).to(torch.int8)
        return QuantizedTensor(codes, mag.clamp_min(1e-12), 1)
    q = qmax(bits)
    amax = w.abs().amax(dim=dims, keepdim=True) if per_row else w.abs().amax()
    scale = (amax / q).clamp_min(1e-12)
    if bits <= CLIP_SEARCH_BITS:
        scale = _clipped_scale(w, scale, q, dims)
    codes = torch.clamp(torch.round(w / scale), -q, q).to(_storage_dtype(bits))
    return QuantizedTensor(codes, scale, bits)


def _clipped_scale(w: torch.Tensor, scale: torch.Tensor, q: int, dims) -> torch.Tensor:
    """The scale (per row or tensor) among ``c · scale``, c ∈ (0, 1], with the least squared rounding error:
    clipping the few large weights buys a finer step for the many small ones."""
    best, best_err = scale, None
    for c in torch.linspace(0.05, 1.0, 39).tolist():
        s = scale * c
        err = (torch.clamp(torch.round(w / s), -q, q) * s - w).pow(2).sum(dim=dims, keepdim=dims is not None)
        if best_err is None:
            best, best_err = s, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, s, best), torch.where(better, err, best_err)
    return best


def equalising_scale(w: torch.Tensor, bits: int) -> torch.Tensor | None:
    """Per-column scale t (2k,) of a little module's fp32 W_LL to move onto its projected inputs before quantising
    W_LL / t at ``bits``: z_j t_j · (W_LL)_ij / t_j is the same product, but the run-time INT8 grid of z resolves
    the columns' range far better than a coarse per-row grid of W_LL does.  A learned projection whitens z, so W_LL's
    columns carry the singular values of the big layer (their norms fall ~30× over k = 128 on LSTM-1500): a row's
    INT4 step, set by the largest columns, rounds the small ones away.  t = column norm / largest, as in
    activation-aware weight equalisation (AWQ, SmoothQuant) with the difficulty moved the other way, from the weights
    to the activations.  On LSTM-1500's learned k = 128 module (``ptb-lstm-1500-r3``), INT4 little MSE per gate
    fell ~2.3× (near INT8's) and its PPL loss at 50 % from +1.72 % to +0.95 % (docs/results.md, allocation study).  None at
    grids finer than :data:`CLIP_SEARCH_BITS` bits: INT8 resolves the small columns already."""
    if bits > CLIP_SEARCH_BITS:
        return None
    t = w.detach().to(torch.float32).norm(dim=0)
    return (t / t.max().clamp_min(1e-30)).clamp_min(1e-6)


def quantize_activations(x: torch.Tensor, bits: int = 8) -> QuantizedTensor:
    """Run-time quantisation of projected inputs: one scale per vector (last dim)."""
    if bits == 32:
        return QuantizedTensor(x, torch.ones(()), 32)
    q = qmax(bits)
    scale = (x.abs().amax(dim=-1, keepdim=True) / q).clamp_min(1e-12)
    codes = torch.clamp(torch.round(x / scale), -q, q).to(_storage_dtype(bits))
    return QuantizedTensor(codes, scale, bits)


def fake_quantize_activations(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    return quantize_activations(x, bits).dequantize() if bits != 32 else x


def max_rounding_error(qt: QuantizedTensor) -> torch.Tensor:
    """Bound on |w − dequantize(quantize(w))| per element within the grid (|w| ≤ qmax · scale: every weight where the
    scale is max|w| / qmax): half a step (not valid for INT1)."""
    return qt.scale / 2


def kernel_codes(qt: QuantizedTensor) -> tuple[np.ndarray, np.ndarray]:
    """INT8 or INT4 codes (as int8) and per-row fp32 scales, as the compiled little GEMVs take them."""
    if qt.bits not in COMPILED_BITS:
        raise ValueError(f"the compiled little GEMV takes INT8 or INT4 weights, got INT{qt.bits}")
    scale = qt.scale.reshape(-1).numpy().astype(np.float32)
    if scale.size == 1:
        scale = np.full(qt.codes.shape[0], scale.item(), dtype=np.float32)
    return qt.codes.numpy().astype(np.int8), scale
