"""The network of a run as a config builds it: the model (DDP- and compile-wrapped as
configured), its optimizer and loss scaler, and the compiler of validation's forwards.
"""
from __future__ import annotations

import torch
from torch import nn

from ..training.compiled import EvalCompiler, allow_shapes, compiled, shape_count
from ..training.distributed import Dist, wrap_ddp
from ..training.ema import ModelEMA
from ..training.models import build_model
from ..training.optim import Precision, build_optimizer


def build_config_optimizer(config, module: nn.Module,
                           device: torch.device) -> torch.optim.Optimizer:
    """The ``optimizer.*`` optimizer over ``module`` (on ``device``); the rate is set
    before every step."""
    return build_optimizer(
        config['optimizer.name'], module, lr=0.0, momentum=config['optimizer.momentum'],
        weight_decay=config['optimizer.weight_decay'],
        nesterov=bool(config['optimizer.nesterov']),
        betas=(config['optimizer.beta1'], config['optimizer.beta2']),
        eps=config['optimizer.eps'], trust_coefficient=config['optimizer.trust_coefficient'],
        fused=device.type == 'cuda', decay_rule=config['optimizer.decay_rule'])


def build_network(config, dist: Dist, precision: Precision, num_classes: int):
    """(model to train, plain module, optimizer, scaler), initialised from the seed."""
    torch.manual_seed(config['training.seed'])
    module = build_model(config['model.arch'], num_classes,
                         blurpool=bool(config['model.blurpool']),
                         zero_init_residual=bool(config['model.zero_init_residual']),
                         channels_last=bool(config['model.channels_last']),
                         drop_path_rate=config['model.drop_path_rate'],
                         head=config['model.head'])
    module = module.to(dist.device)
    optimizer = build_config_optimizer(config, module, dist.device)
    scaler = precision.scaler()
    model = module
    if dist.enabled:
        model = wrap_ddp(module, dist.device, config['training.ddp_bucket_mb'])
    if config['model.compile']:
        # a few fixed resolutions: static shapes compile faster convolutions than the
        # symbolic ones dynamo switches to after the first resolution change
        model = compiled(model, config['model.compile_mode'], config['model.compile_backend'])
    return model, module, optimizer, scaler


def eval_compiler(config, run_shapes: int, val_batch: int,
                  ema: ModelEMA | None) -> EvalCompiler | None:
    """With ``model.compile``: dynamo's cache sized for the run's ``run_shapes``
    training shapes and validation's, and the compiler of validation's forwards at
    ``val_batch`` images per process (None without ``model.compile``)."""
    if not config['model.compile']:
        return None
    allow_shapes(shape_count(run_shapes, 1 if ema is None else 2))
    return EvalCompiler(val_batch, config['model.compile_mode'],
                        config['model.compile_backend'])
