"""Reliability: corrupted tuning databases, bad model names and checkpoints, property tests of kernels."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from dualtvm import kernels as K
from dualtvm.models import ModelError
from dualtvm.registry import big_rnn, model_config
from dualtvm.tuning import DatabaseError, check_database
from schedules import Knobs, apply_default


def test_truncated_database_line_is_named(tmp_path):
    rec = tmp_path / "database_tuning_record.json"
    rec.write_text('[0, [[], [0.001], {}, []]]\n[1, [[], [0.0')
    with pytest.raises(DatabaseError, match=r"database_tuning_record\.json:2: corrupted tuning record"):
        check_database(tmp_path)
    assert check_database(tmp_path, skip_bad=True) == 1
    assert [json.loads(l)[0] for l in rec.read_text().splitlines()] == [0]


def test_unknown_model_and_mismatched_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'lstm-999': known models are"):
        model_config("lstm-999")
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(750, 750).state_dict(), path)
    with pytest.raises(ModelError, match=r"holds an GRU\(input 750, hidden 750, layers 1\) but model 'lstm-750' is LSTM"):
        big_rnn("lstm-750", path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        big_rnn("lstm-750", tmp_path / "missing.pt")


TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "broadwell"})


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 200), k_blocks=st.integers(1, 4), density=st.sampled_from([0.0, 1.0, 0.3, 0.77]),
       lanes=st.sampled_from([8, 16, 32]), groups=st.sampled_from([1, 2, 3]), rows=st.sampled_from([1, 4, 8, 16]),
       prefetch=st.sampled_from([0, 1, 2]), locality=st.sampled_from([1, 2, 3]),
       split=st.sampled_from(["interleave", "contiguous"]), seed=st.integers(0, 1000))
def test_gather_gemv_property(n, k_blocks, density, lanes, groups, rows, prefetch, locality, split, seed):
    """The prefetching loop nest matches numpy for any row count (odd ones too), density and knobs."""
    from schedules import GatherKnobs, gather_gemv

    k = K.PAD * k_blocks
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    idx = np.flatnonzero(rng.random(n) < density).astype(np.int32)
    row_list = np.zeros(n, np.int32)  # as the mask kernel leaves it: zeros past count
    row_list[: len(idx)] = idx
    f = gather_gemv(n, k, GatherKnobs(groups, rows, lanes, prefetch, locality, split), "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": f}), target=TARGET)
    dev = tvm.cpu()
    yc = tvm.runtime.tensor(np.full(n, np.nan, np.float32), dev)
    lib["main"](tvm.runtime.tensor(W, dev), tvm.runtime.tensor(x, dev), tvm.runtime.tensor(row_list, dev),
                tvm.runtime.tensor(np.array([len(idx)], np.int32), dev), yc)
    np.testing.assert_allclose(yc.numpy()[: len(idx)], W[idx] @ x, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 200), x_blocks=st.integers(1, 3), h_blocks=st.integers(1, 3),
       density=st.sampled_from([0.0, 1.0, 0.3, 0.77]), lanes=st.sampled_from([8, 16, 32]),
       groups=st.sampled_from([1, 2, 3]), rows=st.sampled_from([1, 4, 8, 16]), prefetch=st.sampled_from([0, 1, 2]),
       split=st.sampled_from(["interleave", "contiguous"]), seed=st.integers(0, 1000))
def test_gather_pair_gemv_property(n, x_blocks, h_blocks, density, lanes, groups, rows, prefetch, split, seed):
    """A GRU's two masked GEMVs in one pass over the listed rows of [W_ih | W_hh] match numpy's, for any row count,
    density and knobs, and the nest is the one a verdict of the masked GEMV's kind builds."""
    from schedules import GatherKnobs, gather_pair_gemv, loop_nest

    kx, kh = K.PAD * x_blocks, K.PAD * h_blocks
    assert loop_nest(K.masked_gemv_pair(n, kx, kh)).kind == loop_nest(K.masked_gemv(n, kx)).kind == "gather"
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, kx + kh)).astype(np.float32)
    x, h = rng.standard_normal(kx).astype(np.float32), rng.standard_normal(kh).astype(np.float32)
    idx = np.flatnonzero(rng.random(n) < density).astype(np.int32)
    row_list = np.zeros(n, np.int32)
    row_list[: len(idx)] = idx
    f = gather_pair_gemv(n, kx, kh, GatherKnobs(groups, rows, lanes, prefetch, 2, split), "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": f}), target=TARGET)
    dev = tvm.cpu()
    ycx, ych = (tvm.runtime.tensor(np.full(n, np.nan, np.float32), dev) for _ in range(2))
    lib["main"](tvm.runtime.tensor(W, dev), tvm.runtime.tensor(x, dev), tvm.runtime.tensor(h, dev),
                tvm.runtime.tensor(row_list, dev), tvm.runtime.tensor(np.array([len(idx)], np.int32), dev), ycx, ych)
    np.testing.assert_allclose(ycx.numpy()[: len(idx)], W[idx, :kx] @ x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ych.numpy()[: len(idx)], W[idx, kx:] @ h, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 200), x_blocks=st.integers(1, 3), h_blocks=st.integers(1, 3),
       lanes=st.sampled_from([8, 16, 32]), groups=st.sampled_from([1, 2, 3]), rows=st.sampled_from([1, 4, 8, 16]),
       split=st.sampled_from(["interleave", "contiguous"]), seed=st.integers(0, 1000))
