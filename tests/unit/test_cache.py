"""The activation cache: exact equivalence with recomputing, corruption, formats, lifetime."""

import os
import stat

import pytest
import torch

from pac.cache import ActivationCache, CacheCorruption, CacheKey, decode, encode
from pac.cache.codec import encoded_size
from pac.data.readers import Example
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.techniques.build import TechniqueConfig, build_model
from pac.train.cached import CachedStates, cache_key_for
from pac.train.loop import TrainConfig, train
from tests.tolerance import adam_movement_bound, assert_trained_close

KEY = CacheKey("weights", ((0, 1, 2),), "none", "tok")


def items_for(backbone, task="classification", count=12):
    from pac.data.batching import encode_example

    if task == "lm":
        examples = [Example(prompt=f"q{i}?" * (1 + i % 3), answer=f"a {i * 3}") for i in range(count)]
    else:
        examples = [Example(text=("nice " if i % 2 else "awful ") * (1 + i % 4) + str(i), label=i % 2)
                    for i in range(count)]
    return [encode_example(e, backbone.tokenizer, task, backbone.family, 48) for e in examples]


def trained(name, task, cache_root=None, precision="fp32", corrupt_after_epoch1=False, checkpointing=False):
    backbone = load_backbone(name)
    torch.manual_seed(0)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig(task))
    items = items_for(backbone, task)
    states = None
    if cache_root is not None:
        cache = ActivationCache(cache_root, cache_key_for(backbone, model.side.spec, "none"), precision)
        states = CachedStates(cache, load_backbone=lambda: load_backbone(name))
    config = TrainConfig(epochs=1, batch_size=4, learning_rate=3e-3, seed=0)
    train(model, items, task, backbone.tokenizer.pad_token_id, config, states=states)
    if corrupt_after_epoch1:
        with open(states.cache._data_path, "r+b") as handle:  # flip one byte of the first record
            handle.seek(10)
            byte = handle.read(1)
            handle.seek(10)
            handle.write(bytes([byte[0] ^ 0xFF]))
    more = TrainConfig(epochs=2, batch_size=4, learning_rate=3e-3, seed=1, activation_checkpointing=checkpointing)
    train(model, items, task, backbone.tokenizer.pad_token_id, more, states=states)
    return model, states


# How far AdamW can move an element in trained()'s two runs (3 steps, then 6): cached states are the
# backbone's to the last bit, but a record read back is padded to its own batch, so sums run in another
# order and the side network's gradients differ by rounding.
MOVEMENT = adam_movement_bound(3e-3, 3) + adam_movement_bound(3e-3, 6)


def trainable(model) -> dict[str, torch.Tensor]:
    return {f"side.{k}": v for k, v in model.side.state_dict().items()} | \
        {f"head.{k}": v for k, v in model.head.state_dict().items()}


@pytest.mark.parametrize("name,task", [("tiny-bert", "classification"), ("tiny-llama", "lm"),
                                       ("tiny-t5", "classification")])
def test_training_from_cache_equals_recomputing(tmp_path, name, task):
    reference, _ = trained(name, task)
    cached, states = trained(name, task, tmp_path)
    assert cached.backbone is None  # released: epochs 2-3 never ran the backbone
    assert states.cache_reads > 0 and states.backbone_runs == 3  # 12 samples / 4 in epoch 1 only
    assert_trained_close(trainable(cached), trainable(reference), MOVEMENT)
    states.cache.close()


@pytest.mark.parametrize("name,task,precision", [("tiny-llama", "lm", "fp16"), ("tiny-t5", "classification", "bf16")])
def test_checkpointed_epochs_from_a_16_bit_cache_equal_plain_ones(tmp_path, name, task, precision):
    """Activation checkpointing with the batch's states kept in the cache's 16-bit format trains the
    same parameters as keeping every activation and widening the states on reading."""
    plain, states = trained(name, task, tmp_path / "a", precision)
    assert states.tap_dtype() != torch.float32
    states.cache.close()
    checkpointed, states = trained(name, task, tmp_path / "b", precision, checkpointing=True)
    assert checkpointed.side.checkpoint_blocks and states.cache_reads > 0
    assert_trained_close(trainable(checkpointed), trainable(plain), MOVEMENT)
    states.cache.close()


