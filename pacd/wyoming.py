"""Home Assistant with no custom code on its side: the Wyoming protocol's conversation ("handle") service.

Home Assistant's Wyoming integration finds `_wyoming._tcp.local.` services (the daemon advertises this
one), asks for their `Info` (Describe; it waits one second) and offers a conversation agent for an
installed handle program. For every utterance it opens a connection and sends a `Transcript` (the text,
its language, a context holding the conversation id), then reads until `Handled` (the answer) or
`NotHandled`. This server answers with the device's newest chat adapter (or `wyoming_model`) through the
daemon's AnswerQueue, the queue Assistant.Generate uses too: HandledStart, a HandledChunk per piece as it
is decoded, `Handled` with the whole answer, HandledStop (the protocol's order, so a client that does not
stream reads `Handled`). Each conversation's last turns are kept, so a follow-up question has its context.

Wyoming is plain TCP without authentication: the server is off unless `wyoming = true`, it says so at
start, and it answers conversations only (no training, no deploying, no model files).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from functools import partial

from wyoming.asr import Transcript
from wyoming.event import Event
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.info import Attribution, Describe, HandleModel, HandleProgram, Info
from wyoming.server import AsyncEventHandler, AsyncServer

from pac.assistant.messages import Done, Sampling
from pac.assistant.queue import AnswerQueue
from pac.errors import PacError
from pacd.sysinfo import software_version

log = logging.getLogger(__name__)

ATTRIBUTION = Attribution(name="PAC", url="https://github.com/pac-home/pac")
MAX_CONVERSATIONS = 64
MAX_TURNS = 6  # earlier turns of a conversation given with each question (user and assistant each count)


class Conversations:
    """The last turns of the most recent conversations, by Home Assistant's conversation id."""

    def __init__(self, limit: int = MAX_CONVERSATIONS, turns: int = MAX_TURNS) -> None:
        self.limit, self.turns = limit, turns
        self._kept: OrderedDict[str, list[dict[str, str]]] = OrderedDict()

    def messages(self, conversation: str | None, text: str) -> list[dict[str, str]]:
        earlier = self._kept.get(conversation, []) if conversation else []
        return [*earlier, {"role": "user", "content": text}]

    def add(self, conversation: str | None, question: str, answer: str) -> None:
        if not conversation:
            return
        turns = self._kept.pop(conversation, [])
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        self._kept[conversation] = turns[-self.turns:]
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)


class WyomingServer:
    """The daemon's Wyoming conversation service on `host:port`."""

    def __init__(self, daemon, host: str, port: int, model: str = "", languages: tuple[str, ...] = ("en",),
                 sampling: Sampling | None = None) -> None:
        self.daemon, self.host, self.port, self.model = daemon, host, port, model
        self.languages = languages
        self.sampling = sampling or Sampling(max_new_tokens=128)
        self.answers: AnswerQueue = daemon.answers
        self.conversations = Conversations()
        self._server: AsyncServer | None = None
        self._task: asyncio.Task | None = None

    def info(self) -> Info:
        try:
            chosen = self.answers.assistant.store.find(self.model, ("chat",))
        except PacError:
            chosen = None
        model = HandleModel(name=chosen.name if chosen else "no model deployed yet (pacctl deploy)",
                            attribution=ATTRIBUTION, installed=True, languages=list(self.languages),
                            description="the household's own tuned model", version=chosen.id if chosen else None)
        program = HandleProgram(name="pac", attribution=ATTRIBUTION, installed=True, version=software_version(),
                                description="PAC: the household's language model, tuned on its own devices",
                                models=[model], supports_handled_streaming=True)
        return Info(handle=[program])

    async def start(self) -> int:
        """Listen; returns the bound port (`port` 0 picks a free one)."""
        self._server = AsyncServer.from_uri(f"tcp://{self.host}:{self.port}")
        await self._server.start(partial(WyomingHandler, self))
        self.port = self._server._server.sockets[0].getsockname()[1]  # the asyncio server: port 0 picks one
        log.warning("Wyoming conversation service on tcp://%s:%d: plain TCP without authentication; anyone who "
                    "can reach it can ask the household's model (it serves conversations only)", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def answer(self, transcript: Transcript, write) -> None:
        """Answer one utterance: the streamed events, or NotHandled saying why not."""
        context = transcript.context or {}
        conversation = context.get("conversation_id")
        try:
            model = await asyncio.to_thread(self.answers.assistant.store.find, self.model, ("chat",))
            messages = self.conversations.messages(conversation, transcript.text)
            await write(HandledStart(context=context).event())
            text = ""
            async for item in self.answers.chat(model, messages, self.sampling):
                if isinstance(item, Done):
                    break
                if item.text:
                    text += item.text
                    await write(HandledChunk(text=item.text).event())
        except PacError as error:
            await write(NotHandled(text=str(error), context=context).event())
            return
        answer = text.strip()
        await write(Handled(text=answer, context=context).event())
        await write(HandledStop().event())
        self.conversations.add(conversation, transcript.text, answer)


class WyomingHandler(AsyncEventHandler):
    """One client connection (Home Assistant opens one per utterance)."""

    def __init__(self, server: WyomingServer, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.server = server

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.server.info().event())
        elif Transcript.is_type(event.type):
            await self.server.answer(Transcript.from_event(event), self.write_event)
        return True
