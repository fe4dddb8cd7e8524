"""Named model configurations (the paper's layers) and where their big weights come from."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .gates import layout
from .models import ModelError
from .projection import little_dim

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    rnn_type: str
    hidden: int
    input_size: int
    layers: int = 1
    residual_from: int | None = None  # 1-based layer from which residual connections start

    def residual(self) -> list[bool]:
        return [self.residual_from is not None and i + 1 >= self.residual_from for i in range(self.layers)]

    def input_sizes(self) -> list[int]:
        """Each layer's input width: the first takes the model's input, the others the hidden state below."""
        return [self.input_size if i == 0 else self.hidden for i in range(self.layers)]

    def little_dim(self, eps: float, k: int | None = None) -> int:
        """The little module's k for this model's stacked gate matrix (n = gates × hidden rows):
        ``k`` where set, else eq. 3's (:func:`~dualtvm.projection.little_dim`)."""
        return little_dim(layout(self.rnn_type).n_gates * self.hidden, eps, k)


MODELS: dict[str, ModelConfig] = {
    "lstm-1500": ModelConfig("LSTM", 1500, 1500),
    "lstm-750": ModelConfig("LSTM", 750, 750),
    "gru-1500": ModelConfig("GRU", 1500, 1500),
    "gru-750": ModelConfig("GRU", 750, 750),
    # GNMT decoder layer shapes of Table 4: (hidden, input)
    "gnmt-1024-1024": ModelConfig("LSTM", 1024, 1024),
    "gnmt-1024-2048": ModelConfig("LSTM", 1024, 2048),
    "tiny-lstm": ModelConfig("LSTM", 48, 48, 2),
    "tiny-gru": ModelConfig("GRU", 48, 48, 2),
    "tiny-gnmt": ModelConfig("LSTM", 48, 48, 4, residual_from=3),
    "tiny-gnmt-layer": ModelConfig("LSTM", 32, 64),  # a decoder layer of the tests' hidden-32 seq2seq
}
DEFAULT_MODEL = "lstm-1500"


def model_config(name: str) -> ModelConfig:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}: known models are {', '.join(sorted(MODELS))}") from None


def read_checkpoint(path: str | Path) -> object:
    """``torch.load`` a big model's file once: a dualtvm LM or seq2seq checkpoint (format checked), an
    ``nn.Module`` or a state_dict.  :func:`big_rnn` and ``inputs.real_inputs`` both take what it returns."""
    from .checkpoint import checked_payload

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(payload, dict) and payload.get("kind") in ("lm", "seq2seq"):
        return checked_payload(payload, path)
    return payload


def big_rnn(name: str, checkpoint: str | Path | None = None, seed: int = 0,
            payload: object | None = None, decoder_layer: int = 0) -> tuple[nn.Module, str]:
    """The big RNN of a named config: from a checkpoint, else seeded random.

    A checkpoint is a dualtvm LM (its RNN), a dualtvm seq2seq (its decoder layer ``decoder_layer``, e.g.
    ``gnmt-1024-2048`` from a 1024-unit GNMT), an ``nn.LSTM``/``nn.GRU`` or their state_dict.
    ``payload``: ``read_checkpoint(checkpoint)`` when the caller has already read it.  Returns the
    module and a word on where its weights came from.
    """
    cfg = model_config(name)
    if checkpoint is not None:
        from .models import rnn_from_state_dict

        path = Path(checkpoint)
        payload = read_checkpoint(path) if payload is None else payload
        source = f"checkpoint {path}"
        if isinstance(payload, dict) and payload.get("kind") == "lm":
            state = {k[len("rnn."):]: v for k, v in payload["state_dict"].items() if k.startswith("rnn.")}
        elif isinstance(payload, dict) and payload.get("kind") == "seq2seq":
            prefix = f"decoder.layers.{decoder_layer}."
            state = {k[len(prefix):]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
            if not state:
                raise ModelError(f"checkpoint {path} has no decoder layer {decoder_layer}")
            source += f" (seq2seq decoder layer {decoder_layer})"
        elif isinstance(payload, nn.Module):
            state = payload.state_dict()
        else:
            state = payload
        rnn = rnn_from_state_dict(state)
        got = (type(rnn).__name__, rnn.hidden_size, rnn.input_size, rnn.num_layers)
        want = (cfg.rnn_type, cfg.hidden, cfg.input_size, cfg.layers)
        if got != want:
            raise ModelError(f"checkpoint {path} holds an {got[0]}(input {got[2]}, hidden {got[1]}, layers {got[3]}) "
                             f"but model {name!r} is {want[0]}(input {want[2]}, hidden {want[1]}, layers {want[3]})")
        return rnn.eval(), source
    torch.manual_seed(seed)
    rnn = getattr(nn, cfg.rnn_type)(cfg.input_size, cfg.hidden, cfg.layers)
    return rnn.eval(), f"random weights (seed {seed}): no trained checkpoint given"
