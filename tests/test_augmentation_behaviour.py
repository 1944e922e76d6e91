"""MixUp/CutMix details the end-to-end tests cannot see: where the soft targets live
and in what dtype, where the CutMix box lands (a given generator alone decides it;
every pixel can be its centre; it is centred on that pixel), the ranges the error
messages name, and the one-class edge case."""
import pytest
import torch

from ffcv_imagenet.training.mix import Mixer, cutmix_box, mixed_targets, smooth_one_hot


def test_soft_targets_live_on_the_labels_device():
    labels = torch.tensor([0, 2, 1], device='meta')  # any device but the CPU
    assert smooth_one_hot(labels, 4, 0.1).device.type == 'meta'
    assert mixed_targets(labels, labels.roll(1, 0), 0.3, 4, 0.1).device.type == 'meta'


def test_soft_targets_are_float32_whatever_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        targets = smooth_one_hot(torch.tensor([0, 2, 1]), 4, 0.1)
    finally:
        torch.set_default_dtype(previous)
    assert targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(3))


def test_the_cutmix_box_comes_from_the_given_generator_alone():
    boxes = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # the global generator must not matter
        generator = torch.Generator().manual_seed(0)
        boxes.append([cutmix_box(32, 48, 0.7, generator) for _ in range(20)])
    assert boxes[0] == boxes[1]


def test_every_pixel_can_be_the_centre_of_the_box():
    generator = torch.Generator().manual_seed(0)
    # lam 0.75 on 2 x 2 pixels: a 1 x 1 box on its centre pixel
    boxes = {cutmix_box(2, 2, 0.75, generator) for _ in range(200)}
    assert boxes == {(0, 1, 0, 1), (0, 1, 1, 2), (1, 2, 0, 1), (1, 2, 1, 2)}


def test_the_box_is_centred_so_opposite_borders_are_covered_equally_often():
    """An odd side (5 of 10 pixels) centred on a uniform pixel covers the first and
    the last row in 3 of 10 cases each; a box hung off-centre favours one side."""
    generator = torch.Generator().manual_seed(0)
    draws = 4000
    first_row = last_row = first_column = last_column = 0
    for _ in range(draws):
        top, bottom, left, right = cutmix_box(10, 10, 0.75, generator)
        first_row += top == 0
        last_row += bottom == 10
        first_column += left == 0
        last_column += right == 10
    for count in (first_row, last_row, first_column, last_column):
        assert count / draws == pytest.approx(0.3, abs=0.04)


@pytest.mark.parametrize('kwargs, message', [
    ({'label_smoothing': 1.0}, r'label_smoothing must be in \[0, 1\), got 1.0'),
    ({'prob': 1.5}, r'prob must be in \[0, 1\], got 1.5'),
    ({'switch_prob': -0.5}, r'switch_prob must be in \[0, 1\], got -0.5'),
])
def test_range_errors_name_the_allowed_interval(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mixer(3, **kwargs)


def test_a_single_class_is_allowed():
    mixer = Mixer(1, mixup_alpha=1.0, label_smoothing=0.1)
    torch.manual_seed(0)
    _, targets, dominant = mixer(torch.randn(2, 3, 4, 4), torch.zeros(2, dtype=torch.long))
    assert torch.allclose(targets, torch.ones(2, 1)) and dominant.tolist() == [0, 0]
