"""Stop signals and the period of last.pt (training/preempt.py)."""
import os
import signal
import time

import pytest

from ffcv_imagenet.training.preempt import CheckpointPeriod, StopSignals


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
