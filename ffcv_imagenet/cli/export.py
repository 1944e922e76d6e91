"""Export a trained model so that it computes the same function elsewhere.

    python -m ffcv_imagenet export runs/rn50 --format pt2 --out rn50.pt2
    python -m ffcv_imagenet export runs/rn50/checkpoints/best.pt --format onnx --ema \
        --out rn50_ema.onnx
    python -m ffcv_imagenet export runs/rn18_noblur --format torchvision --out rn18.pth

The source is a checkpoint or a run folder (its final.pt, else last.pt); the
architecture, head, BlurPool and the validation preprocessing come from the config
stored in the checkpoint. Each export is loaded back (ONNX in onnxruntime) and its
logits compared with the checkpoint's before it is written; a mismatch beyond 1e-4
exits with 2 and leaves nothing at --out. docs/export.md shows how to load each
format without this package.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..training.export import FORMATS, TOLERANCE, ExportError, check_batch, export_model, \
    format_of
from ..training.models import NotTorchvisionError
from .config import ConfigError
from .model_file import checkpoint_of, command_parser, is_checkpoint, open_classifier
from .runner import exit_code


def parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__)
    p.add_argument('source', help='checkpoint (.pt) or run folder')
    p.add_argument('--format', required=True, choices=FORMATS,
                   help='torchvision: state_dict for torchvision.models (no BlurPool); '
                        'pt2: torch.export program; onnx: ONNX graph')
    p.add_argument('--out', required=True, help='file to write')
    p.add_argument('--ema', action='store_true',
                   help='export the moving average of the weights instead of the weights')
    p.add_argument('--force', action='store_true', help='replace an existing --out')
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    source = checkpoint_of(args.source)
    if source.is_file() and not is_checkpoint(source):
        raise ConfigError(f"{source} is an export already; export from a checkpoint or "
                          f"a run folder")
    _check_out(Path(args.out), args.format, source, args.force)
    classifier = open_classifier(source, ema=args.ema)
    network = next(iter(classifier.networks.values()))
    card = classifier.card
    try:
        difference = export_model(network, card, args.out, args.format)
    except (ExportError, NotTorchvisionError) as err:
        raise ConfigError(f"{args.format}: {err}") from None
    batch = check_batch(card)
    print(f"exported {source} ({card.arch}, {card.num_classes} classes, {card.weights} "
          f"weights{', BlurPool' if card.blurpool else ''}) as {args.format} to {args.out}: "
          f"logits within {difference:.2g} of the checkpoint's (at most {TOLERANCE:g}) on "
          f"{batch.shape[0]} inputs of {card.resolution} px; preprocessing: shorter side "
          f"to {card.resolution / card.crop_ratio:.0f} px, centre {card.resolution} px")
    return 0


def _check_out(out: Path, fmt: str, source: Path, force: bool) -> None:
    """Refuses an ``--out`` that predict and evaluate would not read as ``fmt``, the
    source itself, or an existing file (without ``force``)."""
    suffix = {'pt2': '.pt2', 'onnx': '.onnx'}.get(fmt)
    if format_of(out) != fmt:
        raise ConfigError(f"--out: {out} names a {format_of(out)} file by its extension; "
                          + (f"a {fmt} export ends in {suffix}" if suffix else
                             "a torchvision export ends in neither .pt2 nor .onnx (e.g. .pth)"))
    if out.is_dir():
        raise ConfigError(f"--out: {out} is a folder; name the file to write")
    if source.exists() and out.exists() and out.resolve() == source.resolve():
        raise ConfigError(f"--out: {out} is the checkpoint being exported")
    taken = [path for path in (out, Path(f"{out}.json") if fmt == 'torchvision' else None)
             if path is not None and path.exists()]
    if taken and not force:
        raise ConfigError(f"--out: {taken[0]} exists; pass --force to replace it")


def run(argv: list[str] | None = None) -> int:
    """:func:`main` with one-line errors: exit 2 for a bad source, a refused format or
    an export that failed its check."""
    return exit_code(lambda: main(argv))


if __name__ == '__main__':
    sys.exit(run())
