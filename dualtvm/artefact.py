"""Versioned little-module artefact: what the TVM side loads beside the big weights.

One ``.npz`` holding, per layer: the ternary projections (int8 signs + seed), the quantised
W_LL codes and scales, b_LL, the calibration quantiles (so any insensitive ratio maps to
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
from .projection import SparseProjection
from .quantize import QuantizedTensor
from .thresholds import GateCalibration

FORMAT = "dualtvm-little"
VERSION = 1


class ArtefactError(ValueError):
    """Unreadable artefact, unknown version, or one fitted to other big weights."""


def save_little(path: str | os.PathLike, littles: list[LittleModule], config: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    layers_meta = []
    for i, lm in enumerate(littles):
        p = f"l{i}_"
        arrays[p + "px"] = lm.proj_x.signs
        arrays[p + "ph"] = lm.proj_h.signs
        arrays[p + "w_codes"] = lm.weight.codes.numpy()
        arrays[p + "w_scale"] = lm.weight.scale.numpy().astype(np.float32)
        arrays[p + "bias"] = lm.bias.numpy().astype(np.float32)
        for g, cal in lm.calibration.items():
            arrays[p + "q_" + g] = cal.quantiles
        layers_meta.append({
            "rnn_type": lm.rnn_type, "hidden": lm.hidden, "input_size": lm.input_size, "k": lm.k,
            "bits": lm.weight.bits, "act_bits": lm.act_bits, "seeds": [lm.proj_x.seed, lm.proj_h.seed],
            "big_hash": lm.big_hash, "fit_mse": lm.fit_mse, "fit_seconds": lm.fit_seconds,
            "calibration": {g: {"activation": c.activation, "symmetric": c.symmetric} for g, c in lm.calibration.items()},
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
    if not path.exists():
        raise ArtefactError(f"little-module artefact not found: {path}")
    try:
        z = np.load(path)
        meta = json.loads(bytes(z["meta"]).decode())
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise ArtefactError(f"{path} is not a dualtvm little-module artefact: {e}") from e
    if meta.get("format") != FORMAT:
        raise ArtefactError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ArtefactError(f"{path}: artefact version {meta.get('version')} but this dualtvm reads version {VERSION}")
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
            SparseProjection(z[p + "px"], lm["seeds"][0]), SparseProjection(z[p + "ph"], lm["seeds"][1]),
            QuantizedTensor(codes, torch.from_numpy(z[p + "w_scale"]), lm["bits"]),
            torch.from_numpy(z[p + "bias"]), lm["act_bits"], lm["big_hash"], lm["fit_mse"],
            {g: GateCalibration(c["activation"], z[p + "q_" + g], c["symmetric"]) for g, c in lm["calibration"].items()},
            lm["fit_seconds"])
        littles.append(little)
    return littles, meta["config"]
