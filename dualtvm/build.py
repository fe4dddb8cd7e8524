"""The main job as a library function: fit the little module, compile dual + dense, export, verify."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import BUILD_FIT_ROWS, BUILD_ROOT
from .construct import build_dual
from .dual import DualModuleRNN
from .inputs import real_inputs, synthetic_segments
from .decoder import MANIFEST_VERSION, DecoderSpec, compile_decoder, export, pack_layer
from .kernels import LayerShape
from .little import LittleConfig, size_suffix, variant_suffix
from .manifest import reusable_manifest
from .registry import big_rnn, model_config, read_checkpoint
from .target import TargetSpec, check_runs_on_host, parse_target
from .tuning import TuningLog, load_database

log = logging.getLogger(__name__)

TARGET_LOG = "target"  # compile_dual's default database: the target's own tuning log, as build.py and tune.py use


@dataclass
class BuildConfig:
    model: str = "lstm-1500"
    target: str = "llvm -mcpu=broadwell"
    checkpoint: str | None = None
    out: str | None = None
    eps: float = 0.5  # eq. 3's ε, which sets k
    tuning_logs: str | None = None
    use_tuned: bool = True
    verify: bool = False
    steps: int = 100
    threads: int | None = None
    max_rows: int = BUILD_FIT_ROWS  # rows (samples × steps) the little modules are fitted on
    seed: int = 0
    corpus: str = "ptb"  # the text an LM checkpoint's little module is fitted on
    decoder_layer: int = 0  # which decoder layer of a seq2seq checkpoint (its inputs are recorded on Multi30k)
    data_dir: str | None = None
    little_bits: int = 8  # W_LL precision: INT8 (the paper's default) or INT4 (half the little bytes, Table 6)
    int8_codes: bool | None = None  # INT8 little GEMV on integer codes: None = where the target has AVX2; False = floats
    sigmoid_tails: str = "low"  # which saturated ends of a sigmoid gate may be insensitive (thresholds.SIGMOID_TAILS)
    mask_rule: str = "activation"  # what the mask tests: a_LL (eq. 5) or the contribution score (thresholds.MASK_RULES)
    projection: str = "sparse"  # the little module's projection: eq. 2's, or "learned" (projection.Projection.learned)
    k: int | None = None  # projected dims set directly (overrides eps; little.LittleConfig)

    @property
    def label(self) -> str:
        """The model as bench rows name it: ``<model>[-k<k>|-eps<ε>][-learned]`` (little.size_suffix,
        little.variant_suffix); the W_LL precision, INT8 path and mask rule are engines of its rows instead."""
        return self.model + size_suffix(self.eps, self.k) + variant_suffix(projection=self.projection)

    def default_out(self, target: TargetSpec, root: "str | os.PathLike | None" = None) -> Path:
        """Where this build goes unless ``out`` says: ``<root>/<label>-<target name>[-w4][-int8float][-<rule>]``
        (root: ``build/``), where bench and ``tune --in-step`` look for it too."""
        return Path(root or BUILD_ROOT) / f"{self.label}-{target.name}" \
            f"{variant_suffix(self.little_bits, self.mask_rule, self.int8_codes)}"


def layer_shapes(dual: DualModuleRNN, target: TargetSpec, int8_codes: bool | None = None) -> list[LayerShape]:
    """The kernels' view of each dual-module layer: gates, widths, k and W_LL precision, with the INT8 little
    GEMV's path chosen for ``target`` unless ``int8_codes`` says which."""
    shapes = [LayerShape(l.rnn_type, l.big.hidden, l.big.input_size, l.little.k, l.little.weight.bits,
                         mask_rule=l.little.mask_rule).for_target(target) for l in dual.layers]
    return [replace(s, int8_codes=int8_codes) if int8_codes is not None and s.little_bits == 8 else s for s in shapes]


BREAK_EVEN_WARNING = 0.25  # warn when a build needs a higher insensitive ratio than this just to read fewer bytes


def break_even_of(shapes: list[LayerShape]) -> float:
    """The highest of the layers' break-even ratios (``traffic.break_even_ratio``): below it the dual-module step
    reads more bytes than the dense one."""
    from .traffic import break_even_ratio

    return max(break_even_ratio(s.hidden, s.input_size, s.gates, s.k, s.little_bits) for s in shapes)


def warn_below_break_even(shapes: list[LayerShape]) -> float:
    """Warn when the layers' break-even ratio (:func:`break_even_of`) exceeds ``BREAK_EVEN_WARNING``; returns it."""
    break_even = break_even_of(shapes)
    if break_even > BREAK_EVEN_WARNING:
        where = (f"below an insensitive ratio of {break_even:.2f}" if break_even < 1 else "at every insensitive ratio")
        log.warning("the little module (k=%s, INT%d) and row list weigh %.0f %% of the big weights' bytes: %s the "
                    "dual-module step reads more than the dense one (a larger ε of eq. 3 or INT4 W_LL shrinks it)",
                    [s.k for s in shapes], shapes[0].little_bits, 100 * break_even, where)
    return break_even


