"""The compiled decode step: verified against PyTorch, exported, loaded elsewhere, guarded."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualtvm.build import BuildConfig, build_model
from dualtvm.manifest import BuildError
from dualtvm.runtime import CompiledDecoder
from dualtvm.target import TargetError

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    out = {}
    for model in ("tiny-lstm", "tiny-gru", "tiny-gnmt"):
        d = tmp_path_factory.mktemp(model)
        out[model] = build_model(BuildConfig(model=model, out=str(d), verify=True, steps=30, use_tuned=False))
    for model in ("tiny-gru", "tiny-gnmt"):  # INT4 little weights: integer codes, AVX2 pmaddubsw path
        d = tmp_path_factory.mktemp(f"{model}-w4")
        out[f"{model}-w4"] = build_model(BuildConfig(model=model, out=str(d), verify=True, steps=30, use_tuned=False,
                                                     little_bits=4))
    return out


@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-gru", "tiny-gnmt", "tiny-gru-w4", "tiny-gnmt-w4"])
def test_compiled_step_matches_reference(builds, model):
    r = builds[model]
    assert r["ratio_0"]["max_abs_err"] < 1e-5
    assert r["dense_free_running_max_abs_err"] < 1e-4
    assert r["ratio_0.5"]["mask_mismatch_fraction"] < 0.005
    # a row rounding across a threshold takes the other module's value: compare the steps whose masks all agree
    assert r["ratio_0.5"]["steps_with_matching_masks"] >= 15  # of 30
    assert r["ratio_0.5"]["max_abs_err_matching_masks"] < 1e-3
    assert r["verified"] is True
    assert r["break_even_ratio"] > 1  # tiny layers: k > hidden, no ratio makes the dual step read fewer bytes


def test_ratio_is_a_runtime_knob(builds):
    dec = CompiledDecoder(builds["tiny-lstm"]["builds"]["dual"])
    x = np.random.default_rng(0).standard_normal(48).astype(np.float32)
    fractions = []
    for r in (0.0, 0.3, 0.7, 1.0):
        dec.set_insensitive_ratio(r)
        _, _, masks = dec.step(x)
        fractions.append(1 - np.mean(np.concatenate(masks)))
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions[1] < fractions[2]
    with pytest.raises(ValueError, match=r"insensitive ratio must lie in \[0, 1\]"):
        dec.set_insensitive_ratio(1.5)


def test_twin_is_the_same_cell_on_its_own_weights(builds):
    """dec.twin(): same outputs and masks at the same thresholds, but its own weight buffers (the cold benchmark
    steps it to warm the code without warming dec's weights)."""
    dec = CompiledDecoder(builds["tiny-lstm"]["builds"]["dual"])
    dec.set_insensitive_ratio(0.5)
    twin = dec.twin()
    x = np.random.default_rng(1).standard_normal(48).astype(np.float32)
    out, state, masks = dec.step(x)
    t_out, t_state, t_masks = twin.step(x)
    np.testing.assert_array_equal(out, t_out)
    assert all(np.array_equal(a, b) for a, b in zip(masks, t_masks)) and 0 < np.mean(np.concatenate(masks)) < 1
    twin._tensors[0]["w"].copyfrom(np.zeros_like(twin.params[0]["w"]))  # noqa: SLF001 - its own buffer
    assert not np.array_equal(twin.step(x)[0], out)
    np.testing.assert_array_equal(dec.step(x)[0], out)


def test_bytecode_library_is_the_same_step_and_the_one_an_instrument_sees(builds):
    """decoder.so runs the step compiled to native code and calls no instrument; decoder-bytecode.so, the same
    kernels on the bytecode VM, gives the same outputs, masks and states bit for bit and reports each kernel call."""
    import tvm_ffi

    from dualtvm.runtime import sequence_runner

    dec = CompiledDecoder(builds["tiny-lstm"]["builds"]["dual"])
    dec.set_insensitive_ratio(0.5)
    xs = [np.random.default_rng(i).standard_normal(48).astype(np.float32) for i in range(4)]
    seen: dict[str, list[str]] = {}
    outs = {}
    for name, vm in (("compiled", dec.vm), ("bytecode", dec.instrumentable_vm())):
        calls = seen[name] = []

        def instrument(func, symbol, before_run, ret, *args, calls=calls) -> int:
            calls.append(str(symbol))
            return 0

        vm.set_instrument(tvm_ffi.convert(instrument))
        prepare, step, box = sequence_runner(dec, xs, vm=vm)
        prepare()
        outs[name] = []
        for i in range(len(xs)):
            step(i)
            outs[name].append([t.numpy() for t in box["out"]])
    for a, b in zip(outs["compiled"], outs["bytecode"]):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert not seen["compiled"]
    assert any(s.startswith("masked_gemv") for s in seen["bytecode"])


def test_export_load_in_fresh_process(builds):
    d = builds["tiny-gru"]["builds"]["dual"]
    x = np.linspace(-1, 1, 48, dtype=np.float32)
    dec = CompiledDecoder(d)
    dec.set_insensitive_ratio(0.5)
    here, _, _ = dec.step(x)
    code = (f"import numpy as np; from dualtvm.runtime import CompiledDecoder; d = CompiledDecoder({d!r}); "
            f"d.set_insensitive_ratio(0.5); out, _, _ = d.step(np.linspace(-1, 1, 48, dtype=np.float32)); "
            f"print(' '.join(repr(float(v)) for v in out))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    there = np.array([float(v) for v in res.stdout.split()], np.float32)
    np.testing.assert_array_equal(here, there)


def test_bad_inputs_are_refused(builds, tmp_path):
    d = Path(builds["tiny-lstm"]["builds"]["dual"])
    dec = CompiledDecoder(d)
    x = np.zeros(48, np.float32)
    x[3] = np.nan
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        dec.step(x)
    with pytest.raises(FloatingPointError, match="state contains NaN"):
        dec.step(np.zeros(48, np.float32), [np.full(48, np.inf, np.float32)] * 4)
    with pytest.raises(ValueError, match="the decoder takes"):
        dec.step(np.zeros(7, np.float32))
    with pytest.raises(BuildError, match="was built for model"):
        CompiledDecoder(d, expect_model={"name": "tiny-gru"})
    # a library for an ISA this host lacks is refused before it is loaded
    other = tmp_path / "other"
    other.mkdir()
    for f in ("decoder.so", "params.npz", "little.npz"):
        (other / f).write_bytes((d / f).read_bytes())
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["target"] = {"kind": "llvm", "mattr": ["+amx-tile"]}
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TargetError, match="lacks: \\['amx-tile'\\]; refusing to load"):
        CompiledDecoder(other)
    with pytest.raises(BuildError, match="not a dualtvm build folder"):
        CompiledDecoder(tmp_path)


def test_int4_little_weights_are_checked(builds):
    """An INT4 build holds packed nibbles; INT4 needs AVX2; a little module of other bits is refused."""
    from dualtvm.decoder import DecoderSpec, compile_decoder, pack_layer

    dec = CompiledDecoder(builds["tiny-gru-w4"]["builds"]["dual"])
    s = dec.spec.layers[0]
    assert s.little_bits == 4 and dec.params[0]["wq"].dtype == np.uint8 and dec.params[0]["wq"].shape == (4 * s.hidden, s.kp4)
    with pytest.raises(ValueError, match="AVX2"):
        compile_decoder(DecoderSpec(dec.spec.layers, dual=True), "llvm -mcpu=x86-64")
    from dualtvm.bench import big_layers_from_params
    from dualtvm.kernels import LayerShape

    int8_shape = LayerShape(s.rnn_type, s.hidden, s.input_size, s.k)
    with pytest.raises(ValueError, match="INT8 little weights, the little module has INT4"):
        pack_layer(int8_shape, big_layers_from_params(dec)[0], dec.littles[0])


def test_tune_then_build_uses_database(tmp_path):
    logs = tmp_path / "logs"
    env = {**os.environ, "TVM_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "scripts/tune.py", "--model", "tiny-lstm", "--trials", "2", "--tasks",
                    "masked_gemv,little_gemv", "--logs", str(logs)], cwd=REPO, check=True, env=env, capture_output=True)
    records = (logs / "database_tuning_record.json").read_text().splitlines()
    assert records, "tuning wrote no record"
    summary = json.loads((logs / "summary.json").read_text())
    assert len(summary) == 2
    # broadwell has AVX2: the INT8 little GEMV runs on the projection's integer codes (LayerShape.for_target)
    for name, nest in ((n, "gather" if n.startswith("masked") else "stream-int8") for n in summary):
        assert summary[name]["default_ms"] > 0 and summary[name]["use"] in ("tuned", "default", nest)
        assert summary[name][f"{nest}_ms"] > 0 and summary[name][f"{nest}_knobs"]["groups"] >= 1
        assert summary[name]["cache"] == "flushed"
    # a rerun resumes: the task is done, so nothing is redone and no record is lost
    subprocess.run([sys.executable, "scripts/tune.py", "--model", "tiny-lstm", "--trials", "2", "--tasks",
                    "masked_gemv,little_gemv", "--logs", str(logs)], cwd=REPO, check=True, env=env, capture_output=True)
    assert (logs / "database_tuning_record.json").read_text().splitlines()[: len(records)] == records
    r = build_model(BuildConfig(model="tiny-lstm", out=str(tmp_path / "b"), tuning_logs=str(logs), verify=True, steps=10))
    assert r["schedules"] == "tuned database where faster" and r["verified"] is True


