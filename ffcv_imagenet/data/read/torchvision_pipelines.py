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
from torch.utils.data import DataLoader, Dataset

from .decoders import IMAGENET_MEAN, IMAGENET_STD
from ..folders import ANNOTATIONS_FILE, DatasetError, find_classes, list_annotated, list_tree

STANDARD_RESIZE = 256  # pixels, shorter side
STANDARD_CROP = 224  # pixels, square centre crop


def normalized_tensor() -> list:
    """``ToTensor`` + ImageNet ``Normalize``: a PIL RGB image -> float32 (3, H, W)."""
    from torchvision import transforms
    return [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def standard_eval_transform(resize: int = STANDARD_RESIZE, crop: int = STANDARD_CROP):
    """PIL RGB image -> float32 (3, crop, crop): the shorter side resized to ``resize``
    pixels (bilinear, antialiased; the longer one keeps the aspect ratio), then the
    centre ``crop`` x ``crop`` pixels, normalised."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BILINEAR,
                          antialias=True),
        transforms.CenterCrop(crop), *normalized_tensor()])


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
    """``(transform(image), label)`` for each (path, label) of ``samples``, the file read
    as ImageFolder reads it (PIL, converted to RGB)."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from torchvision.datasets.folder import default_loader
        path, label = self.samples[index]
        return self.transform(default_loader(path)), label


def standard_eval_loader(root: str | os.PathLike, classes: list[str], *,
                         resize: int = STANDARD_RESIZE, crop: int = STANDARD_CROP,
                         batch_size: int = 256, workers: int = 8) -> DataLoader:
    """The standard evaluation's batches of ``root`` (see :func:`list_eval_folder`):
    float32 (B, 3, crop, crop) images and (B,) int64 labels, every image once, in
    listing order, on the CPU.
    Raises:
        DatasetError: from :func:`list_eval_folder`.
    """
    samples = list_eval_folder(root, classes)
    return folder_loader(FolderImages(samples, standard_eval_transform(resize, crop)),
                         batch_size=batch_size, workers=workers, shuffle=False,
                         drop_last=False)


class OnDevice:
    """The batches of ``loader`` moved to ``device`` (images channels-last if asked:
    the layout the model's weights are in), with the loader's length."""

    def __init__(self, loader, device: torch.device, channels_last: bool = True):
        self.loader, self.device = loader, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield (images.to(self.device, memory_format=self.memory_format),
                   labels.to(self.device))
