"""The training loop (training/loop.py), against results worked out by hand: an epoch's totals (also across a mid-epoch resume), its stops and
saves, the EMA update, the epoch record, the best metric and early stopping, the
progress bar, and the writer of the run's checkpoints.

Tiny models and hand-made batches only: each test runs in well under a second."""
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ffcv_imagenet.training import checkpoint as ckpt
from ffcv_imagenet.training import loop
from ffcv_imagenet.training.checkpoint import TrainState, load_checkpoint
from ffcv_imagenet.training.distributed import Dist
from ffcv_imagenet.training.erasing import RandomErasing
from ffcv_imagenet.training.logs import RunLog
from ffcv_imagenet.training.loop import FitOptions, _update_best
from ffcv_imagenet.training.mix import Mixer
from ffcv_imagenet.training.optim import resolve_precision
from ffcv_imagenet.training.preempt import CheckpointPeriod, Preempted
from tests.support import CHECKPOINT_META as META, CHECKPOINT_STATE as STATE
from tests.support import trained_parts as trained


CPU = torch.device('cpu')

OFF = resolve_precision('off', CPU)

C = 7  # classes

# --- the training epoch ------------------------------------------------------------------

class Batches:
    """The train loader's interface: a list of batches, ``start_batch`` skipped."""

    def __init__(self, batches):
        self.batches, self.start_batch, self.resolution, self.epoch = batches, 0, None, None

    def __len__(self):
        return len(self.batches) - self.start_batch

    def __iter__(self):
        return iter(self.batches[self.start_batch:])


class Saver:
    """Stands in for LastCheckpoint: always due, records (step, partial) per save."""

    def __init__(self, due: bool = True):
        self.due, self.saves = due, []

    def time_due(self):
        return self.due

    def save(self, names, state=None):
        self.saves.append((names, self.run.state.step, list(self.run.state.partial)))


class Signals:
    received = 'SIGTERM'


def train_batches(sizes=(4, 4, 2), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 4, 4, generator=generator),
             torch.randint(0, C, (n,), generator=generator)) for n in sizes]


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, C))


def make_run(tmp_path, batches, *, lr_at=lambda iteration: 0.0, state=None, rank=0,
             mixer=None, ema=None, stop=None, eraser=None, **options):
    model = tiny_model()
    settings = dict(epochs=3, progress=False, label_smoothing=0.1, log_every=50) | options
    return loop.Run(model=model, module=model,
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                    scaler=torch.amp.GradScaler('cpu', enabled=False), precision=OFF,
                    train_loader=Batches(batches), val_loader=[],
                    dist=Dist(rank, rank, 1, CPU), options=loop.FitOptions(**settings),
                    state=state or TrainState(), lr_at=lr_at, res_at=lambda epoch: 4,
                    run_dir=tmp_path, meta={}, mixer=mixer, ema=ema, stop=stop,
                    eraser=eraser)


def epoch(run, index=0, saver=None):
    saver = saver or Saver(due=False)
    saver.run = run
    return loop.train_epoch(run, index, saver)


def test_epoch_totals_are_per_image_means_with_label_smoothing(tmp_path):
    batches = train_batches()
    run = make_run(tmp_path, batches, log_every=2)  # lr 0: the weights never move
    model = tiny_model()
    with torch.no_grad():
        logits = [model(x) for x, _ in batches]
    labels = torch.cat([y for _, y in batches])
    expected_loss = F.cross_entropy(torch.cat(logits), labels, label_smoothing=0.1).item()
    expected_top1 = (torch.cat(logits).argmax(1) == labels).float().mean().item()
    started = time.perf_counter()
    result = epoch(run)
    took = time.perf_counter() - started
    assert result['images'] == 10
    assert result['loss'] == pytest.approx(expected_loss)  # 4, 4 and 2 images weighted
    assert result['top1'] == pytest.approx(expected_top1)
    assert result['lr'] == 0.0 and 0 < result['seconds'] <= took
    assert (run.state.iteration, run.state.step) == (3, 3)
    assert run.train_loader.start_batch == 0  # the next epoch starts from its first batch


