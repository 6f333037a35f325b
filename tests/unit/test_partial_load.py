"""A stage reads only its layers from the checkpoint: the same tensors as the whole model's, the same
fingerprint, and nothing else in memory (pac.models.partial)."""

from __future__ import annotations

import json

import pytest
import torch

from pac.errors import ModelNotFoundError
from pac.models.backbone import load_backbone
from pac.models.partial import checkpoint_fingerprint, load_partial
from pac.pipeline.backbone_stage import BackboneStage, held_bytes, release_outside
from pac.pipeline.layers import LayerSlice
from pac.worker.spec import load_model


def saved(tmp_path, name: str):
    """The tiny model `name` saved as a model directory (safetensors, with a tokenizer)."""
    from transformers import BertTokenizerFast

    backbone = load_backbone(name)
    directory = tmp_path / name
    backbone.model.save_pretrained(directory)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(123)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), bos_token="[CLS]",
                      eos_token="[SEP]").save_pretrained(directory)
    return str(directory)


def releaser(first: int, end: int, lm_head: bool = True):
    def release(backbone) -> None:
        kept = LayerSlice(first, end, tuple(len(s) for s in backbone.stacks))
        release_outside(backbone, kept, lm_head and kept.is_last and backbone.has_lm_head)

    return release


def batch_for(backbone):
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 8, 3, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    if backbone.family == "encoder-decoder":
        batch["decoder_input_ids"] = torch.tensor([[0, 5, 6], [0, 7, 0]])
        batch["decoder_attention_mask"] = (batch["decoder_input_ids"] != 0).long()
        batch["decoder_attention_mask"][:, 0] = 1
    return batch


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-t5", "tiny-bart"])
def test_a_slice_holds_the_whole_models_tensors_and_runs_alike(tmp_path, name):
    directory = saved(tmp_path, name)
    whole = load_backbone(directory)
    total = whole.num_layers
    sizes = tuple(len(s) for s in whole.stacks)
    for first, end in [(0, 1), (1, total - 1), (total - 1, total)]:
        part = load_partial(directory, releaser(first, end))
        assert part.fingerprint() == whole.fingerprint()
        assert not any(p.is_meta for p in part.model.parameters())
        cut = load_backbone(directory)  # the whole model, then released alike
        releaser(first, end)(cut)
        reference = dict(cut.model.named_parameters(remove_duplicate=False))
        mine = dict(part.model.named_parameters(remove_duplicate=False))
        assert mine.keys() == reference.keys()
        for key, value in mine.items():
            assert value.shape == reference[key].shape and torch.equal(value, reference[key]), key
        for key, value in part.model.named_buffers():
            assert torch.equal(value, dict(cut.model.named_buffers())[key]), key
        assert held_bytes(part) == held_bytes(cut) < held_bytes(whole)
        # The stage computes what the same stage cut from the whole model computes.
        layers = LayerSlice(first, end, sizes)
        reference_stage = BackboneStage(load_backbone(directory), layers, lm_head=False)
        stage = BackboneStage(part, layers, lm_head=False)
        batch = batch_for(whole)
        inbound = {}
        if first:  # what the stages before it would send
            inbound = BackboneStage(load_backbone(directory), LayerSlice(0, first, sizes)).run(batch, {}).outbound
        got, want = stage.run(batch, inbound), reference_stage.run(batch, inbound)
        assert got.taps.keys() == want.taps.keys()
        for key in want.taps:
            torch.testing.assert_close(got.taps[key], want.taps[key], rtol=0, atol=0)


def test_a_middle_slice_holds_its_layers_alone(tmp_path):
    directory = saved(tmp_path, "tiny-llama")
    part = load_partial(directory, releaser(1, 2))
    held = {k for k, v in part.model.named_parameters() if v.numel()}
    assert held and all(k.startswith(("model.layers.1.", "model.norm.")) for k in held), held  # the norm: 64 numbers
    whole = load_backbone(directory)
    layer = sum(v.numel() * 4 for k, v in whole.model.named_parameters() if k.startswith(("model.layers.1.",
                                                                                           "model.norm.")))
    assert held_bytes(part) == layer + sum(b.numel() * b.element_size() for b in whole.model.buffers())


