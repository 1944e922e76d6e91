"""One optimizer step, and the seeding that makes every step's random draws a function
of where it is in the run: (seed, epoch, rank) for an epoch, (seed, epoch, step, rank)
for a step, so that a run resumed inside an epoch replays them exactly.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .erasing import RandomErasing
from .mix import Mixer
from .optim import Precision


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seeds torch, numpy and python RNGs from (seed, epoch, rank)."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    random.seed(int(state[1]))


def train_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               precision: Precision, label_smoothing: float = 0.0,
               grad_clip: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch. images: (B, 3, H, W); targets: (B,) int64
    labels or (B, classes) probabilities (mixed batches). Returns (mean loss, logits
    (B, classes)), both detached, still on the device."""
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        logits = model(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def prepare_batch(images: torch.Tensor, labels: torch.Tensor, mixer: Mixer | None,
                  label_smoothing: float, eraser: RandomErasing | None = None):
    """(images, targets, labels to score top-1 against, label smoothing still to apply
    in the loss). ``eraser`` erases rectangles first (in place). A mixer returns soft
    targets that already include the smoothing, and top-1 is then scored against the
    dominant label of each mixed pair."""
    if eraser is not None:
        images = eraser(images)
    if mixer is None:
        return images, labels, labels, label_smoothing
    images, targets, dominant = mixer(images, labels)
    return images, targets, dominant, 0.0


def seed_step(seed: int, epoch: int, step: int, rank: int, device: torch.device) -> None:
    """Seeds torch's CPU generator and ``device``'s from (seed, epoch, step, rank).
    The random draws of a step (MixUp/CutMix, drop path) then depend only on where
    the step is, so a run resumed in the middle of an epoch replays them exactly."""
    value = int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1)[0])
    torch.default_generator.manual_seed(value)
    if device.type == 'cuda':  # only this rank's GPU: seeding all would touch every one
        torch.cuda.default_generators[device.index or 0].manual_seed(value)
