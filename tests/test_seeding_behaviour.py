"""Seeding: an epoch's torch, numpy and Python draws depend on (seed, epoch, rank) and
a step's torch draws on (seed, epoch, step, rank), each of them, and on nothing else."""
import random

import numpy as np
import pytest
import torch

from ffcv_imagenet.training import loop

CPU = torch.device('cpu')


def epoch_draws(seed, epoch, rank):
    random.seed(12345), np.random.seed(12345), torch.manual_seed(12345)  # noise before
    loop.seed_epoch(seed, epoch, rank)
    return (torch.rand(4).tolist(), np.random.rand(4).tolist(),
            [random.random() for _ in range(4)])


def step_draws(seed, epoch, step, rank):
    torch.manual_seed(12345)
    loop.seed_step(seed, epoch, step, rank, CPU)
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
    loop.seed_step(0, 0, 1, 0, CPU)
    assert (np.random.rand(2).tolist(), random.random()) == expected
