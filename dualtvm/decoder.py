"""The Relax decode step: L stacked (dual-module or dense) layers calling the scheduled kernels.

One Relax function ``step`` takes the layer-0 input, every layer's state, weights and
thresholds (lo/hi per mask row, on the pre-activation: the insensitive ratio is a run-time
input, no rebuild) and returns the top output, the new states and each layer's ``pos`` vector (row i sensitive iff pos[i] ≥ 0).  Weights
are inputs too, held by :class:`CompiledDecoder` as TVM tensors, so one ``.so`` serves any
weights of its shapes.  Kernels come from :mod:`dualtvm.kernels`, schedules from
``schedules`` (or a tuning database, whichever is faster).
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .kernels import LayerShape, LittlePath, layer_kernels, pack_little_weight
from .little import BigLayer, LittleModule
from .projection import pair_row_scales
from .quantize import kernel_codes
from .target import TargetSpec, parse_target

log = logging.getLogger(__name__)

MANIFEST_VERSION = 5  # 2: mask bounds on the pre-activation, no a_LL tensor; 3: the projection's row scales;
# 4: two libraries (LIBRARIES); 5: a GRU layer's [W_ih | W_hh] as one matrix ``w`` (kernels.gemv_pair)

# The step's libraries by the VM's exec mode.  ``decoder.so`` runs ``step`` as native code ("compiled"): the bytecode
# VM interprets 77 instructions per dual LSTM step (26 check its 13 inputs, 6 call kernels, the rest allocate and
# build tuples) against the dense step's 32, and interpreting them cost 0.014 ms warm / 0.024 ms cold of an LSTM-1500
# dual step (1.8 % / 2.1 %, side by side; the dense step: no change).  A compiled step calls no instrument, so
# ``decoder-bytecode.so`` holds the same kernels on the bytecode VM: the one :mod:`dualtvm.bench`'s in-step breakdown
# and ``profile_step.py`` time kernel by kernel.
LIBRARIES = {"compiled": "decoder.so", "bytecode": "decoder-bytecode.so"}


@dataclass
class DecoderSpec:
    """Shapes of a stacked decoder: ``residual[i]`` adds layer i's input to its output (GNMT)."""

    layers: list[LayerShape]
    residual: list[bool] = field(default_factory=list)
    dual: bool = True

    def __post_init__(self) -> None:
        if not self.residual:
            self.residual = [False] * len(self.layers)
        for i in range(1, len(self.layers)):
            if self.layers[i].dxp != self.layers[i - 1].hp:
                raise ValueError(f"layer {i} takes {self.layers[i].input_size} inputs but layer {i - 1} gives "
                                 f"{self.layers[i - 1].hidden}")
        for i, r in enumerate(self.residual):
            if r and self.layers[i].dxp != self.layers[i].hp:
                raise ValueError(f"residual layer {i} needs input size == hidden size")
        rules = {}
        for s in self.layers:  # layers of one shape share their kernels, the mask kernel included
            if rules.setdefault(s.tag, s.mask_rule) != s.mask_rule:
                raise ValueError(f"layers of shape {s.tag} with different mask rules: not supported in one decoder")

    def to_json(self) -> dict:
        return {"layers": [asdict(l) for l in self.layers], "residual": self.residual, "dual": self.dual}

    @classmethod
    def from_json(cls, d: dict) -> "DecoderSpec":
        return cls([LayerShape(**l) for l in d["layers"]], d["residual"], d["dual"])


def layer_param_names(s: LayerShape, dual: bool) -> list[str]:
    """Weights of one layer in the order the step takes them."""
    names = ["w", "bias"] if s.rnn_type == "LSTM" else ["w", "b_ih", "b_hh"]
    if dual:
        names += ["px", "ph", "p_row_scale", "wq", "wscale", "bias_ll", "lo", "hi"]
    return names


def state_names(s: LayerShape) -> list[str]:
    return ["h", "c"] if s.rnn_type == "LSTM" else ["h"]


