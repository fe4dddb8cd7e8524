"""Baseline ("big") models: word-level RNN LM and a GNMT-like seq2seq.

The LM mirrors PyTorch's ``word_language_model`` example (tied embeddings, dropout);
the seq2seq mirrors GNMT's decoder (Wu et al. 2016; paper §4.2): a stack of LSTM
layers with residual connections from layer 3 on, and attention whose context is
concatenated to the input of every decoder layer, so layers 3-4 see (h, 2h) inputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

RNN_TYPES = ("LSTM", "GRU")


class ModelError(ValueError):
    """Unknown model name or a checkpoint/state that does not fit a config."""


@dataclass
class LMConfig:
    rnn_type: str = "LSTM"
    vocab_size: int = 10000
    hidden: int = 750
    layers: int = 1
    dropout: float = 0.5
    tied: bool = True

    def __post_init__(self) -> None:
        if self.rnn_type not in RNN_TYPES:
            raise ModelError(f"rnn_type must be one of {RNN_TYPES}, got {self.rnn_type!r}")


class RNNLanguageModel(nn.Module):
    """Embedding -> nn.LSTM/nn.GRU -> Linear decoder (weights tied to the embedding)."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.rnn = getattr(nn, cfg.rnn_type)(cfg.hidden, cfg.hidden, cfg.layers, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.decoder = nn.Linear(cfg.hidden, cfg.vocab_size)
        if cfg.tied:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, batch: int):
        z = self.encoder.weight.new_zeros(self.cfg.layers, batch, self.cfg.hidden)
        return (z, z.clone()) if self.cfg.rnn_type == "LSTM" else z

    def forward(self, tokens: torch.Tensor, hidden, rnn: nn.Module | None = None):
        """``rnn`` swaps in another recurrent core (e.g. a dual-module one) with the same call signature."""
        emb = self.drop(self.encoder(tokens))
        out, hidden = (rnn or self.rnn)(emb, hidden)
        return self.decoder(self.drop(out)), hidden


def repackage_hidden(h):
    """Detach state between BPTT segments."""
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


# --------------------------------------------------------------------------- seq2seq
@dataclass
class Seq2SeqConfig:
    src_vocab: int = 8000
    tgt_vocab: int = 8000
    hidden: int = 256
    enc_layers: int = 2
    dec_layers: int = 4
    residual_from: int = 3  # 1-based decoder layer from which residual connections start (GNMT)
    dropout: float = 0.2

    def decoder_layer_shapes(self) -> list[tuple[int, int]]:
        """(hidden, input) of each decoder LSTM: input is the previous output plus attention context."""
        return [(self.hidden, 2 * self.hidden)] * self.dec_layers


