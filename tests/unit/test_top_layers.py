"""Parallel Adapters with the backbone's top layers tuned too (pac.techniques.top), from the cache."""

from __future__ import annotations

import pytest
import torch

from pac.cache import ActivationCache
from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.techniques.build import TechniqueConfig, build_model, trainable_parameters
from pac.train.cached import CachedStates, cache_key_for
from pac.train.loop import TrainConfig, evaluate, train
from tests.tolerance import adam_movement_bound, assert_trained_close
from tests.unit.test_cache import items_for

FAMILIES = [("tiny-bert", "classification"), ("tiny-llama", "lm"), ("tiny-gpt2", "classification"),
            ("tiny-t5", "classification"), ("tiny-bart", "lm")]


def build(name, task, top=1, tuning="lora"):
    backbone = load_backbone(name)
    torch.manual_seed(0)
    model = build_model(backbone, TechniqueConfig("parallel", top_layers=top, top_tuning=tuning), HeadConfig(task))
    return backbone, model


def trained_state(model) -> dict[str, torch.Tensor]:
    return {f"side.{k}": v for k, v in model.side.state_dict().items()} | \
        {f"head.{k}": v for k, v in model.head.state_dict().items()} | \
        {f"top.{k}": v for k, v in model.top.trained_state().items()}


def run(name, task, cache_root=None, tuning="lora", epochs=3, lr=3e-3):
    backbone, model = build(name, task, tuning=tuning)
    items = items_for(backbone, task)
    states = None
    if cache_root is not None:
        states = CachedStates(ActivationCache(cache_root, cache_key_for(backbone, model.side.spec, "none"), "fp32"))
    config = TrainConfig(epochs=epochs, batch_size=4, learning_rate=lr, seed=0)
    result = train(model, items, task, backbone.tokenizer.pad_token_id, config, states=states)
    return model, states, result, items, backbone.tokenizer.pad_token_id


@pytest.mark.parametrize("name,task", FAMILIES)
def test_tuned_top_layers_learn_on_every_family(name, task):
    model, _, result, items, pad = run(name, task, epochs=8, lr=1e-2)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < first * 0.9, (first, last)
    lora = [p for n, p in model.top.layers.named_parameters() if "lora_B" in n]
    assert lora and all(p.abs().sum() > 0 for p in lora)  # the tuned layers moved (B starts at zero)
    assert evaluate(model, items, task, pad)  # and the model evaluates through them


@pytest.mark.parametrize("name,task", [("tiny-bert", "classification"), ("tiny-llama", "lm"),
                                       ("tiny-t5", "classification")])
def test_training_from_the_cache_equals_running_the_backbone(tmp_path, name, task):
    reference = run(name, task)[0]
    cached, states, *_ = run(name, task, tmp_path)
    assert cached.backbone is None and states.backbone_runs == 3 and states.cache_reads == 6
    # records hold the taps up to the first tuned layer's input (and the encoder output): no final state
    spec = cached.side.spec
    assert spec.cached_taps()[-1][-1] == spec.top_input and states.cache.key.final == spec.record_final()
    bound = adam_movement_bound(3e-3, 9)
    assert_trained_close(trained_state(cached), trained_state(reference), bound)
    states.cache.close()


def test_full_tuning_trains_every_weight_of_the_top_layers_only():
    backbone, model = build("tiny-bert", "classification", top=2, tuning="full")
    trainable = {id(p) for p in trainable_parameters(model)}
    stack = backbone.stacks[-1]
    assert all(id(p) in trainable for layer in stack[-2:] for p in layer.parameters())
    assert not any(id(p) in trainable for layer in stack[:-2] for p in layer.parameters())


def test_top_layers_outside_the_last_stack_or_without_parallel_are_refused():
    with pytest.raises(ConfigError, match="top_layers must be 0..2"):
        build("tiny-t5", "classification", top=3)
    with pytest.raises(ConfigError, match="technique 'lora' has none"):
        TechniqueConfig("lora", top_layers=1)
    with pytest.raises(ConfigError, match="top_tuning must be one of lora, full"):
        TechniqueConfig("parallel", top_layers=1, top_tuning="half")


