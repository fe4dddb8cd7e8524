"""Translation with a dual-module GNMT decoder in PyTorch: little modules per decoder layer (and for the output
projection), greedy and beam search, BLEU and the references' perplexity.

The decoder's LSTMs are called one step at a time by :meth:`Seq2Seq.decode_step`, whose ``layers`` argument swaps
them for anything with the ``nn.LSTM`` call signature; a :class:`Backend` says what stands in.  The PyTorch
dual-module layers (the reference) are built here; the compiled stand-ins and the backends by name are in
:mod:`dualtvm.nmt_backends`, decoding speed in :mod:`dualtvm.nmt_speed`.
"""
from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
import torch.nn as nn

from .construct import build_dual_layers
from .data import (BOS, EOS, PAD, ParallelCorpus, Vocab, bucketed_batches, detokenize, encode_pairs, pad_batch,
                   tokenize_sentence)
from .dual import DualModuleLayer
from .little import BigLayer, LittleConfig, big_layers
from .models import Seq2Seq
from .output import DualOutput, OutputConfig, calibrate_output, fit_output_little, linear_hash
from .sensitivity import frozen

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model + vocabularies
@dataclass
class Translator:
    """A trained seq2seq with the vocabularies it was trained with (from its checkpoint)."""

    model: Seq2Seq
    src_vocab: Vocab
    tgt_vocab: Vocab
    epochs: int | None = None  # training epochs the checkpoint had completed

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "Translator":
        from .checkpoint import load_checkpoint, model_from_checkpoint
        from .models import ModelError

        payload = load_checkpoint(Path(path))
        if payload.get("kind") != "seq2seq":
            raise ModelError(f"{path} is a {payload.get('kind')!r} checkpoint, not a seq2seq one (train_nmt.py)")
        model = model_from_checkpoint(payload).eval()
        return cls(model, Vocab(payload["src_vocab"]), Vocab(payload["tgt_vocab"]),
                   payload.get("train_state", {}).get("epoch"))

    def encode_source(self, sentence: str) -> list[int]:
        return self.src_vocab.encode(tokenize_sentence(sentence)) + [self.src_vocab.stoi[EOS]]

    def decode_target(self, ids: list[int]) -> str:
        return detokenize(self.tgt_vocab.decode(ids))


# --------------------------------------------------------------------------- little modules
def decoder_big_layers(model: Seq2Seq) -> list[BigLayer]:
    return [big_layers(lstm)[0] for lstm in model.decoder.layers]


def teacher_forced(model: Seq2Seq, pairs: list[tuple[list[int], list[int]]], batch_size: int,
                   max_batches: int | None) -> None:
    """Run the decoder over reference translations (eval mode): the big model's own trajectory."""
    model.eval()
    with torch.no_grad():
        for idx in bucketed_batches(pairs, batch_size, shuffle=False)[:max_batches]:
            model(pad_batch([pairs[i][0] for i in idx]), pad_batch([pairs[i][1] for i in idx])[:-1])


def build_dual_decoder(model: Seq2Seq, corpus: ParallelCorpus, cfg: LittleConfig | None = None,
                       max_rows: int = 200_000, batch_size: int = 64, progress: bool = True) -> list[DualModuleLayer]:
    """One little module per decoder layer, fitted on training pairs and calibrated on validation."""
    train, valid = encode_pairs(corpus, "train", 50), encode_pairs(corpus, "valid", 50)
    layers = decoder_big_layers(model)
    duals, _ = build_dual_layers(
        layers, list(model.decoder.layers),
        lambda: teacher_forced(model, train, batch_size, _batches_for(max_rows, batch_size)),
        lambda: teacher_forced(model, valid, batch_size, None), cfg, max_rows, progress)
    return duals


def _batches_for(max_rows: int, batch_size: int) -> int:
    """Teacher-forced batches that give about ``max_rows`` decoder steps (Multi30k targets: ~14 tokens)."""
    return max_rows // (batch_size * 14) + 1