def test_each_step_uses_the_scheduled_rate_of_its_iteration(tmp_path):
    batches = train_batches()
    schedule = lambda iteration: 0.05 * (iteration + 1)  # noqa: E731
    run = make_run(tmp_path, batches, lr_at=schedule, state=TrainState(iteration=5),
                   label_smoothing=0.0)
    result = epoch(run)
    assert result['lr'] == pytest.approx(schedule(7))  # the last step's rate
    assert run.state.iteration == 8
    model = tiny_model()  # the same three SGD steps by hand
    for i, (x, y) in enumerate(batches):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= schedule(5 + i) * p.grad
    for mine, theirs in zip(model.parameters(), run.module.parameters()):
        assert torch.allclose(mine, theirs, atol=1e-6)


def test_the_epoch_clips_gradients_as_configured(tmp_path):
    batches = train_batches(sizes=(4, 4))
    run = make_run(tmp_path, batches, lr_at=lambda iteration: 0.5, label_smoothing=0.0,
                   grad_clip=0.01)
    epoch(run)
    model = tiny_model()
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    for mine, theirs in zip(model.parameters(), run.module.parameters()):
        assert torch.allclose(mine, theirs, atol=1e-6)


def test_an_epoch_of_one_image_is_scored_as_one_image(tmp_path):
    [(x, y)] = batches = train_batches(sizes=(1,))
    result = epoch(make_run(tmp_path, batches))
    with torch.no_grad():
        logits = tiny_model()(x)
    assert result['images'] == 1
    assert result['top1'] == float(logits.argmax(1).item() == y.item())
    assert result['loss'] == pytest.approx(
        F.cross_entropy(logits, y, label_smoothing=0.1).item())


def test_the_running_sums_stay_exact_beyond_float32(tmp_path):
    """2**24 + 1 images (ImageNet-21k is not far off) are not a float32 number."""
    big = float(2 ** 24 + 1)
    done = TrainState(step=2, partial=[big, big, big, 1.0])
    assert epoch(make_run(tmp_path, train_batches(sizes=(4, 4)), state=done))['images'] \
        == 2 ** 24 + 1
    resumed = TrainState(step=1, partial=[big, big, big, 1.0])
    assert epoch(make_run(tmp_path, train_batches(sizes=(4, 4)), state=resumed))['images'] \
        == 2 ** 24 + 5


def test_another_ranks_signal_stops_this_rank_at_the_same_step(tmp_path, monkeypatch):
    real = loop.all_reduce_sum

    def with_a_signalled_peer(tensor):
        tensor = real(tensor)
        if tensor.numel() == 4:  # the running sums and the stop flag
            tensor[3] += 1.0
        return tensor
    monkeypatch.setattr(loop, 'all_reduce_sum', with_a_signalled_peer)
    run = make_run(tmp_path, train_batches(sizes=(4, 4, 4, 4)), log_every=2,
                   stop=type('NoSignal', (), {'received': None})())
    saver = Saver(due=False)
    with pytest.raises(Preempted) as stopped:
        epoch(run, saver=saver)
    assert (stopped.value.signal_name, stopped.value.step) == ('a signal to another rank', 2)
    assert [step for _, step, _ in saver.saves] == [2]


def test_the_epoch_trains_on_randomly_erased_images_when_asked(tmp_path):
    seen = []
    run = make_run(tmp_path, train_batches(), eraser=RandomErasing(1.0, min_area=0.2))
    run.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    epoch(run)
    assert len(seen) == 3 and all((images == 0).any() for images in seen)  # erased to 0
    assert not any((images == 0).any() for images, _ in train_batches())


