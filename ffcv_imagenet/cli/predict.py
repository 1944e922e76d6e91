"""Classify image files with a trained model: the top-k classes of each.

    python -m ffcv_imagenet predict runs/rn50 photo.jpg holiday/ --topk 5
    python -m ffcv_imagenet predict rn50.onnx photo.jpg --tta --json

MODEL is a checkpoint, a run folder or an export (.pt2, .onnx, torchvision .pth with
its .json). Each image gets the model's validation preprocessing: its shorter side
resized to resolution / crop ratio pixels (bilinear, antialiased), the centre
resolution x resolution pixels kept, ImageNet mean/std. A file that cannot be read
is named on stderr and skipped (exit 1 when any was).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from ..data.folders import image_files
from ..data.read.torchvision_pipelines import eval_loader
from .model_file import at_least, command_parser, device_named, open_classifier
from .runner import exit_code, report


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__)
    p.add_argument('model', help='checkpoint, run folder, or .pt2/.onnx/torchvision export')
    p.add_argument('images', nargs='+', help='image files, or folders of them (recursive)')
    p.add_argument('--topk', type=at_least(1), default=5, help='classes listed per image')
    p.add_argument('--tta', action='store_true',
                   help="average each image's logits with its mirror's")
    p.add_argument('--ema', action='store_true', help="a checkpoint's EMA weights")
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                   help='auto: the GPU when there is one (ONNX runs on the CPU)')
    p.add_argument('--batch-size', type=at_least(1), default=32,
                   help='images per forward pass')
    p.add_argument('--workers', type=at_least(0), default=2, help='image-reading processes')
    p.add_argument('--json', action='store_true', help='one JSON object per image')
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = device_named(args.device)
    classifier = open_classifier(args.model, ema=args.ema, device=device)
    network = next(iter(classifier.scorers.values())).to(device).eval()
    card = classifier.card
    files = image_files(args.images)
    # each file's label is its position, so that the labels of a batch name its files
    loader = eval_loader([(str(f), i) for i, f in enumerate(files)],
                         resize=round(card.resolution / card.crop_ratio),
                         crop=card.resolution, mean=card.mean, std=card.std,
                         batch_size=args.batch_size,
                         workers=min(args.workers, len(files)))
    topk = min(args.topk, card.num_classes)
    skipped = 0
    with torch.no_grad():
        for images, positions, unread in loader:
            for message in unread:
                report(f"skipped {message}")
            skipped += len(unread)
            if not len(images):
                continue
            probabilities = _probabilities(network, images.to(device), args.tta)
            values, indices = probabilities.topk(topk, dim=1)
            for position, value_row, index_row in zip(positions.tolist(), values.tolist(),
                                                      indices.tolist()):
                print(_line(files[position], value_row, index_row, card, args.json),
                      flush=True)
    if skipped:
        report(f"{skipped} of {len(files)} files could not be read")
    return 1 if skipped else 0


def _probabilities(network, images: torch.Tensor, tta: bool) -> torch.Tensor:
    """(B, classes) softmax of the logits, averaged with the mirror's with ``tta``."""
    logits = network(images).float()
    if tta:
        logits = (logits + network(torch.flip(images, dims=[3])).float()) / 2
    return logits.softmax(dim=1).cpu()


def _line(path, values: list[float], indices: list[int], card, as_json: bool) -> str:
    top = [{'class': i, 'wnid': card.classes[i], 'name': card.names[i], 'probability': p}
           for p, i in zip(values, indices)]
    if as_json:
        return json.dumps({'file': str(path), 'top': top})
    rows = [f"  {rank}. {t['probability']:.3f}  {t['wnid']}  {t['name']}"
            for rank, t in enumerate(top, start=1)]
    return '\n'.join([str(path), *rows])


def run(argv: list[str] | None = None) -> int:
    """:func:`main` with one-line errors (exit 2: a missing model or image path)."""
    return exit_code(lambda: main(argv))


if __name__ == '__main__':
    sys.exit(run())
