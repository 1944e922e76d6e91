import contextlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ffcv_imagenet.data.loaders import endless_batches
from ffcv_imagenet.tools import bench, bench_loader, preview
from ffcv_imagenet.training.models import build_model


@pytest.mark.slow
def test_loader_benchmark_reports_loaders_ceilings_and_torchvision(synth, betons, tmp_path,
                                                                  capsys):
    train, val = betons
    out = tmp_path / 'bench.json'
    bench.main(['loader', '--beton', str(train), '--val-beton', str(val), '--folder',
                str(synth / 'train'), '--resolution', '32', '--batch-size', '8',
                '--workers', '2', '--epochs', '2', '--decoder-dtype', 'both',
                '--json', str(out)])
    result = json.loads(out.read_text())
    # both output paths: uint8 (the path CUDA takes) and float32 (the CPU's)
    assert result['settings']['decoder_dtype'] == 'both'
    assert result['settings']['decoder_dtypes'] == ['uint8', 'float32']
    names = [row['pipeline'] for row in result['rows']]
    # on the CPU the uint8 batches are timed as decoded: normalising them is a GPU's work
    assert names == ['ffcv_imagenet train loader, uint8 as decoded',
                     'ffcv_imagenet val loader, uint8 as decoded',
                     'ffcv_imagenet train loader, float32', 'ffcv_imagenet val loader, float32',
                     'decode only, train crops (ceiling)', 'decode only, train, crop regions',
                     'decode only, val crops (ceiling)', 'decode only, val, crop regions',
                     'torchvision ImageFolder + DataLoader']
    assert all(row['images_per_sec'] > 0 for row in result['rows'])
    # the ceilings, timed before and after the loaders, pool both times' passes
    assert [row['epochs_timed'] for row in result['rows']] == [1] * 4 + [2] * 4 + [1]
    assert [row['normalised'] for row in result['rows'][:4]] == [False, False, True, True]
    rates = [row['images_per_sec'] for row in result['rows']]
    # the headline ratio sets the normalised train loader against torchvision's output
    assert result['ratio_train_vs_torchvision'] == pytest.approx(rates[2] / rates[-1])
    ceiling = {row['loader']: row['images_per_sec'] for row in result['rows'][4:8:2]}
    # the loaders and the decoding of crop regions (what the loaders do), against the
    # full-frame ceilings
    for row in result['rows'][:4] + result['rows'][5:9:2]:
        assert row['share_of_ceiling'] == pytest.approx(row['images_per_sec']
                                                        / ceiling[row['loader']])
    assert result['ceiling_images'] == {'train': {'jpeg_images': 48, 'raw_images': 0},
                                        'val': {'jpeg_images': 20, 'raw_images': 0}}
    table = capsys.readouterr().out
    assert table.strip() == bench.format_loader_table(result)
    assert 'epoch 1 = warm-up' in table and 'vs torchvision' in table
    assert 'decoder output uint8 and float32' in table and 'share of ceiling' in table
    assert f"{result['rows'][0]['share_of_ceiling']:.1%}" in table.splitlines()[2]
    assert 'as decoded: batches timed as ffcv yields them' in table


def test_loader_table_gives_each_loader_its_share_and_names_raw_images():
    def row(name, rate, **extra):
        return {'pipeline': name, 'images_per_sec': rate, 'min': rate, 'max': rate, **extra}
    result = {'settings': {'resolution': 160, 'batch_size': 64, 'workers': 2,
                           'device': 'cpu', 'decoder_dtypes': ['float32'], 'cpus': 2,
                           'epochs': 5},
              'rows': [row('ffcv_imagenet train loader, float32', 500.0, kind='loader',
                           share_of_ceiling=0.5),
                       row('decode only, train crops (ceiling)', 1000.0, kind='ceiling'),
                       row('torchvision ImageFolder + DataLoader', 100.0, kind='baseline')],
              'ceiling_images': {'train': {'jpeg_images': 30, 'raw_images': 10}}}
    lines = bench.format_loader_table(result).splitlines()
    assert 'share of ceiling' in lines[1]
    assert lines[2].endswith('5.00x             50.0%')
    assert lines[3].endswith('10.00x')  # a ceiling has no share of itself
    assert lines[5] == ("ceiling, train: 30 JPEG images per pass; 10 stored as raw "
                        "pixels are not decoded, nor counted")


def test_each_row_gets_its_share_of_its_own_loaders_ceiling():
    rows = [{'kind': kind, 'loader': loader, 'images_per_sec': rate}
            for kind, loader, rate in [('loader', 'val', 300.0), ('peer', 'train', 200.0),
                                       ('ceiling', 'train', 1000.0), ('region', 'train', 1200.0),
                                       ('ceiling', 'val', 600.0), ('baseline', None, 50.0)]]
    bench_loader.add_shares(rows)
    assert [row.get('share_of_ceiling') for row in rows] == [0.5, 0.2, None, 1.2, None, None]


