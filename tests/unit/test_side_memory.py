"""What a side network keeps for backward: 16-bit backbone states as they are (widened only while used)
and an MLP's two pre-activations, with the same arithmetic as plain autograd."""

import math

import pytest
import torch

from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.side.blocks import SideMLP
from pac.side.weights import BlockStyle
from pac.techniques.build import TechniqueConfig, build_model, model_masks
from pac.train.finetune import FinetuneJob
from pac.train.loop import TrainConfig, train
from tests.tolerance import assert_rounding_close
from tests.unit.test_parallel_adapters import FAMILIES, batch_of, classification_items


def side_inputs(name, dtype):
    torch.manual_seed(0)
    backbone = load_backbone(name)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification"))
    torch.nn.init.normal_(model.side.up.weight, std=0.02)  # let gradients reach every side block
    batch = batch_of(backbone, classification_items(backbone, 4), "classification")
    out = backbone.run(batch)
    taps = [[None if t is None else t.to(dtype) for t in stack] for stack in out.taps]
    return model, taps, batch


def side_grads(model, taps, batch):
    model.zero_grad(set_to_none=True)
    delta = model.side(taps, model_masks(batch, model.side.spec.family))
    (delta.square().sum() + delta.sum()).backward()
    return delta.detach(), {n: p.grad.clone() for n, p in model.side.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_states_train_exactly_as_their_fp32_widening(name, dtype):
    model, taps, batch = side_inputs(name, dtype)
    widened = [[None if t is None else t.float() for t in stack] for stack in taps]
    out16, grads16 = side_grads(model, taps, batch)
    out32, grads32 = side_grads(model, widened, batch)
    torch.testing.assert_close(out16, out32, rtol=0, atol=0)
    assert grads16.keys() == grads32.keys() and any(".down." in n for n in grads16)
    # the same values, but a weight gradient widened inside another kernel sums its token rows in
    # another order: rounding of one reduction over the batch's tokens
    tokens = batch["input_ids"].numel()
    for key in grads32:
        assert_rounding_close(grads16[key], grads32[key], depth=tokens, msg=key)


def saved_tensors(model, taps, batch):
    saved = {}

    def pack(tensor):
        saved.setdefault(tensor.untyped_storage().data_ptr(), (tuple(tensor.shape), tensor.dtype))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.side(taps, model_masks(batch, model.side.spec.family))
    return list(saved.values())


def test_backward_keeps_16_bit_states_not_fp32_copies():
    model, taps, batch = side_inputs("tiny-llama", torch.bfloat16)
    d = model.side.spec.hidden_size
    states = [s for s in saved_tensors(model, taps, batch) if len(s[0]) == 3 and s[0][-1] == d]
    assert len(states) == len(model.side.spec.needed_taps()[0])  # h_0 for the entry, h_i for every block
    assert {dtype for _, dtype in states} == {torch.bfloat16}


def test_attention_keeps_one_mask_for_every_block():
    model, taps, batch = side_inputs("tiny-bert", torch.float32)
    length = batch["attention_mask"].shape[1]
    masks = [s for s in saved_tensors(model, taps, batch) if s[0][-2:] == (length, length) and s[0][1] == 1]
    assert len(masks) <= 1


@pytest.mark.parametrize("gated,activation", [(True, "silu"), (False, "gelu"), (True, "gelu_new"), (False, "relu")])
def test_mlp_keeps_two_inner_tensors_and_matches_plain_autograd(gated, activation):
    torch.manual_seed(0)
    style = BlockStyle(norm="rms", norm_eps=1e-6, activation=activation, gated_mlp=gated, pre_norm=True,
                       causal=False, rope_theta=None, num_heads=2, num_kv_heads=2, head_dim=4)
    mlp = SideMLP(8, 24, style, bias=not gated).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mlp, (x,))

    def reference(y):
        inner = mlp.act(mlp.gate(y)) * mlp.up(y) if gated else mlp.act(mlp.up(y))
        return mlp.down(inner)

    out, expected = mlp(x), reference(x)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), [x, *mlp.parameters()])
    torch.testing.assert_close(grads, torch.autograd.grad(expected.sum(), [x, *mlp.parameters()]))
    inner = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: inner.append(t.shape) or t, lambda t: t):
        mlp(x)
    assert sum(1 for shape in inner if len(shape) == 3 and shape[-1] == 24) == (2 if gated else 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_arithmetic_stays_close_keeps_fp32_weights_and_keeps_less(name):
    model, taps, batch = side_inputs(name, torch.bfloat16)
    out32, grads32 = side_grads(model, taps, batch)
    fp32_saved = sum(math.prod(shape) * dtype.itemsize for shape, dtype in saved_tensors(model, taps, batch))
    model.side.compute_dtype = torch.bfloat16
    out16, grads16 = side_grads(model, taps, batch)
    assert out16.dtype == torch.float32 and {g.dtype for g in grads16.values()} == {torch.float32}
    assert ((out16 - out32).norm() / out32.norm()).item() < 0.03
    scale = torch.cat([g.flatten() for g in grads32.values()]).norm()
    for key in grads32:  # every gradient close, relative to its own size or (one that is zero in exact
        # arithmetic, like attention's key bias) to the whole gradient's
        error = (grads16[key] - grads32[key]).norm()
        assert error < 0.1 * grads32[key].norm() or error < 1e-4 * scale, key
    bf16_saved = sum(math.prod(shape) * dtype.itemsize for shape, dtype in saved_tensors(model, taps, batch))
    assert bf16_saved < 0.9 * fp32_saved  # tiny widths: weights are a large share; 0.79 on smollm2-135m


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_parallel_adapters_learn_with_bf16_arithmetic(name):
    backbone = load_backbone(name)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("classification"))
    items = classification_items(backbone, 16)
    result = train(model, items, "classification", backbone.tokenizer.pad_token_id,
                   TrainConfig(epochs=30, batch_size=8, learning_rate=5e-3, warmup_fraction=0.0,
                               side_precision="bf16"))
    assert model.side.compute_dtype == torch.bfloat16
    assert {p.dtype for p in model.side.parameters()} == {torch.float32}
    first, last = sum(result.losses[:2]) / 2, sum(result.losses[-2:]) / 2
    assert last < 0.5 * first


def test_side_precision_is_for_parallel_adapters_only():
    with pytest.raises(ConfigError, match="side_precision 'bf16' needs technique 'parallel'"):
        FinetuneJob(model="tiny-bert", train_file="x.jsonl", technique=TechniqueConfig("lora"),
                    train=TrainConfig(side_precision="bf16"))
    with pytest.raises(ConfigError, match="side_precision must be one of fp32, bf16"):
        TrainConfig(side_precision="fp16")
