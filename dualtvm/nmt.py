"""Dual-module GNMT decoder: little modules per decoder layer, beam search, and compiled layers.

The decoder's LSTMs are called one step at a time by :meth:`Seq2Seq.decode_step`, whose
``layers`` argument swaps them for anything with the ``nn.LSTM`` call signature.  Three
stand-ins live here: the PyTorch dual-module layers (the reference), and
:class:`CompiledLayer`, which runs a compiled decode step (dense or dual-module) built for
the layer's shape.  The compiled backends also compile the output projection
and attention's query projection (:class:`CompiledProjection`, a dense GEMV: the same for dense and
dual-module); the rest of attention and the embeddings stay in PyTorch for every backend.
"""
from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import torch
import torch.nn as nn

from .construct import build_dual_layers
from .data import (BOS, EOS, PAD, ParallelCorpus, Vocab, bucketed_batches, detokenize, encode_pairs, pad_batch,
                   tokenize_sentence)
from .dual import DualModuleLayer, MaskStats, set_layer_ratios
from .little import BigLayer, LittleConfig, big_layers
from .models import Seq2Seq
from .output import GATE as OUTPUT_GATE
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
    """The dual-module output projection (:mod:`dualtvm.output`): loaded from ``<stem>.little-output.npz`` beside
    ``checkpoint`` if it fits the model's output projection, else fitted on training pairs, calibrated on
    validation and saved there."""
    from .artefact import ArtefactError, load_output_little, save_output_little

    model = tr.model
    artefact = _beside(checkpoint, "little-output")
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


# --------------------------------------------------------------------------- compiled layers
def kernel_input(v: torch.Tensor, width: int) -> torch.Tensor:
    """``v`` zero-padded to ``width``; ``v`` itself where it already fits and is 64-byte aligned (the kernels'
    vector loads assume TVM's alignment: a row of a batch at an odd offset segfaulted)."""
    if (v.dtype == torch.float32 and v.shape[0] == width and v.is_contiguous() and not v.requires_grad
            and v.data_ptr() % 64 == 0):
        return v  # the decode loop's case: no new tensor
    v = v.detach().to(torch.float32)
    out = v.new_zeros(width)
    out[: v.shape[0]] = v
    return out


class _FoldedStats(nn.Module):
    """Mask statistics of a compiled stand-in, kept like :class:`DualModuleLayer`'s so the measured insensitive
    ratio can be reported, but counted every ``FOLD_EVERY`` steps: a torch reduction right after each compiled
    step cost 0.06–0.15 ms, a tenth of a 1024-unit dual-module layer (measured in the decode loop).  Subclasses
    :meth:`_record` each step's mask output and count a batch of them in :meth:`_count`."""

    FOLD_EVERY = 64

    def __init__(self) -> None:
        super().__init__()
        self.stats = MaskStats()

    @property
    def stats(self) -> MaskStats:
        """Insensitive rows over the steps since the last reset (folds the pending masks)."""
        self._fold()
        return self._stats

    @stats.setter
    def stats(self, value: MaskStats) -> None:
        self._stats, self._pending = value, []

    def _record(self, mask_output: torch.Tensor) -> None:
        self._pending.append(mask_output)
        if len(self._pending) >= self.FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        if self._pending:
            self._count(self._pending)
            self._pending = []

    def _count(self, pending: list[torch.Tensor]) -> None:
        raise NotImplementedError


class GateStats(_FoldedStats):
    """Per-gate mask statistics of a compiled layer of shape ``shape``, from the mask kernel's ``pos`` vectors."""

    def __init__(self, shape) -> None:
        super().__init__()
        from .gates import layout

        self.shape = shape
        self.gates = layout(shape.rnn_type).gates

    def _count(self, pending: list[torch.Tensor]) -> None:
        n, H = len(pending), self.shape.hidden
        sensitive = (torch.stack(pending) >= 0).view(n, len(self.gates), H).sum(dim=(0, 2)).tolist()
        for gate, k in zip(self.gates, sensitive):
            self._stats.add_counts(gate, n * H - k, n * H)


