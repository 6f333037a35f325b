"""Assistant service: the household's tuned model, served to the home (Home Assistant and other clients).

Thin: it converts requests (pac/net/convert/assistant.py) and delegates to pac.assistant. The compute
runs in worker threads, one request at a time; at most MAX_WAITING requests wait their turn, the next
is refused (RESOURCE_EXHAUSTED). A device that trains a job answers UNAVAILABLE, not out of memory.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

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
        self.turn = asyncio.Lock()  # one request computes at a time
        self.waiting = 0

    def _check_idle(self) -> None:
        job = self.daemon.jobs.job
        if job is not None:
            raise Occupied(f"this device is training job {job.job_id}; ask another device, or after the job")

    async def _take_turn(self):
        """Wait for this request's turn; Overloaded past MAX_WAITING waiting requests."""
        if self.waiting >= MAX_WAITING:
            raise Overloaded(f"{self.waiting} requests wait already on this device; try again shortly")
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
        try:
            self._check_idle()
            sampling, messages = _chat_request(request)
            model = await asyncio.to_thread(self.store.find, request.model, ("chat",))
            await self._take_turn()
        except PacError as error:
            await context.abort(status_for(error), str(error))
        try:
            prompt_tokens, pieces = await asyncio.to_thread(self.assistant.chat, model, messages, sampling)
            generated, first = 0, None
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                generated += piece.tokens
                first = first if first is not None else time.perf_counter() - arrived
                if piece.text:
                    yield assistant_pb2.GenerateReply(text=piece.text, tokens=piece.tokens)
        except PacError as error:
            await context.abort(status_for(error), str(error))
        finally:
            self.turn.release()  # a cancelled request gives its turn back here, mid-answer
        usage = assistant_pb2.Usage(
            prompt_tokens=prompt_tokens, generated_tokens=generated, time_to_first_token_s=first or 0.0,
            seconds=time.perf_counter() - arrived, model=model.id,
            finish_reason="length" if generated >= sampling.max_new_tokens else "stop")
        yield assistant_pb2.GenerateReply(usage=usage)

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
