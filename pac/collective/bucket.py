"""Packing many small tensors (adapter gradients) into a few flat buckets, and unpacking them.

A ring step costs a round trip however small its chunk, so AllReducing hundreds of small tensors one by one
would be latency-bound. Tensors of one dtype are laid end to end into flat buckets of at most
`bucket_bytes` (a tensor larger than that gets a bucket of its own); the AllReduce runs per bucket, and
`unpack` copies the sums back into tensors shaped like the inputs. The layout depends only on the tensors'
dtypes and sizes, in order, so every rank computes the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_BUCKET_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Slot:
    tensor_index: int  # position of the tensor in the list given to plan_buckets
    offset: int  # first element of the tensor inside its bucket
    numel: int


@dataclass(frozen=True)
class BucketPlan:
    dtype: torch.dtype
    numel: int  # total elements of the flat bucket
    slots: tuple[Slot, ...]


def plan_buckets(tensors: list[torch.Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[BucketPlan]:
    """Group tensors by dtype (first appearance order), then fill buckets in list order."""
    if bucket_bytes < 1:
        raise ValueError("bucket_bytes must be >= 1")
    by_dtype: dict[torch.dtype, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_dtype.setdefault(tensor.dtype, []).append(index)
    plans: list[BucketPlan] = []
    for dtype, indices in by_dtype.items():
        limit = max(1, bucket_bytes // dtype.itemsize)
        slots: list[Slot] = []
        filled = 0
        for index in indices:
            numel = tensors[index].numel()
            if slots and filled + numel > limit:
                plans.append(BucketPlan(dtype, filled, tuple(slots)))
                slots, filled = [], 0
            slots.append(Slot(index, filled, numel))
            filled += numel
        if slots:
            plans.append(BucketPlan(dtype, filled, tuple(slots)))
    return plans


def pack(tensors: list[torch.Tensor], plan: BucketPlan) -> torch.Tensor:
    """A new flat CPU tensor holding the plan's tensors end to end."""
    flat = torch.empty(plan.numel, dtype=plan.dtype)
    for slot in plan.slots:
        flat[slot.offset : slot.offset + slot.numel] = tensors[slot.tensor_index].detach().reshape(-1).cpu()
    return flat


def unpack(flat: torch.Tensor, plan: BucketPlan, like: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """New tensors, shaped and placed like like[i], holding each slot's part of `flat`; keyed by i."""
    return {
        slot.tensor_index: flat[slot.offset : slot.offset + slot.numel]
        .reshape(like[slot.tensor_index].shape)
        .to(like[slot.tensor_index].device, copy=True)
        for slot in plan.slots
    }


def unpack_into(flat: torch.Tensor, plan: BucketPlan, tensors: list[torch.Tensor]) -> None:
    """Copy each slot's part of `flat` back into its tensor, in place."""
    with torch.no_grad():
        for slot in plan.slots:
            target = tensors[slot.tensor_index]
            target.copy_(flat[slot.offset : slot.offset + slot.numel].reshape(target.shape))