def output_inputs(model: Seq2Seq, pairs: list[tuple[list[int], list[int]]], batch_size: int,
                  max_batches: int | None) -> list[torch.Tensor]:
    """What the output projection receives over teacher-forced reference translations: its little module's data."""
    xs: list[torch.Tensor] = []
    handle = model.out.register_forward_hook(lambda m, args, out: xs.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    try:
        teacher_forced(model, pairs, batch_size, max_batches)
    finally:
        handle.remove()
    return xs


def dual_output(tr: Translator, corpus: ParallelCorpus | None, checkpoint: Path, cfg: OutputConfig | None = None,
                max_rows: int = 200_000, batch_size: int = 64) -> DualOutput:
    """The dual-module output projection (:mod:`dualtvm.output`): loaded from ``<stem>.little-output[<variant>].npz``
    beside ``checkpoint`` (``OutputConfig.variant``) if it fits the model's output projection, else fitted on
    training pairs, calibrated on validation and saved there."""
    from .artefact import ArtefactError, load_output_little, save_output_little

    model = tr.model
    cfg = cfg or OutputConfig()
    artefact = _beside(checkpoint, "little-output" + cfg.variant)
    try:
        return DualOutput(model.out, load_output_little(artefact, linear_hash(model.out)))
    except ArtefactError as e:
        if artefact.exists():
            log.warning("refitting the output little module: %s", e)
    if corpus is None:
        raise ValueError("fitting the output little module needs the Multi30k corpus (train and val)")
    train, valid = encode_pairs(corpus, "train", 50), encode_pairs(corpus, "valid", 50)
    little = fit_output_little(model.out, output_inputs(model, train, batch_size, _batches_for(max_rows, batch_size)), cfg)
    calibrate_output(little, output_inputs(model, valid, batch_size, None))
    save_output_little(artefact, little)
    return DualOutput(model.out, little)


# --------------------------------------------------------------------------- cached little modules
def dual_decoder(tr: Translator, corpus: ParallelCorpus | None, artefact: Path,
                 cfg: LittleConfig | None = None) -> list[DualModuleLayer]:
    """The PyTorch dual-module decoder layers: loaded from ``artefact`` if it fits these weights, else fitted."""
    from .artefact import ArtefactError, load_little, save_little

    big = decoder_big_layers(tr.model)
    if artefact.exists():
        try:
            littles, _ = load_little(artefact, big)
            held = {(lm.weight.bits, lm.mask_rule, lm.proj_x.kind) for lm in littles}
            if cfg is None or held == {(cfg.bits, cfg.mask_rule, cfg.projection)}:
                return [DualModuleLayer(b, lm) for b, lm in zip(big, littles)]
            log.warning("refitting the little modules: %s holds (INT bits, mask rule, projection) %s, (%d, %s, %s) "
                        "asked", artefact, sorted(held), cfg.bits, cfg.mask_rule, cfg.projection)
        except ArtefactError as e:
            log.warning("refitting the little modules: %s", e)
    if corpus is None:
        raise ValueError("fitting little modules needs the Multi30k corpus (train and val)")
    duals = build_dual_decoder(tr.model, corpus, cfg)
    save_little(artefact, [d.little for d in duals], {"name": "seq2seq-decoder"})
    return duals


def checkpoint_stem(checkpoint: Path) -> str:
    """``multi30k-gnmt-1024`` of ``multi30k-gnmt-1024.best.pt``: what the artefacts and build folders are named by."""
    return checkpoint.name.split(".")[0]


def _beside(checkpoint: Path, kind: str) -> Path:
    """The artefact ``<stem>.<kind>.npz`` cached beside ``checkpoint``."""
    return checkpoint.with_name(f"{checkpoint_stem(checkpoint)}.{kind}.npz")


def little_artefact(checkpoint: Path, cfg: LittleConfig) -> Path:
    """Where the decoder layers' little modules of ``checkpoint`` are cached
    (``<stem>.little[-w4][-contribution][-learned].npz``)."""
    return _beside(checkpoint, "little" + cfg.variant)


# --------------------------------------------------------------------------- backends
@dataclass
class Backend:
    """What stands in for parts of the PyTorch decoder in a decode loop.

    ``layers`` replace the decoder LSTMs (None: the big ones), ``output`` the output projection
    (None: ``model.out``), ``attention_query`` attention's query projection (None: ``model.att_q``; the
    compiled backends compile it: 4 MB of weights that torch on one thread read in 0.29 ms, caches cold).
    ``torch_threads``: torch's intra-op threads inside the decode loop (None:
    unchanged).  The compiled backends take 1: after each torch op (attention, argmax, concatenation)
    torch's OpenMP workers spin on the cores the next compiled kernel's threads need.  Timed inside the
    1024-unit GNMT's loop, a dual-module layer's projection and little GEMV took 0.61 ms after torch ops
    at 2 threads and 0.19 ms at 1, and decode-loop tokens/s rose 1.21× → 1.37× over the dense decoder.
    """

    layers: list[nn.Module] | None = None
    output: nn.Module | None = None
    torch_threads: int | None = None
    attention_query: nn.Module | None = None  # attention's query projection (None: ``model.att_q``)
    step: nn.Module | None = None  # a whole compiled decode step (gnmt_step.CompiledStep): replaces the three above

    def decode_step(self, model: Seq2Seq, token: torch.Tensor, state, mem: torch.Tensor, pad: torch.Tensor):
        """One target step of ``model`` with this backend's stand-ins: (logits, new state)."""
        if self.step is not None:
            return self.step(token, state, mem, pad)
        return model.decode_step(token, state, mem, pad, self.layers, self.output, self.attention_query)

    @property
    def mask_layers(self) -> list[nn.Module]:
        """The modules holding the decoder layers' mask statistics (empty for dense layers)."""
        if self.step is not None:
            return self.step.layers
        return [l for l in self.layers or [] if hasattr(l, "stats")]

    @property
    def mask_output(self) -> nn.Module | None:
        """The module holding the dual output projection's mask statistics (None without one)."""
        out = self.step.output if self.step is not None else self.output
        return out if hasattr(out, "stats") else None


@contextmanager
def torch_threads(n: int | None):
    """Run the block with torch at ``n`` intra-op threads, then restore them (None: leave them)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def as_backend(backend: Backend | list[nn.Module] | None) -> Backend:
    """A :class:`Backend`; a plain list is taken as its decoder layers."""
    return backend if isinstance(backend, Backend) else Backend(layers=backend)


# --------------------------------------------------------------------------- search
def greedy_decode(model: Seq2Seq, src: torch.Tensor, bos: int, eos: int, max_len: int,
                  backend: Backend | list | None = None) -> list[list[int]]:
    """Greedy search for a (S, B) batch; ``backend`` swaps in other decoder layers / output projection."""
    model.eval()
    with torch.no_grad():
        mem, pad = model.encode(src)
    return greedy_search(model, mem, pad, bos, eos, max_len, backend)


def greedy_search(model: Seq2Seq, mem: torch.Tensor, pad: torch.Tensor, bos: int, eos: int, max_len: int,
                  backend: Backend | list | None = None) -> list[list[int]]:
    """The decode loop of :func:`greedy_decode` over an encoded batch (``model.encode``'s memory and mask)."""
    be = as_backend(backend)
    batch = mem.size(1)
    state = model.init_state(batch)
    tok = torch.full((batch,), bos, dtype=torch.long)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool)
    with torch.no_grad(), torch_threads(be.torch_threads):
        for _ in range(max_len):
            logits, state = be.decode_step(model, tok, state, mem, pad)
            tok = logits.argmax(-1)
            for b in range(batch):
                if not done[b]:
                    if tok[b].item() == eos:
                        done[b] = True
                    else:
                        out[b].append(tok[b].item())
            if done.all():
                break
    return out


def beam_search(model: Seq2Seq, src_ids: list[int], bos: int, eos: int, beam: int = 4, max_len: int = 60,
                backend: Backend | list | None = None, alpha: float = 0.6) -> list[int]:
    """Beam search for one sentence with GNMT's length penalty ((5 + |Y|) / 6)^α."""
    be = as_backend(backend)
    model.eval()
    with torch.no_grad():
        src = torch.tensor(src_ids).unsqueeze(1)
        mem, pad = model.encode(src)
    with torch.no_grad(), torch_threads(be.torch_threads):
        layer_states, ctx = model.init_state(1)
        hyps = [([], 0.0, (layer_states, ctx))]
        finished: list[tuple[list[int], float]] = []
        for _ in range(max_len):
            n = len(hyps)
            tok = torch.tensor([h[0][-1] if h[0] else bos for h in hyps])
            states = ([tuple(torch.cat([h[2][0][l][j] for h in hyps], 1) for j in range(2))
                       for l in range(len(layer_states))], torch.cat([h[2][1] for h in hyps]))
            logits, (new_layers, new_ctx) = be.decode_step(model, tok, states, mem.expand(-1, n, -1), pad.expand(-1, n))
            logp = logits.log_softmax(-1)
            scores = torch.tensor([h[1] for h in hyps]).unsqueeze(1) + logp
            top = scores.view(-1).topk(min(2 * beam, scores.numel()))
            nxt = []
            for s, flat in zip(top.values.tolist(), top.indices.tolist()):
                b, w = divmod(flat, logp.size(1))
                seq = hyps[b][0] + [w]
                if w == eos:
                    finished.append((seq[:-1], s / (((5 + len(seq)) / 6) ** alpha)))
                else:
                    st = ([tuple(t[:, b : b + 1] for t in ls) for ls in new_layers], new_ctx[b : b + 1])
                    nxt.append((seq, s, st))
                if len(nxt) == beam:
                    break
            hyps = nxt
            best_open = max((h[1] / (((5 + len(h[0])) / 6) ** alpha) for h in hyps), default=-math.inf)
            if len(finished) >= beam and max(f[1] for f in finished) >= best_open:
                break
        if not finished:
            finished = [(h[0], h[1]) for h in hyps]
        return max(finished, key=lambda f: f[1])[0]


def translate(tr: Translator, sentences: list[str], beam: int = 1, backend: Backend | list | None = None,
              batch_size: int = 100, max_len: int = 60, progress: bool = False) -> list[str]:
    """Detokenised translations; beam 1 is batched greedy search.  ``backend``: a :class:`Backend` or
    just decoder layers (None: the PyTorch model)."""
    from tqdm.auto import tqdm

    bos, eos = tr.tgt_vocab.stoi[BOS], tr.tgt_vocab.stoi[EOS]
    out: list[str] = []
    if beam == 1:
        for i in tqdm(range(0, len(sentences), batch_size), desc="greedy", disable=not progress):
            src = pad_batch([tr.encode_source(s) for s in sentences[i : i + batch_size]], tr.src_vocab.stoi[PAD])
            out += [tr.decode_target(ids) for ids in greedy_decode(tr.model, src, bos, eos, max_len, backend)]
        return out
    for s in tqdm(sentences, desc=f"beam {beam}", disable=not progress):
        out.append(tr.decode_target(beam_search(tr.model, tr.encode_source(s), bos, eos, beam, max_len, backend)))
    return out


def _reference_batches(tr: Translator, sources: list[str], references: list[str], batch_size: int, max_len: int):
    """(source, target) padded batches of the reference translations, length-bucketed, in a fixed order."""
    bos, eos, pad = (tr.tgt_vocab.stoi[t] for t in (BOS, EOS, PAD))
    pairs = [(tr.encode_source(s), [bos] + tr.tgt_vocab.encode(tokenize_sentence(t))[:max_len] + [eos])
             for s, t in zip(sources, references)]
    for idx in bucketed_batches(pairs, batch_size, shuffle=False):
        yield pad_batch([pairs[i][0] for i in idx], tr.src_vocab.stoi[PAD]), pad_batch([pairs[i][1] for i in idx], pad)


def _reference_nll(tr: Translator, src: torch.Tensor, tgt: torch.Tensor, layers, output) -> tuple[torch.Tensor, int]:
    """Summed teacher-forced cross-entropy of one batch of references, and its token count."""
    pad = tr.tgt_vocab.stoi[PAD]
    logits = tr.model(src, tgt[:-1], layers, output)
    gold = tgt[1:].reshape(-1)
    return (nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), gold, ignore_index=pad, reduction="sum"),
            int((gold != pad).sum()))


