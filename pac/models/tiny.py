"""Tiny random backbones of every family, built from a config: for tests, never for results.

Each is a few hundred thousand parameters, so a test can build, train and compare them in seconds.
Names: tiny-bert, tiny-gpt2, tiny-llama, tiny-t5, tiny-bart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pac.models.tokenizer import plain_chat

if TYPE_CHECKING:  # imported where a config is made: a daemon that runs no model never loads it
    import transformers

VOCAB_SIZE = 128


def _bert() -> transformers.PretrainedConfig:
    import transformers

    return transformers.BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=128, type_vocab_size=2, pad_token_id=0,
    )


def _gpt2() -> transformers.PretrainedConfig:
    import transformers

    return transformers.GPT2Config(
        vocab_size=VOCAB_SIZE, n_embd=64, n_layer=3, n_head=4, n_positions=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def _llama() -> transformers.PretrainedConfig:
    import transformers

    return transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
    )


def _t5() -> transformers.PretrainedConfig:
    import transformers

    return transformers.T5Config(
        vocab_size=VOCAB_SIZE, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0,
    )


def _bart() -> transformers.PretrainedConfig:
    import transformers

    return transformers.BartConfig(
        vocab_size=VOCAB_SIZE, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=2, forced_eos_token_id=None,
    )


TINY_CONFIGS = {
    "tiny-bert": _bert,
    "tiny-gpt2": _gpt2,
    "tiny-llama": _llama,
    "tiny-t5": _t5,
    "tiny-bart": _bart,
}


def tiny_config(name: str) -> transformers.PretrainedConfig:
    return TINY_CONFIGS[name]()


class ByteTokenizer:
    """A deterministic tokenizer for tiny models: one id per byte, folded into the tiny vocabulary.

    Ids 0, 1, 2 are pad, bos and eos; text bytes map to 3..VOCAB_SIZE-1. It implements the small
    part of the Hugging Face tokenizer interface the product uses.
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    cls_token_id = 1
    sep_token_id = 2
    padding_side = "right"
    chat_template = None
    name_or_path = "byte-tokenizer"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [3 + (b % (VOCAB_SIZE - 3)) for b in text.encode("utf-8")]
        return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

    def encode_pair(self, first: str, second: str) -> list[int]:
        return [*self.encode(first), *self.encode(second, add_special_tokens=False), self.eos_token_id]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        keep = [int(i) - 3 for i in ids if int(i) >= 3 or not skip_special_tokens]
        return bytes(max(0, i) for i in keep).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return f"byte-tokenizer-v1-{VOCAB_SIZE}"

    def chat_prompt(self, prompt: str) -> list[int]:
        return self.chat_ids([{"role": "user", "content": prompt}])

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode(plain_chat(messages, "Q: ", "\nA: "))[:-1]
