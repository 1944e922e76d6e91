import random

import numpy as np
import pytest
import torch
from torch import nn

from ffcv_imagenet.training import checkpoint as ckpt
from ffcv_imagenet.training.checkpoint import (CheckpointError, check_compatible,
                                               find_latest, load_checkpoint, save_checkpoint)
from ffcv_imagenet.training.models import build_model
from ffcv_imagenet.training.optim import build_sgd, param_groups, resolve_precision


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_no_weight_decay_on_any_norm_parameter_or_bias(arch):
    model = build_model(arch, 10, blurpool=True)
    decay, no_decay = param_groups(model, 1e-4)
    assert decay['weight_decay'] == 1e-4 and no_decay['weight_decay'] == 0.0
    decayed = {id(p) for p in decay['params']}
    names = {id(p): name for name, p in model.named_parameters()}
    norm_or_bias = {name for name, p in model.named_parameters()
                    if name.endswith('bias') or p.ndim == 1}
    # downsample BatchNorms ('layerN.0.downsample.1') have no 'bn' in their names
    assert any('downsample.1' in name for name in norm_or_bias)
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.BatchNorm2d) or name == 'bias':
                assert id(param) not in decayed, f"{module_name}.{name}"
            else:
                assert isinstance(module, (nn.Conv2d, nn.Linear))
                assert id(param) in decayed, f"{module_name}.{name}"
    every = [names[id(p)] for p in decay['params'] + no_decay['params']]
    assert sorted(every) == sorted(names.values())  # each parameter exactly once


def test_sgd_options():
    model = build_model('resnet18', 10)
    optimizer = build_sgd(model, lr=0.1, momentum=0.9, weight_decay=5e-5, nesterov=True)
    assert [g['weight_decay'] for g in optimizer.param_groups] == [5e-5, 0.0]
    assert all(g['nesterov'] and g['momentum'] == 0.9 for g in optimizer.param_groups)
    with pytest.raises(ValueError, match='nesterov'):
        build_sgd(model, lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=True)


def test_precision_choices_on_the_cpu():
    cpu = torch.device('cpu')
    assert resolve_precision('auto', cpu).dtype is None
    bf16 = resolve_precision('bf16', cpu)
    assert bf16.dtype == torch.bfloat16 and not bf16.needs_scaler
    assert not bf16.scaler().is_enabled()
    with bf16.autocast():
        assert nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match='fp16 needs a CUDA device'):
        resolve_precision('fp16', cpu)
    with pytest.raises(ValueError, match='unknown precision'):
        resolve_precision('fp8', cpu)


def _state(iteration, arch='resnet18', classes=('a', 'b')):
    return {'arch': arch, 'num_classes': len(classes), 'classes': list(classes),
            'model': {'w': torch.full((3,), float(iteration))}, 'epoch': iteration,
            'iteration': iteration, 'rng': ckpt.rng_state()}


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    save_checkpoint(_state(1), path)
    before = path.read_bytes()
    real_save = torch.save

    def crash_half_way(obj, handle):
        real_save(obj, handle)
        handle.truncate(handle.tell() // 2)  # a torn file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(2), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)['iteration'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['last.pt']  # no temporary left


def test_copies_are_atomic_and_equal(tmp_path):
    source = save_checkpoint(_state(3), tmp_path / 'last.pt')
    copy = ckpt.copy_checkpoint(source, tmp_path / 'best.pt')
    assert copy.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.pt', 'last.pt']


def test_bad_checkpoint_files_are_named_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match='checkpoint not found: .*missing.pt'):
        load_checkpoint(tmp_path / 'missing.pt')
    (tmp_path / 'junk.pt').write_bytes(b'not a zip file')
    with pytest.raises(CheckpointError, match='cannot read checkpoint .*junk.pt') as err:
        load_checkpoint(tmp_path / 'junk.pt')
    assert '\n' not in str(err.value)
    torch.save({'state_dict': {}}, tmp_path / 'other.pt')
    with pytest.raises(CheckpointError, match='not an ffcv_imagenet checkpoint'):
        load_checkpoint(tmp_path / 'other.pt')


