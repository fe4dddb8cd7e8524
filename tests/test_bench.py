"""Benchmark plumbing on a tiny model: every engine runs, rows follow the results format."""
import json

import numpy as np
import pytest
import torch.nn as nn

from dualtvm.bench import BenchConfig, bench_model, markdown_table
from dualtvm.traffic import break_even_ratio, step_bytes
from dualtvm.build import built_from
from dualtvm.little import big_layers
from dualtvm.peers import onnxruntime_session

pytestmark = pytest.mark.slow


def test_step_bytes_accounting():
    dense = step_bytes(1500, 1500, 4, 417, None)
    assert dense == 4 * 6000 * 3000 + 4 * 6000
    half = step_bytes(1500, 1500, 4, 417, 0.5)
    assert dense / 2 < half < dense / 2 + 4 * 6000 * 3000 * 0.1  # little module + indices cost < 10 %
    assert half - step_bytes(1500, 1500, 4, 417, 0.5, little_bits=4) == 6000 * 2 * 417 // 2  # INT4 W_LL: half the bytes
    r = break_even_ratio(1500, 1500, 4, 417)  # dual bytes = dense bytes there
    assert step_bytes(1500, 1500, 4, 417, 1 - r) == pytest.approx(dense, rel=1e-6)
    assert 0.05 < r < 0.1 and break_even_ratio(1500, 1500, 4, 417, little_bits=4) < r < break_even_ratio(750, 750, 3, 857)


