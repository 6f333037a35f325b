"""The probe baseline: the head alone learns on the frozen backbone, which gets no gradient."""

import pytest
import torch

from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.techniques.build import TechniqueConfig, build_model, trainable_parameters
from pac.train.loop import TrainConfig, train
from tests.unit.test_parallel_adapters import FAMILIES, classification_items


@pytest.mark.parametrize("name", FAMILIES)
def test_probe_trains_the_head_alone(name):
    backbone = load_backbone(name)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = build_model(backbone, TechniqueConfig("probe"), HeadConfig("classification"))
    assert {id(p) for p in trainable_parameters(model)} == {id(p) for p in model.head.parameters()}
    items = classification_items(backbone, 16)
    result = train(model, items, "classification", backbone.tokenizer.pad_token_id,
                   TrainConfig(epochs=30, batch_size=8, learning_rate=5e-2, warmup_fraction=0.0))
    assert sum(result.losses[-2:]) < sum(result.losses[:2])
    assert all(p.grad is None for p in backbone.model.parameters())
    for key, value in backbone.model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)


def test_probe_refuses_a_language_model_head():
    backbone = load_backbone("tiny-gpt2")
    with pytest.raises(ConfigError, match="probe"):
        build_model(backbone, TechniqueConfig("probe"), HeadConfig("lm"))
