"""The loader benchmark (tools/bench/loader.py): the table and its shares of the
decoding ceilings, interleaved rounds and paired ratios, an older revision's loaders
beside today's, the peers' passes, the hypervisor's share of CPU time, and (slow) the
whole benchmark on the synthetic data."""
import json
import subprocess

import numpy as np
import pytest
import torch

from ffcv_imagenet.tools.bench import command, loader as bench_loader, peers as peer_pipelines
from ffcv_imagenet.tools.bench import revision


def _older_revision(root, loaders_source):
    """A git checkout at ``root`` whose one commit holds a package ``ffcv_imagenet``
    with ``data/loaders.py`` = ``loaders_source``; returns the commit's hash."""
    package = root / 'ffcv_imagenet'
    (package / 'data').mkdir(parents=True)
    (package / '__init__.py').write_text('')
    (package / 'data' / '__init__.py').write_text('')
    (package / 'data' / 'loaders.py').write_text(loaders_source)
    git = ['git', '-C', str(root), '-c', 'user.name=t', '-c', 'user.email=t@t']
    subprocess.run(git + ['init', '-q'], check=True)
    subprocess.run(git + ['add', '.'], check=True)
    subprocess.run(git + ['commit', '-q', '-m', 'older'], check=True)
    return subprocess.run(git + ['rev-parse', 'HEAD'], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.slow
def test_loader_benchmark_reports_loaders_ceilings_and_torchvision(synth, betons, tmp_path,
                                                                  capsys, monkeypatch):
    train, val = betons
    out = tmp_path / 'bench.json'
    # an "older revision" whose loaders are today's, on one decoding thread (numba
    # compiles a serial loop faster than a parallel one): the plumbing, not the speed,
    # is under test
    older = _older_revision(tmp_path / 'checkout',
                            'from ffcv_imagenet.data.read.loaders import train_loader, val_loader\n')
    monkeypatch.setattr(revision, 'checkout_root', lambda: tmp_path / 'checkout')
    timed = []  # the order in which the passes ran
    interleave = bench_loader.interleave

    def recording(passes, rounds):
        def run(i):
            timed.append(i)
            return passes[i]()
        return interleave([lambda i=i: run(i) for i in range(len(passes))], rounds)
    monkeypatch.setattr(bench_loader, 'interleave', recording)
    command.main(['loader', '--beton', str(train), '--val-beton', str(val), '--folder',
                str(synth / 'train'), '--resolution', '32', '--batch-size', '8',
                '--workers', '1', '--epochs', '3', '--decoder-dtype', 'both',
                '--reference', older[:7], '--json', str(out)])
    result = json.loads(out.read_text())
    # both output paths: uint8 (the path CUDA takes) and float32 (the CPU's)
    assert result['settings']['decoder_dtype'] == 'both'
    assert result['settings']['decoder_dtypes'] == ['uint8', 'float32']
    assert result['settings']['reference'] == older[:10]
    names = [row['pipeline'] for row in result['rows']]
    old = f'ffcv_imagenet {older[:10]}'
    # on the CPU the uint8 batches are timed as decoded: normalising them is a GPU's work
    assert names == ['ffcv_imagenet train loader, uint8 as decoded',
                     'ffcv_imagenet val loader, uint8 as decoded',
                     f'{old} train loader, uint8 as decoded',
                     f'{old} val loader, uint8 as decoded',
                     'ffcv_imagenet train loader, float32', 'ffcv_imagenet val loader, float32',
                     f'{old} train loader, float32', f'{old} val loader, float32',
                     'decode only, train crops (ceiling)', 'decode only, train, crop regions',
                     'decode only, val crops (ceiling)', 'decode only, val, crop regions',
                     'torchvision ImageFolder + DataLoader']
    assert all(row['images_per_sec'] > 0 for row in result['rows'])
    assert [row['epochs_timed'] for row in result['rows']] == [2] * 13
    assert all(len(row['rates']) == 3 for row in result['rows'])
    # one pass of each of the 12 interleaved pipelines per round, the order reversed
    # every other round (the baseline is timed alone, before them)
    assert timed == list(range(12)) + list(range(11, -1, -1)) + list(range(12))
    assert [row['normalised'] for row in result['rows'][:8]] == [False] * 4 + [True] * 4
    assert [row.get('revision') for row in result['rows'][:8]] == ([None] * 2
                                                                   + [older[:10]] * 2) * 2
    rates = [row['images_per_sec'] for row in result['rows']]
    # the headline ratio sets today's normalised train loader against torchvision's output
    assert result['ratio_train_vs_torchvision'] == pytest.approx(rates[4] / rates[-1])

    def paired(row, other):  # the median of the two timed rounds' ratios
        return sum(a / b for a, b in zip(row['rates'][1:], other['rates'][1:])) / 2
    rows = result['rows']
    ceiling = {row['loader']: row for row in rows[8:12:2]}
    # the loaders and the decoding of crop regions (what the loaders do), against the
    # full-frame ceilings of the same rounds
    for row in rows[:8] + rows[9:13:2]:
        assert row['share_of_ceiling'] == pytest.approx(paired(row, ceiling[row['loader']]))
    # today's loaders against the older revision's of the same kind and output path
    for today, older_row in [(0, 2), (1, 3), (4, 6), (5, 7)]:
        assert rows[today]['vs_reference'] == pytest.approx(paired(rows[today],
                                                                   rows[older_row]))
        assert 'vs_reference' not in rows[older_row]
    assert result['ceiling_images'] == {'train': {'jpeg_images': 48, 'raw_images': 0},
                                        'val': {'jpeg_images': 20, 'raw_images': 0}}
    table = capsys.readouterr().out
    assert table.strip() == bench_loader.format_loader_table(result)
    assert 'pass 1 = warm-up' in table and 'vs torchvision' in table
    assert 'decoder output uint8 and float32' in table and 'share of ceiling' in table
    assert f"{rows[0]['share_of_ceiling']:.1%}" in table.splitlines()[2]
    # 48 train images, 20 val: a val pass is 2 epochs, as many images as a train epoch
    assert [row.get('epochs_per_pass') for row in rows] == [1, 2] * 4 + [1, 1, 2, 2, None]
    assert 'a val pass is 2 epochs of the val set' in table
    assert 'as decoded: batches timed as ffcv yields them' in table
    assert 'pipelines interleaved' in table
    # on Linux the run reports the share of CPU time the hypervisor took during it
    assert 0 <= result['settings']['steal_share'] <= 1
    assert 'CPU time taken by the hypervisor during the rounds (steal): ' in table
    assert (f"ffcv_imagenet val loader, float32: {rows[5]['vs_reference']:.2f}x the loader "
            f"of {older[:10]}") in table


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
    lines = bench_loader.format_loader_table(result).splitlines()
    assert 'share of ceiling' in lines[1]
    assert lines[2].endswith('5.00x             50.0%')
    assert lines[3].endswith('10.00x')  # a ceiling has no share of itself
    assert lines[5] == ("ceiling, train: 30 JPEG images per pass; 10 stored as raw "
                        "pixels are not decoded, nor counted")


def test_each_row_gets_its_share_of_its_own_loaders_ceiling_round_by_round():
    rows = [{'kind': kind, 'loader': loader, 'rates': rates}
            for kind, loader, rates in [
                ('loader', 'val', [1.0, 300.0, 200.0, 300.0]),
                ('peer', 'train', [1.0, 200.0, 100.0, 100.0]),
                ('ceiling', 'train', [1.0, 1000.0, 500.0, 1000.0]),
                ('region', 'train', [1.0, 1200.0, 600.0, 1000.0]),
                ('ceiling', 'val', [1.0, 600.0, 400.0, 300.0]),
                ('baseline', None, [1.0, 50.0, 50.0, 50.0])]]
    bench_loader.add_shares(rows)
    # medians of the timed rounds' ratios (the first pass is not timed): val 0.5, 0.5,
    # 1.0; train peer 0.2, 0.2, 0.1; region 1.2, 1.2, 1.0
    assert [row.get('share_of_ceiling') for row in rows] == [0.5, 0.2, None, 1.2, None, None]


def test_a_repeated_pass_is_its_images_over_its_total_time():
    rates = iter([100.0, 300.0, 50.0])
    run = bench_loader.repeated(lambda: next(rates), 2)
    assert run() == pytest.approx(150.0)  # 2 passes of n images in n/100 + n/300 s


def test_interleaved_rounds_alternate_their_order_and_pair_the_rounds():
    timed = []
    passes = [lambda i=i: timed.append(i) or float(10 * (i + 1)) for i in range(3)]
    rates = bench_loader.interleave(passes, 4)
    assert timed == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0]
    assert rates == [[10.0] * 4, [20.0] * 4, [30.0] * 4]
    # a drift that slows everything in the last round leaves a paired ratio alone
    assert bench_loader.paired_ratio([9.0, 2.0, 2.0, 1.0], [1.0, 4.0, 4.0, 2.0]) == 0.5
    with pytest.raises(ValueError):  # rounds are paired one to one
        bench_loader.paired_ratio([1.0, 2.0], [1.0, 2.0, 3.0])


