"""The GNMT decode step compiled whole: one Relax call per token instead of six and the PyTorch glue between.

The layer-by-layer compiled backends (:class:`~dualtvm.nmt_backends.CompiledLayer` per decoder layer, compiled
attention query and output projections) leave a token's loop in Python: six VM calls, and concatenations, residual adds,
reshapes and DLPack conversions around each.  Timed in the 1024-unit GNMT's decode loop (a clock around each
stand-in), that glue took ≈ 0.9 ms of a dual-module token's 6.7 ms, the same in the dense decoder: time the
dual-module layers cannot shorten (Amdahl).  Here the step is one Relax function over the scheduled kernels:

``step(emb, ctx, mem, W_q, states and weights of every layer, output weights)``
    → (logits, new ctx, new states[, running mask counts]):
    layer 0 on [emb; ctx] (dense or Algorithm 1), the attention query W_q h₀, Luong (general) attention over the
    sentence's memory (``kernels.attention``: the memory's length is a symbolic dimension, one build serves every
    sentence), layers 1…L-1 on [x; ctx'] with GNMT's residual connections, then the output projection (dense, or
    the dual-module one of :mod:`dualtvm.output`).  A dual step also takes and returns the running sensitive-row
    counts per layer and gate and of the output (:class:`PartStats`).

An earlier version split the step around the attention (two calls, attention in PyTorch between them): in the
decode loop, the glue between the calls (conversions, three small torch ops, their dispatch after the kernels
had streamed the weights through the caches) took ≈ 0.3 ms a token, dense or dual.  Layer inputs concatenate
two hidden-wide vectors, so the hidden size must be a multiple of the kernels' padding (32): 256 and 1024 are.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .kernels import (PAD, LayerShape, OutputShape, attention, concat, gate_counts, gemv, layer_kernels, output_kernels,
                      split_halves)
from .dual import MaskStats
from .gates import layout
from .manifest import load_manifest, reusable_manifest, write_manifest
from .nmt import decoder_big_layers
from .nmt_backends import kernel_input
from .output import GATE as OUTPUT_GATE
from .target import TargetSpec, parse_target

log = logging.getLogger(__name__)

STEP_VERSION = 3  # 2: one ``step`` function with the attention (1: ``bottom`` and ``top``); 3: projections' row scales


@dataclass
class StepSpec:
    """Shapes of a GNMT decode step: ``layers[i]`` takes [x; ctx] (2·hidden), ``residual[i]`` adds its input's
    x to its output; ``output``: the dual output projection's shape (dual builds only; None: dense output)."""

    hidden: int
    vocab: int
    layers: list[LayerShape]
    residual: list[bool]
    dual: bool
    output: OutputShape | None = None

    def __post_init__(self) -> None:
        if self.hidden % PAD:
            raise ValueError(f"the compiled GNMT step needs a hidden size that is a multiple of {PAD}, not {self.hidden}: "
                             f"use the layer-by-layer compiled backends")
        if len(self.residual) != len(self.layers) or len(self.layers) < 2:
            raise ValueError("a GNMT step has at least two layers and one residual flag per layer")
        for s in self.layers:
            if (s.rnn_type, s.hidden, s.input_size) != ("LSTM", self.hidden, 2 * self.hidden):
                raise ValueError(f"GNMT decoder layers are LSTM({2 * self.hidden} → {self.hidden}), not {s}")
        if self.output is not None and not self.dual:
            raise ValueError("the dual output projection goes with dual-module layers")

    def to_json(self) -> dict:
        return {"hidden": self.hidden, "vocab": self.vocab, "layers": [asdict(s) for s in self.layers],
                "residual": self.residual, "dual": self.dual, "output": asdict(self.output) if self.output else None}

    @classmethod
    def from_json(cls, d: dict) -> "StepSpec":
        return cls(d["hidden"], d["vocab"], [LayerShape(**s) for s in d["layers"]], d["residual"], d["dual"],
                   OutputShape(**d["output"]) if d["output"] else None)

    @property
    def count_slots(self) -> int:
        """Length of a dual step's running mask counts: every layer's gates, then the output projection's rows."""
        return sum(len(layout(s.rnn_type).gates) for s in self.layers) + (self.output is not None)

    @property
    def split_output(self) -> bool:
        """Whether the last layer's output needs re-laying into the dual output projection's halves (hidden % 64 ≠ 0)."""
        return self.output is not None and self.output.cols_p != self.hidden


