"""ffcv_imagenet: train ResNet-50 on ImageNet fast, with FFCV data loading.

The names a notebook needs, importable from the package root::

    from ffcv_imagenet import (generate_synthetic, list_tree, write_beton,
                               train_loader, val_loader, build_model, load_checkpoint)

    samples, classes = list_tree('imagenet/train')            # ImageFolder labels
    write_beton(samples, 'betons/train.beton', classes, max_resolution=256)
    loader = train_loader('betons/train.beton', batch_size=256, resolution=160,
                          num_workers=8, device=torch.device('cuda:0'))
    model = build_model('resnet50', len(classes), blurpool=True).cuda()

The package reads, top-down, as the data flows: :mod:`.data` (folders -> ``.beton``
-> batches), :mod:`.training` (model, optimizer, schedules, the loop, checkpoints and
logs), :mod:`.cli` (config -> a built run; the convert and train commands) and
:mod:`.tools` (benchmarks, preview, plots, LR finder). ``python -m ffcv_imagenet``
lists the commands.

The names are resolved on first use, so ``import ffcv_imagenet`` stays cheap (no
torch, ffcv or numba until a name is touched).
"""
from __future__ import annotations

import importlib

__version__ = '0.1.0'

# public name -> (module, attribute)
_API = {
    'generate_synthetic': ('.data.synthetic', 'generate'),
    'list_tree': ('.data.folders', 'list_tree'),
    'list_flat': ('.data.folders', 'list_flat'),
    'write_beton': ('.data.write.writer', 'write_beton'),
    'train_loader': ('.data.read.loaders', 'train_loader'),
    'val_loader': ('.data.read.loaders', 'val_loader'),
    'build_model': ('.training.models', 'build_model'),
    'load_checkpoint': ('.training.checkpoint', 'load_checkpoint'),
    'to_torchvision_state_dict': ('.training.models', 'to_torchvision_state_dict'),
    'load_torchvision_state_dict': ('.training.models', 'load_torchvision_state_dict'),
    'export_model': ('.training.export', 'export_model'),
    'load_export': ('.training.export', 'load_export'),
}

__all__ = sorted(_API) + ['__version__']


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'ffcv_imagenet' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module, __name__), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
