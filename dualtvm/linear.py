"""A dense layer outside the recurrence (a decoder's output projection), compiled like the big GEMV.

A GNMT-like decoder spends a token's time in its recurrent layers *and* in the output projection
(vocabulary × hidden, 32 MB at 7882 × 1024).  Left in PyTorch, that GEMV took 2.2 ms cold
where the same batch-1 GEMV with the dense decoder step's schedule takes 1.2 ms (cache flushed,
side by side, 2 threads): the compiled backends compile it too, so that the part the dual-module
layers cannot shorten (Amdahl) is not inflated by the slower engine.  It is the dense ``gemv``
kernel of :mod:`dualtvm.kernels` plus the bias, in one Relax function ``linear(x, W, b)``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from .kernels import gemv, padded
from .target import TargetSpec, parse_target, refuse_foreign_library

log = logging.getLogger(__name__)

LINEAR_VERSION = 1


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

    f = scheduled(gemv(rows, padded(cols), f"gemv_out_{rows}x{padded(cols)}"), target, database)
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


def build_linear(weight: np.ndarray, bias: np.ndarray, target: str | TargetSpec, out_dir: str | os.PathLike,
                 database=None) -> Path:
    """Compile ``y = W x + b`` for ``target`` and write ``linear.so``, ``params.npz`` and ``manifest.json``."""
    import tvm

    from .checkpoint import git_revision

    tgt = parse_target(target).with_default_cores()
    rows, cols = weight.shape
    if bias.shape != (rows,):
        raise ValueError(f"bias has shape {bias.shape}, the weight has {rows} rows")
    ex = tvm.compile(build_linear_ir(rows, cols, tgt, database), target=tgt.to_tvm())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ex.export_library(str(out / "linear.so"))
    w = np.zeros((rows, padded(cols)), np.float32)
    w[:, :cols] = weight
    np.savez(out / "params.npz", w=w, b=np.asarray(bias, np.float32))
    manifest = {"version": LINEAR_VERSION, "rows": rows, "cols": cols, "target": tgt.to_dict(), "target_name": tgt.name,
                "weight_hash": weight_hash(weight, bias), "git": git_revision()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log.info("compiled the %d x %d linear layer for %s into %s", rows, cols, tgt.name, out)
    return out


def built_for(folder: Path, weight: np.ndarray, bias: np.ndarray) -> bool:
    """Whether ``folder`` holds a build of exactly these parameters in this format."""
    f = Path(folder) / "manifest.json"
    if not f.exists():
        return False
    m = json.loads(f.read_text())
    return m.get("version") == LINEAR_VERSION and m.get("weight_hash") == weight_hash(weight, bias)


class CompiledLinear:
    """A built linear layer; ``run(x)`` on a padded vector (TVM tensor or DLPack, e.g. torch) → ``rows`` outputs.
    The weight matrix sits on huge pages unless ``huge_pages=False`` (:mod:`dualtvm.memory`)."""

    def __init__(self, build_dir: str | os.PathLike, huge_pages: bool = True) -> None:
        import tvm
        from tvm import relax

        from .memory import weight_tensor

        d = Path(build_dir)
        for f in ("manifest.json", "linear.so", "params.npz"):
            if not (d / f).exists():
                raise FileNotFoundError(f"{d / f} is missing: not a dualtvm linear-layer build (build_linear)")
        self.manifest = json.loads((d / "manifest.json").read_text())
        refuse_foreign_library(parse_target(self.manifest["target"]), d / "linear.so")
        self.rows, self.cols = self.manifest["rows"], self.manifest["cols"]
        self.cols_padded = padded(self.cols)
        dev = tvm.cpu()
        raw = np.load(d / "params.npz")
        self._w, self._b = weight_tensor(raw["w"], dev, huge_pages), tvm.runtime.tensor(raw["b"], dev)
        self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(d / "linear.so")), dev)

    def run(self, x):
        return self._vm["linear"](x, self._w, self._b)