def test_pair_gemv_property(n, x_blocks, h_blocks, lanes, groups, rows, split, seed):
    """A GRU's two GEMVs in one pass over [W_ih | W_hh] match numpy's two, for any row count and knobs; rows past
    n are never written."""
    from schedules import PairKnobs, pair_gemv, pair_shape

    kx, kh = K.PAD * x_blocks, K.PAD * h_blocks
    assert pair_shape(K.gemv_pair(n, kx, kh)) == (n, kx, kh)
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, kx + kh)).astype(np.float32)
    x, h = rng.standard_normal(kx).astype(np.float32), rng.standard_normal(kh).astype(np.float32)
    f = pair_gemv(n, kx, kh, PairKnobs(groups, rows, lanes, split), "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": f}), target=TARGET)
    dev = tvm.cpu()
    yx, yh = (tvm.runtime.tensor(np.full(n, np.nan, np.float32), dev) for _ in range(2))
    lib["main"](tvm.runtime.tensor(W, dev), tvm.runtime.tensor(x, dev), tvm.runtime.tensor(h, dev), yx, yh)
    np.testing.assert_allclose(yx.numpy(), W[:, :kx] @ x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(yh.numpy(), W[:, kx:] @ h, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 200), k_blocks=st.integers(1, 3), lanes=st.sampled_from([8, 16, 32]),
       groups=st.sampled_from([1, 2, 3]), rows=st.sampled_from([1, 2, 4, 8]), prefetch=st.sampled_from([0, 2, 4]),
       seed=st.integers(0, 1000))
def test_little_gemv_nest_property(n, k_blocks, lanes, groups, rows, prefetch, seed):
    """The streaming INT8 little GEMV matches numpy for any row count (slices of unequal length too) and knobs."""
    from schedules import StreamKnobs, little_gemv_nest

    k = K.PAD * k_blocks
    rng = np.random.default_rng(seed)
    Wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    z, scale, bias = (rng.standard_normal(m).astype(np.float32) for m in (k, n, n))
    f = little_gemv_nest(n, k, StreamKnobs(groups, rows, lanes, prefetch), "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": f}), target=TARGET)
    dev = tvm.cpu()
    pre = tvm.runtime.tensor(np.full(n, np.nan, np.float32), dev)
    lib["main"](*(tvm.runtime.tensor(v, dev) for v in (Wq, z, scale, bias)), pre)
    np.testing.assert_allclose(pre.numpy(), scale * (Wq.astype(np.float32) @ z) + bias, rtol=1e-4, atol=1e-3)


