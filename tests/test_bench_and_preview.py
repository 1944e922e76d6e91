import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ffcv_imagenet.tools import bench, preview
from ffcv_imagenet.training.models import build_model


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


def test_train_benchmark_times_model_alone_and_end_to_end(betons, monkeypatch):
    built = []

    def recording_build_model(*args, **kwargs):
        built.append(build_model(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(bench, 'build_model', recording_build_model)
    result = bench.bench_train(str(betons[0]), arch='resnet18', resolution=32, batch_size=8,
                               steps=3, warmup=2, device='cpu', precision='off', workers=2)
    s = result['settings']
    assert (s['arch'], s['num_classes'], s['resolution']) == ('resnet18', 4, 32)
    assert s['precision'] == 'off' and s['torch_threads'] == 2
    assert s['device'] == 'cpu' and 'cores' in s['device_name'] and s['torch']
    assert [row['measurement'] for row in result['rows']] == list(bench.TRAIN_ROWS)
    for row in result['rows']:
        assert row['steps'] == 3 and row['seconds'] > 0
        assert math.isfinite(row['images_per_sec']) and row['images_per_sec'] > 0
        assert math.isfinite(row['last_loss'])
    model_alone, end_to_end = (row['images_per_sec'] for row in result['rows'])
    assert result['ratio_end_to_end_vs_model'] == pytest.approx(end_to_end / model_alone)
    table = bench.format_train_table(result)
    assert all(name in table for name in bench.TRAIN_ROWS)
    assert f"{result['ratio_end_to_end_vs_model']:.3f}" in table
    # a fresh model per measurement, from the same seed, and both were trained
    torch.manual_seed(0)
    initial = build_model('resnet18', 4, blurpool=True, channels_last=True)
    assert len(built) == 2
    for model in built:
        assert not torch.equal(model.fc.weight, initial.fc.weight)
        assert not torch.equal(model.conv1.weight, initial.conv1.weight)
    assert built[0] is not built[1]


def test_train_benchmark_rejects_a_missing_beton(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(['train', '--beton', 'missing.beton', '--arch', 'resnet18',
                    '--device', 'cpu', '--precision', 'off'])
    assert exit_info.value.code == 2
    assert 'missing.beton' in capsys.readouterr().err


def test_train_table_has_a_pair_of_rows_per_resolution():
    def result(res, ratio):
        rows = [{'measurement': name, 'images_per_sec': 100.0, 'steps': 5, 'seconds': 1.0}
                for name in bench.TRAIN_ROWS]
        return {'settings': {'arch': 'resnet50', 'batch_size': 8, 'precision': 'bf16',
                             'channels_last': True, 'blurpool': True, 'compile': False,
                             'workers': 2, 'device_name': 'GPU', 'torch': '2', 'steps': 5,
                             'warmup': 1, 'resolution': res},
                'rows': rows, 'ratio_end_to_end_vs_model': ratio}
    lines = bench.format_train_table([result(160, 0.96), result(192, 0.5)]).splitlines()
    assert sum(line.lstrip().startswith('160 ') for line in lines) == 2
    assert sum(line.lstrip().startswith('192 ') for line in lines) == 2
    assert '0.960 (96.0%)' in lines[4] and '0.500 (50.0%)' in lines[6]
