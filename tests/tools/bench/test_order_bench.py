"""bench order (tools/bench/order.py): a file to read is written at the size asked;
each order reads one epoch from disk; the simulated classes per batch show what the
page-local order costs a file written in class order, and that a shuffled file costs
nothing."""
import pytest

from ffcv_imagenet.tools.bench import command
from ffcv_imagenet.data.read.orders import ORDERS
from ffcv_imagenet.tools.bench.order import class_diversity, make_beton, read_one_epoch


@pytest.mark.slow
def test_each_order_reads_a_whole_epoch_from_disk(tmp_path):
    beton = tmp_path / 'noise.beton'
    count = make_beton(beton, 0.01, classes=4)
    assert count == int(0.01e9 // (500 * 375 * 3)) and beton.stat().st_size > 0.01e9
    # in this process (the command runs each in a fresh one, for its peak memory)
    rows = [read_one_epoch(str(beton), order, 4, 32, 1, 2, 0) for order in ORDERS]
    for row in rows:
        assert row['images'] == count - count % 4  # drop_last, one process
        assert row['images_per_sec'] > 0 and row['peak_rss_mib'] > 0
        assert row['resident_after_evict'] == 0  # every page came from the disk
        assert 0 <= row['disk_bytes_read'] <= 2 * beton.stat().st_size


def test_blocks_cost_a_file_in_class_order_its_diversity_and_a_shuffled_one_nothing():
    rows = {(r['file'], r['order']): r for r in class_diversity(
        classes=50, per_class=64, images_per_page=16, batch_size=64, world_size=2,
        window=2, batches=20)}
    random = rows['shuffled', 'random']['mean_classes']
    assert rows['class order', 'blocks']['mean_classes'] < random / 3
    assert rows['shuffled', 'blocks']['mean_classes'] == pytest.approx(random, rel=0.1)
    assert rows['class order', 'random']['mean_classes'] == pytest.approx(random, rel=0.1)


def test_the_command_asks_for_something_to_do(capsys):
    with pytest.raises(SystemExit):
        command.main(['order'])
    assert 'give --beton, --make-beton or --diversity' in capsys.readouterr().err