def _integer_little_case(bits: int, n: int, k: int, rng):
    """(weights in the nest's layout, zq, zs, exact pre − bias) on full-range codes: weights ±7 (INT4) or
    ±127 (INT8), activations ±127 — the extremes where a saturating ``pmaddubsw`` would go wrong."""
    kp = K.int4_padded(k)
    codes = rng.choice([-7, 7, 0, 3, -5] if bits == 4 else [-127, 127, 0, 3, -100], (n, 2 * k))
    zq = np.zeros(2 * kp, np.int8)
    zq[:k], zq[kp:kp + k] = rng.choice([-127, 127, 1], k), rng.integers(-127, 128, k)
    zs = np.array([0.5, 0.25], np.float32)
    exact = (codes[:, :k] @ zq[:k].astype(np.int64)) * 0.5 + (codes[:, k:] @ zq[kp:kp + k].astype(np.int64)) * 0.25
    if bits == 4:
        return K.pack_int4(codes, k), zq, zs, exact
    W8 = np.zeros((n, 2 * kp), np.int8)
    W8[:, :k], W8[:, kp:kp + k] = codes[:, :k], codes[:, k:]
    return W8, zq, zs, exact


def _integer_little_nest(bits: int, n: int, k: int, knobs):
    from schedules import little_gemv_int4_nest, little_gemv_int8_nest

    kp = K.int4_padded(k)
    return little_gemv_int4_nest(n, kp, knobs, "main") if bits == 4 else little_gemv_int8_nest(n, 2 * kp, knobs, "main")


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 150), k=st.integers(1, 200), lanes=st.sampled_from([8, 16]), groups=st.sampled_from([1, 2, 3]),
       rows=st.sampled_from([1, 2, 4, 5]), prefetch=st.sampled_from([0, 2, 4]), bits=st.sampled_from([4, 8]),
       seed=st.integers(0, 1000))
def test_integer_little_gemv_nest_property(n, k, lanes, groups, rows, prefetch, bits, seed):
    """The AVX2 INT4 and INT8 little GEMVs on integer codes equal exact integer arithmetic for any shape and
    knobs (INT8: |z| × sign(z)·w keeps pmaddubsw's int16 pairs below 2^15)."""
    from schedules import StreamKnobs

    rng = np.random.default_rng(seed)
    W, zq, zs, exact = _integer_little_case(bits, n, k, rng)
    scale, bias = (rng.standard_normal(m).astype(np.float32) for m in (n, n))
    f = _integer_little_nest(bits, n, k, StreamKnobs(groups, rows, lanes, prefetch))
    lib = tvm.tirx.build(tvm.IRModule({"main": f}), target=TARGET)
    dev = tvm.cpu()
    pre = tvm.runtime.tensor(np.full(n, np.nan, np.float32), dev)
    lib["main"](*(tvm.runtime.tensor(v, dev) for v in (W, zq, zs, scale, bias)), pre)
    np.testing.assert_allclose(pre.numpy(), scale * exact + bias, rtol=1e-5, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("bits,lanes", [(4, 8), (4, 16), (8, 16)])
def test_integer_little_gemv_vnni_equals_exact(bits, lanes):
    """The AVX-512 VNNI form (vpdpbusd) of the integer little GEMVs: same exact sums (skipped without VNNI)."""
    from dualtvm.target import host_cpu_features, parse_target
    from schedules import StreamKnobs

    for cli, vnni in (("llvm -mcpu=broadwell", False), ("llvm -mcpu=znver4", True), ("llvm -mcpu=skylake-avx512", False)):
        assert StreamKnobs.for_target(2, parse_target(cli).required_features()).vnni is vnni
    if not {"avx512_vnni", "avx512vl"} <= host_cpu_features():
        pytest.skip("host CPU has no AVX-512 VNNI")
    n, k = 77, 150
    W, zq, zs, exact = _integer_little_case(bits, n, k, np.random.default_rng(3))
    f = _integer_little_nest(bits, n, k, StreamKnobs(2, 4, lanes, 2, vnni=True))
    lib = tvm.tirx.build(tvm.IRModule({"main": f}), target=tvm.target.Target({"kind": "llvm", "mcpu": "znver4"}))
    assert "vpdpbusd" in lib.inspect_source("asm")
    pre = tvm.runtime.tensor(np.full(n, np.nan, np.float32), tvm.cpu())
    lib["main"](*(tvm.runtime.tensor(v, tvm.cpu()) for v in (W, zq, zs, np.ones(n, np.float32),
                                                              np.zeros(n, np.float32))), pre)
    np.testing.assert_array_equal(pre.numpy(), exact.astype(np.float32))


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(k=st.integers(1, 130), dx_blocks=st.integers(1, 3), dh_blocks=st.integers(1, 3), groups=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 1000))
def test_project_codes_nest_matches_definition(k, dx_blocks, dh_blocks, groups, seed):
    """The streaming projection to INT8 codes equals ``kernels.project_codes`` (codes within one, same scales)."""
    from schedules import StreamKnobs, apply_default, project_codes_nest

    dx, dh, kp = K.PAD * dx_blocks, K.PAD * dh_blocks, K.int4_padded(k)
    rng = np.random.default_rng(seed)
    args = [rng.integers(-1, 2, (k, dx)).astype(np.int8), rng.integers(-1, 2, (k, dh)).astype(np.int8),
            rng.uniform(0.05, 1, 2 * k).astype(np.float32),  # rows' scales
            rng.standard_normal(dx).astype(np.float32), rng.standard_normal(dh).astype(np.float32)]
    outs = []
    for f in (project_codes_nest(k, dx, dh, StreamKnobs(groups), "main"),
              apply_default(K.project_codes(k, dx, dh)).with_attr("global_symbol", "main")):
        lib = tvm.tirx.build(tvm.IRModule({"main": f}), target=TARGET)
        zq, zs = tvm.runtime.tensor(np.full(2 * kp, 99, np.int8), tvm.cpu()), tvm.runtime.tensor(np.zeros(2, np.float32), tvm.cpu())
        lib["main"](*(tvm.runtime.tensor(a, tvm.cpu()) for a in args), zq, zs)
        outs.append((zq.numpy().astype(int), zs.numpy()))
    (a, sa), (b, sb) = outs
    assert np.abs(a - b).max() <= 1 and (a != b).sum() <= 1
    np.testing.assert_allclose(sa, sb, rtol=1e-5)
    assert not a[k:kp].any() and not a[kp + k:].any()


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(k=st.integers(1, 60), dx_blocks=st.integers(1, 3), dh_blocks=st.integers(1, 3), lanes=st.sampled_from([8, 16, 32]),
       groups=st.sampled_from([1, 2, 3]), rows=st.sampled_from([1, 4]), prefetch=st.sampled_from([0, 2]),
       seed=st.integers(0, 1000))
