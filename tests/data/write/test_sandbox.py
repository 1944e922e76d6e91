"""The disposable decoder processes: every item gets an Outcome, whatever it does."""
import os
import signal
import time


from ffcv_imagenet.data.write.sandbox import Limits, Sandbox, run_each


def misbehave(item):
    """Doubles a number; the strings are the ways a decoder goes wrong."""
    if item == 'hang':
        time.sleep(120)
    elif item == 'die':
        os.kill(os.getpid(), signal.SIGKILL)
    elif item == 'exit':
        os._exit(3)
    elif item == 'allocate':
        bytearray(2**30)
    elif item == 'raise':
        raise NotImplementedError('Unimplemented DXGI format 93')
    elif item == 'print':
        os.write(2, b'\nTIFFReadDirectory: Warning, unknown field\nmore\n')
        raise OSError('decoder error -2')
    return item * 2


LIMITS = Limits(seconds=1, memory_mb=256)
EXPECTED = {'hang': 'took longer than 1 s', 'die': 'worker died (signal 9)',
            'exit': 'worker died (exit code 3)',
            'allocate': 'MemoryError (limit: 256 MiB per image)',
            'raise': 'NotImplementedError: Unimplemented DXGI format 93',
            'print': 'OSError: decoder error -2'}


def test_every_item_gets_its_outcome_and_the_rest_still_run():
    items = list(range(30)) + list(EXPECTED) + list(range(30, 60))
    start = time.monotonic()
    outcomes = dict(run_each(misbehave, items, LIMITS, workers=2, batch_size=8))
    assert time.monotonic() - start < 20
    assert sorted(outcomes) == list(range(len(items)))  # items behind a dead one re-sent
    for index, item in enumerate(items):
        outcome = outcomes[index]
        if isinstance(item, int):
            assert (outcome.value, outcome.error) == (item * 2, None)
        else:
            assert outcome.error.startswith(EXPECTED[item]), (item, outcome)
    assert outcomes[items.index('print')].stderr == 'TIFFReadDirectory: Warning, unknown field'


def test_what_a_child_prints_is_captured_not_shown(capfd):
    [(_, outcome)] = run_each(misbehave, ['print'], LIMITS, workers=1)
    assert outcome.stderr.startswith('TIFFReadDirectory')
    assert 'TIFF' not in capfd.readouterr().err


def test_a_sandbox_recovers_from_each_failure_in_turn():
    sandbox = Sandbox(misbehave, LIMITS)
    try:
        for item in ['hang', 'die', 'allocate', 'raise', 'exit']:
            outcomes = sandbox.map([1, item, 21])
            assert [o.value for o in outcomes] == [2, None, 42]
            assert outcomes[1].error.startswith(EXPECTED[item])
    finally:
        sandbox.close()


def test_arrays_come_back_through_shared_memory_until_the_next_call():
    import numpy as np
    sandbox = Sandbox(lambda n: np.full((n, 3), n % 100, np.uint8), LIMITS, buffer_mb=1)
    try:
        small, big = sandbox.map([2, 500_000])  # the big one does not fit: pickled
        assert small.value.tolist() == [[2] * 3] * 2 and not small.value.flags.writeable
        assert big.value.shape == (500_000, 3) and (big.value == 0).all() and big.error is None
        assert [o.value.sum() for o in sandbox.map([4, 5])] == [48, 75]
    finally:
        sandbox.close()


def test_no_limits_means_none():
    [(_, outcome)] = run_each(misbehave, [5], Limits(seconds=0, memory_mb=0), workers=1)
    assert outcome.value == 10