def test_a_saved_adapter_with_tuned_top_layers_reattaches_to_a_fresh_backbone(tmp_path):
    from pac.adapter import load_adapter, save_adapter
    from pac.data.batching import collate

    model, states, _, items, pad = run("tiny-llama", "classification", tmp_path / "cache")
    batch = collate(items[:4], pad, "classification")
    model.eval()
    with torch.no_grad():
        cached = states.forward(model, items[:4], batch).logits  # from the cache, the backbone released
    save_adapter(model, tmp_path / "adapter.safetensors")
    states.cache.close()
    loaded = load_adapter(tmp_path / "adapter.safetensors", load_backbone("tiny-llama")).eval()
    assert loaded.top is not None and loaded.top.count == 1
    for key, value in trained_state(model).items():
        assert torch.equal(trained_state(loaded)[key], value), key
    with torch.no_grad():  # the fresh backbone runs the tuned layers as training from the cache did
        assert torch.allclose(loaded(batch).logits, cached, atol=1e-5)


def test_tuned_top_layers_alone_without_a_side_network(tmp_path):
    backbone = load_backbone("tiny-bert")
    torch.manual_seed(0)
    model = build_model(backbone, TechniqueConfig("parallel", side_layers=(), top_layers=1), HeadConfig("classification"))
    spec = model.side.spec
    assert not spec.has_blocks and spec.cached_taps() == ((spec.top_input,),) and spec.record_final() is None
    before = {k: v.clone() for k, v in model.side.state_dict().items()}
    items = items_for(backbone)
    states = CachedStates(ActivationCache(tmp_path, cache_key_for(backbone, spec, "none"), "fp32"))
    result = train(model, items, "classification", 0, TrainConfig(epochs=6, batch_size=4, learning_rate=1e-2),
                   states=states)
    assert states.cache_reads > 0 and sum(result.losses[-3:]) < sum(result.losses[:3]) * 0.9
    assert all(torch.equal(v, before[k]) for k, v in model.side.state_dict().items())  # nothing reads it
    states.cache.close()
    with pytest.raises(ConfigError, match="side_layers is empty"):
        build_model(load_backbone("tiny-bert"), TechniqueConfig("parallel", side_layers=()), HeadConfig("classification"))


def test_tuned_top_layers_train_from_a_16_bit_cache(tmp_path):
    """A 16-bit cache hands its states over in their own format; the tuned layers widen them to float32."""
    backbone, model = build("tiny-bert", "classification")
    items = items_for(backbone)
    states = CachedStates(ActivationCache(tmp_path, cache_key_for(backbone, model.side.spec, "none"), "fp16"))
    result = train(model, items, "classification", 0, TrainConfig(epochs=3, batch_size=4, learning_rate=3e-3),
                   states=states)
    assert states.cache_reads > 0 and all(torch.isfinite(torch.tensor(result.losses)))
    states.cache.close()


def test_untuned_switches_the_lora_factors_off_in_the_backbone_itself():
    """Tuned LoRA top layers live in the backbone's own modules: `untuned()` makes that backbone compute
    as the untuned one (the demo's "untuned" answers), and tuned again after."""
    from pac.data.batching import collate

    model, _, _, items, pad = run("tiny-llama", "lm", epochs=2, lr=1e-2)
    batch = collate(items[:3], pad, "lm")
    fresh = load_backbone("tiny-llama")
    with torch.no_grad():
        untouched = fresh._forward(batch)[0]
        tuned = model.backbone._forward(batch)[0]
        with model.top.untuned():
            untuned = model.backbone._forward(batch)[0]
        again = model.backbone._forward(batch)[0]
    assert torch.allclose(untuned, untouched, atol=1e-6) and not torch.allclose(tuned, untouched, atol=1e-4)
    assert torch.equal(again, tuned)
    _, full = build("tiny-bert", "classification", tuning="full")
    with pytest.raises(ConfigError, match="load it again"), full.top.untuned():
        pass