def pack_layer(s: LayerShape, big: BigLayer, little: LittleModule | None) -> dict[str, np.ndarray]:
    """Big and little weights in the kernels' padded layouts (zeros in the padding)."""
    def pad_cols(a: np.ndarray, cols: int) -> np.ndarray:
        out = np.zeros((a.shape[0], cols), dtype=a.dtype)
        out[:, : a.shape[1]] = a
        return out

    w_ih = pad_cols(big.w_ih.numpy().astype(np.float32), s.dxp)
    w_hh = pad_cols(big.w_hh.numpy().astype(np.float32), s.hp)
    # [W_ih | W_hh] for both cells; a GRU reads each half into its own output (kernels.gemv_pair, masked_gemv_pair)
    out: dict[str, np.ndarray] = {"w": np.concatenate([w_ih, w_hh], axis=1)}
    if s.rnn_type == "LSTM":
        out["bias"] = (big.b_ih + big.b_hh).numpy().astype(np.float32)
    else:
        out["b_ih"], out["b_hh"] = big.b_ih.numpy().astype(np.float32), big.b_hh.numpy().astype(np.float32)
    if little is not None:
        if little.weight.bits != s.little_bits:
            raise ValueError(f"layer built for INT{s.little_bits} little weights, the little module has INT{little.weight.bits}")
        if little.mask_rule != s.mask_rule:
            raise ValueError(f"layer built for the {s.mask_rule!r} mask rule, the little module is calibrated for "
                             f"{little.mask_rule!r}")
        codes, scale = kernel_codes(little.weight)
        out["px"] = pad_cols(little.proj_x.codes, s.dxp)
        out["ph"] = pad_cols(little.proj_h.codes, s.hp)
        out["p_row_scale"] = pair_row_scales(little.proj_x, little.proj_h)
        out["wq"] = pack_little_weight(s, codes)
        out["wscale"] = scale
        out["bias_ll"] = little.bias.numpy().astype(np.float32)
        out["lo"] = np.full(s.n, -np.inf, np.float32)
        out["hi"] = np.full(s.n, np.inf, np.float32)
    return out


def scheduled(f, target: TargetSpec, database=None):
    """A kernel definition scheduled for ``target``: the tuning log's choice where it has one, else the default."""
    from schedules import default_kernel

    from .tuning import best_from_database

    tuned = best_from_database(database, f, target) if database is not None else None
    return tuned if tuned is not None else default_kernel(f, target.num_cores, target.required_features())


def _kernel_funcs(spec: DecoderSpec, target: TargetSpec, database=None) -> dict:
    """Scheduled PrimFuncs of every layer's kernels (a kernel shared by layers of one shape once)."""
    funcs = {}
    for s in spec.layers:
        for name, f in layer_kernels(s, spec.dual).items():
            if name not in funcs:
                funcs[name] = scheduled(f, target, database)
    return funcs


def build_ir(spec: DecoderSpec, target: TargetSpec, database=None):
    """The IRModule: scheduled kernels + the Relax ``step`` function."""
    from tvm import relax

    bb = relax.BlockBuilder()
    funcs = _kernel_funcs(spec, target, database)
    gvs = {name: bb.add_func(f, name) for name, f in funcs.items()}

    def ten(shape, dtype="float32"):
        return relax.TensorType(shape, dtype)

    s0 = spec.layers[0]
    x_in = relax.Var("x", ten((s0.dxp,)))
    params = [x_in]
    layer_vars = [layer_inputs(f"l{i}", s, spec.dual) for i, s in enumerate(spec.layers)]
    for st, ws in layer_vars:
        params += list(st.values()) + list(ws.values())
    with bb.function("step", params):
        with bb.dataflow():
            x = x_in
            outs_state, counts = [], []
            for i, (s, (st, ws)) in enumerate(zip(spec.layers, layer_vars)):
                h_new, new_state, pos = emit_layer(bb, gvs, s, spec.dual, x, st, ws)
                outs_state += new_state
                counts += [pos] if pos is not None else []
                x = bb.emit(relax.op.add(h_new, x)) if spec.residual[i] else h_new
            out = bb.emit_output(relax.Tuple([x, *outs_state, *counts]))
        bb.emit_func_output(out)
    return bb.get()


