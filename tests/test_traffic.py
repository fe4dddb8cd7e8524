"""Figure 4's accounting (dualtvm.traffic) and scripts/traffic.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dualtvm.traffic import PARTS, little_bytes, little_ops, part_bytes, step_bytes, step_ops, traffic_row

REPO = Path(__file__).resolve().parent.parent


def test_operations_count_the_gemvs_a_step_runs():
    # LSTM-1500, eq. 3's k = 417: the big GEMV 6000 × 3000, the projection 417 × 3000, the little GEMV 6000 × 834
    assert step_ops(1500, 1500, 4, 417, None) == 2 * 6000 * 3000
    assert little_ops(1500, 1500, 417) == 2 * 417 * 3000 + 2 * 6000 * 834
    assert step_ops(1500, 1500, 4, 417, 0.0) == little_ops(1500, 1500, 417)  # every row insensitive: the little module
    assert step_ops(1500, 1500, 4, 417, 0.5) == 6000 * 3000 + little_ops(1500, 1500, 417)
    # a GRU's big matrix has 3 gates of rows, its little module 4 × hidden outputs (n's x and h halves apart)
    assert step_ops(750, 750, 3, 370, None) == 2 * 2250 * 1500
    assert little_ops(750, 750, 370) == 2 * 370 * 1500 + 2 * 3000 * 740


def test_little_bytes_are_what_the_dual_step_adds_besides_its_rows():
    index, bounds = 4 * 6000 * 2, 4 * 6000 * 2  # the int32 row list and pos vector; the mask's lo and hi
    assert step_bytes(1500, 1500, 4, 128, 0.0) == 4 * 6000 + little_bytes(1500, 1500, 128) + index + bounds
    assert little_bytes(1500, 1500, 128, 8) - little_bytes(1500, 1500, 128, 4) == 6000 * 256 // 2


def test_part_bytes_split_the_step_by_phase():
    """Each phase reads its own arrays; the parts sum to the step's bytes, dense and dual alike."""
    half = part_bytes(1500, 1500, 4, 128, 0.5)
    assert tuple(half) == PARTS and sum(half.values()) == step_bytes(1500, 1500, 4, 128, 0.5)
    assert half["projection"] == 128 * 3000 + 8 * 128  # int8 P_x, P_h and their fp32 row scales
    assert half["little"] == 6000 * 256 + 8 * 6000  # INT8 W_LL (4h × 2k) and its row scales and biases
    assert half["big"] == 4 * 6000 * 3000 // 2 + 4 * 6000 and half["mask"] == half["assembly"] == 8 * 6000
    assert part_bytes(1500, 1500, 4, 128, 0.5, little_bits=4)["little"] == half["little"] - 6000 * 128
    dense = part_bytes(1500, 1500, 4, 128, None)
    assert dense["little"] == dense["projection"] == dense["mask"] == 0
    assert sum(dense.values()) == step_bytes(1500, 1500, 4, 128, None) == 4 * 6000 * 3001
    gru = part_bytes(750, 750, 3, 128, 0.5)  # the little module predicts 4h outputs, the mask tests n = 3h rows
    assert gru["little"] == 3000 * 256 + 8 * 3000 and gru["mask"] == 8 * 2250


def test_traffic_row_of_a_model():
    r = traffic_row("lstm-1500", ratios=(0.5, 0.9))
    assert r["k"] == 417 and r["little_module"] == "eq. 3's k (ε = 0.5)"
    assert r["base_mb"] == pytest.approx(72.024) and r["base_mops"] == pytest.approx(36.0)
    assert r["little_ops_pct"] == pytest.approx(100 * little_ops(1500, 1500, 417) / 36e6, abs=0.01)
    assert r["dual_bytes_pct"]["0.5"] == pytest.approx(100 * step_bytes(1500, 1500, 4, 417, 0.5) / 72.024e6, abs=0.01)
    assert r["dual_ops_pct"]["0.9"] < r["dual_ops_pct"]["0.5"]
    k128 = traffic_row("lstm-1500", k=128, little_bits=4)
    assert k128["k"] == 128 and k128["little_module"] == "k = 128" and k128["little_bytes_pct"] < r["little_bytes_pct"]
    tiny = traffic_row("tiny-gnmt")  # four layers: each one's bytes summed
    assert tiny["base_mb"] == pytest.approx(4 * step_bytes(48, 48, 4, tiny["k"], None) / 1e6, abs=1e-3)


def test_traffic_script_writes_rows_and_plot(tmp_path):
    out = tmp_path / "traffic.json"
    done = subprocess.run([sys.executable, "scripts/traffic.py", "--models", "lstm-750,gru-750", "--k-values", "64,128",
                           "--little-bits", "8", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["experiment"] == "traffic" and len(doc["rows"]) == 2 * 3
    assert {r["k"] for r in doc["rows"]} == {384, 370, 64, 128}
    assert out.with_suffix(".png").stat().st_size > 0
    bad = subprocess.run([sys.executable, "scripts/traffic.py", "--eps", "1.5", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "epsilon" in bad.stderr
