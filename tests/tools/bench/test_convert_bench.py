"""bench convert (tools/bench/convert.py): the converter timed on generated trees of two
toy sizes, the memory of its process tree, the linearity verdicts and the projection to
ImageNet's train split."""
import json
import subprocess
import sys
import time

import pytest

from ffcv_imagenet.tools.bench import command
from ffcv_imagenet.tools.bench.convert import (IMAGENET_TRAIN_IMAGES, TreeMemory, analyse,
                                               linear_fit, process_tree)

CHILD_MIB = 64
# a process whose child holds CHILD_MIB MiB of touched memory
PARENT = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
          f"\"x = b'x' * ({CHILD_MIB} << 20); import time; time.sleep(60)\"]); "
          "time.sleep(60)")


@pytest.mark.slow  # two conversions, each in a new process (imports: 7-15 s)
def test_bench_convert_measures_both_sizes_and_projects_to_imagenet(tmp_path, capsys):
    out, report = tmp_path / 'bench', tmp_path / 'convert.json'
    command.main(['convert', '--images', '20', '40', '--preset', 'fast-256',
                  '--workers', '1', '--out', str(out), '--json', str(report)])
    result = json.loads(report.read_text())
    runs = result['runs']
    assert [(run['preset'], run['images']) for run in runs] == [('fast-256', 20),
                                                                ('fast-256', 40)]
    for run in runs:
        assert run['written'] == run['images']
        assert 0 < run['converter_seconds'] < run['wall_seconds']
        assert run['bytes_per_image'] > 0
        assert 0 < run['peak_pss_bytes'] <= run['peak_rss_bytes']
        assert run['images_per_second'] == pytest.approx(run['images'] / run['wall_seconds'])
        # fast-256 stores the longest side at 256 px at most
        assert 0 < run['stored_pixels'] <= 256 * 256
    assert {images: source['images'] for images, source in result['sources'].items()} == {
        '20': 20, '40': 40}
    assert not list(out.glob('*.beton')), "a measured .beton is deleted"
    analysis = result['analysis']['fast-256']
    for kind in ('time', 'memory', 'disk'):
        assert analysis[kind]['verdict']
        assert analysis[kind]['at_target'] == pytest.approx(
            analysis[kind]['fixed'] + analysis[kind]['per_image_fit'] * IMAGENET_TRAIN_IMAGES)
    projection = analysis['projection']
    assert projection['hours'] * 3600 == pytest.approx(analysis['time']['at_target'])
    assert projection['worker_hours'] == pytest.approx(projection['hours'])  # one worker
    assert projection['disk_gb'] * 1e9 == pytest.approx(analysis['disk']['at_target'])
    assert projection['peak_memory_gib'] * 2**30 >= max(r['peak_pss_bytes'] for r in runs)
    printed = capsys.readouterr().out
    assert 'fast-256' in printed and f"{IMAGENET_TRAIN_IMAGES:,} images" in printed


def test_bench_convert_refuses_a_count_that_is_not_a_multiple_of_the_classes(tmp_path,
                                                                            capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(['convert', '--images', '45', '--preset', 'fast-256',
                      '--out', str(tmp_path)])
    assert exit_info.value.code == 2
    assert 'multiple of 10' in capsys.readouterr().err


def test_tree_memory_sums_a_process_and_its_children():
    parent = subprocess.Popen([sys.executable, '-c', PARENT])
    try:
        memory = TreeMemory(parent.pid)
        deadline = time.monotonic() + 30  # until the child has started and filled its bytes
        while memory.peak_pss < CHILD_MIB << 20 and time.monotonic() < deadline:
            memory.sample()
            time.sleep(0.05)
        assert memory.peak_processes == 2
        assert memory.peak_rss >= CHILD_MIB << 20
        assert CHILD_MIB << 20 <= memory.peak_pss <= memory.peak_rss
    finally:
        for pid in reversed(process_tree(parent.pid)):
            subprocess.run(['kill', str(pid)], check=False)
        parent.wait()


def test_linear_fit_separates_a_fixed_part_from_the_part_per_image():
    assert linear_fit([100, 1000], [5 + 0.01 * 100, 5 + 0.01 * 1000], flat=False) == (
        pytest.approx(5), pytest.approx(0.01))
    # memory that shrinks between the sizes is noise: flat at its largest value
    assert linear_fit([100, 1000], [300.0, 290.0], flat=True) == (300.0, 0.0)
    # a negative fixed part is not a cost: proportional to the largest count
    assert linear_fit([100, 1000], [0.5, 10.0], flat=False) == (0.0, pytest.approx(0.01))


def _run(images, wall, own, pss, size):
    return {'images': images, 'wall_seconds': wall, 'converter_seconds': own,
            'peak_pss_bytes': pss, 'beton_bytes': size}


def test_analyse_calls_start_up_a_fixed_cost_and_projects_the_rest_per_image():
    counts = [1000, 10000]
    runs = [_run(1000, 10 + 1000 * 0.02, 1000 * 0.02, 500 << 20, 1000 * 1e5),
            _run(10000, 10 + 10000 * 0.02, 10000 * 0.02, 500 << 20, 10000 * 1e5)]
    analysis = analyse(counts, runs, target=1_000_000, workers=4)
    assert analysis['time']['verdict'].startswith('linear once a fixed start-up of 10.0 s')
    assert analysis['projection']['hours'] == pytest.approx((10 + 0.02 * 1e6) / 3600)
    assert analysis['projection']['worker_hours'] == pytest.approx(
        4 * analysis['projection']['hours'])
    assert analysis['disk']['verdict'] == 'linear'
    assert analysis['projection']['disk_gb'] == pytest.approx(1e5 * 1e6 / 1e9)
    assert analysis['memory']['verdict'].startswith('nearly constant: 500.0 MiB')
    assert analysis['projection']['peak_memory_gib'] == pytest.approx(500 / 1024)