def test_corrupt_record_is_caught_and_recomputed(tmp_path, caplog):
    reference, _ = trained("tiny-bert", "classification")
    repaired, states = trained("tiny-bert", "classification", tmp_path, corrupt_after_epoch1=True)
    assert states.cache.corrupt_found == 1
    assert "failed its checksum" in caplog.text
    assert states.backbone_runs > 3  # the backbone was loaded again to recompute the record
    assert_trained_close(trainable(repaired), trainable(reference), MOVEMENT)
    states.cache.close()


def test_get_raises_on_checksum_mismatch(tmp_path):
    cache = ActivationCache(tmp_path, KEY, "fp16")
    cache.put("s1", [torch.randn(5, 8), torch.randn(5, 8)])
    cache.flush()
    data = cache._data_path.read_bytes()
    cache._data_path.write_bytes(data[:3] + bytes([data[3] ^ 1]) + data[4:])
    with pytest.raises(CacheCorruption, match="checksum"):
        cache.get("s1")
    assert "s1" not in cache  # never read again
    cache.close()


@pytest.mark.parametrize("precision,tolerance", [("fp32", 0.0), ("fp16", 1e-3), ("bf16", 1e-2), ("int8", 1e-2)])
def test_codec_round_trip(precision, tolerance):
    tensor = torch.randn(7, 33) * 3
    data = encode(tensor, precision)
    assert len(data) == encoded_size(precision, 7, 33)
    back = decode(data, precision, 7, 33)
    relative = ((back - tensor).abs().amax(-1) / tensor.abs().amax(-1)).max().item()
    assert relative <= tolerance


@pytest.mark.parametrize("read_mode", ["stream", "mmap"])
def test_reopen_finds_records_and_files_are_private(tmp_path, read_mode):
    tensors = [torch.randn(4, 6), torch.randn(4, 6)]
    with ActivationCache(tmp_path, KEY, "fp32", read_mode=read_mode, keep=True) as cache:
        cache.put("a", tensors)
        directory = cache.directory
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cache = ActivationCache(tmp_path, KEY, "fp32", read_mode=read_mode)
    assert "a" in cache and torch.equal(cache.get("a")[1], tensors[1])
    manifest = cache.manifest()
    assert manifest["records"] == 1 and manifest["record_bytes"] == 2 * 4 * 6 * 4
    cache.close()
    assert not directory.exists()  # removed when the job ends unless kept


def test_changed_key_never_reads_stale_entries(tmp_path):
    with ActivationCache(tmp_path, KEY, "fp32", keep=True) as cache:
        cache.put("a", [torch.ones(2, 2)])
    other = CacheKey("other-weights", KEY.taps, KEY.quantization, KEY.tokenizer_fingerprint)
    with ActivationCache(tmp_path, other, "fp32") as cache:
        assert "a" not in cache


def test_torn_index_line_is_ignored(tmp_path):
    with ActivationCache(tmp_path, KEY, "fp32", keep=True) as cache:
        cache.put("a", [torch.ones(2, 2)])
        directory = cache.directory
    with open(directory / "index.jsonl", "a") as handle:
        handle.write('{"key": "b", "offs')
    with ActivationCache(tmp_path, KEY, "fp32") as cache:
        assert len(cache) == 1


def test_adapter_saved_after_the_backbone_was_released_reattaches(tmp_path):
    from pac.adapter import load_adapter, save_adapter

    model, states = trained("tiny-llama", "lm", tmp_path / "cache")
    assert model.backbone is None
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    states.cache.close()
    reloaded = load_adapter(path, load_backbone("tiny-llama"))
    for a, b in zip(model.side.parameters(), reloaded.side.parameters(), strict=True):
        assert torch.equal(a, b)


def test_adapter_trained_on_a_quantized_backbone_reattaches_to_its_checkpoint(tmp_path):
    from pac.adapter import load_adapter, save_adapter
    from pac.quant import quantize_backbone

    backbone = load_backbone("tiny-bert")
    quantize_backbone(backbone, "int8")
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification"))
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    load_adapter(path, load_backbone("tiny-bert"))  # same checkpoint: accepted
