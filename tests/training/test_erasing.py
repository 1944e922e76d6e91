"""Random erasing of a device batch (training/erasing.py)."""
import pytest
import torch

from ffcv_imagenet.training.erasing import RandomErasing


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
