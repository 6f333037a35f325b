"""Parallel Adapters on tiny random backbones of every family."""

import pytest
import torch

from pac.adapter import load_adapter, save_adapter
from pac.data.batching import collate, encode_example
from pac.data.readers import Example
from pac.errors import AdapterMismatchError
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.techniques.build import TechniqueConfig, build_model, trainable_parameters
from pac.train.loop import TrainConfig, train
from tests.tolerance import assert_rounding_close

FAMILIES = ["tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-t5", "tiny-bart"]
LM_FAMILIES = ["tiny-gpt2", "tiny-llama", "tiny-t5", "tiny-bart"]


def classification_items(backbone, count=16):
    examples = [Example(text=("good " if i % 2 else "bad ") * (1 + i % 3) + f"item{i}", label=i % 2)
                for i in range(count)]
    return [encode_example(e, backbone.tokenizer, "classification", backbone.family, 32) for e in examples]


def chat_items(backbone, count=8):
    examples = [Example(prompt=f"what is {i}?", answer=f"it is {i * 7}") for i in range(count)]
    return [encode_example(e, backbone.tokenizer, "lm", backbone.family, 48) for e in examples]


def batch_of(backbone, items, task):
    return collate(items, backbone.tokenizer.pad_token_id, task)


@pytest.mark.parametrize("name", FAMILIES)
def test_no_backbone_gradient_and_backward_never_touches_backbone(name):
    backbone = load_backbone(name)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification"))
    fired = []
    leaf_modules = [m for m in backbone.model.modules() if not list(m.children())]
    assert leaf_modules
    for module in leaf_modules:  # every operation of the backbone lives in a leaf module
        module.register_full_backward_hook(lambda m, gi, go: fired.append(type(m).__name__))
    batch = batch_of(backbone, classification_items(backbone, 4), "classification")
    loss = model(batch).loss
    # Every leaf of the autograd graph is a side-network or head parameter.
    trainable = {id(p) for p in trainable_parameters(model)}
    backbone_params = {id(p) for p in backbone.model.parameters()}
    seen, stack = set(), [loss.grad_fn]
    leaves = []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    assert leaves and all(id(v) in trainable and id(v) not in backbone_params for v in leaves)
    loss.backward()
    assert fired == []
    assert all(p.grad is None for p in backbone.model.parameters())
    assert all(not p.requires_grad for p in backbone.model.parameters())
    assert all(p.grad is not None for p in model.side.up.parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_step_zero_equals_backbone_classification(name):
    backbone = load_backbone(name)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification")).eval()
    batch = batch_of(backbone, classification_items(backbone, 4), "classification")
    final = backbone.run(batch).final
    expected = model.head(final, batch).logits
    assert torch.equal(model(batch).logits, expected)


@pytest.mark.parametrize("name", LM_FAMILIES)
def test_step_zero_equals_backbone_language_model(name):
    backbone = load_backbone(name)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("lm")).eval()
    batch = batch_of(backbone, chat_items(backbone, 3), "lm")
    with torch.no_grad():
        kwargs = {k: v for k, v in batch.items() if k != "labels"}
        reference = backbone.model(**kwargs, use_cache=False).logits
    labels = batch["labels"]
    if backbone.family == "decoder":
        reference, labels = reference[:, :-1], labels[:, 1:]
    expected = reference[labels != -100]
    # Up(a) is exactly zero, so the logits are the backbone's; the model runs the backbone's layers one by
    # one rather than through its own forward, which may build masks another way: rounding of one
    # hidden-width reduction at most.
    assert_rounding_close(model(batch).logits, expected, depth=backbone.model.config.hidden_size)


@pytest.mark.parametrize("name", FAMILIES)
def test_parallel_adapters_learn_classification(name):
    backbone = load_backbone(name)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification"))
    items = classification_items(backbone, 16)
    result = train(model, items, "classification", backbone.tokenizer.pad_token_id,
                   TrainConfig(epochs=30, batch_size=8, learning_rate=5e-3, warmup_fraction=0.0))
    first, last = sum(result.losses[:2]) / 2, sum(result.losses[-2:]) / 2
    assert last < 0.5 * first


@pytest.mark.parametrize("name", LM_FAMILIES)
def test_parallel_adapters_learn_language_model(name):
    backbone = load_backbone(name)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("lm"))
    items = chat_items(backbone, 8)
    result = train(model, items, "lm", backbone.tokenizer.pad_token_id,
                   TrainConfig(epochs=40, batch_size=8, learning_rate=3e-2, warmup_fraction=0.0))
    assert result.losses[-1] < 0.6 * result.losses[0]


def test_side_layers_subset():
    backbone = load_backbone("tiny-llama")
    full = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification"))
    subset = build_model(backbone, TechniqueConfig("parallel", side_layers=(2,)), HeadConfig("classification"))
    assert len(full.side.stacks[0]) == 3 and len(subset.side.stacks[0]) == 1
    assert subset.side.spec.taps == ((3,),)
    batch = batch_of(backbone, classification_items(backbone, 2), "classification")
    subset(batch).loss.backward()


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama", "tiny-t5"])
def test_save_load_reattach_reproduces_outputs(tmp_path, name):
    backbone = load_backbone(name)
    task = "classification" if name == "tiny-bert" else "lm"
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig(task))
    items = classification_items(backbone, 8) if task == "classification" else chat_items(backbone, 4)
    train(model, items, task, backbone.tokenizer.pad_token_id, TrainConfig(epochs=2, batch_size=4))
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    batch = batch_of(backbone, items, task)
    model.eval()
    expected = model(batch).logits
    reloaded = load_adapter(path, load_backbone(name)).eval()
    assert torch.equal(reloaded(batch).logits, expected)


def test_load_refuses_mismatched_backbone(tmp_path):
    model = build_model(load_backbone("tiny-llama"), TechniqueConfig("parallel"), HeadConfig("classification"))
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    with pytest.raises(AdapterMismatchError, match="tiny-llama"):
        load_adapter(path, load_backbone("tiny-llama", seed=1))  # same shape, other weights
    with pytest.raises(AdapterMismatchError):
        load_adapter(path, load_backbone("tiny-gpt2"))
