"""Learning-rate and resolution schedules (training/schedules.py): cyclic, step,
cosine and OneCycle rates, ramps that start at a fraction of the peak, schedules
interpolated between whole epochs, the resolution ramp, and staged resizing (a stage
list, iterations mapped to progress, the rate of each stage's batch)."""
import math

import numpy as np
import pytest

from ffcv_imagenet.training.schedules import (Stage, Stages, epoch_schedule, lr_schedule,
                                              resolution_at, staged_lr)

STEPS = 10  # optimizer steps per epoch


def test_cyclic_rises_to_the_peak_then_falls_to_zero():
    lr_at = lr_schedule('cyclic', peak_lr=2.0, epochs=10, steps_per_epoch=STEPS, peak_epoch=2)
    assert lr_at(0) == 0.0
    assert lr_at(STEPS) == pytest.approx(1.0)          # half-way up
    assert lr_at(2 * STEPS) == pytest.approx(2.0)      # the peak
    assert lr_at(6 * STEPS) == pytest.approx(1.0)      # half-way down
    assert lr_at(10 * STEPS) == 0.0
    values = [lr_at(i) for i in range(10 * STEPS + 1)]
    peak = values.index(max(values))
    assert peak == 2 * STEPS
    assert all(a < b for a, b in zip(values[:peak], values[1:peak + 1]))
    assert all(a > b for a, b in zip(values[peak:-1], values[peak + 1:]))


def test_cyclic_changes_within_an_epoch():
    lr_at = lr_schedule('cyclic', peak_lr=1.0, epochs=4, steps_per_epoch=STEPS, peak_epoch=1)
    assert lr_at(3) == pytest.approx(0.3)


