"""An adaptive micro-batcher for the model server's TensorFlow and feature-store calls.

Each call into TensorFlow or Feast has a fixed cost that dwarfs the per-row cost (measured
on the demo model: the full retrieve -> rank path takes 7 ms for 1 user and 14 ms for 32),
so concurrent requests are gathered and run as one batch. A batch is flushed when it is
full or when its oldest request has waited `max_wait_ms`; when the server is idle a
request goes straight through (waiting would only add latency), and under load the queue
fills while the previous batch runs, so batches grow with traffic by themselves.

The batch function runs in a worker thread (TensorFlow and SQLite release the GIL), at
most `max_in_flight` batches at once. If a batch fails, its requests are retried one by
one, so a single bad request fails alone and every response still matches its request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """Counters the server exports as metrics."""

    batches: int = 0
    requests: int = 0
    retried_batches: int = 0

    def record(self, size: int) -> None:
        self.batches += 1
        self.requests += size


class MicroBatcher(Generic[T, R]):
    """`await batcher.submit(item)` -> `fn([items...])[i]`, batched across concurrent callers."""

    def __init__(self, fn: Callable[[Sequence[T]], Sequence[R]], max_batch: int = 32, max_wait_ms: float = 2.0,
                 max_in_flight: int = 2, on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_wait_ms < 0 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be >= 1 and max_wait_ms >= 0")
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch  # (size, seconds) after every batch, for metrics
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="batch")
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: asyncio.Queue[tuple[T, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self._in_flight = 0

    async def submit(self, item: T) -> R:
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._collect())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _collect(self) -> None:
        """Forever: take the first waiting request, gather more until full or timed out, run."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            await self._slots.acquire()  # a free worker thread; meanwhile the queue keeps filling
            deadline = loop.time() + (self.max_wait_s if self._in_flight else 0.0)
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]  # clients that left
            if not live:
                self._slots.release()
                continue
            self._in_flight += 1
            loop.create_task(self._run(live))

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in batch])
                outcomes = [(fut, result, None) for (_, fut), result in zip(batch, results, strict=True)]
            except Exception:
                self.stats.retried_batches += 1
                outcomes = [(fut, *await self._one(item)) for item, fut in batch]
            self.stats.record(len(batch))
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
            for fut, result, error in outcomes:
                if fut.done():
                    continue
                if error is None:
                    fut.set_result(result)
                else:
                    fut.set_exception(error)
        finally:
            self._in_flight -= 1
            self._slots.release()

    async def _one(self, item: T) -> tuple[R | None, Exception | None]:
        try:
            [result] = await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, [item])
            return result, None
        except Exception as exc:  # noqa: BLE001 (handed to that request's caller)
            return None, exc

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
