"""A frozen Hugging Face backbone seen as stacks of layers whose hidden states the side network taps.

`Backbone.run` executes the model once with no autograd graph and returns, per stack (one for
encoder-only and decoder-only models; encoder then decoder for encoder-decoder models), the hidden
states h_0 (the input of the first layer) .. h_L (the output of each layer), plus the final hidden state
(after the model's final norm, if it has one) on which the head is applied.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from pac.errors import ModelNotFoundError
from pac.models.registry import ModelSource, resolve_model
from pac.models.tiny import ByteTokenizer, tiny_config
from pac.models.tokenizer import HFTokenizer
from pac.models.unpadded import unpad_layers

ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "xlm-roberta", "mpnet", "deberta", "deberta-v2"}

# model_type -> dotted paths of the layer lists, in execution order.
LAYER_PATHS = {
    "bert": ["encoder.layer"],
    "roberta": ["encoder.layer"],
    "xlm-roberta": ["encoder.layer"],
    "electra": ["encoder.layer"],
    "distilbert": ["transformer.layer"],
    "gpt2": ["transformer.h"],
    "t5": ["encoder.block", "decoder.block"],
    "bart": ["model.encoder.layers", "model.decoder.layers"],
}
DECODER_DEFAULT_PATH = ["model.layers"]  # llama, qwen2, mistral, gemma, phi3, ...


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def family_of(config) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if config.model_type in ENCODER_TYPES:
        return "encoder"
    return "decoder"


@contextlib.contextmanager
def _held_already(layer: nn.Module):
    yield layer


@dataclass(frozen=True)
class LayerShape:
    """Facts of the backbone's layers the side network is shaped from (the first layer's)."""

    mlp_inner: int  # the MLP's inner width
    attention_bias: bool  # whether the attention projections have a bias


@dataclass
class BackboneOutput:
    taps: list[list[torch.Tensor]]  # per stack: [h_0, h_1, ..., h_L]
    final: torch.Tensor  # last stack's output after the final norm: the head's input
    encoder_final: torch.Tensor | None = None  # encoder output (encoder-decoder only)


class Backbone:
    """A frozen transformers model, its tokenizer and the facts the side network is built from."""

    def __init__(self, name: str, model: nn.Module, tokenizer, source: ModelSource | None = None) -> None:
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.source = source
        self.config = model.config
        self.family = family_of(self.config)
        self.model_type = self.config.model_type
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        paths = LAYER_PATHS.get(self.model_type, DECODER_DEFAULT_PATH)
        self.stacks: list[nn.ModuleList] = [_get(self.model, path) for path in paths]
        self._fingerprint: str | None = None
        # The layers compute real tokens only, not a mini-batch's padding, where pac.models.unpadded knows them.
        self.unpadded = self.family != "encoder-decoder" and unpad_layers(self.model_type, list(self.stacks[0]))
        # A model whose layers stay on meta (pac.models.partial.load_held) reads one at a time through this:
        # `with backbone.open_layer(layer):` holds its weights only inside.
        self.open_layer = _held_already
        # What the side network is shaped from, read off the first layer now: a stage may release it.
        from pac.side.weights import layer_weights

        try:
            first = layer_weights(self.model_type, self.stacks[0][0])
            self.layer_shape: LayerShape | None = LayerShape(mlp_inner=first.mlp_in.weight.shape[0],
                                                             attention_bias=first.self_attention.q.bias is not None)
        except AttributeError:  # a layer the side network does not know: other techniques still run
            self.layer_shape = None

    # ---- shape facts -------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        c = self.config
        return getattr(c, "hidden_size", None) or getattr(c, "d_model", None) or c.n_embd

    @property
    def num_heads(self) -> int:
        c = self.config
        for key in ("num_attention_heads", "num_heads", "n_head", "encoder_attention_heads"):
            if getattr(c, key, None):
                return getattr(c, key)
        raise ValueError(f"cannot tell the number of attention heads of {self.model_type}")

    @property
    def num_layers(self) -> int:
        return sum(len(stack) for stack in self.stacks)

    def _held_parameter(self) -> torch.Tensor | None:
        """A parameter this process holds (a partly loaded model keeps the others on meta)."""
        return next((p for p in self.model.parameters() if not p.is_meta), None)

    @property
    def device(self) -> torch.device:
        held = self._held_parameter()
        return held.device if held is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the backbone's forward pass runs in."""
        held = self._held_parameter()
        return (held if held is not None else next(self.model.parameters())).dtype

    @property
    def trainable_dtype(self) -> torch.dtype:
        """The dtype of what trains beside this backbone (side network, head, adapters): fp32 when the
        frozen backbone is held in 16 bits (`quantization = "bf16"` or `"fp16"`), else the backbone's."""
        dtype = self.dtype
        return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype

    def fingerprint(self) -> str:
        """A digest of every weight and the tokenizer: identifies this exact backbone."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.model_type.encode())
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            digest.update(self.tokenizer.fingerprint().encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # ---- execution ---------------------------------------------------------------------------
    def run(self, batch: dict[str, torch.Tensor]) -> BackboneOutput:
        """One forward pass with no autograd graph; returns every tapped hidden state.

        `torch.no_grad()` rather than `inference_mode()`: both record nothing for backward, but
        inference tensors may not be saved by the side network's autograd graph, which reads them.
        """
        taps: list[list[torch.Tensor]] = [[] for _ in self.stacks]
        with self._tapped(taps, range(len(self.stacks))), torch.no_grad():
            final, encoder_final = self._forward(batch)
        return BackboneOutput(taps=taps, final=final, encoder_final=encoder_final)

    @contextlib.contextmanager
    def _tapped(self, taps: list[list[torch.Tensor]], stacks):
        """While inside: every layer of `stacks` appends its input (the first layer) and output to taps."""
        handles = []
        for index in stacks:
            stack = self.stacks[index]
            handles.append(stack[0].register_forward_pre_hook(_capture_input(taps[index]), with_kwargs=True))
            handles += [layer.register_forward_hook(_capture_output(taps[index])) for layer in stack]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def run_cached(self, batch: dict[str, torch.Tensor], cache=None,
                   encoder: BackboneOutput | None = None) -> tuple[BackboneOutput, object]:
        """Decoding with the model's own key/value cache: the tapped states of the new positions only.

        `batch["input_ids"]` (decoder-only) or `batch["decoder_input_ids"]` (encoder-decoder) holds the new
        tokens, its attention mask every position so far; `cache` is what the previous call returned
        (None at first); `batch["position_ids"]` (decoder-only, optional) places left-padded rows' tokens.
        An encoder-decoder model runs its encoder on the first call only: pass that call's output as
        `encoder` afterwards (its encoder taps and output are reused)."""
        if self.family == "encoder":
            raise ValueError(f"{self.name} is an encoder: it does not decode")
        taps: list[list[torch.Tensor]] = [[] for _ in self.stacks]
        decoder = len(self.stacks) - 1
        if self.family == "decoder":
            positions = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
            with self._tapped(taps, [decoder]):
                out = self.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                            use_cache=True, **positions,
                                            **{_cache_argument(self.model.base_model): cache})
            return BackboneOutput(taps, out.last_hidden_state), _cache_of(out)
        if encoder is None:
            with self._tapped(taps, [0]):
                encoded = self.model.get_encoder()(input_ids=batch["input_ids"],
                                                   attention_mask=batch["attention_mask"]).last_hidden_state
        else:
            taps[0], encoded = encoder.taps[0], encoder.encoder_final
        step = self.model.get_decoder()
        with self._tapped(taps, [decoder]):
            out = step(input_ids=batch["decoder_input_ids"], attention_mask=batch["decoder_attention_mask"],
                       encoder_hidden_states=encoded, encoder_attention_mask=batch["attention_mask"],
                       use_cache=True, **{_cache_argument(step): cache})
        return BackboneOutput(taps, out.last_hidden_state, encoded), _cache_of(out)

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.family == "encoder-decoder":
            encoder_out = self.model.get_encoder()(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
            decoder_out = self.model.get_decoder()(
                input_ids=batch["decoder_input_ids"],
                attention_mask=batch["decoder_attention_mask"],
                encoder_hidden_states=encoder_out,
                encoder_attention_mask=batch["attention_mask"],
                use_cache=False,
            ).last_hidden_state
            return decoder_out, encoder_out
        base = self.model.base_model if self.family == "decoder" else self.model
        kwargs = {"use_cache": False} if self.family == "decoder" else {}
        out = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
        return out.last_hidden_state, None

    def lm_head(self) -> FrozenLMHead:
        """The backbone's own language-model head, apart from the rest of the backbone."""
        head = self.model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{self.name} has no language-model head; use a classification head")
        scale = None
        if self.model_type == "t5" and getattr(self.config, "tie_word_embeddings", True):
            scale = self.config.d_model**-0.5
        return FrozenLMHead(head.weight.detach(), getattr(self.model, "final_logits_bias", None), scale)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The backbone's own (frozen) language-model head applied to final hidden states."""
        return self.lm_head()(hidden)

    @property
    def has_lm_head(self) -> bool:
        return self.family != "encoder" and self.model.get_output_embeddings() is not None