def compile_dual(dual: DualModuleRNN, target: "str | TargetSpec", out: "str | os.PathLike",
                 residual: list[bool] | None = None, database: "TuningLog | str | None" = TARGET_LOG,
                 info: dict | None = None, int8_codes: bool | None = None) -> dict[str, Path]:
    """Compile a dual-module RNN (e.g. ``construct.build_dual(your_nn_lstm, …)``) and its dense counterpart.

    Writes ``out/dual`` and ``out/dense`` (``decoder.so`` and its bytecode twin + weights + manifest; the dual one
    also the little-module artefact); load either with :class:`~dualtvm.runtime.CompiledDecoder`.  ``residual``
    marks the layers whose input is added to their output (GNMT); ``database`` the tuning log whose verdicts
    the kernels take (MetaSchedule records where they beat the default schedules, loop-nest knobs, ``tune.py
    --in-step`` verdicts): by default the target's own (``tuning_logs/<target-name>/``, where ``tune.py`` writes),
    else a :class:`~dualtvm.tuning.TuningLog` (``tuning.target_database(target, root)``), or None for the default
    schedules; ``int8_codes`` overrides the target's INT8 little GEMV path (``layer_shapes``).
    """
    target = parse_target(target).with_default_cores() if isinstance(target, str) else target
    if isinstance(database, str):
        if database != TARGET_LOG:
            raise ValueError(f"database must be a TuningLog, None or {TARGET_LOG!r}, got {database!r}")
        database = load_database(target)
    shapes = layer_shapes(dual, target, int8_codes)
    break_even = warn_below_break_even(shapes)
    info = {**(info or {}), "k": [s.k for s in shapes], "little_bits": shapes[0].little_bits,
            "break_even_ratio": round(break_even, 3)}
    folders: dict[str, Path] = {}
    for is_dual in (True, False):
        spec = DecoderSpec(shapes, residual or [False] * len(shapes), dual=is_dual)
        t1 = time.time()
        executables = compile_decoder(spec, target, database)
        params = [pack_layer(s, l.big, l.little if is_dual else None) for s, l in zip(shapes, dual.layers)]
        kind = "dual" if is_dual else "dense"
        folders[kind] = Path(export(executables, spec, target, Path(out) / kind, params,
                                    [l.little for l in dual.layers] if is_dual else None, info))
        log.info("built %s decoder in %.1fs -> %s", kind, time.time() - t1, folders[kind])
    return folders


def build_model(cfg: BuildConfig) -> dict:
    """Returns a report: where weights came from, k, build folders, schedules used, verification."""
    target = parse_target(cfg.target).with_default_cores()
    mc = model_config(cfg.model)
    payload = read_checkpoint(cfg.checkpoint) if cfg.checkpoint else None  # read once, used twice
    rnn, source = big_rnn(cfg.model, cfg.checkpoint, cfg.seed, payload, cfg.decoder_layer)
    log.info("model %s: %s", cfg.model, source)
    real = real_inputs(payload, cfg.seed, cfg.corpus, cfg.data_dir, cfg.decoder_layer)
    if real is not None:  # the trained model's own data
        train, valid = real.train(), real.valid()
        source += f", little module fitted and calibrated on {real.description}"
    else:
        train, valid = synthetic_segments(mc.input_size, 16, cfg.seed), synthetic_segments(mc.input_size, 4, cfg.seed + 1)

    def run(data):
        return lambda core: [core(x) for x in data]

    t0 = time.time()
    little_cfg = LittleConfig(eps=cfg.eps, k=cfg.k, seed=cfg.seed, bits=cfg.little_bits,
                              sigmoid_tails=cfg.sigmoid_tails, mask_rule=cfg.mask_rule, projection=cfg.projection)
    dual = build_dual(rnn, run(train), run(valid), little_cfg, cfg.max_rows)
    fit_s = time.time() - t0
    db = load_database(target, cfg.tuning_logs) if cfg.use_tuned else None
    out = Path(cfg.out) if cfg.out else cfg.default_out(target)
    info = {"name": cfg.model, "weights": source, "eps": None if cfg.k else cfg.eps, "sigmoid_tails": cfg.sigmoid_tails,
            "mask_rule": cfg.mask_rule, "projection": cfg.projection,
            # the weights, for people and for reuse checks
            "checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None, "little_fit_rows": cfg.max_rows,
            "decoder_layer": cfg.decoder_layer if payload is not None and payload["kind"] == "seq2seq" else None}
    folders = {k: str(v) for k, v in compile_dual(dual, target, out, mc.residual(), db, info, cfg.int8_codes).items()}
    shapes = layer_shapes(dual, target, cfg.int8_codes)
    report = {"model": cfg.model, "weights": source, "target": target.to_dict(), "k": [s.k for s in shapes],
              "little_bits": cfg.little_bits, "little_fit_s": round(fit_s, 1),
              "break_even_ratio": round(break_even_of(shapes), 3),
              "schedules": "tuned database where faster" if db else "default", "builds": folders}
    if cfg.verify:
        if not check_runs_on_host(target):
            report["verified"] = None
            report["verify_skipped"] = "target ISA not available on this host"
        else:
            report.update(verify(folders["dual"], folders["dense"], rnn, dual, mc, cfg.steps, cfg.seed))
    return report


