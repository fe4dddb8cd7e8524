"""Checkpoints that say how they were made: config, vocabulary, data checksums, seed, git revision."""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import REPO
from .models import LMConfig, ModelError, RNNLanguageModel, Seq2Seq, Seq2SeqConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CACHE_ENV = "DUALTVM_CACHE"


def cache_dir() -> Path:
    """Where checkpoints live (git-ignored): ``$DUALTVM_CACHE`` or ``<repo>/cache``."""
    root = os.environ.get(CACHE_ENV) or REPO / "cache"
    return Path(root)


def checkpoint_and_name(recipe: str, out: "str | os.PathLike | None") -> tuple[Path, str]:
    """Where a training run saves (``out``, else ``cache/<recipe>.pt``) and the name of its baselines row: the
    checkpoint's stem, so a second training of a recipe (``--out cache/<recipe>-r2.pt``) keeps the first one's row."""
    if out is None:
        return cache_dir() / f"{recipe}.pt", recipe
    out = Path(out)
    return out, out.name.removesuffix(".pt").removesuffix(".best")


def git_revision(short: bool = True) -> str:
    """HEAD of the checkout this code runs from, with ``-dirty`` when its tracked code (``dualtvm/``, ``schedules/``,
    ``scripts/``) or the tuning verdicts builds take (``tuning_logs/``) have uncommitted changes: a result or
    checkpoint then names a revision that did not make it."""
    root = Path(__file__).resolve().parent
    try:
        args = ["git", "rev-parse", "--short", "HEAD"] if short else ["git", "rev-parse", "HEAD"]
        rev = subprocess.run(args, capture_output=True, text=True, cwd=root, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/dualtvm",
                                  ":/schedules", ":/scripts", ":/tuning_logs"],  # ":/": from the checkout's top, wherever cwd is
                                 capture_output=True, text=True, cwd=root, check=True).stdout.strip()
        return rev + ("-dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch device, ``auto`` meaning CUDA where it is available; a clear error for a device this
    machine lacks (a 1500-unit LM takes days on 2 CPU cores, minutes on a GPU: the big model may be trained elsewhere,
    the dual-module side runs on the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: only cpu and cuda are supported")
    return device


DEVICE_HELP = "cpu, cuda, cuda:N or auto (CUDA where available); the checkpoint is saved for the CPU"


def device_arg(name: str) -> str:
    """argparse ``type=`` of the trainers' ``--device``: the name, checked by :func:`resolve_device` while the
    arguments are parsed, so a device this machine lacks stops the script before any work."""
    try:
        resolve_device(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def rng_states(device: torch.device) -> dict:
    """Every generator dropout draws from on ``device``: the CPU's, and the GPU's when training on one."""
    return {"rng": torch.get_rng_state(), **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})}


def restore_rng_states(payload: dict, device: torch.device) -> None:
    """Put back what :func:`rng_states` saved (a checkpoint from a CPU run resumed on a GPU restores the CPU's only)."""
    if "rng" in payload:
        torch.set_rng_state(payload["rng"])
    if device.type == "cuda" and "cuda_rng" in payload:
        torch.cuda.set_rng_state(payload["cuda_rng"], device)


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, kind: str, config: dict, **extra: Any) -> None:
    """Atomic write (tmp + rename) so a killed run never leaves half a checkpoint; weights are saved on the CPU
    (a model trained on a GPU loads on the serving machine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT_VERSION, "kind": kind, "config": config, "state_dict": state_dict,
               "git": git_revision(), **extra}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return checked_payload(torch.load(path, map_location="cpu", weights_only=False), path)


def checked_payload(payload: object, path: str | os.PathLike) -> dict:
    """``payload`` if it is a dualtvm checkpoint of this format version, else a clear error naming ``path``."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ModelError(f"{path}: not a dualtvm checkpoint (format {payload.get('format') if isinstance(payload, dict) else '?'})")
    return payload


def model_from_checkpoint(payload: dict) -> torch.nn.Module:
    """Instantiate the model a checkpoint describes and load its weights, with a clear shape error."""
    kind = payload["kind"]
    if kind == "lm":
        model = RNNLanguageModel(LMConfig(**payload["config"]))
    elif kind == "seq2seq":
        model = Seq2Seq(Seq2SeqConfig(**payload["config"]))
    else:
        raise ModelError(f"unknown checkpoint kind {kind!r}")
    own = model.state_dict()
    for name, tensor in payload["state_dict"].items():
        if name in own and own[name].shape != tensor.shape:
            raise ModelError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)} but the config "
                             f"{payload['config']} needs {tuple(own[name].shape)}")
    missing = set(own) - set(payload["state_dict"])
    if missing:
        raise ModelError(f"checkpoint lacks tensors {sorted(missing)[:4]} for config {payload['config']}")
    model.load_state_dict(payload["state_dict"])
    return model


def resume_payload(checkpoint: Path, config: dict) -> dict | None:
    """The checkpoint to resume from, or None; refuses one trained with another config."""
    if not Path(checkpoint).exists():
        return None
    payload = load_checkpoint(checkpoint)
    if payload["config"] != config:
        raise ModelError(f"{checkpoint} was trained with config {payload['config']}, not {config}")
    return payload


@dataclass
class MidEpochSaver:
    """Saves the latest checkpoint every ``every_s`` seconds inside an epoch (an epoch of the big models
    outlasts a session) and keeps ``state["wall_s"]``, the training time summed over runs, up to date."""

    state: dict
    save: Callable[[], None]
    every_s: float
    last: float = field(default_factory=time.time)

    def restart(self) -> None:
        """Start timing afresh (an epoch begins; time outside the loop is not training time)."""
        self.last = time.time()

    def clock(self) -> None:
        """Add the time since the last save, restart or clock to ``wall_s``."""
        now = time.time()
        self.state["wall_s"] += now - self.last
        self.last = now

    def maybe_save(self, batch: int, loss_sum: float, more: bool) -> None:
        """After ``batch`` batches: save the resume point if the period is up and ``more`` batches follow."""
        if more and time.time() - self.last > self.every_s:
            self.state.update(batch=batch, loss_sum=loss_sum)
            self.clock()
            self.save()