def test_project_nest_matches_definition(k, dx_blocks, dh_blocks, lanes, groups, rows, prefetch, seed):
    """The streaming projection equals ``kernels.project`` (ternary P, per-half INT8 quantisation).

    Sums run in another order, so a value within rounding of a code boundary may land one code over."""
    from schedules import StreamKnobs, apply_default, project_nest

    dx, dh = K.PAD * dx_blocks, K.PAD * dh_blocks
    rng = np.random.default_rng(seed)
    args = [rng.integers(-1, 2, (k, dx)).astype(np.int8), rng.integers(-1, 2, (k, dh)).astype(np.int8),
            rng.uniform(0.05, 1, 2 * k).astype(np.float32),  # rows' scales
            rng.standard_normal(dx).astype(np.float32), rng.standard_normal(dh).astype(np.float32)]
    outs = []
    for f in (project_nest(k, dx, dh, StreamKnobs(groups, rows, lanes, prefetch), "main"),
              apply_default(K.project(k, dx, dh)).with_attr("global_symbol", "main")):
        lib = tvm.tirx.build(tvm.IRModule({"main": f}), target=TARGET)
        z = tvm.runtime.tensor(np.full(K.padded(2 * k), np.nan, np.float32), tvm.cpu())
        lib["main"](*(tvm.runtime.tensor(a, tvm.cpu()) for a in args), z)
        outs.append(z.numpy())
    diff, step = np.abs(outs[0] - outs[1]), np.abs(outs[1]).max() / 127
    assert (diff > 1e-5).sum() <= 1 and diff.max() <= step * 1.01 + 1e-5
    assert not outs[0][2 * k:].any()


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(n_blocks=st.integers(1, 12), k_blocks=st.integers(1, 4), density=st.sampled_from([0.0, 1.0, 0.3, 0.77]),
       lanes=st.sampled_from([8, 16, 32]), groups=st.sampled_from([1, 2, 3]), rows=st.sampled_from([1, 2, 8]),
       seed=st.integers(0, 1000))
