"""ndflow.pool.ArrayPool through its public API only: alloc, stats(), empty_free_list, refused,
max_bytes (the internals are being rewritten; these tests must survive that)."""

from __future__ import annotations

import gc
import queue
import random
import threading

import numpy as np
import pytest

from ndflow import shm
from ndflow.pool import ArrayPool


def addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def stats_tuple(pool: ArrayPool) -> tuple[int, int, int, int]:
    s = pool.stats()
    return s.used_bytes, s.alloc_buffers, s.free_buffers, s.refused


# --- what alloc hands out -------------------------------------------------------------------------
def test_alloc_gives_writable_c_ordered_array_of_shape_and_dtype():
    pool = ArrayPool()
    a = pool.alloc((3, 5), "u2")
    assert a.shape == (3, 5) and a.dtype == np.uint16
    assert a.flags.c_contiguous and a.flags.writeable
    a[:] = 7
    assert int(a.sum()) == 7 * 15
    assert stats_tuple(pool) == (30, 1, 0, 0)


def test_two_live_leases_of_one_size_do_not_share_memory():
    pool = ArrayPool()
    a = pool.alloc((100,), "u1")
    b = pool.alloc((100,), "u1")
    a[:] = 1
    b[:] = 2
    assert addr(a) != addr(b)
    assert (a == 1).all() and (b == 2).all()
    assert stats_tuple(pool) == (200, 2, 0, 0)


def test_zero_sized_alloc_works():
    pool = ArrayPool(max_bytes=10)
    a = pool.alloc((0, 4), "f8")
    assert a is not None and a.shape == (0, 4) and a.size == 0


# --- the byte limit -------------------------------------------------------------------------------
def test_limit_allows_exactly_max_bytes_and_refuses_one_byte_more():
    pool = ArrayPool(max_bytes=1000)
    assert pool.max_bytes == 1000
    a = pool.alloc((100,), "f8")  # 800 bytes
    b = pool.alloc((200,), "u1")  # 1000 in all: still allowed
    assert a is not None and b is not None
    assert pool.alloc((1,), "u1") is None
    assert pool.refused == 1
    assert pool.alloc((50,), "u2") is None
    assert pool.refused == 2
    assert stats_tuple(pool) == (1000, 2, 0, 2)
    assert pool.stats().max_bytes == 1000


def test_single_request_larger_than_limit_is_refused_on_an_empty_pool():
    pool = ArrayPool(max_bytes=64)
    assert pool.alloc((9,), "f8") is None
    assert stats_tuple(pool) == (0, 0, 0, 1)


def test_unlimited_pool_never_refuses():
    pool = ArrayPool(max_bytes=0)
    held = [pool.alloc((1024,), "u1") for _ in range(64)]
    assert all(h is not None for h in held)
    assert stats_tuple(pool) == (64 * 1024, 64, 0, 0)


def test_refused_alloc_does_not_touch_live_leases():
    pool = ArrayPool(max_bytes=1000)
    a = pool.alloc((600,), "u1")
    a[:] = 42
    b = pool.alloc((300,), "u1")
    del b  # 300 bytes free
    assert pool.alloc((500,), "u1") is None  # 600 leased + 500 > 1000 even with the 300 dropped
    assert pool.refused == 1
    assert (a == 42).all()
    s = pool.stats()
    assert s.used_bytes <= s.max_bytes
    assert s.alloc_buffers >= 1 and s.used_bytes >= 600


# --- reuse ----------------------------------------------------------------------------------------
def test_freed_block_of_same_size_comes_back():
    pool = ArrayPool()
    a = pool.alloc((10, 10), "f4")
    a_addr = addr(a)
    del a
    assert stats_tuple(pool) == (400, 1, 1, 0)
    b = pool.alloc((100,), "i4")  # same byte size, other shape and dtype
    assert addr(b) == a_addr
    assert stats_tuple(pool) == (400, 1, 0, 0)


