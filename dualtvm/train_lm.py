"""Training and evaluation of the word-level LM (PyTorch word_language_model recipe)."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoint import (MidEpochSaver, load_checkpoint, resolve_device, restore_rng_states, resume_payload, rng_states,
                         save_checkpoint)
from .data import LMCorpus, batchify, get_batch
from .models import LMConfig, RNNLanguageModel, repackage_hidden

log = logging.getLogger(__name__)


@dataclass
class LMTrainConfig:
    epochs: int = 6
    lr: float = 20.0
    clip: float = 0.25
    bptt: int = 35
    batch_size: int = 20
    eval_batch_size: int = 10
    seed: int = 1111
    anneal: float = 4.0  # lr /= anneal when validation loss does not improve
    max_batches: int | None = None  # cap per epoch (smoke tests)
    save_every_s: float = 600.0  # mid-epoch checkpoint period: a 1500-unit epoch outlasts a session
    device: str = "cpu"  # where to train ("cuda", "cuda:1", …: see resolve_device); checkpoints are saved for the CPU


def sgd_step(model: nn.Module, loss: torch.Tensor, lr: float, clip: float) -> None:
    """Backward, clip the gradient norm, plain SGD update (the word_language_model recipe)."""
    model.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)


def lm_segments(model: RNNLanguageModel, data: torch.Tensor, bptt: int = 35, rnn: nn.Module | None = None,
                max_batches: int | None = None, progress: bool = False):
    """(logits, targets) of each BPTT segment of a batchified stream, the state carried from segment to
    segment and detached between them (truncated BPTT); ``rnn`` stands in for the model's recurrent core."""
    hidden = model.init_hidden(data.size(1))
    starts = list(range(0, data.size(0) - 1, bptt))[:max_batches]
    for i in tqdm(starts, disable=not progress, desc="eval", leave=False):
        x, y = get_batch(data, i, bptt)
        out, hidden = model(x, hidden, rnn=rnn)
        yield out, y
        hidden = repackage_hidden(hidden)


def evaluate(model: RNNLanguageModel, data: torch.Tensor, bptt: int = 35, rnn: nn.Module | None = None,
             max_batches: int | None = None, progress: bool = False) -> float:
    """Mean next-word cross-entropy (nats) over a batchified stream; PPL = exp of it."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for out, y in lm_segments(model, data, bptt, rnn, max_batches, progress):
            total += nn.functional.cross_entropy(out.view(-1, out.size(-1)), y, reduction="sum").item()
            count += y.numel()
    return total / count


def train_lm(corpus: LMCorpus, model_cfg: LMConfig, train_cfg: LMTrainConfig, checkpoint: Path,
             progress: bool = True) -> dict:
    """Train with resumable checkpoints; returns the history and final PPLs.

    ``checkpoint`` holds the latest epoch (for resuming); ``checkpoint.best.pt`` the best
    validation model, which is what evaluation and the dual-module side use.
    """
    device = resolve_device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    model = RNNLanguageModel(model_cfg).to(device)
    state = {"epoch": 0, "lr": train_cfg.lr, "best_val": math.inf, "history": [], "wall_s": 0.0,
             "batch": 0, "loss_sum": 0.0}
    best_path = checkpoint.with_suffix(".best.pt")
    payload = resume_payload(checkpoint, asdict(model_cfg))
    if payload is not None:
        model.load_state_dict(payload["state_dict"])
        state = payload["train_state"]
        restore_rng_states(payload, device)
        state.setdefault("batch", 0)
        state.setdefault("loss_sum", 0.0)
        log.info("resuming %s at epoch %d batch %d (lr %.3g)", checkpoint, state["epoch"], state["batch"], state["lr"])
    train = batchify(corpus.train, train_cfg.batch_size).to(device)
    valid = batchify(corpus.valid, train_cfg.eval_batch_size).to(device)
    test = batchify(corpus.test, train_cfg.eval_batch_size).to(device)
    meta = {"vocab": corpus.dictionary.idx2word, "data_checksums": corpus.checksums, "seed": train_cfg.seed,
            "train_config": asdict(train_cfg)}
    crit = nn.CrossEntropyLoss()

    def save_latest() -> None:
        save_checkpoint(checkpoint, model, "lm", asdict(model_cfg), train_state=state, **rng_states(device), **meta)

    saver = MidEpochSaver(state, save_latest, train_cfg.save_every_s)
    while state["epoch"] < train_cfg.epochs:
        t0 = time.time()
        saver.restart()
        model.train()
        # A mid-epoch resume restarts the hidden state at zero (as at every epoch start): one BPTT window's context.
        hidden = model.init_hidden(train_cfg.batch_size)
        starts = list(range(0, train.size(0) - 1, train_cfg.bptt))[: train_cfg.max_batches]
        total, n = state["loss_sum"], state["batch"]
        bar = tqdm(starts, disable=not progress, mininterval=5, desc=f"epoch {state['epoch'] + 1}/{train_cfg.epochs}",
                   initial=n)
        for i in starts[n:]:
            x, y = get_batch(train, i, train_cfg.bptt)
            hidden = repackage_hidden(hidden)
            out, hidden = model(x, hidden)
            loss = crit(out.view(-1, out.size(-1)), y)
            sgd_step(model, loss, state["lr"], train_cfg.clip)
            total += loss.item()
            n += 1
            bar.update()
            if n % 50 == 0:
                bar.set_postfix(ppl=f"{math.exp(total / n):.1f}", lr=state["lr"])
            saver.maybe_save(n, total, more=n < len(starts))
        bar.close()
        val = evaluate(model, valid, train_cfg.bptt, max_batches=train_cfg.max_batches)
        state["epoch"] += 1
        saver.clock()
        state.update(batch=0, loss_sum=0.0)
        state["history"].append({"epoch": state["epoch"], "train_ppl": math.exp(total / n), "valid_ppl": math.exp(val),
                                 "lr": state["lr"]})
        log.info("epoch %d: train ppl %.2f valid ppl %.2f (%.0fs this run)", state["epoch"], math.exp(total / n),
                 math.exp(val), time.time() - t0)
        if val < state["best_val"]:
            state["best_val"] = val
            save_checkpoint(best_path, model, "lm", asdict(model_cfg), train_state=dict(state), **rng_states(device),
                            **meta)
        else:
            state["lr"] /= train_cfg.anneal
        save_latest()
    best = RNNLanguageModel(model_cfg)
    best.load_state_dict(load_checkpoint(best_path)["state_dict"])
    best.to(device)
    result = {"epochs": state["epoch"], "wall_s": round(state["wall_s"], 1),
              "train_ppl": state["history"][-1]["train_ppl"],
              "valid_ppl": math.exp(evaluate(best, valid, train_cfg.bptt, max_batches=train_cfg.max_batches)),
              "test_ppl": math.exp(evaluate(best, test, train_cfg.bptt, max_batches=train_cfg.max_batches)),
              "history": state["history"]}
    return result
