"""Decoding speed of translation backends, measured side by side: greedy batch-1 decoding with the backends
interleaved sentence by sentence (:func:`decode_speed`) and the spread of their ratio over the run
(:func:`block_speedups`)."""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from .data import BOS, EOS
from .nmt import Backend, Translator, as_backend, greedy_search


class _Timed(nn.Module):
    """Accumulates wall time spent inside decoder layer ``index`` (the part the backends differ in) in ``clock``."""

    def __init__(self, inner: nn.Module, clock: list[float], index: int) -> None:
        super().__init__()
        self.inner, self.clock, self.index = inner, clock, index

    def forward(self, x, state=None):
        import time

        t0 = time.perf_counter()
        out = self.inner(x, state)
        self.clock[self.index] += time.perf_counter() - t0
        return out


def decode_speed(tr: Translator, sentences: list[str], backends: dict[str, Backend | list | None],
                 progress: bool = True, seed: int = 0, pause_s: float = 0.02) -> dict[str, dict]:
    """Greedy batch-1 decoding of every sentence by every backend, interleaved sentence by sentence.

    A backend is a :class:`Backend` or just decoder layers; ``None`` is the PyTorch model.
    Interleaving puts the backends side by side in time (this machine is shared and noisy); the order
    is a fresh (seeded) permutation per sentence, so every backend follows every other one about equally
    often — what runs just before matters: PyTorch's encoder took 15 ms a sentence after the PyTorch
    decoder but 34–38 ms after a compiled one (1024-unit GNMT), and a fixed rotation always gave each
    backend the same predecessor; a ``pause_s`` sleep before each backend lets the previous one's
    spinning worker threads fall asleep.  The encoder (PyTorch, the same for every backend) is timed apart
    from the decode loop, and another untimed ``pause_s`` separates them: on all cores the encoder leaves
    torch's OpenMP workers spinning into the first tokens, and there they held each launch of the compiled
    layers' thread pool up, the dual-module step's several kernel launches more than the dense one's
    (GNMT-1024-r2, 2 cores, layer 0 per token: dense 1.24 ms instead of 1.07, dual-module 1.46 instead of 0.88).
    Returns per backend: tokens; total, encoder, decode-loop and decoder-layer seconds; end-to-end tokens/s,
    decoder tokens/s (decode loop only), ms per token in the decoder layers, in all and per layer (None for a
    backend with a whole compiled ``step``: its layers are not called apart; the layers of a stack need not gain
    alike); the hypotheses; per sentence (tokens, encoder s, decode-loop s), for :func:`block_speedups`.
    """
    import random
    import time

    from tqdm.auto import tqdm

    from .results import warn_if_busy

    if not sentences:
        raise ValueError("decode_speed needs at least one sentence")
    bos, eos = tr.tgt_vocab.stoi[BOS], tr.tgt_vocab.stoi[EOS]
    names = list(backends)
    acc = {n: {"per_sentence": [], "layer_clock": None, "hyps": []} for n in names}
    timed = {}
    for n in names:
        be = as_backend(backends[n])
        if be.step is not None:  # one compiled step: no separate layer time
            timed[n] = be
            continue
        layers = be.layers or tr.model.decoder.layers
        clock = acc[n]["layer_clock"] = [0.0] * len(layers)
        layers = [_Timed(l, clock, i) for i, l in enumerate(layers)]
        timed[n] = replace(be, layers=layers)  # every other part of the backend as given
    tr.model.eval()
    warn_if_busy("decoding speed")
    order = random.Random(seed)
    for s in tqdm(sentences, desc="decoding", disable=not progress):
        src = torch.tensor([tr.encode_source(s)]).t()
        for n in order.sample(names, len(names)):
            time.sleep(pause_s)  # untimed: the previous backend's spinning threads (TVM's pool, OpenMP) fall asleep
            t0 = time.perf_counter()
            with torch.no_grad():
                mem, pad = tr.model.encode(src)
            encode_s = time.perf_counter() - t0
            time.sleep(pause_s)  # untimed: the encoder's OpenMP workers stop spinning before the decode loop
            t1 = time.perf_counter()
            (ids,) = greedy_search(tr.model, mem, pad, bos, eos, 60, timed[n])
            acc[n]["per_sentence"].append((len(ids) + 1, encode_s, time.perf_counter() - t1))  # + <eos>
            acc[n]["hyps"].append(tr.decode_target(ids))
    out = {}
    for n in names:
        a, clock = acc[n], acc[n]["layer_clock"]
        tokens, encode_s, decode_s = (sum(col) for col in zip(*a["per_sentence"]))
        wall = encode_s + decode_s
        out[n] = {"tokens": tokens, "wall_s": wall, "encode_s": encode_s, "decode_s": decode_s,
                  "layer_s": sum(clock) if clock else None, "tokens_per_s": tokens / wall,
                  "decoder_tokens_per_s": tokens / decode_s,
                  "layer_ms_per_token": 1e3 * sum(clock) / tokens if clock else None,
                  "layer_ms_per_token_each": [1e3 * c / tokens for c in clock] if clock else None,
                  "hyps": a["hyps"], "per_sentence": a["per_sentence"]}
    return out


def block_speedups(res: dict[str, dict], engine: str, base: str, blocks: int = 4,
                   decode_loop: bool = False) -> list[float]:
    """``engine``'s tokens/s over ``base``'s in each of ``blocks`` consecutive parts of a :func:`decode_speed` run
    (end to end, or the decode loop alone): side-by-side ratios at different times of one run, whose spread says
    how much the machine's noise moved the whole run's ratio."""
    n = len(res[engine]["per_sentence"])
    bounds = [round(i * n / blocks) for i in range(blocks + 1)]

    def rate(name: str, lo: int, hi: int) -> float:
        part = res[name]["per_sentence"][lo:hi]
        return sum(t for t, _, _ in part) / sum(d + (0 if decode_loop else e) for _, e, d in part)

    return [rate(engine, lo, hi) / rate(base, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
