"""The README's Python examples run as written: each block of "Using your own trained RNN" is executed on a tiny
model standing in for the names it leaves to the user (``my_model``, ``train_segments``, …), then its results are
checked against the PyTorch references, so an API change that breaks the README breaks a test."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section titled ``section`` (up to the next ``## `` heading)."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


class TinyLM(nn.Module):
    """What the README calls ``my_model``: an LM whose recurrent core can be swapped (``rnn=core``)."""

    def __init__(self, vocab: int = 20, hidden: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.rnn = nn.LSTM(16, hidden, num_layers=2)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, rnn: nn.Module | None = None) -> torch.Tensor:
        y, _ = (self.rnn if rnn is None else rnn)(self.embed(tokens))
        return self.out(y)


def test_readme_own_rnn_examples_run_as_written(tmp_path, monkeypatch):
    blocks = readme_python_blocks("Using your own trained RNN")
    assert len(blocks) == 2, "the section's two examples: a user's RNN, its output projection"
    monkeypatch.chdir(tmp_path)  # the examples build into build/…
    torch.manual_seed(0)
    my_model = TinyLM().eval()
    tokens = [torch.randint(0, 20, (10, 3)) for _ in range(8)]
    embedded = [my_model.embed(t).detach() for t in tokens]
    ns = {
        "my_model": my_model,
        "train_segments": embedded[:5],  # what the RNN receives: (T, B, d)
        "valid_segments": embedded[5:],
        "valid_batches": [(t[:-1], t[1:]) for t in tokens[5:]],  # (input tokens, next tokens) for the loss
        "loss_fn": lambda logits, y: nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)),
        "x": embedded[7],
        "x_t": embedded[7][0, 0].numpy(),
    }

    def my_validation_loss(dual):
        with torch.no_grad():
            return float(np.mean([ns["loss_fn"](my_model(t[:-1], rnn=dual), t[1:]) for t in tokens[5:]]))

    ns["my_validation_loss"] = my_validation_loss
    exec(compile(blocks[0], "README.md (own RNN)", "exec"), ns)

    dual, y = ns["dual"], ns["y"]
    assert ns["out"].shape == (10, 3, 24)
    dual.set_insensitive_ratio(0.5)  # the ratio the example's compiled step runs at
    with torch.no_grad():
        ref, _ = dual(ns["x"][:1, :1])
    np.testing.assert_allclose(y, ref[0, 0].numpy(), atol=2e-3)
    assert len(ns["masks"]) == 2 and 0.2 < float(np.mean([m.mean() for m in ns["masks"]])) < 0.8

    ns.update(model=my_model,
              train_inputs=[torch.randn(64, 24) for _ in range(4)], valid_inputs=[torch.randn(64, 24)])
    exec(compile(blocks[1], "README.md (output projection)", "exec"), ns)
    h = torch.randn(5, 24)
    with torch.no_grad():
        expected = ns["out"](h).argmax(-1)  # the PyTorch dual-module output at the same ratio
    assert torch.equal(ns["compiled"](h).argmax(-1), expected)