def test_other_size_gets_a_new_block():
    pool = ArrayPool()
    a = pool.alloc((100,), "u1")
    a_addr = addr(a)
    del a
    b = pool.alloc((101,), "u1")
    assert addr(b) != a_addr
    assert stats_tuple(pool) == (201, 2, 1, 0)


def test_block_stays_leased_while_any_view_lives():
    pool = ArrayPool()
    a = pool.alloc((4, 4), "u1")
    row = a[1]  # a view keeps the lease
    t = a.T
    del a
    assert pool.stats().free_buffers == 0
    del row
    assert pool.stats().free_buffers == 0
    del t
    assert stats_tuple(pool) == (16, 1, 1, 0)


def test_reuse_cycle_allocates_only_once():
    pool = ArrayPool(max_bytes=4096)
    first = None
    for _ in range(200):
        a = pool.alloc((1024,), "f4")
        assert a is not None
        first = first or addr(a)
        assert addr(a) == first
        del a
    assert stats_tuple(pool) == (4096, 1, 1, 0)


def test_reuse_with_shared_memory_blocks():
    pool = ArrayPool(max_bytes=1 << 20, new_block=shm.block)
    a = pool.alloc((256, 256), "u2")
    assert shm.find(a) is not None
    a_addr = addr(a)
    del a
    b = pool.alloc((256, 256), "u2")
    assert addr(b) == a_addr
    assert stats_tuple(pool) == (256 * 256 * 2, 1, 0, 0)


# --- making room ----------------------------------------------------------------------------------
def test_free_blocks_of_other_sizes_are_dropped_to_make_room():
    pool = ArrayPool(max_bytes=1000)
    a = pool.alloc((600,), "u1")
    del a  # 600 free
    assert stats_tuple(pool) == (600, 1, 1, 0)
    b = pool.alloc((800,), "u1")  # 600 + 800 > 1000: the free 600 must go
    assert b is not None
    assert pool.refused == 0
    assert stats_tuple(pool) == (800, 1, 0, 0)


def test_making_room_from_several_free_blocks_keeps_leases():
    pool = ArrayPool(max_bytes=1000)
    keep = pool.alloc((400,), "u1")
    keep[:] = 9
    x, y = pool.alloc((100,), "u1"), pool.alloc((200,), "u1")
    del x, y  # 300 free in two blocks, 400 leased
    c = pool.alloc((500,), "u1")  # needs 200 of the 300 free bytes dropped
    assert c is not None and pool.refused == 0
    s = pool.stats()
    assert s.used_bytes <= 1000
    assert s.used_bytes >= 900  # 400 leased + 500 new
    assert (keep == 9).all()
    assert addr(c) != addr(keep)


# --- empty_free_list ------------------------------------------------------------------------------
def test_empty_free_list_releases_free_blocks_only():
    pool = ArrayPool(max_bytes=10_000)
    held = pool.alloc((1000,), "u1")
    a, b = pool.alloc((1000,), "u1"), pool.alloc((2000,), "u1")
    del a, b
    assert stats_tuple(pool) == (4000, 3, 2, 0)
    pool.empty_free_list()
    assert stats_tuple(pool) == (1000, 1, 0, 0)
    held[:] = 3
    del held  # a lease outliving empty_free_list still comes back
    assert stats_tuple(pool) == (1000, 1, 1, 0)
    pool.empty_free_list()
    assert stats_tuple(pool) == (0, 0, 0, 0)
    pool.empty_free_list()  # idempotent
    assert stats_tuple(pool) == (0, 0, 0, 0)


def test_empty_free_list_makes_room_for_other_sizes():
    pool = ArrayPool(max_bytes=1000)
    a = pool.alloc((1000,), "u1")
    del a
    pool.empty_free_list()
    assert stats_tuple(pool) == (0, 0, 0, 0)
    b = pool.alloc((999,), "u1")
    assert b is not None
    assert stats_tuple(pool) == (999, 1, 0, 0)