def test_dry_run_prints_target_and_tasks():
    res = subprocess.run([sys.executable, "scripts/tune.py", "--target", "llvm -mcpu=broadwell", "--dry-run"],
                         cwd=REPO, check=True, capture_output=True, text=True)
    doc = json.loads(res.stdout)
    assert doc["target"]["mcpu"] == "broadwell" and doc["target_name"] == "llvm-broadwell"
    assert {t["kernel"].split("_lstm")[0] for t in doc["tasks"]} == {"masked_gemv", "gemv", "little_gemv", "project"}
    # the big GEMVs are named by the layer's shape, the little kernels by k too (eq. 3: 417)
    assert {t["kernel"] for t in doc["tasks"] if "_k" not in t["kernel"]} == {"masked_gemv_lstm_1500_1500", "gemv_lstm_1500_1500"}
    # AVX2: the projection and INT8 little GEMV on integer codes
    assert {t["kernel"] for t in doc["tasks"] if t["kernel"].endswith("_c8")} == {
        "project_lstm_1500_1500_k417_c8", "little_gemv_lstm_1500_1500_k417_c8"}
    bad = subprocess.run([sys.executable, "scripts/tune.py", "--target", "llvm -mcpu=broadwell -foo=1", "--dry-run"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown target flag -foo" in bad.stderr


def test_threads_share_one_compiled_decoder(builds):
    """Several Python threads stepping one CompiledDecoder at once get the single-threaded results."""
    from concurrent.futures import ThreadPoolExecutor

    dec = CompiledDecoder(builds["tiny-gnmt"]["builds"]["dual"])
    dec.set_insensitive_ratio(0.5)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(48).astype(np.float32) for _ in range(8)]

    def run(x):
        state, outs = None, []
        for _ in range(5):
            out, state, _ = dec.step(x, state)
            outs.append(out)
        return np.stack(outs)

    expected = [run(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, xs))
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_profile_step_reports_every_part(builds, capsys):
    """scripts/profile_step.py: in-step time per part of a 4-layer dual build; a non-build folder is a clear error."""
    sys.path.insert(0, str(REPO / "scripts"))
    import profile_step

    # 40 steps: the medians of two passes are compared below, and a burst on a shared host skewed those of 8
    assert profile_step.main([builds["tiny-gnmt"]["builds"]["dual"], "--ratio", "0.5", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "steps of Gaussian inputs" in out.splitlines()[0]  # a random-weight build has no data of its own
    times = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()[1:]}
    assert set(times) == {"projection", "little", "mask", "big", "assembly", "kernels", "step", "timed", "vm"}
    assert all(v > 0 for v in times.values()) and times["step"] >= times["big"] and times["timed"] >= times["big"] / 2
    kb = {line.split()[0]: float(line.split()[2]) for line in out.splitlines()[1:6]}  # each part's bytes, and its rate
    assert all(v > 0 for v in kb.values()) and all(line.endswith("GB/s") for line in out.splitlines()[1:6])
    assert "(measured 0." in out.splitlines()[0]  # the ratio its masks made, beside the one asked
    assert profile_step.main([builds["tiny-gnmt-w4"]["builds"]["dual"], "--ratio", "0.5", "--steps", "4", "--cold"]) == 0
    assert "cold weights cache" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        profile_step.main([str(REPO / "tests"), "--steps", "8"])
    assert "not a dualtvm build folder" in capsys.readouterr().err


def test_ablation_empties_one_more_part_at_a_time(builds, capsys):
    """``--ablate``: the step compiled again with the parts emptied in ABLATION_ORDER; only the picked kernels lose
    their bodies, every variant runs, and the parts' marginal costs and the VM's add up to the whole step."""
    import tvm

    from dualtvm.bench import ABLATION_ORDER, kernel_part
    from dualtvm.decoder import build_ir, without_kernels
    from dualtvm.runtime import CompiledDecoder

    dec = CompiledDecoder(builds["tiny-gnmt"]["builds"]["dual"])
    mod = build_ir(dec.spec, dec.target)
    emptied = without_kernels(mod, lambda name: kernel_part(name) == "big")
    kernels = {gv.name_hint: (f, emptied[gv.name_hint]) for gv, f in mod.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc)}
    assert {kernel_part(n) for n in kernels} == set(ABLATION_ORDER)
    for name, (before, after) in kernels.items():
        assert isinstance(after.body, tvm.tirx.Evaluate) == (kernel_part(name) == "big"), name
    sys.path.insert(0, str(REPO / "scripts"))
    import profile_step

    for kind, parts in (("dual", ABLATION_ORDER), ("dense", ("big", "assembly"))):
        args = [builds["tiny-gnmt"]["builds"][kind], "--steps", "6", "--ablate", "1"]
        assert profile_step.main(args + (["--ratio", "0.5"] if kind == "dual" else [])) == 0
        lines = capsys.readouterr().out.split("one more part emptied at a time")[1].splitlines()[1:]
        ms = {line.split()[0]: float(line.split()[1]) for line in lines}
        assert list(ms) == ["step", *parts, "vm"] and ms["step"] > 0 and ms["vm"] > 0
        assert abs(sum(ms[p] for p in parts) + ms["vm"] - ms["step"]) < 1e-3

def test_profile_step_decodes_the_builds_own_data(builds, tiny_multi30k, tmp_path, capsys):
    """A build made from a checkpoint is profiled on that checkpoint's data; a checkpoint gone, or its data not
    where ``--data-dir`` says, is a clear error that names the way out (``--inputs gaussian``)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import profile_step

    build = tmp_path / "dual"
    shutil.copytree(builds["tiny-lstm"]["builds"]["dual"], build)
    manifest = json.loads((build / "manifest.json").read_text())
    manifest["model"]["checkpoint"] = str(tmp_path / "gone.pt")
    (build / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit):
        profile_step.main([str(build), "--steps", "3"])
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "--inputs gaussian" in err
    manifest["model"]["checkpoint"] = str(tiny_multi30k[1])  # a seq2seq checkpoint: its Multi30k inputs
    (build / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit):
        profile_step.main([str(build), "--steps", "3", "--data-dir", str(tmp_path / "nothing")])
    assert "--inputs gaussian" in capsys.readouterr().err
    assert profile_step.main([str(build), "--steps", "3", "--inputs", "gaussian"]) == 0
    assert "steps of Gaussian inputs" in capsys.readouterr().out


def test_budget_measures_every_ratio_and_picks_the_cheapest_in_quality(builds, tmp_path, capsys):
    """scripts/budget.py: one interleaved run over the ratios and the dense counterpart; a budget nothing meets exits 1."""
    sys.path.insert(0, str(REPO / "scripts"))
    import budget

    folder = Path(builds["tiny-lstm"]["builds"]["dual"]).parent
    out = tmp_path / "curve.json"
    argv = [str(folder), "--steps", "6", "--rounds", "1", "--ratios", "0.2,0.8", "--json", str(out)]
    assert budget.main(argv + ["--budget-ms", "1000"]) == 0
    assert "steps of Gaussian inputs" in capsys.readouterr().out.splitlines()[0]  # a random-weight build: no data
    doc = json.loads(out.read_text())
    assert [(c["engine"], c["insensitive_ratio"]) for c in doc["curve"]] == [("tvm-dual", 0.2), ("tvm-dual", 0.8),
                                                                               ("tvm-dense", 0.0)]
    low, high = doc["curve"][0]["measured_ratio"], doc["curve"][1]["measured_ratio"]
    assert 0 < low < high < 1  # the thresholds really moved between the ratios' rounds
    assert doc["choice"]["engine"] == "tvm-dense"  # a generous budget: no quality given up
    assert budget.main(argv + ["--budget-ms", "1000", "--cold"]) == 0  # each ratio's twin follows its thresholds
    cold = json.loads(out.read_text())
    assert cold["cold"] is True and [c["measured_ratio"] for c in cold["curve"]] == [low, high, 0.0]
    assert budget.main(argv + ["--budget-ms", "1e-6"]) == 1
    assert "no measured ratio meets 1e-06 ms" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        budget.main([str(folder), "--budget-ms", "1", "--ratios", "0.5,0.5", "--steps", "4"])
    assert "insensitive ratios must be distinct and lie in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused by the argument's type, before the build is loaded
        budget.main([str(folder), "--budget-ms", "1", "--ratios", "0.5,1.5", "--steps", "4"])
    assert "expected comma-separated ratios in [0, 1], got '0.5,1.5'" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", np.zeros((6, 5), np.float32))
    with pytest.raises(SystemExit):
        budget.main([str(folder), "--budget-ms", "1", "--inputs", str(tmp_path / "wrong.npy")])
    assert "holds an array of shape (6, 5); the decoder takes (steps, 48)" in capsys.readouterr().err
    own = tmp_path / "steps.npy"  # a user's own step inputs: timed in order, and named
    np.save(own, np.random.default_rng(0).standard_normal((8, 48)).astype(np.float32))
    assert budget.main(argv + ["--budget-ms", "1000", "--inputs", str(own)]) == 0
    assert f"5 steps × 1 rounds, warm cache, steps of {own}" in capsys.readouterr().out.splitlines()[0]
    for bad, why in (("steps.txt", "want 'data', 'gaussian' or a .npy file, got 'steps.txt'"),
                     (str(tmp_path / "gone.npy"), "gone.npy does not exist")):
        with pytest.raises(SystemExit):  # refused by the argument's type, before the build is loaded
            budget.main([str(folder), "--budget-ms", "1", "--inputs", bad])
        assert why in capsys.readouterr().err


def test_lm_checkpoint_build_fits_little_module_on_text(tiny_corpus, tmp_path):
    """A train_lm.py checkpoint: the little module is fitted on the corpus through the LM's own embedding."""
    from dataclasses import asdict

    from dualtvm.checkpoint import save_checkpoint
    from dualtvm.data import load_lm_corpus
    from dualtvm.models import LMConfig, RNNLanguageModel

    corpus = load_lm_corpus(str(tiny_corpus))
    cfg = LMConfig("LSTM", len(corpus.dictionary), 48, 2, 0.0, True)  # the tiny-lstm shapes
    ckpt = tmp_path / "lm.pt"
    save_checkpoint(ckpt, RNNLanguageModel(cfg), "lm", asdict(cfg), vocab=corpus.dictionary.idx2word,
                    train_state={"epoch": 0})
    r = build_model(BuildConfig(model="tiny-lstm", checkpoint=str(ckpt), corpus=str(tiny_corpus),
                                out=str(tmp_path / "b"), use_tuned=False, verify=True, steps=10))
    assert "fitted and calibrated on" in r["weights"] and r["verified"] is True
    other = tmp_path / "other-corpus"  # a corpus whose vocabulary is not the checkpoint's
    other.mkdir()
    for split in ("train", "valid", "test"):
        (other / f"{split}.txt").write_text("zebras graze near rivers .\n" * 20)
    with pytest.raises(ValueError, match="another vocabulary"):
        build_model(BuildConfig(model="tiny-lstm", checkpoint=str(ckpt), corpus=str(other), out=str(tmp_path / "c"),
                                use_tuned=False))


def test_compile_dual_takes_a_users_own_rnn(tmp_path, monkeypatch, capsys):
    """The Python path for a user's nn.GRU (no checkpoint file, no model config): build_dual, then
    compile_dual; the compiled dense and ratio-0 dual steps run the user's module, and the dual step at
    50 % follows the PyTorch dual-module reference."""
    import torch
    import torch.nn as nn

    from dualtvm.build import compile_dual
    from dualtvm.construct import build_dual

    torch.manual_seed(0)
    rnn = nn.GRU(24, 40, num_layers=2).eval()
    segments = [torch.randn(12, 4, 24) for _ in range(6)]
    dual = build_dual(rnn, lambda core: [core(x) for x in segments[:4]], lambda core: [core(x) for x in segments[4:]],
                      progress=False)
    folders = compile_dual(dual, "llvm -mcpu=broadwell", tmp_path / "mine")
    xs = torch.randn(8, 1, 24)
    with torch.no_grad():
        ref, _ = rnn(xs)
    for kind, ratio in (("dense", None), ("dual", 0.0)):
        dec = CompiledDecoder(folders[kind])
        if ratio is not None:
            dec.set_insensitive_ratio(ratio)
        state = None
        for t in range(len(xs)):
            out, state, _ = dec.step(xs[t, 0], state)
            np.testing.assert_allclose(out, ref[t, 0].numpy(), atol=2e-5, err_msg=f"{kind} step {t}")
    dec = CompiledDecoder(folders["dual"])
    dec.set_insensitive_ratio(0.5)
    dual.set_insensitive_ratio(0.5)
    state, ref_state = None, None
    sensitive = []
    for t in range(len(xs)):
        out, state, masks = dec.step(xs[t, 0], state)
        with torch.no_grad():
            ref_out, ref_state = dual(xs[t: t + 1], ref_state)
        np.testing.assert_allclose(out, ref_out[0, 0].numpy(), atol=2e-3, err_msg=f"dual at 50 %, step {t}")
        sensitive.append(np.mean([m.mean() for m in masks]))
    assert 0.3 < float(np.mean(sensitive)) < 0.7  # the knob took effect: about half the rows computed
    # both saturated tails of the sigmoid gates insensitive (thresholds.SIGMOID_TAILS): two-sided sigmoid bands
    # run on the same compiled mask, and the rows near σ = 1 go to the little module as in the reference
    from dualtvm.thresholds import Thresholds

    both = Thresholds({"r": (0.3, 0.7), "z": (0.25, 0.75), "n": (-0.5, 0.5)})
    dec.set_thresholds([both, both])
    for layer in dual.layers:
        layer.set_bands(both)
    state, ref_state = None, None
    for t in range(len(xs)):
        out, state, masks = dec.step(xs[t, 0], state)
        with torch.no_grad():
            ref_out, ref_state = dual(xs[t: t + 1], ref_state)
            pre = dual.layers[0].little.preactivations(xs[t], torch.zeros(1, 40) if t == 0 else prev_h)
        prev_h = ref_state[0]
        np.testing.assert_allclose(out, ref_out[0, 0].numpy(), atol=2e-3, err_msg=f"both tails, step {t}")
        z_ll = torch.sigmoid(pre[0, 40:80]).numpy()
        np.testing.assert_array_equal(masks[0][40:80], (z_ll > 0.25) & (z_ll < 0.75), err_msg=f"z mask, step {t}")
    # tune.py --in-step on this build times its own masked GEMVs; it rebuilt the default --model over a user's folder
    # (one knob setting beside the build's own: each recompiled step takes seconds)
    from schedules import GatherKnobs

    sys.path.insert(0, str(REPO / "scripts"))
    import tune

    monkeypatch.setattr("dualtvm.step_tuning.gather_grid", lambda cores, features: [GatherKnobs(2, 8, 16, 0, 3)])
    manifest = (folders["dual"] / "manifest.json").read_text()
    logs = tmp_path / "logs"
    assert tune.main(["--in-step", "--build", str(tmp_path / "mine"), "--logs", str(logs), "--ratios", "0.5",
                      "--steps", "2", "--rounds", "1", "--confirm-rounds", "1"]) == 0
    assert (folders["dual"] / "manifest.json").read_text() == manifest  # the user's build, untouched
    decided = json.loads((logs / "summary.json").read_text())
    assert decided["masked_gemv_pair_gru_40_24"]["in_step"]["model"] == "own RNN (compile_dual)"
    assert set(decided) == {"masked_gemv_pair_gru_40_24", "masked_gemv_pair_gru_40_40"}
    # what it tells the user to rebuild with reads those verdicts
    from dualtvm.tuning import target_database

    said = f"compile_dual with database=tuning.target_database('llvm -mcpu=broadwell', {str(logs)!r})"
    assert said in capsys.readouterr().out
    assert target_database("llvm -mcpu=broadwell", logs).summary.keys() == decided.keys()
    assert tune.main(["--in-step", "--build", str(folders["dense"]), "--logs", str(logs)]) == 2  # no masked GEMV


def test_compile_dual_takes_the_targets_tuning_log_by_default(tmp_path, monkeypatch):
    """compile_dual, like build.py, compiles under the target's own tuning log unless told otherwise: a user's
    ``tune.py --in-step`` verdicts reached their build only when they passed the log (before session 41)."""
    import torch
    import torch.nn as nn

    from dualtvm.build import compile_dual
    from dualtvm.construct import build_dual

    class Compiled(Exception):
        pass

    seen = []

    def compile_decoder(spec, target, database):
        seen.append(database)
        raise Compiled  # what compile_dual hands the compiler is the point, not the build

    monkeypatch.setattr("dualtvm.build.compile_decoder", compile_decoder)
    monkeypatch.setattr("dualtvm.tuning.REPO", tmp_path)  # the target's log: tmp_path/tuning_logs/llvm-broadwell
    verdict = {"masked_gemv_lstm_16_12": {"use": "gather", "gather_knobs": {"rows": 8, "prefetch": 0}}}
    (tmp_path / "tuning_logs" / "llvm-broadwell").mkdir(parents=True)
    (tmp_path / "tuning_logs" / "llvm-broadwell" / "summary.json").write_text(json.dumps(verdict))
    torch.manual_seed(0)
    rnn = nn.LSTM(12, 16).eval()
    segments = [torch.randn(6, 2, 12) for _ in range(3)]
    dual = build_dual(rnn, lambda core: [core(x) for x in segments[:2]], lambda core: [core(x) for x in segments[2:]],
                      progress=False)
    for database in ("target", None):
        with pytest.raises(Compiled):
            compile_dual(dual, "llvm -mcpu=broadwell", tmp_path / "out", database=database)
    with pytest.raises(Compiled):
        compile_dual(dual, "llvm -mcpu=broadwell", tmp_path / "out")
    assert seen[0].summary == verdict and seen[0].database is None  # a log of in-step verdicts alone
    assert seen[1] is None and seen[2].summary == verdict
    with pytest.raises(ValueError, match="database must be a TuningLog, None or 'target'"):
        compile_dual(dual, "llvm -mcpu=broadwell", tmp_path / "out", database="tuning_logs/llvm-broadwell")


@pytest.mark.parametrize("rnn_type, projection", [("LSTM", "sparse"), ("GRU", "sparse"), ("GRU", "learned")])
def test_contribution_masks_compile_like_the_reference(rnn_type, projection, tmp_path):
    """A little module calibrated for the contribution rule compiles to the scoring mask kernel (scores from
    y_LL and c(t−1) / h(t−1)); its masks and outputs follow the PyTorch reference step by step at 50 % — with
    eq. 2's projection or a learned one (int8 codes of any value: the same projection kernel)."""
    import torch
    import torch.nn as nn

    from dualtvm.build import compile_dual
    from dualtvm.construct import build_dual
    from dualtvm.little import LittleConfig

    torch.manual_seed(1)
    rnn = getattr(nn, rnn_type)(20, 36).eval()
    segments = [torch.randn(12, 4, 20) for _ in range(6)]
    dual = build_dual(rnn, lambda core: [core(x) for x in segments[:4]], lambda core: [core(x) for x in segments[4:]],
                      LittleConfig(mask_rule="contribution", projection=projection), progress=False)
    assert dual.layers[0].little.proj_h.kind == projection
    folders = compile_dual(dual, "llvm -mcpu=broadwell", tmp_path / "contribution")
    dec = CompiledDecoder(folders["dual"])
    assert dec.spec.layers[0].mask_rule == "contribution"
    dec.set_insensitive_ratio(0.5)
    dual.set_insensitive_ratio(0.5)
    layer = dual.layers[0]
    xs = torch.randn(10, 1, 20)
    state, ref = None, ((torch.zeros(1, 36), torch.zeros(1, 36)) if rnn_type == "LSTM" else torch.zeros(1, 36))
    agree, sensitive = [], []
    for t in range(len(xs)):
        out, state, masks = dec.step(xs[t, 0], state)
        with torch.no_grad():
            ref_h, ref, ref_mask = layer.step(xs[t], ref, record=False)
        agree.append(float((masks[0] == ref_mask[0].numpy()).mean()))
        sensitive.append(float(masks[0].mean()))
        np.testing.assert_allclose(out, ref_h[0].numpy(), atol=2e-3, err_msg=f"step {t}")
    assert min(agree) > 0.98  # the kernel's exp is a polynomial: a row exactly at θ may fall either way
    assert 0.3 < float(np.mean(sensitive)) < 0.7
