"""A dense layer outside the recurrence (a decoder's output projection), compiled like the big GEMV.

A GNMT-like decoder spends a token's time in its recurrent layers *and* in the output projection
(vocabulary × hidden, 32 MB at 7882 × 1024).  Left in PyTorch, that GEMV took 2.2 ms cold
where the same batch-1 GEMV with the dense decoder step's schedule takes 1.2 ms (cache flushed,
side by side, 2 threads): the compiled backends compile it too, so that the part the dual-module
layers cannot shorten (Amdahl) is not inflated by the slower engine.  It is the dense ``gemv``
kernel of :mod:`dualtvm.kernels` plus the bias, in one Relax function ``linear(x, W, b)``.

With a little module (:mod:`dualtvm.output`) the build is the *dual* output projection instead: Relax
``dual_linear(x, W, b, P_lo, P_hi, W_LL, scales, b_LL, θ)`` runs steps 1–2 of Algorithm 1 with the layers'
kernels, the argmax band mask, the masked GEMV over the sensitive rows and eq. 1, and returns the logits with
the number of sensitive rows.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from .kernels import OutputShape, gemv, output_kernels, pack_little_weight, padded
from .manifest import load_manifest, reusable_manifest, write_manifest
from .target import TargetSpec, parse_target
from .tuning import schedule_fingerprint

log = logging.getLogger(__name__)

LINEAR_VERSION = 3  # 2: dual output projections (manifest "dual"); 3: the projections' row scales
DUAL_LINEAR_PARAMS = ["p_lo", "p_hi", "p_row_scale", "w_ll", "scale", "b_ll"]  # after w, b: pack_dual_linear's arrays


def weight_hash(weight: np.ndarray, bias: np.ndarray) -> str:
    """sha256 of the layer's parameters: a build folder is reused only for these weights."""
    h = hashlib.sha256()
    for a in (weight, bias):
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()


def build_linear_ir(rows: int, cols: int, target: TargetSpec, database=None):
    """IRModule with ``linear(x (cols_p,), W (rows, cols_p), b (rows,)) -> W x + b`` (cols padded to the kernels' width)."""
    from tvm import relax

    from .decoder import scheduled

    f = scheduled(gemv(rows, padded(cols), _gemv_name(rows, cols)), target, database)
    bb = relax.BlockBuilder()
    gv = bb.add_func(f, "gemv")
    ten = relax.TensorType
    x, w, b = (relax.Var("x", ten((padded(cols),), "float32")), relax.Var("W", ten((rows, padded(cols)), "float32")),
               relax.Var("b", ten((rows,), "float32")))
    with bb.function("linear", [x, w, b]):
        with bb.dataflow():
            y = bb.emit(relax.call_tir(gv, [w, x], ten((rows,), "float32")))
            out = bb.emit_output(bb.emit(relax.op.add(y, b)))
        bb.emit_func_output(out)
    return bb.get()


def _gemv_name(rows: int, cols: int) -> str:
    return f"gemv_out_{rows}x{padded(cols)}"


def _kernel_names(manifest: dict) -> list[str]:
    """The kernels a build with this manifest calls (for its tuning-log fingerprint)."""
    if manifest.get("dual"):
        m = manifest
        return list(output_kernels(OutputShape(m["rows"], m["cols"], m["k"], m["little_bits"], m["int8_codes"])))
    return [_gemv_name(manifest["rows"], manifest["cols"])]


