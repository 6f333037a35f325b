"""Home Assistant's side of Wyoming, played by the `wyoming` package's own client against a real pacd:
Describe gives an installed handle program, a Transcript gets the tuned model's answer (streamed, then
Handled), a follow-up in the same conversation is answered with its context, and the service is
advertised as Home Assistant's integration browses for it."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop
from wyoming.info import Describe, Info
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from pac.assistant.decode import Decoding, Sampling, answer
from pac.assistant.store import Provenance
from pac.heads import HeadConfig
from pac.net.assistant_client import AssistantClient
from pacd.wyoming import Conversations
from tests.integration.conftest import make_cluster, pair_daemon, start_daemon
from tests.integration.test_assistant import random_adapter


def wyoming_port(daemon, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"Wyoming conversation service on 127\.0\.0\.1:(\d+)", daemon.log())
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise AssertionError(f"no Wyoming service started:\n{daemon.log()}")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    where = tmp_path_factory.mktemp("wyoming")
    cluster = make_cluster(where / "controller")
    daemon = start_daemon(where, secure=True, name="kitchen", mdns=True,
                          extra_args=("--wyoming", "--wyoming-port", "0"))
    try:
        pair_daemon(daemon, cluster)
        backbone, model = random_adapter("tiny-llama", HeadConfig("lm"), where / "chat.safetensors")

        async def deploy():
            async with AssistantClient(daemon.address, cluster.identity, daemon.node_id) as c:
                await c.deploy(where / "chat.safetensors", Provenance(name="kitchen-helper"))

        asyncio.run(deploy())
        yield daemon, wyoming_port(daemon), backbone, model
    finally:
        daemon.kill()


async def converse(port: int, *events) -> list:
    """Send `events` on one connection (as Home Assistant does per utterance); read until Handled + stop."""
    received = []
    async with AsyncTcpClient("127.0.0.1", port) as client:
        for event in events:
            await client.write_event(event.event())
        while True:
            event = await asyncio.wait_for(client.read_event(), 60)
            assert event is not None, f"connection closed after {received}"
            received.append(event)
            if HandledStop.is_type(event.type) or Info.is_type(event.type) or event.type == "not-handled":
                return received


def in_process(backbone, model, messages) -> str:
    prompt = backbone.tokenizer.chat_ids(messages)
    return "".join(p.text for p in answer(Decoding(backbone, model, prompt), backbone.tokenizer,
                                          Sampling(max_new_tokens=128))).strip()


def test_describe_offers_an_installed_conversation_program(home):
    _, port, _, _ = home
    (event,) = asyncio.run(converse(port, Describe()))
    info = Info.from_event(event)
    (program,) = info.handle
    assert program.installed and program.supports_handled_streaming and program.name == "pac"
    assert [m.name for m in program.models] == ["kitchen-helper"] and program.models[0].languages == ["en"]


def test_a_transcript_gets_the_tuned_answer_streamed_and_a_follow_up_keeps_the_conversation(home):
    _, port, backbone, model = home
    context = {"conversation_id": "01J-kitchen"}
    first = asyncio.run(converse(port, Transcript("is the oven on?", context=context, language="en")))
    assert HandledStart.is_type(first[0].type) and HandledStop.is_type(first[-1].type)
    handled = Handled.from_event(first[-2])
    chunks = "".join(HandledChunk.from_event(e).text for e in first[1:-2])
    question = [{"role": "user", "content": "is the oven on?"}]
    assert handled.text == chunks.strip() == in_process(backbone, model, question)
    assert handled.context == context

    second = asyncio.run(converse(port, Transcript("and the hall?", context=context, language="en")))
    follow_up = question + [{"role": "assistant", "content": handled.text}, {"role": "user", "content": "and the hall?"}]
    assert Handled.from_event(second[-2]).text == in_process(backbone, model, follow_up)


def test_the_service_is_advertised_where_home_assistant_looks(home):
    daemon, port, _, _ = home

    async def find() -> list[tuple[str, int]]:
        zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        names: set[str] = set()

        def seen(zeroconf, service_type, name, state_change) -> None:
            if state_change is ServiceStateChange.Added:
                names.add(name)

        browser = AsyncServiceBrowser(zc.zeroconf, "_wyoming._tcp.local.", handlers=[seen])
        try:
            for _ in range(50):
                await asyncio.sleep(0.1)
                if names:
                    break
            found = []
            for name in names:
                info = AsyncServiceInfo("_wyoming._tcp.local.", name)
                if await info.async_request(zc.zeroconf, 2000):
                    found.append((name, info.port))
            return found
        finally:
            await browser.async_cancel()
            await zc.async_close()

    found = asyncio.run(find())
    assert (f"pac-{daemon.node_id[:12]}._wyoming._tcp.local.", port) in found


def test_conversations_keep_the_last_turns_of_the_latest_ones():
    kept = Conversations(limit=2, turns=4)
    for turn in range(3):
        kept.add("a", f"q{turn}", f"a{turn}")
    assert kept.messages("a", "next") == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                          {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
                                          {"role": "user", "content": "next"}]
    kept.add("b", "q", "a")
    kept.add("c", "q", "a")
    assert kept.messages("a", "x") == [{"role": "user", "content": "x"}]  # the oldest conversation is forgotten
    assert kept.messages(None, "x") == [{"role": "user", "content": "x"}]
