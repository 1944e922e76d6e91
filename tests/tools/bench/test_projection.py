"""bench trainer's arithmetic (tools/bench/projection.py): the parts of a run's time
read from its epoch records, and a recipe's time projected from them."""
import pytest

from ffcv_imagenet.tools.bench.projection import checkpoint_writes, measured_parts, project

LAUNCH = 1000.0


def record(epoch, resolution, *, images, train, wait, first_wait, compile=0.0, val=0.0,
           checkpoint=0.0, extra=0.0, ended):
    """An epoch line: ``train`` seconds of pass (waits and compilation inside), then
    ``val``, ``checkpoint`` and ``extra`` bookkeeping seconds; ``ended``: unix time."""
    return {'event': 'epoch', 'time': ended, 'epoch': epoch, 'resolution': resolution,
            'batch_size': 8, 'images_per_sec': images / train, 'epoch_time': train,
            'val_top1': 0.5 if val else None, 'data_wait_s': wait,
            'first_wait_s': first_wait, 'compile_s': compile, 'val_s': val,
            'checkpoint_s': checkpoint, 'epoch_wall_s': train + val + checkpoint + extra}


# three epochs: 32, 32, 48 px; started 12 s after the launch
EPOCHS = [
    record(1, 32, images=400, train=30.0, wait=9.0, first_wait=8.0, compile=5.0, val=6.0,
           checkpoint=1.0, ended=LAUNCH + 12 + 37),
    record(2, 32, images=400, train=10.0, wait=1.0, first_wait=0.5, val=2.0, checkpoint=1.5,
           ended=LAUNCH + 12 + 37 + 13.5),
    record(3, 48, images=400, train=24.0, wait=2.0, first_wait=1.5, compile=4.0, val=2.5,
           checkpoint=0.0, extra=0.5, ended=LAUNCH + 12 + 37 + 13.5 + 27),
]


def parts(world_size=2):
    return measured_parts(EPOCHS, LAUNCH, world_size=world_size, val_images=100)


def test_start_up_runs_from_the_launch_to_the_first_step():
    # 12 s to the first epoch's start, then the wait for its first batch
    assert parts()['startup_s'] == pytest.approx(12 + 8)


def test_the_parts_add_up_to_the_wall_time():
    p = parts()
    assert p['data_wait_s'] == pytest.approx(9 + 1 + 2 - 8)  # the first batch is start-up's
    assert p['val_s'] == pytest.approx(6 + 2 + 2.5)
    assert p['checkpoint_s'] == pytest.approx(1 + 1.5)
    assert [(c['resolution'], c['seconds']) for c in p['compile']] == [(32, 5.0), (48, 4.0)]
    # steps: each epoch's wall less its waits, compilation, validation and writes
    assert p['steps_s'] == pytest.approx((30 - 9 - 5) + (10 - 1) + (24 - 2 - 4 + 0.5))
    assert p['total_s'] == pytest.approx(p['wall_s'])
    assert p['wall_s'] == pytest.approx(EPOCHS[-1]['time'] - LAUNCH)


def test_the_switch_is_the_new_resolutions_compilation_and_extra_first_wait():
    assert parts()['switch_s'] == pytest.approx(4.0 + (1.5 - 0.5))


def test_rates_are_per_gpu_per_resolution_without_start_up_or_compilation():
    p = parts(world_size=2)
    rates = {row['resolution']: row['images_per_sec_per_gpu'] for row in p['train']}
    assert rates[32] == pytest.approx(800 / ((30 - 5 - 8) + 10) / 2)
    assert rates[48] == pytest.approx(400 / (24 - 4 + 0.5) / 2)  # bookkeeping included
    assert parts(world_size=1)['train'][0]['images_per_sec_per_gpu'] == \
        pytest.approx(2 * rates[32])
    # validation: the fastest pass, the first's excess kept as a warm-up
    assert p['val_images_per_sec_per_gpu'] == pytest.approx(100 / 2.0 / 2)
    assert p['val_warmup_s'] == pytest.approx(6.0 - 2.0)
    assert p['checkpoint_s_per_write'] == pytest.approx(2.5 / 2)  # epoch 3 wrote none


