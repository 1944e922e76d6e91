"""The training config: every key, its default and its range checks.

The fastargs sections of the train command (``train_imagenet.py``) and of the LR
finder (which reads the same recipe files) are declared here;
:mod:`ffcv_imagenet.cli.recipe` turns a parsed config into built objects. Library
modules never see the config system.

Batch size and learning rate: ``training.batch_size`` is per GPU (per process);
the global batch is that times the world size (or ``training.global_batch_size``,
which must divide evenly). ``lr.lr`` is the peak rate for a global batch of
``lr.reference_batch`` images and is scaled linearly with the global batch.

Every recipe feature beyond the published ffcv recipe (EMA, MixUp/CutMix, drop path,
early stopping, plots) is off by default.
"""
from __future__ import annotations

from fastargs import Param, Section

from .config import ConfigError, Flag, OneOf, register_switch
from ..data.read.orders import ORDERS
from ..data.write.storage import PRESETS, find_preset
from ..training.compiled import MODES as COMPILE_MODES
from ..training.distributed import COLLECTIVE_TIMEOUT_S, DDP_BUCKET_MB
from ..training.erasing import MODES as ERASE_MODES
from ..training.models import ARCHS, HEADS
from ..training.optim import DECAY_RULES, OPTIMIZERS, PRECISIONS
from ..training.preempt import CheckpointPeriod
from ..training.schedules import SCHEDULES, Stages

PARITY_MODES = ('none', 'ffcv')
# What training.parity=ffcv sets: ffcv-imagenet's train_imagenet.py wherever this
# trainer does otherwise by default (docs/recipes.md, "Differences from the published
# recipes"). A value set beside or after the switch that differs is an error.
PARITY = {'ffcv': {
    'training.precision': 'fp16',     # fp16 autocast with a GradScaler (off on the CPU)
    'optimizer.decay_rule': 'names',  # decay every tensor whose name lacks 'bn'
    'lr.start_fraction': 1e-4,        # get_cyclic_lr starts at 1e-4 x the peak
    'lr.interpolate_epochs': 1,       # train_loop joins whole-epoch rates linearly
    'data.dct_scaling': 0,            # decode every JPEG crop in full, one area resize
}}
register_switch('training.parity', PARITY)
# ffcv-imagenet's trainer has these schedules only
PARITY_SCHEDULES = ('cyclic', 'step')

