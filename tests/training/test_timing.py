"""Where an epoch's time goes (training/timing.py), and the fields a run logs."""
import time

import pytest
import torch

from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.timing import PassTimer

CPU = torch.device('cpu')
TIMING_FIELDS = ('data_wait_s', 'first_wait_s', 'compile_s', 'val_s', 'checkpoint_s',
                 'epoch_wall_s')


def slow_batches(waits):
    """Batches of shape (1,), each handed over after its wait in seconds."""
    for wait in waits:
        time.sleep(wait)
        yield torch.zeros(1)


def run_pass(timer, waits, step_seconds, shapes=None, checkpoint_at=None, write=0.0):
    """Steps over ``slow_batches(waits)``, step i lasting ``step_seconds[i]`` with
    input shape ``shapes[i]`` (default: all (8, 3, 32, 32)); step ``checkpoint_at``
    also writes a checkpoint of ``write`` seconds."""
    for index, _ in enumerate(timer.batches(slow_batches(waits))):
        timer.begin_step(shapes[index] if shapes else (8, 3, 32, 32))
        time.sleep(step_seconds[index])
        timer.end_step()
        if index == checkpoint_at:
            with timer.checkpoint():
                time.sleep(write)


def test_the_waits_for_the_loader_are_counted_and_the_first_kept_apart():
    timer = PassTimer(CPU)
    run_pass(timer, [0.15, 0.05, 0.05], [0.0, 0.0, 0.0])
    assert timer.first_wait >= 0.15
    assert timer.data_wait >= 0.25
    assert timer.data_wait - timer.first_wait == pytest.approx(0.1, abs=0.08)
    assert timer.data_wait < 0.25 + 0.15  # the steps' own time is not waiting


def test_the_first_step_at_a_new_shape_counts_its_excess_over_the_others():
    shapes = set()
    timer = PassTimer(CPU, shapes)
    run_pass(timer, [0, 0, 0, 0], [0.25, 0.05, 0.05, 0.05])
    assert timer.compile_seconds() == pytest.approx(0.2, abs=0.06)
    # the next epoch at the same shape compiles nothing, at a new one again
    same, new = PassTimer(CPU, shapes), PassTimer(CPU, shapes)
    run_pass(same, [0, 0], [0.2, 0.02])
    assert same.compile_seconds() == 0.0
    run_pass(new, [0, 0], [0.2, 0.02], shapes=[(8, 3, 48, 48)] * 2)
    assert new.compile_seconds() == pytest.approx(0.18, abs=0.06)
    assert shapes == {(8, 3, 32, 32), (8, 3, 48, 48)}


def test_a_first_step_faster_than_the_others_compiles_nothing():
    timer = PassTimer(CPU)
    run_pass(timer, [0, 0, 0], [0.0, 0.1, 0.1])
    assert timer.compile_seconds() == 0.0


def test_a_checkpoint_write_inside_a_step_is_neither_step_nor_compilation():
    timer = PassTimer(CPU)
    run_pass(timer, [0, 0, 0], [0.02, 0.02, 0.02], checkpoint_at=0, write=0.3)
    assert timer.checkpoint_seconds >= 0.3
    assert timer.compile_seconds() < 0.1
    assert timer.other_seconds < 0.2


def test_the_record_holds_the_parts_in_seconds():
    timer = PassTimer(CPU)
    run_pass(timer, [0.05, 0], [0.0, 0.0])
    record = timer.record(val_seconds=1.5, wall_seconds=4.0)
    assert tuple(record) == TIMING_FIELDS
    assert (record['val_s'], record['epoch_wall_s']) == (1.5, 4.0)
    assert record['data_wait_s'] == timer.data_wait >= 0.05


def test_every_epoch_line_says_where_its_time_went(full_run):
    epochs = read_log(full_run, 'epoch')
    assert len(epochs) == 2
    for record in epochs:
        for key in TIMING_FIELDS:
            assert record[key] >= 0, key
        # parts of the training pass fit in it; every part fits in the epoch's wall time
        assert record['first_wait_s'] <= record['data_wait_s']
        assert record['data_wait_s'] + record['compile_s'] <= record['epoch_time']
        assert record['epoch_time'] + record['val_s'] <= record['epoch_wall_s']
        assert (record['data_wait_s'] + record['compile_s'] + record['val_s']
                + record['checkpoint_s'] <= record['epoch_wall_s'])
        assert record['val_s'] > 0 and record['checkpoint_s'] > 0  # both epochs do both
    first, second = epochs
    # the ramp changes the shape at epoch 2, which then has a first step of its own
    assert first['resolution'] != second['resolution']
    # the first epoch's first batch waits for numba to compile the loader's pipeline
    assert first['first_wait_s'] > second['first_wait_s']
    # the epochs follow each other: an epoch's line comes its wall time after the last
    assert second['time'] - first['time'] == pytest.approx(second['epoch_wall_s'], abs=0.5)