def test_a_mixed_epoch_scores_the_soft_targets_and_the_dominant_label(tmp_path):
    batches = train_batches()
    mixer = Mixer(C, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1)
    run = make_run(tmp_path, batches, mixer=mixer, seed=3)
    result = epoch(run, index=2)
    model, losses, correct = tiny_model(), 0.0, 0
    for step, (x, y) in enumerate(batches, start=1):  # the draws of (seed, epoch, step)
        loop.seed_step(3, 2, step, 0, CPU)
        mixed, targets, dominant = mixer(x, y)
        with torch.no_grad():
            logits = model(mixed)
        losses += F.cross_entropy(logits, targets).item() * len(y)  # smoothing once
        correct += int((logits.argmax(1) == dominant).sum())
    assert result['loss'] == pytest.approx(losses / 10)
    assert result['top1'] == pytest.approx(correct / 10)


def test_a_resumed_epoch_reports_and_trains_like_an_unbroken_one(tmp_path):
    batches = train_batches(sizes=(4, 4, 4, 2))
    mixer = Mixer(C, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1)
    schedule = lambda iteration: 0.1  # noqa: E731
    unbroken = make_run(tmp_path, batches, lr_at=schedule, mixer=mixer, log_every=1)
    saver = Saver()
    whole = epoch(unbroken, index=1, saver=saver)
    # what last.pt held after step 2: the step, the running sums, the weights
    names, step, partial = saver.saves[1]
    assert (names, step, partial[2]) == (['last.pt'], 2, 8.0)
    head = make_run(tmp_path, batches[:2], lr_at=schedule, mixer=mixer)
    epoch(head, index=1)
    resumed = make_run(tmp_path, batches, lr_at=schedule, mixer=mixer,
                       state=TrainState(epoch=1, iteration=2, step=2, partial=partial))
    resumed.module.load_state_dict(head.module.state_dict())
    rest = epoch(resumed, index=1)
    for key in ('loss', 'top1', 'images', 'lr'):
        assert rest[key] == pytest.approx(whole[key]), key
    assert rest['images'] == 14
    assert rest['seconds'] >= partial[3]  # the time before the stop counts too
    assert resumed.state.iteration == unbroken.state.iteration == 4
    for mine, theirs in zip(resumed.module.parameters(), unbroken.module.parameters()):
        assert torch.allclose(mine, theirs, atol=1e-6)


def test_only_rank_0_carries_the_sums_from_before_a_resume(tmp_path):
    """Summed over ranks, the steps before the stop must count once."""
    carried = [30.0, 5.0, 8.0, 1.0]
    batches = train_batches(sizes=(4, 4, 4))
    for rank, images in ((0, 12), (1, 4)):
        state = TrainState(step=2, partial=list(carried))
        assert epoch(make_run(tmp_path, batches, state=state, rank=rank))['images'] == images


def test_a_resume_at_the_end_of_an_epoch_reports_the_carried_sums(tmp_path):
    state = TrainState(step=2, iteration=2, partial=[6.0, 3.0, 8.0, 1.0])
    result = epoch(make_run(tmp_path, train_batches(sizes=(4, 4)), state=state))
    assert (result['loss'], result['top1'], result['images']) == (0.75, 0.375, 8)


def test_time_due_saves_record_the_step_and_its_running_sums(tmp_path):
    run = make_run(tmp_path, train_batches(), log_every=2)
    saver = Saver()
    result = epoch(run, saver=saver)
    assert [(names, step) for names, step, _ in saver.saves] == [(['last.pt'], 2),
                                                                 (['last.pt'], 3)]
    partial = saver.saves[-1][2]
    assert partial[2] == 10.0 and partial[0] / partial[2] == pytest.approx(result['loss'])
    assert partial[1] / partial[2] == pytest.approx(result['top1'])
    assert 0 < partial[3] <= result['seconds']  # the time trained so far


