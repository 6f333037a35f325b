"""Phase 2's bookkeeping: who trains which samples, in which order, and how shard records join."""

import torch

from pac.cache import ActivationCache, CacheKey
from pac.cluster.assign import assign_phase2, phase2_counts, phase2_steps
from pac.pipeline.layers import LayerSlice
from pac.side.network import SideSpec
from pac.worker.phase2 import join_records
from pac.worker.spec import stage_taps


def test_counts_follow_the_plan_and_cover_every_sample():
    counts = phase2_counts(23, 8, {"a": 1, "b": 3, "c": 0})
    assert [sum(step.values()) for step in counts] == [8, 8, 7]
    assert counts[0] == {"a": 2, "b": 6}  # a device with share 0 sits phase 2 out
    assert sum(step["b"] for step in counts) == 6 + 6 + 5


def test_assignment_keeps_states_where_they_are():
    keys = [f"k{i}" for i in range(6)]
    # two stages: stage 0 (weight 3) computed k0-k2 on a, k3-k5 on b; stage 1 (weight 1) all on c
    holders = {k: ["a" if i < 3 else "b", "c"] for i, k in enumerate(keys)}
    assigned = assign_phase2(keys, holders, [3, 1], {"a": 2, "b": 2, "c": 2})
    assert sorted(assigned["a"]) == ["k0", "k1"] or set(assigned["a"]) <= {"k0", "k1", "k2"}
    assert set(assigned["b"]) <= {"k3", "k4", "k5"}
    assert sorted(k for ks in assigned.values() for k in ks) == sorted(keys)
    assert {d: len(ks) for d, ks in assigned.items()} == {"a": 2, "b": 2, "c": 2}


def test_steps_are_seeded_and_partition_each_devices_samples():
    assigned = {"x": [f"x{i}" for i in range(5)], "y": [f"y{i}" for i in range(3)]}
    counts = [{"x": 2, "y": 1}, {"x": 2, "y": 1}, {"x": 1, "y": 1}]
    first = phase2_steps(assigned, counts, seed=4, epoch=1)
    assert first == phase2_steps(assigned, counts, seed=4, epoch=1)
    assert first != phase2_steps(assigned, counts, seed=4, epoch=2)
    assert sorted(k for step in first for k in step["x"]) == sorted(assigned["x"])
    assert [len(step["y"]) for step in first] == [1, 1, 1]


def test_stage_taps_split_the_needed_taps_without_overlap():
    spec = SideSpec.__new__(SideSpec)
    object.__setattr__(spec, "taps", ((1, 2, 3, 4), (1, 2)))
    object.__setattr__(spec, "stack_sizes", (4, 2))
    cuts = [LayerSlice(0, 2, (4, 2)), LayerSlice(2, 5, (4, 2)), LayerSlice(5, 6, (4, 2))]
    taps = [stage_taps(spec, cut) for cut in cuts]
    assert taps[0] == [(0, 0), (0, 1), (0, 2)]
    assert taps[1] == [(0, 3), (0, 4), (1, 0), (1, 1)]  # crosses into the decoder: its h_0 too
    assert taps[2] == [(1, 2)]
    flat = [t for stage in taps for t in stage]
    assert flat == [(s, i) for s, needed in enumerate(spec.needed_taps()) for i in needed]


def test_shard_records_join_into_the_full_record(tmp_path):
    key = CacheKey("m", ((0, 1),), "none", "t")
    tensors = [torch.randn(5, 4), torch.randn(5, 4), torch.randn(3, 4)]
    with ActivationCache(tmp_path / "a", key, "fp16") as a, ActivationCache(tmp_path / "b", key, "fp16") as b, \
            ActivationCache(tmp_path / "full", key, "fp16") as full, \
            ActivationCache(tmp_path / "direct", key, "fp16") as direct:
        a.put("s", tensors[:2])
        b.put("s", tensors[2:])
        record, shapes = join_records([a.get_raw("s"), b.get_raw("s")])
        full.put_raw("s", record, shapes)
        direct.put("s", tensors)
        assert full.get_raw("s") == direct.get_raw("s")
        for got, want in zip(full.get("s"), tensors, strict=True):
            torch.testing.assert_close(got, want.half().float())


def test_phase2_member_takes_activation_checkpointing_from_the_job(tmp_path):
    from pac.heads import HeadConfig
    from pac.models.backbone import load_backbone
    from pac.techniques.build import TechniqueConfig, build_model
    from pac.train.loop import TrainConfig
    from pac.worker.phase2 import Phase2Member
    from pac.worker.spec import Phase2Spec

    backbone = load_backbone("tiny-bert")
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification"))
    tensors = {k: v for k, v in model.state_dict().items() if k.startswith(("side.", "head."))}
    for checkpointing in (False, True):
        spec = Phase2Spec(job_id="j", model="tiny-bert", quantization="none", seed=0,
                          side_spec=model.side.spec, head=HeadConfig("classification"),
                          train=TrainConfig(activation_checkpointing=checkpointing), total_steps=4,
                          steps_done=2, rank=0, members=["127.0.0.1:1"], fingerprint="f",
                          tokenizer_fingerprint="t", cache_precision="fp16")
        member = Phase2Member(spec, tensors, tmp_path / str(checkpointing), transport=None)
        assert member.model.side.checkpoint_blocks is checkpointing
        assert member.states.tap_dtype() == torch.float16  # the cache's own format, with or without checkpointing
        assert member.scheduler.last_epoch == 2  # the learning-rate schedule continues from phase 1
        member.cache.close()


def test_records_move_whole_from_a_member_first_then_any_holder_then_nowhere():
    from pac.cluster.phase2 import held_wholly, phase2_holders

    assigned = {"a": ["k1"], "b": ["k2"], "c": ["k3"], "d": ["k4"]}
    replicas = {"a": ["b"], "b": ["c"], "c": ["d"], "d": ["a"]}
    by_node = {"a": "A:1", "b": "B:1", "c": "C:1"}  # d is lost
    whole = held_wholly(assigned, replicas, by_node, members={"B:1"})
    # k1: a is no member, its copy on b is; k2: b itself; k3: c holds it (no member holds a copy); k4: its copy on a
    assert whole == {"k1": "B:1", "k2": "B:1", "k3": "C:1", "k4": "A:1"}
    assert phase2_holders(assigned, replicas, by_node) == {"A:1", "B:1", "C:1"}
    assert held_wholly({"d": ["k4"]}, {}, by_node, {"B:1"}) == {}  # no copy: recomputed


def test_whole_records_are_asked_of_their_holder_and_parts_of_the_shards():
    from pac.data.batching import Encoded
    from pac.worker.phase2 import fetches_for, whole_fetches
    from pac.worker.spec import GatherSample

    item = Encoded([1, 2], 0)
    samples = [GatherSample("k1", item, ("", ""), "B:1"), GatherSample("k2", item, ("A:1", "C:1")),
               GatherSample("k3", item, ("", ""), "ME"), GatherSample("k4", item, ("", ""))]
    assert whole_fetches(samples, "ME") == {"B:1": ["k1"]}
    assert fetches_for(samples, 0, "A:1") == {("C:1", 1): ["k2"]}  # the rest: fetched whole or recomputed
