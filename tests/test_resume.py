"""Stopping a training run and continuing it (--checkpoint.resume=auto or a path): an
interrupted run ends where an unbroken one does (also with an EMA and across a stage
boundary); a scheduler's stop signal saves the step inside the epoch and a resume
continues exactly, on one process and under torchrun (where rank 0 alone logs and the
ranks share each epoch), also on another number of processes; kill -9 and torn checkpoints; a failing rank ends the job; what a resume
refuses."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_imagenet
from ffcv_imagenet.cli.config import ConfigError
from ffcv_imagenet.training.checkpoint import (CheckpointError, checkpoint_dir, load_checkpoint,
                                               save_checkpoint)
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.preempt import PREEMPTED_EXIT
from tests.support import (FEATURES, ROOT, STAGED, assert_same_weights, tiny_args, train_tiny,
                           weights)


# --- an interrupted run, resumed at an epoch boundary ------------------------------------

def test_resume_after_an_interruption_matches_an_uninterrupted_run(betons, full_run,
                                                                   tmp_path):
    folder = tmp_path / 'split'
    assert train_imagenet.main(tiny_args(betons, folder, '--training.stop_after=1')) == 0
    assert load_checkpoint(checkpoint_dir(folder) / 'last.pt')['epoch'] == 1
    assert not (checkpoint_dir(folder) / 'final.pt').exists()
    assert train_imagenet.main(tiny_args(betons, folder, '--checkpoint.resume=auto')) == 0
    assert_same_weights(weights(checkpoint_dir(full_run) / 'final.pt'),
                        weights(checkpoint_dir(folder) / 'final.pt'))
    whole, split = read_log(full_run, 'epoch'), read_log(folder, 'epoch')
    for key in ('train_loss', 'train_top1', 'val_loss', 'val_top1', 'lr', 'resolution'):
        assert [e[key] for e in whole] == [e[key] for e in split], key
    assert [e['event'] for e in read_log(folder)] == ['start', 'epoch', 'end', 'resume',
                                                      'epoch', 'end']


def test_resume_restores_the_ema_exactly(betons, featured, tmp_path):
    folder = train_tiny(betons, tmp_path / 'run', *FEATURES, '--training.stop_after=1')
    assert read_log(folder, 'epoch')[-1]['epoch'] == 1
    train_tiny(betons, folder, *FEATURES, '--checkpoint.resume=auto')
    resumed = load_checkpoint(checkpoint_dir(folder) / 'final.pt')
    unbroken = load_checkpoint(checkpoint_dir(featured) / 'final.pt')
    for part in ('model', 'ema'):
        a = resumed[part] if part == 'model' else resumed[part]['module']
        b = unbroken[part] if part == 'model' else unbroken[part]['module']
        for key in a:
            assert torch.equal(a[key], b[key]), (part, key)
    assert read_log(folder, 'epoch')[-1]['ema_val_top1'] == \
        read_log(featured, 'epoch')[-1]['ema_val_top1']


def test_changing_the_best_metric_on_resume_tracks_the_best_afresh(betons, tmp_path):
    ema = ('--ema.enabled=1', '--ema.decay=0.9')
    folder = train_tiny(betons, tmp_path / 'run', *ema, '--training.stop_after=1')
    first = read_log(folder, 'epoch')[0]
    train_tiny(betons, folder, *ema, '--checkpoint.best_metric=ema_val_top1',
               '--checkpoint.resume=auto')
    second = read_log(folder, 'epoch')[-1]
    assert first['best_val_top1'] == first['val_top1']
    # epoch 2 is the first epoch judged by the EMA metric, so it is the best so far
    assert second['best_ema_val_top1'] == second['ema_val_top1']
    assert load_checkpoint(checkpoint_dir(folder) / 'best.pt')['epoch'] == 2


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


# --- what a resume refuses, and a fresh run in a used folder -----------------------------

def test_a_fresh_run_refuses_a_folder_with_checkpoints(betons, full_run):
    before = (checkpoint_dir(full_run) / 'last.pt').read_bytes()
    with pytest.raises(ConfigError, match='checkpoint.resume=auto'):
        train_imagenet.main(tiny_args(betons, full_run))
    assert (checkpoint_dir(full_run) / 'last.pt').read_bytes() == before


def test_auto_resume_in_an_empty_folder_starts_fresh(betons, tmp_path, capsys):
    args = tiny_args(betons, tmp_path / 'new', '--checkpoint.resume=auto',
                     '--training.epochs=1', '--lr.peak_epoch=0.5', '--validation.every=5')
    assert train_imagenet.main(args) == 0
    assert 'starting fresh' in capsys.readouterr().err
    assert read_log(tmp_path / 'new', 'epoch')[0]['val_top1'] is not None  # last epoch


@pytest.mark.parametrize('change, error, message', [
    ('--training.batch_size=4', ConfigError,
     'training.batch_size: .*global batch of 1 x 8 = 8 .*1 x 4 = 4.*global_batch_size=8'),
    ('--model.arch=resnet50', CheckpointError, 'resnet18 with 4 classes.*resnet50'),
])
def test_resuming_an_incompatible_checkpoint_is_refused(betons, full_run, tmp_path, change,
                                                       error, message):
    final = checkpoint_dir(full_run) / 'final.pt'
    args = tiny_args(betons, tmp_path / 'x', change, f'--checkpoint.resume={final}')
    with pytest.raises(error, match=message):
        train_imagenet.main(args)


def test_resuming_with_other_stages_is_refused(betons, staged_run, tmp_path):
    final = checkpoint_dir(staged_run) / 'final.pt'
    with pytest.raises(ConfigError, match='resolution.stages'):
        train_imagenet.main(tiny_args(betons, tmp_path / 'x', f'--checkpoint.resume={final}',
                                      '--resolution.stages=0:32:8,1:48:8'))


def test_a_checkpoint_older_than_the_decay_rule_resumes_and_keeps_its_rule(betons, full_run,
                                                                           tmp_path):
    """Checkpoints from before optimizer.decay_rule (and training.parity) hold the
    default rule's parameter groups: they resume as before; another rule is refused."""
    saved = load_checkpoint(checkpoint_dir(full_run) / 'final.pt')
    for key in ('optimizer.decay_rule', 'training.parity', 'lr.start_fraction',
                'lr.interpolate_epochs'):
        del saved['config'][key]
    older = save_checkpoint(saved, tmp_path / 'older.pt')
    with pytest.raises(ConfigError, match=r'^optimizer.decay_rule: .*older.pt was trained '
                                          r'with types; its state cannot continue as names$'):
        train_imagenet.main(tiny_args(betons, tmp_path / 'parity', '--training.parity=ffcv',
                                      f'--checkpoint.resume={older}', '--training.epochs=3'))
    # restoring the optimizer is what a different grouping would break; evaluating the
    # checkpoint restores everything without the cost of an epoch
    assert train_imagenet.main(tiny_args(betons, tmp_path / 'resumed', '--training.eval_only=1',
                                         f'--checkpoint.resume={older}')) == 0


