"""A small, learnable, ImageNet-shaped folder tree: the project's default data.

ImageNet and pretrained weights cannot be downloaded everywhere this project runs
(CI, the demo), so the demo and the tests train on this instead. Each class has a
signal that survives random-resized-crop and horizontal flips:

* a hue band (classes cycle through ``HUES`` evenly spaced hues),
* a texture kind (stripes, checkerboard, rings, dots), changing every ``HUES`` classes,
* blobs of the class colour,

mixed with per-image jitter, distractor shapes of random colours and pixel noise,
so the task is easy for a ResNet but not trivial. Images vary in size (64 to 500
pixels a side, about 400 x 350 on average) and aspect ratio like photographs.

The output is deterministic: the same arguments give the same bytes.

    python -m ffcv_imagenet synthetic --out data/synthetic --classes 10 \
        --train-per-class 100 --val-per-class 20 --seed 0

``--layout tiny`` writes Tiny ImageNet's layout instead, at its 64 x 64 pixels:
``train/<wnid>/images/<wnid>_<i>.JPEG``, ``val/images/val_<k>.JPEG`` with
``val/val_annotations.txt`` (file, wnid, box; tab-separated), ``wnids.txt`` and
``words.txt``.
"""
from __future__ import annotations

import argparse
import colorsys
import io
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from .folders import ANNOTATIONS_FILE, SYNSET_FILE, WORDS_FILE

HUES = 10
TEXTURES = ("stripes", "checker", "rings", "dots")
COLOUR_WORDS = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "blue",
                "violet", "magenta")
SPLIT_IDS = {"train": 0, "val": 1}
LAYOUTS = ("imagenet", "tiny")
TINY_SIDE = 64  # pixels: Tiny ImageNet's image size


def class_wnid(index: int) -> str:
    """WordNet-like id of synthetic class ``index``; sorting the ids keeps index order."""
    return f"n{1000000 + index:08d}"