def test_load_model_of_a_stage_and_its_fingerprint(tmp_path):
    directory = saved(tmp_path, "tiny-bert")
    part, fingerprint = load_model(directory, "bf16", seed=0, layers=(2, 3))
    whole, whole_fingerprint = load_model(directory, "none", seed=0)
    assert fingerprint == whole_fingerprint == checkpoint_fingerprint(directory)
    assert part.dtype == torch.bfloat16
    assert part.model.get_input_embeddings().weight.numel() == 0  # the stage does not start the stack


def test_a_checkpoint_missing_a_layer_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = saved(tmp_path, "tiny-bert")
    path = f"{directory}/model.safetensors"
    tensors = load_file(path)
    del tensors["encoder.layer.1.attention.self.query.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ModelNotFoundError, match=r"model.safetensors: the checkpoint holds no "
                                                 r"encoder.layer.1.attention.self.query.weight"):
        load_partial(directory, releaser(1, 2))


def test_a_sharded_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = saved(tmp_path, "tiny-gpt2")
    tensors = load_file(f"{directory}/model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, f"{directory}/{file}", metadata={"format": "pt"})
    (tmp_path / "tiny-gpt2" / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (tmp_path / "tiny-gpt2" / "model.safetensors.index.json").write_text(json.dumps(index))
    whole = load_backbone(directory)
    part = load_partial(directory, releaser(1, 3))
    assert part.fingerprint() == whole.fingerprint()
    h = dict(whole.model.named_parameters())
    for key, value in part.model.named_parameters():
        if value.numel():
            assert torch.equal(value, h[key])


@pytest.mark.slow
def test_smollm2_gguf_slice(smollm2):
    part = load_partial("smollm2-135m", releaser(28, 30, lm_head=False))
    assert part.fingerprint() == smollm2.fingerprint()
    held = {k for k, v in part.model.named_parameters() if v.numel()}
    assert held and all(k.startswith(("model.layers.28.", "model.layers.29.", "model.norm.")) for k in held)
    reference = dict(smollm2.model.named_parameters())
    for key in held:
        assert torch.equal(dict(part.model.named_parameters())[key], reference[key]), key
    assert held_bytes(part) < held_bytes(smollm2) / 10


@pytest.mark.slow
def test_minilm_slice():
    whole = load_backbone("minilm")
    part = load_partial("minilm", releaser(0, 2))
    assert part.fingerprint() == whole.fingerprint()
    reference = dict(whole.model.named_parameters())
    for key, value in part.model.named_parameters():
        if value.numel():
            assert torch.equal(value, reference[key]), key
    assert held_bytes(part) < held_bytes(whole) * 0.75  # the word embeddings (47 MB) and two of six layers


def controller_job(tmp_path, directory: str, task: str, quantization: str, top: int):
    from pac.jobfile import parse_job

    rows = [{"prompt": f"w{i} w{i + 1}?", "answer": f"w{i * 3 % 100}"} if task == "lm" else
            {"text": f"w{i} w{i % 7} w{i % 5}", "label": i % 2} for i in range(12)]
    data = tmp_path / f"{task}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return parse_job({
        "model": {"name_or_path": directory, "quantization": quantization},
        "data": {"train": str(data), "task": task},
        "training": {"epochs": 1, "batch_size": 4, "seq_len": 16, "seed": 5, "top_layers": top},
        "devices": {"mode": "list", "addresses": ["127.0.0.1:1"], "insecure": True},
        "output": {"directory": str(tmp_path / "out")},
    }, source=str(tmp_path / "job.toml"))


@pytest.mark.parametrize("name,task,quantization,top", [
    ("tiny-bert", "classification", "none", 2), ("tiny-llama", "lm", "none", 1), ("tiny-t5", "lm", "none", 1),
    ("tiny-bert", "classification", "int8", 0), ("tiny-llama", "classification", "bf16", 0),
    ("tiny-gpt2", "classification", "none", 3)])
