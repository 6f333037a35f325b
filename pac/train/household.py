"""The built-in household assistant job: tune a chat model on one imaginary family's facts, then
compare the tuned and untuned models' answers to held-out, paraphrased questions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
TRAIN_FILE = DATA_DIR / "household_train.jsonl"
HELDOUT_FILE = DATA_DIR / "household_heldout.jsonl"


@dataclass(frozen=True)
class HeldOut:
    prompt: str
    answer: str
    keywords: tuple[str, ...]


def heldout_questions(limit: int | None = None) -> list[HeldOut]:
    rows = [json.loads(line) for line in HELDOUT_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = [HeldOut(r["prompt"], r["answer"], tuple(r["keywords"])) for r in rows]
    return questions[:limit] if limit else questions


def answer_is_right(answer: str, question: HeldOut) -> bool:
    lowered = answer.lower()
    return all(keyword.lower() in lowered for keyword in question.keywords)