def layer_inputs(prefix: str, s: LayerShape, dual: bool) -> tuple[dict, dict]:
    """Relax vars of one layer's state and weights (``<prefix>_<name>``), in the order the step takes them."""
    from tvm import relax

    shapes = _param_shapes(s, dual)
    st = {n: relax.Var(f"{prefix}_{n}", relax.TensorType((s.hp,), "float32")) for n in state_names(s)}
    ws = {n: relax.Var(f"{prefix}_{n}", relax.TensorType(*shapes[n])) for n in layer_param_names(s, dual)}
    return st, ws


def emit_layer(bb, gvs: dict, s: LayerShape, dual: bool, x, st: dict, ws: dict):
    """Emit one layer's step (Algorithm 1 for a dual layer, the dense GEMV and cell otherwise) into a Relax
    dataflow block: input ``x``, state vars ``st`` (``state_names``), weight vars ``ws`` (``layer_param_names``).
    Returns (new h, [new state vars], the mask's ``pos`` vector or None for a dense layer)."""
    from tvm import relax

    ten = relax.TensorType
    t = s.tag

    def call(name, args, sinfo):
        return bb.emit(relax.call_tir(gvs[f"{name}_{t}"], args, sinfo))

    pos = None
    if dual:
        pre = emit_little(bb, gvs, s, s.little_tag, [ws["px"], ws["ph"], ws["p_row_scale"], x, st["h"]],
                          [ws["wq"], ws["wscale"], ws["bias_ll"]], 4 * s.hidden)
        weighed = [st["c" if s.rnn_type == "LSTM" else "h"]] if s.mask_rule == "contribution" else []  # scores weigh by it
        m = call("mask", [pre, *weighed, ws["lo"], ws["hi"]],
                 [ten((s.n,), "int32"), ten((s.n,), "int32"), ten((1,), "int32")])
        rows, pos, count = (bb.emit(relax.TupleGetItem(m, j)) for j in range(3))
    if s.rnn_type == "LSTM":
        xh = call("concat", [x, st["h"]], ten((s.dxp + s.hp,), "float32"))
        if dual:
            yc = call("masked_gemv", [ws["w"], xh, rows, count], ten((s.n,), "float32"))
            res = call("lstm_assemble", [pre, yc, pos, ws["bias"], st["c"]], [ten((s.hp,), "float32")] * 2)
        else:
            y = call("gemv", [ws["w"], xh], ten((s.n,), "float32"))
            res = call("lstm_dense_cell", [y, ws["bias"], st["c"]], [ten((s.hp,), "float32")] * 2)
        h_new, c_new = bb.emit(relax.TupleGetItem(res, 0)), bb.emit(relax.TupleGetItem(res, 1))
        return h_new, [h_new, c_new], pos
    if dual:
        yc = call("masked_gemv_pair", [ws["w"], x, st["h"], rows, count], [ten((s.n,), "float32")] * 2)
        ycx, ych = bb.emit(relax.TupleGetItem(yc, 0)), bb.emit(relax.TupleGetItem(yc, 1))
        h_new = call("gru_assemble", [pre, ycx, ych, pos, ws["b_ih"], ws["b_hh"], st["h"]], ten((s.hp,), "float32"))
    else:
        y = call("gemv_pair", [ws["w"], x, st["h"]], [ten((s.n,), "float32")] * 2)
        yx, yh = bb.emit(relax.TupleGetItem(y, 0)), bb.emit(relax.TupleGetItem(y, 1))
        h_new = call("gru_dense_cell", [yx, yh, ws["b_ih"], ws["b_hh"], st["h"]], ten((s.hp,), "float32"))
    return h_new, [h_new], pos


def emit_little(bb, gvs: dict, s: LittlePath, tag: str, project_args: list, weights: list, rows: int):
    """Emit steps 1–2 into a Relax dataflow block: the projection of ``project_args`` (P_x, P_h, the rows' scales,
    x, h) and the little GEMV with ``weights`` (W_LL, scales, b_LL) on ``s``'s path; returns y_LL (``rows``)."""
    from tvm import relax

    ten = relax.TensorType
    if s.codes:  # integer codes + their two scales
        zz = bb.emit(relax.call_tir(gvs[f"project_{tag}"], project_args, [ten((2 * s.kp4,), "int8"), ten((2,), "float32")]))
        z = [bb.emit(relax.TupleGetItem(zz, j)) for j in range(2)]
    else:
        z = [bb.emit(relax.call_tir(gvs[f"project_{tag}"], project_args, ten((s.k2p,), "float32")))]
    return bb.emit(relax.call_tir(gvs[f"little_gemv_{tag}"], [weights[0], *z, *weights[1:]], ten((rows,), "float32")))