def test_the_controller_prepares_the_same_job_without_the_backbone(tmp_path, name, task, quantization, top):
    """The side network pruned from layers read one at a time, the head and the tuned top layers: bit for
    bit what a process holding the whole backbone starts from, while the controller holds no other layer."""
    from pac.cluster.prepare import prepare
    from pac.techniques.top import trained_tensors

    job = controller_job(tmp_path, saved(tmp_path, name), task, quantization, top)
    lean, whole = prepare(job, lambda line: None), prepare(job, lambda line: None, whole=True)
    assert lean.fingerprint == whole.fingerprint
    expected = trained_tensors(whole.model)
    got = trained_tensors(lean.model)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert lean.model.backbone is None  # released: evaluation scores from cached states
    held = {id(v) for v in lean.backbone.model.parameters() if v.numel() and not v.is_meta}
    stacks = lean.backbone.stacks
    for s, stack in enumerate(stacks):  # no layer is held but the tuned ones (and T5's position bias)
        for index, layer in enumerate(stack):
            tuned = s == len(stacks) - 1 and index >= len(stack) - top
            for key, value in layer.named_parameters():
                if id(value) in held:
                    assert tuned or "relative_attention_bias" in key, f"stack {s} layer {index}: {key}"
    if task == "lm":
        assert lean.lm_head is not None and torch.equal(lean.lm_head.weight, whole.backbone.lm_head().weight)


def test_a_model_too_large_for_the_device_is_profiled_from_a_sample_of_its_layers(tmp_path):
    from pac.profiling import SAMPLED_LAYERS, measure

    directory = saved(tmp_path, "tiny-t5")
    whole = measure(directory, [1, 2], 8, repeats=1)
    sampled = measure(directory, [1, 2], 8, repeats=1, memory_budget=1000)  # bytes: far below the model
    assert whole.sampled_layers is None
    encoder = len(load_backbone(directory).stacks[0])
    assert sampled.sampled_layers == sorted({*range(SAMPLED_LAYERS), *range(encoder, encoder + SAMPLED_LAYERS)})
    assert (sampled.param_bytes, sampled.embedding_param_bytes, sampled.head_param_bytes) == \
        (whole.param_bytes, whole.embedding_param_bytes, whole.head_param_bytes)
    for batch in (1, 2):
        assert len(sampled.forward_s[batch]) == len(whole.forward_s[batch]) and min(sampled.forward_s[batch]) > 0
        assert len(sampled.side_backward_s[batch]) == len(whole.side_backward_s[batch])


def test_a_backbone_whose_layers_the_side_network_does_not_know_still_loads():
    """DistilBERT's layers name their projections otherwise: the backbone loads (LoRA and the other
    techniques run), and only the side network is refused, naming why."""
    import transformers

    from pac.errors import ConfigError
    from pac.models.backbone import Backbone
    from pac.side.network import SideConfig, side_spec

    config = transformers.DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    backbone = Backbone("tiny-distilbert", transformers.DistilBertModel(config), None)
    assert backbone.layer_shape is None and backbone.num_layers == 2
    with pytest.raises(ConfigError, match="side network cannot be built beside distilbert layers"):
        side_spec(backbone, SideConfig())


@pytest.mark.parametrize("name,task,top", [("tiny-bert", "classification", 2), ("tiny-gpt2", "classification", 1),
                                           ("tiny-llama", "lm", 1), ("tiny-t5", "lm", 1),
                                           ("tiny-bart", "classification", 1), ("tiny-bert", "classification", 0)])
def test_the_controller_scores_from_cached_states_as_the_whole_model_does(tmp_path, name, task, top):
    """The lean controller model (no backbone) scores the evaluation data from cached records exactly as
    the whole model scores it: what runs around the tuned layers (position embeddings, norms) is held."""
    from pac.cache import ActivationCache
    from pac.cluster.prepare import prepare
    from pac.train.cached import CachedStates, cache_key_for
    from pac.train.loop import evaluate

    job = controller_job(tmp_path, saved(tmp_path, name), task, "none", top)
    lean, whole = prepare(job, lambda line: None), prepare(job, lambda line: None, whole=True)
    items = whole.train_items[:6]
    key = cache_key_for(whole.backbone, whole.model.side.spec, "none", whole.fingerprint)
    cache = ActivationCache(tmp_path / "records", key, "fp32")
    expected = evaluate(whole.model, items, task, whole.pad_id, states=CachedStates(cache))  # writes the records
    assert all(CachedStates(cache).all_cached([item]) for item in items)
    assert evaluate(lean.model, items, task, lean.pad_id, states=CachedStates(cache)) == expected
