"""Benchmark inputs of exactly --seq-len real tokens, so every technique computes over the same tokens.

Classification: MRPC sentence pairs (or synthetic text when ../shared/data is absent) packed end to end
and cut to seq_len tokens. Chat: the built-in household prompts and answers, packed the same way, with
the loss on the last answer's tokens only (as in chat fine-tuning).
"""

from __future__ import annotations

from pathlib import Path

from pac.data.batching import Encoded
from pac.data.readers import read_examples
from pac.heads import IGNORE

CHAT_DATA = Path(__file__).resolve().parent.parent / "pac" / "data" / "household_train.jsonl"


def _texts(data: str) -> list[str]:
    if Path(data).is_file():
        return [f"{e.text} {e.text_pair or ''}" for e in read_examples(data)]
    return [f"sentence number {i} about the weather and the garden" for i in range(512)]


def classification_samples(tokenizer, family: str, seq_len: int, count: int, data: str) -> list[Encoded]:
    texts, samples, position = _texts(data), [], 0
    while len(samples) < count:
        ids: list[int] = []
        while len(ids) < seq_len:
            ids += tokenizer.encode(texts[position % len(texts)])
            position += 1
        ids = ids[:seq_len]
        decoder = tuple([tokenizer.pad_token_id, *ids[:-1]]) if family == "encoder-decoder" else None
        samples.append(Encoded(tuple(ids), len(samples) % 2, decoder))
    return samples


def chat_samples(tokenizer, seq_len: int, count: int) -> list[Encoded]:
    pairs = [(e.prompt, e.answer) for e in read_examples(CHAT_DATA)]
    samples, position = [], 0
    while len(samples) < count:
        ids: list[int] = []
        labels: list[int] = []
        while len(ids) < seq_len:
            prompt, answer = pairs[position % len(pairs)]
            position += 1
            prompt_ids = tokenizer.chat_prompt(prompt)
            answer_ids = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id]
            ids += prompt_ids + answer_ids
            labels = [IGNORE] * (len(ids) - len(answer_ids)) + answer_ids  # loss on the last answer only
        cut = len(ids) - seq_len  # keep the end, so the last answer (the loss) stays
        samples.append(Encoded(tuple(ids[cut:]), tuple(labels[cut:])))
    return samples
