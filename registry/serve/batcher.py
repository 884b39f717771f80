"""The micro-batcher: images of concurrent requests, for the same or different adapters, in ONE pass.

Each request's images are queued one by one. The batch loop takes the first waiting image,
then gathers more for up to ``max_wait_ms`` or until ``max_batch`` images, and hands the batch
to ONE model thread (torch and the attached adapters are touched by that thread alone). While
a batch runs, new images queue up, so under load the next batch is full at once. A request of
many images may be split across batches. A batch never names more unpinned adapters than the
shelf may hold: an image that would exceed it waits for the next batch.

The queue is bounded (:class:`QueueFullError`, which the app answers with 503 + Retry-After);
an image whose request timed out is dropped before it costs a pass.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from loradex.core.errors import QueueFullError

from .metrics import ServeMetrics
from .shelf import Wanted


@dataclass(eq=False)
class Pending:
    """One image of one request, waiting for its pass."""

    image: Any
    name: str
    wanted: Wanted
    request: int
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Gathers pending images into batches and runs each on the model thread with ``run``."""

    def __init__(self, run: Callable[[Sequence[tuple[Any, str, Wanted]]], list[Any]], *, max_batch: int,
                 max_wait_s: float, max_queue: int, capacity: int, pinned: Sequence[str],
                 metrics: ServeMetrics) -> None:
        self._run = run
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.capacity, self.pinned = capacity, frozenset(pinned)
        self.metrics = metrics
        self._queue: collections.deque[Pending] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="loradex-model")
        self._requests = 0
        self.running = 0
        """Images in the pass running now."""

    @property
    def depth(self) -> int:
        """Images waiting (not yet in a pass)."""
        return len(self._queue)

    def start(self) -> None:
        """Start the batch loop on the running event loop."""
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="loradex-batcher")

    async def stop(self, *, grace_s: float = 30.0) -> None:
        """Let queued and running images finish (up to ``grace_s``), then stop the loop and the model thread."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while (self._queue or self.running) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=True)

    def submit(self, images: Sequence[tuple[Any, str]], wanted: Wanted) -> list[asyncio.Future]:
        """Queue one request's (image, name) pairs; a future per image, resolved to its record."""
        if len(self._queue) + len(images) > self.max_queue:
            raise QueueFullError(f"the queue is full ({len(self._queue)} images waiting, limit {self.max_queue}); "
                                 "retry shortly")
        loop = asyncio.get_running_loop()
        self._requests += 1
        futures = []
        for image, name in images:
            pending = Pending(image=image, name=name, wanted=wanted, request=self._requests,
                              future=loop.create_future())
            self._queue.append(pending)
            futures.append(pending.future)
        self.metrics.queue_depth.set(len(self._queue))
        assert self._arrived is not None, "the batcher is not started"
        self._arrived.set()
        return futures

    async def _next_batch(self) -> list[Pending]:
        assert self._arrived is not None
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        batch: list[Pending] = []
        adapters: set[str] = set()
        while len(batch) < self.max_batch:
            if not self._queue:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                continue
            item = self._queue[0]
            if item.future.done():  # its request timed out or went away: it costs nothing
                self._queue.popleft()
                continue
            joined = adapters | {r for r in item.wanted.refs if r not in self.pinned}
            if batch and len(joined) > self.capacity:
                break  # it waits for the next batch, first in line
            self._queue.popleft()
            batch.append(item)
            adapters = joined
        self.metrics.queue_depth.set(len(self._queue))
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [p for p in await self._next_batch() if not p.future.done()]
            if not batch:
                continue
            self.running = len(batch)
            self.metrics.batch(images=len(batch), adapters=len({r for p in batch for r in p.wanted.refs}),
                               requests=len({p.request for p in batch}))
            started = loop.time()
            try:
                outcomes = await loop.run_in_executor(self._thread, self._run,
                                                      [(p.image, p.name, p.wanted) for p in batch])
                self.metrics.batch_seconds.observe(loop.time() - started)
            except Exception as exc:  # a bug, not a user's fault: fail this batch, keep serving
                traceback.print_exc(file=sys.stderr)
                outcomes = [exc] * len(batch)
            finally:
                self.running = 0
            for pending, outcome in zip(batch, outcomes):
                if pending.future.done():
                    continue
                if isinstance(outcome, Exception):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)