class FrozenLMHead:
    """The frozen LM head's weights (shared with the backbone, not copied) as a plain callable.

    Not an nn.Module on purpose: it is never trained or saved with an adapter, and holding it keeps
    only the head's weights alive, not the whole backbone.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, scale: float | None) -> None:
        self.weight, self.bias, self.scale = weight, None if bias is None else bias.detach(), scale

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            hidden = hidden * self.scale
        dtype = hidden.dtype  # a 16-bit backbone's head runs in 16 bits; the logits come back in `dtype`
        logits = torch.nn.functional.linear(hidden.to(self.weight.dtype), self.weight)
        if self.bias is not None:
            logits = logits + self.bias.to(logits.dtype)
        return logits.to(dtype)


def _cache_argument(module: nn.Module) -> str:
    """The name transformers gives a forward's key/value cache argument (`cache` from 5.24 on)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _cache_of(output):
    return output["cache"] if "cache" in output else output["past_key_values"]


def _first_tensor(value):
    return value[0] if isinstance(value, tuple) else value


def _capture_input(store: list):
    def hook(_module, args, kwargs):
        store.append(args[0] if args else kwargs["hidden_states"])

    return hook


def _capture_output(store: list):
    def hook(_module, _args, output):
        store.append(_first_tensor(output))

    return hook


