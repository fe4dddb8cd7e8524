"""The GNMT decode step compiled whole: two Relax calls per token instead of six and the PyTorch glue between.

The layer-by-layer compiled backends (:class:`~dualtvm.nmt.CompiledLayer` per decoder layer, compiled attention
query and output projections) leave a token's loop in Python: six VM calls, and concatenations, residual adds,
reshapes and DLPack conversions around each.  Timed in the 1024-unit GNMT's decode loop (a clock around each
stand-in), that glue took ≈ 0.9 ms of a dual-module token's 6.7 ms, the same in the dense decoder: time the
dual-module layers cannot shorten (Amdahl).  Here the step is two Relax functions over the same scheduled kernels:

``bottom(emb, ctx, h0, c0, layer-0 weights, W_q)`` → (layer 0's output, attention query q, new state, mask)
    layer 0 on [emb; ctx] (dense or Algorithm 1) and the query projection;
``top(x, ctx', states 1…L-1, their weights, output weights)`` → (logits, new states, masks, output count)
    layers 1…L-1 on [x; ctx'] with GNMT's residual connections, then the output projection (dense, or the
    dual-module one of :mod:`dualtvm.output`).

Between them PyTorch computes the attention over the encoder memory (Luong general: scores, softmax, context;
the memory changes per sentence, its length with it).  Layer inputs concatenate two hidden-wide vectors, so the
hidden size must be a multiple of the kernels' padding (32): 256 and 1024 are.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .kernels import PAD, LayerShape, OutputShape, concat, gemv, layer_kernels, output_kernels, split_halves
from .nmt import GateStats, RowStats, decoder_big_layers, kernel_input
from .target import TargetSpec, parse_target, refuse_foreign_library

log = logging.getLogger(__name__)

STEP_VERSION = 1


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
    def split_output(self) -> bool:
        """Whether the top output needs re-laying into the dual output projection's halves (hidden % 64 ≠ 0)."""
        return self.output is not None and self.output.cols_p != self.hidden


def step_kernels(spec: StepSpec) -> dict:
    """Every PrimFunc the two functions call (layers of one shape share theirs)."""
    H = spec.hidden
    ks = {f"concat_ctx_{H}": concat(H, H, f"concat_ctx_{H}"), f"gemv_attq_{H}": gemv(H, H, f"gemv_attq_{H}")}
    for s in spec.layers:
        ks.update(layer_kernels(s, spec.dual))
    if spec.output is None:
        ks[f"gemv_out_{spec.vocab}x{H}"] = gemv(spec.vocab, H, f"gemv_out_{spec.vocab}x{H}")
    else:
        ks.update(output_kernels(spec.output))
        if spec.split_output:
            ks[f"split_{spec.output.tag}"] = split_halves(H, spec.output, f"split_{spec.output.tag}")
    return ks


def build_step_ir(spec: StepSpec, target: TargetSpec, database=None):
    """The IRModule: scheduled kernels + Relax ``bottom`` and ``top``."""
    from tvm import relax

    from .decoder import emit_layer, layer_inputs, scheduled
    from .linear import dual_linear_inputs, emit_dual_linear

    bb = relax.BlockBuilder()
    gvs = {name: bb.add_func(scheduled(f, target, database), name) for name, f in step_kernels(spec).items()}
    H, V = spec.hidden, spec.vocab
    vec = lambda name, n=H: relax.Var(name, relax.TensorType((n,), "float32"))  # noqa: E731
    ten = relax.TensorType

    def layer_input(x, ctx):
        return bb.emit(relax.call_tir(gvs[f"concat_ctx_{H}"], [x, ctx], ten((2 * H,), "float32")))

    # bottom: layer 0 and the attention query
    emb, ctx = vec("emb"), vec("ctx")
    st0, ws0 = layer_inputs("l0", spec.layers[0], spec.dual)
    w_q = relax.Var("W_q", ten((H, H), "float32"))
    with bb.function("bottom", [emb, ctx, *st0.values(), *ws0.values(), w_q]):
        with bb.dataflow():
            h, state, pos = emit_layer(bb, gvs, spec.layers[0], spec.dual, layer_input(emb, ctx), st0, ws0)
            x = bb.emit(relax.op.add(h, emb)) if spec.residual[0] else h
            q = bb.emit(relax.call_tir(gvs[f"gemv_attq_{H}"], [w_q, h], ten((H,), "float32")))
            out = bb.emit_output(relax.Tuple([x, q, *state] + ([pos] if pos is not None else [])))
        bb.emit_func_output(out)

    # top: layers 1… and the output projection
    x_in, ctx = vec("x"), vec("ctx")
    layers = [layer_inputs(f"l{i}", s, spec.dual) for i, s in enumerate(spec.layers) if i > 0]
    if spec.output is None:
        out_params = [relax.Var("W_out", ten((V, H), "float32")), vec("b_out", V)]
    else:
        out_params = dual_linear_inputs(spec.output, "out_")
    params = [x_in, ctx] + [v for st, ws in layers for v in (*st.values(), *ws.values())] + out_params
    with bb.function("top", params):
        with bb.dataflow():
            x, states, masks = x_in, [], []
            for i, (st, ws) in enumerate(layers, start=1):
                h, state, pos = emit_layer(bb, gvs, spec.layers[i], spec.dual, layer_input(x, ctx), st, ws)
                states += state
                masks += [pos] if pos is not None else []
                x = bb.emit(relax.op.add(h, x)) if spec.residual[i] else h
            if spec.output is None:
                y = bb.emit(relax.call_tir(gvs[f"gemv_out_{V}x{H}"], [out_params[0], x], ten((V,), "float32")))
                extra = [bb.emit(relax.op.add(y, out_params[1]))]
            else:
                if spec.split_output:
                    x = bb.emit(relax.call_tir(gvs[f"split_{spec.output.tag}"], [x],
                                               ten((spec.output.cols_p,), "float32")))
                extra = list(emit_dual_linear(bb, gvs, spec.output, x, out_params))
            out = bb.emit_output(relax.Tuple([extra[0], *states, *masks, *extra[1:]]))
        bb.emit_func_output(out)
    return bb.get()


