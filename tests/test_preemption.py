"""A scheduler's stop signal, mid-epoch checkpoints and resuming them exactly, on one
process and under torchrun, also on another number of processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ffcv_imagenet.data.read.loaders import train_loader
from ffcv_imagenet.training.checkpoint import checkpoint_dir, load_checkpoint
from ffcv_imagenet.training.logs import read_log
from ffcv_imagenet.training.preempt import PREEMPTED_EXIT, CheckpointPeriod, StopSignals
from train_args import tiny_args

ROOT = Path(__file__).resolve().parents[1]
# torchrun forwards only these to its workers unless told; Slurm's --signal is SIGUSR1
FORWARD = '--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1'


@pytest.mark.parametrize('text, epochs, seconds', [
    ('1', 1, 0), (3, 3, 0), ('2e', 2, 0), ('30m', 0, 1800), ('1.5h', 0, 5400),
    ('90s', 0, 90), (' 45 min ', 0, 2700)])
def test_one_setting_gives_a_period_in_epochs_or_in_time(text, epochs, seconds):
    period = CheckpointPeriod.parse(text)
    assert (period.epochs, period.seconds) == (epochs, seconds)


@pytest.mark.parametrize('text', ['0', '-1', '1.5', 'often', '10x', '', '0m'])
def test_a_bad_period_is_refused(text):
    with pytest.raises(ValueError, match='expected a positive|must be whole'):
        CheckpointPeriod.parse(text)


def test_periods_fall_due():
    assert [CheckpointPeriod(epochs=2).due_at_epoch_end(e) for e in (1, 2, 3, 4)] == \
        [False, True, False, True]
    by_time = CheckpointPeriod(epochs=0, seconds=60)
    assert not by_time.due_at_epoch_end(1)
    assert not by_time.due_by_time(100.0, 159.0) and by_time.due_by_time(100.0, 160.0)


def test_stop_signals_are_recorded_and_the_old_handlers_come_back():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        assert stop.received is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # the first one is what is reported
        time.sleep(0.01)
        assert stop.received == 'SIGUSR1'
    assert signal.getsignal(signal.SIGUSR1) is before


def test_start_batch_continues_the_epoch_where_it_stopped(betons):
    """The batches after ``start_batch`` are those an unbroken epoch yields from
    there: same images, same order, same random crops."""
    def epoch_batches(start):
        loader = train_loader(betons[0], batch_size=8, resolution=32, num_workers=2,
                              seed=5)
        loader.epoch, loader.start_batch = 1, start
        assert len(loader) == 6 - start
        return [(images.clone(), labels.clone()) for images, labels in loader]
    whole, rest = epoch_batches(0), epoch_batches(2)
    assert len(rest) == 4
    for (images, labels), (again, again_labels) in zip(whole[2:], rest):
        assert torch.equal(labels, again_labels) and torch.equal(images, again)


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


@pytest.fixture(scope='module', params=list(CASES))
def preempted(request, betons, tmp_path_factory):
    """(case, a preempted run folder (read-only: copy it), an unbroken run folder)."""
    processes, extra, signum, code = CASES[request.param]
    base = tmp_path_factory.mktemp('preempt')
    args = lambda folder: tiny_args(betons, folder, '--training.epochs=3',  # noqa: E731
                                    '--ema.enabled=1', '--logging.log_every=1', *extra)
    returncode, err = _preempt(args(base / 'stopped'), base / 'stopped', processes, signum)
    assert returncode == code, err[-3000:]
    unbroken, _, err = _run(args(base / 'unbroken'), processes)
    assert unbroken == 0, err[-3000:]
    return request.param, base / 'stopped', base / 'unbroken', args


@pytest.mark.slow
def test_a_stop_signal_saves_the_step_and_resume_continues_exactly(preempted, tmp_path):
    case, stopped, unbroken, args = preempted
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
    case, stopped, unbroken, args = preempted
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
         'tests/fault_rank.py', *tiny_args(betons, tmp_path / 'run',
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
def test_after_kill_9_resume_auto_continues_and_skips_what_it_cannot_read(betons, tmp_path):
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

    for case in ('as left', 'torn last.pt', 'all torn'):
        folder = tmp_path / f"case{('as left', 'torn last.pt', 'all torn').index(case)}"
        shutil.copytree(killed, folder)
        if case != 'as left':
            for path in checkpoint_dir(folder).glob('*.pt'):
                if case == 'all torn' or path.name == 'last.pt':
                    path.write_bytes(path.read_bytes()[:1000])
        code, _, err = _run([*args(folder), '--checkpoint.resume=auto'], 1)
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
