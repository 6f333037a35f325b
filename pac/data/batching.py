"""Tokenise examples and pad them into batches for every backbone family and task."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pac.data.readers import Example
from pac.errors import DataError
from pac.heads import IGNORE


@dataclass(frozen=True)
class Encoded:
    """One tokenised example; `target` is a class, a score, or per-token labels (IGNORE where no loss)."""

    input_ids: tuple[int, ...]
    target: int | float | tuple[int, ...]
    decoder_ids: tuple[int, ...] | None = None  # encoder-decoder only


def _truncate(ids: list[int], length: int) -> list[int]:
    return ids[:length]


def encode_example(example: Example, tokenizer, task: str, family: str, seq_len: int, index: int = 0) -> Encoded:
    if task == "lm":
        if example.prompt is None or example.answer is None:
            raise DataError(f"example {index}: the lm task needs prompt and answer")
        prompt = tokenizer.chat_prompt(example.prompt)
        answer = tokenizer.encode(example.answer, add_special_tokens=False) + [tokenizer.eos_token_id]
        if family == "encoder-decoder":
            labels = _truncate(answer, seq_len)
            return Encoded(tuple(_truncate(prompt, seq_len)), tuple(labels), _shift_right(labels, tokenizer))
        ids = (prompt + answer)[:seq_len]
        labels = ([IGNORE] * len(prompt) + answer)[:seq_len]
        if all(label == IGNORE for label in labels):
            raise DataError(f"example {index}: the prompt fills all {seq_len} tokens; no answer token is left")
        return Encoded(tuple(ids), tuple(labels))
    text = example.text
    ids = tokenizer.encode_pair(text, example.text_pair) if example.text_pair else tokenizer.encode(text)
    ids = _truncate(ids, seq_len)
    if task == "regression":
        if example.score is None:
            raise DataError(f"example {index}: regression needs a score")
        target: int | float = example.score
    else:
        if example.label is None:
            raise DataError(f"example {index}: classification needs a label")
        target = example.label
    decoder = _shift_right(ids, tokenizer) if family == "encoder-decoder" else None
    return Encoded(tuple(ids), target, decoder)


def _shift_right(ids: list[int], tokenizer) -> tuple[int, ...]:
    start = getattr(tokenizer, "decoder_start_token_id", None)
    start = tokenizer.pad_token_id if start is None else start
    return (start, *ids[:-1])


def collate(items: list[Encoded], pad_id: int, task: str, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded tensors; `pad_to` fixes the length (benchmarks), else the longest item sets it."""

    def pad(rows: list[tuple[int, ...]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = pad_to or max(len(r) for r in rows)
        ids = torch.full((len(rows), length), value, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row[:length], dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

    input_ids, attention_mask = pad([it.input_ids for it in items], pad_id)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if items[0].decoder_ids is not None:
        batch["decoder_input_ids"], batch["decoder_attention_mask"] = pad([it.decoder_ids for it in items], pad_id)
    if task == "lm":
        batch["labels"], _ = pad([it.target for it in items], IGNORE)
    elif task == "regression":
        batch["labels"] = torch.tensor([it.target for it in items], dtype=torch.float32)
    else:
        batch["labels"] = torch.tensor([it.target for it in items], dtype=torch.long)
    return batch


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}