def test_a_stop_signal_saves_the_step_and_raises_preempted(tmp_path):
    run = make_run(tmp_path, train_batches(sizes=(4, 4, 4, 4)), log_every=2,
                   stop=Signals(), state=TrainState(iteration=10))
    saver = Saver(due=False)
    with pytest.raises(Preempted) as stopped:
        epoch(run, index=1, saver=saver)
    assert (stopped.value.signal_name, stopped.value.epoch, stopped.value.step,
            stopped.value.iteration) == ('SIGTERM', 1, 2, 12)
    assert [(names, step) for names, step, _ in saver.saves] == [(['last.pt'], 2)]
    assert saver.saves[0][2][2] == 8.0
    assert (run.state.step, run.state.iteration) == (2, 12)


def test_no_stop_and_no_time_period_write_nothing_inside_the_epoch(tmp_path):
    saver = Saver(due=False)
    epoch(make_run(tmp_path, train_batches(), log_every=1), saver=saver)
    assert saver.saves == []


def test_a_non_finite_loss_stops_before_any_checkpoint(tmp_path):
    batches = train_batches(sizes=(4, 4, 4))
    batches[1][0][0, 0, 0, 0] = float('nan')
    run = make_run(tmp_path, batches, log_every=2)
    saver = Saver()
    with pytest.raises(loop.NonFiniteLossError, match='in epoch 3 by iteration 2'):
        epoch(run, index=2, saver=saver)
    assert saver.saves == []


@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf')])
def test_check_finite_looks_at_the_loss_sum(value):
    with pytest.raises(loop.NonFiniteLossError,
                       match=f'training loss became {value} in epoch 1 by iteration 7'):
        loop._check_finite(torch.tensor([value, 1.0, 2.0]), 0, 7)
    loop._check_finite(torch.tensor([1.0, value, value]), 0, 7)  # only the loss counts


def test_the_ema_is_updated_after_every_step_with_the_global_step(tmp_path):
    class Recorder:
        def __init__(self):
            self.calls = []

        def update(self, module, step):
            self.calls.append((module, step))

    recorder = Recorder()
    run = make_run(tmp_path, train_batches(), ema=recorder, state=TrainState(iteration=4))
    epoch(run)
    assert recorder.calls == [(run.module, 5), (run.module, 6), (run.module, 7)]


# --- the epoch record, the best metric and early stopping --------------------------------

TRAIN = {'loss': 2.5, 'top1': 0.25, 'images': 300, 'seconds': 2.0, 'lr': 0.125}

VAL = {'val_loss': 1.5, 'val_top1': 0.5, 'val_top5': 0.875, 'ema_val_loss': 1.25,
       'ema_val_top1': 0.625, 'ema_val_top5': 0.9375}


def test_the_epoch_record_holds_every_metric():
    state = TrainState(epoch=3, iteration=30, best_top1=0.625)
    options = loop.FitOptions(epochs=5, best_metric='ema_val_top1')
    record = loop._epoch_record(state, TRAIN, VAL, 160, 32, Dist(0, 0, 2, CPU), options,
                                mixed=False)
    assert record == {'epoch': 3, 'iteration': 30, 'lr': 0.125, 'resolution': 160,
                      'batch_size': 32, 'global_batch_size': 64, 'train_loss': 2.5, 'train_top1': 0.25, 'val_loss': 1.5,
                      'val_top1': 0.5, 'val_top5': 0.875, 'ema_val_loss': 1.25,
                      'ema_val_top1': 0.625, 'ema_val_top5': 0.9375,
                      'best_ema_val_top1': 0.625, 'images_per_sec': 150.0,
                      'epoch_time': 2.0}


def test_an_epoch_without_validation_records_no_val_metrics_and_no_best_yet():
    record = loop._epoch_record(TrainState(epoch=1, iteration=10), TRAIN, {}, 128, None,
                                Dist(0, 0, 1, CPU), loop.FitOptions(epochs=5), mixed=True)
    assert record['val_loss'] is None and record['val_top1'] is None
    assert record['val_top5'] is None and record['best_val_top1'] is None
    assert not any(key.startswith('ema_') for key in record)
    assert record['train_top1_label'] == 'dominant label'
    zero = loop._epoch_record(TrainState(epoch=1, best_top1=0.0), TRAIN, {}, 128, None,
                              Dist(0, 0, 1, CPU), loop.FitOptions(epochs=5), mixed=False)
    assert zero['best_val_top1'] == 0.0  # a best of 0 is a best, not "none yet"
    assert 'train_top1_label' not in zero


