"""Training of the GNMT-like seq2seq (Multi30k En→De); decoding and BLEU are in :mod:`dualtvm.nmt`."""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoint import (MidEpochSaver, load_checkpoint, resolve_device, restore_rng_states, resume_payload, rng_states,
                         save_checkpoint)
from .data import ParallelCorpus, bucketed_batches, encode_pairs, pad_batch
from .models import Seq2Seq, Seq2SeqConfig

log = logging.getLogger(__name__)


@dataclass
class NMTTrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    clip: float = 1.0
    seed: int = 1111
    max_len: int = 50
    max_batches: int | None = None  # cap per epoch (smoke tests)
    save_every_s: float = 600.0  # mid-epoch checkpoint period: a 1024-unit epoch outlasts a session
    device: str = "cpu"  # where to train (see checkpoint.resolve_device); checkpoints are saved for the CPU


def adam_step(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float) -> None:
    """One clipped Adam update (a function of its own so that tests can interrupt training)."""
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def train_nmt(corpus: ParallelCorpus, model_cfg: Seq2SeqConfig, cfg: NMTTrainConfig, checkpoint: Path,
              progress: bool = True) -> dict:
    """Adam + teacher forcing; the best validation-loss model is kept beside.

    Resumable mid-epoch: the checkpoint holds the optimizer, the RNG states and the batch-order generator's
    state at the epoch's start, so a resumed run replays the same batches and ends where an unbroken one would.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = Seq2Seq(model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = {"epoch": 0, "best_val": math.inf, "history": [], "wall_s": 0.0, "batch": 0, "loss_sum": 0.0}
    best_path = checkpoint.with_suffix(".best.pt")
    gen = torch.Generator().manual_seed(cfg.seed)
    payload = resume_payload(checkpoint, asdict(model_cfg))
    if payload is not None:
        model.load_state_dict(payload["state_dict"])
        opt.load_state_dict(payload["optimizer"])
        state = {"batch": 0, "loss_sum": 0.0, **payload["train_state"]}
        restore_rng_states(payload, device)
        log.info("resuming %s at epoch %d batch %d", checkpoint, state["epoch"], state["batch"])
    train = encode_pairs(corpus, "train", cfg.max_len)
    valid = encode_pairs(corpus, "valid", cfg.max_len)
    crit = nn.CrossEntropyLoss(ignore_index=0)
    meta = {"src_vocab": corpus.src_vocab.itos, "tgt_vocab": corpus.tgt_vocab.itos, "data_checksums": corpus.checksums,
            "seed": cfg.seed, "train_config": asdict(cfg)}

    def batch_loss(idx: list[int], pairs) -> torch.Tensor:
        src = pad_batch([pairs[i][0] for i in idx]).to(device)
        tgt = pad_batch([pairs[i][1] for i in idx]).to(device)
        logits = model(src, tgt[:-1])
        return crit(logits.reshape(-1, logits.size(-1)), tgt[1:].reshape(-1))

    def save_latest() -> None:
        save_checkpoint(checkpoint, model, "seq2seq", asdict(model_cfg), train_state=state,
                        optimizer=opt.state_dict(), **rng_states(device), **meta)

    saver = MidEpochSaver(state, save_latest, cfg.save_every_s)
    while state["epoch"] < cfg.epochs:
        saver.restart()
        model.train()
        if "gen_state" in state:  # the batch order of the epoch being (re)started
            gen.set_state(state["gen_state"])
        state["gen_state"] = gen.get_state()
        batches = bucketed_batches(train, cfg.batch_size, shuffle=True, generator=gen)[: cfg.max_batches]
        total, n = state["loss_sum"], state["batch"]
        bar = tqdm(batches, desc=f"epoch {state['epoch'] + 1}/{cfg.epochs}", disable=not progress, mininterval=5,
                   initial=n)
        for idx in batches[n:]:
            loss = batch_loss(idx, train)
            adam_step(model, opt, loss, cfg.clip)
            total += loss.item()
            n += 1
            bar.update()
            saver.maybe_save(n, total, more=n < len(batches))
        bar.close()
        model.eval()
        with torch.no_grad():
            vb = bucketed_batches(valid, cfg.batch_size, shuffle=False)[: cfg.max_batches]
            val = sum(batch_loss(idx, valid).item() for idx in vb) / max(len(vb), 1)
        state["epoch"] += 1
        saver.clock()
        state.update(batch=0, loss_sum=0.0, gen_state=gen.get_state())
        state["history"].append({"epoch": state["epoch"], "train_loss": total / max(len(batches), 1), "valid_loss": val})
        log.info("epoch %d: train loss %.3f valid loss %.3f", state["epoch"], total / max(len(batches), 1), val)
        if val < state["best_val"]:
            state["best_val"] = val
            save_checkpoint(best_path, model, "seq2seq", asdict(model_cfg), train_state=dict(state), **meta)
        save_latest()
    best = Seq2Seq(model_cfg)
    best.load_state_dict(load_checkpoint(best_path)["state_dict"])
    return {"model": best, "epochs": state["epoch"], "wall_s": round(state["wall_s"], 1), "history": state["history"]}
