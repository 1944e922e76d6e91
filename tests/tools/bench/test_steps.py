"""The training-step benchmark (tools/bench/steps.py): the model alone against end to
end, the clock started after the drained steps, static shapes when compiled, the table,
the cores left to the main thread."""
import contextlib
import math

import pytest
import torch

from ffcv_imagenet.data.read.loaders import endless_batches
from ffcv_imagenet.tools.bench import command, loader as bench_loader, steps
from ffcv_imagenet.training.models import BlurConv2d, build_model


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
    sync = bench_loader.sync

    def recording_sync(device):
        clock_reads.append(len(drawn))
        sync(device)

    monkeypatch.setattr(steps, 'build_model', recording_build_model)
    monkeypatch.setattr(steps, 'endless_batches', counting_endless_batches)
    monkeypatch.setattr(steps, '_sync', recording_sync)
    result = steps.bench_train(str(betons[0]), arch='resnet18', resolution=32, batch_size=8,
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
    assert [row['measurement'] for row in result['rows']] == list(steps.TRAIN_ROWS)
    for row in result['rows']:
        assert row['steps'] == 3 and row['seconds'] > 0
        assert math.isfinite(row['images_per_sec']) and row['images_per_sec'] > 0
        assert math.isfinite(row['last_loss'])
    model_alone, end_to_end = (row['images_per_sec'] for row in result['rows'])
    assert result['ratio_end_to_end_vs_model'] == pytest.approx(end_to_end / model_alone)
    table = steps.format_train_table(result)
    assert all(name in table for name in steps.TRAIN_ROWS)
    assert f"{result['ratio_end_to_end_vs_model']:.3f}" in table
    # a fresh model per measurement, from the same seed, and both were trained
    torch.manual_seed(0)
    initial = build_model('resnet18', 4, blurpool=True, channels_last=True)
    assert len(built) == 2
    for model in built:
        assert not torch.equal(model.fc.weight, initial.fc.weight)
        assert not torch.equal(model.conv1.weight, initial.conv1.weight)
    assert built[0] is not built[1]


def test_train_table_has_a_pair_of_rows_per_resolution():
    def result(res, ratio):
        rows = [{'measurement': name, 'images_per_sec': 100.0, 'steps': 5, 'seconds': 1.0}
                for name in steps.TRAIN_ROWS]
        return {'settings': {'arch': 'resnet50', 'batch_size': 8, 'precision': 'bf16',
                             'channels_last': True, 'blurpool': True, 'compile': False,
                             'workers': 2, 'device_name': 'GPU', 'torch': '2', 'steps': 5,
                             'warmup': 1, 'untimed_after_warmup': 4, 'resolution': res},
                'rows': rows, 'ratio_end_to_end_vs_model': ratio}
    lines = steps.format_train_table([result(160, 0.96), result(192, 0.5)]).splitlines()
    assert sum(line.lstrip().startswith('160 ') for line in lines) == 2
    assert sum(line.lstrip().startswith('192 ') for line in lines) == 2
    assert '0.960 (96.0%)' in lines[4] and '0.500 (50.0%)' in lines[6]
    assert 'then 4 more end to end' in lines[1]


def test_time_steps_starts_the_clock_after_the_drained_steps(monkeypatch):
    drawn, clock_reads = [], []
    batches = (drawn.append(i) or (torch.zeros(2, 3, 4, 4), torch.zeros(2)) for i in range(100))
    monkeypatch.setattr(steps, 'train_step', lambda *args, **kwargs: (torch.tensor(1.0), None))
    monkeypatch.setattr(steps, '_sync', lambda device: clock_reads.append(len(drawn)))
    row = steps.time_steps(None, None, steps.resolve_precision('off', torch.device('cpu')),
                           batches, warmup=5, steps=7, device=torch.device('cpu'), drain=3)
    # after the first step (its seconds: compilation), after the warm-up and drained
    # steps, after the timed ones
    assert clock_reads == [1, 5 + 3, 5 + 3 + 7] and len(drawn) == 15
    assert row['steps'] == 7 and row['untimed_after_warmup'] == 3
    assert row['images_per_sec'] == pytest.approx(7 * 2 / row['seconds'])
    assert row['first_step_s'] > 0  # the first step, timed on its own


def test_compiled_benchmarks_use_static_shapes_as_training_does(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.compiler, 'reset', lambda: calls.append('reset'))
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: calls.append(kwargs) or model)
    model, _ = steps._fresh_training('resnet18', 4, blurpool=False, channels_last=True,
                                     compile=True, device=torch.device('cpu'))
    assert calls == ['reset', {'dynamic': False, 'mode': 'default'}]
    assert isinstance(model, torch.nn.Module)


