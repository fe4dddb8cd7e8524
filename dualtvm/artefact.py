"""Versioned little-module artefact: what the TVM side loads beside the big weights.

One ``.npz`` holding, per layer: the projections (int8 codes: eq. 2's signs + seed, or a learned one's; their row
scales), the quantised W_LL codes and scales, b_LL, the calibration quantiles (so any insensitive ratio maps to
thresholds) and the sha256 of the big weights it was fitted to.  Loading it against other
big weights is an error, not a silent mismatch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .little import BigLayer, LittleModule
from .projection import Projection
from .quantize import QuantizedTensor
from .thresholds import GateCalibration

FORMAT = "dualtvm-little"
VERSION = 5  # 2: a sigmoid gate's calibration says which tails are insensitive ("tails"); 3: what its mask tests
#              ("rule": a_LL or the contribution score); 4: which projection a layer has ("projection"); 5: each
#              projection's row scales ("<name>_row_scale": W_LL's columns equalised, quantize.equalising_scale)
READABLE_VERSIONS = (1, 2, 3, 4, 5)  # version 1: every sigmoid gate as eq. 5; versions 1–2: every mask tests a_LL;
#                                      versions 1–3: every projection is eq. 2's; versions 1–4: no row scales


class ArtefactError(ValueError):
    """Unreadable artefact, unknown version, or one fitted to other big weights."""


def _open(path: Path, fmt: str, what: str) -> tuple:
    """The arrays and metadata of an artefact of format ``fmt``; any unreadable, foreign or newer file is an
    :class:`ArtefactError` naming it."""
    if not path.exists():
        raise ArtefactError(f"{what} artefact not found: {path}")
    try:
        z = np.load(path)
        meta = json.loads(bytes(z["meta"]).decode())
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise ArtefactError(f"{path} is not a dualtvm {what} artefact: {e}") from e
    if meta.get("format") != fmt:
        raise ArtefactError(f"{path}: format {meta.get('format')!r}, expected {fmt!r}")
    if meta.get("version") not in READABLE_VERSIONS:
        raise ArtefactError(f"{path}: artefact version {meta.get('version')} but this dualtvm reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))}")
    return z, meta


def save_little(path: str | os.PathLike, littles: list[LittleModule], config: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    layers_meta = []
    for i, lm in enumerate(littles):
        p = f"l{i}_"
        arrays[p + "px"] = lm.proj_x.codes
        arrays[p + "ph"] = lm.proj_h.codes
        arrays[p + "px_row_scale"] = lm.proj_x.row_scales()
        arrays[p + "ph_row_scale"] = lm.proj_h.row_scales()
        arrays[p + "w_codes"] = lm.weight.codes.numpy()
        arrays[p + "w_scale"] = lm.weight.scale.numpy().astype(np.float32)
        arrays[p + "bias"] = lm.bias.numpy().astype(np.float32)
        for g, cal in lm.calibration.items():
            arrays[p + "q_" + g] = cal.quantiles
        layers_meta.append({
            "rnn_type": lm.rnn_type, "hidden": lm.hidden, "input_size": lm.input_size, "k": lm.k,
            "bits": lm.weight.bits, "act_bits": lm.act_bits, "seeds": [lm.proj_x.seed, lm.proj_h.seed],
            "projection": lm.proj_x.kind, "big_hash": lm.big_hash, "fit_mse": lm.fit_mse, "fit_seconds": lm.fit_seconds,
            "calibration": {g: {"activation": c.activation, "symmetric": c.symmetric, "tails": c.tails,
                                "rule": c.rule}
                            for g, c in lm.calibration.items()},
        })
    meta = {"format": FORMAT, "version": VERSION, "config": config or {}, "layers": layers_meta}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_little(path: str | os.PathLike, big: list[BigLayer] | None = None) -> tuple[list[LittleModule], dict]:
    """Load an artefact; with ``big`` given, check each layer's weight hash against it."""
    path = Path(path)
    z, meta = _open(path, FORMAT, "little-module")
    if big is not None and len(big) != len(meta["layers"]):
        raise ArtefactError(f"{path} has {len(meta['layers'])} layers but the big model has {len(big)}")
    littles = []
    for i, lm in enumerate(meta["layers"]):
        p = f"l{i}_"
        if big is not None:
            actual = big[i].weight_hash()
            if actual != lm["big_hash"]:
                raise ArtefactError(
                    f"{path}: layer {i} was fitted to big weights {lm['big_hash'][:12]}… but the given model's "
                    f"layer {i} hashes to {actual[:12]}…: refit the little module for this model")
        codes = torch.from_numpy(z[p + "w_codes"])
        little = LittleModule(
            lm["rnn_type"], lm["hidden"], lm["input_size"],
            *(Projection(z[p + name], seed, kind=lm.get("projection", "sparse"), row_scale=_row_scale(z, p + name))
              for name, seed in zip(("px", "ph"), lm["seeds"])),
            QuantizedTensor(codes, torch.from_numpy(z[p + "w_scale"]), lm["bits"]),
            torch.from_numpy(z[p + "bias"]), lm["act_bits"], lm["big_hash"], lm["fit_mse"],
            {g: GateCalibration(c["activation"], z[p + "q_" + g], c["symmetric"], c.get("tails", "low"),
                             c.get("rule", "activation"))
             for g, c in lm["calibration"].items()},
            lm["fit_seconds"])
        littles.append(little)
    return littles, meta["config"]


