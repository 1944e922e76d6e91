"""Random erasing of a device batch, and evaluating a checkpoint at several
resolutions."""
import pytest
import torch

import train_imagenet
from ffcv_imagenet.training.checkpoint import checkpoint_dir
from ffcv_imagenet.training.erasing import RandomErasing
from ffcv_imagenet.training.logs import read_log
from train_args import tiny_args


def _erased(before, after):
    """(B, H, W) bool: pixels changed in any channel."""
    return (before != after).any(dim=1)


def test_each_image_gets_one_rectangle_of_the_asked_area_filled_with_the_mean():
    torch.manual_seed(0)
    eraser = RandomErasing(1.0, min_area=0.1, max_area=0.3, min_aspect=0.5)
    images = torch.randn(64, 3, 40, 50) + 5  # never 0, so every erased pixel shows
    out = eraser(images.clone())
    changed = _erased(images, out)
    for b in range(64):
        rows, cols = changed[b].nonzero(as_tuple=True)
        area = len(rows)
        assert area > 0
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert area == height * width  # one filled rectangle
        # rounding the sides to whole pixels moves the area by at most a side length
        slack = (height + width + 1) / (40 * 50)
        assert 0.1 - slack <= area / (40 * 50) <= 0.3 + slack
        assert (out[b][:, changed[b]] == 0).all()
        assert 0.5 - 0.2 <= (height / width) <= 2 + 0.5  # aspect before clipping


def test_prob_is_the_share_of_images_erased_and_pixel_mode_fills_noise():
    torch.manual_seed(1)
    images = torch.full((400, 3, 16, 16), 3.0)
    out = RandomErasing(0.25)(images.clone())
    share = _erased(images, out).flatten(1).any(dim=1).float().mean().item()
    assert 0.18 < share < 0.32
    assert torch.equal(RandomErasing(0.0)(images.clone()), images)
    noisy = RandomErasing(1.0, mode='pixel')(images.clone())
    inside = _erased(images, noisy)
    values = noisy.permute(1, 0, 2, 3)[:, inside]
    assert values.numel() > 0 and abs(values.mean().item()) < 0.2
    assert 0.8 < values.std().item() < 1.2


def test_the_same_seed_erases_the_same_boxes():
    eraser = RandomErasing(0.5)
    torch.manual_seed(7)
    first = eraser.boxes(32, 24, 24)
    torch.manual_seed(7)
    assert torch.equal(eraser.boxes(32, 24, 24), first)


@pytest.mark.parametrize('kwargs', [dict(prob=1.5), dict(prob=0.5, min_area=0.5, max_area=0.2),
                                    dict(prob=0.5, min_aspect=2.0), dict(prob=0.5, mode='x')])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        RandomErasing(**kwargs)


def test_training_with_erasing_and_evaluating_at_several_resolutions_and_crops(
        betons, tmp_path, capsys):
    folder = tmp_path / 'run'
    assert train_imagenet.main(tiny_args(betons, folder, '--erase.prob=0.5',
                                         '--training.stop_after=1')) == 0
    capsys.readouterr()
    last = checkpoint_dir(folder) / 'last.pt'
    assert train_imagenet.main(tiny_args(
        betons, folder, f'--checkpoint.resume={last}', '--training.eval_only=1',
        '--validation.resolutions=32, 48,64', '--validation.crop_ratios=0.5,1')) == 0
    err = capsys.readouterr().err
    table = [line for line in err.splitlines() if line.startswith('| ')]
    assert table[0].startswith('| resolution (px) | crop ratio | val_top1 | val_top5')
    assert [row.split('|')[1].strip() for row in table[1:]] == ['32', '32', '48', '48',
                                                                '64', '64']
    assert [row.split('|')[2].strip() for row in table[1:]] == ['0.5', '1'] * 3
    swept = read_log(folder, 'eval')
    assert [(e['resolution'], e['crop_ratio']) for e in swept] == [
        (r, c) for r in (32, 48, 64) for c in (0.5, 1.0)]
    assert swept[0]['val_loss'] != swept[1]['val_loss']  # the crop did change
    # each ratio evaluated alone gives the numbers of the sweep, which changed it back
    # and forth: the decoder was compiled again for each
    for ratio, row in ((1.0, swept[5]), (0.5, swept[4])):
        assert train_imagenet.main(tiny_args(
            betons, folder, f'--checkpoint.resume={last}', '--training.eval_only=1',
            '--validation.resolution=64', f'--validation.crop_ratio={ratio}')) == 0
        assert read_log(folder, 'eval')[-1]['val_loss'] == pytest.approx(row['val_loss'])
    with pytest.raises(Exception, match='validation.resolutions needs training.eval_only'):
        train_imagenet.main(tiny_args(betons, tmp_path / 'x', '--validation.resolutions=32'))
    for key, value, message in (('resolutions', '32,big', 'expected pixel sizes'),
                                ('crop_ratios', '0.5,1.5', r'expected centre-crop ratios in \(0, 1\]')):
        with pytest.raises(Exception, match=f'validation.{key}: {message}'):
            train_imagenet.main(tiny_args(betons, tmp_path / 'y', '--training.eval_only=1',
                                          f'--checkpoint.resume={last}',
                                          f'--validation.{key}={value}'))
