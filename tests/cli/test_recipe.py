"""A config -> a built run (cli/recipe.py): training.parity=ffcv reaches the run's optimizer,
learning rate, precision and notes; a run on other storage than its recipe's preset
says so in one line at the start, and a run on the same storage says nothing."""
import os

import pytest
import torch

import train_imagenet
from ffcv_imagenet.cli import recipe, train
from ffcv_imagenet.cli.config import ConfigError, parse_config
from ffcv_imagenet.cli.train_config import SECTIONS
from ffcv_imagenet.data.write.storage import find_preset, record_json, storage_path
from ffcv_imagenet.training.distributed import Dist
from ffcv_imagenet.training.optim import resolve_precision
from tests.support import copy_beton, tiny_args


CPU = torch.device('cpu')


def test_a_parity_run_is_built_with_the_published_rules_and_says_so(betons, tmp_path):
    config = parse_config('t', tiny_args(betons, tmp_path, '--training.parity=ffcv'), SECTIONS)
    run = recipe.build_run(config, Dist(rank=0, local_rank=0, world_size=1, device=CPU))
    names = {id(p): n for n, p in run.module.named_parameters()}
    decay, exempt = run.optimizer.param_groups
    assert {names[id(p)] for p in decay['params']} == {n for n in names.values()
                                                       if 'bn' not in n}
    assert 'fc.bias' in {names[id(p)] for p in decay['params']}
    assert run.precision.dtype is None  # fp16 needs a GPU: full precision on the CPU
    peak = config['lr.lr'] * 8 / config['lr.reference_batch']  # tiny_args: batch 8
    assert run.lr_at(0) == pytest.approx(1e-4 * peak)
    (note,) = [n for n in run.notes if n.startswith('training.parity=ffcv sets ')]
    assert 'optimizer.decay_rule=names' in note and 'training.precision=fp16' in note
    assert run.meta['config']['optimizer.decay_rule'] == 'names'  # saved with checkpoints


def _notes_of_a_run(betons, folder, capsys, monkeypatch, *extra):
    """The lines starting with 'note:' that a run prints at its start (the training
    itself is skipped: the lines come before it)."""
    monkeypatch.setattr(train, 'fit', lambda run, log: run.state)
    capsys.readouterr()
    assert train_imagenet.main(tiny_args(betons, folder, *extra)) == 0
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith('note:')]


def test_a_run_on_other_storage_says_what_differs_in_one_line(betons, tmp_path, capsys,
                                                              monkeypatch):
    train_path, val_path = betons  # written at 128 px, JPEG quality 90
    notes = _notes_of_a_run(betons, tmp_path / 'run', capsys, monkeypatch,
                            '--data.storage_preset=rn18-published')
    assert notes == [f"note: data.storage_preset expects storage rn18-published (400 px, "
                     f"proportion 0.1, quality 90); {train_path} and {val_path} were written "
                     f"with 128 px, jpg, quality 90"]
    assert _notes_of_a_run(betons, tmp_path / 'no_preset', capsys, monkeypatch) == []


@pytest.mark.parametrize('recorded, expected', [('fast-256', []), (None, [
    "note: data.storage_preset expects storage fast-256 (256 px, jpg, quality 90); {train} "
    "and {val} have no storage record, so their storage is unknown"])])


def test_a_run_on_its_storage_says_nothing_and_on_unrecorded_storage_that_it_is_unknown(
        betons, tmp_path, capsys, monkeypatch, recorded, expected):
    copies = [copy_beton(path, tmp_path / path.name) for path in betons]
    if recorded:  # the record a conversion with the preset leaves
        for path in copies:
            storage_path(path).write_text(record_json(find_preset(recorded).storage, recorded,
                                                      path.stat().st_size))
    notes = _notes_of_a_run(copies, tmp_path / 'run', capsys, monkeypatch,
                            '--data.storage_preset=fast-256')
    assert notes == [line.format(train=copies[0], val=copies[1]) for line in expected]


def test_data_dct_scaling_reaches_the_train_loaders_decoder(betons, tmp_path):
    dist = Dist(rank=0, local_rank=0, world_size=1, device=CPU)
    for flag in (0, 1):
        config = parse_config('t', tiny_args(betons, tmp_path, f'--data.dct_scaling={flag}'),
                              SECTIONS)
        train, val = recipe._loaders(config, dist, resolve_precision('off', CPU), *betons,
                                     8, None, 1)
        assert train.decoder.dct_scaling is bool(flag)
        assert val.decoder.dct_scaling is False  # validation decodes at full size
    default = parse_config('t', tiny_args(betons, tmp_path), SECTIONS)
    assert default['data.dct_scaling'] == 0


def test_the_run_decodes_on_its_share_of_the_cores_unless_told_and_says_so(
        betons, tmp_path, monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    cores = len(os.sched_getaffinity(0))
    dist = Dist(rank=0, local_rank=0, world_size=1, device=CPU)
    before = torch.get_num_threads()
    try:
        auto = recipe.build_run(parse_config(
            't', tiny_args(betons, tmp_path, '--data.num_workers=0'), SECTIONS), dist)
        assert auto.train_loader.num_workers == auto.val_loader.num_workers \
            == max(1, cores - 1)
        assert torch.get_num_threads() == cores  # a CPU process: torch gets the share
        line = (f"threads per process: {max(1, cores - 1)} decoding ({cores} cores / 1 "
                f"process(es) - 1 for the main thread), {cores} torch")
        assert any(note.startswith(line) for note in auto.notes)
        monkeypatch.setenv('OMP_NUM_THREADS', '1')
        asked = recipe.build_parts(parse_config(
            't', tiny_args(betons, tmp_path, f'--data.num_workers={cores}'), SECTIONS), dist)
        assert asked.train_loader.num_workers == cores and torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match=f'data.num_workers: {cores + 1} decoding '):
            recipe.build_parts(parse_config('t', tiny_args(
                betons, tmp_path, f'--data.num_workers={cores + 1}'), SECTIONS), dist)
    finally:
        torch.set_num_threads(before)


def test_a_block_order_over_a_file_in_class_order_says_so_in_one_line(
        betons, tmp_path, capsys, monkeypatch):
    # the test .betons are written in the order listed, one class after the other
    notes = _notes_of_a_run(betons, tmp_path / 'blocks', capsys, monkeypatch,
                            '--data.order=blocks')
    assert notes == [f"note: data.order=blocks reads {betons[0]} a few pages at a time, and "
                     f"it was written in the order listed (one class after the other): "
                     f"each batch will hold few classes; convert it again with --shuffle SEED"]
    assert _notes_of_a_run(betons, tmp_path / 'random', capsys, monkeypatch) == []
