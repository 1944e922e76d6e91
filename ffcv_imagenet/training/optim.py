"""Optimizer construction and mixed-precision settings.

Weight decay is applied to convolution and linear weights only. Every parameter of
a normalisation layer (BatchNorm, GroupNorm, LayerNorm, ...) and every bias is
exempt, decided by the module type that owns the parameter rather than by its name:
a name rule such as "'bn' in name" misses torchvision's ``downsample.1`` BatchNorms.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

_NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
PRECISIONS = ('auto', 'bf16', 'fp16', 'off')


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two SGD parameter groups: ``decay`` (conv/linear weights, ``weight_decay``) and
    ``no_decay`` (norm parameters and biases, 0). Shared parameters count once."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _NORM_TYPES) or name == 'bias' or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    return [{'params': decay, 'weight_decay': weight_decay, 'name': 'decay'},
            {'params': no_decay, 'weight_decay': 0.0, 'name': 'no_decay'}]


def build_sgd(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
              nesterov: bool = False, fused: bool = False) -> torch.optim.SGD:
    """SGD over :func:`param_groups`; ``lr`` is only the initial value (the training
    loop sets the scheduled rate before every step). ``fused`` (use it on CUDA) updates
    every parameter in a few kernels and lets an fp16 gradient scaler skip its
    per-step host synchronisation."""
    if nesterov and momentum <= 0:
        raise ValueError("nesterov momentum needs momentum > 0")
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum,
                           nesterov=nesterov, fused=fused or None)


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