class RowStats(_FoldedStats):
    """Mask statistics of a dual output projection of ``rows`` logits, from its sensitive-row counts."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows

    def _count(self, pending: list[torch.Tensor]) -> None:
        sensitive = int(torch.stack(pending).sum())
        n = len(pending) * self.rows
        self._stats.add_counts(OUTPUT_GATE, n - sensitive, n)


class CompiledLayer(GateStats):
    """A compiled single-layer decode step with the ``nn.LSTM`` call signature (seq len 1).

    The compiled step is batch 1: a batch (beam) is stepped row by row.  Torch tensors go to the
    VM and come back zero-copy (DLPack) through :meth:`CompiledDecoder.run`; only inputs whose
    width is not the kernels' padded width are copied into a staging buffer.  Mask statistics per gate
    (:class:`GateStats`).
    """

    def __init__(self, build_dir: str | os.PathLike) -> None:
        from .runtime import CompiledDecoder

        dec = CompiledDecoder(build_dir)
        (shape,) = dec.spec.layers
        super().__init__(shape)
        self.dec = dec

    def set_insensitive_ratio(self, ratio) -> None:
        self.dec.set_insensitive_ratio(ratio)

    def forward(self, x: torch.Tensor, state=None):
        if x.shape[0] != 1:
            raise ValueError("compiled layers decode one step at a time (sequence length 1)")
        s = self.shape
        B, H = x.shape[1], s.hidden
        h0, c0 = state if state is not None else (x.new_zeros(1, B, H), x.new_zeros(1, B, H))
        hs, cs = [], []
        for b in range(B):
            out = self.dec.run(kernel_input(x[0, b], s.dxp), [kernel_input(h0[0, b], s.hp), kernel_input(c0[0, b], s.hp)])
            hs.append(out[1][:H])
            cs.append(out[2][:H])
            if self.dec.spec.dual:  # (row positions, -1 where insensitive)
                self._record(out[3])
        if B == 1:
            h = hs[0].view(1, 1, H)
            return h, (h, cs[0].view(1, 1, H))
        h = torch.stack(hs).unsqueeze(0)
        return h, (h, torch.stack(cs).unsqueeze(0))


def build_compiled_decoder(duals: list[DualModuleLayer], target: str, out: str | os.PathLike,
                           database=None) -> dict[str, list[Path]]:
    """Compile the decoder layer step once per kind (all layers share a shape) and export it per layer.

    Returns ``{"dual": [layer folders], "dense": [...]}``; each folder loads as a
    :class:`~dualtvm.runtime.CompiledDecoder` with that layer's weights (and little module).
    """
    from .build import warn_below_break_even
    from .decoder import DecoderSpec, compile_decoder, export, pack_layer
    from .kernels import LayerShape, layer_kernels
    from .target import parse_target
    from .tuning import schedule_fingerprint

    tgt = parse_target(target).with_default_cores()
    shapes = [LayerShape("LSTM", d.big.hidden, d.big.input_size, d.little.k, d.little.weight.bits,
                         mask_rule=d.little.mask_rule).for_target(tgt)
              for d in duals]
    warn_below_break_even(shapes)
    folders: dict[str, list[Path]] = {}
    for kind in ("dual", "dense"):
        built: dict = {}
        folders[kind] = []
        for i, (s, d) in enumerate(zip(shapes, duals)):
            spec = DecoderSpec([s], dual=kind == "dual")
            key = repr(spec.to_json())
            if key not in built:
                built[key] = compile_decoder(spec, tgt, database)
                log.info("compiled the %s decoder layer step for %s", kind, s)
            info = {"name": f"seq2seq-decoder-layer{i}", "hidden": s.hidden, "input": s.input_size, "k": s.k,
                    "big_hash": d.big.weight_hash(),
                    "schedules": schedule_fingerprint(database, layer_kernels(s, kind == "dual"))}
            little = [d.little] if kind == "dual" else None
            folders[kind].append(export(built[key], spec, tgt, Path(out) / kind / f"layer{i}",
                                        [pack_layer(s, d.big, d.little if kind == "dual" else None)], little, info))
    return folders


def compiled_layers(folders: list[Path]) -> list[CompiledLayer]:
    return [CompiledLayer(f) for f in folders]


class CompiledProjection(RowStats):
    """An ``nn.Linear`` as a compiled batch-1 GEMV (:mod:`dualtvm.linear`): (B, in) → (B, out), row by row.
    The decoder's output projection and attention's query projection run this way in the compiled backends.

    A dual build (the dual-module output projection) also takes :meth:`set_insensitive_ratio` and keeps mask
    statistics (gate ``logits``, :class:`RowStats`)."""

    def __init__(self, build_dir: str | os.PathLike) -> None:
        from .linear import CompiledLinear

        linear = CompiledLinear(build_dir)
        super().__init__(linear.rows)
        self.linear = linear

    def set_insensitive_ratio(self, ratio: float) -> None:
        self.linear.set_insensitive_ratio(ratio)

    def _input(self, v: torch.Tensor) -> torch.Tensor:
        """One input row in the build's layout, padded (torch allocations keep TVM's 64-byte alignment)."""
        from .linear import split_layout

        lin = self.linear
        if not lin.dual or lin.cols == lin.cols_padded:
            return kernel_input(v, lin.cols_padded)
        return split_layout(v, lin.shape, v.new_zeros(lin.cols_padded, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for b in range(x.shape[0]):
            outs.append(self.linear.run(self._input(x[b])))
            if self.linear.dual:
                self._record(self.linear.last_count)
        return torch.stack(outs)


def compiled_projection(linear: nn.Linear, target: str, folder: Path, little=None) -> CompiledProjection:
    """``linear`` compiled for ``target`` in ``folder`` (built unless it holds these weights; no bias = zeros);
    with ``little`` (an :class:`~dualtvm.output.OutputLittle`) the dual-module build."""
    from .linear import build_dual_linear, build_linear, built_for
    from .tuning import target_database

    w = linear.weight.detach().to(torch.float32).numpy()
    b = (linear.bias.detach().to(torch.float32).numpy() if linear.bias is not None
         else torch.zeros(w.shape[0]).numpy())
    database = target_database(target)
    if not built_for(folder, w, b, little, database):
        if little is None:
            build_linear(w, b, target, folder, database)
        else:
            build_dual_linear(w, b, little, target, folder, database)
    return CompiledProjection(folder)


def compiled_output(model: Seq2Seq, target: str, folder: Path) -> CompiledProjection:
    """The model's output projection compiled for ``target`` in ``folder``."""
    return compiled_projection(model.out, target, folder)


