"""Load and run a built decoder (``decoder.so`` + ``params.npz`` + ``manifest.json``; ``decoder-bytecode.so``
to profile it).

The insensitive ratio is a run-time knob: :meth:`CompiledDecoder.set_insensitive_ratio`
turns it into per-row thresholds from the calibration stored in ``little.npz`` — no rebuild.
Refuses to load a library whose target ISA this CPU lacks (it would die of SIGILL), or a
build for another model config.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from .decoder import LIBRARIES, MANIFEST_VERSION, DecoderSpec, layer_param_names, state_names
from .manifest import BuildError, load_manifest
from .target import parse_target
from .thresholds import Thresholds, check_ratio

log = logging.getLogger(__name__)


class CompiledDecoder:
    """A compiled decode step with its weights; ``step(x, state)`` → (output, new state).

    Its weights (little module, projection and thresholds too) sit on 2 MB pages unless ``huge_pages=False``
    (:mod:`dualtvm.memory`).
    """

    def __init__(self, build_dir: str | os.PathLike, expect_model: dict | None = None, huge_pages: bool = True) -> None:
        import tvm

        from .memory import weight_tensors

        d = Path(build_dir)
        self.manifest = load_manifest(d, LIBRARIES["compiled"], MANIFEST_VERSION,
                                      "dualtvm build folder (run scripts/build.py)")
        target = parse_target(self.manifest["target"])
        if expect_model is not None:
            built = {k: self.manifest["model"].get(k) for k in expect_model}
            if built != expect_model:
                raise BuildError(f"{d} was built for model {built}, not {expect_model}")
        self.spec = DecoderSpec.from_json(self.manifest["spec"])
        self.build_dir, self.huge_pages = d, huge_pages
        self.target = target
        self.dev = tvm.cpu()
        self._lib = tvm.runtime.load_module(str(d / LIBRARIES["compiled"]))
        self._local = threading.local()  # a Relax VM keeps registers: one per calling thread
        raw = np.load(d / "params.npz")
        self.params = [{n: raw[f"l{i}_{n}"] for n in layer_param_names(s, self.spec.dual)}
                       for i, s in enumerate(self.spec.layers)]
        flat = weight_tensors({f"l{i}_{n}": v for i, p in enumerate(self.params) for n, v in p.items()}, self.dev,
                              huge_pages)
        self._tensors = [{n: flat[f"l{i}_{n}"] for n in p} for i, p in enumerate(self.params)]
        # run()'s per-layer (state count, weight tensors in call order): fixed, since updates are in place
        self._layer_args = [(len(state_names(s)), [self._tensors[i][n] for n in layer_param_names(s, self.spec.dual)])
                            for i, s in enumerate(self.spec.layers)]
        self.littles = None
        if self.spec.dual and (d / "little.npz").exists():
            from .artefact import load_little

            self.littles, _ = load_little(d / "little.npz")

    @property
    def vm(self):
        """This thread's VirtualMachine over the shared library (VMs are not re-entrant)."""
        from tvm import relax

        vm = getattr(self._local, "vm", None)
        if vm is None:
            vm = self._local.vm = relax.VirtualMachine(self._lib, self.dev)
        return vm

    def instrumentable_vm(self):
        """A new VirtualMachine over the build's bytecode library (``decoder.LIBRARIES``): the same kernels and
        weights as :attr:`vm`, one call at a time, so ``set_instrument`` sees each kernel call."""
        import tvm
        from tvm import relax

        lib = self.build_dir / LIBRARIES["bytecode"]
        if not lib.exists():
            raise BuildError(f"{lib} is missing: rebuild {self.build_dir} to profile its kernels")
        return relax.VirtualMachine(tvm.runtime.load_module(str(lib)), self.dev)

    def vm_only(self):
        """A VirtualMachine whose ``step`` is this build's with every kernel emptied (compiled here from the build's
        spec for its target: seconds): run with this decoder's weights and state, it costs what the step spends
        outside its kernels, the VM's calls, allocations and checks."""
        from tvm import relax

        from .decoder import build_ir, vm_executable, without_kernels

        return relax.VirtualMachine(vm_executable(without_kernels(build_ir(self.spec, self.target)), self.target),
                                    self.dev)

    def twin(self) -> "CompiledDecoder":
        """The same build over its own copy of the weights, at the same thresholds: another cell of the same
        shapes (the cold-cache benchmark runs it between the sweep and the timed step, ``bench.measure``)."""
        other = CompiledDecoder(self.build_dir, huge_pages=self.huge_pages)
        for i, tensors in enumerate(self._tensors):
            for name in ("lo", "hi") if self.spec.dual else ():
                other._set(i, name, tensors[name].numpy())
        return other

    # ------------------------------------------------------------------ knobs
    def set_thresholds(self, per_layer: list[Thresholds]) -> None:
        for i, (s, th) in enumerate(zip(self.spec.layers, per_layer)):
            lo, hi = mask_bounds(s, th)
            self._set(i, "lo", lo)
            self._set(i, "hi", hi)

    def set_insensitive_ratio(self, ratio: "float | list") -> None:
        """One ratio, or one per layer (float or {gate: ratio}), mapped through the stored calibration."""
        if not self.spec.dual:
            raise BuildError("this is a dense build: it has no insensitive ratio")
        if self.littles is None:
            raise BuildError("build has no little.npz calibration: use set_thresholds")
        self.set_thresholds(ratio_thresholds(self.spec.layers, self.littles, ratio))

    def _set(self, layer: int, name: str, value: np.ndarray) -> None:
        """In place: the tensor stays where :func:`~dualtvm.memory.weight_tensors` put it."""
        self._tensors[layer][name].copyfrom(np.ascontiguousarray(value, dtype=np.float32))

    # ------------------------------------------------------------------ running
    def init_state(self) -> list[np.ndarray]:
        return [np.zeros(s.hp, np.float32) for s in self.spec.layers for _ in state_names(s)]

    def step(self, x, state: list | None = None, check_finite: bool = True):
        """One decode step on numpy/torch vectors; returns (output (hidden,), new state list, masks).

        ``masks[l]`` is layer l's boolean sensitive-row mask (empty list for a dense build).
        """
        import tvm

        s0 = self.spec.layers[0]
        x = _as_numpy(x)
        if x.shape != (s0.input_size,) and x.shape != (s0.dxp,):
            raise ValueError(f"input has shape {x.shape}, the decoder takes ({s0.input_size},)")
        if check_finite and not np.isfinite(x).all():
            raise FloatingPointError("input contains NaN or Inf; refusing to propagate it into the state")
        xp = np.zeros(s0.dxp, np.float32)
        xp[: x.shape[0]] = x[: s0.dxp]
        state = [_pad(_as_numpy(v), s.hp) for v, s in zip(state, self._state_layers())] if state else self.init_state()
        if check_finite and not all(np.isfinite(v).all() for v in state):
            raise FloatingPointError("state contains NaN or Inf")
        out = self.run(tvm.runtime.tensor(xp, self.dev), [tvm.runtime.tensor(v, self.dev) for v in state])
        n_state = len(state)
        top = self.spec.layers[-1]
        new_state = [out[1 + j].numpy() for j in range(n_state)]
        masks = [out[1 + n_state + j].numpy() >= 0 for j in range(len(self.spec.layers))] if self.spec.dual else []
        return out[0].numpy()[: top.hidden], new_state, masks

    def run(self, x, state: list, vm=None) -> list:
        """The fast path under :meth:`step`: no checks, no copies, no padding.

        ``x`` and ``state`` are padded vectors (``dxp`` and ``hp`` long) as TVM tensors or anything
        with ``__dlpack__`` (torch tensors pass zero-copy); returns ``[output, *new state, *masks]``
        (a mask holds the row's position, -1 where insensitive) as TVM tensors, or as torch tensors when
        given torch ones (tvm-ffi converts them back, zero-copy).  Feed the returned state back as is.
        ``vm``: another VirtualMachine over this library.
        """
        return self.run_with(self._own_step() if vm is None else vm["step"], x, state)

    def run_with(self, step_fn, x, state: list) -> list:
        """:meth:`run` through ``step_fn``, a VM's ``step`` the caller looked up once (each look-up builds a
        new closure)."""
        args = [x]
        k = 0
        for n, weights in self._layer_args:
            args += state[k: k + n]
            args += weights
            k += n
        return list(step_fn(*args))

    def _own_step(self):
        """This thread's VM's ``step``, looked up once (each look-up builds a new closure)."""
        fn = getattr(self._local, "step", None)
        if fn is None:
            fn = self._local.step = self.vm["step"]
        return fn

    def _state_layers(self):
        return [s for s in self.spec.layers for _ in state_names(s)]


