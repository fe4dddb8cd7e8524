"""Sparse random projection (paper eq. 2) and the reduced dimension k (eq. 3).

P ∈ (1/√3)·{−1, 0, +1}^(k×d) with probabilities 1/6, 2/3, 1/6 (Achlioptas 2003).  P is
stored as its ternary sign matrix (int8) plus the scale, so kernels can skip the zeros
and never multiply: (P x)_i = (Σ_{j∈pos(i)} x_j − Σ_{j∈neg(i)} x_j) / √3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SCALE = 1.0 / math.sqrt(3.0)


def reduced_dim(n: int, eps: float = 0.5) -> int:
    """Eq. 3: k = 4 ln n / (ε²/2 − ε³/3), rounded down (LSTM-1500: n = 6000 → 417 at ε = 0.5)."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"epsilon must lie in (0, 1), got {eps}")
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    return int(4.0 * math.log(n) / (eps**2 / 2.0 - eps**3 / 3.0))


@dataclass
class SparseProjection:
    """A k×d ternary projection drawn from ``seed``; ``signs`` is int8 in {−1, 0, +1}."""

    signs: np.ndarray
    seed: int
    scale: float = SCALE

    @classmethod
    def draw(cls, k: int, d: int, seed: int) -> "SparseProjection":
        rng = np.random.default_rng(seed)
        u = rng.random((k, d))
        signs = np.zeros((k, d), dtype=np.int8)
        signs[u < 1.0 / 6.0] = -1
        signs[u >= 5.0 / 6.0] = 1
        return cls(signs, seed)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.signs.shape)  # type: ignore[return-value]

    def dense(self) -> np.ndarray:
        """fp32 P (for references and tests; kernels use the signs)."""
        return self.signs.astype(np.float32) * np.float32(self.scale)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d) -> (..., k)."""
        cached = self.__dict__.get("_dense_t")
        if cached is None or cached.dtype != x.dtype:
            cached = self.__dict__["_dense_t"] = torch.from_numpy(self.signs).to(x.dtype).t().contiguous()
        return (x @ cached) * self.scale

    def index_lists(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """CSR form (pos_ptr, pos_idx, neg_ptr, neg_idx) of the +1 and −1 entries of each row."""
        out = []
        for sign in (1, -1):
            rows, cols = np.nonzero(self.signs == sign)
            ptr = np.zeros(self.signs.shape[0] + 1, dtype=np.int32)
            np.add.at(ptr, rows + 1, 1)
            out += [np.cumsum(ptr).astype(np.int32), cols.astype(np.int32)]
        return tuple(out)  # type: ignore[return-value]

    def distance_scale(self) -> float:
        """E‖Px‖² / ‖x‖² = k · (1/3) · scale²: the factor by which P scales squared distances."""
        return self.signs.shape[0] * self.scale**2 / 3.0
