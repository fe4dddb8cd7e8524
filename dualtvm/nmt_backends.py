"""The translation loop's backends by name ("torch", "dual", "tvm-dense", "tvm-dual") and the compiled stand-ins
they put into :class:`~dualtvm.nmt.Backend`.

:class:`CompiledLayer` runs a compiled decode step (dense or dual-module) built for a decoder layer's shape, with
the ``nn.LSTM`` call signature.  The compiled backends also compile the output projection and attention's query
projection (:class:`CompiledProjection`, a dense GEMV: the same for dense and dual-module, or the dual-module
output projection); the rest of attention and the embeddings stay in PyTorch for every backend.  Builds live under
``build/<checkpoint stem>-<target name>[variant]/`` and are rebuilt when the weights, little modules or tuning
verdicts they were made from change.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from . import BUILD_ROOT
from .data import ParallelCorpus
from .dual import DualModuleLayer, MaskStats, set_layer_ratios
from .little import LittleConfig
from .models import Seq2Seq
from .nmt import Backend, Translator, checkpoint_stem, dual_decoder, dual_output, little_artefact
from .output import GATE as OUTPUT_GATE
from .output import DualOutput, OutputConfig
from .quantize import COMPILED_BITS

log = logging.getLogger(__name__)


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
                    "little_hash": d.little.content_hash() if kind == "dual" else None,
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


def _built_for(folder: Path, dual: DualModuleLayer, database=None) -> bool:
    """Whether ``folder`` holds a build of this layer's big weights (and, a dual build, of its current little
    module), made by this dualtvm's build format (an older format is rebuilt, not refused) under the tuning log
    ``database``'s current verdicts for its kernels."""
    from .decoder import MANIFEST_VERSION, DecoderSpec
    from .kernels import layer_kernels
    from .manifest import reusable_manifest
    from .tuning import schedule_fingerprint

    manifest = reusable_manifest(folder, MANIFEST_VERSION)
    if manifest is None:
        return False
    model, spec = manifest["model"], DecoderSpec.from_json(manifest["spec"])
    return (model.get("big_hash") == dual.big.weight_hash() and model.get("k") == dual.little.k
            and model.get("little_hash") == (dual.little.content_hash() if spec.dual else None)
            and model.get("schedules") == schedule_fingerprint(database, layer_kernels(spec.layers[0], spec.dual)))


def decoder_layers(tr: Translator, corpus: ParallelCorpus | None, backend: str, checkpoint: Path,
                   target: str = "llvm -mcpu=broadwell", ratio: float = 0.5,
                   build_root: Path | None = None, little_bits: int = 8,
                   mask_rule: str = "activation", projection: str = "sparse", k: int | None = None
                   ) -> list[nn.Module] | None:
    """Decoder layers of a backend (None = the big PyTorch LSTMs), dual ones set to ``ratio``.

    Little modules (W_LL in ``little_bits``: 8, the paper's, or 4; masks by ``mask_rule``, eq. 5's
    "activation" or "contribution", see :mod:`dualtvm.contribution`; ``projection``: eq. 2's "sparse" or "learned";
    ``k``: projected dims, eq. 3's at ε = 0.5 unless set) are cached beside the checkpoint
    (``<stem>.little[-k<k>][-w4][-contribution][-learned].npz``, ``LittleConfig.variant``; tied to the weights by
    hash); compiled layers under ``build/<stem>-<target-name><the same suffix>/`` (rebuilt when the little modules
    change).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if little_bits not in COMPILED_BITS:
        raise ValueError(f"little_bits must be 8 or 4 (the compiled little GEMVs), not {little_bits}")
    if backend == "torch":
        return None
    cfg = LittleConfig(bits=little_bits, mask_rule=mask_rule, projection=projection, k=k)
    duals = dual_decoder(tr, corpus, little_artefact(checkpoint, cfg), cfg)
    if backend == "dual":
        layers: list[nn.Module] = duals
    else:
        out = _build_folder(checkpoint, target, build_root, cfg.variant)
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


def _build_folder(checkpoint: Path, target: str, build_root: Path | None, suffix: str = "") -> Path:
    from .target import parse_target

    return Path(build_root or BUILD_ROOT) / f"{checkpoint_stem(checkpoint)}-{parse_target(target).name}{suffix}"


def decoder_backend(tr: Translator, corpus: ParallelCorpus | None, backend: str, checkpoint: Path,
                    target: str = "llvm -mcpu=broadwell", ratio: float = 0.5, build_root: Path | None = None,
                    little_bits: int = 8, output_ratio: float | None = None, fused_step: bool = False,
                    mask_rule: str = "activation", projection: str = "sparse", k: int | None = None,
                    output_little: OutputConfig | None = None) -> Backend:
    """A backend by name: :func:`decoder_layers`, plus for the compiled ones the compiled output projection
    (``build/<stem>-<target-name>/output``).

    ``output_ratio``: a dual backend also runs the dual-module output projection (:mod:`dualtvm.output`) at that
    insensitive ratio; its little module (``output_little``: default ``OutputConfig()``) is cached as
    ``<stem>.little-output[<variant>].npz``, its build in ``output-dual``.
    ``fused_step``: a compiled backend runs the whole decode step as one build (:mod:`dualtvm.gnmt_step`, two VM
    calls per token; ``step-dense``, ``step-dual``, ``step-dual-out``) instead of compiled pieces in the PyTorch loop.
    """
    dual_out = None
    if output_ratio is not None:
        if not backend.endswith("dual"):
            raise ValueError(f"output_ratio is for the dual-module backends, not {backend!r}")
        dual_out = dual_output(tr, corpus, checkpoint, output_little)
        dual_out.set_insensitive_ratio(output_ratio)
    if fused_step:
        return _step_backend(tr, corpus, backend, checkpoint, target, ratio, build_root,
                             LittleConfig(bits=little_bits, mask_rule=mask_rule, projection=projection, k=k), dual_out,
                             output_ratio)
    layers = decoder_layers(tr, corpus, backend, checkpoint, target, ratio, build_root, little_bits, mask_rule,
                            projection, k)
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
        duals = dual_decoder(tr, corpus, little_artefact(checkpoint, cfg), cfg)
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
