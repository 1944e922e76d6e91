import json

import numpy as np
import pytest
from PIL import Image

from ffcv_imagenet import bench, preview


@pytest.mark.slow
def test_loader_benchmark_reports_all_three_pipelines(synth, betons, tmp_path):
    train, val = betons
    out = tmp_path / 'bench.json'
    bench.main(['loader', '--beton', str(train), '--val-beton', str(val), '--folder',
                str(synth / 'train'), '--resolution', '32', '--batch-size', '8',
                '--workers', '2', '--epochs', '2', '--json', str(out)])
    result = json.loads(out.read_text())
    names = [row['pipeline'] for row in result['rows']]
    assert names == ['ffcv_imagenet train loader', 'ffcv_imagenet val loader',
                     'torchvision ImageFolder + DataLoader']
    assert all(row['images_per_sec'] > 0 and row['epochs_timed'] == 1 for row in result['rows'])
    rates = [row['images_per_sec'] for row in result['rows']]
    assert result['ratio_train_vs_torchvision'] == pytest.approx(rates[0] / rates[2])
    table = bench.format_loader_table(result)
    assert 'epoch 1 = warm-up' in table and 'vs torchvision' in table


def test_benchmark_needs_an_untimed_epoch(betons, synth):
    with pytest.raises(ValueError, match='at least 2 epochs'):
        bench.bench_loaders(str(betons[0]), str(synth / 'train'), epochs=1)


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
