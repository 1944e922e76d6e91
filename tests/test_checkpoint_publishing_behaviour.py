"""Publishing checkpoints: everything a run needs to continue survives a save and a
restore (older files fill in defaults), several names are one save plus copies, and
the loop's writer saves on rank 0 only and keeps its own clock for time periods."""
import random
import time

import numpy as np
import pytest
import torch
from torch import nn

from ffcv_imagenet.training import checkpoint as ckpt
from ffcv_imagenet.training import loop
from ffcv_imagenet.training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from ffcv_imagenet.training.distributed import Dist
from ffcv_imagenet.training.ema import ModelEMA
from ffcv_imagenet.training.optim import resolve_precision
from ffcv_imagenet.training.preempt import CheckpointPeriod

CPU = torch.device('cpu')
META = {'arch': 'tiny', 'num_classes': 3, 'classes': ['a', 'b', 'c'], 'config': {'x': 1}}


def trained(seed=0):
    """A model, optimizer (with momentum state), enabled scaler and EMA after a step."""
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler('cpu', init_scale=512.0 * (seed + 1))
    ema = ModelEMA(model, 0.5)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    ema.update(model, 1)
    return model, optimizer, scaler, ema


STATE = TrainState(epoch=3, iteration=42, best_top1=0.625, metrics={'val_top1': 0.5},
                   best_epoch=2, stopped_early=True, step=7, partial=[1.5, 2.0, 8.0, 3.25])


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


# --- the loop's writer --------------------------------------------------------------

def run_for(tmp_path, rank=0, last_every=CheckpointPeriod()):
    model, optimizer, scaler, ema = trained(0)
    options = loop.FitOptions(epochs=2, progress=False, last_every=last_every)
    return loop.Run(model=model, module=model, optimizer=optimizer, scaler=scaler,
                    precision=resolve_precision('off', CPU), train_loader=[], val_loader=[],
                    dist=Dist(rank, rank, 2, CPU), options=options, state=STATE,
                    lr_at=lambda i: 0.1, res_at=lambda e: 32, run_dir=tmp_path, meta=META,
                    ema=ema)


def test_rank_0_writes_the_named_checkpoints_of_the_run(tmp_path):
    run = run_for(tmp_path)
    loop.LastCheckpoint(run).save(['last.pt', 'best.pt'])
    folder = ckpt.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ['best.pt', 'last.pt']
    saved = load_checkpoint(folder / 'best.pt')
    assert (saved['iteration'], saved['step'], saved['arch']) == (42, 7, 'tiny')
    assert torch.equal(saved['ema']['module']['weight'], run.ema.module.weight)
    assert torch.equal(saved['model']['weight'], run.module.weight)


def test_other_ranks_and_empty_name_lists_write_nothing(tmp_path):
    loop.LastCheckpoint(run_for(tmp_path / 'one', rank=1)).save(['last.pt'])
    loop.LastCheckpoint(run_for(tmp_path / 'two')).save([])
    assert not (tmp_path / 'one').exists() and not (tmp_path / 'two').exists()


def test_a_time_period_falls_due_after_its_seconds_and_a_save_restarts_it(tmp_path):
    saver = loop.LastCheckpoint(run_for(tmp_path, last_every=CheckpointPeriod(0, 0.2)))
    assert not saver.time_due()
    time.sleep(0.25)
    assert saver.time_due()
    saver.save(['last.pt'])
    assert not saver.time_due()


@pytest.mark.parametrize('rank, period', [(1, CheckpointPeriod(0, 1e-9)),  # rank 0 only
                                          (0, CheckpointPeriod(1, 0.0))])   # by epochs
def test_no_time_period_is_due_off_rank_0_or_for_an_epoch_period(tmp_path, rank, period):
    saver = loop.LastCheckpoint(run_for(tmp_path, rank=rank, last_every=period))
    time.sleep(0.01)
    assert not saver.time_due()


# --- writing, reading and finding checkpoint files -----------------------------------

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