# --------------------------------------------------------------------------- backends
BACKENDS = ("torch", "dual", "tvm-dense", "tvm-dual")


def dual_decoder(tr: Translator, corpus: ParallelCorpus | None, artefact: Path,
                 cfg: LittleConfig | None = None) -> list[DualModuleLayer]:
    """The PyTorch dual-module decoder layers: loaded from ``artefact`` if it fits these weights, else fitted."""
    from .artefact import ArtefactError, load_little, save_little

    big = decoder_big_layers(tr.model)
    if artefact.exists():
        try:
            littles, _ = load_little(artefact, big)
            held = {(lm.weight.bits, lm.mask_rule) for lm in littles}
            if cfg is None or held == {(cfg.bits, cfg.mask_rule)}:
                return [DualModuleLayer(b, lm) for b, lm in zip(big, littles)]
            log.warning("refitting the little modules: %s holds (INT bits, mask rule) %s, (%d, %s) asked", artefact,
                        sorted(held), cfg.bits, cfg.mask_rule)
        except ArtefactError as e:
            log.warning("refitting the little modules: %s", e)
    if corpus is None:
        raise ValueError("fitting little modules needs the Multi30k corpus (train and val)")
    duals = build_dual_decoder(tr.model, corpus, cfg)
    save_little(artefact, [d.little for d in duals], {"name": "seq2seq-decoder"})
    return duals


def _built_for(folder: Path, dual: DualModuleLayer, database=None) -> bool:
    """Whether ``folder`` holds a build of this layer's big weights (and its current little module), made
    by this dualtvm's build format (an older format is rebuilt, not refused) under the tuning log ``database``'s
    current verdicts for its kernels."""
    import json

    from .decoder import MANIFEST_VERSION, DecoderSpec
    from .kernels import layer_kernels
    from .tuning import schedule_fingerprint

    if not (folder / "manifest.json").exists():
        return False
    manifest = json.loads((folder / "manifest.json").read_text())
    model = manifest.get("model", {})
    if manifest.get("version") != MANIFEST_VERSION or model.get("big_hash") != dual.big.weight_hash():
        return False
    spec = DecoderSpec.from_json(manifest["spec"])
    return (model.get("k") == dual.little.k
            and model.get("schedules") == schedule_fingerprint(database, layer_kernels(spec.layers[0], spec.dual)))