Section('data', 'the .beton files and their loaders').params(
    train_dataset=Param(str, 'train .beton', required=True),
    val_dataset=Param(str, 'val .beton', required=True),
    num_workers=Param(int, "decoding threads per process (0 = the process's share of "
                      "the cores it may run on, less one for its main thread)", default=0),
    in_memory=Param(Flag(), '1: read through the OS page cache (dataset fits in RAM)',
                    default=1),
    order=Param(OneOf(*ORDERS), "the train split's order each epoch: 'random' (the whole "
                "split permuted) or 'blocks' (page-local: pages permuted and dealt to the "
                "ranks, samples shuffled within windows of order_window pages; for a file "
                "read from disk, in_memory=0)", default='random'),
    order_window=Param(int, "data.order=blocks: pages whose samples are shuffled together "
                       "(a batch draws from this many pages)", default=16),
    storage_preset=Param(str, 'the storage preset (convert --preset) the recipe was '
                         f"published with: {', '.join(PRESETS)}; other storage gets a "
                         "note at the start ('' = no expectation)", default=''),
    dct_scaling=Param(Flag(), '1: the train loader decodes a JPEG crop at least 2x the '
                      'resolution both ways at 1/2-1/8 scale (faster, blurrier); 0: '
                      'full-size decode and one area resize, as published', default=0),
)
Section('model', 'the network').params(
    arch=Param(OneOf(*ARCHS), 'architecture', default='resnet50'),
    blurpool=Param(Flag(), 'blur before every strided conv (Zhang 2019)', default=1),
    zero_init_residual=Param(Flag(), 'zero-init the last BatchNorm of each block',
                             default=0),
    channels_last=Param(Flag(), 'channels-last memory format', default=1),
    compile=Param(Flag(), 'torch.compile the model for training and for validation '
                  'during training, each shape once (static shapes)', default=0),
    compile_mode=Param(OneOf(*COMPILE_MODES), "torch.compile's mode: 'default', "
                       "'reduce-overhead' (CUDA graphs), 'max-autotune' (minutes per shape)",
                       default='default'),
    compile_backend=Param(str, "torch.compile's backend: 'inductor', or 'eager' / "
                          "'aot_eager' to debug (these take only compile_mode=default)",
                          default='inductor'),
    drop_path_rate=Param(float, 'stochastic depth: drop rate of the last residual block, '
                                'rising linearly from 0 at the first (0 = off)', default=0.0),
    head=Param(OneOf(*HEADS), "classifier: 'fc' (torchvision's keys) or 'conv1x1' (a 1x1 "
               "convolution before the average pool)", default='fc'),
)
Section('resolution', 'progressive resizing of training images (pixels, epochs)').params(
    stages=Param(str, "staged resizing with batch size, replacing the ramp below: "
                 "'epoch:pixels:batch' per stage, epochs 0-based, batch per GPU "
                 "('0:64:256,30:128:128,50:224:64'; '' = the linear ramp)", default=''),
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
    pct_start=Param(float, 'onecycle: fraction of the run spent rising to the peak',
                    default=0.25),
    div_factor=Param(float, 'onecycle: start at peak / div_factor', default=25.0),
    final_div_factor=Param(float, 'onecycle: end at start / final_div_factor', default=1e4),
    start_fraction=Param(float, 'cyclic, and the step/cosine warm-ups: start the linear '
                         'ramp at this fraction of the peak rather than at 0',
                         default=0.0),
    interpolate_epochs=Param(Flag(), '1: the schedule at whole epochs, linear over each '
                             "epoch's steps (ffcv-imagenet's trainer); 0: the schedule at "
                             'every step', default=0),
)
Section('optimizer', 'SGD, AdamW or LARS').params(
    name=Param(OneOf(*OPTIMIZERS), 'sgd, adamw (decoupled weight decay) or lars (SGD '
               'with a layer-wise trust ratio, for global batches of thousands)',
               default='sgd'),
    momentum=Param(float, 'momentum (sgd, lars)', default=0.9),
    nesterov=Param(Flag(), 'Nesterov momentum (sgd)', default=0),
    weight_decay=Param(float, 'weight decay (on the tensors decay_rule picks; decoupled '
                       'for adamw)', default=5e-5),
    decay_rule=Param(OneOf(*DECAY_RULES), "which tensors get weight decay: 'types' (conv "
                     "and linear weights, no norm parameter or bias) or 'names' (every "
                     "tensor whose name lacks 'bn', ffcv-imagenet's rule)",
                     default='types'),
    beta1=Param(float, 'adamw: first-moment decay', default=0.9),
    beta2=Param(float, 'adamw: second-moment decay', default=0.999),
    eps=Param(float, 'adamw: denominator epsilon', default=1e-8),
    trust_coefficient=Param(float, 'lars: trust coefficient (eta)', default=0.001),
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
    collective_timeout_s=Param(float, 'seconds a collective waits for the other processes '
                               '(a frozen node) before the job stops; it must cover the '
                               "first step's compilation and a checkpoint write",
                               default=COLLECTIVE_TIMEOUT_S),
    ddp_bucket_mb=Param(float, "DDP's gradient buckets in MiB, each all-reduced as soon as "
                        'its gradients are ready', default=DDP_BUCKET_MB),
    stop_after=Param(int, 'end this invocation after this epoch (0 = run to epochs)',
                     default=0),
    parity=Param(OneOf(*PARITY_MODES), "'ffcv': train as ffcv-imagenet's trainer did where "
                 'this one offers another way (sets ' + ', '.join(
                     f'{key}={value}' for key, value in PARITY['ffcv'].items())
                 + "); 'none': as configured", default='none'),
)
Section('validation', 'validation').params(
    batch_size=Param(int, 'images per batch per GPU', default=256),
    resolution=Param(int, 'pixels', default=256),
    crop_ratio=Param(float, 'centre crop side / shorter image side', default=224 / 256),
    tta=Param(Flag(), 'average the logits of each image and its mirror', default=1),
    every=Param(int, 'validate every this many epochs (and after the last)', default=1),
    start_epoch=Param(int, 'validate no epoch before this one (1-based, 0 = from the '
                      'first), except the last', default=0),
    resolutions=Param(str, "eval_only: validate at each of these resolutions ('160,192,224') "
                      "and print a table", default=''),
    crop_ratios=Param(str, "eval_only: validate at each of these centre-crop ratios "
                      "('0.75,0.875,1') and print a table", default=''),
    folder=Param(str, "eval_only: also score the checkpoint by torchvision's standard "
                 "evaluation of this original val image folder (one folder per class, "
                 "or Tiny ImageNet's val), labelled by the run's class list, on rank 0",
                 default=''),
    folder_resize=Param(int, 'standard evaluation: shorter side resized to this (pixels)',
                        default=256),
    folder_crop=Param(int, 'standard evaluation: centre crop side (pixels)', default=224),
)
Section('checkpoint', 'checkpoints in <logging.folder>/checkpoints').params(
    resume=Param(str, "'' = fresh run, 'auto' = newest in the run folder, or a path",
                 default=''),
    every=Param(int, 'also keep epoch_NNNN.pt every this many epochs (0 = off)', default=0),
    last_every=Param(str, "write last.pt every N epochs ('2') or every N minutes or hours "
                          "of training ('30m', '1h'; at a step boundary), and at the last "
                          "epoch of the run or of this invocation", default='1'),
    best_metric=Param(OneOf('val_top1', 'ema_val_top1'), 'metric that picks best.pt and '
                      'drives early stopping (ema_val_top1 needs ema.enabled=1)',
                      default='val_top1'),
    best_after=Param(int, 'choose best.pt (and judge early stopping) only among the '
                     'epochs after this one (0 = all)', default=0),
)
Section('logging', 'logs').params(
    folder=Param(str, 'run folder: config.json, log.jsonl, checkpoints/', required=True),
    tensorboard=Param(Flag(), 'also write TensorBoard scalars to <folder>/tb', default=0),
    progress=Param(Flag(), 'show a progress bar', default=1),
    log_every=Param(int, 'iterations between progress updates and loss checks',
                    default=50),
    plot=Param(Flag(), '1: write PNG plots of the log to <folder>/plots at the end',
               default=0),
)
Section('ema', 'exponential moving average of the weights (fp32, validated beside '
               'the raw weights)').params(
    enabled=Param(Flag(), '1: keep and validate an EMA of the weights', default=0),
    decay=Param(float, 'decay per optimizer step', default=0.9998),
    warmup_steps=Param(float, 'decay ramps in as decay * (1 - exp(-step / warmup_steps)) '
                              '(0 = off)', default=0.0),
    every=Param(int, 'update every this many optimizer steps (decay ** every per update)',
                default=1),
    buffers=Param(OneOf('copy', 'average'), "BatchNorm statistics of the EMA: 'average' "
                  "them with the weights, or 'copy' the raw model's", default='average'),
)
Section('erase', 'random erasing (coarse dropout) of training images (off at prob 0)').params(
    prob=Param(float, 'probability that an image gets one erased rectangle', default=0.0),
    min_area=Param(float, 'smallest rectangle, as a fraction of the image', default=0.02),
    max_area=Param(float, 'largest rectangle, as a fraction of the image', default=1 / 3),
    min_aspect=Param(float, 'aspect ratios log-uniform in [min_aspect, 1 / min_aspect]',
                     default=0.3),
    mode=Param(OneOf(*ERASE_MODES), "fill: 'const' (the mean) or 'pixel' (normal noise)",
               default='const'),
)
Section('mix', 'MixUp / CutMix of training batches (off while both alphas are 0)').params(
    mixup_alpha=Param(float, 'MixUp Beta(alpha, alpha) (0 = off)', default=0.0),
    cutmix_alpha=Param(float, 'CutMix Beta(alpha, alpha) (0 = off)', default=0.0),
    prob=Param(float, 'probability that a batch is mixed', default=1.0),
    switch_prob=Param(float, 'with both on: probability of CutMix rather than MixUp',
                      default=0.5),
)
Section('early_stop', 'stop when the best metric has not improved for a while').params(
    patience=Param(int, 'epochs without a new best before stopping (0 = off)', default=0),
    min_epochs=Param(int, 'never stop before this many epochs', default=0),
)