def test_breakdowns_interleave_builds_and_drop_a_burst(monkeypatch):
    """The in-step breakdown runs every build once per round, alternating the order as ``measure`` does, and takes
    the median over rounds: a neighbour's burst during one build's pass (one round) does not reach its row."""
    from dualtvm import bench

    calls = []

    class Pass:  # stands in for one build's instrumented decode sequence: 2 steps, a burst in round 1 of "b"
        def __init__(self, dec, xs, twin=None):
            self.name = dec

        def run(self, evict=None):
            calls.append(self.name)
            slow = 10.0 if self.name == "b" and calls.count("b") == 2 else 1.0
            return [{"big": 1e-3 * slow, "little": 2e-4, "step": 1.5e-3 * slow}] * 2

    monkeypatch.setattr(bench, "_InstrumentedSequence", Pass)
    out = bench.step_breakdowns({"a": "a", "b": "b"}, [None] * 3, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert out["b"] == {"projection": 0.0, "little": 0.2, "mask": 0.0, "big": 1.0, "assembly": 0.0, "step": 1.5}
    assert out["a"] == out["b"]


def _peer_step(peer: str, layer, threads: int):
    if peer == "openvino":
        pytest.importorskip("openvino")
        from dualtvm.peers import OpenVINOStep

        return OpenVINOStep(layer, threads)
    return onnxruntime_session(layer, threads)


@pytest.mark.parametrize("peer", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_peer_step_matches_pytorch(peer, rnn_type):
    """ONNX Runtime and OpenVINO run the same one-step graph; both equal PyTorch's cell."""
    import torch

    rnn = getattr(nn, rnn_type)(16, 24)
    step = _peer_step(peer, big_layers(rnn)[0], 1)
    x, h, c = torch.randn(1, 1, 16), torch.randn(1, 1, 24), torch.randn(1, 1, 24)
    feeds = {"X": x.numpy(), "h0": h.numpy()}
    if rnn_type == "LSTM":
        feeds["c0"] = c.numpy()
    ref = rnn(x, (h, c) if rnn_type == "LSTM" else h)[1]
    ref_h = ref[0] if rnn_type == "LSTM" else ref
    np.testing.assert_allclose(step.run(None, feeds)[0].reshape(1, 1, 24), ref_h.detach().numpy(), atol=1e-5)
    if peer == "openvino":  # a pinned OpenVINO worker slowed every engine of the process (cold steps)
        assert step.compiled.get_property("ENABLE_CPU_PINNING") is False


def test_bench_cold_rows_ran_behind_a_twin(tmp_path):
    """Cold rows: every engine (TVM and peers) stepped a twin after each sweep; the rows say so and name the sweep."""
    from dualtvm.bench import cache_label

    cfg = BenchConfig(models=("tiny-lstm",), ratios=(0.5,), steps=4, cold_steps=3, rounds=1, threads=1, caches=("cold",),
                      build_root=str(tmp_path))
    rows, _ = bench_model("tiny-lstm", cfg)
    assert {r["engine"] for r in rows} >= {"tvm-dense", "tvm-dual", "torch", "onnxruntime"}
    assert all(r["cache"] == "cold" and r["runtime_warm"] is True and r["evict_mb"] >= 64 for r in rows)
    assert {cache_label(r) for r in rows} == {f"cold weights ({rows[0]['evict_mb']} MB)"}
    dual = next(r for r in rows if r["engine"] == "tvm-dual")  # Table 5's breakdown, cold as the paper measures it
    assert all(v > 0 for v in dual["breakdown_ms"].values()) and dual["breakdown_step_ms"] > 0
    assert sum(dual["part_bytes"].values()) == dual["bytes_per_step"]


def test_bench_tiny_model(tmp_path):
    from dualtvm.registry import model_config

    cfg = BenchConfig(models=("tiny-gnmt",), ratios=(0.5,), steps=6, rounds=1, threads=1, caches=("warm",),
                      build_root=str(tmp_path), little_bits=(8, 4), eps=0.3, int8_float=True, contribution=True)
    rows, info = bench_model("tiny-gnmt", cfg)
    assert {r["model"] for r in rows} == {"tiny-gnmt-eps0.3"}  # another ε: rows and builds of their own
    assert (tmp_path / "tiny-gnmt-eps0.3-llvm-broadwell-w4" / "dual").is_dir()
    engines = {r["engine"] for r in rows}
    assert {"tvm-dense", "tvm-dual", "tvm-dual-int4", "torch", "onnxruntime", "openvino"} <= engines
    int4 = next(r for r in rows if r["engine"] == "tvm-dual-int4")
    assert int4["little_bits"] == 4 and 0.3 < int4["measured_ratio"] < 0.7
    assert int4["eps"] == 0.3 and int4["k"] == model_config("tiny-gnmt").little_dim(0.3)
    dual = next(r for r in rows if r["engine"] == "tvm-dual")
    assert 0.3 < dual["measured_ratio"] < 0.7
    floats = next(r for r in rows if r["engine"] == "tvm-dual-int8float")  # the same INT8 module on floats
    assert dual["little_on_codes"] is True and floats["little_on_codes"] is False and floats["little_bits"] == 8
    assert floats["measured_ratio"] == pytest.approx(dual["measured_ratio"], abs=0.02)
    scored = next(r for r in rows if r["engine"] == "tvm-dual-contribution")  # masks from contribution scores
    assert 0.3 < scored["measured_ratio"] < 0.7 and scored["little_bits"] == 8
    assert json.loads((tmp_path / "tiny-gnmt-eps0.3-llvm-broadwell-contribution" / "dual" / "manifest.json")
                      .read_text())["spec"]["layers"][0]["mask_rule"] == "contribution"
    scored4 = next(r for r in rows if r["engine"] == "tvm-dual-int4-contribution")  # one per --little-bits
    assert scored4["little_bits"] == 4 and 0.3 < scored4["measured_ratio"] < 0.7
    for key in ("model", "engine", "insensitive_ratio", "median_ms", "iqr_ms", "cache", "threads", "target",
                "speedup_vs_tvm_dense", "speedup_vs_best_peer"):
        assert key in dual
    lo, hi = dual["speedup_vs_tvm_dense_quartiles"]
    assert lo <= dual["speedup_vs_tvm_dense"] <= hi and dual["speedup_pairing"] == "per round"
    assert "random weights" in info["weights"] and {r["weights_origin"] for r in rows} == {"random"}
    assert "| tiny-gnmt-eps0.3 | warm | tvm-dual |" in markdown_table(rows)
    parts = dual["breakdown_ms"]
    assert set(parts) == {"projection", "little", "mask", "big", "assembly"} and all(v > 0 for v in parts.values())
    dense = next(r for r in rows if r["engine"] == "tvm-dense")
    assert dense["bytes_per_step"] / dual["bytes_per_step"] == pytest.approx(dual["byte_bound_speedup"], rel=2e-3)
    assert sum(dense["part_bytes"].values()) == dense["bytes_per_step"] and dense["part_bytes"]["little"] == 0
    assert 0 < dual["ops_per_step"] and 0 < dense["ops_per_step"]  # Figure 4's accounting at the measured masks
    assert dense["breakdown_ms"]["little"] == 0 and dense["breakdown_ms"]["big"] > 0
    assert dual["kernels_ms"] == pytest.approx(sum(parts.values()), abs=1e-3) and dual["breakdown_step_ms"] > 0
    assert dual["breakdown_rounds"] == dense["breakdown_rounds"] == 1


def test_readme_tables_are_rendered_from_the_results_files():
    """README numbers are never typed by hand: rendering the committed results must reproduce them."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "render_results.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_reused_builds_must_hold_the_asked_weights(tmp_path):
    """--reuse-builds must not time a random-weight build when a checkpoint is asked for (or the reverse), nor one
    whose little modules were fitted on another number of rows."""
    import json

    from dualtvm.build import BuildConfig
    from dualtvm.decoder import MANIFEST_VERSION

    def of(checkpoint: str | None, decoder_layer: int = 0, **kw) -> BuildConfig:
        return BuildConfig(checkpoint=checkpoint, decoder_layer=decoder_layer, **kw)

    def folder(name: str, version: int = MANIFEST_VERSION, **model):
        (tmp_path / name / "dual").mkdir(parents=True)
        (tmp_path / name / "dual" / "manifest.json").write_text(json.dumps({"version": version, "model": model}))
        return tmp_path / name

    random = folder("r", checkpoint=None, decoder_layer=None)
    trained = folder("t", checkpoint="cache/ptb-lstm-1500.best.pt", decoder_layer=None)
    older = folder("o", weights="checkpoint cache/ptb-lstm-1500.best.pt")  # a manifest without the fields
    old_format = folder("f", MANIFEST_VERSION - 1, checkpoint=None, decoder_layer=None)
    more_rows = folder("m", checkpoint=None, decoder_layer=None, little_fit_rows=200_000)
    assert not built_from(old_format, of(None))
    assert built_from(random, of(None)) and not built_from(random, of("cache/ptb-lstm-1500.best.pt"))
    assert built_from(trained, of("cache/ptb-lstm-1500.best.pt")) and not built_from(trained, of(None))
    assert not built_from(trained, of("cache/ptb-lstm-750.best.pt")) and not built_from(tmp_path / "missing", of(None))
    assert not built_from(older, of("cache/ptb-lstm-1500.best.pt"))
    assert not built_from(random, of(None, max_rows=200_000))  # its manifest predates the field: the default's rows
    assert built_from(more_rows, of(None, max_rows=200_000)) and not built_from(more_rows, of(None))


def test_bench_a_trained_seq2seq_decoder_layer(tiny_multi30k, tmp_path):
    """Rows for a decoder layer of a trained seq2seq name the checkpoint and layer, and decode its real inputs."""
    data, ckpt = tiny_multi30k
    cfg = BenchConfig(models=("tiny-gnmt-layer",), ratios=(0.5,), steps=6, rounds=1, threads=1, caches=("warm",),
                      build_root=str(tmp_path), checkpoint=str(ckpt), decoder_layer=1, data_dir=str(data),
                      peers=("torch",))
    rows, info = bench_model("tiny-gnmt-layer", cfg)
    assert info["weights"].startswith(f"checkpoint {ckpt} (seq2seq decoder layer 1)")
    assert "Multi30k, decoder layer 1 inputs" in info["weights"]
    assert {r["engine"] for r in rows} == {"tvm-dense", "tvm-dual", "torch"}
    from dualtvm.build import BuildConfig

    folder = tmp_path / "tiny-gnmt-layer-llvm-broadwell"
    assert built_from(folder, BuildConfig(checkpoint=str(ckpt), decoder_layer=1))
    assert not built_from(folder, BuildConfig(checkpoint=str(ckpt), decoder_layer=0))


def test_bench_cli_refuses_a_bad_target_before_measuring():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    done = subprocess.run([sys.executable, str(script), "--target", "llvm -mcpuu=broadwell"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown target flag -mcpuu" in done.stderr


def test_cold_sweeps_twice_the_last_level_cache_before_every_timed_step():
    from dualtvm.bench import EVICT_MIN_BYTES, Engine, Evictor, evict_bytes, last_level_cache_bytes, measure

    assert evict_bytes(480 << 20) == 960 << 20  # the Intel VM's 480 MB L3: a 64 MB sweep left most of it warm
    assert evict_bytes(8 << 20) == EVICT_MIN_BYTES and evict_bytes(0) == EVICT_MIN_BYTES
    llc = last_level_cache_bytes()
    assert llc is None or llc > 0
    assert evict_bytes() >= max(EVICT_MIN_BYTES, 2 * (llc or 0))
    calls = []
    engines = [Engine(n, 0.0, lambda: None, lambda i, n=n: calls.append((n, i))) for n in ("a", "b")]
    evictor = Evictor(1 << 20)
    times = measure(engines, steps=4, rounds=2, cold=evictor, pause_s=0.0)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6}  # 3 timed steps a round (step 0 warms up)
    assert len(calls) == 16 and evictor.buf[0] == 1 + 12  # one sweep before each of the 12 timed steps, none before warm-ups


def test_cold_steps_the_twin_between_the_sweep_and_the_timed_step():
    """Cold: sweep, the twin's step i (untimed: it warms the code, not the engine's weights), the engine's step i;
    the twin's state is reset with the engine's every round.  Warm: the twin never runs."""
    from dualtvm.bench import Engine, Evictor, measure

    calls = []

    class Sweep(Evictor):
        def __call__(self) -> None:
            calls.append("sweep")

    twin = Engine("a (twin)", 0.0, lambda: calls.append("twin prepare"), lambda i: calls.append(("twin", i)))
    engine = Engine("a", 0.0, lambda: calls.append("prepare"), lambda i: calls.append(("a", i)), twin)
    times = measure([engine], steps=3, rounds=2, cold=Sweep(4096), pause_s=0.0)
    one_round = ["prepare", "twin prepare", ("a", 0), "sweep", ("twin", 1), ("a", 1), "sweep", ("twin", 2), ("a", 2)]
    assert calls == one_round * 2 and len(times["a"]) == 4
    calls.clear()
    measure([engine], steps=3, rounds=1, cold=False, pause_s=0.0)
    assert calls == ["prepare", ("a", 0), ("a", 1), ("a", 2)]


def test_cold_rows_name_their_sweep():
    from dualtvm.bench import cache_label

    assert cache_label({"cache": "warm"}) == "warm"
    assert cache_label({"cache": "cold", "evict_mb": 960}) == "cold (960 MB)"
    assert cache_label({"cache": "cold", "evict_mb": 960, "runtime_warm": True}) == "cold weights (960 MB)"
    assert cache_label({"cache": "cold"}) == "cold (64 MB)"  # rows from before the sweep followed the LLC


def test_gemv_bandwidth_runs_on_the_asked_threads_and_gives_them_back(monkeypatch):
    import torch

    from dualtvm.bench import gemv_bandwidth

    before, seen, real_mv = torch.get_num_threads(), [], torch.mv
    monkeypatch.setattr(torch, "mv", lambda w, x: (seen.append(torch.get_num_threads()), real_mv(w, x))[1])
    gbps = gemv_bandwidth(1, nbytes=4 << 20, repeat=2)
    assert seen == [1, 1] and torch.get_num_threads() == before
    assert 0.1 < gbps < 10_000


def test_speedups_pair_each_round_so_a_drifting_load_cancels():
    from dualtvm.bench import paired_speedup, per_round_medians

    load = np.array([1.0, 1.0, 1.0, 3.0, 3.0])  # the neighbours slow rounds 4-5 threefold
    times = {"dense": np.outer(load, [2.0] * 4).ravel(), "dual": np.outer(load, [0.8, 0.9, 1.1, 1.2]).ravel()}
    rounds = per_round_medians(times, len(load))
    assert rounds["dual"] == pytest.approx(load) and rounds["dense"] == pytest.approx(2 * load)
    assert paired_speedup(rounds, "dual", "dense") == pytest.approx((2.0, 2.0, 2.0))
    # pooled over the run, the same steps give 2 / 1.2: dense's median sits in the quiet rounds, dual's at their edge
    assert np.median(times["dense"]) / np.median(times["dual"]) == pytest.approx(2 / 1.2)


def test_speedup_plot_draws_quartiles_bound_and_the_checkpoints_ppl(tmp_path):
    from dualtvm.bench import checkpoint_stem, write_plots

    assert checkpoint_stem("checkpoint cache/ptb-lstm-1500-r2.best.pt, little module fitted on ptb text") == "ptb-lstm-1500-r2"
    assert checkpoint_stem("checkpoint /x/y/my-model.pt") == "my-model" and checkpoint_stem("random weights") is None
    weights = "checkpoint cache/ptb-tiny.best.pt, little module fitted and calibrated on ptb text"
    rows = [{"model": "tiny", "engine": "tvm-dense", "insensitive_ratio": 0.0, "median_ms": 1.0, "cache": c,
             "weights": weights} for c in ("warm", "cold")]
    rows += [{"model": "tiny", "engine": "tvm-dual", "insensitive_ratio": r, "median_ms": 1 - r / 2, "cache": c,
              "weights": weights, "speedup_vs_tvm_dense": 1 / (1 - r / 2), "byte_bound_speedup": 1 / (1 - r * 0.6),
              "speedup_vs_tvm_dense_quartiles": [0.9 / (1 - r / 2), 1.1 / (1 - r / 2)]}
             for r in (0.3, 0.5, 0.7) for c in ("warm", "cold")]
    quality = [{"model": "ptb-tiny", "part": "uniform", "variant": v, "insensitive_ratio": r, "delta_ppl_pct": d}
               for v, r, d in (("base", 0.0, 0.0), ("eps0.5-int8", 0.5, 1.0), ("eps0.5-int8", 0.9, 9.0))]
    (tmp_path / "lm-quality-ptb.json").write_text(json.dumps({"rows": quality}))
    written = write_plots(rows, tmp_path / "latency")  # rows without a machine: one set, as the latest machine's
    assert [p.name for p in written] == ["latency.png", "latency-speedup.png"]
    assert all(p.stat().st_size > 0 for p in written)
    # one set per machine: the latest run's machine (the last row's) under the plain names, each other apart
    older = [dict(r, machine="Intel(R) Xeon(R) Processor, 2 cores") for r in rows]
    written = write_plots(older + [dict(r, machine="AMD EPYC (znver3), 2 cores") for r in rows], tmp_path / "latency")
    assert [p.name for p in written] == ["latency-intel-xeon-2-cores.png", "latency-intel-xeon-2-cores-speedup.png",
                                         "latency.png", "latency-speedup.png"]


def test_a_panels_ppl_curves_are_its_own_little_modules():
    """The ΔPPL beside a panel's speed-ups is of the little module the panel timed: its row label's k (or ε) and
    projection, each W_LL precision and mask rule: a k = 128 learned panel does not borrow the paper's module's PPL."""
    from dualtvm.bench import quality_variants

    assert quality_variants("lstm-1500") == {"INT8": "eps0.5-int8", "INT4": "eps0.5-int4",
                                             "INT8, contribution": "eps0.5-int8 contribution",
                                             "INT4, contribution": "eps0.5-int4 contribution"}
    assert quality_variants("lstm-1500-k128-learned")["INT4, contribution"] == "k128-int4 contribution learned"
    assert quality_variants("gnmt-1024-2048-eps0.9-learned")["INT8"] == "eps0.9-int8 learned"
    assert quality_variants("gru-750-k64")["INT8"] == "k64-int8"


def test_rows_on_random_and_trained_weights_stand_side_by_side(tmp_path):
    """A rerun replaces the rows of its own weights only: random-weight rows of a model do not replace its
    trained checkpoint's rows (different masks, different speed-ups), nor are drawn in their panel."""
    from dualtvm.bench import LATENCY_KEY, LATENCY_RUN_FIELDS, _rows_by_panel, weights_origin
    from dualtvm.results import merge_rows, read_rows

    trained = "checkpoint cache/ptb-lstm-1500-r2.best.pt, little module fitted on ptb text"
    random_ = "random weights (seed 0): no trained checkpoint given"
    assert weights_origin(trained) == "ptb-lstm-1500-r2" and weights_origin(random_) == "random"
    row = lambda weights, ms: {"model": "lstm-1500", "engine": "tvm-dense", "insensitive_ratio": 0.0,  # noqa: E731
                               "median_ms": ms, "cache": "warm", "run_target": "llvm -mcpu=broadwell", "machine": "m",
                               "weights": weights, "weights_origin": weights_origin(weights)}
    path = tmp_path / "latency.json"
    merge_rows(path, "latency", [row(trained, 2.0)], LATENCY_KEY, "c", LATENCY_RUN_FIELDS)
    merge_rows(path, "latency", [row(random_, 1.0)], LATENCY_KEY, "c", LATENCY_RUN_FIELDS)
    merge_rows(path, "latency", [row(random_, 1.5)], LATENCY_KEY, "c", LATENCY_RUN_FIELDS)  # replaces the random row only
    rows = read_rows(path)
    assert sorted((r["weights_origin"], r["median_ms"]) for r in rows) == [("ptb-lstm-1500-r2", 2.0), ("random", 1.5)]
    assert len(_rows_by_panel(rows)) == 2


def test_read_bandwidth_sums_on_the_asked_threads_and_gives_them_back(monkeypatch):
    import torch

    from dualtvm.bench import read_bandwidth

    before, seen, real_sum = torch.get_num_threads(), [], torch.Tensor.sum
    monkeypatch.setattr(torch.Tensor, "sum", lambda t: (seen.append(torch.get_num_threads()), real_sum(t))[1])
    gbps = read_bandwidth(1, nbytes=4 << 20, repeat=2)
    assert seen == [1, 1] and torch.get_num_threads() == before
    assert 0.1 < gbps < 10_000


def test_goals_judge_their_own_rows_against_their_limits():
    """Each goal judges only its own rows (shape, engine or part, ratio; not the comparison-only engine, not a
    pruned model), counts those within its limit, and orders them by their margin to their own limit."""
    from dualtvm.goals import LATENCY_GOALS, QUALITY_GOALS, goal_status, model_shape

    assert model_shape("lstm-1500-k128-learned") == "lstm-1500" and model_shape("gru-750-eps0.3") == "gru-750"
    assert model_shape("gnmt-1024-2048") == "gnmt-1024-2048" and model_shape("lstm-15000") is None

    def dual(model, engine, ratio, cache, speedup, bound=None):
        return {"model": model, "engine": engine, "insensitive_ratio": ratio, "cache": cache,
                "speedup_vs_tvm_dense": speedup, "speedup_vs_best_peer": speedup * 1.1, "fraction_of_bound": bound}

    rows = [dual("lstm-1500-k128-learned", "tvm-dual", 0.5, "warm", 1.70, 0.91),
            dual("lstm-1500", "tvm-dual-int4", 0.5, "cold", 1.60, 0.85),
            dual("lstm-1500", "tvm-dual-int8float", 0.5, "cold", 1.10, 0.60),  # comparison engine: not judged
            dual("lstm-750", "tvm-dual", 0.5, "warm", 1.00),  # another shape
            dual("gnmt-1024-2048", "tvm-dual", 0.5, "cold", 1.71),
            dual("lstm-1500", "tvm-dual", 0.9, "cold", 3.4),
            {"model": "lstm-1500", "engine": "tvm-dense", "insensitive_ratio": 0.0, "cache": "cold",
             "speedup_vs_best_peer": 0.99, "fraction_of_read_bw": 0.81},
            {"model": "lstm-1500", "engine": "onnxruntime", "insensitive_ratio": 0.0, "cache": "cold"}]
    status = {s.goal.text: s for s in goal_status(rows, LATENCY_GOALS)}
    assert set(status) == {g.text for g in LATENCY_GOALS}
    lstm50 = status["LSTM-1500 at 50 %: ≥ 1.67× over dense TVM"]
    assert [r["speedup_vs_tvm_dense"] for r in lstm50.rows] == [1.70, 1.60] and lstm50.met == 1
    assert lstm50.worst["speedup_vs_tvm_dense"] == 1.60 and lstm50.best["model"] == "lstm-1500-k128-learned"
    gnmt = status["GNMT layers at 50 %: ≥ 1.7× over dense TVM"]
    assert (len(gnmt.rows), gnmt.met) == (1, 1)
    assert status["LSTM-1500 and GNMT layers at 90 %: ≥ 3.5× over dense TVM"].met == 0
    assert status["dense TVM step ≥ best peer, every model"].met == 0
    assert status["dense TVM step, LSTM-1500 cold: ≥ 80 % of the measured read bandwidth"].met == 1
    bound = status["LSTM-1500 at 30–70 %: ≥ 90 % of the byte bound"]
    assert (len(bound.rows), bound.met) == (2, 1)
    assert goal_status([], LATENCY_GOALS)[0].worst is None
    from dualtvm.goals import summary_lines

    lines = summary_lines(rows)  # what bench.py prints after a run: the goals its rows were judged by
    assert len(lines) == len(LATENCY_GOALS)
    assert "LSTM-1500 at 50 %: ≥ 1.67× over dense TVM: 1 of 2 rows (worst 1.60×, best 1.70×)" in lines
    assert summary_lines(rows[3:4]) == []  # an LSTM-750 row at 50 %: no goal names it

    def lm(model, part, ratio, delta):
        return {"model": model, "part": part, "insensitive_ratio": ratio, "delta_ppl_pct": delta}

    lstm, gru, largest = goal_status([
        lm("ptb-lstm-1500-r2", "uniform", 0.5, 0.9), lm("ptb-lstm-750", "per-gate", 0.5, 1.2),
        lm("ptb-lstm-750-sparse80", "uniform", 0.5, 0.1),  # a pruned model: Table 7's, not judged
        lm("ptb-lstm-750", "uniform", 0.7, 0.1),  # another ratio
        lm("ptb-gru-750", "uniform", 0.5, 1.0), lm("ptb-gru-1500", "uniform", 0.5, 3.7),  # the paper: +0.06, +3.80
        lm("ptb-gru-750", "largest-within-1pct", 0.62, 0.9), lm("ptb-lstm-750", "largest-within-1pct", 0.41, 0.8),
    ], QUALITY_GOALS)
    assert (len(lstm.rows), lstm.met, lstm.worst["delta_ppl_pct"]) == (2, 1, 1.2)
    # each GRU against the paper's own loss for its size: the worst is the one furthest past its limit
    assert (len(gru.rows), gru.met, gru.worst["model"], gru.best["model"]) == (2, 1, "ptb-gru-750", "ptb-gru-1500")
    assert (len(largest.rows), largest.met) == (2, 1)

    # per model (one training each): which configurations meet the goal there, the paper's own method told apart
    from dualtvm.goals import goal_status_by_model, is_paper_method

    rows = [dict(lm("ptb-lstm-1500", "uniform", 0.5, 1.3), variant="eps0.5-int8"),
            dict(lm("ptb-lstm-1500", "uniform", 0.5, 0.4), variant="eps0.5-int8 contribution learned"),
            dict(lm("ptb-lstm-1500-r2", "per-gate", 0.5, 0.8), variant="loss-aware-allocation"),
            dict(lm("ptb-gru-750", "uniform", 0.5, 0.1), variant="eps0.5-int8")]  # not an LSTM: not judged
    by_model = goal_status_by_model(rows, QUALITY_GOALS[0])
    assert list(by_model) == ["ptb-lstm-1500", "ptb-lstm-1500-r2"]
    first = by_model["ptb-lstm-1500"]
    assert (len(first.rows), first.met, first.best["variant"]) == (2, 1, "eps0.5-int8 contribution learned")
    assert [r["delta_ppl_pct"] for r in first.rows if is_paper_method(r)] == [1.3]


def test_the_papers_numbers_are_found_by_our_model_names_without_heavy_imports():
    """Quality rows name retrainings and corpora (``ptb-lstm-1500-r2``); the paper's tables name the model. The
    module is data only: the README renderer and the goals read it without loading torch or TVM."""
    import subprocess
    import sys

    from dualtvm import REPO
    from dualtvm.paper import paper_delta_pct, paper_model

    assert paper_model("ptb-lstm-1500-r2") == "lstm-1500" and paper_model("gru-750") == "gru-750"
    assert round(paper_delta_pct("ptb-lstm-1500-r3", 0.5), 2) == 0.89  # 80.64 → 81.36, the brief's +0.9 %
    assert paper_delta_pct("ptb-lstm-1500", 0.2) is None and paper_delta_pct("wikitext-2-lstm-750", 0.5) is None
    loaded = subprocess.run([sys.executable, "-c", "import sys, dualtvm.paper; "
                             "print(sorted(m for m in ('torch', 'tvm', 'numpy') if m in sys.modules))"],
                            capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
    assert loaded == "[]"