def decoder_layers(tr: Translator, corpus: ParallelCorpus | None, backend: str, checkpoint: Path,
                   target: str = "llvm -mcpu=broadwell", ratio: float = 0.5,
                   build_root: Path | None = None, little_bits: int = 8,
                   mask_rule: str = "activation") -> list[nn.Module] | None:
    """Decoder layers of a backend (None = the big PyTorch LSTMs), dual ones set to ``ratio``.

    Little modules (W_LL in ``little_bits``: 8, the paper's, or 4; masks by ``mask_rule``, eq. 5's
    "activation" or "contribution", see :mod:`dualtvm.contribution`) are cached beside the checkpoint
    (``<stem>.little[-w4][-contribution].npz``; tied to the weights by hash); compiled layers under
    ``build/<stem>-<target-name>[-w4][-contribution]/`` (rebuilt when the little modules change).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if little_bits not in (8, 4):
        raise ValueError(f"little_bits must be 8 or 4 (the compiled little GEMVs), not {little_bits}")
    if backend == "torch":
        return None
    cfg = LittleConfig(bits=little_bits, mask_rule=mask_rule)
    suffix = cfg.variant
    duals = dual_decoder(tr, corpus, _little_artefact(checkpoint, cfg), cfg)
    if backend == "dual":
        layers: list[nn.Module] = duals
    else:
        out = _build_folder(checkpoint, target, build_root, suffix)
        kind = backend.removeprefix("tvm-")
        folders = [out / kind / f"layer{i}" for i in range(len(duals))]
        from .tuning import target_database

        database = target_database(target)  # the committed tuning log of the target, where it beat the defaults
        if not all(_built_for(f, d, database) for f, d in zip(folders, duals)):
            folders = build_compiled_decoder(duals, target, out, database)[kind]
        layers = compiled_layers(folders)
    if backend.endswith("dual"):
        set_layer_ratios(layers, ratio)
    return layers


def _stem(checkpoint: Path) -> str:
    """``multi30k-gnmt-1024`` of ``multi30k-gnmt-1024.best.pt``: what the artefacts and build folders are named by."""
    return checkpoint.name.split(".")[0]


def _beside(checkpoint: Path, kind: str) -> Path:
    """The artefact ``<stem>.<kind>.npz`` cached beside ``checkpoint``."""
    return checkpoint.with_name(f"{_stem(checkpoint)}.{kind}.npz")


def _little_artefact(checkpoint: Path, cfg: LittleConfig) -> Path:
    """Where the decoder layers' little modules of ``checkpoint`` are cached
    (``<stem>.little[-w4][-contribution].npz``)."""
    return _beside(checkpoint, "little" + cfg.variant)


def _build_folder(checkpoint: Path, target: str, build_root: Path | None, suffix: str = "") -> Path:
    from .target import parse_target

    root = build_root or Path(__file__).resolve().parent.parent / "build"
    return root / f"{_stem(checkpoint)}-{parse_target(target).name}{suffix}"


def decoder_backend(tr: Translator, corpus: ParallelCorpus | None, backend: str, checkpoint: Path,
                    target: str = "llvm -mcpu=broadwell", ratio: float = 0.5, build_root: Path | None = None,
                    little_bits: int = 8, output_ratio: float | None = None, fused_step: bool = False,
                    mask_rule: str = "activation") -> Backend:
    """A backend by name: :func:`decoder_layers`, plus for the compiled ones the compiled output projection
    (``build/<stem>-<target-name>/output``).

    ``output_ratio``: a dual backend also runs the dual-module output projection (:mod:`dualtvm.output`) at that
    insensitive ratio; its little module is cached as ``<stem>.little-output.npz``, its build in ``output-dual``.
    ``fused_step``: a compiled backend runs the whole decode step as one build (:mod:`dualtvm.gnmt_step`, two VM
    calls per token; ``step-dense``, ``step-dual``, ``step-dual-out``) instead of compiled pieces in the PyTorch loop.
    """
    dual_out = None
    if output_ratio is not None:
        if not backend.endswith("dual"):
            raise ValueError(f"output_ratio is for the dual-module backends, not {backend!r}")
        dual_out = dual_output(tr, corpus, checkpoint)
        dual_out.set_insensitive_ratio(output_ratio)
    if fused_step:
        return _step_backend(tr, corpus, backend, checkpoint, target, ratio, build_root,
                             LittleConfig(bits=little_bits, mask_rule=mask_rule), dual_out, output_ratio)
    layers = decoder_layers(tr, corpus, backend, checkpoint, target, ratio, build_root, little_bits, mask_rule)
    if not backend.startswith("tvm-"):
        return Backend(layers, dual_out)
    folder = _build_folder(checkpoint, target, build_root)
    if dual_out is None:
        output = compiled_output(tr.model, target, folder / "output")
    else:
        output = compiled_projection(tr.model.out, target, folder / "output-dual", dual_out.little)
        output.set_insensitive_ratio(output_ratio)
    return Backend(layers, output, torch_threads=1,
                   attention_query=compiled_projection(tr.model.att_q, target, folder / "attention-query"))


def _step_backend(tr: Translator, corpus: ParallelCorpus | None, backend: str, checkpoint: Path, target: str,
                  ratio: float, build_root: Path | None, cfg: LittleConfig, dual_out: DualOutput | None,
                  output_ratio: float | None) -> Backend:
    """:func:`decoder_backend` with ``fused_step``: the whole compiled decode step, built unless it holds these
    weights and little modules."""
    from .gnmt_step import CompiledStep, build_step, built_for
    from .tuning import target_database

    if backend not in ("tvm-dense", "tvm-dual"):
        raise ValueError(f"the fused decode step is compiled: backend tvm-dense or tvm-dual, not {backend!r}")
    duals = None
    if backend == "tvm-dual":
        duals = dual_decoder(tr, corpus, _little_artefact(checkpoint, cfg), cfg)
    little_out = dual_out.little if dual_out is not None else None
    kind = "step-dense" if duals is None else "step-dual" + ("-out" if little_out is not None else "")
    folder = _build_folder(checkpoint, target, build_root, cfg.variant if duals else "") / kind
    database = target_database(target)
    if not built_for(folder, tr.model, duals, little_out, database):
        build_step(tr.model, target, folder, duals, little_out, database)
    step = CompiledStep(folder)
    if duals is not None:
        step.set_insensitive_ratio(ratio)
    if little_out is not None:
        step.set_output_ratio(output_ratio)
    return Backend(torch_threads=1, step=step)


# --------------------------------------------------------------------------- speed
class _Timed(nn.Module):
    """Accumulates wall time spent inside a decoder layer (the part the backends differ in)."""

    def __init__(self, inner: nn.Module, clock: list[float]) -> None:
        super().__init__()
        self.inner, self.clock = inner, clock

    def forward(self, x, state=None):
        import time

        t0 = time.perf_counter()
        out = self.inner(x, state)
        self.clock[0] += time.perf_counter() - t0
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
    from the decode loop.  Returns per backend: tokens; total, encoder, decode-loop and decoder-layer
    seconds; end-to-end tokens/s, decoder tokens/s (decode loop only), ms per token in the decoder
    layers (None for a backend with a whole compiled ``step``: its layers are not called apart); the hypotheses;
    per sentence (tokens, encoder s, decode-loop s), for :func:`block_speedups`.
    """
    import random
    import time

    from tqdm.auto import tqdm

    from .results import warn_if_busy

    if not sentences:
        raise ValueError("decode_speed needs at least one sentence")
    bos, eos = tr.tgt_vocab.stoi[BOS], tr.tgt_vocab.stoi[EOS]
    names = list(backends)
    acc = {n: {"per_sentence": [], "layer_clock": [0.0], "hyps": []} for n in names}
    timed = {}
    for n in names:
        be = as_backend(backends[n])
        if be.step is not None:  # one compiled step: no separate layer time
            acc[n]["layer_clock"] = None
            timed[n] = be
            continue
        layers = [_Timed(l, acc[n]["layer_clock"]) for l in (be.layers or tr.model.decoder.layers)]
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
            t1 = time.perf_counter()
            (ids,) = greedy_search(tr.model, mem, pad, bos, eos, 60, timed[n])
            t2 = time.perf_counter()
            acc[n]["per_sentence"].append((len(ids) + 1, t1 - t0, t2 - t1))  # + <eos>
            acc[n]["hyps"].append(tr.decode_target(ids))
    out = {}
    for n in names:
        a = acc[n]
        tokens, encode_s, decode_s = (sum(col) for col in zip(*a["per_sentence"]))
        wall = encode_s + decode_s
        out[n] = {"tokens": tokens, "wall_s": wall, "encode_s": encode_s, "decode_s": decode_s,
                  "layer_s": a["layer_clock"][0] if a["layer_clock"] else None, "tokens_per_s": tokens / wall,
                  "decoder_tokens_per_s": tokens / decode_s,
                  "layer_ms_per_token": 1e3 * a["layer_clock"][0] / tokens if a["layer_clock"] else None,
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
