"""MixUp and CutMix (training/mix.py): soft targets, the mixed pixels and the box,
the method and probability settings, seeds, dtypes; where the soft targets live and
in what dtype, where the CutMix box lands (a given generator alone decides it; every
pixel can be its centre; it is centred on that pixel), the ranges the error messages
name, and the one-class edge case."""
import math

import pytest
import torch
import torch.nn.functional as F

from ffcv_imagenet.training.mix import Mixer, cutmix_box, mixed_targets, smooth_one_hot

C = 7  # classes
B = 5  # batch size; labels 0..B-1 are distinct, so a label never equals its partner's


def batch(seed: int = 0, size: int = 8, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, size, size, generator=generator).to(dtype)
    return images, torch.arange(B)


def lam_from(targets: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> float:
    """The weight of ``labels`` in ``targets`` (labels distinct from their partners)."""
    own = targets[torch.arange(len(labels)), labels]
    lam = (own - smoothing / C) / (1 - smoothing)
    assert torch.allclose(lam, lam[0].expand_as(lam), atol=1e-6)  # one lam per batch
    return float(lam[0])


def test_smooth_one_hot_values_and_cross_entropy():
    labels = torch.tensor([0, 3, 6, 3])
    logits = torch.randn(4, C, generator=torch.Generator().manual_seed(1))
    for s in (0.0, 0.1, 0.5):
        targets = smooth_one_hot(labels, C, s)
        assert targets.dtype == torch.float32 and targets.shape == (4, C)
        assert torch.allclose(targets.sum(1), torch.ones(4))
        for row, label in enumerate(labels.tolist()):
            for column in range(C):
                expected = 1 - s + s / C if column == label else s / C
                assert targets[row, column].item() == pytest.approx(expected, abs=1e-7)
        assert torch.allclose(F.cross_entropy(logits, targets),
                              F.cross_entropy(logits, labels, label_smoothing=s), atol=1e-6)


def test_mixed_targets_sum_to_one_and_mix_the_losses():
    labels, partner = torch.tensor([0, 1, 2, 5]), torch.tensor([4, 1, 6, 0])
    logits = torch.randn(4, C, generator=torch.Generator().manual_seed(2))
    for lam in (0.0, 0.3, 0.5, 0.9, 1.0):
        for s in (0.0, 0.1):
            targets = mixed_targets(labels, partner, lam, C, s)
            assert targets.dtype == torch.float32
            assert torch.allclose(targets.sum(1), torch.ones(4))
            expected = (lam * F.cross_entropy(logits, labels, label_smoothing=s)
                        + (1 - lam) * F.cross_entropy(logits, partner, label_smoothing=s))
            assert torch.allclose(F.cross_entropy(logits, targets), expected, atol=1e-6)


def test_mixup_is_a_convex_combination_with_the_rolled_batch():
    images, labels = batch()
    original = images.clone()
    mixer = Mixer(C, mixup_alpha=0.4)
    for seed in range(4):
        torch.manual_seed(seed)
        mixed, targets, _ = mixer(images, labels)
        lam = lam_from(targets, labels)
        assert 0.0 <= lam <= 1.0
        expected = lam * original + (1 - lam) * original.roll(1, 0)
        assert torch.allclose(mixed, expected, atol=1e-5)
        assert torch.equal(images, original)  # never in place


def pasted_mask(mixed, images):
    """Pixels (H, W) taken from the partner; checks the rest is the original."""
    partner = images.roll(1, 0)
    from_partner = (mixed == partner) & (mixed != images)
    mask = from_partner.all(0).all(0)
    assert torch.equal(mixed, torch.where(mask, partner, images))
    return mask


def test_cutmix_pastes_the_partner_inside_one_box_and_lam_matches_the_area():
    images, labels = batch(size=16)
    original = images.clone()
    mixer = Mixer(C, cutmix_alpha=1.0, label_smoothing=0.1)
    pasted_somewhere = False
    for seed in range(6):
        torch.manual_seed(seed)
        mixed, targets, _ = mixer(images, labels)
        mask = pasted_mask(mixed, original)
        rows, columns = mask.any(1).nonzero(), mask.any(0).nonzero()
        if len(rows):  # a filled rectangle
            pasted_somewhere = True
            box = mask[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
            assert box.all() and int(box.sum()) == int(mask.sum())
        lam = lam_from(targets, labels, 0.1)
        assert mask.float().mean().item() == pytest.approx(1 - lam, abs=1e-6)
        assert torch.equal(images, original)
    assert pasted_somewhere


def test_cutmix_box_sides_and_clipping():
    height, width = 40, 60
    generator = torch.Generator().manual_seed(0)
    for lam in (0.0, 0.25, 0.5, 0.9, 1.0):
        box_h = round(height * math.sqrt(1 - lam))
        box_w = round(width * math.sqrt(1 - lam))
        interior = 0
        for _ in range(50):
            top, bottom, left, right = cutmix_box(height, width, lam, generator)
            assert 0 <= top <= bottom <= height and 0 <= left <= right <= width
            assert bottom - top <= box_h and right - left <= box_w
            if 0 < top and bottom < height and 0 < left and right < width:
                interior += 1
                assert (bottom - top, right - left) == (box_h, box_w)
        if lam >= 0.5:  # small boxes: some must land away from the borders
            assert interior > 0
    top, bottom, left, right = cutmix_box(height, width, 1.0, generator)
    assert (bottom - top) * (right - left) == 0  # lam = 1: nothing to paste
    # The sides follow the expected lam; the centre spreads over the whole image.
    centres = [cutmix_box(height, width, 0.96, generator) for _ in range(200)]
    rows = {(top + bottom) // 2 for top, bottom, _, _ in centres}
    assert min(rows) <= 4 and max(rows) >= height - 5
    with pytest.raises(ValueError, match='lam'):
        cutmix_box(height, width, 1.5)


@pytest.mark.parametrize('kwargs', [
    {'mixup_alpha': 0.4, 'cutmix_alpha': 1.0, 'prob': 0.0},
    {'mixup_alpha': 0.0, 'cutmix_alpha': 0.0},
])
def test_disabled_mixer_leaves_the_batch_alone(kwargs):
    images, labels = batch()
    original = images.clone()
    mixer = Mixer(C, label_smoothing=0.1, **kwargs)
    assert not mixer.enabled
    mixed, targets, dominant = mixer(images, labels)
    assert torch.equal(mixed, original)
    assert torch.equal(targets, smooth_one_hot(labels, C, 0.1))
    assert torch.equal(dominant, labels)


def test_prob_mixes_some_batches_only():
    images, labels = batch()
    mixer = Mixer(C, mixup_alpha=1.0, prob=0.5)
    assert mixer.enabled
    torch.manual_seed(0)
    mixed = [not torch.equal(mixer(images, labels)[0], images) for _ in range(40)]
    assert 5 < sum(mixed) < 35


def is_cutmix(mixed, images):
    """CutMix leaves some pixels exactly original; MixUp (0 < lam < 1) leaves none."""
    return bool((mixed == images).any())


@pytest.mark.parametrize('switch_prob, expected', [(1.0, True), (0.0, False)])
def test_switch_prob_picks_the_method(switch_prob, expected):
    images, labels = batch(size=16)
    mixer = Mixer(C, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=switch_prob)
    for seed in range(6):
        torch.manual_seed(seed)
        mixed, targets, _ = mixer(images, labels)
        lam = lam_from(targets, labels)
        if 0.01 < lam < 0.99:  # MixUp with lam ~ 1 could round back to the original
            assert is_cutmix(mixed, images) == expected
            if expected:
                pasted_mask(mixed, images)


def test_both_methods_occur_with_half_switch_prob():
    images, labels = batch(size=16)
    mixer = Mixer(C, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5)
    torch.manual_seed(0)
    kinds = {is_cutmix(mixer(images, labels)[0], images) for _ in range(20)}
    assert kinds == {True, False}


@pytest.mark.parametrize('kwargs', [{'mixup_alpha': 1.0}, {'cutmix_alpha': 1.0}])
def test_dominant_label_is_the_heavier_one(kwargs):
    images, labels = batch(size=16)
    mixer = Mixer(C, label_smoothing=0.1, **kwargs)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        _, targets, dominant = mixer(images, labels)
        lam = lam_from(targets, labels, 0.1)
        expected = labels if lam >= 0.5 else labels.roll(1, 0)
        assert torch.equal(dominant, expected)
        if abs(lam - 0.5) > 1e-3:
            assert torch.equal(dominant, targets.argmax(1))
        seen.add(lam >= 0.5)
    assert seen == {True, False}  # both branches exercised


def test_same_seed_same_outputs():
    images, labels = batch(size=16)
    mixer = Mixer(C, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, label_smoothing=0.1)

    def run(seed):
        torch.manual_seed(seed)
        return [mixer(images, labels) for _ in range(5)]

    first, second, other = run(3), run(3), run(4)
    for a, b in zip(first, second):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(first, other))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize('kwargs', [{'mixup_alpha': 0.4}, {'cutmix_alpha': 1.0}])
def test_dtype_and_channels_last_are_kept(dtype, kwargs):
    images, labels = batch(size=16, dtype=dtype)
    images = images.contiguous(memory_format=torch.channels_last)
    original = images.clone()
    torch.manual_seed(0)
    mixed, targets, dominant = Mixer(C, label_smoothing=0.1, **kwargs)(images, labels)
    assert mixed.dtype == dtype and mixed.shape == images.shape
    assert mixed.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(mixed.float()).all()
    assert targets.dtype == torch.float32 and targets.shape == (B, C)
    assert torch.isfinite(targets).all()
    assert dominant.dtype == torch.int64
    assert torch.equal(images, original)


@pytest.mark.parametrize('kwargs, name', [
    ({'num_classes': 0}, 'num_classes'),
    ({'mixup_alpha': -0.1}, 'mixup_alpha'),
    ({'cutmix_alpha': -1.0}, 'cutmix_alpha'),
    ({'mixup_alpha': float('nan')}, 'mixup_alpha'),
    ({'prob': 1.5}, 'prob'),
    ({'prob': -0.1}, 'prob'),
    ({'switch_prob': 2.0}, 'switch_prob'),
    ({'label_smoothing': 1.0}, 'label_smoothing'),
    ({'label_smoothing': -0.1}, 'label_smoothing'),
])
def test_bad_arguments(kwargs, name):
    args = {'num_classes': C} | kwargs
    with pytest.raises(ValueError, match=rf'^{name} '):  # the message starts with the name
        Mixer(**args)


def test_mismatched_batch_is_refused():
    images, labels = batch()
    with pytest.raises(ValueError, match='labels'):
        Mixer(C, mixup_alpha=1.0)(images, labels[:-1])


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
