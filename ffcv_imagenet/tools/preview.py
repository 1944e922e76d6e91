"""A PNG grid of one augmented training batch, captioned with class names, so a
person can check that crops, flips and labels are right.

    python -m ffcv_imagenet preview --beton data/betons/train.beton --out batch.png
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.read.decoders import IMAGENET_MEAN, IMAGENET_STD
from ..data.folders import classes_path, load_classes
from ..data.read.loaders import train_loader

CAPTION_PX = 14


def batch_grid(images: torch.Tensor, labels: torch.Tensor, names: list[str],
               columns: int = 8) -> Image.Image:
    """Tiles normalised (B, 3, H, W) ``images`` into one RGB image, each tile
    captioned with ``names[label]``."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = ((images.detach().float().cpu() * std + mean).clamp(0, 1) * 255).round()
    pixels = pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    count, height, width, _ = pixels.shape
    rows = -(-count // columns)
    grid = Image.new('RGB', (columns * width, rows * (height + CAPTION_PX)), 'white')
    draw = ImageDraw.Draw(grid)
    for k in range(count):
        x, y = (k % columns) * width, (k // columns) * (height + CAPTION_PX)
        grid.paste(Image.fromarray(np.ascontiguousarray(pixels[k])), (x, y))
        draw.text((x + 2, y + height + 1), names[int(labels[k])][:width // 6], fill='black')
    return grid


def save_preview(beton: str, out: str, resolution: int = 160, count: int = 32,
                 workers: int = 2, seed: int = 0) -> str:
    """Writes the first ``count`` images of an augmented train batch of ``beton`` to ``out``."""
    _, names = load_classes(classes_path(beton))
    loader = train_loader(beton, batch_size=count, resolution=resolution,
                          num_workers=workers, seed=seed)
    images, labels = next(iter(loader))
    batch_grid(images, labels, names).save(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--beton', required=True)
    parser.add_argument('--out', required=True, help='PNG path')
    parser.add_argument('--resolution', type=int, default=160, help='pixels')
    parser.add_argument('--count', type=int, default=32, help='images in the grid')
    parser.add_argument('--workers', type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    print(f"wrote {save_preview(args.beton, args.out, args.resolution, args.count, args.workers)}")


if __name__ == '__main__':
    main()
