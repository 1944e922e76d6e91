"""Checkpoints (training/checkpoint.py): everything a run needs to continue survives a
save and a restore (older files fill in defaults, a checkpoint without an EMA starts
one), several names are one save and hard links of it (copies where the filesystem has
none), a crash, a full disk or kill -9 while writing keeps the previous file, bad files
are refused in one line, the newest readable checkpoint is found, and which names are
due after an epoch."""
import errno
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from ffcv_imagenet.training import checkpoint as ckpt
from ffcv_imagenet.training.checkpoint import (CheckpointError, TrainState, check_compatible,
                                               checkpoint_names, checkpoint_state, find_latest,
                                               load_checkpoint, restore, save_checkpoint)
from ffcv_imagenet.training.ema import ModelEMA
from tests.support import CHECKPOINT_META as META, CHECKPOINT_STATE as STATE, ROOT
from tests.support import trained_parts as trained


# --- what a saved run restores -----------------------------------------------------------

def test_a_saved_run_restores_every_part_of_its_progress(tmp_path):
    model, optimizer, scaler, ema = trained(0)
    path = save_checkpoint(ckpt.checkpoint_state(model, optimizer, scaler, STATE, META, ema),
                           tmp_path / 'last.pt')
    saved = load_checkpoint(path)
    assert {key: saved[key] for key in META} == META
    other, other_optimizer, other_scaler, other_ema = trained(1)
    state = ckpt.restore(saved, other, other_optimizer, other_scaler, other_ema)
    assert state == STATE
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(other_ema.module.weight, ema.module.weight)
    assert not torch.equal(other_ema.module.weight, model.weight)  # the average, not the model
    assert other_scaler.get_scale() == scaler.get_scale() == 512.0
    buffers = [other_optimizer.state[p]['momentum_buffer'] for p in other.parameters()]
    assert all(torch.equal(a, optimizer.state[p]['momentum_buffer'])
               for a, p in zip(buffers, model.parameters()))


def test_restore_returns_its_own_metrics_dict():
    model, optimizer, scaler, _ = trained(0)
    saved = ckpt.checkpoint_state(model, optimizer, scaler, STATE, META)
    state = ckpt.restore(saved, *trained(1)[:3])
    state.metrics['extra'] = 1.0
    assert 'extra' not in saved['metrics']


def test_without_fp16_no_scaler_state_is_saved_or_restored():
    model, optimizer, _, _ = trained(0)
    disabled = torch.amp.GradScaler('cpu', enabled=False)
    saved = ckpt.checkpoint_state(model, optimizer, disabled, TrainState(), META)
    assert saved['scaler'] is None and saved['ema'] is None
    other, other_optimizer, enabled, _ = trained(1)  # resumed with a scaler: left as it is
    ckpt.restore(saved, other, other_optimizer, enabled)
    assert enabled.get_scale() == 1024.0


def test_an_older_checkpoint_resumes_at_its_epoch_boundary():
    model, optimizer, scaler, _ = trained(0)
    saved = ckpt.checkpoint_state(model, optimizer, scaler, STATE, META)
    for key in ('best_epoch', 'stopped_early', 'step', 'partial', 'metrics'):
        del saved[key]
    state = ckpt.restore(saved, *trained(1)[:3])
    assert state == TrainState(epoch=3, iteration=42, best_top1=0.625, metrics={},
                               best_epoch=3, stopped_early=False, step=0, partial=None)