def reference_perplexity(tr: Translator, sources: list[str], references: list[str], layers: list | None = None,
                         batch_size: int = 100, max_len: int = 60, output: nn.Module | None = None) -> float:
    """Per-token perplexity of the reference translations, teacher forced (``layers``: decoder layers
    standing in for the model's, e.g. dual-module ones; ``output``: the output projection's stand-in).

    Greedy BLEU changes only where an argmax flips and moves in steps of ~0.3 on 1000 sentences; this
    moves with every change in the decoder's distributions, as the LM tables' PPL does.
    """
    nll, tokens = 0.0, 0
    tr.model.eval()
    with torch.no_grad():
        for src, tgt in _reference_batches(tr, sources, references, batch_size, max_len):
            batch_nll, batch_tokens = _reference_nll(tr, src, tgt, layers, output)
            nll, tokens = nll + batch_nll.item(), tokens + batch_tokens
    return math.exp(nll / max(tokens, 1))


def reference_losses(tr: Translator, sources: list[str], references: list[str], batch_size: int = 100,
                     max_batches: int | None = None, max_len: int = 60):
    """``run_loss`` for :func:`~dualtvm.sensitivity.loss_gradients`: the references' teacher-forced summed
    cross-entropy per batch, the probes standing in for the decoder layers (parameters frozen meanwhile)."""
    def run(core):
        tr.model.eval()
        with frozen(tr.model):
            for src, tgt in islice(_reference_batches(tr, sources, references, batch_size, max_len), max_batches):
                yield _reference_nll(tr, src, tgt, list(core.layers), None)[0]
    return run


def corpus_bleu(hyps: list[str], refs: list[str]) -> tuple[float, str]:
    """sacrebleu corpus BLEU of detokenised hypotheses against the raw references, with its signature.

    Case-insensitive (``case:lc`` in the signature): the model's vocabulary is lower-cased.
    """
    import sacrebleu

    metric = sacrebleu.metrics.BLEU(lowercase=True)
    return metric.corpus_score(hyps, [refs]).score, str(metric.get_signature())


def bleu(model: Seq2Seq, corpus: ParallelCorpus, split: str = "test", backend: Backend | list | None = None,
         limit: int | None = None, beam: int = 1) -> tuple[float, str, list[str]]:
    """Corpus BLEU of a split's translations; returns score, signature, hypotheses."""
    src, refs = (s[:limit] for s in corpus.splits[split])
    hyps = translate(Translator(model, corpus.src_vocab, corpus.tgt_vocab), src, beam, backend)
    score, sig = corpus_bleu(hyps, refs)
    return score, sig, hyps