def _param_shapes(s: LayerShape, dual: bool) -> dict[str, tuple]:
    shapes = {"w": ((s.n, s.dxp + s.hp),), "bias": ((s.n,),), "b_ih": ((s.n,),), "b_hh": ((s.n,),)}
    if dual:
        shapes.update({"px": ((s.k, s.dxp), "int8"), "ph": ((s.k, s.hp), "int8"), "p_row_scale": ((2 * s.k,),),
                       "wq": s.little_weight_shape(4 * s.hidden),
                       "wscale": ((4 * s.hidden,),), "bias_ll": ((4 * s.hidden,),), "lo": ((s.n,),), "hi": ((s.n,),)})
    return shapes


def without_kernels(mod, emptied: Callable[[str], bool] | None = None):
    """``build_ir``'s module with every kernel's body emptied (or those whose name ``emptied`` picks): the same step
    (its calls, allocations, input checks and tuples) doing no arithmetic, which times the VM's own share of a step,
    or what the step spends in the kernels emptied (``scripts/profile_step.py``)."""
    import tvm

    empty = tvm.tirx.Evaluate(tvm.tirx.const(0, "int32"))
    return tvm.IRModule({gv: f.with_body(empty) if isinstance(f, tvm.tirx.PrimFunc)
                         and (emptied is None or emptied(gv.name_hint)) else f
                         for gv, f in mod.functions.items()}, attrs=mod.attrs)


def vm_executable(mod, target: TargetSpec, exec_mode: str = "compiled"):
    """``relax.build`` a Relax module for ``target``: by default its functions compiled to native code, not
    interpreted as VM bytecode (measured in :data:`LIBRARIES`'s note); ``exec_mode="bytecode"`` for a VM whose
    calls an instrument sees."""
    from tvm import relax

    if exec_mode not in LIBRARIES:
        raise ValueError(f"exec_mode must be one of {sorted(LIBRARIES)}, got {exec_mode!r}")
    return relax.build(mod, target=target.to_tvm(), exec_mode=exec_mode)


def compile_decoder(spec: DecoderSpec, target: "str | TargetSpec", database=None) -> dict:
    """Compile the step for ``target``: {exec mode: executable}, one per :data:`LIBRARIES` entry."""
    target = parse_target(target)
    if spec.dual:
        for s in spec.layers:
            s.check_target(target)
    mod = build_ir(spec, target, database)
    return {mode: vm_executable(mod, target, mode) for mode in LIBRARIES}


def write_libraries(executables: dict, out_dir: str | os.PathLike) -> None:
    """``compile_decoder``'s executables into ``out_dir`` under their :data:`LIBRARIES` names."""
    for mode, ex in executables.items():
        ex.export_library(str(Path(out_dir) / LIBRARIES[mode]))


def export(executables: dict, spec: DecoderSpec, target: TargetSpec, out_dir: str | os.PathLike,
           params: list[dict[str, np.ndarray]], littles: list[LittleModule] | None, model_info: dict) -> Path:
    """Write the libraries (``compile_decoder``'s), ``params.npz`` (+ ``little.npz``) and ``manifest.json``."""
    from .artefact import save_little
    from .manifest import write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_libraries(executables, out)
    np.savez(out / "params.npz", **{f"l{i}_{k}": v for i, p in enumerate(params) for k, v in p.items()})
    if littles:
        save_little(out / "little.npz", littles, model_info)
    write_manifest(out, {"version": MANIFEST_VERSION, "spec": spec.to_json(), "target": target.to_dict(),
                         "target_name": target.name, "required_cpu_features": sorted(target.required_features()),
                         "model": model_info})
    return out
