"""The micro-batcher: batches form under concurrency, each caller gets its own result, a
bad item fails alone, and callers that leave never stall the queue."""

import asyncio
import threading
import time

import pytest

from hyperrec.online.batching import MicroBatcher


def run(coro):
    return asyncio.run(coro)


def test_concurrent_callers_share_batches_and_get_their_own_results():
    seen_sizes = []

    def double(items):
        seen_sizes.append(len(items))
        time.sleep(0.01)  # a model call: requests pile up behind it
        return [2 * x for x in items]

    async def main():
        b = MicroBatcher(double, max_batch=16, max_wait_ms=5)
        out = await asyncio.gather(*(b.submit(i) for i in range(100)))
        b.close()
        return out

    assert run(main()) == [2 * i for i in range(100)]
    assert max(seen_sizes) <= 16 and sum(seen_sizes) == 100
    assert len(seen_sizes) <= 20  # batched, not one call per request


def test_idle_request_is_not_held_for_max_wait():
    async def main():
        b = MicroBatcher(lambda xs: xs, max_batch=64, max_wait_ms=500)
        t = time.perf_counter()
        assert await b.submit(1) == 1
        elapsed = time.perf_counter() - t
        b.close()
        return elapsed

    assert run(main()) < 0.25  # nothing in flight: no reason to wait 500 ms


def test_a_failing_item_fails_alone():
    def picky(items):
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return [x + 1 for x in items]

    async def main():
        b = MicroBatcher(picky, max_batch=8, max_wait_ms=20, max_in_flight=1)
        results = await asyncio.gather(*(b.submit(x) for x in [1, 2, -3, 4]), return_exceptions=True)
        b.close()
        return results, b.stats.retried_batches

    results, retried = run(main())
    assert results[0] == 2 and results[1] == 3 and results[3] == 5
    assert isinstance(results[2], ValueError)
    assert retried >= 1


def test_cancelled_callers_do_not_stall_the_rest():
    release = threading.Event()

    def slow(items):
        release.wait(2)
        return items

    async def main():
        b = MicroBatcher(slow, max_batch=4, max_wait_ms=1, max_in_flight=1)
        first = asyncio.ensure_future(b.submit("first"))
        await asyncio.sleep(0.05)  # "first" is running; the next ones queue behind it
        leaving = [asyncio.ensure_future(b.submit(f"gone{i}")) for i in range(3)]
        staying = asyncio.ensure_future(b.submit("stays"))
        await asyncio.sleep(0.01)
        for f in leaving:
            f.cancel()
        release.set()
        out = await asyncio.wait_for(asyncio.gather(first, staying), 5)
        b.close()
        return out

    assert run(main()) == ["first", "stays"]


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_wait_ms": -1}, {"max_in_flight": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        MicroBatcher(lambda xs: xs, **kwargs)