def test_the_random_state_is_restored_with_the_run():
    model, optimizer, scaler, _ = trained(0)
    torch.manual_seed(5), np.random.seed(6), random.seed(7)
    saved = ckpt.checkpoint_state(model, optimizer, scaler, STATE, META)
    expected = (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    ckpt.restore(saved, *trained(1)[:3])
    assert (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()) == expected


def test_a_checkpoint_without_ema_starts_the_average_from_its_weights():
    torch.manual_seed(0)
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    saved = checkpoint_state(model, optimizer, scaler, TrainState(epoch=1, iteration=5), {})
    ema = ModelEMA(other, 0.9)
    state = restore(saved, other, torch.optim.SGD(other.parameters(), lr=0.1), scaler, ema)
    assert state.iteration == 5
    assert torch.equal(ema.module.weight, model.weight)


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    path = save_checkpoint(_state(1), tmp_path / 'rng.pt')
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(load_checkpoint(path)['rng'])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


# --- several names, the names due after an epoch -----------------------------------------

def test_several_names_are_one_save_and_identical_copies(tmp_path):
    model, optimizer, scaler, _ = trained(0)
    saved = ckpt.checkpoint_state(model, optimizer, scaler, STATE, META)
    folder = tmp_path / 'run' / 'checkpoints'  # created on demand
    paths = ckpt.save_checkpoints(folder, saved, ['last.pt', 'best.pt', 'final.pt'])
    assert paths == [folder / 'last.pt', folder / 'best.pt', folder / 'final.pt']
    assert sorted(p.name for p in folder.iterdir()) == ['best.pt', 'final.pt', 'last.pt']
    first = paths[0].read_bytes()
    assert all(p.read_bytes() == first for p in paths)
    assert load_checkpoint(paths[2])['iteration'] == 42
    assert ckpt.save_checkpoints(folder, saved, ['epoch_0003.pt']) == [folder / 'epoch_0003.pt']


def test_a_copy_replaces_an_older_file_of_that_name(tmp_path):
    model, optimizer, scaler, _ = trained(0)
    old = ckpt.checkpoint_state(model, optimizer, scaler, TrainState(iteration=1), META)
    new = ckpt.checkpoint_state(model, optimizer, scaler, TrainState(iteration=2), META)
    ckpt.save_checkpoints(tmp_path, old, ['last.pt', 'best.pt'])
    ckpt.save_checkpoints(tmp_path, new, ['last.pt', 'best.pt'])
    assert [load_checkpoint(tmp_path / n)['iteration'] for n in ('last.pt', 'best.pt')] == [2, 2]


@pytest.mark.parametrize('epoch, kwargs, names', [
    (1, dict(last_due=True), ['last.pt']),
    (1, dict(last_due=False), []),
    (2, dict(last_due=False, improved=True), ['best.pt']),
    (4, dict(last_due=True, improved=True, keep_every=2), ['last.pt', 'best.pt',
                                                           'epoch_0004.pt']),
    (3, dict(last_due=False, finished=True), ['last.pt', 'final.pt']),
])
def test_checkpoint_names_due_after_an_epoch(epoch, kwargs, names):
    settings = {**dict(improved=False, keep_every=0, last_due=False, finished=False), **kwargs}
    assert checkpoint_names(epoch, **settings) == names


# --- writing, reading and finding checkpoint files ---------------------------------------

def _state(iteration, arch='resnet18', classes=('a', 'b')):
    return {'arch': arch, 'num_classes': len(classes), 'classes': list(classes),
            'model': {'w': torch.full((3,), float(iteration))}, 'epoch': iteration,
            'iteration': iteration, 'rng': ckpt.rng_state()}


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    save_checkpoint(_state(1), path)
    before = path.read_bytes()
    real_save = torch.save

    def crash_half_way(obj, handle):
        real_save(obj, handle)
        handle.truncate(handle.tell() // 2)  # a torn file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(2), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)['iteration'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['last.pt']  # no temporary left


def test_copies_are_atomic_and_equal(tmp_path):
    source = save_checkpoint(_state(3), tmp_path / 'last.pt')
    copy = ckpt.copy_checkpoint(source, tmp_path / 'best.pt')
    assert copy.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.pt', 'last.pt']


def test_the_names_of_one_epoch_share_one_file_and_part_when_one_is_written_again(tmp_path):
    written = ckpt.save_checkpoints(tmp_path, _state(3), ['last.pt', 'best.pt', 'final.pt'])
    assert [p.name for p in written] == ['last.pt', 'best.pt', 'final.pt']
    assert len({p.stat().st_ino for p in written}) == 1  # one file on disk
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.pt', 'final.pt', 'last.pt']
    save_checkpoint(_state(4), tmp_path / 'last.pt')
    assert load_checkpoint(tmp_path / 'last.pt')['iteration'] == 4
    assert load_checkpoint(tmp_path / 'best.pt')['iteration'] == 3
    assert load_checkpoint(tmp_path / 'final.pt')['iteration'] == 3


def test_a_link_left_by_a_killed_process_is_removed(tmp_path):
    folder = tmp_path / 'checkpoints'
    ckpt.save_checkpoints(folder, _state(3), ['last.pt', 'best.pt'])
    os.link(folder / 'last.pt', folder / '.best.pt.99999999.tmp')  # killed mid-link
    ckpt.save_checkpoints(folder, _state(4), ['last.pt', 'best.pt'])
    assert sorted(p.name for p in folder.iterdir()) == ['best.pt', 'last.pt']
    assert (folder / 'best.pt').stat().st_nlink == 2


def test_linking_a_missing_checkpoint_names_it(tmp_path):
    with pytest.raises(CheckpointError, match=r'cannot link checkpoint .*gone\.pt as best\.pt'):
        ckpt.link_checkpoint(tmp_path / 'gone.pt', tmp_path / 'best.pt')
    assert list(tmp_path.iterdir()) == []


def test_without_hard_links_the_other_names_are_copies(tmp_path, monkeypatch):
    def refuse(source, target):
        raise PermissionError(errno.EPERM, 'Operation not permitted')
    monkeypatch.setattr(os, 'link', refuse)
    written = ckpt.save_checkpoints(tmp_path, _state(3), ['last.pt', 'best.pt'])
    assert written[0].stat().st_ino != written[1].stat().st_ino
    assert written[1].read_bytes() == written[0].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.pt', 'last.pt']


def test_bad_checkpoint_files_are_named_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match='checkpoint not found: .*missing.pt'):
        load_checkpoint(tmp_path / 'missing.pt')
    (tmp_path / 'junk.pt').write_bytes(b'not a zip file')
    with pytest.raises(CheckpointError, match='cannot read checkpoint .*junk.pt') as err:
        load_checkpoint(tmp_path / 'junk.pt')
    assert '\n' not in str(err.value)
    torch.save({'state_dict': {}}, tmp_path / 'other.pt')
    with pytest.raises(CheckpointError, match='not an ffcv_imagenet checkpoint'):
        load_checkpoint(tmp_path / 'other.pt')


def test_compatibility_check_names_both_sides(tmp_path):
    state = _state(1)
    check_compatible(state, 'x.pt', arch='resnet18', classes=['a', 'b'])
    with pytest.raises(CheckpointError, match='resnet18 with 2 classes.*resnet50 with 2'):
        check_compatible(state, 'x.pt', arch='resnet50', classes=['a', 'b'])
    with pytest.raises(CheckpointError, match='resnet18 with 2 classes.*resnet18 with 3'):
        check_compatible(state, 'x.pt', arch='resnet18', classes=['a', 'b', 'c'])
    with pytest.raises(CheckpointError, match='different class list'):
        check_compatible(state, 'x.pt', arch='resnet18', classes=['b', 'a'])


def test_find_latest_takes_the_furthest_checkpoint(tmp_path):
    assert find_latest(tmp_path) == (None, [])
    folder = ckpt.checkpoint_dir(tmp_path)
    save_checkpoint(_state(30), folder / 'epoch_0003.pt')
    save_checkpoint(_state(20), folder / 'best.pt')
    assert find_latest(tmp_path)[0].name == 'epoch_0003.pt'
    save_checkpoint(_state(30), folder / 'last.pt')
    assert find_latest(tmp_path)[0].name == 'last.pt'  # same step: prefer last
    (folder / 'zz_broken.pt').write_bytes(b'junk')
    latest, skipped = find_latest(tmp_path)
    assert latest.name == 'last.pt'
    assert len(skipped) == 1 and 'zz_broken.pt' in skipped[0]


def test_find_latest_refuses_a_folder_of_only_unreadable_checkpoints(tmp_path):
    folder = ckpt.checkpoint_dir(tmp_path)
    save_checkpoint(_state(30), folder / 'last.pt')
    data = (folder / 'last.pt').read_bytes()
    (folder / 'last.pt').write_bytes(data[:len(data) // 2])  # a torn copy
    (folder / 'best.pt').write_bytes(b'')
    with pytest.raises(CheckpointError, match='no readable checkpoint') as err:
        find_latest(tmp_path)
    assert '\n' not in str(err.value) and str(folder) in str(err.value)


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A full disk in the middle of a save: one clear line, the old file intact, no
    temporary file left behind."""
    import errno
    path = tmp_path / 'last.pt'
    save_checkpoint(_state(10), path)
    before = path.read_bytes()

    def fill_the_disk(obj, handle):
        handle.write(b'x' * 1000)
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(ckpt.torch, 'save', fill_the_disk)
    with pytest.raises(CheckpointError, match='No space left on device.*previous last.pt '
                                              'is intact'):
        save_checkpoint(_state(20), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pt']


def test_kill_9_while_saving_leaves_a_readable_checkpoint(tmp_path):
    """A process that rewrites last.pt in a loop is killed with SIGKILL at several
    moments; every time the file that is left loads, and the leftover temporary file
    is cleared by the next save."""
    import signal
    import subprocess
    import sys
    import time
    script = (
        "import sys, torch\n"
        "from ffcv_imagenet.training.checkpoint import save_checkpoint\n"
        "weights = torch.randn(2_000_000)\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    save_checkpoint({'iteration': i, 'epoch': 0, 'w': weights}, sys.argv[1])\n")
    path = tmp_path / 'checkpoints' / 'last.pt'
    seen = []
    for delay in (0.3, 0.55, 0.8, 1.05):
        child = subprocess.Popen([sys.executable, '-c', script, str(path)],
                                 cwd=ROOT)
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        seen.append(load_checkpoint(path)['iteration'])
        assert find_latest(tmp_path)[0] == path
    assert all(i >= 1 for i in seen)
    save_checkpoint(_state(1), path)
    assert [p.name for p in path.parent.iterdir()] == ['last.pt']


def small_state(iteration):
    return {'arch': 'tiny', 'num_classes': 3, 'classes': ['a', 'b', 'c'], 'epoch': 1,
            'iteration': iteration, 'model': {'w': torch.zeros(2)}}


def test_a_failed_first_write_says_why_without_claiming_an_older_file(tmp_path, monkeypatch):
    import errno

    def full_disk(obj, handle):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(ckpt.torch, 'save', full_disk)
    path = tmp_path / 'last.pt'
    with pytest.raises(ckpt.CheckpointError) as err:
        save_checkpoint(small_state(1), path)
    assert str(err.value) == f"cannot write checkpoint {path}: No space left on device"
    assert list(tmp_path.iterdir()) == []


class Payload:
    """Any class: unpickling one can run arbitrary code."""


def test_a_checkpoint_holding_arbitrary_pickled_objects_is_refused(tmp_path):
    path = tmp_path / 'evil.pt'
    torch.save({'format': ckpt.FORMAT, 'payload': Payload()}, path)
    with pytest.raises(ckpt.CheckpointError, match='cannot read checkpoint .*evil.pt'):
        load_checkpoint(path)


@pytest.mark.parametrize('error, reason', [
    (RuntimeError('first line\nsecond line'), 'first line'),
    (RuntimeError(''), 'RuntimeError'),
    (EOFError(), 'EOFError'),
])
def test_an_unreadable_checkpoint_is_one_line_with_the_reason(tmp_path, monkeypatch, error,
                                                              reason):
    path = save_checkpoint(small_state(1), tmp_path / 'last.pt')

    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(ckpt.torch, 'load', fail)
    with pytest.raises(ckpt.CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"cannot read checkpoint {path}: {reason}"


def test_a_damaged_file_names_torchs_reason(tmp_path):
    path = tmp_path / 'last.pt'
    path.write_bytes(b'not a zip file')
    with pytest.raises(ckpt.CheckpointError) as err:
        load_checkpoint(path)
    reason = str(err.value).split('last.pt: ', 1)[1]
    assert reason and reason != 'None' and '\n' not in reason


def test_the_latest_is_the_furthest_whatever_its_name(tmp_path):
    folder = ckpt.checkpoint_dir(tmp_path)
    save_checkpoint(small_state(40), folder / 'best.pt')
    save_checkpoint(small_state(20), folder / 'epoch_0002.pt')  # sorts after best.pt
    assert ckpt.find_latest(tmp_path) == (folder / 'best.pt', [])


def test_final_wins_a_tie_with_a_kept_epoch_copy(tmp_path):
    folder = ckpt.checkpoint_dir(tmp_path)
    save_checkpoint(small_state(50), folder / 'epoch_0005.pt')
    save_checkpoint(small_state(50), folder / 'final.pt')
    assert ckpt.find_latest(tmp_path)[0] == folder / 'final.pt'


def test_an_unreadable_file_is_skipped_and_the_search_goes_on(tmp_path):
    folder = ckpt.checkpoint_dir(tmp_path)
    save_checkpoint(small_state(30), folder / 'last.pt')
    (folder / 'a_torn.pt').write_bytes(b'junk')  # sorts first
    latest, skipped = ckpt.find_latest(tmp_path)
    assert latest == folder / 'last.pt'
    assert len(skipped) == 1 and skipped[0].startswith('skipping cannot read checkpoint')


def test_a_single_unreadable_checkpoint_is_named_in_the_refusal(tmp_path):
    folder = ckpt.checkpoint_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / 'last.pt').write_bytes(b'junk')
    with pytest.raises(ckpt.CheckpointError,
                       match=r'\(1 unreadable: cannot read checkpoint .*last.pt'):
        ckpt.find_latest(tmp_path)