# --------------------------------------------------------------------------- build
def step_spec(model, target: TargetSpec, duals: list | None = None, output_little=None) -> StepSpec:
    """The step's shapes for a :class:`~dualtvm.models.Seq2Seq` (with ``duals``: dual-module layers'
    little modules; ``output_little``: an :class:`~dualtvm.output.OutputLittle` for the output projection)."""
    cfg = model.cfg
    dec = model.decoder
    if duals is not None:
        shapes = [LayerShape("LSTM", cfg.hidden, 2 * cfg.hidden, d.little.k, d.little.weight.bits).for_target(target)
                  for d in duals]
    else:  # k of eq. 3 at ε = 0.5 only names the dense kernels, as in the dual build's dense twin (tuning log keys)
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
    import tvm

    from .artefact import save_little, save_output_little
    from .build import warn_below_break_even
    from .checkpoint import git_revision
    from .tuning import schedule_fingerprint

    tgt = parse_target(target).with_default_cores()
    spec = step_spec(model, tgt, duals, output_little)
    if spec.dual:
        for s in spec.layers:
            s.check_target(tgt)
        warn_below_break_even(spec.layers)
    if spec.output is not None:
        spec.output.check_target(tgt)
    ex = tvm.compile(build_step_ir(spec, tgt, database), target=tgt.to_tvm())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ex.export_library(str(out / "step.so"))
    np.savez(out / "params.npz", **pack_step(model, spec, duals, output_little))
    if duals is not None:
        save_little(out / "little.npz", [d.little for d in duals], {"name": "seq2seq-decoder"})
    if output_little is not None:
        save_output_little(out / "little_output.npz", output_little)
    manifest = {"version": STEP_VERSION, "spec": spec.to_json(), "target": tgt.to_dict(), "target_name": tgt.name,
                "model_hash": model_hash(model), "little_hash": little_hash(duals, output_little),
                "schedules": schedule_fingerprint(database, step_kernels(spec)), "git": git_revision()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log.info("compiled the %s GNMT decode step for %s into %s", "dual-module" if spec.dual else "dense", tgt.name, out)
    return out


def built_for(folder: Path, model, duals: list | None, output_little, database=None) -> bool:
    """Whether ``folder`` holds this model's step (with these little modules) in this format, scheduled as the
    tuning log ``database`` now says."""
    from .tuning import schedule_fingerprint

    f = Path(folder) / "manifest.json"
    if not f.exists():
        return False
    m = json.loads(f.read_text())
    if m.get("version") != STEP_VERSION or m.get("model_hash") != model_hash(model):
        return False
    if m.get("little_hash") != little_hash(duals, output_little):
        return False
    spec = StepSpec.from_json(m["spec"])
    return m.get("schedules") == schedule_fingerprint(database, step_kernels(spec))


# --------------------------------------------------------------------------- run
class CompiledStep(nn.Module):
    """A built GNMT decode step with :meth:`Seq2Seq.decode_step`'s call signature (without the stand-ins).

    Batch 1 in the kernels: a batch (beam) is stepped row by row.  ``layers[i]`` and ``output`` hold the mask
    statistics (:class:`~dualtvm.nmt.GateStats`, :class:`~dualtvm.nmt.RowStats`) of a dual build.
    """

    def __init__(self, build_dir: str | os.PathLike, huge_pages: bool = True) -> None:
        super().__init__()
        import tvm
        from tvm import relax

        from .memory import weight_tensor

        d = Path(build_dir)
        for f in ("manifest.json", "step.so", "params.npz"):
            if not (d / f).exists():
                raise FileNotFoundError(f"{d / f} is missing: not a dualtvm GNMT step build (build_step)")
        self.manifest = m = json.loads((d / "manifest.json").read_text())
        if m.get("version") != STEP_VERSION:
            raise ValueError(f"{d}: step build version {m.get('version')}, this dualtvm reads {STEP_VERSION}")
        refuse_foreign_library(parse_target(m["target"]), d / "step.so")
        self.spec = spec = StepSpec.from_json(m["spec"])
        dev = tvm.cpu()
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(d / "step.so")), dev)
        self._bottom, self._top = vm["bottom"], vm["top"]
        raw = np.load(d / "params.npz")
        self.embedding = torch.from_numpy(np.ascontiguousarray(raw["embedding"]))
        self._weights = {k: weight_tensor(raw[k], dev, huge_pages) for k in raw.files if k != "embedding"}
        self.littles = self.output_little = None
        self.layers = [GateStats(s) for s in spec.layers] if spec.dual else []
        self.output = RowStats(spec.vocab) if spec.output is not None else None
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
        """The weight lists of the two calls (after any threshold change)."""
        self._bottom_w = self._layer_weights(0) + [self._weights["W_q"]]
        top = [self._layer_weights(i) for i in range(1, len(self.spec.layers))]
        names = (["out_w", "out_b"] if self.spec.output is None
                 else ["out_w", "out_b", "out_p_lo", "out_p_hi", "out_w_ll", "out_scale", "out_b_ll", "out_theta"])
        self._top_w = top, [self._weights[n] for n in names]

    def set_insensitive_ratio(self, ratio: "float | list") -> None:
        """The layers' thresholds for one insensitive ratio (or one per layer), from their stored calibration."""
        import tvm

        from .runtime import mask_bounds, ratio_thresholds

        if not self.spec.dual:
            raise ValueError("this is a dense step build: it has no insensitive ratio")
        for i, (s, th) in enumerate(zip(self.spec.layers, ratio_thresholds(self.spec.layers, self.littles, ratio))):
            for name, v in zip(("lo", "hi"), mask_bounds(s, th)):
                self._weights[f"l{i}_{name}"] = tvm.runtime.tensor(np.ascontiguousarray(v, np.float32), tvm.cpu())
        self._bind()

    def set_output_ratio(self, ratio: float) -> None:
        """The dual output projection's θ for ``ratio`` (its little module's calibration)."""
        import tvm

        if self.spec.output is None:
            raise ValueError("this step build has no dual output projection")
        self._weights["out_theta"] = tvm.runtime.tensor(np.array([self.output_little.theta(ratio)], np.float32),
                                                        tvm.cpu())
        self._bind()

    def forward(self, token: torch.Tensor, state, mem: torch.Tensor, pad: torch.Tensor):
        layer_states, ctx = state
        H, L = self.spec.hidden, len(self.spec.layers)
        n_state = 2 * (L - 1)
        rows_logits, rows_states, rows_ctx = [], [], []
        top_layers, top_out = self._top_w
        for b in range(token.shape[0]):
            hc = [(kernel_input(h[0, b], H), kernel_input(c[0, b], H)) for h, c in layer_states]
            o = self._bottom(kernel_input(self.embedding[token[b]], H), kernel_input(ctx[b], H), *hc[0], *self._bottom_w)
            x, q, h0, c0 = o[0], o[1], o[2], o[3]
            if self.spec.dual:
                self.layers[0]._record(o[4])
            m = mem[:, b]
            scores = (m @ q).masked_fill(pad[:, b], float("-inf"))
            new_ctx = scores.softmax(0) @ m
            args = [x, new_ctx]
            for i, ws in enumerate(top_layers, start=1):
                args += [*hc[i], *ws]
            t = self._top(*args, *top_out)
            if self.spec.dual:
                for i in range(1, L):
                    self.layers[i]._record(t[n_state + i])
            if self.output is not None:
                self.output._record(t[-1])
            rows_logits.append(t[0])
            rows_states.append([(h0, c0)] + [(t[1 + 2 * j], t[2 + 2 * j]) for j in range(L - 1)])
            rows_ctx.append(new_ctx)
        if len(rows_logits) == 1:
            new_states = [(h.view(1, 1, H), c.view(1, 1, H)) for h, c in rows_states[0]]
            return rows_logits[0].view(1, -1), (new_states, rows_ctx[0].view(1, H))
        new_states = [tuple(torch.stack([r[i][j] for r in rows_states]).unsqueeze(0) for j in range(2))
                      for i in range(L)]
        return torch.stack(rows_logits), (new_states, torch.stack(rows_ctx))
