"""Staged progressive resizing with batch size (``resolution.stages``): the stage list,
the learning rate as a function of progress, the loader's batch size between epochs,
and a run that switches stage and resumes across the switch exactly."""
import numpy as np
import pytest
import torch

import train_imagenet
from ffcv_imagenet.cli.config import ConfigError
from ffcv_imagenet.data.read.loaders import train_loader
from ffcv_imagenet.training.checkpoint import checkpoint_dir, load_checkpoint
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.schedules import Stage, Stages, staged_lr
from train_args import tiny_args

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


def _epoch_labels(loader, epoch):
    loader.epoch = epoch
    return torch.cat([labels.clone() for _, labels in loader]).numpy()


def test_the_loaders_batch_size_changes_between_epochs_keeping_the_order(betons):
    loader = train_loader(betons[0], batch_size=16, resolution=32, num_workers=1)
    first = _epoch_labels(loader, 3)
    assert len(loader) == 3
    loader.batch_size = 8
    assert loader.batch_size == 8 and len(loader) == 6
    batches = []
    loader.epoch = 3
    for images, labels in loader:
        batches.append(labels.clone())
        assert images.shape == (8, 3, 32, 32)
    # the order is a function of (seed, epoch) alone, whatever the batch size
    np.testing.assert_array_equal(torch.cat(batches).numpy(), first)
    loader.batch_size = 12
    loader.start_batch = 2  # a mid-epoch resume skips whole batches of the new size
    np.testing.assert_array_equal(_epoch_labels(loader, 3), first[24:48])
    with pytest.raises(ValueError, match='batch_size must be positive'):
        loader.batch_size = 0


STAGED = ('--resolution.stages=0:32:16,1:48:8', '--training.batch_size=999')


@pytest.fixture(scope='module')
def staged_run(betons, tmp_path_factory):
    """Two epochs: 32 px at batch 16, then 48 px at batch 8 (48 training images)."""
    folder = tmp_path_factory.mktemp('staged') / 'run'
    assert train_imagenet.main(tiny_args(betons, folder, *STAGED)) == 0
    return folder


def test_each_epoch_trains_at_its_stages_resolution_and_batch(staged_run):
    epochs = read_log(staged_run, 'epoch')
    assert [e['resolution'] for e in epochs] == [32, 48]
    assert [e['batch_size'] for e in epochs] == [16, 8]
    assert [e['global_batch_size'] for e in epochs] == [16, 8]
    assert [e['iteration'] for e in epochs] == [48 // 16, 48 // 16 + 48 // 8]


def test_a_resume_across_the_stage_boundary_is_exact(betons, staged_run, tmp_path):
    folder = tmp_path / 'split'
    assert train_imagenet.main(tiny_args(betons, folder, *STAGED,
                                         '--training.stop_after=1')) == 0
    assert train_imagenet.main(tiny_args(betons, folder, *STAGED,
                                         '--checkpoint.resume=auto')) == 0
    whole = load_checkpoint(checkpoint_dir(staged_run) / 'final.pt')
    split = load_checkpoint(checkpoint_dir(folder) / 'final.pt')
    for key, value in whole['model'].items():
        torch.testing.assert_close(split['model'][key], value, rtol=0, atol=0, msg=key)
    assert split['iteration'] == whole['iteration'] == 9
    for key in ('train_loss', 'val_loss', 'lr', 'resolution', 'batch_size'):
        assert [e[key] for e in read_log(folder, 'epoch')] == \
            [e[key] for e in read_log(staged_run, 'epoch')], key


def test_resuming_with_other_stages_is_refused(betons, staged_run, tmp_path):
    final = checkpoint_dir(staged_run) / 'final.pt'
    with pytest.raises(ConfigError, match='resolution.stages'):
        train_imagenet.main(tiny_args(betons, tmp_path / 'x', f'--checkpoint.resume={final}',
                                      '--resolution.stages=0:32:8,1:48:8'))


@pytest.mark.parametrize('extra, message', [
    (['--resolution.stages=0:32'], "resolution.stages: expected 'epoch:pixels:batch'"),
    (['--resolution.stages=0:32:16', '--training.global_batch_size=16'],
     'global_batch_size cannot be combined with resolution.stages'),
    (['--resolution.stages=0:32:16,1:48:64'], 'resolution.stages: .*fewer than one batch of 64'),
])
def test_a_bad_stage_setting_is_one_line_naming_the_key(betons, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        train_imagenet.main(tiny_args(betons, tmp_path / 'bad', *extra))
    assert not (tmp_path / 'bad' / 'checkpoints').exists()