class GNMTDecoderStack(nn.Module):
    """Decoder LSTM stack; each layer's input is [below output; attention context]."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(nn.LSTM(2 * cfg.hidden, cfg.hidden) for _ in range(cfg.dec_layers))

    def residual(self, i: int) -> bool:
        return i + 1 >= self.cfg.residual_from


class Seq2Seq(nn.Module):
    """LSTM encoder (bidirectional first layer, as GNMT) + attention + residual LSTM decoder."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.src_emb = nn.Embedding(cfg.src_vocab, h, padding_idx=0)
        self.tgt_emb = nn.Embedding(cfg.tgt_vocab, h, padding_idx=0)
        self.enc_bi = nn.LSTM(h, h // 2, bidirectional=True)
        self.enc_rest = nn.LSTM(h, h, cfg.enc_layers - 1) if cfg.enc_layers > 1 else None
        self.att_q = nn.Linear(h, h, bias=False)
        self.decoder = GNMTDecoderStack(cfg)
        self.out = nn.Linear(h, cfg.tgt_vocab)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns memory (S, B, H) and the padding mask (S, B).

        A padded batch runs packed: unpacked, the backward direction of the first layer would start each shorter
        sentence from its padding, and a sentence's memory (so its translation) would depend on the batch it
        came in (Multi30k test, 256-unit model: 57 % of greedy translations changed, BLEU 27.7 → 24.7 in
        batches of 100).  Padding positions of the memory are zeros (attention masks them)."""
        x = self.drop(self.src_emb(src))
        lengths = src.ne(0).sum(0).clamp(min=1)
        padded = not bool((lengths == src.size(0)).all())  # False for batch 1 and training buckets of one length

        def run(lstm: nn.LSTM, t: torch.Tensor) -> torch.Tensor:
            if not padded:
                return lstm(t)[0]
            packed = nn.utils.rnn.pack_padded_sequence(t, lengths.cpu(), enforce_sorted=False)
            return nn.utils.rnn.pad_packed_sequence(lstm(packed)[0], total_length=src.size(0))[0]

        mem = run(self.enc_bi, x)
        if self.enc_rest is not None:
            mem = mem + run(self.enc_rest, self.drop(mem))
        return mem, src.eq(0)

    def attend(self, query: torch.Tensor, mem: torch.Tensor, pad: torch.Tensor, att_q=None) -> torch.Tensor:
        """Luong general attention of query (B, H) over memory (S, B, H); ``att_q`` replaces the query projection."""
        q = (self.att_q if att_q is None else att_q)(query)
        scores = torch.einsum("bh,sbh->sb", q, mem).masked_fill(pad, float("-inf"))
        return torch.einsum("sb,sbh->bh", scores.softmax(0), mem)

    def init_state(self, batch: int, device=None):
        z = torch.zeros(1, batch, self.cfg.hidden, device=device)
        return [(z.clone(), z.clone()) for _ in range(self.cfg.dec_layers)], torch.zeros(batch, self.cfg.hidden, device=device)

    def decode_step(self, token: torch.Tensor, state, mem, pad, layers=None, output=None, att_q=None):
        """One target step; ``layers`` lets a dual-module stack replace the decoder's LSTMs, ``output`` and
        ``att_q`` other implementations of the output and attention-query projections."""
        layer_states, ctx = state
        x = self.drop(self.tgt_emb(token))  # (B, H)
        new_states = []
        for i, lstm in enumerate(layers or self.decoder.layers):
            inp = torch.cat([x, ctx], dim=-1).unsqueeze(0)
            out, st = lstm(inp, layer_states[i])
            out = self.drop(out.squeeze(0))
            x = out + x if self.decoder.residual(i) else out
            new_states.append(st)
            if i == 0:  # attention driven by the bottom layer, as in GNMT
                ctx = self.attend(out, mem, pad, att_q)
        return (self.out if output is None else output)(x), (new_states, ctx)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, layers=None, output=None) -> torch.Tensor:
        """Teacher-forced logits (T, B, V); ``layers`` and ``output`` as in :meth:`decode_step`."""
        mem, pad = self.encode(src)
        state = self.init_state(src.size(1), src.device)
        logits = []
        for t in range(tgt_in.size(0)):
            lg, state = self.decode_step(tgt_in[t], state, mem, pad, layers, output)
            logits.append(lg)
        return torch.stack(logits)


# --------------------------------------------------------------------------- user models
def rnn_from_state_dict(state: dict, rnn_type: str | None = None) -> nn.Module:
    """Rebuild an ``nn.LSTM``/``nn.GRU`` from its state_dict (``weight_ih_l0`` ...).

    The gate count (4 for LSTM, 3 for GRU) is read from the shapes; ``rnn_type`` settles
    nothing else but is checked against them.
    """
    keys = [k for k in state if k.startswith("weight_ih_l")]
    if not keys:
        raise ModelError("state_dict has no 'weight_ih_l*' tensors: not an nn.LSTM/nn.GRU state")
    layers = len(keys)
    w_ih, w_hh = state["weight_ih_l0"], state["weight_hh_l0"]
    hidden = w_hh.shape[1]
    gates = w_ih.shape[0] // hidden
    inferred = {4: "LSTM", 3: "GRU"}.get(gates)
    if inferred is None or w_ih.shape[0] % hidden:
        raise ModelError(f"weight_ih_l0 has {w_ih.shape[0]} rows for hidden {hidden}: neither LSTM (4h) nor GRU (3h)")
    if rnn_type is not None and rnn_type != inferred:
        raise ModelError(f"state_dict shapes are those of an {inferred}, not an {rnn_type}")
    rnn = getattr(nn, inferred)(w_ih.shape[1], hidden, layers, bias="bias_ih_l0" in state)
    try:
        rnn.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"state_dict does not fit nn.{inferred}({w_ih.shape[1]}, {hidden}, {layers}): {e}") from e
    return rnn
