"""Magnitude pruning of the recurrent weights with automated gradual pruning (Table 7's baseline).

The paper compares dual-module inference with, and stacks it on, the automated gradual pruning
of Zhu & Gupta (2017): during fine-tuning the sparsity of each recurrent weight matrix rises as
s_t = s_f + (s_i − s_f)(1 − t/T)³, and at each pruning step the smallest-magnitude weights are
zeroed; masks are re-applied after every update so pruned weights stay zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .data import batchify, get_batch
from .models import repackage_hidden
from .train_lm import sgd_step


def agp_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: ``initial`` at step 0, ``final`` from ``total_steps`` on."""
    if not 0.0 <= initial <= final < 1.0:
        raise ValueError(f"need 0 <= initial ({initial}) <= final ({final}) < 1")
    t = min(max(step, 0), total_steps) / max(total_steps, 1)
    return final + (initial - final) * (1.0 - t) ** 3


def recurrent_weights(rnn: nn.Module) -> dict[str, nn.Parameter]:
    """The matrices a dual-module layer's big GEMV reads (``weight_ih_l*``, ``weight_hh_l*``); biases stay dense."""
    return {n: p for n, p in rnn.named_parameters() if n.startswith(("weight_ih", "weight_hh"))}


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Per matrix, keep the largest-magnitude ``1 − sparsity`` of the entries (bool masks)."""
    masks = {}
    for name, w in weights.items():
        n_zero = int(round(sparsity * w.numel()))
        if n_zero == 0:
            masks[name] = torch.ones_like(w, dtype=torch.bool)
            continue
        cut = w.detach().abs().flatten().kthvalue(n_zero).values
        masks[name] = w.detach().abs() > cut
    return masks


def apply_masks(weights: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, w in weights.items():
            w.mul_(masks[name])


def sparsity_of(weights: dict[str, torch.Tensor]) -> float:
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return zeros / sum(w.numel() for w in weights.values())


@dataclass
class PruneConfig:
    final_sparsity: float = 0.8
    batches: int = 600  # fine-tuning batches (BPTT segments of the training stream)
    prune_every: int = 20  # batches between pruning steps
    ramp: float = 0.75  # fraction of the batches over which sparsity ramps up (the rest fine-tunes)
    lr: float = 5.0
    clip: float = 0.25
    bptt: int = 35
    batch_size: int = 20
    seed: int = 1111


def prune_finetune(model: nn.Module, train_tokens: torch.Tensor, cfg: PruneConfig, progress: bool = True) -> dict:
    """Fine-tune ``model`` (an :class:`RNNLanguageModel`) on the training stream while pruning its recurrent
    weights to ``cfg.final_sparsity`` with the AGP schedule; returns the reached sparsity and the train PPL."""
    torch.manual_seed(cfg.seed)
    weights = recurrent_weights(model.rnn)
    train = batchify(train_tokens, cfg.batch_size)
    starts = list(range(0, train.size(0) - 1, cfg.bptt))
    ramp_steps = max(1, int(cfg.ramp * cfg.batches))
    crit = nn.CrossEntropyLoss()
    model.train()
    hidden = model.init_hidden(cfg.batch_size)
    masks = magnitude_masks(weights, 0.0)
    total, n = 0.0, 0
    bar = tqdm(range(cfg.batches), disable=not progress, mininterval=5, desc=f"prune to {cfg.final_sparsity:.0%}")
    for b in bar:
        if b % cfg.prune_every == 0:
            masks = magnitude_masks(weights, agp_sparsity(b, ramp_steps, cfg.final_sparsity))
            apply_masks(weights, masks)
        x, y = get_batch(train, starts[b % len(starts)], cfg.bptt)
        if b % len(starts) == 0:
            hidden = model.init_hidden(cfg.batch_size)
        hidden = repackage_hidden(hidden)
        out, hidden = model(x, hidden)
        loss = crit(out.view(-1, out.size(-1)), y)
        sgd_step(model, loss, cfg.lr, cfg.clip)
        apply_masks(weights, masks)
        total, n = total + loss.item(), n + 1
        if n % 50 == 0:
            bar.set_postfix(ppl=f"{math.exp(total / n):.1f}", sparsity=f"{sparsity_of(weights):.2f}")
    masks = magnitude_masks(weights, cfg.final_sparsity)
    apply_masks(weights, masks)
    return {"sparsity": round(sparsity_of(weights), 4), "finetune_train_ppl": round(math.exp(total / max(n, 1)), 2)}
