"""Optimizers (SGD, AdamW, LARS) and mixed-precision settings.

Which parameters get weight decay (``decay_rule``):

- ``'types'`` (the default): convolution and linear weights only. Every parameter of
  a normalisation layer (BatchNorm, GroupNorm, LayerNorm, ...) and every bias is
  exempt, decided by the module type that owns the parameter rather than by its name:
  a name rule such as "'bn' in name" misses torchvision's ``downsample.1`` BatchNorms.
- ``'names'``: ffcv-imagenet's rule, every parameter whose qualified name lacks
  ``'bn'``; in a torchvision ResNet that also decays the downsample BatchNorms and
  ``fc.bias``.

LARS leaves its layer-wise trust ratio off for the parameters without decay, as the
large-batch ResNet-50 results that use it do.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

_NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
PRECISIONS = ('auto', 'bf16', 'fp16', 'off')
OPTIMIZERS = ('sgd', 'adamw', 'lars')
DECAY_RULES = ('types', 'names')


def param_groups(model: nn.Module, weight_decay: float,
                 decay_rule: str = 'types') -> list[dict]:
    """Two parameter groups: ``decay`` (``weight_decay``) and ``no_decay`` (0), split
    by ``decay_rule`` (see the module's docstring): 'types' decays conv/linear weights
    only, 'names' every parameter whose name lacks 'bn'. Shared parameters count once.
    Raises:
        ValueError: an unknown rule.
    """
    if decay_rule not in DECAY_RULES:
        raise ValueError(f"unknown weight-decay rule {decay_rule!r} (choose from "
                         f"{', '.join(DECAY_RULES)})")
    decay, no_decay, seen = [], [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if decay_rule == 'names':
                exempt = 'bn' in f'{module_name}.{name}'
            else:
                exempt = isinstance(module, _NORM_TYPES) or name == 'bias' or param.ndim <= 1
            (no_decay if exempt else decay).append(param)
    return [{'params': decay, 'weight_decay': weight_decay, 'name': 'decay'},
            {'params': no_decay, 'weight_decay': 0.0, 'name': 'no_decay'}]


def build_sgd(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
              nesterov: bool = False, fused: bool = False,
              decay_rule: str = 'types') -> torch.optim.SGD:
    """SGD over :func:`param_groups`; ``lr`` is only the initial value (the training
    loop sets the scheduled rate before every step). ``fused`` (use it on CUDA) updates
    every parameter in a few kernels and lets an fp16 gradient scaler skip its
    per-step host synchronisation."""
    if nesterov and momentum <= 0:
        raise ValueError("nesterov momentum needs momentum > 0")
    return torch.optim.SGD(param_groups(model, weight_decay, decay_rule), lr=lr,
                           momentum=momentum, nesterov=nesterov, fused=fused or None)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al., 2017), for global
    batches of many thousands of images.

    For each parameter ``w`` of a group with ``lars=True``, with gradient ``g``:
    ``ratio = trust_coefficient * |w| / (|g| + weight_decay * |w|)`` (1 when either
    norm is 0), ``v = momentum * v + lr * ratio * (g + weight_decay * w)``, ``w -= v``.
    Groups with ``lars=False`` (the no-decay group of :func:`param_groups`) take the
    plain step with ratio 1 and their own weight decay (0).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            decay, momentum = group['weight_decay'], group['momentum']
            for param in group['params']:
                if param.grad is None:
                    continue
                grad = param.grad
                update = grad.add(param, alpha=decay) if decay else grad.clone()
                scale = group['lr']
                if group['lars']:
                    w_norm, g_norm = torch.linalg.vector_norm(param), \
                        torch.linalg.vector_norm(grad)
                    ratio = group['trust_coefficient'] * w_norm / (g_norm + decay * w_norm)
                    # a where on the device, not an if: no host synchronisation per layer
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio,
                                        torch.ones_like(ratio))
                    update.mul_(ratio)
                state = self.state[param]
                if 'momentum_buffer' not in state:
                    state['momentum_buffer'] = torch.zeros_like(param)
                buffer = state['momentum_buffer']
                buffer.mul_(momentum).add_(update, alpha=scale)
                param.sub_(buffer)
        return loss


def build_optimizer(name: str, model: nn.Module, *, lr: float, weight_decay: float,
                    momentum: float = 0.9, nesterov: bool = False,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    trust_coefficient: float = 0.001, fused: bool = False,
                    decay_rule: str = 'types') -> torch.optim.Optimizer:
    """'sgd' (:func:`build_sgd`), 'adamw' (decoupled weight decay, ``betas``, ``eps``)
    or 'lars' (:class:`LARS`), all over :func:`param_groups` split by ``decay_rule``;
    ``lr`` is only the initial value. ``fused``: the fused CUDA kernels where torch has
    them.
    Raises:
        ValueError: an unknown name or a bad setting.
    """
    if name == 'sgd':
        return build_sgd(model, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         nesterov=nesterov, fused=fused, decay_rule=decay_rule)
    groups = param_groups(model, weight_decay, decay_rule)
    if name == 'adamw':
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
    if name == 'lars':
        groups[1]['lars'] = False
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)
    raise ValueError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group['lr'] = lr


@dataclass(frozen=True)
class Precision:
    """Resolved mixed-precision setting: autocast dtype (None = full fp32) and whether
    a gradient scaler is needed (fp16 only)."""
    name: str
    dtype: torch.dtype | None
    device_type: str

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype the loaders should deliver images in: the autocast dtype on a GPU
        (half the bytes of float32 to move), float32 otherwise."""
        if self.device_type == 'cuda' and self.dtype is not None:
            return self.dtype
        return torch.float32

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self):
        """Context manager for the forward pass and the loss."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, disabled (a pass-through) unless fp16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """'auto' is bf16 on a GPU that supports it, fp16 on an older GPU and off on the
    CPU; 'bf16', 'fp16' and 'off' are taken as asked.

    Raises:
        ValueError: an unknown name, or fp16 on the CPU (no CPU fp16 autocast worth using).
    """
    device = torch.device(device)
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} (choose from {', '.join(PRECISIONS)})")
    on_gpu = device.type == 'cuda'
    if name == 'auto':
        if not on_gpu:
            name = 'off'
        else:
            name = 'bf16' if torch.cuda.is_bf16_supported() else 'fp16'
    if name == 'fp16' and not on_gpu:
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or off on the CPU")
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'off': None}[name]
    return Precision(name, dtype, device.type)
