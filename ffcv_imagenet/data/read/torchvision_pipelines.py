"""The plain torchvision pipelines this project is held against.

* The standard ImageNet evaluation, the one torchvision's reference scripts use and
  published checkpoints are scored with: each original val image, its shorter side
  resized to 256 px (bilinear, antialiased), the centre 224 x 224 px cut out,
  ``ToTensor`` and ImageNet mean/std normalisation, no flip averaging.
* The tensor/normalise tail and the ``DataLoader`` of the loader benchmark's
  torchvision baseline (:mod:`ffcv_imagenet.tools.bench.command`).

The files and labels of an evaluation folder come from :mod:`.folders`: a class tree
is listed exactly as ``torchvision.datasets.ImageFolder`` lists it, but labelled by a
given class list (the run's ``.classes.json``), so that a val folder can never be
numbered differently from the classes the model was trained on; Tiny ImageNet's val
split (``images/`` plus ``val_annotations.txt``) works too. Images are read as
ImageFolder reads them (PIL, converted to RGB).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .decoders import IMAGENET_MEAN, IMAGENET_STD
from ..folders import ANNOTATIONS_FILE, DatasetError, find_classes, list_annotated, list_tree
from ..messages import error_line

STANDARD_RESIZE = 256  # pixels, shorter side
STANDARD_CROP = 224  # pixels, square centre crop


def normalized_tensor(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list:
    """``ToTensor`` + ``Normalize`` (ImageNet's mean and std of [0, 1] RGB by default):
    a PIL RGB image -> float32 (3, H, W)."""
    from torchvision import transforms
    return [transforms.ToTensor(), transforms.Normalize(mean, std)]


def standard_eval_transform(resize: int = STANDARD_RESIZE, crop: int = STANDARD_CROP,
                            mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """PIL RGB image -> float32 (3, crop, crop): the shorter side resized to ``resize``
    pixels (bilinear, antialiased; the longer one keeps the aspect ratio), then the
    centre ``crop`` x ``crop`` pixels, normalised with ``mean`` and ``std``."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BILINEAR,
                          antialias=True),
        transforms.CenterCrop(crop), *normalized_tensor(mean, std)])


def folder_loader(dataset: Dataset, *, batch_size: int, workers: int, shuffle: bool,
                  drop_last: bool) -> DataLoader:
    """A ``DataLoader`` as a plain torchvision pipeline builds it: ``workers``
    processes (kept across epochs), default collation."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      drop_last=drop_last, persistent_workers=workers > 0)


def list_eval_folder(root: str | os.PathLike, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) pairs of an evaluation folder, labelled by ``classes``: a class
    tree (one folder per class, ImageFolder's order), or Tiny ImageNet's val split
    (when ``root`` holds ``val_annotations.txt``).
    Raises:
        DatasetError: ``root`` is missing, or its class folders are not exactly
            ``classes`` (names up to three of those extra and of those missing).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"folder not found: {root}")
    if (root / ANNOTATIONS_FILE).is_file():
        return list_annotated(root, root / ANNOTATIONS_FILE, classes)
    found = find_classes(root)
    # a folder missing a class would still be labelled right here, but its score would
    # not be one over the whole split, so it is refused like an extra one
    extra = [name for name in found if name not in set(classes)]
    missing = [name for name in classes if name not in set(found)]
    if extra or missing:
        problems = [f"{what} {len(names)} ({', '.join(names[:3])}"
                    f"{', ...' if len(names) > 3 else ''})"
                    for what, names in (('not in the class list:', extra),
                                        ('classes without a folder:', missing)) if names]
        raise DatasetError(f"the class folders of {root} do not match the "
                           f"{len(classes)} classes of the run: " + '; '.join(problems))
    return list_tree(root, classes)[0]


class FolderImages(Dataset):
    """``(transform(image), label, None)`` for each (path, label) of ``samples``, the
    file read as ImageFolder reads it (PIL, converted to RGB); ``(None, label,
    'path: reason')`` for a file that cannot be read, so that one bad file costs its
    own score, not the whole evaluation. A label is a class index, or a tuple of
    them (every correct class of a multi-label set)."""

    def __init__(self, samples: list[tuple[str, int | tuple[int, ...]]], transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from torchvision.datasets.folder import default_loader
        path, label = self.samples[index]
        try:
            image = default_loader(path)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            reason = error_line(err)
            return None, label, f"{path}: {reason}"
        return self.transform(image), label, None


def collate_readable(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images (B, 3, H, W), labels, 'path: reason' of each file left out) of the
    readable items; labels are (B,) int64, or (B, K) int64 padded with -1 where any
    item has a tuple of labels. B may be 0."""
    kept = [item for item in items if item[0] is not None]
    skipped = [item[2] for item in items if item[0] is None]
    images = (torch.stack([item[0] for item in kept]) if kept
              else torch.empty(0, 3, 0, 0))
    labels = [item[1] for item in kept]
    if any(isinstance(label, (tuple, list)) for label in labels):
        sets = [tuple(label) if isinstance(label, (tuple, list)) else (label,)
                for label in labels]
        width = max([len(labels) for labels in sets] + [1])
        return images, torch.tensor([list(labels) + [-1] * (width - len(labels))
                                     for labels in sets], dtype=torch.int64), skipped
    return images, torch.tensor(labels, dtype=torch.int64), skipped


def eval_loader(samples: list[tuple[str, int | tuple[int, ...]]], *, resize: int, crop: int,
                mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size: int = 256,
                workers: int = 8) -> DataLoader:
    """Batches (images, labels, skipped) of ``samples`` as :func:`collate_readable`
    makes them, every file once in the given order, on the CPU: each image's shorter
    side resized to ``resize`` pixels, the centre ``crop`` x ``crop`` pixels kept,
    normalised with ``mean`` and ``std`` (:func:`standard_eval_transform`)."""
    return DataLoader(FolderImages(samples, standard_eval_transform(resize, crop, mean, std)),
                      batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_readable)


def standard_eval_loader(root: str | os.PathLike, classes: list[str], *,
                         resize: int = STANDARD_RESIZE, crop: int = STANDARD_CROP,
                         batch_size: int = 256, workers: int = 8) -> DataLoader:
    """:func:`eval_loader` of the folder ``root`` (see :func:`list_eval_folder`); the
    defaults are the standard evaluation's sizes.
    Raises:
        DatasetError: from :func:`list_eval_folder`.
    """
    return eval_loader(list_eval_folder(root, classes), resize=resize, crop=crop,
                       batch_size=batch_size, workers=workers)


class OnDevice:
    """The batches of an :func:`eval_loader` moved to ``device`` (images channels-last
    if asked: the layout the model's weights are in), with the loader's length. Each
    file left out is passed to ``on_skip`` ('path: reason') and kept in ``skipped``."""

    def __init__(self, loader, device: torch.device, channels_last: bool = True,
                 on_skip: Callable[[str], None] | None = None):
        self.loader, self.device = loader, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.on_skip = on_skip or (lambda message: None)
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, skipped in self.loader:
            for message in skipped:
                self.skipped.append(message)
                self.on_skip(message)
            if labels.shape[0]:
                yield (images.to(self.device, memory_format=self.memory_format),
                       labels.to(self.device))
