"""Decoding with key/value caches computes what recomputing the whole sequence computes, for every
family that generates; sampling is seeded and bounded; stop strings end the answer."""

from __future__ import annotations

import pytest
import torch

from pac.assistant.decode import Decoding, Sampling, _Text, answer, choose
from pac.errors import ConfigError
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.models.tiny import ByteTokenizer
from pac.techniques.build import TechniqueConfig, build_model, model_masks
from pac.train.generate import generate_recomputing

FAMILIES = ["tiny-llama", "tiny-gpt2", "tiny-t5", "tiny-bart"]


def tuned(name: str):
    """A backbone and a Parallel Adapter with random (not zero-initialised) weights, so the side network
    changes every logit."""
    backbone = load_backbone(name, seed=0)
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("lm"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.side.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return backbone, model


def full_logits(backbone, model, prompt: list[int], answer_ids: list[int]) -> torch.Tensor:
    """The logits of every answer position, from one pass over the whole sequence."""
    if backbone.family == "encoder-decoder":
        decoder = torch.tensor([[backbone.config.decoder_start_token_id, *answer_ids]])
        ids = torch.tensor([prompt])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": decoder,
                 "decoder_attention_mask": torch.ones_like(decoder)}
        first = 0
    else:
        ids = torch.tensor([prompt + answer_ids])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        first = len(prompt) - 1
    with torch.no_grad():
        out = backbone.run(batch)
        hidden = out.final + model.side.eval()(out.taps, model_masks(batch, backbone.family))
        return backbone.lm_logits(hidden[0, first:])


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_decoding_gives_the_logits_of_recomputing(name):
    backbone, model = tuned(name)
    prompt, answer_ids = [1, 40, 41, 42, 43, 44], [50, 51, 52, 53, 54, 55, 56]
    decoding = Decoding(backbone, model, prompt)
    steps = [decoding.start()] + [decoding.feed(t) for t in answer_ids]
    torch.testing.assert_close(torch.stack(steps), full_logits(backbone, model, prompt, answer_ids),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_answers_are_the_tokens_of_recomputing(name):
    backbone, model = tuned(name)
    tokenizer = backbone.tokenizer
    for question in ("what time is it", "turn on the lights"):
        prompt = tokenizer.chat_prompt(question)
        want = generate_recomputing(backbone, prompt, model, max_new_tokens=12)
        pieces = list(answer(Decoding(backbone, model, prompt), tokenizer, Sampling(max_new_tokens=12)))
        assert sum(p.tokens for p in pieces) == len(want)
        assert "".join(p.text for p in pieces) == tokenizer.decode(want)


def test_the_untuned_backbone_decodes_too():
    backbone = load_backbone("tiny-llama", seed=0)
    prompt = backbone.tokenizer.chat_prompt("hello")
    pieces = list(answer(Decoding(backbone, None, prompt), backbone.tokenizer, Sampling(max_new_tokens=8)))
    assert "".join(p.text for p in pieces) == backbone.tokenizer.decode(generate_recomputing(backbone, prompt, None, 8))


def test_sampling_is_seeded_and_the_nucleus_narrows_it():
    backbone, model = tuned("tiny-llama")
    prompt = backbone.tokenizer.chat_prompt("sample")

    def draw(**options) -> str:
        pieces = answer(Decoding(backbone, model, prompt), backbone.tokenizer, Sampling(max_new_tokens=10, **options))
        return "".join(p.text for p in pieces)

    assert draw(temperature=1.0, seed=3) == draw(temperature=1.0, seed=3)
    assert len({draw(temperature=2.0, seed=s) for s in range(4)}) > 1
    assert draw(temperature=1.0, top_p=1e-6, seed=5) == draw()  # only the most likely token is left


def test_choose_keeps_the_fewest_tokens_holding_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    generator = torch.Generator().manual_seed(0)
    drawn = {choose(logits, Sampling(temperature=1.0, top_p=0.7), generator) for _ in range(200)}
    assert drawn == {0, 1}


@pytest.mark.parametrize("field, value", [("max_new_tokens", 0), ("temperature", -1.0), ("top_p", 0.0),
                                          ("top_p", 1.5)])
def test_bad_sampling_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        Sampling(**{field: value})


def test_stop_strings_end_the_answer_before_them_and_hold_nothing_back():
    tokenizer = ByteTokenizer()
    text = _Text(tokenizer, ("STOP",))
    shown = "".join(text.add(t) for t in tokenizer.encode("lights on STOP and more", add_special_tokens=False)
                    if not text.stopped)
    assert shown == "lights on " and text.stopped
    text = _Text(tokenizer, ("STOP",))
    shown = "".join(text.add(t) for t in tokenizer.encode("all ST", add_special_tokens=False)) + text.rest()
    assert shown == "all ST"  # held back while it could have begun a stop string, then shown


def test_smollm2_cached_answers_are_the_recomputed_ones(smollm2):
    backbone = smollm2
    model = build_model(backbone, TechniqueConfig("parallel"), HeadConfig("lm"))
    with torch.no_grad():  # the side network's output starts at zero; make it count
        model.side.up.weight.copy_(torch.randn(model.side.up.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    tokenizer = backbone.tokenizer
    for question, side in (("What is the capital of France?", None), ("Which room is the thermostat in?", model)):
        prompt = tokenizer.chat_prompt(question)
        want = generate_recomputing(backbone, prompt, side, max_new_tokens=16)
        got = "".join(p.text for p in answer(Decoding(backbone, side, prompt), tokenizer, Sampling(max_new_tokens=16)))
        assert got == tokenizer.decode(want)


@pytest.mark.parametrize("name", FAMILIES)
def test_sequences_decoded_together_give_each_one_s_own_logits(name):
    """Prompts of different lengths (left-padded) decode in one batch as each would alone."""
    backbone, model = tuned(name)
    prompts = [[1, 40, 41, 42, 43, 44, 45, 46], [1, 60, 61], [1, 70, 71, 72, 73]]
    answers = [[50, 51, 52, 53], [54, 55, 56, 57], [58, 59, 60, 61]]
    together = Decoding(backbone, model, prompts)
    steps = [together.start()] + [together.feed([a[i] for a in answers]) for i in range(4)]
    for row, (prompt, answer_ids) in enumerate(zip(prompts, answers, strict=True)):
        alone = Decoding(backbone, model, prompt)
        want = [alone.start()] + [alone.feed(t) for t in answer_ids]
        torch.testing.assert_close(torch.stack([s[row] for s in steps]), torch.stack(want), rtol=1e-4, atol=1e-4)


def test_a_wave_answers_each_request_as_alone_and_ends_each_its_own_way():
    from pac.assistant.batching import answer_wave
    from pac.assistant.messages import Ask, Done

    backbone, model = tuned("tiny-llama")
    tokenizer = backbone.tokenizer
    questions = [[{"role": "user", "content": q}] for q in ("one", "a longer question", "three", "four")]

    def alone(messages, sampling) -> str:
        return "".join(p.text for p in answer(Decoding(backbone, model, tokenizer.chat_ids(messages)), tokenizer,
                                              sampling))

    greedy = Sampling(max_new_tokens=5)
    stop = alone(questions[1], Sampling(max_new_tokens=8))[2:4] or "x"
    samplings = [greedy, Sampling(max_new_tokens=8, stop=(stop,)), Sampling(max_new_tokens=5, temperature=1.0, seed=4),
                 greedy]
    got: list[list] = [[] for _ in questions]
    asks = [Ask(None, q, s, got[i].append) for i, (q, s) in enumerate(zip(questions, samplings, strict=True))]
    asks[3].cancelled.set()
    answer_wave(backbone, model, asks)
    for i in range(3):
        *pieces, done = got[i]
        assert isinstance(done, Done) and "".join(p.text for p in pieces) == alone(questions[i], samplings[i])
        assert done.generated_tokens == sum(p.tokens for p in pieces)
    assert got[0][-1].finish_reason in ("length", "stop") and got[3] == [Done(len(tokenizer.chat_ids(questions[3])), 0,
                                                                               "cancelled")]