def step_kernels(spec: StepSpec) -> dict:
    """Every PrimFunc the step calls (layers of one shape share theirs)."""
    H = spec.hidden
    ks = {f"concat_ctx_{H}": concat(H, H, f"concat_ctx_{H}"), f"gemv_attq_{H}": gemv(H, H, f"gemv_attq_{H}"),
          f"attention_{H}": attention(H, f"attention_{H}")}
    for s in spec.layers:
        ks.update(layer_kernels(s, spec.dual))
        if spec.dual:
            ks[f"gate_counts_{s.tag}"] = gate_counts(s.n, len(layout(s.rnn_type).gates), f"gate_counts_{s.tag}")
    if spec.output is None:
        ks[f"gemv_out_{spec.vocab}x{H}"] = gemv(spec.vocab, H, f"gemv_out_{spec.vocab}x{H}")
    else:
        ks.update(output_kernels(spec.output))
        if spec.split_output:
            ks[f"split_{spec.output.tag}"] = split_halves(H, spec.output, f"split_{spec.output.tag}")
    return ks


def build_step_ir(spec: StepSpec, target: TargetSpec, database=None):
    """The IRModule: scheduled kernels + the Relax ``step``."""
    from tvm import relax, tirx

    from .decoder import emit_layer, layer_inputs, scheduled
    from .linear import dual_linear_inputs, emit_dual_linear

    bb = relax.BlockBuilder()
    gvs = {name: bb.add_func(scheduled(f, target, database), name) for name, f in step_kernels(spec).items()}
    H, V = spec.hidden, spec.vocab
    ten = relax.TensorType
    vec = lambda name, n=H: relax.Var(name, ten((n,), "float32"))  # noqa: E731

    def call(name, args, n=H):
        return bb.emit(relax.call_tir(gvs[name], args, ten((n,), "float32")))

    emb, ctx = vec("emb"), vec("ctx")
    mem = relax.Var("mem", ten((tirx.Var("S", "int64"), H), "float32"))  # this sentence's memory, S rows
    w_q = relax.Var("W_q", ten((H, H), "float32"))
    layers = [layer_inputs(f"l{i}", s, spec.dual) for i, s in enumerate(spec.layers)]
    if spec.output is None:
        out_params = [relax.Var("W_out", ten((V, H), "float32")), vec("b_out", V)]
    else:
        out_params = dual_linear_inputs(spec.output, "out_")
    params = [emb, ctx, mem, w_q] + [v for st, ws in layers for v in (*st.values(), *ws.values())] + out_params
    if spec.dual:  # running sensitive-row counts: per layer per gate, then the output projection's
        running = relax.Var("counts", ten((spec.count_slots,), "int64"))
        params.append(running)
    with bb.function("step", params):
        with bb.dataflow():
            x, states, masks = emb, [], []
            for i, (st, ws) in enumerate(layers):
                xc = call(f"concat_ctx_{H}", [x, ctx], 2 * H)
                h, state, pos = emit_layer(bb, gvs, spec.layers[i], spec.dual, xc, st, ws)
                states += state
                masks += [pos] if pos is not None else []
                x = bb.emit(relax.op.add(h, x)) if spec.residual[i] else h
                if i == 0:  # layer 0's output queries the memory; layers 1… see the new context
                    ctx = call(f"attention_{H}", [mem, call(f"gemv_attq_{H}", [w_q, h])])
            if spec.output is None:
                extra = [bb.emit(relax.op.add(call(f"gemv_out_{V}x{H}", [out_params[0], x], V), out_params[1]))]
            else:
                if spec.split_output:
                    x = call(f"split_{spec.output.tag}", [x], spec.output.cols_p)
                extra = list(emit_dual_linear(bb, gvs, spec.output, x, out_params))
            counts = []
            if spec.dual:
                for s, pos in zip(spec.layers, masks):
                    gates = len(layout(s.rnn_type).gates)
                    counts.append(bb.emit(relax.call_tir(gvs[f"gate_counts_{s.tag}"], [pos], ten((gates,), "int64"))))
                counts += [bb.emit(relax.op.astype(extra[1], "int64"))] if spec.output is not None else []
                counts = [bb.emit(relax.op.add(running, bb.emit(relax.op.concat(counts, axis=0))))]
            out = bb.emit_output(relax.Tuple([extra[0], ctx, *states, *counts]))
        bb.emit_func_output(out)
    return bb.get()


