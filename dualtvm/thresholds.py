"""Masks (paper eq. 5), threshold calibration to an insensitive ratio, and per-gate allocation.

Every gate's rule is written as a band on the little module's *activated* output a_LL:
row i is sensitive (m_i = 1, computed by the big module) iff ``lo < a_i < hi``.
  sigmoid: sensitive iff a > θ           → (lo, hi) = (θ, +∞)
  tanh:    sensitive iff θ⁻ < a < θ⁺      → (lo, hi) = (θ⁻, θ⁺), |θ⁻| = |θ⁺| by default
One rule for both lets one kernel build every mask; ratio 0 is (−∞, +∞): all rows big.

Beyond the paper, a sigmoid gate may leave *both* saturated tails insensitive (``tails="both"``):
sensitive iff 0.5 − t < a < 0.5 + t, the tanh rule about the sigmoid's midpoint.  Eq. 5 keeps a
sigmoid output near 1 on the big module although σ' is as small there as near 0 (the saturation
§1 argues from); the band needs no other kernel, only other bounds.

Further beyond it, the mask may test a *contribution score* instead of a_LL (``rule="contribution"``,
:mod:`dualtvm.contribution`): φ' times the value the gate's output is multiplied by in the new
state; sensitive iff score > θ, i.e. the band (θ, +∞) on the score.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from .gates import SIGMOID, TANH, GateLayout

log = logging.getLogger(__name__)

QUANTILE_LEVELS = 2001
SIGMOID_TAILS = ("low", "both")  # eq. 5 (outputs near 0 insensitive), or both saturated ends
MASK_RULES = ("activation", "contribution")  # what the band tests: a_LL (eq. 5), or the contribution score
INF = float("inf")


def check_mask_rule(rule: str, sigmoid_tails: str = "low") -> None:
    """A clear error for an unknown rule or tails, or tails given to the contribution score (which weighs both
    tails of σ' already)."""
    if rule not in MASK_RULES:
        raise ValueError(f"mask rule must be one of {MASK_RULES}, got {rule!r}")
    if sigmoid_tails not in SIGMOID_TAILS:
        raise ValueError(f"sigmoid tails must be one of {SIGMOID_TAILS}, got {sigmoid_tails!r}")
    if rule == "contribution" and sigmoid_tails != "low":
        raise ValueError("sigmoid tails belong to the activation rule: the contribution score weighs both tails already")


def check_ratio(ratio: float) -> float:
    if not (isinstance(ratio, (int, float)) and 0.0 <= float(ratio) <= 1.0):
        raise ValueError(f"insensitive ratio must lie in [0, 1], got {ratio!r}")
    return float(ratio)


def sensitive_mask(a_little: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float) -> torch.Tensor:
    """Eq. 5 as a band: True where the big module must compute the row."""
    return (a_little > lo) & (a_little < hi)


@dataclass
class GateCalibration:
    """Quantiles of what a gate's mask tests (a_LL, or its contribution score) on calibration data: any ratio
    maps to thresholds without data."""

    activation: str
    # of a (sigmoid, asymmetric tanh), |a| (symmetric tanh), |a − ½| (sigmoid, both tails), or the score (contribution)
    quantiles: np.ndarray
    symmetric: bool = True
    tails: str = "low"  # sigmoid only (a tanh gate keeps the default): see SIGMOID_TAILS
    rule: str = "activation"  # see MASK_RULES

    def __post_init__(self) -> None:
        check_mask_rule(self.rule, self.tails)

    @classmethod
    def fit(cls, tested: torch.Tensor, activation: str, symmetric: bool = True,
            tails: str = "low", rule: str = "activation") -> "GateCalibration":
        """``tested``: a_LL for the rule "activation", the contribution scores for "contribution" (where
        ``symmetric`` and ``tails`` do not apply)."""
        v = tested.detach().reshape(-1).double()
        if rule == "activation" and activation == TANH and symmetric:
            v = v.abs()
        if rule == "activation" and activation == SIGMOID and tails == "both":
            v = (v - 0.5).abs()
        levels = torch.linspace(0, 1, QUANTILE_LEVELS, dtype=torch.float64)
        if v.numel() > 4_000_000:
            v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:4_000_000]]
        return cls(activation, torch.quantile(v, levels).numpy(), symmetric,
                   tails if activation == SIGMOID and rule == "activation" else "low", rule)

    def _q(self, p: float) -> float:
        return float(np.interp(p, np.linspace(0, 1, len(self.quantiles)), self.quantiles))

    def band(self, ratio: float) -> tuple[float, float]:
        """(lo, hi) that leave ``ratio`` of the calibration outputs insensitive."""
        ratio = check_ratio(ratio)
        if ratio <= 0.0:
            return (-INF, INF)
        if self.rule == "contribution" or (self.activation == SIGMOID and self.tails == "low"):
            return (INF, INF) if ratio >= 1.0 else (self._q(ratio), INF)
        if self.activation == SIGMOID:  # both tails
            t = 0.0 if ratio >= 1.0 else self._q(1.0 - ratio)
            return (0.5 - t, 0.5 + t)
        if ratio >= 1.0:
            return (0.0, 0.0)
        if self.symmetric:
            t = self._q(1.0 - ratio)
            return (-t, t)
        return (self._q(ratio / 2), self._q(1.0 - ratio / 2))