SECTIONS = ('data', 'model', 'resolution', 'lr', 'optimizer', 'training', 'validation',
            'checkpoint', 'logging', 'ema', 'mix', 'erase', 'early_stop')

_POSITIVE = ('training.epochs', 'training.batch_size',
             'validation.batch_size', 'validation.resolution', 'validation.every',
             'validation.folder_resize', 'validation.folder_crop',
             'logging.log_every', 'lr.reference_batch', 'ema.every',
             'training.ddp_bucket_mb', 'data.order_window', 'training.collective_timeout_s')
_NON_NEGATIVE = ('data.num_workers', 'training.global_batch_size', 'training.grad_clip',
                 'training.stop_after', 'validation.start_epoch',
                 'checkpoint.every', 'checkpoint.best_after', 'optimizer.weight_decay',
                 'optimizer.momentum',
                 'optimizer.eps', 'optimizer.trust_coefficient', 'lr.lr', 'lr.min_lr',
                 'lr.warmup_epochs', 'ema.warmup_steps',
                 'mix.mixup_alpha', 'mix.cutmix_alpha', 'early_stop.patience',
                 'early_stop.min_epochs')
_FRACTIONS = ('training.label_smoothing', 'model.drop_path_rate', 'ema.decay',
              'optimizer.beta1', 'optimizer.beta2', 'lr.start_fraction')  # [0, 1)