# --------------------------------------------------------------------------- build
def step_spec(model, target: TargetSpec, duals: list | None = None, output_little=None) -> StepSpec:
    """The step's shapes for a :class:`~dualtvm.models.Seq2Seq` (with ``duals``: dual-module layers'
    little modules; ``output_little``: an :class:`~dualtvm.output.OutputLittle` for the output projection)."""
    cfg = model.cfg
    dec = model.decoder
    if duals is not None:
        shapes = [LayerShape("LSTM", cfg.hidden, 2 * cfg.hidden, d.little.k, d.little.weight.bits,
                             mask_rule=d.little.mask_rule).for_target(target)
                  for d in duals]
    else:  # k of eq. 3 at ε = 0.5 only names the dense kernels, as in the dual build's dense counterpart (tuning log keys)
        from .projection import reduced_dim

        k = reduced_dim(4 * cfg.hidden)
        shapes = [LayerShape("LSTM", cfg.hidden, 2 * cfg.hidden, k) for _ in range(cfg.dec_layers)]
    out = None
    if output_little is not None:
        out = OutputShape(cfg.tgt_vocab, cfg.hidden, output_little.k, output_little.weight.bits).for_target(target)
    return StepSpec(cfg.hidden, cfg.tgt_vocab, shapes, [dec.residual(i) for i in range(cfg.dec_layers)],
                    duals is not None, out)


