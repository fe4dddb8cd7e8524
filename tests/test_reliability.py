"""Reliability: corrupted tuning databases, bad model names and checkpoints, property tests of kernels."""
import json

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
       lanes=st.sampled_from([8, 16, 32]), groups=st.sampled_from([1, 2, 3]), rows=st.sampled_from([1, 4, 8]),
       prefetch=st.sampled_from([0, 1, 2]), locality=st.sampled_from([1, 2, 3]), seed=st.integers(0, 1000))
def test_gather_gemv_property(n, k_blocks, density, lanes, groups, rows, prefetch, locality, seed):
    """The prefetching loop nest matches numpy for any row count (odd ones too), density and knobs."""
    from schedules import GatherKnobs, gather_gemv

    k = K.PAD * k_blocks
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    idx = np.flatnonzero(rng.random(n) < density).astype(np.int32)
    row_list = np.zeros(n, np.int32)  # as the mask kernel leaves it: zeros past count
    row_list[: len(idx)] = idx
    f = gather_gemv(n, k, GatherKnobs(groups, rows, lanes, prefetch, locality), "main")
    lib = tvm.tirx.build(tvm.IRModule({"main": f}), target=TARGET)
    dev = tvm.cpu()
    yc = tvm.runtime.tensor(np.full(n, np.nan, np.float32), dev)
    lib["main"](tvm.runtime.tensor(W, dev), tvm.runtime.tensor(x, dev), tvm.runtime.tensor(row_list, dev),
                tvm.runtime.tensor(np.array([len(idx)], np.int32), dev), yc)
    np.testing.assert_allclose(yc.numpy()[: len(idx)], W[idx] @ x, rtol=1e-4, atol=1e-4)


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
