"""The preview command (tools/preview.py): a PNG grid of one augmented batch."""
import numpy as np
from PIL import Image

from ffcv_imagenet.tools import preview


def test_preview_grid_has_a_tile_and_caption_per_image(betons, tmp_path):
    train, _ = betons
    out = tmp_path / 'batch.png'
    preview.main(['--beton', str(train), '--out', str(out), '--resolution', '40',
                  '--count', '12', '--workers', '1'])
    grid = Image.open(out)
    assert grid.mode == 'RGB'
    assert grid.size == (8 * 40, 2 * (40 + preview.CAPTION_PX))
    pixels = np.asarray(grid)
    caption_strip = pixels[40:40 + preview.CAPTION_PX, :40]
    assert (caption_strip < 128).any()  # text was drawn
    assert (pixels[40 + preview.CAPTION_PX:, 4 * 40:] == 255).all()  # 12 of 16 tiles used