def test_masked_gemv_property(n_blocks, k_blocks, density, lanes, groups, rows, seed):
    """Any shape (rows a multiple of 8, K padded), mask density and knob setting matches numpy."""
    n, k = 8 * n_blocks, K.PAD * k_blocks
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    idx = np.flatnonzero(rng.random(n) < density).astype(np.int32)
    row_list = np.zeros(n, np.int32)
    row_list[: len(idx)] = idx
    lib = tvm.tirx.build(tvm.IRModule({"main": apply_default(K.masked_gemv(n, k), Knobs(lanes, groups, rows))
                                       .with_attr("global_symbol", "main")}), target=TARGET)
    dev = tvm.cpu()
    yc = tvm.runtime.tensor(np.zeros(n, np.float32), dev)
    lib["main"](tvm.runtime.tensor(W, dev), tvm.runtime.tensor(x, dev), tvm.runtime.tensor(row_list, dev),
                tvm.runtime.tensor(np.array([len(idx)], np.int32), dev), yc)
    np.testing.assert_allclose(yc.numpy()[: len(idx)], W[idx] @ x, rtol=1e-4, atol=1e-4)


def _write_rows(path: str, who: int, n: int) -> None:
    from dualtvm.results import update_rows

    for i in range(n):
        update_rows(path, "race", {"who": who, "i": i}, key=("who", "i"), command="test")


def test_concurrent_result_writers_keep_every_row(tmp_path):
    """Two background evaluations appending to one results file at once: no row is lost."""
    import json
    import multiprocessing as mp

    path = str(tmp_path / "race.json")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_rows, args=(path, who, 25)) for who in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    rows = json.loads(open(path).read())["rows"]
    assert sorted((r["who"], r["i"]) for r in rows) == [(w, i) for w in range(3) for i in range(25)]


def test_busy_processes_names_a_cpu_hog_and_skips_own_children(caplog):
    """A spinning process shows up in the warning that precedes timings; as our own child it is ignored."""
    import logging
    import os
    import subprocess
    import sys

    from dualtvm.results import busy_processes, warn_if_busy

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = busy_processes(interval_s=1.0, ignore={os.getpid()})
        assert any(f"pid {hog.pid} " in b for b in busy), busy
        assert not any(f"pid {hog.pid} " in b for b in busy_processes(interval_s=0.3))  # a child of ours
        with caplog.at_level(logging.WARNING, logger="dualtvm.results"):
            warn_if_busy("unit test")
        assert f"pid {hog.pid} " not in caplog.text
    finally:
        hog.kill()
        hog.wait()


def test_weights_on_huge_pages_are_the_same_numbers_and_huge_where_linux_allows():
    """weight_tensors copies into a 2 MB-aligned madvised mapping and hands it to TVM zero-copy."""
    from pathlib import Path

    from dualtvm.memory import HUGE_PAGE, huge_page_bytes, weight_tensors

    a = np.random.default_rng(0).standard_normal((1024, 1536)).astype(np.float32)  # 6 MB
    before = huge_page_bytes()
    t = weight_tensors({"a": a}, tvm.cpu())["a"]
    assert np.array_equal(t.numpy(), a) and t.data_ptr() % HUGE_PAGE == 0
    small = weight_tensors({"a": a[:4]}, tvm.cpu())["a"]  # below a huge page: a plain TVM tensor
    assert np.array_equal(small.numpy(), a[:4])
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():
        assert huge_page_bytes() - before >= HUGE_PAGE  # at least one aligned 2 MB range got a huge page


