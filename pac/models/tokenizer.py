"""One small tokenizer interface over Hugging Face tokenizers and the tiny test tokenizer."""

from __future__ import annotations

import hashlib
import json


class HFTokenizer:
    """Wraps a transformers tokenizer with the few operations the product needs."""

    def __init__(self, inner) -> None:
        self.inner = inner
        if inner.pad_token_id is None:
            # Decoder-only models often have no pad token; eos is a safe pad since padded
            # positions are masked out of attention and loss.
            inner.pad_token = inner.eos_token
        self.pad_token_id = inner.pad_token_id
        self.eos_token_id = inner.eos_token_id
        self.bos_token_id = inner.bos_token_id
        self.chat_template = getattr(inner, "chat_template", None)
        self.name_or_path = inner.name_or_path

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.inner(text, add_special_tokens=add_special_tokens)["input_ids"]

    def encode_pair(self, first: str, second: str) -> list[int]:
        return self.inner(first, second)["input_ids"]

    def chat_prompt(self, prompt: str) -> list[int]:
        """Token ids of a user turn followed by the start of the assistant's answer."""
        return self.chat_ids([{"role": "user", "content": prompt}])

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation (roles system, user, assistant) ending with the start of the
        assistant's next answer: the model's chat template, else plain "Question: / Answer:" turns."""
        if self.chat_template:
            text = self.inner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.encode(text, add_special_tokens=False)
        return self.encode(plain_chat(messages, "Question: ", "\nAnswer: "))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.inner.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def fingerprint(self) -> str:
        vocab = self.inner.get_vocab()
        digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()
        return f"{type(self.inner).__name__}-{len(vocab)}-{digest[:16]}"


def plain_chat(messages: list[dict[str, str]], question: str, answer: str) -> str:
    """A conversation as text for a model without a chat template; it ends where the answer begins."""
    parts = []
    for message in messages:
        if message["role"] == "user":
            parts.append(f"{question}{message['content']}{answer}")
        else:  # the assistant's earlier answers, a system instruction
            parts.append(f"{message['content']}\n")
    return "".join(parts)