@dataclass
class Thresholds:
    """Per-gate bands for one layer; ``row_bounds`` expands them to the per-row vectors kernels take."""

    bands: dict[str, tuple[float, float]] = field(default_factory=dict)

    def row_bounds(self, gates: tuple[str, ...], hidden: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.concatenate([np.full(hidden, self.bands[g][0], np.float32) for g in gates])
        hi = np.concatenate([np.full(hidden, self.bands[g][1], np.float32) for g in gates])
        return lo, hi

    def pre_activation_bounds(self, layout: GateLayout, hidden: int) -> tuple[np.ndarray, np.ndarray]:
        """``row_bounds`` mapped through φ⁻¹ (logit, atanh): the same test on the pre-activation.

        φ is strictly increasing, so lo < φ(y) < hi ⇔ φ⁻¹(lo) < y < φ⁻¹(hi); the compiled mask
        then compares y_LL directly and evaluates no exp/tanh per row.
        """
        bounds = []
        for side in (0, 1):
            bounds.append(np.concatenate([
                np.full(hidden, inverse_activation(self.bands[g][side], layout.activation(g)), np.float32)
                for g in layout.gates]))
        return bounds[0], bounds[1]


def inverse_activation(a: float, activation: str) -> float:
    """φ⁻¹(a), with the ends of φ's range (and beyond) mapped to ±∞."""
    low, high = (0.0, 1.0) if activation == SIGMOID else (-1.0, 1.0)
    if a <= low:
        return -INF
    if a >= high:
        return INF
    return float(np.log(a / (1.0 - a))) if activation == SIGMOID else float(np.arctanh(a))


def allocate_ratios(error_curves: dict, sizes: dict, target: float, grid: np.ndarray) -> dict:
    """Per-gate ratios whose size-weighted mean is ``target`` with the least summed error.

    ``error_curves[g][j]`` is the error gate g adds at ratio ``grid[j]`` (non-decreasing in j);
    greedy marginal allocation: repeatedly raise the gate whose next grid step costs the least
    error per row saved.  Exact for convex curves, a good heuristic otherwise.
    """
    target = check_ratio(target)
    total = sum(sizes.values())
    pos = {g: 0 for g in error_curves}

    def achieved() -> float:
        return sum(grid[pos[g]] * sizes[g] for g in pos) / total

    while achieved() < target - 1e-9:
        best, best_cost = None, INF
        for g, j in pos.items():
            if j + 1 < len(grid):
                gain = (grid[j + 1] - grid[j]) * sizes[g]
                cost = (error_curves[g][j + 1] - error_curves[g][j]) / gain
                if cost < best_cost:
                    best, best_cost = g, cost
        if best is None:
            break
        pos[best] += 1
    # the last step may overshoot: pull the step back to land on target exactly (linear between grid points)
    over = achieved() - target
    if over > 1e-9 and best is not None:
        pos_ratio = {g: float(grid[j]) for g, j in pos.items()}
        pos_ratio[best] = float(pos_ratio[best] - over * total / sizes[best])
        return pos_ratio
    return {g: float(grid[j]) for g, j in pos.items()}