# --- a scheduler's stop signal inside an epoch, kill -9, a failing rank ------------------

# torchrun forwards only these to its workers unless told; Slurm's --signal is SIGUSR1
FORWARD = '--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1'


def _launch(args, processes):
    """Starts a training run: one plain process, or torchrun with ``processes``."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    command = [sys.executable, 'train_imagenet.py']
    if processes > 1:
        command = [sys.executable, '-m', 'torch.distributed.run', FORWARD,
                   f'--nproc_per_node={processes}', '--standalone', 'train_imagenet.py']
    return subprocess.Popen([*command, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(child, timeout=600):
    out, err = child.communicate(timeout=timeout)
    return child.returncode, out, err


def _run(args, processes):
    return _finish(_launch(args, processes))


def _preempt(args, folder, processes, signum, timeout=300):
    """Runs ``args`` (run folder ``folder``) with a checkpoint every 0.3 s of training
    and sends ``signum`` to the launcher once the first one is on disk (so inside
    epoch 1, as a scheduler would, some time into the run). Returns (exit code,
    stderr)."""
    child = _launch([*args, '--checkpoint.last_every=0.3s'], processes)
    deadline = time.monotonic() + timeout
    while not (checkpoint_dir(folder) / 'last.pt').exists():
        assert child.poll() is None, child.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(signum)
    code, _, err = _finish(child)
    return code, err


def _same_weights(a, b):
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first['iteration'] == second['iteration']
    for part in ('model', 'optimizer'):
        left, right = first[part], second[part]
        if part == 'optimizer':
            left = {k: v['momentum_buffer'] for k, v in left['state'].items()}
            right = {k: v['momentum_buffer'] for k, v in right['state'].items()}
        assert left.keys() == right.keys()
        different = [key for key in left if not torch.equal(left[key], right[key])]
        assert not different, f"{part}: {different[:5]} differ"


CASES = {  # processes, extra arguments, signal, launcher's exit code after the signal
    'one process, SIGTERM': (1, ['--training.batch_size=4'], signal.SIGTERM,
                             PREEMPTED_EXIT),
    'torchrun x2, SIGUSR1': (2, ['--training.global_batch_size=8'], signal.SIGUSR1, 1),
}


# each case's tests on one pytest-xdist worker (make test's --dist loadgroup), which
# then runs the two training runs of its fixture once
@pytest.fixture(scope='module', params=[
    pytest.param(case, marks=pytest.mark.xdist_group(f'preempted{i}'))
    for i, case in enumerate(CASES)])
def preempted(request, betons, tmp_path_factory):
    """(case, a preempted run folder (read-only: copy it), an unbroken run folder,
    the arguments for a folder, the unbroken run's stderr)."""
    processes, extra, signum, code = CASES[request.param]
    base = tmp_path_factory.mktemp('preempt')
    args = lambda folder: tiny_args(betons, folder, '--training.epochs=3',  # noqa: E731
                                    '--ema.enabled=1', '--logging.log_every=1', *extra)
    returncode, err = _preempt(args(base / 'stopped'), base / 'stopped', processes, signum)
    assert returncode == code, err[-3000:]
    unbroken, _, err = _run(args(base / 'unbroken'), processes)
    assert unbroken == 0, err[-3000:]
    yield request.param, base / 'stopped', base / 'unbroken', args, err
    shutil.rmtree(base)  # about 270 MB of checkpoints, not kept to the session's end


@pytest.mark.slow
def test_rank_0_alone_reports_and_the_ranks_share_each_epoch(preempted):
    """The unbroken run (one process, or two under torchrun with gloo): one start
    line, one log line per epoch, and the 48 training images of an epoch split
    between the ranks (as many steps as global batches)."""
    case, _, unbroken, _, err = preempted
    processes = CASES[case][0]
    assert err.count('new run in') == 1
    start, = read_log(unbroken, 'start')
    assert start['world_size'] == processes
    global_batch = load_checkpoint(checkpoint_dir(unbroken) / 'final.pt')['batch'] * processes
    assert global_batch == (4 if processes == 1 else 8)
    epochs = read_log(unbroken, 'epoch')
    assert [e['epoch'] for e in epochs] == [1, 2, 3]
    assert [e['iteration'] for e in epochs] == [48 // global_batch * k for k in (1, 2, 3)]
    assert all(e['images_per_sec'] > 0 and 0 <= e['val_top1'] <= 1 for e in epochs)


@pytest.mark.slow
def test_a_stop_signal_saves_the_step_and_resume_continues_exactly(preempted, tmp_path):
    case, stopped, unbroken, args, _ = preempted
    processes = CASES[case][0]
    marker = json.loads((stopped / 'preempted').read_text())
    assert marker['signal'] == CASES[case][2].name
    saved = load_checkpoint(checkpoint_dir(stopped) / 'last.pt')
    assert (saved['epoch'], saved['step'], saved['iteration']) == (
        marker['epoch'], marker['step'], marker['iteration'])
    assert 0 < saved['step'], "the stop was meant to land inside an epoch"
    event, = read_log(stopped, 'preempted')
    assert event['step'] == marker['step']

    folder = tmp_path / 'run'
    shutil.copytree(stopped, folder)
    code, _, err = _run([*args(folder), '--checkpoint.resume=auto'], processes)
    assert code == 0, err[-3000:]
    assert 'continuing after a stop by' in err
    assert not (folder / 'preempted').exists()
    # one writer of the log, whatever the number of ranks
    done = marker['epoch']  # epochs finished before the stop
    assert [e['event'] for e in read_log(folder)] == [
        'start', *['epoch'] * done, 'preempted', 'resume', *['epoch'] * (3 - done), 'end']
    _same_weights(checkpoint_dir(folder) / 'final.pt', checkpoint_dir(unbroken) / 'final.pt')
    resumed = {e['epoch']: e for e in read_log(folder, 'epoch')}
    for expected in read_log(unbroken, 'epoch'):
        got = resumed[expected['epoch']]
        for key in ('train_loss', 'train_top1', 'val_top1', 'ema_val_top1'):
            assert got[key] == pytest.approx(expected[key], rel=1e-9), key


@pytest.mark.slow
def test_resuming_on_another_number_of_processes_keeps_the_global_batch(preempted,
                                                                         tmp_path):
    """1 -> 2 and 2 -> 1 processes: the run continues from the same step with the
    same global batch; a run that would change the global batch is refused."""
    case, stopped, unbroken, args, _ = preempted
    processes = 3 - CASES[case][0]
    global_batch = load_checkpoint(checkpoint_dir(stopped) / 'last.pt')['batch'] * \
        CASES[case][0]
    folder = tmp_path / 'run'
    shutil.copytree(stopped, folder)
    wrong = global_batch if processes > 1 else global_batch // 2  # per process
    refused, _, err = _run([*args(folder), '--checkpoint.resume=auto',
                            f'--training.batch_size={wrong}',
                            '--training.global_batch_size=0'], processes)
    # torchrun reports every failed worker as 1; the line is printed once either way
    assert refused == (2 if processes == 1 else 1), err[-3000:]
    assert err.count('error: training.batch_size:') == 1, err[-3000:]
    assert f'global_batch_size={global_batch}' in err
    code, _, err = _run([*args(folder), '--checkpoint.resume=auto',
                         f'--training.global_batch_size={global_batch}'], processes)
    assert code == 0, err[-3000:]
    assert f'resuming on {processes} process(es)' in err
    final = load_checkpoint(checkpoint_dir(folder) / 'final.pt')
    assert final['iteration'] == load_checkpoint(checkpoint_dir(unbroken) / 'final.pt')[
        'iteration']
    assert final['world_size'] == processes


@pytest.mark.slow
@pytest.mark.parametrize('fail_rank', ['0', '1'])
def test_a_failing_rank_ends_the_job_promptly_and_its_error_shows_once(betons, tmp_path,
                                                                        fail_rank):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'FAIL_RANK': fail_rank, 'FAIL_STEP': '3'}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--standalone',
         '-m', 'tests.support', *tiny_args(betons, tmp_path / 'run',
                                            '--training.global_batch_size=8')],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - start
    assert done.returncode != 0
    assert done.stderr.count(f'simulated out of memory in rank {fail_rank}') == 1, \
        done.stderr[-3000:]
    survivor = str(1 - int(fail_rank))
    assert f'simulated out of memory in rank {survivor}' not in done.stderr
    assert 'Traceback' not in done.stderr.split('simulated out of memory')[1].split(
        'torch.distributed.elastic')[0], "the surviving rank printed a second traceback"
    assert took < 120, f"the job took {took:.0f} s to end"
    assert not (checkpoint_dir(tmp_path / 'run') / 'last.pt').exists()


