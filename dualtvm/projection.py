"""The little module's input projection: sparse random (paper eq. 2) or learned (beyond the paper); k (eq. 3).

Eq. 2: P ∈ (1/√3)·{−1, 0, +1}^(k×d) with probabilities 1/6, 2/3, 1/6 (Achlioptas 2003), drawn from a
seed.  Learned: the k directions of the inputs that carry most of the big layer's pre-activation
variance (:meth:`Projection.learned`) — same shape, same int8 storage, same kernels, a far smaller
regression error at the same k.  Either is stored as int8 codes times the constant 1/√3 that the
compiled kernels apply: eq. 2's codes are its signs; a learned projection's own scale is absorbed by
W_LL, which is fitted on top of it (eq. 7).  Rows may carry an fp32 scale each (``row_scale``): where W_LL's
columns are equalised for a coarse grid (:func:`dualtvm.quantize.equalising_scale`) their norms move here, before
the run-time quantisation of z, and the kernels multiply each projected value by it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SCALE = 1.0 / math.sqrt(3.0)
KINDS = ("sparse", "learned")  # eq. 2, or fitted to the big layer and its inputs


def reduced_dim(n: int, eps: float = 0.5) -> int:
    """Eq. 3: k = 4 ln n / (ε²/2 − ε³/3), rounded down (LSTM-1500: n = 6000 → 417 at ε = 0.5)."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"epsilon must lie in (0, 1), got {eps}")
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    return int(4.0 * math.log(n) / (eps**2 / 2.0 - eps**3 / 3.0))


def little_dim(n: int, eps: float = 0.5, k: int | None = None) -> int:
    """The little module's k: ``k`` where set (eq. 3 bounds eq. 2's distances and says nothing about a
    learned projection's k), else eq. 3's for n rows at ``eps``."""
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return k
    return reduced_dim(n, eps)


