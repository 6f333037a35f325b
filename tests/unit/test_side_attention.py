"""Side self-attention over right-padded causal rows runs the kernel's own causal mask (half the work of
an explicit mask) and gives every real position exactly what the explicit padding + causal mask gives."""

import pytest
import torch

import pac.side.network as network
from pac.side.network import CAUSAL, self_attention_mask
from pac.techniques.build import model_masks
from tests.unit.test_parallel_adapters import FAMILIES
from tests.unit.test_side_memory import side_inputs


def explicit(padding, causal):
    return network.additive(network.attention_mask(padding, causal), torch.float32)


def test_mask_choice():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    full = torch.ones(2, 4, dtype=torch.long)
    assert self_attention_mask(right, causal=True) == CAUSAL
    assert self_attention_mask(full, causal=True) == CAUSAL
    torch.testing.assert_close(self_attention_mask(left, causal=True), explicit(left, True))
    torch.testing.assert_close(self_attention_mask(right, causal=False), explicit(right, False))
    assert self_attention_mask(full, causal=False) is None


def real_outputs_and_grads(model, taps, batch):
    model.zero_grad(set_to_none=True)
    masks = model_masks(batch, model.side.spec.family)
    delta = model.side(taps, masks)
    real = masks[-1].bool()
    (delta[real].square().sum() + delta[real].sum()).backward()
    return delta[real].detach(), {n: p.grad.clone() for n, p in model.side.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", FAMILIES)
def test_real_positions_match_the_explicit_mask(name, monkeypatch):
    model, taps, batch = side_inputs(name, torch.float32)
    masks = model_masks(batch, model.side.spec.family)
    assert (masks[-1] == 0).any(), "the batch must be padded for this test to mean anything"
    if model.side.spec.causal_stacks[-1]:
        assert self_attention_mask(masks[-1], causal=True) == CAUSAL  # the fast path is the one tested
    fast_out, fast_grads = real_outputs_and_grads(model, taps, batch)
    used = []
    monkeypatch.setattr(network, "self_attention_mask", lambda padding, causal: used.append(causal) or
                        explicit(padding, causal))
    slow_out, slow_grads = real_outputs_and_grads(model, taps, batch)
    assert used  # the reference really took the explicit path
    torch.testing.assert_close(fast_out, slow_out, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == slow_grads.keys()
    for key in slow_grads:
        torch.testing.assert_close(fast_grads[key], slow_grads[key], rtol=1e-4, atol=1e-6, msg=key)
