"""The orders a rank reads a .beton in (data/read/orders.py): the random order and the
page-local one each cover the split once per epoch across ranks, are the same for the
same (seed, epoch, rank, world size) and change with each; the page-local order deals
whole pages to ranks, shuffles only within its windows, and gives equal shards when
asked; on a real file its blocks are the file's pages."""
import numpy as np
import pytest

from ffcv_imagenet.data.read.loaders import train_loader
from ffcv_imagenet.data.read.orders import ShardedOrder, block_order, blocks_of, \
    epoch_order, sample_pages

# 40 samples on 7 pages of unequal sizes, pages not in sample order
PAGES = np.array([3] * 6 + [0] * 5 + [5] * 7 + [1] * 4 + [6] * 8 + [2] * 3 + [4] * 7)
BLOCKS = blocks_of(np.arange(len(PAGES)), PAGES)


def test_blocks_are_the_samples_of_each_page_in_page_order():
    assert [PAGES[block[0]] for block in BLOCKS] == list(range(7))
    for block in BLOCKS:
        assert len(set(PAGES[block])) == 1 and list(block) == sorted(block)
    assert sorted(np.concatenate(BLOCKS).tolist()) == list(range(len(PAGES)))


@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_the_block_order_covers_the_split_once_across_ranks(world_size):
    shards = [block_order(BLOCKS, 5, 2, rank=r, world_size=world_size, window=2)
              for r in range(world_size)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(len(PAGES)))


def test_each_rank_reads_whole_pages_and_shuffles_only_within_a_window():
    window = 2
    for rank in range(3):
        order = block_order(BLOCKS, 5, 2, rank=rank, world_size=3, window=window)
        pages = PAGES[order]
        # the pages of a rank are disjoint from the others' and each is read whole
        for page in set(pages.tolist()):
            assert (pages == page).sum() == (PAGES == page).sum()
        # in window-sized runs of pages: once a window's pages are done, none returns
        seen, current = [], set()
        for page in pages.tolist():
            if page not in current:
                if len(current) == window:
                    seen.append(current)
                    current = set()
                current.add(page)
            assert not any(page in done for done in seen)


def test_the_block_order_is_a_function_of_seed_epoch_rank_and_world_size():
    def order(seed=5, epoch=2, rank=1, world_size=2):
        return block_order(BLOCKS, seed, epoch, rank=rank, world_size=world_size).tolist()

    assert order() == order()
    for other in ({'seed': 6}, {'epoch': 3}, {'rank': 0}, {'world_size': 3}):
        assert order(**other) != order(), other


def test_ranks_get_balanced_shares_and_equal_shards_the_same_length_every_epoch():
    largest = max(len(block) for block in BLOCKS)
    lengths = set()
    for epoch in range(5):
        whole = [len(block_order(BLOCKS, 0, epoch, rank=r, world_size=3)) for r in range(3)]
        assert max(whole) - min(whole) <= largest  # dealt to the rank with the fewest
        shards = [block_order(BLOCKS, 0, epoch, rank=r, world_size=3, equal_shards=True)
                  for r in range(3)]
        lengths |= {len(shard) for shard in shards}
        assert len(set(np.concatenate(shards).tolist())) == sum(map(len, shards))
    assert lengths == {len(PAGES) // 3 - largest}  # every rank, every epoch


def test_a_small_file_is_cut_into_enough_blocks_for_every_rank():
    one_page = np.zeros(10, dtype=np.int64)
    blocks = blocks_of(np.arange(10), one_page, min_blocks=4)
    assert len(blocks) == 4 and sorted(np.concatenate(blocks).tolist()) == list(range(10))
    assert all(len(block) >= 2 for block in blocks)


def test_the_random_order_covers_the_split_and_shards_evenly():
    indices = np.arange(10)
    shards = [epoch_order(indices, 1, 0, rank=r, world_size=3, equal_shards=True)
              for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert len(set(np.concatenate(shards).tolist())) == 9


def test_sample_pages_take_each_samples_first_allocation():
    table = np.array([(0, 9000, 10), (1, 100, 5), (0, 20, 3), (2, 17000, 1)],
                     dtype=[('sample_id', '<u8'), ('ptr', '<u8'), ('size', '<u8')])
    assert sample_pages(table, 8192, 4).tolist() == [0, 0, 2, -1]


def test_an_unknown_order_is_refused():
    with pytest.raises(ValueError, match="order must be one of random, blocks"):
        ShardedOrder(order='pages')


def test_a_loader_in_block_order_reads_its_share_in_the_order_of_the_function(betons):
    orders = []
    for rank in range(2):
        loader = train_loader(betons[0], batch_size=4, resolution=32, num_workers=1,
                              rank=rank, world_size=2, seed=3, order='blocks', order_window=2)
        reader = loader.loader.reader
        pages = sample_pages(reader.alloc_table, int(reader.page_size),
                             int(reader.num_samples))
        blocks = blocks_of(np.arange(reader.num_samples), pages, min_blocks=8)
        expected = block_order(blocks, 3, 0, rank=rank, world_size=2, window=2,
                               equal_shards=True)
        orders.append(np.asarray(loader.loader.next_traversal_order()).tolist())
        assert orders[-1] == expected.tolist()
        assert len(loader) == len(expected) // 4
    assert len(orders[0]) == len(orders[1]) > 0 and not set(orders[0]) & set(orders[1])
