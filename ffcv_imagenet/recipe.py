"""The training config: its sections, and the checks that run before any work.

This module is the config edge shared by ``train_imagenet.py`` (and later tools
that read the same recipe files). It declares the fastargs sections and turns a
parsed config into plain values with :func:`read_settings`; the library modules
it feeds never see the config system.

Batch size and learning rate: ``training.batch_size`` is per GPU (per process);
the global batch is that times the world size (or ``training.global_batch_size``,
which must divide evenly). ``lr.lr`` is the peak rate for a global batch of
``lr.reference_batch`` images and is scaled linearly with the global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from fastargs import Param, Section
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .checkpoint import check_compatible, checkpoint_dir, find_latest, load_checkpoint
from .config import ConfigError, Flag, OneOf, as_dict
from .distributed import Dist, broadcast_object
from .folders import DatasetError, classes_path, load_classes
from .loaders import ImageLoader, train_loader, val_loader
from .models import ARCHS, build_model
from .optim import PRECISIONS, Precision, build_sgd, resolve_precision
from .schedules import SCHEDULES, lr_schedule, resolution_at
from .trainer import FitOptions, TrainState, restore

Section('data', 'the .beton files and their loaders').params(
    train_dataset=Param(str, 'train .beton', required=True),
    val_dataset=Param(str, 'val .beton', required=True),
    num_workers=Param(int, 'decoding threads per process', default=8),
    in_memory=Param(Flag(), '1: read through the OS page cache (dataset fits in RAM)',
                    default=1),
)
Section('model', 'the network').params(
    arch=Param(OneOf(*ARCHS), 'architecture', default='resnet50'),
    blurpool=Param(Flag(), 'blur before every strided conv (Zhang 2019)', default=1),
    zero_init_residual=Param(Flag(), 'zero-init the last BatchNorm of each block',
                             default=0),
    channels_last=Param(Flag(), 'channels-last memory format', default=1),
    compile=Param(Flag(), 'torch.compile the model', default=0),
)
Section('resolution', 'progressive resizing of training images (pixels, epochs)').params(
    min_res=Param(int, 'resolution up to start_ramp', default=160),
    max_res=Param(int, 'resolution from end_ramp on', default=192),
    start_ramp=Param(int, 'epoch (0-based) where the ramp starts', default=0),
    end_ramp=Param(int, 'epoch where max_res is reached', default=0),
)
Section('lr', 'learning-rate schedule (updated every iteration)').params(
    lr=Param(float, 'peak learning rate for a global batch of reference_batch', default=0.5),
    reference_batch=Param(int, 'global batch size that lr is stated for', default=256),
    schedule=Param(OneOf(*SCHEDULES), 'schedule shape', default='cyclic'),
    peak_epoch=Param(float, 'cyclic: epoch of the peak', default=2.0),
    warmup_epochs=Param(float, 'step/cosine: linear warm-up epochs', default=0.0),
    step_length=Param(float, 'step: epochs between decays', default=30.0),
    step_ratio=Param(float, 'step: decay factor', default=0.1),
    min_lr=Param(float, 'cosine: final learning rate', default=0.0),
)
Section('optimizer', 'SGD').params(
    momentum=Param(float, 'momentum', default=0.9),
    nesterov=Param(Flag(), 'Nesterov momentum', default=0),
    weight_decay=Param(float, 'L2 weight decay (never on norm parameters or biases)',
                       default=5e-5),
)
Section('training', 'the run').params(
    epochs=Param(int, 'epochs', default=16),
    batch_size=Param(int, 'images per step per GPU (process)', default=512),
    global_batch_size=Param(int, 'if > 0: images per step over all GPUs, split evenly '
                                 '(replaces batch_size)', default=0),
    label_smoothing=Param(float, 'label smoothing', default=0.1),
    precision=Param(OneOf(*PRECISIONS), 'autocast: auto = bf16 on GPUs that have it',
                    default='auto'),
    grad_clip=Param(float, 'max gradient L2 norm (0 = off)', default=0.0),
    seed=Param(int, 'seed of initialisation, order and augmentation', default=0),
    device=Param(OneOf('auto', 'cuda', 'cpu'), 'auto = GPU when there is one',
                 default='auto'),
    eval_only=Param(Flag(), '1: evaluate the resumed checkpoint and exit', default=0),
    stop_after=Param(int, 'end this invocation after this epoch (0 = run to epochs)',
                     default=0),
)
Section('validation', 'validation').params(
    batch_size=Param(int, 'images per batch per GPU', default=256),
    resolution=Param(int, 'pixels', default=256),
    crop_ratio=Param(float, 'centre crop side / shorter image side', default=224 / 256),
    tta=Param(Flag(), 'average the logits of each image and its mirror', default=1),
    every=Param(int, 'validate every this many epochs (and after the last)', default=1),
)
Section('checkpoint', 'checkpoints in <logging.folder>/checkpoints').params(
    resume=Param(str, "'' = fresh run, 'auto' = newest in the run folder, or a path",
                 default=''),
    every=Param(int, 'also keep epoch_NNNN.pt every this many epochs (0 = off)', default=0),
)
Section('logging', 'logs').params(
    folder=Param(str, 'run folder: config.json, log.jsonl, checkpoints/', required=True),
    tensorboard=Param(Flag(), 'also write TensorBoard scalars to <folder>/tb', default=0),
    progress=Param(Flag(), 'show a progress bar', default=1),
    log_every=Param(int, 'iterations between progress updates and loss checks',
                    default=50),
)

SECTIONS = ('data', 'model', 'resolution', 'lr', 'optimizer', 'training', 'validation',
            'checkpoint', 'logging')

_POSITIVE = ('data.num_workers', 'training.epochs', 'training.batch_size',
             'validation.batch_size', 'validation.resolution', 'validation.every',
             'logging.log_every', 'lr.reference_batch')
_NON_NEGATIVE = ('training.global_batch_size', 'training.grad_clip', 'training.stop_after',
                 'checkpoint.every', 'optimizer.weight_decay', 'optimizer.momentum',
                 'lr.lr', 'lr.min_lr', 'lr.warmup_epochs')


def check_values(config) -> None:
    """Range checks fastargs' type checks cannot express.

    Raises:
        ConfigError: naming the key and the value.
    """
    for key in _POSITIVE:
        if config[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {config[key]}")
    for key in _NON_NEGATIVE:
        if config[key] < 0:
            raise ConfigError(f"{key} must not be negative, got {config[key]}")
    if not 0 <= config['training.label_smoothing'] < 1:
        raise ConfigError(f"training.label_smoothing must be in [0, 1), "
                          f"got {config['training.label_smoothing']}")
    if not 0 < config['validation.crop_ratio'] <= 1:
        raise ConfigError(f"validation.crop_ratio must be in (0, 1], "
                          f"got {config['validation.crop_ratio']}")
    if config['optimizer.nesterov'] and config['optimizer.momentum'] <= 0:
        raise ConfigError("optimizer.nesterov=1 needs optimizer.momentum > 0")
    if config['logging.tensorboard']:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("logging.tensorboard=1 needs the tensorboard package "
                              "(pip install tensorboard)") from None


def per_gpu_batch(config, world_size: int) -> int:
    """Images per step per process.

    Raises:
        ConfigError: ``training.global_batch_size`` does not divide by the world size.
    """
    total = config['training.global_batch_size']
    if not total:
        return config['training.batch_size']
    if total % world_size:
        raise ConfigError(f"training.global_batch_size={total} is not divisible by the "
                          f"{world_size} processes")
    return total // world_size


@dataclass
class Run:
    """Everything ``fit`` needs, built from a config. ``model`` is wrapped (DDP,
    compile) as configured; ``module`` is the plain network inside it."""
    dist: Dist
    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    train_loader: ImageLoader
    val_loader: ImageLoader
    lr_at: Callable[[int], float]
    res_at: Callable[[int], int]
    options: FitOptions
    state: TrainState
    run_dir: Path
    meta: dict
    resumed_from: Path | None
    notes: list[str] = field(default_factory=list)


def _dataset(config, key: str) -> tuple[str, list[str]]:
    path = config[key]
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: .beton file not found: {path}")
    try:
        classes, _ = load_classes(classes_path(path))
    except DatasetError as err:
        raise ConfigError(f"{key}: {err}") from None
    return path, classes


def _schedules(config, steps_per_epoch: int, global_batch: int):
    peak_lr = config['lr.lr'] * global_batch / config['lr.reference_batch']
    try:
        lr_at = lr_schedule(
            config['lr.schedule'], peak_lr=peak_lr, epochs=config['training.epochs'],
            steps_per_epoch=steps_per_epoch, peak_epoch=config['lr.peak_epoch'],
            warmup_epochs=config['lr.warmup_epochs'], step_length=config['lr.step_length'],
            step_ratio=config['lr.step_ratio'], min_lr=config['lr.min_lr'])
    except ValueError as err:  # the messages start with the key's name
        raise ConfigError(f"lr.{err}") from None
    ramp = {key: config[f'resolution.{key}']
            for key in ('min_res', 'max_res', 'start_ramp', 'end_ramp')}
    try:
        resolution_at(0, **ramp)  # checks the ramp now rather than at epoch 60
    except ValueError as err:
        raise ConfigError(f"resolution: {err}") from None
    return lr_at, partial(resolution_at, **ramp), peak_lr


def _resume_source(config, run_dir: Path) -> tuple[Path | None, str]:
    """(checkpoint to load or None, a note for the user)."""
    resume = config['checkpoint.resume']
    if resume == 'auto':
        latest = find_latest(run_dir)
        if latest is None and config['training.eval_only']:
            raise ConfigError(f"training.eval_only=1: no checkpoint in "
                              f"{checkpoint_dir(run_dir)} to evaluate")
        if latest is None:
            return None, f"no checkpoint in {checkpoint_dir(run_dir)}; starting fresh"
        return latest, f"resuming from {latest}"
    if resume:
        return Path(resume), f"resuming from {resume}"
    if config['training.eval_only']:
        raise ConfigError("training.eval_only=1 needs --checkpoint.resume=PATH or auto")
    if any(checkpoint_dir(run_dir).glob('*.pt')):
        raise ConfigError(f"{checkpoint_dir(run_dir)} already holds checkpoints; pass "
                          f"--checkpoint.resume=auto to continue, or choose another "
                          f"--logging.folder")
    return None, f"new run in {run_dir}"


def build_run(config, dist: Dist) -> Run:
    """Loaders, model, optimizer, schedules and resume state from a parsed config.

    Everything is checked before anything heavy starts.
    Raises:
        ConfigError / CheckpointError: one line naming the key or file.
    """
    check_values(config)
    train_path, classes = _dataset(config, 'data.train_dataset')
    val_path, val_classes = _dataset(config, 'data.val_dataset')
    if val_classes != classes:
        raise ConfigError(f"data.val_dataset: {val_path} was written with a different class "
                          f"list than {train_path}")
    run_dir = Path(config['logging.folder'])
    source, note = _agreed_resume_source(config, run_dir, dist)
    saved = load_checkpoint(source) if source else None
    arch = config['model.arch']
    if saved:
        check_compatible(saved, source, arch=arch, classes=classes)
    batch = per_gpu_batch(config, dist.world_size)
    try:
        precision = resolve_precision(config['training.precision'], dist.device)
    except ValueError as err:
        raise ConfigError(f"training.precision: {err}") from None
    train, val = _loaders(config, dist, precision, train_path, val_path, batch)
    if saved and saved['iteration'] != saved['epoch'] * len(train):
        raise ConfigError(
            f"training.batch_size: {source} took {saved['iteration']} steps in "
            f"{saved['epoch']} epochs, but this run takes {len(train)} per epoch; resume "
            f"with the batch size and number of processes it was trained with")
    lr_at, res_at, peak_lr = _schedules(config, len(train), batch * dist.world_size)
    model, module, optimizer, scaler = _network(config, dist, precision, len(classes))
    state = TrainState()
    if saved:
        state = restore(saved, module, optimizer, scaler)
        _apply_optimizer_config(optimizer, config)  # the config wins over saved values
    return Run(dist, model, module, optimizer, scaler, precision, train, val, lr_at, res_at,
               _fit_options(config), state, run_dir,
               {'arch': arch, 'num_classes': len(classes), 'classes': classes,
                'config': as_dict(config, SECTIONS)}, source,
               [note, f"{dist.world_size} process(es) on {dist.device.type}, batch {batch} "
                      f"per process, peak lr {peak_lr:.4g}, precision {precision.name}, "
                      f"{len(train)} steps per epoch"])


def _fit_options(config) -> FitOptions:
    return FitOptions(
        epochs=config['training.epochs'], label_smoothing=config['training.label_smoothing'],
        grad_clip=config['training.grad_clip'], eval_every=config['validation.every'],
        tta=bool(config['validation.tta']), checkpoint_every=config['checkpoint.every'],
        stop_after=config['training.stop_after'], log_every=config['logging.log_every'],
        seed=config['training.seed'], progress=bool(config['logging.progress']))


def _loaders(config, dist: Dist, precision: Precision, train_path: str, val_path: str,
             batch: int) -> tuple[ImageLoader, ImageLoader]:
    common = dict(num_workers=config['data.num_workers'], device=dist.device,
                  in_memory=bool(config['data.in_memory']), distributed=dist.enabled,
                  dtype=precision.input_dtype)
    train = train_loader(train_path, batch_size=batch, seed=config['training.seed'],
                         resolution=config['resolution.min_res'], **common)
    val = val_loader(val_path, batch_size=config['validation.batch_size'],
                     resolution=config['validation.resolution'],
                     center_ratio=config['validation.crop_ratio'], **common)
    if len(train) == 0:
        raise ConfigError(f"training.batch_size: {train_path} gives each of the "
                          f"{dist.world_size} processes {train.num_samples} images, fewer "
                          f"than one batch of {batch}")
    return train, val


def _agreed_resume_source(config, run_dir: Path, dist: Dist) -> tuple[Path | None, str]:
    """Rank 0 decides what to resume from and tells the others, so that ranks on
    other nodes cannot disagree (or fail alone) over what their disks hold; the
    run folder must therefore be on a file system every node can read."""
    decision = None
    if dist.is_main:
        try:
            decision = (*_resume_source(config, run_dir), None)
        except ConfigError as err:
            decision = (None, '', str(err))
    source, note, error = broadcast_object(decision)
    if error:
        raise ConfigError(error)
    return (Path(source) if source else None), note


def _apply_optimizer_config(optimizer: torch.optim.Optimizer, config) -> None:
    for group in optimizer.param_groups:
        group['momentum'] = config['optimizer.momentum']
        group['nesterov'] = bool(config['optimizer.nesterov'])
        if group.get('name') == 'decay':
            group['weight_decay'] = config['optimizer.weight_decay']


def _network(config, dist: Dist, precision: Precision, num_classes: int):
    """(model to train, plain module, optimizer, scaler), initialised from the seed."""
    torch.manual_seed(config['training.seed'])
    module = build_model(config['model.arch'], num_classes,
                         blurpool=bool(config['model.blurpool']),
                         zero_init_residual=bool(config['model.zero_init_residual']),
                         channels_last=bool(config['model.channels_last']))
    module = module.to(dist.device)
    optimizer = build_sgd(module, lr=0.0, momentum=config['optimizer.momentum'],
                          weight_decay=config['optimizer.weight_decay'],
                          nesterov=bool(config['optimizer.nesterov']))
    scaler = precision.scaler()
    model = module
    if dist.enabled:
        device_ids = [dist.device.index] if dist.device.type == 'cuda' else None
        model = DDP(module, device_ids=device_ids)
    if config['model.compile']:
        # a few fixed resolutions: static shapes compile faster convolutions than the
        # symbolic ones dynamo switches to after the first resolution change
        model = torch.compile(model, dynamic=False)
    return model, module, optimizer, scaler