OUTPUT_FORMAT = "dualtvm-little-output"


def save_output_little(path: str | os.PathLike, little) -> Path:
    """Write an output projection's little module (:class:`~dualtvm.output.OutputLittle`), versioned like
    :func:`save_little`, tied to the projection's weights by hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": OUTPUT_FORMAT, "version": VERSION, "rows": little.rows, "cols": little.cols,
            "bits": little.weight.bits, "act_bits": little.act_bits, "seeds": [little.proj_lo.seed, little.proj_hi.seed],
            "projection": little.proj_lo.kind, "big_hash": little.big_hash, "fit_seconds": little.fit_seconds}
    arrays = {"p_lo": little.proj_lo.codes, "p_hi": little.proj_hi.codes, "p_lo_row_scale": little.proj_lo.row_scales(),
              "p_hi_row_scale": little.proj_hi.row_scales(), "w_codes": little.weight.codes.numpy(),
              "w_scale": little.weight.scale.numpy().astype(np.float32), "bias": little.bias.numpy().astype(np.float32),
              "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    if little.gap_quantiles is not None:
        arrays["gap_quantiles"] = little.gap_quantiles
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_output_little(path: str | os.PathLike, big_hash: str | None = None):
    """Load :func:`save_output_little`'s file; with ``big_hash`` (``output.linear_hash``) check the weights it fits."""
    from .output import OutputLittle

    path = Path(path)
    z, meta = _open(path, OUTPUT_FORMAT, "output little-module")
    if big_hash is not None and big_hash != meta["big_hash"]:
        raise ArtefactError(f"{path} was fitted to an output projection hashing to {meta['big_hash'][:12]}…, not "
                            f"{big_hash[:12]}…: refit it for this model")
    kind = meta.get("projection", "sparse")  # files that do not say hold eq. 2's
    return OutputLittle(meta["rows"], meta["cols"],
                        *(Projection(z[name], seed, kind=kind, row_scale=_row_scale(z, name))
                          for name, seed in zip(("p_lo", "p_hi"), meta["seeds"])),
                        QuantizedTensor(torch.from_numpy(z["w_codes"]), torch.from_numpy(z["w_scale"]), meta["bits"]),
                        torch.from_numpy(z["bias"]), meta["act_bits"], meta["big_hash"],
                        z["gap_quantiles"] if "gap_quantiles" in z else None, meta["fit_seconds"])


def _row_scale(z, name: str) -> np.ndarray | None:
    """A projection's row scales as saved (version 5 on), None for files from before them (or all ones)."""
    key = name + "_row_scale"
    return z[key] if key in z and not np.all(z[key] == 1.0) else None
