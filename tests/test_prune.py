"""Automated gradual pruning (Table 7's baseline)."""
from __future__ import annotations

import pytest
import torch

from dualtvm.models import LMConfig, RNNLanguageModel
from dualtvm.prune import PruneConfig, agp_sparsity, magnitude_masks, prune_finetune, recurrent_weights, sparsity_of


def test_agp_schedule_is_cubic_and_monotone():
    s = [agp_sparsity(t, 100, 0.9) for t in range(0, 130, 10)]
    assert s[0] == 0.0 and s[10] == pytest.approx(0.9) and s[-1] == pytest.approx(0.9)
    assert all(a <= b for a, b in zip(s, s[1:]))
    assert agp_sparsity(50, 100, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    with pytest.raises(ValueError, match="< 1"):
        agp_sparsity(0, 10, 1.0)


def test_magnitude_masks_keep_the_largest():
    w = torch.tensor([[0.1, -3.0, 0.2, 2.0], [-0.05, 1.0, -0.3, 0.0]])
    m = magnitude_masks({"w": w}, 0.5)["w"]
    assert m.sum() == 4 and m[0, 1] and m[0, 3] and m[1, 1] and m[1, 2]


def test_prune_finetune_reaches_sparsity_and_keeps_zeros():
    torch.manual_seed(0)
    model = RNNLanguageModel(LMConfig("GRU", 40, 16, 1, 0.0, True))
    info = prune_finetune(model, torch.randint(0, 40, (3000,)), PruneConfig(final_sparsity=0.8, batches=30, prune_every=5,
                                                                            bptt=10, batch_size=4), progress=False)
    weights = recurrent_weights(model.rnn)
    assert set(weights) == {"weight_ih_l0", "weight_hh_l0"}
    assert info["sparsity"] == pytest.approx(0.8, abs=0.01) and sparsity_of(weights) == pytest.approx(0.8, abs=0.01)
    assert all(b.abs().sum() > 0 for n, b in model.rnn.named_parameters() if n.startswith("bias"))  # biases dense
