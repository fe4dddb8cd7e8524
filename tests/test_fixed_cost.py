"""The fixed-cost fit of a run's latency rows (dualtvm.fixed_cost): pure functions of the rows, no timing."""
from __future__ import annotations

import pytest

from dualtvm.fixed_cost import fit_run, fixed_cost_fits, goal_at_half, plot_latest_machine, summary_lines

DENSE_BYTES = 72_000_000


def run(model: str, fixed: float, rows_ms: float, dense_ms: float, cache: str = "cold", machine: str = "m",
        fixed_bytes: int = 2_000_000, ratios=(0.1, 0.3, 0.5, 0.7, 0.9), noise=()) -> list[dict]:
    """One benchmark run's dense row and tvm-dual rows on the line fixed + s · rows_ms (plus ``noise`` per row)."""
    key = {"model": model, "machine": machine, "weights_origin": "random", "run_target": "llvm -mcpu=broadwell",
           "cache": cache}
    out = [{**key, "engine": "tvm-dense", "insensitive_ratio": 0.0, "median_ms": dense_ms, "bytes_per_step": DENSE_BYTES}]
    for i, r in enumerate(ratios):
        s = 1 - r
        out.append({**key, "engine": "tvm-dual", "insensitive_ratio": r, "measured_ratio": r,
                    "median_ms": fixed + s * rows_ms + (noise[i] if noise else 0.0),
                    "bytes_per_step": int(s * DENSE_BYTES + fixed_bytes),
                    "speedup_vs_tvm_dense": round(dense_ms / (fixed + s * rows_ms), 3)})
    return out


def test_a_run_on_a_line_gives_back_its_fixed_cost_rows_and_bytes():
    rows = run("lstm-1500-k128-learned", fixed=0.2, rows_ms=2.0, dense_ms=2.0)
    (f,) = fixed_cost_fits(rows)
    assert f.fixed_ms == pytest.approx(0.2) and f.rows_ms == pytest.approx(2.0) and f.rows_vs_dense == pytest.approx(1)
    assert f.max_residual_pct == pytest.approx(0, abs=1e-9) and f.ratios == 5
    # 2 MB beyond s of the dense step's 72 MB, at the dense step's 72 MB per 2 ms
    assert f.fixed_bytes_ms == pytest.approx(2.0 * 2 / 72, rel=1e-6)
    assert f.goal == 1.67 and f.speedup_at_half == pytest.approx(2.0 / 1.2, abs=1e-3)
    assert f.fitted_speedup_at_half == pytest.approx(2.0 / 1.2)
    # the goal's room at 50 %: dense / 1.67 − rows / 2
    assert f.fixed_allowed_ms == pytest.approx(2.0 / 1.67 - 1.0)
    (line,) = summary_lines(rows)
    assert line.startswith("lstm-1500-k128-learned tvm-dual cold: fixed 0.200 ms (its bytes 0.056 ms)")


def test_residuals_are_the_rows_distance_from_the_fitted_line():
    noisy = run("gnmt-1024-1024", fixed=0.1, rows_ms=1.0, dense_ms=1.0, noise=(0, 0, 0.05, 0, 0))
    (f,) = fixed_cost_fits(noisy)
    assert 3 < f.max_residual_pct < 10  # 0.05 ms off a 0.6 ms row, the line pulled towards it
    assert f.goal == 1.7


def test_a_step_reading_no_big_row_is_kept_apart_from_the_line():
    """Ratio 1 reads no big row: cold it ran under the line (the big stream's start is part of the fixed cost), so
    it is not fitted, and the part of the fixed cost beyond it is reported."""
    rows = run("lstm-1500", fixed=0.2, rows_ms=2.0, dense_ms=2.0, ratios=(0.1, 0.5, 0.9, 1.0))
    rows[-1]["median_ms"] = 0.13  # the ratio-1 step, under the line's 0.2
    (f,) = fixed_cost_fits(rows)
    assert f.ratios == 3 and f.fixed_ms == pytest.approx(0.2) and f.max_residual_pct == pytest.approx(0, abs=1e-9)
    assert f.no_rows_ms == 0.13 and f.big_start_ms == pytest.approx(0.07)
    assert summary_lines(rows)[0].endswith("; the step reading no big row 0.130 ms")
    assert fixed_cost_fits(rows[:2] + rows[-1:]) == []  # one ratio reading rows, and ratio 1: no line
    assert fixed_cost_fits(run("lstm-750", 0.1, 0.2, 0.2))[0].no_rows_ms is None


