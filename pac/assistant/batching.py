"""Chat requests answered together: a wave of up to MAX_BATCH requests for one model decodes as one batch.

Decoding one position costs about as much for a few sequences as for one (each step reads every weight
once), so requests that wait together are answered together: their prompts run as one padded batch,
then every step decodes a token for each unfinished sequence. A request that arrives during a wave
waits for the next one. Each request gets its pieces through its own `emit` (called from the wave's
thread), then `Done`; a request that is cancelled stops being answered at the next token.
"""

from __future__ import annotations

import torch

from pac.assistant.decode import Answer, Decoding
from pac.assistant.messages import Ask, Done


class _Row:
    """One sequence of a wave: its request and its answer so far."""

    def __init__(self, ask: Ask, tokenizer, prompt_tokens: int) -> None:
        self.ask, self.prompt_tokens = ask, prompt_tokens
        self.answer = Answer(tokenizer, ask.sampling)
        self.open = True

    def finish(self, reason: str) -> None:
        rest = self.answer.rest() if reason != "cancelled" else None
        if rest is not None:
            self.ask.emit(rest)
        self.ask.emit(Done(self.prompt_tokens, self.answer.generated, reason))
        self.open = False

    def take(self, logits: torch.Tensor) -> int | None:
        """This row's next token from its logits (None: the row has finished)."""
        if self.ask.cancelled.is_set():
            self.finish("cancelled")
            return None
        token, piece = self.answer.take(logits)
        if piece is not None:
            self.ask.emit(piece)
        if token is None:
            self.finish(self.answer.finish_reason)
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
