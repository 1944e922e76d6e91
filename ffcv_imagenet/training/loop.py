"""The training loop, top to bottom: one step, one epoch, and ``fit``.

Everything arrives built (model, optimizer, loaders, schedules); this module only
runs them. Per epoch, ``fit``:

1. sets the train loader's epoch (its order), resolution (``res_at(epoch)``) and,
   with staged resizing, batch size (``batch_at(epoch)``);
2. trains, setting the learning rate ``lr_at(iteration)`` before every step and
   seeding the step's random draws from (seed, epoch, step, rank), optionally mixing
   each batch (MixUp/CutMix) and updating an EMA of the weights;
3. validates every ``eval_every`` epochs from ``eval_from`` on, and at the end (see
   :mod:`~ffcv_imagenet.training.evaluate`), the raw and, when kept, the EMA weights;
4. on rank 0, writes the checkpoints, then logs one JSON line, with where the
   epoch's time went (see :mod:`~ffcv_imagenet.training.timing`);
5. stops early when ``best_metric`` has not improved for ``patience`` epochs.

Running sums stay on the device; every ``log_every`` steps they are all-reduced
together with each rank's stop flag (one small tensor), to update the progress
bar, to stop on a non-finite loss before any checkpoint could store it, and to
stop every rank at the same step when a scheduler's signal arrives (see
:mod:`~ffcv_imagenet.training.preempt`). A checkpoint written inside an epoch
records the step and the epoch's running sums, and since the loader's order and
augmentations and every step's random draws depend only on (seed, epoch, step), a
resumed run continues exactly as an unbroken one would have.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from .checkpoint import TrainState, checkpoint_dir, checkpoint_names, checkpoint_state, \
    save_checkpoints
from .compiled import graphs_compiled, mark_step
from .distributed import Dist, all_reduce_max, all_reduce_sum, barrier, broadcast_buffers
from .ema import ModelEMA
from .erasing import RandomErasing
from .evaluate import validate
from .logs import Progress, RunLog
from .mix import Mixer
from .optim import Precision, set_lr
from .preempt import CheckpointPeriod, Preempted, StopSignals
from .step import prepare_batch, seed_epoch, seed_step, train_step
from .timing import PassTimer


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class FitOptions:
    """Loop settings: counts of whole epochs or steps, as each field says."""
    # epochs of the whole run; the schedules span them
    epochs: int
    # label smoothing of the cross-entropy (0 = off)
    label_smoothing: float = 0.1
    # max L2 norm of the gradients (0 = off)
    grad_clip: float = 0.0
    # validate every this many epochs, and after the last
    eval_every: int = 1
    # validate no epoch before this one (1-based; 0 or 1 = from the first), except the
    # last: an early model's score often decides nothing
    eval_from: int = 0
    # validation averages the logits of each image and its mirror image
    tta: bool = True
    # keep ``epoch_NNNN.pt`` every this many epochs (0 = off)
    checkpoint_every: int = 0
    # how often ``last.pt`` is written, in epochs or time, besides the last epoch of the
    # run or of this invocation (each write costs rank 0 a full save)
    last_every: CheckpointPeriod = field(default_factory=CheckpointPeriod)
    # end this invocation after this epoch (0 = run to ``epochs``)
    stop_after: int = 0
    # steps between the ranks' exchanges of running sums and stop flags
    log_every: int = 50
    # seeds the RNGs of each (epoch, rank)
    seed: int = 0
    # show a progress bar on rank 0
    progress: bool = True
    # what picks ``best.pt``: ``val_top1`` or ``ema_val_top1``
    best_metric: str = 'val_top1'
    # end the run once ``best_metric`` has not improved for this many epochs (0 = off)
    patience: int = 0
    # early stopping never ends the run before this epoch
    min_epochs: int = 0
    # only epochs after this one (1-based) count for ``best.pt`` and early stopping
    best_after: int = 0


@dataclass
class Run:
    """A built training run: everything :func:`fit` needs, made by the caller (the
    recipe builder from a config, or a notebook by hand)."""
    # the network as trained: may be DDP- or compile-wrapped
    model: nn.Module
    # the plain network inside ``model`` (validation and checkpoints use it)
    module: nn.Module
    optimizer: torch.optim.Optimizer
    # the loss scaler of float16 training (a disabled one otherwise)
    scaler: torch.amp.GradScaler
    # the autocast dtype, resolved for the device
    precision: Precision
    # iterables of (images, labels) device batches
    train_loader: Iterable
    val_loader: Iterable
    # this process's rank, world size and device
    dist: Dist
    options: FitOptions
    # epoch, step, best metric and RNG state: fresh or from a checkpoint
    state: TrainState
    # the learning rate of an optimizer step (0-based iteration)
    lr_at: Callable[[int], float]
    # the training resolution in pixels of a 0-based epoch
    res_at: Callable[[int], int]
    # where checkpoints, ``log.jsonl`` and plots go
    run_dir: Path
    # arch, num_classes, classes and config: written into every checkpoint
    meta: dict
    # MixUp / CutMix (None: off)
    mixer: Mixer | None = None
    # the moving average of the weights (None: off)
    ema: ModelEMA | None = None
    # the checkpoint ``state`` came from; the loop does not read it
    resumed_from: Path | None = None
    # lines for the user about how the run was built; the loop does not read them
    notes: list[str] = field(default_factory=list)
    # records scheduler signals (None: signals are not watched)
    stop: StopSignals | None = None
    # random erasing (None: off)
    eraser: RandomErasing | None = None
    # the per-process batch size of a 0-based epoch, set on the train loader before
    # the epoch (None: the loader's own, never changed)
    batch_at: Callable[[int], int] | None = None
    # ``model`` is ``torch.compile``d: steps mark their start for CUDA graphs, and each
    # epoch's line counts the graphs compiled in it (see :mod:`.compiled`)
    compiled: bool = False
    # a plain network -> the forward validation runs (None: the network itself); with
    # ``torch.compile``, compiled at one batch shape
    eval_wrap: Callable[[nn.Module], nn.Module] | None = None


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


def _sync(totals: torch.Tensor, stop: StopSignals | None) -> tuple[torch.Tensor, bool]:
    """(totals summed over ranks, whether any rank has received a stop signal), in
    one small collective."""
    flag = 1.0 if stop is not None and stop.received else 0.0
    summed = all_reduce_sum(torch.cat([totals, totals.new_tensor([flag])]))
    return summed[:3], bool(summed[3].item() > 0)


def train_epoch(run: Run, epoch: int, saver: 'LastCheckpoint',
                timer: PassTimer | None = None) -> dict:
    """Trains epoch ``epoch`` (0-based) of ``run`` from batch ``run.state.step`` on
    (0 unless resuming inside the epoch), advancing ``run.state.iteration`` and
    ``.step``.

    Every ``log_every`` steps the ranks sum their running totals and stop flags. If
    any rank has received a stop signal, rank 0 writes ``last.pt`` at that step and
    every rank raises :class:`Preempted`; with a time period, rank 0 also writes
    ``last.pt`` there when it is due.

    Returns train ``loss`` (mean, with label smoothing), ``top1`` (fraction; against
    the dominant label when mixing), ``images`` (all ranks), ``seconds``, ``lr`` (the
    last one). ``timer`` (default: a fresh one) times the loader waits, first steps at
    new shapes and checkpoint writes of the pass.
    Raises:
        NonFiniteLossError: the loss summed over ranks is NaN or infinite.
        Preempted: see above.
    """
    state, options, dist, loader = run.state, run.options, run.dist, run.train_loader
    timer = timer or PassTimer(dist.device)
    run.model.train()
    loader.start_batch = state.step
    steps = state.step + len(loader)
    carried = state.partial or [0.0] * 4  # loss sum, correct, count, seconds
    # only rank 0 carries the sums of the steps before a mid-epoch resume, so that
    # adding over ranks counts them once
    totals = torch.tensor(carried[:3] if dist.is_main else [0.0] * 3, device=dist.device,
                          dtype=torch.float64)
    seen = torch.tensor(carried[:3], dtype=torch.float64)
    start, lr = time.perf_counter() - carried[3], 0.0
    if state.step < steps:
        progress = Progress(loader, steps - state.step, dist.is_main and options.progress,
                            f"epoch {epoch + 1}/{options.epochs}")
        for step, (images, labels) in enumerate(timer.batches(progress),
                                                start=state.step + 1):
            timer.begin_step(images.shape)
            seed_step(options.seed, epoch, step, dist.rank, dist.device)
            lr = run.lr_at(state.iteration)
            set_lr(run.optimizer, lr)
            images, targets, labels, smoothing = prepare_batch(
                images, labels, run.mixer, options.label_smoothing, run.eraser)
            if run.compiled:  # CUDA graphs may now reuse the last step's outputs' memory
                mark_step()
            loss, logits = train_step(run.model, images, targets, run.optimizer, run.scaler,
                                      run.precision, smoothing, options.grad_clip)
            totals[0] += loss.double() * labels.shape[0]
            totals[1] += (logits.argmax(dim=1) == labels).sum()
            totals[2] += labels.shape[0]
            state.iteration, state.step = state.iteration + 1, step
            if run.ema is not None:
                run.ema.update(run.module, state.iteration)
            timer.end_step()
            if step % options.log_every == 0 or step == steps:
                seen, stop = _sync(totals.clone(), run.stop)
                _check_finite(seen, epoch, state.iteration)
                elapsed = time.perf_counter() - start
                progress.show(loss=seen[0].item() / seen[2].item(), lr=lr,
                              res=images.shape[-1], img_s=f"{seen[2].item() / elapsed:.0f}")
                if stop or saver.time_due():
                    state.partial = [*seen.tolist(), elapsed]
                    with timer.checkpoint():
                        saver.save(['last.pt'])
                if stop:
                    progress.close()
                    barrier()  # no rank exits before last.pt is complete
                    raise Preempted(run.stop.received or 'a signal to another rank', epoch,
                                    step, state.iteration)
        progress.close()
    loader.start_batch = 0
    count = max(seen[2].item(), 1.0)
    return {'loss': seen[0].item() / count, 'top1': seen[1].item() / count,
            'images': int(seen[2].item()), 'seconds': time.perf_counter() - start, 'lr': lr}


class LastCheckpoint:
    """Writes the run's checkpoints (on rank 0; the other ranks wait for it at a
    barrier) and remembers when, for a period given in time."""

    def __init__(self, run: Run):
        self.run, self.saved_at = run, time.monotonic()

    def time_due(self) -> bool:
        return self.run.dist.is_main and self.run.options.last_every.due_by_time(
            self.saved_at, time.monotonic())

    def save(self, names: list[str]) -> None:
        run = self.run
        if run.dist.is_main and names:
            saved = checkpoint_state(run.module, run.optimizer, run.scaler, run.state,
                                     run.meta, run.ema)
            save_checkpoints(checkpoint_dir(run.run_dir), saved, names)
            self.saved_at = time.monotonic()


def fit(run: Run, log: RunLog) -> TrainState:
    """Trains ``run`` from ``run.state`` (an epoch boundary, or a step inside an epoch)
    to ``run.options.epochs`` (or ``stop_after``, or an early stop), logging to
    ``log`` and, on rank 0, writing checkpoints into ``run.run_dir``.

    Returns the final TrainState (also left in ``run.state``); a state that already
    stopped early is returned untouched, so resuming a finished run trains nothing.
    Raises:
        Preempted: a stop signal arrived (``last.pt`` holds the step where all ranks
            stopped); NonFiniteLossError.
    """
    state, options, dist = run.state, run.options, run.dist
    if state.stopped_early:
        return state
    saver = LastCheckpoint(run)
    shapes: set = set()  # the input shapes the model has run at (compiled for)
    last_epoch = min(options.epochs, options.stop_after or options.epochs)
    for epoch in range(state.epoch, last_epoch):
        run.train_loader.resolution = run.res_at(epoch)
        batch = run.batch_at(epoch) if run.batch_at is not None else None
        if batch is not None:
            run.train_loader.batch_size = batch
        run.train_loader.epoch = epoch
        seed_epoch(options.seed, epoch, dist.rank)
        timer = PassTimer(dist.device, shapes)
        graphs = graphs_compiled()
        train = train_epoch(run, epoch, saver, timer)
        trained = time.perf_counter()
        state.epoch, state.step, state.partial = epoch + 1, 0, None
        broadcast_buffers(run.module)
        _check_finite_weights(run.module, state.epoch)
        val, val_seconds = {}, 0.0
        if validation_due(state.epoch, options):
            began = time.perf_counter()  # the GPU is idle: the last step's sums were read
            val = validate(run.module, run.ema, run.val_loader, precision=run.precision,
                           tta=options.tta, device=dist.device, wrap=run.eval_wrap)
            val_seconds = time.perf_counter() - began  # validate reads its sums too
        improved = _update_best(state, val, options)
        state.metrics = _epoch_record(state, train, val, run.train_loader.resolution, batch,
                                      dist, options, mixed=run.mixer is not None)
        # a signal that came during validation is acted on here, at the boundary
        stop = _sync(torch.zeros(3, device=dist.device, dtype=torch.float64), run.stop)[1]
        names = checkpoint_names(
            state.epoch, improved=improved, keep_every=options.checkpoint_every,
            last_due=(options.last_every.due_at_epoch_end(state.epoch) or saver.time_due()
                      or state.epoch == last_epoch or state.stopped_early or stop),
            finished=state.epoch == options.epochs or state.stopped_early)
        if names:  # checkpoint_s is 0 exactly when no checkpoint was written
            with timer.checkpoint():
                saver.save(names)
        timing = timer.record(val_seconds, train['seconds'] + time.perf_counter() - trained)
        if run.compiled:  # 0 once every shape has been met
            timing['graphs_compiled'] = graphs_compiled() - graphs
        log.event('epoch', **state.metrics, **timing)
        log.scalars(state.epoch, {k: v for k, v in {**state.metrics, **timing}.items()
                                  if isinstance(v, float)})
        if state.stopped_early:
            log.event('early_stop', epoch=state.epoch, metric=options.best_metric,
                      best=state.best_top1, best_epoch=state.best_epoch,
                      patience=options.patience)
            break
        if stop and state.epoch < last_epoch:
            barrier()
            raise Preempted(run.stop.received or 'a signal to another rank', state.epoch, 0,
                            state.iteration)
    return state


def validation_due(epoch: int, options: FitOptions) -> bool:
    """Whether the model is validated after ``epoch`` (1-based): every ``eval_every``
    epochs from ``eval_from`` on, and after the last. An epoch without validation leaves
    the best and early stopping as they were."""
    if epoch == options.epochs:
        return True
    return epoch >= options.eval_from and epoch % options.eval_every == 0


def _update_best(state: TrainState, val: dict, options: FitOptions) -> bool:
    """Records a new best of ``options.best_metric`` and decides early stopping;
    returns whether this epoch improved on the best."""
    if not val or state.epoch <= options.best_after:
        return False
    improved = val[options.best_metric] > state.best_top1
    if improved:
        state.best_top1, state.best_epoch = val[options.best_metric], state.epoch
    state.stopped_early = (options.patience > 0 and options.min_epochs <= state.epoch
                           < options.epochs
                           and state.epoch - state.best_epoch >= options.patience)
    return improved


def _epoch_record(state: TrainState, train: dict, val: dict, resolution: int,
                  batch: int | None, dist: Dist, options: FitOptions, mixed: bool) -> dict:
    record = {'epoch': state.epoch, 'iteration': state.iteration, 'lr': train['lr'],
              'resolution': resolution, 'batch_size': batch,
              'global_batch_size': batch * dist.world_size if batch else None,
              'train_loss': train['loss'],
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
