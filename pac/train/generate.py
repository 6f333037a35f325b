"""Greedy generation with the backbone alone or with its Parallel Adapters."""

from __future__ import annotations

import torch

from pac.techniques.build import ParallelAdaptersModel, model_masks


@torch.no_grad()
def _last_hidden(backbone, side, batch) -> torch.Tensor:
    out = backbone.run(batch)
    hidden = out.final
    if side is not None:
        hidden = hidden + side(out.taps, model_masks(batch, backbone.family))
    return hidden[:, -1]


@torch.no_grad()
def generate(backbone, prompt: str, side_model: ParallelAdaptersModel | None = None,
             max_new_tokens: int = 40) -> str:
    """Answer `prompt` greedily; with `side_model` the tuned model answers, else the untuned backbone."""
    tokenizer = backbone.tokenizer
    side = side_model.side.eval() if side_model is not None else None
    prompt_ids = torch.tensor([tokenizer.chat_prompt(prompt)], device=backbone.device)
    generated: list[int] = []
    start = getattr(backbone.config, "decoder_start_token_id", None)
    for _ in range(max_new_tokens):
        if backbone.family == "encoder-decoder":
            decoder = torch.tensor([[start, *generated]], device=backbone.device)
            batch = {"input_ids": prompt_ids, "attention_mask": torch.ones_like(prompt_ids),
                     "decoder_input_ids": decoder, "decoder_attention_mask": torch.ones_like(decoder)}
        else:
            ids = torch.cat([prompt_ids, torch.tensor([generated], dtype=torch.long,
                                                      device=backbone.device)], dim=1)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        token = int(backbone.lm_logits(_last_hidden(backbone, side, batch)).argmax(-1))
        if token == tokenizer.eos_token_id:
            break
        generated.append(token)
    return tokenizer.decode(generated).strip()
