"""Calls to a daemon's Assistant service (pacctl deploy, pacctl ask, a home-automation client in Python)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from pac.assistant.messages import Result, Sampling
from pac.assistant.store import Deployed, Provenance
from pac.net.chunks import chunked
from pac.net.convert import assistant as convert
from pac.net.daemon_client import DaemonClient, DaemonError
from pac.v1 import assistant_pb2, assistant_pb2_grpc

DEPLOY_TIMEOUT_S = 600.0
CLASSIFY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    seconds: float
    finish_reason: str
    model: str


class AssistantClient(DaemonClient):
    """A daemon's Assistant calls, over the same channel as DaemonClient's."""

    def _stub(self) -> assistant_pb2_grpc.AssistantStub:
        return assistant_pb2_grpc.AssistantStub(self._channel)

    async def list_models(self) -> list[Deployed]:
        reply = await self._call(self._stub().ListModels, assistant_pb2.ListModelsRequest(), 30.0)
        return [convert.model_from_proto(m) for m in reply.models]

    async def deploy(self, adapter: Path, about: Provenance) -> tuple[Deployed, bool]:
        """Send the adapter file; returns it as the daemon keeps it and whether it had it already."""
        data = adapter.read_bytes()
        header = convert.header_to_proto(about, len(data), hashlib.sha256(data).hexdigest())
        chunks = chunked(assistant_pb2.DeployChunk, "header", header, "data", data)
        reply = await self._call(self._stub().Deploy, iter(chunks), DEPLOY_TIMEOUT_S)
        return convert.model_from_proto(reply.model), reply.replaced

    async def generate(self, messages: list[dict[str, str]], sampling: Sampling | None = None, model: str = "",
                       timeout: float = 600.0) -> AsyncIterator[str | Usage]:
        """The answer's text as it is decoded, then its Usage. Closing the iterator early cancels the call
        (the daemon stops decoding)."""
        request = assistant_pb2.GenerateRequest(model=model, messages=convert.messages_to_proto(messages),
                                                **convert.sampling_to_proto(sampling or Sampling()))
        call = self._stub().Generate(request, timeout=timeout)
        try:
            async for reply in call:
                if reply.HasField("usage"):
                    u = reply.usage
                    yield Usage(u.prompt_tokens, u.generated_tokens, u.time_to_first_token_s, u.seconds,
                                u.finish_reason, u.model)
                elif reply.text:
                    yield reply.text
        except grpc.aio.AioRpcError as error:
            raise DaemonError(self.address, error) from None
        finally:
            call.cancel()  # no-op once the answer is complete

    async def classify(self, texts: list[str], second_texts: list[str] | None = None,
                       model: str = "") -> tuple[str, list[Result]]:
        """The model that answered and, per text, its labels' probabilities or its score."""
        request = assistant_pb2.ClassifyRequest(model=model, texts=texts, second_texts=second_texts or [])
        reply = await self._call(self._stub().Classify, request, CLASSIFY_TIMEOUT_S)
        return reply.model, [convert.result_from_proto(r) for r in reply.results]
