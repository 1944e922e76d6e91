"""The training loop, top to bottom: one step, one epoch, validation, and ``fit``.

Everything arrives built (model, optimizer, loaders, schedules); this module only
runs them. Per epoch, ``fit``:

1. sets the train loader's epoch (its order) and resolution (``res_at(epoch)``) and
   reseeds the RNGs from (seed, epoch, rank), so a run resumed at an epoch boundary
   replays exactly what an unbroken run would have done;
2. trains, setting the learning rate ``lr_at(iteration)`` before every step,
   optionally mixing each batch (MixUp/CutMix) and updating an EMA of the weights;
3. validates every ``eval_every`` epochs and at the end (top-1, top-5, loss;
   optionally averaging the logits of each image and its mirror), the raw weights
   and, when kept, the EMA weights;
4. logs one JSON line and, on rank 0, writes the checkpoints;
5. stops early when ``best_metric`` has not improved for ``patience`` epochs.

Running sums stay on the device; they are all-reduced (one small tensor) every
``log_every`` steps to update the progress bar and to stop on a non-finite loss
before any checkpoint could store it.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import (TrainState, checkpoint_dir, checkpoint_names, checkpoint_state,
                         save_checkpoints)
from .distributed import Dist, all_reduce_max, all_reduce_sum, broadcast_buffers
from .ema import ModelEMA
from .logs import Progress, RunLog
from .mix import Mixer
from .models import unwrap
from .optim import Precision, set_lr


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class FitOptions:
    """Loop settings. Epoch counts are whole epochs; ``grad_clip`` is a max L2 norm
    (0 = off); ``checkpoint_every`` keeps ``epoch_NNNN.pt`` every that many epochs
    (0 = off); ``last_every`` writes ``last.pt`` every that many epochs and at the last
    epoch of the run or of this invocation (each write costs rank 0 a full save while
    the other ranks wait, so short epochs want a longer period); ``stop_after`` ends this invocation after that epoch (0 = run to
    ``epochs``; the schedules still span ``epochs``). ``best_metric`` (``val_top1`` or
    ``ema_val_top1``) picks ``best.pt``; with ``patience`` > 0 the run ends once it has
    not improved for that many epochs, but never before ``min_epochs``."""
    epochs: int
    label_smoothing: float = 0.1
    grad_clip: float = 0.0
    eval_every: int = 1
    tta: bool = True
    checkpoint_every: int = 0
    last_every: int = 1
    stop_after: int = 0
    log_every: int = 50
    seed: int = 0
    progress: bool = True
    best_metric: str = 'val_top1'
    patience: int = 0
    min_epochs: int = 0


@dataclass
class Run:
    """A built training run: everything :func:`fit` needs, made by the caller (the
    recipe builder from a config, or a notebook by hand).

    ``model`` may be DDP- or compile-wrapped; ``module`` is the plain network inside it
    (validation and checkpoints use it). ``lr_at(iteration)`` gives the learning rate
    of an optimizer step, ``res_at(epoch)`` the training resolution in pixels of a
    0-based epoch. ``meta`` (arch, num_classes, classes, config) goes into every
    checkpoint. ``mixer`` and ``ema`` are None when off. ``resumed_from`` names the
    checkpoint ``state`` came from, and ``notes`` are lines for the user about how the
    run was built; the loop reads neither.
    """
    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    train_loader: Iterable
    val_loader: Iterable
    dist: Dist
    options: FitOptions
    state: TrainState
    lr_at: Callable[[int], float]
    res_at: Callable[[int], int]
    run_dir: Path
    meta: dict
    mixer: Mixer | None = None
    ema: ModelEMA | None = None
    resumed_from: Path | None = None
    notes: list[str] = field(default_factory=list)


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


def _check_finite(totals: torch.Tensor, epoch: int, iteration: int) -> None:
    if not torch.isfinite(totals[0]):
        raise NonFiniteLossError(f"training loss became {totals[0].item()} in epoch "
                                 f"{epoch + 1} by iteration {iteration}; stopped before "
                                 f"writing any checkpoint")


def _check_finite_weights(module: nn.Module, epoch: int) -> None:
    # a last step can break the weights after the last finite loss was seen; the
    # weights are the same on every rank, so every rank stops here together
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteLossError(f"{name} became non-finite in epoch {epoch}; stopped "
                                     f"before writing any checkpoint")


def prepare_batch(images: torch.Tensor, labels: torch.Tensor, mixer: Mixer | None,
                  label_smoothing: float):
    """(images, targets, labels to score top-1 against, label smoothing still to apply
    in the loss). A mixer returns soft targets that already include the smoothing, and
    top-1 is then scored against the dominant label of each mixed pair."""
    if mixer is None:
        return images, labels, labels, label_smoothing
    images, targets, dominant = mixer(images, labels)
    return images, targets, dominant, 0.0


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, *, precision: Precision, lr_at,
                iteration: int, epoch: int, options: FitOptions, dist: Dist,
                mixer: Mixer | None = None, ema: ModelEMA | None = None) -> dict:
    """Trains one pass over ``loader`` starting at global step ``iteration``; mixes
    batches with ``mixer`` and updates ``ema`` after every step when given.

    Returns train ``loss`` (mean, with label smoothing), ``top1`` (fraction; against
    the dominant label when mixing), ``images`` (all ranks), ``seconds``, ``lr`` (the
    last one) and ``iteration``.
    Raises:
        NonFiniteLossError: the loss summed over ranks is NaN or infinite.
    """
    model.train()
    module, device = unwrap(model), dist.device
    totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, correct, count
    progress = Progress(loader, len(loader), dist.is_main and options.progress,
                        f"epoch {epoch + 1}/{options.epochs}")
    start, lr = time.perf_counter(), 0.0
    for step, (images, labels) in enumerate(progress, start=1):
        lr = lr_at(iteration)
        set_lr(optimizer, lr)
        images, targets, labels, smoothing = prepare_batch(images, labels, mixer,
                                                           options.label_smoothing)
        loss, logits = train_step(model, images, targets, optimizer, scaler, precision,
                                  smoothing, options.grad_clip)
        totals[0] += loss.double() * labels.shape[0]
        totals[1] += (logits.argmax(dim=1) == labels).sum()
        totals[2] += labels.shape[0]
        iteration += 1
        if ema is not None:
            ema.update(module, iteration)
        if step % options.log_every == 0 or step == len(loader):
            seen = all_reduce_sum(totals.clone())
            _check_finite(seen, epoch, iteration)
            elapsed = time.perf_counter() - start
            progress.show(loss=seen[0].item() / seen[2].item(), lr=lr,
                          res=images.shape[-1], img_s=f"{seen[2].item() / elapsed:.0f}")
    progress.close()
    seen = all_reduce_sum(totals)
    _check_finite(seen, epoch, iteration)
    count = max(seen[2].item(), 1.0)
    return {'loss': seen[0].item() / count, 'top1': seen[1].item() / count,
            'images': int(seen[2].item()), 'seconds': time.perf_counter() - start,
            'lr': lr, 'iteration': iteration}


@torch.no_grad()
def evaluate(models: list[nn.Module], loader, *, precision: Precision, tta: bool,
             device: torch.device, show_progress: bool = False) -> list[dict]:
    """Validation of several models over the whole split (all ranks together), each
    batch decoded once and scored by every model. With ``tta`` the logits of each image
    and its horizontal mirror are averaged. Returns, per model, ``top1``, ``top5``
    (fractions), ``loss`` (mean cross-entropy, no smoothing) and ``images``.
    Pass unwrapped models: ranks see different numbers of batches."""
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
    summed = all_reduce_sum(totals).tolist()
    count = max(summed[-1], 1.0)
    return [{'loss': summed[3 * i] / count, 'top1': summed[3 * i + 1] / count,
             'top5': summed[3 * i + 2] / count, 'images': int(summed[-1])}
            for i in range(len(models))]


def validate(module: nn.Module, ema: ModelEMA | None, loader, *, precision: Precision,
             tta: bool, device: torch.device, show_progress: bool = False) -> dict:
    """:func:`evaluate` of the raw weights as ``val_loss``/``val_top1``/``val_top5``
    and, when ``ema`` is given, of the EMA weights as ``ema_val_*``, in one pass over
    the split. Call it with the BN statistics already agreed across ranks: the EMA
    takes its buffers from ``module``."""
    models, prefixes = [module], ['val_']
    if ema is not None:
        ema.copy_buffers(module)
        models.append(ema.module)
        prefixes.append('ema_val_')
    results = evaluate(models, loader, precision=precision, tta=tta, device=device,
                       show_progress=show_progress)
    return {f'{prefix}{key}': result[key] for prefix, result in zip(prefixes, results)
            for key in ('loss', 'top1', 'top5')}


def fit(run: Run, log: RunLog) -> TrainState:
    """Trains ``run`` from ``run.state.epoch`` to ``run.options.epochs`` (or
    ``stop_after``, or an early stop), logging to ``log`` and, on rank 0, writing
    checkpoints into ``run.run_dir``.

    Returns the final TrainState (also left in ``run.state``); a state that already
    stopped early is returned untouched, so resuming a finished run trains nothing.
    """
    state, options, dist = run.state, run.options, run.dist
    if state.stopped_early:
        return state
    last_epoch = min(options.epochs, options.stop_after or options.epochs)
    for epoch in range(state.epoch, last_epoch):
        run.train_loader.resolution = run.res_at(epoch)
        run.train_loader.epoch = epoch
        seed_epoch(options.seed, epoch, dist.rank)
        train = train_epoch(run.model, run.train_loader, run.optimizer, run.scaler,
                            precision=run.precision, lr_at=run.lr_at,
                            iteration=state.iteration, epoch=epoch, options=options,
                            dist=dist, mixer=run.mixer, ema=run.ema)
        state.epoch, state.iteration = epoch + 1, train['iteration']
        broadcast_buffers(run.module)
        _check_finite_weights(run.module, state.epoch)
        val = {}
        if state.epoch % options.eval_every == 0 or state.epoch == options.epochs:
            val = validate(run.module, run.ema, run.val_loader, precision=run.precision,
                           tta=options.tta, device=dist.device)
        improved = _update_best(state, val, options)
        state.metrics = _epoch_record(state, train, val, run.train_loader.resolution, dist,
                                      options, mixed=run.mixer is not None)
        log.event('epoch', **state.metrics)
        log.scalars(state.epoch, {k: v for k, v in state.metrics.items()
                                  if isinstance(v, float)})
        names = checkpoint_names(
            state.epoch, improved=improved, keep_every=options.checkpoint_every,
            last_due=(state.epoch % options.last_every == 0 or state.epoch == last_epoch
                      or state.stopped_early),
            finished=state.epoch == options.epochs or state.stopped_early)
        if dist.is_main and names:
            saved = checkpoint_state(run.module, run.optimizer, run.scaler, state, run.meta,
                                     run.ema)
            save_checkpoints(checkpoint_dir(run.run_dir), saved, names)
        if state.stopped_early:
            log.event('early_stop', epoch=state.epoch, metric=options.best_metric,
                      best=state.best_top1, best_epoch=state.best_epoch,
                      patience=options.patience)
            break
    return state


def _update_best(state: TrainState, val: dict, options: FitOptions) -> bool:
    """Records a new best of ``options.best_metric`` and decides early stopping;
    returns whether this epoch improved on the best."""
    if not val:
        return False
    improved = val[options.best_metric] > state.best_top1
    if improved:
        state.best_top1, state.best_epoch = val[options.best_metric], state.epoch
    state.stopped_early = (options.patience > 0 and options.min_epochs <= state.epoch
                           < options.epochs
                           and state.epoch - state.best_epoch >= options.patience)
    return improved


def _epoch_record(state: TrainState, train: dict, val: dict, resolution: int,
                  dist: Dist, options: FitOptions, mixed: bool) -> dict:
    record = {'epoch': state.epoch, 'iteration': state.iteration, 'lr': train['lr'],
              'resolution': resolution, 'train_loss': train['loss'],
              'train_top1': train['top1'], 'val_loss': val.get('val_loss'),
              'val_top1': val.get('val_top1'), 'val_top5': val.get('val_top5'),
              **{key: value for key, value in val.items() if key.startswith('ema_')},
              f'best_{options.best_metric}': state.best_top1 if state.best_top1 >= 0 else None,
              'images_per_sec': train['images'] / train['seconds'],
              'epoch_time': train['seconds']}
    if mixed:
        record['train_top1_label'] = 'dominant label'
    if dist.device.type == 'cuda':  # the largest over ranks
        peak = torch.cuda.max_memory_allocated(dist.device) / 2 ** 30
        record['peak_gpu_mem_gib'] = all_reduce_max(peak, dist.device)
        torch.cuda.reset_peak_memory_stats(dist.device)
    return record