def built_from(folder: Path, cfg: BuildConfig) -> bool:
    """Whether ``folder`` holds a build of ``cfg``'s weights (``--reuse-builds`` must not time a random-weight
    build when a checkpoint is asked for, nor the reverse, nor another decoder layer of a seq2seq), its little
    modules fitted on ``cfg.max_rows`` rows (manifests from before they said so: the default's). The rest of the
    variant is in the folder's name (:meth:`BuildConfig.default_out`)."""
    manifest = reusable_manifest(folder / "dual", MANIFEST_VERSION)
    if manifest is None:
        return False
    model = manifest["model"]
    if "checkpoint" not in model:  # a build from before the manifest said so: rebuild
        return False
    if model.get("little_fit_rows", BUILD_FIT_ROWS) != cfg.max_rows:
        return False
    if cfg.checkpoint is None:
        return model["checkpoint"] is None
    return model["checkpoint"] == str(cfg.checkpoint) and model["decoder_layer"] in (None, cfg.decoder_layer)


def _zero_state(mc):
    z = torch.zeros(1, mc.hidden)
    return (z, z.clone()) if mc.rnn_type == "LSTM" else z


def reference_step(dual, mc, x: torch.Tensor, states: list):
    """One step of the PyTorch dual-module stack (residuals included); returns output, states, masks."""
    inp, masks = x.view(1, -1), []
    with torch.no_grad():
        for l, layer in enumerate(dual.layers):
            h, states[l], m = layer.step(inp, states[l] if states[l] is not None else _zero_state(mc), record=False)
            masks.append(m.view(-1).numpy())
            inp = h + inp if mc.residual()[l] else h
    return inp.view(-1).numpy(), states, masks


def _flat(states, mc) -> list:
    out = []
    for st in states:
        st = st if st is not None else _zero_state(mc)
        out += [s.reshape(-1) for s in (st if isinstance(st, tuple) else (st,))]
    return out


def verify(dual_dir: str, dense_dir: str, rnn, dual, mc, steps: int, seed: int) -> dict:
    """Compiled steps vs the PyTorch reference.

    ratio 0 and 0.5: each compiled step is fed the reference state (no drift), and masks and
    outputs must equal the dual-module reference except rows whose little output rounds across
    a threshold.  Such a row takes the other module's value (and, stacked, moves every layer above),
    so outputs are also compared over the steps whose masks all agree.  The dense build then runs
    free for ``steps`` steps beside the big model.
    """
    from .runtime import CompiledDecoder

    g = torch.Generator().manual_seed(seed + 7)
    xs = [torch.randn(mc.input_size, generator=g) * 0.5 for _ in range(steps)]
    res = {}
    for label, ratio in (("ratio_0", 0.0), ("ratio_0.5", 0.5)):
        dec = CompiledDecoder(dual_dir)
        dec.set_insensitive_ratio(ratio)
        dual.set_insensitive_ratio(ratio)
        states = [None] * len(dual.layers)
        max_err, agree_err, agree_steps, mism, total = 0.0, 0.0, 0, 0, 0
        for x in xs:
            out, _, masks = dec.step(x, _flat(states, mc))
            ref, states, ref_masks = reference_step(dual, mc, x, states)
            step_mism = sum(int((a != b).sum()) for a, b in zip(ref_masks, masks))
            mism += step_mism
            total += sum(m.size for m in ref_masks)
            err = float(np.abs(out - ref).max())
            max_err = max(max_err, err)
            if step_mism == 0:
                agree_err, agree_steps = max(agree_err, err), agree_steps + 1
        res[label] = {"max_abs_err": max_err, "mask_mismatch_fraction": mism / max(total, 1),
                      "max_abs_err_matching_masks": agree_err, "steps_with_matching_masks": agree_steps}
    dense = CompiledDecoder(dense_dir)
    dual.set_insensitive_ratio(0.0)  # ratio 0 is the big model (residuals included)
    state, ref_states, err = None, [None] * len(dual.layers), 0.0
    for x in xs:
        out, state, _ = dense.step(x, state)
        ref, ref_states, _ = reference_step(dual, mc, x, ref_states)
        err = max(err, float(np.abs(out - ref).max()))
    res["dense_free_running_max_abs_err"] = err
    res["verified"] = bool(res["ratio_0"]["max_abs_err"] < 1e-4 and err < 1e-3
                           and res["ratio_0.5"]["mask_mismatch_fraction"] < 0.005)
    return res