def ratio_thresholds(shapes: list, littles: list, ratio: "float | list") -> list[Thresholds]:
    """Per-layer thresholds for one insensitive ratio, or one per layer (float or {gate: ratio}), from each
    little module's stored calibration."""
    from .gates import layout

    per_layer = ratio if isinstance(ratio, (list, tuple)) else [ratio] * len(shapes)
    if len(per_layer) != len(shapes):
        raise ValueError(f"got {len(per_layer)} per-layer ratios for {len(shapes)} layers")
    ths = []
    for s, lm, r in zip(shapes, littles, per_layer):
        gates = layout(s.rnn_type).gates
        rs = r if isinstance(r, dict) else {g: r for g in gates}
        ths.append(Thresholds({g: lm.calibration[g].band(check_ratio(rs[g])) for g in gates}))
    return ths


def mask_bounds(s, th: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    """The mask kernel's per-row (lo, hi) bounds for layer shape ``s``: on y_LL (eq. 5's kernel tests the
    pre-activation), or on the score itself under the contribution rule."""
    from .gates import layout

    if s.mask_rule == "contribution":
        return th.row_bounds(layout(s.rnn_type).gates, s.hidden)
    return th.pre_activation_bounds(layout(s.rnn_type), s.hidden)


def _as_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float32).reshape(-1)


def _pad(v: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    out[: min(n, v.shape[0])] = v[:n]
    return out


def sequence_runner(dec: CompiledDecoder, xs: list[np.ndarray], vm=None):
    """(prepare, step) closures that run ``xs`` through the VM with the state fed back as TVM tensors.

    Inputs are converted once, outside the timed region; only the VM call is timed.  ``vm``: another
    VirtualMachine over ``dec``'s library (e.g. an instrumented one), instead of ``dec.vm``.
    """
    import tvm

    s0 = dec.spec.layers[0]
    inputs = []
    for x in xs:
        xp = np.zeros(s0.dxp, np.float32)
        xp[: len(x)] = x
        inputs.append(tvm.runtime.tensor(xp, dec.dev))
    n_state = sum(len(state_names(s)) for s in dec.spec.layers)
    box: dict = {}
    step_fn = vm["step"] if vm is not None else None  # once, not per timed step (dec's own VM: dec caches it)

    def prepare() -> None:
        box["state"] = [tvm.runtime.tensor(v, dec.dev) for v in dec.init_state()]

    def step(i: int) -> None:
        out = dec.run_with(step_fn or dec._own_step(), inputs[i], box["state"])
        box["state"] = out[1: 1 + n_state]
        box["out"] = out

    return prepare, step, box
