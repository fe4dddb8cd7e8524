"""Where a built or benchmarked RNN's inputs come from: the trained model's own data, else Gaussian noise.

The little module is fitted and calibrated on these inputs, and benchmarks decode them, so with a
trained checkpoint the masks are the ones the model makes in use (the paper's timing is on real
masks).  Two kinds of checkpoint feed real inputs:

* a dualtvm language model: corpus text through the LM's own embedding;
* a dualtvm seq2seq (GNMT-like, :mod:`dualtvm.train_nmt`): what one decoder layer receives while the
  big model decodes Multi30k reference translations (teacher forcing), i.e. [layer below; attention
  context] at every step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

SEGMENT_T, SEGMENT_B = 35, 8  # fitting segments: BPTT length × batch, as the LM training uses


@dataclass
class RealInputs:
    """Inputs of a trained model's RNN: fitting/calibration segments and one decoding stream, each made on
    demand (a build needs the segments, a benchmark only the stream)."""

    train: Callable[[], list[torch.Tensor]]  # (T, B, input) segments the little module is fitted on
    valid: Callable[[], list[torch.Tensor]]  # (T, B, input) segments its thresholds are calibrated on
    stream: Callable[[int], list[np.ndarray]]  # the first n input vectors of held-out data, in order
    description: str  # for reports: "PTB text", "Multi30k decoder layer 0 inputs" ...


def synthetic_segments(input_size: int, n: int, seed: int, scale: float = 0.5) -> list[torch.Tensor]:
    """Gaussian input segments (T=35, B=8) for models without data (random-weight builds)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SEGMENT_T, SEGMENT_B, input_size, generator=g) * scale for _ in range(n)]


