"""Validation: top-1, top-5 and loss of one or more models over a split, all ranks
together, optionally averaging each image's logits with its mirror's (test-time flip)."""
from __future__ import annotations

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
    on ``device``: (B, 3, H, W) and (B,) int64, and has a length (batches). With
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
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top == labels[:, None]
            totals[3 * index] += F.cross_entropy(logits, labels, reduction='sum').double()
            totals[3 * index + 1] += hits[:, 0].sum()
            totals[3 * index + 2] += hits.any(dim=1).sum()
        totals[-1] += labels.shape[0]
    progress.close()
    summed = (all_reduce_sum(totals) if all_ranks else totals).tolist()
    count = max(summed[-1], 1.0)
    return [{'loss': summed[3 * i] / count, 'top1': summed[3 * i + 1] / count,
             'top5': summed[3 * i + 2] / count, 'images': int(summed[-1])}
            for i in range(len(models))]


def validate(module: nn.Module, ema: ModelEMA | None, loader, *, precision: Precision,
             tta: bool, device: torch.device, show_progress: bool = False,
             all_ranks: bool = True) -> dict:
    """:func:`evaluate` of the raw weights as ``val_loss``/``val_top1``/``val_top5``
    and, when ``ema`` is given, of the EMA weights as ``ema_val_*``, in one pass over
    the split. Call it with the BN statistics already agreed across ranks: an EMA
    that copies its buffers takes them from ``module``; one that averages them takes
    rank 0's. ``all_ranks=False``: as in :func:`evaluate`; on rank 0, whose
    statistics the others would receive, nothing needs agreeing."""
    models, prefixes = [module], ['val_']
    if ema is not None:
        if not ema.averages_buffers:
            ema.copy_buffers(module)
        elif all_ranks:
            broadcast_buffers(ema.module)  # each rank averaged its own BN statistics
        models.append(ema.module)
        prefixes.append('ema_val_')
    results = evaluate(models, loader, precision=precision, tta=tta, device=device,
                       show_progress=show_progress, all_ranks=all_ranks)
    return {f'{prefix}{key}': result[key] for prefix, result in zip(prefixes, results)
            for key in ('loss', 'top1', 'top5')}