def test_update_best_without_validation_changes_nothing():
    state = TrainState(epoch=4, best_top1=0.5, best_epoch=2)
    options = loop.FitOptions(epochs=10, patience=1)
    assert loop._update_best(state, {}, options) is False
    assert (state.best_top1, state.best_epoch, state.stopped_early) == (0.5, 2, False)


def test_update_best_reports_and_records_a_strictly_better_value():
    options = loop.FitOptions(epochs=10, best_metric='ema_val_top1')
    state = TrainState(epoch=1)
    assert loop._update_best(state, {'val_top1': 0.9, 'ema_val_top1': 0.25}, options)
    assert (state.best_top1, state.best_epoch) == (0.25, 1)
    state.epoch = 2
    assert not loop._update_best(state, {'val_top1': 0.9, 'ema_val_top1': 0.25}, options)
    assert (state.best_top1, state.best_epoch) == (0.25, 1)  # a tie keeps the old best
    state.epoch = 3
    assert loop._update_best(state, {'val_top1': 0.1, 'ema_val_top1': 0.375}, options)
    assert (state.best_top1, state.best_epoch) == (0.375, 3)


@pytest.mark.parametrize('epoch, best_epoch, stops', [
    (4, 2, True),    # patience 2 used up
    (3, 2, False),   # one epoch without a new best
    (2, 0, False),   # before min_epochs (3)
    (3, 0, True),    # at min_epochs
    (10, 2, False),  # the last epoch: the run ends anyway, not an early stop
    (9, 2, True),
])
def test_early_stopping_bounds(epoch, best_epoch, stops):
    options = loop.FitOptions(epochs=10, patience=2, min_epochs=3)
    state = TrainState(epoch=epoch, best_top1=0.5, best_epoch=best_epoch)
    loop._update_best(state, {'val_top1': 0.5}, options)
    assert state.stopped_early is stops


@pytest.mark.parametrize('top1s, patience, min_epochs, stop_at', [
    ([0.1, 0.2, 0.2, 0.2, 0.3], 2, 0, 4),     # two epochs without a new best
    ([0.5, 0.4, 0.4, 0.4, 0.4], 1, 3, 3),     # would stop at 2, but not before 3
    ([0.1, 0.2, 0.3, 0.4, 0.5], 1, 0, None),  # always improving
    ([0.5, 0.5, 0.5, 0.5, 0.5], 0, 0, None),  # patience 0 = off
])
def test_early_stopping_rule(top1s, patience, min_epochs, stop_at):
    options = FitOptions(epochs=10, patience=patience, min_epochs=min_epochs)
    state = TrainState()
    for epoch, top1 in enumerate(top1s, start=1):
        state.epoch = epoch
        _update_best(state, {'val_top1': top1}, options)
        if state.stopped_early:
            break
    assert (state.epoch if state.stopped_early else None) == stop_at
    assert state.best_top1 == max(top1s[:state.epoch])


def test_best_after_leaves_the_earlier_epochs_out_of_the_best_and_of_early_stopping():
    options = loop.FitOptions(epochs=10, patience=1, best_after=3)
    state = TrainState(epoch=3)
    assert loop._update_best(state, {'val_top1': 0.9}, options) is False
    assert (state.best_top1, state.best_epoch, state.stopped_early) == (-1.0, 0, False)
    state.epoch = 4
    assert loop._update_best(state, {'val_top1': 0.5}, options) is True
    assert (state.best_top1, state.best_epoch, state.stopped_early) == (0.5, 4, False)



