"""Answering with the tuned model: one new position per token through the backbone and the side network.

`Decoding` keeps the backbone's own key/value cache (transformers') and the side network's
(`SideNetwork.new_cache`): after the prompt, every token runs one position through both, so an answer
costs time in proportion to its length, not its square. `tokens` draws the answer from the logits
(greedy, or temperature and nucleus sampling from a seeded generator) and stops at the end-of-sequence
token, a stop string or `max_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pac.assistant.messages import Piece, Sampling
from pac.errors import ConfigError
from pac.techniques.build import ParallelAdaptersModel, model_masks


class Decoding:
    """Sequences answered together: the prompts (padded to one length), then a token per sequence at a
    time, with both models' caches. One prompt: `start` and `feed` give that sequence's logits."""

    def __init__(self, backbone, side_model: ParallelAdaptersModel | None, prompt_ids: list[int] | list[list[int]]) -> None:
        self.single = bool(prompt_ids) and isinstance(prompt_ids[0], int)
        prompts = [prompt_ids] if self.single else list(prompt_ids)
        if not prompts or any(not p for p in prompts):
            raise ConfigError("the prompt is empty")
        self.backbone = backbone
        self.side = side_model.side.eval() if side_model is not None else None
        self.side_cache = self.side.new_cache() if self.side is not None else None
        device, width = backbone.device, max(len(p) for p in prompts)
        pad = backbone.tokenizer.pad_token_id or 0
        # Decoder-only prompts are padded on the left, so every sequence's next token is at the end; an
        # encoder's on the right, as in training (its absolute position embeddings, BART's, start at 0).
        left = backbone.family != "encoder-decoder"
        self.prompt = torch.tensor([_padded(list(p), width, pad, left) for p in prompts], device=device)
        self.prompt_mask = torch.tensor([_padded([1] * len(p), width, 0, left) for p in prompts], device=device)
        self.cache = None
        self.encoder = None  # encoder-decoder: the encoder's output, from the first step
        # the decoding stack's positions so far: the prompts' (decoder-only) or none yet (encoder-decoder)
        self.mask = self.prompt_mask[:, :0]

    @property
    def size(self) -> int:
        return self.prompt.shape[0]

    def _batch(self, new: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.backbone.family == "encoder-decoder":
            return {"input_ids": self.prompt, "attention_mask": self.prompt_mask,
                    "decoder_input_ids": new, "decoder_attention_mask": self.mask}
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -new.shape[1]:]  # left padding takes none
        return {"input_ids": new, "attention_mask": self.mask, "position_ids": positions}

    @torch.no_grad()
    def _step(self, new: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat((self.mask, mask), dim=1)
        batch = self._batch(new)
        out, self.cache = self.backbone.run_cached(batch, self.cache, self.encoder)
        if self.backbone.family == "encoder-decoder":
            self.encoder = out
        hidden = out.final
        if self.side is not None:
            hidden = hidden + self.side(out.taps, model_masks(batch, self.backbone.family), self.side_cache)
        logits = self.backbone.lm_logits(hidden[:, -1])
        return logits[0] if self.single else logits

    def start(self) -> torch.Tensor:
        """The logits of the answers' first tokens ([vocab] for one prompt, else [sequences, vocab])."""
        if self.backbone.family == "encoder-decoder":
            start = torch.full((self.size, 1), self.backbone.config.decoder_start_token_id, device=self.prompt.device)
            return self._step(start, torch.ones_like(start))
        return self._step(self.prompt, self.prompt_mask)

    def feed(self, tokens: int | list[int]) -> torch.Tensor:
        """The logits of the tokens after `tokens` (one per sequence)."""
        column = torch.tensor([[tokens]] if isinstance(tokens, int) else [[t] for t in tokens], device=self.prompt.device)
        return self._step(column, torch.ones_like(column))


def _padded(values: list[int], width: int, pad: int, left: bool) -> list[int]:
    padding = [pad] * (width - len(values))
    return padding + values if left else values + padding


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token: the most likely (temperature 0), else drawn from the nucleus at that temperature."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    probabilities = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        ordered, order = probabilities.sort(descending=True)
        before = ordered.cumsum(0) - ordered  # probability of the tokens ranked above each one
        ordered[before >= sampling.top_p] = 0.0  # keep the fewest whose mass reaches top_p
        probabilities = torch.zeros_like(probabilities).scatter_(0, order, ordered)
    return int(torch.multinomial(probabilities.cpu(), 1, generator=generator))


class _Text:
    """The answer's text as its tokens arrive, shown as soon as no stop string can still begin in it."""

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.shown = ""
        self.stopped = False

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if found:
            self.stopped = True
            return self._show(text[:min(found)])
        if text.endswith("\ufffd"):  # a character is still incomplete
            return ""
        # the longest end of the text that a stop string begins with waits for the next token
        held = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._show(text[:len(text) - held])

    def rest(self) -> str:
        return "" if self.stopped else self._show(self.tokenizer.decode(self.ids))

    def _show(self, text: str) -> str:
        if not text.startswith(self.shown) or len(text) <= len(self.shown):
            return ""
        delta, self.shown = text[len(self.shown):], text
        return delta


def _generator(sampling: Sampling) -> torch.Generator | None:
    """Sampling's random numbers: seeded when asked, else fresh; none for greedy answers."""
    if sampling.temperature == 0:
        return None
    generator = torch.Generator()
    if sampling.seed is not None:
        return generator.manual_seed(sampling.seed)
    generator.seed()
    return generator


class Answer:
    """One sequence's answer as its tokens are chosen: the sampling state, the text, how it ended."""

    def __init__(self, tokenizer, sampling: Sampling) -> None:
        self.tokenizer, self.sampling = tokenizer, sampling
        self.text = _Text(tokenizer, sampling.stop)
        self.generator = _generator(sampling)
        self.generated = 0
        self.finish_reason: str | None = None  # stop (end of answer or a stop string) | length

    def take(self, logits: torch.Tensor) -> tuple[int | None, Piece | None]:
        """The token to decode next (None: the answer has ended) and the piece this step adds."""
        token = choose(logits, self.sampling, self.generator)
        if token == self.tokenizer.eos_token_id:
            self.finish_reason = "stop"
            return None, None
        self.generated += 1
        piece = Piece(self.text.add(token), 1)
        if self.text.stopped:
            self.finish_reason = "stop"
        elif self.generated >= self.sampling.max_new_tokens:
            self.finish_reason = "length"
        return (None if self.finish_reason else token), piece

    def rest(self) -> Piece | None:
        """What the text held back, now that the answer has ended."""
        rest = self.text.rest()
        return Piece(rest, 0) if rest else None


def answer(decoding: Decoding, tokenizer, sampling: Sampling) -> Iterator[Piece]:
    """The answer, piece by piece, until the end-of-sequence token, a stop string or the token limit."""
    state = Answer(tokenizer, sampling)
    logits = decoding.start()
    while True:
        token, piece = state.take(logits)
        if piece is not None:
            yield piece
        if token is None:
            break
        logits = decoding.feed(token)
    if (rest := state.rest()) is not None:
        yield rest
