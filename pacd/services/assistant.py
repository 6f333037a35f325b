"""Assistant service: the household's tuned model, served to the home (Home Assistant and other clients).

Thin: it converts requests (pac/net/convert/assistant.py) and delegates to pac.assistant. Chat requests
that wait together are answered together (the daemon's AnswerQueue, pac/assistant/queue.py, shared with
its Wyoming server); deploys and classifications take their own turn; past the queue's bound a request
is refused (RESOURCE_EXHAUSTED). A device that trains a job answers UNAVAILABLE, not out of memory.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from pac.assistant.messages import Done, check_messages
from pac.assistant.queue import AnswerQueue
from pac.assistant.store import MAX_ADAPTER_BYTES, DeployError
from pac.errors import ConfigError, PacError
from pac.net.chunks import ChunkError, read_one
from pac.net.convert import assistant as convert
from pac.v1 import assistant_pb2, assistant_pb2_grpc
from pacd.rpc import InvalidRequest, handler, status_for

log = logging.getLogger(__name__)

SERVICE_NAME = "pac.v1.Assistant"


class AssistantServicer(assistant_pb2_grpc.AssistantServicer):
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.answers: AnswerQueue = daemon.answers  # shared with the Wyoming server
        self.store = self.answers.assistant.store

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
        async with self.answers.exclusive():
            try:
                model, replaced = await asyncio.to_thread(self.store.add, data, header.size_bytes, header.sha256,
                                                          about, self.answers.assistant.check_backbone)
            except DeployError as error:
                raise InvalidRequest(str(error)) from None
        log.info("deployed adapter %s (%s, %s on %s)", model.id, model.name, model.task, model.backbone)
        return assistant_pb2.DeployReply(model=convert.model_to_proto(model), replaced=replaced)

    async def Generate(self, request, context):
        arrived = time.perf_counter()
        try:
            sampling, messages = _chat_request(request)
            model = await asyncio.to_thread(self.store.find, request.model, ("chat",))
            first = None
            async for item in self.answers.chat(model, messages, sampling):
                if isinstance(item, Done):
                    yield assistant_pb2.GenerateReply(usage=assistant_pb2.Usage(
                        prompt_tokens=item.prompt_tokens, generated_tokens=item.generated_tokens,
                        time_to_first_token_s=first or 0.0, seconds=time.perf_counter() - arrived, model=model.id,
                        finish_reason=item.finish_reason))
                    return
                first = first if first is not None else time.perf_counter() - arrived
                if item.text:
                    yield assistant_pb2.GenerateReply(text=item.text, tokens=item.tokens)
        except PacError as error:
            await context.abort(status_for(error), str(error))
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:  # a bug: logged, and the daemon keeps serving
            log.error("answering a chat failed", exc_info=error)
            await context.abort(grpc.StatusCode.INTERNAL, f"answering failed: {error}")

    @handler
    async def Classify(self, request, context):
        self.answers.check_idle()
        model = await asyncio.to_thread(self.store.find, request.model, ("classification", "regression"))
        async with self.answers.exclusive():
            try:
                results = await asyncio.to_thread(self.answers.assistant.classify, model, list(request.texts),
                                                  list(request.second_texts))
            except ConfigError as error:
                raise InvalidRequest(str(error)) from None
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
