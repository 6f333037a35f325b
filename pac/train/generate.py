"""Greedy answers from the backbone alone or with its Parallel Adapters.

`generate` decodes with key/value caches (pac/assistant/decode.py). `generate_recomputing` runs the
whole sequence through both models again for every token: the reference the cached path is tested
against, and the baseline bench/serve.py measures.
"""

from __future__ import annotations

import torch

from pac.assistant.decode import Decoding, Sampling, answer
from pac.techniques.build import ParallelAdaptersModel, model_masks


@torch.no_grad()
def _last_hidden(backbone, side, batch) -> torch.Tensor:
    out = backbone.run(batch)
    hidden = out.final
    if side is not None:
        hidden = hidden + side(out.taps, model_masks(batch, backbone.family))
    return hidden[:, -1]


@torch.no_grad()
def generate_recomputing(backbone, prompt_ids: list[int], side_model: ParallelAdaptersModel | None = None,
                         max_new_tokens: int = 40) -> list[int]:
    """The greedy answer's token ids, every step recomputing the whole sequence."""
    side = side_model.side.eval() if side_model is not None else None
    prompt = torch.tensor([prompt_ids], device=backbone.device)
    generated: list[int] = []
    start = getattr(backbone.config, "decoder_start_token_id", None)
    for _ in range(max_new_tokens):
        if backbone.family == "encoder-decoder":
            decoder = torch.tensor([[start, *generated]], device=backbone.device)
            batch = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt),
                     "decoder_input_ids": decoder, "decoder_attention_mask": torch.ones_like(decoder)}
        else:
            ids = torch.cat([prompt, torch.tensor([generated], dtype=torch.long, device=backbone.device)], dim=1)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        token = int(backbone.lm_logits(_last_hidden(backbone, side, batch)).argmax(-1))
        if token == backbone.tokenizer.eos_token_id:
            break
        generated.append(token)
    return generated


def generate(backbone, prompt: str, side_model: ParallelAdaptersModel | None = None,
             max_new_tokens: int = 40) -> str:
    """Answer `prompt` greedily; with `side_model` the tuned model answers, else the untuned backbone."""
    decoding = Decoding(backbone, side_model, backbone.tokenizer.chat_prompt(prompt))
    return "".join(p.text for p in answer(decoding, backbone.tokenizer, Sampling(max_new_tokens))).strip()