_PROBABILITIES = ('mix.prob', 'mix.switch_prob')  # [0, 1]


def check_values(config) -> Stages | None:
    """Range checks fastargs' type checks cannot express. Returns the parsed
    ``resolution.stages`` (None: the linear ramp instead), which callers pass on
    rather than parse again.

    Raises:
        ConfigError: naming the key and the value.
    """
    for key in _POSITIVE:
        if config[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {config[key]}")
    for key in _NON_NEGATIVE:
        if config[key] < 0:
            raise ConfigError(f"{key} must not be negative, got {config[key]}")
    for key in _FRACTIONS:
        if not 0 <= config[key] < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {config[key]}")
    for key in _PROBABILITIES:
        if not 0 <= config[key] <= 1:
            raise ConfigError(f"{key} must be in [0, 1], got {config[key]}")
    if config['data.storage_preset']:
        try:
            find_preset(config['data.storage_preset'])
        except ValueError as err:
            raise ConfigError(f"data.storage_preset: {err}") from None
    try:
        CheckpointPeriod.parse(config['checkpoint.last_every'])
    except ValueError as err:
        raise ConfigError(f"checkpoint.last_every: {err}") from None
    stages = resolution_stages(config)  # a sweep checks its variants before any run
    # the eval-only sweeps and the standard evaluation: well-formed, and eval-only
    for key, parse in (('validation.resolutions', parse_resolutions),
                       ('validation.crop_ratios', parse_crop_ratios),
                       ('validation.folder', str)):
        try:
            asked = parse(config[key])
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None
        if asked and not config['training.eval_only']:
            raise ConfigError(f"{key} needs training.eval_only=1")
    if config['validation.folder_crop'] > config['validation.folder_resize']:
        # torchvision would pad the crop with zeros: no longer the standard evaluation
        raise ConfigError(f"validation.folder_crop ({config['validation.folder_crop']}) "
                          f"must not exceed validation.folder_resize "
                          f"({config['validation.folder_resize']})")
    if config['checkpoint.best_metric'] == 'ema_val_top1' and not config['ema.enabled']:
        raise ConfigError("checkpoint.best_metric=ema_val_top1 needs ema.enabled=1")
    if not 0 < config['validation.crop_ratio'] <= 1:
        raise ConfigError(f"validation.crop_ratio must be in (0, 1], "
                          f"got {config['validation.crop_ratio']}")
    if config['training.parity'] == 'ffcv' and config['lr.schedule'] not in PARITY_SCHEDULES:
        raise ConfigError(f"lr.schedule={config['lr.schedule']} cannot be combined with "
                          f"training.parity=ffcv, whose trainer has the schedules "
                          f"{' and '.join(PARITY_SCHEDULES)} only")
    if config['model.compile_mode'] != 'default' and config['model.compile_backend'] != 'inductor':
        raise ConfigError(f"model.compile_mode={config['model.compile_mode']} needs "
                          f"model.compile_backend=inductor, not "
                          f"{config['model.compile_backend']}")
    if config['optimizer.nesterov'] and config['optimizer.momentum'] <= 0:
        raise ConfigError("optimizer.nesterov=1 needs optimizer.momentum > 0")
    if config['logging.tensorboard']:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("logging.tensorboard=1 needs the tensorboard package "
                              "(pip install tensorboard)") from None
    return stages


def resolution_stages(config) -> Stages | None:
    """The ``resolution.stages`` of the config (None: the linear ramp instead).
    Raises:
        ConfigError: a malformed list, or one combined with a global batch size.
    """
    if not config['resolution.stages'].strip():
        return None
    try:
        stages = Stages.parse(config['resolution.stages'], config['training.epochs'])
    except ValueError as err:
        raise ConfigError(f"resolution.stages: {err}") from None
    if config['training.global_batch_size']:
        raise ConfigError("training.global_batch_size cannot be combined with "
                          "resolution.stages, whose batch sizes are per GPU")
    return stages


def per_gpu_batch(config, world_size: int, stages: Stages | None) -> int:
    """Images per step per process (with ``stages``, the parsed ``resolution.stages``:
    the first stage's).

    Raises:
        ConfigError: ``training.global_batch_size`` does not divide by the world size.
    """
    if stages is not None:
        return stages.at(0).batch
    total = config['training.global_batch_size']
    if not total:
        return config['training.batch_size']
    if total % world_size:
        raise ConfigError(f"training.global_batch_size={total} is not divisible by the "
                          f"{world_size} processes")
    return total // world_size


def parse_resolutions(text: str) -> list[int]:
    """'160, 192,224' -> [160, 192, 224] (pixels); '' -> [].
    Raises:
        ValueError: not a comma-separated list of whole numbers of at least 8.
    """
    values = [part.strip() for part in text.split(',') if part.strip()]
    if not all(v.isdigit() and int(v) >= 8 for v in values):
        raise ValueError(f"expected pixel sizes of at least 8 separated by commas, got "
                         f"{text!r}")
    return [int(v) for v in values]


def parse_crop_ratios(text: str) -> list[float]:
    """'0.75, 0.875,1' -> [0.75, 0.875, 1.0]; '' -> [].
    Raises:
        ValueError: not a comma-separated list of numbers in (0, 1].
    """
    try:
        values = [float(part) for part in text.split(',') if part.strip()]
    except ValueError:
        values = [-1.0]
    if not all(0 < v <= 1 for v in values):
        raise ValueError(f"expected centre-crop ratios in (0, 1] separated by commas, got "
                         f"{text!r}")
    return values
