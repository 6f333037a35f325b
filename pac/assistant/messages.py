"""What a request to the device's assistant says and what its answer is made of: the types the daemon's
services, the Wyoming server and the clients share. No PyTorch here: an idle daemon imports this alone,
and the decoding code (pac/assistant/decode.py, batching.py, serving.py) when a request needs it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pac.errors import ConfigError

if TYPE_CHECKING:
    from pac.assistant.store import Deployed

MAX_BATCH = 16  # chat requests answered together in one wave (pac/assistant/batching.py)


@dataclass(frozen=True)
class Sampling:
    """How an answer is drawn."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy (the most likely token every time)
    top_p: float = 1.0  # nucleus sampling: draw from the fewest tokens holding this much probability
    seed: int | None = None  # the same seed, prompt and model give the same answer
    stop: tuple[str, ...] = ()  # the answer ends before the first of these

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ConfigError("a stop string must not be empty")


@dataclass(frozen=True)
class Piece:
    """A piece of the answer: the text it adds and the tokens it took (text may wait for later tokens:
    a character still incomplete, or what could be the start of a stop string)."""

    text: str
    tokens: int


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


MAX_TEXTS = 256
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Result:
    """One text's classification: every label's probability, most probable first; or a regression score."""

    labels: tuple[tuple[str, int, float], ...] = ()  # (label, class index, probability)
    score: float | None = None


def check_messages(messages: list[dict[str, str]]) -> None:
    if not messages:
        raise ConfigError("messages: the conversation is empty")
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise ConfigError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message['role']!r}")
    if messages[-1]["role"] != "user":
        raise ConfigError(f"messages: the last turn must be the user's, got {messages[-1]['role']!r}")
