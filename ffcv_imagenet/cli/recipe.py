"""Builds a training run from a parsed config: loaders, model, optimizer, schedules,
EMA, mixing and the state to resume from. This is the config edge shared by the
train command (``train_imagenet.py``) and the LR finder; the keys and their checks
live in :mod:`ffcv_imagenet.cli.train_config`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

from ..data.folders import DatasetError, classes_path, load_classes
from ..data.read.ffcv_loader import check_decoding_threads
from ..data.read.loaders import ImageLoader, train_loader, val_loader
from ..data.write.storage import read_storage, storage_notes
from ..training import distributed
from ..training.checkpoint import TrainState, load_checkpoint, restore
from ..training.distributed import Dist, ThreadPlan
from ..training.ema import ModelEMA
from ..training.erasing import RandomErasing
from ..training.loop import FitOptions, Run
from ..training.mix import Mixer
from ..training.models import describe_model
from ..training.optim import Precision, resolve_precision
from ..training.preempt import CheckpointPeriod
from ..training.schedules import Stages, epoch_schedule, lr_schedule, resolution_at, \
    staged_lr
from .config import ConfigError, as_dict, switch_settings
from .network import build_network, eval_compiler
from .resume import agreed_resume_source, apply_optimizer_config, check_can_continue
from .train_config import SECTIONS, check_values, per_gpu_batch


@dataclass
class Parts:
    """The objects both training and the LR finder build from a config."""
    # the network as trained: wrapped (DDP, compile) as configured
    model: nn.Module
    # the plain network inside ``model``
    module: nn.Module
    optimizer: torch.optim.Optimizer
    # the loss scaler of float16 training (a disabled one otherwise)
    scaler: torch.amp.GradScaler
    # the autocast dtype, resolved for the device
    precision: Precision
    train_loader: ImageLoader
    val_loader: ImageLoader
    # class names, in label order
    classes: list[str]
    # images per process per step
    batch: int
    # MixUp / CutMix (None: off)
    mixer: Mixer | None
    # random erasing (None: off)
    eraser: RandomErasing | None = None
    # the parsed resolution.stages (None: the linear ramp)
    stages: Stages | None = None
    # this process's decoding and torch threads (None: not chosen here)
    threads: ThreadPlan | None = None


def setup_distributed(config) -> Dist:
    """Joins the torchrun process group (if any) on the device ``training.device`` asks
    for.
    Raises:
        ConfigError: that device is not available.
    """
    try:
        return distributed.setup(config['training.device'],
                                 timeout_s=config['training.collective_timeout_s'])
    except ValueError as err:
        raise ConfigError(f"training.device: {err}") from None


def setup_threads(config, dist: Dist) -> ThreadPlan:
    """This process's decoding threads (``data.num_workers``; 0: its share of the
    cores) and torch's, which it sets (every rank must call it: the ranks on a host
    tell one another their CPUs).
    Raises:
        ConfigError: a bad ``OMP_NUM_THREADS``, or more threads than numba can start.
    """
    try:
        plan = distributed.process_threads(dist.device.type, config['data.num_workers'])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:
        check_decoding_threads(plan.decoding)
    except ValueError as err:
        raise ConfigError(f"data.num_workers: {err}") from None
    torch.set_num_threads(plan.torch)
    return plan


def check_dataset(config, key: str) -> tuple[str, list[str]]:
    """(the .beton path that ``key`` names, its class list).
    Raises:
        ConfigError: no such file, or no readable class list beside it.
    """
    path = config[key]
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: .beton file not found: {path}")
    try:
        classes, _ = load_classes(classes_path(path))
    except DatasetError as err:
        raise ConfigError(f"{key}: {err}") from None
    return path, classes


class Schedules(NamedTuple):
    """What the loop needs per iteration and per epoch: ``lr_at(iteration)``,
    ``res_at(epoch)`` (pixels), ``batch_at(epoch)`` (images per process), and
    ``first_iteration(epoch)`` (optimizer steps before a 0-based epoch); ``summary``
    is a line for the user."""
    lr_at: Callable[[int], float]
    res_at: Callable[[int], int]
    batch_at: Callable[[int], int]
    first_iteration: Callable[[int], int]
    summary: str


def _schedules(config, train: ImageLoader, world_size: int,
               stages: Stages | None) -> Schedules:
    """The learning rate follows the global batch linearly (``lr.lr`` per
    ``lr.reference_batch`` images); with stages, the schedule's shape is a function
    of progress (fractional epochs) and its scale changes with each stage's batch."""
    def peak_for(batch: int) -> float:
        return config['lr.lr'] * batch * world_size / config['lr.reference_batch']

    shape = {key: config[f'lr.{key}'] for key in (
        'peak_epoch', 'warmup_epochs', 'step_length', 'step_ratio', 'min_lr', 'pct_start',
        'div_factor', 'final_div_factor', 'start_fraction', 'interpolate_epochs')}
    name, epochs = config['lr.schedule'], config['training.epochs']
    try:
        if stages is None:
            batch = per_gpu_batch(config, world_size, None)
            lr_at = lr_schedule(name, peak_lr=peak_for(batch), epochs=epochs,
                                steps_per_epoch=len(train), **shape)
        else:
            by_epoch = epoch_schedule(name, peak_lr=1.0, epochs=epochs, **shape)
            stages.bind(lambda batch: train.num_samples // batch)
            lr_at = staged_lr(by_epoch, stages, peak_for)
    except ValueError as err:  # the messages start with the key's name
        raise ConfigError(f"lr.{err}") from None
    if stages is not None:
        used = sorted({stages.at(epoch) for epoch in range(epochs)}, key=lambda s: s.epoch)
        summary = 'stages: ' + ', '.join(
            f"{s.resolution} px x {s.batch} from epoch {s.epoch + 1} (peak lr "
            f"{peak_for(s.batch):.4g})" for s in used)
        return Schedules(lr_at, lambda epoch: stages.at(epoch).resolution,
                         lambda epoch: stages.at(epoch).batch, stages.first_iteration,
                         summary)
    ramp = {key: config[f'resolution.{key}']
            for key in ('min_res', 'max_res', 'start_ramp', 'end_ramp')}
    try:
        resolution_at(0, **ramp)  # checks the ramp now rather than at epoch 60
    except ValueError as err:
        raise ConfigError(f"resolution: {err}") from None
    steps = len(train)
    return Schedules(lr_at, partial(resolution_at, **ramp), lambda epoch: batch,
                     lambda epoch: epoch * steps,
                     f"batch {batch} per process, peak lr {peak_for(batch):.4g}")


def build_parts(config, dist: Dist) -> Parts:
    """Checks the config and the datasets, then builds loaders, network, optimizer
    and mixer; touches no checkpoint or run folder.
    Raises:
        ConfigError: one line naming the key or file.
    """
    stages = check_values(config)
    train_path, classes = check_dataset(config, 'data.train_dataset')
    val_path, val_classes = check_dataset(config, 'data.val_dataset')
    if val_classes != classes:
        raise ConfigError(f"data.val_dataset: {val_path} was written with a different class "
                          f"list than {train_path}")
    batch = per_gpu_batch(config, dist.world_size, stages)
    precision = resolve_config_precision(config, dist.device)
    threads = setup_threads(config, dist)
    train, val = _loaders(config, dist, precision, train_path, val_path, batch, stages,
                          threads.decoding)
    model, module, optimizer, scaler = build_network(config, dist, precision, len(classes))
    return Parts(model, module, optimizer, scaler, precision, train, val, classes, batch,
                 _mixer(config, len(classes)), _eraser(config), stages, threads)


def resolve_config_precision(config, device: torch.device) -> Precision:
    """``training.precision`` on ``device``; with ``training.parity=ffcv`` on the CPU,
    where there is no fp16 autocast (the published trainer ran on GPUs only), off.
    Raises:
        ConfigError: a precision the device cannot run.
    """
    name = config['training.precision']
    if config['training.parity'] == 'ffcv' and device.type != 'cuda':
        name = 'off'
    try:
        return resolve_precision(name, device)
    except ValueError as err:
        raise ConfigError(f"training.precision: {err}") from None


def build_run(config, dist: Dist) -> Run:
    """:func:`build_parts` plus schedules, EMA and the state to resume from: the
    :class:`~ffcv_imagenet.training.loop.Run` that ``fit`` trains.
    Raises:
        ConfigError / CheckpointError: one line naming the key or file.
    """
    parts = build_parts(config, dist)
    run_dir = Path(config['logging.folder'])
    source, note = agreed_resume_source(config, run_dir, dist)
    saved = load_checkpoint(source) if source else None
    arch = config['model.arch']
    schedules = _schedules(config, parts.train_loader, dist.world_size, parts.stages)
    notes = note.splitlines()
    if settings := switch_settings(config, 'training.parity'):
        notes.append(f"training.parity={config['training.parity']} sets " + ', '.join(
            f"{key}={value}" for key, value in settings.items()))
    if config['data.storage_preset']:  # the .betons against the recipe's storage
        notes += storage_notes(config['data.storage_preset'], [config['data.train_dataset'],
                               config['data.val_dataset']], 'data.storage_preset')
    notes += _order_notes(config)
    if saved:
        notes += check_can_continue(saved, source, config, parts.classes, schedules,
                                    dist.world_size)
    ema = _ema(config, parts.module)
    state = TrainState()
    if saved:
        state = restore(saved, parts.module, parts.optimizer, parts.scaler, ema)
        # the config and this machine win over the saved values
        apply_optimizer_config(parts.optimizer, config, dist.device)
        if ema is not None and not saved.get('ema'):
            notes.append(f"{source} holds no EMA; the average starts from its weights")
        saved_metric = (saved.get('config') or {}).get('checkpoint.best_metric', 'val_top1')
        if saved_metric != config['checkpoint.best_metric']:
            # a best of another metric is no yardstick for best.pt or early stopping
            state.best_top1, state.best_epoch = -1.0, state.epoch
            notes.append(f"checkpoint.best_metric changed from {saved_metric}; the best "
                         f"is tracked afresh from epoch {state.epoch}")
    epoch = min(state.epoch, config['training.epochs'] - 1)
    steps = schedules.first_iteration(epoch + 1) - schedules.first_iteration(epoch)
    notes.append(f"{dist.world_size} process(es) on {dist.device.type}, {schedules.summary}, "
                 f"precision {parts.precision.name}, {steps} steps per epoch")
    notes.append(f"threads per process: {parts.threads.why}")
    if dist.is_main:  # a forward pass on a CPU copy: only the rank that prints pays
        start_res = schedules.res_at(state.epoch)
        cost = describe_model(parts.module, start_res,
                              bytes_per_value=2 if parts.precision.dtype else 4)
        notes.append(f"model {arch}: {cost['params'] / 1e6:.1f} M parameters; per image at "
                     f"{start_res} px {cost['gmacs']:.2f} GMACs and about "
                     f"{cost['activation_mib']:.0f} MiB of activations in training")
    if parts.mixer is not None:
        notes.append("MixUp/CutMix on: train_top1 is measured against the dominant label "
                     "of each mixed pair")
    # the human-readable names travel in the checkpoint to its exports and predictions
    _, names = load_classes(classes_path(config['data.train_dataset']))
    meta = {'arch': arch, 'num_classes': len(parts.classes), 'classes': parts.classes,
            'names': names, 'config': as_dict(config, SECTIONS), 'world_size': dist.world_size,
            'batch': parts.batch}
    shapes = {(schedules.res_at(e), schedules.batch_at(e))
              for e in range(config['training.epochs'])}
    evaluator = eval_compiler(config, len(shapes), parts.val_loader.batch_size, ema)
    return Run(parts.model, parts.module, parts.optimizer, parts.scaler, parts.precision,
               parts.train_loader, parts.val_loader, dist, _fit_options(config), state,
               schedules.lr_at, schedules.res_at, run_dir, meta, mixer=parts.mixer, ema=ema,
               eraser=parts.eraser, resumed_from=source, notes=notes,
               batch_at=schedules.batch_at, compiled=bool(config['model.compile']),
               eval_wrap=evaluator.wrap if evaluator is not None else None)


def _order_notes(config) -> list[str]:
    """A line when ``data.order=blocks`` reads a train ``.beton`` stored in the order
    its folder listed (one class after the other): its batches would hold few classes."""
    path = config['data.train_dataset']
    if config['data.order'] != 'blocks':
        return []
    try:
        record = read_storage(path)
    except DatasetError:
        return []  # the storage note says what is wrong with the record
    if record is not None and record.sample_order == 'given':
        return [f"note: data.order=blocks reads {path} a few pages at a time, and it was "
                f"written in the order listed (one class after the other): each batch "
                f"will hold few classes; convert it again with --shuffle SEED"]
    return []


def _mixer(config, num_classes: int) -> Mixer | None:
    mixer = Mixer(num_classes, mixup_alpha=config['mix.mixup_alpha'],
                  cutmix_alpha=config['mix.cutmix_alpha'], prob=config['mix.prob'],
                  switch_prob=config['mix.switch_prob'],
                  label_smoothing=config['training.label_smoothing'])
    return mixer if mixer.enabled else None


def _eraser(config) -> RandomErasing | None:
    if config['erase.prob'] == 0:
        return None
    try:
        return RandomErasing(config['erase.prob'], min_area=config['erase.min_area'],
                             max_area=config['erase.max_area'],
                             min_aspect=config['erase.min_aspect'], mode=config['erase.mode'])
    except ValueError as err:
        raise ConfigError(f"erase: {err}") from None


def _ema(config, module: nn.Module) -> ModelEMA | None:
    if not config['ema.enabled']:
        return None
    return ModelEMA(module, config['ema.decay'], warmup_steps=config['ema.warmup_steps'],
                    every=config['ema.every'], buffers=config['ema.buffers'])


def _fit_options(config) -> FitOptions:
    return FitOptions(
        epochs=config['training.epochs'], label_smoothing=config['training.label_smoothing'],
        grad_clip=config['training.grad_clip'], eval_every=config['validation.every'],
        eval_from=config['validation.start_epoch'],
        tta=bool(config['validation.tta']), checkpoint_every=config['checkpoint.every'],
        last_every=CheckpointPeriod.parse(config['checkpoint.last_every']),
        stop_after=config['training.stop_after'], log_every=config['logging.log_every'],
        seed=config['training.seed'], progress=bool(config['logging.progress']),
        best_metric=config['checkpoint.best_metric'],
        best_after=config['checkpoint.best_after'],
        patience=config['early_stop.patience'], min_epochs=config['early_stop.min_epochs'])


def _loaders(config, dist: Dist, precision: Precision, train_path: str, val_path: str,
             batch: int, stages: Stages | None,
             workers: int) -> tuple[ImageLoader, ImageLoader]:
    # the loaders check each .beton's labels against its .classes.json (so that an
    # error names that file)
    common = dict(num_workers=workers, device=dist.device,
                  in_memory=bool(config['data.in_memory']), distributed=dist.enabled,
                  dtype=precision.input_dtype)
    resolution = config['resolution.min_res'] if stages is None else stages.at(0).resolution
    try:
        train = train_loader(train_path, batch_size=batch, seed=config['training.seed'],
                             resolution=resolution, order=config['data.order'],
                             order_window=config['data.order_window'],
                             dct_scaling=bool(config['data.dct_scaling']), **common)
    except DatasetError as err:
        raise ConfigError(f"data.train_dataset: {err}") from None
    try:
        val = val_loader(val_path, batch_size=config['validation.batch_size'],
                         resolution=config['validation.resolution'],
                         center_ratio=config['validation.crop_ratio'], **common)
    except DatasetError as err:
        raise ConfigError(f"data.val_dataset: {err}") from None
    largest, key = batch, 'training.batch_size'
    if stages is not None:
        largest = max(stages.at(epoch).batch for epoch in range(config['training.epochs']))
        key = 'resolution.stages'
    if train.num_samples < largest:
        raise ConfigError(f"{key}: {train_path} gives each of the {dist.world_size} "
                          f"processes {train.num_samples} images, fewer than one batch "
                          f"of {largest}")
    return train, val
