"""Choosing the insensitive ratio for a latency budget (the measuring half is tested on real builds in test_decoder)."""
import pytest

from dualtvm.budget import RatioLatency, ratio_for_budget


def _curve(dense_ms: float) -> list[RatioLatency]:
    rows = [RatioLatency("tvm-dual", r, r, ms, 0.01) for r, ms in ((0.1, 1.5), (0.3, 1.2), (0.5, 1.0), (0.7, 0.8), (0.9, 0.5))]
    return rows + [RatioLatency("tvm-dense", 0.0, 0.0, dense_ms, 0.01)]


def test_the_smallest_ratio_that_meets_the_budget():
    assert ratio_for_budget(_curve(1.55), 1.0).insensitive_ratio == 0.5  # not 0.7 or 0.9: they give up more quality
    assert ratio_for_budget(_curve(1.55), 1.25).insensitive_ratio == 0.3
    assert ratio_for_budget(_curve(1.55), 0.5).insensitive_ratio == 0.9  # the budget is inclusive


def test_the_dense_step_wins_when_it_meets_the_budget():
    choice = ratio_for_budget(_curve(1.55), 2.0)
    assert choice.engine == "tvm-dense"  # a dual ratio of 0.1 is also fast enough, but dense loses no quality


def test_unmeetable_and_bad_budgets_are_refused():
    with pytest.raises(ValueError, match=r"fastest is tvm-dual at ratio 0.9 \(0.5 ms\)"):
        ratio_for_budget(_curve(1.55), 0.4)
    with pytest.raises(ValueError, match="must be positive"):
        ratio_for_budget(_curve(1.55), 0)
    with pytest.raises(ValueError, match="no measured rows"):
        ratio_for_budget([], 1.0)
