"""Assistant service: the household's tuned model, served to the home (Home Assistant and other clients).

Thin: it converts requests (pac/net/convert/assistant.py) and delegates to pac.assistant. Chat requests
that wait together are answered together, in waves of up to MAX_BATCH (pac/assistant/batching.py);
deploys and classifications take their own turn. The compute runs in worker threads, one wave or batch
at a time; at most MAX_WAITING requests wait, the next is refused (RESOURCE_EXHAUSTED). A device that
trains a job answers UNAVAILABLE, not out of memory.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from pac.assistant.batching import MAX_BATCH, Ask, Done, answer_wave
from pac.assistant.serving import Assistant, check_messages
from pac.assistant.store import MAX_ADAPTER_BYTES, DeployError, ModelStore
from pac.errors import ConfigError, PacError
from pac.net.chunks import ChunkError, read_one
from pac.net.convert import assistant as convert
from pac.v1 import assistant_pb2, assistant_pb2_grpc
from pacd.rpc import InvalidRequest, Occupied, Overloaded, handler, status_for

log = logging.getLogger(__name__)

SERVICE_NAME = "pac.v1.Assistant"
MAX_WAITING = 32


class AssistantServicer(assistant_pb2_grpc.AssistantServicer):
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.store = ModelStore(daemon.state.root / "models")
        self.assistant = Assistant(self.store)
        self.turn = asyncio.Lock()  # one wave, deploy or classification computes at a time
        self.waiting = 0  # deploys and classifications waiting for their turn
        self.asks: list[Ask] = []  # chat requests waiting for a wave
        self.waves: asyncio.Task | None = None

    def _check_idle(self) -> None:
        job = self.daemon.jobs.job
        if job is not None:
            raise Occupied(f"this device is training job {job.job_id}; ask another device, or after the job")

    def _check_room(self) -> None:
        if self.waiting + len(self.asks) >= MAX_WAITING:
            raise Overloaded(f"{self.waiting + len(self.asks)} requests wait already on this device; try again "
                             f"shortly")

    async def _take_turn(self):
        """Wait for this request's turn; Overloaded past MAX_WAITING waiting requests."""
        self._check_room()
        self.waiting += 1
        try:
            await self.turn.acquire()
        finally:
            self.waiting -= 1

    @handler
    async def ListModels(self, request, context):
        models = await asyncio.to_thread(self.store.list)
        return assistant_pb2.ListModelsReply(models=[convert.model_to_proto(m) for m in models])

    @handler
    async def Deploy(self, request_iterator, context):
        try:
            header, data = await read_one(request_iterator, "header", "data", MAX_ADAPTER_BYTES)
        except ChunkError as error:
            raise InvalidRequest(f"deploy: {error}") from None
        about = convert.header_from_proto(header)
        await self._take_turn()
        try:
            model, replaced = await asyncio.to_thread(self.store.add, data, header.size_bytes, header.sha256, about,
                                                      self.assistant.check_backbone)
        except DeployError as error:
            raise InvalidRequest(str(error)) from None
        finally:
            self.turn.release()
        log.info("deployed adapter %s (%s, %s on %s)", model.id, model.name, model.task, model.backbone)
        return assistant_pb2.DeployReply(model=convert.model_to_proto(model), replaced=replaced)

    async def Generate(self, request, context):
        arrived = time.perf_counter()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        try:
            self._check_idle()
            sampling, messages = _chat_request(request)
            model = await asyncio.to_thread(self.store.find, request.model, ("chat",))
            self._check_room()
        except PacError as error:
            await context.abort(status_for(error), str(error))
        ask = Ask(model, messages, sampling, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
        self.asks.append(ask)
        if self.waves is None or self.waves.done():
            self.waves = self.daemon.spawn(self._run_waves(), "assistant waves")
        first = None
        try:
            while not isinstance(item := await queue.get(), Done):
                if isinstance(item, PacError):
                    await context.abort(status_for(item), str(item))
                if isinstance(item, BaseException):
                    log.error("answering a chat failed", exc_info=item)
                    await context.abort(grpc.StatusCode.INTERNAL, f"answering failed: {item}")
                first = first if first is not None else time.perf_counter() - arrived
                if item.text:
                    yield assistant_pb2.GenerateReply(text=item.text, tokens=item.tokens)
        finally:
            ask.cancelled.set()  # a client that went away stops being answered at the next token
            if ask in self.asks:
                self.asks.remove(ask)
        yield assistant_pb2.GenerateReply(usage=assistant_pb2.Usage(
            prompt_tokens=item.prompt_tokens, generated_tokens=item.generated_tokens,
            time_to_first_token_s=first or 0.0, seconds=time.perf_counter() - arrived, model=model.id,
            finish_reason=item.finish_reason))

    async def _run_waves(self) -> None:
        """While chat requests wait: the oldest one's model answers it and up to MAX_BATCH - 1 more."""
        while self.asks:
            async with self.turn:
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
                await asyncio.to_thread(answer_wave, backbone, tuned, wave)

    @handler
    async def Classify(self, request, context):
        self._check_idle()
        model = await asyncio.to_thread(self.store.find, request.model, ("classification", "regression"))
        await self._take_turn()
        try:
            results = await asyncio.to_thread(self.assistant.classify, model, list(request.texts),
                                              list(request.second_texts))
        except ConfigError as error:
            raise InvalidRequest(str(error)) from None
        finally:
            self.turn.release()
        return assistant_pb2.ClassifyReply(results=[convert.result_to_proto(r) for r in results], model=model.id)


def _chat_request(request) -> tuple:
    """The request's sampling options and conversation; InvalidRequest names what is wrong."""
    try:
        messages = convert.messages_from_proto(request.messages)
        check_messages(messages)
        return convert.sampling_from_proto(request), messages
    except ConfigError as error:
        raise InvalidRequest(str(error)) from None


def register(server: grpc.aio.Server, daemon) -> list[str]:
    assistant_pb2_grpc.add_AssistantServicer_to_server(AssistantServicer(daemon), server)
    return [SERVICE_NAME]
