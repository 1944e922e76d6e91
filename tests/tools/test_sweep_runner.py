"""Running a sweep's variants (tools/sweep_runner.py): one per GPU side by side, a
preempted variant or a signal to the sweep stops the others."""
import signal
import sys
import time

import pytest

from ffcv_imagenet.cli.config import ConfigError
from ffcv_imagenet.tools.sweep_runner import Job, Runner, gpu_slots


def test_gpu_slots():
    visible = ['2', '3', '5']
    assert gpu_slots(None, 1, visible) == [None]
    assert gpu_slots(None, 3, []) == [None, None, None]
    assert gpu_slots('auto', 1, visible) == ['2', '3', '5']
    assert gpu_slots('2', 1, visible) == ['2', '3']
    assert gpu_slots('0,2', 1, visible) == ['2', '5']
    assert gpu_slots('1,', 1, visible) == ['3']
    for spec in ('0', '4', '3,', '0,0', 'x'):
        with pytest.raises(ConfigError, match=f'--gpus {spec}'):
            gpu_slots(spec, 1, visible)
    with pytest.raises(ConfigError, match='no GPU visible'):
        gpu_slots('auto', 1, [])
    with pytest.raises(ConfigError, match='--parallel'):
        gpu_slots(None, 0, [])


# each fake variant appends "<CUDA_VISIBLE_DEVICES> <start> <end>" to the file it is given
FAKE_VARIANT = ("import os, sys, time; start = time.time(); time.sleep(float(sys.argv[2])); "
                "open(sys.argv[1], 'a').write("
                "f\"{os.environ.get('CUDA_VISIBLE_DEVICES')} {start} {time.time()}\\n\"); "
                "sys.exit(int(sys.argv[3]))")


def _fake_jobs(tmp_path, seconds, codes):
    record = tmp_path / 'record.txt'
    return record, [Job(f'v{i}', [sys.executable, '-c', FAKE_VARIANT, str(record),
                                  str(seconds), str(code)], tmp_path / f'v{i}.log')
                    for i, code in enumerate(codes)]


def test_variants_run_one_per_gpu_side_by_side(tmp_path):
    record, jobs = _fake_jobs(tmp_path, 1.0, [0, 3, 0, 0, 0])
    started, ended = [], []
    runner = Runner(['4', '7'], lambda job, slot: started.append((job.name, slot)),
                    lambda job, code, stopping: ended.append((job.name, code, stopping)),
                    poll_s=0.05)
    assert runner.run(jobs) is None
    assert [name for name, _ in started] == ['v0', 'v1', 'v2', 'v3', 'v4']
    assert sorted(ended) == [('v0', 0, False), ('v1', 3, False), ('v2', 0, False),
                             ('v3', 0, False), ('v4', 0, False)]  # a failure goes on
    runs = [(gpu, float(start), float(end)) for gpu, start, end
            in (line.split() for line in record.read_text().splitlines())]
    assert len(runs) == 5 and {gpu for gpu, _, _ in runs} == {'4', '7'}
    assert sorted(gpu for gpu, _, _ in runs) == sorted(slot for _, slot in started)
    overlapping = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
                   if a[1] < b[2] and b[1] < a[2]]
    assert overlapping, 'two GPUs, yet the variants ran one after another'
    assert all(a[0] != b[0] for a, b in overlapping), 'two variants shared a GPU'
    for _, start, _ in runs:  # never more variants at once than GPUs
        assert sum(s <= start < e for _, s, e in runs) <= 2


def test_a_preempted_variant_stops_the_sweep_and_the_others(tmp_path):
    record, jobs = _fake_jobs(tmp_path, 0.3, [75, 0, 0])
    jobs[1].command[4] = '60'  # a long variant beside the preempted one
    ended = []
    runner = Runner([None, None], lambda job, slot: None,
                    lambda job, code, stopping: ended.append((job.name, code, stopping)),
                    poll_s=0.05)
    began = time.monotonic()
    assert runner.run(jobs) == 'preempted'
    assert time.monotonic() - began < 30
    assert ended == [('v0', 75, False), ('v1', -signal.SIGTERM, True)]  # v2 never ran


def test_a_signal_to_the_sweep_reaches_its_children(tmp_path):
    _, jobs = _fake_jobs(tmp_path, 60, [0, 0])
    ended = []
    runner = Runner([None], lambda job, slot: signal.raise_signal(signal.SIGTERM),
                    lambda job, code, stopping: ended.append((job.name, code, stopping)),
                    poll_s=0.05)
    before = signal.getsignal(signal.SIGTERM)
    assert runner.run(jobs) == 'SIGTERM'
    assert ended == [('v0', -signal.SIGTERM, True)]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is given back