@pytest.mark.parametrize('every, start, validated', [
    (1, 0, [1, 2, 3, 4, 5, 6, 7, 8]),
    (1, 1, [1, 2, 3, 4, 5, 6, 7, 8]),   # epochs count from 1: 1 is from the first too
    (1, 6, [6, 7, 8]),
    (3, 0, [3, 6, 8]),                  # and always the last
    (2, 5, [6, 8]),                     # every's multiples from start_epoch on
    (1, 20, [8]),                       # past the end: the last alone
])
def test_validation_is_due_every_n_epochs_from_the_start_epoch_and_at_the_last(
        every, start, validated):
    options = loop.FitOptions(epochs=8, eval_every=every, eval_from=start)
    assert [epoch for epoch in range(1, 9) if loop.validation_due(epoch, options)] \
        == validated


def test_epochs_before_the_start_epoch_are_neither_validated_nor_candidates_for_best(
        tmp_path, monkeypatch):
    """best.pt and early stopping see only the validated epochs: the first validated
    one is the first best, however good the skipped ones were."""
    scores = iter([0.5, 0.25, 0.125, 0.0625])
    validated = []

    def validate(module, *args, **kwargs):
        validated.append(run.state.epoch)
        return {'val_top1': next(scores), 'val_top5': 1.0, 'val_loss': 1.0}
    monkeypatch.setattr(loop, 'validate', validate)
    run = make_run(tmp_path, train_batches(), epochs=6, eval_from=4, patience=2,
                   last_every=CheckpointPeriod.parse('100'))
    state = loop.fit(run, RunLog(tmp_path, enabled=False))
    assert validated == [4, 5, 6]
    assert (state.best_top1, state.best_epoch, state.stopped_early) == (0.5, 4, False)
    assert load_checkpoint(tmp_path / 'checkpoints' / 'best.pt')['epoch'] == 4

# --- the progress bar --------------------------------------------------------------------

class ProgressRecorder:
    """Stands in for the progress bar: records what it was asked to show."""
    calls = []

    def __init__(self, iterable, total, enabled, desc):
        self.iterable = iterable
        self.calls.append(('bar', total, enabled, desc))

    def __iter__(self):
        return iter(self.iterable)

    def show(self, **values):
        self.calls.append(('show', values))

    def close(self):
        self.calls.append(('close',))


@pytest.mark.parametrize('rank', [0, 1])
def test_the_progress_bar_shows_the_epoch_its_steps_and_the_running_means(tmp_path,
                                                                          monkeypatch, rank):
    monkeypatch.setattr(loop, 'Progress', ProgressRecorder)
    ProgressRecorder.calls = []
    generator = torch.Generator().manual_seed(0)
    # images 2 x 8 pixels, so that height and width cannot be confused
    batches = [(torch.randn(n, 3, 2, 8, generator=generator),
                torch.randint(0, C, (n,), generator=generator)) for n in (4, 4, 2)]
    run = make_run(tmp_path, batches, lr_at=lambda iteration: 0.0, log_every=2,
                   progress=True, rank=rank, epochs=5)
    result = epoch(run, index=1)
    bar, first, last, close = ProgressRecorder.calls
    assert bar == ('bar', 3, rank == 0, 'epoch 2/5')
    assert first[0] == last[0] == 'show' and close == ('close',)
    shown = last[1]
    assert shown['loss'] == pytest.approx(result['loss'])  # the mean over every image
    assert shown['lr'] == 0.0 and shown['res'] == 8
    assert int(shown['img_s']) >= 1
    ProgressRecorder.calls = []  # resumed after the first step: two steps are left
    resumed = make_run(tmp_path, batches, log_every=2, progress=True, rank=rank, epochs=5,
                       state=TrainState(iteration=1, step=1, partial=[0.0] * 4))
    epoch(resumed, index=1)
    assert ProgressRecorder.calls[0] == ('bar', 2, rank == 0, 'epoch 2/5')


# --- the writer of the run's checkpoints (rank 0 only, its own clock) --------------------

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