def _model_class(config):
    import transformers

    family = family_of(config)
    if family == "encoder":
        return transformers.AutoModel
    if family == "encoder-decoder":
        return transformers.AutoModelForSeq2SeqLM
    return transformers.AutoModelForCausalLM


def load_backbone(spec: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  seed: int = 0) -> Backbone:
    """Load a backbone by name ("minilm", "smollm2-135m", "tiny-llama", ...) or local path."""
    from pac.models.imports import MODEL_CODE

    with MODEL_CODE:  # the model code imports lazily: never from two threads at once (pac/models/imports.py)
        return _load_backbone(spec, dtype, device, seed)


def _load_backbone(spec: str, dtype: torch.dtype, device: str | torch.device, seed: int) -> Backbone:
    import transformers  # here, not at import: a daemon that serves no model never loads it

    source = resolve_model(spec)
    transformers.utils.logging.disable_progress_bar()
    if source.tiny:
        config = tiny_config(source.tiny)
        torch.manual_seed(seed)
        model = _model_class(config).from_config(config)
        tokenizer = ByteTokenizer()
    else:
        kwargs = {"local_files_only": True}
        if source.gguf_file:
            kwargs["gguf_file"] = source.gguf_file
        try:
            config = transformers.AutoConfig.from_pretrained(source.directory, **kwargs)
            model = _model_class(config).from_pretrained(source.directory, dtype=dtype, **kwargs)
            tokenizer = HFTokenizer(transformers.AutoTokenizer.from_pretrained(source.directory, **kwargs))
        except OSError as error:
            raise ModelNotFoundError(f"cannot load model from {source.directory}: {error}") from error
    model = model.to(device=device, dtype=dtype)
    return Backbone(source.name, model, tokenizer, source)