def test_only_runs_with_a_dense_row_and_enough_ratios_are_fitted():
    lstm750 = run("lstm-750", fixed=0.1, rows_ms=0.2, dense_ms=0.2, cache="warm")
    two_ratios = run("lstm-1500", fixed=0.1, rows_ms=2.0, dense_ms=2.0, ratios=(0.5, 0.9))
    no_dense = run("lstm-1500", fixed=0.1, rows_ms=2.0, dense_ms=2.0, machine="other")[1:]
    fits = fixed_cost_fits(lstm750 + two_ratios + no_dense)
    assert [(f.key[1], f.goal, f.fixed_allowed_ms) for f in fits] == [("lstm-750", None, None)]
    assert fixed_cost_fits(lstm750, engines=("tvm-dual-int4",)) == []
    with pytest.raises(ValueError, match="3 ratios"):
        fit_run(two_ratios[1:], two_ratios[0])


def test_goal_at_half_names_issue_5s_limit_for_the_models_it_sets_one_for():
    assert goal_at_half({"model": "lstm-1500-k128-learned"}) == 1.67
    assert goal_at_half({"model": "gnmt-1024-2048"}) == 1.7
    assert goal_at_half({"model": "gru-1500"}) is None


def test_the_plot_shows_the_latest_machines_goal_models(tmp_path):
    rows = run("lstm-1500", 0.2, 2.0, 2.0, machine="old") + run("lstm-750", 0.1, 0.2, 0.2, machine="new")
    assert not plot_latest_machine(rows, str(tmp_path / "none.png"))  # the latest machine timed no goal model
    assert not (tmp_path / "none.png").exists()
    rows += run("gnmt-1024-2048", 0.2, 1.6, 1.6, machine="new") + run("gnmt-1024-2048", 0.1, 1.3, 1.2, "warm", "new")
    assert plot_latest_machine(rows, str(tmp_path / "fit.png"))
    assert (tmp_path / "fit.png").stat().st_size > 10_000


def test_phases_are_shares_of_the_dense_step_and_multiples_of_their_bytes_time():
    """Table 5's normalisation (each phase in % of the dense step's time, the big GEMV the rest of the timed step) and
    how far a phase is from its bytes' time at the dense step's rate; rows without a breakdown or phase bytes are left
    out."""
    from dualtvm.fixed_cost import phase_costs, phase_lines, phase_pairs

    rows = run("lstm-1500-k128-learned", fixed=0.2, rows_ms=2.0, dense_ms=2.0, ratios=(0.5, 0.9))
    dense, half, ninety = rows
    dense.update(kernels_ms=2.2, breakdown_ms={"projection": 0, "little": 0, "mask": 0, "big": 1.99, "assembly": 0.01},
                 part_bytes={"projection": 0, "little": 0, "mask": 0, "big": 71_976_000, "assembly": 24_000})
    half.update(breakdown_ms={"projection": 0.02, "little": 0.04, "mask": 0.01, "big": 1.0, "assembly": 0.01},
                part_bytes={"projection": 385_024, "little": 1_584_000, "mask": 48_000, "big": 36_024_000,
                            "assembly": 0})
    ninety.update(breakdown_ms=half["breakdown_ms"], part_bytes=half["part_bytes"])
    assert phase_pairs(rows, ("tvm-dual",)) == [(half, dense)]  # at 50 % only, by default
    assert phase_pairs(rows, ("tvm-dual-int4",)) == []
    assert phase_pairs([dict(dense, cache="warm"), half], ("tvm-dual",)) == []  # no dense row of its run and cache
    costs = {c.part: c for c in phase_costs(half, dense)}
    rate = 72_000_000 / 2.0  # the dense step's bytes per ms
    assert costs["projection"].share_pct == pytest.approx(1.0)
    assert costs["big"].ms == pytest.approx(half["median_ms"] - 0.08)  # the timed step (1.2 ms) less the other phases
    assert sum(c.ms for c in costs.values()) == pytest.approx(half["median_ms"])
    assert costs["little"].bytes_ms == pytest.approx(1_584_000 / rate)
    assert costs["little"].over_bytes == pytest.approx(0.04 / (1_584_000 / rate))
    assert costs["assembly"].over_bytes is None and costs["assembly"].label == "0.5 %"  # reads nothing counted
    assert costs["little"].label == "2.0 % (0.9×)"
    assert phase_lines(rows) == ["lstm-1500-k128-learned tvm-dual cold at 0.5: projection 1.0 % (1.9×), little 2.0 % "
                                 "(0.9×), mask 0.5 % (7.5×), big 56.0 % (1.1×), assembly 0.5 %"]