def text_segments(embed, stream: torch.Tensor, n: int, seed: int) -> list[torch.Tensor]:
    """``n`` embedded segments (T=35, B=8) from random places of a token stream (repeated if shorter)."""
    g = torch.Generator().manual_seed(seed)
    size = SEGMENT_T * SEGMENT_B
    if stream.numel() <= size:
        stream = stream.repeat(size // stream.numel() + 2)
    starts = torch.randint(0, stream.numel() - size, (n,), generator=g)
    return [embed(stream[s: s + size].view(SEGMENT_B, SEGMENT_T).t()) for s in starts.tolist()]


def lm_inputs(payload: dict, seed: int, corpus: str = "ptb", data_dir: str | None = None) -> RealInputs:
    """Corpus text through a dualtvm LM checkpoint's embedding (what its RNN sees)."""
    from .checkpoint import model_from_checkpoint
    from .data import load_lm_corpus

    lm = model_from_checkpoint(payload).eval()
    text = load_lm_corpus(corpus, data_dir)
    if payload.get("vocab") != text.dictionary.idx2word:
        raise ValueError(f"the checkpoint was trained on another vocabulary than {corpus!r}")

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return lm.encoder(tokens)

    return RealInputs(lambda: text_segments(embed, text.train, 16, seed),
                      lambda: text_segments(embed, text.valid, 4, seed + 1),
                      lambda n: [v.numpy().astype(np.float32) for v in embed(text.valid[:n])], f"{corpus} text")


def decoder_layer_inputs(model, pairs: list[tuple[list[int], list[int]]], layer: int, batch_size: int,
                         max_steps: int | None = None) -> list[torch.Tensor]:
    """(T, B, input) of decoder layer ``layer`` per batch while ``model`` (a :class:`~dualtvm.models.Seq2Seq`)
    decodes the reference translations of ``pairs`` in eval mode (teacher forcing), in order;
    stops once ``max_steps`` steps (T summed over batches) are recorded."""
    from .data import bucketed_batches, pad_batch

    seen: list[torch.Tensor] = []
    hook = model.decoder.layers[layer].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    out, steps = [], 0
    try:
        model.eval()
        with torch.no_grad():
            for idx in bucketed_batches(pairs, batch_size, shuffle=False):
                seen.clear()
                model(pad_batch([pairs[i][0] for i in idx]), pad_batch([pairs[i][1] for i in idx])[:-1])
                out.append(torch.cat(seen))  # each step's input is (1, B, input)
                steps += out[-1].shape[0]
                if max_steps is not None and steps >= max_steps:
                    break
    finally:
        hook.remove()
    return out


def seq2seq_inputs(payload: dict, seed: int, layer: int = 0, data_dir: str | None = None) -> RealInputs:
    """Decoder layer ``layer``'s inputs while a dualtvm seq2seq checkpoint decodes Multi30k references."""
    from .checkpoint import model_from_checkpoint
    from .data import encode_pairs, load_multi30k

    model = model_from_checkpoint(payload).eval()
    if not 0 <= layer < len(model.decoder.layers):
        raise ValueError(f"decoder layer {layer} does not exist: the model has {len(model.decoder.layers)}")
    corpus = load_multi30k(data_dir)
    if payload.get("src_vocab") != corpus.src_vocab.itos or payload.get("tgt_vocab") != corpus.tgt_vocab.itos:
        raise ValueError("the checkpoint was trained on other Multi30k vocabularies (another --min-freq or data)")
    g = torch.Generator().manual_seed(seed)
    train = encode_pairs(corpus, "train", 50)
    picked = [train[i] for i in torch.randperm(len(train), generator=g)[: 16 * SEGMENT_B].tolist()]
    valid = encode_pairs(corpus, "valid", 50)

    def stream(n: int) -> list[np.ndarray]:  # batch 1, sentence after sentence (a step loop fed these carries
        # its state across sentence ends, where the decoder restarts from zeros: one step per sentence differs)
        segs = decoder_layer_inputs(model, valid, layer, 1, n)
        return [v.numpy().astype(np.float32) for v in torch.cat(segs)[:n, 0]]

    return RealInputs(lambda: decoder_layer_inputs(model, picked, layer, SEGMENT_B),
                      lambda: decoder_layer_inputs(model, valid[: 4 * SEGMENT_B], layer, SEGMENT_B), stream,
                      f"Multi30k, decoder layer {layer} inputs under teacher forcing")


def real_inputs(payload: object | None, seed: int, corpus: str = "ptb", data_dir: str | None = None,
                decoder_layer: int = 0) -> RealInputs | None:
    """Real inputs for ``payload`` (``registry.read_checkpoint``'s result) when it is a dualtvm LM or
    seq2seq checkpoint; None for anything else (a bare ``nn.Module`` or state_dict carries no data)."""
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind == "lm":
        return lm_inputs(payload, seed, corpus, data_dir)
    if kind == "seq2seq":
        return seq2seq_inputs(payload, seed, decoder_layer, data_dir)
    return None


def decode_stream(payload: object | None, input_size: int, n: int, data_dir: str | None = None,
                  decoder_layer: int = 0) -> tuple[list[np.ndarray], str]:
    """``n`` step inputs to time a build with: held-out data of ``payload``'s model where it is a dualtvm
    checkpoint (its real masks), else Gaussian vectors; and which ("Gaussian inputs" or the data's description)."""
    real = real_inputs(payload, 0, data_dir=data_dir, decoder_layer=decoder_layer) if payload is not None else None
    if real is not None:
        return real.stream(n), real.description
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(input_size) * 0.5).astype(np.float32) for _ in range(n)], "Gaussian inputs"


def build_stream(model: dict, input_size: int, n: int, data_dir: str | None = None) -> tuple[list[np.ndarray], str]:
    """``decode_stream`` for a build whose manifest describes its big model as ``model``: that checkpoint's
    held-out data where the build was made from one (the masks it makes in use), else Gaussian vectors."""
    from .registry import read_checkpoint

    payload = read_checkpoint(model["checkpoint"]) if model.get("checkpoint") else None
    return decode_stream(payload, input_size, n, data_dir, model.get("decoder_layer") or 0)


def step_inputs(source: str, model: dict, input_size: int, n: int,
                data_dir: str | None = None) -> tuple[list[np.ndarray], str]:
    """The ``n`` step inputs a script times a build on, and their description: ``source`` 'data' is
    ``build_stream`` (``model``: the build manifest's), 'gaussian' Gaussian vectors, else a .npy file of
    the user's own (steps × ``input_size``; its first ``n`` rows)."""
    if source == "data":
        return build_stream(model, input_size, n, data_dir)
    if source == "gaussian":
        return decode_stream(None, input_size, n)
    xs = np.load(source)
    if xs.ndim != 2 or xs.shape[1] != input_size:
        raise ValueError(f"{source} holds an array of shape {xs.shape}; the decoder takes (steps, {input_size})")
    return list(xs[:n].astype(np.float32)), source
