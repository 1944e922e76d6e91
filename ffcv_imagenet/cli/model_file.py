"""A trained classifier from whatever a user points at: a checkpoint, a run folder, or
an export (``.pt2``, ``.onnx``, a torchvision ``state_dict`` with its ``.json`` card).

A checkpoint is rebuilt from the config stored in it (``model.*`` and
``validation.*``), so a run folder needs no config file; the export, predict and
evaluate commands share this.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.folders import DatasetError, classes_path, load_classes
from ..data.read.decoders import IMAGENET_MEAN, IMAGENET_STD
from ..training.distributed import select_device
from ..training.checkpoint import CheckpointError, checkpoint_dir, load_checkpoint
from ..training.export import ExportError, ModelCard, format_of, load_export
from ..training.models import build_model
from .config import ConfigError

# the checkpoint a run folder stands for, in order of preference: the finished
# model, else the newest one of an unfinished run
RUN_CHECKPOINTS = ('final.pt', 'last.pt')


@dataclass
class Classifier:
    """One or two scorings of the same classes: functions (B, 3, H, W) float32 CPU or
    device images, normalised as the card says -> (B, num_classes) logits."""
    # 'raw' and, when the checkpoint kept one, 'ema' -> the function
    scorers: dict[str, Callable[[torch.Tensor], torch.Tensor]]
    card: ModelCard
    # the file the weights were read from
    source: Path
    # 'raw'/'ema' -> the network, for a checkpoint (exports are not modules to move)
    networks: dict[str, nn.Module]


def command_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a command whose module docstring is ``doc``: its first line the
    description, the paragraphs after the first the epilog, printed as written."""
    return argparse.ArgumentParser(prog=sys.argv[0], description=doc.splitlines()[0],
                                   epilog=doc.split('\n\n', 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def checkpoint_of(path: str | os.PathLike) -> Path:
    """``path`` itself, or for a run folder its ``checkpoints/final.pt`` (else
    ``last.pt``).
    Raises:
        CheckpointError: a folder with neither.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    folder = checkpoint_dir(path) if checkpoint_dir(path).is_dir() else path
    for name in RUN_CHECKPOINTS:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{path} holds no {' or '.join(RUN_CHECKPOINTS)} (in "
                          f"{folder}): not a run folder, or the run wrote no checkpoint")


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` looks like a file this project's trainer wrote (its format tag
    is checked on load)."""
    if format_of(path) != 'torchvision' or not path.is_file():
        return False
    return not Path(str(path) + '.json').is_file()


def open_classifier(path: str | os.PathLike, *, ema: bool | None = None,
                    device: torch.device | str = 'cpu') -> Classifier:
    """The classifier at ``path`` (see the module docstring). ``ema``: None = every
    scoring the file holds, True = the EMA only (an error without one), False = the
    raw weights only. Networks go to ``device``; exports run on the CPU.
    Raises:
        CheckpointError / ConfigError: a missing or unreadable file, a checkpoint
            without an EMA when one is asked for; one line naming the file.
    """
    source = checkpoint_of(path)
    if not source.exists():
        raise CheckpointError(f"model not found: {source}")
    if is_checkpoint(source):
        return _from_checkpoint(source, ema, torch.device(device))
    try:
        scorer, card = load_export(source)
    except ExportError as err:
        raise ConfigError(str(err)) from None
    if ema:
        raise ConfigError(f"--ema: {source} is an export of the {card.weights} weights "
                          f"only")
    return Classifier({card.weights: scorer}, card, source, {})


def device_named(name: str) -> torch.device:
    """``--device``'s value ('auto', 'cpu', 'cuda') as a device.
    Raises:
        ConfigError: 'cuda' where there is no GPU.
    """
    try:
        return select_device(name)
    except ValueError as err:
        raise ConfigError(f"--device: {err}") from None


def at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = 'integer'
    return parse


# the keys of a checkpoint's config that say what network and preprocessing it needs
NEEDED_KEYS = ('model.blurpool', 'model.head', 'validation.resolution',
               'validation.crop_ratio', 'validation.tta')


def _from_checkpoint(source: Path, ema: bool | None, device: torch.device) -> Classifier:
    saved = load_checkpoint(source)
    config = saved.get('config') or {}
    missing = [key for key in NEEDED_KEYS if key not in config]
    if missing:  # BlurPool's filter is no weight: guessing could change the function
        raise CheckpointError(f"{source} does not say {', '.join(missing)} in its config")
    has_ema = bool(saved.get('ema'))
    if ema and not has_ema:
        raise ConfigError(f"--ema: {source} holds no EMA weights (trained with "
                          f"ema.enabled=0)")
    kinds = ['ema'] if ema else ['raw', 'ema'] if ema is None and has_ema else ['raw']
    networks = {}
    for kind in kinds:
        network = build_model(saved['arch'], saved['num_classes'],
                              blurpool=bool(config['model.blurpool']),
                              head=config['model.head'])
        weights = saved['model'] if kind == 'raw' else saved['ema']['module']
        network.load_state_dict(weights)
        networks[kind] = network.to(device).eval()
    card = _card(saved, config, source, weights='ema' if kinds == ['ema'] else 'raw')
    return Classifier(dict(networks), card, source, networks)


def _card(saved: dict, config: dict, source: Path, weights: str) -> ModelCard:
    classes = list(saved['classes'])
    return ModelCard(
        arch=saved['arch'], classes=tuple(classes), names=tuple(_names(saved, config)),
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        resolution=int(config['validation.resolution']),
        crop_ratio=float(config['validation.crop_ratio']), tta=bool(config['validation.tta']),
        blurpool=bool(config['model.blurpool']), weights=weights, source=str(source))


def _names(saved: dict, config: dict) -> list[str]:
    """The class names the checkpoint keeps, else those beside the train ``.beton`` it
    was trained on (when that file is still there and lists the same classes), else
    the class ids."""
    classes = list(saved['classes'])
    if saved.get('names') and len(saved['names']) == len(classes):
        return list(saved['names'])
    beton = config.get('data.train_dataset')
    if beton:
        try:
            listed, names = load_classes(classes_path(beton))
        except DatasetError:
            return classes
        if listed == classes:
            return names
    return classes

