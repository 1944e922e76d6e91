"""Top-1/top-5 of a trained model on a validation set, under this project's protocol
and torchvision's.

    python -m ffcv_imagenet evaluate runs/rn50 --val data/betons/val.beton
    python -m ffcv_imagenet evaluate rn50.pt2 --val imagenet/val              # class tree
    python -m ffcv_imagenet evaluate rn50.onnx --val ILSVRC/Data/CLS-LOC/val \
        --labels LOC_val_solution.csv                                        # flat folder
    python -m ffcv_imagenet evaluate runs/rn50 --val imagenetv2-matched-frequency  # 0..999
    python -m ffcv_imagenet evaluate runs/rn50 --val ILSVRC2012_img_val --labels real.json

MODEL is a checkpoint, a run folder or an export; a checkpoint with an EMA is scored
twice (raw and EMA). The protocols:
- project: what validation during training does. On a .beton: the stored image's
  centre crop of crop-ratio x its shorter side, resized to the model's resolution,
  with flip averaging as trained (--tta overrides). On a folder: the original
  image's shorter side resized to resolution / crop ratio, centre crop (the
  preprocessing of predict).
- torchvision (folders only: a .beton holds resized images): shorter side 256 px,
  centre 224 px, no flip averaging, as torchvision's published accuracies are measured.
Folders: one folder per class (wnids), Tiny ImageNet's val split, folders named by
class index ('0'...'999', ImageNet-V2), or a flat folder with --labels: ImageNet's
LOC_val_solution.csv, or a JSON list of correct-class lists per image in file-name
order (the ReaL labels; images with an empty list are not scored). Unreadable images
are named on stderr and skipped. Runs in float32.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.folders import (ANNOTATIONS_FILE, DatasetError, classes_path, find_classes,
                            list_flat, list_multilabel, load_classes)
from ..data.read.loaders import val_loader
from ..data.read.torchvision_pipelines import (STANDARD_CROP, STANDARD_RESIZE, OnDevice,
                                               eval_loader, list_eval_folder)
from ..training.evaluate import evaluate
from ..training.export import ModelCard
from ..training.optim import resolve_precision
from .config import ConfigError
from .model_file import at_least, command_parser, device_named, open_classifier
from .runner import exit_code, report


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__)
    p.add_argument('model', help='checkpoint, run folder, or .pt2/.onnx/torchvision export')
    p.add_argument('--val', required=True, help='val .beton, or a folder of images')
    p.add_argument('--labels', default='',
                   help='labels of a flat folder: LOC_val_solution.csv, or a JSON list of '
                        'correct-class lists (ReaL)')
    p.add_argument('--tta', type=int, choices=(0, 1), default=None,
                   help='project protocol: flip averaging (default: as the model was '
                        'validated in training)')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    p.add_argument('--batch-size', type=at_least(1), default=64, help='images per batch')
    p.add_argument('--workers', type=at_least(0), default=4,
                   help='decoding threads (.beton, at least 1) or processes (folder)')
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = device_named(args.device)
    classifier = open_classifier(args.model, device=device)
    card = classifier.card
    scorers = [network.to(device) for network in classifier.scorers.values()]
    tta = card.tta if args.tta is None else bool(args.tta)
    val = Path(args.val)
    if val.is_file():
        if args.labels:
            raise ConfigError(f"--labels: {val} is a .beton, which holds its labels")
        batches = {'project': (_beton_batches(val, card, args, device), tta)}
    elif val.is_dir():
        samples = folder_samples(val, args.labels, card)
        protocols = [('project', round(card.resolution / card.crop_ratio), card.resolution,
                      tta)]
        if card.resolution > 32 or classifier.networks:
            protocols.append(('torchvision', STANDARD_RESIZE, STANDARD_CROP, False))
        else:  # a ResNet export traced at 32 px or less takes only inputs that small
            report(f"torchvision protocol not scored: {classifier.source} was exported at "
                   f"{card.resolution} px and takes no {STANDARD_CROP} px input")
        batches = {name: (OnDevice(eval_loader(samples, resize=size, crop=crop,
                                               mean=card.mean, std=card.std,
                                               batch_size=args.batch_size,
                                               workers=args.workers), device,
                                   channels_last=False,
                                   on_skip=lambda message: report(f"skipped {message}")),
                          flip)
                   for name, size, crop, flip in protocols}
    else:
        raise ConfigError(f"--val: not found: {val}")
    precision = resolve_precision('off', device)
    rows = []
    for protocol, (loader, flip) in batches.items():
        results = evaluate(scorers, loader, precision=precision, tta=flip, device=device,
                           show_progress=sys.stderr.isatty(), all_ranks=False)
        for weights, result in zip(classifier.scorers, results):
            rows.append((protocol, weights, flip, result))
    print(_table(rows, card, classifier.source, val))
    return 0


def _beton_batches(path: Path, card: ModelCard, args, device):
    """The project's validation batches of a .beton whose classes are the model's."""
    try:
        classes, _ = load_classes(classes_path(path))
    except DatasetError as err:
        raise ConfigError(f"--val: {err}") from None
    if len(classes) != card.num_classes:
        raise ConfigError(f"--val: {path} has {len(classes)} classes, the model "
                          f"{card.num_classes}")
    if list(classes) != list(card.classes):
        raise ConfigError(f"--val: {path} lists other classes than the model (first "
                          f"difference: {_first_difference(classes, card.classes)})")
    return val_loader(path, batch_size=args.batch_size, resolution=card.resolution,
                      num_workers=max(args.workers, 1), device=device,
                      center_ratio=card.crop_ratio,
                      num_classes=card.num_classes)


def _first_difference(a, b) -> str:
    index = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"class {index} is {a[index]} there, {b[index]} in the model"


def folder_samples(root: Path, labels: str, card: ModelCard) -> list:
    """(path, label or labels) of an evaluation folder in any layout the command takes."""
    if labels:
        if labels.lower().endswith('.json'):
            _check_imagenet_order(card, '--labels (a JSON list of class indices)')
            return list_multilabel(root, labels, card.num_classes)
        return list_flat(root, labels, list(card.classes))
    if (root / ANNOTATIONS_FILE).is_file():
        return list_eval_folder(root, list(card.classes))
    if not any(entry.is_dir() for entry in root.iterdir()):
        raise ConfigError(f"--val: {root} holds no class folders; a flat folder needs "
                          f"--labels LOC_val_solution.csv (or a ReaL-style JSON)")
    folders = set(find_classes(root))
    if folders != set(card.classes) and all(name.isdigit() for name in folders):
        _check_imagenet_order(card, f'--val {root} (folders named by class index)')
        return list_eval_folder(root, [str(i) for i in range(card.num_classes)])
    return list_eval_folder(root, list(card.classes))


def _check_imagenet_order(card: ModelCard, what: str) -> None:
    """Class indices are positions in the sorted class list (ImageNet's wnids in
    order): refuse a model whose logits are in another order."""
    if list(card.classes) != sorted(card.classes):
        raise ConfigError(f"{what}: class indices number the classes in sorted order, but "
                          f"the model's classes are not sorted")


def _table(rows: list, card: ModelCard, model: Path, val: Path) -> str:
    origin = '' if str(model) == card.source else f", exported from {card.source}"
    lines = [f"{card.arch} ({model}{origin}) on {val}:",
             '| protocol | input | weights | top-1 (%) | top-5 (%) | loss | images |',
             '|---|---|---|---|---|---|---|']
    for protocol, weights, flip, result in rows:
        size = (f"{card.resolution} px of {card.crop_ratio:g}" if protocol == 'project'
                else f"{STANDARD_CROP} px of {STANDARD_RESIZE}")
        lines.append(f"| {protocol} | {size}{', flip avg' if flip else ''} | {weights} | "
                     f"{100 * result['top1']:.2f} | {100 * result['top5']:.2f} | "
                     f"{result['loss']:.4f} | {result['images']} |")
    return '\n'.join(lines)


def run(argv: list[str] | None = None) -> int:
    """:func:`main` with one-line errors: exit 2 for a missing model or data, or
    classes that differ between them."""
    return exit_code(lambda: main(argv))


if __name__ == '__main__':
    sys.exit(run())