def test_a_decoders_weights_share_one_huge_page_mapping_and_stay_there_when_updated():
    """weight_tensors packs every array (small ones too: cold, each 4 KB page costs a page walk) at 4 KB
    boundaries of one 2 MB-aligned mapping; copyfrom updates one in place; below a huge page in all: plain tensors."""
    from dualtvm.memory import HUGE_PAGE, PAGE, weight_tensors

    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((600, 1000)).astype(np.float32),  # 2.4 MB
              "p": rng.integers(-1, 2, (17, 33)).astype(np.int8), "lo": np.full(5, -1.0, np.float32)}
    t = weight_tensors(arrays, tvm.cpu())
    assert all(np.array_equal(t[k].numpy(), v) for k, v in arrays.items())
    if hasattr(__import__("mmap"), "MADV_HUGEPAGE"):
        ptr = {k: v.data_ptr() for k, v in t.items()}
        assert ptr["w"] % HUGE_PAGE == 0 and all(p % PAGE == 0 for p in ptr.values())
        assert ptr["p"] - ptr["w"] == -(-arrays["w"].nbytes // PAGE) * PAGE and ptr["lo"] - ptr["p"] == PAGE
        t["lo"].copyfrom(np.zeros(5, np.float32))
        assert t["lo"].data_ptr() == ptr["lo"] and not t["lo"].numpy().any()
    small = weight_tensors({"p": arrays["p"], "lo": arrays["lo"]}, tvm.cpu())
    assert np.array_equal(small["p"].numpy(), arrays["p"])


def test_timings_of_two_machines_stay_side_by_side(tmp_path):
    """A session on another machine adds its timing rows beside the first machine's (rows from before rows named
    their machine take their file's); quality rows, keyed without the machine, are replaced; the README renders
    one table per machine."""
    import json
    import sys
    from pathlib import Path

    from dualtvm.results import read_rows, update_rows

    path = tmp_path / "nmt.json"
    old = {"experiment": "nmt", "command": "c", "git": "g", "machine": "AMD EPYC, 2 cores",
           "rows": [{"model": "m", "part": "speed", "engine": "tvm-dense", "tokens_per_s": 1.0},
                    {"model": "m", "part": "quality", "engine": "torch", "bleu": 20.0}]}
    path.write_text(json.dumps(old))
    speed_key, quality_key = ("model", "part", "engine", "machine"), ("model", "part", "engine")
    update_rows(path, "nmt", {"model": "m", "part": "speed", "engine": "tvm-dense", "tokens_per_s": 2.0,
                              "machine": "Intel(R) Xeon(R) Processor, 2 cores"}, speed_key, "c")
    update_rows(path, "nmt", {"model": "m", "part": "quality", "engine": "torch", "bleu": 21.0,
                              "machine": "Intel(R) Xeon(R) Processor, 2 cores"}, quality_key, "c")
    rows = read_rows(path)
    assert sorted((r["part"], r["machine"], r.get("tokens_per_s", r.get("bleu"))) for r in rows) == [
        ("quality", "Intel(R) Xeon(R) Processor, 2 cores", 21.0), ("speed", "AMD EPYC, 2 cores", 1.0),
        ("speed", "Intel(R) Xeon(R) Processor, 2 cores", 2.0)]
    assert {r["git"] for r in rows if r["machine"].startswith("AMD")} == {"g"}  # measured at their file's revision
    doc = json.loads(path.read_text())
    assert doc["machine"] == "AMD EPYC, 2 cores; Intel(R) Xeon(R) Processor, 2 cores"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from render_results import by_machine

    text = by_machine(doc, [r for r in doc["rows"] if r["part"] == "speed"],
                      lambda rows: "|".join(str(r["tokens_per_s"]) for r in rows))
    assert text == "On AMD EPYC, 2 cores:\n\n1.0\n\nOn Intel Xeon, 2 cores:\n\n2.0"


def test_rows_keep_the_revision_their_run_started_from(tmp_path):
    """A long run stamps its rows with the revision it loaded; rows without one get the revision at write time."""
    from dualtvm.checkpoint import git_revision
    from dualtvm.results import read_rows, update_rows

    path = tmp_path / "r.json"
    update_rows(path, "r", {"model": "a", "git": "abc1234"}, ("model",), "c")
    update_rows(path, "r", {"model": "b"}, ("model",), "c")
    assert {r["model"]: r["git"] for r in read_rows(path)} == {"a": "abc1234", "b": git_revision()}


def test_a_runs_fields_are_stored_once_and_read_back_on_every_row(tmp_path):
    """Latency rows of one run share their command, revision, machine and weights: the file holds them once per
    run, each row on one line, and every reader gets the rows back as they were given."""
    from dualtvm.results import load_results, merge_rows, read_rows

    path = tmp_path / "latency.json"
    run = lambda c: {"command": c, "git": "abc1234", "machine": "m", "weights": "w " * 50}  # noqa: E731
    first = [{"model": f"x{i}", "median_ms": float(i), **run("bench a")} for i in range(3)]
    merge_rows(path, "latency", first, ("model",), "c", run_fields=("command", "git", "machine", "weights"))
    second = [{"model": "x1", "median_ms": 9.0, **run("bench b")}, {"model": "x7", "median_ms": 7.0, "weights": "v"}]
    merge_rows(path, "latency", second, ("model",), "c", run_fields=("command", "git", "machine", "weights"))
    text = path.read_text()
    assert text.count("bench a") == 1 and text.count("bench b") == 1 and len(text.splitlines()) < 30
    doc = json.loads(text)
    assert len(doc["runs"]) == 3 and all(set(r) == {"run", "model", "median_ms"} for r in doc["rows"])
    expected = [first[0], first[2], second[0], {**second[1], "machine": read_rows(path)[-1]["machine"]}]
    got = read_rows(path)
    assert [{k: r[k] for k in e} for r, e in zip(got, expected)] == expected
    assert got[-1]["git"] and "command" not in got[-1]  # a row without a field of its run does not gain one
    assert load_results(path)["rows"] == got and "runs" not in load_results(path)


def test_build_manifest_load_refuses_and_reuse_rebuilds(tmp_path, monkeypatch):
    """A build folder is loaded only whole, in this format and for an ISA this CPU has; reuse says "rebuild" instead."""
    from dualtvm import target as T
    from dualtvm.manifest import BuildError, load_manifest, reusable_manifest, write_manifest

    broadwell = T.parse_target("llvm -mcpu=broadwell").required_features()
    monkeypatch.setattr(T, "host_cpu_features", lambda: set(broadwell))  # a Broadwell host, whatever runs the test
    (tmp_path / "step.so").write_bytes(b"")
    target = {"kind": "llvm", "mcpu": "broadwell"}
    write_manifest(tmp_path, {"version": 3, "target": target, "weights": "abc"})
    with pytest.raises(BuildError, match=r"params\.npz is missing: not a GNMT step build"):
        load_manifest(tmp_path, "step.so", 3, "GNMT step build")
    (tmp_path / "params.npz").write_bytes(b"")
    m = load_manifest(tmp_path, "step.so", 3, "GNMT step build")
    assert m["weights"] == "abc" and m["git"]  # the revision that built it is recorded
    assert reusable_manifest(tmp_path, 3) == m and reusable_manifest(tmp_path, 4) is None
    assert reusable_manifest(tmp_path / "missing", 3) is None
    with pytest.raises(BuildError, match="manifest version 3, this dualtvm reads 4"):
        load_manifest(tmp_path, "step.so", 4, "GNMT step build")
    write_manifest(tmp_path, {"version": 3, "target": {"kind": "llvm", "mcpu": "skylake-avx512"}})
    with pytest.raises(T.TargetError, match="needs CPU features this host lacks"):
        load_manifest(tmp_path, "step.so", 3, "GNMT step build")


@pytest.mark.parametrize("script,args,needle", [
    ("bench", ["--threads", "0"], "--threads: expected a positive integer, got 0"),
    ("budget", ["build/none", "--budget-ms", "-1"], "--budget-ms: expected a positive number, got -1.0"),
    ("train_lm", ["--epochs", "two"], "--epochs: expected a positive integer, got 'two'"),
    ("eval_lm", ["--checkpoint", "x.pt", "--model-name", "m", "--ratios", "0.5,1.5"], "expected comma-separated ratios in [0, 1], got '0.5,1.5'"),
    ("bench", ["--ratios", "0.5,fifty"], "expected comma-separated ratios in [0, 1], got '0.5,fifty'"),
    ("bench", ["--models", "lstm-1500,lstm-999"], "unknown model 'lstm-999': known models are"),
    ("build", ["--model", "bogus"], "unknown model 'bogus'"),
    ("eval_lm", ["--checkpoint", "none.pt", "--model-name", "m"], "checkpoint none.pt not found"),
    ("eval_nmt", ["--checkpoint", "none.pt", "--model-name", "m", "--little-bits", "8,3"],
     "--little-bits: expected comma-separated W_LL bits from 8, 4, got '8,3'"),
    ("bench", ["--little-bits", "8,four"], "--little-bits: expected comma-separated W_LL bits from 8, 4, got '8,four'"),
    ("bench", ["--caches", "warm,hot"], "--caches: expected comma-separated caches from warm, cold, got 'warm,hot'"),
    ("eval_nmt", ["--checkpoint", "none.pt", "--model-name", "m", "--parts", "qualty"],
     "--parts: expected comma-separated parts from quality, speed, got 'qualty'"),
    ("eval_nmt", ["--checkpoint", "none.pt", "--model-name", "m", "--speed-ratio", "2"], "expected a ratio in [0, 1]"),
    ("eval_lm", ["--checkpoint", "x.pt", "--model-name", "m", "--parts", "ratios,tables"],
     "--parts: expected comma-separated parts from ratios, allocation, search, eps, k, precision, resilience, got 'ratios,tables'"),
    ("eval_lm", ["--checkpoint", "x.pt", "--model-name", "m", "--k-values", "64,0"],
     "--k-values: expected comma-separated positive integers, got '64,0'"),
    ("build", ["--k", "-8"], "argument --k: expected a positive integer, got -8"),
    ("bench", ["--max-rows", "0"], "argument --max-rows: expected a positive integer, got 0"),
    ("tune", ["--k", "0", "--dry-run"], "argument --k: expected a positive integer, got 0"),
    ("eval_lm", ["--checkpoint", "x.pt", "--model-name", "m", "--allocation-costs", "loss,hessian"],
     "--allocation-costs: expected comma-separated allocation costs from loss, activation, measured, got 'loss,hessian'"),
    ("translate", ["--ratio", "1.5"], "argument --ratio: expected a ratio in [0, 1], got '1.5'"),
    ("profile_step", ["build/none", "--ratio", "-0.1"], "argument --ratio: expected a ratio in [0, 1], got '-0.1'"),
    ("tune", ["--in-step", "--recheck"], "--in-step times whole steps on this machine"),
    ("tune", ["--checkpoint", "x.pt"], "--checkpoint and --build are for --in-step"),
    ("tune", ["--confirm-rounds", "3"], "--steps, --rounds and --confirm-rounds time --in-step's whole steps"),
    ("tune", ["--in-step", "--rounds", "0"], "argument --rounds: expected a positive integer, got 0"),
    ("tune", ["--in-step", "--ratios", "0.5,2"], "expected comma-separated ratios in [0, 1], got '0.5,2'"),
])
def test_scripts_refuse_bad_arguments_before_any_work(script, args, needle, capsys):
    with pytest.raises(SystemExit) as e:
        _script(script).main(args)
    assert e.value.code == 2  # argparse's usage error, not a traceback minutes into the run
    assert needle in capsys.readouterr().err


SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"


def _script(name: str):
    """scripts/<name>.py as a module (its ``main(argv)`` not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cli_{name}", SCRIPTS_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("script", sorted(p.stem for p in SCRIPTS_DIR.glob("*.py")))
def test_every_script_option_says_what_it_does(script, monkeypatch, capsys):
    """``--help`` answers, and lists no option without a help text (defaults shown by cli.HelpFormatter)."""
    import argparse

    parsers, parse = [], argparse.ArgumentParser.parse_args

    def spy(self, *args, **kwargs):
        parsers.append(self)
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    with pytest.raises(SystemExit) as e:
        _script(script).main(["--help"])
    assert e.value.code == 0
    silent = [a.option_strings or a.dest for a in parsers[0]._actions if not a.help]
    assert not silent, f"scripts/{script}.py: options without help: {silent}"
    assert "usage:" in capsys.readouterr().out