def test_rows_compare_with_the_older_revisions_row_of_the_same_kind_and_path():
    def row(loader, dtype, rates, **extra):
        return {'kind': 'loader', 'loader': loader, 'decoder_dtype': dtype,
                'rates': [1.0] + rates, **extra}
    rows = [row('train', 'uint8', [200.0, 300.0]), row('val', 'uint8', [100.0, 100.0]),
            row('train', 'float32', [90.0, 90.0]),
            row('train', 'uint8', [100.0, 100.0], revision='abc'),
            row('train', 'float32', [30.0, 45.0], revision='abc'),
            {'kind': 'ceiling', 'loader': 'train', 'rates': [1.0, 9.0, 9.0]}]
    bench_loader.add_reference_ratios(rows)
    assert [r.get('vs_reference') for r in rows] == [2.5, None, 2.5, None, None, None]


def test_loader_benchmark_defaults_to_the_devices_own_output_path():
    assert bench_loader.decoder_dtype_for(None, torch.device('cuda', 0)) == torch.uint8
    assert bench_loader.decoder_dtype_for(None, torch.device('cpu')) == torch.float32
    assert bench_loader.decoder_dtype_for('uint8', torch.device('cpu')) == torch.uint8
    assert bench_loader.decoder_dtype_for('float32', torch.device('cuda', 0)) == torch.float32
    with pytest.raises(ValueError, match='decoder dtype'):
        bench_loader.decoder_dtype_for('float16', torch.device('cpu'))
    assert command._parser().parse_args(['loader', '--beton', 'b', '--folder', 'f']
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

    rates = bench_loader.epoch_rates(epoch, 2, torch.device('cuda', 1))
    gpu = torch.device('cuda', 1)
    assert events == [gpu, 'batch', 'batch', gpu] * 2 and len(rates) == 2
    events.clear()
    bench_loader.epoch_rates(epoch, 1, torch.device('cpu'))
    assert events == ['batch', 'batch']


def test_benchmark_needs_an_untimed_epoch(betons, synth):
    with pytest.raises(ValueError, match='at least 2 epochs'):
        bench_loader.bench_loaders(str(betons[0]), str(synth / 'train'), epochs=1)


def test_a_kind_stored_raw_gets_no_ceiling_and_its_rows_no_share():
    from ffcv_imagenet.tools.bench.decode_ceiling import StoredJpegs
    empty = np.zeros(0, np.int64)
    raw = StoredJpegs(data=np.zeros(0, np.uint8), offsets=empty, sizes=empty,
                      heights=empty, widths=empty, positions=np.full(5, -1), raw_images=5)
    pipelines, counts = bench_loader.ceiling_passes({'val': raw}, resolution=32,
                                                    batch_size=4, workers=1)
    assert pipelines == [] and counts == {'val': {'jpeg_images': 0, 'raw_images': 5}}
    rows = [{'kind': 'loader', 'loader': 'val', 'rates': [1.0, 2.0]}]
    bench_loader.add_shares(rows)
    assert 'share_of_ceiling' not in rows[0]


def test_a_reference_whose_loaders_take_no_decoder_dtype_is_refused_in_one_line(
        monkeypatch):
    class Older:  # the loaders of a revision before the decoder_dtype argument
        def train_loader(path, *, batch_size, resolution, num_workers):
            pass
        val_loader = train_loader
    monkeypatch.setattr(revision, 'import_revision', lambda rev, into: (Older, 'abcdef0123'))
    with pytest.raises(ValueError, match=r'revision old \(abcdef0123\): its train_loader '
                                         r'takes no decoder_dtype'):
        bench_loader._reference_loaders('old', '/nowhere')


def test_the_hypervisors_share_of_cpu_time_is_read_and_reported(tmp_path):
    stat = tmp_path / 'stat'
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text('cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n')
    assert bench_loader.cpu_ticks(str(stat)) == (35, 1000)
    assert bench_loader.cpu_ticks(str(tmp_path / 'missing')) is None
    stat.write_text('intr 1 2 3\n')
    assert bench_loader.cpu_ticks(str(stat)) is None
    assert bench_loader.steal_share((35, 1000), (135, 1400)) == 0.25
    assert bench_loader.steal_share(None, (135, 1400)) is None
    assert bench_loader.steal_share((35, 1000), (35, 1000)) is None

    def table(stolen):
        result = {'settings': {'resolution': 160, 'batch_size': 64, 'workers': 2,
                               'device': 'cpu', 'decoder_dtypes': ['float32'], 'cpus': 2,
                               'epochs': 5, 'steal_share': stolen},
                  'rows': [{'pipeline': 'torchvision ImageFolder + DataLoader',
                            'images_per_sec': 100.0, 'min': 90.0, 'max': 110.0,
                            'kind': 'baseline'}],
                  'ceiling_images': {}}
        return bench_loader.format_loader_table(result)
    assert table(0.25).endswith('CPU time taken by the hypervisor during the rounds '
                                '(steal): 25%: numbers from this run are skewed; compare '
                                'them with care')
    assert table(0.01).endswith('(steal): 1%')
    assert 'steal' not in table(None)


@pytest.mark.slow
def test_peer_passes_time_the_peers_and_name_a_missing_dali(betons, monkeypatch):
    if not peer_pipelines.dali_available():
        expected = ['ffcv stock decoder, train']
    else:  # both rows where it is installed; the note where it is not
        expected = ['ffcv stock decoder, train', 'DALI CPU pipeline, train']
    pipelines, notes = bench_loader.peer_passes(str(betons[0]), resolution=32,
                                                batch_size=8, workers=2)
    rows = bench_loader.timed_rows(pipelines, 2)
    assert [row['pipeline'] for row in rows] == expected
    for row in rows:
        assert row['kind'] == 'peer' and row['loader'] == 'train' and row['normalised']
        assert row['images_per_sec'] > 0 and row['epochs_timed'] == 1
    assert (notes == []) == peer_pipelines.dali_available()
    monkeypatch.setattr(peer_pipelines, 'dali_available', lambda: False)
    pipelines, notes = bench_loader.peer_passes(str(betons[0]), resolution=32,
                                                batch_size=8, workers=2)
    assert [fields['pipeline'] for fields, _ in pipelines] == ['ffcv stock decoder, train']
    assert notes == [f"DALI CPU pipeline: not installed here (pip install "
                     f"{peer_pipelines.DALI_PACKAGE} adds its row)"]
