"""The daemon's one queue of work for its tuned models: chat waves, deploys and classifications.

Every client of the device's assistant (the gRPC Assistant service, the Wyoming server for Home
Assistant) goes through one `AnswerQueue`, so their chat requests are batched together and one wave,
deploy or classification computes at a time. At most `max_waiting` requests wait; the next is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from pac.assistant.messages import MAX_BATCH, Ask, Done, Piece, Sampling
from pac.errors import PacError

if TYPE_CHECKING:
    from pac.assistant.serving import Assistant
    from pac.assistant.store import Deployed

MAX_WAITING = 32
GATHER_S = 0.02  # a wave waits this long for the requests sent at the same moment as its first


class Overloaded(PacError):
    """Too many requests wait already; the client should try again shortly."""


class Occupied(PacError):
    """The device is doing something that excludes answering for now (training a job)."""


class AnswerQueue:
    def __init__(self, assistant: Assistant, spawn: Callable[[Awaitable, str], asyncio.Task],
                 training: Callable[[], str | None] = lambda: None, max_waiting: int = MAX_WAITING) -> None:
        self.assistant, self._spawn, self.max_waiting = assistant, spawn, max_waiting
        self._training = training  # the id of the job the device trains, if any
        self._turn: asyncio.Lock | None = None  # made in the event loop that uses it
        self.waiting = 0  # deploys and classifications waiting for their turn
        self.asks: list[Ask] = []  # chat requests waiting for a wave
        self._waves: asyncio.Task | None = None

    @property
    def turn(self) -> asyncio.Lock:
        if self._turn is None:
            self._turn = asyncio.Lock()
        return self._turn

    def check_idle(self) -> None:
        """Occupied while the device trains a job: a model loaded beside it could take the job's memory."""
        job = self._training()
        if job:
            raise Occupied(f"this device is training job {job}; ask another device, or after the job")

    def check_room(self) -> None:
        if self.waiting + len(self.asks) >= self.max_waiting:
            raise Overloaded(f"{self.waiting + len(self.asks)} requests wait already on this device; try again "
                             f"shortly")

    @contextlib.asynccontextmanager
    async def exclusive(self):
        """One deploy or classification's turn (Overloaded if too many wait)."""
        self.check_room()
        self.waiting += 1
        try:
            await self.turn.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.turn.release()

    async def chat(self, model: Deployed, messages: list[dict[str, str]],
                   sampling: Sampling) -> AsyncIterator[Piece | Done]:
        """The answer's pieces, then Done. Leaving the iteration early stops the answer at the next token."""
        self.check_idle()
        self.check_room()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        ask = Ask(model, messages, sampling, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
        self.asks.append(ask)
        if self._waves is None or self._waves.done():
            self._waves = self._spawn(self._run_waves(), "assistant waves")
        try:
            while not isinstance(item := await queue.get(), Done):
                if isinstance(item, BaseException):
                    raise item
                yield item
            yield item
        finally:
            ask.cancelled.set()
            if ask in self.asks:
                self.asks.remove(ask)

    async def _run_waves(self) -> None:
        """While chat requests wait: the oldest one's model answers it and up to MAX_BATCH - 1 more."""
        while self.asks:
            async with self.turn:
                await asyncio.sleep(GATHER_S)
                if not self.asks:  # every waiting request went away
                    return
                model = self.asks[0].model
                wave = [a for a in self.asks if a.model.id == model.id][:MAX_BATCH]
                for ask in wave:
                    self.asks.remove(ask)
                try:
                    backbone, tuned = await asyncio.to_thread(self.assistant.model, model)
                except Exception as error:  # every request of the wave hears it
                    for ask in wave:
                        ask.emit(error)
                    continue
                from pac.assistant.batching import answer_wave  # PyTorch: imported by the first wave

                await asyncio.to_thread(answer_wave, backbone, tuned, wave)