def class_name(index: int) -> str:
    """Human-readable name of synthetic class ``index``, e.g. ``'red stripes'``."""
    hue = index % HUES
    texture = TEXTURES[(index // HUES) % len(TEXTURES)]
    variant = index // (HUES * len(TEXTURES))
    name = f"{COLOUR_WORDS[hue]} {texture}"
    return name if variant == 0 else f"{name} {variant}"


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) in pixels: mostly photo-sized, sometimes small or elongated."""
    if rng.random() < 0.05:
        long_side = int(rng.integers(64, 200))
    else:
        long_side = int(np.clip(rng.normal(430, 50), 200, 500))
    aspect = float(np.exp(rng.uniform(np.log(1.0), np.log(1.6))))
    short_side = max(64, int(round(long_side / aspect)))
    return (long_side, short_side) if rng.random() < 0.8 else (short_side, long_side)


def _texture(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A [0, 1] float pattern of shape (height, width) whose kind identifies the class."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(0.06, 0.12) * min(height, width) + 4.0
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        return 0.5 + 0.5 * np.sin(2 * np.pi * phase)
    if kind == "checker":
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    if kind == "rings":
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = np.hypot(yy - cy, xx - cx) / period
        return 0.5 + 0.5 * np.sin(2 * np.pi * radius)
    # dots: a lattice of soft discs
    fy = (yy % period) / period - 0.5
    fx = (xx % period) / period - 0.5
    return (np.hypot(fy, fx) < 0.3).astype(np.float32)


def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), dtype=np.float32) * 255


def _draw_blobs(canvas: np.ndarray, colour: np.ndarray, count: int,
                rng: np.random.Generator) -> None:
    """Paints ``count`` filled ellipses or rectangles of ``colour`` in place."""
    height, width, _ = canvas.shape
    yy, xx = np.ogrid[0:height, 0:width]
    for _ in range(count):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry = rng.uniform(0.05, 0.25) * height
        rx = rng.uniform(0.05, 0.25) * width
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        else:
            mask = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        canvas[mask] = colour


def render_image(index: int, rng: np.random.Generator) -> np.ndarray:
    """One (height, width, 3) uint8 RGB image of synthetic class ``index``."""
    width, height = _image_size(rng)
    hue = (index % HUES) / HUES + rng.normal(0, 0.015)
    kind = TEXTURES[(index // HUES) % len(TEXTURES)]
    fg = _hsv(hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))
    bg = _hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.2, 0.9))
    pattern = _texture(kind, height, width, rng)[..., None]
    strength = rng.uniform(0.5, 0.9)
    canvas = bg * (1 - strength * pattern) + fg * (strength * pattern)
    _draw_blobs(canvas, fg * rng.uniform(0.8, 1.1), int(rng.integers(1, 4)), rng)
    for _ in range(int(rng.integers(0, 3))):
        distractor = _hsv(rng.random(), rng.uniform(0.3, 1), rng.uniform(0.3, 1))
        _draw_blobs(canvas, distractor, 1, rng)
    canvas += rng.normal(0, rng.uniform(8, 20), size=canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 array (deterministic for the same input)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _image_path(root: Path, layout: str, split: str, index: int, i: int, count: int) -> Path:
    wnid = class_wnid(index)
    if layout == "imagenet":
        return root / split / wnid / f"{wnid}_{split}_{i:05d}.JPEG"
    if split == "train":
        return root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
    return root / "val" / "images" / f"val_{index * count + i}.JPEG"


def _write_class(task: tuple[Path, str, int, int, int, int, str]) -> None:
    root, split, index, count, seed, quality, layout = task
    for i in range(count):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], index, i])
        image = render_image(index, rng)
        if layout == "tiny":
            image = np.asarray(Image.fromarray(image).resize((TINY_SIDE, TINY_SIDE),
                                                             Image.BILINEAR))
        path = _image_path(root, layout, split, index, i, count)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(encode_jpeg(image, quality))
        os.replace(tmp, path)


def _write_tiny_lists(root: Path, classes: int, val_per_class: int) -> None:
    """Tiny ImageNet's label files: wnids.txt, words.txt, val/val_annotations.txt."""
    wnids = [class_wnid(c) for c in range(classes)]
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (root / WORDS_FILE).write_text("".join(f"{w}\t{class_name(c)}\n"
                                           for c, w in enumerate(wnids)))
    if val_per_class > 0:
        last = TINY_SIDE - 1
        rows = [f"{_image_path(root, 'tiny', 'val', c, i, val_per_class).name}\t{wnids[c]}"
                f"\t0\t0\t{last}\t{last}\n"
                for c in range(classes) for i in range(val_per_class)]
        (root / "val" / ANNOTATIONS_FILE).write_text("".join(rows))


def generate(out: str | os.PathLike, classes: int = 10, train_per_class: int = 100,
             val_per_class: int = 20, seed: int = 0, quality: int = 90,
             workers: int = 1, layout: str = "imagenet") -> Path:
    """Writes ``out/{train,val}/<wnid>/<wnid>_<split>_<i>.JPEG`` and
    ``out/LOC_synset_mapping.txt`` (``layout='imagenet'``), or Tiny ImageNet's layout
    at 64 x 64 pixels (``layout='tiny'``, see the module docstring).

    Every image is seeded from (seed, split, class, index), so the bytes do not
    depend on ``workers`` and an interrupted run can simply be repeated.
    Returns ``out``.
    """
    if not 1 <= classes <= 1000:
        raise ValueError(f"--classes must be between 1 and 1000, got {classes}")
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(out)
    counts = {"train": train_per_class, "val": val_per_class}
    tasks = [(root, split, c, n, seed, quality, layout)
             for split, n in counts.items() if n > 0 for c in range(classes)]
    if workers > 1:
        with Pool(workers) as pool:
            pool.map(_write_class, tasks, chunksize=1)
    else:
        for task in tasks:
            _write_class(task)
    if layout == "tiny":
        _write_tiny_lists(root, classes, val_per_class)
    else:
        lines = [f"{class_wnid(c)} {class_name(c)}\n" for c in range(classes)]
        (root / SYNSET_FILE).write_text("".join(lines))
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the files")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes")
    parser.add_argument("--layout", choices=LAYOUTS, default="imagenet",
                        help="folder layout: ImageNet's, or Tiny ImageNet's at 64 px")
    args = parser.parse_args(argv)
    root = generate(args.out, args.classes, args.train_per_class, args.val_per_class,
                    args.seed, args.quality, args.workers, args.layout)
    total = args.classes * (args.train_per_class + args.val_per_class)
    print(f"wrote {total} images in {args.classes} classes to {root}")


if __name__ == "__main__":
    main()
