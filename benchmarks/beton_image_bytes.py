"""The bytes a ``.beton`` spends on its images, from its allocation table: what
scales with the number of images, unlike the file size (ffcv's writer fills whole
8 MiB pages per worker).

    python benchmarks/beton_image_bytes.py BETON [BETON ...]

For each file prints its size, its images by storage mode (JPEG or raw pixels) with
their stored bytes, and the bytes per image. For the storage comparison, run it on
``make bench-storage``'s files: ``data/storage/{published,jpg256}/{train,val}.beton``.
"""
import os
import sys

from ffcv_imagenet.data.read.beton import read_image_table

if len(sys.argv) < 2:
    sys.exit(__doc__.split('\n\n')[1])
for path in sys.argv[1:]:
    table = read_image_table(path)
    sizes = table['size'].astype(int)
    parts = []
    for mode, name in ((0, 'JPEG'), (1, 'raw')):
        chosen = table['mode'] == mode
        if chosen.any():
            parts.append(f"{int(chosen.sum()):,} {name} ({int(sizes[chosen].sum()):,} B)")
    print(f"{path}: file {os.path.getsize(path):,} B; images: {', '.join(parts)}; "
          f"image bytes {int(sizes.sum()):,} B, {sizes.sum() / len(sizes) / 1000:.0f} KB per image")
