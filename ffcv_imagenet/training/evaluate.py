"""Validation: top-1, top-5 and loss of one or more models over a split, all ranks
together, optionally averaging each image's logits with its mirror's (test-time flip)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum, broadcast_buffers
from .ema import ModelEMA
from .logs import Progress
from .optim import Precision


@torch.no_grad()
def evaluate(models: list[nn.Module], loader, *, precision: Precision, tta: bool,
             device: torch.device, show_progress: bool = False,
             all_ranks: bool = True) -> list[dict]:
    """Validation of several models over the whole split (all ranks together), each
    batch decoded once and scored by every model. ``loader`` yields (images, labels)
    on ``device``: (B, 3, H, W) and (B,) int64, or (B, K) int64 where an image has
    several correct classes (padded with -1; a hit is any of them, the loss is against
    all of them equally, and an image with none is not scored), and has a length
    (batches). With
    ``tta`` the logits of each image and its horizontal mirror are averaged. Returns,
    per model, ``top1``, ``top5`` (fractions), ``loss`` (mean cross-entropy, no
    smoothing) and ``images``. Pass unwrapped models: ranks see different numbers of
    batches. ``all_ranks=False``: ``loader`` holds the whole split and this rank
    alone calls this (no collective)."""
    for model in models:
        model.eval()
    # per model: loss, top1, top5; then the image count
    totals = torch.zeros(3 * len(models) + 1, device=device, dtype=torch.float64)
    progress = Progress(loader, len(loader), show_progress, 'validation')
    for images, labels in progress:
        mirrored = torch.flip(images, dims=[3]) if tta else None
        for index, model in enumerate(models):
            with precision.autocast():
                logits = model(images).float()
                if tta:
                    logits = (logits + model(mirrored).float()) / 2
            loss, top1, top5 = _scores(logits, labels)
            totals[3 * index] += loss
            totals[3 * index + 1] += top1
            totals[3 * index + 2] += top5
        totals[-1] += _scored(labels).sum()
    progress.close()
    summed = (all_reduce_sum(totals) if all_ranks else totals).tolist()
    count = max(summed[-1], 1.0)
    return [{'loss': summed[3 * i] / count, 'top1': summed[3 * i + 1] / count,
             'top5': summed[3 * i + 2] / count, 'images': int(summed[-1])}
            for i in range(len(models))]


def _scored(labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the images that have a correct class."""
    return labels >= 0 if labels.dim() == 1 else (labels >= 0).any(dim=1)


def _scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Summed loss, top-1 hits and top-5 hits (float64 scalars) of the scored images."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    if labels.dim() == 1:
        hits = top == labels[:, None]
        loss = F.cross_entropy(logits, labels, reduction='sum')
    else:
        scored = _scored(labels)
        logits, labels, top = logits[scored], labels[scored], top[scored]
        hits = (top[:, :, None] == labels[:, None, :]).any(dim=2)
        correct = labels >= 0
        targets = torch.zeros_like(logits)
        targets.scatter_add_(1, labels.clamp(min=0), correct.float())
        targets /= correct.sum(dim=1, keepdim=True)
        loss = F.cross_entropy(logits, targets, reduction='sum')
    return loss.double(), hits[:, 0].sum().double(), hits.any(dim=1).sum().double()


def validate(module: nn.Module, ema: ModelEMA | None, loader, *, precision: Precision,
             tta: bool, device: torch.device, show_progress: bool = False,
             all_ranks: bool = True,
             wrap: Callable[[nn.Module], nn.Module] | None = None) -> dict:
    """:func:`evaluate` of the raw weights as ``val_loss``/``val_top1``/``val_top5``
    and, when ``ema`` is given, of the EMA weights as ``ema_val_*``, in one pass over
    the split. Call it with the BN statistics already agreed across ranks: an EMA
    that copies its buffers takes them from ``module``; one that averages them takes
    rank 0's. ``all_ranks=False``: as in :func:`evaluate`; on rank 0, whose
    statistics the others would receive, nothing needs agreeing. ``wrap`` turns each
    plain network into the forward that scores it (a compiled one)."""
    models, prefixes = [module], ['val_']
    if ema is not None:
        if not ema.averages_buffers:
            ema.copy_buffers(module)
        elif all_ranks:
            broadcast_buffers(ema.module)  # each rank averaged its own BN statistics
        models.append(ema.module)
        prefixes.append('ema_val_')
    if wrap is not None:
        models = [wrap(model) for model in models]
    results = evaluate(models, loader, precision=precision, tta=tta, device=device,
                       show_progress=show_progress, all_ranks=all_ranks)
    return {f'{prefix}{key}': result[key] for prefix, result in zip(prefixes, results)
            for key in ('loss', 'top1', 'top5')}
