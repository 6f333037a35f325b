"""pac/net/convert/stage.py: the Stage messages carry every field of the worker's types, both ways, and a
malformed spec is refused with the field named; pac/net/chunks.py splits and joins payloads."""

from __future__ import annotations

import asyncio

import pytest

from pac.data.batching import Encoded
from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.limits import MAX_CHUNK_BYTES
from pac.net.chunks import ChunkError, chunked, read_chunked, read_one
from pac.net.convert import stage as convert
from pac.side.network import SideConfig, SideSpec
from pac.side.weights import BlockStyle
from pac.train.loop import TrainConfig
from pac.v1 import stage_pb2
from pac.worker.spec import EpochStep, GatherPlan, GatherSample, Phase2Spec, StageSpec


def stage_spec(**changes) -> StageSpec:
    fields = dict(job_id="job-1", model="tiny-bert", quantization="int8", seed=7, stage=1, replica=0, first=2,
                  end=4, side=SideConfig(4, (0, 2, 3)), head=HeadConfig("classification", 3, "mean"),
                  train=TrainConfig(epochs=2, batch_size=8, learning_rate=5e-4, weight_decay=0.01,
                                    warmup_fraction=0.1, seed=7, max_grad_norm=float("inf"),
                                    activation_checkpointing=True, side_precision="bf16"),
                  total_steps=40, shares=[[1, 2], [3]], addresses=[["a:1", "b:2"], ["c:3"]], pad_id=-1,
                  codec="int8", cache_precision="fp16", cache_keep=True, timeout_s=30.0, cache_directory="/x")
    return StageSpec(**{**fields, **changes})


def side_spec(rope: float | None) -> SideSpec:
    style = BlockStyle("rms", 1e-6, "silu", True, True, True, rope, 4, 2, 8)
    return SideSpec("decoder", 64, 16, 2, 8, 32, False, style, (4,), ((1, 3),))


def test_stage_spec_round_trip():
    for spec in (stage_spec(), stage_spec(side=SideConfig(8, None), cache_precision=None, cache_directory=None)):
        assert convert.stage_spec_from_proto(convert.stage_spec_to_proto(spec)) == spec


def test_phase2_spec_round_trip():
    for rope, scale in ((10000.0, 0.5), (None, None)):
        spec = Phase2Spec(job_id="j", model="m", quantization="none", seed=1, side_spec=side_spec(rope),
                          head=HeadConfig("lm", 2, "last"), train=TrainConfig(), total_steps=9, steps_done=3,
                          rank=1, members=["a:1", "b:2"], fingerprint="f" * 64, tokenizer_fingerprint="t" * 64,
                          pad_id=0, lm_head_scale=scale, cache_precision="bf16", cache_keep=False, timeout_s=5.0)
        assert convert.phase2_spec_from_proto(convert.phase2_spec_to_proto(spec)) == spec


@pytest.mark.parametrize("changes, field", [
    ({"stage": 2}, "stage 2 of a pipeline of 2 stages"),
    ({"replica": 1}, "replica 1 of a stage of 1 replicas"),
    ({"first": 4}, "layers [4, 4) are empty"),
])
def test_a_malformed_stage_spec_names_what_is_wrong(changes, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace(")", r"\)")):
        convert.stage_spec_from_proto(convert.stage_spec_to_proto(stage_spec(**changes)))


def test_a_bad_config_inside_a_spec_names_its_section():
    message = convert.stage_spec_to_proto(stage_spec())
    message.job.train.side_precision = "fp8"
    with pytest.raises(ConfigError, match="train: side_precision must be one of"):
        convert.stage_spec_from_proto(message)
    message = convert.stage_spec_to_proto(stage_spec())
    message.stages[0].addresses.pop()
    with pytest.raises(ConfigError, match=r"stages\[0\] has 2 shares for 1 addresses"):
        convert.stage_spec_from_proto(message)


def test_gather_plan_keeps_every_kind_of_target():
    samples = (GatherSample("k1", Encoded((1, 2, 3), 2), ("a:1", "b:2")),
               GatherSample("k2", Encoded((4, 5), 0.25), ("a:1", "a:1")),
               GatherSample("k3", Encoded((6,), (-100, 7, 8), (9, 10)), ("b:2", "a:1")))
    plan = GatherPlan("a:1", 2, samples)
    back = convert.gather_from_proto(convert.gather_to_proto("job", plan, 60.0))
    assert back == plan
    assert isinstance(back.samples[0].item.target, int) and isinstance(back.samples[1].item.target, float)


def test_gather_plan_refuses_a_sample_without_a_source_per_stage():
    request = convert.gather_to_proto("job", GatherPlan("a:1", 2, (GatherSample("k", Encoded((1,), 1), ("a:1",)),)), 1)
    with pytest.raises(ConfigError, match=r"samples\[0\]: 1 sources for 2 stages"):
        convert.gather_from_proto(request)


def test_steps_events_and_reports_round_trip():
    steps = [EpochStep(("a", "b"), 5), EpochStep((), 3)]
    assert convert.steps_from_proto(convert.steps_to_proto(steps)) == steps
    events = [{"op": "F", "micro": 0, "start_s": 1.0, "end_s": 2.0},
              {"op": "send", "micro": None, "start_s": 2.0, "end_s": 2.5}]
    assert convert.events_from_proto(convert.events_to_proto(events)) == events


async def _stream(messages):
    for message in messages:
        yield message


def test_chunks_split_at_the_limit_and_join_per_record():
    big, small = bytes(range(256)) * (2 * MAX_CHUNK_BYTES // 256 + 1), b"xyz"
    first = chunked(stage_pb2.CacheRecordChunk, "header", stage_pb2.CacheRecordHeader(key="a"), "data", big)
    second = chunked(stage_pb2.CacheRecordChunk, "header", stage_pb2.CacheRecordHeader(), "data", small)
    assert len(first) == 3 and all(len(c.data) <= MAX_CHUNK_BYTES for c in first) and len(second) == 1
    records = asyncio.run(read_chunked(_stream(first + second), "header", "data"))
    assert [(h.key, d) for h, d in records] == [("a", big), ("", small)]  # an all-default header still counts
    with pytest.raises(ChunkError, match="expected one record"):
        asyncio.run(read_one(_stream(first + second), "header", "data"))
    with pytest.raises(ChunkError, match="first CacheRecordChunk of a record must carry its header"):
        asyncio.run(read_chunked(_stream(first[1:]), "header", "data"))