def check_kind(kind: str) -> str:
    """``kind`` if it names a projection (:data:`KINDS`), else a ValueError naming them."""
    if kind not in KINDS:
        raise ValueError(f"projection must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


@dataclass
class Projection:
    """A k×d projection: int8 ``codes`` × ``scale`` (× ``row_scale`` per row where set); ``kind`` "sparse" (eq. 2:
    codes are the ternary signs drawn from ``seed``) or "learned" (:meth:`learned`; ``seed`` unused)."""

    codes: np.ndarray
    seed: int
    scale: float = SCALE
    kind: str = "sparse"
    row_scale: np.ndarray | None = None  # (k,) fp32: W_LL's column norms moved onto z (quantize.equalising_scale)

    def __post_init__(self) -> None:
        if self.row_scale is not None:
            self.row_scale = np.asarray(self.row_scale, dtype=np.float32)
            if self.row_scale.shape != (self.codes.shape[0],):
                raise ValueError(f"row_scale of shape {self.row_scale.shape} for a projection of "
                                 f"{self.codes.shape[0]} rows")

    def with_row_scale(self, row_scale: np.ndarray | None) -> "Projection":
        """The same codes with another per-row scale (None: none)."""
        return Projection(self.codes, self.seed, self.scale, self.kind, row_scale)

    def row_scales(self) -> np.ndarray:
        """``row_scale``, ones where unset: what the compiled projection multiplies each projected value by."""
        return self.row_scale if self.row_scale is not None else np.ones(self.codes.shape[0], np.float32)

    @classmethod
    def draw(cls, k: int, d: int, seed: int) -> "Projection":
        """Eq. 2's sparse random projection."""
        rng = np.random.default_rng(seed)
        u = rng.random((k, d))
        signs = np.zeros((k, d), dtype=np.int8)
        signs[u < 1.0 / 6.0] = -1
        signs[u >= 5.0 / 6.0] = 1
        return cls(signs, seed)

    @classmethod
    def learned(cls, weight: torch.Tensor, cov: torch.Tensor, k: int, floor: float = 1e-6) -> "Projection":
        """The k-row projection of inputs u (covariance ``cov``) that keeps most of the variance of ``weight`` u.

        Reduced-rank regression (Izenman 1975): with Σ = cov and W Σ^{1/2} = U S Vᵀ, the best rank-k linear map
        of u onto W u is W Σ^{1/2} V_k V_kᵀ Σ^{-1/2} u; the projection is P = V_kᵀ Σ^{-1/2}, so z = P u has
        identity covariance — every component on one scale, which suits the run-time quantisation's one range
        per half as eq. 2's do.  Eigenvalues of Σ below ``floor`` × the largest are raised to it; rows beyond
        the rank of W Σ^{1/2} (singular values below ``floor`` × the largest) are zero.  Codes span ±127 (one
        range for the matrix)."""
        d = cov.shape[0]
        if weight.shape[1] != d or cov.shape != (d, d):
            raise ValueError(f"weight {tuple(weight.shape)} and covariance {tuple(cov.shape)} disagree on the input size")
        lam, Q = torch.linalg.eigh(cov.double())
        lam = lam.clamp_min(float(lam.max()) * floor)
        _, S, Vt = torch.linalg.svd(weight.double() @ (Q * lam.sqrt()) @ Q.t(), full_matrices=False)
        rank = min(k, int((S > float(S[0]) * floor).sum()))
        P = torch.zeros(k, d, dtype=torch.float64)
        P[:rank] = Vt[:rank] @ (Q / lam.sqrt()) @ Q.t()
        codes = torch.round(P / P.abs().max() * 127).to(torch.int8).numpy()
        return cls(codes, -1, SCALE, "learned")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    def dense(self) -> np.ndarray:
        """fp32 P (for references and tests; kernels use the int8 codes)."""
        return self.codes.astype(np.float32) * np.float32(self.scale) * self.row_scales()[:, None]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d) -> (..., k)."""
        cached = self.__dict__.get("_dense_t")
        if cached is None or cached.dtype != x.dtype:
            cached = self.__dict__["_dense_t"] = torch.from_numpy(self.codes).to(x.dtype).t().contiguous()
        z = (x @ cached) * self.scale
        return z * torch.from_numpy(self.row_scale).to(x.dtype) if self.row_scale is not None else z

    def index_lists(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """CSR form (pos_ptr, pos_idx, neg_ptr, neg_idx) of the +1 and −1 entries of each row (eq. 2's only)."""
        self._check_sparse()
        out = []
        for sign in (1, -1):
            rows, cols = np.nonzero(self.codes == sign)
            ptr = np.zeros(self.codes.shape[0] + 1, dtype=np.int32)
            np.add.at(ptr, rows + 1, 1)
            out += [np.cumsum(ptr).astype(np.int32), cols.astype(np.int32)]
        return tuple(out)  # type: ignore[return-value]

    def distance_scale(self) -> float:
        """E‖Px‖² / ‖x‖² = k · (1/3) · scale²: the factor by which eq. 2's P scales squared distances (rows of one
        scale: not after an equalisation moved W_LL's column norms onto them)."""
        self._check_sparse()
        if self.row_scale is not None:
            raise ValueError("distance scale is defined for eq. 2's rows of one scale; this projection's rows carry "
                             "W_LL's equalised column norms (row_scale)")
        return self.codes.shape[0] * self.scale**2 / 3.0

    def _check_sparse(self) -> None:
        if self.kind != "sparse":
            raise ValueError(f"defined for eq. 2's ternary projection, not a {self.kind} one")


def pair_row_scales(p_a: Projection, p_b: Projection) -> np.ndarray:
    """The 2k row scales of a projection pair (the two input halves), in the order z holds them: what the compiled
    projections take as ``Pr`` and what :func:`dualtvm.little.equalised` split W_LL's column scale into."""
    return np.concatenate([p_a.row_scales(), p_b.row_scales()])


class CovarianceAccumulator:
    """Mean and covariance of rows streamed in batches (float64 sums, one pass, bounded memory)."""

    def __init__(self, d: int) -> None:
        self.n, self.s, self.ss = 0, torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)

    def add(self, rows: torch.Tensor) -> None:
        r = rows.reshape(-1, rows.shape[-1]).double()
        self.n += r.shape[0]
        self.s += r.sum(0)
        self.ss += r.t() @ r

    def covariance(self) -> torch.Tensor:
        if self.n < 2:
            raise ValueError("need at least two rows for a covariance")
        mean = self.s / self.n
        return (self.ss - self.n * torch.outer(mean, mean)) / (self.n - 1)
