"""Listing an ImageNet-style split: which files, which labels, which subset.

Three layouts give the same (path, label) list:

* a class tree ``split/<wnid>/.../<file>`` (the train split, and val after the usual
  re-foldering script), found and labelled as ``torchvision.datasets.ImageFolder``
  does: the class index is the position of the folder name in the sorted list, and
  images in sub-folders of a class folder (Tiny ImageNet's ``<wnid>/images/``) belong
  to it;
* a flat folder ``val/ILSVRC2012_val_00000001.JPEG ...`` plus a label file
  ``LOC_val_solution.csv`` (``ImageId,PredictionString``, where the first token of
  PredictionString is the wnid);
* Tiny ImageNet's val split: ``val/images/*.JPEG`` plus ``val/val_annotations.txt``
  (tab-separated: file name, wnid, then a box that is ignored).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

# ImageNet's wnid -> name file; the synthetic data writes one too.
SYNSET_FILE = 'LOC_synset_mapping.txt'
# Tiny ImageNet's: 'wnid<TAB>name, name' lines, for all 82k wnids
WORDS_FILE = 'words.txt'
ANNOTATIONS_FILE = 'val_annotations.txt'
# The extensions torchvision's ImageFolder accepts, so that the same files are found.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


class DatasetError(ValueError):
    """Bad input layout: the message names the offending file or folder."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class-folder names under ``root``, as ImageFolder finds them."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data dir not found: {root}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DatasetError(f"no class folders in {root}")
    return classes


def list_tree(root: str | os.PathLike, classes: list[str] | None = None
              ) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) pairs of a class tree in ImageFolder's order: by class, then by
    sub-folder (walked, links followed), then by file name.

    Args:
        root: the split folder holding one folder per class.
        classes: the class list to label with (the train split's, for val); a
            folder that is not in it is an error. None: the folders found here.
    Returns:
        (samples, classes).
    """
    found = find_classes(root)
    if classes is None:
        classes = found
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for name in found:
        if name not in index:
            raise DatasetError(f"class folder {Path(root) / name} is not in the train class list")
        folder = Path(root) / name
        files = [os.path.join(here, f) for here, _, names in sorted(os.walk(folder,
                                                                          followlinks=True))
                 for f in sorted(names) if _is_image(f)]
        if not files:
            raise DatasetError(f"class folder has no images: {folder}")
        samples.extend((path, index[name]) for path in files)
    return samples, list(classes)


def list_annotated(root: str | os.PathLike, annotations: str | os.PathLike,
                   classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) pairs of Tiny ImageNet's val split: the images in ``root`` (or
    ``root/images``) labelled by ``annotations`` ('file<TAB>wnid[<TAB>box]' lines),
    sorted by class then file name.
    Raises:
        DatasetError: naming the file or line that is missing or wrong.
    """
    root, annotations = Path(root), Path(annotations)
    if (root / 'images').is_dir():
        root = root / 'images'
    if not annotations.is_file():
        raise DatasetError(f"annotation file not found: {annotations}")
    labels = {}
    for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split('\t')
        if line.strip() and (len(fields) < 2 or not fields[1].strip()):
            raise DatasetError(f"{annotations}:{line_no}: expected 'file<TAB>wnid', "
                               f"got {line!r}")
        if line.strip():
            labels[fields[0].strip()] = fields[1].strip()
    return _label_files(root, lambda name: labels.get(name), annotations, classes)


def _label_files(root: Path, wnid_of, label_file: Path,
                 classes: list[str]) -> list[tuple[str, int]]:
    """The images of the flat folder ``root`` labelled by ``wnid_of(file name)``,
    sorted as :func:`list_tree` sorts the same images laid out as a tree."""
    if not root.is_dir():
        raise DatasetError(f"data dir not found: {root}")
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for name in sorted(f for f in os.listdir(root) if _is_image(f)):
        wnid = wnid_of(name)
        if wnid is None:
            raise DatasetError(f"{root / name} has no row in {label_file}")
        if wnid not in index:
            raise DatasetError(f"{root / name}: class {wnid} is not in the train class list")
        samples.append((str(root / name), index[wnid]))
    if not samples:
        raise DatasetError(f"no images in {root}")
    samples.sort(key=lambda s: (s[1], os.path.basename(s[0])))
    return samples


def read_label_file(path: str | os.PathLike) -> dict[str, str]:
    """Image id (file name without extension) -> wnid, from ``LOC_val_solution.csv``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label file not found: {path}")
    labels = {}
    with open(path, newline='') as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ['ImageId', 'PredictionString']:
            raise DatasetError(f"{path}: expected a header 'ImageId,PredictionString'")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2 or not row[1].split():
                raise DatasetError(f"{path}:{line_no}: no wnid in row {row!r}")
            labels[row[0].strip()] = row[1].split()[0]
    return labels


def list_flat(root: str | os.PathLike, label_file: str | os.PathLike,
              classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) pairs of a flat folder labelled by ``label_file``, sorted as
    :func:`list_tree` sorts the same images laid out as a tree (class, then name)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data dir not found: {root}")
    labels = read_label_file(label_file)
    return _label_files(root, lambda name: labels.get(os.path.splitext(name)[0]),
                        Path(label_file), classes)


def stratified_subset(labels: np.ndarray | list[int], size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` samples drawn without replacement, per class in
    proportion to its share of the split (largest remainders get the leftovers)."""
    labels = np.asarray(labels)
    if size <= 0 or size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    quota = np.floor(exact).astype(int)
    leftover = size - quota.sum()
    quota[np.argsort(-(exact - quota), kind='stable')[:leftover]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), q, replace=False)
              for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def classes_path(beton_path: str | os.PathLike) -> Path:
    """Where the class list of a ``.beton`` lives: ``<beton>.classes.json``."""
    return Path(str(beton_path) + '.classes.json')


