"""Bucketing many small tensors into flat buckets and back."""

import torch

from pac.collective import pack, plan_buckets, unpack, unpack_into


def test_small_tensors_share_buckets_and_dtypes_never_mix():
    tensors = [torch.ones(10), torch.ones(5, dtype=torch.bfloat16), torch.ones(20), torch.ones(3, dtype=torch.bfloat16)]
    plans = plan_buckets(tensors, bucket_bytes=1024)
    assert [(p.dtype, p.numel, [s.tensor_index for s in p.slots]) for p in plans] == [
        (torch.float32, 30, [0, 2]),
        (torch.bfloat16, 8, [1, 3]),
    ]


def test_buckets_respect_the_size_limit_and_big_tensors_get_their_own():
    tensors = [torch.ones(100), torch.ones(100), torch.ones(1000), torch.ones(10)]
    plans = plan_buckets(tensors, bucket_bytes=800)  # 200 float32 per bucket
    assert [[s.tensor_index for s in p.slots] for p in plans] == [[0, 1], [2], [3]]
    assert all(p.numel * 4 <= 800 or len(p.slots) == 1 for p in plans)


def test_pack_then_unpack_gives_back_every_tensor():
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(shape, generator=generator) for shape in [(3, 4), (7,), (), (2, 2, 2), (0, 5)]]
    out = {}
    for plan in plan_buckets(tensors, bucket_bytes=64):
        out.update(unpack(pack(tensors, plan), plan, tensors))
    assert sorted(out) == list(range(len(tensors)))
    for index, tensor in enumerate(tensors):
        assert torch.equal(out[index], tensor)


def test_unpack_into_writes_back_in_place():
    tensors = [torch.zeros(3), torch.zeros(2, 2)]
    plan = plan_buckets(tensors)[0]
    flat = torch.arange(7, dtype=torch.float32)
    unpack_into(flat, plan, tensors)
    assert tensors[0].tolist() == [0, 1, 2] and tensors[1].tolist() == [[3, 4], [5, 6]]


def test_layout_depends_only_on_dtypes_and_sizes():
    a = plan_buckets([torch.zeros(4, 4), torch.zeros(9)], bucket_bytes=100)
    b = plan_buckets([torch.ones(16), torch.ones(3, 3)], bucket_bytes=100)
    assert [(p.dtype, p.numel) for p in a] == [(p.dtype, p.numel) for p in b]
