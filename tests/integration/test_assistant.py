"""The Assistant service on a real daemon over mutual TLS: deploy, list, chat answers streamed as the
in-process decoder gives them, classification, refusals that name what is wrong, cancellation and a
crowd of clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import torch

from pac.adapter import load_side_model, save_adapter
from pac.assistant.decode import Decoding, Sampling, answer
from pac.assistant.store import Provenance
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.net.assistant_client import AssistantClient, Usage
from pac.net.daemon_client import DaemonError
from pac.techniques.build import TechniqueConfig, build_model
from tests.integration.conftest import make_cluster, pair_daemon, start_daemon

QUESTION = [{"role": "system", "content": "You run the house."}, {"role": "user", "content": "lights?"}]


def random_adapter(name: str, head: HeadConfig, path, seed: int = 1):
    backbone = load_backbone(name, seed=0)
    model = build_model(backbone, TechniqueConfig("parallel"), head)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in list(model.side.parameters()) + list(model.head.parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    save_adapter(model, path, extra={"task": head.task})
    return backbone, model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    where = tmp_path_factory.mktemp("assistant")
    cluster = make_cluster(where / "controller")
    daemon = start_daemon(where, secure=True, name="home")
    try:
        pair_daemon(daemon, cluster)
        chat = random_adapter("tiny-llama", HeadConfig("lm"), where / "chat.safetensors")
        classify = random_adapter("tiny-bert", HeadConfig("classification", 3), where / "classify.safetensors")
        yield daemon, cluster, where, chat, classify
    finally:
        daemon.kill()


def client(served) -> AssistantClient:
    daemon, cluster, *_ = served
    return AssistantClient(daemon.address, cluster.identity, daemon.node_id)


TWELVE = Sampling(max_new_tokens=12)
FOUR = Sampling(max_new_tokens=4)


async def collect(c: AssistantClient, messages, sampling=TWELVE, model="") -> tuple[str, Usage]:
    text, usage = "", None
    async for item in c.generate(messages, sampling, model):
        if isinstance(item, Usage):
            usage = item
        else:
            text += item
    return text, usage


def test_deploy_list_and_answer_as_the_tuned_model_does_in_process(served):
    daemon, _, where, (backbone, model), _ = served

    async def run():
        async with client(served) as c:
            deployed, replaced = await c.deploy(where / "chat.safetensors",
                                                Provenance(name="household-chat", job_id="job-7", metrics={"loss": 1.5}))
            again, replaced_again = await c.deploy(where / "chat.safetensors", Provenance(name="household-chat"))
            models = await c.list_models()
            text, usage = await collect(c, QUESTION, model="household-chat")
            stop = text[3:5] or "never"
            stopped, _ = await collect(c, QUESTION, Sampling(max_new_tokens=12, stop=(stop,)))
            return deployed, replaced, again.id, replaced_again, models, text, usage, stop, stopped

    deployed, replaced, again, replaced_again, models, text, usage, stop, stopped = asyncio.run(run())
    assert (deployed.task, deployed.backbone, deployed.job_id, deployed.metrics) == ("chat", "tiny-llama", "job-7",
                                                                                     {"loss": 1.5})
    assert not replaced and replaced_again and again == deployed.id
    assert deployed.id in [m.id for m in models]
    prompt = backbone.tokenizer.chat_ids(QUESTION)
    want = "".join(p.text for p in answer(Decoding(backbone, model, prompt), backbone.tokenizer,
                                          Sampling(max_new_tokens=12)))
    assert text == want
    assert (usage.prompt_tokens, usage.model) == (len(prompt), deployed.id)
    assert usage.generated_tokens <= 12 and 0 < usage.time_to_first_token_s <= usage.seconds
    assert stopped == (text[:text.find(stop)] if stop in text else text)


def test_classify_gives_every_label_its_probability(served):
    _, _, where, _, (backbone, model) = served

    async def run():
        async with client(served) as c:
            await c.deploy(where / "classify.safetensors", Provenance(name="rooms", labels=("kitchen", "hall", "attic")))
            return await c.classify(["the oven is on", "shoes by the door"], model="rooms")

    _, results = asyncio.run(run())
    assert len(results) == 2
    for result in results:
        assert sorted(label for label, _, _ in result.labels) == ["attic", "hall", "kitchen"]
        assert sum(p for _, _, p in result.labels) == pytest.approx(1.0, abs=1e-5)
        assert [p for _, _, p in result.labels] == sorted((p for _, _, p in result.labels), reverse=True)


def test_a_mismatched_or_damaged_adapter_is_refused_naming_why(served, tmp_path):
    _, _, where, (backbone, _), _ = served
    other = load_side_model(where / "chat.safetensors", backbone.lm_head())
    other._identity = ("tiny-llama", "0" * 64)  # as if trained on other weights under the same name
    save_adapter(other, tmp_path / "other.safetensors", extra={"task": "lm"})
    (tmp_path / "junk.safetensors").write_bytes(b"not an adapter at all")

    async def run(path):
        async with client(served) as c:
            return await c.deploy(path, Provenance())

    with pytest.raises(DaemonError) as refused:
        asyncio.run(run(tmp_path / "other.safetensors"))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs backbone 'tiny-llama' with fingerprint 000000000000" in str(refused.value)
    with pytest.raises(DaemonError) as junk:
        asyncio.run(run(tmp_path / "junk.safetensors"))
    assert junk.value.code == grpc.StatusCode.INVALID_ARGUMENT and "not an adapter file" in str(junk.value)


def test_bad_requests_name_the_field(served):
    async def run(messages, sampling=FOUR, model=""):
        async with client(served) as c:
            return await collect(c, messages, sampling, model)

    with pytest.raises(DaemonError, match="the last turn must be the user's") as last:
        asyncio.run(run([{"role": "assistant", "content": "hi"}]))
    assert last.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(DaemonError, match="serves no model 'nope'") as missing:
        asyncio.run(run(QUESTION, model="nope"))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


def test_a_cancelled_answer_frees_the_daemon_and_a_crowd_is_answered_as_each_alone(served):
    daemon, _, where, (backbone, model), _ = served
    questions = [[{"role": "user", "content": "room " * (i % 5) + f"number {i}?"}] for i in range(16)]

    async def run():
        async with client(served) as c:
            await c.deploy(where / "chat.safetensors", Provenance(name="household-chat"))
            long = c.generate(QUESTION, Sampling(max_new_tokens=4000, stop=("\x00never",)))
            await anext(long)  # decoding has begun
            await long.aclose()  # the client goes away
            began = time.perf_counter()
            text, _ = await collect(c, QUESTION, Sampling(max_new_tokens=2))
            freed_s = time.perf_counter() - began
            crowd = await asyncio.gather(*(collect(c, q, Sampling(max_new_tokens=6)) for q in questions))
            return freed_s, crowd

    freed_s, crowd = asyncio.run(run())
    assert freed_s < 1.0
    for question, (text, usage) in zip(questions, crowd, strict=True):  # answered together, each as alone
        prompt = backbone.tokenizer.chat_ids(question)
        alone = "".join(p.text for p in answer(Decoding(backbone, model, prompt), backbone.tokenizer,
                                               Sampling(max_new_tokens=6)))
        assert (text, usage.prompt_tokens) == (alone, len(prompt))


def test_pacctl_deploys_a_run_lists_it_and_asks_it(served, tmp_path):
    daemon, cluster, where, (backbone, model), _ = served
    run = tmp_path / "kitchen-run"
    run.mkdir()
    (run / "adapter.safetensors").write_bytes((where / "chat.safetensors").read_bytes())
    (run / "metrics.json").write_text(json.dumps({"job_id": "job-9", "eval": {"accuracy": 0.75}}))
    common = ["--peer", daemon.address, "--no-mdns", "--home", str(cluster.home)]

    def pacctl(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pacctl", *args, *common], capture_output=True, text=True,
                              timeout=120)

    deployed = pacctl("deploy", str(run))
    assert deployed.returncode == 0, deployed.stderr
    assert "(kitchen-run: chat on tiny-llama)" in deployed.stdout
    listed = pacctl("models")
    assert "kitchen-run" in listed.stdout and "job job-9" in listed.stdout and "accuracy 0.750" in listed.stdout
    asked = pacctl("ask", "lights?", "--model", "kitchen-run", "--max-new-tokens", "10")
    assert asked.returncode == 0, asked.stderr
    prompt = backbone.tokenizer.chat_prompt("lights?")
    want = "".join(p.text for p in answer(Decoding(backbone, model, prompt), backbone.tokenizer,
                                          Sampling(max_new_tokens=10)))
    assert asked.stdout == want + "\n"
    assert "tokens/s" in asked.stderr
    missing = pacctl("deploy", str(tmp_path))
    assert missing.returncode == 1 and "no adapter.safetensors" in missing.stderr


def test_the_example_client_asks_with_the_stubs_alone(served):
    daemon, cluster, where, (backbone, model), _ = served

    async def deploy():
        async with client(served) as c:
            await c.deploy(where / "chat.safetensors", Provenance(name="household-chat"))

    asyncio.run(deploy())
    asked = subprocess.run([sys.executable, str(Path(__file__).parents[2] / "examples" / "ask.py"), daemon.address,
                            "lights?", "--home", str(cluster.home)], capture_output=True, text=True, timeout=120)
    assert asked.returncode == 0, asked.stderr
    prompt = backbone.tokenizer.chat_prompt("lights?")
    want = "".join(p.text for p in answer(Decoding(backbone, model, prompt), backbone.tokenizer,
                                          Sampling(max_new_tokens=96)))
    assert asked.stdout.startswith(want) and "tokens, first after" in asked.stdout


def test_a_device_training_a_job_says_so_instead_of_answering(served):
    from pac.net.stage_client import StageClient
    from pac.side.network import SideConfig
    from pac.train.loop import TrainConfig
    from pac.worker.spec import StageSpec
    from pac.worker.tensors import pack

    daemon, cluster, where, _, _ = served
    backbone = load_backbone("tiny-bert", seed=0)
    initial = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification")).state_dict()
    spec = StageSpec(job_id="job-busy", model="tiny-bert", quantization="none", seed=0, stage=0, replica=0, first=0,
                     end=3, side=SideConfig(), head=HeadConfig("classification"), train=TrainConfig(), total_steps=1,
                     shares=[[1]], addresses=[[daemon.address]], cache_precision=None)

    async def run():
        stages = StageClient("job-busy", {daemon.address: daemon.node_id}, cluster.identity)
        try:
            await stages.load(daemon.address, "loading", spec,
                              pack({k: v for k, v in initial.items() if k.startswith(("side.", "head."))}))
            async with client(served) as c:
                await c.deploy(where / "chat.safetensors", Provenance(name="household-chat"))
                with pytest.raises(DaemonError) as busy:
                    await collect(c, QUESTION, FOUR)
            await stages.release(daemon.address, keep_cache=False)
            async with client(served) as c:
                after, _ = await collect(c, QUESTION, FOUR)
            return busy.value, after
        finally:
            await stages.close()

    busy, after = asyncio.run(run())
    assert busy.code == grpc.StatusCode.UNAVAILABLE and "training job job-busy" in str(busy)
    assert isinstance(after, str)


def test_an_assistant_client_may_ask_and_nothing_else(served):
    from pac.errors import TrainingFailed
    from pac.net.stage_client import StageClient
    from pac.security.home import add_client, list_clients
    from pac.side.network import SideConfig
    from pac.train.loop import TrainConfig
    from pac.worker.spec import StageSpec

    daemon, cluster, where, _, _ = served
    home_assistant = add_client(cluster.home, "home-assistant-test")
    assert ("home-assistant-test", home_assistant) in list_clients(cluster.home) and home_assistant.role == "assistant"
    spec = StageSpec(job_id="job-intruder", model="tiny-bert", quantization="none", seed=0, stage=0, replica=0,
                     first=0, end=3, side=SideConfig(), head=HeadConfig("classification"), train=TrainConfig(),
                     total_steps=1, shares=[[1]], addresses=[[daemon.address]], cache_precision=None)

    async def run():
        async with client(served) as c:  # the controller deploys
            await c.deploy(where / "chat.safetensors", Provenance(name="household-chat"))
        async with AssistantClient(daemon.address, home_assistant, daemon.node_id) as c:
            text, _ = await collect(c, QUESTION, FOUR)
            models = await c.list_models()
            info = await c.info()
            with pytest.raises(DaemonError) as deploy:
                await c.deploy(where / "chat.safetensors", Provenance())
        stages = StageClient("job-intruder", {daemon.address: daemon.node_id}, home_assistant)
        try:
            with pytest.raises(TrainingFailed) as load:
                await stages.load(daemon.address, "loading", spec, b"")
        finally:
            await stages.close()
        return text, models, info, deploy.value, load.value

    text, models, info, deploy, load = asyncio.run(run())
    assert isinstance(text, str) and models and info["node_id"] == daemon.node_id
    assert deploy.code == grpc.StatusCode.PERMISSION_DENIED and "role 'assistant' may not call" in str(deploy)
    assert "PERMISSION_DENIED" in str(load) and "/pac.v1.Stage/Load" in str(load)