# --- threads --------------------------------------------------------------------------------------
def test_last_view_dropped_in_another_thread_returns_the_block():
    pool = ArrayPool(max_bytes=1 << 20)
    handoff: queue.Queue = queue.Queue()
    result: dict[str, object] = {}

    def producer() -> None:  # thread A allocates and writes
        a = pool.alloc((128, 128), "u2")
        a[:] = 5
        result["addr"] = addr(a)
        handoff.put(a)

    def consumer() -> None:  # thread B holds the only reference and drops it
        a = handoff.get(timeout=5)
        result["sum"] = int(a.sum())
        result["free_before"] = pool.stats().free_buffers
        del a
        result["free_after"] = pool.stats().free_buffers

    tb = threading.Thread(target=consumer)
    tb.start()
    ta = threading.Thread(target=producer)
    ta.start()
    ta.join(5)
    tb.join(5)
    assert not ta.is_alive() and not tb.is_alive()
    assert result["sum"] == 5 * 128 * 128
    assert result["free_before"] == 0
    assert result["free_after"] == 1
    assert stats_tuple(pool) == (128 * 128 * 2, 1, 1, 0)
    again = pool.alloc((128 * 128,), "u2")  # the block freed in B is reused in the main thread
    assert addr(again) == result["addr"]


def test_concurrent_alloc_and_release_keeps_the_books_straight():
    limit = 64 * 1024
    pool = ArrayPool(max_bytes=limit)
    sizes = [512, 1024, 4096, 8192]
    nones = [0] * 4
    errors: list[BaseException] = []
    handoff: queue.Queue = queue.Queue(maxsize=64)
    done = threading.Event()

    def allocator(k: int) -> None:
        rng = random.Random(k)
        try:
            for _ in range(1500):
                a = pool.alloc((rng.choice(sizes),), "u1")
                if a is None:
                    nones[k] += 1
                    continue
                a[:] = k
                if rng.random() < 0.5:
                    handoff.put(a)  # released by the other thread
                del a
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def releaser() -> None:
        while not (done.is_set() and handoff.empty()):
            try:
                handoff.get(timeout=0.01)  # dropped at once
            except queue.Empty:
                pass

    r = threading.Thread(target=releaser)
    r.start()
    workers = [threading.Thread(target=allocator, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    done.set()
    r.join(10)
    gc.collect()
    assert not errors
    s = pool.stats()
    assert s.refused == sum(nones)
    assert s.alloc_buffers == s.free_buffers  # every lease came back
    assert 0 <= s.used_bytes <= limit
    pool.empty_free_list()
    assert stats_tuple(pool) == (0, 0, 0, sum(nones))


@pytest.mark.parametrize("dtype", ["u1", "i2", "f4", "f8", "c16"])
def test_same_shape_and_dtype_reuses_block(dtype):
    pool = ArrayPool()
    a = pool.alloc((7, 3), dtype)
    a[:] = np.arange(21).reshape(7, 3)
    assert (a == np.arange(21).reshape(7, 3)).all()
    a_addr = addr(a)
    del a
    b = pool.alloc((7, 3), dtype)
    assert b.shape == (7, 3) and b.dtype == np.dtype(dtype)
    assert addr(b) == a_addr


def test_making_room_down_to_exactly_the_limit():
    pool = ArrayPool(max_bytes=1000)
    a = pool.alloc((600,), "u1")
    del a
    b = pool.alloc((1000,), "u1")  # fits exactly once the free 600 are dropped
    assert b is not None
    assert stats_tuple(pool) == (1000, 1, 0, 0)


def test_request_that_fits_keeps_free_blocks_of_other_sizes():
    pool = ArrayPool(max_bytes=1000)
    held = pool.alloc((700,), "u1")
    b = pool.alloc((100,), "u1")
    del b  # 100 free
    c = pool.alloc((200,), "u1")  # 700 + 100 + 200 = 1000: fits without dropping anything
    assert held is not None and c is not None
    assert stats_tuple(pool) == (1000, 3, 1, 0)