def load_classes(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(wnids, human-readable names) from a ``.classes.json`` file, as the writer saves
    it: ``{"classes": [unique strings], "names": [one string per class]}`` ("names"
    optional).
    Raises:
        DatasetError: the file is missing, not JSON, or not of that shape.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class list not found: {path}")
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"class list {path} is not JSON: "
                           f"{str(err).splitlines()[0]}") from None
    except OSError as err:
        raise DatasetError(f"cannot read class list {path}: {err.strerror or err}") from None
    classes = data.get('classes') if isinstance(data, dict) else None
    if not _strings(classes) or not classes:
        raise DatasetError(f"class list {path} does not hold a non-empty list of strings "
                           f"under 'classes'")
    if len(set(classes)) != len(classes):
        raise DatasetError(f"class list {path} names a class twice")
    names = data.get('names', classes)
    if not _strings(names) or len(names) != len(classes):
        raise DatasetError(f"class list {path}: 'names' must be {len(classes)} strings, "
                           f"one per class")
    return classes, names


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def read_synset_names(path: str | os.PathLike | None, classes: list[str]) -> list[str]:
    """Names of ``classes`` from ImageNet's ``LOC_synset_mapping.txt`` ('wnid name,
    ...' lines) or Tiny ImageNet's ``words.txt`` ('wnid<TAB>name, ...'); the first
    name is kept. A class without a line, or no file, keeps its wnid as its name."""
    names = {}
    if path is not None and Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            wnid, _, name = line.replace('\t', ' ', 1).partition(' ')
            names[wnid] = name.split(',')[0].strip() or wnid
    return [names.get(c, c) for c in classes]


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The files named, and the images under each folder named (recursively, sorted by
    path), in the order given.
    Raises:
        DatasetError: a path that does not exist, or a folder without images.
    """
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            # followlinks: a linked class folder counts, as in list_tree
            found = sorted(Path(folder) / name
                           for folder, _, names in os.walk(path, followlinks=True)
                           for name in names if _is_image(name))
            if not found:
                raise DatasetError(f"no images in {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DatasetError(f"not found: {path}")
    return files


def list_multilabel(root: str | os.PathLike, label_file: str | os.PathLike,
                    num_classes: int) -> list[tuple[str, tuple[int, ...]]]:
    """(path, correct class indices) of a flat folder and a JSON list holding, for
    each image in file-name order, the list of its correct classes (the ReaL labels'
    ``real.json`` for ImageNet's val split; an empty list: no class fits, and the
    image is not scored).
    Raises:
        DatasetError: a file that is not such a list, of another length than the
            folder's images, or naming a class index outside the model's.
    """
    root, label_file = Path(root), Path(label_file)
    if not root.is_dir():
        raise DatasetError(f"data dir not found: {root}")
    names = sorted(f for f in os.listdir(root) if _is_image(f))
    try:
        sets = json.loads(label_file.read_text(encoding='utf-8'))
    except OSError as err:
        raise DatasetError(f"cannot read label file {label_file}: "
                           f"{err.strerror or err}") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"label file {label_file} is not JSON: "
                           f"{str(err).splitlines()[0]}") from None
    if not isinstance(sets, list) or not all(
            isinstance(s, list) and all(isinstance(i, int) for i in s) for s in sets):
        raise DatasetError(f"{label_file}: expected a list of lists of class indices")
    if len(sets) != len(names):
        raise DatasetError(f"{label_file} holds {len(sets)} label sets, {root} "
                           f"{len(names)} images")
    wrong = [i for s in sets for i in s if not 0 <= i < num_classes]
    if wrong:
        raise DatasetError(f"{label_file}: class index {wrong[0]} is outside the model's "
                           f"{num_classes} classes")
    return [(str(root / name), tuple(s)) for name, s in zip(names, sets)]