def build_linear(weight: np.ndarray, bias: np.ndarray, target: str | TargetSpec, out_dir: str | os.PathLike,
                 database=None) -> Path:
    """Compile ``y = W x + b`` for ``target`` and write ``linear.so``, ``params.npz`` and ``manifest.json``."""
    from .decoder import vm_executable

    tgt = parse_target(target).with_default_cores()
    rows, cols = weight.shape
    if bias.shape != (rows,):
        raise ValueError(f"bias has shape {bias.shape}, the weight has {rows} rows")
    ex = vm_executable(build_linear_ir(rows, cols, tgt, database), tgt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ex.export_library(str(out / "linear.so"))
    w = np.zeros((rows, padded(cols)), np.float32)
    w[:, :cols] = weight
    np.savez(out / "params.npz", w=w, b=np.asarray(bias, np.float32))
    manifest = {"version": LINEAR_VERSION, "rows": rows, "cols": cols, "target": tgt.to_dict(), "target_name": tgt.name,
                "weight_hash": weight_hash(weight, bias)}
    write_manifest(out, {**manifest, "schedules": schedule_fingerprint(database, _kernel_names(manifest))})
    log.info("compiled the %d x %d linear layer for %s into %s", rows, cols, tgt.name, out)
    return out


def build_dual_linear_ir(s: OutputShape, target: TargetSpec, database=None):
    """IRModule with ``dual_linear``: logits (rows,) and the sensitive-row count (1,) of a padded input (cols_p,)."""
    from tvm import relax

    from .decoder import scheduled

    bb = relax.BlockBuilder()
    gvs = {name: bb.add_func(scheduled(f, target, database), name) for name, f in output_kernels(s).items()}
    x = relax.Var("x", relax.TensorType((s.cols_p,), "float32"))
    params = dual_linear_inputs(s)
    with bb.function("dual_linear", [x, *params]):
        with bb.dataflow():
            out, count = emit_dual_linear(bb, gvs, s, x, params)
            res = bb.emit_output(relax.Tuple([out, count]))
        bb.emit_func_output(res)
    return bb.get()


def dual_linear_inputs(s: OutputShape, prefix: str = "") -> list:
    """Relax vars of the dual output projection's parameters (W, b, P_lo, P_hi, the rows' scales, W_LL, scale, b_LL,
    θ)."""
    from tvm import relax

    ten = relax.TensorType
    return [relax.Var(prefix + "W", ten((s.rows, s.cols_p), "float32")), relax.Var(prefix + "b", ten((s.rows,), "float32")),
            relax.Var(prefix + "P_lo", ten((s.k, s.half_p), "int8")), relax.Var(prefix + "P_hi", ten((s.k, s.half_p), "int8")),
            relax.Var(prefix + "P_row_scale", ten((2 * s.k,), "float32")),
            relax.Var(prefix + "W_LL", ten(*s.little_weight_shape(s.rows))),
            relax.Var(prefix + "scale", ten((s.rows,), "float32")), relax.Var(prefix + "b_LL", ten((s.rows,), "float32")),
            relax.Var(prefix + "theta", ten((1,), "float32"))]


def emit_dual_linear(bb, gvs: dict, s: OutputShape, x, params: list):
    """Emit the dual output projection of ``x`` (:func:`split_layout`, ``cols_p``) into a Relax dataflow block:
    steps 1–2 of Algorithm 1, the band mask, the masked GEMV and eq. 1.  ``params``: :func:`dual_linear_inputs`.
    Returns (logits, sensitive-row count)."""
    from tvm import relax

    from .decoder import emit_little

    ten = relax.TensorType
    t = s.tag
    w, b, p_lo, p_hi, p_row_scale, w_ll, scale, b_ll, theta = params
    halves = bb.emit(relax.op.split(x, 2))
    lo, hi = (bb.emit(relax.TupleGetItem(halves, j)) for j in range(2))
    pre = emit_little(bb, gvs, s, s.little_tag, [p_lo, p_hi, p_row_scale, lo, hi], [w_ll, scale, b_ll], s.rows)
    m = bb.emit(relax.call_tir(gvs[f"band_mask_{t}"], [pre, theta],
                               [ten((s.rows,), "int32"), ten((s.rows,), "int32"), ten((1,), "int32")]))
    rows, pos, count = (bb.emit(relax.TupleGetItem(m, j)) for j in range(3))
    yc = bb.emit(relax.call_tir(gvs[f"masked_gemv_{t}"], [w, x, rows, count], ten((s.rows,), "float32")))
    out = bb.emit(relax.call_tir(gvs[f"band_assemble_{t}"], [pre, yc, pos, b], ten((s.rows,), "float32")))
    return out, count


def split_layout(a, s: OutputShape, out=None):
    """Columns of ``a`` (…, cols) in the dual output projection's input layout: [low half, 0…, high half, 0…],
    into ``out`` (zeros, numpy or torch) or a new numpy array."""
    out = np.zeros(a.shape[:-1] + (s.cols_p,), a.dtype) if out is None else out
    out[..., : s.split] = a[..., : s.split]
    out[..., s.half_p : s.half_p + s.cols - s.split] = a[..., s.split :]
    return out


def pack_dual_linear(weight: np.ndarray, bias: np.ndarray, little, s: OutputShape) -> dict[str, np.ndarray]:
    """The dual output projection's parameters in its kernels' layouts, in :func:`dual_linear_inputs` order
    (θ apart: it is the run-time knob)."""
    from .projection import pair_row_scales
    from .quantize import kernel_codes

    codes, scale = kernel_codes(little.weight)
    pad = lambda a: np.pad(a, ((0, 0), (0, s.half_p - a.shape[1])))  # noqa: E731
    return {"w": split_layout(np.asarray(weight, np.float32), s), "b": np.asarray(bias, np.float32),
            "p_lo": pad(little.proj_lo.codes), "p_hi": pad(little.proj_hi.codes),
            "p_row_scale": pair_row_scales(little.proj_lo, little.proj_hi),
            "w_ll": pack_little_weight(s, codes),
            "scale": scale, "b_ll": little.bias.numpy().astype(np.float32)}


def build_dual_linear(weight: np.ndarray, bias: np.ndarray, little, target: str | TargetSpec,
                      out_dir: str | os.PathLike, database=None) -> Path:
    """Compile the dual output projection of ``y = W x + b`` with ``little`` (an :class:`~dualtvm.output.OutputLittle`
    fitted to these weights) for ``target``; writes ``linear.so``, ``params.npz``, ``little_output.npz`` and
    ``manifest.json``."""
    from .artefact import save_output_little
    from .decoder import vm_executable

    tgt = parse_target(target).with_default_cores()
    rows, cols = weight.shape
    if little.big_hash != weight_hash(weight, bias):
        raise ValueError("the output little module was fitted to other weights (hash mismatch)")
    s = OutputShape(rows, cols, little.k, little.weight.bits).for_target(tgt)
    s.check_target(tgt)
    ex = vm_executable(build_dual_linear_ir(s, tgt, database), tgt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ex.export_library(str(out / "linear.so"))
    np.savez(out / "params.npz", **pack_dual_linear(weight, bias, little, s))
    save_output_little(out / "little_output.npz", little)
    manifest = {"version": LINEAR_VERSION, "dual": True, "rows": rows, "cols": cols, "k": s.k,
                "little_bits": s.little_bits, "int8_codes": s.int8_codes, "target": tgt.to_dict(),
                "target_name": tgt.name, "weight_hash": weight_hash(weight, bias), "little_hash": little.content_hash()}
    write_manifest(out, {**manifest, "schedules": schedule_fingerprint(database, _kernel_names(manifest))})
    log.info("compiled the %d x %d dual output projection (k=%d per half) for %s into %s", rows, cols, s.k, tgt.name,
             out)
    return out


def built_for(folder: Path, weight: np.ndarray, bias: np.ndarray, little=None, database=None) -> bool:
    """Whether ``folder`` holds a build of exactly these parameters (and this output little module, for a dual
    build) in this format, scheduled as the tuning log ``database`` now says."""
    m = reusable_manifest(folder, LINEAR_VERSION)
    return (m is not None and m.get("weight_hash") == weight_hash(weight, bias)
            and m.get("dual", False) == (little is not None)
            and (little is None or m.get("little_hash") == little.content_hash())
            and m.get("schedules") == schedule_fingerprint(database, _kernel_names(m)))


class CompiledLinear:
    """A built linear layer; ``run(x)`` on a padded vector (TVM tensor or DLPack, e.g. torch) → ``rows`` outputs.

    A dual build (:func:`build_dual_linear`) takes the input in :func:`split_layout` (``cols_padded`` wide),
    starts with every row sensitive (:meth:`set_insensitive_ratio`) and keeps the last step's sensitive-row
    count in ``last_count``.  The weight matrix sits on huge pages unless ``huge_pages=False``
    (:mod:`dualtvm.memory`)."""

    def __init__(self, build_dir: str | os.PathLike, huge_pages: bool = True) -> None:
        import tvm
        from tvm import relax

        from .memory import weight_tensors

        d = Path(build_dir)
        self.manifest = m = load_manifest(d, "linear.so", LINEAR_VERSION, "dualtvm linear-layer build (build_linear)")
        self.rows, self.cols = m["rows"], m["cols"]
        self.dual = bool(m.get("dual", False))
        dev = tvm.cpu()
        raw = np.load(d / "params.npz")
        self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(d / "linear.so")), dev)
        names = ["w", "b"] + (DUAL_LINEAR_PARAMS if self.dual else [])
        tensors = weight_tensors({n: raw[n] for n in names}, dev, huge_pages)
        params = [tensors[n] for n in names]
        self.last_count = None
        if self.dual:
            from .artefact import load_output_little

            self.shape = OutputShape(self.rows, self.cols, m["k"], m["little_bits"], m["int8_codes"])
            self.cols_padded = self.shape.cols_p
            self.little = load_output_little(d / "little_output.npz", m["weight_hash"])
            self._fn, self._params = self._vm["dual_linear"], params + [None]
            self.set_insensitive_ratio(0.0)
        else:
            self.cols_padded = padded(self.cols)
            self._fn, self._params = self._vm["linear"], params

    def set_insensitive_ratio(self, ratio: float) -> None:
        """The dual build's θ for ``ratio`` (its little module's calibration)."""
        import tvm

        if not self.dual:
            raise ValueError("a dense linear build has no insensitive ratio: build it with a little module")
        self._params[-1] = tvm.runtime.tensor(np.array([self.little.theta(ratio)], np.float32), tvm.cpu())

    def run(self, x):
        out = self._fn(x, *self._params)
        if not self.dual:
            return out
        self.last_count = out[1]
        return out[0]
