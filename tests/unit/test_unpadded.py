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


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_positions_match_the_models_own_forward(model, dtype) -> None:
    """An encoder's and a decoder's layers: every tapped state and the final one at the real positions."""
    skipping, own = load_backbone(model, dtype=dtype), load_backbone(model, dtype=dtype)
    assert skipping.unpadded
    _own_forward(own)
    batch = _batch([9, 4, 16, 1], 16)
    out, expected = skipping.run(batch), own.run(batch)
    real = batch["attention_mask"].bool()
    tolerance = 1e-5 if dtype == torch.float32 else 0
    for got, want in zip([*out.taps[0], out.final], [*expected.taps[0], expected.final], strict=True):
        torch.testing.assert_close(got[real], want[real], rtol=0, atol=tolerance)
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


def test_decoding_with_the_key_value_cache_runs_the_models_own_forward() -> None:
    """A decoding call (use_cache) never takes the padding-skipping forward: the cache needs every position."""
    skipping, own = load_backbone("tiny-llama"), load_backbone("tiny-llama")
    _own_forward(own)
    batch = _batch([6, 6], 6)
    batch["attention_mask"][0, :2] = 0  # left padding, as serving lays out a batch of prompts
    got, _ = skipping.run_cached(batch)
    want, _ = own.run_cached(batch)
    for a, b in zip(got.taps[-1], want.taps[-1], strict=True):
        assert torch.equal(a, b)


def test_other_families_keep_their_own_forward() -> None:
    assert not load_backbone("tiny-gpt2").unpadded
    assert not load_backbone("tiny-t5").unpadded


def test_the_planner_scales_the_frozen_forward_as_the_device_measured_it() -> None:
    """The real share plus the gathering's cost (the profile's `half_padded_forward_ratio` beyond one half);
    the side blocks' part of a layer's time (half their backward) and backward untouched."""
    home = synthetic_home(12, 3, seed=4)
    padded = TrainingJob(samples=256, batch_size=8, seq_len=128, padded_tokens=96.0)
    half, three_quarters = (dataclasses.replace(padded, computed_tokens=n) for n in (48.0, 72.0))
    assert padded.real_share == 1.0 and half.real_share == 0.5 and three_quarters.real_share == 0.75
    assert half.padding_scale(0.7) == pytest.approx(0.7) and padded.padding_scale(0.7) == 1.0
    assert three_quarters.padding_scale(0.7) == pytest.approx(0.95) and three_quarters.padding_scale(0.6) == pytest.approx(0.85)
    assert half.padding_scale(1.0) == 1.0  # layers that compute the padding
    assert dataclasses.replace(padded, computed_tokens=10.0).padding_scale(0.5) == pytest.approx(10 / 96)
    skipping = dataclasses.replace(home, devices=tuple(dataclasses.replace(d, half_padded_forward_ratio=0.7)
                                                        for d in home.devices))
    forward, backward = CostModel(home, padded).layer_times(0, 8)
    assert all((a == forward).all() and (b == backward).all()  # devices that measured no gain: as before
               for a, b in [CostModel(home, half).layer_times(0, 8)])
    faster, same_backward = CostModel(skipping, half).layer_times(0, 8)
    frozen = forward - backward / 2
    assert faster == pytest.approx(backward / 2 + 0.7 * frozen) and (same_backward == backward).all()


def test_the_profile_measures_how_the_layers_skip_padding() -> None:
    from pac.profiling import _batch, _half_padded_ratio, measure

    backbone = load_backbone("tiny-bert")
    ratio = _half_padded_ratio(backbone, list(backbone.stacks[0]), _batch(backbone, 8, 32), 1, full_s=10.0)
    assert 0 < ratio < 1.0  # far below the 10 s given for the whole batch
    t5 = load_backbone("tiny-t5")
    assert _half_padded_ratio(t5, [layer for stack in t5.stacks for layer in stack], _batch(t5, 2, 8), 1, 1.0) == 1.0
    assert 0 < measure("tiny-bert", [1, 2], 16, repeats=1).half_padded_forward_ratio <= 1.0
    assert measure("tiny-t5", [1, 2], 16, repeats=1).half_padded_forward_ratio == 1.0