@pytest.mark.slow
def test_after_kill_9_resume_auto_continues_and_skips_what_it_cannot_read(betons, tmp_path,
                                                                         capsys):
    """SIGKILL gives no warning: the run continues from the newest checkpoint on disk;
    a torn one is skipped with a note; if none can be read the run stops (exit 2)."""
    killed = tmp_path / 'killed'
    args = lambda folder: tiny_args(betons, folder, '--training.epochs=3',  # noqa: E731
                                    '--training.batch_size=4', '--checkpoint.every=1')
    child = _launch([*args(killed), '--checkpoint.last_every=0.3s'], 1)
    deadline = time.monotonic() + 300
    while not (checkpoint_dir(killed) / 'epoch_0001.pt').exists():
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.communicate()

    # as left: every checkpoint on disk is whole (each written to a temporary file, then
    # renamed), last.pt the newest, so resume=auto continues from it as after any stop
    saved = {path.name: load_checkpoint(path) for path in checkpoint_dir(killed).glob('*.pt')}
    assert saved['last.pt']['iteration'] >= saved['epoch_0001.pt']['iteration'] == 12
    for case in ('torn last.pt', 'all torn'):
        folder = tmp_path / case.replace(' ', '_')
        shutil.copytree(killed, folder)
        for path in checkpoint_dir(folder).glob('*.pt'):
            if case == 'all torn' or path.name == 'last.pt':
                path.write_bytes(path.read_bytes()[:1000])
        capsys.readouterr()
        # in this process (the kill needed one of its own; the resumes do not)
        code = train_imagenet.run([*args(folder), '--checkpoint.resume=auto'])
        err = capsys.readouterr().err
        if case == 'all torn':
            assert code == 2 and err.strip().startswith('error: no readable checkpoint in'), err
            assert len(err.strip().splitlines()) == 1
            continue
        assert code == 0, err[-3000:]
        assert load_checkpoint(checkpoint_dir(folder) / 'final.pt')['iteration'] == 36
        if case == 'torn last.pt':
            assert 'skipping cannot read checkpoint' in err and 'last.pt' in err
            resumed_from = [line for line in err.splitlines() if 'resuming from' in line]
            assert resumed_from and not resumed_from[0].endswith('last.pt')