def test_records_of_an_older_trainer_are_refused():
    old = [{k: v for k, v in EPOCHS[0].items() if k != 'data_wait_s'}]
    with pytest.raises(ValueError, match='data_wait_s'):
        measured_parts(old, LAUNCH, world_size=1, val_images=1)
    with pytest.raises(ValueError, match='no epoch'):
        measured_parts([], LAUNCH, world_size=1, val_images=1)


PLAN = {'resolutions': [32] * 6 + [48] * 2, 'eval_every': 3, 'last_every_epochs': 2,
        'last_every_seconds': 0.0, 'keep_every': 0}


def test_the_projection_adds_each_part_of_the_recipe():
    p = parts()
    rates = {row['resolution']: row['images_per_sec_per_gpu'] for row in p['train']}
    got = project(p, PLAN, gpus=4, dataset_images=10_000, val_images=500)
    train = 6 * 10_000 / (rates[32] * 4) + 2 * 10_000 / (rates[48] * 4)
    assert got['train_s'] == pytest.approx(train)
    assert got['validations'] == 3  # after epochs 3 and 6, and after the last (8)
    val = 3 * 500 / (p['val_images_per_sec_per_gpu'] * 4) + p['val_warmup_s']
    assert got['val_s'] == pytest.approx(val)
    assert got['checkpoint_writes'] == 4  # epochs 2, 4, 6, 8
    checkpoint = 4 * p['checkpoint_s_per_write']
    assert got['total_s'] == pytest.approx(p['startup_s'] + 5.0 + 4.0 + train + val
                                           + checkpoint)


def test_validation_from_an_epoch_on_leaves_the_earlier_passes_out():
    p = parts()
    every = project(p, {**PLAN, 'eval_every': 1}, gpus=4, dataset_images=10_000,
                    val_images=500)
    late = project(p, {**PLAN, 'eval_every': 1, 'eval_from': 6}, gpus=4,
                   dataset_images=10_000, val_images=500)
    assert (every['validations'], late['validations']) == (8, 3)  # epochs 6, 7 and 8
    saved = 5 * 500 / (p['val_images_per_sec_per_gpu'] * 4)
    assert every['total_s'] - late['total_s'] == pytest.approx(saved)


def test_more_gpus_shorten_the_per_epoch_parts_only():
    p = parts()
    one, eight = (project(p, PLAN, gpus=n, dataset_images=10_000, val_images=500)
                  for n in (1, 8))
    assert eight['train_s'] == pytest.approx(one['train_s'] / 8)
    assert eight['val_s_per_pass'] == pytest.approx(one['val_s_per_pass'] / 8)
    for key in ('startup_s', 'compile_s', 'checkpoint_s'):
        assert eight[key] == one[key], key


def test_an_unmeasured_resolution_is_scaled_by_pixels_and_compiles_in_the_mean_time():
    p = parts()
    rate_48 = next(r['images_per_sec_per_gpu'] for r in p['train'] if r['resolution'] == 48)
    got = project(p, dict(PLAN, resolutions=[64]), gpus=1, dataset_images=1000,
                  val_images=0)
    row, = got['train']
    assert not row['measured']
    assert row['images_per_sec_per_gpu'] == pytest.approx(rate_48 * (48 / 64) ** 2)
    assert got['compile'] == [{'resolution': 64, 'seconds': pytest.approx(4.5),
                               'measured': False}]


@pytest.mark.parametrize('epochs, every, keep, expected', [
    (8, 1, 0, 8), (8, 3, 0, 3), (8, 3, 4, 4), (7, 2, 0, 4)])
def test_checkpoint_writes_by_epochs(epochs, every, keep, expected):
    # every `every` epochs, every `keep` epochs and the last one, each epoch once
    assert checkpoint_writes(epochs, last_every_epochs=every, last_every_seconds=0,
                             keep_every=keep, seconds=0) == expected


def test_checkpoint_writes_by_time_follow_the_run_and_end_with_the_last():
    assert checkpoint_writes(4, last_every_epochs=0, last_every_seconds=600, keep_every=0,
                             seconds=3000) == 1 + 4
