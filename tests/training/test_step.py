"""One step and its seeding (training/step.py), against results worked out by hand:
what one step optimises (the cross-entropy of the batch, label smoothing applied once,
also with mixed soft targets; fresh gradients; clipping of the true gradient norm), how
a batch is prepared (erasing, then mixing), and how epochs and steps are seeded.

Tiny models and hand-made batches only: each test runs in well under a second."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ffcv_imagenet.training.step import prepare_batch, seed_epoch, seed_step, train_step
from ffcv_imagenet.training.erasing import RandomErasing
from ffcv_imagenet.training.mix import Mixer
from ffcv_imagenet.training.optim import resolve_precision

CPU = torch.device('cpu')

OFF = resolve_precision('off', CPU)

STEP_CLASSES = 5  # classes of the single-step tests
LR = 0.5


# --- one step: train_step and prepare_batch ----------------------------------------------

def setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(6, STEP_CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    images = torch.randn(4, 6) * 3
    labels = torch.tensor([0, 3, 1, 4])
    return model, optimizer, images, labels


def plain_scaler():
    return torch.amp.GradScaler('cpu', enabled=False)


def expected_step(model, images, targets, smoothing=0.0, clip=0.0):
    """(loss, logits, parameters after one SGD step), worked out on a copy."""
    copy = nn.Linear(6, STEP_CLASSES)
    copy.load_state_dict(model.state_dict())
    logits = copy(images)
    loss = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    loss.backward()
    grads = [p.grad for p in copy.parameters()]
    if clip:
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        grads = [g * min(1.0, clip / float(norm)) for g in grads]
    return (loss.detach(), logits.detach(),
            [p.detach() - LR * g for p, g in zip(copy.parameters(), grads)])


def assert_parameters(model, expected):
    for mine, theirs in zip(model.parameters(), expected):
        assert torch.allclose(mine, theirs, atol=1e-6)


@pytest.mark.parametrize('smoothing', [0.0, 0.2])
def test_a_step_minimises_the_smoothed_cross_entropy_and_returns_it(smoothing):
    model, optimizer, images, labels = setup()
    loss, logits, after = expected_step(model, images, labels, smoothing)
    got_loss, got_logits = train_step(model, images, labels, optimizer, plain_scaler(),
                                           OFF, smoothing)
    assert got_loss.item() == pytest.approx(loss.item())  # before the update
    assert torch.allclose(got_logits, logits)
    assert not got_loss.requires_grad and not got_logits.requires_grad
    assert_parameters(model, after)


def test_soft_targets_are_taken_as_probabilities():
    model, optimizer, images, labels = setup()
    targets = torch.softmax(torch.randn(4, STEP_CLASSES), dim=1)
    loss, _, after = expected_step(model, images, targets)
    got, _ = train_step(model, images, targets, optimizer, plain_scaler(), OFF)
    assert got.item() == pytest.approx(loss.item())
    assert_parameters(model, after)


def test_gradients_of_an_earlier_step_do_not_leak_into_this_one():
    model, optimizer, images, labels = setup()
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)  # left over from somewhere else
    _, _, after = expected_step(model, images, labels)
    train_step(model, images, labels, optimizer, plain_scaler(), OFF)
    assert_parameters(model, after)


@pytest.mark.parametrize('clip', [0.05, 1e6])
def test_clipping_bounds_the_gradient_norm(clip):
    model, optimizer, images, labels = setup()
    _, _, after = expected_step(model, images, labels, clip=clip)
    train_step(model, images, labels, optimizer, plain_scaler(), OFF, grad_clip=clip)
    assert_parameters(model, after)


def test_no_clipping_by_default():
    model, optimizer, images, labels = setup()
    _, _, after = expected_step(model, images, labels)
    train_step(model, images, labels, optimizer, plain_scaler(), OFF)
    assert_parameters(model, after)
    clipped = expected_step(*setup()[:1], images, labels, clip=0.05)[2]
    assert not torch.allclose(after[0], clipped[0])  # so clipping would have shown


def test_clipping_sees_the_true_gradient_under_a_loss_scaler():
    model, optimizer, images, labels = setup()
    scaler = torch.amp.GradScaler('cpu', init_scale=1024.0, growth_interval=1)
    _, _, after = expected_step(model, images, labels, clip=0.05)
    train_step(model, images, labels, optimizer, scaler, OFF, grad_clip=0.05)
    assert_parameters(model, after)
    assert scaler.get_scale() == 2048.0  # the scale is updated after each step


def test_prepare_batch_without_a_mixer_keeps_the_labels_and_the_smoothing():
    images, labels = torch.randn(3, 3, 4, 4), torch.tensor([2, 0, 1])
    out = prepare_batch(images, labels, None, 0.1)
    assert out[0] is images and out[1] is labels and out[2] is labels and out[3] == 0.1


def test_prepare_batch_with_a_mixer_smooths_once_and_scores_the_dominant_label():
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixer = Mixer(STEP_CLASSES, mixup_alpha=1.0, label_smoothing=0.1)
    torch.manual_seed(5)
    mixed, targets, dominant = mixer(images, labels)
    torch.manual_seed(5)
    out = prepare_batch(images, labels, mixer, 0.1)
    assert torch.equal(out[0], mixed) and torch.equal(out[1], targets)
    assert torch.equal(out[2], dominant)
    assert out[3] == 0.0  # the soft targets already hold the smoothing


def test_prepare_batch_erases_before_it_mixes():
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    eraser = RandomErasing(1.0, min_area=0.2, max_area=0.3)
    mixer = Mixer(STEP_CLASSES, mixup_alpha=1.0, label_smoothing=0.1)
    torch.manual_seed(3)
    expected = mixer(eraser(images.clone()), labels)
    torch.manual_seed(3)
    out = prepare_batch(images.clone(), labels, mixer, 0.1, eraser)
    assert all(torch.equal(a, b) for a, b in zip(out[:3], expected))
    torch.manual_seed(3)
    erased = prepare_batch(images.clone(), labels, None, 0.1, eraser)[0]
    assert (erased == 0).any() and not (images == 0).any()  # erased to the mean


# --- seeding: an epoch by (seed, epoch, rank), a step by (seed, epoch, step, rank) -------

def epoch_draws(seed, epoch, rank):
    random.seed(12345), np.random.seed(12345), torch.manual_seed(12345)  # noise before
    seed_epoch(seed, epoch, rank)
    return (torch.rand(4).tolist(), np.random.rand(4).tolist(),
            [random.random() for _ in range(4)])


def step_draws(seed, epoch, step, rank):
    torch.manual_seed(12345)
    seed_step(seed, epoch, step, rank, CPU)
    return torch.rand(4).tolist()


def test_the_same_epoch_seeds_give_the_same_draws_in_every_library():
    assert epoch_draws(1, 2, 3) == epoch_draws(1, 2, 3)


@pytest.mark.parametrize('other', [(2, 2, 3), (1, 3, 3), (1, 2, 4)])
def test_each_part_of_the_epoch_seed_changes_every_librarys_draws(other):
    first, second = epoch_draws(1, 2, 3), epoch_draws(*other)
    for mine, theirs in zip(first, second):  # torch, numpy and python each
        assert mine != theirs


def test_the_same_step_seeds_give_the_same_draws():
    assert step_draws(1, 2, 3, 0) == step_draws(1, 2, 3, 0)


@pytest.mark.parametrize('other', [(2, 2, 3, 0), (1, 3, 3, 0), (1, 2, 4, 0), (1, 2, 3, 1)])
def test_each_part_of_the_step_seed_changes_the_draws(other):
    assert step_draws(1, 2, 3, 0) != step_draws(*other)


def test_seeding_a_step_leaves_numpy_and_python_alone():
    np.random.seed(7), random.seed(7)
    expected = (np.random.rand(2).tolist(), random.random())
    np.random.seed(7), random.seed(7)
    seed_step(0, 0, 1, 0, CPU)
    assert (np.random.rand(2).tolist(), random.random()) == expected
