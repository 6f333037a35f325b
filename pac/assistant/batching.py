"""Chat requests answered together: a wave of up to MAX_BATCH requests for one model decodes as one batch.

Decoding one position costs about as much for a few sequences as for one (each step reads every weight
once), so requests that wait together are answered together: their prompts run as one padded batch,
then every step decodes a token for each unfinished sequence. A request that arrives during a wave
waits for the next one. Each request gets its pieces through its own `emit` (called from the wave's
thread), then `Done`; a request that is cancelled stops being answered at the next token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pac.assistant.decode import Decoding, Piece, Sampling, _Text, choose
from pac.assistant.store import Deployed

MAX_BATCH = 16


@dataclass(frozen=True)
class Done:
    """The end of one answer."""

    prompt_tokens: int
    generated_tokens: int
    finish_reason: str  # stop (end of answer or a stop string) | length (max_new_tokens) | cancelled


@dataclass
class Ask:
    """One chat request: what to answer, and where its pieces go."""

    model: Deployed
    messages: list[dict[str, str]]
    sampling: Sampling
    emit: Callable[[Piece | Done | BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


def _generator(sampling: Sampling) -> torch.Generator | None:
    if sampling.temperature == 0:
        return None
    generator = torch.Generator()
    if sampling.seed is not None:
        return generator.manual_seed(sampling.seed)
    generator.seed()
    return generator


class _Row:
    """One sequence of a wave."""

    def __init__(self, ask: Ask, tokenizer, prompt_tokens: int) -> None:
        self.ask, self.tokenizer, self.prompt_tokens = ask, tokenizer, prompt_tokens
        self.text = _Text(tokenizer, ask.sampling.stop)
        self.generator = _generator(ask.sampling)
        self.generated = 0
        self.open = True

    def finish(self, reason: str) -> None:
        rest = self.text.rest() if reason != "cancelled" else ""
        if rest:
            self.ask.emit(Piece(rest, 0))
        self.ask.emit(Done(self.prompt_tokens, self.generated, reason))
        self.open = False

    def take(self, logits: torch.Tensor) -> int | None:
        """This row's next token from its logits (None: the row has finished)."""
        if self.ask.cancelled.is_set():
            self.finish("cancelled")
            return None
        token = choose(logits, self.ask.sampling, self.generator)
        if token == self.tokenizer.eos_token_id:
            self.finish("stop")
            return None
        self.generated += 1
        self.ask.emit(Piece(self.text.add(token), 1))
        if self.text.stopped:
            self.finish("stop")
        elif self.generated >= self.ask.sampling.max_new_tokens:
            self.finish("length")
        return token


def answer_wave(backbone, model, asks: list[Ask]) -> None:
    """Answer every request of `asks` (one model: `backbone` with the tuned `model`) as one batch."""
    tokenizer = backbone.tokenizer
    prompts = [tokenizer.chat_ids(ask.messages) for ask in asks]
    rows = [_Row(ask, tokenizer, len(prompt)) for ask, prompt in zip(asks, prompts, strict=True)]
    try:
        decoding = Decoding(backbone, model, prompts)
        logits = decoding.start()
        while True:
            tokens = [row.take(logits[i]) if row.open else None for i, row in enumerate(rows)]
            if not any(row.open for row in rows):
                return
            pad = tokenizer.pad_token_id or 0
            logits = decoding.feed([pad if t is None else t for t in tokens])  # finished rows ride along
    except BaseException as error:  # every request still open hears it
        for row in rows:
            if row.open:
                row.ask.emit(error)
                row.open = False
        if not isinstance(error, Exception):
            raise