def test_train_benchmark_leaves_cores_to_the_main_thread(monkeypatch):
    assert [steps.default_workers(cpus) for cpus in (1, 2, 3, 16)] == [1, 1, 1, 14]
    monkeypatch.setattr(steps.os, 'cpu_count', lambda: 16)
    assert steps.default_workers() == 14
    args = command._parser().parse_args(['train', '--beton', 'b'])
    assert args.workers == 14


def test_train_benchmark_adds_the_blurpool_ddp_and_compile_mode_rows_asked_for(
        betons, capsys, monkeypatch):
    built = []  # per model built: (blurs, their forms, DDP bucket cap in bytes or None)
    fresh = steps._fresh_training

    def recording_fresh_training(*args, **kwargs):
        model, optimizer = fresh(*args, **kwargs)
        blurs = [m for m in model.modules() if isinstance(m, BlurConv2d)]
        built.append((len(blurs), {m.form for m in blurs},
                      getattr(model, 'bucket_bytes_cap', None)))
        return model, optimizer

    modes = []
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: modes.append(kwargs['mode'])
                        or model)
    monkeypatch.setattr(steps, '_fresh_training', recording_fresh_training)
    command.main(['train', '--beton', str(betons[0]), '--arch', 'resnet18', '--resolution',
                  '32', '--batch-size', '4', '--steps', '1', '--warmup', '1', '--device',
                  'cpu', '--precision', 'off', '--workers', '1', '--blurpool-forms',
                  '--ddp-buckets', '1', '25', '--compile-modes', 'default', 'reduce-overhead'])
    table = capsys.readouterr().out
    # model alone as asked (blurpool, default form, eager); compiled in each mode; under
    # DDP with each bucket cap; BlurPool off, reference and default on the same batch;
    # then end to end as asked
    conv = (6, {'conv'}, None)
    assert built == [conv, conv, conv, (6, {'conv'}, 2 ** 20), (6, {'conv'}, 25 * 2 ** 20),
                     (0, set(), None), (6, {'reference'}, None), conv, conv]
    assert modes == ['default', 'reduce-overhead']  # the other rows stay eager
    assert not torch.distributed.is_initialized()  # DDP's group of one is left
    lines = table.splitlines()
    for form, name in steps.BLURPOOL_ROWS:
        (row,) = [line for line in lines if name in line]
        assert row.lstrip().startswith('32 ')
        ratio = float(row.split()[-1])
        assert ratio > 0 and (ratio == 1.0 or form != 'reference')
    for name in ('DDP, 1 MiB buckets', 'DDP, 25 MiB buckets'):
        (row,) = [line for line in lines if name in line]
        assert float(row.split()[-1]) > 0
    for mode in modes:
        (row,) = [line for line in lines if f'compiled {mode} ' in line]
        first_step, ratio = (float(value) for value in row.split()[-2:])
        assert row.lstrip().startswith('32 ') and first_step > 0 and ratio > 0
    assert '/ reference' in table and 'first step s' in table


def test_train_benchmark_has_no_blurpool_form_rows_unless_asked():
    args = command._parser().parse_args(['train', '--beton', 'b'])
    assert args.blurpool_forms is False
    result = {'settings': {'arch': 'resnet18', 'batch_size': 8, 'precision': 'off',
                           'channels_last': True, 'blurpool': True, 'compile': False,
                           'workers': 1, 'device_name': 'CPU', 'torch': '2', 'steps': 1,
                           'warmup': 1, 'untimed_after_warmup': 4, 'resolution': 32},
              'rows': [{'measurement': name, 'images_per_sec': 1.0, 'steps': 1, 'seconds': 1.0}
                       for name in steps.TRAIN_ROWS], 'ratio_end_to_end_vs_model': 1.0}
    assert 'blurpool form' not in steps.format_train_table(result)
