"""Encoder layers that compute real tokens only (pac.models.unpadded): the same real positions as the
model's own forward, the padding handed through, and the planner costing the frozen layers at real tokens."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pac.models.backbone import load_backbone
from pac.models.unpadded import real_positions
from pac.pipeline.backbone_stage import BackboneStage
from pac.pipeline.layers import LayerSlice
from pac.planner.cost import CostModel
from pac.planner.synthetic import synthetic_home
from pac.planner.workload import TrainingJob


def _batch(lengths: list[int], seq: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 120, (len(lengths), seq), generator=generator)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _own_forward(backbone) -> None:
    for layer in backbone.stacks[0]:
        del layer.forward  # the instance's forward: the class's (the model's own) is seen again


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_positions_match_the_models_own_forward(dtype) -> None:
    skipping, own = load_backbone("tiny-bert", dtype=dtype), load_backbone("tiny-bert", dtype=dtype)
    assert skipping.unpadded
    _own_forward(own)
    batch = _batch([9, 4, 16, 1], 16)
    out, expected = skipping.run(batch), own.run(batch)
    real = batch["attention_mask"].bool()
    for got, want in zip(out.taps[0], expected.taps[0], strict=True):
        torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-5 if dtype == torch.float32 else 0)
    torch.testing.assert_close(out.final[real], expected.final[real], rtol=0, atol=1e-5 if dtype == torch.float32 else 0)
    # the padding is handed through: a layer's padded positions keep its input
    pad = ~real
    assert torch.equal(out.taps[0][2][pad], out.taps[0][1][pad])


def test_a_batch_without_padding_runs_the_models_own_forward_bit_for_bit() -> None:
    skipping, own = load_backbone("tiny-bert"), load_backbone("tiny-bert")
    _own_forward(own)
    batch = _batch([12, 12], 12)
    for got, want in zip(skipping.run(batch).taps[0], own.run(batch).taps[0], strict=True):
        assert torch.equal(got, want)


def test_a_pipeline_stage_skips_padding_too() -> None:
    """Two stages, each holding half the layers, give the whole model's real positions."""
    whole = load_backbone("tiny-bert")
    batch = _batch([7, 3, 10], 10)
    expected = whole.run(batch)
    sizes = tuple(len(s) for s in whole.stacks)
    half = sizes[0] // 2
    first = BackboneStage(load_backbone("tiny-bert"), LayerSlice(0, half, sizes))
    last = BackboneStage(load_backbone("tiny-bert"), LayerSlice(half, sizes[0], sizes))
    states = last.run(batch, first.run(batch, {}).outbound)
    real = batch["attention_mask"].bool()
    assert torch.equal(states.final[real], expected.final[real])


def test_real_positions_from_bool_and_additive_masks() -> None:
    allowed = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    boolean = allowed[:, None, None, :].expand(2, 1, 3, 3)
    additive = torch.zeros(2, 1, 3, 3).masked_fill(~boolean, torch.finfo(torch.float32).min)
    assert torch.equal(real_positions(boolean), allowed)
    assert torch.equal(real_positions(additive), allowed)


def test_other_families_keep_their_own_forward() -> None:
    assert not load_backbone("tiny-llama").unpadded
    assert not load_backbone("tiny-t5").unpadded


def test_the_planner_costs_frozen_layers_at_real_tokens_and_side_blocks_at_padded() -> None:
    home = synthetic_home(12, 3, seed=4)
    padded = TrainingJob(samples=256, batch_size=8, seq_len=128, padded_tokens=96.0)
    real = dataclasses.replace(padded, computed_tokens=64.0)
    assert padded.layer_token_fraction == padded.token_fraction == 0.75 and real.layer_token_fraction == 0.5
    assert dataclasses.replace(padded, computed_tokens=120.0).layer_token_fraction == 0.75
    (forward_padded, backward_padded), (forward_real, backward_real) = (
        CostModel(home, padded).layer_times(0, 8), CostModel(home, real).layer_times(0, 8))
    assert (forward_real < forward_padded).all()
    assert (backward_real == backward_padded).all()