def test_step_decays_every_step_length_after_warmup():
    lr_at = lr_schedule('step', peak_lr=1.0, epochs=9, steps_per_epoch=STEPS, step_length=3,
                        step_ratio=0.1, warmup_epochs=1)
    assert lr_at(0) == 0.0
    assert lr_at(STEPS // 2) == pytest.approx(0.5)
    assert lr_at(STEPS) == pytest.approx(1.0)
    assert lr_at(3 * STEPS - 1) == pytest.approx(1.0)
    assert lr_at(3 * STEPS) == pytest.approx(0.1)
    assert lr_at(6 * STEPS) == pytest.approx(0.01)
    assert lr_at(9 * STEPS) == 0.0


def test_cosine_warms_up_then_follows_half_a_cosine():
    lr_at = lr_schedule('cosine', peak_lr=1.0, epochs=11, steps_per_epoch=STEPS,
                        warmup_epochs=1, min_lr=0.1)
    assert lr_at(0) == 0.0
    assert lr_at(STEPS // 2) == pytest.approx(0.5)
    assert lr_at(STEPS) == pytest.approx(1.0)
    assert lr_at(6 * STEPS) == pytest.approx(0.55)  # half-way: mean of peak and floor
    assert lr_at(int(3.5 * STEPS)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(11 * STEPS) == pytest.approx(0.1)


@pytest.mark.parametrize('kwargs, message', [
    ({'name': 'linear'}, "unknown lr schedule 'linear'"),
    ({'name': 'cyclic', 'peak_epoch': 10}, 'peak_epoch'),
    ({'name': 'cosine', 'warmup_epochs': 12}, 'warmup_epochs'),
    ({'name': 'step', 'step_length': 0}, 'step_length'),
    ({'name': 'cyclic', 'steps_per_epoch': 0}, 'steps_per_epoch'),
])
def test_bad_schedule_arguments(kwargs, message):
    args = {'peak_lr': 1.0, 'epochs': 10, 'steps_per_epoch': STEPS} | kwargs
    with pytest.raises(ValueError, match=message):
        lr_schedule(**args)


# --- the start of a ramp, and rates interpolated between whole epochs ---------------------

def test_cyclic_starts_at_the_start_fraction_of_the_peak():
    lr_at = lr_schedule('cyclic', peak_lr=2.0, epochs=10, steps_per_epoch=STEPS,
                        peak_epoch=2, start_fraction=0.1)
    assert lr_at(0) == pytest.approx(0.2)
    assert lr_at(STEPS) == pytest.approx(0.2 + (2.0 - 0.2) / 2)    # half-way up
    assert lr_at(2 * STEPS) == pytest.approx(2.0)
    assert lr_at(6 * STEPS) == pytest.approx(1.0)                  # the fall is unchanged
    assert lr_at(10 * STEPS) == 0.0
    rise = [lr_at(i) for i in range(2 * STEPS + 1)]
    assert np.allclose(np.diff(rise), (2.0 - 0.2) / (2 * STEPS))  # linear


@pytest.mark.parametrize('name, shape', [('step', {'step_length': 3, 'step_ratio': 0.1}),
                                         ('cosine', {'min_lr': 0.0})])
def test_a_warm_up_starts_at_the_start_fraction_of_the_peak(name, shape):
    lr_at = lr_schedule(name, peak_lr=1.0, epochs=9, steps_per_epoch=STEPS, warmup_epochs=2,
                        start_fraction=0.2, **shape)
    assert lr_at(0) == pytest.approx(0.2)
    assert lr_at(STEPS) == pytest.approx(0.6)
    assert lr_at(2 * STEPS) == pytest.approx(1.0)


@pytest.mark.parametrize('kwargs, message', [
    ({'name': 'cyclic', 'start_fraction': 1.0}, r'start_fraction must be in \[0, 1\)'),
    ({'name': 'cyclic', 'start_fraction': -0.1}, r'start_fraction must be in \[0, 1\)'),
    ({'name': 'onecycle', 'start_fraction': 1e-4}, 'start_fraction does not apply to onecycle'),
])
def test_a_bad_start_fraction_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        epoch_schedule(peak_lr=1.0, epochs=10, **kwargs)


def ffcv_step_rate(iteration, steps, epochs, lr, step_length, step_ratio):
    """ffcv-imagenet's step schedule: get_step_lr at whole epochs (0 from the end on),
    joined linearly over an epoch's iterations by train_loop."""
    at = lambda e: 0 if e >= epochs else step_ratio ** (e // step_length) * lr  # noqa: E731
    epoch, step = divmod(iteration, steps)
    return float(np.interp(step, [0, steps], [at(epoch), at(epoch + 1)]))


def test_an_interpolated_step_schedule_spreads_each_decay_over_the_epoch_before():
    lr_at = lr_schedule('step', peak_lr=1.0, epochs=9, steps_per_epoch=STEPS, step_length=3,
                        step_ratio=0.1, interpolate_epochs=True)
    plain = lr_schedule('step', peak_lr=1.0, epochs=9, steps_per_epoch=STEPS, step_length=3,
                        step_ratio=0.1)
    assert lr_at(2 * STEPS + STEPS // 2) == pytest.approx((1.0 + 0.1) / 2)
    assert plain(2 * STEPS + STEPS // 2) == 1.0
    assert lr_at(8 * STEPS + STEPS // 2) == pytest.approx(0.01 / 2)  # down to 0 at the end
    for iteration in range(9 * STEPS + 1):
        assert lr_at(iteration) == pytest.approx(
            ffcv_step_rate(iteration, STEPS, 9, 1.0, 3, 0.1), rel=1e-12, abs=1e-15)
        if iteration % STEPS == 0:  # whole epochs: the schedule's own values
            assert lr_at(iteration) == plain(iteration)


def test_interpolating_a_cyclic_schedule_with_a_whole_epoch_peak_changes_nothing():
    shape = dict(peak_lr=1.7, epochs=16, steps_per_epoch=STEPS, peak_epoch=2,
                 start_fraction=1e-4)
    plain, joined = (lr_schedule('cyclic', **shape, interpolate_epochs=flag)
                     for flag in (False, True))
    assert [joined(i) for i in range(16 * STEPS + 1)] == pytest.approx(
        [plain(i) for i in range(16 * STEPS + 1)], rel=1e-12, abs=1e-15)
    # a peak inside an epoch: the chord of that epoch cuts the corner
    corner = dict(shape, peak_epoch=1.5)
    below = lr_schedule('cyclic', **corner, interpolate_epochs=True)(int(1.5 * STEPS))
    assert below < lr_schedule('cyclic', **corner)(int(1.5 * STEPS)) == pytest.approx(1.7)


def test_resolution_ramp_is_linear_and_rounded_to_32():
    ramp = dict(min_res=160, max_res=256, start_ramp=2, end_ramp=8)
    got = [resolution_at(epoch, **ramp) for epoch in range(11)]
    # exact values 160, 160, 160, 176, 192, 208, 224, 240, 256... rounded to 32
    assert got == [160, 160, 160, 192, 192, 224, 224, 256, 256, 256, 256]
    assert all(r % 32 == 0 for r in got)


def test_resolution_ramp_of_the_published_recipe():
    ramp = dict(min_res=160, max_res=192, start_ramp=65, end_ramp=76)
    got = [resolution_at(epoch, **ramp) for epoch in (0, 65, 70, 71, 76, 87)]
    assert got == [160, 160, 160, 192, 192, 192]


def test_resolution_stays_within_bounds_that_are_not_multiples_of_32():
    ramp = dict(min_res=100, max_res=140, start_ramp=0, end_ramp=4)
    got = [resolution_at(epoch, **ramp) for epoch in range(5)]
    assert got[0] == 100 and got[-1] == 140
    assert all(100 <= r <= 140 for r in got)


def test_bad_resolution_ramp():
    with pytest.raises(ValueError, match='min_res'):
        resolution_at(0, min_res=192, max_res=160, start_ramp=0, end_ramp=1)
    with pytest.raises(ValueError, match='start_ramp'):
        resolution_at(0, min_res=160, max_res=192, start_ramp=5, end_ramp=1)


def test_onecycle_key_points():
    lr_at = lr_schedule('onecycle', peak_lr=2.0, epochs=10, steps_per_epoch=STEPS,
                        pct_start=0.3, div_factor=20, final_div_factor=100)
    assert lr_at(0) == pytest.approx(0.1)                    # peak / div_factor
    assert lr_at(15) == pytest.approx((0.1 + 2.0) / 2)       # half-way up the cosine
    assert lr_at(30) == pytest.approx(2.0)                   # the peak at pct_start
    assert lr_at(65) == pytest.approx((2.0 + 0.001) / 2)     # half-way down
    assert lr_at(100) == pytest.approx(0.001)                # peak / div / final_div
    values = [lr_at(i) for i in range(101)]
    assert values.index(max(values)) == 30
    assert all(a < b for a, b in zip(values[:30], values[1:31]))
    assert all(a > b for a, b in zip(values[30:-1], values[31:]))


def test_onecycle_follows_torch_onecyclelr():
    # torch counts its phases in steps ending at total_steps - 1; with one step per
    # "epoch" of ours stretched by that offset the two curves coincide
    import torch
    total, peak = 200, 0.8
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peak, total_steps=total, pct_start=0.25, div_factor=25,
        final_div_factor=1e4, anneal_strategy='cos', cycle_momentum=False)
    theirs = []
    for _ in range(total):
        theirs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        reference.step()
    ours = lr_schedule('onecycle', peak_lr=peak, epochs=1, steps_per_epoch=total - 1,
                       pct_start=0.25 * total / (total - 1) - 1 / (total - 1))
    assert [ours(i) for i in range(total)] == pytest.approx(theirs, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize('kwargs, key', [({'pct_start': 0.0}, 'pct_start'),
                                         ({'pct_start': 1.0}, 'pct_start'),
                                         ({'div_factor': 0.5}, 'div_factor')])
def test_onecycle_rejects_bad_values(kwargs, key):
    with pytest.raises(ValueError, match=key):
        lr_schedule('onecycle', peak_lr=1.0, epochs=5, steps_per_epoch=STEPS, **kwargs)


# --- staged resizing: stages of resolution and batch size --------------------------------

REFERENCE = '0:64:256, 30:128:128, 50:224:64'  # the advanced reference's 90 epochs


def test_stages_parse_and_say_what_holds_in_each_epoch():
    stages = Stages.parse(REFERENCE, epochs=90)
    assert stages.stages == [Stage(0, 64, 256), Stage(30, 128, 128), Stage(50, 224, 64)]
    assert [stages.at(e) for e in (0, 29, 30, 49, 50, 89, 200)] == [
        Stage(0, 64, 256), Stage(0, 64, 256), Stage(30, 128, 128), Stage(30, 128, 128),
        Stage(50, 224, 64), Stage(50, 224, 64), Stage(50, 224, 64)]


@pytest.mark.parametrize('text, message', [
    ('5:64:256', 'first stage must start at epoch 0'),
    ('0:64:256,10:128:128,10:224:64', 'must increase'),
    ('0:64', "'epoch:pixels:batch'"),
    ('0:64:-1', "'epoch:pixels:batch'"),
    ('0:4:256', 'at least 8 pixels'),
    ('0:64:0', 'batch of at least 1'),
    ('', 'first stage must start at epoch 0'),
])
def test_a_bad_stage_list_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        Stages.parse(text, epochs=90)


def test_iterations_map_to_progress_when_epochs_have_different_lengths():
    # 1000 images: 3 epochs of 3 steps at batch 300, then 2 of 10 at batch 100
    stages = Stages.parse('0:64:300,3:128:100', epochs=5).bind(lambda batch: 1000 // batch)
    assert [stages.first_iteration(e) for e in range(6)] == [0, 3, 6, 9, 19, 29]
    assert stages.progress(0) == 0.0
    assert stages.progress(4) == pytest.approx(1 + 1 / 3)
    assert stages.progress(9) == 3.0          # the first step of the second stage
    assert stages.progress(14) == pytest.approx(3.5)
    assert stages.progress(29) == 5.0         # the end of the run


def test_the_learning_rate_follows_progress_and_each_stages_batch():
    stages = Stages.parse('0:64:300,3:128:100', epochs=5).bind(lambda batch: 1000 // batch)
    lr_at = staged_lr(lambda progress: 10 - progress, stages, lambda batch: batch / 100)
    assert lr_at(0) == pytest.approx(10 * 3)
    assert lr_at(8) == pytest.approx((10 - (2 + 2 / 3)) * 3)   # last step of stage 1
    assert lr_at(9) == pytest.approx((10 - 3) * 1)             # the batch falls to 1/3
    assert lr_at(24) == pytest.approx((10 - 4.5) * 1)
