"""What a run leaves for people (training/logs.py): JSON lines, TensorBoard scalars,
one-line records, nothing from other ranks."""
import json
import math

import pytest

from ffcv_imagenet.training.logs import RunLog, format_record, read_log


def test_events_are_json_lines_and_a_torn_last_line_is_ignored(tmp_path):
    log = RunLog(tmp_path / 'run', echo=False)
    log.write_config({'training.epochs': 3})
    log.event('epoch', epoch=1, train_loss=2.5, val_top1=math.nan)
    log.event('epoch', epoch=2, train_loss=2.0, val_top1=0.5)
    with open(tmp_path / 'run' / 'log.jsonl', 'a') as handle:
        handle.write('{"event": "epo')  # a run killed mid-write
    epochs = read_log(tmp_path / 'run', 'epoch')
    assert [e['epoch'] for e in epochs] == [1, 2]
    assert epochs[0]['val_top1'] is None  # NaN is not JSON: written as null
    assert json.loads((tmp_path / 'run' / 'config.json').read_text()) == {'training.epochs': 3}


def test_other_ranks_write_nothing(tmp_path):
    log = RunLog(tmp_path / 'rank1', enabled=False, tensorboard=True)
    log.write_config({'a': 1})
    log.event('epoch', epoch=1)
    log.scalars(1, {'x': 1.0})
    assert not (tmp_path / 'rank1').exists()


def test_tensorboard_scalars(tmp_path):
    # an optional extra: the pinned environment has it, a GPU image need not
    pytest.importorskip('tensorboard', reason='tensorboard (optional) is not installed')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = RunLog(tmp_path, tensorboard=True, echo=False)
    log.scalars(1, {'train_loss': 2.5, 'val_top1': None})
    log.scalars(2, {'train_loss': 1.5})
    log.close()
    events = EventAccumulator(str(tmp_path / 'tb'))
    events.Reload()
    assert events.Tags()['scalars'] == ['train_loss']
    assert [(e.step, e.value) for e in events.Scalars('train_loss')] == [(1, 2.5), (2, 1.5)]


def test_format_record_is_one_line():
    line = format_record({'epoch': 3, 'lr': 0.123456, 'val_top1': None})
    assert line == 'epoch=3 lr=0.1235'
