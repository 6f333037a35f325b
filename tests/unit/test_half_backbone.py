"""A frozen backbone held in 16 bits (`quantization = "bf16"` / `"fp16"`) beside an fp32 side network."""

import pytest
import torch

from pac.adapter import load_adapter, save_adapter
from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.quant import quantize_backbone
from pac.techniques.build import TechniqueConfig, build_model, trainable_parameters
from pac.train.finetune import FinetuneJob
from pac.train.loop import TrainConfig, train
from tests.unit.test_parallel_adapters import (
    FAMILIES,
    LM_FAMILIES,
    batch_of,
    chat_items,
    classification_items,
)


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_backbone_stays_close_and_keeps_its_fingerprint(name):
    backbone = load_backbone(name)
    batch = batch_of(backbone, classification_items(backbone, 4), "classification")
    reference, fingerprint = backbone.run(batch).final, backbone.fingerprint()
    assert quantize_backbone(backbone, "bf16") == sum(p.numel() for p in backbone.model.parameters())
    assert backbone.dtype == torch.bfloat16 and backbone.trainable_dtype == torch.float32
    out = backbone.run(batch).final
    assert out.dtype == torch.bfloat16
    assert ((out.float() - reference).norm() / reference.norm()).item() < 0.05
    assert backbone.fingerprint() == fingerprint  # an adapter re-attaches to the same checkpoint


@pytest.mark.parametrize("name", FAMILIES)
def test_side_network_trains_in_fp32_beside_a_bf16_backbone(name):
    backbone = load_backbone(name)
    quantize_backbone(backbone, "bf16")
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification"))
    assert {p.dtype for p in trainable_parameters(model)} == {torch.float32}
    items = classification_items(backbone, 16)
    result = train(model, items, "classification", backbone.tokenizer.pad_token_id,
                   TrainConfig(epochs=30, batch_size=8, learning_rate=5e-3, warmup_fraction=0.0))
    first, last = sum(result.losses[:2]) / 2, sum(result.losses[-2:]) / 2
    assert last < 0.5 * first
    assert all(p.grad is None for p in backbone.model.parameters())


@pytest.mark.parametrize("name", LM_FAMILIES)
def test_language_model_head_of_a_bf16_backbone(name, tmp_path):
    backbone = load_backbone(name)
    quantize_backbone(backbone, "bf16")
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("lm"))
    batch = batch_of(backbone, chat_items(backbone, 4), "lm")
    out = model(batch)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.side.up.weight.grad is not None
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    reloaded = load_adapter(path, backbone).eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(batch).logits, model(batch).logits)


def test_sixteen_bit_backbone_only_for_parallel_adapters():
    with pytest.raises(ConfigError, match="needs technique 'parallel'"):
        FinetuneJob(model="tiny-bert", train_file="x.jsonl", technique=TechniqueConfig("lora"), quantization="bf16")
    FinetuneJob(model="tiny-bert", train_file="x.jsonl", quantization="fp16")  # parallel: accepted