def test_compatibility_check_names_both_sides(tmp_path):
    state = _state(1)
    check_compatible(state, 'x.pt', arch='resnet18', classes=['a', 'b'])
    with pytest.raises(CheckpointError, match='resnet18 with 2 classes.*resnet50 with 2'):
        check_compatible(state, 'x.pt', arch='resnet50', classes=['a', 'b'])
    with pytest.raises(CheckpointError, match='resnet18 with 2 classes.*resnet18 with 3'):
        check_compatible(state, 'x.pt', arch='resnet18', classes=['a', 'b', 'c'])
    with pytest.raises(CheckpointError, match='different class list'):
        check_compatible(state, 'x.pt', arch='resnet18', classes=['b', 'a'])


def test_find_latest_takes_the_furthest_checkpoint(tmp_path):
    assert find_latest(tmp_path) == (None, [])
    folder = ckpt.checkpoint_dir(tmp_path)
    save_checkpoint(_state(30), folder / 'epoch_0003.pt')
    save_checkpoint(_state(20), folder / 'best.pt')
    assert find_latest(tmp_path)[0].name == 'epoch_0003.pt'
    save_checkpoint(_state(30), folder / 'last.pt')
    assert find_latest(tmp_path)[0].name == 'last.pt'  # same step: prefer last
    (folder / 'zz_broken.pt').write_bytes(b'junk')
    latest, skipped = find_latest(tmp_path)
    assert latest.name == 'last.pt'
    assert len(skipped) == 1 and 'zz_broken.pt' in skipped[0]


def test_find_latest_refuses_a_folder_of_only_unreadable_checkpoints(tmp_path):
    folder = ckpt.checkpoint_dir(tmp_path)
    save_checkpoint(_state(30), folder / 'last.pt')
    data = (folder / 'last.pt').read_bytes()
    (folder / 'last.pt').write_bytes(data[:len(data) // 2])  # a torn copy
    (folder / 'best.pt').write_bytes(b'')
    with pytest.raises(CheckpointError, match='no readable checkpoint') as err:
        find_latest(tmp_path)
    assert '\n' not in str(err.value) and str(folder) in str(err.value)


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A full disk in the middle of a save: one clear line, the old file intact, no
    temporary file left behind."""
    import errno
    path = tmp_path / 'last.pt'
    save_checkpoint(_state(10), path)
    before = path.read_bytes()

    def fill_the_disk(obj, handle):
        handle.write(b'x' * 1000)
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(ckpt.torch, 'save', fill_the_disk)
    with pytest.raises(CheckpointError, match='No space left on device.*previous last.pt '
                                              'is intact'):
        save_checkpoint(_state(20), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pt']


def test_kill_9_while_saving_leaves_a_readable_checkpoint(tmp_path):
    """A process that rewrites last.pt in a loop is killed with SIGKILL at several
    moments; every time the file that is left loads, and the leftover temporary file
    is cleared by the next save."""
    import signal
    import subprocess
    import sys
    import time
    script = (
        "import sys, torch\n"
        "from ffcv_imagenet.training.checkpoint import save_checkpoint\n"
        "weights = torch.randn(2_000_000)\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    save_checkpoint({'iteration': i, 'epoch': 0, 'w': weights}, sys.argv[1])\n")
    path = tmp_path / 'checkpoints' / 'last.pt'
    seen = []
    for delay in (0.3, 0.55, 0.8, 1.05):
        child = subprocess.Popen([sys.executable, '-c', script, str(path)],
                                 cwd=ckpt.Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        seen.append(load_checkpoint(path)['iteration'])
        assert find_latest(tmp_path)[0] == path
    assert all(i >= 1 for i in seen)
    save_checkpoint(_state(1), path)
    assert [p.name for p in path.parent.iterdir()] == ['last.pt']


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    path = save_checkpoint(_state(1), tmp_path / 'rng.pt')
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(load_checkpoint(path)['rng'])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