def model_hash(model) -> str:
    """sha256 of the decoder-side parameters the step holds (target embedding, decoder LSTMs, W_q, output)."""
    h = hashlib.sha256()
    parts = [model.tgt_emb, model.decoder, model.att_q, model.out]
    for part in parts:
        for name, t in sorted(part.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def little_hash(duals: list | None, output_little) -> str | None:
    """sha256 of the little-module weights a dual build holds (None for a dense build)."""
    if duals is None:
        return None
    parts = [d.little.content_hash() for d in duals] + [output_little.content_hash() if output_little else ""]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def pack_step(model, spec: StepSpec, duals: list | None, output_little) -> dict[str, np.ndarray]:
    """Every weight of the step in its kernels' layout (``l<i>_<name>``, ``W_q``, output ``out_<name>``) and the
    target embedding (``embedding``, gathered by the host)."""
    from .decoder import pack_layer
    from .linear import pack_dual_linear

    f32 = lambda t: t.detach().to(torch.float32).contiguous().numpy()  # noqa: E731
    bigs = decoder_big_layers(model)
    params: dict[str, np.ndarray] = {"embedding": f32(model.tgt_emb.weight), "W_q": f32(model.att_q.weight)}
    for i, (s, big) in enumerate(zip(spec.layers, bigs)):
        for k, v in pack_layer(s, big, duals[i].little if duals is not None else None).items():
            params[f"l{i}_{k}"] = v
    b_out = f32(model.out.bias) if model.out.bias is not None else np.zeros(spec.vocab, np.float32)
    if spec.output is None:
        params["out_w"], params["out_b"] = f32(model.out.weight), b_out
    else:
        params.update({f"out_{k}": v for k, v in pack_dual_linear(f32(model.out.weight), b_out, output_little,
                                                                    spec.output).items()})
    return params


def build_step(model, target: str | TargetSpec, out_dir: str | os.PathLike, duals: list | None = None,
               output_little=None, database=None) -> Path:
    """Compile the decode step of ``model`` (dense; with ``duals`` the dual-module one, with ``output_little``
    also the dual output projection) and write ``step.so``, ``params.npz``, the little modules and
    ``manifest.json``."""
    from .artefact import save_little, save_output_little
    from .build import warn_below_break_even
    from .decoder import vm_executable
    from .tuning import schedule_fingerprint

    tgt = parse_target(target).with_default_cores()
    spec = step_spec(model, tgt, duals, output_little)
    if spec.dual:
        for s in spec.layers:
            s.check_target(tgt)
        warn_below_break_even(spec.layers)
    if spec.output is not None:
        spec.output.check_target(tgt)
    ex = vm_executable(build_step_ir(spec, tgt, database), tgt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ex.export_library(str(out / "step.so"))
    np.savez(out / "params.npz", **pack_step(model, spec, duals, output_little))
    if duals is not None:
        save_little(out / "little.npz", [d.little for d in duals], {"name": "seq2seq-decoder"})
    if output_little is not None:
        save_output_little(out / "little_output.npz", output_little)
    write_manifest(out, {"version": STEP_VERSION, "spec": spec.to_json(), "target": tgt.to_dict(),
                         "target_name": tgt.name, "model_hash": model_hash(model),
                         "little_hash": little_hash(duals, output_little),
                         "schedules": schedule_fingerprint(database, step_kernels(spec))})
    log.info("compiled the %s GNMT decode step for %s into %s", "dual-module" if spec.dual else "dense", tgt.name, out)
    return out


def built_for(folder: Path, model, duals: list | None, output_little, database=None) -> bool:
    """Whether ``folder`` holds this model's step (with these little modules) in this format, scheduled as the
    tuning log ``database`` now says."""
    from .tuning import schedule_fingerprint

    m = reusable_manifest(folder, STEP_VERSION)
    return (m is not None and m.get("model_hash") == model_hash(model)
            and m.get("little_hash") == little_hash(duals, output_little)
            and m.get("schedules") == schedule_fingerprint(database, step_kernels(StepSpec.from_json(m["spec"]))))


# --------------------------------------------------------------------------- run
class _RunningCounts:
    """A dual step's running sensitive-row counts (``StepSpec.count_slots``, added up by the step itself) and the
    number of batch rows stepped."""

    def __init__(self, slots: int) -> None:
        self.counts = torch.zeros(slots, dtype=torch.int64)
        self.tokens = 0


class PartStats:
    """Mask statistics of one part of a compiled step — a layer's gates, or the output projection's rows — over the
    steps since its last reset (``reset_layer_stats`` assigns a fresh :class:`~dualtvm.dual.MaskStats`).

    The step counts sensitive rows in the graph and adds them to a running vector it returns, so the decode loop
    keeps one small tensor per token; recording every step's masks and reducing them in torch took 0.075 ms a token
    of the 1024-unit dual step's 4.5 (decode loop, measured)."""

    def __init__(self, running: _RunningCounts, start: int, gates: list[str], rows: int) -> None:
        self._running, self._slice, self.gates, self.rows = running, slice(start, start + len(gates)), list(gates), rows
        self.stats = MaskStats()

    @property
    def stats(self) -> MaskStats:
        steps = self._running.tokens - self._base_tokens
        out = MaskStats()
        for gate, now, base in zip(self.gates, self._running.counts[self._slice].tolist(), self._base):
            out.add_counts(gate, steps * self.rows - (now - base), steps * self.rows)
        return out

    @stats.setter
    def stats(self, value: MaskStats) -> None:
        if value.total:
            raise ValueError("a compiled step's mask statistics can only be reset (assign an empty MaskStats)")
        self._base, self._base_tokens = self._running.counts[self._slice].tolist(), self._running.tokens


class CompiledStep(nn.Module):
    """A built GNMT decode step with :meth:`Seq2Seq.decode_step`'s call signature (without the stand-ins).

    Batch 1 in the kernels: a batch (beam) is stepped row by row.  ``layers[i]`` and ``output`` hold the mask
    statistics (:class:`PartStats`) of a dual build.
    """

    def __init__(self, build_dir: str | os.PathLike, huge_pages: bool = True) -> None:
        super().__init__()
        import tvm
        from tvm import relax

        from .memory import weight_tensors

        d = Path(build_dir)
        self.manifest = m = load_manifest(d, "step.so", STEP_VERSION, "dualtvm GNMT step build (build_step)")
        self.spec = spec = StepSpec.from_json(m["spec"])
        dev = tvm.cpu()
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(d / "step.so")), dev)
        self._step = vm["step"]
        self._memory_of = None  # (mem, pad, mem's version, its rows as the kernel takes them): see _memory
        raw = np.load(d / "params.npz")
        self.embedding = torch.from_numpy(np.ascontiguousarray(raw["embedding"]))
        self._weights = weight_tensors({k: raw[k] for k in raw.files if k != "embedding"}, dev, huge_pages)
        self.littles = self.output_little = None
        self._running = _RunningCounts(spec.count_slots if spec.dual else 0)
        self.layers, start = [], 0
        for s in spec.layers if spec.dual else []:
            gates = layout(s.rnn_type).gates
            self.layers.append(PartStats(self._running, start, gates, s.hidden))
            start += len(gates)
        self.output = PartStats(self._running, start, [OUTPUT_GATE], spec.vocab) if spec.output is not None else None
        if spec.output is not None:  # (θ first: every set_* binds all the weights)
            from .artefact import load_output_little

            self.output_little = load_output_little(d / "little_output.npz")
            self.set_output_ratio(0.0)
        if spec.dual:
            from .artefact import load_little

            self.littles, _ = load_little(d / "little.npz")
            self.set_insensitive_ratio(0.0)
        self._bind()

    def _layer_weights(self, i: int) -> list:
        from .decoder import layer_param_names

        return [self._weights[f"l{i}_{n}"] for n in layer_param_names(self.spec.layers[i], self.spec.dual)]

    def _bind(self) -> None:
        """The weight lists of the call (after any threshold change)."""
        from .linear import DUAL_LINEAR_PARAMS

        self._layer_w = [self._layer_weights(i) for i in range(len(self.spec.layers))]
        names = ["out_w", "out_b"] + ([] if self.spec.output is None
                                      else [f"out_{n}" for n in DUAL_LINEAR_PARAMS] + ["out_theta"])
        self._out_w = [self._weights[n] for n in names]

    def set_insensitive_ratio(self, ratio: "float | list") -> None:
        """The layers' thresholds for one insensitive ratio (or one per layer), from their stored calibration."""
        from .runtime import mask_bounds, ratio_thresholds

        if not self.spec.dual:
            raise ValueError("this is a dense step build: it has no insensitive ratio")
        for i, (s, th) in enumerate(zip(self.spec.layers, ratio_thresholds(self.spec.layers, self.littles, ratio))):
            for name, v in zip(("lo", "hi"), mask_bounds(s, th)):  # in place: they stay beside the weights
                self._weights[f"l{i}_{name}"].copyfrom(np.ascontiguousarray(v, np.float32))

    def set_output_ratio(self, ratio: float) -> None:
        """The dual output projection's θ for ``ratio`` (its little module's calibration)."""
        import tvm

        if self.spec.output is None:
            raise ValueError("this step build has no dual output projection")
        self._weights["out_theta"] = tvm.runtime.tensor(np.array([self.output_little.theta(ratio)], np.float32),
                                                        tvm.cpu())
        self._bind()

    def _memory(self, mem: torch.Tensor, pad: torch.Tensor) -> list[torch.Tensor]:
        """Each batch row's memory without its padding rows, contiguous (what the attention kernel takes; leaving a
        row out is what masking its score to −∞ computes).  A decode loop passes the same memory every step:
        the rows are kept until another memory (or an in-place change of this one) comes."""
        held = self._memory_of
        if held is not None and held[0] is mem and held[1] is pad and held[2] == mem._version:
            return held[3]
        rows = []
        for b in range(mem.shape[1]):
            keep = ~pad[:, b]
            if not bool(keep.any()):
                raise ValueError(f"batch row {b} is all padding: an empty source sentence has nothing to attend to")
            m = (mem[:, b] if bool(keep.all()) else mem[keep, b]).detach().to(torch.float32)
            if not m.is_contiguous() or m.data_ptr() % 64:  # the kernels' vector loads assume TVM's alignment
                m = m.clone(memory_format=torch.contiguous_format)
            rows.append(m)
        self._memory_of = (mem, pad, mem._version, rows)
        return rows

    def forward(self, token: torch.Tensor, state, mem: torch.Tensor, pad: torch.Tensor):
        layer_states, ctx = state
        H, L = self.spec.hidden, len(self.spec.layers)
        memory = self._memory(mem, pad)
        rows_logits, rows_states, rows_ctx = [], [], []
        for b in range(token.shape[0]):
            args = [kernel_input(self.embedding[token[b]], H), kernel_input(ctx[b], H), memory[b], self._weights["W_q"]]
            for (h, c), ws in zip(layer_states, self._layer_w):
                args += [kernel_input(h[0, b], H), kernel_input(c[0, b], H), *ws]
            if self.spec.dual:
                t = self._step(*args, *self._out_w, self._running.counts)
                self._running.counts, self._running.tokens = t[-1], self._running.tokens + 1
            else:
                t = self._step(*args, *self._out_w)
            rows_logits.append(t[0])
            rows_ctx.append(t[1])
            rows_states.append([(t[2 + 2 * i], t[3 + 2 * i]) for i in range(L)])
        if len(rows_logits) == 1:
            new_states = [(h.view(1, 1, H), c.view(1, 1, H)) for h, c in rows_states[0]]
            return rows_logits[0].view(1, -1), (new_states, rows_ctx[0].view(1, H))
        new_states = [tuple(torch.stack([r[i][j] for r in rows_states]).unsqueeze(0) for j in range(2))
                      for i in range(L)]
        return torch.stack(rows_logits), (new_states, torch.stack(rows_ctx))