def test_loader_benchmark_defaults_to_the_devices_own_output_path():
    assert bench.decoder_dtype_for(None, torch.device('cuda', 0)) == torch.uint8
    assert bench.decoder_dtype_for(None, torch.device('cpu')) == torch.float32
    assert bench.decoder_dtype_for('uint8', torch.device('cpu')) == torch.uint8
    assert bench.decoder_dtype_for('float32', torch.device('cuda', 0)) == torch.float32
    with pytest.raises(ValueError, match='decoder dtype'):
        bench.decoder_dtype_for('float16', torch.device('cpu'))
    assert bench._parser().parse_args(['loader', '--beton', 'b', '--folder', 'f']
                                      ).decoder_dtype is None
    assert bench_loader.decoder_dtypes_for('both', torch.device('cpu')) == [torch.uint8,
                                                                           torch.float32]
    assert bench_loader.decoder_dtypes_for(None, torch.device('cpu')) == [torch.float32]


def test_epoch_timer_waits_for_the_gpu_before_each_clock_reading(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device: events.append(device))

    def epoch():
        for _ in range(2):
            events.append('batch')
            yield torch.zeros(4, 3, 2, 2), torch.zeros(4)

    rates = bench.epoch_rates(epoch, 2, torch.device('cuda', 1))
    gpu = torch.device('cuda', 1)
    assert events == [gpu, 'batch', 'batch', gpu] * 2 and len(rates) == 2
    events.clear()
    bench.epoch_rates(epoch, 1, torch.device('cpu'))
    assert events == ['batch', 'batch']


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

    drawn = []

    @contextlib.contextmanager
    def counting_endless_batches(loader):
        with endless_batches(loader) as batches:
            yield (drawn.append(batch) or batch for batch in batches)

    clock_reads = []
    sync = bench._sync

    def recording_sync(device):
        clock_reads.append(len(drawn))
        sync(device)

    monkeypatch.setattr(bench, 'build_model', recording_build_model)
    monkeypatch.setattr(bench, 'endless_batches', counting_endless_batches)
    monkeypatch.setattr(bench, '_sync', recording_sync)
    result = bench.bench_train(str(betons[0]), arch='resnet18', resolution=32, batch_size=8,
                               steps=3, warmup=2, device='cpu', precision='off', workers=2)
    s = result['settings']
    assert (s['arch'], s['num_classes'], s['resolution']) == ('resnet18', 4, 32)
    assert s['precision'] == 'off' and s['torch_threads'] == 2
    # the loader's head start (3 queued + 1 waiting in its thread) is drained untimed
    assert s['untimed_after_warmup'] == 4
    assert [row['untimed_after_warmup'] for row in result['rows']] == [0, 4]
    assert len(drawn) == 2 + 4 + 3
    assert clock_reads[-2:] == [2 + 4, 2 + 4 + 3]  # the clock's start and stop
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
                             'warmup': 1, 'untimed_after_warmup': 4, 'resolution': res},
                'rows': rows, 'ratio_end_to_end_vs_model': ratio}
    lines = bench.format_train_table([result(160, 0.96), result(192, 0.5)]).splitlines()
    assert sum(line.lstrip().startswith('160 ') for line in lines) == 2
    assert sum(line.lstrip().startswith('192 ') for line in lines) == 2
    assert '0.960 (96.0%)' in lines[4] and '0.500 (50.0%)' in lines[6]
    assert 'then 4 more end to end' in lines[1]


def test_time_steps_starts_the_clock_after_the_drained_steps(monkeypatch):
    drawn, clock_reads = [], []
    batches = (drawn.append(i) or (torch.zeros(2, 3, 4, 4), torch.zeros(2)) for i in range(100))
    monkeypatch.setattr(bench, 'train_step', lambda *args, **kwargs: (torch.tensor(1.0), None))
    monkeypatch.setattr(bench, '_sync', lambda device: clock_reads.append(len(drawn)))
    row = bench.time_steps(None, None, bench.resolve_precision('off', torch.device('cpu')),
                           batches, warmup=5, steps=7, device=torch.device('cpu'), drain=3)
    assert clock_reads == [5 + 3, 5 + 3 + 7] and len(drawn) == 15
    assert row['steps'] == 7 and row['untimed_after_warmup'] == 3
    assert row['images_per_sec'] == pytest.approx(7 * 2 / row['seconds'])


def test_compiled_benchmarks_use_static_shapes_as_training_does(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.compiler, 'reset', lambda: calls.append('reset'))
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: calls.append(kwargs) or model)
    model, _ = bench._fresh_training('resnet18', 4, blurpool=False, channels_last=True,
                                     compile=True, device=torch.device('cpu'))
    assert calls == ['reset', {'dynamic': False}]
    assert isinstance(model, torch.nn.Module)


def test_train_benchmark_leaves_cores_to_the_main_thread(monkeypatch):
    assert [bench.default_workers(cpus) for cpus in (1, 2, 3, 16)] == [1, 1, 1, 14]
    monkeypatch.setattr(bench.os, 'cpu_count', lambda: 16)
    assert bench.default_workers() == 14
    args = bench._parser().parse_args(['train', '--beton', 'b'])
    assert args.workers == 14
